//! One simulated phone call, end to end, behaving like Twilio.
//!
//! [`place_call`] posts the signed webhook, opens the Media Stream named in
//! the TwiML, and then runs one loop on a 20 ms clock: each tick plays 20 ms
//! of whatever the bridge queued (echoing marks whose audio has now played)
//! and sends the next 20 ms of the caller's script. The caller's track and
//! what the caller heard are recorded on that same tick timeline, so the
//! [`CallReport`] can be listened to as a stereo file and its timings read
//! off in 20 ms steps.
//!
//! The clock uses [`MissedTickBehavior::Burst`]: Twilio's audio comes from
//! the phone network's clock, which never skips, so if this process stalls
//! the missed frames are sent late, back to back, like a network burst,
//! rather than dropped (which would shorten the caller's speech and shift
//! every timing after the stall).

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use crate::playback::Playback;
use crate::stream::{self, Opened, Transport};
use crate::{rms, SimError, FRAME, FRAME_BYTES, SILENCE, SPEECH_RMS};
use callbridge::twilio::messages::{self, Outbound};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Answer audio arriving after a pause longer than this starts a new turn.
/// The bridge paces audio in chunks of at most 100 ms, so gaps within one
/// answer are far shorter; the pause between answers is at least the
/// model's end-of-speech silence (hundreds of ms) plus the caller's turn.
const TURN_GAP: Duration = Duration::from_millis(400);
/// After the script, the line stays open until the answer has been quiet this long.
const ANSWER_QUIET: Duration = Duration::from_secs(1);
/// How long to wait for the bridge to close the socket after `stop`.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Distinct error messages kept in a report; the rest are only counted.
const MAX_ERRORS: usize = 20;

/// What to say, and how the call is bounded.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The bridge's base URL, `http://host:port` or `https://host[:port]`;
    /// `/voice` is appended.
    pub bridge: Url,
    /// Trusted roots for `https`/`wss`, and `--resolve` overrides.
    pub transport: Transport,
    /// Signs the webhook and the upgrade like Twilio does; `None` sends
    /// unsigned requests (for bridges with signature checks off).
    pub auth_token: Option<String>,
    /// The caller's speech, μ-law 8 kHz, sent in real time from the start.
    pub audio: Vec<u8>,
    /// Talk over the answer: see [`BargeIn`].
    pub barge_in: Option<BargeIn>,
    /// Silence sent after the script (and barge-in audio) before `stop`.
    pub trailing_silence: Duration,
    /// After the trailing silence, keep the line open while answer audio is
    /// still arriving or playing, so the whole answer is heard.
    pub wait_for_answer: bool,
    /// Hard bound on the stream's life; the call is stopped when it passes.
    pub max_duration: Duration,
    /// A fixed CallSid instead of a random `CA…`.
    pub call_sid: Option<String>,
    /// Answer an outbound call: the TwiML the bridge gave Twilio in
    /// `Calls.json` (with `call_sid`, the SID Twilio returned). The webhook
    /// is skipped; the stream opens as that TwiML says.
    pub twiml: Option<String>,
    /// Bound on each network step of the set-up (connect, webhook, upgrade)
    /// and on each send.
    pub timeout: Duration,
    /// Pause between the webhook's answer and opening the stream: Twilio
    /// fetches the TwiML, then connects the stream a moment later (the
    /// window a pre-warmed model session is opened in). Zero by default.
    pub stream_delay: Duration,
}

impl CallOptions {
    /// Defaults that suit a spoken turn against a local peer: 2 s of
    /// trailing silence, wait for the answer, at most 2 minutes, no token.
    pub fn new(bridge: Url, audio: Vec<u8>) -> Self {
        CallOptions {
            bridge,
            transport: Transport::default(),
            auth_token: None,
            audio,
            barge_in: None,
            trailing_silence: Duration::from_secs(2),
            wait_for_answer: true,
            max_duration: Duration::from_secs(120),
            call_sid: None,
            twiml: None,
            timeout: Duration::from_secs(10),
            stream_delay: Duration::ZERO,
        }
    }
}

