//! The mixes in RESP, for a Redis-compatible server: what a Redis user would build for the
//! same operations, loaded by the client at start.
//!
//! | NS request                | RESP                                                        |
//! |---------------------------|-------------------------------------------------------------|
//! | HEARTBEAT                 | `PING`                                                      |
//! | BALANCE                   | `GET <p>bal:<i>`                                            |
//! | TRANSFER 1 to a hot user  | `EVALSHA <transfer> 3 <p>bal:<i> <p>bal:<to> <p>txn 1`      |
//! | DEPOSIT 1                 | `EVALSHA <deposit> 3 <p>bal:<i> <p>txn <p>deposited 1`      |
//! | CHAT_SEND to the room     | `PUBLISH <p>room:<r> <text>` (members: `SUBSCRIBE`d, RESP3) |
//!
//! `<p>` is `nsb:<seed>:`, `<i>` the connection's index. The scripts check what the server
//! checks (amount > 0, enough funds, the recipient exists, no overflow) before they change
//! anything, so a refused operation changes nothing, answer `{balance, txn id}` as NS does,
//! and run atomically (Redis runs a script alone). Each keeps a running total of deposits, so
//! that [`audit`] checks over the wire what `uring-server audit` checks in shared memory: the
//! balances sum to what was deposited, and none is negative. What they do not do: keep a
//! per-user transaction history or the req_id outcome table of NS's exactly-once rules.
//!
//! Chat: a connection both publishes and is subscribed to its room's channel, as an NS
//! connection both sends and receives its room's messages (the sender too gets its own). RESP2
//! forbids commands on a subscribed connection, so chat connections speak RESP3 (`HELLO 3`,
//! Redis 6 or later), where a message arrives as a push beside the replies.

use std::sync::Arc;
use std::time::Duration;

use crate::load::{Config, Op};
use crate::resp::{write_bulk, Conn, Value};

/// The checked transfer. KEYS: from, to, txn counter; ARGV: amount. Balances are kept below
/// 2^53, where Lua's numbers are exact. An error's first word is its code (NS's status name);
/// Redis 7 puts `ERR ` before a message of one word, hence the words after it.
pub const TRANSFER_SCRIPT: &str = r"
local amount = tonumber(ARGV[1])
if not amount or amount < 1 or amount % 1 ~= 0 then return redis.error_reply('ERR_INVALID_AMOUNT the amount must be a whole number above 0') end
if KEYS[1] == KEYS[2] then return redis.error_reply('ERR_INVALID_ARGUMENT a transfer to oneself') end
local to = redis.call('GET', KEYS[2])
if not to then return redis.error_reply('ERR_NOT_FOUND no such account') end
local from = tonumber(redis.call('GET', KEYS[1]) or '0')
if from < amount then return redis.error_reply('ERR_INSUFFICIENT_FUNDS the account holds less than the amount') end
if tonumber(to) + amount > 9007199254740991 then return redis.error_reply('ERR_OVERFLOW the result would exceed 2^53-1') end
local left = redis.call('DECRBY', KEYS[1], amount)
redis.call('INCRBY', KEYS[2], amount)
return {left, redis.call('INCR', KEYS[3])}
";

/// The checked deposit. KEYS: account, txn counter, deposits total; ARGV: amount.
pub const DEPOSIT_SCRIPT: &str = r"
local amount = tonumber(ARGV[1])
if not amount or amount < 1 or amount % 1 ~= 0 then return redis.error_reply('ERR_INVALID_AMOUNT the amount must be a whole number above 0') end
local bal = tonumber(redis.call('GET', KEYS[1]) or '0')
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if bal + amount > 9007199254740991 or total + amount > 9007199254740991 then
  return redis.error_reply('ERR_OVERFLOW the result would exceed 2^53-1')
end
local b = redis.call('INCRBY', KEYS[1], amount)
redis.call('INCRBY', KEYS[3], amount)
return {b, redis.call('INCR', KEYS[2])}
";

