//! The Redis backend: shared state for N nodes (key layout in docs/data-model.md).
//!
//! Two connections per node, whatever the number of users: a multiplexed command connection
//! (requests from all sessions pipeline on it) and one RESP3 subscriber connection that carries
//! every user channel of this node, re-subscribed automatically after a reconnect.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{FromRedisValue, IntoConnectionInfo, PushKind, Script, Value};

use crate::error::{Code, Error, Result};
use crate::metrics::Metrics;
use crate::protocol::{Friend, Group, GroupId, GroupRef, Member, Role, Sent, Seq, UserId, UserRef};
use crate::store::payload::{close_payload, event_payload};
use crate::store::{
    Account, Beat, BlockChange, CLIENT_ID_TTL_SECS, Deleted, Entry, LiveSink, LoginState,
    MAX_TOKENS_PER_USER, Membership, Outgoing, QUOTA_BUCKET_MS, QUOTA_WINDOW_MS, Recipient,
    Retention, Store, Stored, Who, client_id_conflict, fold, over_quota,
};

/// Interval of the subscriber-path health check (a canary published to this node's channel).
const CANARY_INTERVAL: Duration = Duration::from_millis(500);
/// A canary older than this means the live path is broken: the node is not ready.
const CANARY_DEADLINE: Duration = Duration::from_secs(3);
/// Channels per SUBSCRIBE when re-subscribing everything.
const RESUBSCRIBE_BATCH: usize = 1000;
/// How often a lost subscriber connection is polled until its channels are back.
const RESUBSCRIBE_POLL: Duration = Duration::from_millis(50);
/// Upper bound of the reconnect backoff of both connections.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// TCP keepalive of both connections: an idle connection whose peer vanished without a FIN
/// (a failover to another address, a dead host) fails after 2 s + 3 × 1 s of unanswered
/// probes, and the redis client reconnects as after any dropped connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 3;
/// Data sent and not acknowledged by the peer for this long fails the connection as well
/// (`TCP_USER_TIMEOUT`; keepalive probes do not run while data is outstanding).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive requests on the command connection that timed out before it is replaced: the
/// redis client counts a response time-out as a slow reply, never as a lost connection, so a
/// half-open connection whose socket looks fine (a proxy that swallows traffic) stays forever.
const CMD_TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

macro_rules! script {
    ($name:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            "\n",
            include_str!(concat!("lua/", $name, ".lua"))
        ))
    };
}

struct Scripts {
    register: Script,
    account: Script,
    session_open: Script,
    session_close: Script,
    audience: Script,
    friends: Script,
    friend_add: Script,
    friend_remove: Script,
    groups: Script,
    group_create: Script,
    group_join: Script,
    group_leave: Script,
    send: Script,
    ack: Script,
    heartbeat: Script,
    reap: Script,
    token_account: Script,
    login_state: Script,
    attempt: Script,
    token_issue: Script,
    password_change: Script,
    account_delete: Script,
    block: Script,
    unblock: Script,
    blocks: Script,
    sessions_close: Script,
    sessions_handover: Script,
    presence_many: Script,
    session_login: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            register: script!("register"),
            account: script!("account"),
            session_open: script!("session_open"),
            session_close: script!("session_close"),
            audience: script!("audience"),
            friends: script!("friends"),
            friend_add: script!("friend_add"),
            friend_remove: script!("friend_remove"),
            groups: script!("groups"),
            group_create: script!("group_create"),
            group_join: script!("group_join"),
            group_leave: script!("group_leave"),
            send: script!("send"),
            ack: script!("ack"),
            heartbeat: script!("heartbeat"),
            reap: script!("reap"),
            token_account: script!("token_account"),
            login_state: script!("login_state"),
            attempt: script!("attempt"),
            token_issue: script!("token_issue"),
            password_change: script!("password_change"),
            account_delete: script!("account_delete"),
            block: script!("block"),
            unblock: script!("unblock"),
            blocks: script!("blocks"),
            sessions_close: script!("sessions_close"),
            sessions_handover: script!("sessions_handover"),
            presence_many: script!("presence_many"),
            session_login: script!("session_login"),
        }
    }
}

/// State the subscriber callback shares with the health check.
struct Bus {
    /// The node's routing side (its registry).
    sink: Arc<dyn LiveSink>,
    canary_channel: String,
    /// Last canary number seen on the subscriber connection.
    canary_seen: AtomicU64,
}

impl Bus {
    /// Called by the redis client for every push on the subscriber connection; never blocks.
    fn on_push(&self, push: redis::PushInfo) {
        match push.kind {
            PushKind::Message => {
                let [Value::BulkString(channel), Value::BulkString(payload)] = &push.data[..]
                else {
                    return;
                };
                if channel == self.canary_channel.as_bytes() {
                    if let Some(n) = std::str::from_utf8(payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        self.canary_seen.fetch_max(n, Ordering::AcqRel);
                    }
                } else if let Some(user) = user_of_channel(channel) {
                    self.sink.dispatch(user, payload);
                }
            }
            PushKind::Disconnection => {
                // Whatever is published until every channel is subscribed again reaches only
                // the inboxes; the health check makes sessions catch up once it is.
                tracing::warn!("redis subscriber connection lost");
                self.sink.pause();
            }
            _ => {}
        }
    }
}

