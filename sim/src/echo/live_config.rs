//! GPT-Live `session.start` and `session.update` parsing: the session
//! configuration and its validation (GPT-LIVE.md §2), apart from the state
//! machine in [`super::live`], so the rules for what a client may send can be
//! read and tested on their own.
//!
//! The real service "rejects unknown fields": a Realtime-only key such as
//! `turn_detection` fails startup with `unknown_parameter` naming it
//! (`session.turn_detection`), and no `session.started` follows. The peer does
//! the same for every key the session configuration does not have, at every
//! level it models (session, audio, format, output, delegation, responses).

use serde_json::{json, Map, Value};

use super::errors::ApiError;

/// Keys of the `session` object of `session.start` (openai-python
/// `types/live/session_config.py`, plus `safety_identifier` and `triggers`
/// from GPT-LIVE.md §2).
const SESSION_KEYS: [&str; 9] = [
    "model",
    "instructions",
    "audio",
    "delegation",
    "input",
    "store",
    "safety_identifier",
    "triggers",
    "client",
];

/// What `session.update` may change: delegation settings and triggers only.
const UPDATE_KEYS: [&str; 2] = ["delegation", "triggers"];

/// Keys of `delegation.responses` (`types/live/responses_delegation_config.py`).
const RESPONSES_KEYS: [&str; 10] = [
    "model",
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "reasoning",
    "service_tier",
    "text",
    "tool_choice",
    "tools",
    "acknowledgement_delay_ms",
];

/// Tool types the Responses backend knows (GPT-LIVE.md §6).
const TOOL_TYPES: [&str; 6] = [
    "function",
    "web_search",
    "file_search",
    "code_interpreter",
    "shell",
    "mcp",
];

/// Built-in voices (`types/live/built_in_voice.py`, GPT-LIVE.md §2).
const VOICES: [&str; 23] = [
    "alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta", "echo",
    "gleam", "marin", "meridian", "quartz", "ripple", "sage", "shida", "shimmer", "stone", "tempo",
    "verse", "vesper", "willow",
];

/// The most `input` history messages a session may start with.
const MAX_INPUT_ITEMS: usize = 128;

/// The one audio format of a GPT-Live session, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveFormat {
    /// `{"type":"audio/pcmu","rate":8000}`: G.711 μ-law, Twilio's own.
    Pcmu,
    /// `{"type":"audio/pcm","rate":16000}`: PCM16LE mono.
    Pcm16k,
    /// `{"type":"audio/pcm","rate":24000}`: PCM16LE mono.
    Pcm24k,
}

impl LiveFormat {
    pub(crate) fn samples_per_ms(self) -> u64 {
        match self {
            LiveFormat::Pcmu => 8,
            LiveFormat::Pcm16k => 16,
            LiveFormat::Pcm24k => 24,
        }
    }

    pub(crate) fn bytes_per_sample(self) -> usize {
        match self {
            LiveFormat::Pcmu => 1,
            LiveFormat::Pcm16k | LiveFormat::Pcm24k => 2,
        }
    }

    pub(crate) fn bytes_per_ms(self) -> usize {
        self.samples_per_ms() as usize * self.bytes_per_sample()
    }

    /// Microseconds of audio in `bytes` of this format.
    pub(crate) fn micros(self, bytes: usize) -> u64 {
        bytes as u64 * 1000 / self.bytes_per_ms() as u64
    }

    /// The byte that encodes silence (μ-law's zero is 0xFF).
    pub(crate) fn silence_byte(self) -> u8 {
        match self {
            LiveFormat::Pcmu => 0xFF,
            LiveFormat::Pcm16k | LiveFormat::Pcm24k => 0,
        }
    }

    pub(crate) fn to_json(self) -> Value {
        match self {
            LiveFormat::Pcmu => json!({"type": "audio/pcmu", "rate": 8000}),
            LiveFormat::Pcm16k => json!({"type": "audio/pcm", "rate": 16000}),
            LiveFormat::Pcm24k => json!({"type": "audio/pcm", "rate": 24000}),
        }
    }
}

