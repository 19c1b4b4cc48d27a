//! The chat server: a node's lifecycle (bind, start the backend, accept clients, drain on
//! shutdown) in this file; one connection's handling in [`session`] (the connection loop),
//! [`ops`] (one file per op group) and [`delivery`] (live, catch-up, prefix, acks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod admission;
pub mod auth;
pub mod closer;
pub mod conn;
mod delivery;
pub mod http;
pub mod node;
mod ops;
pub mod outbox;
pub mod presence;
pub mod proxy;
pub mod rebalance;
pub mod registry;
pub mod session;
mod spare;
pub mod tls;

use crate::config::Settings;
use crate::error::{Code, Error};
use crate::metrics::Metrics;
use crate::protocol::Event;
use crate::server::http::Health;
use crate::server::node::Node;
use crate::server::registry::Registry;
use crate::server::tls::Tls;
use crate::store::{ClusterStore, MemoryStore, RedisStore, Retention, Store};

/// Pause after a failed `accept` (for example out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// First and longest pause between attempts to reach Redis at start-up.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(250);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Time left to connections to finish their cleanup after the drain deadline.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// A node with its listeners bound, ready to [`Server::run`].
pub struct Server {
    settings: Settings,
    chat: TcpListener,
    http: TcpListener,
    tls: Option<Arc<Tls>>,
}

impl Server {
    /// Binds the chat and HTTP listeners (port 0 picks a free port) and loads the TLS
    /// certificate, if one is configured.
    pub async fn bind(settings: Settings) -> anyhow::Result<Server> {
        let tls = Tls::from_settings(&settings)?.map(Arc::new);
        let chat = listen(settings.listen, settings.accept_backlog)
            .with_context(|| format!("binding chat listener {}", settings.listen))?;
        let http = TcpListener::bind(settings.http_listen)
            .await
            .with_context(|| format!("binding HTTP listener {}", settings.http_listen))?;
        Ok(Server {
            settings,
            chat,
            http,
            tls,
        })
    }

    /// The bound chat address.
    pub fn chat_addr(&self) -> SocketAddr {
        self.chat.local_addr().expect("bound listener")
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound listener")
    }

    /// Runs until `shutdown` is cancelled, then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Server {
            settings,
            chat,
            http,
            tls,
        } = self;
        let metrics = Arc::new(Metrics::new());
        let tls_stop = CancellationToken::new();
        if let Some(tls) = &tls {
            tokio::spawn(tls.clone().watch(metrics.clone(), tls_stop.clone()));
        }
        let registry = Arc::new(Registry::new(metrics.clone()));
        // Probes answer from the start: /livez 200, /readyz 503 until the backend is there.
        let health = Health::new(metrics.clone());
        let http_stop = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(health.clone(), http, http_stop.clone()));
        let retention = Retention {
            max_len: settings.inbox_max_len,
            max_age_ms: settings.inbox_retention_days * 24 * 3600 * 1000,
            hard_max_len: settings.inbox_hard_max_len,
        };
        let started = Started {
            settings,
            chat,
            tls,
            health,
            registry,
            metrics,
        };
        let seeds = started.settings.cluster_seeds();
        let result = match started.settings.redis_url.clone() {
            None if !seeds.is_empty() => {
                match started.connect_cluster(&seeds, retention, &shutdown).await {
                    None => Ok(()),
                    Some(store) => {
                        let watch = tokio::spawn(store.shards().watch());
                        let gauges = tokio::spawn(store.clone().report_connected());
                        let result = started.run(store, shutdown).await;
                        watch.abort();
                        gauges.abort();
                        result
                    }
                }
            }
            None => {
                tracing::warn!(
                    "no redis_url configured: embedded in-memory backend, single node, nothing is kept across restarts"
                );
                let store = Arc::new(MemoryStore::new(started.registry.clone(), retention));
                started.run(store, shutdown).await
            }
            Some(url) => match started.connect_redis(&url, retention, &shutdown).await {
                None => Ok(()),
                Some(store) => {
                    let watch = tokio::spawn(store.clone().watch_health());
                    let result = started.run(store, shutdown).await;
                    watch.abort();
                    result
                }
            },
        };
        http_stop.cancel();
        tls_stop.cancel();
        let _ = http_task.await;
        result
    }
}

