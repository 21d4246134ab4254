//! Opcodes, status codes and notice codes: the numbers on the wire and their names.
//!
//! The numbering is stable: a code, once published in `docs/PROTOCOL.md`, keeps its number
//! forever. New codes take the next free number in their group.

/// Declares a `u16`-backed enum with `from_u16`, `as_u16`, `name` and `ALL`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in numeric order of declaration.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The value for a wire number, or `None` for a number this version does not know.
            pub const fn from_u16(value: u16) -> Option<Self> {
                match value {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }

            /// The wire number.
            pub const fn as_u16(self) -> u16 {
                self as u16
            }

            /// The name used in `docs/PROTOCOL.md`, logs and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum! {
    /// What a frame asks for or carries. Groups: `0x00xx` session, `0x01xx` chat, `0x02xx` ledger.
    pub enum Opcode {
        /// Optional greeting; the response tells the server's limits.
        Hello = 0x0001 => "HELLO",
        /// SCRAM step 1: user name and client nonce; the response gives salt, iterations, server nonce.
        Login = 0x0002 => "LOGIN",
        /// Ends the session; the connection stays open and may log in again.
        Logout = 0x0003 => "LOGOUT",
        /// Keep-alive, allowed in every state.
        Heartbeat = 0x0004 => "HEARTBEAT",
        /// SCRAM step 2: the client proof; the response gives the server signature and user id.
        LoginProof = 0x0005 => "LOGIN_PROOF",
        /// Creates a user from SCRAM credentials derived on the client (no password on the wire).
        Register = 0x0006 => "REGISTER",
        /// Push: something the server tells the client (shutdown, kicked, idle timeout, ...).
        Notice = 0x0007 => "NOTICE",
        /// Joins a room by name, creating it if needed.
        JoinRoom = 0x0101 => "JOIN_ROOM",
        /// Leaves a room by id.
        LeaveRoom = 0x0102 => "LEAVE_ROOM",
        /// Sends a message to a room the sender is in.
        ChatSend = 0x0103 => "CHAT_SEND",
        /// Push: one room message, delivered to every member.
        ChatBroadcast = 0x0104 => "CHAT_BROADCAST",
        /// Sends a direct message to one online user.
        DirectSend = 0x0105 => "DIRECT_SEND",
        /// Push: a direct message.
        DirectMessage = 0x0106 => "DIRECT_MESSAGE",
        /// Lists online users, paged by user id.
        ListUsers = 0x0107 => "LIST_USERS",
        /// Lists rooms with member counts, paged by room id.
        ListRooms = 0x0108 => "LIST_ROOMS",
        /// A room's messages after a sequence number, while the room's ring still holds them.
        RoomHistory = 0x0109 => "ROOM_HISTORY",
        /// Push: the server could not deliver some of a room's messages to this client.
        ChatGap = 0x010A => "CHAT_GAP",
        /// The names of users by id (online or not), for showing a history with names.
        UserNames = 0x010B => "USER_NAMES",
        /// Adds money to the caller's account.
        Deposit = 0x0201 => "DEPOSIT",
        /// Takes money from the caller's account.
        Withdraw = 0x0202 => "WITHDRAW",
        /// Moves money from the caller's account to another user's.
        Transfer = 0x0203 => "TRANSFER",
        /// The caller's balance.
        Balance = 0x0204 => "BALANCE",
        /// The caller's transactions, newest first, paged by txn id.
        TxnHistory = 0x0205 => "TXN_HISTORY",
        /// Push: a TRANSFER to this user was applied and is durable.
        MoneyReceived = 0x0206 => "MONEY_RECEIVED",
    }
}

impl Opcode {
    /// True for opcodes only the server sends, unprompted, with `is_response` clear.
    pub const fn is_push(self) -> bool {
        matches!(
            self,
            Opcode::Notice
                | Opcode::ChatBroadcast
                | Opcode::DirectMessage
                | Opcode::ChatGap
                | Opcode::MoneyReceived
        )
    }

    /// True for opcodes a client may send before it has logged in.
    pub const fn allowed_before_login(self) -> bool {
        matches!(
            self,
            Opcode::Hello
                | Opcode::Login
                | Opcode::LoginProof
                | Opcode::Register
                | Opcode::Heartbeat
        )
    }
}

