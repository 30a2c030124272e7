//! `callbridge loadtest`: many simulated calls at once, measuring what the
//! bridge adds to every 20 ms frame.
//!
//! Meant to run against `callbridge serve` whose Realtime peer is
//! `callbridge echo-realtime --mode loopback`, which answers every appended
//! frame at once with the same audio. The bridge neither merges nor splits
//! audio in time (its resamplers turn 160 bytes into exactly 160 bytes), so
//! the k-th 160 bytes that come back belong to the k-th frame sent, whatever
//! sizes the bridge's pacer batches them into. Stamping each frame when it
//! is sent then gives a per-frame round trip: Twilio → bridge → model →
//! bridge → Twilio, which is the bridge's relay latency twice plus two
//! loopback hops.
//!
//! Each call is a lean version of [`crate::caller`]: the same opening (signed
//! webhook, TwiML, signed upgrade, `connected`, `start`) and the same Twilio
//! playout and mark echoing, but it keeps counts instead of audio, so
//! thousands of calls fit in a small process. Calls start evenly over the
//! ramp, each sends for the full duration, and frames not back within a
//! grace period after its last frame count as lost.
//!
//! While the calls run, the bridge process's CPU time and resident memory
//! are read from `/proc` (Linux), to give CPU per call-second and memory per
//! call: the figures capacity planning needs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use crate::playback::Playback;
use crate::stream::{self, Transport, Ws};
use crate::{SimError, FRAME, FRAME_BYTES, SILENCE};
use callbridge::twilio::messages::{self, Outbound};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Most calls one run may open: past this the load generator itself, not
/// the bridge, is what gets measured (and file descriptors run out).
pub const MAX_CALLS: u32 = 5000;
/// Longest run: one hour, the Realtime API's own session limit.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// A frame back later than this is "late": a caller would hear a glitch.
pub const LATE: Duration = Duration::from_millis(100);
/// How long to wait for the bridge's close after `stop`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Latencies are buffered per call and merged into the shared histogram in
/// batches, so calls do not contend on its lock 50 times a second each.
const FLUSH_EVERY: usize = 64;
/// Largest latency the histogram tracks exactly (a minute, in µs); larger
/// values are clamped to it.
const HIST_MAX_US: u64 = 60_000_000;
/// How often the bridge's memory is sampled.
const RSS_EVERY: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The bridge's base URL, `http://host:port` or `https://host[:port]`.
    pub bridge: Url,
    /// Trusted roots for `https`/`wss`, and `--resolve` overrides.
    pub transport: Transport,
    /// Concurrent calls (1 ..= [`MAX_CALLS`]).
    pub calls: u32,
    /// How long each call sends audio (≤ [`MAX_DURATION`]).
    pub duration: Duration,
    /// Calls start evenly over this; clamped to `duration`, so that every
    /// call is live at once between the end of the ramp and the end of the
    /// first call.
    pub ramp: Duration,
    /// Signs webhooks and upgrades like Twilio; `None` for bridges with
    /// signature checks off.
    pub auth_token: Option<String>,
    /// Caller audio (μ-law 8 kHz), looped; empty sends a tone pattern.
    pub audio: Vec<u8>,
    /// How long after its last frame a call waits for audio still owed.
    pub grace: Duration,
    /// The bridge's process, for CPU and memory; `None` looks for the
    /// process listening on the port the bridge URL connects to (after
    /// `--resolve`).
    pub bridge_pid: Option<u32>,
    /// Bound on each set-up step and each send.
    pub timeout: Duration,
}

