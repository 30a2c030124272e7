//! A fixed, deterministic load through the real relay, for instruction
//! counts: `scripts/instructions` runs this under callgrind.
//!
//! `relay_cost MODE CALLS SECONDS [--burst]` runs CALLS calls of `call::bridge::run`
//! side by side on one current-thread runtime in paused time (no real
//! sleeping: the clock jumps to the next timer whenever every task waits),
//! each fed SECONDS of caller audio as Twilio sends it (one 20 ms media
//! message every 20 ms) and answered the way `echo-realtime --mode loopback`
//! answers: every append comes straight back as one audio delta of the same
//! audio, inside one long response. The Twilio side echoes every mark at
//! once. With `--burst` the model instead answers each second of caller
//! audio with a second of its own, sent at once in ten 100 ms deltas (as a
//! real model sends faster than real time), which exercises the pacing. So
//! in the default loopback, per call-second the bridge handles what the load test gives it:
//! 50 caller frames in, 50 appends out, 50 deltas in, and the paced media
//! and marks out. Nothing here depends on wall-clock time or thread
//! scheduling, so the instruction count of a run is the same on every run.
//!
//! Only the calls' own tasks are counted when callgrind is told to collect
//! inside `callbridge::call::bridge::run` (what the script does); the
//! harness's side (building caller frames, echoing) is then left out.
//! Channels stand in for sockets: the WebSocket framing and the kernel's
//! socket work are not part of this figure.
//!
//! Prints one `key=value` line per figure; exits non-zero if a call did not
//! relay every frame (so a broken bridge cannot pass for a cheap one).

use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use callbridge::audio::measure::sine;
use callbridge::audio::{g711, AudioMode};
use callbridge::call::bridge::{run, CallParams, CallSummary, Model};
use callbridge::call::tools::NoTools;
use callbridge::call::{WsIn, WsOut};
use callbridge::config::Config;
use callbridge::metrics::Metrics;
use callbridge::upstream::{driver_for, SessionSpec};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, PollSender};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const FRAME: Duration = Duration::from_millis(20);

fn stream_of(rx: mpsc::Receiver<WsIn>) -> impl Stream<Item = WsIn> + Unpin {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }))
}

/// What one call's Twilio side saw.
#[derive(Default)]
struct Seen {
    media: u64,
    media_bytes: u64,
    /// Media messages of less than one 20 ms frame (160 bytes).
    short: u64,
    marks: u64,
    clears: u64,
}

/// The value of `"key":"` … `"` in a message we built ourselves (the
/// harness must not spend its time in a JSON parser).
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    let at = msg.find(key)? + key.len();
    let rest = msg.get(at..)?;
    let end = rest.find('"')?;
    rest.get(..end)
}