/// Interrupting the answer, the way a caller does.
#[derive(Debug, Clone)]
pub struct BargeIn {
    /// What the caller says over the answer (μ-law 8 kHz). Replaces the
    /// rest of the script; silence follows it.
    pub audio: Vec<u8>,
    /// Sent once this much answer audio has been heard (played), counted
    /// over the whole call. While it is pending, the call does not hang up
    /// in the middle of an answer.
    pub after_heard: Duration,
}

/// Live events, for a CLI that narrates the call as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The webhook answered and the stream is open.
    Streaming {
        call_sid: String,
        stream_sid: String,
        stream_url: String,
    },
    /// The first answer audio of a turn arrived; `latency` is from the
    /// caller's last frame of speech, when the caller had spoken.
    AnswerStarted {
        at: Duration,
        turn: u32,
        latency: Option<Duration>,
    },
    /// The caller started talking over the answer.
    BargeIn { at: Duration },
    /// The bridge sent `clear`; `dropped_ms` of queued answer was discarded.
    Cleared { at: Duration, dropped_ms: u64 },
    /// The caller sent `stop` (hung up).
    Stopped { at: Duration },
    /// The bridge closed the socket.
    Closed { at: Duration, code: Option<u16> },
}

/// Everything observed on the call. Times on the call's timeline count from
/// the first media frame; `sent` and `heard` are aligned sample for sample.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    pub call_sid: String,
    pub stream_sid: String,
    /// The caller track as sent: 8 kHz μ-law, one 160-byte frame per tick.
    pub sent: Vec<u8>,
    /// What the caller heard, on the same timeline; silence (0xFF) where
    /// nothing played.
    pub heard: Vec<u8>,
    /// Answers heard: bursts of answer audio separated by a pause or a `clear`.
    pub turns: u32,
    /// For each turn that followed caller speech: the caller's last frame of
    /// speech → the first answer audio of that turn arriving (Twilio starts
    /// playing it at once).
    pub turn_latencies: Vec<Duration>,
    /// The first of `turn_latencies`.
    pub first_answer_after_speech: Option<Duration>,
    /// Barge-ins the caller made (0 or 1).
    pub bargeins: u32,
    /// From the first frame of barge-in audio carrying speech (so a lead-in
    /// pause in the clip does not count against the bridge) to the `clear`.
    pub bargein_reaction: Option<Duration>,
    /// From the first frame of barge-in audio carrying speech to the answer
    /// going silent at the caller: a `clear` (Realtime) or the model yielding
    /// by itself (GPT-Live), whichever the protocol does.
    pub talk_over_stop: Option<Duration>,
    /// `clear` messages received, and the answer audio they discarded.
    pub clears: u32,
    pub cleared_ms: u64,
    /// Marks echoed back (played, or released by a `clear`).
    pub marks_echoed: u32,
    /// Media frames sent, and media messages received.
    pub frames_sent: u64,
    pub media_received: u64,
    /// Bytes of answer audio played to the caller (8 per ms).
    pub bytes_heard: u64,
    /// Bytes of answer audio received (8 per ms): heard, cleared, or still
    /// queued when the call ended.
    pub bytes_received: u64,
    /// The close code of the bridge's close frame, if it sent one.
    pub close_code: Option<u16>,
    /// From the first media frame to the end of the stream.
    pub duration: Duration,
    /// What went wrong on an established call: protocol violations by the
    /// bridge, an early close, a barge-in that never happened, a timeout.
    pub errors: Vec<String>,
}

impl CallReport {
    /// Writes the call as a stereo WAV: the caller left, what was heard right.
    pub fn write_stereo_wav(&self, path: &std::path::Path) -> Result<(), SimError> {
        crate::write_wav(path, &[&self.sent, &self.heard])
    }

    /// Writes what the caller heard as a mono WAV.
    pub fn write_heard_wav(&self, path: &std::path::Path) -> Result<(), SimError> {
        crate::write_wav(path, &[&self.heard])
    }
}

