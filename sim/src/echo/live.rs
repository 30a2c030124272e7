//! One GPT-Live session of the echo peer as a pure state machine: client
//! event text in, server event text out, time passed in as an argument (the
//! same shape as [`super::session`], so [`super`] drives both alike).
//!
//! Written from GPT-LIVE.md and the openai-python `types/live` models, not
//! from the bridge's driver: the peer exists to check the bridge.
//!
//! What it does (GPT-LIVE.md §§2–8):
//!
//! - The first frame must be `session.start`, validated strictly
//!   ([`super::live_config`]); anything else, or an invalid start, gets an
//!   `error` and the socket is closed, with no `session.started`.
//! - **Turn mode**: full duplex. Caller audio flows in continuously; an
//!   energy VAD ([`super::vad`]) finds the end of each caller turn (500 ms of
//!   quiet), and the peer answers by speaking the caller's own audio back
//!   (300 ms before the speech to 100 ms after it), in deltas of varying
//!   size paced at real time, with `session.output_transcript.delta`
//!   fragments (placeholders: the echo has no ASR) and a
//!   `session.input_transcript.delta` for the caller's turn. Caller speech
//!   of 200 ms or more while the peer talks makes it yield: the answer just
//!   stops, with no event to mark it. Shorter sounds ("mhm") are ignored.
//! - `session.commentary.append` is acked and then spoken (a chime with a
//!   transcript that quotes the commentary); `session.instructions.append`
//!   and `session.thinking.append` are acked only.
//! - A scripted delegated function call ([`super::ToolCall`]) after the
//!   caller's first turn, with the nested Responses stream of a real
//!   backend; outputs come back with `response.item.create` and one
//!   `response.create` per complete batch.
//! - A scripted goodbye on the caller's Nth turn ([`EchoOptions::end_call_after`]):
//!   spoken, then, once its audio is all sent, a delegated `end_call`; its
//!   continuation says "Bye now."
//! - `session.usage.updated` after each answer; `session.close` drains the
//!   answer in progress and ends with `session.closed`.
//! - **Loopback mode**: every append is answered at once by one
//!   `session.output_audio.delta` with the same base64 text.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::audio::chime_samples;
use super::errors::ApiError;
use super::live_config::{parse_session_start, parse_session_update, LiveConfig, LiveFormat};
use super::vad::{Vad, VadEvent};
use super::{end_call, EchoMode, EchoOptions, ToolCall, BYE_NOW, END_CALL, GOODBYE};
use callbridge::audio::g711;

/// Sizes of successive audio deltas of an answer, cycled: a bridge that
/// assumes one size should fail here, not in production.
const CHUNK_MS: [u64; 4] = [20, 40, 100, 60];

/// Quiet that ends a caller turn.
const END_OF_TURN_MS: u64 = 500;

/// Audio kept before the speech when a turn is echoed.
const PREFIX_MS: u64 = 300;

/// Audio kept after the last loud window when a turn is echoed.
const TAIL_MS: u64 = 100;

/// Voiced caller speech, while the peer talks, that makes it yield.
const YIELD_MS: u64 = 200;

/// The longest caller turn kept (and spoken back).
const MAX_CAPTURE_MS: u64 = 30_000;

/// Session lifetime announced in `expires_at` (the real limit is
/// unpublished; the peer does not enforce it).
const SESSION_TTL_SECS: u64 = 3600;

/// Commentary, thinking and instructions take at most 500 tokens; the peer
/// counts four characters per token.
const MAX_CONTENT_CHARS: usize = 2000;

/// Spoken answers that are not echoes: the greeting (commentary), the
/// "let me check" acknowledgement of a delegation, and the answer with the
/// tool result. Lengths in ms.
const COMMENTARY_MS: u64 = 1200;
const ACK_MS: u64 = 600;
const TOOL_ANSWER_MS: u64 = 1500;
/// The goodbye before `end_call`, and the "Bye now." after its output.
const GOODBYE_MS: u64 = 1200;
const BYE_MS: u64 = 600;

/// Counters for the session's end-of-session log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LiveStats {
    pub(crate) frames_in: u64,
    pub(crate) deltas_out: u64,
    pub(crate) turns: u64,
    pub(crate) answers: u64,
    pub(crate) yielded: u64,
    pub(crate) tool_calls: u64,
    pub(crate) errors: u64,
}

#[derive(Debug, PartialEq)]
enum Phase {
    /// Waiting for `session.start`.
    Starting,
    Active,
    /// `session.close` received: finishing the answer in progress.
    Closing {
        client_event_id: Option<String>,
    },
    /// `session.closed` (or a startup error) sent: nothing more.
    Over,
}

/// Something to say, before it starts.
#[derive(Debug)]
struct Speech {
    audio: Vec<u8>,
    text: String,
    /// A function call to delegate once this speech's audio is all sent
    /// (the goodbye, then `end_call`).
    then: Option<ToolCall>,
}

/// The answer being spoken.
#[derive(Debug)]
struct Answer {
    audio: Vec<u8>,
    sent: usize,
    chunk: usize,
    /// Pacing origin: a delta is due when the audio before it has played.
    origin: Instant,
    due: Instant,
    text: String,
    text_sent: usize,
    /// Where the answer starts on the session timeline.
    start_ms: u64,
    then: Option<ToolCall>,
}

/// A function call of the backend awaiting its output.
#[derive(Debug)]
struct Call {
    call_id: String,
    name: String,
    output: Option<String>,
}

/// The calls of one backend response: continued by one `response.create`
/// once every call has its output.
#[derive(Debug)]
struct Batch {
    delegation_id: String,
    calls: Vec<Call>,
}

/// A string field that borrows from the message when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The fields every client event may have, plus `audio` for the per-frame
/// `session.input_audio.append`: an append costs no `serde_json::Value`.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    event_id: Option<Text<'a>>,
    #[serde(borrow)]
    audio: Option<Text<'a>>,
}

/// The output audio event, written by hand: `delta` is validated base64 or
/// base64 this module encoded, which JSON never escapes. No `event_id`, no
/// item or response id (openai-python `OutputAudioDeltaEvent`).
fn audio_delta_json(delta: &str) -> String {
    let mut s = String::with_capacity(delta.len() + 48);
    s.push_str(r#"{"type":"session.output_audio.delta","delta":""#);
    s.push_str(delta);
    s.push_str(r#""}"#);
    s
}

/// The end (exclusive) of the next word after `from`, with its space.
fn next_word(text: &str, from: usize) -> usize {
    match text[from..].find(' ') {
        Some(i) => from + i + 1,
        None => text.len(),
    }
}

/// `text` cut to at most `max` characters, with an ellipsis if cut.
fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((i, _)) => Cow::Owned(format!("{}…", &text[..i])),
        None => Cow::Borrowed(text),
    }
}

