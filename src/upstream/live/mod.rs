//! OpenAI GPT-Live as a [`Driver`].
//!
//! GPT-Live is full duplex and model-driven: the caller's audio flows
//! continuously, the model decides when to speak and when to yield, and
//! there is no speech-started event, no cancel and no truncate. So this
//! driver never reports [`ModelEvent::CallerStarted`] and ignores
//! interrupts: the call core keeps Twilio's queue shallow instead, so that
//! what was sent is what was heard.
//!
//! - The first frame is `session.start` (model, instructions, voice, one
//!   audio format for both directions, tools under
//!   `delegation.responses.tools`, and earlier turns as `input` when a new
//!   session continues a call); caller audio waits for `session.started`,
//!   whose echoed format must be the one asked for.
//! - Answer audio (`session.output_audio.delta`) has no item: it is played
//!   as one stream.
//! - Tools are delegated to a Responses backend whose events arrive wrapped
//!   in `response.event`; the function calls of one backend response are
//!   collected and surfaced when it completes, and answered with one
//!   `response.item.create` each, then one `response.create`.
//! - Greeting: `session.commentary.append`, which the model says in its own
//!   words. End: `session.close`, confirmed by `session.closed` with the
//!   final usage.

pub mod events;

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{json, Value};

use events::{parse_live_event, BackendEvent, LiveEvent};

use super::{
    push_json_str, Driver, EventError, Heard, ModelEvent, Role, SessionSpec, TalkOver, ToolCall,
    ToolOutput, Turn, Usage,
};
use crate::audio::AudioMode;

/// The one item id all GPT-Live answer audio is played under.
const ITEM: &str = "live";
/// `session.start` takes at most this many history messages.
const MAX_INPUT_MESSAGES: usize = 128;
/// The `event_id` of `session.start`, echoed by `session.started` and errors.
const START_EVENT_ID: &str = "cb_start";

pub struct LiveDriver {
    spec: SessionSpec,
    started: bool,
    /// Function calls of backend responses not yet completed.
    calls: Vec<ToolCall>,
    /// Cumulative billed seconds reported so far.
    seconds: f64,
}

impl LiveDriver {
    pub fn new(spec: SessionSpec) -> Self {
        LiveDriver {
            spec,
            started: false,
            calls: Vec::new(),
            seconds: 0.0,
        }
    }

    /// The session's one audio format, as `session.start` names it.
    fn format(&self) -> (&'static str, u64) {
        match self.spec.mode {
            AudioMode::Pcmu => ("audio/pcmu", 8000),
            AudioMode::Pcm16 => ("audio/pcm", 24000),
        }
    }

    /// The `session.start` client event, seeded with `history`.
    pub fn session_start(&self, history: &[Turn]) -> Value {
        let (kind, rate) = self.format();
        let agent = &self.spec.agent;
        let tools: Vec<Value> = self
            .spec
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                })
            })
            .collect();
        let mut session = json!({
            "model": self.spec.live_model,
            "instructions": agent.instructions,
            "audio": {
                "format": {"type": kind, "rate": rate},
                "output": {"voice": agent.voice},
            },
            "delegation": {
                "type": "responses",
                "responses": {"model": self.spec.delegation_model, "tools": tools},
            },
        });
        let skip = history.len().saturating_sub(MAX_INPUT_MESSAGES);
        let input: Vec<Value> = history[skip..]
            .iter()
            .map(|turn| match turn.role {
                Role::Caller => json!({
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": turn.text}],
                }),
                Role::Assistant => json!({
                    "type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": turn.text}],
                }),
            })
            .collect();
        if !input.is_empty() {
            session["input"] = Value::Array(input);
        }
        json!({"type": "session.start", "event_id": START_EVENT_ID, "session": session})
    }

    fn usage_since_last(&mut self, cumulative: f64) -> Usage {
        // Values are cumulative: report only what is new (never negative).
        let delta = (cumulative - self.seconds).max(0.0);
        self.seconds = self.seconds.max(cumulative);
        Usage {
            seconds: delta,
            ..Usage::default()
        }
    }
}

impl Driver for LiveDriver {
    fn talk_over(&self) -> TalkOver {
        TalkOver::ModelYields
    }

    fn open(&mut self, history: &[Turn], out: &mut Vec<String>) {
        self.started = false;
        self.calls.clear();
        self.seconds = 0.0;
        out.push(self.session_start(history).to_string());
    }

