//! Frames from the server, read in two steps without a JSON tree: a small [`Head`] (`re`, `ref`,
//! `ok`, `event`; every other field skipped unparsed) when the line arrives, then the typed body
//! of the same line ([`Frame::reply`], [`Frame::event`]) when the caller asks for it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ClientError, Ref};
use crate::error::Error;
use crate::protocol::{Event, Message, Seq};

/// One frame from the server: the line (without its ending) and what its head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    line: String,
    kind: Kind,
}

/// What a frame is, from its head.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Reply {
        re: String,
        reference: Option<Ref>,
        ok: bool,
    },
    Event(String),
}

/// The head of a frame as it is parsed: borrowed where the line allows.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    re: Option<Cow<'a, str>>,
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
}

/// The body of a `message` event, read straight into its types (the tagged [`Event`] would
/// buffer the object first; messages are the frames a busy client reads most).
#[derive(Deserialize)]
struct MessageBody {
    seq: Seq,
    msg: Message,
}

/// The body of an error reply.
#[derive(Deserialize)]
struct ErrorBody {
    error: Error,
}

/// How a frame reads: as a reply (to one request) or as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind<'a> {
    /// A reply: the op it answers, the request's `ref` if it was a whole number (as this
    /// client's refs are), and whether it is ok.
    Reply {
        /// `re`: the op answered.
        re: &'a str,
        /// `ref`, when it is an unsigned integer.
        reference: Option<Ref>,
        /// `ok`.
        ok: bool,
    },
    /// An event, by its `event` name.
    Event(&'a str),
}

impl Frame {
    /// Reads the head of one line (without its line ending). A line that is not a JSON object
    /// with a string `re` and a boolean `ok`, or a string `event`, is a
    /// [`ClientError::Protocol`].
    pub fn parse(line: String) -> Result<Frame, ClientError> {
        let head: Head = serde_json::from_str(&line)
            .map_err(|e| ClientError::Protocol(format!("unreadable frame ({e}): {line:.200}")))?;
        let kind = match (head.re, head.event) {
            (Some(re), None) => {
                let ok = head.ok.ok_or_else(|| {
                    ClientError::Protocol(format!("reply without \"ok\": {line:.200}"))
                })?;
                Kind::Reply {
                    re: re.into_owned(),
                    reference: head.reference.and_then(|r| r.get().parse().ok()),
                    ok,
                }
            }
            (None, Some(event)) => Kind::Event(event.into_owned()),
            _ => {
                return Err(ClientError::Protocol(format!(
                    "neither a reply nor an event: {line:.200}"
                )));
            }
        };
        Ok(Frame { line, kind })
    }

    /// The line as received, without its line ending.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The line, taken out.
    pub fn into_line(self) -> String {
        self.line
    }

    /// Reply or event, from the head.
    pub fn kind(&self) -> FrameKind<'_> {
        match &self.kind {
            Kind::Reply { re, reference, ok } => FrameKind::Reply {
                re,
                reference: *reference,
                ok: *ok,
            },
            Kind::Event(name) => FrameKind::Event(name),
        }
    }

    /// True for a reply.
    pub fn is_reply(&self) -> bool {
        matches!(self.kind, Kind::Reply { .. })
    }

    /// The `ref` of a reply, when it is a whole number.
    pub fn reference(&self) -> Option<Ref> {
        match self.kind {
            Kind::Reply { reference, .. } => reference,
            Kind::Event(_) => None,
        }
    }

    /// The event name, for an event.
    pub fn event_name(&self) -> Option<&str> {
        match &self.kind {
            Kind::Event(name) => Some(name),
            Kind::Reply { .. } => None,
        }
    }

    /// The body of a reply: `Ok(T)` for an ok reply (`T` is one of the structs of
    /// [`protocol::reply`](crate::protocol::reply)), [`ClientError::Server`] with the wire error
    /// for an error reply, [`ClientError::Protocol`] for an event or a body that does not read
    /// as `T`.
    pub fn reply<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ClientError> {
        match &self.kind {
            Kind::Reply { ok: true, .. } => self.parse_as(),
            Kind::Reply { ok: false, .. } => {
                Err(ClientError::Server(self.parse_as::<ErrorBody>()?.error))
            }
            Kind::Event(name) => Err(ClientError::Protocol(format!(
                "expected a reply, got event {name}"
            ))),
        }
    }

    /// The wire error of an error reply or an `error` event.
    pub fn error(&self) -> Option<Error> {
        match &self.kind {
            Kind::Reply { ok: false, .. } => self.parse_as::<ErrorBody>().ok().map(|b| b.error),
            Kind::Event(name) if name == "error" => {
                self.parse_as::<ErrorBody>().ok().map(|b| b.error)
            }
            _ => None,
        }
    }

    /// The typed event, borrowing from the frame. Events this version does not know read as
    /// [`Event::Unknown`]; a reply is a [`ClientError::Protocol`].
    pub fn event(&self) -> Result<Event<'_>, ClientError> {
        match &self.kind {
            Kind::Event(name) if name == "message" => {
                let MessageBody { seq, msg } = self.parse_as()?;
                Ok(Event::Message { seq, msg })
            }
            Kind::Event(_) => self.parse_as(),
            Kind::Reply { re, .. } => Err(ClientError::Protocol(format!(
                "expected an event, got the reply to {re}"
            ))),
        }
    }

    /// The typed event, owning its data (for keeping it after the frame is gone).
    pub fn into_event(self) -> Result<Event<'static>, ClientError> {
        self.event().map(owned_event)
    }

    /// The whole line read as `T` (for anything the typed accessors do not cover).
    pub fn parse_as<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ClientError> {
        serde_json::from_str(&self.line).map_err(|e| {
            ClientError::Protocol(format!("unexpected frame ({e}): {:.200}", self.line))
        })
    }
}

