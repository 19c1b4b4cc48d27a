//! One client connection: read frames, answer requests in order, write live deliveries.
//!
//! The handler is a `select!` over the next frame, the session's outbox, the idle timer and the
//! node's lifecycle. Requests are handled one at a time, so replies keep request order; what
//! they do is in [`super::ops`], how messages reach the client in [`super::delivery`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument;

use crate::error::{Code, Error};
use crate::protocol::{self, Event, PROTOCOL_VERSION, Seq, UserRef};
use crate::server::admission::{Slot, client_key};
use crate::server::conn::{self, Frame, LineReader, ReadHalf, WriteHalf};
use crate::server::node::Node;
use crate::server::outbox::Outbox;
use crate::server::spare;
use crate::server::tls::Tls;
use crate::store::Store;

/// How long a closing connection keeps discarding input so its last error is not reset away.
const LINGER: Duration = Duration::from_millis(500);
/// The `goaway` reason of a rebalancing node.
const REBALANCE_REASON: &str = "rebalance";
/// A rebalanced client reconnects within this many milliseconds (random, spread).
const REBALANCE_WINDOW_MS: u64 = 1000;
/// Longest frame before login (or `max_frame_bytes` if smaller). `register` and `login` fit
/// in a few hundred bytes, so a connection that has not logged in buffers at most this much.
pub const PRE_LOGIN_FRAME_BYTES: usize = 4096;

/// The state of a logged-in session.
pub(super) struct LoggedIn {
    pub(super) user: UserRef,
    /// Digest of the token this session logged in with or received (revoked by `logout`).
    pub(super) token: String,
    pub(super) outbox: Arc<Outbox>,
    /// The newest inbox position written to the client (or acknowledged at login).
    pub(super) last_seq: Seq,
    /// Positions of this session's own sends not yet passed by `last_seq`: never echoed back.
    pub(super) own: VecDeque<Seq>,
    /// The login backlog has not been completed yet (`synced` still to send).
    pub(super) syncing: bool,
    /// A catch-up failed; retry at this time.
    pub(super) retry_at: Option<Instant>,
}

/// A token bucket for sends.
pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token; false when there is none.
    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the handler stops.
enum Close {
    /// The client went away or the node closed it: nothing more to write.
    Now,
    /// Write what is pending, half-close, discard input for a moment, close.
    Linger,
}

/// One connection's state, shared by the connection loop, the ops and the delivery path.
pub(super) struct Session<S> {
    pub(super) node: Arc<Node<S>>,
    pub(super) id: Arc<str>,
    pub(super) peer: SocketAddr,
    wr: WriteHalf,
    /// Replies, events and deliveries waiting for the next flush (one write per wake-up).
    pub(super) out: Vec<u8>,
    errors: u32,
    pub(super) bucket: Bucket,
    pub(super) login: Option<LoggedIn>,
    goaway_sent: bool,
    /// Told to go away because the node drains: the session is handed over when the client
    /// leaves (see [`Node::hand_over_session`]), unless it logs out first.
    pub(super) handover: bool,
    /// The account was deleted: the session ends once its `goaway` is written.
    pub(super) kicked: bool,
    /// Sent `goaway` to rebalance: counted in [`Node::leaving`] until the connection ends,
    /// which is at the latest at this time (`drain_timeout_secs` after the `goaway`).
    leaving: Option<Instant>,
    /// A write failed or timed out: what was buffered is gone, so nothing more may be written
    /// (a later write would follow a hole in the stream of positions).
    pub(super) broken: bool,
    /// This connection's place among its address's not-logged-in connections.
    slot: Option<Slot>,
    /// When a connection that is not logged in is closed.
    login_by: Option<Instant>,
}

