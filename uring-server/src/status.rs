//! Where shared-memory outcomes meet the wire: the status each `shm` error is answered with, the
//! counter index of each opcode, and the compile-time checks that `shm`'s sizes are the
//! protocol's. `shm` knows nothing of the protocol; this module is the one place that maps.

use proto::{Opcode, Status};
use shm::ledger::LedgerError;
use shm::lock::LockError;
use shm::{RoomError, UserError};

// Shared memory is laid out for the protocol's bounds, and its counters must hold every opcode
// and status.
const _: () = {
    assert!(shm::limits::NAME_LEN_MAX == proto::codec::NAME_LEN_MAX);
    assert!(shm::limits::TEXT_LEN_MAX == proto::body::TEXT_LEN_MAX);
    assert!(shm::limits::SALT_LEN_MIN == proto::body::SALT_LEN_MIN);
    assert!(shm::limits::SALT_LEN_MAX == proto::body::SALT_LEN_MAX);
    assert!(shm::limits::ITERATIONS_MIN == proto::scram::ITERATIONS_MIN);
    assert!(shm::limits::ITERATIONS_MAX == proto::scram::ITERATIONS_MAX);
    assert!(Opcode::ALL.len() <= shm::metrics::OPCODES);
    assert!(Status::ALL.len() <= shm::metrics::STATUSES);
};

/// The status a refusal is answered with.
pub trait HasStatus {
    /// That status.
    fn status(&self) -> Status;
}

impl HasStatus for LedgerError {
    fn status(&self) -> Status {
        match self {
            LedgerError::UnknownAccount(_) => Status::ErrNotFound,
            LedgerError::InvalidAmount => Status::ErrInvalidAmount,
            LedgerError::InsufficientFunds { .. } => Status::ErrInsufficientFunds,
            LedgerError::Overflow => Status::ErrOverflow,
            LedgerError::SelfTransfer | LedgerError::ReqIdReused => Status::ErrInvalidArgument,
            LedgerError::Stale { .. } => Status::ErrStaleRequest,
            LedgerError::SessionSuperseded => Status::ErrSessionSuperseded,
            LedgerError::Unavailable(_) => Status::ErrStorageUnavailable,
            LedgerError::Lock(LockError::TimedOut) => Status::ErrTimeout,
            _ => Status::ErrInternal,
        }
    }
}

impl HasStatus for UserError {
    fn status(&self) -> Status {
        match self {
            UserError::AlreadyExists => Status::ErrAlreadyExists,
            UserError::Full => Status::ErrCapacity,
            UserError::Invalid(_) => Status::ErrInvalidArgument,
            UserError::NotFound => Status::ErrNotFound,
            UserError::Unavailable(_) => Status::ErrStorageUnavailable,
            _ => Status::ErrInternal,
        }
    }
}

impl HasStatus for RoomError {
    fn status(&self) -> Status {
        match self {
            RoomError::NotFound => Status::ErrNotFound,
            RoomError::NotMember => Status::ErrNotMember,
            RoomError::Full => Status::ErrCapacity,
            RoomError::Invalid(_) => Status::ErrInvalidArgument,
            _ => Status::ErrInternal,
        }
    }
}

/// The index of an opcode's request counter in shared memory.
pub fn opcode_index(op: Opcode) -> usize {
    Opcode::ALL.iter().position(|&o| o == op).unwrap_or(0)
}

/// A ledger transaction kind as the wire says it.
pub fn txn_kind(k: shm::ledger::TxnKind) -> proto::body::TxnKind {
    match k {
        shm::ledger::TxnKind::Deposit => proto::body::TxnKind::Deposit,
        shm::ledger::TxnKind::Withdraw => proto::body::TxnKind::Withdraw,
        shm::ledger::TxnKind::Transfer => proto::body::TxnKind::Transfer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_has_its_own_counter() {
        let mut seen: Vec<usize> = Opcode::ALL.iter().map(|&o| opcode_index(o)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Opcode::ALL.len());
        assert!(seen.iter().all(|&i| i < shm::metrics::OPCODES));
    }

    #[test]
    fn ledger_refusals_map_to_their_documented_statuses() {
        assert_eq!(
            LedgerError::Stale {
                req_id_hw: 9,
                within_kept: true
            }
            .status(),
            Status::ErrStaleRequest
        );
        assert_eq!(
            LedgerError::SessionSuperseded.status(),
            Status::ErrSessionSuperseded
        );
        assert_eq!(
            LedgerError::InsufficientFunds { balance: 1 }.status(),
            Status::ErrInsufficientFunds
        );
        assert_eq!(
            LedgerError::ReqIdReused.status(),
            Status::ErrInvalidArgument
        );
        assert_eq!(
            LedgerError::Lock(LockError::TimedOut).status(),
            Status::ErrTimeout
        );
    }
}
