//! Requests: one enum tagged by `op`, read straight from the frame (borrowing its strings).
//!
//! The server reads a frame in two passes over the same bytes, neither of which builds a JSON
//! tree: [`Frame::parse`] reads only `op` and `ref` (skipping everything else), and
//! [`Frame::request`] reads the arguments of that op into its struct. Two passes rather than
//! serde's internally tagged `Deserialize` (which [`Request`] also has, for clients and tests)
//! because that one buffers the whole object into an untyped tree first, and because the
//! protocol tells apart what the derived form cannot: an object without a string `op` is a
//! `bad_request` *event*, an unknown op an `unknown_op` *reply* (echoing `ref`), bad arguments
//! a `bad_request` reply.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::{GroupId, Seq, UserId};
use crate::error::{Code, Error, Result};

/// Every op of the protocol. Op names live here and nowhere else; adding a variant makes the
/// compiler point at every `match` that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `ping`: answered `ok`, nothing more.
    Ping,
    /// `register`: create an account.
    Register,
    /// `login`: by password or token.
    Login,
    /// `whois`: look a user up.
    Whois,
    /// `logout`: end the login and revoke its token.
    Logout,
    /// `send`: a 1:1 message.
    Send,
    /// `ack`: move the acknowledged position forward.
    Ack,
    /// `friend.add`: a mutual friendship.
    FriendAdd,
    /// `friend.remove`: end a friendship both ways.
    FriendRemove,
    /// `friend.list`: the caller's friends.
    FriendList,
    /// `block`: stop a user's messages, friend requests and presence.
    Block,
    /// `unblock`: undo a `block`.
    Unblock,
    /// `block.list`: the users the caller blocks.
    BlockList,
    /// `password.change`: a new password; every token is revoked.
    PasswordChange,
    /// `account.delete`: delete the caller's account.
    AccountDelete,
    /// `group.create`: a new group with the caller as creator.
    GroupCreate,
    /// `group.join`: become a member.
    GroupJoin,
    /// `group.leave`: stop being a member.
    GroupLeave,
    /// `group.list`: the caller's groups.
    GroupList,
    /// `group.send`: a message to every member.
    GroupSend,
    /// `history`: page backwards through the caller's inbox.
    History,
}

impl OpKind {
    /// Every op.
    pub const ALL: [OpKind; 21] = [
        OpKind::Ping,
        OpKind::Register,
        OpKind::Login,
        OpKind::Whois,
        OpKind::Logout,
        OpKind::Send,
        OpKind::Ack,
        OpKind::FriendAdd,
        OpKind::FriendRemove,
        OpKind::FriendList,
        OpKind::Block,
        OpKind::Unblock,
        OpKind::BlockList,
        OpKind::PasswordChange,
        OpKind::AccountDelete,
        OpKind::GroupCreate,
        OpKind::GroupJoin,
        OpKind::GroupLeave,
        OpKind::GroupList,
        OpKind::GroupSend,
        OpKind::History,
    ];

    /// The op as it appears on the wire (`op`, and `re` of the reply).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Ping => "ping",
            OpKind::Register => "register",
            OpKind::Login => "login",
            OpKind::Whois => "whois",
            OpKind::Logout => "logout",
            OpKind::Send => "send",
            OpKind::Ack => "ack",
            OpKind::FriendAdd => "friend.add",
            OpKind::FriendRemove => "friend.remove",
            OpKind::FriendList => "friend.list",
            OpKind::Block => "block",
            OpKind::Unblock => "unblock",
            OpKind::BlockList => "block.list",
            OpKind::PasswordChange => "password.change",
            OpKind::AccountDelete => "account.delete",
            OpKind::GroupCreate => "group.create",
            OpKind::GroupJoin => "group.join",
            OpKind::GroupLeave => "group.leave",
            OpKind::GroupList => "group.list",
            OpKind::GroupSend => "group.send",
            OpKind::History => "history",
        }
    }

    /// The op named `name`, if the protocol has one (else the reply is `unknown_op`).
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the op answers `not_logged_in` before a login.
    pub fn needs_login(self) -> bool {
        !matches!(
            self,
            OpKind::Ping | OpKind::Register | OpKind::Login | OpKind::Whois
        )
    }
}

