//! Protocol error codes and the error type every operation returns.

use std::fmt;

/// A wire `error.code`; one variant per code of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The frame is not a JSON object.
    BadJson,
    /// A field is missing or ill-typed, or the request makes no sense.
    BadRequest,
    /// The `op` is not known.
    UnknownOp,
    /// The op needs a logged-in session.
    NotLoggedIn,
    /// The connection is already logged in.
    AlreadyLoggedIn,
    /// Wrong name, id, password or token.
    BadCredentials,
    /// The name breaks the naming rules.
    InvalidName,
    /// The password breaks the password rules.
    InvalidPassword,
    /// The name is in use.
    NameTaken,
    /// No such user (or not a friend, for `friend.remove`).
    NoSuchUser,
    /// No such group.
    NoSuchGroup,
    /// The caller is not a member of the group.
    NotAMember,
    /// The caller is already a member of the group.
    AlreadyMember,
    /// The `client_id` was used before on a different request.
    ClientIdConflict,
    /// A block between the two users forbids this (`send`, `friend.add`).
    Blocked,
    /// The text is longer than `max_text_chars`.
    TextTooLong,
    /// The frame is longer than `max_frame_bytes`.
    FrameTooLarge,
    /// A rate limit was hit.
    RateLimited,
    /// The user holds `max_sessions_per_user` sessions already.
    TooManySessions,
    /// A dependency (Redis) is down or slow; retry later.
    Unavailable,
    /// A bug or an unexpected state.
    Internal,
}

impl Code {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadJson => "bad_json",
            Code::BadRequest => "bad_request",
            Code::UnknownOp => "unknown_op",
            Code::NotLoggedIn => "not_logged_in",
            Code::AlreadyLoggedIn => "already_logged_in",
            Code::BadCredentials => "bad_credentials",
            Code::InvalidName => "invalid_name",
            Code::InvalidPassword => "invalid_password",
            Code::NameTaken => "name_taken",
            Code::NoSuchUser => "no_such_user",
            Code::NoSuchGroup => "no_such_group",
            Code::NotAMember => "not_a_member",
            Code::AlreadyMember => "already_member",
            Code::ClientIdConflict => "client_id_conflict",
            Code::Blocked => "blocked",
            Code::TextTooLong => "text_too_long",
            Code::FrameTooLarge => "frame_too_large",
            Code::RateLimited => "rate_limited",
            Code::TooManySessions => "too_many_sessions",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    /// Every code.
    pub const ALL: [Code; 21] = [
        Code::BadJson,
        Code::BadRequest,
        Code::UnknownOp,
        Code::NotLoggedIn,
        Code::AlreadyLoggedIn,
        Code::BadCredentials,
        Code::InvalidName,
        Code::InvalidPassword,
        Code::NameTaken,
        Code::NoSuchUser,
        Code::NoSuchGroup,
        Code::NotAMember,
        Code::AlreadyMember,
        Code::ClientIdConflict,
        Code::Blocked,
        Code::TextTooLong,
        Code::FrameTooLarge,
        Code::RateLimited,
        Code::TooManySessions,
        Code::Unavailable,
        Code::Internal,
    ];

    /// Parses a wire code (used by the Lua scripts' error replies and by clients).
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Code {
    /// A code this version does not know reads as `internal` (clients act on known codes).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Code, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Code::parse(&s).unwrap_or(Code::Internal))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation failed with a protocol `code` and a message for people; on the wire, the
/// `error` object `{code,message}` of an error reply or event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{code}: {message}")]
pub struct Error {
    /// What clients act on.
    pub code: Code,
    /// What people read.
    pub message: String,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(Code::BadRequest, message)
    }

    /// An `unavailable` error for a failed or slow dependency.
    pub fn unavailable(what: impl fmt::Display) -> Error {
        Error::new(Code::Unavailable, format!("storage unavailable: {what}"))
    }

    /// An `internal` error.
    pub fn internal(what: impl fmt::Display) -> Error {
        Error::new(Code::Internal, format!("internal error: {what}"))
    }
}

/// Result of an operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
