//! Wire types of protocol v1: requests in, replies and events out (newline-delimited JSON).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Code, Error, Result};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// A parsed request frame: the op, the optional `ref`, and the whole object for the arguments.
#[derive(Debug)]
pub struct Request {
    /// The `op` string.
    pub op: String,
    /// The `ref` to echo, if any.
    pub reference: Option<Value>,
    /// The request object (arguments are read from it by name).
    pub body: Value,
}

impl Request {
    /// Reads the op's arguments; a missing or ill-typed field is `bad_request`.
    pub fn args<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.body).map_err(|e| Error::bad_request(format!("{}: {e}", self.op)))
    }
}

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
}

impl OpKind {
    /// Every op.
    pub const ALL: [OpKind; 15] = [
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
        OpKind::GroupCreate,
        OpKind::GroupJoin,
        OpKind::GroupLeave,
        OpKind::GroupList,
        OpKind::GroupSend,
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
            OpKind::GroupCreate => "group.create",
            OpKind::GroupJoin => "group.join",
            OpKind::GroupLeave => "group.leave",
            OpKind::GroupList => "group.list",
            OpKind::GroupSend => "group.send",
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

/// A request with its arguments read: what a session handles.
#[derive(Debug)]
pub enum Op {
    /// `ping`.
    Ping,
    /// `register`.
    Register(RegisterArgs),
    /// `login`.
    Login(LoginArgs),
    /// `whois`.
    Whois(WhoArgs),
    /// `logout`.
    Logout,
    /// `send`.
    Send(SendArgs),
    /// `ack`.
    Ack(AckArgs),
    /// `friend.add`.
    FriendAdd(UserArg),
    /// `friend.remove`.
    FriendRemove(UserArg),
    /// `friend.list`.
    FriendList,
    /// `group.create`.
    GroupCreate(CreateArgs),
    /// `group.join`.
    GroupJoin(GroupArg),
    /// `group.leave`.
    GroupLeave(GroupArg),
    /// `group.list`.
    GroupList,
    /// `group.send`.
    GroupSend(GroupSendArgs),
}

impl Request {
    /// Reads the arguments of op `kind`; a missing or ill-typed field is `bad_request`.
    /// Unknown fields are ignored, as the protocol says.
    pub fn parse(&self, kind: OpKind) -> Result<Op> {
        Ok(match kind {
            OpKind::Ping => Op::Ping,
            OpKind::Register => Op::Register(self.args()?),
            OpKind::Login => Op::Login(self.args()?),
            OpKind::Whois => Op::Whois(self.args()?),
            OpKind::Logout => Op::Logout,
            OpKind::Send => Op::Send(self.args()?),
            OpKind::Ack => Op::Ack(self.args()?),
            OpKind::FriendAdd => Op::FriendAdd(self.args()?),
            OpKind::FriendRemove => Op::FriendRemove(self.args()?),
            OpKind::FriendList => Op::FriendList,
            OpKind::GroupCreate => Op::GroupCreate(self.args()?),
            OpKind::GroupJoin => Op::GroupJoin(self.args()?),
            OpKind::GroupLeave => Op::GroupLeave(self.args()?),
            OpKind::GroupList => Op::GroupList,
            OpKind::GroupSend => Op::GroupSend(self.args()?),
        })
    }
}

/// `register` arguments.
#[derive(Debug, Deserialize)]
pub struct RegisterArgs {
    /// The new user's name.
    pub name: String,
    /// The new user's password.
    pub password: String,
}

/// `login` arguments: `name` or `id` with `password`, or `token`.
#[derive(Debug, Deserialize)]
pub struct LoginArgs {
    /// The user's name.
    pub name: Option<String>,
    /// The user's id (when no name is given).
    pub id: Option<UserId>,
    /// The password (wins over a token).
    pub password: Option<String>,
    /// A token from an earlier password login.
    pub token: Option<String>,
}

/// `whois` arguments: `name` or `id`.
#[derive(Debug, Deserialize)]
pub struct WhoArgs {
    /// The user's name (case-insensitive).
    pub name: Option<String>,
    /// The user's id (when no name is given).
    pub id: Option<UserId>,
}

/// `send` arguments.
#[derive(Debug, Deserialize)]
pub struct SendArgs {
    /// Recipient id.
    pub to: UserId,
    /// Message text.
    pub text: String,
    /// Idempotency key.
    pub client_id: Option<String>,
}

/// `group.send` arguments.
#[derive(Debug, Deserialize)]
pub struct GroupSendArgs {
    /// Group id.
    pub group: GroupId,
    /// Message text.
    pub text: String,
    /// Idempotency key.
    pub client_id: Option<String>,
}

/// `ack` arguments.
#[derive(Debug, Deserialize)]
pub struct AckArgs {
    /// The position to acknowledge (checked by [`Seq`]'s parser).
    pub seq: String,
}

/// Arguments naming one user (`friend.add`, `friend.remove`).
#[derive(Debug, Deserialize)]
pub struct UserArg {
    /// The user's id.
    pub user: UserId,
}

/// Arguments naming one group (`group.join`, `group.leave`).
#[derive(Debug, Deserialize)]
pub struct GroupArg {
    /// The group's id.
    pub group: GroupId,
}

/// `group.create` arguments.
#[derive(Debug, Deserialize)]
pub struct CreateArgs {
    /// The group's name.
    pub name: String,
    /// Its description (0 to 256 characters).
    pub desc: Option<String>,
}

/// Parses one frame (a line without its ending). `Err` is an `error` *event*, not a reply.
pub fn parse_request(line: &[u8]) -> Result<Request> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| Error::new(Code::BadJson, format!("not JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(Error::new(Code::BadJson, "a frame must be a JSON object"));
    };
    let Some(Value::String(op)) = map.get("op") else {
        return Err(Error::bad_request("a request needs a string \"op\""));
    };
    let op = op.clone();
    let reference = match map.get("ref") {
        None => None,
        Some(r @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) => {
            Some(r.clone())
        }
        Some(_) => return Err(Error::bad_request("\"ref\" must be a JSON scalar")),
    };
    Ok(Request {
        op,
        reference,
        body: value,
    })
}

/// Appends a reply line: `{"re":op,"ref":…,"ok":true,…fields}`.
pub fn write_ok(out: &mut Vec<u8>, op: &str, reference: &Option<Value>, fields: Value) {
    let mut map = reply_head(op, reference, true);
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    write_line(out, &Value::Object(map));
}

/// Appends an error reply line: `{"re":op,"ref":…,"ok":false,"error":{code,message}}`.
pub fn write_err(out: &mut Vec<u8>, op: &str, reference: &Option<Value>, err: &Error) {
    let mut map = reply_head(op, reference, false);
    map.insert("error".into(), error_body(err));
    write_line(out, &Value::Object(map));
}

fn reply_head(op: &str, reference: &Option<Value>, ok: bool) -> Map<String, Value> {
    let mut map = Map::with_capacity(4);
    map.insert("re".into(), Value::String(op.to_string()));
    if let Some(r) = reference {
        map.insert("ref".into(), r.clone());
    }
    map.insert("ok".into(), Value::Bool(ok));
    map
}

fn error_body(err: &Error) -> Value {
    json!({"code": err.code.as_str(), "message": err.message})
}

/// Appends one JSON value and a newline.
pub fn write_line(out: &mut Vec<u8>, value: &Value) {
    // Serialising a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b'\n');
}

/// An event line (without the newline) of the given kind and fields.
pub fn event(kind: &str, fields: Value) -> String {
    let mut map = Map::with_capacity(4);
    map.insert("event".into(), Value::String(kind.into()));
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    Value::Object(map).to_string()
}

/// The `error` event for a frame that could not be answered as a request.
pub fn error_event(err: &Error) -> String {
    event("error", json!({"error": error_body(err)}))
}

/// The `message` event line for an inbox entry whose message JSON is `msg_json`.
pub fn message_event(seq: &str, msg_json: &str) -> String {
    // Built by hand: the message JSON is stored pre-serialised, so it is spliced, not re-parsed.
    let mut line = String::with_capacity(msg_json.len() + seq.len() + 36);
    line.push_str("{\"event\":\"message\",\"seq\":\"");
    line.push_str(seq);
    line.push_str("\",\"msg\":");
    line.push_str(msg_json);
    line.push('}');
    line
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
pub fn check_client_id(client_id: &Option<String>) -> Result<()> {
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
        let req = parse_request(br#"{"op":"send","to":2,"text":"hi","x":[1]}"#).unwrap();
        assert!(matches!(req.parse(OpKind::Send), Ok(Op::Send(a)) if a.to == 2));
        let e = req.parse(OpKind::Ack).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Arbitrary bytes never panic the parser, and the outcome follows the protocol's rules.
        #[test]
        fn arbitrary_frames_classify(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match parse_request(&bytes) {
                Ok(r) => {
                    let v: Value = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(v["op"].as_str(), Some(r.op.as_str()));
                }
                Err(e) => prop_assert!(e.code == Code::BadJson || e.code == Code::BadRequest),
            }
        }

        /// Structured requests with arbitrary field values: never a panic, errors are bad_request.
        #[test]
        fn arbitrary_send_arguments(to in any::<i64>(), text in ".{0,8}", cid in proptest::option::of(".{0,4}"), r in any::<Option<i32>>()) {
            let frame = json!({"op": "send", "to": to, "text": text, "client_id": cid, "ref": r}).to_string();
            let req = parse_request(frame.as_bytes()).unwrap();
            #[derive(serde::Deserialize)]
            #[allow(dead_code)]
            struct SendArgs { to: u64, text: String, client_id: Option<String> }
            match req.args::<SendArgs>() {
                Ok(a) => prop_assert_eq!(a.to as i64, to),
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
    }

    #[test]
    fn frames_classify() {
        assert_eq!(parse_request(b"[1]").unwrap_err().code, Code::BadJson);
        assert_eq!(parse_request(b"{\"op\":").unwrap_err().code, Code::BadJson);
        assert_eq!(parse_request(b"\xff\xfe").unwrap_err().code, Code::BadJson);
        assert_eq!(
            parse_request(b"{\"x\":1}").unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(
            parse_request(b"{\"op\":5}").unwrap_err().code,
            Code::BadRequest
        );
        let r = parse_request(br#"{"op":"ping","ref":"a"}"#).unwrap();
        assert_eq!(r.op, "ping");
        assert_eq!(r.reference, Some(Value::String("a".into())));
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
