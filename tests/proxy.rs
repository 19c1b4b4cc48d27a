//! PROXY protocol v1 and v2: the real client address reaches the per-address login limit.

mod common;

use common::{Client, Cluster, PASSWORD, register, uname};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn v1(ip: &str) -> Vec<u8> {
    format!("PROXY TCP4 {ip} 10.0.0.1 40000 6000\r\n").into_bytes()
}

fn v2(ip: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]); // PROXY command, TCP over IPv4, 12 address bytes
    h.extend(ip);
    h.extend([10, 0, 0, 1]);
    h.extend(40000u16.to_be_bytes());
    h.extend(6000u16.to_be_bytes());
    h
}

/// Connects, sends `header` and a login in the same write, returns the login's error code.
async fn login_via(c: &Cluster, header: Vec<u8>, name: &str, password: &str) -> Option<String> {
    let mut bytes = header;
    bytes.extend(
        serde_json::to_vec(&json!({"op": "login", "name": name, "password": password})).unwrap(),
    );
    bytes.push(b'\n');
    let mut s = tokio::net::TcpStream::connect(c.addr(0)).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    let hello: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(hello["event"], "hello");
    let reply: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    reply["error"]["code"].as_str().map(String::from)
}

async fn limits_follow_the_proxied_address(c: Cluster) {
    let name = uname("px");
    // Register through the proxy too (every connection must carry a header).
    let mut bytes = v1("192.0.2.9");
    bytes.extend(
        serde_json::to_vec(&json!({"op": "register", "name": name, "password": PASSWORD})).unwrap(),
    );
    bytes.push(b'\n');
    let mut s = tokio::net::TcpStream::connect(c.addr(0)).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    lines.next_line().await.unwrap();
    assert!(
        lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .contains("\"ok\":true")
    );
    // Two failures from 203.0.113.7 (one v1, one v2) block that address, for any name.
    assert_eq!(
        login_via(&c, v1("203.0.113.7"), "nobody1", "wrong pass")
            .await
            .as_deref(),
        Some("bad_credentials")
    );
    assert_eq!(
        login_via(&c, v2([203, 0, 113, 7]), "nobody2", "wrong pass")
            .await
            .as_deref(),
        Some("bad_credentials")
    );
    assert_eq!(
        login_via(&c, v1("203.0.113.7"), &name, PASSWORD)
            .await
            .as_deref(),
        Some("rate_limited")
    );
    // Another real address is not affected, though all come from 127.0.0.1.
    assert_eq!(
        login_via(&c, v2([198, 51, 100, 1]), &name, PASSWORD).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_memory() {
    let c = Cluster::memory_with(|s| {
        s.proxy_protocol = true;
        s.login_failures_max = 2;
    })
    .await;
    limits_follow_the_proxied_address(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_redis() {
    let c = Cluster::redis_with(1, |s| {
        s.proxy_protocol = true;
        s.login_failures_max = 2;
    })
    .await;
    limits_follow_the_proxied_address(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_header_is_refused() {
    let c = Cluster::memory_with(|s| s.proxy_protocol = true).await;
    for junk in [&b"{\"op\":\"ping\"}\n"[..], b"PROXY TCP4 bogus\r\n"] {
        let mut s = tokio::net::TcpStream::connect(c.addr(0)).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut lines = BufReader::new(s).lines();
        let first = tokio::time::timeout(common::WAIT, lines.next_line())
            .await
            .unwrap();
        assert!(
            matches!(first, Ok(None) | Err(_)),
            "no hello without a valid header: {first:?}"
        );
    }
    let (_, body) = c.nodes[0].get("/metrics").await;
    assert_eq!(
        common::metric(
            &body,
            "switchboard_connections_rejected_total{reason=\"proxy_header\"}"
        ),
        2.0
    );
    // Without the setting, a client speaking plain protocol is served as usual.
    let plain = Cluster::memory().await;
    let mut a = Client::connect(plain.addr(0)).await;
    a.ok(json!({"op": "ping"})).await;
    register(plain.addr(0), &uname("pp")).await;
}
