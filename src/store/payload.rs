//! The channel payload format, built and parsed side by side (docs/data-model.md, "Channels").
//!
//! What a node publishes on `sb:{u:ID}:ch` and hands to its [`LiveSink`](super::LiveSink):
//!
//! - `M <seq> <origin> <ts> <trace> <json>`: one stored message copy; `trace` is the W3C
//!   `traceparent` of the sending span or `-`;
//! - `E <origin> <line>`: a live-only event;
//! - `C <origin> <line>`: the sessions write the event (a `goaway`) and close.
//!
//! Fields are separated by single spaces and none but the last may contain one, so the JSON is
//! everything after the fifth (`M`) or second (`E`) space. `src/store/lua/send.lua` builds the
//! `M` payload in Lua (Redis backend): a change here must be made there too, and
//! `tests/delivery.rs` (`send_lua_payload_parses`) checks that the two agree.

use crate::protocol::{Seq, message_event};
use crate::server::outbox::Live;
use crate::store::Outgoing;

/// A channel payload for a message copy: `M <seq> <origin> <ts> <traceparent or -> <json>`.
pub fn message_payload(seq: Seq, msg: &Outgoing<'_>) -> String {
    // Same bytes as the `tail` of send.lua.
    let trace = msg.trace.unwrap_or("-");
    format!("M {seq} {} {} {trace} {}", msg.origin, msg.ts, msg.json)
}

/// A channel payload for an event: `E <origin> <line>` (`presence_many.lua` builds `E - <line>`
/// the same way).
pub fn event_payload(origin: &str, line: &str) -> String {
    format!("E {origin} {line}")
}

/// A channel payload that closes the sessions: `C <origin> <line>`.
pub fn close_payload(origin: &str, line: &str) -> String {
    format!("C {origin} {line}")
}

/// Parses a channel payload into the delivery queued for sessions; `None` if malformed.
pub fn parse(payload: &[u8]) -> Option<Live> {
    let text = std::str::from_utf8(payload).ok()?;
    let (kind, rest) = text.split_once(' ')?;
    match kind {
        "M" => {
            let (seq, rest) = rest.split_once(' ')?;
            let (origin, rest) = rest.split_once(' ')?;
            let (ts, rest) = rest.split_once(' ')?;
            let (trace, json) = rest.split_once(' ')?;
            let parsed: Seq = seq.parse().ok()?;
            Some(Live::Message {
                seq: parsed,
                origin: origin.into(),
                ts: ts.parse().ok()?,
                trace: (trace != "-").then(|| trace.into()),
                line: message_event(seq, json).into(),
            })
        }
        "E" => {
            let (origin, line) = rest.split_once(' ')?;
            Some(Live::Event {
                origin: origin.into(),
                line: line.into(),
            })
        }
        "C" => {
            let (origin, line) = rest.split_once(' ')?;
            Some(Live::Close {
                origin: origin.into(),
                line: line.into(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Recipient;

    fn outgoing<'a>(json: &'a str, origin: &'a str, trace: Option<&'a str>) -> Outgoing<'a> {
        Outgoing {
            from: 1,
            to: Recipient::User(2),
            id: "01J0000000000000000000000",
            ts: 1_700_000_000_123,
            json,
            client_id: None,
            origin,
            trace,
            fingerprint: "",
            text_bytes: 0,
            quota: u64::MAX,
        }
    }

    /// Builds a message payload and parses it back; the fields must come out as they went in.
    fn round_trip(seq: Seq, json: &str, origin: &str, trace: Option<&str>) {
        let msg = outgoing(json, origin, trace);
        let payload = message_payload(seq, &msg);
        match parse(payload.as_bytes()) {
            Some(Live::Message {
                seq: s,
                origin: o,
                ts,
                trace: t,
                line,
            }) => {
                assert_eq!(s, seq);
                assert_eq!(&*o, origin);
                assert_eq!(ts, msg.ts);
                assert_eq!(t.as_deref(), trace);
                assert_eq!(&*line, message_event(&seq.to_string(), json));
            }
            other => panic!("{payload:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn message_payloads_round_trip() {
        let seq = Seq {
            ms: 1_700_000_000_123,
            n: 7,
        };
        round_trip(seq, r#"{"id":"x"}"#, "n-1-2", None);
        // JSON with spaces, including runs of them and one right at the start of the text.
        round_trip(
            seq,
            r#"{"id":"x", "text":"  hello  world - M 1-0 "}"#,
            "n-1-2",
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        round_trip(Seq::ZERO, r#"{"text":" "}"#, "-", None);
    }

    #[test]
    fn missing_trace_is_a_dash() {
        let payload = message_payload(Seq { ms: 5, n: 1 }, &outgoing("{}", "n-1-2", None));
        assert_eq!(payload, "M 5-1 n-1-2 1700000000123 - {}");
        assert!(matches!(
            parse(payload.as_bytes()),
            Some(Live::Message { trace: None, .. })
        ));
    }

    #[test]
    fn event_payloads_round_trip() {
        let line = r#"{"event":"presence","user":{"id":3,"name":"a b"},"online":true}"#;
        for origin in ["-", "n-1-2"] {
            let payload = event_payload(origin, line);
            match parse(payload.as_bytes()) {
                Some(Live::Event { origin: o, line: l }) => {
                    assert_eq!((&*o, &*l), (origin, line));
                }
                other => panic!("{payload:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn payloads_parse() {
        match parse(br#"M 5-1 n-1-2 77 - {"id":"x"}"#).unwrap() {
            Live::Message {
                seq,
                origin,
                line,
                ts,
                trace,
            } => {
                assert_eq!((ts, trace), (77, None));
                assert_eq!(seq, Seq { ms: 5, n: 1 });
                assert_eq!(&*origin, "n-1-2");
                assert_eq!(
                    &*line,
                    r#"{"event":"message","seq":"5-1","msg":{"id":"x"}}"#
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(b"E - {\"event\":\"x\"}"),
            Some(Live::Event { .. })
        ));
        match parse(close_payload("n-1-2", r#"{"event":"goaway"}"#).as_bytes()) {
            Some(Live::Close { origin, line }) => {
                assert_eq!((&*origin, &*line), ("n-1-2", r#"{"event":"goaway"}"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(b"C -").is_none());
    }

    #[test]
    fn malformed_payloads_do_not_parse() {
        assert!(parse(b"M x - 1 - {}").is_none());
        assert!(parse(b"M 1-0 - x - {}").is_none());
        assert!(parse(b"M 1-0 - 1 -").is_none());
        assert!(parse(b"Q - {}").is_none());
        assert!(parse(b"E -").is_none());
        assert!(parse(b"M 1-0 - 1 - \xff").is_none());
    }
}
