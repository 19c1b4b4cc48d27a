//! What every connection of a node shares: settings, store, routing table, metrics, lifecycle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::protocol::{Event, Friend, UserRef};
use crate::server::admission::{TrustedProxies, Unauthenticated};
use crate::server::auth::Passwords;
use crate::server::closer;
use crate::server::registry::Registry;
use crate::store::Store;

/// The shared context of one node.
pub struct Node<S> {
    /// Settings.
    pub settings: Settings,
    /// Durable state and the live path.
    pub store: Arc<S>,
    /// Local sessions by user.
    pub registry: Arc<Registry>,
    /// Prometheus series.
    pub metrics: Arc<Metrics>,
    /// Password hashing.
    pub passwords: Passwords,
    /// `login_concurrency` slots for the store work of a login (see [`Node::login_slot`]).
    logins: tokio::sync::Semaphore,
    /// Cancelled when the node starts draining (SIGTERM): clients get `goaway`.
    pub draining: CancellationToken,
    /// Cancelled when the drain time is up: remaining connections close.
    pub closing: CancellationToken,
    boot: u32,
    next_session: AtomicU64,
    /// Sessions whose removal from the store failed (store down); retried by the heartbeat.
    orphans: Mutex<Vec<(UserRef, Arc<str>)>>,
    /// Peers whose PROXY headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// Connections not logged in, per client address.
    pub unauthenticated: Arc<Unauthenticated>,
    /// Session removals waiting for the closer (see [`closer`]).
    closer: closer::Queue,
    /// The closer's end of the queue until [`Node::start_closer`] takes it.
    closer_rx: Mutex<Option<tokio::sync::mpsc::Receiver<closer::Removal>>>,
    /// The mean of the live nodes' open connections at the last heartbeat, when there are
    /// at least two nodes (0 otherwise): the share [`crate::server::rebalance`] aims at.
    fair_share: AtomicU64,
    /// Consecutive heartbeats at which this node held more than its share × (1 + slack).
    beats_over: AtomicU64,
    /// Sessions told to go away to rebalance that are still connected.
    pub leaving: AtomicU64,
    /// Sessions handed over at the drain (see [`Node::hand_over_session`]).
    pub handed_over: AtomicU64,
}

impl<S: Store> Node<S> {
    /// A node context.
    pub fn new(
        settings: Settings,
        store: Arc<S>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Node<S> {
        // Validated at start-up; settings built in code that fail to parse trust no one.
        let trusted_proxies = TrustedProxies::new(settings.proxy_trusted().unwrap_or_default());
        let (closer, closer_rx) = closer::queue();
        Node {
            closer,
            closer_rx: Mutex::new(Some(closer_rx)),
            trusted_proxies,
            unauthenticated: Unauthenticated::new(settings.max_unauthenticated_per_address),
            passwords: Passwords::new(&settings),
            logins: tokio::sync::Semaphore::new(settings.login_concurrency as usize),
            settings,
            store,
            registry,
            metrics,
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
            boot: rand::random(),
            next_session: AtomicU64::new(1),
            orphans: Mutex::new(Vec::new()),
            fair_share: AtomicU64::new(0),
            beats_over: AtomicU64::new(0),
            leaving: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
        }
    }

    /// Waits for a login slot: a storm of logins takes turns instead of queueing thousands of
    /// login scripts in Redis at once, ahead of every live message of the other sessions.
    pub async fn login_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        if let Ok(permit) = self.logins.try_acquire() {
            return permit;
        }
        // Counted while waiting, also when the wait is cancelled (the connection ends).
        let _waiting = Waiting::new(&self.metrics.logins_waiting);
        self.logins.acquire().await.expect("never closed")
    }

    /// Open client connections of this node (what it publishes with its heartbeat).
    pub fn connections(&self) -> u64 {
        self.metrics.connections_open.get().max(0) as u64
    }

    /// Records the live nodes' connection counts from a heartbeat (rounded-up mean) and
    /// whether `mine`, the count this node published with it, was above the slack.
    pub fn set_cluster_connections(&self, mine: u64, counts: &[u64]) {
        let share = if counts.len() < 2 {
            0
        } else {
            counts.iter().sum::<u64>().div_ceil(counts.len() as u64)
        };
        self.fair_share.store(share, Ordering::Relaxed);
        let over = share > 0 && mine as f64 > share as f64 * (1.0 + self.settings.rebalance_slack);
        if over {
            self.beats_over.fetch_add(1, Ordering::Relaxed);
        } else {
            self.beats_over.store(0, Ordering::Relaxed);
        }
    }

    /// Consecutive heartbeats at which this node was above its share × (1 + slack).
    pub fn beats_over(&self) -> u64 {
        self.beats_over.load(Ordering::Relaxed)
    }

    /// The mean connection count of the live nodes; `None` with a single node or none known.
    pub fn fair_share(&self) -> Option<u64> {
        Some(self.fair_share.load(Ordering::Relaxed)).filter(|&s| s > 0)
    }