/// The Redis store of one node.
pub struct RedisStore {
    /// Replaced as a whole when it stops answering (see `watch_health`); clone to use.
    cmd: RwLock<ConnectionManager>,
    /// Replaced as a whole when it stops answering; then every channel is subscribed again.
    sub: RwLock<ConnectionManager>,
    client: redis::Client,
    cmd_config: ConnectionManagerConfig,
    sub_config: ConnectionManagerConfig,
    /// Requests on the command connection that timed out since the last one that did not.
    cmd_timeouts: AtomicU32,
    /// How many times the subscriber connection was replaced.
    sub_generation: AtomicU64,
    scripts: Scripts,
    bus: Arc<Bus>,
    retention: Retention,
    timeout: Duration,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
    /// This node's name (a reap by another node leaves its mark, see reap.lua).
    node: String,
    /// Replicas a send waits for (`WAIT`), 0 = none; see [`RedisStore::set_wait_replicas`].
    wait_replicas: AtomicU32,
    /// Milliseconds of that `WAIT`.
    wait_timeout_ms: AtomicU64,
}

pub(super) fn channel(user: UserId) -> String {
    format!("sb:{{u:{user}}}:ch")
}

pub(super) fn user_of_channel(channel: &[u8]) -> Option<UserId> {
    let s = std::str::from_utf8(channel).ok()?;
    s.strip_prefix("sb:{u:")?.strip_suffix("}:ch")?.parse().ok()
}

fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// TCP settings of every Redis connection: keepalive probes and `TCP_USER_TIMEOUT`, so a
/// connection whose peer vanished without a FIN fails within seconds (see the constants).
pub(super) fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(TCP_USER_TIMEOUT)
}

impl RedisStore {
    /// Connects both connections and subscribes this node's canary channel.
    pub async fn connect(
        url: &str,
        node: &str,
        sink: Arc<dyn LiveSink>,
        retention: Retention,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<RedisStore>> {
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        let tcp = TcpSettings::default()
            .set_keepalive(keepalive)
            .set_user_timeout(TCP_USER_TIMEOUT);
        let info = with_resp3(url)
            .into_connection_info()?
            .set_tcp_settings(tcp);
        let client = redis::Client::open(info)?;
        let base = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_max_delay(RECONNECT_MAX_DELAY)
            .set_number_of_retries(2);
        let bus = Arc::new(Bus {
            sink,
            canary_channel: format!("sb:{{n:{node}}}:canary"),
            canary_seen: AtomicU64::new(0),
        });
        let cmd_config = base.clone();
        let cmd = client
            .get_connection_manager_with_config(cmd_config.clone())
            .await?;
        let push_bus = bus.clone();
        let sub_config = base
            .set_push_sender(move |p| {
                push_bus.on_push(p);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        let mut sub = client
            .get_connection_manager_with_config(sub_config.clone())
            .await?;
        sub.subscribe(&bus.canary_channel).await?;
        for role in ["commands", "subscriber"] {
            metrics
                .ops
                .redis_connected
                .with_label_values(&[role])
                .set(1);
        }
        Ok(Arc::new(RedisStore {
            cmd: RwLock::new(cmd),
            sub: RwLock::new(sub),
            client,
            cmd_config,
            sub_config,
            cmd_timeouts: AtomicU32::new(0),
            sub_generation: AtomicU64::new(0),
            scripts: Scripts::new(),
            bus,
            retention,
            timeout,
            healthy: AtomicBool::new(true),
            metrics,
            node: node.to_string(),
            wait_replicas: AtomicU32::new(0),
            wait_timeout_ms: AtomicU64::new(0),
        }))
    }

    /// Acknowledges a send only once `replicas` replicas confirm it (`WAIT replicas timeout`,
    /// pipelined right behind the script on the same connection), else `unavailable`.
    pub fn set_wait_replicas(&self, replicas: u32, timeout: Duration) {
        self.wait_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Release);
        self.wait_replicas.store(replicas, Ordering::Release);
    }

    /// `(replicas, timeout ms)` sends wait for, if any.
    fn wait(&self) -> Option<(u32, u64)> {
        let n = self.wait_replicas.load(Ordering::Acquire);
        (n > 0).then(|| (n, self.wait_timeout_ms.load(Ordering::Acquire)))
    }

    /// Runs forever: publishes a canary every interval and judges the live path by whether the
    /// previous one came back; after the subscriber connection dropped, polls it until every
    /// channel is subscribed again, then lets the sessions catch up from their inboxes; replaces
    /// a connection that stopped answering (half-open), which the redis client never does.
    pub async fn watch_health(self: Arc<Self>) {
        let mut sent: u64 = 0;
        let mut last_ok = tokio::time::Instant::now();
        let mut next_canary = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RESUBSCRIBE_POLL).await;
            let sink = &self.bus.sink;
            if sink.paused() {
                let losses = sink.losses();
                match self.ping(self.sub()).await {
                    Ping::Answered => {
                        if self.resubscribe_all().await {
                            tracing::info!(
                                "redis channels re-subscribed; sessions catch up from their inboxes"
                            );
                            sink.resume(losses);
                        }
                    }
                    Ping::TimedOut => {
                        self.replace_sub().await;
                    }
                    Ping::Failed => {}
                }
            }
            if self.cmd_timeouts.load(Ordering::Acquire) >= CMD_TIMEOUTS_BEFORE_RECONNECT {
                self.replace_cmd().await;
            }
            if tokio::time::Instant::now() < next_canary {
                continue;
            }
            // Not a burst of ticks after the loop was held up (time-outs, reconnects).
            next_canary = (next_canary + CANARY_INTERVAL).max(tokio::time::Instant::now());
            if sent > 0 && self.bus.canary_seen.load(Ordering::Acquire) >= sent {
                last_ok = tokio::time::Instant::now();
            }
            let healthy = last_ok.elapsed() < CANARY_DEADLINE;
            let connected = &self.metrics.ops.redis_connected;
            connected
                .with_label_values(&["subscriber"])
                .set(i64::from(healthy && !self.bus.sink.paused()));
            let was = self.healthy.swap(healthy, Ordering::AcqRel);
            if healthy && !was {
                tracing::info!("redis live path recovered");
                if !self.bus.sink.paused() {
                    // Canaries lost without a disconnect: sessions catch up all the same.
                    self.bus.sink.mark_all_lagged();
                }
            } else if !healthy && was {
                tracing::warn!("redis live path down: not ready");
            }
            if !healthy {
                // Commands are what drive a ConnectionManager's reconnects (nothing else is sent
                // on the subscriber connection), but a request that times out never does: a
                // half-open connection is replaced here, the live path is down meanwhile.
                let (sub, cmd) = tokio::join!(self.ping(self.sub()), self.ping(self.cmd()));
                let (sub, cmd) = (sub == Ping::TimedOut, cmd == Ping::TimedOut);
                tokio::join!(
                    async {
                        if sub {
                            self.replace_sub().await;
                        }
                    },
                    async {
                        if cmd {
                            self.replace_cmd().await;
                        }
                    }
                );
            }
            sent += 1;
            let mut con = self.cmd();
            let cmd = redis::cmd("PUBLISH")
                .arg(&self.bus.canary_channel)
                .arg(sent)
                .clone();
            let publish = cmd.query_async::<i64>(&mut con);
            let published = tokio::time::timeout(self.timeout, publish).await;
            self.count_timeout(&published);
            connected
                .with_label_values(&["commands"])
                .set(i64::from(matches!(published, Ok(Ok(_)))));
            if !matches!(published, Ok(Ok(_))) {
                self.metrics
                    .redis_errors
                    .with_label_values(&["canary"])
                    .inc();
            }
        }
    }

