//! Replies: `{"re":op,"ref":…,"ok":true,…}` or `{…,"ok":false,"error":{code,message}}`.
//!
//! One struct per shape of ok reply, serialized straight into the connection's buffer after a
//! head written by hand (so `ref` is echoed byte for byte as the client wrote it). Clients
//! read the same structs back ([`crate::client`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Friend, Group, Message, Sent, Seq, UserRef};
use crate::error::Error;

/// An ok reply with nothing more (`ping`, `logout`, `ack`, `friend.remove`, `group.leave`,
/// `block`, `unblock`, `account.delete`).
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

/// `block.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// Every user the caller blocks.
    pub users: Vec<UserRef>,
}

/// `password.change`: the token that replaces every revoked one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Token for `login` without the password.
    pub token: String,
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

/// `history`, as clients read it: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Up to `limit` messages, newest first.
    pub messages: Vec<HistoryEntry>,
    /// Whether older matching messages may exist.
    pub more: bool,
    /// When `more`: the `before` of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Seq>,
}

/// One message of a [`History`] page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its position in the caller's inbox.
    pub seq: Seq,
    /// The message.
    pub msg: Message,
}

/// `history` as the server answers it: the stored message JSON is spliced into the reply as
/// it is (as in [`message_event`](super::message_event)), never parsed into a [`Message`] and
/// written again. [`write_reply`] writes it by hand; clients read it as [`History`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// (position, stored `Message` JSON), newest first.
    pub messages: Vec<(Seq, String)>,
    /// Whether older matching messages may exist.
    pub more: bool,
    /// When `more`: the `before` of the next page.
    pub next: Option<Seq>,
}

impl HistoryPage {
    /// Appends the page's members (`,"messages":[…],"more":…[,"next":…]`) to `out`.
    fn write_members(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        out.extend_from_slice(b",\"messages\":[");
        for (i, (seq, json)) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{{\"seq\":\"{seq}\",\"msg\":");
            out.extend_from_slice(json.as_bytes());
            out.push(b'}');
        }
        let _ = write!(out, "],\"more\":{}", self.more);
        if let Some(next) = self.next {
            let _ = write!(out, ",\"next\":\"{next}\"");
        }
    }
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
    /// `block.list`.
    Blocked(Blocked),
    /// `password.change`.
    NewToken(NewToken),
    /// `group.create`, `group.join`.
    Group(Box<GroupReply>),
    /// `group.list`.
    Groups(Groups),
    /// `history`: written by hand (see [`HistoryPage`]), so it has no serde form.
    #[serde(skip)]
    History(HistoryPage),
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
        Ok(Reply::History(page)) => {
            out.extend_from_slice(b",\"ok\":true");
            page.write_members(out);
            out.push(b'}');
        }
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

    /// The hand-written history reply is what clients read as [`History`].
    #[test]
    fn history_is_spliced_and_read_back() {
        use crate::protocol::{Message, Target};
        let msg = Message {
            id: "01X".into(),
            from: UserRef {
                id: 2,
                name: "bob".into(),
            },
            to: Target::User { user: 1 },
            text: "hi \"you\"".into(),
            ts: 7,
            client_id: None,
        };
        let json = serde_json::to_string(&msg).unwrap();
        let seq = Seq { ms: 7, n: 0 };
        let page = HistoryPage {
            messages: vec![(seq, json.clone()), (Seq { ms: 6, n: 3 }, json.clone())],
            more: true,
            next: Some(Seq { ms: 6, n: 3 }),
        };
        let text = line("history", Some("1"), Ok(Reply::History(page)));
        assert_eq!(
            text,
            format!(
                "{{\"re\":\"history\",\"ref\":1,\"ok\":true,\"messages\":[{{\"seq\":\"7-0\",\"msg\":{json}}},{{\"seq\":\"6-3\",\"msg\":{json}}}],\"more\":true,\"next\":\"6-3\"}}\n"
            )
        );
        let back: History = serde_json::from_str(&text).unwrap();
        assert_eq!(back.messages.len(), 2);
        assert_eq!(back.messages[0], HistoryEntry { seq, msg });
        assert_eq!(back.next, Some(Seq { ms: 6, n: 3 }));
        let empty = line("history", None, Ok(Reply::History(HistoryPage::default())));
        assert_eq!(
            empty,
            "{\"re\":\"history\",\"ok\":true,\"messages\":[],\"more\":false}\n"
        );
        let back: History = serde_json::from_str(&empty).unwrap();
        assert!(back.messages.is_empty() && !back.more && back.next.is_none());
    }
}