    /// A globally unique session id: node name, a per-boot random number, a counter.
    pub fn new_session_id(&self) -> Arc<str> {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{}-{:08x}-{n}", self.settings.node_name, self.boot).into()
    }

    /// Ready for traffic: not draining and the backend's live path works.
    pub fn ready(&self) -> bool {
        !self.draining.is_cancelled() && self.store.healthy()
    }

    /// Tells `user`'s friends and fellow group members that they came online or went offline.
    pub async fn announce_presence(&self, user: &UserRef, online: bool) {
        let line = Event::Presence {
            user: Friend {
                id: user.id,
                name: user.name.clone(),
                online,
            },
        }
        .line();
        let result = async {
            let group_max = self.settings.presence_group_max;
            let audience = self.store.audience(user.id, group_max).await?;
            self.store.publish_event(&audience, "-", &line).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(user = user.id, error = %e, "presence not announced");
        }
    }

    /// Starts the task that commits session removals in batches; without it (a node built
    /// only for a test) removals go one by one.
    pub fn start_closer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let rx = self
            .closer_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let node = self.clone();
        tokio::spawn(async move {
            if let Some(rx) = rx {
                closer::run(node, rx).await;
            }
        })
    }

    /// Hands a removal to the closer and waits until it is committed; false when the closer
    /// does not run (the caller removes it itself).
    async fn queue_removal(&self, user: &UserRef, session: &Arc<str>, handover: bool) -> bool {
        if self
            .closer_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return false;
        }
        let (done, committed) = tokio::sync::oneshot::channel();
        let removal = closer::Removal {
            user: user.clone(),
            session: session.clone(),
            done,
            handover,
        };
        if self.closer.send(removal).await.is_err() {
            return false;
        }
        // A closer stopped at the end of the drain drops the sender: nothing to wait for.
        let _ = committed.await;
        true
    }

    /// Ends the session of a client that left after the drain's `goaway`: with
    /// `drain_handover`, its record stays for the user's next login (on another node) to end
    /// without a presence flap, or for the dead-node reaper (see [`Store::sessions_handover`]).
    pub async fn hand_over_session(&self, user: &UserRef, session: Arc<str>) {
        if self.settings.drain_handover && self.queue_removal(user, &session, true).await {
            return;
        }
        self.close_session(user, session).await;
    }

    /// Removes a session from the store and announces the user offline if it was their last;
    /// when the store is down, remembers it for [`Node::retry_orphans`].
    pub async fn close_session(&self, user: &UserRef, session: Arc<str>) {
        if self.queue_removal(user, &session, false).await {
            return;
        }
        match self
            .store
            .session_close(user.id, &session, &self.settings.node_name)
            .await
        {
            Ok(true) => self.announce_presence(user, false).await,
            Ok(false) => {}
            Err(e) => self.defer(user, session, &e),
        }
    }

    /// Retries session removals that failed while the store was down. A retry announces the
    /// user offline when theirs was the last session (the record was visible meanwhile).
    ///
    /// Stops at the first removal that fails (Redis is still down: the others would fail
    /// too, each after a time-out) and when the node closes (what is left is the dead-node
    /// reaper's, on the other nodes); what was not removed stays for the next try.
    pub async fn retry_orphans(&self) {
        let mut orphans =
            std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        let node = &self.settings.node_name;
        while let Some((user, session)) = orphans.pop() {
            if self.closing.is_cancelled() {
                orphans.push((user, session));
                break;
            }
            match self.store.session_close(user.id, &session, node).await {
                Ok(true) => self.announce_presence(&user, false).await,
                Ok(false) => {}
                Err(e) => {
                    orphans.push((user, session));
                    tracing::warn!(error = %e, left = orphans.len(), "deferred session removals still failing");
                    break;
                }
            }
        }
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(orphans);
    }

    /// Session removals that failed and wait for [`Node::retry_orphans`].
    pub fn orphan_count(&self) -> usize {
        self.orphans.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Remembers a session whose removal failed. Logged when the first one is deferred, not
    /// each time: thousands of sessions closing while Redis is down would flood the log.
    pub(crate) fn defer(&self, user: &UserRef, session: Arc<str>, e: &crate::error::Error) {
        let mut orphans = self.orphans.lock().unwrap_or_else(|e| e.into_inner());
        if orphans.is_empty() {
            tracing::warn!(user = user.id, error = %e, "session removal deferred (further ones are counted, not logged)");
        } else {
            tracing::debug!(user = user.id, error = %e, "session removal deferred");
        }
        orphans.push((user.clone(), session));
    }

    /// Users with sessions here and the ids of those sessions (to re-register after a reap).
    pub fn local_sessions(&self) -> Vec<(UserRef, Arc<str>)> {
        self.registry.sessions()
    }
}

/// Counts one waiter in a gauge for as long as it lives.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