/// Seconds, to one decimal, of `ms`.
fn secs(ms: u64) -> String {
    format!("{}.{}", ms / 1000, (ms % 1000) / 100)
}

/// A chime ([`super::audio::chime_samples`]) of `ms` milliseconds in
/// `format`: what the peer "says" when it has no caller audio to echo.
pub(crate) fn chime(format: LiveFormat, ms: u64) -> Vec<u8> {
    encode(format, &chime_samples(format.samples_per_ms(), ms))
}

fn encode(format: LiveFormat, samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * format.bytes_per_sample());
    match format {
        LiveFormat::Pcmu => g711::encode_into(samples, &mut out),
        LiveFormat::Pcm16k | LiveFormat::Pcm24k => {
            for s in samples {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
    }
    out
}

fn decode(format: LiveFormat, bytes: &[u8], out: &mut Vec<i16>) {
    out.clear();
    match format {
        LiveFormat::Pcmu => g711::decode_into(bytes, out),
        LiveFormat::Pcm16k | LiveFormat::Pcm24k => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        ),
    }
}

/// One GPT-Live session of the echo peer.
pub(crate) struct LiveSession {
    mode: EchoMode,
    threshold_dbfs: f32,
    first_audio_delay: Duration,
    tool_call: Option<ToolCall>,
    /// The scripted call was made (or skipped): it happens once.
    tool_call_done: bool,
    end_call_after: Option<u32>,
    /// The scripted `end_call` was made (or skipped as undeclared).
    end_call_done: bool,
    /// Unique per session: ids are `<kind>_<tag>_<counter>`.
    tag: String,
    counter: u64,
    id: String,
    phase: Phase,
    cfg: Option<LiveConfig>,
    started_at: Option<Instant>,
    expires_at: u64,
    vad: Option<Vad>,
    vad_events: Vec<VadEvent>,
    /// Input samples received (at the session rate).
    pos: u64,
    /// Session time (ms) of input sample 0: input is one continuous timeline
    /// from the first append.
    input_origin_ms: Option<u64>,
    /// Raw input bytes from sample `capture_start` on.
    capture: Vec<u8>,
    capture_start: u64,
    muted: bool,
    answer: Option<Answer>,
    queue: VecDeque<Speech>,
    batch: Option<Batch>,
    /// Server events to send, in order.
    pub(crate) out: Vec<String>,
    /// Close the socket once `out` is sent.
    pub(crate) close: bool,
    // Reused per-frame buffers.
    bytes: Vec<u8>,
    pcm: Vec<i16>,
    base64: String,
    pub(crate) stats: LiveStats,
}

