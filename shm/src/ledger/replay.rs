//! Rebuilding a ledger from records (recovery, the journal writer's private copy) and writing
//! one out as checkpoint records.

#![forbid(unsafe_code)]

use super::reads::read_entry_with_prev;
use super::*;

/// Applies one journal or checkpoint record to a segment being rebuilt (recovery, or the
/// journal writer's private copy). Single-threaded: nothing else uses `seg` meanwhile.
/// Ledger records store absolute values, so the result is the state after the record.
pub fn replay(seg: &Segment, rec: &Record) -> Result<(), String> {
    let t = Tables::of(seg);
    let account = |id: u32| -> Result<&Account, String> {
        match t.accounts.get(id as usize) {
            Some(a) if id != 0 && a.exists.load(Ordering::Relaxed) == 1 => Ok(a),
            _ => Err(format!(
                "record names account {id}, which is not registered"
            )),
        }
    };
    match rec {
        Record::Txn(x) => {
            for id in [x.from, x.to, x.caller] {
                if id != 0 {
                    account(id)?;
                }
            }
            let s = &t.slots[0];
            match kind_from(x.kind) {
                Some(TxnKind::Deposit) => {
                    store_u128(&s.deposits, load_u128(&s.deposits) + u128::from(x.amount))
                }
                Some(TxnKind::Withdraw) => store_u128(
                    &s.withdrawals,
                    load_u128(&s.withdrawals) + u128::from(x.amount),
                ),
                Some(TxnKind::Transfer) => {}
                None => return Err(format!("transaction kind {}", x.kind)),
            }
            t.apply_txn(x);
            if t.globals.txn_seq.load(Ordering::Relaxed) < x.txn_id {
                t.globals.txn_seq.store(x.txn_id, Ordering::Relaxed);
            }
        }
        Record::Log(x) => t.write_log(x),
        Record::Refusal(o) | Record::Outcome(o) => {
            account(o.user)?;
            t.store_result(
                o.user, o.req_id, o.opcode, o.target, o.amount, o.refusal, o.balance, o.txn_id,
            );
        }
        Record::Account(a) => {
            let acct = account(a.id)?;
            acct.balance.store(a.balance, Ordering::Relaxed);
            acct.last_txn_id.store(a.last_txn_id, Ordering::Relaxed);
            acct.req_id_hw.store(a.req_id_hw, Ordering::Relaxed);
        }
        Record::Totals(x) => {
            for (i, s) in t.slots.iter().enumerate() {
                let (d, w) = if i == 0 {
                    (x.deposits, x.withdrawals)
                } else {
                    (0, 0)
                };
                store_u128(&s.deposits, d);
                store_u128(&s.withdrawals, w);
            }
            t.globals.txn_seq.store(x.txn_seq, Ordering::Relaxed);
        }
        Record::User(u) => {
            let users = Users::of(seg);
            let name = core::str::from_utf8(&u.name).map_err(|_| "user name not UTF-8")?;
            let id = users
                .register(name, &u.creds)
                .map_err(|e| format!("user {name}: {e}"))?;
            if id != u.id {
                return Err(format!(
                    "user {name} got id {id}, the journal says {}",
                    u.id
                ));
            }
        }
        Record::CheckpointBegin { .. } | Record::CheckpointEnd { .. } => {}
    }
    Ok(())
}

/// Every record a checkpoint of `seg` holds, in the order [`replay`] takes them: users, then
/// accounts, outcomes, the log ring's transactions (oldest first) and the totals. For a segment
/// nothing else changes meanwhile (the writer's private copy, or a forked snapshot of it).
pub fn checkpoint_records(seg: &Segment, mut emit: impl FnMut(&Record)) {
    let t = Tables::of(seg);
    let users = Users::of(seg);
    let count = users.count();
    for id in 1..=count {
        if let Some(u) = users.journal_record(id) {
            emit(&Record::User(u));
        }
    }
    for id in 1..=count {
        let a = &t.accounts[id as usize];
        emit(&Record::Account(AccountRec {
            id,
            balance: a.balance.load(Ordering::Relaxed),
            last_txn_id: a.last_txn_id.load(Ordering::Relaxed),
            req_id_hw: a.req_id_hw.load(Ordering::Relaxed),
        }));
        let k = t.results_per_user;
        for e in &t.results[id as usize * k..(id as usize + 1) * k] {
            let opcode = e.opcode.load(Ordering::Relaxed);
            if opcode == 0 {
                continue;
            }
            emit(&Record::Outcome(OutcomeRec {
                user: id,
                opcode,
                target: e.target.load(Ordering::Relaxed),
                refusal: e.refusal.load(Ordering::Relaxed),
                req_id: e.req_id.load(Ordering::Relaxed),
                amount: e.amount.load(Ordering::Relaxed),
                balance: e.balance.load(Ordering::Relaxed),
                txn_id: e.txn_id.load(Ordering::Relaxed),
            }));
        }
    }
    let seq = t.globals.txn_seq.load(Ordering::Relaxed);
    let first = seq.saturating_sub(t.log.len() as u64) + 1;
    for id in first..=seq {
        let e = t.log_entry(id);
        if let Some((r, from_prev, to_prev)) = read_entry_with_prev(e, id) {
            emit(&Record::Log(TxnRec {
                kind: kind_code(r.kind),
                from: r.from,
                to: r.to,
                txn_id: id,
                amount: r.amount,
                from_new: r.from_balance,
                to_new: r.to_balance,
                time_ms: r.time_ms,
                from_prev,
                to_prev,
                ..TxnRec::default()
            }));
        }
    }
    let (mut deposits, mut withdrawals) = (0u128, 0u128);
    for s in t.slots {
        deposits += load_u128(&s.deposits);
        withdrawals += load_u128(&s.withdrawals);
    }
    emit(&Record::Totals(TotalsRec {
        deposits,
        withdrawals,
        txn_seq: seq,
    }));
}