/// A request with its arguments: what a session handles and what a client sends. Serialized
/// (and deserialized) with the op name in `op`, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Request<'a> {
    /// `ping`.
    #[serde(rename = "ping")]
    Ping,
    /// `register`.
    #[serde(rename = "register", borrow)]
    Register(RegisterArgs<'a>),
    /// `login`.
    #[serde(rename = "login", borrow)]
    Login(LoginArgs<'a>),
    /// `whois`.
    #[serde(rename = "whois", borrow)]
    Whois(WhoArgs<'a>),
    /// `logout`.
    #[serde(rename = "logout")]
    Logout,
    /// `send`.
    #[serde(rename = "send", borrow)]
    Send(SendArgs<'a>),
    /// `ack`.
    #[serde(rename = "ack", borrow)]
    Ack(AckArgs<'a>),
    /// `friend.add`.
    #[serde(rename = "friend.add")]
    FriendAdd(UserArg),
    /// `friend.remove`.
    #[serde(rename = "friend.remove")]
    FriendRemove(UserArg),
    /// `friend.list`.
    #[serde(rename = "friend.list")]
    FriendList,
    /// `block`.
    #[serde(rename = "block")]
    Block(UserArg),
    /// `unblock`.
    #[serde(rename = "unblock")]
    Unblock(UserArg),
    /// `block.list`.
    #[serde(rename = "block.list")]
    BlockList,
    /// `password.change`.
    #[serde(rename = "password.change", borrow)]
    PasswordChange(PasswordChangeArgs<'a>),
    /// `account.delete`.
    #[serde(rename = "account.delete", borrow)]
    AccountDelete(AccountDeleteArgs<'a>),
    /// `group.create`.
    #[serde(rename = "group.create", borrow)]
    GroupCreate(CreateArgs<'a>),
    /// `group.join`.
    #[serde(rename = "group.join", borrow)]
    GroupJoin(JoinArgs<'a>),
    /// `group.leave`.
    #[serde(rename = "group.leave")]
    GroupLeave(GroupArg),
    /// `group.list`.
    #[serde(rename = "group.list")]
    GroupList,
    /// `group.send`.
    #[serde(rename = "group.send", borrow)]
    GroupSend(GroupSendArgs<'a>),
    /// `history`.
    #[serde(rename = "history")]
    History(HistoryArgs),
}

impl Request<'_> {
    /// The op of this request.
    pub fn kind(&self) -> OpKind {
        match self {
            Request::Ping => OpKind::Ping,
            Request::Register(_) => OpKind::Register,
            Request::Login(_) => OpKind::Login,
            Request::Whois(_) => OpKind::Whois,
            Request::Logout => OpKind::Logout,
            Request::Send(_) => OpKind::Send,
            Request::Ack(_) => OpKind::Ack,
            Request::FriendAdd(_) => OpKind::FriendAdd,
            Request::FriendRemove(_) => OpKind::FriendRemove,
            Request::FriendList => OpKind::FriendList,
            Request::Block(_) => OpKind::Block,
            Request::Unblock(_) => OpKind::Unblock,
            Request::BlockList => OpKind::BlockList,
            Request::PasswordChange(_) => OpKind::PasswordChange,
            Request::AccountDelete(_) => OpKind::AccountDelete,
            Request::GroupCreate(_) => OpKind::GroupCreate,
            Request::GroupJoin(_) => OpKind::GroupJoin,
            Request::GroupLeave(_) => OpKind::GroupLeave,
            Request::GroupList => OpKind::GroupList,
            Request::GroupSend(_) => OpKind::GroupSend,
            Request::History(_) => OpKind::History,
        }
    }
}

/// `register` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterArgs<'a> {
    /// The new user's name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The new user's password.
    #[serde(borrow)]
    pub password: Cow<'a, str>,
}

/// `login` arguments: `name` or `id` with `password`, or `token`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginArgs<'a> {
    /// The user's name.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    /// The user's id (when no name is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<UserId>,
    /// The password (wins over a token).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Cow<'a, str>>,
    /// A token from an earlier password login.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Cow<'a, str>>,
}

/// `whois` arguments: `name` or `id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoArgs<'a> {
    /// The user's name (case-insensitive).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    /// The user's id (when no name is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<UserId>,
}

/// `send` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendArgs<'a> {
    /// Recipient id.
    pub to: UserId,
    /// Message text.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    /// Idempotency key.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Cow<'a, str>>,
}

/// `group.send` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSendArgs<'a> {
    /// Group id.
    pub group: GroupId,
    /// Message text.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    /// Idempotency key.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Cow<'a, str>>,
}

/// `ack` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckArgs<'a> {
    /// The position to acknowledge (checked by [`Seq`](super::Seq)'s parser).
    #[serde(borrow)]
    pub seq: Cow<'a, str>,
}

/// `password.change` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChangeArgs<'a> {
    /// The current password.
    #[serde(borrow)]
    pub old: Cow<'a, str>,
    /// The new password.
    #[serde(borrow)]
    pub new: Cow<'a, str>,
}

/// `account.delete` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeleteArgs<'a> {
    /// The current password.
    #[serde(borrow)]
    pub password: Cow<'a, str>,
}