/// A session's resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveConfig {
    pub(crate) model: String,
    pub(crate) instructions: Option<String>,
    pub(crate) format: LiveFormat,
    /// A built-in voice name or `{"id": "voice_…"}`.
    pub(crate) voice: Value,
    /// The delegation as resolved: `{"type":"client"}` when none was given.
    pub(crate) delegation: Value,
    pub(crate) store: bool,
    /// Other accepted keys, echoed in the session resource as sent.
    pub(crate) extra: Map<String, Value>,
}

impl LiveConfig {
    /// `client`, `responses` or `decisions`.
    pub(crate) fn delegation_type(&self) -> &str {
        self.delegation
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("client")
    }

    /// Whether function tool `name` is declared in
    /// `delegation.responses.tools` (the only place tools live in GPT-Live).
    pub(crate) fn declares_function(&self, name: &str) -> bool {
        self.delegation
            .pointer("/responses/tools")
            .and_then(Value::as_array)
            .is_some_and(|tools| {
                tools
                    .iter()
                    .any(|t| t["type"] == "function" && t["name"] == name)
            })
    }

    /// The backend model of a Responses delegation.
    pub(crate) fn responses_model(&self) -> Option<&str> {
        self.delegation
            .pointer("/responses/model")
            .and_then(Value::as_str)
    }

    /// The session resource of `session.started`, `session.updated` and
    /// `session.closed` (`types/live/session_resource.py`).
    pub(crate) fn resource(&self, id: &str, expires_at: u64) -> Value {
        let mut v = json!({
            "id": id,
            "expires_at": expires_at,
            "status": "active",
            "model": self.model,
            "audio": {"format": self.format.to_json(), "output": {"voice": self.voice}},
            "delegation": self.delegation,
            "store": self.store,
        });
        if let Some(instructions) = &self.instructions {
            v["instructions"] = json!(instructions);
        }
        for (k, val) in &self.extra {
            v[k.as_str()] = val.clone();
        }
        v
    }
}

fn object<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::invalid_type(param, "an object"))
}

fn string(v: &Value, param: &str) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid_type(param, "a string"))
}

/// The first key of `map` not in `known`, as an `unknown_parameter` error.
fn only_known(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), ApiError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ApiError::unknown_parameter(&format!("{prefix}.{key}"))),
        None => Ok(()),
    }
}

/// Validates the `session` of `session.start` and resolves its defaults.
pub(crate) fn parse_session_start(session: Option<&Value>) -> Result<LiveConfig, ApiError> {
    let session = object(
        session.ok_or_else(|| ApiError::missing("session"))?,
        "session",
    )?;
    only_known(session, &SESSION_KEYS, "session")?;
    let model = match session.get("model") {
        None | Some(Value::Null) => return Err(ApiError::missing("session.model")),
        Some(v) => string(v, "session.model")?,
    };
    if model.is_empty() {
        return Err(ApiError::invalid_value(
            "session.model",
            "session.model must not be empty.",
        ));
    }
    let instructions = match session.get("instructions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string(v, "session.instructions")?),
    };
    let (format, voice) = audio(session.get("audio"))?;
    let delegation = match session.get("delegation") {
        None | Some(Value::Null) => json!({"type": "client"}),
        Some(d) => delegation(d, None)?,
    };
    let store = match session.get("store") {
        None | Some(Value::Null) => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ApiError::invalid_type("session.store", "a boolean"))?,
    };
    let mut extra = Map::new();
    if let Some(input) = session.get("input").filter(|v| !v.is_null()) {
        let items = input
            .as_array()
            .ok_or_else(|| ApiError::invalid_type("session.input", "an array"))?;
        if items.len() > MAX_INPUT_ITEMS {
            return Err(ApiError::invalid_value(
                "session.input",
                format!(
                    "session.input has {} messages; at most {MAX_INPUT_ITEMS} are allowed.",
                    items.len()
                ),
            ));
        }
        for (i, item) in items.iter().enumerate() {
            let param = format!("session.input[{i}]");
            let item = object(item, &param)?;
            match item.get("role").and_then(Value::as_str) {
                Some("developer" | "user" | "assistant") => {}
                _ => {
                    return Err(ApiError::invalid_value(
                        &format!("{param}.role"),
                        "role must be 'developer', 'user' or 'assistant'.",
                    ))
                }
            }
            let parts = item.get("content").and_then(Value::as_array).map(Vec::len);
            if parts != Some(1) {
                return Err(ApiError::invalid_value(
                    &format!("{param}.content"),
                    "Each startup message needs exactly one text part.",
                ));
            }
        }
        extra.insert("input".to_owned(), input.clone());
    }
    if let Some(v) = session.get("safety_identifier").filter(|v| !v.is_null()) {
        extra.insert(
            "safety_identifier".to_owned(),
            json!(string(v, "session.safety_identifier")?),
        );
    }
    if let Some(v) = session.get("triggers").filter(|v| !v.is_null()) {
        if !v.is_array() {
            return Err(ApiError::invalid_type("session.triggers", "an array"));
        }
        extra.insert("triggers".to_owned(), v.clone());
    }
    if let Some(v) = session.get("client").filter(|v| !v.is_null()) {
        object(v, "session.client")?;
        extra.insert("client".to_owned(), v.clone());
    }
    Ok(LiveConfig {
        model,
        instructions,
        format,
        voice,
        delegation,
        store,
        extra,
    })
}

