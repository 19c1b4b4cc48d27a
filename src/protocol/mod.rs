//! Wire types of protocol v1 (newline-delimited JSON): requests in ([`request`]), replies
//! ([`reply`]) and events ([`event`]) out, and the values they share (this file).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Code, Error, Result};

pub mod event;
pub mod reply;
pub mod request;

pub use event::{Event, message_event};
pub use reply::{Reply, write_reply};
pub use request::{
    AccountDeleteArgs, AckArgs, CreateArgs, Frame, GroupArg, GroupSendArgs, HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX, HistoryArgs, JoinArgs, LoginArgs, OpKind, PasswordChangeArgs, RegisterArgs,
    Request, SendArgs, UserArg, WhoArgs, With,
};

/// Protocol version spoken by this server.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest user or group name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Shortest password, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 128;
/// Longest group description, in characters.
pub const MAX_DESC_CHARS: usize = 256;
/// Longest `client_id`, in bytes (it becomes part of a Redis key, so it is bounded).
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// A user's numeric id.
pub type UserId = u64;
/// A group's numeric id.
pub type GroupId = u64;

/// A user as `{id,name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    /// Numeric id.
    pub id: UserId,
    /// Name as registered.
    pub name: String,
}

/// A user as `{id,name,online}` (the protocol's `Friend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Friend {
    /// Numeric id.
    pub id: UserId,
    /// Name as registered.
    pub name: String,
    /// At least one session on a live node.
    pub online: bool,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the group.
    Creator,
    /// Joined the group.
    Member,
}

/// A group member as `{id,name,role,online}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// User id.
    pub id: UserId,
    /// User name.
    pub name: String,
    /// The member's role.
    pub role: Role,
    /// At least one session on a live node.
    pub online: bool,
}

/// A group as the caller sees it: `{id,name,desc,role,members}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Numeric id.
    pub id: GroupId,
    /// Name as created.
    pub name: String,
    /// Description.
    pub desc: String,
    /// The caller's own role.
    pub role: Role,
    /// All members.
    pub members: Vec<Member>,
}

/// A group as `{id,name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    /// Numeric id.
    pub id: GroupId,
    /// Name.
    pub name: String,
}

/// Where a message goes: `{"user":id}` or `{"group":id,"name":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// A 1:1 message.
    User {
        /// Recipient id.
        user: UserId,
    },
    /// A group message.
    Group {
        /// Group id.
        group: GroupId,
        /// Group name.
        name: String,
    },
}

/// A chat message as delivered (`msg` of a `message` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Globally unique id.
    pub id: String,
    /// Sender.
    pub from: UserRef,
    /// Recipient.
    pub to: Target,
    /// Text.
    pub text: String,
    /// Server time stamp, ms since the Unix epoch.
    pub ts: u64,
    /// The sender's idempotency key, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// What an ok `send` reply carries: `{id,ts,seq}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// Message id.
    pub id: String,
    /// Time stamp.
    pub ts: u64,
    /// Position of the sender's own copy in the sender's inbox.
    pub seq: Seq,
}

/// A position in an inbox: a Redis stream id `ms-n`, totally ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub n: u64,
}

impl Seq {
    /// The position before every message.
    pub const ZERO: Seq = Seq { ms: 0, n: 0 };
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.n)
    }
}