    /// Subscribes every local user's channel again: the redis client re-subscribes after a
    /// reconnect but ignores failures of that, so this makes sure. Repeats are harmless.
    async fn resubscribe_all(&self) -> bool {
        let mut channels: Vec<String> = self
            .bus
            .sink
            .subscribed_users()
            .into_iter()
            .map(channel)
            .collect();
        channels.push(self.bus.canary_channel.clone());
        for chunk in channels.chunks(RESUBSCRIBE_BATCH) {
            let mut sub = self.sub();
            if self.call("subscribe", sub.subscribe(chunk)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The command connection (a cheap handle; it may be replaced at any time).
    fn cmd(&self) -> ConnectionManager {
        self.cmd.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The subscriber connection (a cheap handle; it may be replaced at any time).
    fn sub(&self) -> ConnectionManager {
        self.sub.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// PINGs a connection (valid in RESP3 subscribed mode too).
    async fn ping(&self, mut con: ConnectionManager) -> Ping {
        let ping = redis::cmd("PING").clone();
        match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut con)).await {
            Ok(Ok(_)) => Ping::Answered,
            Ok(Err(e)) if !e.is_timeout() => Ping::Failed,
            _ => Ping::TimedOut,
        }
    }

    /// A new connection manager with `config`, or `None` when Redis does not answer in time.
    async fn connect_again(&self, config: &ConnectionManagerConfig) -> Option<ConnectionManager> {
        let fresh = self
            .client
            .get_connection_manager_with_config(config.clone());
        match tokio::time::timeout(self.timeout, fresh).await {
            Ok(Ok(con)) => Some(con),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis reconnect failed");
                None
            }
            Err(_) => {
                tracing::warn!("redis reconnect timed out");
                None
            }
        }
    }

    /// Replaces a command connection that stopped answering (half-open: the peer is gone but
    /// no FIN or RST ever came); requests still waiting on the old one time out.
    async fn replace_cmd(&self) {
        // Whatever the outcome, count afresh: a failed attempt is retried after more time-outs
        // or at the next failed canary.
        self.cmd_timeouts.store(0, Ordering::Release);
        if let Some(con) = self.connect_again(&self.cmd_config).await {
            *self.cmd.write().unwrap_or_else(|e| e.into_inner()) = con;
            self.metrics
                .redis_reconnects
                .with_label_values(&["cmd"])
                .inc();
            tracing::warn!("redis command connection stopped answering: replaced");
        }
    }

    /// Replaces a subscriber connection that stopped answering. The new one has no channels
    /// yet: live deliveries are held back ([`LiveSink::pause`]) until `watch_health` has
    /// subscribed every channel on it, then every session catches up from its inbox.
    async fn replace_sub(&self) {
        if let Some(con) = self.connect_again(&self.sub_config).await {
            self.bus.sink.pause();
            *self.sub.write().unwrap_or_else(|e| e.into_inner()) = con;
            self.sub_generation.fetch_add(1, Ordering::AcqRel);
            self.metrics
                .redis_reconnects
                .with_label_values(&["sub"])
                .inc();
            tracing::warn!("redis subscriber connection stopped answering: replaced");
        }
    }

    /// Counts consecutive time-outs of requests on the command connection.
    fn count_timeout<T>(
        &self,
        result: &std::result::Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) {
        match result {
            Err(_) => {
                self.cmd_timeouts.fetch_add(1, Ordering::AcqRel);
            }
            Ok(Err(e)) if e.is_timeout() => {
                self.cmd_timeouts.fetch_add(1, Ordering::AcqRel);
            }
            // An answer, even an error reply, shows the connection works.
            _ => self.cmd_timeouts.store(0, Ordering::Release),
        }
    }

    /// Bounds a backend call by the Redis timeout and maps failures to `unavailable`.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, fut).await;
        if !matches!(op, "subscribe" | "unsubscribe") {
            self.count_timeout(&result);
        }
        outcome(&self.metrics, op, started, result)
    }

    async fn run<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        args: &[&(dyn ToString + Sync)],
    ) -> Result<T> {
        self.eval(op, script, |cmd| {
            for a in args {
                cmd.arg(a.to_string());
            }
        })
        .await
    }

