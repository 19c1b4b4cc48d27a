//! Rate limits and start-up validation.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Client, Cluster, PASSWORD, register, uname, user};
use serde_json::json;

fn tight(s: &mut switchboard::Settings) {
    s.login_failures_max = 3;
    s.login_failure_window_secs = 2;
    s.send_rate_per_sec = 1;
    s.send_burst = 3;
}

async fn failed_logins_are_limited_per_name_and_address(c: Cluster) {
    let name = uname("rl");
    register(c.addr(0), &name).await;
    let mut a = Client::connect(c.addr(0)).await;
    for _ in 0..3 {
        assert_eq!(
            a.err(json!({"op": "login", "name": name, "password": "wrong pass"}))
                .await,
            "bad_credentials"
        );
    }
    // Now even the right password is refused, from any node; that refusal is not a failure.
    assert_eq!(
        a.err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "rate_limited"
    );
    let mut b = Client::connect(c.addr(1)).await;
    assert_eq!(
        b.err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "rate_limited"
    );
    // Per address too: this address failed 3 times, so another name is refused from it.
    let other = uname("rl");
    register(c.addr(0), &other).await;
    assert_eq!(
        b.err(json!({"op": "login", "name": other, "password": PASSWORD}))
            .await,
        "rate_limited"
    );
    // Token logins are not limited.
    let token = {
        // Tokens can't be had by password now; wait out the sliding window first.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let r = b
            .ok(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await;
        r["token"].as_str().unwrap().to_string()
    };
    for _ in 0..3 {
        a.err(json!({"op": "login", "name": name, "password": "wrong pass"}))
            .await;
    }
    a.ok(json!({"op": "login", "token": token})).await;
}

async fn sends_are_limited_per_session(c: Cluster) {
    let mut a = user(c.addr(0), "sr").await;
    let bname = uname("sr");
    let bid = register(c.addr(1), &bname).await;
    for i in 0..3 {
        a.ok(json!({"op": "send", "to": bid, "text": format!("{i}")}))
            .await;
    }
    assert_eq!(
        a.err(json!({"op": "send", "to": bid, "text": "over"}))
            .await,
        "rate_limited"
    );
    // Another session of the same user has its own bucket.
    let mut a2 = Client::connect(c.addr(1)).await;
    a2.ok(json!({"op": "login", "token": a.token.clone().unwrap()}))
        .await;
    a2.ok(json!({"op": "send", "to": bid, "text": "3"})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.ok(json!({"op": "send", "to": bid, "text": "4"})).await;
    // Nothing was stored for the refused send.
    let mut b = Client::connect(c.addr(0)).await;
    b.login(&bname).await;
    let (msgs, _) = b.backlog().await;
    let texts: Vec<&str> = msgs
        .iter()
        .map(|m| m["msg"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["0", "1", "2", "3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_memory() {
    failed_logins_are_limited_per_name_and_address(Cluster::memory_with(tight).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_redis() {
    failed_logins_are_limited_per_name_and_address(Cluster::redis_with(2, tight).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_rate_memory() {
    sends_are_limited_per_session(Cluster::memory_with(tight).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_rate_redis() {
    sends_are_limited_per_session(Cluster::redis_with(2, tight).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_an_error() {
    let c = Cluster::memory_with(|s| s.max_connections = 2).await;
    let _a = Client::connect(c.addr(0)).await;
    let _b = Client::connect(c.addr(0)).await;
    let stream = tokio::net::TcpStream::connect(c.addr(0)).await.unwrap();
    let mut lines = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line)
        .await
        .unwrap();
    assert!(line.contains("\"unavailable\""), "{line}");
    let (_, body) = c.nodes[0].get("/metrics").await;
    assert_eq!(
        common::metric(
            &body,
            "switchboard_connections_rejected_total{reason=\"max_connections\"}"
        ),
        1.0
    );
}

#[test]
fn bad_setting_fails_startup_naming_it() {
    for (var, value) in [
        ("SWITCHBOARD_PRESENCE_TTL_SECS", "soon"),
        ("SWITCHBOARD_MAX_FRAME_BYTES", "1"),
        ("SWITCHBOARD_LISTEN", "not-an-address"),
        ("SWITCHBOARD_REDIS_URL", "http://x"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} must fail start-up");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}: {err}");
    }
}

#[test]
fn embedded_backend_runs_with_nothing_configured() {
    let port = common::free_port();
    let http = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env_remove("SWITCHBOARD_REDIS_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if an assertion fails before the TERM below.
    let child = common::ChildGuard::new(child);
    let mut hello = String::new();
    for _ in 0..300 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::BufRead;
            std::io::BufReader::new(s).read_line(&mut hello).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.take().wait_with_output().unwrap();
    assert!(hello.contains("\"hello\""), "{hello}");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in-memory"), "{err}");
}

#[test]
fn otlp_export_starts_serves_and_shuts_down_cleanly() {
    // No collector listens there: export fails quietly in the background, serving goes on.
    let port = common::free_port();
    let http = common::free_port();
    let collector = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("SWITCHBOARD_DRAIN_TIMEOUT_SECS", "1")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector}"),
        )
        .env_remove("SWITCHBOARD_REDIS_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let child = common::ChildGuard::new(child);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut a = user(addr, "ot").await;
        let b = user(addr, "ot").await;
        a.ok(json!({"op": "send", "to": b.id, "text": "traced"}))
            .await;
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.take().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("exporting traces over OTLP"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
