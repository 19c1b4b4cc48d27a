//! The operator's kit checked by a real Prometheus (Debian's `prometheus` package): three node
//! processes and redis-server on loopback under load from `switchboard bench`, scraped every
//! second by a Prometheus whose scrape job is the chart's ServiceMonitor turned into config
//! the way prometheus-operator does it (`scripts/chart_tool.py prometheus-config`: the same
//! keep rules, target labels and job name, static targets standing in for endpoint discovery),
//! with the chart's alert rules loaded (short `for:` durations and rate windows, set through
//! the chart's values).
//!
//! Then: `promtool check metrics` on a live `/metrics`; every Grafana panel query and every
//! alert's expression (without its threshold) returns data through the HTTP API; no scenario
//! alert fires while all is well; SIGKILL a node → `SwitchboardTargetDown` fires for it; stop
//! Redis → `SwitchboardRedisDisconnected` and `SwitchboardNodeNotReady` fire.
//!
//! A Rust test rather than a script: it reuses the harness (redis-server, node processes,
//! guards that stop every child by pid when the test fails) and runs with the rest of
//! `cargo test`. Runtime is bounded: every wait has a deadline, about 45 s in all.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildGuard, Proc, Redis, free_port};
use serde_json::Value;

/// `$__rate_interval` in dashboard queries: 10 scrapes.
const RATE_INTERVAL: &str = "10s";

/// Chart values for the test: 1 s scrapes, 1 s evaluations (prometheus-config), short windows.
const VALUES: &str = r#"{"metrics":{"serviceMonitor":{"interval":"1s","scrapeTimeout":"900ms"},
 "prometheusRule":{"rateWindow":"10s","alerts":{
  "targetDown":{"for":"2s"},"notReady":{"for":"2s"},"redisDisconnected":{"for":"2s"},
  "redisErrors":{"perSecond":0.5,"for":"2s"},"deadNodeReaped":{"window":"1m","for":"0s"}}}}}"#;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The chart tools' Python (scripts/check-chart.sh sets its virtualenv up).
