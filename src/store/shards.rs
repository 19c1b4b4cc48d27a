//! Sharded subscriptions on Redis Cluster: one RESP3 subscriber connection per master, owned
//! here rather than by the redis client.
//!
//! redis-rs 1.8.1's cluster pub/sub does not fit (read in its source): after a reconnect it
//! re-subscribes with one `SSUBSCRIBE` carrying channels of many slots (`CROSSSLOT`, and the
//! error is discarded); on a plain connection a server-sent `sunsubscribe` (slot migration,
//! failover) counts as the reply to whatever request is in flight (`PushKind::has_reply`), so
//! replies shift; and it refreshes the topology only after a `MOVED`. So this layer polls
//! `CLUSTER SHARDS`, keeps one plain connection per master, subscribes one channel per command,
//! and rebuilds a shard's connection (new connection, every wanted channel of its slots again)
//! when it drops, when an unrequested `sunsubscribe` arrives, when its canary stops coming back
//! or when the topology changes. While a shard is rebuilt the node's live path is paused; once
//! every shard is whole again sessions catch up from their inboxes (`LiveSink::resume`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, PushKind, Value};

use crate::error::{Error, Result};
use crate::protocol::UserId;
use crate::store::LiveSink;
use crate::store::redis::{channel, user_of_channel};

/// Interval of the watcher: topology poll, canaries, rebuilds.
const TICK: Duration = Duration::from_millis(250);
/// A shard whose canary is older than this is rebuilt; the node is not ready meanwhile.
const CANARY_DEADLINE: Duration = Duration::from_secs(3);
/// Channels subscribed at once (one `SSUBSCRIBE` each) when rebuilding a shard.
const RESUBSCRIBE_CONCURRENCY: usize = 256;

/// The hash slot of a key (CRC16/XMODEM of its hash tag, mod 16384), as Redis computes it.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// One master as `CLUSTER SHARDS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Master {
    /// `host:port` (the node's preferred endpoint).
    addr: String,
    /// Inclusive slot ranges.
    ranges: Vec<(u16, u16)>,
}

impl Master {
    fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// What a master's subscriber connection shares with its push callback.
struct Link {
    sink: Arc<dyn LiveSink>,
    canary: String,
    canary_seen: AtomicU64,
    /// Set by the callback (disconnect, unrequested `sunsubscribe`): the watcher rebuilds.
    broken: AtomicBool,
    /// Channels this node asked to leave and whose confirmation has not arrived yet.
    leaving: Mutex<HashSet<Vec<u8>>>,
}

impl Link {
    fn on_push(&self, kind: PushKind, data: &[Value]) {
        match kind {
            PushKind::SMessage | PushKind::Message => {
                let [Value::BulkString(ch), Value::BulkString(payload)] = data else {
                    return;
                };
                if ch == self.canary.as_bytes() {
                    if let Some(n) = std::str::from_utf8(payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        self.canary_seen.fetch_max(n, Ordering::AcqRel);
                    }
                } else if let Some(user) = user_of_channel(ch) {
                    self.sink.dispatch(user, payload);
                }
            }
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(ch)) = data.first() else {
                    return;
                };
                let asked = self
                    .leaving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(ch);
                if !asked {
                    // The server dropped the channel (its slot moved, a failover): everything
                    // of this shard is subscribed again on a fresh connection.
                    tracing::warn!(channel = %String::from_utf8_lossy(ch), "redis shard unsubscribed a channel: rebuilding");
                    self.break_link();
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis shard subscriber connection lost");
                self.break_link();
            }
            _ => {}
        }
    }

    fn break_link(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            self.sink.pause();
        }
    }
}

/// A master's live subscriber connection.
struct Shard {
    master: Master,
    con: MultiplexedConnection,
    link: Arc<Link>,
    /// Bumped on every rebuild (a subscribe racing one re-runs on the new connection).
    generation: u64,
    canary_sent: u64,
    last_ok: tokio::time::Instant,
}

