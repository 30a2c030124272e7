//! Faults on the model's socket, injected by a TCP proxy between the real
//! server and the fake Realtime server: added delay, a stall, a reset, a
//! close in the middle of a frame, slow reads. For each: the faulted call
//! survives as the reconnect policy says (a new session told the
//! conversation so far), a second call in the same server keeps hearing
//! every byte of its answers, in order, while the first is faulted, and the
//! process's memory stays bounded.
//!
//! Small ping and reconnect settings keep each scenario to about 5 s.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use callbridge::audio::AudioMode;
use callbridge::metrics::Outcome;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::fake_live::{self, FakeLive};
use support::fake_realtime::{answer_audio_ulaw, FakeRealtime, Script};
use support::fake_twilio::{run_caller, CallerLog, CallerScript};
use support::fault_proxy::{rss_bytes, Fault, FaultProxy};
use support::{wait_until, Bridge};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Each answer of the fake model, in ms of audio.
const ANSWER_MS: u32 = 400;
/// A call's length, as the simulated caller plays it.
const CALL: Duration = Duration::from_millis(5000);
/// When the faulted call (A) speaks: once before the fault, once after.
const A_TURNS_MS: [u64; 2] = [0, 3200];
/// When the healthy call (B) speaks: its answers span A's fault.
const B_TURNS_MS: [u64; 3] = [0, 1600, 3200];
/// How much more memory the whole test process may hold while a model
/// socket is stalled or read slowly (nothing may grow with the backlog).
const RSS_GROWTH_BOUND: u64 = 32 << 20;

fn call_sid(n: u32) -> String {
    format!("CA{n:032x}")
}

/// μ-law audio of `total_ms`: speech (a loud tone the fake's VAD hears)
/// for 300 ms from each of `turns_ms`, silence elsewhere.
fn speech_at(turns_ms: &[u64], total_ms: u64) -> Vec<u8> {
    let mut audio = vec![0xFFu8; total_ms as usize * 8];
    let turn = answer_audio_ulaw(300);
    for &at in turns_ms {
        let start = at as usize * 8;
        audio[start..start + turn.len()].copy_from_slice(&turn);
    }
    audio
}

/// What one scenario left behind, for its assertions.
struct Run {
    fake: FakeRealtime,
    proxy: FaultProxy,
    bridge: Bridge,
    /// The faulted call and the healthy one, as their callers heard them.
    a: CallerLog,
    b: CallerLog,
    /// When the fault was set.
    fault_at: Instant,
    /// When the faulted call had a new model session (None: never).
    recovered_at: Option<Instant>,
    /// Resident memory just before the fault, and the most seen after it.
    rss_before: u64,
    rss_peak: u64,
}

