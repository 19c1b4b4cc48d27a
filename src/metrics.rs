//! Prometheus series of one node (docs/operations.md lists them). One registry per node, so
//! several in-process test nodes do not share counters.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::Code;

/// Latency buckets (seconds): sub-millisecond Redis calls up to multi-second stalls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// `server` for the errors that are the service's fault (what an availability SLO counts),
/// `client` for those that answer a mistake or a limit of the client's.
pub fn error_kind(code: Code) -> &'static str {
    match code {
        Code::Unavailable | Code::Internal => "server",
        _ => "client",
    }
}

/// Every series a node exports.
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections_open: IntGauge,
    /// Accepted client connections.
    pub connections_accepted: IntCounter,
    /// Client connections refused, or closed before logging in, by reason.
    pub connections_rejected: IntCounterVec,
    /// Logged-in sessions on this node.
    pub sessions: IntGauge,
    /// Users with at least one session on this node.
    pub users: IntGauge,
    /// Login attempts by method and result.
    pub logins: IntCounterVec,
    /// Time to answer a login, by method (a reconnect storm shows here first).
    pub login_latency: HistogramVec,
    /// Logins waiting for one of the `login_concurrency` slots.
    pub logins_waiting: IntGauge,
    /// Sessions removed per batch (see `server::closer`).
    pub close_batch: Histogram,
    /// Messages accepted by kind (direct, group).
    pub messages: IntCounterVec,
    /// Messages written to clients by path (live_local, live_remote, backlog).
    pub deliveries: IntCounterVec,
    /// Time from storing a message to writing it to a recipient's socket (live path).
    pub delivery_latency: Histogram,
    /// Redis request latency by operation.
    pub redis_latency: HistogramVec,
    /// `goaway` events sent, by reason (`shutdown`, `rebalance`).
    pub goaway: IntCounterVec,
    /// Accounts deleted (`account.delete`).
    pub accounts_deleted: IntCounter,
    /// Acknowledgements accepted.
    pub acks: IntCounter,
    /// User channels subscribed on this node.
    pub subscriptions: IntGauge,
    /// Channel payloads for users without a session here.
    pub bus_unrouted: IntCounter,
    /// Channel payloads that could not be parsed.
    pub bus_bad_payloads: IntCounter,
    /// Live deliveries that found a full outbound queue (the session re-reads its inbox).
    pub outbound_overflows: IntCounter,
    /// Connections closed because writes to them stalled.
    pub slow_consumers: IntCounter,
    /// Send replies that first had to read the inbox so no earlier position was skipped.
    pub prefix_catch_ups: IntCounter,
    /// Errors sent to clients, by code and kind (replies and events); count with [`Metrics::error`].
    pub errors: IntCounterVec,
    /// Failed or timed-out Redis requests by operation.
    pub redis_errors: IntCounterVec,
    /// Redis connections replaced because they stopped answering, by connection.
    pub redis_reconnects: IntCounterVec,
    /// TLS handshakes on the chat listener by result (ok, failed, timeout).
    pub tls_handshakes: IntCounterVec,
    /// Certificate reloads by result (ok, failed: the previous certificate stays in use).
    pub tls_reloads: IntCounterVec,
    /// The per-message children of the series above, resolved once.
    pub hot: Hot,
    /// Lifecycle, Redis connectivity and traffic volume (docs/operations.md, "Metrics").
    pub ops: OpsKit,
}

/// The operator's series: what a dashboard and alerts need beyond the message counters.
pub struct OpsKit {
    /// 1 while `/readyz` answers 200 (set when scraped).
    pub ready: IntGauge,
    /// 1 while the node drains (set when scraped).
    pub draining: IntGauge,
    /// Per connection role (`commands`, `subscriber`): 1 while it works (Redis backend only).
    pub redis_connected: IntGaugeVec,
    /// `max_connections`, so alerts can compare open connections with it.
    pub connections_max: IntGauge,
    /// Dead nodes (no heartbeat within the presence TTL) whose sessions this node removed.
    pub dead_nodes_reaped: IntCounter,
    /// Times this node found itself reaped while alive (its heartbeats did not get through).
    pub reaped_while_alive: IntCounter,
}