/// The node's sharded subscriber layer.
pub struct Shards {
    cmd: ClusterConnection,
    /// `redis://[user:pass@]` prefix of every master URL (credentials of the seed URL).
    auth: String,
    /// `host:port` of the seed nodes.
    seeds: Vec<String>,
    /// The connection `CLUSTER SHARDS` was last read on.
    topo_con: Mutex<Option<(String, MultiplexedConnection)>>,
    sink: Arc<dyn LiveSink>,
    node: String,
    timeout: Duration,
    shards: Mutex<Vec<Shard>>,
    /// Users whose channel this node wants, whatever the state of their shard.
    wanted: Mutex<HashSet<UserId>>,
    generation: AtomicU64,
    healthy: AtomicBool,
    rebuilds: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shards {
    /// Reads the topology and connects a subscriber to every master.
    pub async fn connect(
        cmd: ClusterConnection,
        seeds: &[String],
        sink: Arc<dyn LiveSink>,
        node: &str,
        timeout: Duration,
    ) -> anyhow::Result<Arc<Shards>> {
        let seed = seeds.first().map(String::as_str).unwrap_or_default();
        let auth = match seed
            .strip_prefix("redis://")
            .and_then(|r| r.split_once('@'))
        {
            Some((creds, _)) => format!("redis://{creds}@"),
            None => "redis://".to_string(),
        };
        let seeds = seeds
            .iter()
            .map(|s| {
                let rest = s.strip_prefix("redis://").unwrap_or(s);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                rest.split(['/', '?']).next().unwrap_or(rest).to_string()
            })
            .collect();
        let shards = Arc::new(Shards {
            cmd,
            auth,
            seeds,
            topo_con: Mutex::new(None),
            sink,
            node: node.to_string(),
            timeout,
            shards: Mutex::new(Vec::new()),
            wanted: Mutex::new(HashSet::new()),
            generation: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            rebuilds: AtomicU64::new(0),
        });
        let masters = shards.topology().await?;
        for m in masters {
            let shard = shards.open(m).await?;
            lock(&shards.shards).push(shard);
        }
        Ok(shards)
    }

    /// How many times a shard's subscriber connection was rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Acquire)
    }

