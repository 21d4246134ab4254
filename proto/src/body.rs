//! The body of every opcode: one struct per request, response and push, each a [`Field`] with
//! its fields encoded in declaration order, and the [`Request`], [`Response`] and [`Push`] enums
//! that pick the right struct for an opcode.
//!
//! Every non-OK response, whatever its opcode, carries an [`ErrorBody`]. User id 0 and room id 0
//! mean "none"; real ids start at 1.

use crate::codec::{BodyError, Bytes, Field, List, Name, Reader, Str};
use crate::codes::{Opcode, Status};

/// Longest chat or direct message text, in bytes of UTF-8.
pub const TEXT_LEN_MAX: usize = 4000;
/// Longest free-form label (client and server software names).
pub const LABEL_LEN_MAX: usize = 64;
/// Longest error or notice message.
pub const MESSAGE_LEN_MAX: usize = 256;
/// Shortest and longest SCRAM nonce part, client or server.
pub const NONCE_LEN_MIN: usize = 16;
/// See [`NONCE_LEN_MIN`].
pub const NONCE_LEN_MAX: usize = 64;
/// Shortest and longest SCRAM salt.
pub const SALT_LEN_MIN: usize = 16;
/// See [`SALT_LEN_MIN`].
pub const SALT_LEN_MAX: usize = 64;
/// Most entries in any list a response carries; servers may return fewer to fit `body_len_max`.
pub const LIST_LEN_MAX: usize = 1000;

/// Most ids one USER_NAMES request may ask for.
pub const USER_NAMES_MAX: usize = 100;

/// Chat text: 1..=4000 bytes of UTF-8.
pub type Text<'a> = Str<'a, 1, TEXT_LEN_MAX>;
/// Software name and version, free-form, 0..=64 bytes.
pub type Label<'a> = Str<'a, 0, LABEL_LEN_MAX>;
/// Human-readable message, 0..=256 bytes.
pub type Message<'a> = Str<'a, 0, MESSAGE_LEN_MAX>;
/// A SCRAM nonce part, 16..=64 bytes.
pub type Nonce<'a> = Bytes<'a, NONCE_LEN_MIN, NONCE_LEN_MAX>;
/// A SCRAM salt, 16..=64 bytes.
pub type Salt<'a> = Bytes<'a, SALT_LEN_MIN, SALT_LEN_MAX>;
/// A SHA-256-sized key, proof or signature.
pub type Key = [u8; 32];

