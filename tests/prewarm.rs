//! Pre-warmed model sessions (`realtime.prewarm`), through the real server:
//! the webhook opens and configures the call's model session before the
//! stream starts and the stream takes it over (hit); a stream with no
//! session here connects as before (miss: another replica answered the
//! webhook, pre-warm is off, or it failed); a session whose stream never
//! comes is closed when the stream token expires, or the server drains
//! (expired). The store's timing is unit-tested with paused time in
//! `callbridge::call::parked`.

mod support;

use std::time::Duration;

use callbridge::config::Dialect;
use callbridge::metrics::{Metrics, PrewarmResult};
use support::fake_live::{FakeLive, Script as LiveScript};
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{self, run_caller, CallerLog, CallerScript};
use support::{wait_until, Bridge, AUTH_TOKEN};
use tokio::net::TcpListener;

const GREETING: &str = "Greet the caller.";

fn call_sid(n: u32) -> String {
    format!("CA{:032x}", 0x77_0000 + n)
}

fn counts(m: &Metrics) -> [u64; 3] {
    PrewarmResult::ALL.map(|r| m.prewarm.get(r))
}

/// Opens the signed stream at `stream_url` and plays a silent caller until
/// the first answer audio (the greeting) has played a while.
async fn silent_call(stream_url: &str, call_sid: &str, token: &str) -> CallerLog {
    let sig = fake_twilio::sign(AUTH_TOKEN, stream_url, &[]);
    let ws = fake_twilio::open_stream(stream_url, Some(&sig))
        .await
        .unwrap();
    let mut script = CallerScript::new(call_sid, token, vec![0xFF; 160], Duration::from_secs(8));
    script.end_after_first_answer = Some(Duration::from_millis(300));
    run_caller(ws, script).await
}

fn greeting(c: &mut callbridge::config::Config) {
    c.agent.greeting = GREETING.into();
}

#[tokio::test]
async fn the_stream_takes_over_the_session_the_webhook_opened() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), greeting).await;
    let sid = call_sid(1);
    let (stream_url, token) = bridge.answer(&sid).await;

    // Opened and configured before the stream: one session, its
    // session.update, and no greeting yet (nobody is listening).
    wait_until("the webhook's session is configured", || {
        fake.events_of("session.update").len() == 1
    })
    .await;
    assert_eq!(fake.record.lock().unwrap().sessions, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        fake.events_of("response.create").is_empty(),
        "greeted before the stream started: {:?}",
        fake.events()
    );

    let log = silent_call(&stream_url, &sid, &token).await;
    assert!(log.first_answer_at.is_some(), "no greeting heard");
    // The same session: no second connection, configured once, greeted once.
    let r = fake.record.lock().unwrap();
    assert_eq!(r.sessions, 1);
    let kinds: Vec<&str> = r.client_events[..2]
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["session.update", "response.create"]);
    drop(r);
    assert_eq!(fake.events_of("session.update").len(), 1);
    assert_eq!(fake.events_of("response.create").len(), 1);
    assert_eq!(counts(&bridge.metrics), [1, 0, 0]);
    assert_eq!(bridge.metrics.prewarm.model_ready.count(), 1);
}

#[tokio::test]
async fn a_gpt_live_session_is_pre_warmed_too() {
    let fake = FakeLive::start(LiveScript::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.realtime.dialect = Dialect::Live;
        greeting(c);
    })
    .await;
    let sid = call_sid(2);
    let (stream_url, token) = bridge.answer(&sid).await;
    wait_until("the webhook's session is started", || {
        fake.events_of("session.start").len() == 1
    })
    .await;
    let log = silent_call(&stream_url, &sid, &token).await;
    assert!(log.first_answer_at.is_some(), "no greeting heard");
    assert_eq!(fake.record.lock().unwrap().sessions, 1);
    assert_eq!(fake.events_of("session.start").len(), 1);
    assert_eq!(counts(&bridge.metrics), [1, 0, 0]);
}