/// What every connection of a RESP run shares: the key prefix, the loaded scripts, and every
/// key and command head already encoded as RESP, so that a request is a few copies.
#[derive(Debug)]
pub struct RespSetup {
    prefix: String,
    deposit_sha: String,
    txn_key: Vec<u8>,
    deposited_key: Vec<u8>,
    /// `$n\r\n<p>bal:<i>\r\n` per connection index.
    balance_keys: Vec<Vec<u8>>,
    /// `$n\r\n<p>room:<r>\r\n` per room.
    channels: Vec<Vec<u8>>,
    /// `*7 EVALSHA <sha> 3` of each script.
    transfer_head: Vec<u8>,
    deposit_head: Vec<u8>,
    /// The txn counter's and the deposits total's keys, and the amount 1, as bulk strings.
    txn_bulk: Vec<u8>,
    deposited_bulk: Vec<u8>,
}

/// The prefix of a run's keys.
pub fn prefix(seed: u64) -> String {
    format!("nsb:{}:", seed % 1_000_000)
}

fn load_script(conn: &mut Conn, script: &str) -> anyhow::Result<String> {
    conn.call(&[b"SCRIPT", b"LOAD", script.as_bytes()], |v| match v {
        Value::Bulk(sha) => Ok(String::from_utf8_lossy(sha).into_owned()),
        other => anyhow::bail!("SCRIPT LOAD answered {other:?}"),
    })
}

fn bulk(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    write_bulk(&mut out, s);
    out
}

fn evalsha_head(sha: &str) -> Vec<u8> {
    let mut out = b"*7\r\n$7\r\nEVALSHA\r\n".to_vec();
    write_bulk(&mut out, sha.as_bytes());
    write_bulk(&mut out, b"3");
    out
}

/// The amount of every transfer and deposit of the load: 1.
const ONE: &[u8] = b"$1\r\n1\r\n";

impl RespSetup {
    /// Loads the scripts (SCRIPT LOAD, on a connection of its own) and encodes the keys.
    pub fn prepare(cfg: &Config) -> anyhow::Result<Arc<RespSetup>> {
        let mut conn = Conn::connect(cfg.addr, Duration::from_secs(10), cfg.tls.as_ref())?;
        let transfer_sha = load_script(&mut conn, TRANSFER_SCRIPT)?;
        let deposit_sha = load_script(&mut conn, DEPOSIT_SCRIPT)?;
        Ok(Arc::new(RespSetup::new(
            cfg.seed,
            cfg.connections,
            cfg.room_count(),
            &transfer_sha,
            &deposit_sha,
        )))
    }

    /// The keys of a run with this seed, connections and rooms, for scripts of these SHA1s.
    pub fn new(
        seed: u64,
        connections: usize,
        rooms: usize,
        transfer_sha: &str,
        deposit_sha: &str,
    ) -> RespSetup {
        let prefix = prefix(seed);
        let txn_key = format!("{prefix}txn").into_bytes();
        let deposited_key = format!("{prefix}deposited").into_bytes();
        RespSetup {
            balance_keys: (0..connections)
                .map(|i| bulk(format!("{prefix}bal:{i}").as_bytes()))
                .collect(),
            channels: (0..rooms.max(1))
                .map(|r| bulk(format!("{prefix}room:{r}").as_bytes()))
                .collect(),
            transfer_head: evalsha_head(transfer_sha),
            deposit_head: evalsha_head(deposit_sha),
            txn_bulk: bulk(&txn_key),
            deposited_bulk: bulk(&deposited_key),
            deposit_sha: deposit_sha.to_string(),
            txn_key,
            deposited_key,
            prefix,
        }
    }

