//! The simulated Twilio caller and the load generator (`callbridge_sim`)
//! against the real server on 127.0.0.1:0, with a Realtime peer in process:
//! `callbridge_sim::echo` (turn or loopback mode), or the scripted fake from
//! tests/support where a test needs to see the client events.

mod support;

use std::time::Duration;

use callbridge::audio::AudioMode;
use callbridge_sim as sim;
use callbridge_sim::echo::{self, EchoMode, EchoOptions};
use callbridge_sim::{BargeIn, CallOptions, LoadOptions, Progress, SimError};
use support::fake_realtime::{FakeRealtime, Script};
use support::{fixture, Bridge, AUTH_TOKEN};
use url::Url;

fn bridge_url(bridge: &Bridge) -> Url {
    Url::parse(&bridge.public_url).unwrap()
}

/// The local Realtime peer (`callbridge echo-realtime`) in process:
/// `Turn` speaks each caller turn back; `Loopback` answers every appended
/// frame at once with the same audio, so every frame sent must come back.
async fn echo_peer(mode: EchoMode) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = EchoOptions {
        mode,
        ..EchoOptions::default()
    };
    tokio::spawn(echo::serve(listener, options, std::future::pending()));
    format!("ws://{addr}/v1/realtime")
}

/// The speech fixture through a whole signed call in turn mode: the model
/// answers once the caller falls silent, the caller hears it in real time
/// and acknowledges the marks, then hangs up and the bridge closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_call_with_the_speech_fixture() {
    let peer = echo_peer(EchoMode::Turn).await;
    let bridge = Bridge::start(&peer, |_| {}).await;
    let speech = fixture("speech.ulaw");
    let mut opts = CallOptions::new(bridge_url(&bridge), speech.clone());
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.trailing_silence = Duration::from_millis(1500);
    opts.max_duration = Duration::from_secs(30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = sim::place_call(opts, Some(tx)).await.unwrap();

    assert!(report.errors.is_empty(), "{report}");
    assert!(report.turns >= 1, "{report}");
    assert!(report.bytes_heard >= 8 * 1000, "{report}");
    assert!(report.marks_echoed >= 5, "{report}");
    assert!(report.media_received >= 5, "{report}");
    assert_eq!(report.close_code, Some(1000), "{report}");
    // The answer comes after the peer's 500 ms of silence detection: later
    // than that, and (generously) within a few seconds.
    let latency = report.first_answer_after_speech.expect("no turn latency");
    assert!(
        latency >= Duration::from_millis(400) && latency < Duration::from_secs(5),
        "{report}"
    );
    // One timeline: the caller's track starts with the script, and both
    // tracks are whole frames of the same length.
    assert_eq!(report.sent.len(), report.heard.len());
    assert_eq!(report.sent.len() as u64, report.frames_sent * 160);
    assert_eq!(&report.sent[..speech.len()], &speech[..]);
    assert!(report.frames_sent as usize >= speech.len() / 160 + 75);
    // The answer is heard after the speech, not during it.
    let heard_during_speech = report.heard[..speech.len() - 2400]
        .iter()
        .filter(|&&b| b != sim::SILENCE)
        .count();
    assert_eq!(heard_during_speech, 0, "{report}");
    let answer_heard = report.heard[speech.len()..]
        .iter()
        .filter(|&&b| b != sim::SILENCE)
        .count();
    assert!(answer_heard >= 8 * 1000, "{report}");

    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(matches!(events.first(), Some(Progress::Streaming { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, Progress::AnswerStarted { turn: 1, .. })));
    assert!(events.iter().any(|e| matches!(e, Progress::Stopped { .. })));

    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("call.wav");
    report.write_stereo_wav(&wav).unwrap();
    let r = hound::WavReader::open(&wav).unwrap();
    assert_eq!(r.spec().channels, 2);
    assert_eq!(r.len() as usize, 2 * report.sent.len());
}

/// Talking over the answer: the bridge must `clear` the queued audio, the
/// caller releases the pending marks, and the reaction time is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_gets_a_clear() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 6000,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let mut opts = CallOptions::new(bridge_url(&bridge), fixture("speech.ulaw"));
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.barge_in = Some(BargeIn {
        audio: fixture("bargein.ulaw"),
        after_heard: Duration::from_millis(800),
    });
    opts.trailing_silence = Duration::from_millis(500);
    opts.wait_for_answer = false;
    opts.max_duration = Duration::from_secs(40);
    let report = sim::place_call(opts, None).await.unwrap();

    assert_eq!(report.bargeins, 1, "{report}");
    assert!(report.clears >= 1, "{report}");
    let reaction = report.bargein_reaction.expect("no barge-in reaction");
    assert!(reaction < Duration::from_secs(3), "{report}");
    // Heard at least the 800 ms before talking, far less than the 6 s answer.
    assert!(report.bytes_heard >= 8 * 800, "{report}");
    assert!(report.bytes_heard < 8 * 5000, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.close_code, Some(1000), "{report}");
    assert!(!fake.events_of("conversation.item.truncate").is_empty());
}