impl LoadOptions {
    /// 5 s ramp, 1 s grace, 10 s timeouts, no token, built-in audio.
    pub fn new(bridge: Url, calls: u32, duration: Duration) -> Self {
        LoadOptions {
            bridge,
            transport: Transport::default(),
            calls,
            duration,
            ramp: Duration::from_secs(5),
            auth_token: None,
            audio: Vec::new(),
            grace: Duration::from_secs(1),
            bridge_pid: None,
            timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), SimError> {
        if self.calls == 0 || self.calls > MAX_CALLS {
            return Err(SimError::Options(format!(
                "--calls must be between 1 and {MAX_CALLS} (got {})",
                self.calls
            )));
        }
        if self.duration < FRAME || self.duration > MAX_DURATION {
            return Err(SimError::Options(format!(
                "--duration must be between 0.02 and {} seconds (got {:?})",
                MAX_DURATION.as_secs(),
                self.duration
            )));
        }
        if self.grace > Duration::from_secs(60) || self.timeout.is_zero() {
            return Err(SimError::Options(
                "grace must be at most 60 s and timeout positive".into(),
            ));
        }
        stream::voice_url(&self.bridge).map(|_| ())
    }
}

/// Latency percentiles, in milliseconds; `None` when nothing came back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub samples: u64,
}

/// The result of a run; `--json` prints it as one object.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    pub calls: u32,
    /// Calls whose stream opened.
    pub calls_connected: u32,
    /// Calls that could not be set up, or that the bridge ended early.
    /// Busy refusals are counted here and in `calls_busy`.
    pub calls_failed: u32,
    /// Calls the bridge turned away busy (`<Reject reason="busy">` or 503):
    /// what a bridge at `max_calls` must do with the calls beyond it.
    pub calls_busy: u32,
    pub duration_s: f64,
    pub ramp_s: f64,
    /// The whole run, ramp and grace included.
    pub wall_s: f64,
    pub frames_sent: u64,
    /// Frames whose audio came back.
    pub frames_received: u64,
    /// Frames sent whose audio never came back (within the grace period).
    pub frames_lost: u64,
    /// Frames back later than [`LATE`].
    pub frames_late: u64,
    pub late_threshold_ms: f64,
    /// Per-frame round trip: sent → its audio back.
    pub latency_ms: Latency,
    pub marks_echoed: u64,
    pub bridge_pid: Option<u32>,
    /// Bridge CPU (user + system) during the run.
    pub bridge_cpu_s: Option<f64>,
    /// Peak bridge RSS during the run, and before the first call.
    pub bridge_rss_kib: Option<u64>,
    pub bridge_rss_start_kib: Option<u64>,
    /// Bridge CPU per second of call audio relayed.
    pub cpu_per_call_second_ms: Option<f64>,
    /// Peak RSS growth per connected call.
    pub rss_per_call_kib: Option<f64>,
    /// This process's own CPU, to judge whether the generator kept up.
    pub loadgen_cpu_s: Option<f64>,
    /// Failures and protocol errors, by message, with counts.
    pub errors: BTreeMap<String, u64>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>, unit: &str| {
            v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}{unit}"))
        };
        let l = &self.latency_ms;
        writeln!(
            f,
            "calls      {} ({} connected, {} failed of which {} busy), {:.0} s each, ramp {:.1} s, wall {:.1} s",
            self.calls,
            self.calls_connected,
            self.calls_failed,
            self.calls_busy,
            self.duration_s,
            self.ramp_s,
            self.wall_s
        )?;
        writeln!(
            f,
            "frames     {} sent, {} back, {} lost, {} late (> {} ms); {} marks echoed",
            self.frames_sent,
            self.frames_received,
            self.frames_lost,
            self.frames_late,
            self.late_threshold_ms,
            self.marks_echoed
        )?;
        writeln!(
            f,
            "latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            opt(l.p50, " ms"),
            opt(l.p90, " ms"),
            opt(l.p99, " ms"),
            opt(l.p999, " ms"),
            opt(l.max, " ms"),
            l.samples
        )?;
        writeln!(
            f,
            "bridge     pid {}  cpu {}  rss peak {} KiB (start {} KiB)",
            self.bridge_pid
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            opt(self.bridge_cpu_s, " s"),
            self.bridge_rss_kib
                .map_or_else(|| "n/a".to_owned(), |v| v.to_string()),
            self.bridge_rss_start_kib
                .map_or_else(|| "n/a".to_owned(), |v| v.to_string()),
        )?;
        writeln!(
            f,
            "per call   {} CPU per call-second, {} KiB RSS; load generator cpu {}",
            opt(self.cpu_per_call_second_ms, " ms"),
            self.rss_per_call_kib
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}")),
            opt(self.loadgen_cpu_s, " s"),
        )?;
        if self.errors.is_empty() {
            write!(f, "errors     none")
        } else {
            write!(f, "errors")?;
            for (e, n) in &self.errors {
                write!(f, "\n  {n:>6} × {e}")?;
            }
            Ok(())
        }
    }
}