    /// Connection `i`: funded to 1,000,000 by the deposit script if below it (as NS's setup
    /// deposits), and for the chat mixes switched to RESP3 and subscribed to its room's
    /// channel. Returns the socket and the room's number.
    pub fn connection(&self, cfg: &Config, i: usize) -> anyhow::Result<(crate::Stream, u32)> {
        let mut c = Conn::connect(cfg.addr, Duration::from_secs(10), cfg.tls.as_ref())?;
        let key = format!("{}bal:{i}", self.prefix);
        let balance = c.call(&[b"GET", key.as_bytes()], |v| Ok(v.as_int().unwrap_or(0)))?;
        if balance < 1_000_000 {
            c.ok(&[
                b"EVALSHA",
                self.deposit_sha.as_bytes(),
                b"3",
                key.as_bytes(),
                &self.txn_key,
                &self.deposited_key,
                b"1000000",
            ])?;
        }
        let room = (i % cfg.room_count()) as u32;
        if cfg.mix.chats() {
            c.call(&[b"HELLO", b"3"], |v| match v {
                Value::Map(_) => Ok(()),
                other => anyhow::bail!(
                    "HELLO 3 answered {other:?}: the chat mixes need RESP3 (Redis 6 or later)"
                ),
            })?;
            let channel = format!("{}room:{room}", self.prefix);
            c.call(&[b"SUBSCRIBE", channel.as_bytes()], |v| match v {
                Value::Push(items) if items.first() == Some(Value::Bulk(b"subscribe")) => Ok(()),
                other => anyhow::bail!("SUBSCRIBE answered {other:?}"),
            })?;
        }
        Ok((c.into_stream()?, room))
    }

    /// Appends `op` for connection `me` (recipient `to`, room `room`, chat text `text`).
    pub fn encode(&self, out: &mut Vec<u8>, op: Op, me: u32, to: u32, room: u32, text: &str) {
        let key = |i: u32| {
            self.balance_keys
                .get(i as usize)
                .map_or(&[][..], Vec::as_slice)
        };
        match op {
            Op::Heartbeat => out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n"),
            Op::Balance => {
                out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                out.extend_from_slice(key(me));
            }
            Op::Transfer => {
                out.extend_from_slice(&self.transfer_head);
                out.extend_from_slice(key(me));
                out.extend_from_slice(key(to));
                out.extend_from_slice(&self.txn_bulk);
                out.extend_from_slice(ONE);
            }
            Op::Deposit => {
                out.extend_from_slice(&self.deposit_head);
                out.extend_from_slice(key(me));
                out.extend_from_slice(&self.txn_bulk);
                out.extend_from_slice(&self.deposited_bulk);
                out.extend_from_slice(ONE);
            }
            Op::ChatSend => {
                out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
                let ch = self.channels.get(room as usize);
                out.extend_from_slice(ch.map_or(&[][..], Vec::as_slice));
                write_bulk(out, text.as_bytes());
            }
        }
    }
}

/// An error reply's first word as the name the reports count it under.
pub fn error_name(code: &[u8]) -> &'static str {
    match code {
        b"ERR_INSUFFICIENT_FUNDS" => "ERR_INSUFFICIENT_FUNDS",
        b"ERR_NOT_FOUND" => "ERR_NOT_FOUND",
        b"ERR_OVERFLOW" => "ERR_OVERFLOW",
        b"ERR_INVALID_AMOUNT" => "ERR_INVALID_AMOUNT",
        b"ERR_INVALID_ARGUMENT" => "ERR_INVALID_ARGUMENT",
        b"NOSCRIPT" => "RESP_NOSCRIPT",
        b"OOM" => "RESP_OOM",
        b"BUSY" => "RESP_BUSY",
        b"LOADING" => "RESP_LOADING",
        b"ERR" => "RESP_ERR",
        _ => "RESP_OTHER_ERROR",
    }
}

/// What [`audit`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Accounts (`<p>bal:*` keys) read.
    pub accounts: u64,
    /// Their sum.
    pub sum: i64,
    /// The deposits total the deposit script kept.
    pub deposited: i64,
    /// Accounts below zero.
    pub negative: u64,
}

impl Audit {
    /// The ledger's invariant: money neither made nor lost, nobody below zero.
    pub fn holds(&self) -> bool {
        self.sum == self.deposited && self.negative == 0
    }
}

