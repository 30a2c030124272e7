//! GPT-Live server events, mapped to one internal type.
//!
//! Audio deltas are parsed into a borrowed struct (the payload is never copied
//! before it is base64-decoded). Backend events arrive wrapped in
//! `response.event`; only the few nested events the bridge acts on are read,
//! and leniently: the nested Responses events carry many fields the bridge has
//! no use for, and their exact set changes with the Responses API.

use std::borrow::Cow;

use serde::Deserialize;

use crate::upstream::wire::{opt_cow, unhandled_type};

/// One server event, as the driver needs it.
#[derive(Debug, PartialEq)]
pub enum LiveEvent<'a> {
    SessionStarted(StartedSession),
    AudioDelta(Cow<'a, str>),
    InputTranscript(Cow<'a, str>),
    OutputTranscript(Cow<'a, str>),
    /// A backend event (`response.event`) of delegation `delegation_id`.
    Backend {
        delegation_id: Option<String>,
        event: BackendEvent,
    },
    /// `session.usage.updated`: cumulative billed seconds.
    UsageUpdated {
        seconds: f64,
    },
    /// `session.closed`: why, and the final cumulative seconds.
    Closed {
        reason: String,
        seconds: Option<f64>,
    },
    Error(LiveError),
    /// Known events with no call-level meaning (acks, `info`, delegation
    /// created, reflected audio), and unknown ones.
    Other(Cow<'a, str>),
}

/// The resolved session of `session.started`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StartedSession {
    pub id: String,
    /// `audio.format` as echoed: (type, rate).
    pub format: Option<(String, Option<u64>)>,
    pub expires_at: Option<u64>,
}

/// The nested backend events the bridge acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEvent {
    /// `response.output_item.done` with a completed `function_call` item.
    FunctionCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// `response.completed`.
    Completed,
    /// `response.failed`, `response.incomplete` or `response.cancelled`.
    Ended(String),
    Other,
}

/// The body of an `error` event.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct LiveError {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

impl LiveError {
    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("unknown")
    }
    /// Errors a new session cannot fix either.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.code(),
            "invalid_api_key"
                | "insufficient_quota"
                | "account_deactivated"
                | "billing_hard_limit_reached"
                | "authentication_error"
        ) || self.kind.as_deref() == Some("authentication_error")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed GPT-Live event: {0}")]
pub struct LiveEventError(pub String);

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    session: Option<RawSession>,
    #[serde(default)]
    delegation_id: Option<String>,
    #[serde(default)]
    event: Option<RawBackend>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    error: Option<LiveError>,
}

#[derive(Deserialize)]
struct RawSession {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    audio: Option<RawAudio>,
}

#[derive(Deserialize)]
struct RawAudio {
    #[serde(default)]
    format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawFormat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    rate: Option<u64>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    seconds: Option<f64>,
}

#[derive(Deserialize)]
struct RawBackend {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    item: Option<RawItem>,
}