    /// Runs `script` with no keys and the arguments `fill` appends: `EVALSHA`, and on
    /// `NOSCRIPT` (a restarted or flushed Redis) `SCRIPT LOAD` and again. The command is built
    /// in place, so the per-message scripts pass their arguments without a string each
    /// (`redis::Script`'s invocation copies every argument twice).
    async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        fill: impl FnOnce(&mut redis::Cmd),
    ) -> Result<T> {
        // Sized for a send (18 arguments and a message) so building it does not reallocate.
        let mut cmd = redis::Cmd::with_capacity(24, 1024);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(0);
        fill(&mut cmd);
        let mut con = self.cmd();
        let run = async {
            match cmd.query_async(&mut con).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.prepare_invoke().load_async(&mut con).await?;
                    cmd.query_async(&mut con).await
                }
                result => result,
            }
        };
        self.call(op, run).await
    }

    /// Like [`RedisStore::eval`], with `WAIT replicas timeout` right behind the script in one
    /// pipeline: a `ConnectionManager` writes a pipeline as one contiguous request on its one
    /// connection, and Redis runs a connection's commands in order, so the `WAIT` covers this
    /// script's writes (WAIT counts the replication offset of its own connection's last write;
    /// on another connection it would prove nothing). Fewer replicas in time: `unavailable`.
    async fn eval_waited<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        (replicas, wait_ms): (u32, u64),
        fill: impl FnOnce(&mut redis::Cmd),
    ) -> Result<T> {
        let mut cmd = redis::Cmd::with_capacity(24, 1024);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(0);
        fill(&mut cmd);
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        pipe.cmd("WAIT").arg(replicas).arg(wait_ms);
        let mut con = self.cmd();
        let run = async {
            match pipe.query_async::<(Value, i64)>(&mut con).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.prepare_invoke().load_async(&mut con).await?;
                    pipe.query_async::<(Value, i64)>(&mut con).await
                }
                result => result,
            }
        };
        let (v, acked) = self.call(op, run).await?;
        // A script error reply is returned as is: nothing of it needs replicas.
        if let Value::ServerError(e) = v {
            return Err(Error::unavailable(format!("{e:?}")));
        }
        if acked < i64::from(replicas) {
            self.metrics
                .redis_errors
                .with_label_values(&["wait_replicas"])
                .inc();
            tracing::warn!(
                op,
                acked,
                replicas,
                "write not confirmed by enough replicas in time"
            );
            return Err(Error::unavailable(format!(
                "stored, but confirmed by {acked} of {replicas} Redis replicas in time; retry with the same client_id"
            )));
        }
        conv(v, op)
    }

    /// `(id, name, password hash, online)` of a user, if it exists; `online` as `viewer` may
    /// see it.
    async fn account_row(
        &self,
        who: Who<'_>,
        viewer: Option<UserId>,
    ) -> Result<Option<(UserId, String, String, i64)>> {
        let viewer = viewer.map(|v| v.to_string()).unwrap_or_default();
        let v: Vec<Value> = match who {
            Who::Name(n) => {
                self.run("account", &self.scripts.account, &[&"n", &fold(n), &viewer])
                    .await?
            }
            Who::Id(id) => {
                self.run("account", &self.scripts.account, &[&"i", &id, &viewer])
                    .await?
            }
        };
        if v.is_empty() {
            return Ok(None);
        }
        conv(Value::Array(v), "account").map(Some)
    }

    /// Publishes one payload to each user's channel, in one pipeline.
    async fn publish(&self, users: &[UserId], payload: String) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &u in users {
            pipe.cmd("PUBLISH").arg(channel(u)).arg(&payload).ignore();
        }
        let mut con = self.cmd();
        self.call("publish", pipe.query_async::<()>(&mut con)).await
    }

    /// `block.lua` or `unblock.lua`, whose replies have one shape.
    async fn block_step(
        &self,
        op: &'static str,
        script: &Script,
        user: UserId,
        other: UserId,
        group_max: usize,
    ) -> Result<BlockChange> {
        let v: Value = self.run(op, script, &[&user, &other, &group_max]).await?;
        let rest = status(v, op).map_err(|e| {
            if e.code == Code::NoSuchUser {
                Error::new(Code::NoSuchUser, format!("user {other} does not exist"))
            } else {
                e
            }
        })?;
        let (_, name, friends, shared, online): (String, String, i64, i64, i64) =
            conv(Value::Array(rest), op)?;
        Ok(BlockChange {
            other: UserRef { id: other, name },
            were_friends: friends == 1,
            shared: shared == 1,
            other_online: online == 1,
        })
    }

    async fn query<T: FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T> {
        let mut con = self.cmd();
        self.call(op, cmd.query_async(&mut con)).await
    }
}

/// A finished Redis request as the protocol sees it (both Redis backends): its latency and
/// failures recorded under `op`, a failure or time-out answered `unavailable` (a refusal under
/// `maxmemory` says so).
pub(super) fn outcome<T>(
    metrics: &Metrics,
    op: &'static str,
    started: std::time::Instant,
    result: std::result::Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
) -> Result<T> {
    metrics
        .redis_latency
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            metrics.redis_errors.with_label_values(&[op]).inc();
            tracing::warn!(op, error = %e, "redis request failed");
            if is_oom(&e) {
                return Err(Error::new(
                    Code::Unavailable,
                    "storage unavailable: Redis is out of memory (maxmemory reached); retry later",
                ));
            }
            Err(Error::unavailable(e.kind_str()))
        }
        Err(_) => {
            metrics.redis_errors.with_label_values(&[op]).inc();
            tracing::warn!(op, "redis request timed out");
            Err(Error::unavailable("timed out"))
        }
    }
}

/// Whether Redis refused a write because `maxmemory` is reached (`-OOM command not allowed
/// ...`, also when raised by a `redis.call` inside a script).
fn is_oom(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
}

