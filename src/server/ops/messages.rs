//! Messages: `send`, `group.send`, `ack`.

use std::borrow::Cow;

use tracing::Instrument;

use crate::error::{Code, Error, Result};
use crate::protocol::reply::{Done, SendReply};
use crate::protocol::{
    AckArgs, GroupSendArgs, Reply, SendArgs, Seq, Target, check_client_id, check_text,
};
use crate::server::session::Session;
use crate::store::{Outgoing, Recipient, Store};

impl<S: Store> Session<S> {
    pub(super) async fn send(&mut self, args: SendArgs<'_>) -> Result<Reply> {
        if args.to == self.me().id {
            return Err(Error::bad_request("you cannot send to yourself"));
        }
        self.store_message(
            Target::User { user: args.to },
            Recipient::User(args.to),
            args.text,
            args.client_id,
        )
        .await
    }

    pub(super) async fn group_send(&mut self, args: GroupSendArgs<'_>) -> Result<Reply> {
        check_text(&args.text, self.node.settings.max_text_chars)?;
        let name = self
            .node
            .store
            .group_name(args.group)
            .await?
            .ok_or_else(|| {
                Error::new(
                    Code::NoSuchGroup,
                    format!("group {} does not exist", args.group),
                )
            })?;
        let target = Target::Group {
            group: args.group,
            name,
        };
        self.store_message(
            target,
            Recipient::Group(args.group),
            args.text,
            args.client_id,
        )
        .await
    }

    async fn store_message(
        &mut self,
        target: Target,
        to: Recipient,
        text: Cow<'_, str>,
        client_id: Option<Cow<'_, str>>,
    ) -> Result<Reply> {
        check_text(&text, self.node.settings.max_text_chars)?;
        check_client_id(client_id.as_deref())?;
        if !self.bucket.take() {
            return Err(Error::new(Code::RateLimited, "sending too fast"));
        }
        let ts = crate::clock::now_ms();
        let msg = MessageOut {
            id: crate::clock::message_id(ts),
            from: self.me(),
            to: &target,
            text: &text,
            ts,
            client_id: client_id.as_deref(),
        };
        let json = serde_json::to_string(&msg).map_err(Error::internal)?;
        let node = self.node.clone();
        let kind = if matches!(to, Recipient::User(_)) {
            "direct"
        } else {
            "group"
        };
        // Only a repeated client_id is compared with it (no client_id, nothing to compare).
        let fingerprint = match msg.client_id {
            Some(_) => crate::store::fingerprint(to, msg.text),
            None => String::new(),
        };
        let span = tracing::info_span!("message.send", user = msg.from.id, kind, msg = %msg.id);
        let trace = crate::telemetry::traceparent(&span);
        let stored = node
            .store
            .send(Outgoing {
                from: msg.from.id,
                to,
                id: &msg.id,
                ts,
                json: &json,
                client_id: msg.client_id,
                origin: &self.id,
                trace: trace.as_deref(),
                fingerprint: &fingerprint,
                text_bytes: msg.text.len() as u64,
                quota: node.settings.send_bytes_per_day,
            })
            .instrument(span)
            .await?;
        let (id, sent) = (msg.id, stored.sent);
        if sent.id == id {
            let hot = &node.metrics.hot;
            let counter = if kind == "direct" {
                &hot.sent_direct
            } else {
                &hot.sent_group
            };
            counter.inc();
        }
        let login = self.login.as_mut().expect("checked");
        // Also for a repeated client_id: the original may not have reached this session yet.
        let inserted = sent.seq > login.last_seq && !login.own.contains(&sent.seq);
        if inserted {
            let at = login.own.partition_point(|&s| s < sent.seq);
            login.own.insert(at, sent.seq);
        }
        if let Err(e) = self.reach(stored.prev).await {
            // Not answered: this seq must not waive the check of a later send (`reach`), so it
            // is no longer "own". A later catch-up writes it as a message event; its live copy
            // is still skipped as this session's own (origin), which guarantee 8 allows.
            if let Some(login) = self.login.as_mut().filter(|_| inserted) {
                login.own.retain(|&s| s != sent.seq);
            }
            return Err(e);
        }
        Ok(Reply::Sent(SendReply { msg: sent }))
    }

    pub(super) async fn ack(&mut self, args: AckArgs<'_>) -> Result<Reply> {
        let seq: Seq = args.seq.parse()?;
        self.node.store.ack(self.me().id, seq).await?;
        self.node.metrics.acks.inc();
        Ok(Reply::Done(Done {}))
    }
}

/// A [`Message`] as serialized by its sender, borrowing what the session already holds (the
/// stored JSON is built once per send, without copies of the name, text or `client_id`).
#[derive(serde::Serialize)]
struct MessageOut<'a> {
    id: String,
    from: &'a crate::protocol::UserRef,
    to: &'a Target,
    text: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, UserRef};

    /// The borrowed form writes exactly what [`Message`] writes, which is what clients read.
    #[test]
    fn message_out_serializes_as_message() {
        let from = UserRef {
            id: 1,
            name: "ann".into(),
        };
        for (to, client_id) in [
            (Target::User { user: 2 }, Some("c-1")),
            (
                Target::Group {
                    group: 3,
                    name: "g".into(),
                },
                None,
            ),
        ] {
            let out = MessageOut {
                id: "01X".into(),
                from: &from,
                to: &to,
                text: "hi \"there\"\n",
                ts: 9,
                client_id,
            };
            let json = serde_json::to_string(&out).unwrap();
            let msg = Message {
                id: "01X".into(),
                from: from.clone(),
                to: to.clone(),
                text: "hi \"there\"\n".into(),
                ts: 9,
                client_id: client_id.map(str::to_owned),
            };
            assert_eq!(json, serde_json::to_string(&msg).unwrap());
        }
    }
}
