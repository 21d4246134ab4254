//! The RESP side of the load generator against a real `redis-server` (installed by `.ci/run`):
//! the scripts refuse what the NS server refuses, every mix runs, the ledger audits over the
//! wire, and `bench-client peers` writes both servers' rows and the side-by-side table.
//!
//! Without redis-server these tests fail, unless `NS_SKIP_REDIS=1` says to skip them.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bench_client::load::{self, Mix, Protocol};
use bench_client::resp::{Conn, Value};
use bench_client::resp_mix::{self, DEPOSIT_SCRIPT, TRANSFER_SCRIPT};
use bench_client::scratch::ScratchDir;
use bench_client::server::{locate_redis, Durability, SpawnedRedis, REDIS_MISSING};

/// A redis-server of this test's own, or `None` when it is missing and NS_SKIP_REDIS is set.
fn redis(durability: Durability) -> Option<SpawnedRedis> {
    let Some(exe) = locate_redis() else {
        if std::env::var_os("NS_SKIP_REDIS").is_some() {
            eprintln!("NS_SKIP_REDIS set: skipped ({REDIS_MISSING})");
            return None;
        }
        panic!("{REDIS_MISSING}; or set NS_SKIP_REDIS=1 to skip the Redis tests");
    };
    Some(SpawnedRedis::start(&exe, durability, &[]).expect("start redis-server"))
}

fn sha(c: &mut Conn, script: &str) -> Vec<u8> {
    c.call(&[b"SCRIPT", b"LOAD", script.as_bytes()], |v| match v {
        Value::Bulk(s) => Ok(s.to_vec()),
        other => anyhow::bail!("{other:?}"),
    })
    .expect("SCRIPT LOAD")
}

/// The reply as text: `ERR_...` for an error, `[balance, txn]` for a script's answer.
fn eval(c: &mut Conn, args: &[&[u8]]) -> String {
    c.call(args, |v| {
        Ok(match v {
            Value::Error(_) => {
                String::from_utf8_lossy(v.error_code().unwrap_or_default()).into_owned()
            }
            Value::Array(items) => format!(
                "{:?}",
                items
                    .iter()
                    .map(|i| i.as_int().unwrap_or(-1))
                    .collect::<Vec<_>>()
            ),
            other => format!("{other:?}"),
        })
    })
    .expect("call")
}

fn get(c: &mut Conn, key: &str) -> Option<i64> {
    c.call(&[b"GET", key.as_bytes()], |v| Ok(v.as_int()))
        .expect("GET")
}