/// What one call saw.
#[derive(Debug, Default)]
struct CallStats {
    connected: bool,
    failed: bool,
    busy: bool,
    frames_sent: u64,
    frames_received: u64,
    frames_late: u64,
    marks_echoed: u64,
    errors: Vec<String>,
}

/// Shared, read-only inputs of every call.
struct Shared {
    opts: LoadOptions,
    /// The audio, cut into frames and base64-encoded once for all calls.
    frames_b64: Vec<String>,
    histogram: Mutex<Histogram<u64>>,
}

/// Runs the load test to the end (it stops by itself) and reports.
pub async fn run(opts: LoadOptions) -> Result<LoadReport, SimError> {
    opts.validate()?;
    let mut opts = opts;
    opts.ramp = opts.ramp.min(opts.duration);
    let histogram = Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3)
        .map_err(|e| SimError::Options(format!("histogram: {e}")))?;
    let frames_b64 = encode_frames(&opts.audio);
    let bridge_pid = opts.bridge_pid.or_else(|| {
        opts.transport
            .target_port(&opts.bridge)
            .and_then(proc::find_listener)
    });
    let shared = Arc::new(Shared {
        frames_b64,
        histogram: Mutex::new(histogram),
        opts,
    });
    let opts = &shared.opts;

    let clk_tck = proc::clock_ticks_per_second();
    let cpu_before = bridge_pid.and_then(|p| proc::cpu_seconds(p, clk_tck));
    let rss_start = bridge_pid.and_then(proc::rss_kib);
    let self_cpu_before = proc::cpu_seconds_self(clk_tck);
    let mut rss_peak = rss_start;
    let started = Instant::now();

    let mut set = JoinSet::new();
    for i in 0..opts.calls {
        let offset = opts.ramp.mul_f64(f64::from(i) / f64::from(opts.calls));
        let shared = shared.clone();
        set.spawn(one_call(shared, started + offset));
    }
    // Every call is bounded by its own timeouts; this is the backstop.
    let limit = opts.ramp + opts.duration + opts.grace + opts.timeout * 4 + CLOSE_WAIT * 2;
    let backstop = tokio::time::sleep(limit);
    tokio::pin!(backstop);
    let mut rss_tick = tokio::time::interval(RSS_EVERY);
    rss_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut all = Vec::with_capacity(opts.calls as usize);
    let mut aborted = 0u32;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(stats)) => all.push(stats),
                Some(Err(e)) => all.push(CallStats {
                    failed: true,
                    errors: vec![format!("call task failed: {e}")],
                    ..CallStats::default()
                }),
            },
            _ = rss_tick.tick() => {
                if let Some(rss) = bridge_pid.and_then(proc::rss_kib) {
                    rss_peak = Some(rss_peak.map_or(rss, |p| p.max(rss)));
                }
            }
            _ = &mut backstop => {
                aborted = u32::try_from(set.len()).unwrap_or(u32::MAX);
                set.abort_all();
                while set.join_next().await.is_some() {}
                break;
            }
        }
    }
    let wall = started.elapsed();
    let cpu_after = bridge_pid.and_then(|p| proc::cpu_seconds(p, clk_tck));
    let self_cpu_after = proc::cpu_seconds_self(clk_tck);

    let mut report = LoadReport {
        calls: opts.calls,
        duration_s: opts.duration.as_secs_f64(),
        ramp_s: opts.ramp.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        late_threshold_ms: LATE.as_secs_f64() * 1000.0,
        bridge_pid,
        bridge_rss_kib: rss_peak,
        bridge_rss_start_kib: rss_start,
        calls_failed: aborted,
        ..LoadReport::default()
    };
    if aborted > 0 {
        report.errors.insert(
            "calls still running at the run's time limit".into(),
            u64::from(aborted),
        );
    }
    for stats in &all {
        report.calls_connected += u32::from(stats.connected);
        report.calls_failed += u32::from(stats.failed);
        report.calls_busy += u32::from(stats.busy);
        report.frames_sent += stats.frames_sent;
        report.frames_received += stats.frames_received;
        report.frames_late += stats.frames_late;
        report.marks_echoed += stats.marks_echoed;
        for e in &stats.errors {
            *report.errors.entry(e.clone()).or_insert(0) += 1;
        }
    }
    report.frames_lost = report.frames_sent.saturating_sub(report.frames_received);
    {
        let h = shared
            .histogram
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ms = |us: u64| us as f64 / 1000.0;
        report.latency_ms = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: Some(ms(h.value_at_quantile(0.5))),
                p90: Some(ms(h.value_at_quantile(0.9))),
                p99: Some(ms(h.value_at_quantile(0.99))),
                p999: Some(ms(h.value_at_quantile(0.999))),
                max: Some(ms(h.max())),
                mean: Some(h.mean() / 1000.0),
                samples: h.len(),
            }
        };
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        let cpu = (b - a).max(0.0);
        report.bridge_cpu_s = Some(cpu);
        let call_seconds = report.frames_sent as f64 * FRAME.as_secs_f64();
        if call_seconds > 0.0 {
            report.cpu_per_call_second_ms = Some(cpu * 1000.0 / call_seconds);
        }
    }
    if let (Some(peak), Some(start)) = (rss_peak, rss_start) {
        if report.calls_connected > 0 {
            report.rss_per_call_kib =
                Some(peak.saturating_sub(start) as f64 / f64::from(report.calls_connected));
        }
    }
    if let (Some(a), Some(b)) = (self_cpu_before, self_cpu_after) {
        report.loadgen_cpu_s = Some((b - a).max(0.0));
    }
    Ok(report)
}