/// A bridge that checks signatures refuses unsigned and wrongly signed
/// calls with 403; one that does not check them takes an unsigned call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_and_unsigned_calls() {
    let peer = echo_peer(EchoMode::Loopback).await;
    let signed = Bridge::start(&peer, |_| {}).await;
    let short = vec![sim::SILENCE; 1600];

    let unsigned = CallOptions::new(bridge_url(&signed), short.clone());
    match sim::place_call(unsigned, None).await {
        Err(e @ SimError::Forbidden { signed: false, .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("403") && msg.contains("TWILIO_AUTH_TOKEN"),
                "{msg}"
            );
            assert!(!msg.contains('\n'));
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let mut wrong = CallOptions::new(bridge_url(&signed), short.clone());
    wrong.auth_token = Some("not-the-token".into());
    assert!(matches!(
        sim::place_call(wrong, None).await,
        Err(SimError::Forbidden { signed: true, .. })
    ));
    let mut right = CallOptions::new(bridge_url(&signed), short.clone());
    right.auth_token = Some(AUTH_TOKEN.into());
    right.trailing_silence = Duration::ZERO;
    right.wait_for_answer = false;
    let report = sim::place_call(right, None).await.unwrap();
    assert_eq!(report.close_code, Some(1000), "{report}");
    assert_eq!(report.frames_sent, 10, "{report}");

    let open = Bridge::start(&peer, |c| c.twilio.validate_signatures = false).await;
    let mut opts = CallOptions::new(bridge_url(&open), short);
    opts.trailing_silence = Duration::ZERO;
    opts.wait_for_answer = false;
    let report = sim::place_call(opts, None).await.unwrap();
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.close_code, Some(1000), "{report}");
    // Loopback: the caller's own frames come back as answer audio.
    assert!(report.media_received > 0, "{report}");
}

