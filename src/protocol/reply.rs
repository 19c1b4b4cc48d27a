//! Replies: `{"re":op,"ref":…,"ok":true,…}` or `{…,"ok":false,"error":{code,message}}`.
//!
//! One struct per shape of ok reply, serialized straight into the connection's buffer after a
//! head written by hand (so `ref` is echoed byte for byte as the client wrote it). Clients
//! read the same structs back ([`crate::client`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Friend, Group, Sent, UserRef};
use crate::error::Error;

/// An ok reply with nothing more (`ping`, `logout`, `ack`, `friend.remove`, `group.leave`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// `register`: the new account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The new user.
    pub user: UserRef,
}

/// `whois`: the user with their presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whois {
    /// The user.
    pub user: Friend,
}

/// `login`: who, the token for later logins, friends and groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn {
    /// The logged-in user.
    pub user: UserRef,
    /// Token for `login` without the password.
    pub token: String,
    /// The user's friends.
    pub friends: Vec<Friend>,
    /// The user's groups.
    pub groups: Vec<Group>,
}

/// `send` and `group.send`: where the message was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReply {
    /// Id, time stamp and the sender's own inbox position.
    pub msg: Sent,
}

/// `friend.add`: the friend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendReply {
    /// The friend, with presence.
    pub friend: Friend,
}

/// `friend.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Friends {
    /// Every friend of the caller.
    pub friends: Vec<Friend>,
}

/// `group.create` and `group.join`: the group as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReply {
    /// The group.
    pub group: Group,
}

/// `group.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    /// Every group of the caller.
    pub groups: Vec<Group>,
}

/// Any ok reply body, as a session returns it; serialized as the inner struct's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// Nothing more.
    Done(Done),
    /// `register`.
    Registered(Registered),
    /// `whois`.
    Whois(Whois),
    /// `login`.
    LoggedIn(Box<LoggedIn>),
    /// `send`, `group.send`.
    Sent(SendReply),
    /// `friend.add`.
    Friend(FriendReply),
    /// `friend.list`.
    Friends(Friends),
    /// `group.create`, `group.join`.
    Group(Box<GroupReply>),
    /// `group.list`.
    Groups(Groups),
}

/// Appends one reply line to `out`: the head, then the body's fields (or the error).
pub fn write_reply(
    out: &mut Vec<u8>,
    op: &str,
    reference: Option<&RawValue>,
    result: &Result<Reply, Error>,
) {
    out.extend_from_slice(b"{\"re\":");
    // Writing into a Vec cannot fail, and these types always serialize.
    let _ = serde_json::to_writer(&mut *out, op);
    if let Some(r) = reference {
        out.extend_from_slice(b",\"ref\":");
        out.extend_from_slice(r.get().as_bytes());
    }
    match result {
        Ok(body) => {
            out.extend_from_slice(b",\"ok\":true");
            let start = out.len();
            let _ = serde_json::to_writer(&mut *out, body);
            // The body is an object: its members continue the head's (`{` becomes `,`), and
            // an empty one just closes it.
            if out.len() - start == 2 {
                out.truncate(start);
                out.push(b'}');
            } else {
                out[start] = b',';
            }
        }
        Err(err) => {
            out.extend_from_slice(b",\"ok\":false,\"error\":");
            let _ = serde_json::to_writer(&mut *out, err);
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::protocol::Seq;

    fn line(op: &str, reference: Option<&str>, result: Result<Reply, Error>) -> String {
        let raw = reference.map(|r| RawValue::from_string(r.to_string()).unwrap());
        let mut out = Vec::new();
        write_reply(&mut out, op, raw.as_deref(), &result);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replies_are_written_as_the_protocol_shows() {
        assert_eq!(
            line("ping", None, Ok(Reply::Done(Done {}))),
            "{\"re\":\"ping\",\"ok\":true}\n"
        );
        let sent = SendReply {
            msg: Sent {
                id: "01X".into(),
                ts: 5,
                seq: Seq { ms: 5, n: 1 },
            },
        };
        assert_eq!(
            line("send", Some("7"), Ok(Reply::Sent(sent.clone()))),
            "{\"re\":\"send\",\"ref\":7,\"ok\":true,\"msg\":{\"id\":\"01X\",\"ts\":5,\"seq\":\"5-1\"}}\n"
        );
        let err = Error::new(Code::NoSuchUser, "user 42 does not exist");
        assert_eq!(
            line("send", Some("\"a\""), Err(err)),
            "{\"re\":\"send\",\"ref\":\"a\",\"ok\":false,\"error\":{\"code\":\"no_such_user\",\"message\":\"user 42 does not exist\"}}\n"
        );
        // And read back as the same types.
        let text = line("send", None, Ok(Reply::Sent(sent.clone())));
        let back: SendReply = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sent);
    }
}