/// Label children counted once or more per message, resolved at start-up: looking a label
/// set up hashes it and takes a lock, which the hot path should not pay per message.
pub struct Hot {
    /// `messages{kind="direct"}`.
    pub sent_direct: IntCounter,
    /// `messages{kind="group"}`.
    pub sent_group: IntCounter,
    /// `deliveries{path="live_local"}`.
    pub live_local: IntCounter,
    /// `deliveries{path="live_remote"}`.
    pub live_remote: IntCounter,
    /// `deliveries{path="backlog"}`.
    pub backlog: IntCounter,
    /// `frames{direction="in"}`: request frames read.
    pub frames_in: IntCounter,
    /// `frames{direction="out"}`: replies, events and deliveries written.
    pub frames_out: IntCounter,
    /// `bytes{direction="in"}`: bytes read from client sockets.
    pub bytes_in: IntCounter,
    /// `bytes{direction="out"}`: bytes written to client sockets.
    pub bytes_out: IntCounter,
}

impl Metrics {
    /// Creates and registers every series, and the process collector (fds, CPU, memory).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        // No `node` label: Prometheus attaches the pod (target) itself.
        let build = IntGaugeVec::new(
            Opts::new(
                "switchboard_build_info",
                "Build information; the value is 1.",
            ),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build.clone()))
            .expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let messages = counter_vec(
            "switchboard_messages_accepted_total",
            "Messages stored, by kind (direct, group).",
            &["kind"],
        );
        let deliveries = counter_vec(
            "switchboard_deliveries_total",
            "Messages written to client sockets, by path (live_local: sent on this node, live_remote: sent on another node, backlog: read from the inbox).",
            &["path"],
        );
        let frames = counter_vec(
            "switchboard_frames_total",
            "Frames (lines) on client connections, by direction (in: requests read, out: replies, events and deliveries written).",
            &["direction"],
        );
        let bytes = counter_vec(
            "switchboard_bytes_total",
            "Bytes on client connections, by direction (in: read, out: written).",
            &["direction"],
        );
        let metrics = Metrics {
            connections_open: gauge("switchboard_connections_open", "Open client connections."),
            connections_accepted: counter(
                "switchboard_connections_accepted_total",
                "Client connections accepted.",
            ),
            connections_rejected: counter_vec(
                "switchboard_connections_rejected_total",
                "Client connections refused, or closed for not logging in, by reason.",
                &["reason"],
            ),
            sessions: gauge("switchboard_sessions", "Logged-in sessions on this node."),
            users: gauge(
                "switchboard_users",
                "Users with at least one session on this node.",
            ),
            logins: counter_vec(
                "switchboard_logins_total",
                "Login attempts by method (password, token) and result.",
                &["method", "result"],
            ),
            login_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "switchboard_login_duration_seconds",
                        "Time to answer a login, by method (password, token).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["method"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                // Both series exist from the start, so a dashboard shows 0, not "no data".
                for method in ["password", "token"] {
                    h.with_label_values(&[method]);
                }
                h
            },
            logins_waiting: gauge(
                "switchboard_logins_waiting",
                "Logins waiting for one of the login_concurrency slots (non-zero during a reconnect storm).",
            ),
            close_batch: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "switchboard_session_close_batch_size",
                        "Sessions removed from the store per batch.",
                    )
                    .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 512.0]),
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            delivery_latency: histogram(
                "switchboard_delivery_latency_seconds",
                "Time from storing a message to writing it to a recipient's socket (live deliveries).",
            ),
            redis_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "switchboard_redis_request_duration_seconds",
                        "Redis request latency by operation.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["op"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            goaway: counter_vec(
                "switchboard_goaway_sent_total",
                "goaway events sent to clients, by reason (shutdown: the node drains; rebalance: the node had more than its share of connections).",
                &["reason"],
            ),
            accounts_deleted: counter(
                "switchboard_accounts_deleted_total",
                "Accounts deleted with account.delete.",
            ),
            acks: counter("switchboard_acks_total", "Acknowledgements accepted."),
            subscriptions: gauge(
                "switchboard_pubsub_subscriptions",
                "User channels subscribed on this node.",
            ),
            bus_unrouted: counter(
                "switchboard_bus_unrouted_total",
                "Channel payloads for users with no session on this node.",
            ),
            bus_bad_payloads: counter(
                "switchboard_bus_bad_payloads_total",
                "Channel payloads that could not be parsed.",
            ),
            outbound_overflows: counter(
                "switchboard_outbound_queue_overflows_total",
                "Live deliveries that found a full session queue (the session re-reads its inbox).",
            ),
            slow_consumers: counter(
                "switchboard_slow_consumer_disconnects_total",
                "Connections closed because writing to them stalled.",
            ),
            prefix_catch_ups: counter(
                "switchboard_send_catch_ups_total",
                "Send replies that first read the inbox so that no earlier message is skipped.",
            ),
            tls_handshakes: counter_vec(
                "switchboard_tls_handshakes_total",
                "TLS handshakes on the chat listener, by result (ok, failed, timeout).",
                &["result"],
            ),
            tls_reloads: counter_vec(
                "switchboard_tls_reloads_total",
                "Certificate reloads after the files changed, by result (ok, failed: the previous certificate stays).",
                &["result"],
            ),
            errors: counter_vec(
                "switchboard_errors_total",
                "Errors sent to clients, by code and kind (client: the request's fault, server: unavailable or internal).",
                &["code", "kind"],
            ),
            redis_errors: counter_vec(
                "switchboard_redis_errors_total",
                "Redis requests that failed or timed out, by operation.",
                &["op"],
            ),
            redis_reconnects: counter_vec(
                "switchboard_redis_reconnects_total",
                "Redis connections replaced because they stopped answering (half-open), by connection (cmd, sub).",
                &["connection"],
            ),
            hot: Hot {
                sent_direct: messages.with_label_values(&["direct"]),
                sent_group: messages.with_label_values(&["group"]),
                live_local: deliveries.with_label_values(&["live_local"]),
                live_remote: deliveries.with_label_values(&["live_remote"]),
                backlog: deliveries.with_label_values(&["backlog"]),
                frames_in: frames.with_label_values(&["in"]),
                frames_out: frames.with_label_values(&["out"]),
                bytes_in: bytes.with_label_values(&["in"]),
                bytes_out: bytes.with_label_values(&["out"]),
            },
            ops: OpsKit {
                ready: gauge(
                    "switchboard_ready",
                    "1 while /readyz answers 200 (backend connected, live path working, not draining).",
                ),
                draining: gauge(
                    "switchboard_draining",
                    "1 while the node drains (SIGTERM received, clients told to go away).",
                ),
                redis_connected: {
                    let g = IntGaugeVec::new(
                        Opts::new(
                            "switchboard_redis_connected",
                            "1 while this node's Redis connection of a role works (commands: the last canary PUBLISH was answered; subscriber: the canary came back in time).",
                        ),
                        &["role"],
                    )
                    .expect("valid metric");
                    registry
                        .register(Box::new(g.clone()))
                        .expect("unique metric");
                    g
                },
                connections_max: gauge(
                    "switchboard_connections_max",
                    "The max_connections setting: open connections beyond it are refused.",
                ),
                dead_nodes_reaped: counter(
                    "switchboard_dead_nodes_reaped_total",
                    "Dead nodes (heartbeat older than the presence TTL) whose sessions this node removed.",
                ),
                reaped_while_alive: counter(
                    "switchboard_reaped_while_alive_total",
                    "Times this node found its sessions reaped by another node while it was alive (its heartbeats did not reach Redis in time); it re-registers them.",
                ),
            },
            messages,
            deliveries,
            registry,
        };
        metrics.zero_labels();
        metrics
    }

    /// Creates the usual label sets at zero, so every series exists from the start (rates and
    /// alerts work without waiting for a first event).
    fn zero_labels(&self) {
        for reason in [
            "max_connections",
            "proxy_header",
            "proxy_untrusted",
            "unauthenticated_per_address",
            "login_timeout",
        ] {
            self.connections_rejected.with_label_values(&[reason]);
        }
        for method in ["password", "token"] {
            for result in ["ok", "bad_credentials", "rate_limited", "unavailable"] {
                self.logins.with_label_values(&[method, result]);
            }
        }
        for result in ["ok", "failed", "timeout"] {
            self.tls_handshakes.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            self.tls_reloads.with_label_values(&[result]);
        }
        for kind in ["direct", "group"] {
            self.messages.with_label_values(&[kind]);
        }
        for path in ["live_local", "live_remote", "backlog"] {
            self.deliveries.with_label_values(&[path]);
        }
        for code in Code::ALL {
            self.errors
                .with_label_values(&[code.as_str(), error_kind(code)]);
        }
        for op in ["send", "inbox_read", "subscribe", "publish"] {
            self.redis_latency.with_label_values(&[op]);
        }
        // The canary's PUBLISH is counted when it fails, never timed.
        for op in ["send", "inbox_read", "subscribe", "publish", "canary"] {
            self.redis_errors.with_label_values(&[op]);
        }
        for reason in ["shutdown", "rebalance"] {
            self.goaway.with_label_values(&[reason]);
        }
        for connection in ["cmd", "sub"] {
            self.redis_reconnects.with_label_values(&[connection]);
        }
    }

    /// Counts an error sent to a client.
    pub fn error(&self, code: Code) {
        self.errors
            .with_label_values(&[code.as_str(), error_kind(code)])
            .inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
