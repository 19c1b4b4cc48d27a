//! TLS end to end: certificates made here with rcgen (a private CA and a leaf for localhost and
//! 127.0.0.1), nodes that terminate TLS (handshake and login on both backends, a wrong CA, a
//! plaintext client, a handshake time-out, a certificate rotated under a running node, a PROXY
//! header before the handshake), nginx's stream `ssl` as the chart renders it, and the chat
//! client and the bench over TLS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{ChildGuard, Cluster, PASSWORD, WAIT, free_port, metric, uname};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use switchboard::Settings;
use switchboard::client::{Client, ClientError, Connection, Connector, Options};
use switchboard::protocol::Event;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A private CA and the files a node is given, in a directory removed on drop.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA whose leaf certificate (localhost, 127.0.0.1) is in `cert.pem` / `key.pem`.
    fn new() -> Pki {
        let dir =
            std::env::temp_dir().join(format!("sb-tls-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir, ca: new_ca() };
        pki.issue_into(&pki.ca, "cert.pem", "key.pem");
        std::fs::write(pki.ca_file(), pki.ca.pem()).unwrap();
        pki
    }

    /// Writes a leaf certificate for localhost and 127.0.0.1 signed by `ca`, and its key.
    fn issue_into(&self, ca: &CertifiedIssuer<'static, KeyPair>, cert: &str, key: &str) {
        let (c, k) = leaf(ca);
        // Key first: a reload that sees only one of the two new files fails and is retried.
        std::fs::write(self.dir.join(key), k).unwrap();
        std::fs::write(self.dir.join(cert), c).unwrap();
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Node settings that terminate TLS with this directory's certificate.
    fn apply(&self, s: &mut Settings) {
        s.tls_cert_file = Some(self.cert());
        s.tls_key_file = Some(self.key());
    }

    /// A connector that trusts this CA, for the name `localhost`.
    fn connector(&self) -> Connector {
        Connector::tls(Some(&self.ca_file()), Some("localhost")).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("switchboard test CA {}", rand::random::<u32>()),
    );
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate (PEM) for localhost and 127.0.0.1 and its key (PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Connects through `connector` with short limits.
async fn connect(
    connector: &Connector,
    addr: SocketAddr,
) -> Result<Client<Connection>, ClientError> {
    let options = Options {
        connect_timeout: WAIT,
        reply_timeout: WAIT,
        ..Options::default()
    };
    Client::connect_via(connector, &addr.to_string(), options).await
}

/// Registers and logs in a fresh user over `connector`: the client, the user's id and name,
/// and the login token.
async fn tls_user(
    connector: &Connector,
    addr: SocketAddr,
    prefix: &str,
) -> (Client<Connection>, u64, String, String) {
    let name = uname(prefix);
    let mut c = connect(connector, addr).await.expect("TLS connect");
    c.register(&name, PASSWORD).await.unwrap();
    let login = c.login_password(&name, PASSWORD).await.unwrap();
    (c, login.user.id, name, login.token)
}

/// Waits for the next `message` event and returns its text.
async fn next_message(c: &mut Client<Connection>) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, c.next_frame())
            .await
            .expect("a message in time")
            .unwrap()
            .expect("connection open");
        if let Event::Message { msg, .. } = frame.event().unwrap() {
            return msg.text.to_string();
        }
    }
}

fn handshakes(body: &str, result: &str) -> f64 {
    metric(
        body,
        &format!("switchboard_tls_handshakes_total{{result=\"{result}\"}}"),
    )
}

/// Reads whatever the server sends until it closes (or [`WAIT`] passes: then `None`).
async fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await {
        Ok(_) => Some(got), // EOF or reset: closed either way
        Err(_) => None,
    }
}

async fn handshake_login_and_chat(c: Cluster, pki: Pki) {
    let tls = pki.connector();
    let (mut alice, _, _, token) = tls_user(&tls, c.addr(0), "alice").await;
    let (mut bob, bob_id, _, _) = tls_user(&tls, c.addr(1), "bob").await;
    alice.send(bob_id, "over tls", None).await.unwrap();
    assert_eq!(next_message(&mut bob).await, "over tls");
    // A token login on a new TLS connection, as a reconnect does.
    let mut again = connect(&tls, c.addr(1)).await.unwrap();
    again.login_token(&token).await.unwrap();
    let body = c.nodes[0].get("/metrics").await.1;
    assert!(handshakes(&body, "ok") >= 1.0, "{body}");
    assert_eq!(handshakes(&body, "failed"), 0.0, "{body}");
}

