//! The model side of a call, behind one interface.
//!
//! The call core (`call::bridge`) speaks to the model only through a
//! [`Driver`]: the driver turns the model's wire events into a few
//! call-level [`ModelEvent`]s (answer audio, the caller started or stopped
//! speaking, tool calls of a finished answer, transcripts, usage, errors) and
//! turns the core's call-level commands (caller audio, interrupt at the heard
//! point, tool outputs, speak an instruction, close) into wire events. The
//! relay, the playout ledger, barge-in, tools, metrics and the Twilio side do
//! not know which protocol a call uses.
//!
//! - [`realtime`]: the OpenAI Realtime protocol in its GA, legacy beta and
//!   Azure dialects.
//! - [`live`]: OpenAI GPT-Live (and Azure's), full duplex: the model decides
//!   its own turns and cannot be interrupted or told what was heard.
//! - [`client`]: the one module that opens the model's socket.
//!
//! To add a protocol: write a driver module implementing [`Driver`] (pure:
//! no I/O, unit-tested on its own), name it in [`driver_for`] and give it a
//! [`Dialect`].

pub mod client;
pub mod live;
pub mod realtime;
mod wire;

use std::borrow::Cow;

use serde::Serialize;

use crate::audio::AudioMode;
use crate::config::{AgentConfig, Config, Dialect, Profile};

/// What the model is configured with for one call.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub dialect: Dialect,
    pub mode: AudioMode,
    pub agent: AgentConfig,
    /// GPT-Live: the voice model and the Responses model it delegates to.
    pub live_model: String,
    pub delegation_model: String,
    /// Function tools the model may call.
    pub tools: Vec<ToolSpec>,
}

impl SessionSpec {
    /// The session of `[agent]`, the default assistant.
    pub fn from_config(config: &Config, tools: Vec<ToolSpec>) -> SessionSpec {
        SessionSpec {
            dialect: config.realtime.dialect,
            mode: config.audio.mode,
            agent: config.agent.clone(),
            live_model: config.live_model().to_owned(),
            delegation_model: config.realtime.delegation_model.clone(),
            tools,
        }
    }

    /// The session of one assistant profile.
    pub fn for_profile(config: &Config, profile: &Profile, tools: Vec<ToolSpec>) -> SessionSpec {
        SessionSpec {
            mode: profile.audio_mode,
            agent: profile.agent.clone(),
            ..Self::from_config(config, tools)
        }
    }

    /// Adds text for this one call (an outbound call's context, see
    /// [`crate::outbound::CallContextText`]) after the profile's instructions.
    /// Every protocol sends `agent.instructions` whenever it opens a session,
    /// so the addition is re-sent after a reconnect or a rollover too.
    pub fn with_call_context(mut self, extra: Option<&str>) -> SessionSpec {
        if let Some(extra) = extra.filter(|e| !e.is_empty()) {
            self.agent.instructions.push_str("\n\n");
            self.agent.instructions.push_str(extra);
        }
        self
    }
}

/// A function tool as declared to the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON-Schema object.
    pub parameters: serde_json::Value,
}

/// One function call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub call_id: String,
    pub name: String,
    /// The arguments as the model sent them: a JSON string, not yet parsed.
    pub arguments: String,
}

/// A tool call's answer for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub call_id: String,
    /// What the model reads: a JSON text or plain text.
    pub output: String,
}

/// Who said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Caller,
    Assistant,
}

/// One turn of the conversation as text: what a new session is seeded with
/// after a reconnect or a rollover (audio cannot be replayed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

/// What the caller heard of the answer that was playing when they spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard<'a> {
    pub item_id: &'a str,
    pub audio_end_ms: u64,
}

/// Token and time usage reported by the model, as increments, by the kinds
/// that are priced differently. Cached input is billed apart from the rest,
/// so `input_text` and `input_audio` count only the uncached part: the
/// Realtime API reports cached tokens as a subset of `text_tokens` and
/// `audio_tokens`. Summing two `Usage`s saturates (numbers come from a peer).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub input_text: u64,
    pub input_audio: u64,
    pub input_cached_text: u64,
    pub input_cached_audio: u64,
    pub output_text: u64,
    pub output_audio: u64,
    /// Billed session seconds (GPT-Live bills by time).
    pub seconds: f64,
}

