//! [`Session`]: a logged-in user that outlives its connections. On `goaway` it acknowledges
//! what it has seen, waits the server's `reconnect_after_ms`, reconnects (through the address
//! it was given: the load balancer) and logs in with the token; on a lost connection it does
//! the same after a jittered [`Backoff`]. What the old connection had delivered is handed out
//! first, then the new login's backlog, with messages seen before dropped by `msg.id`.
//!
//! Why nothing is lost: the session acknowledges only `seq`s it has received (in `message`
//! events, or as `msg.seq` of its own sends' replies), and protocol guarantee 8 says that a
//! `seq` reaches a session only after every earlier position of the inbox did. Everything
//! after the acknowledged position comes again in the next login's backlog.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use super::{Client, ClientError, Connection, Connector, Frame, Options};
use crate::error::Code;
use crate::protocol::reply::{LoggedIn, SendReply};
use crate::protocol::{Event, GroupId, Seq, UserId, UserRef};

/// Capped exponential back-off with jitter: attempt `n` waits a random time between half and
/// all of `min(first × 2ⁿ, max)`, so clients that lost their connections together do not
/// come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub first: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(8),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based) after a failure.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    /// The delay for attempt `attempt` with the random draw `r` in `[0, 1]`.
    pub fn delay_with(&self, attempt: u32, r: f64) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(r.clamp(0.0, 1.0))
    }
}

/// How a [`Session`] reconnects.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// Delays between failed attempts (and before the first one after a lost connection).
    pub backoff: Backoff,
    /// Attempts before [`Session::next`] gives up and returns the last error.
    pub max_attempts: u32,
    /// Upper bound on a server's `goaway.reconnect_after_ms`.
    pub goaway_max: Duration,
    /// How long a session leaving a connection waits for the reply to its `ack`.
    pub ack_wait: Duration,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect {
            backoff: Backoff::default(),
            max_attempts: 10,
            goaway_max: Duration::from_secs(60),
            ack_wait: Duration::from_secs(1),
        }
    }
}

/// What [`Session::next`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// An event (never `goaway`: the session handles it). A `message` is handed out once per
    /// `msg.id`, however often it comes.
    Event(Event<'static>),
    /// The session logged in again on a new connection (the login's backlog follows as
    /// events). Friend and group lists are the truth again: presence, friend and member
    /// events are not stored, so some may have been missed.
    Reconnected {
        /// The login reply.
        login: LoggedIn,
        /// The node now serving the session.
        node: String,
    },
}

/// Message ids remembered for dropping repeats.
const SEEN_IDS: usize = 4096;

/// A logged-in user across connections: on `goaway` it acknowledges what it has received,
/// waits `reconnect_after_ms`, reconnects to the same address (the load balancer) and logs in
/// with the token; on a lost connection the same after a [`Backoff`]. Messages are handed out
/// once per `msg.id`, and nothing acknowledged is lost (protocol guarantee 8: a `seq` reaches
/// a session only after every earlier position of the inbox did).
#[derive(Debug)]
pub struct Session {
    addr: String,
    options: Options,
    policy: Reconnect,
    /// Plain TCP or TLS, for every (re)connection.
    connector: Connector,
    client: Option<Client<Connection>>,
    token: String,
    user: UserRef,
    /// Frames of a connection left behind, handed out before anything newer.
    queue: VecDeque<Frame>,
    /// Wait before the next connection attempt.
    wait: Duration,
    /// The newest `seq` received, and the newest acknowledged.
    seen: Option<Seq>,
    acked: Option<Seq>,
    ids: SeenIds,
    reconnects: u64,
    /// The account was deleted (`goaway` with reason `account_deleted`): nothing to resume.
    deleted: bool,
}

/// `goaway.reason` when the account was deleted: the session ends for good.
pub const ACCOUNT_DELETED: &str = "account_deleted";

impl Session {
    /// Connects to `addr` over plain TCP and logs in with a password.
    pub async fn login(
        addr: &str,
        name: &str,
        password: &str,
        options: Options,
        policy: Reconnect,
    ) -> Result<(Session, LoggedIn), ClientError> {
        Self::login_via(&Connector::default(), addr, name, password, options, policy).await
    }

