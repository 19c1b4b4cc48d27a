//! The Redis store's hot path at store level (issue 9): the inbox retention rule of send.lua
//! and the quota hash, including data of the previous release. A real redis-server; the test
//! plays the node's part through `RedisStore`, and reads and writes keys directly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Redis;
use redis::aio::MultiplexedConnection;
use switchboard::metrics::Metrics;
use switchboard::server::registry::Registry;
use switchboard::store::{Outgoing, Recipient, RedisStore, Retention, Store, fingerprint};

const ALICE: u64 = 1;
const BOB: u64 = 2;

/// A Redis store with `retention`, and a plain connection for looking at the keys; users 1
/// (alice) and 2 (bob) exist. AOF fsync is relaxed: these tests send thousands of messages.
async fn setup(retention: Retention) -> (Redis, Arc<RedisStore>, MultiplexedConnection) {
    let redis = Redis::start();
    assert_eq!(redis.cli(&["CONFIG", "SET", "appendfsync", "no"]), "OK");
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(metrics.clone()));
    let store = RedisStore::connect(
        &redis.url(),
        "rs",
        registry,
        retention,
        Duration::from_secs(5),
        metrics,
    )
    .await
    .unwrap();
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (id, name) in [(ALICE, "alice"), (BOB, "bob")] {
        let _: () = redis::cmd("HSET")
            .arg(format!("sb:{{u:{id}}}"))
            .arg("name")
            .arg(name)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    (redis, store, con)
}

/// Sends `text` from alice to bob under `quota` bytes per day.
async fn send(store: &RedisStore, text: &str, quota: u64) -> switchboard::error::Result<()> {
    let json = serde_json::json!({
        "id": "m", "from": {"id": ALICE, "name": "alice"}, "to": {"user": BOB},
        "text": text, "ts": 1,
    })
    .to_string();
    let to = Recipient::User(BOB);
    let fp = fingerprint(to, text);
    store
        .send(Outgoing {
            from: ALICE,
            to,
            id: "m",
            ts: 1,
            json: &json,
            client_id: None,
            origin: "rs-1",
            trace: None,
            fingerprint: &fp,
            text_bytes: text.len() as u64,
            quota,
        })
        .await
        .map(|_| ())
}

/// Entries of `key` with an id below `before` (ms), and all entries.
async fn counts(con: &mut MultiplexedConnection, key: &str, before: u64) -> (usize, usize) {
    let old: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg(format!("({before}-0"))
        .query_async(con)
        .await
        .unwrap();
    let len: usize = redis::cmd("XLEN").arg(key).query_async(con).await.unwrap();
    (old.len(), len)
}

/// Retention (docs/data-model.md): send.lua trims only on some appends (about one in a
/// hundred) and only whole stream nodes, but never an entry among the newest `inbox_max_len`
/// or younger than the cut-off; and what the rule lets go does go, up to the last node that
/// still holds kept entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_only_what_the_rule_lets_go() {
    let max_len = 200;
    let (_redis, store, mut con) = setup(Retention {
        max_len,
        max_age_ms: 3_600_000,
        hard_max_len: 100_000,
    })
    .await;
    // 500 entries from long ago in bob's inbox (ids carry the time: these are from 1970).
    let inbox = format!("sb:{{u:{BOB}}}:inbox");
    let filler = format!("{{\"text\":\"{}\"}}", "o".repeat(150));
    let mut pipe = redis::pipe();
    for ms in 1000..1500 {
        pipe.cmd("XADD")
            .arg(&inbox)
            .arg(format!("{ms}-0"))
            .arg("f")
            .arg(ALICE)
            .arg("m")
            .arg(&filler)
            .ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    let text = "y".repeat(150);
    let mut first_trim = None;
    for sent in 1..=3000usize {
        send(&store, &text, u64::MAX / 4).await.unwrap();
        let (old, len) = counts(&mut con, &inbox, 1_000_000).await;
        // Nothing young is ever trimmed, nor anything among the newest max_len.
        assert_eq!(
            len - old,
            sent,
            "a young entry was trimmed after {sent} sends"
        );
        assert!(
            len as u64 >= max_len.min(500 + sent as u64),
            "{len} entries after {sent} sends: fewer than the newest {max_len}"
        );
        if old < 500 && first_trim.is_none() {
            first_trim = Some(sent);
        }
        // The old entries go, except those in the stream node that young ones share (a node
        // holds at most 100 entries, stream-node-max-entries).
        if sent as u64 >= max_len && old < 100 {
            eprintln!("first trim after {first_trim:?} sends; old entries <100 after {sent}");
            return;
        }
    }
    panic!("old entries beyond the newest {max_len} were never trimmed");
}

const HOUR_MS: u64 = 3_600_000;