/// Declares a body struct whose encoding is its fields in order.
macro_rules! body {
    (
        $(#[$meta:meta])*
        pub struct $name:ident $(<$lt:lifetime>)? { $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name $(<$lt>)? { $( $(#[$fmeta])* pub $field: $ty, )* }

        body!(@impl $name $(<$lt>)? { $( $field : $ty, )* });
    };
    (@impl $name:ident <$lt:lifetime> { $( $field:ident : $ty:ty, )* }) => {
        impl<$lt> Field<$lt> for $name<$lt> {
            body!(@methods $lt { $( $field : $ty, )* });
        }
    };
    (@impl $name:ident { $( $field:ident : $ty:ty, )* }) => {
        impl<'a> Field<'a> for $name {
            body!(@methods 'a { $( $field : $ty, )* });
        }
    };
    (@methods $lt:lifetime { $( $field:ident : $ty:ty, )* }) => {
        #[allow(unused_variables)]
        fn read(r: &mut Reader<$lt>) -> Result<Self, BodyError> {
            Ok(Self { $( $field: <$ty as Field<$lt>>::read(r)?, )* })
        }
        #[allow(unused_variables)]
        fn write(&self, out: &mut Vec<u8>) {
            $( self.$field.write(out); )*
        }
        fn encoded_len(&self) -> usize {
            0 $( + self.$field.encoded_len() )*
        }
    };
}

body! {
    /// A body with no fields (LOGOUT, BALANCE requests; LOGOUT, LEAVE_ROOM responses).
    pub struct Empty {}
}

body! {
    /// The body of every response whose status is not OK.
    pub struct ErrorBody<'a> {
        /// What went wrong, for a person to read; may be empty.
        pub message: Message<'a>,
    }
}

body! {
    /// HELLO request.
    pub struct HelloRequest<'a> {
        /// Client software name and version, for the server's logs.
        pub client: Label<'a>,
    }
}

body! {
    /// HELLO response: the limits the client must respect.
    pub struct HelloResponse<'a> {
        /// Server software name and version.
        pub server: Label<'a>,
        /// Which worker process serves this connection.
        pub worker_id: u16,
        /// Largest body this server accepts; a longer one closes the connection.
        pub body_len_max: u32,
        /// How often an idle client should send HEARTBEAT.
        pub heartbeat_interval_ms: u32,
        /// Silence after which the server closes the connection.
        pub idle_timeout_ms: u32,
        /// Server wall clock, milliseconds since the Unix epoch.
        pub server_time_ms: u64,
    }
}

body! {
    /// LOGIN request: SCRAM's client-first message.
    pub struct LoginRequest<'a> {
        /// Who logs in.
        pub username: Name<'a>,
        /// Fresh random bytes from the client.
        pub client_nonce: Nonce<'a>,
    }
}

body! {
    /// LOGIN response: SCRAM's server-first message.
    pub struct LoginResponse<'a> {
        /// The salt the user registered with.
        pub salt: Salt<'a>,
        /// PBKDF2 iterations the user registered with.
        pub iterations: u32,
        /// Fresh random bytes from the server.
        pub server_nonce: Nonce<'a>,
    }
}

body! {
    /// LOGIN_PROOF request: SCRAM's client-final message.
    pub struct LoginProofRequest {
        /// ClientKey XOR HMAC(StoredKey, AuthMessage).
        pub client_proof: Key,
    }
}

body! {
    /// LOGIN_PROOF response: SCRAM's server-final message.
    pub struct LoginProofResponse {
        /// HMAC(ServerKey, AuthMessage): proves the server knows the user's ServerKey.
        pub server_signature: Key,
        /// The logged-in user's id (and account number).
        pub user_id: u32,
        /// The highest req_id of this user's ledger requests the server has decided: the next
        /// ledger request must use a higher one (PROTOCOL.md 8.4).
        pub req_id_hw: u64,
        /// How far below `req_id_hw` the server still keeps outcomes: a retry of a req_id within
        /// this distance gets its first answer.
        pub req_id_window: u32,
    }
}

body! {
    /// REGISTER request: a new user's SCRAM credentials, derived from the password on the client.
    pub struct RegisterRequest<'a> {
        /// The new user's name.
        pub username: Name<'a>,
        /// A fresh random salt.
        pub salt: Salt<'a>,
        /// PBKDF2 iterations; the server refuses fewer than it requires.
        pub iterations: u32,
        /// SHA-256(ClientKey).
        pub stored_key: Key,
        /// HMAC(SaltedPassword, "Server Key").
        pub server_key: Key,
    }
}

body! {
    /// REGISTER response.
    pub struct RegisterResponse {
        /// The new user's id.
        pub user_id: u32,
    }
}

body! {
    /// HEARTBEAT request.
    pub struct HeartbeatRequest {
        /// Client clock, echoed back so the client can measure the round trip.
        pub client_time_ms: u64,
    }
}

body! {
    /// HEARTBEAT response.
    pub struct HeartbeatResponse {
        /// The request's `client_time_ms`, unchanged.
        pub client_time_ms: u64,
        /// Server wall clock, milliseconds since the Unix epoch.
        pub server_time_ms: u64,
    }
}

body! {
    /// NOTICE push.
    pub struct NoticePush<'a> {
        /// One of [`crate::codes::notice`]; clients show unknown codes' text as is.
        pub code: u16,
        /// What happened, for a person to read.
        pub text: Message<'a>,
    }
}

body! {
    /// JOIN_ROOM request.
    pub struct JoinRoomRequest<'a> {
        /// The room; created if it does not exist.
        pub room: Name<'a>,
    }
}