/// The caller audio as base64 frames; a 400 Hz tone, 1 s on and 1 s off,
/// when none is given (the loopback peer does not care what it echoes, a
/// turn-taking one gets turns).
fn encode_frames(audio: &[u8]) -> Vec<String> {
    let owned;
    let audio = if audio.is_empty() {
        let tone = callbridge::audio::measure::sine(400.0, 8000, 6000.0, 8000);
        let mut codes = Vec::with_capacity(16_000);
        callbridge::audio::g711::encode_into(&tone, &mut codes);
        codes.resize(16_000, SILENCE);
        owned = codes;
        &owned[..]
    } else {
        audio
    };
    audio
        .chunks(FRAME_BYTES)
        .map(|chunk| {
            let mut frame = [SILENCE; FRAME_BYTES];
            frame[..chunk.len()].copy_from_slice(chunk);
            B64.encode(frame)
        })
        .collect()
}

/// Bytes a base64 payload decodes to, without decoding it: the generator
/// shares the machine with the bridge, and only the count matters here.
fn decoded_len(b64: &str) -> Option<usize> {
    let bytes = b64.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let pad = bytes.iter().rev().take(2).filter(|&&b| b == b'=').count();
    Some(bytes.len() / 4 * 3 - pad)
}

async fn one_call(shared: Arc<Shared>, start_at: Instant) -> CallStats {
    tokio::time::sleep_until(start_at).await;
    let opts = &shared.opts;
    let mut stats = CallStats::default();
    let sids = match stream::Sids::new(None) {
        Ok(s) => s,
        Err(e) => {
            stats.failed = true;
            stats.errors.push(e.to_string());
            return stats;
        }
    };
    let opened = match stream::dial(
        &opts.bridge,
        &opts.transport,
        opts.auth_token.as_deref(),
        sids,
        opts.timeout,
        Duration::ZERO,
        4 << 10,
    )
    .await
    {
        Ok(o) => o,
        Err(e) => {
            stats.failed = true;
            stats.busy = matches!(e, SimError::Busy(_));
            stats.errors.push(e.to_string());
            return stats;
        }
    };
    stats.connected = true;
    let mut call = LeanCall {
        shared: &shared,
        stream_sid: opened.sids.stream.clone(),
        seq: opened.next_seq,
        playback: Playback::new(false),
        due: Vec::new(),
        sent_at: VecDeque::with_capacity(64),
        partial: 0,
        latencies: Vec::with_capacity(FLUSH_EVERY),
        outbox: Vec::with_capacity(4),
        stats,
    };
    let ended_early = call.run(opened.ws, &opened.sids).await;
    call.flush_latencies();
    let mut stats = call.stats;
    if ended_early {
        stats.failed = true;
    }
    stats
}

