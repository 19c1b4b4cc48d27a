//! Every knob of a node, in one place: defaults < optional file < `SWITCHBOARD_*` environment.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// Prefix of every environment variable that sets a [`Settings`] field.
pub const ENV_PREFIX: &str = "SWITCHBOARD";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The settings of one node. Field names are the config-file keys; the environment name
/// is `SWITCHBOARD_` + the key in upper case (docs/configuration.md lists them all).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Chat (TCP) listen address.
    pub listen: SocketAddr,
    /// HTTP listen address for /livez, /readyz and /metrics.
    pub http_listen: SocketAddr,
    /// Redis URL; `None` runs the embedded in-memory backend (single node, nothing kept).
    pub redis_url: Option<String>,
    /// Redis Cluster seed URLs, comma-separated; set (instead of `redis_url`) for cluster mode.
    pub redis_cluster_nodes: Option<String>,
    /// Name of this node in Redis, logs and `hello` (the pod name on Kubernetes).
    pub node_name: String,
    /// Seconds after which the sessions of a node that stopped heart-beating stop counting.
    pub presence_ttl_secs: u64,
    /// Groups with more members than this carry no presence events (protocol revision 1.1).
    pub presence_group_max: usize,
    /// Seconds a draining node waits for clients to leave before closing them.
    pub drain_timeout_secs: u64,
    /// `goaway.reconnect_after_ms` is drawn from this many ms (at most half the drain window):
    /// wide enough to spread a drained node's reconnects, short enough that every client is
    /// back within seconds.
    pub goaway_spread_ms: u64,
    /// A client that leaves a draining node after its `goaway` keeps its session record until
    /// its next login ends it silently or the dead-node reaper removes it: no offline/online
    /// presence flap for a client that is back within seconds.
    pub drain_handover: bool,
    /// Move clients off a node holding more than its share of connections (after scale-up).
    pub rebalance: bool,
    /// A node rebalances when it holds more than the mean × (1 + this) connections.
    pub rebalance_slack: f64,
    /// Most clients per second a rebalancing node sends `goaway`.
    pub rebalance_rate_per_sec: u32,
    /// Most open client connections; more are refused before they are read.
    pub max_connections: usize,
    /// Length of the chat listener's accept queue (capped by the kernel's
    /// `net.core.somaxconn`): connections a surge may open before the node accepts them.
    pub accept_backlog: u32,
    /// Logins whose store work runs at once; more wait their turn, so that a reconnect storm
    /// cannot queue thousands of login scripts in Redis ahead of live messages.
    pub login_concurrency: u32,
    /// Longest frame in bytes, not counting the line ending.
    pub max_frame_bytes: usize,
    /// Longest message text in Unicode scalar values.
    pub max_text_chars: usize,
    /// Most concurrent sessions of one user across all nodes.
    pub max_sessions_per_user: u32,
    /// Lifetime of a login token in seconds, fixed when it is issued.
    pub token_ttl_secs: u64,
    /// Error events after which a connection is closed.
    pub max_protocol_errors: u32,
    /// Failed password logins (per name or per address) within the window that block logins.
    pub login_failures_max: u32,
    /// Sliding window, in seconds, of the failed-login limit.
    pub login_failure_window_secs: u64,
    /// Sustained sends per second per session (token bucket rate).
    pub send_rate_per_sec: u32,
    /// Sends a session may burst above the rate (token bucket size).
    pub send_burst: u32,
    /// An inbox keeps at least this many newest messages.
    pub inbox_max_len: u64,
    /// An inbox keeps everything younger than this many days.
    pub inbox_retention_days: u64,
    /// An inbox never keeps more than this many messages, whatever their age.
    pub inbox_hard_max_len: u64,
    /// Bytes of message text one sender may have stored in a sliding 24 h (per stored copy).
    pub send_bytes_per_day: u64,
    /// Most inbox entries one `history` request reads (its cost bound, whatever the inbox).
    pub history_scan_max: u32,
    /// Live deliveries queued per session before it falls back to reading its inbox.
    pub outbound_queue: usize,
    /// Seconds a write to a client may take before the client counts as a slow consumer.
    pub write_timeout_secs: u64,
    /// Seconds without any frame from a client after which it is closed (0 = never).
    pub idle_timeout_secs: u64,
    /// Milliseconds a Redis request may take before the op answers `unavailable`.
    pub redis_timeout_ms: u64,
    /// Replicas that must confirm a message (Redis `WAIT`) before a send is acknowledged (0 = none).
    pub redis_wait_replicas: u32,
    /// Milliseconds a send waits for `redis_wait_replicas` before answering `unavailable`.
    pub redis_wait_timeout_ms: u64,
    /// Argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Expect a PROXY protocol v1/v2 header on every chat connection (behind nginx/HAProxy).
    pub proxy_protocol: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log: String,
    /// Peers whose PROXY headers are believed: comma-separated CIDRs (empty = trust no one).
    pub proxy_trusted_cidrs: String,
    /// Seconds a connection may stay connected without logging in (from its `hello`).
    pub login_timeout_secs: u64,
    /// Most connections from one client address open at once and not logged in, per node.
    pub max_unauthenticated_per_address: u32,
    /// Successful `register`s per client address within a sliding hour.
    pub register_per_address_per_hour: u32,
    /// Password hashes computed at once; each slot keeps `argon2_memory_kib` for good.
    pub argon2_slots: u32,
    /// PEM certificate chain of the chat listener; with `tls_key_file`, the node speaks TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Milliseconds a client has to complete the TLS handshake (after any PROXY header).
    pub tls_handshake_timeout_ms: u64,
    /// Milliseconds between checks of the certificate files for a rotated certificate.
    pub tls_reload_interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: ([0, 0, 0, 0], 6000).into(),
            http_listen: ([0, 0, 0, 0], 8080).into(),
            redis_url: None,
            redis_cluster_nodes: None,
            node_name: default_node_name(),
            presence_ttl_secs: 15,
            presence_group_max: 200,
            drain_timeout_secs: 20,
            goaway_spread_ms: 5000,
            drain_handover: true,
            rebalance: true,
            rebalance_slack: 0.2,
            rebalance_rate_per_sec: 5,
            max_connections: 20_000,
            accept_backlog: 4096,
            login_concurrency: 64,
            max_frame_bytes: 65_536,
            max_text_chars: 4096,
            max_sessions_per_user: 8,
            token_ttl_secs: 7 * 24 * 3600,
            max_protocol_errors: 10,
            login_failures_max: 10,
            login_failure_window_secs: 60,
            send_rate_per_sec: 200,
            send_burst: 1000,
            inbox_max_len: 10_000,
            inbox_retention_days: 30,
            inbox_hard_max_len: 100_000,
            send_bytes_per_day: 64 << 20,
            history_scan_max: 2000,
            outbound_queue: 1024,
            write_timeout_secs: 30,
            idle_timeout_secs: 300,
            redis_timeout_ms: 3000,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 1000,
            // OWASP's first recommended argon2id set: 19 MiB, 2 passes, 1 lane.
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            proxy_protocol: false,
            log_format: LogFormat::Text,
            log: "info".into(),
            proxy_trusted_cidrs: String::new(),
            login_timeout_secs: 30,
            max_unauthenticated_per_address: 64,
            register_per_address_per_hour: 20,
            argon2_slots: 2,
            tls_cert_file: None,
            tls_key_file: None,
            tls_handshake_timeout_ms: 10_000,
            tls_reload_interval_ms: 5_000,
        }
    }
}

