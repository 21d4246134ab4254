#!/usr/bin/env python3
"""A client written from docs/PROTOCOL.md alone (Python standard library only), to show the
document is enough to interoperate: framing, CRC-32, SCRAM-SHA-256 login, the ledger, a room,
and the error paths. Usage: independent_client.py HOST PORT. Exits 0 when every check held."""

import hashlib
import hmac
import os
import socket
import struct
import sys
import zlib

MAGIC, VERSION, HEADER_LEN = 0x4E53, 1, 32
IS_RESPONSE = 0b100
OP = {"HELLO": 0x0001, "LOGIN": 0x0002, "LOGOUT": 0x0003, "HEARTBEAT": 0x0004,
      "LOGIN_PROOF": 0x0005, "REGISTER": 0x0006, "NOTICE": 0x0007, "JOIN_ROOM": 0x0101,
      "CHAT_SEND": 0x0103, "CHAT_BROADCAST": 0x0104, "DEPOSIT": 0x0201, "WITHDRAW": 0x0202,
      "TRANSFER": 0x0203, "BALANCE": 0x0204}
OK, ERR_UNAUTHORIZED, ERR_INSUFFICIENT_FUNDS, ERR_CHECKSUM_FAIL = 0x0000, 0x0003, 0x0005, 0x0002
ERR_UNKNOWN_OPCODE, ERR_STALE_REQUEST = 0x0008, 0x0016


def frame(opcode, req_id, body, flags=0, status=0):
    # Section 2: the header; section 3: CRC-32 over bytes 0..22, 26..32, then the body.
    head = struct.pack(">HBBHIHHQ", MAGIC, VERSION, flags, HEADER_LEN, len(body), opcode,
                       status, req_id)
    reserved = bytes(6)
    crc = zlib.crc32(head + reserved + body) & 0xFFFFFFFF
    return head + struct.pack(">I", crc) + reserved + body


def string(b):
    return struct.pack(">H", len(b)) + b


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.req_id = 0
        self.pushes = []

    def read_frame(self):
        while len(self.buf) < HEADER_LEN:
            self.buf += self._recv()
        magic, version, flags, hlen, blen, opcode, status, req_id, crc = struct.unpack(
            ">HBBHIHHQI", self.buf[:26])
        assert (magic, version, hlen) == (MAGIC, VERSION, HEADER_LEN), "bad header"
        while len(self.buf) < HEADER_LEN + blen:
            self.buf += self._recv()
        body = self.buf[HEADER_LEN:HEADER_LEN + blen]
        check = zlib.crc32(self.buf[:22] + self.buf[26:32] + body) & 0xFFFFFFFF
        assert check == crc, "bad checksum from the server"
        self.buf = self.buf[HEADER_LEN + blen:]
        return flags, opcode, status, req_id, body

    def _recv(self):
        data = self.s.recv(65536)
        assert data, "server closed"
        return data

    def call(self, opcode, body=b"", raw=None):
        self.req_id += 1
        return self.resend(opcode, self.req_id, body, raw)

    def resend(self, opcode, req_id, body=b"", raw=None):
        """Sends with a given req_id (a retry, section 8.4) and waits for its response."""
        self.s.sendall(raw(req_id) if raw else frame(opcode, req_id, body))
        while True:
            flags, op, status, rid, rbody = self.read_frame()
            if flags & IS_RESPONSE:
                assert rid == req_id, "responses come in request order"
                return status, rbody
            self.pushes.append((op, rbody))


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)
    print("ok:", what)