struct LeanCall<'a> {
    shared: &'a Shared,
    stream_sid: String,
    seq: u64,
    playback: Playback,
    due: Vec<String>,
    /// Send times of frames whose audio has not come back yet, oldest first.
    sent_at: VecDeque<Instant>,
    /// Bytes received towards the next 160-byte unit.
    partial: usize,
    latencies: Vec<u64>,
    outbox: Vec<String>,
    stats: CallStats,
}

impl LeanCall<'_> {
    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    fn error(&mut self, e: String) {
        if self.stats.errors.len() < 8 && !self.stats.errors.contains(&e) {
            self.stats.errors.push(e);
        }
    }

    fn flush_latencies(&mut self) {
        if self.latencies.is_empty() {
            return;
        }
        let mut h = self
            .shared
            .histogram
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &us in &self.latencies {
            h.saturating_record(us.clamp(1, HIST_MAX_US));
        }
        drop(h);
        self.latencies.clear();
    }

    fn echo_due(&mut self) {
        let due = std::mem::take(&mut self.due);
        for name in &due {
            let mut text = String::with_capacity(96 + name.len());
            let seq = self.next_seq();
            messages::write_inbound_mark(&mut text, &self.stream_sid, seq, name);
            self.outbox.push(text);
            self.stats.marks_echoed += 1;
        }
        self.due = due;
        self.due.clear();
    }

    /// Runs the call; true if it ended before its time (the bridge closed
    /// or the socket broke).
    async fn run(&mut self, ws: Ws, sids: &stream::Sids) -> bool {
        let shared = self.shared;
        let opts = &shared.opts;
        let frames_total = (opts.duration.as_millis() / FRAME.as_millis()) as u64;
        let (mut tx, mut rx) = ws.split();
        let begin = Instant::now();
        let mut ticker = tokio::time::interval_at(begin, FRAME);
        // Burst, as in the caller: a stalled generator sends late rather
        // than skipping audio, so every frame is still accounted for.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut tick: u64 = 0;
        let mut last_sent_at: Option<Instant> = None;
        let mut ended_early = false;
        loop {
            let mut done = false;
            tokio::select! {
                biased;
                _ = ticker.tick() => {
                    let now = Instant::now();
                    self.playback.play(FRAME_BYTES, None, &mut self.due);
                    self.echo_due();
                    if tick < frames_total {
                        let frames = &shared.frames_b64;
                        let payload = &frames[(tick as usize) % frames.len()];
                        let mut text = String::with_capacity(payload.len() + 160);
                        let seq = self.next_seq();
                        messages::write_inbound_media(
                            &mut text, &self.stream_sid, seq, tick + 1, tick * 20, payload,
                        );
                        self.outbox.push(text);
                        self.sent_at.push_back(now);
                        self.stats.frames_sent += 1;
                        last_sent_at = Some(now);
                    } else {
                        let all_back = self.sent_at.is_empty();
                        let grace_over = last_sent_at
                            .is_none_or(|t| now.duration_since(t) >= opts.grace);
                        if grace_over || (all_back && self.playback.pending_marks() == 0) {
                            done = true;
                        }
                    }
                    tick += 1;
                }
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        // 1013 "try again later": admitted at /voice, refused
                        // at `start` because the bridge filled up meanwhile.
                        self.stats.busy = frame.as_ref().is_some_and(|f| u16::from(f.code) == 1013);
                        let code = frame.map_or_else(|| "none".to_owned(), |f| u16::from(f.code).to_string());
                        self.error(format!("the bridge closed the stream early (code {code})"));
                        ended_early = true;
                        done = true;
                    }
                    Some(Ok(Message::Binary(_))) => self.error("binary frame from the bridge".into()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        self.error(format!("the stream broke: {e}"));
                        ended_early = true;
                        done = true;
                    }
                    None => {
                        self.error("the bridge dropped the connection".into());
                        ended_early = true;
                        done = true;
                    }
                },
            }
            if let Err(e) = stream::send_batch(&mut tx, &mut self.outbox, opts.timeout).await {
                self.error(e.to_string());
                ended_early = true;
                done = true;
            }
            if self.latencies.len() >= FLUSH_EVERY {
                self.flush_latencies();
            }
            if done {
                break;
            }
        }
        if !ended_early {
            let mut text = String::with_capacity(160);
            let seq = self.next_seq();
            messages::write_stop(&mut text, &self.stream_sid, seq, &sids.call, &sids.account);
            let _ = tokio::time::timeout(opts.timeout, tx.send(Message::text(text))).await;
            let closed = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(msg)) = rx.next().await {
                    if let Message::Text(text) = msg {
                        // Audio still in flight after stop is counted too.
                        self.on_text(text.as_str());
                    }
                }
            })
            .await;
            if closed.is_err() {
                self.error("no close from the bridge after stop".into());
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
        ended_early
    }

    fn on_text(&mut self, text: &str) {
        let now = Instant::now();
        let event = match messages::parse_outbound(text) {
            Ok(e) => e,
            Err(e) => {
                self.error(format!("bad frame from the bridge: {e}"));
                return;
            }
        };
        match event {
            Outbound::Media { media, .. } => {
                let Some(n) = decoded_len(&media.payload) else {
                    self.error("media payload is not valid base64".into());
                    return;
                };
                self.playback.enqueue_len(n);
                self.partial += n;
                while self.partial >= FRAME_BYTES {
                    self.partial -= FRAME_BYTES;
                    // Audio beyond what was sent (e.g. a resampler flush)
                    // has no frame to match and is not counted.
                    if let Some(sent) = self.sent_at.pop_front() {
                        let latency = now.duration_since(sent);
                        self.stats.frames_received += 1;
                        if latency > LATE {
                            self.stats.frames_late += 1;
                        }
                        self.latencies.push(latency.as_micros() as u64);
                    }
                }
            }
            Outbound::Mark { mark, .. } => {
                if let Some(name) = self.playback.mark(mark.name.into_owned()) {
                    self.due.push(name);
                    self.echo_due();
                }
            }
            Outbound::Clear { .. } => {
                self.playback.clear(&mut self.due);
                self.echo_due();
            }
        }
    }
}

