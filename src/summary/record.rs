//! The call record's JSON shape (README "Call records" documents it).
//!
//! Times inside the call are milliseconds from its start (`at_ms`), so the
//! record needs no clock but the one `started_at`. Field names are stable:
//! `version` changes if one is removed or changes meaning; new fields may
//! appear at any time, so receivers must ignore what they do not know.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::call::bridge::CallSummary;
use crate::call::tools::CallContext;
use crate::upstream::{Role, Usage};

/// The record format's version.
pub const VERSION: u32 = 1;

/// One call, as POSTed to the summary webhook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    pub version: u32,
    pub call_sid: String,
    pub stream_sid: String,
    pub account_sid: String,
    /// `inbound`, or `outbound` for calls this bridge placed.
    pub direction: &'static str,
    pub from: String,
    pub to: String,
    pub profile: String,
    /// When the Media Stream was accepted, RFC 3339 UTC, milliseconds.
    pub started_at: String,
    pub duration_ms: u64,
    /// As in `callbridge_calls_total{outcome}`.
    pub outcome: &'static str,
    /// Why it ended, when it did not end normally.
    pub reason: Option<String>,
    pub turns: u32,
    pub bargeins: u32,
    pub tool_calls: Vec<ToolCallEntry>,
    /// Both sides, in order. The caller's side needs the model's input
    /// transcription (`agent.transcription_model`); without it only the
    /// assistant's words are here.
    pub transcript: Vec<TranscriptEntry>,
    pub usage: UsageEntry,
    /// The estimated cost from `[pricing]`, USD (an estimate, not a bill).
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallEntry {
    pub name: String,
    pub at_ms: u64,
    pub duration_ms: u64,
    /// `ok`, `error`, `timeout` or `dropped`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranscriptEntry {
    pub role: Role,
    /// When the turn's first words reached the bridge (the caller's arrive
    /// once transcribed, shortly after they were spoken).
    pub at_ms: u64,
    pub text: String,
}

/// Tokens by priced kind (cached input apart), and GPT-Live's billed time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageEntry {
    pub input_text_tokens: u64,
    pub input_audio_tokens: u64,
    pub input_cached_text_tokens: u64,
    pub input_cached_audio_tokens: u64,
    pub output_text_tokens: u64,
    pub output_audio_tokens: u64,
    pub model_seconds: f64,
}

impl From<&Usage> for UsageEntry {
    fn from(u: &Usage) -> Self {
        UsageEntry {
            input_text_tokens: u.input_text,
            input_audio_tokens: u.input_audio,
            input_cached_text_tokens: u.input_cached_text,
            input_cached_audio_tokens: u.input_cached_audio,
            output_text_tokens: u.output_text,
            output_audio_tokens: u.output_audio,
            model_seconds: round_to(u.seconds, 1e3),
        }
    }
}

/// What the record needs besides the bridge's summary.
#[derive(Debug, Clone)]
pub struct CallMeta<'a> {
    pub context: &'a CallContext,
    pub account_sid: &'a str,
    /// Twilio's `Direction` as the webhook gave it (`inbound`,
    /// `outbound-api`, `outbound-dial`), or empty.
    pub direction: &'a str,
    pub started_at: SystemTime,
    pub duration: Duration,
}

