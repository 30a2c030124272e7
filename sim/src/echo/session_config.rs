//! `session.update` parsing: the session configuration and its validation
//! for both dialects, apart from the state machine that applies it, so the
//! rules for what a client may send can be read (and tested) on their own.

use serde_json::{json, Map, Value};

use super::audio::Format;
use super::errors::ApiError;
use super::Dialect;

/// `turn_detection` as configured; `None` in [`Config`] means manual turns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TurnDetection {
    pub(crate) kind: &'static str,
    /// Echoed back in the session; the energy VAD uses its own threshold.
    pub(crate) threshold: f64,
    pub(crate) eagerness: Option<&'static str>,
    pub(crate) prefix_padding_ms: u64,
    pub(crate) silence_duration_ms: u64,
    pub(crate) create_response: bool,
    pub(crate) interrupt_response: bool,
}

impl Default for TurnDetection {
    fn default() -> Self {
        Self {
            kind: "server_vad",
            threshold: 0.5,
            eagerness: None,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            create_response: true,
            interrupt_response: true,
        }
    }
}

impl TurnDetection {
    pub(crate) fn to_json(self, dialect: Dialect) -> Value {
        let mut v = match self.eagerness {
            Some(eagerness) => json!({"type": self.kind, "eagerness": eagerness}),
            None => json!({
                "type": self.kind,
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
            }),
        };
        v["create_response"] = json!(self.create_response);
        v["interrupt_response"] = json!(self.interrupt_response);
        if dialect == Dialect::Ga && self.eagerness.is_none() {
            v["idle_timeout_ms"] = Value::Null;
        }
        v
    }
}

/// The session configuration that `session.update` changes.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) input: Format,
    pub(crate) output: Format,
    pub(crate) turn: Option<TurnDetection>,
    /// The transcription settings as sent (`null`: no transcripts of the caller).
    pub(crate) transcription: Value,
    pub(crate) voice: String,
    pub(crate) instructions: String,
    pub(crate) tools: Value,
    pub(crate) tool_choice: Value,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            input: Format::Pcm16,
            output: Format::Pcm16,
            turn: Some(TurnDetection::default()),
            transcription: Value::Null,
            voice: "echo".to_owned(),
            instructions: String::new(),
            tools: json!([]),
            tool_choice: json!("auto"),
        }
    }
}

impl Config {
    /// Whether the model may call the function `name`: a `function` tool of
    /// that name is declared in `tools` (the same key in both dialects) and
    /// `tool_choice` is not `"none"`.
    pub(crate) fn may_call(&self, name: &str) -> bool {
        let declared = self.tools.as_array().is_some_and(|tools| {
            tools
                .iter()
                .any(|t| t["type"] == "function" && t["name"] == name)
        });
        declared && self.tool_choice != "none"
    }
}

/// Session keys only the beta dialect has; a GA server rejects them.
const BETA_ONLY: [&str; 7] = [
    "modalities",
    "voice",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "turn_detection",
];

/// Session keys only the GA dialect has; a beta server rejects them.
const GA_ONLY: [&str; 3] = ["type", "audio", "output_modalities"];

fn object<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::invalid_type(param, "an object"))
}