impl FromStr for Seq {
    type Err = Error;
    fn from_str(s: &str) -> Result<Seq> {
        let bad = || Error::bad_request(format!("malformed seq {s:?}"));
        let (ms, n) = s.split_once('-').ok_or_else(bad)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(n) {
            return Err(bad());
        }
        Ok(Seq {
            ms: ms.parse().map_err(|_| bad())?,
            n: n.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Seq {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Seq, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a user or group name: 1..=32 of `A-Z a-z 0-9 _ . -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Checks a password's length in bytes.
pub fn valid_password(password: &str) -> bool {
    (MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len())
}

/// Checks a message text: 1..=`max_chars` Unicode scalar values.
pub fn check_text(text: &str, max_chars: usize) -> Result<()> {
    if text.is_empty() {
        return Err(Error::bad_request("text must not be empty"));
    }
    // Bytes bound chars from above: skip the count for short texts.
    if text.len() > max_chars && text.chars().count() > max_chars {
        return Err(Error::new(
            Code::TextTooLong,
            format!("text is longer than {max_chars} characters"),
        ));
    }
    Ok(())
}

/// Checks an optional `client_id`.
pub fn check_client_id(client_id: Option<&str>) -> Result<()> {
    match client_id {
        Some(c) if c.is_empty() || c.len() > MAX_CLIENT_ID_BYTES => Err(Error::bad_request(
            format!("client_id must be 1 to {MAX_CLIENT_ID_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[test]
    fn op_names_round_trip_and_login_rule() {
        for kind in OpKind::ALL {
            assert_eq!(OpKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(
            OpKind::from_name("Send"),
            None,
            "op names are case-sensitive"
        );
        let open: Vec<&str> = OpKind::ALL
            .into_iter()
            .filter(|k| !k.needs_login())
            .map(OpKind::name)
            .collect();
        assert_eq!(open, ["ping", "register", "login", "whois"]);
        // Unknown fields are ignored; a missing argument is `bad_request` naming the op.
        let frame = Frame::parse(br#"{"op":"send","to":2,"text":"hi","x":[1]}"#).unwrap();
        assert!(matches!(frame.request(OpKind::Send), Ok(Request::Send(a)) if a.to == 2));
        let e = frame.request(OpKind::Ack).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Arbitrary bytes never panic the parser, and the outcome follows the protocol's rules.
        #[test]
        fn arbitrary_frames_classify(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match Frame::parse(&bytes) {
                Ok(f) => {
                    let v: Value = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(v["op"].as_str(), Some(&*f.op));
                }
                Err(e) => prop_assert!(e.code == Code::BadJson || e.code == Code::BadRequest),
            }
        }

        /// Structured requests with arbitrary field values: never a panic, errors are bad_request.
        #[test]
        fn arbitrary_send_arguments(to in any::<i64>(), text in ".{0,8}", cid in proptest::option::of(".{0,4}"), r in any::<Option<i32>>()) {
            let line = json!({"op": "send", "to": to, "text": text, "client_id": cid, "ref": r}).to_string();
            let frame = Frame::parse(line.as_bytes()).unwrap();
            prop_assert_eq!(frame.reference.map(|r| r.get().to_string()), Some(json!(r).to_string()));
            match frame.request(OpKind::Send) {
                Ok(Request::Send(a)) => {
                    prop_assert_eq!(a.to as i64, to);
                    prop_assert_eq!(&*a.text, text.as_str());
                }
                Ok(other) => prop_assert!(false, "{:?}", other),
                Err(e) => { prop_assert_eq!(e.code, Code::BadRequest); prop_assert!(to < 0); }
            }
        }

        /// Any seq that parses prints back the same (so clients can compare strings).
        #[test]
        fn seq_round_trips(s in "[0-9]{1,20}-[0-9]{1,20}") {
            if let Ok(seq) = s.parse::<Seq>() {
                let again: Seq = seq.to_string().parse().unwrap();
                prop_assert_eq!(again, seq);
            }
        }
    }

    #[test]
    fn seq_parses_and_orders() {
        let a: Seq = "5-1".parse().unwrap();
        let b: Seq = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "5-1");
        for bad in [
            "",
            "5",
            "-1",
            "5-",
            "a-1",
            "1-1-1",
            "+5-1",
            "123456789012345678901-0",
        ] {
            assert!(bad.parse::<Seq>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::from_str::<Seq>("\"5-1\"").unwrap(), a);
    }

    #[test]
    fn frames_classify() {
        assert_eq!(Frame::parse(b"[1]").unwrap_err().code, Code::BadJson);
        assert_eq!(Frame::parse(b"{\"op\":").unwrap_err().code, Code::BadJson);
        assert_eq!(Frame::parse(b"\xff\xfe").unwrap_err().code, Code::BadJson);
        assert_eq!(
            Frame::parse(b"{\"x\":1}").unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(
            Frame::parse(b"{\"op\":5}").unwrap_err().code,
            Code::BadRequest
        );
        let f = Frame::parse(br#"{"op":"ping","ref":"a"}"#).unwrap();
        assert_eq!(f.op, "ping");
        assert_eq!(f.reference.map(|r| r.get()), Some("\"a\""));
        let f = Frame::parse(br#"{"op":"ping","ref":null}"#).unwrap();
        assert_eq!(
            f.reference.map(|r| r.get()),
            Some("null"),
            "a null ref is echoed too"
        );
    }

    #[test]
    fn names_and_texts() {
        assert!(valid_name("a.b-c_D9"));
        assert!(!valid_name(""));
        assert!(!valid_name("with space"));
        assert!(!valid_name(&"x".repeat(33)));
        assert!(check_text("héllo", 5).is_ok());
        assert_eq!(check_text("héllo!", 5).unwrap_err().code, Code::TextTooLong);
        assert_eq!(check_text("", 5).unwrap_err().code, Code::BadRequest);
    }
}