async fn tls_cluster(redis: bool, pki: &Pki, f: impl Fn(&mut Settings)) -> Cluster {
    let apply = |s: &mut Settings| {
        pki.apply(s);
        f(s);
    };
    if redis {
        Cluster::redis_with(2, apply).await
    } else {
        Cluster::memory_with(apply).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_login_memory() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |_| {}).await;
    handshake_login_and_chat(c, pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_login_redis() {
    let pki = Pki::new();
    let c = tls_cluster(true, &pki, |_| {}).await;
    handshake_login_and_chat(c, pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_or_name_is_refused_by_the_client() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |_| {}).await;
    let other = Pki::new();
    let e = connect(&other.connector(), c.addr(0)).await.unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // The right CA, but a name the certificate does not have.
    let wrong_name = Connector::tls(Some(&pki.ca_file()), Some("chat.example.com")).unwrap();
    let e = connect(&wrong_name, c.addr(0)).await.unwrap_err();
    assert!(e.to_string().contains("not valid for name"), "{e}");
    // The name from the address (127.0.0.1 is in the certificate).
    let by_address = Connector::tls(Some(&pki.ca_file()), None).unwrap();
    connect(&by_address, c.addr(0))
        .await
        .expect("127.0.0.1 is a SAN");
    // The node saw the refusals as failed handshakes (the client's alert).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = c.nodes[0].get("/metrics").await.1;
        if handshakes(&body, "failed") >= 2.0 {
            assert!(handshakes(&body, "ok") >= 1.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_gets_no_hello_and_is_closed() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |_| {}).await;
    let mut s = TcpStream::connect(c.addr(0)).await.unwrap();
    s.write_all(b"{\"op\":\"ping\"}\n").await.unwrap();
    let got = read_until_closed(&mut s).await.expect("closed");
    assert!(
        !String::from_utf8_lossy(&got).contains("hello"),
        "a plaintext client must get no hello: {got:?}"
    );
    let body = c.nodes[0].get("/metrics").await.1;
    assert_eq!(handshakes(&body, "failed"), 1.0, "{body}");
    // A plaintext client of the library fails the same way: no hello.
    let e = Client::connect(c.addr(0)).await.unwrap_err();
    assert!(!matches!(e, ClientError::Server(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_and_is_counted() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |s| s.tls_handshake_timeout_ms = 300).await;
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(c.addr(0)).await.unwrap();
    // Half a ClientHello record header, then silence.
    s.write_all(&[0x16, 0x03]).await.unwrap();
    let got = read_until_closed(&mut s).await.expect("closed by the node");
    assert!(got.is_empty(), "{got:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let body = c.nodes[0].get("/metrics").await.1;
    assert_eq!(handshakes(&body, "timeout"), 1.0, "{body}");
    // The node still serves.
    connect(&pki.connector(), c.addr(0))
        .await
        .expect("served after a time-out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_is_used_for_new_connections() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |s| s.tls_reload_interval_ms = 100).await;
    let old = pki.connector();
    let (mut before, _, _, _) = tls_user(&old, c.addr(0), "before").await;

    // Rotate to a certificate from another CA (as a re-issued CA would look).
    let ca2 = new_ca();
    std::fs::write(pki.dir.join("ca2.pem"), ca2.pem()).unwrap();
    let new = Connector::tls(Some(&pki.dir.join("ca2.pem")), Some("localhost")).unwrap();
    pki.issue_into(&ca2, "cert.pem", "key.pem");
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect(&new, c.addr(0)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that trusts only the old CA is refused now (a fresh one: `old` could resume
    // its earlier TLS session, which skips the certificate, as resumption does).
    let e = connect(&pki.connector(), c.addr(0)).await.unwrap_err();
    assert!(
        e.to_string().contains("UnknownIssuer"),
        "old certificate still served: {e}"
    );
    // The connection made before the rotation goes on.
    before.ping().await.unwrap();
    let body = c.nodes[0].get("/metrics").await.1;
    assert!(
        metric(&body, "switchboard_tls_reloads_total{result=\"ok\"}") >= 1.0,
        "{body}"
    );

    // A broken rotation (a key that belongs to another certificate) keeps the current one.
    let (_, other_key) = leaf(&ca2);
    std::fs::write(pki.key(), other_key).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = c.nodes[0].get("/metrics").await.1;
        if metric(&body, "switchboard_tls_reloads_total{result=\"failed\"}") >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    connect(&new, c.addr(0))
        .await
        .expect("the last good certificate stays");
}

/// Writes `header` in the same segment as the first bytes written (the ClientHello), as a
/// load balancer does: the node must hand what it read past the header to the handshake.
struct Prefixed {
    io: TcpStream,
    header: Option<Vec<u8>>,
    /// Bytes of the combined first write still to go, and how many of them the caller gave.
    first: Option<(Vec<u8>, usize)>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(mut header) = this.header.take() {
            header.extend_from_slice(buf);
            this.first = Some((header, buf.len()));
        }
        if let Some((pending, claimed)) = this.first.as_mut() {
            while !pending.is_empty() {
                let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, pending))?;
                pending.drain(..n);
            }
            let claimed = *claimed;
            this.first = None;
            return Poll::Ready(Ok(claimed));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A TLS connection that starts with a PROXY v1 header naming `client` (in the same segment as
/// the ClientHello); `None` when the handshake does not complete.
async fn proxied_tls(
    pki: &Pki,
    addr: SocketAddr,
    client: &str,
) -> Option<Client<switchboard::client::Split<tokio_rustls_stream::Stream>>> {
    let io = Prefixed {
        io: TcpStream::connect(addr).await.unwrap(),
        header: Some(format!("PROXY TCP4 {client} 127.0.0.1 40000 6000\r\n").into_bytes()),
        first: None,
    };
    let stream = tokio::time::timeout(WAIT, tokio_rustls_stream::connect(pki, io))
        .await
        .ok()?
        .ok()?;
    Client::handshake(switchboard::client::Split(stream), Options::default())
        .await
        .ok()
}

/// The TLS client over an arbitrary stream: the library's connector wraps only a `TcpStream`,
/// so this test builds the same rustls configuration by hand.
mod tokio_rustls_stream {
    use super::*;
    use std::sync::Arc;

    pub type Stream = tokio_rustls::client::TlsStream<Prefixed>;

    pub async fn connect(pki: &Pki, io: Prefixed) -> std::io::Result<Stream> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(pki.ca_file()).unwrap();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, io)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_comes_before_the_handshake() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |s| {
        s.proxy_protocol = true;
        s.proxy_trusted_cidrs = "127.0.0.1/32".into();
        s.max_unauthenticated_per_address = 1;
    })
    .await;
    let mut first = proxied_tls(&pki, c.addr(0), "192.0.2.7")
        .await
        .expect("served");
    let name = uname("px");
    first.register(&name, PASSWORD).await.unwrap();
    // The proxied address, not 127.0.0.1, holds the one slot for connections not logged in:
    // a second one from it is closed before its handshake, one from another address is served.
    assert!(proxied_tls(&pki, c.addr(0), "192.0.2.7").await.is_none());
    let mut other = proxied_tls(&pki, c.addr(0), "192.0.2.8")
        .await
        .expect("served");
    other.ping().await.unwrap();
    first.login_password(&name, PASSWORD).await.unwrap();
    let body = c.nodes[0].get("/metrics").await.1;
    assert_eq!(
        metric(
            &body,
            "switchboard_connections_rejected_total{reason=\"unauthenticated_per_address\"}"
        ),
        1.0
    );
    // Without a PROXY header the TLS connection is refused (the ClientHello is no header).
    let e = connect(&pki.connector(), c.addr(0)).await.unwrap_err();
    assert!(e.is_fatal(), "{e}");
}

/// Runs `switchboard chat` in script mode over TLS; returns (success, stdout, stderr).
fn run_chat(addr: &str, name: &str, tls: &[&str], script: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "chat",
            addr,
            "--name",
            name,
            "--register",
            "--password-stdin",
            "--linger-ms",
            "1500",
        ])
        .args(tls)
        .env_remove("SWITCHBOARD_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{PASSWORD}").unwrap();
        for line in script {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let guard = ChildGuard::new(child);
    let out = guard.take().wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn chat_client_over_tls(c: Cluster, pki: Pki) {
    let tls = pki.connector();
    let (mut bob, _, bob_name, _) = tls_user(&tls, c.addr(1), "bob").await;
    let alice = uname("alice");
    let ca = pki.ca_file().display().to_string();
    let addr = format!("localhost:{}", c.addr(0).port());
    let line = format!("/msg {bob_name} hello over tls");
    let (ok, out, err) = tokio::task::spawn_blocking({
        let (addr, alice, ca) = (addr.clone(), alice.clone(), ca.clone());
        move || run_chat(&addr, &alice, &["--ca", &ca], &[&line])
    })
    .await
    .unwrap();
    assert!(ok, "chat failed: {err}\n{out}");
    assert!(out.contains(&format!("* logged in as {alice}")), "{out}");
    assert_eq!(next_message(&mut bob).await, "hello over tls");

    // The system roots do not know the test CA: the chat client refuses the server.
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run_chat(&addr, &uname("eve"), &["--tls"], &[]))
            .await
            .unwrap();
    assert!(!ok, "{out}");
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_client_over_tls_memory() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |_| {}).await;
    chat_client_over_tls(c, pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_client_over_tls_redis() {
    let pki = Pki::new();
    let c = tls_cluster(true, &pki, |_| {}).await;
    chat_client_over_tls(c, pki).await;
}

/// Runs `switchboard bench SCENARIO` over TLS (files in `dir`) and returns its JSON summary.
fn run_bench(addrs: &str, dir: &Path, scenario: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["bench", scenario, "--json", "--quiet", "--addr", addrs])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .args(["--server-name", "localhost", "--users-file"])
        .arg(dir.join(format!("users-{scenario}.jsonl")))
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn bench_over_tls(c: Cluster, pki: Pki) {
    let addrs = format!("{},{}", c.addr(0), c.addr(1));
    let dir = pki.dir.clone();
    let (chat, logins) = tokio::task::spawn_blocking(move || {
        let chat = run_bench(
            &addrs,
            &dir,
            "chat",
            &["-c", "6", "-d", "1.5", "--rate", "60", "--settle", "2"],
        );
        let logins = run_bench(&addrs, &dir, "logins", &["-c", "2", "-d", "1"]);
        (chat, logins)
    })
    .await
    .unwrap();
    assert!(chat["delivered"].as_u64().unwrap() > 0, "{chat}");
    assert_eq!(chat["lost"], 0, "{chat}");
    assert!(logins["token_logins"].as_u64().unwrap() > 0, "{logins}");
    assert_eq!(logins["token_failed"], 0, "{logins}");
    let body = c.nodes[0].get("/metrics").await.1;
    assert!(handshakes(&body, "ok") >= 3.0, "{body}");
    assert_eq!(handshakes(&body, "failed"), 0.0, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_over_tls_memory() {
    let pki = Pki::new();
    let c = tls_cluster(false, &pki, |_| {}).await;
    bench_over_tls(c, pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_over_tls_redis() {
    let pki = Pki::new();
    let c = tls_cluster(true, &pki, |_| {}).await;
    bench_over_tls(c, pki).await;
}

/// nginx as the chart renders it with `tls.enabled`, on loopback in front of `upstream`
/// (nodes that expect PROXY headers from it); stopped with everything it forked on drop.
struct Nginx {
    port: u16,
    _guard: ChildGuard,
}

impl Nginx {
    fn start(pki: &Pki, upstream: &[SocketAddr]) -> Nginx {
        // The Secret's keys, as mounted at tls.mountPath.
        std::fs::copy(pki.cert(), pki.dir.join("tls.crt")).unwrap();
        std::fs::copy(pki.key(), pki.dir.join("tls.key")).unwrap();
        let port = free_port();
        let servers: Vec<String> = upstream.iter().map(ToString::to_string).collect();
        let tls = serde_json::json!({"tls": {"enabled": true, "secretName": "chat-tls",
            "mountPath": pki.dir.display().to_string()}});
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/render-nginx.sh"
            ))
            .args(["--static", &servers.join(",")])
            .args([
                "--load-module",
                "/usr/lib/nginx/modules/ngx_stream_module.so",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--pid")
            .arg(pki.dir.join("nginx.pid"))
            .arg("--error-log")
            .arg(format!("{} notice", pki.dir.join("error.log").display()))
            .args(["--access-log", "off", "--set-json", &tls.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "render-nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = pki.dir.join("nginx.conf");
        std::fs::write(&conf, &out.stdout).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ssl_protocols TLSv1.2 TLSv1.3;"), "{text}");
        // The workers read the certificate at each handshake; started as root they would run
        // as nobody, who cannot enter a private TMPDIR. (Ignored when not run as root.)
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off; user root;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx installed");
        let guard = ChildGuard::new(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Nginx {
                    port,
                    _guard: guard,
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "nginx never listened: {}",
            std::fs::read_to_string(pki.dir.join("error.log")).unwrap_or_default()
        );
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

async fn through_nginx_with_ssl(c: Cluster, pki: Pki) {
    let upstream: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();
    let nginx = Nginx::start(&pki, &upstream);
    let tls = pki.connector();
    let (mut alice, _, _, _) = tls_user(&tls, nginx.addr(), "alice").await;
    let (mut bob, bob_id, _, _) = tls_user(&tls, nginx.addr(), "bob").await;
    alice.send(bob_id, "through nginx", None).await.unwrap();
    assert_eq!(next_message(&mut bob).await, "through nginx");

    // A wrong CA is refused; a plaintext client gets no hello and is closed.
    let e = connect(&Pki::new().connector(), nginx.addr())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let mut s = TcpStream::connect(nginx.addr()).await.unwrap();
    s.write_all(b"{\"op\":\"ping\"}\n").await.unwrap();
    let got = read_until_closed(&mut s).await.expect("closed by nginx");
    assert!(!String::from_utf8_lossy(&got).contains("hello"), "{got:?}");

    // The bench through nginx over TLS.
    let (addr, dir) = (nginx.addr().to_string(), pki.dir.clone());
    let logins = tokio::task::spawn_blocking(move || {
        run_bench(&addr, &dir, "logins", &["-c", "2", "-d", "1"])
    })
    .await
    .unwrap();
    assert!(logins["token_logins"].as_u64().unwrap() > 0, "{logins}");
    assert_eq!(logins["token_failed"], 0, "{logins}");
    // The nodes saw plain TCP from nginx (it terminated TLS), with the client in PROXY headers.
    let body = c.nodes[0].get("/metrics").await.1;
    assert_eq!(handshakes(&body, "ok"), 0.0, "{body}");
    assert!(
        metric(&body, "switchboard_connections_accepted_total") >= 1.0,
        "{body}"
    );
    drop(nginx);
}

fn behind_nginx(s: &mut Settings) {
    s.proxy_protocol = true;
    s.proxy_trusted_cidrs = "127.0.0.1/32".into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_with_ssl_memory() {
    let pki = Pki::new();
    let c = Cluster::memory_with(behind_nginx).await;
    through_nginx_with_ssl(c, pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_with_ssl_redis() {
    let pki = Pki::new();
    let c = Cluster::redis_with(2, behind_nginx).await;
    through_nginx_with_ssl(c, pki).await;
}

/// A TCP relay whose target can be switched (a load balancer after a node left it); TLS
/// passes through it end to end.
async fn relay(to: SocketAddr) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<SocketAddr>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target = std::sync::Arc::new(std::sync::Mutex::new(to));
    let current = target.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *current.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reconnects_over_tls_after_a_drain() {
    use switchboard::client::{Backoff, Reconnect, Session, Update};
    let pki = Pki::new();
    let c = tls_cluster(true, &pki, |s| s.drain_timeout_secs = 1).await;
    let tls = pki.connector();
    let (mut alice, _, _, _) = tls_user(&tls, c.addr(1), "alice").await;
    let (_, _, bob_name, _) = tls_user(&tls, c.addr(1), "bob").await;
    let (lb, target) = relay(c.addr(0)).await;
    let policy = Reconnect {
        backoff: Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..Reconnect::default()
    };
    let (mut bob, login) = Session::login_via(
        &tls,
        &lb.to_string(),
        &bob_name,
        PASSWORD,
        Options::default(),
        policy,
    )
    .await
    .unwrap();
    *target.lock().unwrap() = c.addr(1);
    c.nodes[0].begin_stop();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, bob.next())
            .await
            .expect("reconnect in time")
        {
            Ok(Update::Reconnected { node, .. }) => {
                assert_eq!(node, c.nodes[1].name);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("session gave up: {e}"),
        }
    }
    alice
        .send(login.user.id, "after the drain", None)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout_at(deadline, bob.next())
            .await
            .expect("message in time")
        {
            Ok(Update::Event(Event::Message { msg, .. })) => {
                assert_eq!(msg.text, "after the drain");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