#[tokio::test]
async fn a_stream_on_another_replica_connects_as_before() {
    let fake = FakeRealtime::start(Script::default()).await;
    // Two replicas sharing the auth token: either checks the other's tokens.
    let a = Bridge::start(&fake.url(), greeting).await;
    let b = Bridge::start(&fake.url(), greeting).await;
    let sid = call_sid(3);
    let (stream_a, token) = a.answer(&sid).await;
    wait_until("A pre-warmed", || fake.record.lock().unwrap().sessions == 1).await;
    let stream_b = stream_a.replace(&a.addr.to_string(), &b.addr.to_string());
    let log = silent_call(&stream_b, &sid, &token).await;
    assert!(log.first_answer_at.is_some(), "no greeting heard");
    // B opened its own session; A's waits for its expiry.
    assert_eq!(fake.record.lock().unwrap().sessions, 2);
    assert_eq!(counts(&b.metrics), [0, 1, 0]);
    assert_eq!(counts(&a.metrics), [0, 0, 0]);
}

#[tokio::test]
async fn with_pre_warm_off_the_stream_connects_and_counts_a_miss() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| {
        greeting(c);
        c.realtime.prewarm = false;
    })
    .await;
    let sid = call_sid(4);
    let (stream_url, token) = bridge.answer(&sid).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.record.lock().unwrap().sessions,
        0,
        "opened at the webhook"
    );
    let log = silent_call(&stream_url, &sid, &token).await;
    assert!(log.first_answer_at.is_some(), "no greeting heard");
    assert_eq!(fake.record.lock().unwrap().sessions, 1);
    assert_eq!(counts(&bridge.metrics), [0, 1, 0]);
    assert_eq!(bridge.metrics.prewarm.model_ready.count(), 1);
}

/// A front for the fake whose first connection is dropped before the
/// WebSocket handshake (the pre-warm's), the rest forwarded.
async fn first_connection_fails(target: std::net::SocketAddr) -> String {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut inbound, _)) = front.accept().await {
            if std::mem::take(&mut first) {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("ws://{addr}/v1/realtime?model=gpt-realtime")
}

#[tokio::test]
async fn a_failed_pre_warm_never_fails_the_call() {
    let fake = FakeRealtime::start(Script::default()).await;
    let url = first_connection_fails(fake.addr).await;
    let bridge = Bridge::start(&url, greeting).await;
    let sid = call_sid(5);
    let (stream_url, token) = bridge.answer(&sid).await;
    wait_until("the pre-warm failed", || {
        bridge.metrics.errors("prewarm_failed") == 1
    })
    .await;
    let log = silent_call(&stream_url, &sid, &token).await;
    assert!(log.first_answer_at.is_some(), "no greeting heard");
    assert_eq!(fake.record.lock().unwrap().sessions, 1);
    assert_eq!(counts(&bridge.metrics), [0, 1, 0]);
}

#[tokio::test]
async fn a_session_whose_stream_never_comes_is_closed_at_the_token_expiry() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| c.twilio.stream_token_ttl = 1).await;
    let sid = call_sid(6);
    let (stream_url, token) = bridge.answer(&sid).await;
    wait_until("configured", || fake.events_of("session.update").len() == 1).await;
    assert_eq!(fake.record.lock().unwrap().closed_by_client, 0);
    wait_until("closed after the token's 1 s", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
    assert_eq!(counts(&bridge.metrics), [0, 0, 1]);
    // Nothing is left for a stream; a late one is refused anyway (its
    // token has expired too), and opens nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sig = fake_twilio::sign(AUTH_TOKEN, &stream_url, &[]);
    let ws = fake_twilio::open_stream(&stream_url, Some(&sig))
        .await
        .unwrap();
    let log = run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 160], Duration::from_secs(2)),
    )
    .await;
    assert_eq!(log.close_code, Some(1008));
    assert_eq!(fake.record.lock().unwrap().sessions, 1);
    assert_eq!(counts(&bridge.metrics), [0, 0, 1]);
}

#[tokio::test]
async fn draining_closes_the_parked_sessions() {
    let fake = FakeRealtime::start(Script::default()).await;
    let mut bridge = Bridge::start(&fake.url(), |_| {}).await;
    let (_stream_url, _token) = bridge.answer(&call_sid(7)).await;
    wait_until("configured", || fake.events_of("session.update").len() == 1).await;
    bridge.shutdown();
    wait_until("the parked session is closed", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
    assert_eq!(counts(&bridge.metrics), [0, 0, 1]);
}