/// Validates the whole update before applying any of it, as the real service
/// does: a rejected `session.update` changes nothing.
pub(crate) fn parse_session_update(
    dialect: Dialect,
    session: Option<&Value>,
    current: &Config,
) -> Result<Config, ApiError> {
    let session = object(
        session.ok_or_else(|| ApiError::missing("session"))?,
        "session",
    )?;
    let mut cfg = current.clone();
    match dialect {
        Dialect::Ga => {
            if let Some(key) = BETA_ONLY.iter().find(|k| session.contains_key(**k)) {
                return Err(ApiError::unknown_parameter(&format!("session.{key}")));
            }
            match session.get("type") {
                None => return Err(ApiError::missing("session.type")),
                Some(Value::String(t)) if t == "realtime" => {}
                Some(_) => {
                    return Err(ApiError::invalid_value(
                        "session.type",
                        "echo-realtime serves 'realtime' sessions only.",
                    ))
                }
            }
            if let Some(audio) = session.get("audio") {
                let audio = object(audio, "session.audio")?;
                if let Some(input) = audio.get("input") {
                    let input = object(input, "session.audio.input")?;
                    if let Some(f) = input.get("format") {
                        cfg.input = ga_format(f, "session.audio.input.format")?;
                    }
                    if let Some(td) = input.get("turn_detection") {
                        cfg.turn = turn_detection(td, "session.audio.input.turn_detection")?;
                    }
                    if let Some(t) = input.get("transcription") {
                        cfg.transcription = transcription(t, "session.audio.input.transcription")?;
                    }
                }
                if let Some(output) = audio.get("output") {
                    let output = object(output, "session.audio.output")?;
                    if let Some(f) = output.get("format") {
                        cfg.output = ga_format(f, "session.audio.output.format")?;
                    }
                    if let Some(voice) = output.get("voice") {
                        cfg.voice = string(voice, "session.audio.output.voice")?;
                    }
                }
            }
        }
        Dialect::Beta => {
            if let Some(key) = GA_ONLY.iter().find(|k| session.contains_key(**k)) {
                return Err(ApiError::unknown_parameter(&format!("session.{key}")));
            }
            if let Some(f) = session.get("input_audio_format") {
                cfg.input = beta_format(f, "session.input_audio_format")?;
            }
            if let Some(f) = session.get("output_audio_format") {
                cfg.output = beta_format(f, "session.output_audio_format")?;
            }
            if let Some(td) = session.get("turn_detection") {
                cfg.turn = turn_detection(td, "session.turn_detection")?;
            }
            if let Some(t) = session.get("input_audio_transcription") {
                cfg.transcription = transcription(t, "session.input_audio_transcription")?;
            }
            if let Some(voice) = session.get("voice") {
                cfg.voice = string(voice, "session.voice")?;
            }
        }
    }
    if let Some(instructions) = session.get("instructions") {
        cfg.instructions = string(instructions, "session.instructions")?;
    }
    if let Some(tools) = session.get("tools") {
        if !tools.is_array() {
            return Err(ApiError::invalid_type("session.tools", "an array"));
        }
        cfg.tools = tools.clone();
    }
    if let Some(choice) = session.get("tool_choice") {
        cfg.tool_choice = choice.clone();
    }
    Ok(cfg)
}

fn string(v: &Value, param: &str) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid_type(param, "a string"))
}

fn unsupported_alaw(param: &str) -> ApiError {
    ApiError::invalid_value(
        param,
        "G.711 A-law is a valid Realtime format, but echo-realtime does not implement it.",
    )
}

fn ga_format(v: &Value, param: &str) -> Result<Format, ApiError> {
    let f = object(v, param)?;
    let type_param = format!("{param}.type");
    let kind = match f.get("type") {
        None => return Err(ApiError::missing(&type_param)),
        Some(t) => t
            .as_str()
            .ok_or_else(|| ApiError::invalid_type(&type_param, "a string"))?,
    };
    match kind {
        "audio/pcm" => match f.get("rate") {
            None => Ok(Format::Pcm16),
            Some(rate) if rate.as_u64() == Some(24_000) => Ok(Format::Pcm16),
            Some(_) => Err(ApiError::invalid_value(
                &format!("{param}.rate"),
                "audio/pcm supports only rate 24000.",
            )),
        },
        "audio/pcmu" => Ok(Format::Pcmu),
        "audio/pcma" => Err(unsupported_alaw(&type_param)),
        other => Err(ApiError::invalid_value(
            &type_param,
            format!("Invalid value: '{other}'. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'."),
        )),
    }
}

fn beta_format(v: &Value, param: &str) -> Result<Format, ApiError> {
    match v.as_str() {
        Some("pcm16") => Ok(Format::Pcm16),
        Some("g711_ulaw") => Ok(Format::Pcmu),
        Some("g711_alaw") => Err(unsupported_alaw(param)),
        Some(other) => Err(ApiError::invalid_value(
            param,
            format!("Invalid value: '{other}'. Supported values are: 'pcm16', 'g711_ulaw', and 'g711_alaw'."),
        )),
        None => Err(ApiError::invalid_type(param, "a string")),
    }
}

fn transcription(v: &Value, param: &str) -> Result<Value, ApiError> {
    match v {
        Value::Null | Value::Object(_) => Ok(v.clone()),
        _ => Err(ApiError::invalid_type(param, "an object or null")),
    }
}

