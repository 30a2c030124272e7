//! Realtime server events, both dialects, mapped to one internal type; and the
//! client events the bridge sends, written straight into a reused buffer.
//!
//! Parsing borrows from the frame where it can (an audio delta is the largest
//! string on the path and is never copied before it is base64-decoded).
//! GA names (`response.output_audio.delta`) and beta names
//! (`response.audio.delta`) are both accepted whatever the configured dialect:
//! Azure's preview deployments speak beta names behind GA URLs, and accepting
//! both costs nothing.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::upstream::push_json_str;
use crate::upstream::wire::{opt_cow, unhandled_type};

/// One server event, as the bridge needs it.
#[derive(Debug, PartialEq)]
pub enum ServerEvent<'a> {
    SessionCreated,
    SessionUpdated,
    SpeechStarted {
        audio_start_ms: u64,
        item_id: Cow<'a, str>,
    },
    SpeechStopped {
        audio_end_ms: u64,
        item_id: Cow<'a, str>,
    },
    ResponseCreated {
        response_id: Cow<'a, str>,
    },
    ResponseDone(ResponseDone),
    AudioDelta {
        response_id: Cow<'a, str>,
        item_id: Cow<'a, str>,
        delta: Cow<'a, str>,
    },
    AudioDone {
        response_id: Cow<'a, str>,
        item_id: Cow<'a, str>,
    },
    /// The assistant's words for one item (`…output_audio_transcript.done`).
    OutputTranscript {
        item_id: Cow<'a, str>,
        transcript: Cow<'a, str>,
    },
    /// The caller's words for one item (`…input_audio_transcription.completed`).
    InputTranscript {
        item_id: Cow<'a, str>,
        transcript: Cow<'a, str>,
    },
    Truncated {
        item_id: Cow<'a, str>,
        audio_end_ms: u64,
    },
    /// `response.output_item.done` for a `function_call` item.
    FunctionCall(FunctionCall),
    Error(ApiError),
    /// A known event the bridge has no use for, or an unknown one: ignored.
    Other(Cow<'a, str>),
}

/// A function call item, as `response.output_item.done` delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct FunctionCall {
    #[serde(default)]
    pub call_id: String,
    #[serde(default)]
    pub name: String,
    /// A JSON text, as the model wrote it.
    #[serde(default)]
    pub arguments: String,
    /// `completed` unless the response was cut short.
    #[serde(default)]
    pub status: Option<String>,
}

/// `response.done`: how the response ended and what it cost.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResponseDone {
    pub response_id: String,
    /// completed | cancelled | failed | incomplete
    pub status: String,
    pub usage: Option<Usage>,
}

/// `response.usage` as sent (openai-python `RealtimeResponseUsage`): every
/// field may be absent or `null`. Cached tokens are a subset of the input
/// tokens; [`Usage::kinds`] splits them out.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub input_token_details: Option<InputTokenDetails>,
    #[serde(default)]
    pub output_token_details: Option<TokenDetails>,
}

/// `usage.input_token_details`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
pub struct InputTokenDetails {
    #[serde(default)]
    pub text_tokens: Option<u64>,
    #[serde(default)]
    pub audio_tokens: Option<u64>,
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    #[serde(default)]
    pub cached_tokens_details: Option<TokenDetails>,
}

/// Text and audio parts of a token count (`output_token_details`,
/// `cached_tokens_details`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
pub struct TokenDetails {
    #[serde(default)]
    pub text_tokens: Option<u64>,
    #[serde(default)]
    pub audio_tokens: Option<u64>,
}