/// A node whose backend is up: everything [`Server::run`] hands to the serving phase.
struct Started {
    settings: Settings,
    chat: TcpListener,
    tls: Option<Arc<Tls>>,
    health: Arc<Health>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Started {
    /// Connects to Redis, waiting with backoff while it is not reachable (a fresh cluster may
    /// start the nodes first) instead of crash-looping; `None` if shut down meanwhile.
    async fn connect_redis(
        &self,
        url: &str,
        retention: Retention,
        shutdown: &CancellationToken,
    ) -> Option<Arc<RedisStore>> {
        let timeout = Duration::from_millis(self.settings.redis_timeout_ms);
        let store = retry_connect("redis", shutdown, || {
            RedisStore::connect(
                url,
                &self.settings.node_name,
                self.registry.clone(),
                retention,
                timeout,
                self.metrics.clone(),
            )
        })
        .await?;
        store.set_wait_replicas(
            self.settings.redis_wait_replicas,
            Duration::from_millis(self.settings.redis_wait_timeout_ms),
        );
        Some(store)
    }

    /// As [`Started::connect_redis`], for Redis Cluster (`redis_cluster_nodes`).
    async fn connect_cluster(
        &self,
        seeds: &[String],
        retention: Retention,
        shutdown: &CancellationToken,
    ) -> Option<Arc<ClusterStore>> {
        let timeout = Duration::from_millis(self.settings.redis_timeout_ms);
        let store = retry_connect("redis cluster", shutdown, || {
            ClusterStore::connect(
                seeds,
                &self.settings.node_name,
                self.registry.clone(),
                retention,
                timeout,
                self.metrics.clone(),
            )
        })
        .await?;
        store.set_wait_replicas(
            self.settings.redis_wait_replicas,
            Duration::from_millis(self.settings.redis_wait_timeout_ms),
        );
        Some(store)
    }

    async fn run<S: Store>(self, store: Arc<S>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Started {
            settings,
            chat,
            tls,
            health,
            registry,
            metrics,
        } = self;
        let drain = Duration::from_secs(settings.drain_timeout_secs);
        metrics
            .ops
            .connections_max
            .set(settings.max_connections as i64);
        let node = Arc::new(Node::new(settings, store, registry, metrics));
        let closer = node.start_closer();
        presence::reap_own(&node).await;
        health.set_node(node.clone());
        let beat = tokio::spawn(presence::heartbeat(node.clone()));
        // Ends by itself when the drain starts.
        let _rebalancer = tokio::spawn(rebalance::run(node.clone()));
        tracing::info!(
            chat = %chat.local_addr()?, node = %node.settings.node_name, tls = tls.is_some(),
            "switchboard serving"
        );

        let connections = TaskTracker::new();
        accept_loop(&node, &chat, tls.as_ref(), &connections, &shutdown).await;
        drop(chat);

        // Drain: /readyz turns 503, every client gets goaway and may leave in its own time.
        tracing::info!(connections = connections.len(), "draining");
        let started = std::time::Instant::now();
        node.draining.cancel();
        connections.close();
        if tokio::time::timeout(drain, connections.wait())
            .await
            .is_err()
        {
            tracing::info!(
                left = connections.len(),
                "drain timeout: closing remaining connections"
            );
            node.closing.cancel();
            let _ = tokio::time::timeout(CLOSE_GRACE, connections.wait()).await;
        }
        node.closing.cancel();
        // The drain ends whatever Redis does: cleanup that cannot finish within the grace
        // (Redis down or slow) is left to the dead-node reaper of the other nodes, which
        // removes this node's sessions once its heartbeat has expired. Sessions handed over
        // are left the same way on purpose: their users' next logins end them, and reaping
        // them here would announce offline the users who are still on their way back.
        let handed_over = node.handed_over.load(std::sync::atomic::Ordering::Relaxed);
        let cleanup = async {
            let _ = beat.await;
            if handed_over == 0 {
                presence::reap_own(&node).await;
            }
        };
        if tokio::time::timeout(CLOSE_GRACE, cleanup).await.is_err() {
            tracing::warn!(
                sessions = node.orphan_count(),
                "cleanup did not finish; the other nodes' reaper removes what is left"
            );
        }
        if handed_over > 0 {
            tracing::info!(
                sessions = handed_over,
                "sessions handed over: ended by their users' next logins, or by the other nodes' reaper"
            );
        }
        closer.abort();
        // Logged, not exported: a gauge set just before exit is never scraped.
        let took = started.elapsed().as_secs_f64();
        tracing::info!(seconds = took, "drained");
        Ok(())
    }
}

/// A listener on `addr` with an accept queue of `backlog` (the kernel caps it at
/// `net.core.somaxconn`). `TcpListener::bind` fixes it at 128 (mio's choice, as std's): a
/// drained node's clients arriving at once overflow that, and a dropped SYN costs the client
/// a 1 s retransmit (then 3 s, 7 s: past the 10 s a reconnect should take).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted node rebinds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Runs `connect` until it succeeds, with doubling delays from [`CONNECT_BACKOFF_MIN`] to
/// [`CONNECT_BACKOFF_MAX`]; `None` if shut down meanwhile.
async fn retry_connect<T, F, Fut>(what: &str, shutdown: &CancellationToken, connect: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = CONNECT_BACKOFF_MIN;
    loop {
        match connect().await {
            Ok(store) => return Some(store),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} not reachable yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(CONNECT_BACKOFF_MAX);
            }
        }
    }
}

async fn accept_loop<S: Store>(
    node: &Arc<Node<S>>,
    listener: &TcpListener,
    tls: Option<&Arc<Tls>>,
    connections: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let max = node.settings.max_connections;
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if connections.len() >= max {
            // Refused before anything is read: one error event, then close.
            node.metrics
                .connections_rejected
                .with_label_values(&["max_connections"])
                .inc();
            if tls.is_some() {
                // No handshake for a refused connection (see session::serve); just close.
                continue;
            }
            tokio::spawn(async move {
                let err = Error::new(Code::Unavailable, "server full; try another node");
                let mut line = Vec::new();
                Event::Error { error: err }.write(&mut line);
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&line)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        connections.spawn(session::serve(node.clone(), stream, peer, tls.cloned()));
    }
}