body! {
    /// JOIN_ROOM response.
    pub struct JoinRoomResponse {
        /// The room's id, used by every other chat request.
        pub room_id: u32,
        /// Sequence number of the room's latest message, 0 if none yet.
        pub last_seq: u64,
        /// Members after the join.
        pub members: u32,
    }
}

body! {
    /// LEAVE_ROOM request.
    pub struct LeaveRoomRequest {
        /// The room.
        pub room_id: u32,
    }
}

body! {
    /// CHAT_SEND request.
    pub struct ChatSendRequest<'a> {
        /// A room the sender is a member of.
        pub room_id: u32,
        /// The message.
        pub text: Text<'a>,
    }
}

body! {
    /// CHAT_SEND response.
    pub struct ChatSendResponse {
        /// The message's sequence number in the room.
        pub seq: u64,
    }
}

body! {
    /// CHAT_BROADCAST push: one room message. Its bytes are the room id, then the same record
    /// ROOM_HISTORY returns.
    pub struct ChatBroadcast<'a> {
        /// The room.
        pub room_id: u32,
        /// The message.
        pub message: RoomMessage<'a>,
    }
}

body! {
    /// DIRECT_SEND request.
    pub struct DirectSendRequest<'a> {
        /// The recipient.
        pub to: Name<'a>,
        /// The message.
        pub text: Text<'a>,
    }
}

body! {
    /// DIRECT_SEND response.
    pub struct DirectSendResponse {
        /// The recipient's user id.
        pub to_user_id: u32,
    }
}

body! {
    /// DIRECT_MESSAGE push.
    pub struct DirectMessage<'a> {
        /// The sender's user id.
        pub from_id: u32,
        /// When the server accepted it, milliseconds since the Unix epoch.
        pub time_ms: u64,
        /// The sender's name.
        pub from: Name<'a>,
        /// The message.
        pub text: Text<'a>,
    }
}

body! {
    /// LIST_USERS and LIST_ROOMS request: entries with ids above `after_id`, ascending.
    pub struct PageRequest {
        /// 0 for the first page, else the last id of the previous page.
        pub after_id: u32,
        /// Most entries wanted.
        pub limit: u16,
    }
}

body! {
    /// One online user.
    pub struct UserEntry<'a> {
        /// The user's id.
        pub user_id: u32,
        /// The user's name.
        pub name: Name<'a>,
    }
}

body! {
    /// LIST_USERS response.
    pub struct ListUsersResponse<'a> {
        /// Ascending by id; fewer than `limit` means this was the last page.
        pub users: List<UserEntry<'a>, LIST_LEN_MAX>,
    }
}

body! {
    /// One room.
    pub struct RoomEntry<'a> {
        /// The room's id.
        pub room_id: u32,
        /// Members now.
        pub members: u32,
        /// Sequence number of its latest message.
        pub last_seq: u64,
        /// The room's name.
        pub name: Name<'a>,
    }
}

body! {
    /// LIST_ROOMS response.
    pub struct ListRoomsResponse<'a> {
        /// Ascending by id; fewer than `limit` means this was the last page.
        pub rooms: List<RoomEntry<'a>, LIST_LEN_MAX>,
    }
}

body! {
    /// ROOM_HISTORY request: messages with `seq > after_seq`, oldest first.
    pub struct RoomHistoryRequest {
        /// The room; the caller need not be a member.
        pub room_id: u32,
        /// The last sequence number the client saw; 0 for everything still held.
        pub after_seq: u64,
        /// Most messages wanted.
        pub limit: u16,
    }
}

body! {
    /// One message of a room, as pushed and as held in the room's history.
    pub struct RoomMessage<'a> {
        /// Its sequence number in the room; rises by 1 per message.
        pub seq: u64,
        /// The sender's user id.
        pub sender_id: u32,
        /// When the room accepted it, milliseconds since the Unix epoch.
        pub time_ms: u64,
        /// The sender's name.
        pub sender: Name<'a>,
        /// The message.
        pub text: Text<'a>,
    }
}

