//! The node's routing table: which logged-in users have sessions here, and their outboxes.
//!
//! The registry also owns the rule "subscribe to a user's channel when their first session on
//! this node logs in, unsubscribe after their last", serialised per user so that a logout racing
//! a login can never leave a session without a live subscription.
//!
//! It is the backends' [`LiveSink`]: they hand it channel payloads and report the state of
//! their live path, without knowing the registry (the store does not import this module).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::metrics::Metrics;
use crate::protocol::{UserId, UserRef};
use crate::server::outbox::Outbox;
use crate::store::{LiveSink, Store, payload};

/// Number of per-user subscription locks (users hash onto them).
const SUB_LOCK_SHARDS: usize = 1024;

/// Local routing table of one node.
pub struct Registry {
    /// Subscriber connection losses so far; while it differs from `resumed`, the live path is
    /// broken and sessions must not write queued deliveries (they could jump over missed ones).
    lost: std::sync::atomic::AtomicU64,
    /// The loss count up to which every channel is subscribed again.
    resumed: std::sync::atomic::AtomicU64,
    users: Mutex<HashMap<UserId, Vec<Arc<Outbox>>>>,
    subscribed: Mutex<HashSet<UserId>>,
    sub_locks: Box<[tokio::sync::Mutex<()>]>,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            lost: std::sync::atomic::AtomicU64::new(0),
            resumed: std::sync::atomic::AtomicU64::new(0),
            users: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(HashSet::new()),
            sub_locks: (0..SUB_LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            metrics,
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<Arc<Outbox>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribed(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sub_lock(&self, user: UserId) -> &tokio::sync::Mutex<()> {
        &self.sub_locks[(user as usize) % SUB_LOCK_SHARDS]
    }

    /// Adds a session and makes sure the user's channel is subscribed (returns once it is live).
    pub async fn attach<S: Store>(
        &self,
        store: &S,
        user: UserId,
        outbox: Arc<Outbox>,
    ) -> Result<()> {
        {
            let mut users = self.users();
            users.entry(user).or_default().push(outbox.clone());
            self.metrics.users.set(users.len() as i64);
        }
        let _guard = self.sub_lock(user).lock().await;
        if self.subscribed().contains(&user) {
            return Ok(());
        }
        match store.subscribe(user).await {
            Ok(()) => {
                self.subscribed().insert(user);
                self.metrics.subscriptions.inc();
                Ok(())
            }
            Err(e) => {
                drop(_guard);
                self.remove(user, &outbox);
                Err(e)
            }
        }
    }

    /// Removes a session; unsubscribes the user's channel when it was their last here, unless
    /// `unsubscribe` is false (a draining node: its subscriber connection goes away with it,
    /// and ten thousand UNSUBSCRIBEs queued behind each other slowed every other removal).
    pub async fn detach<S: Store>(
        &self,
        store: &S,
        user: UserId,
        outbox: &Arc<Outbox>,
        unsubscribe: bool,
    ) {
        if !self.remove(user, outbox) {
            return;
        }
        let _guard = self.sub_lock(user).lock().await;
        // Re-check under the lock: a login may have attached a new session meanwhile.
        if self.users().contains_key(&user) || !self.subscribed().remove(&user) {
            return;
        }
        self.metrics.subscriptions.dec();
        if !unsubscribe {
            // Publishes still arriving for the user are dropped as unrouted.
            return;
        }
        if let Err(e) = store.unsubscribe(user).await {
            // Harmless: publishes for a user without local sessions are dropped on arrival.
            tracing::warn!(user, error = %e, "unsubscribe failed");
        }
    }

    /// Removes `outbox` from `user`'s sessions; true when the user has none left here.
    fn remove(&self, user: UserId, outbox: &Arc<Outbox>) -> bool {
        let mut users = self.users();
        let Some(list) = users.get_mut(&user) else {
            return false;
        };
        list.retain(|o| !Arc::ptr_eq(o, outbox));
        if list.is_empty() {
            users.remove(&user);
            self.metrics.users.set(users.len() as i64);
            true
        } else {
            false
        }
    }

    /// Hands a payload received on `user`'s channel to that user's local sessions.
    pub fn dispatch(&self, user: UserId, payload: &[u8]) {
        let Some(live) = payload::parse(payload) else {
            self.metrics.bus_bad_payloads.inc();
            tracing::warn!(user, "unparseable channel payload dropped");
            // It may have been a message: the user's sessions re-read their inbox.
            for outbox in self.users().get(&user).into_iter().flatten() {
                outbox.mark_lagged();
            }
            return;
        };
        let live = Arc::new(live);
        let users = self.users();
        let Some(outboxes) = users.get(&user) else {
            // The user left this node while the publish was in flight; the inbox has it.
            self.metrics.bus_unrouted.inc();
            return;
        };
        for outbox in outboxes {
            if !outbox.push(live.clone()) {
                self.metrics.outbound_overflows.inc();
            }
        }
    }

    /// The subscriber connection was lost: holds back live deliveries until [`Registry::resume`]
    /// with this count or a later one. Returns the new loss count.
    pub fn pause(&self) -> u64 {
        self.lost.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1
    }

    /// How many times the live path was lost so far (compare before and after a catch-up).
    pub fn losses(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether live deliveries are held back.
    pub fn paused(&self) -> bool {
        self.resumed.load(std::sync::atomic::Ordering::Acquire) != self.losses()
    }

    /// Every channel is subscribed again as of loss count `upto` (read before checking): every
    /// session re-reads its inbox, then writes what is queued. A loss after `upto` keeps the
    /// pause.
    pub fn resume(&self, upto: u64) {
        // Lagged first: once `paused()` turns false, a session that is not marked yet could
        // write a live message that follows one only the inbox has.
        self.mark_all_lagged();
        self.resumed
            .fetch_max(upto, std::sync::atomic::Ordering::AcqRel);
    }

    /// Marks every local session lagged, so each re-reads its inbox (after a bus outage).
    pub fn mark_all_lagged(&self) {
        for outbox in self.users().values().flatten() {
            outbox.mark_lagged();
        }
    }

    /// Users with at least one session here.
    pub fn local_users(&self) -> Vec<UserId> {
        self.users().keys().copied().collect()
    }

    /// Whether the session with this global id is still routed here.
    pub fn has_session(&self, user: UserId, session: &str) -> bool {
        self.users()
            .get(&user)
            .is_some_and(|list| list.iter().any(|o| &*o.session == session))
    }

    /// Every local session: its user and global id.
    pub fn sessions(&self) -> Vec<(UserRef, Arc<str>)> {
        self.users()
            .values()
            .flatten()
            .map(|o| (o.user.clone(), o.session.clone()))
            .collect()
    }

    /// Asks up to `n` local sessions that were not asked before to reconnect elsewhere;
    /// returns how many were asked.
    pub fn ask_to_leave(&self, n: usize) -> usize {
        let mut asked = 0;
        for outbox in self.users().values().flatten() {
            if asked == n {
                break;
            }
            if outbox.ask_to_leave() {
                asked += 1;
            }
        }
        asked
    }

    /// Users whose channel is subscribed here.
    pub fn subscribed_users(&self) -> Vec<UserId> {
        self.subscribed().iter().copied().collect()
    }
}

/// The backends deliver through this; the inherent methods above are what it forwards to.
impl LiveSink for Registry {
    fn dispatch(&self, user: UserId, payload: &[u8]) {
        Registry::dispatch(self, user, payload)
    }

    fn pause(&self) -> u64 {
        Registry::pause(self)
    }

    fn losses(&self) -> u64 {
        Registry::losses(self)
    }

    fn paused(&self) -> bool {
        Registry::paused(self)
    }

    fn resume(&self, upto: u64) {
        Registry::resume(self, upto)
    }

    fn mark_all_lagged(&self) {
        Registry::mark_all_lagged(self)
    }

    fn subscribed_users(&self) -> Vec<UserId> {
        Registry::subscribed_users(self)
    }
}