/// Serves one accepted connection until it closes; with `tls`, after a TLS handshake.
pub async fn serve<S: Store>(
    node: Arc<Node<S>>,
    mut stream: TcpStream,
    mut peer: SocketAddr,
    tls: Option<Arc<Tls>>,
) {
    let mut buffered = bytes::BytesMut::new();
    if node.settings.proxy_protocol {
        // Only a trusted proxy may say who the client is; anyone else could claim any address.
        if !node.trusted_proxies.trusts(peer.ip()) {
            node.metrics
                .connections_rejected
                .with_label_values(&["proxy_untrusted"])
                .inc();
            tracing::info!(%peer, "connection refused: not in proxy_trusted_cidrs");
            return;
        }
        match timeout(
            crate::server::proxy::HEADER_TIMEOUT,
            crate::server::proxy::read_header(&mut stream, peer),
        )
        .await
        {
            Ok(Ok((source, rest))) => (peer, buffered) = (source, rest),
            Ok(Err(e)) => {
                node.metrics
                    .connections_rejected
                    .with_label_values(&["proxy_header"])
                    .inc();
                tracing::info!(%peer, error = %e, "connection refused");
                return;
            }
            Err(_) => {
                node.metrics
                    .connections_rejected
                    .with_label_values(&["proxy_header"])
                    .inc();
                tracing::info!(%peer, "connection refused: no PROXY header in time");
                return;
            }
        }
    }
    let Some(slot) = node.unauthenticated.take(client_key(peer.ip())) else {
        node.metrics
            .connections_rejected
            .with_label_values(&["unauthenticated_per_address"])
            .inc();
        // Debug, not info: this is what a flood looks like, and the counter above shows it.
        tracing::debug!(%peer, "connection refused: too many not logged in from this address");
        // On a TLS listener a refusal closes without a handshake: a plaintext error would be
        // garbage to a TLS client, and a flood is exactly when handshakes should not be spent.
        if tls.is_none() {
            let err = Error::new(
                Code::RateLimited,
                "too many connections from your address are not logged in",
            );
            Box::pin(refuse(&node, stream, &err)).await;
        }
        return;
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = match tls {
        None => conn::split_tcp(stream),
        // Boxed: the handshake's state is large and lives only until it ends, while the
        // connection task lives as long as the client.
        Some(tls) => match Box::pin(tls.accept(stream, buffered.split(), &node.metrics)).await {
            Ok(stream) => conn::split_tls(stream),
            Err(e) => {
                // Debug: scanners and plaintext clients do this all day; the counter shows it.
                tracing::debug!(%peer, error = %e, "connection closed");
                return;
            }
        },
    };
    let id = node.new_session_id();
    let span = tracing::info_span!("conn", %peer, node = %node.settings.node_name,
        session = %id, user = tracing::field::Empty);
    async move {
        let s = &node.settings;
        let mut session = Session {
            bucket: Bucket {
                tokens: s.send_burst as f64,
                rate: s.send_rate_per_sec as f64,
                burst: s.send_burst as f64,
                at: Instant::now(),
            },
            node: node.clone(),
            id,
            peer,
            wr,
            out: Vec::new(),
            errors: 0,
            login: None,
            goaway_sent: false,
            handover: false,
            kicked: false,
            leaving: None,
            broken: false,
            slot: Some(slot),
            login_by: None,
        };
        node.metrics.connections_open.inc();
        node.metrics.connections_accepted.inc();
        tracing::debug!("connected");
        let close = session.run(&mut rd, buffered).await;
        let flushed = session.flush().await;
        Box::pin(session.end()).await;
        if let (Close::Linger, true) = (close, flushed) {
            let _ = session.wr.shutdown().await;
            Box::pin(linger(rd)).await;
        }
        node.metrics.connections_open.dec();
        if session.leaving.is_some() {
            node.leaving.fetch_sub(1, Ordering::Relaxed);
        }
        tracing::debug!("closed");
    }
    .instrument(span)
    .await
}

/// Answers a connection that is not served with one `error` event, then half-closes and
/// lingers like a session that ends with an error.
async fn refuse<S: Store>(node: &Node<S>, stream: TcpStream, err: &Error) {
    node.metrics.error(err.code);
    let (rd, mut wr) = conn::split_tcp(stream);
    let mut line = Vec::new();
    Event::Error { error: err.clone() }.write(&mut line);
    let limit = Duration::from_secs(node.settings.write_timeout_secs);
    if let Ok(Ok(())) = timeout(limit, wr.write_all(&line)).await {
        let _ = wr.shutdown().await;
        linger(rd).await;
    }
}

/// Discards input until end of stream or [`LINGER`], so the peer reads our last frames before
/// the socket closes (closing with unread input would reset the connection).
async fn linger(mut rd: ReadHalf) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 1024];
    let _ = timeout(LINGER, async {
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

impl<S: Store> Session<S> {
    async fn run(&mut self, rd: &mut ReadHalf, buffered: bytes::BytesMut) -> Close {
        let mut reader = LineReader::with_buffered(self.frame_limit(), buffered);
        Event::Hello {
            server: "switchboard".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
            node: self.node.settings.node_name.as_str().into(),
        }
        .write(&mut self.out);
        self.login_by = Some(Instant::now() + self.login_timeout());
        let idle = match self.node.settings.idle_timeout_secs {
            0 => Duration::from_secs(100 * 365 * 24 * 3600),
            n => Duration::from_secs(n),
        };
        // Frames that arrived together with a PROXY header.
        if let Err(close) = Box::pin(self.handle_frames(&mut reader)).await {
            return close;
        }
        let mut deadline = Instant::now() + idle;
        loop {
            if !self.flush().await {
                return Close::Now;
            }
            if self.kicked {
                return Close::Linger;
            }
            let outbox = self.login.as_ref().map(|l| l.outbox.clone());
            let retry_at = self.login.as_ref().and_then(|l| l.retry_at);
            // Few, small futures: this select is what an idle connection costs (one lifecycle
            // wait, one read readiness, one outbox wait, one timer).
            let goaway_sent = self.goaway_sent;
            let node = self.node.clone();
            let lifecycle = async move {
                if goaway_sent {
                    node.closing.cancelled().await
                } else {
                    node.draining.cancelled().await
                }
            };
            let wake_at = [retry_at, self.login_by, self.leaving]
                .into_iter()
                .flatten()
                .fold(deadline, Instant::min);
            tokio::select! {
                biased;
                _ = lifecycle => {
                    if self.goaway_sent {
                        return Close::Now;
                    }
                    // Spread reconnects (no thundering herd), within the first half of the
                    // drain window so that they leave before it closes, and within
                    // `goaway_spread_ms` so that every client is back within seconds (a token
                    // login is cheap: thousands per second).
                    let s = &self.node.settings;
                    let window = (s.drain_timeout_secs * 1000 / 2).min(s.goaway_spread_ms);
                    self.goaway("shutdown", window);
                    self.handover = true;
                }
                filled = reader.fill(rd) => match filled {
                    Ok(n) if n > 0 => {
                        self.node.metrics.hot.bytes_in.inc_by(n as u64);
                        // Boxed (here and below): request handling is large and rare next to
                        // idle waiting, so the idle task stays small.
                        match Box::pin(self.handle_frames(&mut reader)).await {
                            Err(close) => return close,
                            // Only a whole frame is activity: bytes of an unfinished line,
                            // trickled in, must not keep a connection open.
                            Ok(true) => deadline = Instant::now() + idle,
                            Ok(false) => {}
                        }
                    }
                    Ok(_) | Err(_) => return Close::Now,
                },
                _ = async { outbox.as_ref().expect("guarded").ready().await }, if outbox.is_some() => {
                    if !self.goaway_sent && outbox.as_ref().is_some_and(|o| o.asked_to_leave()) {
                        self.rebalance_away();
                    }
                    if self.needs_catch_up() {
                        Box::pin(self.deliver()).await;
                    } else {
                        let registry = &self.node.registry;
                        let (losses, paused) = (registry.losses(), registry.paused());
                        self.write_queued(losses, paused);
                    }
                }
                _ = sleep_until(wake_at) => {
                    if self.login_by.is_some_and(|t| t <= Instant::now()) {
                        return self.login_timed_out();
                    }
                    // Told to go away to rebalance and still here after a drain's time: closed
                    // like the connections a drain leaves.
                    if self.leaving.is_some_and(|t| t <= Instant::now()) {
                        return Close::Now;
                    }
                    if retry_at.is_some_and(|r| r <= Instant::now()) {
                        Box::pin(self.deliver()).await;
                    } else if Instant::now() >= deadline {
                        tracing::info!("idle timeout");
                        return Close::Now;
                    }
                }
            }
        }
    }

    /// Handles every complete frame in the reader: `Ok(true)` when there was at least one
    /// that was not blank, `Err` when the connection must close.
    async fn handle_frames(&mut self, reader: &mut LineReader) -> std::result::Result<bool, Close> {
        let mut any = false;
        self.take_buffer();
        loop {
            // The bound follows the login state, which the previous frame may have changed.
            let max = self.frame_limit();
            reader.set_max(max);
            let Some(frame) = reader.next_frame() else {
                return Ok(any);
            };
            let line = match frame {
                Frame::TooLarge => {
                    let when = if self.login.is_none() {
                        " before login"
                    } else {
                        ""
                    };
                    let err = Error::new(
                        Code::FrameTooLarge,
                        format!("frame longer than {max} bytes{when}"),
                    );
                    self.error_event(&err);
                    return Err(Close::Linger);
                }
                Frame::Line(line) => line,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            any = true;
            self.node.metrics.hot.frames_in.inc();
            match protocol::Frame::parse(&line) {
                Ok(req) => self.handle(req).await,
                Err(err) => {
                    if self.error_event(&err) {
                        return Err(Close::Linger);
                    }
                }
            }
            if self.kicked {
                return Err(Close::Linger);
            }
            if let Some(close) = self.track_login() {
                return Err(close);
            }
            // A failed write is final: requests read with it would have effects and no reply.
            if self.broken {
                return Err(Close::Now);
            }
            if self.out.len() >= self.node.settings.max_frame_bytes && !self.flush().await {
                return Err(Close::Now);
            }
        }
    }

    /// Longest frame accepted in the current state.
    fn frame_limit(&self) -> usize {
        let max = self.node.settings.max_frame_bytes;
        if self.login.is_some() {
            max
        } else {
            max.min(PRE_LOGIN_FRAME_BYTES)
        }
    }

    fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.node.settings.login_timeout_secs)
    }

    /// Keeps the per-address slot and the login deadline in step with the login state after
    /// a request: a login frees the slot; a logout takes one again (the connection is not
    /// logged in any more and counts like a new one), or closes when the address has none left.
    fn track_login(&mut self) -> Option<Close> {
        match (self.login.is_some(), self.slot.is_some()) {
            (true, true) => {
                self.slot = None;
                self.login_by = None;
            }
            (false, false) => match self.node.unauthenticated.take(client_key(self.peer.ip())) {
                Some(slot) => {
                    self.slot = Some(slot);
                    self.login_by = Some(Instant::now() + self.login_timeout());
                }
                None => {
                    self.node
                        .metrics
                        .connections_rejected
                        .with_label_values(&["unauthenticated_per_address"])
                        .inc();
                    let err = Error::new(
                        Code::RateLimited,
                        "too many connections from your address are not logged in",
                    );
                    self.error_event(&err);
                    return Some(Close::Linger);
                }
            },
            _ => {}
        }
        None
    }

    /// Closes a connection that did not log in within `login_timeout_secs`.
    fn login_timed_out(&mut self) -> Close {
        self.node
            .metrics
            .connections_rejected
            .with_label_values(&["login_timeout"])
            .inc();
        tracing::debug!("login timeout");
        let secs = self.node.settings.login_timeout_secs;
        let err = Error::new(Code::NotLoggedIn, format!("no login within {secs} s"));
        self.error_event(&err);
        Close::Linger
    }

    /// Writes an `error` event; true when the connection reached its protocol error limit.
    fn error_event(&mut self, err: &Error) -> bool {
        self.node.metrics.error(err.code);
        Event::Error { error: err.clone() }.write(&mut self.out);
        self.errors += 1;
        self.errors >= self.node.settings.max_protocol_errors
    }

    /// Ends the logged-in state, if any: local routing, then the store (and presence).
    pub(super) async fn end(&mut self) {
        let Some(login) = self.login.take() else {
            return;
        };
        let node = &self.node;
        let unsubscribe = !node.draining.is_cancelled();
        node.registry
            .detach(&*node.store, login.user.id, &login.outbox, unsubscribe)
            .await;
        if self.handover {
            node.hand_over_session(&login.user, self.id.clone()).await;
        } else {
            node.close_session(&login.user, self.id.clone()).await;
        }
        node.metrics.sessions.dec();
        tracing::info!(user = login.user.id, "logged out");
    }

    /// The logged-in user (ops that need a login are only dispatched with one).
    pub(super) fn me(&self) -> &UserRef {
        &self.login.as_ref().expect("checked by dispatch").user
    }

    /// Sends `goaway` once; the client reconnects after a random delay within `window` ms.
    fn goaway(&mut self, reason: &'static str, window: u64) {
        self.goaway_sent = true;
        self.node.metrics.goaway.with_label_values(&[reason]).inc();
        let after = if window == 0 {
            0
        } else {
            rand::random::<u64>() % window
        };
        Event::Goaway {
            reason: reason.into(),
            reconnect_after_ms: after,
        }
        .write(&mut self.out);
    }

    /// The node holds more than its share of connections (see [`crate::server::rebalance`]):
    /// this client reconnects through the load balancer within a second, with its token;
    /// what it has not acknowledged is re-read from its inbox there.
    fn rebalance_away(&mut self) {
        self.goaway(REBALANCE_REASON, REBALANCE_WINDOW_MS);
        let drain = Duration::from_secs(self.node.settings.drain_timeout_secs);
        self.leaving = Some(Instant::now() + drain);
        self.node.leaving.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives the session a spare write buffer if it holds none (see [`spare`]).
    pub(super) fn take_buffer(&mut self) {
        if self.out.capacity() == 0 {
            self.out = spare::bytes();
        }
    }

    /// Writes pending output within the write timeout; false when the connection is unusable.
    pub(super) async fn flush(&mut self) -> bool {
        if self.broken {
            return false;
        }
        if self.out.is_empty() {
            spare::give_bytes(std::mem::take(&mut self.out));
            return true;
        }
        let limit = Duration::from_secs(self.node.settings.write_timeout_secs);
        // The flush is a no-op on TCP; on TLS it sends records rustls still holds when the
        // socket was full at the end of the write.
        let write = async {
            self.wr.write_all(&self.out).await?;
            self.wr.flush().await
        };
        let ok = match timeout(limit, write).await {
            Ok(Ok(())) => {
                // Counted per flush, not per frame: every frame ends in the one `\n` JSON
                // never holds raw, and memchr counts them at memory speed.
                let hot = &self.node.metrics.hot;
                hot.bytes_out.inc_by(self.out.len() as u64);
                hot.frames_out
                    .inc_by(memchr::memchr_iter(b'\n', &self.out).count() as u64);
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                self.node.metrics.slow_consumers.inc();
                tracing::info!("slow consumer disconnected");
                false
            }
        };
        // Release the buffer: idle sessions hold none (the next wake-up on this thread
        // takes it again).
        spare::give_bytes(std::mem::take(&mut self.out));
        self.broken = !ok;
        ok
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The connection task is most of what an idle connection costs (docs/benchmarks.md):
    /// keep request handling boxed out of it.
    #[tokio::test]
    async fn idle_connection_task_stays_small() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let registry = Arc::new(crate::server::registry::Registry::new(metrics.clone()));
        let retention = crate::store::Retention {
            max_len: 1,
            max_age_ms: 1,
            hard_max_len: 1,
        };
        let store = Arc::new(crate::store::MemoryStore::new(registry.clone(), retention));
        let node = Arc::new(Node::new(
            crate::config::Settings::default(),
            store,
            registry,
            metrics,
        ));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let peer = c.local_addr().unwrap();
        let f = serve(node, c, peer, None);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1536, "connection future grew to {size} bytes");
    }
}