body! {
    /// ROOM_HISTORY response.
    pub struct RoomHistoryResponse<'a> {
        /// The room's latest sequence number now.
        pub last_seq: u64,
        /// Messages after `after_seq` that the ring no longer holds (lost to the client).
        pub missed: u64,
        /// Oldest first, consecutive sequence numbers.
        pub messages: List<RoomMessage<'a>, LIST_LEN_MAX>,
    }
}

body! {
    /// CHAT_GAP push: some of a room's messages will never reach this client as pushes.
    pub struct ChatGap {
        /// The room.
        pub room_id: u32,
        /// The first sequence number not delivered.
        pub first_seq: u64,
        /// How many consecutive messages from `first_seq` were not delivered.
        pub missed: u64,
    }
}

body! {
    /// USER_NAMES request: users by id, online or not.
    pub struct UserNamesRequest {
        /// At most [`USER_NAMES_MAX`] ids; ids with no user are left out of the answer.
        pub ids: List<u32, USER_NAMES_MAX>,
    }
}

body! {
    /// USER_NAMES response.
    pub struct UserNamesResponse<'a> {
        /// One entry per requested id that is a user, in the request's order.
        pub users: List<UserEntry<'a>, USER_NAMES_MAX>,
    }
}

body! {
    /// DEPOSIT or WITHDRAW request.
    pub struct AmountRequest {
        /// Minor units (cents); must be > 0.
        pub amount: u64,
    }
}

/// Whom a transfer goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Tag 0, then the user id (u32).
    Id(u32),
    /// Tag 1, then the user name.
    Name(Name<'a>),
}

impl<'a> Field<'a> for Target<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        match u8::read(r)? {
            0 => Ok(Target::Id(u32::read(r)?)),
            1 => Ok(Target::Name(Name::read(r)?)),
            tag => Err(BodyError::BadTag {
                what: "target",
                tag,
            }),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Target::Id(id) => {
                out.push(0);
                id.write(out);
            }
            Target::Name(name) => {
                out.push(1);
                name.write(out);
            }
        }
    }
    fn encoded_len(&self) -> usize {
        1 + match self {
            Target::Id(id) => id.encoded_len(),
            Target::Name(name) => name.encoded_len(),
        }
    }
}

body! {
    /// TRANSFER request.
    pub struct TransferRequest<'a> {
        /// The recipient; not the caller.
        pub to: Target<'a>,
        /// Minor units; must be > 0.
        pub amount: u64,
    }
}

body! {
    /// DEPOSIT, WITHDRAW and TRANSFER response.
    pub struct LedgerResponse {
        /// The caller's balance after the operation.
        pub balance: u64,
        /// The transaction's id in the ledger's log.
        pub txn_id: u64,
    }
}

body! {
    /// BALANCE response.
    pub struct BalanceResponse {
        /// The caller's balance in minor units.
        pub balance: u64,
    }
}

