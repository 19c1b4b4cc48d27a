//! One client connection: read frames, answer requests in order, write live deliveries.
//!
//! The handler is a `select!` over the next frame, the session's outbox, the idle timer and the
//! node's lifecycle. Requests are handled one at a time, so replies keep request order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument;

use crate::admission::{Slot, client_key};
use crate::auth::{new_token, token_digest};
use crate::conn::{Frame, LineReader};
use crate::error::{Code, Error, Result};
use crate::node::Node;
use crate::outbox::{Live, Outbox};
use crate::protocol::{
    self, AckArgs, CreateArgs, GroupArg, GroupId, GroupSendArgs, LoginArgs, Message, Op, OpKind,
    PROTOCOL_VERSION, RegisterArgs, Request, SendArgs, Seq, Target, UserArg, UserId, UserRef,
    WhoArgs, check_client_id, check_text, valid_name, valid_password,
};
use crate::store::{Outgoing, Recipient, Store, Who};

/// Inbox entries read per request while sending a backlog or catching up.
const INBOX_PAGE: usize = 256;
/// Sliding window of `register_per_address_per_hour`.
const REGISTER_WINDOW_MS: u64 = 3600 * 1000;
/// How long a closing connection keeps discarding input so its last error is not reset away.
const LINGER: Duration = Duration::from_millis(500);
/// How often a session looks again while the live path is paused.
const PAUSED_POLL: Duration = Duration::from_millis(100);
/// Delay before retrying a catch-up that failed because the store was down.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);
/// Longest frame before login (or `max_frame_bytes` if smaller). `register` and `login` fit
/// in a few hundred bytes, so a connection that has not logged in buffers at most this much.
pub const PRE_LOGIN_FRAME_BYTES: usize = 4096;

/// The state of a logged-in session.
struct LoggedIn {
    user: UserRef,
    /// Digest of the token this session logged in with or received (revoked by `logout`).
    token: String,
    outbox: Arc<Outbox>,
    /// The newest inbox position written to the client (or acknowledged at login).
    last_seq: Seq,
    /// Positions of this session's own sends not yet passed by `last_seq`: never echoed back.
    own: std::collections::VecDeque<Seq>,
    /// The login backlog has not been completed yet (`synced` still to send).
    syncing: bool,
    /// A catch-up failed; retry at this time.
    retry_at: Option<Instant>,
}

/// A token bucket for sends.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
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

struct Session<S> {
    node: Arc<Node<S>>,
    id: Arc<str>,
    peer: SocketAddr,
    wr: OwnedWriteHalf,
    out: Vec<u8>,
    errors: u32,
    bucket: Bucket,
    login: Option<LoggedIn>,
    goaway_sent: bool,
    /// A write failed or timed out: what was buffered is gone, so nothing more may be written
    /// (a later write would follow a hole in the stream of positions).
    broken: bool,
    /// This connection's place among its address's not-logged-in connections.
    slot: Option<Slot>,
    /// When a connection that is not logged in is closed.
    login_by: Option<Instant>,
}

/// Serves one accepted connection until it closes.
pub async fn serve<S: Store>(node: Arc<Node<S>>, mut stream: TcpStream, mut peer: SocketAddr) {
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
            crate::proxy::HEADER_TIMEOUT,
            crate::proxy::read_header(&mut stream, peer),
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
        let err = Error::new(
            Code::RateLimited,
            "too many connections from your address are not logged in",
        );
        Box::pin(refuse(&node, stream, &err)).await;
        return;
    };
    let id = node.new_session_id();
    let span = tracing::info_span!("conn", %peer, node = %node.settings.node_name,
        session = %id, user = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
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
            broken: false,
            slot: Some(slot),
            login_by: None,
        };
        node.metrics.connections_open.inc();
        node.metrics.connections_accepted.inc();
        tracing::debug!("connected");
        let close = session.run(&rd, buffered).await;
        let flushed = session.flush().await;
        Box::pin(session.end()).await;
        if let (Close::Linger, true) = (close, flushed) {
            let _ = session.wr.shutdown().await;
            Box::pin(linger(rd)).await;
        }
        node.metrics.connections_open.dec();
        tracing::debug!("closed");
    }
    .instrument(span)
    .await
}