fn turn_detection(v: &Value, param: &str) -> Result<Option<TurnDetection>, ApiError> {
    let td = match v {
        Value::Null => return Ok(None),
        v => object(v, param)?,
    };
    let field = |name: &str| format!("{param}.{name}");
    let uint = |name: &str, default: u64| -> Result<u64, ApiError> {
        match td.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| ApiError::invalid_type(&field(name), "a non-negative integer")),
        }
    };
    let flag = |name: &str| -> Result<bool, ApiError> {
        match td.get(name) {
            None | Some(Value::Null) => Ok(true),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ApiError::invalid_type(&field(name), "a boolean")),
        }
    };
    let kind = match td.get("type") {
        None => return Err(ApiError::missing(&field("type"))),
        Some(t) => t
            .as_str()
            .ok_or_else(|| ApiError::invalid_type(&field("type"), "a string"))?,
    };
    let mut out = TurnDetection {
        create_response: flag("create_response")?,
        interrupt_response: flag("interrupt_response")?,
        ..TurnDetection::default()
    };
    match kind {
        "server_vad" => {
            out.prefix_padding_ms = uint("prefix_padding_ms", 300)?;
            out.silence_duration_ms = uint("silence_duration_ms", 500)?;
            if let Some(t) = td.get("threshold").filter(|t| !t.is_null()) {
                out.threshold =
                    t.as_f64()
                        .filter(|t| (0.0..=1.0).contains(t))
                        .ok_or_else(|| {
                            ApiError::invalid_value(
                                &field("threshold"),
                                "threshold must be in [0, 1].",
                            )
                        })?;
            }
        }
        "semantic_vad" => {
            // No semantics here: eagerness only picks the silence to wait for.
            let (eagerness, silence) = match td.get("eagerness").and_then(Value::as_str) {
                None | Some("auto") => ("auto", 500),
                Some("medium") => ("medium", 500),
                Some("low") => ("low", 1000),
                Some("high") => ("high", 250),
                Some(other) => {
                    return Err(ApiError::invalid_value(
                        &field("eagerness"),
                        format!("Invalid value: '{other}'. Supported values are: 'low', 'medium', 'high', and 'auto'."),
                    ))
                }
            };
            out.kind = "semantic_vad";
            out.eagerness = Some(eagerness);
            out.silence_duration_ms = silence;
        }
        other => {
            return Err(ApiError::invalid_value(
                &field("type"),
                format!(
                "Invalid value: '{other}'. Supported values are: 'server_vad' and 'semantic_vad'."
            ),
            ))
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ga_update(session: Value) -> Result<Config, ApiError> {
        parse_session_update(Dialect::Ga, Some(&session), &Config::default())
    }

    #[test]
    fn ga_update_sets_formats_and_manual_turns() {
        let cfg = ga_update(json!({
            "type": "realtime",
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": null},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}}}
        }))
        .expect("valid update");
        assert_eq!(cfg.input, Format::Pcmu);
        assert_eq!(cfg.output, Format::Pcm16);
        assert_eq!(cfg.turn, None);
    }

    #[test]
    fn ga_rejects_beta_keys_and_a_missing_type() {
        let err = ga_update(json!({"type": "realtime", "input_audio_format": "pcm16"}))
            .expect_err("beta key");
        assert_eq!(err.code, "unknown_parameter");
        assert_eq!(err.param.as_deref(), Some("session.input_audio_format"));
        let err = ga_update(json!({"audio": {}})).expect_err("no type");
        assert_eq!(err.code, "missing_required_parameter");
    }

    #[test]
    fn only_declared_functions_may_be_called() {
        let cfg = ga_update(json!({"type": "realtime", "tools": [
            {"type": "function", "name": "end_call", "parameters": {"type": "object"}},
            {"type": "mcp", "name": "lookup_order"}]}))
        .expect("valid update");
        assert!(cfg.may_call("end_call"));
        assert!(!cfg.may_call("lookup_order"), "not a function tool");
        assert!(!cfg.may_call("transfer_call"));
        assert!(!Config::default().may_call("end_call"));
        let none = ga_update(json!({"type": "realtime", "tool_choice": "none",
            "tools": [{"type": "function", "name": "end_call"}]}))
        .expect("valid update");
        assert!(!none.may_call("end_call"));
        let beta = parse_session_update(
            Dialect::Beta,
            Some(&json!({"tools": [{"type": "function", "name": "end_call"}]})),
            &Config::default(),
        )
        .expect("valid beta update");
        assert!(beta.may_call("end_call"));
    }

    #[test]
    fn beta_update_reads_flat_keys_and_rejects_ga_ones() {
        let cfg = parse_session_update(
            Dialect::Beta,
            Some(
                &json!({"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw",
                         "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}),
            ),
            &Config::default(),
        )
        .expect("valid beta update");
        assert_eq!(cfg.input, Format::Pcmu);
        assert_eq!(cfg.turn.map(|t| t.silence_duration_ms), Some(700));
        let err = parse_session_update(
            Dialect::Beta,
            Some(&json!({"type": "realtime"})),
            &Config::default(),
        )
        .expect_err("GA key");
        assert_eq!(err.code, "unknown_parameter");
    }
}