body! {
    /// TXN_HISTORY request: the caller's transactions with ids below `before_txn_id`, newest first.
    pub struct TxnHistoryRequest {
        /// 0 for the newest, else the last id of the previous page.
        pub before_txn_id: u64,
        /// Most entries wanted.
        pub limit: u16,
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TxnKind {
    /// Money in from outside; `from_id` is 0.
    Deposit = 1,
    /// Money out to outside; `to_id` is 0.
    Withdraw = 2,
    /// Money between two accounts.
    Transfer = 3,
}

impl<'a> Field<'a> for TxnKind {
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        match u8::read(r)? {
            1 => Ok(TxnKind::Deposit),
            2 => Ok(TxnKind::Withdraw),
            3 => Ok(TxnKind::Transfer),
            tag => Err(BodyError::BadTag {
                what: "txn kind",
                tag,
            }),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn encoded_len(&self) -> usize {
        1
    }
}

body! {
    /// One transaction.
    pub struct TxnEntry {
        /// Its id; ids rise across the whole ledger (a crash can leave one unused).
        pub txn_id: u64,
        /// What it did.
        pub kind: TxnKind,
        /// Debited account, 0 for a deposit.
        pub from_id: u32,
        /// Credited account, 0 for a withdrawal.
        pub to_id: u32,
        /// Minor units moved.
        pub amount: u64,
        /// The caller's balance right after it.
        pub balance_after: u64,
        /// When it was applied, milliseconds since the Unix epoch.
        pub time_ms: u64,
    }
}

body! {
    /// TXN_HISTORY response.
    pub struct TxnHistoryResponse {
        /// Newest first; fewer than `limit` means the log holds no older ones for this account.
        pub txns: List<TxnEntry, LIST_LEN_MAX>,
    }
}

body! {
    /// MONEY_RECEIVED push: a TRANSFER to this user, sent once it is durable.
    pub struct MoneyReceived<'a> {
        /// The transfer's id, as TXN_HISTORY shows it.
        pub txn_id: u64,
        /// The sender's user id.
        pub from_id: u32,
        /// Minor units received.
        pub amount: u64,
        /// When it was applied, milliseconds since the Unix epoch.
        pub time_ms: u64,
        /// The sender's name.
        pub from: Name<'a>,
    }
}

/// A body that knows its opcode: a [`Request`], [`Response`] or [`Push`].
pub trait OpcodeBody {
    /// The opcode the body goes with.
    fn opcode(&self) -> Opcode;
    /// Appends the body's encoding.
    fn write(&self, out: &mut Vec<u8>);
    /// Bytes `write` appends.
    fn encoded_len(&self) -> usize;
}

/// Declares an enum with one variant per opcode, and its `opcode`, `decode`, `write` and
/// `encoded_len`.
macro_rules! by_opcode {
    (
        $(#[$meta:meta])*
        pub enum $name:ident<'a> { $( $variant:ident($ty:ty), )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name<'a> { $( #[doc = concat!("`", stringify!($variant), "`")] $variant($ty), )+ }

        impl OpcodeBody for $name<'_> {
            fn opcode(&self) -> Opcode {
                match self { $( $name::$variant(_) => Opcode::$variant, )+ }
            }
            fn write(&self, out: &mut Vec<u8>) {
                match self { $( $name::$variant(b) => b.write(out), )+ }
            }
            fn encoded_len(&self) -> usize {
                match self { $( $name::$variant(b) => b.encoded_len(), )+ }
            }
        }

        impl<'a> $name<'a> {
            /// The opcode this body goes with.
            pub fn opcode(&self) -> Opcode {
                OpcodeBody::opcode(self)
            }

            /// Decodes the body of a frame with this opcode, refusing trailing bytes.
            pub fn decode(opcode: Opcode, body: &'a [u8]) -> Result<Self, BodyError> {
                match opcode {
                    $( Opcode::$variant => Ok($name::$variant(<$ty>::decode(body)?)), )+
                    #[allow(unreachable_patterns)]
                    other => Err(BodyError::WrongKind { opcode: other.as_u16() }),
                }
            }

            /// Appends the body's encoding.
            pub fn write(&self, out: &mut Vec<u8>) {
                OpcodeBody::write(self, out)
            }

            /// Bytes `write` appends.
            pub fn encoded_len(&self) -> usize {
                OpcodeBody::encoded_len(self)
            }
        }
    };
}

by_opcode! {
    /// A request body, client to server.
    pub enum Request<'a> {
        Hello(HelloRequest<'a>),
        Login(LoginRequest<'a>),
        Logout(Empty),
        Heartbeat(HeartbeatRequest),
        LoginProof(LoginProofRequest),
        Register(RegisterRequest<'a>),
        JoinRoom(JoinRoomRequest<'a>),
        LeaveRoom(LeaveRoomRequest),
        ChatSend(ChatSendRequest<'a>),
        DirectSend(DirectSendRequest<'a>),
        ListUsers(PageRequest),
        ListRooms(PageRequest),
        RoomHistory(RoomHistoryRequest),
        UserNames(UserNamesRequest),
        Deposit(AmountRequest),
        Withdraw(AmountRequest),
        Transfer(TransferRequest<'a>),
        Balance(Empty),
        TxnHistory(TxnHistoryRequest),
    }
}

by_opcode! {
    /// The body of a response whose status is OK, server to client.
    pub enum Response<'a> {
        Hello(HelloResponse<'a>),
        Login(LoginResponse<'a>),
        Logout(Empty),
        Heartbeat(HeartbeatResponse),
        LoginProof(LoginProofResponse),
        Register(RegisterResponse),
        JoinRoom(JoinRoomResponse),
        LeaveRoom(Empty),
        ChatSend(ChatSendResponse),
        DirectSend(DirectSendResponse),
        ListUsers(ListUsersResponse<'a>),
        ListRooms(ListRoomsResponse<'a>),
        RoomHistory(RoomHistoryResponse<'a>),
        UserNames(UserNamesResponse<'a>),
        Deposit(LedgerResponse),
        Withdraw(LedgerResponse),
        Transfer(LedgerResponse),
        Balance(BalanceResponse),
        TxnHistory(TxnHistoryResponse),
    }
}

by_opcode! {
    /// A push body, server to client unprompted.
    pub enum Push<'a> {
        Notice(NoticePush<'a>),
        ChatBroadcast(ChatBroadcast<'a>),
        DirectMessage(DirectMessage<'a>),
        ChatGap(ChatGap),
        MoneyReceived(MoneyReceived<'a>),
    }
}

/// A response as a client sees it: the OK body, or the error status and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Status OK.
    Ok(Response<'a>),
    /// Any other status.
    Err(Status, ErrorBody<'a>),
}

impl<'a> Reply<'a> {
    /// Decodes a response body by its opcode and status.
    pub fn decode(opcode: Opcode, status: Status, body: &'a [u8]) -> Result<Self, BodyError> {
        if status.is_ok() {
            Ok(Reply::Ok(Response::decode(opcode, body)?))
        } else {
            Ok(Reply::Err(status, ErrorBody::decode(body)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_has_exactly_the_bodies_its_kind_needs() {
        for &op in Opcode::ALL {
            // An empty body never decodes as the wrong kind: push opcodes are not requests.
            let as_request = Request::decode(op, &[]);
            let as_push = Push::decode(op, &[]);
            if op.is_push() {
                assert_eq!(
                    as_request,
                    Err(BodyError::WrongKind {
                        opcode: op.as_u16()
                    })
                );
                assert!(!matches!(as_push, Err(BodyError::WrongKind { .. })), "{op}");
                assert!(matches!(
                    Response::decode(op, &[]),
                    Err(BodyError::WrongKind { .. })
                ));
            } else {
                assert!(
                    !matches!(as_request, Err(BodyError::WrongKind { .. })),
                    "{op}"
                );
                assert!(!matches!(
                    Response::decode(op, &[]),
                    Err(BodyError::WrongKind { .. })
                ));
                assert_eq!(
                    as_push,
                    Err(BodyError::WrongKind {
                        opcode: op.as_u16()
                    })
                );
            }
        }
    }

    #[test]
    fn transfer_target_refuses_unknown_tags() {
        let body = [2u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            TransferRequest::decode(&body),
            Err(BodyError::BadTag {
                what: "target",
                tag: 2
            })
        );
    }

    #[test]
    fn empty_refuses_any_byte() {
        assert_eq!(Empty::decode(&[]), Ok(Empty {}));
        assert_eq!(
            Empty::decode(&[0]),
            Err(BodyError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn short_bodies_are_refused_at_every_cut() {
        let msg = ChatBroadcast {
            room_id: 7,
            message: RoomMessage {
                seq: 42,
                sender_id: 3,
                time_ms: 1_700_000_000_000,
                sender: Name::new("alice").expect("valid"),
                text: Text::new("hello, room").expect("valid"),
            },
        };
        let bytes = msg.to_vec();
        assert_eq!(bytes.len(), msg.encoded_len());
        assert_eq!(ChatBroadcast::decode(&bytes).as_ref(), Ok(&msg));
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    ChatBroadcast::decode(&bytes[..cut]),
                    Err(BodyError::Truncated { .. })
                ),
                "cut at {cut} accepted"
            );
        }
    }
}