/// Arguments naming one user (`friend.add`, `friend.remove`, `block`, `unblock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserArg {
    /// The user's id.
    pub user: UserId,
}

/// `group.join` arguments: the group's `group` (id) or `name` (case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinArgs<'a> {
    /// The group's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// The group's name (when no id is given).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
}

/// Which conversation a `history` request reads: `{"user":id}` or `{"group":id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum With {
    /// The 1:1 messages between the caller and this user, both directions.
    User(UserId),
    /// This group's messages that reached the caller.
    Group(GroupId),
}

/// `history` arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryArgs {
    /// One conversation only; absent, every kept message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<With>,
    /// Only messages strictly older than this position; absent, from the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Seq>,
    /// Most messages to answer, 1 to [`HISTORY_LIMIT_MAX`] (checked by the handler);
    /// absent, [`HISTORY_LIMIT_DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// `limit` of a `history` request without one.
pub const HISTORY_LIMIT_DEFAULT: u64 = 50;
/// Largest `limit` of a `history` request.
pub const HISTORY_LIMIT_MAX: u64 = 200;

/// Arguments naming one group (`group.leave`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupArg {
    /// The group's id.
    pub group: GroupId,
}

/// `group.create` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateArgs<'a> {
    /// The group's name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Its description (0 to 256 characters).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<Cow<'a, str>>,
}

/// A request frame as first read: its `op` and `ref`, the arguments still unread.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The `op` string.
    pub op: Cow<'a, str>,
    /// The `ref` to echo, exactly as the client wrote it (a JSON scalar), if any.
    pub reference: Option<&'a RawValue>,
    line: &'a str,
}