/// Reads a run's accounts over the wire (SCAN + MGET, never KEYS) and its deposits total.
pub fn audit(
    addr: std::net::SocketAddr,
    seed: u64,
    tls: Option<&crate::ClientTls>,
) -> anyhow::Result<Audit> {
    let mut c = Conn::connect(addr, Duration::from_secs(10), tls)?;
    let p = prefix(seed);
    let pattern = format!("{p}bal:*");
    let mut cursor = b"0".to_vec();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let next = c.call(
            &[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ],
            |v| match v {
                Value::Array(parts) => match parts.to_vec().as_slice() {
                    [Value::Bulk(next), Value::Array(found)] => {
                        for k in found.iter() {
                            if let Value::Bulk(k) = k {
                                keys.push(k.to_vec());
                            }
                        }
                        Ok(next.to_vec())
                    }
                    _ => anyhow::bail!("SCAN answered {v:?}"),
                },
                other => anyhow::bail!("SCAN answered {other:?}"),
            },
        )?;
        if next == b"0" {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    let mut a = Audit {
        accounts: keys.len() as u64,
        sum: 0,
        deposited: 0,
        negative: 0,
    };
    for chunk in keys.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(chunk.iter().map(Vec::as_slice));
        c.call(&args, |v| {
            let Value::Array(vals) = v else {
                anyhow::bail!("MGET answered {v:?}");
            };
            for v in vals.iter() {
                let b = v
                    .as_int()
                    .ok_or_else(|| anyhow::anyhow!("a balance is not an integer: {v:?}"))?;
                a.sum = a
                    .sum
                    .checked_add(b)
                    .ok_or_else(|| anyhow::anyhow!("the balances overflow"))?;
                a.negative += u64::from(b < 0);
            }
            Ok(())
        })?;
    }
    let deposited_key = format!("{p}deposited");
    a.deposited = c
        .call(&[b"GET", deposited_key.as_bytes()], |v| Ok(v.as_int()))?
        .unwrap_or(0);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_error_is_counted_under_its_code() {
        let line = b"-ERR_INSUFFICIENT_FUNDS the account holds less than the amount\r\n";
        let (v, _) = crate::resp::parse(line).expect("parse").expect("complete");
        assert_eq!(
            v.error_code().map(error_name),
            Some("ERR_INSUFFICIENT_FUNDS")
        );
        assert_eq!(error_name(b"NOSCRIPT"), "RESP_NOSCRIPT");
        assert_eq!(error_name(b"WRONGTYPE"), "RESP_OTHER_ERROR");
        assert_eq!(prefix(1_000_042), "nsb:42:");
    }

    #[test]
    fn every_operation_encodes_as_the_command_the_table_says() {
        let s = RespSetup::new(7, 3, 2, "T", "D");
        let text = "t=00000000000000000001|xx";
        let mut out = Vec::new();
        let cases: [(Op, &[&str]); 5] = [
            (Op::Heartbeat, &["PING"]),
            (Op::Balance, &["GET", "nsb:7:bal:2"]),
            (
                Op::Transfer,
                &[
                    "EVALSHA",
                    "T",
                    "3",
                    "nsb:7:bal:2",
                    "nsb:7:bal:0",
                    "nsb:7:txn",
                    "1",
                ],
            ),
            (
                Op::Deposit,
                &[
                    "EVALSHA",
                    "D",
                    "3",
                    "nsb:7:bal:2",
                    "nsb:7:txn",
                    "nsb:7:deposited",
                    "1",
                ],
            ),
            (Op::ChatSend, &["PUBLISH", "nsb:7:room:1", text]),
        ];
        for (op, _) in &cases {
            s.encode(&mut out, *op, 2, 0, 1, text);
        }
        let mut at = 0;
        for (op, want) in cases {
            let (v, n) = crate::resp::parse(&out[at..])
                .expect("parse")
                .expect("whole");
            at += n;
            let Value::Array(items) = v else {
                panic!("{op:?}: not an array: {v:?}");
            };
            let got: Vec<String> = items
                .iter()
                .map(|a| match a {
                    Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                    other => panic!("{op:?}: not a bulk string: {other:?}"),
                })
                .collect();
            assert_eq!(got, want, "{op:?}");
        }
        assert_eq!(at, out.len());
    }
}