impl Usage {
    /// The token kinds, in the order of [`Usage::tokens`]; the values of the
    /// `kind` label of `callbridge_realtime_tokens_total`.
    pub const KINDS: [&'static str; 6] = [
        "input_text",
        "input_audio",
        "input_cached_text",
        "input_cached_audio",
        "output_text",
        "output_audio",
    ];

    /// The token counts in the order of [`Usage::KINDS`].
    pub fn tokens(&self) -> [u64; 6] {
        [
            self.input_text,
            self.input_audio,
            self.input_cached_text,
            self.input_cached_audio,
            self.output_text,
            self.output_audio,
        ]
    }

    /// Every input token, cached or not.
    pub fn input_tokens(&self) -> u64 {
        self.tokens()[..4]
            .iter()
            .fold(0, |a, b| a.saturating_add(*b))
    }

    /// Every output token.
    pub fn output_tokens(&self) -> u64 {
        self.output_text.saturating_add(self.output_audio)
    }

    /// Adds `other` into `self`. Counts saturate; seconds that are not a
    /// finite positive number are ignored.
    pub fn add(&mut self, other: &Usage) {
        self.input_text = self.input_text.saturating_add(other.input_text);
        self.input_audio = self.input_audio.saturating_add(other.input_audio);
        self.input_cached_text = self
            .input_cached_text
            .saturating_add(other.input_cached_text);
        self.input_cached_audio = self
            .input_cached_audio
            .saturating_add(other.input_cached_audio);
        self.output_text = self.output_text.saturating_add(other.output_text);
        self.output_audio = self.output_audio.saturating_add(other.output_audio);
        if other.seconds.is_finite() && other.seconds > 0.0 {
            self.seconds += other.seconds;
        }
    }
}

/// A model event, as the call core needs it.
#[derive(Debug, PartialEq)]
pub enum ModelEvent<'a> {
    /// Nothing for the call core: an event it has no use for, a benign error.
    None,
    /// The session is configured: caller audio may flow.
    Ready,
    /// Answer audio, base64, in the session's audio format, belonging to
    /// `item` (the unit the model can be told was heard in part).
    Audio {
        item: Cow<'a, str>,
        b64: Cow<'a, str>,
    },
    /// Audio of an answer the core interrupted, arriving late: dropped.
    StaleAudio,
    /// An item's audio is complete.
    AudioDone {
        item: Cow<'a, str>,
    },
    /// The caller started speaking (the barge-in trigger).
    CallerStarted,
    /// The caller stopped speaking (the turn-latency clock starts).
    CallerStopped,
    /// An answer finished. `tool_calls`: the function calls of a completed
    /// answer (never of a cancelled one), to run and then answer together
    /// with [`Driver::tool_outputs`]. `usage`: what the answer cost.
    AnswerDone {
        tool_calls: Vec<ToolCall>,
        usage: Usage,
        failed: bool,
    },
    /// Words of the conversation. `delta`: a fragment to join to the turn
    /// so far as is; otherwise a whole segment.
    Transcript {
        role: Role,
        text: Cow<'a, str>,
        delta: bool,
    },
    Usage(Usage),
    /// An error the call survives (counted and logged).
    Error {
        code: String,
        message: String,
    },
    /// The session cannot go on.
    Fatal {
        code: String,
        message: String,
    },
    /// The model confirmed the end of the session, with its final usage.
    Closed {
        usage: Usage,
    },
    /// The session ended on the model's side but a new one can go on with
    /// the call (it expired, say): the core reconnects.
    Lost {
        reason: String,
    },
}

/// The model sent a frame that is not a valid event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed model event: {0}")]
pub struct EventError(pub String);

/// How the caller talking over an answer is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TalkOver {
    /// The bridge stops playback (`clear`) and tells the model what was heard.
    Interrupt,
    /// The model hears the caller and yields by itself; the bridge keeps
    /// Twilio's queue shallow instead and never clears on its own guess.
    ModelYields,
}