impl Usage {
    /// The tokens by priced kind. Totals win over details that add up to
    /// less: whatever the details do not name (image tokens, a usage without
    /// details) counts as text. Cached tokens without their text/audio split
    /// count as cached audio. Nothing is counted twice, whatever the peer sent.
    pub fn kinds(&self) -> crate::upstream::Usage {
        let d = self.input_token_details.unwrap_or_default();
        let cd = d.cached_tokens_details.unwrap_or_default();
        let text = d.text_tokens.unwrap_or(0);
        let audio = d.audio_tokens.unwrap_or(0);
        let total_in = self
            .input_tokens
            .unwrap_or(0)
            .max(text.saturating_add(audio));
        let cached_text = cd.text_tokens.unwrap_or(0).min(total_in);
        let cached_audio = match cd.audio_tokens {
            Some(a) => a,
            None => d.cached_tokens.unwrap_or(0).saturating_sub(cached_text),
        }
        .min(total_in - cached_text);
        let uncached = total_in - cached_text - cached_audio;
        let input_audio = audio.saturating_sub(cached_audio).min(uncached);
        let od = self.output_token_details.unwrap_or_default();
        let out_audio = od.audio_tokens.unwrap_or(0);
        let total_out = self
            .output_tokens
            .unwrap_or(0)
            .max(od.text_tokens.unwrap_or(0).saturating_add(out_audio));
        crate::upstream::Usage {
            input_text: uncached - input_audio,
            input_audio,
            input_cached_text: cached_text,
            input_cached_audio: cached_audio,
            output_text: total_out - out_audio,
            output_audio: out_audio,
            seconds: 0.0,
        }
    }
}

/// The body of an `error` event.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

/// Errors that a working bridge meets in normal operation; they end nothing.
const BENIGN_ERROR_CODES: &[&str] = &[
    "response_cancel_not_active",
    "conversation_already_has_active_response",
    "input_audio_buffer_commit_empty",
    "item_truncate_invalid_item_id",
];

/// Errors after which the session cannot go on.
const FATAL_ERROR_CODES: &[&str] = &[
    "session_expired",
    "invalid_api_key",
    "authentication_error",
    "insufficient_quota",
    "account_deactivated",
    "billing_hard_limit_reached",
];

impl ApiError {
    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("unknown")
    }
    pub fn is_benign(&self) -> bool {
        BENIGN_ERROR_CODES.contains(&self.code())
    }
    /// Auth failures and an expired session cannot be recovered on this socket.
    pub fn is_fatal(&self) -> bool {
        FATAL_ERROR_CODES.contains(&self.code())
            || self.kind.as_deref() == Some("authentication_error")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// Not JSON, not an object with a string `type`, or a known event with
    /// fields of the wrong type.
    #[error("malformed server event: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    delta: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    item_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    response_id: Option<Cow<'a, str>>,
    #[serde(default)]
    audio_start_ms: Option<u64>,
    #[serde(default)]
    audio_end_ms: Option<u64>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    transcript: Option<Cow<'a, str>>,
    #[serde(default)]
    response: Option<RawResponse>,
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    item: Option<RawItem>,
}

#[derive(Deserialize)]
struct RawItem {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(flatten)]
    call: FunctionCall,
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// Event types whose fields the bridge reads; a type error in one of them is
/// malformed input, in any other it is none of our business.
const HANDLED: &[&str] = &[
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "response.created",
    "response.done",
    "response.output_audio.delta",
    "response.audio.delta",
    "response.output_audio.done",
    "response.audio.done",
    "response.output_audio_transcript.done",
    "response.audio_transcript.done",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.truncated",
    "response.output_item.done",
    "error",
];

