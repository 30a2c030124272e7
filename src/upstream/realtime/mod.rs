//! The OpenAI Realtime protocol (GA, legacy beta, Azure) as a [`Driver`]:
//! server events mapped to one type ([`events`]), `session.update` per
//! dialect ([`session`]), and the protocol state a call needs: which response
//! is active, which were cancelled (their late deltas are dropped), the
//! function calls of the active response, and a `response.create` owed once
//! the active response is done (the API refuses a second active response).

pub mod events;
pub mod session;

use std::collections::VecDeque;

use events::{
    parse_server_event, write_append, write_function_output, write_response_cancel,
    write_response_create, write_text_item, write_truncate, ServerEvent,
};

use super::{
    Driver, EventError, Heard, ModelEvent, Role, SessionSpec, TalkOver, ToolCall, ToolOutput, Turn,
    Usage,
};
use crate::config::{Dialect, TurnDetectionKind};

/// How many cancelled response ids are remembered for dropping late deltas.
const CANCELLED_KEPT: usize = 4;

/// What to send once the active response is done.
#[derive(Debug, Default)]
enum Owed {
    #[default]
    Nothing,
    /// Continue after tool outputs.
    Continue,
    /// Speak following an instruction.
    Speak(String),
}

pub struct RealtimeDriver {
    spec: SessionSpec,
    active_response: Option<String>,
    cancelled: VecDeque<String>,
    /// Completed function calls of the active response.
    calls: Vec<ToolCall>,
    owed: Owed,
}

impl RealtimeDriver {
    pub fn new(spec: SessionSpec) -> Self {
        RealtimeDriver {
            spec,
            active_response: None,
            cancelled: VecDeque::with_capacity(CANCELLED_KEPT),
            calls: Vec::new(),
            owed: Owed::Nothing,
        }
    }

    /// Whether the session cancels the active response on speech_started
    /// by itself: with any turn detection, since callbridge always sets
    /// `interrupt_response: true`.
    fn server_interrupts(&self) -> bool {
        self.spec.agent.turn_detection.kind != TurnDetectionKind::None
    }

    fn is_cancelled(&self, response_id: &str) -> bool {
        self.cancelled.iter().any(|c| c == response_id)
    }

    /// Sends `owed` now if no response is active, else keeps it for later.
    fn settle(&mut self, owed: Owed, out: &mut Vec<String>) {
        if self.active_response.is_some() {
            // A later instruction replaces an earlier one; a continuation
            // is never lost to an instruction.
            self.owed = match (std::mem::take(&mut self.owed), owed) {
                (Owed::Continue, Owed::Speak(_)) => Owed::Continue,
                (_, new) => new,
            };
            return;
        }
        let mut msg = String::new();
        match owed {
            Owed::Nothing => return,
            Owed::Continue => write_response_create(&mut msg, None),
            Owed::Speak(text) => write_response_create(&mut msg, Some(&text)),
        }
        out.push(msg);
    }
}

impl Driver for RealtimeDriver {
    fn talk_over(&self) -> TalkOver {
        TalkOver::Interrupt
    }

    fn open(&mut self, history: &[Turn], out: &mut Vec<String>) {
        // A new session: nothing of the old one's state applies.
        self.active_response = None;
        self.calls.clear();
        self.owed = Owed::Nothing;
        out.push(session::session_update(&self.spec).to_string());
        let beta = self.spec.dialect == Dialect::Beta;
        for turn in history {
            let mut msg = String::new();
            write_text_item(&mut msg, turn.role == Role::Assistant, beta, &turn.text);
            out.push(msg);
        }
    }

    fn ready(&self) -> bool {
        // The server queues audio behind `session.update`.
        true
    }