impl LiveSession {
    pub(crate) fn new(options: &EchoOptions, tag: String) -> Self {
        Self {
            mode: options.mode,
            threshold_dbfs: options.vad_threshold_dbfs,
            first_audio_delay: options.first_audio_delay,
            tool_call: options.tool_call.clone(),
            tool_call_done: false,
            end_call_after: options.end_call_after,
            end_call_done: false,
            id: format!("live_{tag}"),
            tag,
            counter: 0,
            phase: Phase::Starting,
            cfg: None,
            started_at: None,
            expires_at: 0,
            vad: None,
            vad_events: Vec::new(),
            pos: 0,
            input_origin_ms: None,
            capture: Vec::new(),
            capture_start: 0,
            muted: false,
            answer: None,
            queue: VecDeque::new(),
            batch: None,
            out: Vec::new(),
            close: false,
            bytes: Vec::new(),
            pcm: Vec::new(),
            base64: String::new(),
            stats: LiveStats::default(),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// When [`LiveSession::on_tick`] next has audio to send.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.answer.as_ref().map(|a| a.due)
    }

    fn next_id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}_{}_{:x}", self.tag, self.counter)
    }

    fn format(&self) -> LiveFormat {
        self.cfg.as_ref().map_or(LiveFormat::Pcm24k, |c| c.format)
    }

    /// Milliseconds since `session.started`.
    fn elapsed_ms(&self, now: Instant) -> u64 {
        self.started_at
            .map_or(0, |s| now.saturating_duration_since(s).as_millis() as u64)
    }

    /// Session time of input sample `sample`.
    fn input_ms(&self, sample: u64) -> u64 {
        self.input_origin_ms.unwrap_or(0) + sample / self.format().samples_per_ms()
    }

    /// "Now" on the session timeline: wall time, or the input received if a
    /// client sends faster than real time.
    fn timeline_ms(&self, now: Instant) -> u64 {
        self.elapsed_ms(now).max(self.input_ms(self.pos))
    }

    fn emit(&mut self, kind: &str, client_event_id: Option<&str>, body: Value) {
        let mut map = match body {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        map.insert("type".to_owned(), json!(kind));
        map.insert("event_id".to_owned(), json!(self.next_id("ev")));
        if let Some(id) = client_event_id {
            map.insert("client_event_id".to_owned(), json!(id));
        }
        self.out.push(Value::Object(map).to_string());
    }

    fn error(&mut self, err: ApiError, client_event_id: Option<&str>) {
        self.stats.errors += 1;
        tracing::debug!(session = %self.id, code = err.code, message = %err.message, "client error");
        let mut error = json!({
            "type": "invalid_request_error",
            "code": err.code,
            "message": err.message,
        });
        if let Some(param) = err.param {
            error["param"] = json!(param);
        }
        if let Some(id) = client_event_id {
            error["client_event_id"] = json!(id);
        }
        self.emit("error", None, json!({ "error": error }));
    }

    /// A startup failure: the error, then the socket closes.
    fn fail_start(&mut self, err: ApiError, client_event_id: Option<&str>) {
        self.error(err, client_event_id);
        self.phase = Phase::Over;
        self.close = true;
    }

    /// A binary WebSocket message: the protocol is JSON text only.
    pub(crate) fn on_binary(&mut self) {
        let err = ApiError::new(
            "invalid_value",
            "Binary messages are not supported; send client events as JSON text.",
        );
        if self.phase == Phase::Starting {
            self.fail_start(err, None);
        } else {
            self.error(err, None);
        }
    }

    /// One client event (a WebSocket text message) at time `now`.
    pub(crate) fn on_text(&mut self, text: &str, now: Instant) {
        if self.phase == Phase::Over {
            return;
        }
        let head = if text.trim_start().starts_with('{') {
            serde_json::from_str::<Head<'_>>(text).ok()
        } else {
            None
        };
        let Some(head) = head else {
            let err = ApiError::new(
                "invalid_json",
                "A client event must be a JSON object with string 'type', 'event_id' and 'audio'.",
            );
            return if self.phase == Phase::Starting {
                self.fail_start(err, None)
            } else {
                self.error(err, None)
            };
        };
        let event_id = head.event_id.as_ref().map(|t| t.0.as_ref());
        let kind = head.kind.as_ref().map(|t| t.0.as_ref());
        if self.phase == Phase::Starting {
            if kind != Some("session.start") {
                let err = ApiError::new(
                    "session_not_started",
                    format!(
                        "The first client event must be session.start, not '{}'.",
                        kind.unwrap_or("(no type)")
                    ),
                )
                .param("type");
                let event_id = event_id.map(str::to_owned);
                return self.fail_start(err, event_id.as_deref());
            }
            let event_id = event_id.map(str::to_owned);
            let session = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|mut v| v.get_mut("session").map(Value::take));
            return self.on_start(session.as_ref(), event_id.as_deref(), now);
        }
        let Some(kind) = kind else {
            return self.error(ApiError::missing("type"), event_id);
        };
        if kind == "session.input_audio.append" {
            if matches!(self.phase, Phase::Closing { .. }) {
                return;
            }
            return match head.audio.as_ref() {
                Some(audio) => self.on_append(&audio.0, event_id, now),
                None => self.error(ApiError::missing("audio"), event_id),
            };
        }
        let event: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return self.error(ApiError::new("invalid_json", "Invalid JSON."), None),
        };
        let kind = kind.to_owned();
        let event_id = event_id.map(str::to_owned);
        let event_id = event_id.as_deref();
        if matches!(self.phase, Phase::Closing { .. }) {
            return self.error(
                ApiError::new(
                    "session_closing",
                    format!("The session is closing; '{kind}' was ignored."),
                ),
                event_id,
            );
        }
        match kind.as_str() {
            "session.start" => self.error(
                ApiError::new("session_already_started", "The session has already started.")
                    .param("type"),
                event_id,
            ),
            "session.update" => self.on_update(&event, event_id),
            "session.input_audio.mute" => {
                self.muted = true;
                self.emit("session.input_audio.muted", event_id, json!({}));
            }
            "session.input_audio.unmute" => {
                self.muted = false;
                self.emit("session.input_audio.unmuted", event_id, json!({}));
            }
            "session.commentary.append" => self.on_append_text(&event, event_id, "commentary", now),
            "session.thinking.append" => self.on_append_text(&event, event_id, "thinking", now),
            "session.instructions.append" => {
                self.on_append_text(&event, event_id, "instructions", now)
            }
            "response.item.create" => self.on_item_create(&event, event_id),
            "response.create" => self.on_response_create(event_id, now),
            "session.close" => self.on_close(event_id, now),
            "response.cancel" | "conversation.item.truncate" => self.error(
                ApiError::new(
                    "unknown_event",
                    format!(
                        "Unknown client event type '{kind}': GPT-Live has no cancel or truncate; the model decides itself when to stop talking."
                    ),
                )
                .param("type"),
                event_id,
            ),
            other => self.error(
                ApiError::new(
                    "unknown_event",
                    format!("Unknown or unsupported client event type '{other}'."),
                )
                .param("type"),
                event_id,
            ),
        }
    }

    // ---- session lifecycle -------------------------------------------------

    fn on_start(&mut self, session: Option<&Value>, event_id: Option<&str>, now: Instant) {
        let cfg = match parse_session_start(session) {
            Ok(cfg) => cfg,
            Err(err) => return self.fail_start(err, event_id),
        };
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.expires_at = unix + SESSION_TTL_SECS;
        self.started_at = Some(now);
        self.vad = Some(Vad::with_rate(
            self.threshold_dbfs,
            cfg.format.samples_per_ms(),
        ));
        if let Some(call) = &self.tool_call {
            if !cfg.declares_function(&call.name) {
                tracing::warn!(
                    session = %self.id,
                    tool = %call.name,
                    "scripted tool call names a function not declared in session.delegation.responses.tools; it will be skipped"
                );
            }
        }
        let resource = cfg.resource(&self.id, self.expires_at);
        self.cfg = Some(cfg);
        self.phase = Phase::Active;
        self.emit("session.started", event_id, json!({ "session": resource }));
    }

    fn on_update(&mut self, event: &Value, event_id: Option<&str>) {
        let Some(current) = self.cfg.as_ref() else {
            return;
        };
        match parse_session_update(event.get("session"), current) {
            Ok(cfg) => {
                let resource = cfg.resource(&self.id, self.expires_at);
                self.cfg = Some(cfg);
                self.emit("session.updated", event_id, json!({ "session": resource }));
            }
            Err(err) => self.error(err, event_id),
        }
    }

    fn on_close(&mut self, event_id: Option<&str>, now: Instant) {
        // Stop taking new work; drain the answer in progress, then close.
        self.queue.clear();
        self.batch = None;
        self.phase = Phase::Closing {
            client_event_id: event_id.map(str::to_owned),
        };
        if self.answer.is_none() {
            self.send_closed(now);
        }
    }

    fn send_closed(&mut self, now: Instant) {
        let client_event_id = match std::mem::replace(&mut self.phase, Phase::Over) {
            Phase::Closing { client_event_id } => client_event_id,
            _ => None,
        };
        let session = self
            .cfg
            .as_ref()
            .map(|c| c.resource(&self.id, self.expires_at));
        let usage = self.usage(now);
        self.emit(
            "session.closed",
            client_event_id.as_deref(),
            json!({"reason": "close_requested", "session": session, "usage": usage}),
        );
        self.close = true;
    }

    fn usage(&self, now: Instant) -> Value {
        json!({ "seconds": self.elapsed_ms(now) as f64 / 1000.0 })
    }

    // ---- commentary, thinking, instructions ---------------------------------

    fn on_append_text(&mut self, event: &Value, event_id: Option<&str>, what: &str, now: Instant) {
        let content = match event.get("content") {
            None => return self.error(ApiError::missing("content"), event_id),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return self.error(ApiError::invalid_type("content", "a string"), event_id),
        };
        if content.chars().count() > MAX_CONTENT_CHARS {
            return self.error(
                ApiError::new(
                    "string_above_max_length",
                    format!(
                        "'content' is limited to 500 tokens ({MAX_CONTENT_CHARS} characters here)."
                    ),
                )
                .param("content"),
                event_id,
            );
        }
        match event.get("delegation_id") {
            None => return self.error(ApiError::missing("delegation_id"), event_id),
            Some(Value::Null) => {}
            Some(Value::String(id)) => {
                // The peer makes no client delegations, and non-null ids are
                // not accepted with Responses delegation.
                let message = format!(
                    "Unknown delegation_id '{id}': only null (general context) is accepted here."
                );
                return self.error(ApiError::invalid_value("delegation_id", message), event_id);
            }
            Some(_) => {
                return self.error(
                    ApiError::invalid_type("delegation_id", "a string or null"),
                    event_id,
                )
            }
        }
        let at = self.timeline_ms(now);
        let content = content.to_owned();
        self.emit(
            &format!("session.{what}.appended"),
            event_id,
            json!({"start_ms": at, "end_ms": at}),
        );
        if what == "commentary" && self.mode == EchoMode::Turn {
            let text = format!("(commentary: {})", clip(&content, 120));
            let audio = chime(self.format(), COMMENTARY_MS);
            self.queue.push_back(Speech {
                audio,
                text,
                then: None,
            });
            self.start_next(now);
        }
    }

    // ---- input audio -------------------------------------------------------

    fn on_append(&mut self, audio: &str, event_id: Option<&str>, now: Instant) {
        self.stats.frames_in += 1;
        self.bytes.clear();
        if BASE64.decode_vec(audio, &mut self.bytes).is_err() {
            return self.error(
                ApiError::new("invalid_audio", "'audio' is not valid base64.").param("audio"),
                event_id,
            );
        }
        let format = self.format();
        if self.bytes.len() % format.bytes_per_sample() != 0 {
            return self.error(
                ApiError::new(
                    "invalid_audio",
                    format!(
                        "PCM16 audio must be whole 16-bit samples; got {} bytes.",
                        self.bytes.len()
                    ),
                )
                .param("audio"),
                event_id,
            );
        }
        if self.input_origin_ms.is_none() {
            self.input_origin_ms = Some(self.elapsed_ms(now));
        }
        let start = self.pos;
        self.pos += (self.bytes.len() / format.bytes_per_sample()) as u64;
        match self.mode {
            EchoMode::Loopback => {
                // The same base64 text back: byte-identical audio, one delta
                // per append, nothing parsed or built beyond this string.
                self.out.push(audio_delta_json(audio));
                self.stats.deltas_out += 1;
            }
            EchoMode::Turn => self.listen(start, now),
        }
    }

    /// Turn mode: keep the audio, run the VAD, act on what it saw.
    fn listen(&mut self, start: u64, now: Instant) {
        let format = self.format();
        if self.muted {
            // While muted the model hears silence.
            self.bytes.fill(format.silence_byte());
        }
        decode(format, &self.bytes, &mut self.pcm);
        self.capture.extend_from_slice(&self.bytes);
        let Some(vad) = self.vad.as_mut() else {
            return;
        };
        let spm = format.samples_per_ms();
        let mut events = std::mem::take(&mut self.vad_events);
        events.clear();
        vad.process(&self.pcm, start, END_OF_TURN_MS * spm, &mut events);
        let voiced = vad.voiced();
        for &event in &events {
            if let VadEvent::Stopped {
                start,
                voiced_end,
                at,
            } = event
            {
                self.turn_ended(start, voiced_end, at, now);
            }
        }
        self.vad_events = events;
        if let Some((from, to)) = voiced {
            if self.answer.is_some() && to - from >= YIELD_MS * spm {
                // Talked over: the model stops by itself. No event says so.
                // A goodbye cut short makes no end_call: the next turn
                // tries again.
                if self.answer.take().is_some_and(|a| a.then.is_some()) {
                    self.end_call_done = false;
                }
                self.stats.yielded += 1;
                tracing::debug!(session = %self.id, "yielded to the caller");
                let usage = self.usage(now);
                self.emit("session.usage.updated", None, json!({ "usage": usage }));
            }
        }
        self.trim(voiced.map(|(from, _)| from));
        self.start_next(now);
    }

    /// Drops input no turn can still need: before the speech in progress (or
    /// a turn that may be starting now), minus the echo's prefix.
    fn trim(&mut self, speech_start: Option<u64>) {
        let spm = self.format().samples_per_ms();
        let bps = self.format().bytes_per_sample();
        let keep_from = match speech_start {
            Some(s) => s.saturating_sub(PREFIX_MS * spm),
            None => self.pos.saturating_sub((PREFIX_MS + 100) * spm),
        }
        .max(self.pos.saturating_sub(MAX_CAPTURE_MS * spm));
        let n = keep_from.saturating_sub(self.capture_start) as usize;
        // Drain only once as much goes as stays: O(1) moves per byte.
        if n > 0 && n * bps >= self.capture.len() / 2 {
            let n = n.min(self.capture.len() / bps);
            self.capture.drain(..n * bps);
            self.capture_start += n as u64;
        }
    }

    /// A caller turn ended: transcribe it (a placeholder), then echo it, or
    /// delegate the scripted function call on the first turn.
    fn turn_ended(&mut self, start: u64, voiced_end: u64, at: u64, now: Instant) {
        self.stats.turns += 1;
        let spm = self.format().samples_per_ms();
        let voiced_ms = (voiced_end - start) / spm;
        let (start_ms, end_ms) = (self.input_ms(start), self.input_ms(voiced_end));
        self.emit(
            "session.input_transcript.delta",
            None,
            json!({"delta": format!(" (caller spoke {} s)", secs(voiced_ms)), "start_ms": start_ms, "end_ms": end_ms}),
        );
        if self.answer.is_some() {
            // Too short to interrupt ("mhm"): the model talks on.
            return;
        }
        let end_call_due = self
            .end_call_after
            .is_some_and(|n| self.stats.turns >= u64::from(n.max(1)));
        if end_call_due && !self.end_call_done && self.batch.is_none() {
            // Marked again once the call is made (the goodbye may be cut short).
            self.end_call_done = true;
            if self.may_delegate(END_CALL) {
                let audio = chime(self.format(), GOODBYE_MS);
                self.queue.push_back(Speech {
                    audio,
                    text: GOODBYE.to_owned(),
                    then: Some(end_call()),
                });
                return;
            }
            tracing::warn!(
                session = %self.id,
                "--end-call-after: the session declares no end_call function in session.delegation.responses.tools; answering normally"
            );
        }
        if !self.tool_call_done {
            if let Some(call) = self.tool_call.clone() {
                self.tool_call_done = true;
                if self.may_delegate(&call.name) {
                    self.delegate(call, now);
                    let audio = chime(self.format(), ACK_MS);
                    self.queue.push_back(Speech {
                        audio,
                        text: "(one moment, checking)".to_owned(),
                        then: None,
                    });
                    return;
                }
                tracing::warn!(
                    session = %self.id,
                    tool = %call.name,
                    "scripted tool call skipped: the function is not declared in session.delegation.responses.tools"
                );
            }
        }
        let bps = self.format().bytes_per_sample();
        let from = start
            .saturating_sub(PREFIX_MS * spm)
            .max(self.capture_start);
        let to = (voiced_end + TAIL_MS * spm).min(at).max(from);
        let a = ((from - self.capture_start) as usize * bps).min(self.capture.len());
        let b = ((to - self.capture_start) as usize * bps).min(self.capture.len());
        let audio = self.capture[a..b].to_vec();
        let text = format!("(echo of {} s of your speech)", secs(voiced_ms));
        self.queue.push_back(Speech {
            audio,
            text,
            then: None,
        });
    }

    // ---- answers -----------------------------------------------------------

    /// Starts the next queued answer if none is playing and the caller is not
    /// talking (the model does not start over the caller).
    fn start_next(&mut self, now: Instant) {
        if self.answer.is_some() || self.phase != Phase::Active {
            return;
        }
        if self.vad.as_ref().is_some_and(|v| v.voiced().is_some()) {
            return;
        }
        let Some(speech) = self.queue.pop_front() else {
            return;
        };
        let origin = now + self.first_audio_delay;
        let start_ms = self.timeline_ms(now) + self.first_audio_delay.as_millis() as u64;
        self.answer = Some(Answer {
            audio: speech.audio,
            sent: 0,
            chunk: 0,
            origin,
            due: origin,
            text: speech.text,
            text_sent: 0,
            start_ms,
            then: speech.then,
        });
    }

    /// Sends every delta of the answer that is due by `now`; after the last
    /// one, the usage, then the next answer (or `session.closed`).
    pub(crate) fn on_tick(&mut self, now: Instant) {
        loop {
            let format = self.format();
            let Some(a) = self.answer.as_mut() else {
                return;
            };
            if a.due > now {
                return;
            }
            if a.sent >= a.audio.len() {
                let then = a.then.take();
                self.answer = None;
                self.stats.answers += 1;
                let usage = self.usage(now);
                self.emit("session.usage.updated", None, json!({ "usage": usage }));
                if let Some(call) = then {
                    if self.phase == Phase::Active && self.batch.is_none() {
                        // The goodbye is said: now the call.
                        self.delegate(call, now);
                        self.end_call_done = true;
                    }
                }
                if matches!(self.phase, Phase::Closing { .. }) {
                    return self.send_closed(now);
                }
                self.start_next(now);
                continue;
            }
            let len = (CHUNK_MS[a.chunk % CHUNK_MS.len()] as usize * format.bytes_per_ms())
                .min(a.audio.len() - a.sent);
            a.chunk += 1;
            let from_ms = a.start_ms + format.micros(a.sent) / 1000;
            self.base64.clear();
            BASE64.encode_string(&a.audio[a.sent..a.sent + len], &mut self.base64);
            a.sent += len;
            let to_ms = a.start_ms + format.micros(a.sent) / 1000;
            a.due = a.origin + Duration::from_micros(format.micros(a.sent));
            // One word per delta, the rest with the last one.
            let word_end = if a.sent >= a.audio.len() {
                a.text.len()
            } else {
                next_word(&a.text, a.text_sent)
            };
            let word = (word_end > a.text_sent).then(|| a.text[a.text_sent..word_end].to_owned());
            a.text_sent = word_end;
            self.out.push(audio_delta_json(&self.base64));
            self.stats.deltas_out += 1;
            if let Some(word) = word {
                self.emit(
                    "session.output_transcript.delta",
                    None,
                    json!({"delta": word, "start_ms": from_ms, "end_ms": to_ms}),
                );
            }
        }
    }

    // ---- delegation and function calls ---------------------------------------

    /// Whether the backend may call function `name`: Responses delegation
    /// with `name` among its function tools.
    fn may_delegate(&self, name: &str) -> bool {
        self.cfg
            .as_ref()
            .is_some_and(|c| c.delegation_type() == "responses" && c.declares_function(name))
    }

    /// A scripted function call (whose function is declared, see
    /// [`LiveSession::may_delegate`]): the delegation and the backend's
    /// stream up to `response.completed`.
    fn delegate(&mut self, call: ToolCall, now: Instant) {
        let backend = self
            .cfg
            .as_ref()
            .and_then(LiveConfig::responses_model)
            .unwrap_or("gpt-5.5")
            .to_owned();
        let delegation_id = self.next_id("dlg");
        let response_id = self.next_id("resp");
        let call_id = self.next_id("call");
        let item_id = self.next_id("fc");
        let offset_ms = self.timeline_ms(now);
        self.emit(
            "session.delegation.created",
            None,
            json!({"offset_ms": offset_ms, "delegation": {
                "id": delegation_id, "type": "delegation", "target": "responses", "response_id": response_id,
            }}),
        );
        let item = |status: &str, arguments: &str| {
            json!({"type": "function_call", "id": item_id, "call_id": call_id, "name": call.name,
                   "arguments": arguments, "status": status})
        };
        let stream = [
            json!({"type": "response.created",
                   "response": snapshot(&response_id, "in_progress", &backend, None)}),
            json!({"type": "response.output_item.added", "output_index": 0,
                   "item": item("in_progress", "")}),
            json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
                   "output_index": 0, "delta": call.arguments}),
            json!({"type": "response.function_call_arguments.done", "item_id": item_id,
                   "output_index": 0, "name": call.name, "arguments": call.arguments}),
            json!({"type": "response.output_item.done", "output_index": 0,
                   "item": item("completed", &call.arguments)}),
            json!({"type": "response.completed",
                   "response": snapshot(&response_id, "completed", &backend, Some(usage_tokens(40, 12)))}),
        ];
        self.nested(&delegation_id, stream);
        self.batch = Some(Batch {
            delegation_id,
            calls: vec![Call {
                call_id,
                name: call.name,
                output: None,
            }],
        });
        self.stats.tool_calls += 1;
    }

    /// Wraps backend stream events in `response.event`, numbering them.
    fn nested(&mut self, delegation_id: &str, events: impl IntoIterator<Item = Value>) {
        for (n, mut event) in events.into_iter().enumerate() {
            event["sequence_number"] = json!(n);
            self.emit(
                "response.event",
                None,
                json!({"delegation_id": delegation_id, "event": event}),
            );
        }
    }

    fn require_responses(&mut self, event_id: Option<&str>, kind: &str) -> bool {
        let ok = self
            .cfg
            .as_ref()
            .is_some_and(|c| c.delegation_type() == "responses");
        if !ok {
            self.error(
                ApiError::new(
                    "invalid_request",
                    format!("{kind} requires Responses delegation (session.delegation.type 'responses')."),
                )
                .param("type"),
                event_id,
            );
        }
        ok
    }

    fn on_item_create(&mut self, event: &Value, event_id: Option<&str>) {
        if !self.require_responses(event_id, "response.item.create") {
            return;
        }
        let item = match event.get("item") {
            None => return self.error(ApiError::missing("item"), event_id),
            Some(Value::Object(item)) => item,
            Some(_) => return self.error(ApiError::invalid_type("item", "an object"), event_id),
        };
        let Some(kind) = item.get("type").and_then(Value::as_str) else {
            return self.error(ApiError::missing("item.type"), event_id);
        };
        if kind != "function_call_output" {
            // Other input items (say, a user message) join the backend's
            // context silently: no ack, no response until response.create.
            return;
        }
        let call_id = match item.get("call_id") {
            None => return self.error(ApiError::missing("item.call_id"), event_id),
            Some(Value::String(id)) => id.clone(),
            Some(_) => {
                return self.error(ApiError::invalid_type("item.call_id", "a string"), event_id)
            }
        };
        let output = match item.get("output") {
            None => return self.error(ApiError::missing("item.output"), event_id),
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Array(_)) => v.to_string(),
            Some(_) => {
                return self.error(
                    ApiError::invalid_type("item.output", "a string or an array of content parts"),
                    event_id,
                )
            }
        };
        let call = self
            .batch
            .as_mut()
            .and_then(|b| b.calls.iter_mut().find(|c| c.call_id == call_id));
        match call {
            Some(call) if call.output.is_none() => call.output = Some(output),
            Some(_) => self.error(
                ApiError::invalid_value(
                    "item.call_id",
                    format!("Function call {call_id} already has an output."),
                ),
                event_id,
            ),
            None => self.error(
                ApiError::invalid_value(
                    "item.call_id",
                    format!("No function call with call_id '{call_id}' is awaiting an output."),
                ),
                event_id,
            ),
        }
    }

    fn on_response_create(&mut self, event_id: Option<&str>, now: Instant) {
        if !self.require_responses(event_id, "response.create") {
            return;
        }
        let Some(batch) = self.batch.as_ref() else {
            return self.error(
                ApiError::new(
                    "invalid_request",
                    "No delegated response awaits a continuation: send response.create once every function call of a batch has its output.",
                ),
                event_id,
            );
        };
        if let Some(missing) = batch.calls.iter().find(|c| c.output.is_none()) {
            // A partial batch is rejected (GPT-LIVE.md §6; the Responses API's own message).
            let message = format!(
                "No tool output found for function call {}.",
                missing.call_id
            );
            return self.error(ApiError::new("missing_tool_output", message), event_id);
        }
        let Some(batch) = self.batch.take() else {
            return;
        };
        let backend = self
            .cfg
            .as_ref()
            .and_then(LiveConfig::responses_model)
            .unwrap_or("gpt-5.5")
            .to_owned();
        let results: Vec<(String, String)> = batch
            .calls
            .into_iter()
            .map(|c| (c.name, c.output.unwrap_or_default()))
            .collect();
        let text = results
            .iter()
            .map(|(name, output)| format!("{name} returned {output}"))
            .collect::<Vec<_>>()
            .join("; ");
        let response_id = self.next_id("resp");
        let msg_id = self.next_id("msg");
        let message = |status: &str, content: Value| json!({"type": "message", "id": msg_id, "role": "assistant", "status": status, "content": content});
        let stream = [
            json!({"type": "response.created",
                   "response": snapshot(&response_id, "in_progress", &backend, None)}),
            json!({"type": "response.output_item.added", "output_index": 0,
                   "item": message("in_progress", json!([]))}),
            json!({"type": "response.output_text.delta", "item_id": msg_id, "output_index": 0,
                   "content_index": 0, "delta": text}),
            json!({"type": "response.output_text.done", "item_id": msg_id, "output_index": 0,
                   "content_index": 0, "text": text}),
            json!({"type": "response.output_item.done", "output_index": 0,
                   "item": message("completed", json!([{"type": "output_text", "text": text, "annotations": []}]))}),
            json!({"type": "response.completed",
                   "response": snapshot(&response_id, "completed", &backend, Some(usage_tokens(60, 20)))}),
        ];
        self.nested(&batch.delegation_id, stream);
        // The voice model says the result in its own words.
        let (said, ms) = if results.iter().all(|(name, _)| name == END_CALL) {
            (BYE_NOW.to_owned(), BYE_MS)
        } else {
            let said = results
                .iter()
                .map(|(name, output)| format!("(answer from {name}: {output})"))
                .collect::<Vec<_>>()
                .join(" ");
            (said, TOOL_ANSWER_MS)
        };
        let audio = chime(self.format(), ms);
        self.queue.push_back(Speech {
            audio,
            text: said,
            then: None,
        });
        self.start_next(now);
    }
}

