//! One echo-realtime session as a pure state machine: client event text in,
//! server event text out, time passed in as an argument.
//!
//! Keeping the socket out of here means the protocol logic can be read (and
//! reasoned about) without any async plumbing: [`super`] owns the socket and
//! calls [`Session::on_text`] for each message, [`Session::on_tick`] when
//! [`Session::next_due`] comes, and sends whatever is in [`Session::out`].
//!
//! The event shapes follow PROTOCOLS.md §2 and the openai-python models, not
//! the bridge's own parser (`realtime::events`): the peer exists to check the
//! bridge, so it must not share the bridge's assumptions.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::audio::{chime, decode_pcm, extend_le, render, to_ms, Capture, Format};
use super::errors::ApiError;
use super::session_config::{parse_session_update, Config, TurnDetection};
use super::vad::{Vad, VadEvent, START_WINDOWS, TICKS_PER_MS, WINDOW_MS};
use super::{end_call, Dialect, EchoMode, EchoOptions, ToolCall, BYE_NOW, END_CALL, GOODBYE};
use callbridge::audio::g711;
use callbridge::audio::resample::{Downsampler, Upsampler};

/// Sizes of successive audio deltas of a turn response, cycled. The real
/// service sends deltas of irregular sizes; a bridge that assumes one size
/// (say, 20 ms frames) should fail against this peer, not in production.
const CHUNK_MS: [usize; 4] = [20, 40, 100, 60];

/// Audio kept after the last loud window when a turn is spoken back: word
/// endings fade below the VAD threshold, and cutting them off sounds clipped.
const TAIL_MS: u64 = 100;

/// The shortest buffer `input_audio_buffer.commit` accepts, as on the real
/// service (its error `input_audio_buffer_commit_empty` says "at least 100ms").
const MIN_COMMIT_MS: u64 = 100;

/// Assistant and user items remembered for `conversation.item.truncate` and
/// `.delete`. A bridge only ever truncates the item that was just playing.
const MAX_ITEMS: usize = 32;

/// Stand-in token accounting for `usage`, at the service's published
/// rates: one input audio token per 100 ms, one output audio token per 50 ms;
/// text at about four characters a token.
const MS_PER_AUDIO_TOKEN: u64 = 100;
const MS_PER_OUTPUT_AUDIO_TOKEN: u64 = 50;
const CHARS_PER_TEXT_TOKEN: u64 = 4;

/// The conversation as the model re-reads it for each response: every
/// response's input is the instructions plus everything said so far, and
/// the part the previous response already read is served from the cache.
#[derive(Debug, Default, Clone, Copy)]
struct TokenContext {
    /// Tokens of the conversation so far (before the current response).
    text: u64,
    audio: u64,
    /// The previous response's input: the cached prefix of the next one.
    cached_text: u64,
    cached_audio: u64,
}

/// Spoken answers that are not echoes (chimes with a transcript), in ms:
/// a greeting (a response asked for before the caller said anything), the
/// goodbye before `end_call`, the answer with a tool's output, and the
/// "Bye now." once `end_call` has its output.
const GREETING_MS: u64 = 1000;
const GOODBYE_MS: u64 = 1200;
const TOOL_ANSWER_MS: u64 = 1500;
const BYE_MS: u64 = 600;

/// The largest `response.function_call_arguments.delta`, in bytes: the
/// arguments of a scripted call arrive in several deltas, as a real
/// model's do.
const ARGUMENTS_DELTA_BYTES: usize = 12;

/// Function calls remembered for `function_call_output` validation.
const MAX_CALLS: usize = 32;

/// Event names that differ between the dialects (PROTOCOLS.md §2.4).
struct Names {
    audio_delta: &'static str,
    audio_done: &'static str,
    transcript_delta: &'static str,
    transcript_done: &'static str,
    item_added: &'static str,
    /// GA follows `conversation.item.added` with `.done`; beta has no such event.
    item_done: Option<&'static str>,
    /// Content type of an assistant audio part inside an item.
    output_audio_content: &'static str,
}

static GA_NAMES: Names = Names {
    audio_delta: "response.output_audio.delta",
    audio_done: "response.output_audio.done",
    transcript_delta: "response.output_audio_transcript.delta",
    transcript_done: "response.output_audio_transcript.done",
    item_added: "conversation.item.added",
    item_done: Some("conversation.item.done"),
    output_audio_content: "output_audio",
};

static BETA_NAMES: Names = Names {
    audio_delta: "response.audio.delta",
    audio_done: "response.audio.done",
    transcript_delta: "response.audio_transcript.delta",
    transcript_done: "response.audio_transcript.done",
    item_added: "conversation.item.created",
    item_done: None,
    output_audio_content: "audio",
};

/// A committed user turn, kept so a response can speak it back.
#[derive(Debug)]
struct Turn {
    samples: Vec<i16>,
    format: Format,
    ms: u64,
}

/// Which scripted call a response carries, so it is marked as made once
/// its item is sent (a response cancelled before then makes no call, and the
/// script tries again on the next response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// [`EchoOptions::tool_call`].
    ToolCall,
    /// [`EchoOptions::end_call_after`].
    EndCall,
}

/// What a response will say and do, decided when it starts.
#[derive(Debug)]
struct Content {
    /// The audio of the message item, in the output format.
    audio: Vec<u8>,
    transcript: String,
    input_ms: u64,
    /// Whether the response has an audio message item (a response that
    /// only calls a function has none).
    message: bool,
    call: Option<(Script, ToolCall)>,
}

/// A function call of the conversation (made by the peer, or a
/// `function_call` item the client created) and its output, if it came.
#[derive(Debug)]
struct CallRecord {
    call_id: String,
    name: String,
    output: Option<String>,
    /// A response has already spoken the output.
    answered: bool,
}

/// The response being generated.
#[derive(Debug)]
struct Response {
    id: String,
    /// The audio message item's id (unused when `message` is false).
    item_id: String,
    /// Whether the response has an audio message item.
    message: bool,
    /// The function call item sent after the message (or alone), when the
    /// audio is all sent.
    call: Option<(Script, ToolCall)>,
    format: Format,
    /// The whole answer in the output format (empty for a loopback response).
    audio: Vec<u8>,
    /// Bytes of `audio` sent (loopback: bytes of all deltas sent).
    sent: usize,
    chunk: usize,
    /// Pacing origin: delta *k* is due at `origin + sent_before_k / speed`.
    origin: Instant,
    due: Instant,
    transcript: String,
    transcript_sent: usize,
    loopback: bool,
    input_ms: u64,
}

/// An item of the conversation, as far as truncate and delete need it.
#[derive(Debug)]
struct ItemRecord {
    id: String,
    /// Assistant audio: its format and the bytes of it sent.
    audio: Option<(Format, usize)>,
}

/// Counters for the session's end-of-session log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) frames_in: u64,
    pub(crate) deltas_out: u64,
    pub(crate) turns: u64,
    pub(crate) responses: u64,
    pub(crate) cancelled: u64,
    pub(crate) tool_calls: u64,
    pub(crate) errors: u64,
}