/// Reading another process's CPU time and memory from `/proc` (Linux).
/// Best effort: any failure yields `None` and the report says "n/a".
mod proc {
    use std::path::Path;

    /// `getconf CLK_TCK`, the unit of utime/stime; 100 on Linux in practice.
    pub(super) fn clock_ticks_per_second() -> f64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    }

    /// utime + stime from a `/proc/…/stat` line, in seconds.
    pub(super) fn parse_stat_cpu(stat: &str, clk_tck: f64) -> Option<f64> {
        // The command name (field 2) may contain spaces and parentheses;
        // fields are counted from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / clk_tck)
    }

    pub(super) fn cpu_seconds(pid: u32, clk_tck: f64) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat_cpu(&stat, clk_tck)
    }

    pub(super) fn cpu_seconds_self(clk_tck: f64) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        parse_stat_cpu(&stat, clk_tck)
    }

    /// `VmRSS` from `/proc/PID/status`, in KiB.
    pub(super) fn rss_kib(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        parse_vm_rss(&status)
    }

    pub(super) fn parse_vm_rss(status: &str) -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Socket inodes listening on `port`, from a `/proc/net/tcp{,6}` table.
    pub(super) fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local = f.get(1)?;
                let state = f.get(3)?;
                let inode = f.get(9)?;
                let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
                (p == port && *state == "0A")
                    .then(|| inode.parse().ok())
                    .flatten()
            })
            .collect()
    }

    /// The process listening on `port`, by matching the listening socket's
    /// inode against every process's open descriptors. Needs permission to
    /// read the other process's `/proc/PID/fd` (same user, or root).
    pub(super) fn find_listener(port: u16) -> Option<u32> {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                inodes.extend(listening_inodes(&text, port));
            }
        }
        if inodes.is_empty() {
            return None;
        }
        let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
        let me = std::process::id();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd"))
            else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(link) = std::fs::read_link(fd.path()) {
                    if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                        return Some(pid);
                    }
                }
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stat_fields() {
            let stat = "1234 (call bridge) (x) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 100 1000000 2000 18446744073709551615";
            assert_eq!(parse_stat_cpu(stat, 100.0), Some(3.0));
            assert_eq!(parse_stat_cpu("garbage", 100.0), None);
        }

        #[test]
        fn status_rss() {
            let status =
                "Name:\tcallbridge\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
            assert_eq!(parse_vm_rss(status), Some(5120));
            assert_eq!(parse_vm_rss("Name: x\n"), None);
        }

        #[test]
        fn tcp_table() {
            let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 434343 1 0000000000000000 20 4 30 10 -1\n";
            assert_eq!(listening_inodes(table, 8080), vec![424242]);
            assert!(listening_inodes(table, 8081).is_empty());
        }

        #[test]
        fn finds_our_own_listener_only_in_other_processes() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            // Our own process is skipped on purpose (the bridge is never us).
            assert_eq!(find_listener(port), None);
            assert!(clock_ticks_per_second() > 0.0);
            assert!(rss_kib(std::process::id()).is_some_and(|r| r > 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_lengths() {
        for n in 0..20 {
            let data = vec![7u8; n];
            assert_eq!(decoded_len(&B64.encode(&data)), Some(n), "{n}");
        }
        assert_eq!(decoded_len("abc"), None);
    }

    #[test]
    fn frames_are_padded_and_default_audio_exists() {
        let frames = encode_frames(&[1, 2, 3]);
        assert_eq!(frames.len(), 1);
        assert_eq!(B64.decode(&frames[0]).unwrap().len(), FRAME_BYTES);
        assert_eq!(encode_frames(&[]).len(), 100);
    }

    #[test]
    fn options_are_bounded() {
        let url = Url::parse("http://127.0.0.1:1").unwrap();
        let ok = LoadOptions::new(url.clone(), 10, Duration::from_secs(1));
        assert!(ok.validate().is_ok());
        let tls = LoadOptions::new(Url::parse("https://h").unwrap(), 1, Duration::from_secs(1));
        assert!(tls.validate().is_ok());
        for bad in [
            LoadOptions::new(url.clone(), 0, Duration::from_secs(1)),
            LoadOptions::new(url.clone(), MAX_CALLS + 1, Duration::from_secs(1)),
            LoadOptions::new(url.clone(), 1, Duration::from_secs(3601)),
            LoadOptions::new(url.clone(), 1, Duration::ZERO),
            LoadOptions::new(Url::parse("ws://h").unwrap(), 1, Duration::from_secs(1)),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