/// How a connection answered a PING.
#[derive(PartialEq, Eq)]
enum Ping {
    Answered,
    /// An error: the redis client knows the connection is lost and reconnects by itself.
    Failed,
    /// No answer in time: possibly half-open, which the redis client never notices.
    TimedOut,
}

trait ErrorKindStr {
    fn kind_str(&self) -> String;
}

impl ErrorKindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        if self.is_timeout() {
            "timed out".into()
        } else if self.is_io_error() || self.is_connection_dropped() || self.is_connection_refusal()
        {
            "connection lost".into()
        } else {
            self.to_string()
        }
    }
}

/// Splits a script reply `{status, ...}` into the rest, or the protocol error it names.
pub(super) fn status(v: Value, what: &str) -> Result<Vec<Value>> {
    let mut items = match v {
        Value::Array(items) => items,
        other => {
            return Err(Error::internal(format!(
                "{what}: unexpected reply {other:?}"
            )));
        }
    };
    if items.is_empty() {
        return Err(Error::internal(format!("{what}: empty reply")));
    }
    let head: String = String::from_redis_value(items.remove(0))
        .map_err(|e| Error::internal(format!("{what}: {e}")))?;
    if head == "ok" || head == "dup" {
        let mut rest = vec![Value::SimpleString(head)];
        rest.extend(items);
        return Ok(rest);
    }
    let code = Code::parse(&head).ok_or_else(|| Error::internal(format!("{what}: {head}")))?;
    Err(Error::new(
        code,
        format!("{what}: {}", head.replace('_', " ")),
    ))
}

pub(super) fn conv<T: FromRedisValue>(v: Value, what: &str) -> Result<T> {
    T::from_redis_value(v).map_err(|e| Error::internal(format!("{what}: {e}")))
}

pub(super) fn role(s: &str) -> Role {
    if s == "creator" {
        Role::Creator
    } else {
        Role::Member
    }
}

type MemberRow = (UserId, String, String, i64);
type GroupRow = (GroupId, String, String, String, Vec<MemberRow>);

fn group_from(row: GroupRow) -> Group {
    let (id, name, desc, my_role, members) = row;
    Group {
        id,
        name,
        desc,
        role: role(&my_role),
        members: members
            .into_iter()
            .map(|(id, name, r, online)| Member {
                id,
                name,
                role: role(&r),
                online: online == 1,
            })
            .collect(),
    }
}

impl Store for RedisStore {
    async fn register(&self, name: &str, password_hash: &str) -> Result<UserRef> {
        let v: Value = self
            .run(
                "register",
                &self.scripts.register,
                &[&fold(name), &name, &password_hash],
            )
            .await?;
        let mut rest = status(v, "register").map_err(|e| {
            if e.code == Code::NameTaken {
                Error::new(Code::NameTaken, format!("name {name:?} is taken"))
            } else {
                e
            }
        })?;
        Ok(UserRef {
            id: conv(rest.remove(1), "register")?,
            name: name.to_string(),
        })
    }

    async fn account(&self, who: Who<'_>) -> Result<Option<Account>> {
        let row = self.account_row(who, None).await?;
        Ok(row.map(|(id, name, password_hash, _)| Account {
            user: UserRef { id, name },
            password_hash,
        }))
    }

    async fn whois(&self, who: Who<'_>, viewer: Option<UserId>) -> Result<Option<Friend>> {
        let row = self.account_row(who, viewer).await?;
        Ok(row.map(|(id, name, _, online)| Friend {
            id,
            name,
            online: online == 1,
        }))
    }

    async fn token_issue(&self, digest: &str, user: UserId, ttl_secs: u64) -> Result<()> {
        let now = crate::clock::now_ms();
        self.run::<i64>(
            "token_issue",
            &self.scripts.token_issue,
            &[&digest, &user, &ttl_secs, &now, &MAX_TOKENS_PER_USER],
        )
        .await
        .map(drop)
    }

    async fn token_account(&self, digest: &str) -> Result<Option<Account>> {
        let v: Vec<Value> = self
            .run("token_account", &self.scripts.token_account, &[&digest])
            .await?;
        if v.is_empty() {
            return Ok(None);
        }
        let (id, name, password_hash, _): (UserId, String, String, i64) =
            conv(Value::Array(v), "token_account")?;
        Ok(Some(Account {
            user: UserRef { id, name },
            password_hash,
        }))
    }

    async fn token_revoke(&self, digest: &str) -> Result<()> {
        self.query::<()>(
            "token_revoke",
            redis::cmd("DEL").arg(format!("sb:token:{digest}")),
        )
        .await
    }

    async fn password_change(
        &self,
        user: UserId,
        password_hash: &str,
        digest: &str,
        ttl_secs: u64,
    ) -> Result<()> {
        let now = crate::clock::now_ms();
        let v: Value = self
            .run(
                "password_change",
                &self.scripts.password_change,
                &[
                    &user,
                    &password_hash,
                    &digest,
                    &ttl_secs,
                    &now,
                    &MAX_TOKENS_PER_USER,
                ],
            )
            .await?;
        status(v, "password.change").map(drop)
    }

    async fn account_delete(&self, user: UserId) -> Result<Option<Deleted>> {
        let v: Value = self
            .run("account_delete", &self.scripts.account_delete, &[&user])
            .await?;
        let rest = match status(v, "account.delete") {
            Ok(rest) => rest,
            Err(e) if e.code == Code::NoSuchUser => return Ok(None),
            Err(e) => return Err(e),
        };
        type Left = (GroupId, String, Vec<UserId>);
        let (_, _, friends, groups): (String, String, Vec<UserId>, Vec<Left>) =
            conv(Value::Array(rest), "account.delete")?;
        let groups = groups
            .into_iter()
            .map(|(id, name, members)| Membership {
                group: GroupRef { id, name },
                members,
            })
            .collect();
        Ok(Some(Deleted { friends, groups }))
    }

