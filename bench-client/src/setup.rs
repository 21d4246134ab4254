//! Before the load: every connection set up in its protocol, in parallel (NS: logged in as its
//! own user, funded, in its room; RESP: funded and subscribed).

use std::time::Duration;

use proto::body::*;
use proto::{Request, Status};

use crate::client::Client;
use crate::load::{Config, Protocol};
use crate::resp_mix::RespSetup;

/// The connections, the hot accounts, the number of distinct workers the connections landed on,
/// and (RESP) what the load needs to encode its requests.
pub(crate) type Connected = (
    Vec<Ready>,
    Vec<u32>,
    usize,
    Option<std::sync::Arc<RespSetup>>,
);

/// Sets every connection of `cfg` up in its protocol.
pub(crate) fn connect_all(cfg: &Config) -> anyhow::Result<Connected> {
    Ok(match cfg.protocol {
        Protocol::Ns => {
            let (ready, hot, seen) = setup_ns(cfg)?;
            (ready, hot, seen, None)
        }
        Protocol::Resp => {
            let setup = RespSetup::prepare(cfg)?;
            let ready = in_parallel(cfg, {
                let setup = setup.clone();
                move |cfg, i| {
                    let (stream, room_id) = setup.connection(cfg, i)?;
                    Ok(Ready {
                        stream,
                        user_id: i as u32,
                        room_id,
                        next_req_id: 0,
                    })
                }
            })?;
            let hot = (0..cfg.hot_accounts.max(2).min(cfg.connections) as u32).collect();
            // One event loop serves every command in Redis.
            (ready, hot, 1, Some(setup))
        }
    })
}

/// A connection set up for the load: logged in (NS) or funded and subscribed (RESP).
pub(crate) struct Ready {
    /// The stream, logged in and ready for the load.
    pub(crate) stream: crate::Stream,
    /// Its user (NS) or account index (RESP).
    pub(crate) user_id: u32,
    /// The room (NS) or channel (RESP) it is in for the chat mixes.
    pub(crate) room_id: u32,
    /// Where its request ids continue.
    pub(crate) next_req_id: u64,
}

/// NS: every connection logs in as its own user (registered and funded if new) and joins its
/// room for the chat mixes. Returns the connections, the hot accounts' user ids and the
/// number of distinct workers the connections landed on.
fn setup_ns(cfg: &Config) -> anyhow::Result<(Vec<Ready>, Vec<u32>, usize)> {
    let salt = [0x42u8; 16];
    let secret =
        proto::scram::ClientSecret::derive(b"bench", &salt, proto::scram::ITERATIONS_DEFAULT);
    // Setup in parallel: logins cost a few round trips each.
    let clients = in_parallel(cfg, move |cfg, i| {
        let mut c = Client::connect_with(cfg.addr, Duration::from_secs(10), cfg.tls.as_ref())?;
        let w = c.hello("bench-client")?.worker_id;
        let user = format!("b{}x{i}", cfg.seed % 1_000_000);
        match c.register_secret(&user, &salt, &secret) {
            Ok(_) => {}
            Err(crate::ClientError::Refused(Status::ErrAlreadyExists, _)) => {}
            Err(e) => return Err(e.into()),
        }
        c.login_secret(&user, secret.clone())?;
        if c.balance()? < 1_000_000 {
            c.ledger(&Request::Deposit(AmountRequest { amount: 1_000_000 }))?;
        }
        let room = if cfg.mix.chats() {
            c.join(&format!("r{}", i % cfg.room_count()))?.0
        } else {
            0
        };
        Ok((c, w, room))
    })?;
    let workers_seen = clients
        .iter()
        .map(|(_, w, _)| *w)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let hot: Vec<u32> = clients
        .iter()
        .take(cfg.hot_accounts.max(2))
        .map(|(c, _, _)| c.user_id)
        .collect();
    let ready = clients
        .into_iter()
        .map(|(c, _, room_id)| Ready {
            user_id: c.user_id,
            room_id,
            // The connection keeps counting where its login left off: above the user's
            // high-water mark, so a second run with the same users is not refused as stale.
            next_req_id: c.last_req_id(),
            stream: c.into_stream(),
        })
        .collect();
    Ok((ready, hot, workers_seen))
}

/// Runs `one(cfg, i)` for every connection index on `cfg.threads` threads (connections are
/// set up a few round trips each: in parallel, staggered a little); results in index order.
pub(crate) fn in_parallel<T: Send + 'static>(
    cfg: &Config,
    one: impl Fn(&Config, usize) -> anyhow::Result<T> + Send + Clone + 'static,
) -> anyhow::Result<Vec<T>> {
    let per = cfg.connections.div_ceil(cfg.threads);
    let setups: Vec<_> = (0..cfg.threads)
        .map(|t| {
            let (cfg, one) = (cfg.clone(), one.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<T>> {
                let mut out = Vec::new();
                for i in (t * per)..((t + 1) * per).min(cfg.connections) {
                    out.push(one(&cfg, i)?);
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for s in setups {
        all.extend(
            s.join()
                .map_err(|_| anyhow::anyhow!("a setup thread panicked"))??,
        );
    }
    Ok(all)
}