/// The host name, or `switchboard` when it cannot be read.
fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "switchboard".into())
}

/// A setting that failed to load or validate; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars().collect())
    }

    /// Like [`Settings::load`] with an explicit environment (tests pass settings this way).
    pub fn load_from(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        // An empty SWITCHBOARD_REDIS_URL means "unset", as Helm renders empty values.
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, v)| k.starts_with(ENV_PREFIX) && !v.is_empty())
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .try_parsing(true)
                .source(Some(env)),
        );
        let cfg = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let settings: Settings = cfg
            .try_deserialize()
            .map_err(|e| ConfigError(name_env(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges so that a bad value fails start-up instead of misbehaving later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &str, why: &str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError(format!(
                    "{key} ({ENV_PREFIX}_{}) {why}",
                    key.to_uppercase()
                )))
            }
        }
        let n = &self.node_name;
        check(
            !n.is_empty()
                && n.len() <= 253
                && !n.chars().any(|c| c.is_whitespace() || c.is_control()),
            "node_name",
            "must be 1 to 253 characters without white space",
        )?;
        check(
            self.presence_ttl_secs >= 1,
            "presence_ttl_secs",
            "must be at least 1",
        )?;
        check(
            self.rebalance_slack.is_finite() && self.rebalance_slack >= 0.0,
            "rebalance_slack",
            "must be a number >= 0",
        )?;
        check(
            (1..=10_000).contains(&self.rebalance_rate_per_sec),
            "rebalance_rate_per_sec",
            "must be between 1 and 10000",
        )?;
        check(
            self.max_connections >= 1,
            "max_connections",
            "must be at least 1",
        )?;
        check(
            (256..=16 << 20).contains(&self.max_frame_bytes),
            "max_frame_bytes",
            "must be between 256 and 16777216",
        )?;
        check(
            (1..=1 << 20).contains(&self.max_text_chars),
            "max_text_chars",
            "must be between 1 and 1048576",
        )?;
        check(
            self.max_sessions_per_user >= 1,
            "max_sessions_per_user",
            "must be at least 1",
        )?;
        check(
            self.token_ttl_secs >= 1,
            "token_ttl_secs",
            "must be at least 1",
        )?;
        check(
            self.max_protocol_errors >= 1,
            "max_protocol_errors",
            "must be at least 1",
        )?;
        check(
            self.login_failures_max >= 1,
            "login_failures_max",
            "must be at least 1",
        )?;
        check(
            self.login_failure_window_secs >= 1,
            "login_failure_window_secs",
            "must be at least 1",
        )?;
        check(
            self.send_rate_per_sec >= 1,
            "send_rate_per_sec",
            "must be at least 1",
        )?;
        check(self.send_burst >= 1, "send_burst", "must be at least 1")?;
        check(
            self.inbox_max_len >= 1,
            "inbox_max_len",
            "must be at least 1",
        )?;
        check(
            self.inbox_hard_max_len >= self.inbox_max_len,
            "inbox_hard_max_len",
            "must be at least inbox_max_len",
        )?;
        check(
            self.send_bytes_per_day >= 1,
            "send_bytes_per_day",
            "must be at least 1",
        )?;
        check(
            self.history_scan_max >= 1,
            "history_scan_max",
            "must be at least 1",
        )?;
        check(
            self.outbound_queue >= 1,
            "outbound_queue",
            "must be at least 1",
        )?;
        check(
            self.write_timeout_secs >= 1,
            "write_timeout_secs",
            "must be at least 1",
        )?;
        check(
            self.redis_timeout_ms >= 10,
            "redis_timeout_ms",
            "must be at least 10",
        )?;
        if self.redis_wait_replicas > 0 {
            // The WAIT reply must come back before the request itself times out.
            check(
                self.redis_wait_timeout_ms >= 1
                    && self.redis_wait_timeout_ms < self.redis_timeout_ms,
                "redis_wait_timeout_ms",
                "must be at least 1 and less than redis_timeout_ms when redis_wait_replicas > 0",
            )?;
        }
        check(
            self.register_per_address_per_hour >= 1,
            "register_per_address_per_hour",
            "must be at least 1",
        )?;
        check(
            argon2::Params::new(
                self.argon2_memory_kib,
                self.argon2_iterations,
                self.argon2_parallelism,
                None,
            )
            .is_ok(),
            "argon2_memory_kib",
            "and argon2_iterations / argon2_parallelism are not valid argon2 parameters",
        )?;
        check(
            self.login_timeout_secs >= 1,
            "login_timeout_secs",
            "must be at least 1",
        )?;
        check(
            self.max_unauthenticated_per_address >= 1,
            "max_unauthenticated_per_address",
            "must be at least 1",
        )?;
        if let Err(bad) = self.proxy_trusted() {
            check(
                false,
                "proxy_trusted_cidrs",
                &format!("has {bad:?}, not a CIDR such as 10.0.0.0/8 or fd00::/8"),
            )?;
        }
        check(
            (1..=65_535).contains(&self.accept_backlog),
            "accept_backlog",
            "must be between 1 and 65535",
        )?;
        check(
            (1..=4096).contains(&self.login_concurrency),
            "login_concurrency",
            "must be between 1 and 4096",
        )?;
        check(
            (1..=64).contains(&self.argon2_slots),
            "argon2_slots",
            "must be between 1 and 64",
        )?;
        if let Some(nodes) = &self.redis_cluster_nodes {
            check(
                self.redis_url.is_none(),
                "redis_cluster_nodes",
                "and redis_url are exclusive: set one",
            )?;
            check(
                !self.cluster_seeds().is_empty()
                    && self
                        .cluster_seeds()
                        .iter()
                        .all(|u| u.starts_with("redis://")),
                "redis_cluster_nodes",
                &format!("{nodes:?}: must be comma-separated redis:// URLs"),
            )?;
        }
        check(
            self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "tls_cert_file",
            "and tls_key_file must be set together (or neither)",
        )?;
        check(
            self.tls_handshake_timeout_ms >= 100,
            "tls_handshake_timeout_ms",
            "must be at least 100",
        )?;
        check(
            self.tls_reload_interval_ms >= 100,
            "tls_reload_interval_ms",
            "must be at least 100",
        )?;
        if let Some(url) = &self.redis_url {
            check(
                url.starts_with("redis://"),
                "redis_url",
                "must start with redis:// (TLS to Redis is not built in; terminate it in a sidecar)",
            )?;
        }
        Ok(())
    }
}