#[derive(Deserialize)]
struct RawItem {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// Events whose fields the driver reads: a type error in one of them is
/// malformed input; in any other event it is none of our business.
const HANDLED: &[&str] = &[
    "session.started",
    "session.output_audio.delta",
    "session.input_transcript.delta",
    "session.output_transcript.delta",
    "response.event",
    "session.usage.updated",
    "session.closed",
    "error",
];

/// Parses one server event (a WebSocket text frame).
pub fn parse_live_event(frame: &[u8]) -> Result<LiveEvent<'_>, LiveEventError> {
    let raw: Raw<'_> = match serde_json::from_slice(frame) {
        Ok(raw) => raw,
        Err(full_err) => {
            return unhandled_type(frame, HANDLED, &full_err)
                .map(LiveEvent::Other)
                .map_err(LiveEventError);
        }
    };
    let missing = |field: &str| LiveEventError(format!("{}: missing `{field}`", raw.kind));
    Ok(match raw.kind.as_ref() {
        "session.started" => {
            let session = raw.session.ok_or_else(|| missing("session"))?;
            LiveEvent::SessionStarted(StartedSession {
                id: session.id.unwrap_or_default(),
                format: session
                    .audio
                    .and_then(|a| a.format)
                    .map(|f| (f.kind, f.rate)),
                expires_at: session.expires_at,
            })
        }
        "session.output_audio.delta" => {
            LiveEvent::AudioDelta(raw.delta.ok_or_else(|| missing("delta"))?)
        }
        "session.input_transcript.delta" => {
            LiveEvent::InputTranscript(raw.delta.ok_or_else(|| missing("delta"))?)
        }
        "session.output_transcript.delta" => {
            LiveEvent::OutputTranscript(raw.delta.ok_or_else(|| missing("delta"))?)
        }
        "response.event" => {
            let nested = raw.event.ok_or_else(|| missing("event"))?;
            let event = match nested.kind.as_str() {
                "response.output_item.done" => match nested.item {
                    Some(RawItem {
                        kind: Some(kind),
                        call_id: Some(call_id),
                        name: Some(name),
                        arguments,
                        status,
                    }) if kind == "function_call"
                        && status.as_deref().is_none_or(|s| s == "completed") =>
                    {
                        BackendEvent::FunctionCall {
                            call_id,
                            name,
                            arguments: arguments.unwrap_or_default(),
                        }
                    }
                    _ => BackendEvent::Other,
                },
                "response.completed" => BackendEvent::Completed,
                "response.failed" | "response.incomplete" | "response.cancelled" => {
                    BackendEvent::Ended(nested.kind)
                }
                _ => BackendEvent::Other,
            };
            LiveEvent::Backend {
                delegation_id: raw.delegation_id,
                event,
            }
        }
        "session.usage.updated" => LiveEvent::UsageUpdated {
            seconds: raw
                .usage
                .and_then(|u| u.seconds)
                .ok_or_else(|| missing("usage.seconds"))?,
        },
        "session.closed" => LiveEvent::Closed {
            reason: raw.reason.unwrap_or_default(),
            seconds: raw.usage.and_then(|u| u.seconds),
        },
        "error" => LiveEvent::Error(raw.error.unwrap_or_default()),
        _ => LiveEvent::Other(raw.kind),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_delta_borrows_its_payload() {
        let ev =
            parse_live_event(br#"{"type":"session.output_audio.delta","delta":"//8A"}"#).unwrap();
        assert!(matches!(ev, LiveEvent::AudioDelta(Cow::Borrowed("//8A"))));
    }

    #[test]
    fn session_started_reports_the_echoed_format() {
        let ev = parse_live_event(
            br#"{"type":"session.started","event_id":"ev_1","client_event_id":"cb_start","session":{"id":"live_123","expires_at":1782518400,"status":"active","model":"gpt-live-1","audio":{"format":{"type":"audio/pcmu","rate":8000},"output":{"voice":"marin"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            LiveEvent::SessionStarted(StartedSession {
                id: "live_123".into(),
                format: Some(("audio/pcmu".into(), Some(8000))),
                expires_at: Some(1782518400),
            })
        );
    }

    #[test]
    fn nested_function_calls_and_completion() {
        let ev = parse_live_event(
            br#"{"type":"response.event","event_id":"ev_7","delegation_id":"dlg_1","event":{"type":"response.output_item.done","output_index":0,"sequence_number":3,"item":{"type":"function_call","id":"fc_1","call_id":"call_1","name":"lookup_order","arguments":"{\"order_id\":\"123\"}","status":"completed"}}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            LiveEvent::Backend {
                delegation_id: Some("dlg_1".into()),
                event: BackendEvent::FunctionCall {
                    call_id: "call_1".into(),
                    name: "lookup_order".into(),
                    arguments: r#"{"order_id":"123"}"#.into(),
                }
            }
        );
        let ev = parse_live_event(
            br#"{"type":"response.event","delegation_id":"dlg_1","event":{"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[]}}}"#,
        )
        .unwrap();
        assert!(matches!(
            ev,
            LiveEvent::Backend {
                event: BackendEvent::Completed,
                ..
            }
        ));
        // A message item, or an incomplete call, is not a call to run.
        let ev = parse_live_event(
            br#"{"type":"response.event","event":{"type":"response.output_item.done","item":{"type":"function_call","call_id":"c","name":"n","arguments":"{","status":"incomplete"}}}"#,
        )
        .unwrap();
        assert!(matches!(
            ev,
            LiveEvent::Backend {
                event: BackendEvent::Other,
                ..
            }
        ));
    }

    #[test]
    fn malformed_handled_events_are_errors_unknown_ones_are_not() {
        for frame in [
            &b"not json"[..],
            br#"{"type":"session.output_audio.delta","delta":5}"#,
            br#"{"type":"session.output_audio.delta"}"#,
            br#"{"type":"session.usage.updated","usage":{}}"#,
            br#"{"type":"response.event"}"#,
        ] {
            assert!(
                parse_live_event(frame).is_err(),
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
        assert_eq!(
            parse_live_event(br#"{"type":"session.output_audio.fixture.played","delta":{"x":1}}"#)
                .unwrap(),
            LiveEvent::Other("session.output_audio.fixture.played".into())
        );
    }
}