/// A Responses lifecycle snapshot: instructions, tools and output cleared
/// to keep messages small (openai-python `ResponseEvent`).
fn snapshot(id: &str, status: &str, model: &str, usage: Option<Value>) -> Value {
    let mut v =
        json!({"id": id, "object": "response", "status": status, "model": model, "output": []});
    if let Some(usage) = usage {
        v["usage"] = usage;
    }
    v
}

fn usage_tokens(input: u64, output: u64) -> Value {
    json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(tool_call: Option<&str>) -> EchoOptions {
        EchoOptions {
            protocol: super::super::EchoProtocol::Live,
            tool_call: tool_call.map(|t| t.parse().expect("tool call")),
            ..EchoOptions::default()
        }
    }

    fn drain(s: &mut LiveSession) -> Vec<Value> {
        s.out
            .drain(..)
            .map(|t| serde_json::from_str(&t).expect("valid JSON"))
            .collect()
    }

    fn start_event(delegation: Value) -> String {
        json!({"type": "session.start", "event_id": "cb_start", "session": {
            "model": "gpt-live-1",
            "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}},
            "delegation": delegation,
        }})
        .to_string()
    }

    fn responses_with(tool: &str) -> Value {
        json!({"type": "responses", "responses": {"model": "gpt-5.5", "tools": [
            {"type": "function", "name": tool, "parameters": {"type": "object"}}]}})
    }

    /// Feeds μ-law frames: `ms` of a loud square wave, then `quiet_ms` of silence.
    fn speak(s: &mut LiveSession, ms: u64, quiet_ms: u64, now: Instant) {
        let loud: Vec<i16> = (0..160)
            .map(|i| if i % 8 < 4 { 8000 } else { -8000 })
            .collect();
        let mut frame = Vec::new();
        g711::encode_into(&loud, &mut frame);
        for _ in 0..ms / 20 {
            let e = json!({"type": "session.input_audio.append", "audio": BASE64.encode(&frame)});
            s.on_text(&e.to_string(), now);
        }
        for _ in 0..quiet_ms / 20 {
            let e = json!({"type": "session.input_audio.append", "audio": BASE64.encode([0xFFu8; 160])});
            s.on_text(&e.to_string(), now);
        }
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().filter_map(|e| e["type"].as_str()).collect()
    }

    #[test]
    fn first_frame_must_be_session_start() {
        let mut s = LiveSession::new(&options(None), "t1".into());
        s.on_text(
            r#"{"type":"session.input_audio.append","event_id":"a1","audio":""}"#,
            Instant::now(),
        );
        let events = drain(&mut s);
        assert_eq!(types(&events), ["error"]);
        assert_eq!(events[0]["error"]["type"], "invalid_request_error");
        assert_eq!(events[0]["error"]["client_event_id"], "a1");
        assert!(s.close);
    }

    #[test]
    fn strict_start_fails_without_session_started() {
        let mut s = LiveSession::new(&options(None), "t2".into());
        let start = json!({"type": "session.start", "event_id": "cb_start", "session": {
            "model": "gpt-live-1", "turn_detection": {"type": "server_vad"}}});
        s.on_text(&start.to_string(), Instant::now());
        let events = drain(&mut s);
        assert_eq!(types(&events), ["error"]);
        let error = &events[0]["error"];
        assert_eq!(error["code"], "unknown_parameter");
        assert_eq!(error["param"], "session.turn_detection");
        assert_eq!(error["client_event_id"], "cb_start");
        assert!(s.close);
    }

    #[test]
    fn started_session_resource() {
        let mut s = LiveSession::new(&options(None), "t3".into());
        s.on_text(&start_event(Value::Null), Instant::now());
        let events = drain(&mut s);
        assert_eq!(types(&events), ["session.started"]);
        let session = &events[0]["session"];
        assert_eq!(events[0]["client_event_id"], "cb_start");
        assert_eq!(session["id"], "live_t3");
        assert_eq!(session["status"], "active");
        assert_eq!(
            session["audio"]["format"],
            json!({"type": "audio/pcmu", "rate": 8000})
        );
        assert!(session["expires_at"].as_u64() > Some(1_700_000_000));
        assert!(!s.close);
    }

    #[test]
    fn function_call_sequence_and_partial_batch() {
        let mut s = LiveSession::new(
            &options(Some(r#"lookup_order:{"order_id":"123"}"#)),
            "t4".into(),
        );
        let t0 = Instant::now();
        s.on_text(&start_event(responses_with("lookup_order")), t0);
        drain(&mut s);
        speak(&mut s, 600, 600, t0);
        let events = drain(&mut s);
        let kinds = types(&events);
        assert_eq!(kinds[0], "session.input_transcript.delta");
        assert_eq!(kinds[1], "session.delegation.created");
        let nested: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "response.event")
            .map(|e| e["event"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            nested,
            [
                "response.created",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let delegation = &events[1]["delegation"];
        assert_eq!(delegation["type"], "delegation");
        assert_eq!(delegation["target"], "responses");
        let dlg = delegation["id"].as_str().unwrap();
        let done = events
            .iter()
            .find(|e| e["event"]["type"] == "response.output_item.done")
            .unwrap();
        assert_eq!(done["delegation_id"], dlg);
        let item = &done["event"]["item"];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["status"], "completed");
        assert_eq!(item["name"], "lookup_order");
        assert_eq!(item["arguments"], r#"{"order_id":"123"}"#);
        let call_id = item["call_id"].as_str().unwrap().to_owned();
        let completed = events
            .iter()
            .find(|e| e["event"]["type"] == "response.completed")
            .unwrap();
        assert_eq!(completed["event"]["response"]["output"], json!([]));
        assert_eq!(
            completed["event"]["response"]["id"],
            delegation["response_id"]
        );

        // Continuing before the output arrived is rejected.
        s.on_text(r#"{"type":"response.create","event_id":"cb_early"}"#, t0);
        let events = drain(&mut s);
        assert_eq!(types(&events), ["error"]);
        assert_eq!(events[0]["error"]["client_event_id"], "cb_early");

        // A wrong call id is rejected; the right one is accepted silently.
        let output = |id: &str| {
            json!({"type": "response.item.create", "item": {"type": "function_call_output",
                   "call_id": id, "output": "{\"status\":\"shipped\"}"}})
            .to_string()
        };
        s.on_text(&output("call_nope"), t0);
        assert_eq!(types(&drain(&mut s)), ["error"]);
        s.on_text(&output(&call_id), t0);
        assert!(drain(&mut s).is_empty());
        s.on_text(r#"{"type":"response.create"}"#, t0);
        let events = drain(&mut s);
        let text = events
            .iter()
            .find(|e| e["event"]["type"] == "response.output_text.delta")
            .expect("output_text.delta");
        assert_eq!(text["delegation_id"], dlg);
        assert!(text["event"]["delta"].as_str().unwrap().contains("shipped"));

        // The answer (after the acknowledgement) says the tool output.
        let mut said = String::new();
        let mut now = t0;
        for _ in 0..400 {
            now += Duration::from_millis(20);
            s.on_tick(now);
            for e in drain(&mut s) {
                if e["type"] == "session.output_transcript.delta" {
                    said.push_str(e["delta"].as_str().unwrap());
                }
            }
        }
        assert!(said.contains(r#"{"status":"shipped"}"#), "{said}");
        assert!(said.starts_with("(one moment"), "{said}");
    }

    #[test]
    fn undeclared_tool_is_skipped_and_the_turn_echoed() {
        let mut s = LiveSession::new(&options(Some("transfer:{}")), "t5".into());
        let t0 = Instant::now();
        s.on_text(&start_event(responses_with("lookup_order")), t0);
        drain(&mut s);
        speak(&mut s, 600, 600, t0);
        s.on_tick(t0);
        let events = drain(&mut s);
        let kinds = types(&events);
        assert!(!kinds.contains(&"session.delegation.created"), "{kinds:?}");
        assert!(kinds.contains(&"session.output_audio.delta"), "{kinds:?}");
    }

    #[test]
    fn goodbye_then_end_call_on_the_nth_turn() {
        let options = EchoOptions {
            end_call_after: Some(2),
            ..options(None)
        };
        let mut s = LiveSession::new(&options, "t8".into());
        let t0 = Instant::now();
        s.on_text(&start_event(responses_with("end_call")), t0);
        drain(&mut s);
        // Turn 1 is echoed.
        speak(&mut s, 600, 600, t0);
        let mut now = t0 + Duration::from_secs(5);
        s.on_tick(now);
        assert!(!types(&drain(&mut s)).contains(&"session.delegation.created"));
        // Turn 2: the goodbye, and only after its last audio, the call.
        speak(&mut s, 600, 600, now);
        let mut events = drain(&mut s);
        for _ in 0..100 {
            now += Duration::from_millis(50);
            s.on_tick(now);
            events.extend(drain(&mut s));
        }
        let kinds = types(&events);
        let said: String = events
            .iter()
            .filter(|e| e["type"] == "session.output_transcript.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(said, GOODBYE);
        let last_audio = kinds
            .iter()
            .rposition(|k| *k == "session.output_audio.delta")
            .unwrap();
        let created = kinds
            .iter()
            .position(|k| *k == "session.delegation.created")
            .expect("delegation");
        assert!(created > last_audio, "{kinds:?}");
        let done = events
            .iter()
            .find(|e| e["event"]["type"] == "response.output_item.done")
            .unwrap();
        assert_eq!(done["event"]["item"]["name"], "end_call");
        assert_eq!(
            done["event"]["item"]["arguments"],
            r#"{"reason":"the caller is done"}"#
        );
        let call_id = done["event"]["item"]["call_id"].as_str().unwrap();
        let output = json!({"type": "response.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": "{\"ok\":true}"}});
        s.on_text(&output.to_string(), now);
        s.on_text(r#"{"type":"response.create"}"#, now);
        let mut said = String::new();
        for _ in 0..40 {
            now += Duration::from_millis(50);
            s.on_tick(now);
            for e in drain(&mut s) {
                if e["type"] == "session.output_transcript.delta" {
                    said.push_str(e["delta"].as_str().unwrap());
                }
            }
        }
        assert_eq!(said, BYE_NOW);
    }

    #[test]
    fn talk_over_yields_and_short_sounds_do_not() {
        let mut s = LiveSession::new(&options(None), "t6".into());
        let t0 = Instant::now();
        s.on_text(&start_event(Value::Null), t0);
        speak(&mut s, 2000, 600, t0);
        s.on_tick(t0);
        assert!(s.answer.is_some());
        // 100 ms: too short to interrupt.
        speak(&mut s, 100, 0, t0);
        assert!(s.answer.is_some());
        speak(&mut s, 0, 600, t0);
        // 300 ms: the peer yields.
        speak(&mut s, 300, 0, t0);
        assert!(s.answer.is_none());
        assert_eq!(s.stats.yielded, 1);
    }

    #[test]
    fn close_drains_the_answer_then_closes() {
        let mut s = LiveSession::new(&options(None), "t7".into());
        let t0 = Instant::now();
        s.on_text(&start_event(Value::Null), t0);
        s.on_text(
            r#"{"type":"session.commentary.append","delegation_id":null,"content":"Hi"}"#,
            t0,
        );
        s.on_tick(t0);
        s.on_text(r#"{"type":"session.close","event_id":"cb_close"}"#, t0);
        let events = drain(&mut s);
        assert!(!types(&events).contains(&"session.closed"));
        assert!(!s.close);
        // Audio after the close is ignored; the answer plays out.
        speak(&mut s, 400, 0, t0);
        s.on_tick(t0 + Duration::from_secs(5));
        let events = drain(&mut s);
        let kinds = types(&events);
        assert_eq!(
            kinds[kinds.len() - 2..],
            ["session.usage.updated", "session.closed"]
        );
        let closed = events.last().unwrap();
        assert_eq!(closed["client_event_id"], "cb_close");
        assert_eq!(closed["reason"], "close_requested");
        assert_eq!(closed["session"]["id"], "live_t7");
        assert!(closed["usage"]["seconds"].as_f64().unwrap() >= 5.0);
        assert!(s.close);
        s.on_text(r#"{"type":"session.close"}"#, t0);
        assert!(s.out.is_empty());
    }

    #[test]
    fn chime_has_the_requested_length() {
        assert_eq!(chime(LiveFormat::Pcmu, 1000).len(), 8000);
        assert_eq!(chime(LiveFormat::Pcm16k, 500).len(), 16_000);
        assert_eq!(chime(LiveFormat::Pcm24k, 10).len(), 480);
    }

    #[test]
    fn hand_written_delta_is_valid_json() {
        let v: Value = serde_json::from_str(&audio_delta_json("AAE=")).expect("JSON");
        assert_eq!(
            v,
            json!({"type": "session.output_audio.delta", "delta": "AAE="})
        );
    }
}
