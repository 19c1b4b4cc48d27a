//! PROXY protocol v1 and v2: the real client address reaches the per-address limits, and
//! headers are believed only from `proxy_trusted_cidrs`.

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
        s.proxy_trusted_cidrs = "127.0.0.1/32".into();
        s.login_failures_max = 2;
    })
    .await;
    limits_follow_the_proxied_address(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_redis() {
    let c = Cluster::redis_with(1, |s| {
        s.proxy_protocol = true;
        s.proxy_trusted_cidrs = "127.0.0.1/32".into();
        s.login_failures_max = 2;
    })
    .await;
    limits_follow_the_proxied_address(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_header_is_refused() {
    let c = Cluster::memory_with(|s| {
        s.proxy_protocol = true;
        s.proxy_trusted_cidrs = "127.0.0.1/32".into();
    })
    .await;
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

/// A connection to `to` from the local address `from` (any of 127.0.0.0/8 is local).
async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((std::net::Ipv4Addr::from(from), 0).into())
        .unwrap();
    sock.connect(to).await.unwrap()
}

/// Sends a valid header and a ping from `from`; true when the node served the connection
/// (hello and the ping's reply), false when it closed it without a word.
async fn served_from(c: &Cluster, from: [u8; 4]) -> bool {
    let mut s = connect_from(from, c.addr(0)).await;
    let mut bytes = v1("198.51.100.20");
    bytes.extend(b"{\"op\":\"ping\"}\n");
    // The node may close before reading: a failed write also means "not served".
    let _ = s.write_all(&bytes).await;
    let mut lines = BufReader::new(s).lines();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(common::WAIT, lines.next_line()).await {
            Ok(Ok(Some(l))) => got.push(l),
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("neither served nor closed within {:?}", common::WAIT),
        }
    }
    match got.len() {
        0 => false,
        2 => {
            assert!(got[0].contains("\"hello\""), "{got:?}");
            assert!(got[1].contains("\"re\":\"ping\""), "{got:?}");
            true
        }
        _ => panic!("served half-way: {got:?}"),
    }
}

fn rejected(body: &str, reason: &str) -> f64 {
    common::metric(
        body,
        &format!("switchboard_connections_rejected_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_from_trusted_peers() {
    let c = Cluster::memory_with(|s| {
        s.proxy_protocol = true;
        s.proxy_trusted_cidrs = "127.0.0.1/32".into();
    })
    .await;
    assert!(
        served_from(&c, [127, 0, 0, 1]).await,
        "trusted peer refused"
    );
    assert!(
        !served_from(&c, [127, 0, 0, 2]).await,
        "a header from an untrusted peer was believed"
    );
    let (_, body) = c.nodes[0].get("/metrics").await;
    assert_eq!(rejected(&body, "proxy_untrusted"), 1.0);
    assert_eq!(rejected(&body, "proxy_header"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_trust_list_refuses_every_proxied_connection() {
    let c = Cluster::memory_with(|s| s.proxy_protocol = true).await;
    for from in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        assert!(!served_from(&c, from).await, "served from {from:?}");
    }
    let (_, body) = c.nodes[0].get("/metrics").await;
    assert_eq!(rejected(&body, "proxy_untrusted"), 2.0);
}

/// The unauthenticated cap counts the address from the header, not the proxy's.
async fn unauthenticated_cap_follows_the_proxied_address(c: Cluster) {
    let open = |ip: &'static str| {
        let addr = c.addr(0);
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(&v1(ip)).await.unwrap();
            let mut lines = BufReader::new(s).lines();
            let first = tokio::time::timeout(common::WAIT, lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            (first, lines)
        }
    };
    let (first, _held) = open("203.0.113.7").await;
    assert!(first.contains("\"hello\""), "{first}");
    let (first, _refused) = open("203.0.113.7").await;
    assert!(first.contains("rate_limited"), "{first}");
    let (first, _other) = open("198.51.100.1").await;
    assert!(first.contains("\"hello\""), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_cap_behind_proxy_memory() {
    let c = Cluster::memory_with(|s| {
        s.proxy_protocol = true;
        s.proxy_trusted_cidrs = "127.0.0.0/8".into();
        s.max_unauthenticated_per_address = 1;
    })
    .await;
    unauthenticated_cap_follows_the_proxied_address(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_cap_behind_proxy_redis() {
    let c = Cluster::redis_with(1, |s| {
        s.proxy_protocol = true;
        s.proxy_trusted_cidrs = "127.0.0.0/8".into();
        s.max_unauthenticated_per_address = 1;
    })
    .await;
    unauthenticated_cap_follows_the_proxied_address(c).await;
}