impl<'a> Frame<'a> {
    /// Reads one frame (a line without its ending). `Err` is an `error` *event*, not a reply:
    /// `bad_json` for anything but one UTF-8 JSON object, `bad_request` without a string `op`
    /// or with a `ref` that is not a scalar.
    pub fn parse(line: &'a [u8]) -> Result<Frame<'a>> {
        let line = std::str::from_utf8(line)
            .map_err(|e| Error::new(Code::BadJson, format!("not JSON: not UTF-8 ({e})")))?;
        let head: Head<'a> = serde_json::from_str(line).map_err(|e| {
            let msg = if e.is_data() {
                "a frame must be a JSON object".to_string()
            } else {
                format!("not JSON: {e}")
            };
            Error::new(Code::BadJson, msg)
        })?;
        let Some(OpField::Str(op)) = head.op else {
            return Err(Error::bad_request("a request needs a string \"op\""));
        };
        if let Some(r) = head.reference {
            check_ref(r.get())?;
        }
        Ok(Frame {
            op,
            reference: head.reference,
            line,
        })
    }

    /// The op, if the protocol has it.
    pub fn kind(&self) -> Option<OpKind> {
        OpKind::from_name(&self.op)
    }

    /// Reads the arguments of op `kind`; a missing or ill-typed field is `bad_request`.
    /// Unknown fields are ignored, as the protocol says.
    pub fn request(&self, kind: OpKind) -> Result<Request<'a>> {
        let line = self.line;
        Ok(match kind {
            OpKind::Ping => Request::Ping,
            OpKind::Register => Request::Register(self.args(line)?),
            OpKind::Login => Request::Login(self.args(line)?),
            OpKind::Whois => Request::Whois(self.args(line)?),
            OpKind::Logout => Request::Logout,
            OpKind::Send => Request::Send(self.args(line)?),
            OpKind::Ack => Request::Ack(self.args(line)?),
            OpKind::FriendAdd => Request::FriendAdd(self.args(line)?),
            OpKind::FriendRemove => Request::FriendRemove(self.args(line)?),
            OpKind::FriendList => Request::FriendList,
            OpKind::Block => Request::Block(self.args(line)?),
            OpKind::Unblock => Request::Unblock(self.args(line)?),
            OpKind::BlockList => Request::BlockList,
            OpKind::PasswordChange => Request::PasswordChange(self.args(line)?),
            OpKind::AccountDelete => Request::AccountDelete(self.args(line)?),
            OpKind::GroupCreate => Request::GroupCreate(self.args(line)?),
            OpKind::GroupJoin => Request::GroupJoin(self.args(line)?),
            OpKind::GroupLeave => Request::GroupLeave(self.args(line)?),
            OpKind::GroupList => Request::GroupList,
            OpKind::GroupSend => Request::GroupSend(self.args(line)?),
            OpKind::History => Request::History(self.args(line)?),
        })
    }

    fn args<T: Deserialize<'a>>(&self, line: &'a str) -> Result<T> {
        serde_json::from_str(line).map_err(|e| Error::bad_request(format!("{}: {e}", self.op)))
    }
}

/// Checks a `ref` before it is echoed byte for byte: a scalar, and one every JSON parser reads
/// back. Skipping a value checks its syntax only, so a number out of `f64` range or a string
/// with a lone surrogate escape would otherwise be echoed into a reply that strict clients
/// cannot parse; such a frame is `bad_json`, as it was when whole frames were parsed.
fn check_ref(raw: &str) -> Result<()> {
    let parsed = match raw.as_bytes().first() {
        Some(b'{' | b'[') => return Err(Error::bad_request("\"ref\" must be a JSON scalar")),
        Some(b'"') => serde_json::from_str::<Cow<str>>(raw).map(drop),
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<serde_json::Number>(raw).map(drop),
        _ => Ok(()),
    };
    parsed.map_err(|e| Error::new(Code::BadJson, format!("not JSON: {e}")))
}

/// The two fields every frame is first read for; all others are skipped unparsed.
struct Head<'a> {
    op: Option<OpField<'a>>,
    reference: Option<&'a RawValue>,
}

/// `op` as found: a string, or something else (a `bad_request`).
enum OpField<'a> {
    Str(Cow<'a, str>),
    Other,
}