#[test]
fn the_scripts_refuse_what_the_server_refuses_and_then_change_nothing() {
    let Some(r) = redis(Durability::None) else {
        return;
    };
    let mut c = Conn::connect(r.addr, Duration::from_secs(5), None).expect("connect");
    let (t, d) = (sha(&mut c, TRANSFER_SCRIPT), sha(&mut c, DEPOSIT_SCRIPT));
    let seed = 77;
    let p = resp_mix::prefix(seed);
    let (a, b, txn, dep) = (
        format!("{p}bal:0"),
        format!("{p}bal:1"),
        format!("{p}txn"),
        format!("{p}deposited"),
    );
    let (a, b, txn, dep) = (a.as_bytes(), b.as_bytes(), txn.as_bytes(), dep.as_bytes());
    let deposit = |c: &mut Conn, who: &[u8], amount: &[u8]| {
        eval(c, &[b"EVALSHA", &d, b"3", who, txn, dep, amount])
    };
    let transfer = |c: &mut Conn, from: &[u8], to: &[u8], amount: &[u8]| {
        eval(c, &[b"EVALSHA", &t, b"3", from, to, txn, amount])
    };
    assert_eq!(deposit(&mut c, a, b"10"), "[10, 1]");
    // The recipient does not exist yet.
    assert_eq!(transfer(&mut c, a, b, b"1"), "ERR_NOT_FOUND");
    assert_eq!(deposit(&mut c, b, b"5"), "[5, 2]");
    assert_eq!(transfer(&mut c, a, b, b"11"), "ERR_INSUFFICIENT_FUNDS");
    assert_eq!(transfer(&mut c, a, b, b"0"), "ERR_INVALID_AMOUNT");
    assert_eq!(transfer(&mut c, a, b, b"-3"), "ERR_INVALID_AMOUNT");
    assert_eq!(transfer(&mut c, a, b, b"1.5"), "ERR_INVALID_AMOUNT");
    assert_eq!(transfer(&mut c, a, b, b"x"), "ERR_INVALID_AMOUNT");
    assert_eq!(transfer(&mut c, a, a, b"1"), "ERR_INVALID_ARGUMENT");
    assert_eq!(deposit(&mut c, a, b"0"), "ERR_INVALID_AMOUNT");
    assert_eq!(deposit(&mut c, a, b"9007199254740991"), "ERR_OVERFLOW");
    // Nothing refused changed a balance, the txn counter or the deposits total.
    assert_eq!(
        (
            get(&mut c, &p_key(&p, "bal:0")),
            get(&mut c, &p_key(&p, "bal:1"))
        ),
        (Some(10), Some(5))
    );
    assert_eq!(get(&mut c, &p_key(&p, "txn")), Some(2));
    assert_eq!(get(&mut c, &p_key(&p, "deposited")), Some(15));
    // The whole balance moves; the answer is the payer's balance and the next txn id.
    assert_eq!(transfer(&mut c, a, b, b"10"), "[0, 3]");
    assert_eq!(get(&mut c, &p_key(&p, "bal:1")), Some(15));
    assert_eq!(transfer(&mut c, a, b, b"1"), "ERR_INSUFFICIENT_FUNDS");
    let audit = resp_mix::audit(r.addr, seed, None).expect("audit");
    assert_eq!(
        (audit.accounts, audit.sum, audit.deposited, audit.negative),
        (2, 15, 15, 0)
    );
    assert!(audit.holds());
    // Money made outside the scripts is seen.
    c.ok(&[b"INCRBY", a, b"1"]).expect("INCRBY");
    assert!(!resp_mix::audit(r.addr, seed, None).expect("audit").holds());
}

fn p_key(p: &str, k: &str) -> String {
    format!("{p}{k}")
}

fn cfg(addr: SocketAddr, mix: Mix, pid: u32) -> load::Config {
    load::Config {
        tls: None,
        addr,
        protocol: Protocol::Resp,
        connections: 12,
        threads: 2,
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(200),
        mix,
        payload: 64,
        pipeline: 2,
        rate: None,
        hot_accounts: 4,
        rooms: 3,
        publishers: 10,
        seed: 500 + mix as u64,
        server_pids: vec![pid],
        client_cpus: Vec::new(),
    }
}