/// `event` with every borrowed string made owned.
pub fn owned_event(event: Event<'_>) -> Event<'static> {
    let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
    match event {
        Event::Hello {
            server,
            version,
            protocol,
            node,
        } => Event::Hello {
            server: own(server),
            version: own(version),
            protocol,
            node: own(node),
        },
        Event::Message { seq, msg } => Event::Message { seq, msg },
        Event::Synced { unread } => Event::Synced { unread },
        Event::Presence { user } => Event::Presence { user },
        Event::FriendAdded { friend } => Event::FriendAdded { friend },
        Event::FriendRemoved { user } => Event::FriendRemoved { user },
        Event::MemberJoined { group, user } => Event::MemberJoined { group, user },
        Event::MemberLeft { group, user } => Event::MemberLeft { group, user },
        Event::Goaway {
            reason,
            reconnect_after_ms,
        } => Event::Goaway {
            reason: own(reason),
            reconnect_after_ms,
        },
        Event::Error { error } => Event::Error { error },
        Event::Unknown => Event::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::protocol::reply::{Done, SendReply};
    use crate::protocol::{Target, UserRef};

    fn frame(line: &str) -> Frame {
        Frame::parse(line.to_string()).unwrap()
    }

    #[test]
    fn heads_classify_replies_and_events() {
        let f = frame(r#"{"re":"send","ref":7,"ok":true,"msg":{"id":"m","ts":5,"seq":"5-1"}}"#);
        assert_eq!(
            f.kind(),
            FrameKind::Reply {
                re: "send",
                reference: Some(7),
                ok: true
            }
        );
        let body: SendReply = f.reply().unwrap();
        assert_eq!(body.msg.seq, Seq { ms: 5, n: 1 });
        assert!(f.event().is_err(), "a reply is not an event");
        // A ref the client did not write (a string) is kept out of the number.
        let f = frame(r#"{"re":"ping","ref":"a","ok":true}"#);
        assert_eq!(f.reference(), None);
        let _: Done = f.reply().unwrap();
        let f = frame(r#"{"ok":false,"re":"whois","error":{"code":"no_such_user","message":"x"}}"#);
        let Err(ClientError::Server(e)) = f.reply::<Done>() else {
            panic!("error reply")
        };
        assert_eq!(e.code, Code::NoSuchUser);
        assert_eq!(f.error(), Some(e));
        let f = frame(r#"{"event":"error","error":{"code":"bad_json","message":"x"}}"#);
        assert_eq!(f.kind(), FrameKind::Event("error"));
        assert_eq!(f.error().map(|e| e.code), Some(Code::BadJson));
    }

    #[test]
    fn bad_heads_are_protocol_errors() {
        for bad in [
            "",
            "[1]",
            "not json",
            r#"{"x":1}"#,
            r#"{"re":"ping"}"#,
            r#"{"re":"ping","ok":"yes"}"#,
            r#"{"re":"ping","ok":true,"event":"hello"}"#,
            r#"{"event":5}"#,
        ] {
            assert!(
                matches!(Frame::parse(bad.into()), Err(ClientError::Protocol(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_read_typed_and_unknown_ones_are_kept_as_unknown() {
        let f = frame(
            r#"{"event":"message","seq":"7-0","msg":{"id":"01X","from":{"id":2,"name":"bob"},"to":{"group":5,"name":"g"},"text":"hi \"you\"","ts":7,"x":1},"y":[1]}"#,
        );
        let Event::Message { seq, msg } = f.event().unwrap() else {
            panic!("a message")
        };
        assert_eq!(seq, Seq { ms: 7, n: 0 });
        assert_eq!(
            msg.from,
            UserRef {
                id: 2,
                name: "bob".into()
            }
        );
        assert_eq!(
            msg.to,
            Target::Group {
                group: 5,
                name: "g".into()
            }
        );
        assert_eq!(msg.text, "hi \"you\"");
        let f = frame(r#"{"event":"typing","user":1}"#);
        assert_eq!(f.event_name(), Some("typing"));
        assert_eq!(f.event().unwrap(), Event::Unknown);
        let f = frame(r#"{"event":"goaway","reason":"shutdown","reconnect_after_ms":250}"#);
        assert_eq!(
            f.clone().into_event().unwrap(),
            Event::Goaway {
                reason: "shutdown".into(),
                reconnect_after_ms: 250
            }
        );
        assert_eq!(f.line(), f.clone().into_line());
    }
}