impl<'de> Deserialize<'de> for Head<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> Visitor<'de> for HeadVisitor {
    type Value = Head<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Head<'de>, A::Error> {
        let mut head = Head {
            op: None,
            reference: None,
        };
        // A repeated key counts as its last occurrence, as it did when frames were read into
        // a JSON tree.
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Op => head.op = Some(map.next_value::<OpField<'de>>()?),
                Key::Ref => head.reference = Some(map.next_value::<&'de RawValue>()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// A key of the frame object, classified without allocating.
enum Key {
    Op,
    Ref,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key, E> {
                Ok(match v {
                    "op" => Key::Op,
                    "ref" => Key::Ref,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for OpField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct OpVisitor;
        impl<'de> Visitor<'de> for OpVisitor {
            type Value = OpField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(OpField::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(OpField::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(OpField::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(OpField::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(OpField::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(OpField::Other)
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(OpField::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(OpField::Other)
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(OpField::Other)
            }
        }
        d.deserialize_any(OpVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_op_and_ref_only() {
        let f = Frame::parse(br#"{"x":{"op":1},"op":"send","ref":[1]}"#).unwrap_err();
        assert_eq!(f.code, Code::BadRequest, "a ref must be a scalar");
        let f = Frame::parse(br#"{"ref": "a\"b" ,"op":"s\u0065nd","to":2,"text":"hi"}"#).unwrap();
        assert_eq!(f.op, "send");
        assert_eq!(
            f.reference.unwrap().get(),
            r#""a\"b""#,
            "ref is echoed as written"
        );
        assert_eq!(f.kind(), Some(OpKind::Send));
        let Request::Send(args) = f.request(OpKind::Send).unwrap() else {
            panic!("not a send")
        };
        assert!(
            matches!(args.text, Cow::Borrowed("hi")),
            "text borrows from the frame"
        );
        // The last of repeated keys counts.
        let f = Frame::parse(br#"{"op":"ping","op":"logout"}"#).unwrap();
        assert_eq!(f.op, "logout");
        assert_eq!(
            Frame::parse(br#"{"op":null}"#).unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(
            Frame::parse(br#"{"op":{"a":[1]}}"#).unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(
            Frame::parse(br#"{"op":"a"} x"#).unwrap_err().code,
            Code::BadJson
        );
        assert_eq!(Frame::parse(b"\"op\"").unwrap_err().code, Code::BadJson);
        assert_eq!(
            Frame::parse(b"{\"op\":\"\xff\"}").unwrap_err().code,
            Code::BadJson
        );
        // A ref is echoed as written, so it must be one any parser reads back.
        for bad in [
            r#"{"op":"ping","ref":1e400}"#,
            r#"{"op":"ping","ref":"\ud800"}"#,
        ] {
            assert_eq!(
                Frame::parse(bad.as_bytes()).unwrap_err().code,
                Code::BadJson,
                "{bad}"
            );
        }
        // Skipped fields are not parsed, so the same values there are ignored like the field.
        assert!(Frame::parse(br#"{"op":"ping","x":[1e400,"\ud800"]}"#).is_ok());
    }

    /// The server's two-pass reading and the derived (tagged) form agree on every op.
    #[test]
    fn two_pass_reading_matches_the_tagged_enum() {
        let requests = [
            Request::Ping,
            Request::Register(RegisterArgs {
                name: "ann".into(),
                password: "secret-pw".into(),
            }),
            Request::Login(LoginArgs {
                token: Some("t".into()),
                ..Default::default()
            }),
            Request::Whois(WhoArgs {
                id: Some(3),
                ..Default::default()
            }),
            Request::Logout,
            Request::Send(SendArgs {
                to: 2,
                text: "h\u{e9}\n\"".into(),
                client_id: Some("c1".into()),
            }),
            Request::Ack(AckArgs { seq: "1-0".into() }),
            Request::FriendAdd(UserArg { user: 4 }),
            Request::FriendRemove(UserArg { user: 4 }),
            Request::FriendList,
            Request::Block(UserArg { user: 5 }),
            Request::Unblock(UserArg { user: 5 }),
            Request::BlockList,
            Request::PasswordChange(PasswordChangeArgs {
                old: "old-secret".into(),
                new: "new-secret".into(),
            }),
            Request::AccountDelete(AccountDeleteArgs {
                password: "pw\\\"x".into(),
            }),
            Request::GroupCreate(CreateArgs {
                name: "g".into(),
                desc: None,
            }),
            Request::GroupJoin(JoinArgs {
                group: Some(1),
                name: None,
            }),
            Request::GroupLeave(GroupArg { group: 1 }),
            Request::GroupList,
            Request::GroupSend(GroupSendArgs {
                group: 1,
                text: "x".into(),
                client_id: None,
            }),
            Request::History(HistoryArgs {
                with: Some(With::Group(3)),
                before: Some(Seq { ms: 5, n: 1 }),
                limit: Some(20),
            }),
        ];
        assert_eq!(requests.len(), OpKind::ALL.len());
        for req in requests {
            let line = serde_json::to_string(&req).unwrap();
            let frame = Frame::parse(line.as_bytes()).unwrap();
            assert_eq!(frame.kind(), Some(req.kind()), "{line}");
            assert_eq!(frame.request(req.kind()).unwrap(), req, "{line}");
            let tagged: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(tagged, req, "{line}");
        }
    }
}