/// Two calls through the proxy; `fault` is set on the first call's model
/// socket once its first turn was answered; `recovered` says when the call
/// should be found on a new session.
async fn run(fault: impl FnOnce(&FaultProxy) -> Fault, expect_reconnect: bool) -> Run {
    let fake = FakeRealtime::start(Script {
        answer_ms: ANSWER_MS,
        ..Script::default()
    })
    .await;
    let proxy = FaultProxy::start(fake.addr).await;
    let bridge = Bridge::start(&proxy.url("/v1/realtime?model=gpt-realtime"), |c| {
        // μ-law end to end: the caller hears the model's bytes unchanged,
        // so a lost or reordered frame shows as a byte mismatch.
        c.audio.mode = AudioMode::Pcmu;
        c.realtime.ping_interval_ms = 1000;
        c.realtime.pong_timeout_ms = 700;
        c.realtime.reconnect_budget_ms = 3000;
    })
    .await;

    let (sid_a, sid_b) = (call_sid(1), call_sid(2));
    let (ws, token) = bridge.connect(&sid_a).await;
    let script = CallerScript::new(&sid_a, &token, speech_at(&A_TURNS_MS, 3600), CALL);
    let a = tokio::spawn(run_caller(ws, script));
    wait_until("A's model session", || {
        fake.record.lock().unwrap().sessions == 1
    })
    .await;
    let (ws, token) = bridge.connect(&sid_b).await;
    let script = CallerScript::new(&sid_b, &token, speech_at(&B_TURNS_MS, 3600), CALL);
    let b = tokio::spawn(run_caller(ws, script));
    wait_until("B's model session", || {
        fake.record.lock().unwrap().sessions == 2
    })
    .await;
    assert_eq!(proxy.connections(), 2, "connection 0 is A's, 1 is B's");

    // A's first turn is answered (its transcript is on the way to the
    // bridge and the answer's deltas are sent in ~100 ms): then the fault.
    wait_until("A's first answer", || {
        fake.record.lock().unwrap().session_answers[0] >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes().unwrap_or(0);
    let fault = fault(&proxy);
    proxy.set(0, fault);
    let fault_at = Instant::now();

    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            while sampling.load(Ordering::SeqCst) {
                if let Some(rss) = rss_bytes() {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut recovered_at = None;
    if expect_reconnect {
        wait_until("A's new model session", || {
            fake.record.lock().unwrap().sessions == 3
        })
        .await;
        recovered_at = Some(Instant::now());
    }
    let a = a.await.unwrap();
    let b = b.await.unwrap();
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;
    wait_until("both calls counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 2
    })
    .await;
    Run {
        fake,
        proxy,
        bridge,
        a,
        b,
        fault_at,
        recovered_at,
        rss_before,
        rss_peak: peak.load(Ordering::SeqCst),
    }
}

fn media_payloads(log: &CallerLog) -> Vec<(Instant, Vec<u8>)> {
    log.received
        .iter()
        .filter(|(_, v)| v["event"] == "media")
        .map(|(at, v)| {
            let b64 = v["media"]["payload"].as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            (*at, bytes)
        })
        .collect()
}

/// The healthy call heard every byte of every answer, in order, with no
/// `clear`, and Twilio acknowledged its marks in the order sent: nothing of
/// it was lost or held up for good while the other call was faulted.
fn assert_heard_without_gaps(b: &CallerLog, label: &str) {
    let frames = media_payloads(b);
    let audio: Vec<u8> = frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let answer = answer_audio_ulaw(ANSWER_MS);
    let whole = audio.len() / answer.len();
    assert!(
        whole >= 2,
        "{label}: B heard {} ms of answers",
        audio.len() / 8
    );
    for (i, heard) in audio.chunks(answer.len()).enumerate() {
        assert!(
            heard == &answer[..heard.len()],
            "{label}: B's answer {i} has a gap or stray bytes"
        );
    }
    assert!(b.clears.is_empty(), "{label}: B was never interrupted");
    let sent: Vec<&str> = b
        .received
        .iter()
        .filter(|(_, v)| v["event"] == "mark")
        .filter_map(|(_, v)| v["mark"]["name"].as_str())
        .collect();
    assert!(
        sent.starts_with(
            &b.marks_echoed
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        "{label}: marks echoed out of order"
    );
    assert!(
        b.marks_echoed.len() >= whole * (ANSWER_MS as usize / 100),
        "{label}: B's answers were played to their last mark"
    );
    assert_eq!(b.close_code, Some(1000), "{label}: B ended by its caller");
    assert!(b.closed_at.is_none(), "{label}: the bridge never closed B");
    // A figure for the report, not a pass mark: the longest wait between
    // two media frames inside one answer.
    let gap = frames
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0))
        .filter(|d| *d < Duration::from_millis(600))
        .max()
        .unwrap_or_default();
    eprintln!("{label}: B's longest wait between frames within an answer: {gap:?}");
}

/// The faulted call went on: the caller never saw the bridge close, and an
/// answer was heard after `since`.
fn assert_call_went_on(a: &CallerLog, since: Instant, label: &str) {
    assert_eq!(a.close_code, Some(1000), "{label}: A ended by its caller");
    assert!(a.closed_at.is_none(), "{label}: the bridge never closed A");
    let after = a.media_between(since, Instant::now());
    assert!(after > 0, "{label}: A heard no answer after the fault");
}

/// The new session was configured, then told the conversation so far: the
/// caller's first turn and the model's answer, before any audio.
fn assert_replayed(run: &Run, label: &str) {
    let record = run.fake.record.lock().unwrap();
    let events = &record.session_events[2];
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        &types[..3],
        [
            "session.update",
            "conversation.item.create",
            "conversation.item.create"
        ],
        "{label}"
    );
    let said = |e: &Value| e["item"]["content"][0]["text"].as_str().map(str::to_owned);
    assert_eq!(events[1]["item"]["role"], "user", "{label}");
    assert_eq!(said(&events[1]).as_deref(), Some("hello there"), "{label}");
    assert_eq!(events[2]["item"]["role"], "assistant", "{label}");
    assert_eq!(said(&events[2]).as_deref(), Some("Hello"), "{label}");
    assert!(
        types[3..].contains(&"input_audio_buffer.append"),
        "{label}: the caller's audio goes to the new session"
    );
}

fn assert_memory_bounded(run: &Run, label: &str) {
    let growth = run.rss_peak.saturating_sub(run.rss_before);
    eprintln!(
        "{label}: RSS {} KiB before the fault, peak {} KiB after (+{} KiB)",
        run.rss_before >> 10,
        run.rss_peak >> 10,
        growth >> 10
    );
    assert!(run.rss_before > 0, "no /proc/self/status");
    assert!(
        growth < RSS_GROWTH_BOUND,
        "{label}: memory grew by {growth} bytes"
    );
}

/// Added latency is not a fault: pings are answered within the timeout,
/// no reconnect, and answers still arrive.
#[tokio::test]
async fn added_delay_slows_the_model_but_keeps_the_session() {
    let run = run(|_| Fault::Delay(Duration::from_millis(150)), false).await;
    assert_eq!(run.bridge.metrics.reconnects("ok"), 0);
    assert_eq!(run.bridge.metrics.errors("model_ping_timeout"), 0);
    assert_eq!(run.proxy.connections(), 2, "no new model socket");
    assert_eq!(run.fake.record.lock().unwrap().sessions, 2);
    // The delayed socket still carried the second turn both ways.
    assert_eq!(run.fake.record.lock().unwrap().session_answers[0], 2);
    assert_call_went_on(&run.a, run.fault_at, "delay");
    assert_heard_without_gaps(&run.b, "delay");
}

/// A socket that carries nothing either way but stays open (no FIN, no
/// RST) is found by the ping: reconnected, and the call keeps talking with
/// its context.
#[tokio::test]
async fn a_stalled_model_socket_is_found_by_ping_and_reconnected_with_context() {
    let run = run(|_| Fault::Stall, true).await;
    assert_eq!(run.bridge.metrics.errors("model_ping_timeout"), 1);
    assert_eq!(run.bridge.metrics.reconnects("ok"), 1);
    assert_eq!(run.bridge.metrics.reconnects("failed"), 0);
    assert_eq!(run.proxy.connections(), 3, "one new socket, for A only");
    // Found by the first ping after the stall: within interval + timeout.
    let found = run.recovered_at.unwrap().duration_since(run.fault_at);
    eprintln!("stall: new session {found:?} after the stall began");
    assert_replayed(&run, "stall");
    assert_call_went_on(&run.a, run.recovered_at.unwrap(), "stall");
    assert_heard_without_gaps(&run.b, "stall");
    assert_memory_bounded(&run, "stall");
}

/// An RST is noticed at once (the read fails): reconnected, no ping needed.
#[tokio::test]
async fn a_reset_model_socket_is_reconnected() {
    let run = run(|_| Fault::Reset, true).await;
    assert_eq!(run.bridge.metrics.reconnects("ok"), 1);
    assert_eq!(run.bridge.metrics.errors("model_ping_timeout"), 0);
    assert_eq!(run.proxy.connections(), 3);
    assert_replayed(&run, "reset");
    assert_call_went_on(&run.a, run.recovered_at.unwrap(), "reset");
    assert_heard_without_gaps(&run.b, "reset");
}

/// A clean close in the middle of a frame (the bridge reads a torn frame,
/// then the end of the stream): reconnected.
#[tokio::test]
async fn a_model_socket_closed_mid_frame_is_reconnected() {
    // A few bytes on: inside the next audio append (each is ~300 bytes).
    let run = run(
        |proxy| Fault::CloseMidStream {
            after_bytes: proxy.bytes_through(0) + 7,
        },
        true,
    )
    .await;
    assert_eq!(run.bridge.metrics.reconnects("ok"), 1);
    assert_eq!(run.bridge.metrics.errors("model_ping_timeout"), 0);
    assert_eq!(run.proxy.connections(), 3);
    assert_replayed(&run, "close");
    assert_call_went_on(&run.a, run.recovered_at.unwrap(), "close");
    assert_heard_without_gaps(&run.b, "close");
}

/// A model that reads slower than the caller talks: the bridge's writes
/// back up in the kernel, its ping waits behind them and goes unanswered,
/// and the socket is replaced; nothing in the process grows with the
/// backlog.
#[tokio::test]
async fn a_model_that_reads_slowly_is_replaced_and_memory_stays_bounded() {
    let run = run(
        |_| Fault::SlowReads {
            bytes_per_sec: 2000,
        },
        true,
    )
    .await;
    assert_eq!(run.bridge.metrics.reconnects("ok"), 1);
    // Policy: found by the ping, or by a write that stalled for 5 s.
    let ping = run.bridge.metrics.errors("model_ping_timeout");
    let write = run.bridge.metrics.errors("model_write_timeout");
    assert_eq!(ping + write, 1, "ping {ping}, write {write}");
    eprintln!("slow reads: found by the ping {ping}, by a write timeout {write}");
    assert_eq!(run.proxy.connections(), 3);
    // The slow socket took less than the bridge had for it.
    let up = run.proxy.stats(0).bytes_up.load(Ordering::SeqCst);
    let healthy = run.proxy.stats(1).bytes_up.load(Ordering::SeqCst);
    assert!(up < healthy, "slow {up} bytes vs healthy {healthy}");
    assert_replayed(&run, "slow reads");
    assert_call_went_on(&run.a, run.recovered_at.unwrap(), "slow reads");
    assert_heard_without_gaps(&run.b, "slow reads");
    assert_memory_bounded(&run, "slow reads");
}

/// The bridge's ping is only useful if the peer answers it: tungstenite
/// does so by itself in both fakes (as the real services do, RFC 6455
/// §5.5.2), while they read.
#[tokio::test]
async fn the_fake_models_answer_pings() {
    let realtime = FakeRealtime::start(Script::default()).await;
    let live = FakeLive::start(fake_live::Script::default()).await;
    for url in [realtime.url(), live.url()] {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Pong(payload) = m {
                    return Some(payload);
                }
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(pong.as_deref(), Some(&b"are you there"[..]), "{url}");
    }
}
