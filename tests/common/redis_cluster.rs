//! A real Redis Cluster on loopback: six `redis-server --cluster-enabled yes` processes
//! (3 masters + 3 replicas) formed with `redis-cli --cluster create`, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::stop_tree;

/// Six `redis-server --cluster-enabled yes` processes forming one cluster; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

/// A port whose cluster bus port (+10000) is free as well.
pub fn cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// The password of every test cluster node (as the chart's cluster has one).
pub const CLUSTER_PASSWORD: &str = "sb-cluster-test";

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .env("REDISCLI_AUTH", CLUSTER_PASSWORD)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "sb-rcluster-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let p = cluster_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        for &p in &ports {
            let child = c.spawn(p);
            c.nodes.push((p, Some(child)));
        }
        for &p in &ports {
            wait_for(Duration::from_secs(5), "redis-server up", || {
                std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
            });
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .env("REDISCLI_AUTH", CLUSTER_PASSWORD)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_ok();
        c
    }

    pub fn spawn(&self, port: u16) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args([
                "--requirepass",
                CLUSTER_PASSWORD,
                "--masterauth",
                CLUSTER_PASSWORD,
            ])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--appendfilename", &format!("aof-{port}.aof")])
            .args(["--appenddirname", &format!("aof-{port}")])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed")
    }

    /// Waits for `cluster_state:ok` on every live node and every replica's link.
    pub fn wait_ok(&self) {
        wait_for(Duration::from_secs(20), "cluster_state:ok", || {
            self.live().all(|p| {
                cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok") && {
                    let r = cli(p, &["INFO", "replication"]);
                    r.contains("role:master") || r.contains("master_link_status:up")
                }
            })
        });
    }

    pub fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
    }

    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://:{CLUSTER_PASSWORD}@127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key)
            .unwrap_or_else(|| panic!("no master for {key}"))
    }

    /// The port of the master serving `key`'s slot, if one does (not during a failover).
    pub fn try_master_of(&self, key: &str) -> Option<u16> {
        let slot: u16 = cli(self.live().next().unwrap(), &["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap();
        // One node's view (the first live one) is enough: the tests wait for it to settle.
        let nodes = cli(self.live().next()?, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                    && (a..=b).contains(&slot)
                {
                    let addr = f[1].split('@').next().unwrap();
                    return addr.rsplit(':').next().unwrap().parse().ok();
                }
            }
        }
        None
    }

    /// SIGKILLs the server on `port`.
    pub fn kill(&mut self, port: u16) {
        let entry = self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap();
        if let Some(mut child) = entry.1.take() {
            stop_tree(&mut child, "-KILL", Duration::ZERO);
        }
    }

    /// Starts the server on `port` again (it rejoins as a replica of its promoted one).
    pub fn revive(&mut self, port: u16) {
        let child = self.spawn(port);
        self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap().1 = Some(child);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            if let Some(mut child) = c.take() {
                stop_tree(&mut child, "-KILL", Duration::ZERO);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