/// One call: the bridge, a scripted Twilio side and a loopback model
/// (`burst`: the model's 100 ms delta, base64, when it answers in bursts).
async fn call(
    n: usize,
    mode: AudioMode,
    burst: Option<Arc<String>>,
    frames: usize,
    payload: Arc<String>,
) -> (CallSummary, Seen) {
    let stream_sid = format!("MZ{n:032x}");
    let (tt_tx, tt_rx) = mpsc::channel::<WsIn>(256);
    let (tm_tx, tm_rx) = mpsc::channel::<WsIn>(256);
    let (ft_tx, mut ft_rx) = mpsc::channel::<WsOut>(256);
    let (fm_tx, mut fm_rx) = mpsc::channel::<WsOut>(256);
    let mut config = Config::default();
    config.audio.mode = mode;
    let params = CallParams {
        playout_lead: config.playout_lead(),
        ..CallParams::new(&format!("CA{n:032x}"), &stream_sid, mode)
    };
    let model = Model {
        driver: driver_for(SessionSpec::from_config(&config, Vec::new())),
        tx: PollSender::new(fm_tx),
        rx: stream_of(tm_rx),
        reconnect: None,
        opened_at: None,
    };
    let bridge = tokio::spawn(run(
        params,
        Metrics::new(),
        Arc::new(NoTools),
        PollSender::new(ft_tx),
        stream_of(tt_rx),
        model,
        CancellationToken::new(),
    ));

    // The loopback model: one response, every append echoed as a delta.
    let model_side = tokio::spawn(async move {
        let created = r#"{"type":"response.created","event_id":"e0","response":{"id":"resp_1","object":"realtime.response","status":"in_progress","output":[]}}"#;
        if tm_tx
            .send(WsIn::Text(Bytes::from_static(created.as_bytes())))
            .await
            .is_err()
        {
            return;
        }
        let mut counter = 0u64;
        let mut appends = 0u64;
        while let Some(out) = fm_rx.recv().await {
            let WsOut::Text(msg) = out else { continue };
            let Some(audio) = field(&msg, "\"audio\":\"") else {
                continue;
            };
            appends += 1;
            // Loopback: each append comes back as one delta. Burst: every
            // 50th append (1 s) is answered by 1 s of audio at once, in ten
            // 100 ms deltas, faster than real time as a real model sends.
            let (deltas, audio) = match &burst {
                None => (1, audio),
                Some(answer) if appends % 50 == 0 => (10, answer.as_str()),
                Some(_) => continue,
            };
            for _ in 0..deltas {
                counter += 1;
                let delta = format!(
                    r#"{{"type":"response.output_audio.delta","event_id":"event_{counter:x}","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"{audio}"}}"#
                );
                if tm_tx.send(WsIn::Text(Bytes::from(delta))).await.is_err() {
                    return;
                }
            }
        }
    });

    // Twilio, listening: counts what it is sent and echoes every mark.
    let echo_tx = tt_tx.clone();
    let listener = tokio::spawn(async move {
        let mut seen = Seen::default();
        while let Some(out) = ft_rx.recv().await {
            let WsOut::Text(msg) = out else { continue };
            match field(&msg, "\"event\":\"") {
                Some("media") => {
                    seen.media += 1;
                    if let Some(p) = field(&msg, "\"payload\":\"") {
                        let pad = p.bytes().rev().take_while(|b| *b == b'=').count();
                        let bytes = (p.len() / 4 * 3 - pad) as u64;
                        seen.media_bytes += bytes;
                        seen.short += u64::from(bytes < 160);
                    }
                }
                Some("mark") => {
                    seen.marks += 1;
                    if let Some(name) = field(&msg, "\"name\":\"") {
                        let echo = format!(
                            r#"{{"event":"mark","streamSid":"{}","mark":{{"name":"{name}"}}}}"#,
                            field(&msg, "\"streamSid\":\"").unwrap_or("")
                        );
                        let _ = echo_tx.send(WsIn::Text(Bytes::from(echo))).await;
                    }
                }
                Some("clear") => seen.clears += 1,
                _ => {}
            }
        }
        seen
    });

    // Twilio, speaking: one media message every 20 ms, then `stop`.
    let start = Instant::now();
    for i in 0..frames {
        tokio::time::sleep_until(start + FRAME * i as u32).await;
        let msg = format!(
            r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{payload}"}},"streamSid":"{stream_sid}"}}"#,
            i + 2,
            i + 1,
            i * 20,
        );
        if tt_tx.send(WsIn::Text(Bytes::from(msg))).await.is_err() {
            break;
        }
    }
    // Let the answer to the last frames play out before hanging up.
    tokio::time::sleep_until(start + FRAME * frames as u32 + Duration::from_millis(500)).await;
    let stop = format!(
        r#"{{"event":"stop","sequenceNumber":"{}","streamSid":"{stream_sid}","stop":{{"accountSid":"AC0","callSid":"CA0"}}}}"#,
        frames + 2
    );
    let _ = tt_tx.send(WsIn::Text(Bytes::from(stop))).await;
    drop(tt_tx);
    let summary = match bridge.await {
        Ok(s) => s,
        Err(_) => CallSummary::empty(callbridge::metrics::Outcome::ProtocolError, "panicked"),
    };
    let _ = model_side.await;
    let seen = listener.await.unwrap_or_default();
    (summary, seen)
}

fn main() -> ExitCode {
    let burst = std::env::args().any(|a| a == "--burst");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mode = match args.first().map(String::as_str) {
        Some("pcmu") => AudioMode::Pcmu,
        Some("pcm16") | None => AudioMode::Pcm16,
        Some(other) => {
            eprintln!("unknown mode {other:?}: pcm16 or pcmu");
            return ExitCode::from(2);
        }
    };
    let calls: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let seconds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let frames = seconds * 50;

    // The caller says a 440 Hz tone: μ-law of a real signal, not silence.
    let mut ulaw = Vec::new();
    g711::encode_into(&sine(440.0, 8000, 9000.0, 160), &mut ulaw);
    let payload = Arc::new(B64.encode(&ulaw));
    // 100 ms of the model's output format (a whole number of base64 groups).
    let answer = match mode {
        AudioMode::Pcm16 => sine(440.0, 24_000, 9000.0, 2400)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
        AudioMode::Pcmu => ulaw.repeat(5),
    };
    let burst = burst.then(|| Arc::new(B64.encode(&answer)));

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = rt.block_on(async {
        let handles: Vec<_> = (0..calls)
            .map(|n| tokio::spawn(call(n, mode, burst.clone(), frames, payload.clone())))
            .collect();
        let mut results = Vec::new();
        for h in handles {
            if let Ok(r) = h.await {
                results.push(r);
            }
        }
        results
    });

    let mut ok = results.len() == calls;
    let (mut frames_in, mut media, mut media_bytes, mut short, mut marks, mut clears) =
        (0, 0, 0, 0, 0, 0);
    for (summary, seen) in &results {
        ok &= summary.frames_in == frames as u64;
        frames_in += summary.frames_in;
        media += seen.media;
        media_bytes += seen.media_bytes;
        short += seen.short;
        marks += seen.marks;
        clears += seen.clears;
    }
    let mode_name = match mode {
        AudioMode::Pcm16 => "pcm16",
        AudioMode::Pcmu => "pcmu",
    };
    let model = if burst.is_some() { "burst" } else { "loopback" };
    println!("mode={mode_name} model={model} calls={calls} seconds={seconds}");
    println!("frames_in={frames_in} media_out={media} media_bytes_out={media_bytes} short_media_out={short} marks_out={marks} clears={clears}");
    let frames_out = results.iter().map(|(s, _)| s.frames_out).sum::<u64>();
    println!("frames_out={frames_out}");
    if !ok {
        eprintln!("a call did not relay every caller frame");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