    /// Connects to `addr` through `connector` (TLS or not, also for every reconnection) and
    /// logs in with a password.
    pub async fn login_via(
        connector: &Connector,
        addr: &str,
        name: &str,
        password: &str,
        options: Options,
        policy: Reconnect,
    ) -> Result<(Session, LoggedIn), ClientError> {
        let mut client = Client::connect_via(connector, addr, options.clone()).await?;
        let login = client.login_password(name, password).await?;
        let session = Session::new(connector, addr, client, &login, options, policy);
        Ok((session, login))
    }

    /// Connects to `addr` over plain TCP and logs in with a token from an earlier login.
    pub async fn resume(
        addr: &str,
        token: &str,
        options: Options,
        policy: Reconnect,
    ) -> Result<(Session, LoggedIn), ClientError> {
        Self::resume_via(&Connector::default(), addr, token, options, policy).await
    }

    /// [`resume`](Session::resume) through `connector`.
    pub async fn resume_via(
        connector: &Connector,
        addr: &str,
        token: &str,
        options: Options,
        policy: Reconnect,
    ) -> Result<(Session, LoggedIn), ClientError> {
        let mut client = Client::connect_via(connector, addr, options.clone()).await?;
        let login = client.login_token(token).await?;
        let session = Session::new(connector, addr, client, &login, options, policy);
        Ok((session, login))
    }

    fn new(
        connector: &Connector,
        addr: &str,
        client: Client<Connection>,
        login: &LoggedIn,
        options: Options,
        policy: Reconnect,
    ) -> Session {
        Session {
            connector: connector.clone(),
            addr: addr.to_string(),
            options,
            policy,
            client: Some(client),
            token: login.token.clone(),
            user: login.user.clone(),
            queue: VecDeque::new(),
            wait: Duration::ZERO,
            seen: None,
            acked: None,
            ids: SeenIds::default(),
            reconnects: 0,
            deleted: false,
        }
    }

    /// The logged-in user.
    pub fn user(&self) -> &UserRef {
        &self.user
    }

    /// The token the session logs in with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How many times the session has logged in again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The newest `seq` received (by a message or an own send's reply).
    pub fn seen(&self) -> Option<Seq> {
        self.seen
    }

    /// The current connection, for any call ([`ClientError::Closed`] between connections:
    /// [`next`](Session::next) reconnects). Replies to requests written without waiting are
    /// dropped by [`next`](Session::next).
    pub fn client(&mut self) -> Result<&mut Client<Connection>, ClientError> {
        self.client.as_mut().ok_or(ClientError::Closed)
    }