fn chart_python() -> PathBuf {
    let venv = std::env::var_os("SWITCHBOARD_CHART_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/switchboard/chart-venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/check-chart.sh once (it sets up the chart tools)",
        python.display()
    );
    python
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over HTTP/1.0 (no chunked answers), bounded; (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    common::http_response(&buf)
}

/// Result vector of an instant query (empty on any failure).
fn query(port: u16, promql: &str) -> Vec<Value> {
    let (status, body) = get(port, &format!("/api/v1/query?query={}", encode(promql)));
    if status != 200 {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Pods for which `alert` is firing.
fn firing(port: u16, alert: &str) -> Vec<String> {
    query(
        port,
        &format!("ALERTS{{alertname=\"{alert}\", alertstate=\"firing\"}}"),
    )
    .iter()
    .map(|s| s["metric"]["pod"].as_str().unwrap_or("").to_string())
    .collect()
}

/// Waits (bounded) until `ok` holds.
fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The expression of an alert without its final comparison with a number: what the alert
/// measures, which must return data whether or not the alert fires.
fn measured(expr: &str) -> String {
    let e = expr.trim();
    for op in [" == ", " != ", " >= ", " <= ", " > ", " < "] {
        if let Some((lhs, rhs)) = e.rsplit_once(op)
            && rhs.trim().parse::<f64>().is_ok()
        {
            return lhs.trim().to_string();
        }
    }
    panic!("alert expression does not end in a comparison with a number: {expr}");
}

/// Every `expr` of the dashboard's panels, with the template variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(root().join("charts/switchboard/dashboards/switchboard.json"))
            .unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$namespace", ".*")
                .replace("$job", ".*")
                .replace("$pod", ".*");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// (alert name, expression) of every alert in the rule file Prometheus loaded.
fn alert_rules() -> Vec<(String, String)> {
    let out = Command::new(chart_python())
        .arg(root().join("scripts/chart_tool.py"))
        .args(["render-rules", "--json", "--set-json", VALUES])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules: Vec<(String, String)> = file["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(
        rules.len() >= 10,
        "rule file has only {} alerts",
        rules.len()
    );
    rules
}

fn bench(addr: std::net::SocketAddr, dir: &Path, i: usize) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["bench", "chat", "--quiet", "--addr", &addr.to_string()])
        .args(["-c", "10", "-d", "30", "--rate", "100", "--settle", "2"])
        .arg("--users-file")
        .arg(dir.join(format!("users-{i}.jsonl")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard::new(child)
}

#[test]
fn prometheus_scrapes_dashboard_and_alerts() {
    let started = Instant::now();
    let mut redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("sb-prom-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let pods = [
        "switchboard-chat-0",
        "switchboard-chat-1",
        "switchboard-chat-2",
    ];
    let mut nodes: Vec<Option<Proc>> = pods
        .iter()
        .map(|p| {
            Some(Proc::start(
                &redis,
                p,
                &[
                    ("SWITCHBOARD_SEND_RATE_PER_SEC", "1000"),
                    ("SWITCHBOARD_SEND_BURST", "1000"),
                ],
            ))
        })
        .collect();

    // prometheus.yml and the rule file, from the chart.
    let mut config = Command::new(chart_python());
    config
        .arg(root().join("scripts/chart_tool.py"))
        .args(["prometheus-config", "--out"])
        .arg(&dir)
        .args(["--set-json", VALUES]);
    for (pod, n) in pods.iter().zip(&nodes) {
        let http = n.as_ref().unwrap().http;
        config.args(["--target", &format!("{pod}={http}")]);
    }
    let out = config.output().unwrap();
    assert!(
        out.status.success(),
        "prometheus-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml"))
        .output()
        .expect("promtool must be installed (scripts/test.sh installs prometheus)");
    assert!(
        check.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // A live /metrics passes promtool's linter.
    let (_, body) = get(nodes[0].as_ref().unwrap().http.port(), "/metrics");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let port = free_port();
    let prometheus = ChildGuard::new(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus must be installed (scripts/test.sh installs it)"),
    );
    wait_for("Prometheus ready", Duration::from_secs(20), || {
        get(port, "/-/ready").0 == 200
    });

    let load: Vec<ChildGuard> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| bench(n.as_ref().unwrap().addr, &dir, i))
        .collect();
    // Scrape targets carry the labels the ServiceMonitor's relabeling produces.
    wait_for("all three targets up", Duration::from_secs(20), || {
        query(port, "up == 1").len() == 3
    });
    let up = query(port, "up");
    for s in &up {
        let m = &s["metric"];
        assert_eq!(m["job"], "switchboard-metrics", "{m}");
        assert_eq!(m["namespace"], "switchboard", "{m}");
        assert_eq!(m["service"], "switchboard-metrics", "{m}");
        assert_eq!(m["endpoint"], "metrics", "{m}");
        assert_eq!(m["container"], "chat", "{m}");
        assert!(pods.contains(&m["pod"].as_str().unwrap()), "{m}");
    }

    // Every panel query and every alert's measure returns data, once the load has made
    // enough samples for the rates (bounded: the first pass usually settles it).
    let rules = alert_rules();
    let mut pending: Vec<(String, String)> = dashboard_queries();
    pending.extend(
        rules
            .iter()
            .map(|(n, e)| (format!("alert {n}"), measured(e))),
    );
    let total = pending.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        pending.retain(|(_, q)| query(port, q).is_empty());
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(pending.is_empty(), "queries without data: {pending:#?}");
    eprintln!("{total} dashboard and alert queries return data");
    // Under load: traffic was counted.
    let frames = query(
        port,
        "sum(rate(switchboard_frames_total{direction=\"in\"}[10s]))",
    );
    let rate: f64 = frames[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(rate > 10.0, "frames in at {rate}/s under load");
    // All is well: the scenario alerts are quiet.
    for alert in [
        "SwitchboardTargetDown",
        "SwitchboardNodeNotReady",
        "SwitchboardRedisDisconnected",
    ] {
        assert!(
            firing(port, alert).is_empty(),
            "{alert} fires while all is well"
        );
    }

    // A node dies: its target goes down and the alert fires for that pod only.
    let mut dead = nodes[2].take().unwrap();
    dead.signal("-KILL");
    let _ = dead.child.wait();
    wait_for(
        "SwitchboardTargetDown for the killed pod",
        Duration::from_secs(20),
        || firing(port, "SwitchboardTargetDown") == vec![pods[2].to_string()],
    );

    // Redis goes away: both live nodes lose their connections and are not ready.
    redis.stop();
    wait_for(
        "SwitchboardRedisDisconnected",
        Duration::from_secs(25),
        || {
            let mut p = firing(port, "SwitchboardRedisDisconnected");
            p.sort();
            p.dedup();
            p == pods[..2]
        },
    );
    wait_for("SwitchboardNodeNotReady", Duration::from_secs(15), || {
        firing(port, "SwitchboardNodeNotReady").len() == 2
    });
    wait_for("SwitchboardRedisErrors", Duration::from_secs(15), || {
        firing(port, "SwitchboardRedisErrors").len() == 2
    });
    drop(load);
    drop(prometheus);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(120));
}