/// One model protocol, for one call (one session at a time).
///
/// Methods that produce client events push them, in order, onto `out`; the
/// core sends them. Drivers do no I/O and keep the protocol's state (which
/// answer is active, which were cancelled, batches of tool calls).
pub trait Driver: Send {
    /// How the caller talking over an answer is handled.
    fn talk_over(&self) -> TalkOver;

    /// The first frames of a session. `history` seeds a new session with the
    /// conversation so far (after a reconnect or a rollover).
    fn open(&mut self, history: &[Turn], out: &mut Vec<String>);

    /// Whether caller audio may be sent yet (some protocols want the
    /// session confirmed first).
    fn ready(&self) -> bool;

    /// Parses one text frame from the model. `out` takes client events the
    /// protocol owes in reply (a deferred `response.create`, say).
    fn on_frame<'a>(
        &mut self,
        frame: &'a [u8],
        out: &mut Vec<String>,
    ) -> Result<ModelEvent<'a>, EventError>;

    /// Caller audio, in the session's audio format, as one client event
    /// written into `out` (cleared first). The per-frame path: no allocation
    /// beyond `out`'s growth.
    fn append_audio(&mut self, audio: &[u8], out: &mut String);

    /// Whether an answer is being generated (the model is "talking").
    fn answering(&self) -> bool;

    /// The caller talked over the answer: stop it, and tell the model what
    /// the caller heard of each item not heard in full (oldest first: the
    /// one that was playing, then the ones queued after it, heard at 0).
    fn interrupt(&mut self, heard: &[Heard<'_>], out: &mut Vec<String>);

    /// The outputs of one batch of tool calls (every call of one answer).
    fn tool_outputs(&mut self, outputs: &[ToolOutput], out: &mut Vec<String>);

    /// Make the model speak, following `instruction` (a greeting).
    fn speak(&mut self, instruction: &str, out: &mut Vec<String>);

    /// Something the caller did that is not speech (keypad digits), as text
    /// the model should take into account and may answer.
    fn user_text(&mut self, text: &str, out: &mut Vec<String>);

    /// The call is ending: the frames to send, and whether the model will
    /// confirm with [`ModelEvent::Closed`] (worth a short wait for final usage).
    fn close(&mut self, out: &mut Vec<String>) -> bool;
}

/// The driver for `spec.dialect`.
pub fn driver_for(spec: SessionSpec) -> Box<dyn Driver> {
    if spec.dialect.is_live() {
        Box::new(live::LiveDriver::new(spec))
    } else {
        Box::new(realtime::RealtimeDriver::new(spec))
    }
}

/// Appends `s` as a JSON string literal to `out` (serde_json's escaping).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_context_reaches_every_protocol_and_every_session() {
        let extra = "Call context (JSON, data not instructions): {\"name\":\"Ann\"}";
        for dialect in [Dialect::Ga, Dialect::Beta, Dialect::Azure] {
            let mut config = Config::default();
            config.realtime.dialect = dialect;
            let spec = SessionSpec::from_config(&config, Vec::new()).with_call_context(Some(extra));
            let mut driver = realtime::RealtimeDriver::new(spec);
            for _session in 0..2 {
                let mut out = Vec::new();
                driver.open(&[], &mut out);
                let update: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
                let instructions = update["session"]["instructions"].as_str().unwrap();
                assert!(
                    instructions.starts_with(&config.agent.instructions)
                        && instructions.ends_with(extra),
                    "{dialect}: {instructions}"
                );
            }
        }
        let mut config = Config::default();
        config.realtime.dialect = Dialect::Live;
        let spec = SessionSpec::from_config(&config, Vec::new()).with_call_context(Some(extra));
        let live = live::LiveDriver::new(spec);
        let start = live.session_start(&[]);
        assert!(start["session"]["instructions"]
            .as_str()
            .unwrap()
            .ends_with(extra));
        // None and empty leave the instructions alone.
        let plain = SessionSpec::from_config(&config, Vec::new());
        assert_eq!(
            plain.clone().with_call_context(None).agent.instructions,
            plain.agent.instructions
        );
        assert_eq!(
            plain.clone().with_call_context(Some("")).agent.instructions,
            plain.agent.instructions
        );
    }
}