def scram_keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 32)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return client_key, hashlib.sha256(client_key).digest(), server_key


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = Conn(host, port)
    status, body = c.call(OP["HELLO"], string(b"independent-python"))
    check(status == OK, "HELLO")
    status, _ = c.call(OP["BALANCE"])
    check(status == ERR_UNAUTHORIZED, "BALANCE before login is ERR_UNAUTHORIZED")

    user, password, salt, iterations = b"py_user", b"s3cret", os.urandom(16), 4096
    client_key, stored_key, server_key = scram_keys(password, salt, iterations)
    body = string(user) + string(salt) + struct.pack(">I", iterations) + stored_key + server_key
    status, _ = c.call(OP["REGISTER"], body)
    check(status == OK, "REGISTER")

    client_nonce = os.urandom(16)
    status, body = c.call(OP["LOGIN"], string(user) + string(client_nonce))
    check(status == OK, "LOGIN")
    n = struct.unpack(">H", body[:2])[0]
    s_salt = body[2:2 + n]
    s_iter = struct.unpack(">I", body[2 + n:6 + n])[0]
    m = struct.unpack(">H", body[6 + n:8 + n])[0]
    server_nonce = body[8 + n:8 + n + m]
    check(s_salt == salt and s_iter == iterations, "LOGIN returns the registered salt and iterations")
    auth_message = (b"NS1 SCRAM-SHA-256" + string(user) + string(client_nonce)
                    + string(server_nonce) + string(salt) + struct.pack(">I", iterations))
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    status, body = c.call(OP["LOGIN_PROOF"], proof)
    check(status == OK, "LOGIN_PROOF")
    expected = hmac.new(server_key, auth_message, "sha256").digest()
    check(body[:32] == expected, "the server signature proves the server knows ServerKey")
    my_id, req_id_hw, req_id_window = struct.unpack(">IQI", body[32:48])
    check(len(body) == 48 and req_id_hw == 0 and req_id_window > 0,
          "LOGIN_PROOF: user id, req_id high-water mark 0 for a new user, window")
    c.req_id = max(c.req_id, req_id_hw)

    login_req_id = c.req_id
    status, body = c.call(OP["DEPOSIT"], struct.pack(">Q", 5000))
    deposit_req_id = c.req_id
    balance, txn_id = struct.unpack(">QQ", body)
    check(status == OK and balance == 5000, "DEPOSIT 5000")
    status, body = c.call(OP["WITHDRAW"], struct.pack(">Q", 9999))
    check(status == ERR_INSUFFICIENT_FUNDS, "WITHDRAW over the balance is refused")
    # Section 8.4: a retry with the same req_id gets the first answer and applies nothing; a
    # req_id at or below the high-water mark that was never a ledger request is stale.
    status, body = c.resend(OP["DEPOSIT"], deposit_req_id, struct.pack(">Q", 5000))
    check(status == OK and struct.unpack(">QQ", body) == (5000, txn_id),
          "a retried DEPOSIT gets its first answer (same balance, same txn_id)")
    status, body = c.resend(OP["DEPOSIT"], login_req_id, struct.pack(">Q", 5000))
    check(status == ERR_STALE_REQUEST, "a DEPOSIT under a passed-over req_id is ERR_STALE_REQUEST")
    status, body = c.call(OP["BALANCE"])
    check(status == OK and struct.unpack(">Q", body)[0] == 5000, "neither was applied")
    # A second user to transfer to, on another connection.
    d = Conn(host, port)
    k2 = scram_keys(b"pw2", salt, iterations)
    status, body = d.call(OP["REGISTER"], string(b"py_peer") + string(salt)
                          + struct.pack(">I", iterations) + k2[1] + k2[2])
    check(status == OK, "REGISTER a peer")
    status, body = c.call(OP["TRANSFER"], b"\x01" + string(b"py_peer") + struct.pack(">Q", 1250))
    balance, txn2 = struct.unpack(">QQ", body)
    check(status == OK and balance == 3750 and txn2 > txn_id, "TRANSFER 1250 to py_peer by name")

    # A corrupted frame: ERR_CHECKSUM_FAIL, and the connection goes on.
    def corrupt(req_id):
        f = bytearray(frame(OP["BALANCE"], req_id, b""))
        f[23] ^= 0x01  # in the checksum field: req_id stays intact, so the answer matches
        return bytes(f)
    status, _ = c.call(0, raw=corrupt)
    check(status == ERR_CHECKSUM_FAIL, "a flipped bit is ERR_CHECKSUM_FAIL")
    status, _ = c.call(0x0777)
    check(status == ERR_UNKNOWN_OPCODE, "an unknown opcode is ERR_UNKNOWN_OPCODE")
    status, body = c.call(OP["BALANCE"])
    check(status == OK and struct.unpack(">Q", body)[0] == 3750, "BALANCE after the errors")

    # A room: join, send, and receive our own message as a CHAT_BROADCAST push.
    status, body = c.call(OP["JOIN_ROOM"], string(b"pyroom"))
    room_id = struct.unpack(">I", body[:4])[0]
    check(status == OK, "JOIN_ROOM")
    status, body = c.call(OP["CHAT_SEND"], struct.pack(">I", room_id) + string(b"hello from python"))
    seq = struct.unpack(">Q", body)[0]
    check(status == OK and seq == 1, "CHAT_SEND gets sequence number 1")
    while not c.pushes:
        flags, op, st, rid, pbody = c.read_frame()
        c.pushes.append((op, pbody))
    op, pbody = c.pushes[0]
    r, s, sender = struct.unpack(">IQI", pbody[:16])
    check(op == OP["CHAT_BROADCAST"] and (r, s, sender) == (room_id, 1, my_id),
          "the CHAT_BROADCAST push carries room, seq and sender")
    check(pbody.endswith(b"hello from python"), "the push carries the text")
    status, _ = c.call(OP["LOGOUT"])
    check(status == OK, "LOGOUT")
    print("independent client: all checks passed")


if __name__ == "__main__":
    main()