    /// Whether every shard's canary came back lately.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// `CLUSTER SHARDS` from the first node that answers: the one that answered last, then the
    /// known masters, then the seeds (the cluster client would route it by the word `SHARDS`
    /// as if it were a key, i.e. to one fixed master, dead or not).
    /// Returns the reply and the host of the node that gave it.
    async fn cluster_shards(&self) -> anyhow::Result<(Value, String)> {
        let cached = lock(&self.topo_con).clone();
        if let Some((host, mut con)) = cached {
            let q = redis::cmd("CLUSTER").arg("SHARDS").clone();
            if let Ok(Ok(v)) = tokio::time::timeout(self.timeout, q.query_async(&mut con)).await {
                return Ok((v, host));
            }
            *lock(&self.topo_con) = None;
        }
        let mut addrs: Vec<String> = lock(&self.shards)
            .iter()
            .map(|sh| sh.master.addr.clone())
            .collect();
        addrs.extend(self.seeds.iter().cloned());
        for addr in addrs {
            let Ok(client) = redis::Client::open(format!("{}{addr}", self.auth)) else {
                continue;
            };
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout));
            let Ok(Ok(mut con)) = tokio::time::timeout(
                self.timeout,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            else {
                continue;
            };
            let q = redis::cmd("CLUSTER").arg("SHARDS").clone();
            if let Ok(Ok(v)) = tokio::time::timeout(self.timeout, q.query_async(&mut con)).await {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .to_string();
                *lock(&self.topo_con) = Some((host.clone(), con));
                return Ok((v, host));
            }
        }
        anyhow::bail!("no Redis cluster node answered CLUSTER SHARDS")
    }

    /// The masters and their slots, from `CLUSTER SHARDS` (Redis 7).
    async fn topology(&self) -> anyhow::Result<Vec<Master>> {
        let (v, asked) = self.cluster_shards().await?;
        let mut out = Vec::new();
        let Value::Array(shards) = v else {
            anyhow::bail!("CLUSTER SHARDS: unexpected reply");
        };
        for shard in shards {
            let fields = map_pairs(shard);
            let mut ranges = Vec::new();
            if let Some(Value::Array(s)) = fields.get("slots") {
                for pair in s.chunks_exact(2) {
                    if let (Some(a), Some(b)) = (int(&pair[0]), int(&pair[1])) {
                        ranges.push((a as u16, b as u16));
                    }
                }
            }
            if ranges.is_empty() {
                continue;
            }
            let Some(Value::Array(nodes)) = fields.get("nodes") else {
                continue;
            };
            for n in nodes {
                let f = map_pairs(n.clone());
                let text = |k: &str| f.get(k).and_then(string);
                // health: online, failed or loading (a restarted master still reading its AOF).
                if text("role").as_deref() != Some("master")
                    || text("health").as_deref() != Some("online")
                {
                    continue;
                }
                // An empty endpoint (a node that never talked to a peer, e.g. a one-node
                // cluster) means the node that answered.
                let host = text("endpoint")
                    .filter(|e| !e.is_empty() && e != "?")
                    .or_else(|| text("ip").filter(|e| !e.is_empty()))
                    .or_else(|| Some(asked.clone()));
                let port = f.get("port").and_then(int);
                if let (Some(host), Some(port)) = (host, port) {
                    out.push(Master {
                        addr: format!("{host}:{port}"),
                        ranges: ranges.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        Ok(out)
    }

    /// A subscriber connection to `master` with its canary and every wanted channel of its
    /// slots, each subscribed by a command of its own.
    async fn open(&self, master: Master) -> anyhow::Result<Shard> {
        let canary = canary_for(&self.node, &master);
        let link = Arc::new(Link {
            sink: self.sink.clone(),
            canary,
            canary_seen: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            leaving: Mutex::new(HashSet::new()),
        });
        let push = link.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |p: redis::PushInfo| {
                push.on_push(p.kind, &p.data);
                Ok::<(), std::convert::Infallible>(())
            });
        let url = format!("{}{}?protocol=resp3", self.auth, master.addr);
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(crate::store::redis::tcp_settings());
        let client = redis::Client::open(info)?;
        let con = tokio::time::timeout(
            self.timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await??;
        let mut channels = vec![link.canary.clone()];
        channels.extend(
            lock(&self.wanted)
                .iter()
                .map(|&u| channel(u))
                .filter(|c| master.owns(slot(c.as_bytes()))),
        );
        for chunk in channels.chunks(RESUBSCRIBE_CONCURRENCY) {
            let mut all = tokio::task::JoinSet::new();
            for c in chunk {
                let mut con = con.clone();
                let c = c.clone();
                all.spawn(async move { ssubscribe(&mut con, &c).await });
            }
            while let Some(r) = all.join_next().await {
                r??;
            }
        }
        Ok(Shard {
            master,
            con,
            link,
            generation: self.generation.fetch_add(1, Ordering::AcqRel) + 1,
            canary_sent: 0,
            last_ok: tokio::time::Instant::now(),
        })
    }

    /// Subscribes `user`'s channel on its master's connection; returns once it is live.
    pub async fn subscribe(&self, user: UserId) -> Result<()> {
        lock(&self.wanted).insert(user);
        let ch = channel(user);
        let s = slot(ch.as_bytes());
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let found = lock(&self.shards)
                .iter()
                .find(|sh| sh.master.owns(s) && !sh.link.broken.load(Ordering::Acquire))
                .map(|sh| (sh.con.clone(), sh.generation));
            if let Some((mut con, generation)) = found
                && ssubscribe(&mut con, &ch).await.is_ok()
            {
                // A rebuild meanwhile took its channel list from `wanted`, which had this user
                // already; but a rebuild of the old connection after our SSUBSCRIBE could have
                // lost it: check that the connection is still the current one.
                let current = lock(&self.shards)
                    .iter()
                    .any(|sh| sh.generation == generation);
                if current {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                lock(&self.wanted).remove(&user);
                return Err(Error::unavailable(
                    "no live subscriber connection to the user's Redis shard",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Leaves `user`'s channel.
    pub async fn unsubscribe(&self, user: UserId) -> Result<()> {
        lock(&self.wanted).remove(&user);
        let ch = channel(user);
        let s = slot(ch.as_bytes());
        let found = lock(&self.shards)
            .iter()
            .find(|sh| sh.master.owns(s))
            .map(|sh| (sh.con.clone(), sh.link.clone()));
        let Some((mut con, link)) = found else {
            return Ok(());
        };
        lock(&link.leaving).insert(ch.clone().into_bytes());
        let r = tokio::time::timeout(
            self.timeout,
            redis::cmd("SUNSUBSCRIBE")
                .arg(&ch)
                .query_async::<Value>(&mut con),
        )
        .await;
        match r {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::unavailable("sunsubscribe failed")),
        }
    }

    /// Runs forever: polls the topology, publishes a canary per shard and judges each by
    /// whether the previous one came back, rebuilds what is broken or moved.
    pub async fn watch(self: Arc<Self>) {
        let mut next_poll = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            let now = tokio::time::Instant::now();
            // Canary check and publish.
            let probes: Vec<(String, u64)> = {
                let mut shards = lock(&self.shards);
                let mut probes = Vec::new();
                for sh in shards.iter_mut() {
                    if sh.canary_sent > 0
                        && sh.link.canary_seen.load(Ordering::Acquire) >= sh.canary_sent
                    {
                        sh.last_ok = now;
                    }
                    if sh.last_ok.elapsed() > CANARY_DEADLINE {
                        tracing::warn!(master = %sh.master.addr, "redis shard canary missing: rebuilding");
                        sh.link.break_link();
                    }
                    sh.canary_sent += 1;
                    probes.push((sh.link.canary.clone(), sh.canary_sent));
                }
                probes
            };
            for (ch, n) in probes {
                let mut con = self.cmd.clone();
                let publish = redis::cmd("SPUBLISH").arg(&ch).arg(n).clone();
                let _ = tokio::time::timeout(self.timeout, publish.query_async::<Value>(&mut con))
                    .await;
            }
            let any_broken = lock(&self.shards)
                .iter()
                .any(|sh| sh.link.broken.load(Ordering::Acquire));
            if !any_broken && now < next_poll && !self.sink.paused() {
                self.set_health();
                continue;
            }
            next_poll = now + Duration::from_secs(1);
            let Ok(masters) = self.topology().await else {
                self.set_health();
                continue;
            };
            let unchanged = {
                let shards = lock(&self.shards);
                shards.len() == masters.len()
                    && shards.iter().all(|sh| {
                        masters.contains(&sh.master) && !sh.link.broken.load(Ordering::Acquire)
                    })
            };
            if unchanged {
                self.resume_if_whole();
                self.set_health();
                continue;
            }
            // Keep what is whole and unchanged; rebuild the rest.
            let mut keep: HashMap<String, Shard> = HashMap::new();
            let mut dropped = false;
            for sh in lock(&self.shards).drain(..) {
                let same = masters.contains(&sh.master);
                if same && !sh.link.broken.load(Ordering::Acquire) {
                    keep.insert(sh.master.addr.clone(), sh);
                } else {
                    dropped = true;
                    sh.link.break_link();
                }
            }
            let mut fresh = Vec::new();
            let mut whole = true;
            for m in masters {
                if let Some(sh) = keep.remove(&m.addr) {
                    fresh.push(sh);
                    continue;
                }
                match self.open(m.clone()).await {
                    Ok(sh) => {
                        self.rebuilds.fetch_add(1, Ordering::AcqRel);
                        tracing::info!(master = %m.addr, "redis shard subscriber (re)built");
                        fresh.push(sh);
                    }
                    Err(e) => {
                        tracing::warn!(master = %m.addr, error = %e, "redis shard subscriber not ready");
                        whole = false;
                    }
                }
            }
            let _ = dropped;
            *lock(&self.shards) = fresh;
            if whole {
                self.resume_if_whole();
            }
            self.set_health();
        }
    }

    /// Lifts the pause of the live path when every shard is whole: every session then catches
    /// up from its inbox.
    fn resume_if_whole(&self) {
        if !self.sink.paused() {
            return;
        }
        // Losses first, then the links: a link that breaks after this check pauses again with
        // a higher count, which this resume does not cover.
        let upto = self.sink.losses();
        let intact = lock(&self.shards)
            .iter()
            .all(|sh| !sh.link.broken.load(Ordering::Acquire));
        if intact {
            // Every wanted channel is subscribed on the current masters again.
            tracing::info!("redis shards re-subscribed; sessions catch up from their inboxes");
            self.sink.resume(upto);
        }
    }

    fn set_health(&self) {
        let shards = lock(&self.shards);
        let ok = !shards.is_empty()
            && shards.iter().all(|sh| {
                !sh.link.broken.load(Ordering::Acquire) && sh.last_ok.elapsed() < CANARY_DEADLINE
            });
        self.healthy.store(ok, Ordering::Release);
    }
}

/// `SSUBSCRIBE` of one channel (the reply is its confirmation push, which the connection hands
/// to the waiting request).
async fn ssubscribe(con: &mut MultiplexedConnection, ch: &str) -> redis::RedisResult<()> {
    redis::cmd("SSUBSCRIBE")
        .arg(ch)
        .query_async::<Value>(con)
        .await
        .map(|_| ())
}

/// A canary channel of this node whose slot `master` serves.
fn canary_for(node: &str, master: &Master) -> String {
    (0u32..)
        .map(|k| format!("sb:{{n:{node}:{k}}}:canary"))
        .find(|c| master.owns(slot(c.as_bytes())))
        .unwrap_or_default()
}

/// A RESP2 flat array or RESP3 map of `name, value` pairs.
fn map_pairs(v: Value) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    match v {
        Value::Array(items) => {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = string(&k) {
                    out.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let Some(k) = string(&k) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => string(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Redis cluster specification.
    #[test]
    fn slots_match_redis() {
        assert_eq!(slot(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"sb:{u:1}:inbox"), slot(b"sb:{u:1}:ch"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
    }
}