/// A full bridge answers busy, and a closed port is "unreachable": the two
/// failures `callbridge call` must tell apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_unreachable() {
    let peer = echo_peer(EchoMode::Loopback).await;
    let bridge = Bridge::start(&peer, |c| c.max_calls = 1).await;
    let mut first = CallOptions::new(bridge_url(&bridge), vec![sim::SILENCE; 8000 * 3]);
    first.auth_token = Some(AUTH_TOKEN.into());
    first.trailing_silence = Duration::ZERO;
    first.wait_for_answer = false;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let call = tokio::spawn(sim::place_call(first, Some(tx)));
    assert!(matches!(rx.recv().await, Some(Progress::Streaming { .. })));
    // The slot is taken once the upgrade is accepted; give the server a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut second = CallOptions::new(bridge_url(&bridge), vec![sim::SILENCE; 160]);
    second.auth_token = Some(AUTH_TOKEN.into());
    match sim::place_call(second, None).await {
        Err(e @ SimError::Busy(_)) => assert!(e.to_string().contains("busy"), "{e}"),
        other => panic!("expected busy, got {other:?}"),
    }
    let report = call.await.unwrap().unwrap();
    assert!(report.errors.is_empty(), "{report}");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let opts = CallOptions::new(
        Url::parse(&format!("http://{addr}")).unwrap(),
        vec![sim::SILENCE; 160],
    );
    match sim::place_call(opts, None).await {
        Err(e @ SimError::Unreachable { .. }) => {
            assert!(e.to_string().contains("cannot reach"), "{e}")
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

async fn small_loadtest(mode: AudioMode) {
    let peer = echo_peer(EchoMode::Loopback).await;
    let bridge = Bridge::start(&peer, |c| c.audio.mode = mode).await;
    let mut opts = LoadOptions::new(bridge_url(&bridge), 3, Duration::from_secs(3));
    opts.ramp = Duration::from_millis(500);
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.audio = fixture("speech.ulaw");
    // The bridge runs in this process: measure ourselves.
    opts.bridge_pid = Some(std::process::id());
    let report = sim::loadtest::run(opts).await.unwrap();

    assert_eq!(report.calls_failed, 0, "{report}");
    assert_eq!(report.calls_connected, 3, "{report}");
    assert_eq!(report.frames_sent, 3 * 150, "{report}");
    assert!(report.frames_received > 0, "{report}");
    assert_eq!(report.frames_lost, 0, "{report}");
    assert_eq!(
        report.latency_ms.samples, report.frames_received,
        "{report}"
    );
    let p50 = report.latency_ms.p50.expect("no latency recorded");
    let max = report.latency_ms.max.expect("no max");
    assert!(p50 > 0.0 && p50 <= max, "{report}");
    assert!(report.marks_echoed > 0, "{report}");
    assert!(report.bridge_cpu_s.is_some(), "{report}");
    assert!(report.bridge_rss_kib.is_some_and(|r| r > 0), "{report}");
    assert!(report.errors.is_empty(), "{report}");

    // --json: one object with the documented keys.
    let v = serde_json::to_value(&report).unwrap();
    for key in [
        "calls",
        "duration_s",
        "frames_sent",
        "frames_received",
        "frames_lost",
        "frames_late",
        "bridge_cpu_s",
        "bridge_rss_kib",
        "cpu_per_call_second_ms",
        "calls_failed",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    for key in ["p50", "p90", "p99", "max"] {
        assert!(v["latency_ms"][key].is_number(), "latency_ms.{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_loadtest_pcm16() {
    small_loadtest(AudioMode::Pcm16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_loadtest_pcmu() {
    small_loadtest(AudioMode::Pcmu).await;
}

/// Past `max_calls` the bridge turns calls away busy and the report says
/// how many: the admitted calls still relay every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_beyond_max_calls_counts_busy_refusals() {
    let peer = echo_peer(EchoMode::Loopback).await;
    let bridge = Bridge::start(&peer, |c| c.max_calls = 2).await;
    let mut opts = LoadOptions::new(bridge_url(&bridge), 4, Duration::from_secs(2));
    // The first two calls are streaming before the others ring.
    opts.ramp = Duration::from_secs(2);
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.bridge_pid = None;
    let report = sim::loadtest::run(opts).await.unwrap();
    assert_eq!(report.calls_connected, 2, "{report}");
    assert_eq!(report.calls_busy, 2, "{report}");
    assert_eq!(report.calls_failed, 2, "{report}");
    assert_eq!(report.frames_sent, 2 * 100, "{report}");
    assert_eq!(report.frames_lost, 0, "{report}");
    assert!(report.to_string().contains("of which 2 busy"), "{report}");
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["calls_busy"], 2);
}

/// Every call failing (nothing listening) is reported, not hung on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_against_nothing_fails_every_call() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut opts = LoadOptions::new(
        Url::parse(&format!("http://{addr}")).unwrap(),
        2,
        Duration::from_secs(1),
    );
    opts.ramp = Duration::ZERO;
    opts.bridge_pid = None;
    let report = sim::loadtest::run(opts).await.unwrap();
    assert_eq!(report.calls_failed, 2);
    assert_eq!(report.calls_connected, 0);
    assert_eq!(report.frames_sent, 0);
    assert_eq!(report.latency_ms.p50, None);
    assert_eq!(report.errors.values().sum::<u64>(), 2, "{report}");
}