/// Answers a connection that is not served with one `error` event, then half-closes and
/// lingers like a session that ends with an error.
async fn refuse<S: Store>(node: &Node<S>, stream: TcpStream, err: &Error) {
    node.metrics
        .errors
        .with_label_values(&[err.code.as_str()])
        .inc();
    let (rd, mut wr) = stream.into_split();
    let mut line = protocol::error_event(err).into_bytes();
    line.push(b'\n');
    let limit = Duration::from_secs(node.settings.write_timeout_secs);
    if let Ok(Ok(())) = timeout(limit, wr.write_all(&line)).await {
        let _ = wr.shutdown().await;
        linger(rd).await;
    }
}

/// Discards input until end of stream or [`LINGER`], so the peer reads our last frames before
/// the socket closes (closing with unread input would reset the connection).
async fn linger(mut rd: OwnedReadHalf) {
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
    async fn run(&mut self, rd: &OwnedReadHalf, buffered: bytes::BytesMut) -> Close {
        let mut reader = LineReader::with_buffered(self.frame_limit(), buffered);
        let hello = protocol::event(
            "hello",
            json!({"server": "switchboard", "version": env!("CARGO_PKG_VERSION"),
                   "protocol": PROTOCOL_VERSION, "node": self.node.settings.node_name}),
        );
        self.push_line(&hello);
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
            let wake_at = [retry_at, self.login_by]
                .into_iter()
                .flatten()
                .fold(deadline, Instant::min);
            tokio::select! {
                biased;
                _ = lifecycle => {
                    if self.goaway_sent {
                        return Close::Now;
                    }
                    self.goaway();
                }
                filled = reader.fill(rd) => match filled {
                    Ok(true) => {
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
                    Ok(false) | Err(_) => return Close::Now,
                },
                _ = async { outbox.as_ref().expect("guarded").ready().await }, if outbox.is_some() => {
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
            match protocol::parse_request(&line) {
                Ok(req) => self.handle(req).await,
                Err(err) => {
                    if self.error_event(&err) {
                        return Err(Close::Linger);
                    }
                }
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
        self.node
            .metrics
            .errors
            .with_label_values(&[err.code.as_str()])
            .inc();
        self.push_line(&protocol::error_event(err));
        self.errors += 1;
        self.errors >= self.node.settings.max_protocol_errors
    }

    async fn handle(&mut self, req: Request) {
        let result = self.dispatch(&req).await;
        match result {
            Ok(fields) => protocol::write_ok(&mut self.out, &req.op, &req.reference, fields),
            Err(err) => {
                self.node
                    .metrics
                    .errors
                    .with_label_values(&[err.code.as_str()])
                    .inc();
                protocol::write_err(&mut self.out, &req.op, &req.reference, &err);
            }
        }
        // A login just succeeded: its backlog follows the reply at once.
        if self.login.as_ref().is_some_and(|l| l.syncing) {
            self.deliver().await;
        }
    }

    async fn dispatch(&mut self, req: &Request) -> Result<Value> {
        let Some(kind) = OpKind::from_name(&req.op) else {
            return Err(Error::new(
                Code::UnknownOp,
                format!("unknown op {:?}", req.op),
            ));
        };
        // Checked before the arguments: a request that needs a login answers `not_logged_in`
        // whatever its arguments.
        if kind.needs_login() && self.login.is_none() {
            return Err(Error::new(
                Code::NotLoggedIn,
                format!("{} needs a login", kind.name()),
            ));
        }
        match req.parse(kind)? {
            Op::Ping => Ok(json!({})),
            Op::Register(args) => self.register(args).await,
            Op::Login(args) => self.login(args).await,
            Op::Whois(args) => self.whois(args).await,
            Op::Logout => self.logout().await,
            Op::Send(args) => self.send(args).await,
            Op::GroupSend(args) => self.group_send(args).await,
            Op::Ack(args) => self.ack(args).await,
            Op::FriendAdd(args) => self.friend_add(args).await,
            Op::FriendRemove(args) => self.friend_remove(args).await,
            Op::FriendList => {
                let friends = self.node.store.friends(self.me().id).await?;
                Ok(json!({"friends": friends}))
            }
            Op::GroupCreate(args) => self.group_create(args).await,
            Op::GroupJoin(args) => self.group_join(args).await,
            Op::GroupLeave(args) => self.group_leave(args).await,
            Op::GroupList => {
                let groups = self.node.store.groups(self.me().id).await?;
                Ok(json!({"groups": groups}))
            }
        }
    }

    fn me(&self) -> &UserRef {
        &self.login.as_ref().expect("checked by dispatch").user
    }

    async fn register(&mut self, args: RegisterArgs) -> Result<Value> {
        if !valid_name(&args.name) {
            return Err(Error::new(
                Code::InvalidName,
                "a name is 1 to 32 characters from A-Z a-z 0-9 _ . -",
            ));
        }
        if !valid_password(&args.password) {
            return Err(Error::new(
                Code::InvalidPassword,
                "a password is 8 to 128 bytes",
            ));
        }
        let node = self.node.clone();
        // Reserved before hashing, so a burst cannot pass the check all at once; only a
        // successful registration keeps the reservation.
        let keys = [format!("register:addr:{}", client_key(self.peer.ip()))];
        let reservation = node
            .store
            .attempt_reserve(
                &keys,
                node.settings.register_per_address_per_hour,
                REGISTER_WINDOW_MS,
                crate::clock::now_ms(),
            )
            .await?
            .ok_or_else(|| {
                Error::new(
                    Code::RateLimited,
                    "too many registrations from this address; try again later",
                )
            })?;
        let registered = match node.passwords.hash(args.password).await {
            Ok(hash) => node.store.register(&args.name, &hash).await,
            Err(e) => Err(e),
        };
        let user = match registered {
            Ok(user) => user,
            Err(e) => {
                if let Err(e) = node.store.attempt_release(&keys, &reservation).await {
                    tracing::warn!(error = %e, "could not release a registration reservation");
                }
                return Err(e);
            }
        };
        tracing::info!(user = user.id, "registered");
        Ok(json!({"user": user}))
    }

    async fn login(&mut self, args: LoginArgs) -> Result<Value> {
        if self.login.is_some() {
            return Err(Error::new(
                Code::AlreadyLoggedIn,
                "this connection is logged in already",
            ));
        }
        let node = self.node.clone();
        let metrics = &node.metrics;
        let (method, result) = match (&args.password, &args.token) {
            (Some(_), _) => ("password", self.password_login(args).await),
            (None, Some(token)) => ("token", self.token_login(token).await),
            (None, None) => return Err(Error::bad_request("login needs a password or a token")),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        metrics.logins.with_label_values(&[method, outcome]).inc();
        result
    }

    async fn password_login(&mut self, args: LoginArgs) -> Result<Value> {
        let node = self.node.clone();
        let s = &node.settings;
        let password = args.password.unwrap_or_default();
        let who = match (&args.name, args.id) {
            (Some(name), _) => Who::Name(name),
            (None, Some(id)) => Who::Id(id),
            (None, None) => return Err(Error::bad_request("login needs a name or an id")),
        };
        let account = node.store.account(who).await?;
        // Failures count per (folded) name, also when the login names the user by id.
        let name_key = match (&account, who) {
            (Some(a), _) => format!("name:{}", a.user.name.to_ascii_lowercase()),
            (None, Who::Name(name)) => format!("name:{}", name.to_ascii_lowercase()),
            (None, Who::Id(id)) => format!("id:{id}"),
        };
        let keys = [
            format!("loginfail:{name_key}"),
            format!("loginfail:addr:{}", client_key(self.peer.ip())),
        ];
        let window_ms = s.login_failure_window_secs * 1000;
        let now = crate::clock::now_ms();
        // The attempt counts as a failure from before the verification on, so concurrent
        // guesses cannot all pass the check: at most `login_failures_max` are ever verified.
        let Some(reservation) = node
            .store
            .attempt_reserve(&keys, s.login_failures_max, window_ms, now)
            .await?
        else {
            return Err(Error::new(
                Code::RateLimited,
                "too many failed logins; try again later",
            ));
        };
        let verified = match &account {
            Some(a) => {
                node.passwords
                    .verify(password, a.password_hash.clone())
                    .await
            }
            None => Ok(false),
        };
        // A wrong password keeps its reservation: that is the failure. A success, or a
        // verification that could not run, is not a failure. Should the release fail, the
        // attempt counts as one failure until the window passes: not worth an error.
        if !matches!(verified, Ok(false))
            && let Err(e) = node.store.attempt_release(&keys, &reservation).await
        {
            tracing::warn!(error = %e, "could not release a login reservation");
        }
        let right = matches!(verified, Ok(true));
        let Some(account) = account.filter(|_| right) else {
            verified?;
            return Err(Error::new(Code::BadCredentials, "wrong name or password"));
        };
        let token = new_token();
        let digest = token_digest(&token);
        node.store
            .token_issue(&digest, account.user.id, s.token_ttl_secs)
            .await?;
        self.establish(account.user, token, digest).await
    }

    async fn token_login(&mut self, token: &str) -> Result<Value> {
        let node = self.node.clone();
        let digest = token_digest(token);
        let bad = || Error::new(Code::BadCredentials, "unknown or expired token");
        let account = node.store.token_account(&digest).await?.ok_or_else(bad)?;
        self.establish(account.user, token.to_string(), digest)
            .await
    }

    /// Registers the session everywhere, then answers; the backlog follows the reply.
    async fn establish(&mut self, user: UserRef, token: String, digest: String) -> Result<Value> {
        let node = self.node.clone();
        let s = &node.settings;
        let first = match node
            .store
            .session_open(user.id, &self.id, &s.node_name, s.max_sessions_per_user)
            .await
        {
            Ok(first) => first,
            // A time-out does not mean the script did not run: remove what it may have written.
            Err(e) if e.code == Code::Unavailable => {
                node.discard_session(&user, self.id.clone()).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let outbox = Arc::new(Outbox::new(self.id.clone(), user.clone(), s.outbound_queue));
        let setup = async {
            node.registry
                .attach(&*node.store, user.id, outbox.clone())
                .await?;
            node.store.login_state(user.id).await
        }
        .await;
        let (friends, groups, acked) = match setup {
            Ok(v) => v,
            Err(e) => {
                node.registry.detach(&*node.store, user.id, &outbox).await;
                // Never announced online, so no offline announcement either; a failed
                // removal is retried (the record must not outlive the login).
                node.discard_session(&user, self.id.clone()).await;
                return Err(e);
            }
        };
        if first {
            node.announce_presence(&user, true).await;
        }
        node.metrics.sessions.inc();
        tracing::Span::current().record("user", user.id);
        tracing::info!(user = user.id, "logged in");
        let reply = json!({"user": user, "token": token, "friends": friends, "groups": groups});
        self.login = Some(LoggedIn {
            user,
            token: digest,
            outbox,
            last_seq: acked,
            own: Default::default(),
            syncing: true,
            retry_at: None,
        });
        Ok(reply)
    }

    async fn logout(&mut self) -> Result<Value> {
        let digest = self.login.as_ref().expect("checked").token.clone();
        self.node.store.token_revoke(&digest).await?;
        self.end().await;
        Ok(json!({}))
    }

    /// Ends the logged-in state, if any: local routing, then the store (and presence).
    async fn end(&mut self) {
        let Some(login) = self.login.take() else {
            return;
        };
        let node = &self.node;
        node.registry
            .detach(&*node.store, login.user.id, &login.outbox)
            .await;
        node.close_session(&login.user, self.id.clone()).await;
        node.metrics.sessions.dec();
        tracing::info!(user = login.user.id, "logged out");
    }

    async fn whois(&mut self, args: WhoArgs) -> Result<Value> {
        let who = match (&args.name, args.id) {
            (Some(name), _) => Who::Name(name),
            (None, Some(id)) => Who::Id(id),
            (None, None) => return Err(Error::bad_request("whois needs a name or an id")),
        };
        match self.node.store.whois(who).await? {
            Some(user) => Ok(json!({"user": user})),
            None => Err(Error::new(Code::NoSuchUser, "no such user")),
        }
    }

    async fn send(&mut self, args: SendArgs) -> Result<Value> {
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

    async fn group_send(&mut self, args: GroupSendArgs) -> Result<Value> {
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
        text: String,
        client_id: Option<String>,
    ) -> Result<Value> {
        check_text(&text, self.node.settings.max_text_chars)?;
        check_client_id(&client_id)?;
        if !self.bucket.take() {
            return Err(Error::new(Code::RateLimited, "sending too fast"));
        }
        let ts = crate::clock::now_ms();
        let msg = Message {
            id: crate::clock::message_id(ts),
            from: self.me().clone(),
            to: target,
            text,
            ts,
            client_id,
        };
        let json = serde_json::to_string(&msg).map_err(Error::internal)?;
        let node = self.node.clone();
        let kind = if matches!(to, Recipient::User(_)) {
            "direct"
        } else {
            "group"
        };
        let fingerprint = crate::store::fingerprint(to, &msg.text);
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
                client_id: msg.client_id.as_deref(),
                origin: &self.id,
                trace: trace.as_deref(),
                fingerprint: &fingerprint,
                text_bytes: msg.text.len() as u64,
                quota: node.settings.send_bytes_per_day,
            })
            .instrument(span)
            .await?;
        let sent = stored.sent;
        if sent.id == msg.id {
            node.metrics.messages.with_label_values(&[kind]).inc();
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
        Ok(json!({"msg": sent}))
    }

    /// Protocol guarantee 8: before a reply hands out an own `seq`, every earlier position of
    /// the user's inbox (up to `prev`, the entry just before it) has reached this session. What
    /// is queued is written first; if that is not enough (a paused bus, a full queue, a catch-up
    /// owed) the inbox itself is read. If it cannot be read, the send answers `unavailable`:
    /// it is stored, and a retry with its `client_id` gets the same `msg` once Redis answers.
    async fn reach(&mut self, prev: Option<Seq>) -> Result<()> {
        if self.needs_catch_up() {
            self.deliver().await;
        } else {
            let registry = &self.node.registry;
            let (losses, paused) = (registry.losses(), registry.paused());
            self.write_queued(losses, paused);
        }
        let login = self.login.as_ref().expect("checked");
        // An own send needs nothing more: it was answered `ok` under this same rule (a send
        // whose reply failed is taken out of `own`).
        let behind = prev.is_some_and(|p| p > login.last_seq && !login.own.contains(&p));
        if behind {
            self.node.metrics.prefix_catch_ups.inc();
            self.catch_up().await?;
        }
        if self.broken {
            return Err(Error::unavailable("connection lost"));
        }
        Ok(())
    }

    async fn ack(&mut self, args: AckArgs) -> Result<Value> {
        let seq: Seq = args.seq.parse()?;
        self.node.store.ack(self.me().id, seq).await?;
        self.node.metrics.acks.inc();
        Ok(json!({}))
    }

    async fn friend_add(&mut self, args: UserArg) -> Result<Value> {
        let me = self.me().clone();
        if args.user == me.id {
            return Err(Error::bad_request("you cannot befriend yourself"));
        }
        let store = &self.node.store;
        let (friend, new) = store.friend_add(me.id, args.user).await?;
        if new {
            let to_other = protocol::event(
                "friend_added",
                json!({"friend": {"id": me.id, "name": me.name, "online": true}}),
            );
            let to_me = protocol::event("friend_added", json!({"friend": friend}));
            self.publish(&[friend.id], "-", &to_other).await;
            self.publish(&[me.id], &self.id.clone(), &to_me).await;
        }
        Ok(json!({"friend": friend}))
    }

    async fn friend_remove(&mut self, args: UserArg) -> Result<Value> {
        let me = self.me().clone();
        let other = self.node.store.friend_remove(me.id, args.user).await?;
        let to_other = protocol::event("friend_removed", json!({"user": me}));
        let to_me = protocol::event("friend_removed", json!({"user": other}));
        self.publish(&[other.id], "-", &to_other).await;
        self.publish(&[me.id], &self.id.clone(), &to_me).await;
        Ok(json!({}))
    }

    async fn group_create(&mut self, args: CreateArgs) -> Result<Value> {
        if !valid_name(&args.name) {
            return Err(Error::new(
                Code::InvalidName,
                "a group name is 1 to 32 characters from A-Z a-z 0-9 _ . -",
            ));
        }
        let desc = args.desc.unwrap_or_default();
        if desc.chars().count() > protocol::MAX_DESC_CHARS {
            return Err(Error::bad_request("desc is longer than 256 characters"));
        }
        let me = self.me().clone();
        let group = self
            .node
            .store
            .group_create(me.id, &args.name, &desc)
            .await?;
        self.membership_event("member_joined", group.id, &group.name, &[me.id])
            .await;
        Ok(json!({"group": group}))
    }

    async fn group_join(&mut self, args: GroupArg) -> Result<Value> {
        let group = self.node.store.group_join(self.me().id, args.group).await?;
        let members: Vec<UserId> = group.members.iter().map(|m| m.id).collect();
        self.membership_event("member_joined", group.id, &group.name, &members)
            .await;
        Ok(json!({"group": group}))
    }

    async fn group_leave(&mut self, args: GroupArg) -> Result<Value> {
        let left = self
            .node
            .store
            .group_leave(self.me().id, args.group)
            .await?;
        self.membership_event(
            "member_left",
            left.group.id,
            &left.group.name,
            &left.members,
        )
        .await;
        Ok(json!({}))
    }

    /// Sends `member_joined` / `member_left` about this user to `members`, except this session.
    async fn membership_event(
        &mut self,
        kind: &str,
        group: GroupId,
        name: &str,
        members: &[UserId],
    ) {
        let line = protocol::event(
            kind,
            json!({"group": {"id": group, "name": name}, "user": self.me()}),
        );
        self.publish(members, &self.id.clone(), &line).await;
    }

    /// Publishes a live-only event; a failure is logged, not returned (the change is stored).
    async fn publish(&self, users: &[UserId], origin: &str, line: &str) {
        if let Err(e) = self.node.store.publish_event(users, origin, line).await {
            tracing::warn!(error = %e, "event not published");
        }
    }

    /// Writes what the outbox holds; first re-reads the inbox when deliveries may have been
    /// missed (login backlog, full queue, bus outage). Nothing is written out of order.
    async fn deliver(&mut self) {
        let Some(login) = self.login.as_mut() else {
            return;
        };
        // While the live path is broken nothing queued may be written (it could jump over a
        // message that only the inbox has); a catch-up is owed for when it is back.
        let registry = self.node.registry.clone();
        let losses = registry.losses();
        let paused = registry.paused();
        if paused && !login.syncing {
            login.retry_at = Some(Instant::now() + PAUSED_POLL);
            return;
        }
        // A failed catch-up stays owed (retry_at set) until one succeeds: the lagged flag was
        // already taken, and writing queued deliveries first would skip the missed ones.
        let owed = login.retry_at.take().is_some();
        let lagged = login.outbox.take_lagged();
        if (lagged || owed || login.syncing)
            && let Err(e) = self.catch_up().await
        {
            tracing::warn!(error = %e, "inbox catch-up failed; retrying");
            if let Some(login) = self.login.as_mut() {
                login.retry_at = Some(Instant::now() + CATCH_UP_RETRY);
            }
            return;
        }
        self.write_queued(losses, paused);
    }

    /// Whether the next delivery must first re-read the inbox (the slow, awaiting path).
    fn needs_catch_up(&self) -> bool {
        self.login
            .as_ref()
            .is_some_and(|l| l.syncing || l.retry_at.is_some() || l.outbox.is_lagged())
            || self.node.registry.paused()
    }

    /// Writes the queued live deliveries: the common case of [`Session::deliver`], synchronous,
    /// so a wake-up for one message costs no boxed future. `losses` and `paused` are the live
    /// path's state from before any catch-up this follows.
    fn write_queued(&mut self, losses: u64, paused: bool) {
        let registry = self.node.registry.clone();
        let Some(login) = self.login.as_mut() else {
            return;
        };
        let mut queued = Vec::new();
        login.outbox.drain_into(&mut queued);
        // Checked after draining: a live message that arrived after a loss of the live path
        // is in this batch only if that loss is already counted. Then the catch-up above may
        // have missed what was published during the loss; the messages are all in the inbox,
        // so drop them here and catch up again once the channels are back.
        // Likewise if the session was marked lagged meanwhile (an overflow, or a resume that
        // marks every session): the catch-up that the mark asks for must come first.
        let lost = paused || registry.losses() != losses;
        if lost || login.outbox.is_lagged() {
            queued.retain(|live| matches!(**live, Live::Event { .. }));
            let wait = if lost { PAUSED_POLL } else { Duration::ZERO };
            login.retry_at = Some(Instant::now() + wait);
        }
        let metrics = &self.node.metrics;
        let now = crate::clock::now_ms();
        for live in queued {
            match &*live {
                Live::Message {
                    seq,
                    origin,
                    line,
                    ts,
                    trace,
                } => {
                    if advance(login, *seq) && **origin != *self.id {
                        if let Some(parent) = trace {
                            // One trace per message: this span's parent is the sender's span.
                            let span = tracing::info_span!("message.deliver", user = login.user.id, seq = %seq);
                            crate::telemetry::set_remote_parent(&span, parent);
                        }
                        self.out.extend_from_slice(line.as_bytes());
                        self.out.push(b'\n');
                        let local = origin_node(origin) == self.node.settings.node_name;
                        let path = if local { "live_local" } else { "live_remote" };
                        metrics.deliveries.with_label_values(&[path]).inc();
                        metrics
                            .delivery_latency
                            .observe(now.saturating_sub(*ts) as f64 / 1000.0);
                    }
                }
                Live::Event { origin, line } => {
                    if **origin != *self.id {
                        self.out.extend_from_slice(line.as_bytes());
                        self.out.push(b'\n');
                    }
                }
            }
        }
    }

    /// Writes every inbox entry after `last_seq`, page by page; ends a login backlog with `synced`.
    async fn catch_up(&mut self) -> Result<()> {
        let node = self.node.clone();
        let mut unread = 0u64;
        loop {
            let (user, after) = {
                let login = self.login.as_ref().expect("logged in");
                (login.user.id, login.last_seq)
            };
            let page = node.store.inbox_after(user, after, INBOX_PAGE).await?;
            let login = self.login.as_mut().expect("logged in");
            let mut delivered = 0;
            for entry in &page {
                if advance(login, entry.seq) {
                    let line = protocol::message_event(&entry.seq.to_string(), &entry.json);
                    self.out.extend_from_slice(line.as_bytes());
                    self.out.push(b'\n');
                    delivered += 1;
                    if entry.from != user {
                        unread += 1;
                    }
                }
            }
            node.metrics
                .deliveries
                .with_label_values(&["backlog"])
                .inc_by(delivered);
            if page.len() < INBOX_PAGE {
                break;
            }
            if !self.flush().await {
                // The page is lost with the connection; the run loop closes it.
                return Err(Error::unavailable("connection lost"));
            }
        }
        let login = self.login.as_mut().expect("logged in");
        if login.syncing {
            login.syncing = false;
            self.push_line(&protocol::event("synced", json!({"unread": unread})));
        }
        Ok(())
    }

    fn goaway(&mut self) {
        self.goaway_sent = true;
        self.node.metrics.goaway.inc();
        // Spread reconnects over the first half of the drain window (no thundering herd).
        let window = self.node.settings.drain_timeout_secs * 1000 / 2;
        let after = if window == 0 {
            0
        } else {
            rand::random::<u64>() % window
        };
        self.push_line(&protocol::event(
            "goaway",
            json!({"reason": "shutdown", "reconnect_after_ms": after}),
        ));
    }

    fn push_line(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.push(b'\n');
    }

    /// Writes pending output within the write timeout; false when the connection is unusable.
    async fn flush(&mut self) -> bool {
        if self.broken {
            return false;
        }
        if self.out.is_empty() {
            return true;
        }
        let limit = Duration::from_secs(self.node.settings.write_timeout_secs);
        let ok = match timeout(limit, self.wr.write_all(&self.out)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.node.metrics.slow_consumers.inc();
                tracing::info!("slow consumer disconnected");
                false
            }
        };
        // Release the buffer: idle sessions hold none.
        self.out = Vec::new();
        self.broken = !ok;
        ok
    }
}

/// The node part of a global session id (`node-boot-n`).
fn origin_node(origin: &str) -> &str {
    origin.rsplitn(3, '-').nth(2).unwrap_or("")
}

/// Moves `last_seq` to `seq` if it is new; true when the entry must be written (it is new and
/// not one of this session's own sends).
fn advance(login: &mut LoggedIn, seq: Seq) -> bool {
    if seq <= login.last_seq {
        return false;
    }
    login.last_seq = seq;
    while login.own.front().is_some_and(|&o| o < seq) {
        login.own.pop_front();
    }
    if login.own.front() == Some(&seq) {
        login.own.pop_front();
        return false;
    }
    true
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The connection task is most of what an idle connection costs (docs/benchmarks.md):
    /// keep request handling boxed out of it.
    #[tokio::test]
    async fn idle_connection_task_stays_small() {
        let metrics = Arc::new(crate::metrics::Metrics::new("t"));
        let registry = Arc::new(crate::registry::Registry::new(metrics.clone()));
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
        let f = serve(node, c, peer);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1536, "connection future grew to {size} bytes");
    }
}
