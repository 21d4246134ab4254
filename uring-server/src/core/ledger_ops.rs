//! Ledger requests: DEPOSIT, WITHDRAW, TRANSFER (exactly once per (user, req_id), fenced by
//! the session; PROTOCOL.md 8.4), BALANCE and TXN_HISTORY.

use proto::body::*;
use proto::codec::List;
use proto::{Response, Status};
use shm::ledger::{self, Applied};

use super::error::{Handled, HandlerError};
use super::{ConnState, Ctx};
use crate::status::txn_kind;

/// Bytes one TXN_HISTORY entry takes.
const TXN_ENTRY_LEN: usize = 8 + 1 + 4 + 4 + 8 + 8 + 8;

fn answer(a: Applied) -> LedgerResponse {
    LedgerResponse {
        balance: a.balance,
        txn_id: a.txn_id,
    }
}

impl Ctx<'_> {
    /// DEPOSIT (money in from outside the ledger) or WITHDRAW (out to it).
    pub(super) fn one_account(
        &mut self,
        st: &mut ConnState,
        user: u32,
        id: u64,
        amount: u64,
        withdraw: bool,
    ) -> Handled {
        let caller = self.caller(st, user);
        let done = if withdraw {
            self.ledger.withdraw(caller, id, amount)
        } else {
            self.ledger.deposit(caller, id, amount)
        };
        self.hold_until = self.ledger.take_rests_on();
        let a = answer(done?);
        let resp = if withdraw {
            Response::Withdraw(a)
        } else {
            Response::Deposit(a)
        };
        self.respond(st, id, &resp);
        Ok(())
    }

    pub(super) fn transfer(
        &mut self,
        st: &mut ConnState,
        user: u32,
        id: u64,
        t: &TransferRequest<'_>,
    ) -> Handled {
        let to = match &t.to {
            Target::Id(to) => *to,
            // A name nobody has is refused here, before the ledger: not decided (8.4).
            Target::Name(n) => self.users.lookup(n.as_str()).ok_or_else(|| {
                HandlerError::new(Status::ErrNotFound, format!("no user {}", n.as_str()))
            })?,
        };
        let caller = self.caller(st, user);
        let done = self.ledger.transfer(caller, to, id, t.amount);
        self.hold_until = self.ledger.take_rests_on();
        let done = done?;
        if !done.replayed {
            self.announce_credit(st, user, to, t.amount, done.txn_id);
        }
        self.respond(st, id, &Response::Transfer(answer(done)));
        Ok(())
    }

    /// Tells the recipient of a transfer just applied, if they are logged in: a credit in the
    /// inbox of the worker serving them, delivered once the transfer is durable. A retry
    /// answered from the exactly-once record does not come here, so one transfer is one push.
    /// The transfer stands whatever happens to its notice (a full inbox laps, and counts it).
    fn announce_credit(&mut self, st: &ConnState, from: u32, to: u32, amount: u64, txn_id: u64) {
        let Some(session) = self.users.session(to) else {
            return;
        };
        let lsn = self.hold_until.filter(|_| self.journal_on).unwrap_or(0);
        let credit = shm::rooms::Credit {
            amount,
            txn_id,
            lsn,
        };
        let worker = u32::from(session.worker);
        match self
            .rooms
            .inbox_credit(worker, from, to, &st.name, credit, self.wall_ms)
        {
            Ok(_) => self.wake_pending = true,
            Err(e) => tracing::warn!("transfer {txn_id}: could not tell user {to}: {e}"),
        }
    }

    /// Reads answer with what may not be on disk yet: while the journal cannot write they are
    /// refused, rather than held until it can.
    fn journal_readable(&self) -> Handled {
        match shm::journal::unavailable(self.seg) {
            Some(u) => Err(HandlerError::new(
                Status::ErrStorageUnavailable,
                u.to_string(),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn balance(&mut self, st: &mut ConnState, user: u32, id: u64) -> Handled {
        self.journal_readable()?;
        let balance = ledger::balance(self.seg, user)?;
        self.hold_until = Some(ledger::read_rests_on(self.seg, user)?);
        self.respond(st, id, &Response::Balance(BalanceResponse { balance }));
        Ok(())
    }

    pub(super) fn txn_history(
        &mut self,
        st: &mut ConnState,
        user: u32,
        id: u64,
        q: &TxnHistoryRequest,
    ) -> Handled {
        self.journal_readable()?;
        let limit = usize::from(q.limit).min(self.list_limit(TXN_ENTRY_LEN));
        let txns = ledger::history(self.seg, user, q.before_txn_id, limit)?
            .into_iter()
            .map(|t| TxnEntry {
                txn_id: t.txn_id,
                kind: txn_kind(t.kind),
                from_id: t.from,
                to_id: t.to,
                amount: t.amount,
                balance_after: if t.from == user {
                    t.from_balance
                } else {
                    t.to_balance
                },
                time_ms: t.time_ms,
            })
            .collect();
        self.hold_until = Some(ledger::read_rests_on(self.seg, user)?);
        let resp = Response::TxnHistory(TxnHistoryResponse {
            txns: List::new(txns)?,
        });
        self.respond(st, id, &resp);
        Ok(())
    }
}