#[test]
fn every_resp_mix_runs_against_redis_server_and_its_ledger_audits_over_the_wire() {
    let Some(r) = redis(Durability::None) else {
        return;
    };
    for mix in [
        Mix::Heartbeat,
        Mix::Balance,
        Mix::TradeHeavy,
        Mix::ChatHeavy,
        Mix::Mixed,
        Mix::Fanout,
    ] {
        let cfg = cfg(r.addr, mix, r.pid());
        let res = load::run(&cfg).expect("run");
        assert!(
            res.total.requests > 100,
            "{mix:?}: {} requests",
            res.total.requests
        );
        assert!(
            res.total.errors.is_empty(),
            "{mix:?}: errors {:?}",
            res.total.errors
        );
        assert!(
            res.server_cpu_s.is_some_and(|s| s > 0.0),
            "{mix:?}: server CPU"
        );
        let by_op = |i: load::Op| res.ops[i as usize].requests;
        match mix {
            Mix::Heartbeat => assert_eq!(by_op(load::Op::Heartbeat), res.total.requests),
            Mix::Balance => assert_eq!(by_op(load::Op::Balance), res.total.requests),
            Mix::TradeHeavy => {
                assert!(by_op(load::Op::Transfer) > by_op(load::Op::Deposit));
                assert!(by_op(load::Op::Deposit) > 0 && by_op(load::Op::ChatSend) == 0);
            }
            _ => {}
        }
        if mix == Mix::Fanout {
            // One channel, 12 subscribers, 10 of them publishing: every message reaches all 12
            // (the window's edges cut a few), and only publishes are sent.
            let sends = by_op(load::Op::ChatSend);
            assert_eq!(sends, res.total.requests, "only publishes");
            assert!(
                res.pushes >= 10 * sends,
                "{} pushes for {sends}",
                res.pushes
            );
        } else if mix.chats() {
            // 12 connections in 3 rooms: every message reaches its 4 members, sender included
            // (the window's edges cut a few).
            let sends = by_op(load::Op::ChatSend);
            assert!(sends > 0, "{mix:?}: no chat sends");
            assert!(
                res.pushes >= 3 * sends,
                "{mix:?}: {} pushes for {sends} sends",
                res.pushes
            );
            assert!(res.push_latency_us.len() == res.pushes);
        } else {
            assert_eq!(res.pushes, 0, "{mix:?}");
        }
        if matches!(mix, Mix::TradeHeavy | Mix::Mixed) {
            let a = resp_mix::audit(r.addr, cfg.seed, None).expect("audit");
            assert_eq!(a.accounts, 12, "{mix:?}");
            // Funded with 1,000,000 each, plus the deposits of 1 that ran.
            assert!(a.deposited > 12 * 1_000_000, "{mix:?}: {a:?}");
            assert!(a.holds(), "{mix:?}: {a:?}");
        }
    }
}