wire_enum! {
    /// The outcome of a request, carried in a response header. Requests and pushes carry 0.
    pub enum Status {
        /// Success.
        Ok = 0x0000 => "OK",
        /// The frame or its body is malformed (bad flags, reserved bytes, body encoding).
        ErrBadPacket = 0x0001 => "ERR_BAD_PACKET",
        /// The CRC-32 in the header does not match the frame.
        ErrChecksumFail = 0x0002 => "ERR_CHECKSUM_FAIL",
        /// Not logged in, or the login proof was wrong.
        ErrUnauthorized = 0x0003 => "ERR_UNAUTHORIZED",
        /// No such user or room.
        ErrNotFound = 0x0004 => "ERR_NOT_FOUND",
        /// The account holds less than the amount.
        ErrInsufficientFunds = 0x0005 => "ERR_INSUFFICIENT_FUNDS",
        /// The server is at a limit (connections, queue); retry later with backoff.
        ErrServerBusy = 0x0006 => "ERR_SERVER_BUSY",
        /// The server gave up waiting (a lock, a step of the login).
        ErrTimeout = 0x0007 => "ERR_TIMEOUT",
        /// The opcode is not one this server knows.
        ErrUnknownOpcode = 0x0008 => "ERR_UNKNOWN_OPCODE",
        /// The request is not valid in the session's current state.
        ErrBadState = 0x0009 => "ERR_BAD_STATE",
        /// The amount is zero.
        ErrInvalidAmount = 0x000A => "ERR_INVALID_AMOUNT",
        /// The result would not fit in a u64 balance or total.
        ErrOverflow = 0x000B => "ERR_OVERFLOW",
        /// A field is well-formed but not acceptable (transfer to self, too few iterations).
        ErrInvalidArgument = 0x000C => "ERR_INVALID_ARGUMENT",
        /// The user name is taken.
        ErrAlreadyExists = 0x000D => "ERR_ALREADY_EXISTS",
        /// The server runs with registration closed.
        ErrRegistrationClosed = 0x000E => "ERR_REGISTRATION_CLOSED",
        /// The user's flood limit was hit; retry after the time in the error message.
        ErrRateLimited = 0x000F => "ERR_RATE_LIMITED",
        /// A fixed-size table (users, rooms, members) is full.
        ErrCapacity = 0x0010 => "ERR_CAPACITY",
        /// The caller is not a member of that room.
        ErrNotMember = 0x0011 => "ERR_NOT_MEMBER",
        /// The frame asks for a feature this server does not implement (encryption, compression).
        ErrUnsupported = 0x0012 => "ERR_UNSUPPORTED",
        /// The frame's body_len is over the server's limit; the server closes after this.
        ErrTooLarge = 0x0013 => "ERR_TOO_LARGE",
        /// The recipient of a direct message is not online.
        ErrUserOffline = 0x0014 => "ERR_USER_OFFLINE",
        /// A bug or an unexpected failure on the server; the request was not applied.
        ErrInternal = 0x0015 => "ERR_INTERNAL",
        /// A ledger request whose req_id is at or below the user's highest decided one, with no
        /// result kept for it: this copy was not applied, and no later copy of it will be.
        ErrStaleRequest = 0x0016 => "ERR_STALE_REQUEST",
        /// The connection's session was ended by a newer login of the same user: the request
        /// was not executed, and the server closes the connection.
        ErrSessionSuperseded = 0x0017 => "ERR_SESSION_SUPERSEDED",
        /// The server cannot make the request durable now (its journal's disk is full or
        /// failing, or behind): nothing was applied; retry later with backoff (the same req_id).
        ErrStorageUnavailable = 0x0018 => "ERR_STORAGE_UNAVAILABLE",
    }
}

impl Status {
    /// True for `Ok`.
    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Ok)
    }
}

/// Codes carried by a `NOTICE` push. Kept as plain numbers, not an enum, so a client built
/// against an older list still accepts a notice it does not know and shows its text.
pub mod notice {
    /// The server is shutting down; in-flight requests are answered, then the connection closes.
    pub const SHUTTING_DOWN: u16 = 1;
    /// The same user logged in on another connection; this session has ended.
    pub const LOGGED_IN_ELSEWHERE: u16 = 2;
    /// No frame arrived within the idle timeout; the connection closes.
    pub const IDLE_TIMEOUT: u16 = 3;
    /// The connection's output queue passed its bound; the connection closes.
    pub const SLOW_CONSUMER: u16 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &op in Opcode::ALL {
            assert!(seen.insert(op.as_u16()), "duplicate opcode {op}");
            assert_eq!(Opcode::from_u16(op.as_u16()), Some(op));
        }
        assert_eq!(Opcode::from_u16(0x0000), None);
        assert_eq!(Opcode::from_u16(0xFFFF), None);
    }

    #[test]
    fn seed_spec_numbers_are_kept() {
        assert_eq!(Opcode::Hello.as_u16(), 0x0001);
        assert_eq!(Opcode::Heartbeat.as_u16(), 0x0004);
        assert_eq!(Opcode::ChatBroadcast.as_u16(), 0x0104);
        assert_eq!(Opcode::TxnHistory.as_u16(), 0x0205);
        assert_eq!(Status::ErrTimeout.as_u16(), 0x0007);
    }

    #[test]
    fn statuses_round_trip() {
        for (i, &st) in Status::ALL.iter().enumerate() {
            assert_eq!(st.as_u16() as usize, i, "statuses are dense from 0");
            assert_eq!(Status::from_u16(st.as_u16()), Some(st));
        }
    }
}
