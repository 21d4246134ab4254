/*
 * ns_client: a C client of the NS server, on libnsproto alone.
 *
 *   ns_client HOST PORT USER PASSWORD
 *
 * Registers USER and a second user USER-peer (either may exist already), logs both in with
 * SCRAM-SHA-256 (checking the server's signature), deposits, transfers to the peer, reads the
 * balance and the history, joins a room with both, sends a message and waits for the peer to
 * receive its push, and sends heartbeats. Prints one line per step; exits 0 when all passed.
 * Set NS_CLIENT_LOG=1 to see every frame through the logging hook. Set NS_TLS_CA=FILE to speak
 * TLS (a server run with --tls-cert), verifying its certificate against the CAs in FILE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>

#include "nsproto.h"

static ns_bytes str(const char *s) {
    ns_bytes b = { (const uint8_t *)s, strlen(s) };
    return b;
}

static void die(const char *what, int rc, const ns_response *r) {
    if (r && r->status != NS_STATUS_OK) {
        fprintf(stderr, "FAIL %s: %s (server: %s: %.*s)\n", what, ns_error_name(rc),
                ns_status_name(r->status), (int)r->error_message.len,
                (const char *)r->error_message.ptr);
    } else {
        fprintf(stderr, "FAIL %s: %s\n", what, ns_error_name(rc));
    }
    exit(1);
}

/* One call whose answer must be OK; returns the response (the caller frees it). */
static ns_response *call_ok(ns_conn *c, const ns_request *req, const char *what) {
    ns_response *r = NULL;
    int rc = ns_call(c, req, &r);
    if (rc != NS_OK) {
        die(what, rc, r);
    }
    return r;
}