#[test]
fn a_durable_redis_writes_its_append_only_file_and_the_mixes_run_on_it() {
    let Some(r) = redis(Durability::Sync) else {
        return;
    };
    let mut c = Conn::connect(r.addr, Duration::from_secs(5), None).expect("connect");
    let conf = |c: &mut Conn, key: &[u8]| {
        c.call(&[b"CONFIG", b"GET", key], |v| match v {
            Value::Array(kv) => match kv.to_vec().as_slice() {
                [_, Value::Bulk(val)] => Ok(String::from_utf8_lossy(val).into_owned()),
                _ => anyhow::bail!("{v:?}"),
            },
            other => anyhow::bail!("{other:?}"),
        })
        .expect("CONFIG GET")
    };
    assert_eq!(conf(&mut c, b"appendonly"), "yes");
    assert_eq!(conf(&mut c, b"appendfsync"), "always");
    assert_eq!(conf(&mut c, b"save"), "");
    let res = load::run(&cfg(r.addr, Mix::TradeHeavy, r.pid())).expect("run");
    assert!(res.total.requests > 100 && res.total.errors.is_empty());
    let info = c
        .call(&[b"INFO", b"persistence"], |v| match v {
            Value::Bulk(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            other => anyhow::bail!("{other:?}"),
        })
        .expect("INFO");
    assert!(info.contains("aof_enabled:1"), "{info}");
    assert!(info.contains("aof_last_write_status:ok"), "{info}");
}

fn read_csv(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).expect("csv");
    let head = r.headers().expect("headers").clone();
    r.records()
        .map(|rec| {
            let rec = rec.expect("record");
            head.iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn peers_runs_both_servers_interleaved_and_writes_rows_summary_pairs_and_table() {
    if redis(Durability::None).is_none() {
        return;
    }
    let dir = ScratchDir::new("bc-peers").expect("scratch dir");
    let out = dir.join("p.csv");
    let status = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(["peers", "--mix", "balance,trade-heavy", "--pipeline", "1,4"])
        .args([
            "--durability",
            "none,sync",
            "--repeat",
            "2",
            "--duration",
            "0.3",
        ])
        .args(["--warmup", "0.1", "--connections", "6", "--threads", "1"])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run bench-client peers");
    assert!(status.success());
    let rows = read_csv(&out);
    // 2 durabilities x 2 repeats x 2 mixes x 2 pipelines x 2 servers.
    assert_eq!(rows.len(), 32);
    for r in &rows {
        let redis = r["protocol"] == "resp";
        assert_eq!(r["server"].starts_with("redis-server"), redis, "{r:?}");
        assert!(r["requests"].parse::<u64>().expect("requests") > 0, "{r:?}");
        assert_eq!(r["errors"], "0", "{r:?}");
        assert!(!r["server_cpu_us_per_req"].is_empty(), "{r:?}");
        if r["mix"] == "trade-heavy" {
            assert_eq!(r["audit"], "pass", "{r:?}");
        }
    }
    // Interleaved: within a durability, the servers alternate cell by cell.
    let servers: Vec<&str> = rows.iter().map(|r| r["protocol"].as_str()).collect();
    assert_eq!(&servers[..4], ["ns", "resp", "ns", "resp"]);
    assert_eq!(
        &servers[8..12],
        ["resp", "ns", "resp", "ns"],
        "repeat 1 runs B first"
    );
    let durabilities: Vec<&str> = rows.iter().map(|r| r["durability"].as_str()).collect();
    assert!(durabilities[..16].iter().all(|d| *d == "none"));
    assert!(durabilities[16..].iter().all(|d| *d == "sync"));
    let summary = read_csv(&dir.join("p-summary.csv"));
    assert_eq!(summary.len(), 16);
    assert!(summary.iter().all(|r| r["runs"] == "2"));
    assert_eq!(read_csv(&dir.join("p-pairs.csv")).len(), 8);
    let table = std::fs::read_to_string(dir.join("p-table.md")).expect("table");
    assert!(
        table.contains("| none | tcp | BALANCE / GET | 4 |"),
        "{table}"
    );
    assert!(
        table.contains("| sync | tcp | trade-heavy / transfer script | 1 |"),
        "{table}"
    );
}

#[test]
fn peers_over_tls_runs_both_servers_on_both_transports_and_says_what_tls_keeps() {
    if redis(Durability::None).is_none() {
        return;
    }
    let dir = ScratchDir::new("bc-peers-tls").expect("scratch dir");
    let out = dir.join("p.csv");
    let status = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(["peers", "--mix", "balance,chat-heavy", "--pipeline", "1"])
        .args(["--durability", "none", "--transport", "tcp,tls"])
        .args(["--repeat", "1", "--duration", "0.3", "--warmup", "0.1"])
        .args(["--connections", "6", "--threads", "1", "--out"])
        .arg(&out)
        .status()
        .expect("run bench-client peers");
    assert!(status.success());
    let rows = read_csv(&out);
    // 2 mixes x 2 servers x 2 transports.
    assert_eq!(rows.len(), 8);
    let mut seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            assert!(r["requests"].parse::<u64>().expect("requests") > 0, "{r:?}");
            assert_eq!(r["errors"], "0", "{r:?}");
            (
                r["protocol"].clone(),
                r["transport"].clone(),
                r["mix"].clone(),
            )
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every server on every transport: {seen:?}");
    let table = std::fs::read_to_string(dir.join("p-table.md")).expect("table");
    assert!(
        table.contains("| none | tls | BALANCE / GET | 1 |"),
        "{table}"
    );
    assert!(table.contains("TLS against plaintext"), "{table}");
    assert!(table.contains("| none | chat-heavy | 1 |"), "{table}");
}

#[test]
fn peers_without_redis_server_says_how_to_install_it_and_runs_this_server_alone() {
    let dir = ScratchDir::new("bc-peers-alone").expect("scratch dir");
    let out = dir.join("p.csv");
    let o = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .env("NS_REDIS_SERVER", dir.join("no-such-redis-server"))
        .args(["peers", "--mix", "heartbeat", "--pipeline", "1"])
        .args(["--durability", "none", "--repeat", "1", "--duration", "0.2"])
        .args(["--warmup", "0.1", "--connections", "4", "--threads", "1"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run bench-client peers");
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("apt-get install redis-server"), "{err}");
    assert!(err.contains("ALONE"), "{err}");
    let rows = read_csv(&out);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["protocol"], "ns");
    let table = std::fs::read_to_string(dir.join("p-table.md")).expect("table");
    assert!(table.contains("redis-server was not found"), "{table}");
}