    fn ready(&self) -> bool {
        self.started
    }

    fn on_frame<'a>(
        &mut self,
        frame: &'a [u8],
        _out: &mut Vec<String>,
    ) -> Result<ModelEvent<'a>, EventError> {
        let event = parse_live_event(frame).map_err(|e| EventError(e.to_string()))?;
        Ok(match event {
            LiveEvent::AudioDelta(b64) => ModelEvent::Audio {
                item: Cow::Borrowed(ITEM),
                b64,
            },
            LiveEvent::SessionStarted(session) => {
                let (kind, rate) = self.format();
                match &session.format {
                    Some((k, r)) if k == kind && *r == Some(rate) => {
                        self.started = true;
                        tracing::debug!(session_id = %session.id, "GPT-Live session started");
                        ModelEvent::Ready
                    }
                    other => ModelEvent::Fatal {
                        code: "format_mismatch".into(),
                        message: format!(
                            "asked for {kind} at {rate} Hz, the session echoed {}",
                            match other {
                                Some((k, Some(r))) => format!("{k} at {r} Hz"),
                                Some((k, None)) => format!("{k} with no rate"),
                                None => "no audio format".into(),
                            }
                        ),
                    },
                }
            }
            LiveEvent::InputTranscript(text) => ModelEvent::Transcript {
                role: Role::Caller,
                text,
                delta: true,
            },
            LiveEvent::OutputTranscript(text) => ModelEvent::Transcript {
                role: Role::Assistant,
                text,
                delta: true,
            },
            LiveEvent::Backend { event, .. } => match event {
                BackendEvent::FunctionCall {
                    call_id,
                    name,
                    arguments,
                } => {
                    self.calls.push(ToolCall {
                        call_id,
                        name,
                        arguments,
                    });
                    ModelEvent::None
                }
                BackendEvent::Completed => ModelEvent::AnswerDone {
                    tool_calls: std::mem::take(&mut self.calls),
                    usage: Usage::default(),
                    failed: false,
                },
                BackendEvent::Ended(how) => {
                    self.calls.clear();
                    ModelEvent::AnswerDone {
                        tool_calls: Vec::new(),
                        usage: Usage::default(),
                        failed: how == "response.failed",
                    }
                }
                BackendEvent::Other => ModelEvent::None,
            },
            LiveEvent::UsageUpdated { seconds } => {
                ModelEvent::Usage(self.usage_since_last(seconds))
            }
            LiveEvent::Closed { reason, seconds } => {
                tracing::debug!(reason = %reason, "GPT-Live session closed");
                let usage = seconds.map_or(Usage::default(), |s| self.usage_since_last(s));
                ModelEvent::Closed { usage }
            }
            LiveEvent::Error(err) => {
                let code = err.code().to_owned();
                let message = err.message.clone().unwrap_or_default();
                // Without `session.started` there is no session to go on with.
                if err.is_fatal() || !self.started {
                    ModelEvent::Fatal { code, message }
                } else {
                    ModelEvent::Error { code, message }
                }
            }
            LiveEvent::Other(_) => ModelEvent::None,
        })
    }

    fn append_audio(&mut self, audio: &[u8], out: &mut String) {
        use base64::Engine as _;
        out.clear();
        out.reserve(48 + audio.len().div_ceil(3) * 4);
        out.push_str(r#"{"type":"session.input_audio.append","audio":""#);
        base64::engine::general_purpose::STANDARD.encode_string(audio, out);
        out.push_str(r#""}"#);
    }

    fn answering(&self) -> bool {
        // Speech is the model's own business; nothing to cancel.
        false
    }

    fn interrupt(&mut self, _heard: &[Heard<'_>], _out: &mut Vec<String>) {
        // GPT-Live has no cancel and no truncate: the model yields by itself.
    }

    fn tool_outputs(&mut self, outputs: &[ToolOutput], out: &mut Vec<String>) {
        if outputs.is_empty() {
            return;
        }
        for o in outputs {
            let mut msg = String::with_capacity(112 + o.output.len());
            msg.push_str(
                r#"{"type":"response.item.create","item":{"type":"function_call_output","call_id":"#,
            );
            push_json_str(&mut msg, &o.call_id);
            msg.push_str(r#","output":"#);
            push_json_str(&mut msg, &o.output);
            msg.push_str("}}");
            out.push(msg);
        }
        // One continuation for the whole batch: a partial one is refused.
        out.push(r#"{"type":"response.create"}"#.to_owned());
    }

    fn speak(&mut self, instruction: &str, out: &mut Vec<String>) {
        let mut msg = String::with_capacity(96 + instruction.len());
        let _ = write!(
            msg,
            r#"{{"type":"session.commentary.append","delegation_id":null,"content":"#
        );
        push_json_str(&mut msg, instruction);
        msg.push('}');
        out.push(msg);
    }

    fn user_text(&mut self, text: &str, out: &mut Vec<String>) {
        // Silent context: the model hears about it and decides itself
        // whether and how to answer (GPT-Live takes no user text messages).
        let mut msg = String::with_capacity(96 + text.len());
        msg.push_str(r#"{"type":"session.thinking.append","delegation_id":null,"content":"#);
        push_json_str(&mut msg, text);
        msg.push('}');
        out.push(msg);
    }

    fn close(&mut self, out: &mut Vec<String>) -> bool {
        out.push(r#"{"type":"session.close"}"#.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Dialect};
    use crate::upstream::ToolSpec;

    fn driver(mode: AudioMode) -> LiveDriver {
        let mut config = Config::default();
        config.realtime.dialect = Dialect::Live;
        config.audio.mode = mode;
        let tools = vec![ToolSpec {
            name: "lookup_order".into(),
            description: "Look up an order".into(),
            parameters: json!({"type":"object","properties":{"order_id":{"type":"string"}}}),
        }];
        LiveDriver::new(SessionSpec::from_config(&config, tools))
    }

    fn event<'a>(d: &mut LiveDriver, frame: &'a str) -> ModelEvent<'a> {
        d.on_frame(frame.as_bytes(), &mut Vec::new()).unwrap()
    }

    #[test]
    fn session_start_is_the_documented_shape() {
        let d = driver(AudioMode::Pcmu);
        let v = d.session_start(&[]);
        assert_eq!(v["type"], "session.start");
        let s = &v["session"];
        assert_eq!(s["model"], "gpt-live-1");
        assert_eq!(
            s["audio"]["format"],
            json!({"type":"audio/pcmu","rate":8000})
        );
        assert_eq!(s["audio"]["output"]["voice"], "marin");
        assert_eq!(s["delegation"]["type"], "responses");
        assert_eq!(s["delegation"]["responses"]["model"], "gpt-5.5");
        assert_eq!(
            s["delegation"]["responses"]["tools"][0]["name"],
            "lookup_order"
        );
        assert!(s.get("input").is_none());
        for realtime_only in ["type", "turn_detection", "tools", "output_modalities"] {
            assert!(s.get(realtime_only).is_none(), "{realtime_only}");
        }
        let v = driver(AudioMode::Pcm16).session_start(&[]);
        assert_eq!(
            v["session"]["audio"]["format"],
            json!({"type":"audio/pcm","rate":24000})
        );
    }

    #[test]
    fn history_seeds_input_keeping_the_newest_128() {
        let d = driver(AudioMode::Pcmu);
        let history: Vec<Turn> = (0..130)
            .map(|i| Turn {
                role: if i % 2 == 0 {
                    Role::Caller
                } else {
                    Role::Assistant
                },
                text: format!("turn {i}"),
            })
            .collect();
        let v = d.session_start(&history);
        let input = v["session"]["input"].as_array().unwrap();
        assert_eq!(input.len(), 128);
        assert_eq!(input[0]["content"][0]["text"], "turn 2");
        assert_eq!(input[0]["role"], "user");
        assert_eq!(input[1]["content"][0]["type"], "output_text");
    }

    #[test]
    fn audio_waits_for_a_session_started_with_the_asked_format() {
        let mut d = driver(AudioMode::Pcmu);
        d.open(&[], &mut Vec::new());
        assert!(!d.ready());
        let ev = event(
            &mut d,
            r#"{"type":"session.started","session":{"id":"live_1","audio":{"format":{"type":"audio/pcm","rate":24000}}}}"#,
        );
        assert!(
            matches!(ev, ModelEvent::Fatal { ref code, .. } if code == "format_mismatch"),
            "{ev:?}"
        );
        assert!(!d.ready());
        let ev = event(
            &mut d,
            r#"{"type":"session.started","session":{"id":"live_1","audio":{"format":{"type":"audio/pcmu","rate":8000}}}}"#,
        );
        assert_eq!(ev, ModelEvent::Ready);
        assert!(d.ready());
    }

    #[test]
    fn a_startup_error_is_fatal_a_later_one_is_not() {
        let mut d = driver(AudioMode::Pcmu);
        let err = r#"{"type":"error","error":{"type":"invalid_request_error","code":"unknown_parameter","message":"Unknown parameter: 'session.turn_detection'.","param":"session.turn_detection","client_event_id":"cb_start"}}"#;
        assert!(matches!(event(&mut d, err), ModelEvent::Fatal { .. }));
        event(
            &mut d,
            r#"{"type":"session.started","session":{"audio":{"format":{"type":"audio/pcmu","rate":8000}}}}"#,
        );
        assert!(matches!(event(&mut d, err), ModelEvent::Error { .. }));
        let quota = r#"{"type":"error","error":{"type":"insufficient_quota","code":"insufficient_quota","message":"x"}}"#;
        assert!(matches!(event(&mut d, quota), ModelEvent::Fatal { .. }));
    }

    #[test]
    fn delegated_calls_surface_at_completion_and_are_answered_as_one_batch() {
        let mut d = driver(AudioMode::Pcmu);
        for id in ["call_1", "call_2"] {
            let frame = format!(
                r#"{{"type":"response.event","delegation_id":"dlg_1","event":{{"type":"response.output_item.done","item":{{"type":"function_call","call_id":"{id}","name":"lookup_order","arguments":"{{}}","status":"completed"}}}}}}"#
            );
            assert_eq!(
                d.on_frame(frame.as_bytes(), &mut Vec::new()).unwrap(),
                ModelEvent::None
            );
        }
        match event(
            &mut d,
            r#"{"type":"response.event","delegation_id":"dlg_1","event":{"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[]}}}"#,
        ) {
            ModelEvent::AnswerDone { tool_calls, .. } => assert_eq!(tool_calls.len(), 2),
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        d.tool_outputs(
            &[
                ToolOutput {
                    call_id: "call_1".into(),
                    output: r#"{"status":"shipped"}"#.into(),
                },
                ToolOutput {
                    call_id: "call_2".into(),
                    output: "ok".into(),
                },
            ],
            &mut out,
        );
        let types: Vec<Value> = out
            .iter()
            .map(|m| serde_json::from_str::<Value>(m).unwrap())
            .collect();
        assert_eq!(types[0]["type"], "response.item.create");
        assert_eq!(types[0]["item"]["output"], r#"{"status":"shipped"}"#);
        assert_eq!(types[1]["item"]["call_id"], "call_2");
        assert_eq!(types[2], json!({"type":"response.create"}));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn usage_is_reported_as_increments_of_the_cumulative_figure() {
        let mut d = driver(AudioMode::Pcmu);
        let u = |d: &mut LiveDriver, s: &str| match event(d, s) {
            ModelEvent::Usage(u) | ModelEvent::Closed { usage: u } => u.seconds,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            u(
                &mut d,
                r#"{"type":"session.usage.updated","usage":{"seconds":60.0}}"#
            ),
            60.0
        );
        assert_eq!(
            u(
                &mut d,
                r#"{"type":"session.usage.updated","usage":{"seconds":62.5}}"#
            ),
            2.5
        );
        assert_eq!(
            u(
                &mut d,
                r#"{"type":"session.closed","reason":"close_requested","usage":{"seconds":64.5}}"#
            ),
            2.0
        );
    }

    #[test]
    fn greeting_and_close() {
        let mut d = driver(AudioMode::Pcmu);
        let mut out = Vec::new();
        d.speak("Greet the caller as \"Acme\" support", &mut out);
        assert!(d.close(&mut out));
        let greet: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            greet,
            json!({"type":"session.commentary.append","delegation_id":null,"content":"Greet the caller as \"Acme\" support"})
        );
        assert_eq!(out[1], r#"{"type":"session.close"}"#);
        // No cancel or truncate exists: an interrupt sends nothing.
        out.clear();
        d.interrupt(
            &[Heard {
                item_id: ITEM,
                audio_end_ms: 500,
            }],
            &mut out,
        );
        assert!(out.is_empty());
    }
}
