//! A real Prometheus against the real server: Prometheus (Debian's
//! `prometheus` package) on 127.0.0.1 scrapes the bridge's admin port every
//! second and evaluates deploy/prometheus/alerts.yml, while the load
//! generator drives a few calls through the echo peer (loopback mode). Then
//! every query in deploy/prometheus/queries.txt (each dashboard panel's and
//! each alert's expression) is evaluated through Prometheus's HTTP API and
//! must succeed with a result of the shape the file states; `vector+` ones
//! must have data. Every alert rule must have evaluated without error, and
//! `promtool check metrics` must accept the admin port's `/metrics` after
//! the load.
//!
//! Without a `prometheus` binary (on PATH, or named by `PROMETHEUS`) the
//! test is skipped with a message, unless `CI` is set: in CI it fails.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callbridge_sim::echo::{self, EchoMode, EchoOptions};
use callbridge_sim::loadtest::{self, LoadOptions};
use serde_json::Value;
use support::{Bridge, AUTH_TOKEN};

/// The whole test, Prometheus start-up included.
const BOUND: Duration = Duration::from_secs(60);
const CALLS: u32 = 4;
const CALL_SECS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_evaluates_every_dashboard_and_alert_query_against_a_loaded_bridge() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let started = Instant::now();
    tokio::time::timeout(BOUND, scenario(binary))
        .await
        .unwrap_or_else(|_| panic!("the real-Prometheus test took over {BOUND:?}"));
    eprintln!(
        "real-Prometheus test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `prometheus` (or `$PROMETHEUS`), if it runs; `None` (skip) outside CI.
fn prometheus_binary() -> Option<PathBuf> {
    let binary =
        PathBuf::from(std::env::var_os("PROMETHEUS").unwrap_or_else(|| "prometheus".into()));
    let runs = Command::new(&binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match (runs, std::env::var_os("CI").is_some()) {
        (true, _) => Some(binary),
        (false, true) => panic!(
            "{} not found: the real-Prometheus test needs it in CI (Debian: apt-get install prometheus)",
            binary.display()
        ),
        (false, false) => {
            eprintln!(
                "SKIPPED: {} not found (Debian: apt-get install prometheus); \
                 set CI=1 to make this a failure",
                binary.display()
            );
            None
        }
    }
}

/// One query of deploy/prometheus/queries.txt.
struct Query {
    name: String,
    shape: String,
    expr: String,
}

fn queries() -> Vec<Query> {
    let path = repo().join("deploy/prometheus/queries.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split('\t').collect();
        let [name, shape, expr] = parts.as_slice() else {
            panic!(
                "queries.txt:{}: not name<TAB>shape<TAB>expr: {line:?}",
                n + 1
            );
        };
        assert!(
            matches!(*shape, "vector" | "vector+" | "scalar"),
            "queries.txt:{}: unknown shape {shape:?}",
            n + 1
        );
        out.push(Query {
            name: (*name).to_owned(),
            shape: (*shape).to_owned(),
            expr: (*expr).to_owned(),
        });
    }
    assert!(!out.is_empty());
    out
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Prometheus server, stopped (killed: it keeps nothing) on drop; its
/// log is shown if the test fails.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- prometheus log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let alerts = repo().join("deploy/prometheus/alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {alerts:?}\n\
                 scrape_configs:\n  - job_name: callbridge\n    static_configs:\n      - targets: [\"{target}\"]\n",
                alerts = alerts.display().to_string(),
            ),
        )
        .unwrap();
        // A free port: bound, read and released (Prometheus binds it next).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path` (with `query` as the `query` parameter, if any): (status, body).
    async fn get(
        &self,
        client: &reqwest::Client,
        path: &str,
        query: Option<&str>,
    ) -> (u16, String) {
        let mut request = client.get(self.url(path));
        if let Some(q) = query {
            request = request.query(&[("query", q)]);
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Evaluates `expr` now; the API's whole answer.
    async fn query(&self, client: &reqwest::Client, expr: &str) -> Value {
        let (status, body) = self.get(client, "/api/v1/query", Some(expr)).await;
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{expr}: HTTP {status}, not JSON ({e}): {body}"))
    }

    /// The numbers of an instant-vector answer (NaN included).
    async fn values(&self, client: &reqwest::Client, expr: &str) -> Vec<f64> {
        let answer = self.query(client, expr).await;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        sample_values(&answer)
    }

    /// Polls until `expr` has a sample that satisfies `ok`.
    async fn wait_for(
        &self,
        client: &reqwest::Client,
        what: &str,
        expr: &str,
        ok: impl Fn(f64) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.values(client, expr).await.into_iter().any(&ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({expr})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn sample_values(answer: &Value) -> Vec<f64> {
    answer["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| s["value"][1].as_str())
                .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                .collect()
        })
        .unwrap_or_default()
}

async fn scenario(binary: PathBuf) {
    // The model: the echo peer in loopback mode (every frame straight back).
    let peer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer_listener.local_addr().unwrap();
    let (stop_peer, peer_stopped) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(echo::serve(
        peer_listener,
        EchoOptions {
            mode: EchoMode::Loopback,
            ..EchoOptions::default()
        },
        async {
            let _ = peer_stopped.await;
        },
    ));
    let mut bridge = Bridge::start(&format!("ws://{peer_addr}/v1/realtime"), |_| {}).await;

    let prometheus = Prometheus::start(&binary, bridge.admin);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus.get(&client, "/-/ready", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "Prometheus never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Scraped at least once before the load: counters have a zero to rise from.
    prometheus
        .wait_for(
            &client,
            "the first scrape",
            r#"up{job="callbridge"}"#,
            |v| v == 1.0,
        )
        .await;

    let mut opts = LoadOptions::new(
        url::Url::parse(&bridge.public_url).unwrap(),
        CALLS,
        Duration::from_secs(CALL_SECS),
    );
    opts.ramp = Duration::from_secs(1);
    opts.auth_token = Some(AUTH_TOKEN.to_owned());
    opts.bridge_pid = Some(std::process::id());
    let report = loadtest::run(opts).await.expect("the load test runs");
    assert_eq!(report.calls_connected, CALLS, "{report}");
    assert_eq!(report.calls_failed, 0, "{report}");

    // Every call ended, as Prometheus saw it, and a scrape after that.
    let calls = f64::from(CALLS);
    prometheus
        .wait_for(
            &client,
            "every call counted",
            "sum(callbridge_calls_total)",
            |v| v >= calls,
        )
        .await;
    prometheus
        .wait_for(
            &client,
            "no call active",
            "sum(callbridge_calls_active)",
            |v| v == 0.0,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The calls were seen live, not only counted at the end.
    let peak = prometheus
        .values(
            &client,
            "max_over_time(sum(callbridge_calls_active)[1m:1s])",
        )
        .await;
    assert!(
        peak.iter().any(|&v| v >= 1.0),
        "calls_active never above 0: {peak:?}"
    );

    let mut failures = Vec::new();
    let all = queries();
    for q in &all {
        let answer = prometheus.query(&client, &q.expr).await;
        let got = answer["data"]["resultType"].as_str().unwrap_or("");
        let want = q.shape.trim_end_matches('+');
        let values = sample_values(&answer);
        let with_data = values.iter().filter(|v| !v.is_nan()).count();
        eprintln!(
            "{:<50} {:<7} {} samples, {} with data",
            q.name,
            q.shape,
            values.len(),
            with_data
        );
        if answer["status"] != "success" {
            failures.push(format!("{}: {answer}", q.name));
        } else if got != want {
            failures.push(format!("{}: result type {got}, expected {want}", q.name));
        } else if q.shape == "vector+" && with_data == 0 {
            failures.push(format!(
                "{}: no data under load ({} samples, all NaN or none): {}",
                q.name,
                values.len(),
                q.expr
            ));
        }
    }

    // Every alert rule loaded and evaluated without error.
    let (status, body) = prometheus.get(&client, "/api/v1/rules", None).await;
    assert_eq!(status, 200, "{body}");
    let rules: Value = serde_json::from_str(&body).unwrap();
    let mut evaluated = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            evaluated += 1;
            if rule["health"] != "ok" {
                failures.push(format!(
                    "rule {}: health {} {}",
                    rule["name"], rule["health"], rule["lastError"]
                ));
            }
        }
    }
    assert!(evaluated > 0, "no alert rule loaded: {body}");

    // What Prometheus scraped passes promtool, with every series populated.
    let (status, metrics) = support::fake_twilio::get(bridge.admin, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check_metrics(&metrics);

    assert!(
        failures.is_empty(),
        "{} of {} queries or rules failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );

    bridge.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut bridge.task).await;
    let _ = stop_peer.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), peer).await;
}

fn promtool_check_metrics(metrics: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool comes with prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics says:\n{said}"
    );
}
