//! One message is one trace across nodes: the sender's span context travels inside the
//! message envelope through Redis, and the receiving node's delivery span is its child.
//! Spans are collected with the OpenTelemetry SDK's in-memory exporter.

mod common;

use common::{Cluster, user};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_crosses_nodes_through_redis() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(switchboard::telemetry::layer(&provider))
        .init();

    let c = Cluster::redis(2).await;
    let mut a = user(c.addr(0), "ta").await;
    let mut b = user(c.addr(1), "tb").await;
    let sent = a
        .ok(json!({"op": "send", "to": b.id, "text": "traced"}))
        .await;
    let ev = b.event("message").await;
    assert_eq!(ev["msg"]["id"], sent["msg"]["id"]);
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let msg_id = sent["msg"]["id"].as_str().unwrap();
    let send = spans
        .iter()
        .find(|s| {
            s.name == "message.send"
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "msg" && kv.value.as_str() == msg_id)
        })
        .expect("a message.send span for the message");
    let deliver: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.name == "message.deliver" && s.span_context.trace_id() == send.span_context.trace_id()
        })
        .collect();
    assert_eq!(
        deliver.len(),
        1,
        "exactly one delivery (to b) in the sender's trace"
    );
    assert_eq!(deliver[0].parent_span_id, send.span_context.span_id());
    let user_attr = deliver[0]
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "user")
        .map(|kv| kv.value.to_string());
    assert_eq!(user_attr, Some(b.id.to_string()));
}