impl std::fmt::Display for CallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()))
        };
        writeln!(f, "call {}  stream {}", self.call_sid, self.stream_sid)?;
        writeln!(
            f,
            "  duration          {:.1} s",
            self.duration.as_secs_f64()
        )?;
        writeln!(f, "  turns             {}", self.turns)?;
        writeln!(
            f,
            "  first answer      {} after the caller stopped speaking",
            ms(self.first_answer_after_speech)
        )?;
        if self.turn_latencies.len() > 1 {
            let all: Vec<String> = self
                .turn_latencies
                .iter()
                .map(|d| d.as_millis().to_string())
                .collect();
            writeln!(f, "  turn latencies    {} ms", all.join(", "))?;
        }
        writeln!(
            f,
            "  barge-ins         {} (reaction {}); clears {} ({} ms of answer dropped)",
            self.bargeins,
            ms(self.bargein_reaction),
            self.clears,
            self.cleared_ms
        )?;
        writeln!(
            f,
            "  audio             {} frames of 20 ms sent; {} media messages received ({:.2} s of answer), {:.2} s of it heard (the rest cleared by a barge-in or unplayed at hang-up)",
            self.frames_sent,
            self.media_received,
            self.bytes_received as f64 / 8000.0,
            self.bytes_heard as f64 / 8000.0
        )?;
        if self.bargeins > 0 {
            writeln!(
                f,
                "  talk-over stop    {} (caller speaks over the answer -> it goes silent here)",
                ms(self.talk_over_stop)
            )?;
        }
        writeln!(f, "  marks echoed      {}", self.marks_echoed)?;
        writeln!(
            f,
            "  close code        {}",
            self.close_code
                .map_or_else(|| "none".to_owned(), |c| c.to_string())
        )?;
        if self.errors.is_empty() {
            write!(f, "  errors            none")
        } else {
            write!(f, "  errors            {}", self.errors.len())?;
            for e in &self.errors {
                write!(f, "\n    - {e}")?;
            }
            Ok(())
        }
    }
}

/// Places one call and runs it to the end.
///
/// Returns `Err` only when the call could not be established (bridge
/// unreachable, 403, busy, bad TwiML); once the stream is open every problem
/// is recorded in [`CallReport::errors`] and the report is returned, so a
/// test sees both what went wrong and what was heard up to then.
pub async fn place_call(
    opts: CallOptions,
    progress: Option<UnboundedSender<Progress>>,
) -> Result<CallReport, SimError> {
    if opts.max_duration.is_zero() || opts.timeout.is_zero() {
        return Err(SimError::Options(
            "max_duration and timeout must be positive".into(),
        ));
    }
    let sids = stream::Sids::new(opts.call_sid.clone())?;
    // tungstenite zero-fills its whole read buffer on reads; the bridge's
    // frames are small, so a small buffer saves that work.
    let read_buffer = 16 << 10;
    let opened = match &opts.twiml {
        Some(twiml) => {
            stream::open(
                stream::parse_twiml(twiml)?,
                &opts.transport,
                opts.auth_token.as_deref(),
                sids,
                opts.timeout,
                read_buffer,
            )
            .await?
        }
        None => {
            stream::dial(
                &opts.bridge,
                &opts.transport,
                opts.auth_token.as_deref(),
                sids,
                opts.timeout,
                opts.stream_delay,
                read_buffer,
            )
            .await?
        }
    };
    let mut call = Call::new(opts, &opened, progress);
    call.emit(|_| Progress::Streaming {
        call_sid: opened.sids.call.clone(),
        stream_sid: opened.sids.stream.clone(),
        stream_url: opened.stream_url.to_string(),
    });
    call.run(opened).await;
    Ok(call.report)
}

/// Where the next caller frame comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Script(usize),
    Barge(usize),
    /// Frames of silence sent so far.
    Silence(u64),
}

/// Whether the loop goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Our side is done: send `stop` and wait for the close.
    Hangup,
    /// The bridge closed the socket (or it broke).
    Closed,
}

struct Call {
    opts: CallOptions,
    progress: Option<UnboundedSender<Progress>>,
    stream_sid: String,
    call_sid: String,
    account_sid: String,
    seq: u64,
    started: Instant,
    source: Source,
    playback: Playback,
    /// Frames waiting to be sent after the current step.
    outbox: Vec<String>,
    due_marks: Vec<String>,
    answer_heard: u64,
    last_speech_at: Option<Instant>,
    spoke_since_answer: bool,
    last_media_at: Option<Instant>,
    cleared_since_media: bool,
    bargein_at: Option<Instant>,
    b64: String,
    audio: Vec<u8>,
    errors_dropped: usize,
    report: CallReport,
}