/// Validates a mid-call `session.update`: only delegation settings of the
/// same type, and triggers. Nested `responses` settings are sparse (omitted
/// ones keep their values), as the SDK documents.
pub(crate) fn parse_session_update(
    session: Option<&Value>,
    current: &LiveConfig,
) -> Result<LiveConfig, ApiError> {
    let session = object(
        session.ok_or_else(|| ApiError::missing("session"))?,
        "session",
    )?;
    only_known(session, &UPDATE_KEYS, "session")?;
    let mut cfg = current.clone();
    if let Some(d) = session.get("delegation").filter(|v| !v.is_null()) {
        let kind = object(d, "session.delegation")?
            .get("type")
            .and_then(Value::as_str);
        if kind != Some(current.delegation_type()) {
            return Err(ApiError::invalid_value(
                "session.delegation.type",
                format!(
                    "The delegation type cannot change after startup (the session uses '{}').",
                    current.delegation_type()
                ),
            ));
        }
        cfg.delegation = delegation(d, Some(&current.delegation))?;
    }
    if let Some(v) = session.get("triggers").filter(|v| !v.is_null()) {
        if !v.is_array() {
            return Err(ApiError::invalid_type("session.triggers", "an array"));
        }
        cfg.extra.insert("triggers".to_owned(), v.clone());
    }
    Ok(cfg)
}

/// `session.audio`: the one format (default PCM16 at 24 kHz) and the voice
/// (default `marin`).
fn audio(audio: Option<&Value>) -> Result<(LiveFormat, Value), ApiError> {
    let mut format = LiveFormat::Pcm24k;
    let mut voice = json!("marin");
    let Some(audio) = audio.filter(|v| !v.is_null()) else {
        return Ok((format, voice));
    };
    let audio = object(audio, "session.audio")?;
    only_known(audio, &["format", "output"], "session.audio")?;
    if let Some(f) = audio.get("format").filter(|v| !v.is_null()) {
        format = audio_format(f, "session.audio.format")?;
    }
    if let Some(output) = audio.get("output").filter(|v| !v.is_null()) {
        let output = object(output, "session.audio.output")?;
        only_known(output, &["voice"], "session.audio.output")?;
        match output.get("voice") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) => {
                if !VOICES.contains(&name.as_str()) {
                    return Err(ApiError::invalid_value(
                        "session.audio.output.voice",
                        format!("Invalid value: '{name}'. Use a built-in voice name or {{\"id\": \"voice_…\"}}."),
                    ));
                }
                voice = json!(name);
            }
            Some(Value::Object(custom)) => {
                only_known(custom, &["id"], "session.audio.output.voice")?;
                match custom.get("id").and_then(Value::as_str) {
                    Some(id) => voice = json!({ "id": id }),
                    None => return Err(ApiError::missing("session.audio.output.voice.id")),
                }
            }
            Some(_) => {
                return Err(ApiError::invalid_type(
                    "session.audio.output.voice",
                    "a string or an object",
                ))
            }
        }
    }
    Ok((format, voice))
}