    async fn block(&self, user: UserId, other: UserId, group_max: usize) -> Result<BlockChange> {
        self.block_step("block", &self.scripts.block, user, other, group_max)
            .await
    }

    async fn unblock(&self, user: UserId, other: UserId, group_max: usize) -> Result<BlockChange> {
        self.block_step("unblock", &self.scripts.unblock, user, other, group_max)
            .await
    }

    async fn blocks(&self, user: UserId) -> Result<Vec<UserRef>> {
        let rows: Vec<(UserId, String)> =
            self.run("blocks", &self.scripts.blocks, &[&user]).await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| UserRef { id, name })
            .collect())
    }

    async fn attempt_reserve(
        &self,
        keys: &[String],
        max: u32,
        window_ms: u64,
        now: u64,
    ) -> Result<Option<String>> {
        let member = format!("{now}-{:08x}", rand::random::<u32>());
        let mut inv = self.scripts.attempt.prepare_invoke();
        inv.arg(now).arg(window_ms).arg(max).arg(&member);
        for k in keys {
            inv.arg(k);
        }
        let mut con = self.cmd();
        let added: i64 = self
            .call("attempt_reserve", inv.invoke_async(&mut con))
            .await?;
        Ok((added == 1).then_some(member))
    }

    async fn attempt_release(&self, keys: &[String], member: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("ZREM").arg(format!("sb:{k}")).arg(member).ignore();
        }
        let mut con = self.cmd();
        self.call("attempt_release", pipe.query_async::<()>(&mut con))
            .await
    }

    async fn session_open(
        &self,
        user: UserId,
        session: &str,
        node: &str,
        max: u32,
    ) -> Result<bool> {
        let v: Value = self
            .run(
                "session_open",
                &self.scripts.session_open,
                &[&user, &session, &node, &max],
            )
            .await?;
        let mut rest = status(v, "login").map_err(|e| session_error(e, max))?;
        Ok(conv::<i64>(rest.remove(1), "login")? == 1)
    }

    async fn session_close(&self, user: UserId, session: &str, node: &str) -> Result<bool> {
        let last: i64 = self
            .run(
                "session_close",
                &self.scripts.session_close,
                &[&user, &session, &node],
            )
            .await?;
        Ok(last == 1)
    }

    async fn sessions_close(
        &self,
        node: &str,
        sessions: &[(UserId, &str, Option<&str>)],
        group_max: usize,
    ) -> Result<Vec<bool>> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let last: Vec<i64> = self
            .eval("sessions_close", &self.scripts.sessions_close, |cmd| {
                cmd.arg(node).arg(group_max);
                for &(user, session, line) in sessions {
                    cmd.arg(user).arg(session).arg(line.unwrap_or(""));
                }
            })
            .await?;
        Ok(last.into_iter().map(|l| l == 1).collect())
    }

    async fn sessions_handover(&self, node: &str, sessions: &[(UserId, &str)]) -> Result<bool> {
        if !sessions.is_empty() {
            let _: i64 = self
                .eval(
                    "sessions_handover",
                    &self.scripts.sessions_handover,
                    |cmd| {
                        cmd.arg(node);
                        for &(user, session) in sessions {
                            cmd.arg(user).arg(session);
                        }
                    },
                )
                .await?;
        }
        Ok(true)
    }

    async fn session_login(
        &self,
        user: UserId,
        session: &str,
        node: &str,
        max: u32,
        presence: (&str, usize),
    ) -> Result<(bool, LoginState)> {
        let v: Value = self
            .eval("session_login", &self.scripts.session_login, |cmd| {
                cmd.arg(user)
                    .arg(session)
                    .arg(node)
                    .arg(max)
                    .arg(presence.1)
                    .arg(presence.0);
            })
            .await?;
        let mut rest = status(v, "login").map_err(|e| session_error(e, max))?;
        rest.remove(0);
        let first: i64 = conv(rest.remove(0), "login")?;
        let state = login_state_from(conv(Value::Array(rest), "login")?)?;
        Ok((first == 1, state))
    }

    async fn announce(&self, events: &[(UserId, String)], group_max: usize) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.eval::<i64>("presence_many", &self.scripts.presence_many, |cmd| {
            cmd.arg(group_max);
            for (user, line) in events {
                cmd.arg(*user).arg(line.as_str());
            }
        })
        .await
        .map(drop)
    }

    async fn audience(&self, user: UserId, group_max: usize) -> Result<Vec<UserId>> {
        self.run("audience", &self.scripts.audience, &[&user, &group_max])
            .await
    }

    async fn friends(&self, user: UserId) -> Result<Vec<Friend>> {
        let rows: Vec<(UserId, String, i64)> =
            self.run("friends", &self.scripts.friends, &[&user]).await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, online)| Friend {
                id,
                name,
                online: online == 1,
            })
            .collect())
    }

    async fn friend_add(&self, user: UserId, other: UserId) -> Result<(Friend, bool)> {
        let v: Value = self
            .run("friend_add", &self.scripts.friend_add, &[&user, &other])
            .await?;
        let rest = status(v, "friend.add").map_err(|e| match e.code {
            Code::NoSuchUser => {
                Error::new(Code::NoSuchUser, format!("user {other} does not exist"))
            }
            Code::Blocked => super::blocked_friend(other),
            _ => e,
        })?;
        let (_, new, name, online): (String, i64, String, i64) =
            conv(Value::Array(rest), "friend.add")?;
        Ok((
            Friend {
                id: other,
                name,
                online: online == 1,
            },
            new == 1,
        ))
    }

    async fn friend_remove(&self, user: UserId, other: UserId) -> Result<UserRef> {
        let v: Value = self
            .run(
                "friend_remove",
                &self.scripts.friend_remove,
                &[&user, &other],
            )
            .await?;
        let rest = status(v, "friend.remove").map_err(|e| {
            if e.code == Code::NoSuchUser {
                Error::new(Code::NoSuchUser, format!("user {other} is not your friend"))
            } else {
                e
            }
        })?;
        let (_, name): (String, String) = conv(Value::Array(rest), "friend.remove")?;
        Ok(UserRef { id: other, name })
    }

    async fn groups(&self, user: UserId) -> Result<Vec<Group>> {
        let rows: Vec<GroupRow> = self.run("groups", &self.scripts.groups, &[&user]).await?;
        Ok(rows.into_iter().map(group_from).collect())
    }

    async fn group_create(&self, user: UserId, name: &str, desc: &str) -> Result<Group> {
        let v: Value = self
            .run(
                "group_create",
                &self.scripts.group_create,
                &[&user, &fold(name), &name, &desc],
            )
            .await?;
        let rest = status(v, "group.create").map_err(|e| {
            if e.code == Code::NameTaken {
                Error::new(Code::NameTaken, format!("group name {name:?} is taken"))
            } else {
                e
            }
        })?;
        let (_, row): (String, GroupRow) = conv(Value::Array(rest), "group.create")?;
        Ok(group_from(row))
    }

    async fn group_join(&self, user: UserId, group: GroupId) -> Result<Group> {
        let v: Value = self
            .run("group_join", &self.scripts.group_join, &[&user, &group])
            .await?;
        let rest = status(v, "group.join").map_err(|e| group_error(e, group))?;
        let (_, row): (String, GroupRow) = conv(Value::Array(rest), "group.join")?;
        Ok(group_from(row))
    }

    async fn group_leave(&self, user: UserId, group: GroupId) -> Result<Membership> {
        let v: Value = self
            .run("group_leave", &self.scripts.group_leave, &[&user, &group])
            .await?;
        let rest = status(v, "group.leave").map_err(|e| group_error(e, group))?;
        let (_, name, members): (String, String, Vec<UserId>) =
            conv(Value::Array(rest), "group.leave")?;
        Ok(Membership {
            group: GroupRef { id: group, name },
            members,
        })
    }

    async fn group_id(&self, name: &str) -> Result<Option<GroupId>> {
        self.query(
            "group_id",
            redis::cmd("HGET").arg("sb:groups:byname").arg(fold(name)),
        )
        .await
    }

    async fn group_name(&self, group: GroupId) -> Result<Option<String>> {
        self.query(
            "group_name",
            redis::cmd("HGET")
                .arg(format!("sb:{{g:{group}}}"))
                .arg("name"),
        )
        .await
    }

    async fn send(&self, msg: Outgoing<'_>) -> Result<Stored> {
        let (kind, target) = match msg.to {
            Recipient::User(u) => ("u", u),
            Recipient::Group(g) => ("g", g),
        };
        let now = crate::clock::now_ms();
        let cutoff = now.saturating_sub(self.retention.max_age_ms);
        let cutoff_id = format!("{}-{}", cutoff.saturating_sub(1), u64::MAX);
        let bucket = now / QUOTA_BUCKET_MS;
        let oldest = now.saturating_sub(QUOTA_WINDOW_MS) / QUOTA_BUCKET_MS;
        let wait = self.wait();
        let fill = |cmd: &mut redis::Cmd| {
            cmd.arg(msg.from)
                .arg(kind)
                .arg(target)
                .arg(msg.json)
                .arg(msg.origin)
                .arg(msg.client_id.unwrap_or(""))
                .arg(msg.id)
                .arg(msg.ts)
                .arg(self.retention.max_len)
                .arg(&cutoff_id)
                .arg(CLIENT_ID_TTL_SECS)
                .arg(msg.trace.unwrap_or("-"))
                .arg(msg.fingerprint)
                .arg(msg.text_bytes)
                .arg(msg.quota)
                .arg(bucket)
                .arg(oldest)
                .arg(self.retention.hard_max_len)
                // A repeated client_id writes its record again when the reply waits for
                // replicas: WAIT then covers the first send's copies, which an earlier
                // attempt stored but may not have seen replicated.
                .arg(if wait.is_some() { "1" } else { "" });
        };
        let v: Value = match wait {
            None => self.eval("send", &self.scripts.send, fill).await?,
            Some(w) => {
                self.eval_waited("send", &self.scripts.send, w, fill)
                    .await?
            }
        };
        let rest = status(v, "send").map_err(|e| match e.code {
            Code::NoSuchUser => {
                Error::new(Code::NoSuchUser, format!("user {target} does not exist"))
            }
            Code::NoSuchGroup | Code::NotAMember => group_error(e, target),
            Code::ClientIdConflict => client_id_conflict(),
            Code::RateLimited => over_quota(),
            Code::Blocked => super::blocked_send(target),
            _ => e,
        })?;
        let (head, body, prev): (String, String, String) = conv(Value::Array(rest), "send")?;
        let prev = match prev.as_str() {
            "" => None,
            p => Some(p.parse()?),
        };
        if head == "dup" {
            // "id ts seq" of the first send with this client_id.
            let mut parts = body.splitn(3, ' ');
            let (Some(id), Some(ts), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::internal("malformed client_id record"));
            };
            let sent = Sent {
                id: id.to_string(),
                ts: ts.parse().map_err(Error::internal)?,
                seq: seq.parse()?,
            };
            return Ok(Stored { sent, prev });
        }
        let sent = Sent {
            id: msg.id.to_string(),
            ts: msg.ts,
            seq: body.parse()?,
        };
        Ok(Stored { sent, prev })
    }

    async fn inbox_after(&self, user: UserId, after: Seq, limit: usize) -> Result<Vec<Entry>> {
        let rows: Vec<(String, Vec<String>)> = self
            .query("inbox_read", &inbox_after_cmd(user, after, limit))
            .await?;
        rows.into_iter().map(entry_from).collect()
    }

    async fn inbox_before(
        &self,
        user: UserId,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let rows: Vec<(String, Vec<String>)> = self
            .query("inbox_history", &inbox_before_cmd(user, before, limit))
            .await?;
        rows.into_iter().map(entry_from).collect()
    }

    async fn login_state(&self, user: UserId) -> Result<LoginState> {
        let row: LoginRow = self
            .run("login_state", &self.scripts.login_state, &[&user])
            .await?;
        login_state_from(row)
    }

    async fn ack(&self, user: UserId, seq: Seq) -> Result<()> {
        if seq == Seq::ZERO {
            return Ok(());
        }
        let r: String = self
            .eval("ack", &self.scripts.ack, |cmd| {
                cmd.arg(user).arg(seq.to_string());
            })
            .await?;
        if r == "ok" {
            Ok(())
        } else {
            Err(Error::bad_request(format!(
                "seq {seq} is not a position in your inbox"
            )))
        }
    }

    async fn publish_event(&self, users: &[UserId], origin: &str, line: &str) -> Result<()> {
        self.publish(users, event_payload(origin, line)).await
    }

    async fn close_sessions(&self, user: UserId, origin: &str, line: &str) -> Result<()> {
        self.publish(&[user], close_payload(origin, line)).await
    }

    async fn subscribe(&self, user: UserId) -> Result<()> {
        loop {
            let generation = self.sub_generation.load(Ordering::Acquire);
            let mut sub = self.sub();
            self.call("subscribe", sub.subscribe(channel(user))).await?;
            // Replaced meanwhile: the channel may be missing from the new connection's list
            // if `watch_health` took it before this user was recorded as subscribed.
            if self.sub_generation.load(Ordering::Acquire) == generation {
                return Ok(());
            }
        }
    }

    async fn unsubscribe(&self, user: UserId) -> Result<()> {
        let mut sub = self.sub();
        self.call("unsubscribe", sub.unsubscribe(channel(user)))
            .await
    }

    async fn heartbeat(&self, node: &str, now: u64, ttl_ms: u64, conns: u64) -> Result<Beat> {
        let (was, dead, connections): (i64, Vec<String>, Vec<u64>) = self
            .run(
                "heartbeat",
                &self.scripts.heartbeat,
                &[&node, &now, &ttl_ms, &conns],
            )
            .await?;
        Ok(Beat {
            registered: was == 1,
            dead,
            connections,
        })
    }

    async fn reap(&self, node: &str) -> Result<Vec<UserRef>> {
        let rows: Vec<(UserId, String)> = self
            .run("reap", &self.scripts.reap, &[&node, &self.node])
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| UserRef { id, name })
            .collect())
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// `XRANGE` of up to `limit` inbox entries after `after`, oldest first (both backends on Redis).
pub(super) fn inbox_after_cmd(user: UserId, after: Seq, limit: usize) -> redis::Cmd {
    let start = if after == Seq::ZERO {
        "-".to_string()
    } else {
        format!("({after}")
    };
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(format!("sb:{{u:{user}}}:inbox"))
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(limit);
    cmd
}