impl Settings {
    /// The seed URLs of [`Settings::redis_cluster_nodes`] (empty when unset).
    pub fn cluster_seeds(&self) -> Vec<String> {
        self.redis_cluster_nodes
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// The parsed [`Settings::proxy_trusted_cidrs`]; `Err` carries the first entry that is not
    /// a CIDR. A bare address counts as a single host (/32 or /128).
    pub fn proxy_trusted(&self) -> Result<Vec<IpNet>, String> {
        self.proxy_trusted_cidrs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| s.to_string())
            })
            .collect()
    }
}

/// Rewrites a deserialisation error so it also names the environment variable.
fn name_env(e: config::ConfigError) -> String {
    let text = e.to_string();
    match text.rsplit_once("for key `") {
        Some((_, rest)) => {
            let key = rest.trim_end_matches(['`', '"']);
            let key = key.split('`').next().unwrap_or(key);
            format!("{text} (environment {ENV_PREFIX}_{})", key.to_uppercase())
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::load_from(
            None,
            env(&[
                ("SWITCHBOARD_LISTEN", "127.0.0.1:7000"),
                ("SWITCHBOARD_PRESENCE_TTL_SECS", "3"),
                ("SWITCHBOARD_REDIS_URL", ""),
                ("SWITCHBOARD_PORT", "tcp://10.0.0.1:6000"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(s.presence_ttl_secs, 3);
        assert_eq!(s.redis_url, None);
        assert_eq!(s.max_frame_bytes, 65536);
    }

    #[test]
    fn bad_value_names_the_setting() {
        let e = Settings::load_from(None, env(&[("SWITCHBOARD_PRESENCE_TTL_SECS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SWITCHBOARD_PRESENCE_TTL_SECS"), "{e}");
        let e = Settings::load_from(None, env(&[("SWITCHBOARD_MAX_FRAME_BYTES", "10")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SWITCHBOARD_MAX_FRAME_BYTES"), "{e}");
    }

    #[test]
    fn proxy_trusted_cidrs_parse_or_name_the_setting() {
        let s = Settings::load_from(
            None,
            env(&[(
                "SWITCHBOARD_PROXY_TRUSTED_CIDRS",
                " 10.244.0.0/16, 192.0.2.7 ,fd00::/8,",
            )]),
        )
        .unwrap();
        let nets = s.proxy_trusted().unwrap();
        assert_eq!(nets.len(), 3);
        assert!(nets[1].contains(&"192.0.2.7".parse::<IpAddr>().unwrap()));
        assert!(Settings::default().proxy_trusted().unwrap().is_empty());
        let e = Settings::load_from(
            None,
            env(&[("SWITCHBOARD_PROXY_TRUSTED_CIDRS", "10.0.0.0/8,10.1.0.0/33")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("proxy_trusted_cidrs (SWITCHBOARD_PROXY_TRUSTED_CIDRS)")
                && e.contains("10.1.0.0/33"),
            "{e}"
        );
    }

    #[test]
    fn register_limit_from_environment() {
        let name = "SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR";
        assert_eq!(Settings::default().register_per_address_per_hour, 20);
        let s = Settings::load_from(None, env(&[(name, "5")])).unwrap();
        assert_eq!(s.register_per_address_per_hour, 5);
        let e = Settings::load_from(None, env(&[(name, "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name), "{e}");
    }

    #[test]
    fn argon2_slots_default_and_range() {
        assert_eq!(Settings::default().argon2_slots, 2);
        let s = Settings::load_from(None, env(&[("SWITCHBOARD_ARGON2_SLOTS", "64")])).unwrap();
        assert_eq!(s.argon2_slots, 64);
        for bad in ["0", "65"] {
            let e = Settings::load_from(None, env(&[("SWITCHBOARD_ARGON2_SLOTS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("SWITCHBOARD_ARGON2_SLOTS"), "{e}");
        }
    }

    #[test]
    fn surge_settings_default_and_range() {
        let d = Settings::default();
        assert_eq!((d.accept_backlog, d.login_concurrency), (4096, 64));
        let s = Settings::load_from(
            None,
            env(&[
                ("SWITCHBOARD_ACCEPT_BACKLOG", "65535"),
                ("SWITCHBOARD_LOGIN_CONCURRENCY", "1"),
            ]),
        )
        .unwrap();
        assert_eq!((s.accept_backlog, s.login_concurrency), (65535, 1));
        for (key, bad) in [
            ("SWITCHBOARD_ACCEPT_BACKLOG", "0"),
            ("SWITCHBOARD_ACCEPT_BACKLOG", "65536"),
            ("SWITCHBOARD_LOGIN_CONCURRENCY", "0"),
            ("SWITCHBOARD_LOGIN_CONCURRENCY", "4097"),
        ] {
            let e = Settings::load_from(None, env(&[(key, bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let s = Settings::load_from(
            None,
            env(&[
                ("SWITCHBOARD_TLS_CERT_FILE", "/tls/tls.crt"),
                ("SWITCHBOARD_TLS_KEY_FILE", "/tls/tls.key"),
            ]),
        )
        .unwrap();
        assert_eq!(s.tls_cert_file, Some(PathBuf::from("/tls/tls.crt")));
        assert_eq!(s.tls_handshake_timeout_ms, 10_000);
        let e = Settings::load_from(None, env(&[("SWITCHBOARD_TLS_CERT_FILE", "/tls/tls.crt")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SWITCHBOARD_TLS_CERT_FILE") && e.contains("tls_key_file"),
            "{e}"
        );
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, "max_text_chars = 10\nsend_burst = 5\n").unwrap();
        let s = Settings::load_from(Some(&path), env(&[("SWITCHBOARD_SEND_BURST", "7")])).unwrap();
        assert_eq!(s.max_text_chars, 10);
        assert_eq!(s.send_burst, 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