fn audio_format(v: &Value, param: &str) -> Result<LiveFormat, ApiError> {
    let f = object(v, param)?;
    only_known(f, &["type", "rate"], param)?;
    let type_param = format!("{param}.type");
    let rate_param = format!("{param}.rate");
    let kind = match f.get("type") {
        None => return Err(ApiError::missing(&type_param)),
        Some(t) => t
            .as_str()
            .ok_or_else(|| ApiError::invalid_type(&type_param, "a string"))?,
    };
    // `rate` is required for every format: "GPT-Live's schema wants and
    // Realtime's rejects" it.
    let rate = match f.get("rate") {
        None => return Err(ApiError::missing(&rate_param)),
        Some(r) => r
            .as_u64()
            .ok_or_else(|| ApiError::invalid_type(&rate_param, "an integer"))?,
    };
    match (kind, rate) {
        ("audio/pcmu", 8000) => Ok(LiveFormat::Pcmu),
        ("audio/pcm", 16_000) => Ok(LiveFormat::Pcm16k),
        ("audio/pcm", 24_000) => Ok(LiveFormat::Pcm24k),
        ("audio/pcma", 8000) => Err(ApiError::invalid_value(
            &type_param,
            "G.711 A-law is a valid GPT-Live format, but echo-realtime does not implement it.",
        )),
        ("audio/pcmu" | "audio/pcma", _) => Err(ApiError::invalid_value(
            &rate_param,
            format!("Invalid value: {rate}. G.711 audio uses 8000 Hz."),
        )),
        ("audio/pcm", _) => Err(ApiError::invalid_value(
            &rate_param,
            format!("Invalid value: {rate}. audio/pcm supports 16000 or 24000 Hz."),
        )),
        (other, _) => Err(ApiError::invalid_value(
            &type_param,
            format!("Invalid value: '{other}'. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'."),
        )),
    }
}

/// `session.delegation`; with `current`, a sparse update merged into it.
fn delegation(v: &Value, current: Option<&Value>) -> Result<Value, ApiError> {
    let d = object(v, "session.delegation")?;
    let kind = match d.get("type") {
        None => return Err(ApiError::missing("session.delegation.type")),
        Some(t) => t
            .as_str()
            .ok_or_else(|| ApiError::invalid_type("session.delegation.type", "a string"))?,
    };
    match kind {
        "client" => {
            only_known(
                d,
                &["type", "acknowledgement_delay_ms"],
                "session.delegation",
            )?;
            Ok(v.clone())
        }
        "responses" => {
            only_known(
                d,
                &["type", "responses", "acknowledgement_delay_ms"],
                "session.delegation",
            )?;
            let mut responses = match current.and_then(|c| c.get("responses")) {
                Some(Value::Object(old)) => old.clone(),
                _ => Map::new(),
            };
            match d.get("responses") {
                None | Some(Value::Null) if current.is_none() => {
                    return Err(ApiError::missing("session.delegation.responses"))
                }
                None | Some(Value::Null) => {}
                Some(r) => {
                    let r = object(r, "session.delegation.responses")?;
                    only_known(r, &RESPONSES_KEYS, "session.delegation.responses")?;
                    for (k, val) in r {
                        responses.insert(k.clone(), val.clone());
                    }
                }
            }
            match responses.get("model") {
                None | Some(Value::Null) => {
                    return Err(ApiError::missing("session.delegation.responses.model"))
                }
                Some(m) => {
                    string(m, "session.delegation.responses.model")?;
                }
            }
            if let Some(tools) = responses.get("tools").filter(|t| !t.is_null()) {
                check_tools(tools)?;
            }
            let mut out = d.clone();
            out.insert("responses".to_owned(), Value::Object(responses));
            Ok(Value::Object(out))
        }
        "decisions" => {
            only_known(
                d,
                &["type", "decisions", "acknowledgement_delay_ms"],
                "session.delegation",
            )?;
            if !d.get("decisions").is_some_and(Value::is_object) {
                return Err(ApiError::missing("session.delegation.decisions"));
            }
            Ok(v.clone())
        }
        other => Err(ApiError::invalid_value(
            "session.delegation.type",
            format!("Invalid value: '{other}'. Supported values are: 'client', 'responses' and 'decisions'."),
        )),
    }
}