/// `XREVRANGE` of up to `limit` inbox entries strictly before `before`, newest first.
pub(super) fn inbox_before_cmd(user: UserId, before: Option<Seq>, limit: usize) -> redis::Cmd {
    let end = match before {
        Some(b) => format!("({b}"),
        None => "+".to_string(),
    };
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(format!("sb:{{u:{user}}}:inbox"))
        .arg(end)
        .arg("-")
        .arg("COUNT")
        .arg(limit);
    cmd
}

/// `login_view` in common.lua: friend rows, group views, acked position ('' for none).
type LoginRow = (Vec<(UserId, String, i64)>, Vec<GroupRow>, String);

fn login_state_from((friends, groups, acked): LoginRow) -> Result<LoginState> {
    let friends = friends
        .into_iter()
        .map(|(id, name, online)| Friend {
            id,
            name,
            online: online == 1,
        })
        .collect();
    let acked = if acked.is_empty() {
        Seq::ZERO
    } else {
        acked.parse()?
    };
    Ok((friends, groups.into_iter().map(group_from).collect(), acked))
}

/// The errors of `open_session` in common.lua, with a message for people.
fn session_error(e: Error, max: u32) -> Error {
    match e.code {
        Code::TooManySessions => Error::new(
            Code::TooManySessions,
            format!("at most {max} sessions per user"),
        ),
        Code::NoSuchUser => Error::new(Code::NoSuchUser, "the account was deleted"),
        _ => e,
    }
}

pub(super) fn group_error(e: Error, group: GroupId) -> Error {
    match e.code {
        Code::NoSuchGroup => Error::new(Code::NoSuchGroup, format!("group {group} does not exist")),
        Code::NotAMember => Error::new(Code::NotAMember, format!("not a member of group {group}")),
        Code::AlreadyMember => Error::new(
            Code::AlreadyMember,
            format!("already a member of group {group}"),
        ),
        _ => e,
    }
}

/// An inbox entry from an `XRANGE`/`XREVRANGE` row: `f` (sender id), `m` (message JSON).
pub(super) fn entry_from((id, fields): (String, Vec<String>)) -> Result<Entry> {
    let mut from = 0;
    let mut json = String::new();
    for pair in fields.chunks_exact(2) {
        match pair[0].as_str() {
            "f" => from = pair[1].parse().unwrap_or(0),
            "m" => json = pair[1].clone(),
            _ => {}
        }
    }
    Ok(Entry {
        seq: id.parse()?,
        from,
        json,
    })
}