/* REGISTER (an existing name is fine), then LOGIN and LOGIN_PROOF; returns the user id. */
static uint32_t register_and_login(ns_conn *c, const char *user, const char *password) {
    ns_scram_registration reg;
    ns_request req;
    ns_response *r = NULL;
    int rc = ns_scram_registration_new(str(password), 0, &reg);
    if (rc != NS_OK) die("registration verifier", rc, NULL);
    ns_scram_register_request(&reg, str(user), &req);
    rc = ns_call(c, &req, &r);
    if (rc == NS_OK) {
        printf("registered %s id=%u\n", user, r->body.register_.user_id);
    } else if (rc == NS_ERR_REFUSED && strcmp(ns_status_name(r->status), "ERR_ALREADY_EXISTS") == 0) {
        printf("registered %s already\n", user);
    } else {
        die("register", rc, r);
    }
    ns_response_free(r);

    ns_scram_client *login = NULL;
    rc = ns_scram_client_new(str(user), str(password), &login);
    if (rc != NS_OK) die("scram client", rc, NULL);
    ns_scram_client_login_request(login, &req);
    ns_response *challenge = call_ok(c, &req, "login");
    rc = ns_scram_client_proof(login, challenge, &req);
    if (rc != NS_OK) die("login proof", rc, NULL);
    ns_response_free(challenge);
    ns_response *done = call_ok(c, &req, "login proof");
    rc = ns_scram_client_verify(login, done);
    if (rc != NS_OK) die("server signature", rc, NULL);
    uint32_t id = done->body.login_proof.user_id;
    /* PROTOCOL.md 8.4, rule 1: continue above what the server decided for this user. */
    ns_conn_set_next_req_id(c, done->body.login_proof.req_id_hw + 1);
    printf("logged in %s id=%u (server signature checked)\n", user, id);
    ns_response_free(done);
    ns_scram_client_free(login);
    return id;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s HOST PORT USER PASSWORD\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (getenv("NS_CLIENT_LOG")) ns_set_log(ns_log_stderr, NULL);
    const char *host = argv[1];
    uint16_t port = (uint16_t)atoi(argv[2]);
    const char *user = argv[3];
    const char *password = argv[4];
    char peer[64];
    snprintf(peer, sizeof peer, "%.27s-peer", user);

    const char *ca = getenv("NS_TLS_CA");
    ns_conn *a = NULL, *b = NULL;
    int rc = ca ? ns_connect_tls(host, port, 5000, ca, NULL, &a) : ns_connect(host, port, 5000, &a);
    if (rc != NS_OK) die("connect", rc, NULL);
    rc = ca ? ns_connect_tls(host, port, 5000, ca, NULL, &b) : ns_connect(host, port, 5000, &b);
    if (rc != NS_OK) die("connect", rc, NULL);
    if (ca) printf("tls verified against %s\n", ca);

    ns_request req;
    req.opcode = NS_OP_HELLO;
    req.body.hello.client = str("ns_client.c");
    ns_response *r = call_ok(a, &req, "hello");
    printf("hello server=%.*s worker=%u\n", (int)r->body.hello.server.len,
           (const char *)r->body.hello.server.ptr, r->body.hello.worker_id);
    ns_response_free(r);

    uint32_t me = register_and_login(a, user, password);
    uint32_t other = register_and_login(b, peer, password);

    req.opcode = NS_OP_BALANCE;
    r = call_ok(a, &req, "balance");
    uint64_t start = r->body.balance.balance;
    ns_response_free(r);

    req.opcode = NS_OP_DEPOSIT;
    req.body.amount.amount = 1000;
    r = call_ok(a, &req, "deposit");
    printf("deposit 1000 balance=%llu txn=%llu\n", (unsigned long long)r->body.ledger.balance,
           (unsigned long long)r->body.ledger.txn_id);
    if (r->body.ledger.balance != start + 1000) die("deposit balance", NS_ERR_INVALID, NULL);
    uint64_t deposit_txn = r->body.ledger.txn_id;
    ns_response_free(r);

    req.opcode = NS_OP_TRANSFER;
    req.body.transfer.to_id = 0;
    req.body.transfer.to_name = str(peer);
    req.body.transfer.amount = 250;
    r = call_ok(a, &req, "transfer");
    printf("transfer 250 to %s balance=%llu txn=%llu\n", peer,
           (unsigned long long)r->body.ledger.balance, (unsigned long long)r->body.ledger.txn_id);
    uint64_t transfer_txn = r->body.ledger.txn_id;
    ns_response_free(r);

    req.opcode = NS_OP_BALANCE;
    r = call_ok(a, &req, "balance");
    printf("balance=%llu\n", (unsigned long long)r->body.balance.balance);
    if (r->body.balance.balance != start + 750) die("balance after transfer", NS_ERR_INVALID, NULL);
    ns_response_free(r);

    req.opcode = NS_OP_TXN_HISTORY;
    req.body.txn_history.before_txn_id = 0;
    req.body.txn_history.limit = 10;
    r = call_ok(a, &req, "history");
    const ns_txn_history_resp *h = &r->body.txn_history;
    printf("history entries=%zu\n", h->len);
    if (h->len < 2 || h->items[0].txn_id != transfer_txn || h->items[0].kind != 3 ||
        h->items[0].to_id != other || h->items[0].from_id != me || h->items[1].txn_id != deposit_txn || h->items[1].kind != 1) {
        die("history", NS_ERR_INVALID, NULL);
    }
    for (size_t i = 0; i < 2; i++) {
        printf("  txn=%llu kind=%u from=%u to=%u amount=%llu balance_after=%llu\n",
               (unsigned long long)h->items[i].txn_id, h->items[i].kind, h->items[i].from_id,
               h->items[i].to_id, (unsigned long long)h->items[i].amount,
               (unsigned long long)h->items[i].balance_after);
    }
    ns_response_free(r);

    req.opcode = NS_OP_JOIN_ROOM;
    req.body.join_room.room = str("c-lobby");
    r = call_ok(a, &req, "join");
    uint32_t room = r->body.join_room.room_id;
    printf("joined c-lobby id=%u\n", room);
    ns_response_free(r);
    r = call_ok(b, &req, "peer join");
    ns_response_free(r);

    req.opcode = NS_OP_CHAT_SEND;
    req.body.chat_send.room_id = room;
    req.body.chat_send.text = str("hello from C");
    r = call_ok(a, &req, "chat send");
    uint64_t seq = r->body.chat_send.seq;
    printf("sent seq=%llu\n", (unsigned long long)seq);
    ns_response_free(r);

    /* The peer gets the push (skipping anything else pushed meanwhile). */
    for (;;) {
        ns_push *p = NULL;
        rc = ns_next_push(b, 5000, &p);
        if (rc != NS_OK) die("push", rc, NULL);
        if (p->opcode == NS_OP_CHAT_BROADCAST && p->body.chat.message.seq == seq) {
            const ns_room_message *m = &p->body.chat.message;
            printf("push to %s: room=%u seq=%llu from=%.*s text=%.*s\n", peer, p->body.chat.room_id,
                   (unsigned long long)m->seq, (int)m->sender.len, (const char *)m->sender.ptr,
                   (int)m->text.len, (const char *)m->text.ptr);
            ns_push_free(p);
            break;
        }
        ns_push_free(p);
    }

    for (int i = 0; i < 3; i++) {
        req.opcode = NS_OP_HEARTBEAT;
        req.body.heartbeat.client_time_ms = (uint64_t)i;
        r = call_ok(a, &req, "heartbeat");
        if (r->body.heartbeat.client_time_ms != (uint64_t)i) die("heartbeat echo", NS_ERR_INVALID, NULL);
        ns_response_free(r);
    }
    printf("heartbeats 3\n");

    req.opcode = NS_OP_LOGOUT;
    r = call_ok(a, &req, "logout");
    ns_response_free(r);
    ns_conn_close(a);
    ns_conn_close(b);
    printf("OK\n");
    return 0;
}