fn check_tools(tools: &Value) -> Result<(), ApiError> {
    let param = "session.delegation.responses.tools";
    let tools = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid_type(param, "an array"))?;
    for (i, tool) in tools.iter().enumerate() {
        let p = format!("{param}[{i}]");
        let tool = object(tool, &p)?;
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::missing(&format!("{p}.type")))?;
        if !TOOL_TYPES.contains(&kind) {
            return Err(ApiError::invalid_value(
                &format!("{p}.type"),
                format!("Invalid value: '{kind}'."),
            ));
        }
        if kind == "function" {
            only_known(
                tool,
                &["type", "name", "description", "parameters", "strict"],
                &p,
            )?;
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::missing(&format!("{p}.name")))?;
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(ApiError::invalid_value(
                    &format!("{p}.name"),
                    format!("Invalid function name '{name}': use 1-64 of a-z, A-Z, 0-9, _ and -."),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(session: Value) -> Result<LiveConfig, ApiError> {
        parse_session_start(Some(&session))
    }

    fn pcmu() -> Value {
        json!({"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}})
    }

    #[test]
    fn realtime_only_keys_are_unknown_parameters() {
        for key in [
            "type",
            "turn_detection",
            "output_modalities",
            "tools",
            "input_audio_transcription",
            "temperature",
            "voice",
        ] {
            let mut session = json!({"model": "gpt-live-1", "audio": pcmu()});
            session[key] = json!("x");
            let err = start(session).expect_err(key);
            assert_eq!(err.code, "unknown_parameter", "{key}");
            assert_eq!(
                err.param.as_deref(),
                Some(format!("session.{key}").as_str())
            );
            assert_eq!(err.message, format!("Unknown parameter: 'session.{key}'."));
        }
        // The GA Realtime audio shape is unknown one level down.
        let err = start(json!({"model": "gpt-live-1",
            "audio": {"input": {"format": {"type": "audio/pcmu"}}}}))
        .expect_err("audio.input");
        assert_eq!(err.param.as_deref(), Some("session.audio.input"));
    }

    #[test]
    fn model_is_required_and_formats_need_a_rate() {
        let err = start(json!({"audio": pcmu()})).expect_err("no model");
        assert_eq!(err.code, "missing_required_parameter");
        assert_eq!(err.param.as_deref(), Some("session.model"));

        let err = start(json!({"model": "gpt-live-1",
            "audio": {"format": {"type": "audio/pcmu"}}}))
        .expect_err("pcmu without rate");
        assert_eq!(err.code, "missing_required_parameter");
        assert_eq!(err.param.as_deref(), Some("session.audio.format.rate"));

        for (format, expect) in [
            (
                json!({"type": "audio/pcmu", "rate": 8000}),
                Ok(LiveFormat::Pcmu),
            ),
            (
                json!({"type": "audio/pcm", "rate": 16000}),
                Ok(LiveFormat::Pcm16k),
            ),
            (
                json!({"type": "audio/pcm", "rate": 24000}),
                Ok(LiveFormat::Pcm24k),
            ),
            (
                json!({"type": "audio/pcm", "rate": 8000}),
                Err("session.audio.format.rate"),
            ),
            (
                json!({"type": "audio/pcmu", "rate": 16000}),
                Err("session.audio.format.rate"),
            ),
            (
                json!({"type": "audio/pcma", "rate": 8000}),
                Err("session.audio.format.type"),
            ),
            (
                json!({"type": "g711_ulaw", "rate": 8000}),
                Err("session.audio.format.type"),
            ),
        ] {
            let got = start(json!({"model": "m", "audio": {"format": format}}));
            match expect {
                Ok(f) => assert_eq!(got.expect("valid").format, f),
                Err(param) => assert_eq!(got.expect_err("invalid").param.as_deref(), Some(param)),
            }
        }
    }

    #[test]
    fn resolved_resource_has_defaults_and_echoes_the_delegation() {
        let cfg = start(json!({"model": "gpt-live-1"})).expect("minimal");
        assert_eq!(cfg.format, LiveFormat::Pcm24k);
        let r = cfg.resource("live_1", 42);
        assert_eq!(r["id"], "live_1");
        assert_eq!(r["expires_at"], 42);
        assert_eq!(r["status"], "active");
        assert_eq!(r["audio"]["output"]["voice"], "marin");
        assert_eq!(r["delegation"], json!({"type": "client"}));

        let delegation = json!({"type": "responses", "responses": {"model": "gpt-5.5",
            "tools": [{"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}]}});
        let cfg = start(json!({"model": "gpt-live-1", "audio": pcmu(),
            "delegation": delegation, "instructions": "be brief"}))
        .expect("full");
        let r = cfg.resource("live_2", 1);
        assert_eq!(
            r["audio"]["format"],
            json!({"type": "audio/pcmu", "rate": 8000})
        );
        assert_eq!(r["delegation"], delegation);
        assert_eq!(r["instructions"], "be brief");
        assert!(cfg.declares_function("lookup_order"));
        assert!(!cfg.declares_function("transfer"));
        assert_eq!(cfg.responses_model(), Some("gpt-5.5"));
    }

    #[test]
    fn delegation_and_voice_are_checked() {
        let err = start(json!({"model": "m", "delegation": {"type": "responses"}}))
            .expect_err("no responses");
        assert_eq!(err.param.as_deref(), Some("session.delegation.responses"));
        let err = start(json!({"model": "m", "delegation": {"type": "responses",
            "responses": {"model": "x", "tools": [{"type": "function"}]}}}))
        .expect_err("nameless tool");
        assert_eq!(
            err.param.as_deref(),
            Some("session.delegation.responses.tools[0].name")
        );
        let err = start(json!({"model": "m", "audio": {"output": {"voice": "nova"}}}))
            .expect_err("unknown voice");
        assert_eq!(err.param.as_deref(), Some("session.audio.output.voice"));
        assert!(
            start(json!({"model": "m", "audio": {"output": {"voice": {"id": "voice_1"}}}})).is_ok()
        );
    }

    #[test]
    fn update_changes_only_delegation_of_the_same_type() {
        let cfg = start(json!({"model": "m", "delegation": {"type": "responses",
            "responses": {"model": "gpt-5.5", "instructions": "old"}}}))
        .expect("start");
        let updated = parse_session_update(
            Some(&json!({"delegation": {"type": "responses",
                "responses": {"tools": [{"type": "function", "name": "f"}]}}})),
            &cfg,
        )
        .expect("sparse update");
        assert!(updated.declares_function("f"));
        assert_eq!(updated.delegation["responses"]["instructions"], "old");
        let err = parse_session_update(Some(&json!({"instructions": "new"})), &cfg)
            .expect_err("immutable");
        assert_eq!(err.code, "unknown_parameter");
        let err = parse_session_update(Some(&json!({"delegation": {"type": "client"}})), &cfg)
            .expect_err("type change");
        assert_eq!(err.param.as_deref(), Some("session.delegation.type"));
    }
}