/// A string field that borrows from the message when it has no escapes.
/// (`Option<Cow<str>>` never borrows, whatever `#[serde(borrow)]` says; a
/// newtype around `Cow` does.)
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The fields every client event may have, plus `audio` for the per-frame
/// `input_audio_buffer.append`: parsing just these means an append costs no
/// `serde_json::Value` and, usually, no copy of its base64.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    event_id: Option<Text<'a>>,
    #[serde(borrow)]
    audio: Option<Text<'a>>,
}

/// The end (exclusive) of the next transcript word after `from`, with the
/// space that follows it, so the deltas concatenate to the transcript.
fn next_word(text: &str, from: usize) -> usize {
    let rest = &text[from..];
    match rest.find(' ') {
        Some(i) => from + i + 1,
        None => text.len(),
    }
}

/// `arguments` cut into pieces of at most `max` bytes (on character
/// boundaries; at least one character each), which concatenate to it: the
/// `response.function_call_arguments.delta` fragments.
fn argument_chunks(arguments: &str, max: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut rest = arguments;
    while !rest.is_empty() {
        let mut end = max.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (chunk, tail) = rest.split_at(end);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// Writes an audio delta event by hand. Every interpolated string is one
/// this module made (ids of hex digits and underscores, fixed event names)
/// or validated base64 (`A–Z a–z 0–9 + / =`), none of which JSON escapes, so
/// this is valid JSON; it saves building a `Value` for every frame.
fn audio_delta_json(
    name: &str,
    event_id: std::fmt::Arguments<'_>,
    response_id: &str,
    item_id: &str,
    delta: &str,
) -> String {
    let mut s = String::with_capacity(delta.len() + 200);
    let _ = write!(
        s,
        r#"{{"type":"{name}","event_id":"{event_id}","response_id":"{response_id}","item_id":"{item_id}","output_index":0,"content_index":0,"delta":"{delta}"}}"#
    );
    s
}

/// One Realtime session of the echo peer.
pub(crate) struct Session {
    dialect: Dialect,
    mode: EchoMode,
    names: &'static Names,
    speed: f64,
    first_audio_delay: Duration,
    /// Unique per session (process nonce + session number): every id this
    /// session makes is `<kind>_<tag>_<counter>`.
    tag: String,
    counter: u64,
    id: String,
    model: String,
    cfg: Config,
    /// Ticks of input audio received so far.
    pos: u64,
    capture: Capture,
    /// Input before this tick was committed or cleared.
    uncommitted_from: u64,
    vad: Vad,
    vad_events: Vec<VadEvent>,
    /// The id announced in `speech_started`, used again when the turn commits.
    speech_item: Option<String>,
    last_turn: Option<Turn>,
    previous_item: Option<String>,
    active: Option<Response>,
    /// A turn ended (create_response) while a response was still running.
    queued: bool,
    tool_call: Option<ToolCall>,
    end_call_after: Option<u32>,
    /// The scripted tool call was made, or skipped as undeclared: it
    /// happens (or is warned about) once.
    tool_call_done: bool,
    /// Likewise for the scripted `end_call`.
    end_call_done: bool,
    calls: VecDeque<CallRecord>,
    items: VecDeque<ItemRecord>,
    /// Server events to send, in order.
    pub(crate) out: Vec<String>,
    // Reused per-frame buffers.
    bytes: Vec<u8>,
    pcm: Vec<i16>,
    converted: Vec<i16>,
    base64: String,
    // Loopback transcoding between different input and output formats.
    up: Upsampler,
    down: Downsampler,
    pub(crate) stats: Stats,
    tokens: TokenContext,
}

impl Session {
    /// A new session; `session.created` is already in [`Session::out`].
    pub(crate) fn new(dialect: Dialect, options: &EchoOptions, model: String, tag: String) -> Self {
        let cfg = Config::default();
        let mut session = Self {
            dialect,
            mode: options.mode,
            names: match dialect {
                Dialect::Ga => &GA_NAMES,
                Dialect::Beta => &BETA_NAMES,
            },
            speed: options.speed,
            first_audio_delay: options.first_audio_delay,
            id: format!("sess_{tag}"),
            tag,
            counter: 0,
            model,
            pos: 0,
            capture: Capture::new(cfg.input, 0),
            uncommitted_from: 0,
            vad: Vad::new(options.vad_threshold_dbfs, cfg.input.ticks_per_sample()),
            vad_events: Vec::new(),
            speech_item: None,
            last_turn: None,
            previous_item: None,
            active: None,
            queued: false,
            tool_call: options.tool_call.clone(),
            end_call_after: options.end_call_after,
            tool_call_done: false,
            end_call_done: false,
            calls: VecDeque::new(),
            items: VecDeque::new(),
            out: Vec::new(),
            bytes: Vec::new(),
            pcm: Vec::new(),
            converted: Vec::new(),
            base64: String::new(),
            up: Upsampler::new(),
            down: Downsampler::new(),
            stats: Stats::default(),
            tokens: TokenContext::default(),
            cfg,
        };
        let session_json = session.session_json();
        session.emit("session.created", json!({ "session": session_json }));
        session
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// When [`Session::on_tick`] next has something to send: the next audio
    /// delta (or the end) of a turn response. Loopback answers at once.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.active.as_ref().filter(|r| !r.loopback).map(|r| r.due)
    }

    fn next_id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}_{}_{:x}", self.tag, self.counter)
    }

    fn emit(&mut self, kind: &str, body: Value) {
        let mut map = match body {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        map.insert("type".to_owned(), Value::String(kind.to_owned()));
        let event_id = self.next_id("event");
        map.insert("event_id".to_owned(), Value::String(event_id));
        self.out.push(Value::Object(map).to_string());
    }

    fn error(&mut self, err: ApiError, client_event_id: Option<&str>) {
        self.stats.errors += 1;
        tracing::debug!(session = %self.id, code = err.code, message = %err.message, "client error");
        self.emit(
            "error",
            json!({"error": {
                "type": "invalid_request_error",
                "code": err.code,
                "message": err.message,
                "param": err.param,
                "event_id": client_event_id,
            }}),
        );
    }

    /// A binary WebSocket message: the protocol is JSON text only.
    pub(crate) fn on_binary(&mut self) {
        self.error(
            ApiError::new(
                "invalid_value",
                "Binary messages are not supported; send client events as JSON text.",
            ),
            None,
        );
    }

    /// One client event (a WebSocket text message) at time `now`.
    pub(crate) fn on_text(&mut self, text: &str, now: Instant) {
        // A derived struct would also accept a JSON array, field by field.
        let head = if text.trim_start().starts_with('{') {
            serde_json::from_str::<Head<'_>>(text).ok()
        } else {
            None
        };
        let Some(head) = head else {
            return self.malformed(text);
        };
        let event_id = head.event_id.as_ref().map(|t| t.0.as_ref());
        let Some(kind) = head.kind.as_ref().map(|t| t.0.as_ref()) else {
            return self.error(ApiError::missing("type"), event_id);
        };
        if kind == "input_audio_buffer.append" {
            return match head.audio.as_ref() {
                Some(audio) => self.on_append(&audio.0, event_id, now),
                None => self.error(ApiError::missing("audio"), event_id),
            };
        }
        let event: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return self.malformed(text),
        };
        let kind = kind.to_owned();
        let event_id = event_id.map(str::to_owned);
        let event_id = event_id.as_deref();
        match kind.as_str() {
            "session.update" => self.on_session_update(&event, event_id),
            "input_audio_buffer.commit" => self.on_commit(event_id),
            "input_audio_buffer.clear" => self.on_clear(),
            "response.create" => self.on_response_create(event_id, now),
            "response.cancel" => self.on_response_cancel(&event, event_id),
            "conversation.item.create" => self.on_item_create(&event, event_id),
            "conversation.item.truncate" => self.on_item_truncate(&event, event_id),
            "conversation.item.delete" => self.on_item_delete(&event, event_id),
            "output_audio_buffer.clear" => self.error(
                ApiError::new(
                    "unknown_event",
                    "output_audio_buffer.clear is only for WebRTC and SIP sessions, not WebSocket.",
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

    /// Text that is not a JSON object with string `type`/`event_id`/`audio`.
    fn malformed(&mut self, text: &str) {
        match serde_json::from_str::<Value>(text) {
            Err(e) => self.error(
                ApiError::new(
                    "invalid_json",
                    format!("The message is not valid JSON: {e}."),
                ),
                None,
            ),
            Ok(v) => {
                let event_id = v.get("event_id").and_then(Value::as_str).map(str::to_owned);
                let err = if v.is_object() {
                    ApiError::new(
                        "invalid_type",
                        "'type', 'event_id' and 'audio' must be strings.",
                    )
                } else {
                    ApiError::new("invalid_type", "A client event must be a JSON object.")
                };
                self.error(err, event_id.as_deref());
            }
        }
    }

    // ---- session.update -------------------------------------------------

    fn on_session_update(&mut self, event: &Value, event_id: Option<&str>) {
        let cfg = match parse_session_update(self.dialect, event.get("session"), &self.cfg) {
            Ok(cfg) => cfg,
            Err(err) => return self.error(err, event_id),
        };
        let input_changed = cfg.input != self.cfg.input;
        let output_changed = cfg.output != self.cfg.output;
        let turns_changed = cfg.turn.is_some() != self.cfg.turn.is_some();
        self.cfg = cfg;
        if input_changed {
            // Samples of the old rate cannot join the new ones: start over.
            self.capture = Capture::new(self.cfg.input, self.pos);
            self.vad
                .set_ticks_per_sample(self.cfg.input.ticks_per_sample());
            self.uncommitted_from = self.pos;
            self.speech_item = None;
        }
        if input_changed || output_changed {
            self.up.reset();
            self.down.reset();
        }
        if turns_changed {
            self.vad.reset();
            self.speech_item = None;
        }
        let session = self.session_json();
        self.emit("session.updated", json!({ "session": session }));
    }

    fn session_json(&self) -> Value {
        let turn = self.cfg.turn.map(|t| t.to_json(self.dialect));
        match self.dialect {
            Dialect::Ga => json!({
                "object": "realtime.session",
                "type": "realtime",
                "id": self.id,
                "model": self.model,
                "output_modalities": ["audio"],
                "instructions": self.cfg.instructions,
                "audio": {
                    "input": {
                        "format": self.cfg.input.ga_json(),
                        "transcription": self.cfg.transcription,
                        "noise_reduction": null,
                        "turn_detection": turn,
                    },
                    "output": {
                        "format": self.cfg.output.ga_json(),
                        "voice": self.cfg.voice,
                        "speed": 1.0,
                    },
                },
                "tools": self.cfg.tools,
                "tool_choice": self.cfg.tool_choice,
                "max_output_tokens": "inf",
                "tracing": null,
            }),
            Dialect::Beta => json!({
                "object": "realtime.session",
                "id": self.id,
                "model": self.model,
                "modalities": ["audio", "text"],
                "instructions": self.cfg.instructions,
                "voice": self.cfg.voice,
                "input_audio_format": self.cfg.input.beta_name(),
                "output_audio_format": self.cfg.output.beta_name(),
                "input_audio_transcription": self.cfg.transcription,
                "turn_detection": turn,
                "tools": self.cfg.tools,
                "tool_choice": self.cfg.tool_choice,
                "temperature": 0.8,
                "max_response_output_tokens": "inf",
            }),
        }
    }

    // ---- input audio -----------------------------------------------------

    fn on_append(&mut self, audio: &str, event_id: Option<&str>, now: Instant) {
        self.stats.frames_in += 1;
        self.bytes.clear();
        if BASE64.decode_vec(audio, &mut self.bytes).is_err() {
            return self.error(
                ApiError::invalid_value("audio", "'audio' is not valid base64."),
                event_id,
            );
        }
        let input = self.cfg.input;
        if self.bytes.len() % input.bytes_per_sample() != 0 {
            return self.error(
                ApiError::invalid_value(
                    "audio",
                    format!(
                        "PCM16 audio must be whole 16-bit samples; got {} bytes.",
                        self.bytes.len()
                    ),
                ),
                event_id,
            );
        }
        let start = self.pos;
        self.pos += (self.bytes.len() / input.bytes_per_sample()) as u64 * input.ticks_per_sample();
        match self.mode {
            EchoMode::Loopback => self.loopback(audio, now),
            EchoMode::Turn => self.listen(start, now),
        }
    }

    /// Turn mode: keep the audio, run the VAD, act on what it saw.
    fn listen(&mut self, start: u64, now: Instant) {
        decode_pcm(self.cfg.input, &self.bytes, &mut self.pcm);
        self.capture.samples.extend_from_slice(&self.pcm);
        if let Some(td) = self.cfg.turn {
            let mut events = std::mem::take(&mut self.vad_events);
            events.clear();
            self.vad.process(
                &self.pcm,
                start,
                td.silence_duration_ms * TICKS_PER_MS,
                &mut events,
            );
            for &event in &events {
                match event {
                    VadEvent::Started { at } => self.speech_started(at, td),
                    VadEvent::Stopped {
                        start,
                        voiced_end,
                        at,
                    } => self.speech_stopped(start, voiced_end, at, td, now),
                }
            }
            self.vad_events = events;
        }
        self.trim();
    }

    /// Drops input audio no turn can still need.
    fn trim(&mut self) {
        let keep_from = match (self.cfg.turn, self.vad.speech_start()) {
            (None, _) => self.uncommitted_from,
            (Some(td), Some(start)) => start.saturating_sub(td.prefix_padding_ms * TICKS_PER_MS),
            (Some(td), None) => {
                // The prefix of a turn that may be starting right now.
                let keep_ms = td.prefix_padding_ms + (u64::from(START_WINDOWS) + 1) * WINDOW_MS;
                self.pos.saturating_sub(keep_ms * TICKS_PER_MS)
            }
        };
        self.capture
            .drop_before(keep_from.max(self.uncommitted_from));
        self.capture.cap();
    }

    fn speech_started(&mut self, at: u64, td: TurnDetection) {
        let item_id = self.next_id("item");
        self.emit(
            "input_audio_buffer.speech_started",
            json!({"audio_start_ms": to_ms(at), "item_id": item_id}),
        );
        self.speech_item = Some(item_id);
        if td.interrupt_response {
            self.queued = false;
            if self.active.is_some() {
                self.cancel("turn_detected");
            }
        }
    }

    fn speech_stopped(
        &mut self,
        start: u64,
        voiced_end: u64,
        at: u64,
        td: TurnDetection,
        now: Instant,
    ) {
        let item_id = match self.speech_item.take() {
            Some(id) => id,
            None => self.next_id("item"),
        };
        self.emit(
            "input_audio_buffer.speech_stopped",
            json!({"audio_end_ms": to_ms(at), "item_id": item_id}),
        );
        let from = start
            .saturating_sub(td.prefix_padding_ms * TICKS_PER_MS)
            .max(self.uncommitted_from);
        let to = (voiced_end + TAIL_MS * TICKS_PER_MS).min(at);
        self.commit(item_id, from, to);
        self.uncommitted_from = at;
        if td.create_response {
            if self.active.is_some() {
                self.queued = true;
            } else {
                self.start_response(now, false);
            }
        }
    }

    /// Turns input `[from, to)` into a user item: `committed`, the item
    /// events, and the transcription if the client asked for one.
    fn commit(&mut self, item_id: String, from: u64, to: u64) {
        let samples = self.capture.slice(from, to).to_vec();
        let format = self.cfg.input;
        let ms = to_ms(samples.len() as u64 * format.ticks_per_sample());
        let previous = self.previous_item.clone();
        self.emit(
            "input_audio_buffer.committed",
            json!({"previous_item_id": previous, "item_id": item_id}),
        );
        let item = json!({
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": null}],
        });
        self.announce_item(previous, item);
        if !self.cfg.transcription.is_null() {
            self.emit(
                "conversation.item.input_audio_transcription.completed",
                json!({
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": format!("(caller spoke {ms} ms)"),
                }),
            );
        }
        self.remember(ItemRecord {
            id: item_id.clone(),
            audio: None,
        });
        self.previous_item = Some(item_id);
        self.last_turn = Some(Turn {
            samples,
            format,
            ms,
        });
        self.stats.turns += 1;
    }

    /// `conversation.item.added` (+ `.done`) in GA, `.created` in beta.
    fn announce_item(&mut self, previous: Option<String>, item: Value) {
        let names = self.names;
        let body = json!({"previous_item_id": previous, "item": item});
        if let Some(done) = names.item_done {
            self.emit(names.item_added, body.clone());
            self.emit(done, body);
        } else {
            self.emit(names.item_added, body);
        }
    }

    fn remember(&mut self, record: ItemRecord) {
        if self.items.len() == MAX_ITEMS {
            self.items.pop_front();
        }
        self.items.push_back(record);
    }

    fn on_commit(&mut self, event_id: Option<&str>) {
        let from = self.uncommitted_from.max(self.capture.start);
        let to = self.capture.end();
        let ms = to_ms(to.saturating_sub(from));
        if ms < MIN_COMMIT_MS {
            return self.error(
                ApiError::new(
                    "input_audio_buffer_commit_empty",
                    format!(
                        "Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has {ms}ms of audio."
                    ),
                ),
                event_id,
            );
        }
        let item_id = match self.speech_item.take() {
            Some(id) => id,
            None => self.next_id("item"),
        };
        self.vad.reset();
        self.commit(item_id, from, to);
        self.uncommitted_from = self.pos;
        self.trim();
    }

    fn on_clear(&mut self) {
        self.uncommitted_from = self.pos;
        self.vad.reset();
        self.speech_item = None;
        self.trim();
        self.emit("input_audio_buffer.cleared", json!({}));
    }

    /// Loopback mode: answer this frame at once with the same audio, in the
    /// output format, inside the session's one long-lived response.
    fn loopback(&mut self, audio: &str, now: Instant) {
        if self.active.is_none() {
            self.start_response(now, true);
        }
        let (input, output) = (self.cfg.input, self.cfg.output);
        let same = input == output;
        if !same {
            decode_pcm(input, &self.bytes, &mut self.pcm);
            self.converted.clear();
            self.bytes.clear();
            match output {
                Format::Pcm16 => {
                    self.up.process(&self.pcm, &mut self.converted);
                    extend_le(&mut self.bytes, &self.converted);
                }
                Format::Pcmu => {
                    self.down.process(&self.pcm, &mut self.converted);
                    g711::encode_into(&self.converted, &mut self.bytes);
                }
            }
            self.base64.clear();
            BASE64.encode_string(&self.bytes, &mut self.base64);
        }
        let Some(r) = self.active.as_mut() else {
            return;
        };
        r.sent += self.bytes.len();
        let payload = if same { audio } else { self.base64.as_str() };
        self.counter += 1;
        let json = audio_delta_json(
            self.names.audio_delta,
            format_args!("event_{}_{:x}", self.tag, self.counter),
            &r.id,
            &r.item_id,
            payload,
        );
        self.out.push(json);
        self.stats.deltas_out += 1;
    }

    // ---- responses -------------------------------------------------------

    fn on_response_create(&mut self, event_id: Option<&str>, now: Instant) {
        if let Some(active) = &self.active {
            let message = format!(
                "Conversation already has an active response in progress: {}. Wait until the response is finished before creating a new one.",
                active.id
            );
            return self.error(
                ApiError::new("conversation_already_has_active_response", message),
                event_id,
            );
        }
        self.start_response(now, self.mode == EchoMode::Loopback);
    }

    fn on_response_cancel(&mut self, event: &Value, event_id: Option<&str>) {
        let wanted = event.get("response_id").and_then(Value::as_str);
        let matches = match (&self.active, wanted) {
            (Some(_), None) => true,
            (Some(active), Some(id)) => active.id == id,
            (None, _) => false,
        };
        if matches {
            return self.cancel("client_cancelled");
        }
        let message = match wanted {
            Some(id) => format!("Cancellation failed: response {id} is not active."),
            None => "Cancellation failed: no active response found.".to_owned(),
        };
        self.error(
            ApiError::new("response_cancel_not_active", message),
            event_id,
        );
    }

    fn response_json(
        &self,
        id: &str,
        status: &str,
        status_details: Value,
        output: Value,
        usage: Value,
    ) -> Value {
        match self.dialect {
            Dialect::Ga => json!({
                "object": "realtime.response",
                "id": id,
                "status": status,
                "status_details": status_details,
                "output": output,
                "conversation_id": format!("conv_{}", self.tag),
                "output_modalities": ["audio"],
                "audio": {"output": {"format": self.cfg.output.ga_json(), "voice": self.cfg.voice}},
                "max_output_tokens": "inf",
                "usage": usage,
            }),
            Dialect::Beta => json!({
                "object": "realtime.response",
                "id": id,
                "status": status,
                "status_details": status_details,
                "output": output,
                "modalities": ["audio", "text"],
                "output_audio_format": self.cfg.output.beta_name(),
                "voice": self.cfg.voice,
                "max_output_tokens": "inf",
                "usage": usage,
            }),
        }
    }

    fn assistant_item(&self, id: &str, status: &str, transcript: &str) -> Value {
        json!({
            "id": id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [{"type": self.names.output_audio_content, "transcript": transcript}],
        })
    }

    /// What the next (non-loopback) response says and does, in order of
    /// precedence: the outputs of function calls that no response has
    /// spoken yet; the goodbye and `end_call` on the caller's Nth turn
    /// ([`EchoOptions::end_call_after`]); the scripted tool call after the
    /// first turn ([`EchoOptions::tool_call`]); else the echo of the last turn.
    fn plan(&mut self) -> Content {
        let format = self.cfg.output;
        let input_ms = self.last_turn.as_ref().map_or(0, |t| t.ms);
        let outputs: Vec<(String, String)> = self
            .calls
            .iter_mut()
            .filter(|c| !c.answered)
            .filter_map(|c| {
                let output = c.output.clone()?;
                c.answered = true;
                Some((c.name.clone(), output))
            })
            .collect();
        if !outputs.is_empty() {
            let (transcript, ms) = if outputs.iter().all(|(name, _)| name == END_CALL) {
                (BYE_NOW.to_owned(), BYE_MS)
            } else {
                let said = outputs
                    .iter()
                    .map(|(name, output)| format!("(answer from {name}: {output})"))
                    .collect::<Vec<_>>()
                    .join(" ");
                (said, TOOL_ANSWER_MS)
            };
            return Content {
                audio: chime(format, ms),
                transcript,
                input_ms: 0,
                message: true,
                call: None,
            };
        }
        let turns = self.stats.turns;
        let end_call_due = self
            .end_call_after
            .is_some_and(|n| turns >= u64::from(n.max(1)));
        if end_call_due && !self.end_call_done {
            if self.cfg.may_call(END_CALL) {
                return Content {
                    audio: chime(format, GOODBYE_MS),
                    transcript: GOODBYE.to_owned(),
                    input_ms,
                    message: true,
                    call: Some((Script::EndCall, end_call())),
                };
            }
            self.end_call_done = true;
            tracing::warn!(
                session = %self.id,
                "--end-call-after: the session declares no end_call function in session.tools; answering normally"
            );
        }
        if turns >= 1 && !self.tool_call_done {
            if let Some(call) = &self.tool_call {
                if self.cfg.may_call(&call.name) {
                    return Content {
                        audio: Vec::new(),
                        transcript: String::new(),
                        input_ms,
                        message: false,
                        call: Some((Script::ToolCall, call.clone())),
                    };
                }
                self.tool_call_done = true;
                tracing::warn!(
                    session = %self.id,
                    tool = %call.name,
                    "scripted tool call skipped: the function is not declared in session.tools (or tool_choice is \"none\"); answering normally"
                );
            }
        }
        let Some(turn) = &self.last_turn else {
            // Asked to speak before the caller said anything: a greeting.
            return Content {
                audio: chime(format, GREETING_MS),
                transcript: "(greeting)".to_owned(),
                input_ms: 0,
                message: true,
                call: None,
            };
        };
        let (audio, ms) = (render(&turn.samples, turn.format, format), turn.ms);
        let transcript = format!("(echo of {} ms)", format.micros(audio.len()) / 1000);
        Content {
            audio,
            transcript,
            input_ms: ms,
            message: true,
            call: None,
        }
    }

    /// Starts a response: a turn response speaks (see [`Session::plan`]);
    /// a loopback one carries the deltas of every later append.
    fn start_response(&mut self, now: Instant, loopback: bool) {
        let format = self.cfg.output;
        let content = if loopback {
            Content {
                audio: Vec::new(),
                transcript: "(loopback)".to_owned(),
                input_ms: 0,
                message: true,
                call: None,
            }
        } else {
            self.plan()
        };
        let id = self.next_id("resp");
        let item_id = self.next_id("item");
        let response = self.response_json(&id, "in_progress", Value::Null, json!([]), Value::Null);
        self.emit("response.created", json!({ "response": response }));
        if content.message {
            let item = json!({
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            });
            self.emit(
                "response.output_item.added",
                json!({"response_id": id, "output_index": 0, "item": item}),
            );
            self.emit(
                "response.content_part.added",
                json!({
                    "response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0,
                    "part": {"type": "audio", "transcript": ""},
                }),
            );
            self.previous_item = Some(item_id.clone());
        }
        self.stats.responses += 1;
        let origin = now + self.first_audio_delay;
        self.active = Some(Response {
            id,
            item_id,
            message: content.message,
            call: content.call,
            format,
            audio: content.audio,
            sent: 0,
            chunk: 0,
            origin,
            due: origin,
            transcript: content.transcript,
            transcript_sent: 0,
            loopback,
            input_ms: content.input_ms,
        });
    }

    /// Sends every delta of the turn response that is due by `now`, and the
    /// closing events after the last one.
    pub(crate) fn on_tick(&mut self, now: Instant) {
        loop {
            let Some(r) = self.active.as_mut() else {
                return;
            };
            if r.loopback || r.due > now {
                return;
            }
            if r.sent >= r.audio.len() {
                return self.finish(now);
            }
            let len = (CHUNK_MS[r.chunk % CHUNK_MS.len()] * r.format.bytes_per_ms())
                .min(r.audio.len() - r.sent);
            r.chunk += 1;
            let word_end = next_word(&r.transcript, r.transcript_sent);
            let word = (word_end > r.transcript_sent)
                .then(|| r.transcript[r.transcript_sent..word_end].to_owned());
            r.transcript_sent = word_end;
            self.base64.clear();
            BASE64.encode_string(&r.audio[r.sent..r.sent + len], &mut self.base64);
            r.sent += len;
            let ahead = r.format.micros(r.sent) as f64 / 1e6;
            r.due = if self.speed.is_finite() && self.speed > 0.0 {
                r.origin + Duration::from_secs_f64(ahead / self.speed)
            } else {
                r.origin
            };
            let (id, item_id) = (r.id.clone(), r.item_id.clone());
            if let Some(word) = word {
                self.emit(
                    self.names.transcript_delta,
                    json!({"response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": word}),
                );
            }
            self.counter += 1;
            let json = audio_delta_json(
                self.names.audio_delta,
                format_args!("event_{}_{:x}", self.tag, self.counter),
                &id,
                &item_id,
                &self.base64,
            );
            self.out.push(json);
            self.stats.deltas_out += 1;
        }
    }

    /// `response.usage` in the service's shape (openai-python
    /// `RealtimeResponseUsage`): the input is the instructions and the whole
    /// conversation, its prefix read by the previous response counted as
    /// cached (a subset of `text_tokens`/`audio_tokens`, as the service
    /// reports it); then this response's words join the conversation.
    fn usage(&mut self, input_ms: u64, output_ms: u64, transcript: &str) -> Value {
        let text_of = |s: &str| (s.len() as u64).div_ceil(CHARS_PER_TEXT_TOKEN);
        let ctx = self.tokens;
        let new_audio = input_ms / MS_PER_AUDIO_TOKEN;
        let in_text = text_of(&self.cfg.instructions).saturating_add(ctx.text);
        let in_audio = ctx.audio.saturating_add(new_audio);
        let cached_text = ctx.cached_text.min(in_text);
        let cached_audio = ctx.cached_audio.min(in_audio);
        let out_audio = output_ms / MS_PER_OUTPUT_AUDIO_TOKEN;
        let out_text = text_of(transcript);
        self.tokens = TokenContext {
            text: ctx.text.saturating_add(out_text),
            audio: in_audio.saturating_add(out_audio),
            cached_text: in_text,
            cached_audio: in_audio,
        };
        let input = in_text.saturating_add(in_audio);
        let output = out_text.saturating_add(out_audio);
        json!({
            "total_tokens": input.saturating_add(output),
            "input_tokens": input,
            "output_tokens": output,
            "input_token_details": {
                "text_tokens": in_text, "audio_tokens": in_audio,
                "image_tokens": 0,
                "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        })
    }

    /// Completes the active response after its last delta: the message
    /// item's closing events, then the function call item if it has one,
    /// then `response.done`.
    fn finish(&mut self, now: Instant) {
        let Some(r) = self.active.take() else {
            return;
        };
        let (id, item_id) = (r.id.as_str(), r.item_id.as_str());
        let mut output = Vec::new();
        if r.message {
            if r.transcript_sent < r.transcript.len() {
                self.emit(
                    self.names.transcript_delta,
                    json!({"response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0,
                           "delta": &r.transcript[r.transcript_sent..]}),
                );
            }
            self.emit(
                self.names.transcript_done,
                json!({"response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0,
                       "transcript": r.transcript}),
            );
            self.emit(
                self.names.audio_done,
                json!({"response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0}),
            );
            self.emit(
                "response.content_part.done",
                json!({"response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "audio", "transcript": r.transcript}}),
            );
            let item = self.assistant_item(item_id, "completed", &r.transcript);
            self.emit(
                "response.output_item.done",
                json!({"response_id": id, "output_index": 0, "item": item}),
            );
            output.push(item);
            self.remember(ItemRecord {
                id: r.item_id.clone(),
                audio: Some((r.format, r.sent)),
            });
        }
        let mut text = r.transcript.clone();
        if let Some((script, call)) = &r.call {
            let item = self.function_call(id, output.len(), call);
            output.push(item);
            match script {
                Script::ToolCall => self.tool_call_done = true,
                Script::EndCall => self.end_call_done = true,
            }
            text.push(' ');
            text.push_str(&call.arguments);
        }
        let usage = self.usage(r.input_ms, r.format.micros(r.sent) / 1000, &text);
        let response = self.response_json(id, "completed", Value::Null, json!(output), usage);
        self.emit("response.done", json!({ "response": response }));
        if std::mem::take(&mut self.queued) {
            self.start_response(now, false);
        }
    }

    /// Sends a function call item of response `response_id` at
    /// `output_index` (PROTOCOLS.md §2.5): `output_item.added` with empty
    /// arguments, the argument deltas, `function_call_arguments.done`,
    /// `output_item.done`. Returns the completed item for `response.done`.
    fn function_call(&mut self, response_id: &str, output_index: usize, call: &ToolCall) -> Value {
        let item_id = self.next_id("item");
        let call_id = self.next_id("call");
        let item = |status: &str, arguments: &str| {
            json!({
                "id": item_id,
                "object": "realtime.item",
                "type": "function_call",
                "status": status,
                "name": call.name,
                "call_id": call_id,
                "arguments": arguments,
            })
        };
        self.emit(
            "response.output_item.added",
            json!({"response_id": response_id, "output_index": output_index, "item": item("in_progress", "")}),
        );
        for delta in argument_chunks(&call.arguments, ARGUMENTS_DELTA_BYTES) {
            self.emit(
                "response.function_call_arguments.delta",
                json!({"response_id": response_id, "item_id": item_id, "output_index": output_index,
                       "call_id": call_id, "delta": delta}),
            );
        }
        let mut done = json!({"response_id": response_id, "item_id": item_id, "output_index": output_index,
                              "call_id": call_id, "arguments": call.arguments});
        if self.dialect == Dialect::Ga {
            // Beta's `.done` has no `name` (PROTOCOLS.md §2.4): a bridge must
            // take it from the item.
            done["name"] = json!(call.name);
        }
        self.emit("response.function_call_arguments.done", done);
        let completed = item("completed", &call.arguments);
        self.emit(
            "response.output_item.done",
            json!({"response_id": response_id, "output_index": output_index, "item": completed}),
        );
        self.previous_item = Some(item_id.clone());
        self.remember(ItemRecord {
            id: item_id,
            audio: None,
        });
        self.record_call(call_id, call.name.clone());
        self.stats.tool_calls += 1;
        tracing::info!(session = %self.id, tool = %call.name, "function call made");
        completed
    }

    fn record_call(&mut self, call_id: String, name: String) {
        if self.calls.len() == MAX_CALLS {
            self.calls.pop_front();
        }
        self.calls.push_back(CallRecord {
            call_id,
            name,
            output: None,
            answered: false,
        });
    }

    /// Ends the active response early: no more deltas, `response.done`
    /// with status `cancelled`, the item keeping the audio sent so far.
    fn cancel(&mut self, reason: &str) {
        let Some(r) = self.active.take() else {
            return;
        };
        self.queued = false;
        // A function call not yet sent is not made at all.
        let heard = &r.transcript[..r.transcript_sent];
        let output = if r.message {
            json!([self.assistant_item(&r.item_id, "incomplete", heard)])
        } else {
            json!([])
        };
        let usage = self.usage(r.input_ms, r.format.micros(r.sent) / 1000, heard);
        let response = self.response_json(
            &r.id,
            "cancelled",
            json!({"type": "cancelled", "reason": reason}),
            output,
            usage,
        );
        self.emit("response.done", json!({ "response": response }));
        if r.message {
            self.remember(ItemRecord {
                id: r.item_id,
                audio: Some((r.format, r.sent)),
            });
        }
        self.stats.cancelled += 1;
    }

    // ---- conversation items ------------------------------------------------

    fn on_item_create(&mut self, event: &Value, event_id: Option<&str>) {
        let item = match event.get("item") {
            None => return self.error(ApiError::missing("item"), event_id),
            Some(Value::Object(item)) => item,
            Some(_) => return self.error(ApiError::invalid_type("item", "an object"), event_id),
        };
        let Some(kind) = item.get("type").and_then(Value::as_str) else {
            return self.error(ApiError::missing("item.type"), event_id);
        };
        match kind {
            "function_call_output" => {
                if let Err(err) = self.accept_output(item) {
                    return self.error(err, event_id);
                }
            }
            "function_call" => {
                // A call the client adds itself (say, replaying history): its
                // output is accepted later.
                if let Some(call_id) = item.get("call_id").and_then(Value::as_str) {
                    let name = item.get("name").and_then(Value::as_str).unwrap_or("");
                    self.record_call(call_id.to_owned(), name.to_owned());
                }
            }
            _ => {}
        }
        let mut item = item.clone();
        let id = match item.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => self.next_id("item"),
        };
        item.insert("id".to_owned(), json!(id));
        item.insert("object".to_owned(), json!("realtime.item"));
        item.entry("status").or_insert(json!("completed"));
        let previous = match event.get("previous_item_id").and_then(Value::as_str) {
            Some(p) => Some(p.to_owned()),
            None => self.previous_item.clone(),
        };
        self.announce_item(previous, Value::Object(item));
        self.remember(ItemRecord {
            id: id.clone(),
            audio: None,
        });
        self.previous_item = Some(id);
    }

    /// Records a `function_call_output` item's output for its call.
    ///
    /// The real service rejects an output whose call is not in the
    /// conversation (`invalid_tool_call_id`, "Tool call ID '…' not found in
    /// conversation."); the peer accepts it, as it always has (the tests of
    /// the peer in `tests/` rely on that), and logs a warning instead.
    fn accept_output(&mut self, item: &Map<String, Value>) -> Result<(), ApiError> {
        let call_id = match item.get("call_id") {
            None => return Err(ApiError::missing("item.call_id")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| ApiError::invalid_type("item.call_id", "a string"))?,
        };
        let output = match item.get("output") {
            None => return Err(ApiError::missing("item.output")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| ApiError::invalid_type("item.output", "a string"))?,
        };
        let Some(call) = self.calls.iter_mut().find(|c| c.call_id == call_id) else {
            tracing::warn!(
                session = %self.id,
                call_id,
                "function_call_output for a call not in the conversation (the real API rejects it with invalid_tool_call_id)"
            );
            return Ok(());
        };
        if !call.answered {
            call.output = Some(output.to_owned());
        }
        Ok(())
    }

    fn on_item_truncate(&mut self, event: &Value, event_id: Option<&str>) {
        match self.truncate(event) {
            Ok(body) => self.emit("conversation.item.truncated", body),
            Err(err) => self.error(err, event_id),
        }
    }

    fn truncate(&mut self, event: &Value) -> Result<Value, ApiError> {
        let item_id = match event.get("item_id") {
            None => return Err(ApiError::missing("item_id")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| ApiError::invalid_type("item_id", "a string"))?,
        };
        let content_index = match event.get("content_index") {
            None => return Err(ApiError::missing("content_index")),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| ApiError::invalid_type("content_index", "a non-negative integer"))?,
        };
        let audio_end_ms = match event.get("audio_end_ms") {
            None => return Err(ApiError::missing("audio_end_ms")),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| ApiError::invalid_type("audio_end_ms", "a non-negative integer"))?,
        };
        // The item of the response still running counts what it sent so far.
        let live = self
            .active
            .as_ref()
            .filter(|r| r.message && r.item_id == item_id)
            .map(|r| (r.format, r.sent));
        let record = self.items.iter_mut().find(|r| r.id == item_id);
        let audio = match (live, &record) {
            (Some(audio), _) => Some(audio),
            (None, Some(record)) => record.audio,
            (None, None) => {
                return Err(ApiError::new(
                    "item_truncate_invalid_item_id",
                    format!("Item with item_id not found: {item_id}."),
                )
                .param("item_id"))
            }
        };
        let Some((format, sent)) = audio else {
            return Err(ApiError::invalid_value(
                "item_id",
                format!(
                    "Only assistant messages with audio can be truncated; {item_id} is not one."
                ),
            ));
        };
        if content_index != 0 {
            return Err(ApiError::invalid_value(
                "content_index",
                format!("Item {item_id} has no content part {content_index}."),
            ));
        }
        let sent_micros = format.micros(sent);
        if audio_end_ms.saturating_mul(1000) > sent_micros {
            return Err(ApiError::invalid_value(
                "audio_end_ms",
                format!(
                    "audio_end_ms ({audio_end_ms}) is longer than the audio of item {item_id} ({} ms).",
                    sent_micros / 1000
                ),
            ));
        }
        if live.is_none() {
            if let Some(record) = record {
                record.audio = Some((format, audio_end_ms as usize * format.bytes_per_ms()));
            }
        }
        Ok(
            json!({"item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms}),
        )
    }

    fn on_item_delete(&mut self, event: &Value, event_id: Option<&str>) {
        let Some(item_id) = event.get("item_id").and_then(Value::as_str) else {
            return self.error(ApiError::missing("item_id"), event_id);
        };
        match self.items.iter().position(|r| r.id == item_id) {
            Some(i) => {
                self.items.remove(i);
                let item_id = item_id.to_owned();
                if self.previous_item.as_deref() == Some(item_id.as_str()) {
                    self.previous_item = None;
                }
                self.emit("conversation.item.deleted", json!({ "item_id": item_id }));
            }
            None => self.error(
                ApiError::new(
                    "item_delete_invalid_item_id",
                    format!("Item with item_id not found: {item_id}."),
                )
                .param("item_id"),
                event_id,
            ),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_words_concatenate() {
        let t = "(echo of 1234 ms)";
        let mut at = 0;
        let mut joined = String::new();
        while at < t.len() {
            let end = next_word(t, at);
            joined.push_str(&t[at..end]);
            at = end;
        }
        assert_eq!(joined, t);
    }

    fn session(dialect: Dialect, tool_call: Option<&str>, end_call_after: Option<u32>) -> Session {
        let options = EchoOptions {
            tool_call: tool_call.map(|t| t.parse().expect("tool call")),
            end_call_after,
            ..EchoOptions::default()
        };
        let mut s = Session::new(dialect, &options, "echo".into(), "t".into());
        s.out.clear();
        s
    }

    /// Manual turns in μ-law, with function tools `tools`.
    fn configure(s: &mut Session, tools: &[&str]) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|name| json!({"type": "function", "name": name, "parameters": {"type": "object"}}))
            .collect();
        let session = match s.dialect {
            Dialect::Ga => json!({"type": "realtime", "tools": tools, "audio": {"input": {
                "format": {"type": "audio/pcmu"}, "turn_detection": null},
                "output": {"format": {"type": "audio/pcmu"}}}}),
            Dialect::Beta => json!({"tools": tools, "turn_detection": null,
                "input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}),
        };
        let update = json!({"type": "session.update", "session": session});
        s.on_text(&update.to_string(), Instant::now());
        assert_eq!(types(&drain(s)), ["session.updated"]);
    }

    /// A 300 ms manual turn, committed and answered; returns the events up
    /// to the end of the response.
    fn turn(s: &mut Session, now: Instant) -> Vec<Value> {
        let loud: Vec<i16> = (0..160)
            .map(|i| if i % 8 < 4 { 8000 } else { -8000 })
            .collect();
        let mut frame = Vec::new();
        g711::encode_into(&loud, &mut frame);
        for _ in 0..15 {
            let e = json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(&frame)});
            s.on_text(&e.to_string(), now);
        }
        s.on_text(r#"{"type":"input_audio_buffer.commit"}"#, now);
        s.on_text(r#"{"type":"response.create"}"#, now);
        s.on_tick(now + Duration::from_secs(60));
        drain(s)
    }

    fn drain(s: &mut Session) -> Vec<Value> {
        s.out
            .drain(..)
            .map(|t| serde_json::from_str(&t).expect("valid JSON"))
            .collect()
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().filter_map(|e| e["type"].as_str()).collect()
    }

    /// The events of the last response, from `response.created`, with
    /// consecutive deltas of one kind collapsed into one.
    fn response_shape(events: &[Value]) -> Vec<&str> {
        let kinds = types(events);
        let from = kinds
            .iter()
            .rposition(|k| *k == "response.created")
            .expect("response.created");
        let mut shape: Vec<&str> = Vec::new();
        for kind in &kinds[from..] {
            if !(kind.ends_with(".delta") && shape.last() == Some(kind)) {
                shape.push(kind);
            }
        }
        shape
    }

    #[test]
    fn first_turn_is_answered_by_the_scripted_call() {
        for dialect in [Dialect::Ga, Dialect::Beta] {
            let mut s = session(
                dialect,
                Some(r#"lookup_order:{"order_id":"12345678"}"#),
                None,
            );
            configure(&mut s, &["lookup_order"]);
            let events = turn(&mut s, Instant::now());
            assert_eq!(
                response_shape(&events),
                [
                    "response.created",
                    "response.output_item.added",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                    "response.done"
                ],
                "{dialect}"
            );
            let deltas = events
                .iter()
                .filter(|e| e["type"] == "response.function_call_arguments.delta")
                .count();
            assert!(deltas >= 2, "{deltas} argument deltas");
            let done = events
                .iter()
                .find(|e| e["type"] == "response.function_call_arguments.done")
                .unwrap();
            assert_eq!(done["arguments"], r#"{"order_id":"12345678"}"#);
            // `name` is a GA field of `.done`; beta has it on the item only.
            assert_eq!(done["name"].is_string(), dialect == Dialect::Ga, "{done}");
            let response = &events.last().unwrap()["response"];
            assert_eq!(response["status"], "completed");
            assert_eq!(response["output"][0]["type"], "function_call");
            assert_eq!(response["output"][0]["call_id"], done["call_id"]);
            assert!(response["usage"]["total_tokens"].as_u64().is_some());
            assert_eq!(s.stats.tool_calls, 1);
            // Once only: the next turn is echoed.
            let events = turn(&mut s, Instant::now());
            assert!(types(&events).contains(&"response.content_part.added"));
            assert!(!types(&events).contains(&"response.function_call_arguments.done"));
        }
    }

    #[test]
    fn cancelled_goodbye_makes_no_call_and_the_next_turn_retries() {
        let mut s = session(Dialect::Ga, None, Some(1));
        configure(&mut s, &["end_call"]);
        let t0 = Instant::now();
        let loud = BASE64.encode([0x10u8; 160]);
        for _ in 0..15 {
            let e = json!({"type": "input_audio_buffer.append", "audio": loud});
            s.on_text(&e.to_string(), t0);
        }
        s.on_text(r#"{"type":"input_audio_buffer.commit"}"#, t0);
        s.on_text(r#"{"type":"response.create"}"#, t0);
        s.on_tick(t0);
        s.on_text(r#"{"type":"response.cancel"}"#, t0);
        let events = drain(&mut s);
        assert!(!types(&events).contains(&"response.function_call_arguments.done"));
        let done = events.last().unwrap();
        assert_eq!(done["response"]["status"], "cancelled");
        assert_eq!(done["response"]["output"][0]["type"], "message");
        assert_eq!(s.stats.tool_calls, 0);

        let events = turn(&mut s, t0);
        let output = &events.last().unwrap()["response"]["output"];
        assert_eq!(output[0]["content"][0]["transcript"], GOODBYE);
        assert_eq!(output[1]["name"], "end_call");
        assert_eq!(output[1]["arguments"], r#"{"reason":"the caller is done"}"#);
    }

    #[test]
    fn a_response_before_any_caller_turn_is_a_spoken_greeting() {
        let mut s = session(Dialect::Ga, None, None);
        configure(&mut s, &[]);
        let t0 = Instant::now();
        drain(&mut s);
        s.on_text(
            r#"{"type":"response.create","response":{"instructions":"Greet the caller."}}"#,
            t0,
        );
        s.on_tick(t0 + Duration::from_secs(60));
        let events = drain(&mut s);
        let audio: usize = events
            .iter()
            .filter(|e| e["type"] == "response.output_audio.delta")
            .map(|e| BASE64.decode(e["delta"].as_str().unwrap()).unwrap().len())
            .sum();
        assert!(audio > 0, "{:?}", types(&events));
        let done = events.last().unwrap();
        assert_eq!(
            done["response"]["output"][0]["content"][0]["transcript"],
            "(greeting)"
        );
    }

    #[test]
    fn outputs_are_acked_and_spoken_once() {
        let mut s = session(Dialect::Ga, Some("ping"), None);
        configure(&mut s, &["ping"]);
        let t0 = Instant::now();
        let events = turn(&mut s, t0);
        let done = events.last().unwrap();
        let call_id = done["response"]["output"][0]["call_id"].as_str().unwrap();
        let output = json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": "pong"}});
        s.on_text(&output.to_string(), t0);
        // An output for an unknown call is acked too (logged as a warning).
        let stray = json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_nope", "output": "{}"}});
        s.on_text(&stray.to_string(), t0);
        // A missing output is a client error.
        let bad = json!({"type": "conversation.item.create", "event_id": "cb_bad", "item": {
            "type": "function_call_output", "call_id": call_id}});
        s.on_text(&bad.to_string(), t0);
        let events = drain(&mut s);
        assert_eq!(
            types(&events),
            [
                "conversation.item.added",
                "conversation.item.done",
                "conversation.item.added",
                "conversation.item.done",
                "error"
            ]
        );
        assert_eq!(events[4]["error"]["param"], "item.output");
        s.on_text(r#"{"type":"response.create"}"#, t0);
        s.on_tick(t0 + Duration::from_secs(60));
        let events = drain(&mut s);
        let done = events.last().unwrap();
        let transcript = &done["response"]["output"][0]["content"][0]["transcript"];
        assert_eq!(transcript, "(answer from ping: pong)");
        // Spoken once: the next response echoes.
        s.on_text(r#"{"type":"response.create"}"#, t0);
        s.on_tick(t0 + Duration::from_secs(60));
        let events = drain(&mut s);
        let transcript = events.last().unwrap()["response"]["output"][0]["content"][0]
            ["transcript"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(transcript.starts_with("(echo of "), "{transcript}");
    }

    #[test]
    fn argument_chunks_concatenate_on_char_boundaries() {
        let args = r#"{"reason":"the caller is done","café":"ü"}"#;
        let chunks = argument_chunks(args, 12);
        assert!(chunks.len() > 2, "{chunks:?}");
        assert_eq!(chunks.concat(), args);
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 13));
        assert_eq!(argument_chunks("{}", 12), ["{}"]);
        assert!(argument_chunks("", 12).is_empty());
    }

    #[test]
    fn hand_written_delta_is_valid_json() {
        let s = audio_delta_json(
            "response.output_audio.delta",
            format_args!("event_{}_{:x}", "ab_1", 7),
            "resp_ab_1_2",
            "item_ab_1_3",
            "AAE=",
        );
        let v: Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v["delta"], "AAE=");
        assert_eq!(v["event_id"], "event_ab_1_7");
    }
}