impl Call {
    fn new(
        opts: CallOptions,
        opened: &Opened,
        progress: Option<UnboundedSender<Progress>>,
    ) -> Call {
        let expected_frames = opts.max_duration.as_millis() as usize / 20;
        let capacity = (opts.audio.len() + 8000 * 10).min(expected_frames * FRAME_BYTES);
        Call {
            stream_sid: opened.sids.stream.clone(),
            call_sid: opened.sids.call.clone(),
            account_sid: opened.sids.account.clone(),
            seq: opened.next_seq,
            started: Instant::now(),
            source: Source::Script(0),
            playback: Playback::new(true),
            outbox: Vec::with_capacity(8),
            due_marks: Vec::new(),
            answer_heard: 0,
            last_speech_at: None,
            spoke_since_answer: false,
            last_media_at: None,
            cleared_since_media: false,
            bargein_at: None,
            b64: String::with_capacity(256),
            audio: Vec::with_capacity(2048),
            errors_dropped: 0,
            report: CallReport {
                call_sid: opened.sids.call.clone(),
                stream_sid: opened.sids.stream.clone(),
                sent: Vec::with_capacity(capacity),
                heard: Vec::with_capacity(capacity),
                ..CallReport::default()
            },
            progress,
            opts,
        }
    }

    fn emit(&self, event: impl FnOnce(Duration) -> Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(event(self.started.elapsed()));
        }
    }

    fn error(&mut self, message: String) {
        if self.report.errors.len() < MAX_ERRORS {
            if !self.report.errors.contains(&message) {
                self.report.errors.push(message);
            }
        } else {
            self.errors_dropped += 1;
        }
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }

    fn echo_marks(&mut self) {
        let due = std::mem::take(&mut self.due_marks);
        for name in &due {
            let mut text = String::with_capacity(96 + name.len());
            let seq = self.next_seq();
            messages::write_inbound_mark(&mut text, &self.stream_sid, seq, name);
            self.outbox.push(text);
            self.report.marks_echoed += 1;
        }
        self.due_marks = due;
        self.due_marks.clear();
    }

    async fn run(&mut self, opened: Opened) {
        let (mut tx, mut rx) = opened.ws.split();
        self.started = Instant::now();
        let deadline = tokio::time::sleep_until(self.started + self.opts.max_duration);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(self.started, FRAME);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut tick_index: u64 = 0;
        let flow = loop {
            let flow = tokio::select! {
                biased;
                _ = &mut deadline => {
                    if !matches!(self.source, Source::Silence(_)) {
                        self.error(format!(
                            "max_duration ({:?}) reached before the script ended",
                            self.opts.max_duration
                        ));
                    }
                    Flow::Hangup
                }
                _ = ticker.tick() => {
                    let flow = self.on_tick(tick_index);
                    tick_index += 1;
                    flow
                }
                msg = rx.next() => self.on_frame(msg),
            };
            if let Err(e) = stream::send_batch(&mut tx, &mut self.outbox, self.opts.timeout).await {
                self.error(e.to_string());
                break Flow::Closed;
            }
            if flow != Flow::Continue {
                break flow;
            }
        };

        if flow == Flow::Hangup {
            let mut text = String::with_capacity(160);
            let seq = self.next_seq();
            messages::write_stop(
                &mut text,
                &self.stream_sid,
                seq,
                &self.call_sid,
                &self.account_sid,
            );
            self.emit(|at| Progress::Stopped { at });
            let sent = tokio::time::timeout(self.opts.timeout, tx.send(Message::text(text))).await;
            if !matches!(sent, Ok(Ok(()))) {
                self.error("could not send stop".into());
            }
            // Read until the bridge's close frame, then until the socket ends
            // (reading is what lets tungstenite answer the close).
            let wait = async {
                while let Some(msg) = rx.next().await {
                    match msg {
                        Ok(Message::Close(frame)) => {
                            self.report.close_code = frame.map(|f| u16::from(f.code));
                            self.emit(|at| Progress::Closed {
                                at,
                                code: self.report.close_code,
                            });
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            };
            if tokio::time::timeout(CLOSE_WAIT, wait).await.is_err() {
                self.error(format!(
                    "the bridge did not close the stream within {CLOSE_WAIT:?} of stop"
                ));
            }
            if self.report.close_code.is_none() && self.report.errors.is_empty() {
                self.error("the stream ended without a close frame".into());
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;

        if self.opts.barge_in.is_some() && self.report.bargeins == 0 {
            self.error(format!(
                "barge-in never happened: only {} ms of answer was heard",
                self.answer_heard / 8
            ));
        }
        if self.errors_dropped > 0 {
            let n = self.errors_dropped;
            self.report.errors.push(format!("… and {n} more errors"));
        }
        self.report.duration = self.started.elapsed();
    }

    /// One 20 ms step: play, maybe start the barge-in, send the next frame,
    /// decide whether to hang up.
    fn on_tick(&mut self, tick_index: u64) -> Flow {
        let now = Instant::now();
        let played = self.playback.play(
            FRAME_BYTES,
            Some(&mut self.report.heard),
            &mut self.due_marks,
        );
        self.answer_heard += played as u64;
        self.report.bytes_heard += played as u64;
        self.echo_marks();
        if played == 0 && self.report.talk_over_stop.is_none() {
            if let Some(at) = self.bargein_at {
                self.report.talk_over_stop = Some(now.duration_since(at));
            }
        }

        if let Some(barge) = &self.opts.barge_in {
            let threshold = barge.after_heard.as_millis() as u64 * 8;
            if self.report.bargeins == 0
                && !matches!(self.source, Source::Barge(_))
                && self.answer_heard >= threshold.max(1)
            {
                self.source = Source::Barge(0);
                self.report.bargeins = 1;
                self.emit(|at| Progress::BargeIn { at });
            }
        }

        let mut frame = [SILENCE; FRAME_BYTES];
        let barge_audio = self.opts.barge_in.as_ref().map(|b| b.audio.as_slice());
        let (next, is_barge) = match self.source {
            Source::Script(pos) => {
                let take = self.opts.audio.len().saturating_sub(pos).min(FRAME_BYTES);
                frame[..take].copy_from_slice(&self.opts.audio[pos..pos + take]);
                if pos + take >= self.opts.audio.len() {
                    (Source::Silence(0), false)
                } else {
                    (Source::Script(pos + take), false)
                }
            }
            Source::Barge(pos) => {
                let audio = barge_audio.unwrap_or_default();
                let take = audio.len().saturating_sub(pos).min(FRAME_BYTES);
                frame[..take].copy_from_slice(&audio[pos..pos + take]);
                if pos + take >= audio.len() {
                    (Source::Silence(0), true)
                } else {
                    (Source::Barge(pos + take), true)
                }
            }
            Source::Silence(n) => (Source::Silence(n + 1), false),
        };
        self.source = next;
        if rms(&frame) > SPEECH_RMS {
            self.last_speech_at = Some(now);
            self.spoke_since_answer = true;
            if is_barge && self.bargein_at.is_none() {
                self.bargein_at = Some(now);
            }
        }
        self.report.sent.extend_from_slice(&frame);
        self.b64.clear();
        B64.encode_string(frame, &mut self.b64);
        let mut text = String::with_capacity(self.b64.len() + 160);
        let seq = self.next_seq();
        messages::write_inbound_media(
            &mut text,
            &self.stream_sid,
            seq,
            tick_index + 1,
            tick_index * 20,
            &self.b64,
        );
        self.outbox.push(text);
        self.report.frames_sent += 1;

        if let Source::Silence(n) = self.source {
            let silent_for = FRAME * u32::try_from(n).unwrap_or(u32::MAX);
            let answer_quiet = self.playback.queued() == 0
                && self.playback.pending_marks() == 0
                && self
                    .last_media_at
                    .is_none_or(|t| now.duration_since(t) >= ANSWER_QUIET);
            // A barge-in still to come holds the line while the answer plays:
            // it is waiting for exactly that audio.
            let barge_pending = self.opts.barge_in.is_some() && self.report.bargeins == 0;
            let answer_playing = self.playback.queued() > 0
                || self
                    .last_media_at
                    .is_some_and(|t| now.duration_since(t) <= TURN_GAP);
            if silent_for >= self.opts.trailing_silence
                && (!self.opts.wait_for_answer || answer_quiet)
                && !(barge_pending && answer_playing)
            {
                return Flow::Hangup;
            }
        }
        Flow::Continue
    }

    fn on_frame(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Flow {
        let now = Instant::now();
        match msg {
            None => {
                self.error("the bridge dropped the connection without a close frame".into());
                Flow::Closed
            }
            Some(Err(e)) => {
                self.error(format!("the stream broke: {e}"));
                Flow::Closed
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                self.report.close_code = code;
                self.emit(|at| Progress::Closed { at, code });
                if code != Some(1000) {
                    self.error(format!(
                        "the bridge closed the stream early (code {})",
                        code.map_or_else(|| "none".to_owned(), |c| c.to_string())
                    ));
                }
                Flow::Closed
            }
            Some(Ok(Message::Binary(b))) => {
                self.error(format!(
                    "binary frame of {} bytes (Twilio accepts text frames only)",
                    b.len()
                ));
                Flow::Continue
            }
            Some(Ok(Message::Text(text))) => {
                self.on_text(text.as_str(), now);
                Flow::Continue
            }
            Some(Ok(_)) => Flow::Continue,
        }
    }

    fn on_text(&mut self, text: &str, now: Instant) {
        let event = match messages::parse_outbound(text) {
            Ok(event) => event,
            Err(e) => {
                self.error(format!(
                    "bad frame from the bridge: {e}: {}",
                    stream::shorten(text, 80)
                ));
                return;
            }
        };
        let sid = match &event {
            Outbound::Media { stream_sid, .. }
            | Outbound::Mark { stream_sid, .. }
            | Outbound::Clear { stream_sid } => stream_sid.as_ref(),
        };
        if sid != self.stream_sid {
            self.error(format!(
                "frame for another stream ({}) ignored",
                stream::shorten(sid, 40)
            ));
            return;
        }
        match event {
            Outbound::Media { media, .. } => {
                self.audio.clear();
                if B64
                    .decode_vec(media.payload.as_bytes(), &mut self.audio)
                    .is_err()
                {
                    self.error("media payload is not valid base64".into());
                    return;
                }
                self.report.media_received += 1;
                if self.audio.is_empty() {
                    return;
                }
                let new_turn = self.cleared_since_media
                    || self
                        .last_media_at
                        .is_none_or(|t| now.duration_since(t) > TURN_GAP);
                if new_turn {
                    self.report.turns += 1;
                    let latency = self
                        .last_speech_at
                        .filter(|_| self.spoke_since_answer)
                        .map(|t| now.duration_since(t));
                    if let Some(l) = latency {
                        self.report.turn_latencies.push(l);
                        self.report.first_answer_after_speech.get_or_insert(l);
                    }
                    let turn = self.report.turns;
                    self.emit(|at| Progress::AnswerStarted { at, turn, latency });
                }
                self.spoke_since_answer = false;
                self.cleared_since_media = false;
                self.last_media_at = Some(now);
                self.report.bytes_received += self.audio.len() as u64;
                self.playback.enqueue(&self.audio);
            }
            Outbound::Mark { mark, .. } => {
                if let Some(name) = self.playback.mark(mark.name.into_owned()) {
                    self.due_marks.push(name);
                    self.echo_marks();
                }
            }
            Outbound::Clear { .. } => {
                self.report.clears += 1;
                let dropped = self.playback.clear(&mut self.due_marks);
                let dropped_ms = dropped / 8;
                self.report.cleared_ms += dropped_ms;
                self.cleared_since_media = true;
                self.echo_marks();
                if self.report.bargeins > 0 && self.report.bargein_reaction.is_none() {
                    if let Some(at) = self.bargein_at {
                        self.report.bargein_reaction = Some(now.duration_since(at));
                    }
                }
                self.emit(|at| Progress::Cleared { at, dropped_ms });
            }
        }
    }
}