/// Parses one server event (a WebSocket text frame).
pub fn parse_server_event(frame: &[u8]) -> Result<ServerEvent<'_>, EventError> {
    let raw: RawEvent<'_> = match serde_json::from_slice(frame) {
        Ok(raw) => raw,
        Err(full_err) => {
            // Only our own events must parse fully.
            return unhandled_type(frame, HANDLED, &full_err)
                .map(ServerEvent::Other)
                .map_err(EventError::Malformed);
        }
    };
    let missing = |field: &str| EventError::Malformed(format!("{}: missing `{field}`", raw.kind));
    let event = match raw.kind.as_ref() {
        "session.created" => ServerEvent::SessionCreated,
        "session.updated" => ServerEvent::SessionUpdated,
        "input_audio_buffer.speech_started" => ServerEvent::SpeechStarted {
            audio_start_ms: raw.audio_start_ms.unwrap_or(0),
            item_id: raw.item_id.unwrap_or_default(),
        },
        "input_audio_buffer.speech_stopped" => ServerEvent::SpeechStopped {
            audio_end_ms: raw.audio_end_ms.unwrap_or(0),
            item_id: raw.item_id.unwrap_or_default(),
        },
        "response.created" => {
            let id = raw
                .response
                .and_then(|r| r.id)
                .ok_or_else(|| missing("response.id"))?;
            ServerEvent::ResponseCreated {
                response_id: Cow::Owned(id),
            }
        }
        "response.done" => {
            let r = raw.response.ok_or_else(|| missing("response"))?;
            ServerEvent::ResponseDone(ResponseDone {
                response_id: r.id.unwrap_or_default(),
                status: r.status.unwrap_or_default(),
                usage: r.usage,
            })
        }
        "response.output_audio.delta" | "response.audio.delta" => ServerEvent::AudioDelta {
            response_id: raw.response_id.unwrap_or_default(),
            item_id: raw.item_id.ok_or_else(|| missing("item_id"))?,
            delta: raw.delta.ok_or_else(|| missing("delta"))?,
        },
        "response.output_audio.done" | "response.audio.done" => ServerEvent::AudioDone {
            response_id: raw.response_id.unwrap_or_default(),
            item_id: raw.item_id.unwrap_or_default(),
        },
        "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
            ServerEvent::OutputTranscript {
                item_id: raw.item_id.unwrap_or_default(),
                transcript: raw.transcript.unwrap_or_default(),
            }
        }
        "conversation.item.input_audio_transcription.completed" => ServerEvent::InputTranscript {
            item_id: raw.item_id.unwrap_or_default(),
            transcript: raw.transcript.unwrap_or_default(),
        },
        "conversation.item.truncated" => ServerEvent::Truncated {
            item_id: raw.item_id.unwrap_or_default(),
            audio_end_ms: raw.audio_end_ms.unwrap_or(0),
        },
        "response.output_item.done" => match raw.item {
            Some(item) if item.kind.as_deref() == Some("function_call") => {
                if item.call.call_id.is_empty() || item.call.name.is_empty() {
                    return Err(missing("item.call_id/item.name"));
                }
                ServerEvent::FunctionCall(item.call)
            }
            Some(_) => ServerEvent::Other(raw.kind),
            None => return Err(missing("item")),
        },
        "error" => ServerEvent::Error(raw.error.unwrap_or_default()),
        _ => ServerEvent::Other(raw.kind),
    };
    Ok(event)
}

