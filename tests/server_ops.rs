//! Operations: the admin port (health, readiness, metrics checked by
//! promtool) apart from the public one, admission control, the SIGTERM
//! drain and the per-call logs, against the real server on 127.0.0.1:0.

mod support;

use std::time::Duration;

use callbridge::metrics::Outcome;
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{self, run_caller, CallerScript};
use support::{fixture, wait_until, Bridge, AUTH_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_after_a_call() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 800,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = format!("CA{:032x}", 77);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(12),
    );
    script.end_after_first_answer = Some(Duration::from_millis(500));
    run_caller(ws, script).await;
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;

    let (status, body) = fake_twilio::get(bridge.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("callbridge_calls_total{outcome=\"completed\"} 1"),
        "{body}"
    );
    assert!(body.contains("callbridge_frames_total{direction=\"inbound\"}"));
    assert!(
        body.contains("callbridge_turn_latency_seconds_count 1"),
        "{body}"
    );

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.trim().is_empty(),
                "promtool says:\n{said}"
            );
        }
        Err(_) if std::env::var_os("CI").is_some() => panic!("promtool is required in CI"),
        Err(_) => eprintln!("promtool not installed: skipping `promtool check metrics`"),
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    assert_eq!(fake_twilio::get(bridge.admin, "/healthz").await.0, 200);
    assert_eq!(fake_twilio::get(bridge.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn the_public_port_serves_only_twilio_and_the_admin_port_only_operations() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    assert_ne!(bridge.addr, bridge.admin);
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            fake_twilio::get(bridge.addr, path).await.0,
            404,
            "public {path}"
        );
        assert_eq!(
            fake_twilio::get(bridge.admin, path).await.0,
            200,
            "admin {path}"
        );
    }
    // Twilio's endpoints are not on the admin port, signed or not.
    let sid = format!("CA{:032x}", 9);
    let params = fake_twilio::voice_params(&sid);
    let sig = fake_twilio::sign(AUTH_TOKEN, &format!("{}/voice", bridge.public_url), &params);
    let (status, _) = fake_twilio::post_form(bridge.admin, "/voice", &params, Some(&sig)).await;
    assert_eq!(status, 404);
    let (status, _) = fake_twilio::post_form(bridge.admin, "/stream-status", &[], None).await;
    assert_eq!(status, 404);
    assert_eq!(fake_twilio::get(bridge.admin, "/media").await.0, 404);
    // ... and they still work on the public port.
    let (status, body) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&sig)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_calls_callers_get_busy_and_live_calls_are_untouched() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 500,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| c.max_calls = 1).await;
    let sid = format!("CA{:032x}", 1);
    let (ws, token) = bridge.connect(&sid).await;
    let live = tokio::spawn(run_caller(
        ws,
        CallerScript::new(&sid, &token, fixture("speech.ulaw"), Duration::from_secs(3)),
    ));
    wait_until("first call admitted", || {
        bridge.metrics.calls_active.get() == 1
    })
    .await;

    let (status, _) = fake_twilio::get(bridge.admin, "/readyz").await;
    assert_eq!(status, 503);
    let sid2 = format!("CA{:032x}", 2);
    let params = fake_twilio::voice_params(&sid2);
    let sig = fake_twilio::sign(AUTH_TOKEN, &format!("{}/voice", bridge.public_url), &params);
    let (status, body) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&sig)).await;
    assert_eq!(status, 200);
    assert!(body.contains("<Reject reason=\"busy\"/>"), "{body}");
    // A stream that got a token earlier is refused at the upgrade too.
    let url = format!("ws://{}/media", bridge.addr);
    let sig = fake_twilio::sign(AUTH_TOKEN, &url, &[]);
    assert_eq!(
        fake_twilio::open_stream(&url, Some(&sig)).await.err(),
        Some(503)
    );

    let log = live.await.unwrap();
    assert_eq!(log.close_code, Some(1000), "the live call ended normally");
    wait_until("slot released", || bridge.metrics.calls_active.get() == 0).await;
    assert_eq!(fake_twilio::get(bridge.admin, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_calls_and_lets_live_ones_finish() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 500,
        ..Script::default()
    })
    .await;
    let mut bridge = Bridge::start(&fake.url(), |c| c.drain_timeout = 30).await;
    let sid = format!("CA{:032x}", 3);
    let (ws, token) = bridge.connect(&sid).await;
    let live = tokio::spawn(run_caller(
        ws,
        CallerScript::new(&sid, &token, fixture("speech.ulaw"), Duration::from_secs(3)),
    ));
    wait_until("call admitted", || bridge.metrics.calls_active.get() == 1).await;
    bridge.shutdown();
    wait_until("draining", || bridge.metrics.draining.get() == 1).await;

    // The admin port answers through the drain: probes see 503, scrapes go on.
    assert_eq!(fake_twilio::get(bridge.admin, "/readyz").await.0, 503);
    assert_eq!(fake_twilio::get(bridge.admin, "/healthz").await.0, 200);
    let (status, body) = fake_twilio::get(bridge.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("callbridge_draining 1"), "{body}");
    let sid2 = format!("CA{:032x}", 4);
    let params = fake_twilio::voice_params(&sid2);
    let sig = fake_twilio::sign(AUTH_TOKEN, &format!("{}/voice", bridge.public_url), &params);
    let (_, body) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&sig)).await;
    assert!(body.contains("<Reject reason=\"busy\"/>"), "{body}");
    assert!(
        !bridge.task.is_finished(),
        "the server waits for the live call"
    );

    let log = live.await.unwrap();
    assert_eq!(log.close_code, Some(1000), "the live call ran to its end");
    tokio::time::timeout(Duration::from_secs(5), &mut bridge.task)
        .await
        .expect("server stops once the last call ends")
        .unwrap();
    assert_eq!(bridge.metrics.calls_total(Outcome::Completed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_calls_that_outlive_it() {
    let fake = FakeRealtime::start(Script::default()).await;
    let mut bridge = Bridge::start(&fake.url(), |c| c.drain_timeout = 1).await;
    let sid = format!("CA{:032x}", 5);
    let (ws, token) = bridge.connect(&sid).await;
    let live = tokio::spawn(run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 800], Duration::from_secs(20)),
    ));
    wait_until("call admitted", || bridge.metrics.calls_active.get() == 1).await;
    bridge.shutdown();
    let log = tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(log.close_code, Some(1001));
    tokio::time::timeout(Duration::from_secs(10), &mut bridge.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bridge.metrics.calls_total(Outcome::Drained), 1);
    wait_until("model socket closed", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
}