impl CallRecord {
    pub fn new(meta: &CallMeta<'_>, summary: &CallSummary, cost_usd: f64) -> CallRecord {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ctx = meta.context;
        CallRecord {
            version: VERSION,
            call_sid: ctx.call_sid.clone(),
            stream_sid: ctx.stream_sid.clone(),
            account_sid: meta.account_sid.to_owned(),
            direction: if meta.direction.starts_with("outbound") {
                "outbound"
            } else {
                "inbound"
            },
            from: ctx.from.clone(),
            to: ctx.to.clone(),
            profile: ctx.profile.clone(),
            started_at: rfc3339_millis(meta.started_at),
            duration_ms: ms(meta.duration),
            outcome: summary.outcome.as_str(),
            reason: summary.reason.clone(),
            turns: summary.turns,
            bargeins: summary.bargeins,
            tool_calls: summary
                .tool_log
                .iter()
                .map(|t| ToolCallEntry {
                    name: t.name.clone(),
                    at_ms: ms(t.at),
                    duration_ms: ms(t.took),
                    outcome: t.outcome,
                })
                .collect(),
            transcript: summary
                .transcript
                .iter()
                .enumerate()
                .map(|(i, turn)| TranscriptEntry {
                    role: turn.role,
                    at_ms: summary.transcript_at.get(i).map_or(0, |at| ms(*at)),
                    text: turn.text.clone(),
                })
                .collect(),
            usage: UsageEntry::from(&summary.usage),
            // Micro-dollars: no float noise in the JSON.
            cost_usd: round_to(cost_usd, 1e6),
        }
    }
}

fn round_to(x: f64, scale: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        (x * scale).round() / scale
    } else {
        0.0
    }
}

/// `2025-01-31T12:34:56.789Z`: RFC 3339 in UTC, from the system clock
/// (days to a civil date: Howard Hinnant's algorithm). Times before 1970
/// show as the epoch.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::bridge::ToolRecord;
    use crate::metrics::Outcome;
    use crate::upstream::Turn;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // date -u -d @951782400 → 2000-02-29 00:00:00 (a leap day).
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        // date -u -d @1767225599 → 2025-12-31 23:59:59.
        assert_eq!(at(1_767_225_599, 999), "2025-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn record_carries_the_call_in_the_documented_shape() {
        let context = CallContext {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            from: "+14155550100".into(),
            to: "+14155550199".into(),
            profile: "default".into(),
        };
        let summary = CallSummary {
            outcome: Outcome::Completed,
            turns: 2,
            bargeins: 1,
            frames_in: 10,
            frames_out: 20,
            rejected: 0,
            tool_calls: 1,
            transcript: vec![
                Turn {
                    role: Role::Caller,
                    text: "Hello".into(),
                },
                Turn {
                    role: Role::Assistant,
                    text: "Hi there".into(),
                },
            ],
            transcript_at: vec![Duration::from_millis(1200), Duration::from_millis(1800)],
            tool_log: vec![ToolRecord {
                name: "lookup_order".into(),
                outcome: "ok",
                at: Duration::from_millis(2000),
                took: Duration::from_millis(35),
            }],
            usage: Usage {
                input_audio: 10,
                output_audio: 20,
                ..Usage::default()
            },
            reason: None,
        };
        let meta = CallMeta {
            context: &context,
            account_sid: "AC1",
            direction: "outbound-api",
            started_at: UNIX_EPOCH + Duration::from_secs(1_767_225_599),
            duration: Duration::from_millis(4321),
        };
        let json = serde_json::to_value(CallRecord::new(&meta, &summary, 0.001_234_567_8)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1, "call_sid": "CA1", "stream_sid": "MZ1", "account_sid": "AC1",
                "direction": "outbound", "from": "+14155550100", "to": "+14155550199",
                "profile": "default", "started_at": "2025-12-31T23:59:59.000Z",
                "duration_ms": 4321, "outcome": "completed", "reason": null,
                "turns": 2, "bargeins": 1,
                "tool_calls": [{"name": "lookup_order", "at_ms": 2000, "duration_ms": 35, "outcome": "ok"}],
                "transcript": [
                    {"role": "caller", "at_ms": 1200, "text": "Hello"},
                    {"role": "assistant", "at_ms": 1800, "text": "Hi there"}
                ],
                "usage": {"input_text_tokens": 0, "input_audio_tokens": 10,
                          "input_cached_text_tokens": 0, "input_cached_audio_tokens": 0,
                          "output_text_tokens": 0, "output_audio_tokens": 20, "model_seconds": 0.0},
                "cost_usd": 0.001235
            })
        );
    }
}