/// The current quota bucket, after waiting out the last seconds of an hour (a test that reads
/// bucket fields must not straddle two buckets).
async fn settled_bucket() -> u64 {
    let into = switchboard::clock::now_ms() % HOUR_MS;
    if into > HOUR_MS - 10_000 {
        tokio::time::sleep(Duration::from_millis(HOUR_MS - into + 100)).await;
    }
    switchboard::clock::now_ms() / HOUR_MS
}

/// The quota hash as field → value.
async fn quota_fields(con: &mut MultiplexedConnection) -> std::collections::BTreeMap<String, u64> {
    redis::cmd("HGETALL")
        .arg(format!("sb:{{u:{ALICE}}}:quota"))
        .query_async(con)
        .await
        .unwrap()
}

fn retention() -> Retention {
    Retention {
        max_len: 1000,
        max_age_ms: 3_600_000,
        hard_max_len: 100_000,
    }
}

/// A quota hash as 0.2.0 writes it (bucket → bytes, no sum field) is read as it was: stale
/// buckets do not count and go, the others do; the sum of the other buckets is then kept in
/// field "-<bucket>", and the current bucket keeps counting in its own field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_hash_of_the_previous_release_is_read() {
    let (_redis, store, mut con) = setup(retention()).await;
    let b = settled_bucket().await;
    let qkey = format!("sb:{{u:{ALICE}}}:quota");
    let _: () = redis::cmd("HSET")
        .arg(&qkey)
        .arg(&[(b - 30, 999), (b - 5, 600), (b, 200)])
        .query_async(&mut con)
        .await
        .unwrap();
    // 600 + 200 + 2 copies × 100 = 1000: just fits; the stale 999 does not count.
    send(&store, &"x".repeat(100), 1000).await.unwrap();
    let code = send(&store, "x", 1000).await.unwrap_err().code;
    assert_eq!(code, switchboard::error::Code::RateLimited);
    let fields = quota_fields(&mut con).await;
    let want: std::collections::BTreeMap<String, u64> = [
        (format!("-{b}"), 600),
        ((b - 5).to_string(), 600),
        (b.to_string(), 400),
    ]
    .into_iter()
    .collect();
    assert_eq!(fields, want);
}

/// A rolling upgrade: nodes of 0.2.0 (their send.lua, tests/fixtures/send-0.2.0.lua) and of this
/// release charge the same hash. Neither breaks on what the other wrote, and both see every
/// byte: the sum field is dropped by the old script (a negative field is a stale bucket to it)
/// and recomputed by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_both_releases_share_the_quota() {
    let (_redis, store, mut con) = setup(retention()).await;
    let old = redis::Script::new(include_str!("fixtures/send-0.2.0.lua"));
    let b = settled_bucket().await;
    let quota = 1000u64;
    // What a 0.2.0 node passes: the same 18 arguments.
    let old_send = async |con: &mut MultiplexedConnection, text: &str| -> String {
        let json = serde_json::json!({
            "id": "o", "from": {"id": ALICE, "name": "alice"}, "to": {"user": BOB},
            "text": text, "ts": 1,
        })
        .to_string();
        let now = switchboard::clock::now_ms();
        let mut inv = old.prepare_invoke();
        inv.arg(ALICE)
            .arg("u")
            .arg(BOB)
            .arg(json)
            .arg("old-1")
            .arg("")
            .arg("o")
            .arg(1)
            .arg(1000)
            .arg(format!("{}-{}", now - 3_600_001, u64::MAX))
            .arg(86400)
            .arg("-")
            .arg(fingerprint(Recipient::User(BOB), text))
            .arg(text.len())
            .arg(quota)
            .arg(now / HOUR_MS)
            .arg((now - 24 * HOUR_MS) / HOUR_MS)
            .arg(100_000);
        let v: Vec<redis::Value> = inv.invoke_async(con).await.unwrap();
        String::from_redis_value(v[0].clone()).unwrap()
    };
    use redis::FromRedisValue;
    let hundred = "x".repeat(100);
    send(&store, &hundred, quota).await.unwrap(); // 200
    assert_eq!(old_send(&mut con, &hundred).await, "ok"); // 400
    assert!(!quota_fields(&mut con).await.contains_key(&format!("-{b}")));
    send(&store, &hundred, quota).await.unwrap(); // 600: recomputed
    send(&store, &hundred, quota).await.unwrap(); // 800: the sum field
    assert_eq!(old_send(&mut con, &"x".repeat(50)).await, "ok"); // 900
    send(&store, &"x".repeat(50), quota).await.unwrap(); // 1000
    assert_eq!(old_send(&mut con, "x").await, "rate_limited");
    let code = send(&store, "x", quota).await.unwrap_err().code;
    assert_eq!(code, switchboard::error::Code::RateLimited);
    let fields = quota_fields(&mut con).await;
    assert_eq!(fields.get(&b.to_string()), Some(&1000));
    assert_eq!(fields.get(&format!("-{b}")), Some(&0));
    let stored: u64 = redis::cmd("XLEN")
        .arg(format!("sb:{{u:{BOB}}}:inbox"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(stored, 6, "every accepted send stored once, nothing else");
}