/// `input_audio_buffer.append`, base64-encoding `audio` straight into `out`
/// (base64 needs no JSON escaping). This is the hottest client event, one per
/// caller frame: one allocation (the message itself), no intermediate copy.
pub fn write_append(out: &mut String, audio: &[u8]) {
    use base64::Engine as _;
    out.clear();
    out.reserve(48 + audio.len().div_ceil(3) * 4);
    out.push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
    base64::engine::general_purpose::STANDARD.encode_string(audio, out);
    out.push_str(r#""}"#);
}

/// `response.cancel`, naming the response when known so that a cancel that
/// crosses a new response on the wire cannot cancel the wrong one.
pub fn write_response_cancel(out: &mut String, response_id: Option<&str>) {
    out.clear();
    match response_id {
        Some(id) => {
            out.push_str(r#"{"type":"response.cancel","response_id":"#);
            push_json_str(out, id);
            out.push('}');
        }
        None => out.push_str(r#"{"type":"response.cancel"}"#),
    }
}

/// `conversation.item.truncate` at what the caller heard of the item.
pub fn write_truncate(out: &mut String, item_id: &str, audio_end_ms: u64) {
    out.clear();
    out.push_str(r#"{"type":"conversation.item.truncate","item_id":"#);
    push_json_str(out, item_id);
    let _ = write!(out, r#","content_index":0,"audio_end_ms":{audio_end_ms}}}"#);
}

/// `conversation.item.create` carrying a tool's output.
pub fn write_function_output(out: &mut String, call_id: &str, output: &str) {
    out.clear();
    out.push_str(
        r#"{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"#,
    );
    push_json_str(out, call_id);
    out.push_str(r#","output":"#);
    push_json_str(out, output);
    out.push_str("}}");
}

/// `response.create`, with instructions for this response only when given.
pub fn write_response_create(out: &mut String, instructions: Option<&str>) {
    out.clear();
    match instructions {
        Some(text) => {
            out.push_str(r#"{"type":"response.create","response":{"instructions":"#);
            push_json_str(out, text);
            out.push_str("}}");
        }
        None => out.push_str(r#"{"type":"response.create"}"#),
    }
}

/// `conversation.item.create` with a text message: the conversation so far
/// replayed into a new session. Assistant text is `output_text` in GA and
/// `text` in beta.
pub fn write_text_item(out: &mut String, assistant: bool, beta: bool, text: &str) {
    out.clear();
    let (role, part) = match (assistant, beta) {
        (false, _) => ("user", "input_text"),
        (true, false) => ("assistant", "output_text"),
        (true, true) => ("assistant", "text"),
    };
    let _ = write!(
        out,
        r#"{{"type":"conversation.item.create","item":{{"type":"message","role":"{role}","content":[{{"type":"{part}","text":"#
    );
    push_json_str(out, text);
    out.push_str("}]}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_delta_in_both_dialects_borrows_the_payload() {
        for name in ["response.output_audio.delta", "response.audio.delta"] {
            let frame = format!(
                r#"{{"type":"{name}","event_id":"e1","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"AAAA"}}"#
            );
            let ev = parse_server_event(frame.as_bytes()).unwrap();
            match ev {
                ServerEvent::AudioDelta {
                    response_id,
                    item_id,
                    delta,
                } => {
                    assert_eq!(response_id, "resp_1");
                    assert_eq!(item_id, "item_1");
                    assert!(matches!(delta, Cow::Borrowed("AAAA")));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn speech_events_and_response_lifecycle() {
        let ev = parse_server_event(
            br#"{"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1000,"item_id":"item_2"}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            ServerEvent::SpeechStarted {
                audio_start_ms: 1000,
                item_id: "item_2".into()
            }
        );
        let ev = parse_server_event(
            br#"{"type":"response.created","event_id":"e","response":{"object":"realtime.response","id":"resp_9","status":"in_progress","output":[]}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            ServerEvent::ResponseCreated {
                response_id: "resp_9".into()
            }
        );
        let ev = parse_server_event(
            br#"{"type":"response.done","event_id":"e","response":{"id":"resp_9","status":"cancelled","output":[],"usage":{"total_tokens":30,"input_tokens":20,"output_tokens":10,"input_token_details":{"audio_tokens":5}}}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            ServerEvent::ResponseDone(ResponseDone {
                response_id: "resp_9".into(),
                status: "cancelled".into(),
                usage: Some(Usage {
                    input_tokens: Some(20),
                    output_tokens: Some(10),
                    input_token_details: Some(InputTokenDetails {
                        audio_tokens: Some(5),
                        ..InputTokenDetails::default()
                    }),
                    output_token_details: None,
                }),
            })
        );
    }

    fn kinds(usage: &str) -> crate::upstream::Usage {
        serde_json::from_str::<Usage>(usage).unwrap().kinds()
    }

    #[test]
    fn usage_is_split_into_priced_kinds_with_cached_tokens_apart() {
        // The shape the service sends: cached tokens are part of text_tokens
        // and audio_tokens, and are priced on their own.
        let u = kinds(
            r#"{"total_tokens":821,"input_tokens":789,"output_tokens":32,
                "input_token_details":{"text_tokens":313,"audio_tokens":476,"cached_tokens":640,
                  "cached_tokens_details":{"text_tokens":256,"audio_tokens":384}},
                "output_token_details":{"text_tokens":9,"audio_tokens":23}}"#,
        );
        assert_eq!(u.tokens(), [313 - 256, 476 - 384, 256, 384, 9, 23], "{u:?}");
        assert_eq!((u.input_tokens(), u.output_tokens()), (789, 32));
    }

    #[test]
    fn usage_without_details_or_with_odd_numbers_counts_each_token_once() {
        // Totals only: counted as text.
        let u = kinds(r#"{"input_tokens":20,"output_tokens":10}"#);
        assert_eq!(u.tokens(), [20, 0, 0, 0, 10, 0]);
        // Nulls everywhere: nothing.
        let u = kinds(
            r#"{"input_tokens":null,"output_tokens":null,"input_token_details":null,"output_token_details":null}"#,
        );
        assert_eq!(u.tokens(), [0; 6]);
        // Cached without its split: cached audio.
        let u = kinds(
            r#"{"input_tokens":100,"input_token_details":{"text_tokens":10,"audio_tokens":90,"cached_tokens":50}}"#,
        );
        assert_eq!(u.tokens(), [10, 40, 0, 50, 0, 0]);
        // More cached than input, details above the totals, huge numbers:
        // bounded by what was reported, never wrapped.
        let u = kinds(
            r#"{"input_tokens":5,"input_token_details":{"text_tokens":3,"audio_tokens":4,"cached_tokens":100,
                "cached_tokens_details":{"text_tokens":50,"audio_tokens":50}},
                "output_tokens":18446744073709551615,"output_token_details":{"text_tokens":18446744073709551615,"audio_tokens":18446744073709551615}}"#,
        );
        assert_eq!(u.input_tokens(), 7);
        assert_eq!(u.output_audio, u64::MAX);
        assert_eq!(u.output_tokens(), u64::MAX);
    }

    #[test]
    fn errors_are_classified() {
        let ev = parse_server_event(
            br#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"response_cancel_not_active","message":"no","param":null,"event_id":"c1"}}"#,
        )
        .unwrap();
        let ServerEvent::Error(err) = ev else {
            panic!("{ev:?}")
        };
        assert!(err.is_benign() && !err.is_fatal());
        assert_eq!(err.event_id.as_deref(), Some("c1"));
        let ev = parse_server_event(
            br#"{"type":"error","error":{"type":"invalid_request_error","code":"session_expired","message":"Your session hit the maximum duration of 60 minutes."}}"#,
        )
        .unwrap();
        let ServerEvent::Error(err) = ev else {
            panic!("{ev:?}")
        };
        assert!(err.is_fatal());
    }

    #[test]
    fn unknown_events_are_ignored_even_with_odd_fields() {
        let ev = parse_server_event(br#"{"type":"rate_limits.updated","rate_limits":[]}"#).unwrap();
        assert_eq!(ev, ServerEvent::Other("rate_limits.updated".into()));
        // `delta` of another type in an event we do not handle is fine.
        let ev = parse_server_event(br#"{"type":"future.event","delta":{"x":1}}"#).unwrap();
        assert_eq!(ev, ServerEvent::Other("future.event".into()));
    }

    #[test]
    fn malformed_events_are_errors() {
        for frame in [
            &b"not json"[..],
            br#"{"no_type":1}"#,
            br#"[1,2]"#,
            br#"{"type":"response.output_audio.delta","delta":5,"item_id":"i"}"#,
            br#"{"type":"response.output_audio.delta","response_id":"r"}"#,
            br#"{"type":"response.created"}"#,
        ] {
            assert!(
                parse_server_event(frame).is_err(),
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
    }

    #[test]
    fn client_event_writers_produce_valid_json() {
        let mut out = String::new();
        write_append(&mut out, &[0, 1, 2]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"input_audio_buffer.append","audio":"AAEC"})
        );
        write_response_cancel(&mut out, Some("resp_\"1"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"response.cancel","response_id":"resp_\"1"})
        );
        write_response_cancel(&mut out, None);
        assert_eq!(out, r#"{"type":"response.cancel"}"#);
        write_truncate(&mut out, "item_1", 1234);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"conversation.item.truncate","item_id":"item_1","content_index":0,"audio_end_ms":1234})
        );
    }
}