    /// `send`, remembering the reply's `seq` for the next [`ack`](Session::ack). After a
    /// connection error, call [`next`](Session::next) (it reconnects) and send again with the
    /// same `client_id`: the server stores the message once.
    pub async fn send(
        &mut self,
        to: UserId,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<SendReply, ClientError> {
        let result = self.client()?.send(to, text, client_id).await;
        self.sent(result)
    }

    /// `group.send`, like [`send`](Session::send).
    pub async fn group_send(
        &mut self,
        group: GroupId,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<SendReply, ClientError> {
        let result = self.client()?.group_send(group, text, client_id).await;
        self.sent(result)
    }

    fn sent(&mut self, result: Result<SendReply, ClientError>) -> Result<SendReply, ClientError> {
        match &result {
            Ok(reply) => {
                self.ids.insert(&reply.msg.id);
                self.note(reply.msg.seq);
            }
            Err(e) if e.is_fatal() => self.leave(Duration::ZERO),
            Err(_) => {}
        }
        result
    }

    /// Acknowledges everything received so far, if anything is new.
    pub async fn ack(&mut self) -> Result<(), ClientError> {
        let Some(seq) = self.seen.filter(|s| Some(*s) > self.acked) else {
            return Ok(());
        };
        match self.client()?.ack(seq).await {
            Ok(_) => {
                self.acked = Some(seq);
                Ok(())
            }
            Err(e) => {
                if e.is_fatal() {
                    self.leave(Duration::ZERO);
                }
                Err(e)
            }
        }
    }

    /// The next event or reconnection. Reconnects as needed; an error means the session gave
    /// up ([`Reconnect::max_attempts`] failed, or the token was refused: `bad_credentials`).
    /// Calling it again after an error starts a new round of attempts.
    pub async fn next(&mut self) -> Result<Update, ClientError> {
        loop {
            if self.deleted && self.queue.is_empty() {
                return Err(ClientError::Closed);
            }
            let frame = match self.queue.pop_front() {
                Some(frame) => frame,
                None => {
                    let Some(client) = self.client.as_mut() else {
                        let (login, node) = self.reconnect().await?;
                        return Ok(Update::Reconnected { login, node });
                    };
                    match client.next_frame().await {
                        Ok(Some(frame)) => frame,
                        // An unreadable frame is skipped, as the protocol asks of clients.
                        Err(ClientError::Protocol(_)) => continue,
                        Ok(None) | Err(_) => {
                            let wait = self.policy.backoff.delay(0);
                            self.leave(wait);
                            continue;
                        }
                    }
                }
            };
            if frame.is_reply() {
                continue;
            }
            let Ok(event) = frame.into_event() else {
                continue;
            };
            match event {
                Event::Message { seq, msg } => {
                    self.note(seq);
                    if self.ids.insert(&msg.id) {
                        return Ok(Update::Event(Event::Message { seq, msg }));
                    }
                }
                Event::Goaway { reason, .. } if reason == ACCOUNT_DELETED => {
                    // The end: handed out, and no reconnection (every token is revoked).
                    self.leave(Duration::ZERO);
                    self.deleted = true;
                    return Ok(Update::Event(Event::Goaway {
                        reason,
                        reconnect_after_ms: 0,
                    }));
                }
                Event::Goaway {
                    reconnect_after_ms, ..
                } => {
                    if self.client.is_some() {
                        let limit = self.policy.ack_wait;
                        let _ = tokio::time::timeout(limit, self.ack()).await;
                    }
                    let wait =
                        Duration::from_millis(reconnect_after_ms).min(self.policy.goaway_max);
                    self.leave(wait);
                }
                other => return Ok(Update::Event(other)),
            }
        }
    }

    /// Drops the connection, keeping the frames it had delivered; the next attempt waits
    /// `wait`.
    fn leave(&mut self, wait: Duration) {
        if let Some(client) = self.client.take() {
            let (_, _, pending) = client.into_parts();
            self.queue.extend(pending);
            self.wait = wait;
        }
    }

    /// Connects and logs in with the token, retrying with back-off.
    async fn reconnect(&mut self) -> Result<(LoggedIn, String), ClientError> {
        let mut wait = std::mem::take(&mut self.wait);
        let mut last = ClientError::Closed;
        for attempt in 0..self.policy.max_attempts {
            tokio::time::sleep(wait).await;
            wait = self.policy.backoff.delay(attempt);
            let mut client = match Client::connect_via(
                &self.connector,
                &self.addr,
                self.options.clone(),
            )
            .await
            {
                Ok(client) => client,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match client.login_token(&self.token).await {
                Ok(login) => {
                    let node = client.hello().map(|h| h.node.clone()).unwrap_or_default();
                    self.client = Some(client);
                    self.user = login.user.clone();
                    self.token = login.token.clone();
                    self.reconnects += 1;
                    // The new login starts from the acknowledged position.
                    self.seen = self.acked;
                    return Ok((login, node));
                }
                Err(e) if e.code() == Some(Code::BadCredentials) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn note(&mut self, seq: Seq) {
        if Some(seq) > self.seen {
            self.seen = Some(seq);
        }
    }
}

/// A bounded set of message ids (the oldest are forgotten first).
#[derive(Debug, Default)]
struct SeenIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl SeenIds {
    /// True if `id` is new.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == SEEN_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.set.insert(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.delay_with(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay_with(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(800));
        for attempt in [5, 20, 31, 1000, u32::MAX] {
            for r in [0.0, 0.5, 1.0, 7.0] {
                let d = b.delay_with(attempt, r);
                assert!(
                    d >= Duration::from_secs(1) && d <= b.max,
                    "{attempt} {r}: {d:?}"
                );
            }
            assert!(b.delay(attempt) <= b.max);
        }
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut seen = SeenIds::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..SEEN_IDS {
            seen.insert(&i.to_string());
        }
        assert_eq!(seen.set.len(), SEEN_IDS);
        assert!(seen.insert("a"), "the oldest id was forgotten");
    }
}
