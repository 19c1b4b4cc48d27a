//! Events: unsolicited frames tagged by `event`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{Friend, GroupRef, Message, Seq, UserRef};
use crate::error::Error;

/// Every event of the protocol. Clients ignore events they do not know ([`Event::Unknown`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// Right after accepting a connection.
    Hello {
        /// Always `switchboard`.
        #[serde(borrow)]
        server: Cow<'a, str>,
        /// The server's version.
        #[serde(borrow)]
        version: Cow<'a, str>,
        /// The protocol version, [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        protocol: u32,
        /// The node (pod) name.
        #[serde(borrow)]
        node: Cow<'a, str>,
    },
    /// A message from the inbox. The server splices stored JSON instead of building this
    /// ([`message_event`]); clients read it as this variant.
    Message {
        /// Its inbox position.
        seq: Seq,
        /// The message.
        msg: Message,
    },
    /// End of the login backlog.
    Synced {
        /// Messages from others in the backlog.
        unread: u64,
    },
    /// A friend or fellow member went online or offline.
    Presence {
        /// Who, and their new state.
        user: Friend,
    },
    /// Someone added the user as a friend (or the user did, from another session).
    FriendAdded {
        /// The new friend.
        friend: Friend,
    },
    /// A friendship ended.
    FriendRemoved {
        /// The former friend.
        user: UserRef,
    },
    /// Someone joined one of the user's groups.
    MemberJoined {
        /// The group.
        group: GroupRef,
        /// Who joined.
        user: UserRef,
    },
    /// Someone left one of the user's groups.
    MemberLeft {
        /// The group.
        group: GroupRef,
        /// Who left.
        user: UserRef,
    },
    /// The server is draining: reconnect after the delay and log in with the token.
    Goaway {
        /// Why (`shutdown`).
        #[serde(borrow)]
        reason: Cow<'a, str>,
        /// How long to wait before reconnecting.
        reconnect_after_ms: u64,
    },
    /// A frame that could not be answered as a request.
    Error {
        /// Code and message.
        error: Error,
    },
    /// An event this version does not know.
    #[serde(other)]
    Unknown,
}

impl Event<'_> {
    /// The event as one line, without the newline.
    pub fn line(&self) -> String {
        // These types always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Appends the event and a newline to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }
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

/// Appends the `message` event line for an inbox entry, and a newline, to `out` (the catch-up
/// path: no intermediate strings).
pub fn write_message_event(out: &mut Vec<u8>, seq: Seq, msg_json: &str) {
    use std::io::Write;
    out.extend_from_slice(b"{\"event\":\"message\",\"seq\":\"");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{seq}");
    out.extend_from_slice(b"\",\"msg\":");
    out.extend_from_slice(msg_json.as_bytes());
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::protocol::Target;

    #[test]
    fn events_round_trip_and_unknown_ones_are_tolerated() {
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
        let spliced = message_event("7-0", &json);
        let mut written = Vec::new();
        write_message_event(&mut written, Seq { ms: 7, n: 0 }, &json);
        assert_eq!(written, format!("{spliced}\n").into_bytes());
        let read: Event = serde_json::from_str(&spliced).unwrap();
        assert_eq!(
            read,
            Event::Message {
                seq: Seq { ms: 7, n: 0 },
                msg
            }
        );
        let goaway = Event::Goaway {
            reason: "shutdown".into(),
            reconnect_after_ms: 5,
        };
        assert_eq!(
            goaway.line(),
            r#"{"event":"goaway","reason":"shutdown","reconnect_after_ms":5}"#
        );
        let err = Event::Error {
            error: Error::new(Code::BadJson, "not JSON"),
        };
        assert_eq!(
            err.line(),
            r#"{"event":"error","error":{"code":"bad_json","message":"not JSON"}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&err.line()).unwrap(), err);
        let future: Event = serde_json::from_str(r#"{"event":"typing","user":1}"#).unwrap();
        assert_eq!(future, Event::Unknown);
    }
}