    fn on_frame<'a>(
        &mut self,
        frame: &'a [u8],
        out: &mut Vec<String>,
    ) -> Result<ModelEvent<'a>, EventError> {
        let event = parse_server_event(frame).map_err(|e| EventError(e.to_string()))?;
        Ok(match event {
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                delta,
            } => {
                if self.is_cancelled(&response_id) {
                    ModelEvent::StaleAudio
                } else {
                    ModelEvent::Audio {
                        item: item_id,
                        b64: delta,
                    }
                }
            }
            ServerEvent::AudioDone {
                response_id,
                item_id,
            } => {
                if self.is_cancelled(&response_id) {
                    ModelEvent::None
                } else {
                    ModelEvent::AudioDone { item: item_id }
                }
            }
            ServerEvent::SpeechStarted { .. } => ModelEvent::CallerStarted,
            ServerEvent::SpeechStopped { .. } => ModelEvent::CallerStopped,
            ServerEvent::ResponseCreated { response_id } => {
                self.active_response = Some(response_id.into_owned());
                self.calls.clear();
                ModelEvent::None
            }
            ServerEvent::FunctionCall(call) => {
                // Only calls of a response that completes are acted on.
                if call.status.as_deref().is_none_or(|s| s == "completed") {
                    self.calls.push(ToolCall {
                        call_id: call.call_id,
                        name: call.name,
                        arguments: call.arguments,
                    });
                }
                ModelEvent::None
            }
            ServerEvent::ResponseDone(done) => {
                if self.active_response.as_deref() == Some(done.response_id.as_str()) {
                    self.active_response = None;
                }
                let calls = std::mem::take(&mut self.calls);
                let owed = std::mem::take(&mut self.owed);
                self.settle(owed, out);
                let usage = done.usage.map_or(Usage::default(), |u| u.kinds());
                ModelEvent::AnswerDone {
                    tool_calls: if done.status == "completed" {
                        calls
                    } else {
                        Vec::new()
                    },
                    usage,
                    failed: done.status == "failed",
                }
            }
            ServerEvent::InputTranscript { transcript, .. } => ModelEvent::Transcript {
                role: Role::Caller,
                text: transcript,
                delta: false,
            },
            ServerEvent::OutputTranscript { transcript, .. } => ModelEvent::Transcript {
                role: Role::Assistant,
                text: transcript,
                delta: false,
            },
            ServerEvent::Error(err) => {
                let code = err.code().to_owned();
                let message = err.message.clone().unwrap_or_default();
                if err.is_benign() {
                    tracing::debug!(code = %code, "benign realtime error");
                    ModelEvent::None
                } else if code == "session_expired" {
                    // The provider's session limit: a new session goes on.
                    ModelEvent::Lost { reason: code }
                } else if err.is_fatal() {
                    ModelEvent::Fatal { code, message }
                } else {
                    ModelEvent::Error { code, message }
                }
            }
            // The session as configured: the server queues audio behind
            // `session.update` anyway (see `ready`), so this only tells a
            // session opened ahead of its call (pre-warm) that it is set up.
            ServerEvent::SessionUpdated => ModelEvent::Ready,
            ServerEvent::SessionCreated | ServerEvent::Truncated { .. } | ServerEvent::Other(_) => {
                ModelEvent::None
            }
        })
    }

    fn append_audio(&mut self, audio: &[u8], out: &mut String) {
        write_append(out, audio);
    }

    fn answering(&self) -> bool {
        self.active_response.is_some()
    }

    fn interrupt(&mut self, heard: &[Heard<'_>], out: &mut Vec<String>) {
        if let Some(id) = self.active_response.take() {
            // With server VAD the session cancels the response itself
            // (interrupt_response is always on): a cancel would only earn
            // response_cancel_not_active. Its late deltas are dropped either way.
            if !self.server_interrupts() {
                let mut msg = String::with_capacity(64);
                write_response_cancel(&mut msg, Some(&id));
                out.push(msg);
            }
            if self.cancelled.len() == CANCELLED_KEPT {
                self.cancelled.pop_front();
            }
            self.cancelled.push_back(id);
            // Calls of a cancelled response are never run.
            self.calls.clear();
        }
        for h in heard {
            let mut msg = String::with_capacity(96);
            write_truncate(&mut msg, h.item_id, h.audio_end_ms);
            out.push(msg);
        }
    }

    fn tool_outputs(&mut self, outputs: &[ToolOutput], out: &mut Vec<String>) {
        if outputs.is_empty() {
            return;
        }
        for o in outputs {
            let mut msg = String::with_capacity(96 + o.output.len());
            write_function_output(&mut msg, &o.call_id, &o.output);
            out.push(msg);
        }
        self.settle(Owed::Continue, out);
    }

    fn speak(&mut self, instruction: &str, out: &mut Vec<String>) {
        self.settle(Owed::Speak(instruction.to_owned()), out);
    }

    fn user_text(&mut self, text: &str, out: &mut Vec<String>) {
        let mut msg = String::with_capacity(128 + text.len());
        write_text_item(&mut msg, false, false, text);
        out.push(msg);
        self.settle(Owed::Continue, out);
    }

    fn close(&mut self, _out: &mut Vec<String>) -> bool {
        // Realtime has no goodbye: closing the socket ends the session.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::{json, Value};

    fn driver() -> RealtimeDriver {
        RealtimeDriver::new(SessionSpec::from_config(&Config::default(), Vec::new()))
    }

    fn feed(d: &mut RealtimeDriver, event: Value, out: &mut Vec<String>) -> String {
        let text = event.to_string();
        format!("{:?}", d.on_frame(text.as_bytes(), out).unwrap())
    }

    fn types(out: &[String]) -> Vec<String> {
        out.iter()
            .map(|m| {
                serde_json::from_str::<Value>(m).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn tool_calls_of_a_completed_response_are_surfaced_together() {
        let mut d = driver();
        let mut out = Vec::new();
        feed(
            &mut d,
            json!({"type":"response.created","response":{"id":"r1"}}),
            &mut out,
        );
        for (id, name) in [("c1", "a"), ("c2", "b")] {
            feed(
                &mut d,
                json!({"type":"response.output_item.done","item":{"type":"function_call","id":"i","call_id":id,"name":name,"arguments":"{}","status":"completed"}}),
                &mut out,
            );
        }
        let text = json!({"type":"response.done","response":{"id":"r1","status":"completed","usage":{"input_tokens":3,"output_tokens":4}}}).to_string();
        match d.on_frame(text.as_bytes(), &mut out).unwrap() {
            ModelEvent::AnswerDone {
                tool_calls, usage, ..
            } => {
                assert_eq!(
                    tool_calls
                        .iter()
                        .map(|c| c.call_id.as_str())
                        .collect::<Vec<_>>(),
                    ["c1", "c2"]
                );
                assert_eq!((usage.input_tokens(), usage.output_tokens()), (3, 4));
            }
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
        // Both outputs, then one response.create.
        d.tool_outputs(
            &[
                ToolOutput {
                    call_id: "c1".into(),
                    output: "{}".into(),
                },
                ToolOutput {
                    call_id: "c2".into(),
                    output: "x".into(),
                },
            ],
            &mut out,
        );
        assert_eq!(
            types(&out),
            [
                "conversation.item.create",
                "conversation.item.create",
                "response.create"
            ]
        );
    }

    #[test]
    fn a_cancelled_response_runs_no_tools_and_its_late_audio_is_stale() {
        let mut d = driver();
        let mut out = Vec::new();
        feed(
            &mut d,
            json!({"type":"response.created","response":{"id":"r1"}}),
            &mut out,
        );
        feed(
            &mut d,
            json!({"type":"response.output_item.done","item":{"type":"function_call","call_id":"c1","name":"a","arguments":"{}","status":"completed"}}),
            &mut out,
        );
        d.interrupt(
            &[Heard {
                item_id: "item_1",
                audio_end_ms: 300,
            }],
            &mut out,
        );
        // Server VAD cancels by itself: only the truncate is the bridge's.
        assert_eq!(types(&out), ["conversation.item.truncate"]);
        let late = json!({"type":"response.output_audio.delta","response_id":"r1","item_id":"item_1","delta":"AAAA"}).to_string();
        assert_eq!(
            d.on_frame(late.as_bytes(), &mut out).unwrap(),
            ModelEvent::StaleAudio
        );
        let done =
            json!({"type":"response.done","response":{"id":"r1","status":"cancelled"}}).to_string();
        match d.on_frame(done.as_bytes(), &mut out).unwrap() {
            ModelEvent::AnswerDone { tool_calls, .. } => assert!(tool_calls.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_only_where_the_session_does_not_interrupt_and_every_unheard_item_is_truncated() {
        let mut config = Config::default();
        config.agent.turn_detection.kind = TurnDetectionKind::None;
        let mut d = RealtimeDriver::new(SessionSpec::from_config(&config, Vec::new()));
        let mut out = Vec::new();
        feed(
            &mut d,
            json!({"type":"response.created","response":{"id":"r1"}}),
            &mut out,
        );
        d.interrupt(
            &[
                Heard {
                    item_id: "i1",
                    audio_end_ms: 700,
                },
                Heard {
                    item_id: "i2",
                    audio_end_ms: 0,
                },
            ],
            &mut out,
        );
        assert_eq!(
            types(&out),
            [
                "response.cancel",
                "conversation.item.truncate",
                "conversation.item.truncate"
            ]
        );
        let v: Vec<Value> = out
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert_eq!(
            (v[1]["item_id"].as_str(), v[1]["audio_end_ms"].as_u64()),
            (Some("i1"), Some(700))
        );
        assert_eq!(
            (v[2]["item_id"].as_str(), v[2]["audio_end_ms"].as_u64()),
            (Some("i2"), Some(0))
        );
    }

    #[test]
    fn response_create_waits_for_the_active_response_to_finish() {
        let mut d = driver();
        let mut out = Vec::new();
        feed(
            &mut d,
            json!({"type":"response.created","response":{"id":"r2"}}),
            &mut out,
        );
        d.tool_outputs(
            &[ToolOutput {
                call_id: "c1".into(),
                output: "ok".into(),
            }],
            &mut out,
        );
        assert_eq!(types(&out), ["conversation.item.create"]);
        out.clear();
        d.speak("say hello", &mut out);
        assert!(out.is_empty());
        feed(
            &mut d,
            json!({"type":"response.done","response":{"id":"r2","status":"completed"}}),
            &mut out,
        );
        // The continuation is owed first; the instruction does not displace it.
        assert_eq!(out.len(), 1);
        assert_eq!(out[0], r#"{"type":"response.create"}"#);
    }

    #[test]
    fn greeting_speaks_at_once_when_idle() {
        let mut d = driver();
        let mut out = Vec::new();
        d.speak("Greet the caller", &mut out);
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            v,
            json!({"type":"response.create","response":{"instructions":"Greet the caller"}})
        );
    }

    #[test]
    fn history_is_replayed_as_text_items_after_the_session() {
        for (dialect, assistant_part) in [(Dialect::Ga, "output_text"), (Dialect::Beta, "text")] {
            let mut config = Config::default();
            config.realtime.dialect = dialect;
            let mut d = RealtimeDriver::new(SessionSpec::from_config(&config, Vec::new()));
            let mut out = Vec::new();
            d.open(
                &[
                    Turn {
                        role: Role::Caller,
                        text: "Where is my order?".into(),
                    },
                    Turn {
                        role: Role::Assistant,
                        text: "It \"shipped\".".into(),
                    },
                ],
                &mut out,
            );
            assert_eq!(
                types(&out),
                [
                    "session.update",
                    "conversation.item.create",
                    "conversation.item.create"
                ]
            );
            let user: Value = serde_json::from_str(&out[1]).unwrap();
            assert_eq!(user["item"]["content"][0]["type"], "input_text");
            let bot: Value = serde_json::from_str(&out[2]).unwrap();
            assert_eq!(bot["item"]["role"], "assistant");
            assert_eq!(bot["item"]["content"][0]["type"], assistant_part);
            assert_eq!(bot["item"]["content"][0]["text"], "It \"shipped\".");
        }
    }

    #[test]
    fn errors_are_classified_for_the_core() {
        let mut d = driver();
        let mut out = Vec::new();
        assert_eq!(
            feed(
                &mut d,
                json!({"type":"error","error":{"type":"invalid_request_error","code":"response_cancel_not_active","message":"x"}}),
                &mut out
            ),
            "None"
        );
        assert!(feed(&mut d, json!({"type":"error","error":{"type":"invalid_request_error","code":"insufficient_quota","message":"x"}}), &mut out).starts_with("Fatal"));
        assert!(feed(
            &mut d,
            json!({"type":"error","error":{"type":"server_error","code":"boom","message":"x"}}),
            &mut out
        )
        .starts_with("Error"));
    }
}