/// Log lines captured by a test's own subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_logs_in_its_span_and_ends_with_one_json_summary_line() {
    // The process-wide subscriber (a thread's own misses lines while other
    // tests register the same call sites): this binary's other tests log
    // into it too, so only this call's lines are looked at.
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let fake = FakeRealtime::start(Script {
        answer_ms: 800,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = format!("CA{:032x}", 78);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(12),
    );
    script.end_after_first_answer = Some(Duration::from_millis(500));
    run_caller(ws, script).await;
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;
    let ours = |l: &serde_json::Value| l["span"]["call_sid"] == sid.as_str();
    wait_until("call ended logged", || {
        logs.lines()
            .iter()
            .any(|l| ours(l) && l["fields"]["message"] == "call ended")
    })
    .await;

    let lines = logs.lines();
    let in_call: Vec<&serde_json::Value> = lines.iter().filter(|l| ours(l)).collect();
    assert!(in_call.iter().all(|l| l["span"]["name"] == "call"));
    let started = in_call
        .iter()
        .find(|l| l["fields"]["message"] == "stream started")
        .expect("a stream started line in the call span");
    assert_eq!(started["span"]["call_sid"], sid.as_str(), "{started}");
    assert_eq!(started["span"]["stream_sid"], fake_twilio::STREAM_SID);
    let ended: Vec<&&serde_json::Value> = in_call
        .iter()
        .filter(|l| l["fields"]["message"] == "call ended")
        .collect();
    assert_eq!(ended.len(), 1, "one call ended line: {in_call:?}");
    let end = ended[0];
    assert_eq!(end["span"]["call_sid"], sid.as_str(), "{end}");
    assert_eq!(end["span"]["stream_sid"], fake_twilio::STREAM_SID, "{end}");
    let f = &end["fields"];
    assert_eq!(f["outcome"], "completed", "{end}");
    assert!(f["duration_s"].as_f64().unwrap() > 0.5, "{end}");
    assert!(f["turns"].as_u64().unwrap() >= 1, "{end}");
    assert!(f["frames_in"].as_u64().unwrap() > 0, "{end}");
    assert!(f["frames_out"].as_u64().unwrap() > 0, "{end}");
    for field in ["bargeins", "rejected", "tool_calls"] {
        assert!(f[field].is_u64(), "{field}: {end}");
    }
    // Nothing secret, no audio, no transcript.
    let all = serde_json::to_string(&in_call).unwrap();
    for secret in [support::AUTH_TOKEN, support::API_KEY, token.as_str()] {
        assert!(!all.contains(secret), "a secret was logged: {all}");
    }
    for word in ["payload", "transcript", "delta"] {
        assert!(!all.contains(word), "{word} was logged: {all}");
    }
}
