//! Typed configuration: built-in defaults ← TOML file ← `CALLBRIDGE_*` environment.
//!
//! Every key is validated once, at load time, so a bad value stops start-up
//! with a message that names the key, instead of failing on the first call.
//! Secrets never live in the TOML layer: they come from `OPENAI_API_KEY` and
//! `TWILIO_AUTH_TOKEN` (or the `*_FILE` variants that Kubernetes secrets mount)
//! and are wrapped in [`Secret`], whose `Debug` is redacted.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use url::Url;

pub use crate::audio::AudioMode;

/// Errors that stop start-up. Each names the key (or variable, or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("config key `{key}`: {reason}")]
    Key { key: String, reason: String },
    #[error("{var}: {reason}")]
    Secret { var: String, reason: String },
}

impl ConfigError {
    fn key(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration. Field names are the stable keys of DESIGN.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bind address of the HTTP/WebSocket server.
    pub listen: SocketAddr,
    /// The `https://host[:port]` Twilio reaches. Required by `serve`.
    pub public_url: Option<String>,
    /// Admission limit: concurrent calls this process accepts.
    pub max_calls: usize,
    /// Seconds a SIGTERM waits for live calls before closing them.
    pub drain_timeout: u64,
    pub realtime: RealtimeConfig,
    pub audio: AudioConfig,
    pub twilio: TwilioConfig,
    pub agent: AgentConfig,
    pub log: LogConfig,
}

/// The model's wire protocol: four dialects of two protocols, each served by
/// one driver behind [`crate::upstream::Driver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// OpenAI's GA Realtime API (`session.type = "realtime"`, `response.output_audio.*`).
    Ga,
    /// Legacy: the pre-GA Realtime event names, sent with `OpenAI-Beta: realtime=v1`.
    /// OpenAI shut the beta interface down; kept for compatible third-party servers.
    Beta,
    /// Azure OpenAI's GA Realtime API: GA event names, `api-key` header.
    Azure,
    /// OpenAI GPT-Live (`/v1/live/sessions`): full duplex, model-driven turns.
    Live,
    /// GPT-Live on Azure AI Foundry: the same events, `api-key` header.
    #[serde(rename = "azure-live")]
    AzureLive,
}

impl Dialect {
    pub const ALL: [Dialect; 5] = [
        Dialect::Ga,
        Dialect::Beta,
        Dialect::Azure,
        Dialect::Live,
        Dialect::AzureLive,
    ];

    /// True for the GPT-Live protocol, false for Realtime.
    pub fn is_live(self) -> bool {
        matches!(self, Dialect::Live | Dialect::AzureLive)
    }

    /// True where the key goes in an `api-key` header rather than `Authorization: Bearer`.
    pub fn is_azure(self) -> bool {
        matches!(self, Dialect::Azure | Dialect::AzureLive)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Ga => "ga",
            Dialect::Beta => "beta",
            Dialect::Azure => "azure",
            Dialect::Live => "live",
            Dialect::AzureLive => "azure-live",
        }
    }

    /// Where the model is when `realtime.url` is not set; Azure endpoints are
    /// per resource, so they have none.
    pub fn default_url(self) -> Option<&'static str> {
        match self {
            Dialect::Ga | Dialect::Beta => {
                Some("wss://api.openai.com/v1/realtime?model=gpt-realtime")
            }
            Dialect::Live => Some("wss://api.openai.com/v1/live/sessions"),
            Dialect::Azure | Dialect::AzureLive => None,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The GPT-Live model when `realtime.model` is not set.
pub const DEFAULT_LIVE_MODEL: &str = "gpt-live-1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// The model's endpoint, `wss://` (or `ws://` for local peers); unset: the
    /// dialect's default ([`Dialect::default_url`]).
    pub url: Option<String>,
    pub dialect: Dialect,
    /// GPT-Live only: the model named in `session.start` (default
    /// [`DEFAULT_LIVE_MODEL`]). Realtime names its model in the URL.
    pub model: Option<String>,
    /// GPT-Live only: the Responses model the voice model delegates tool work to.
    pub delegation_model: String,
    /// Seconds allowed for the TCP + TLS + WebSocket handshake to the model.
    pub connect_timeout: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// `pcm16` transcodes to 24 kHz PCM16; `pcmu` passes μ-law through.
    pub mode: AudioMode,
    /// How far ahead of real time model audio is sent to Twilio, in ms.
    /// Small keeps barge-in precise; large rides out jitter. Unset: the
    /// protocol's default (200 for Realtime; 60 for GPT-Live, which cannot be
    /// told what the caller did not hear, so little may be queued at Twilio).
    pub playout_lead_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// Check `X-Twilio-Signature` on the webhook and the stream upgrade.
    pub validate_signatures: bool,
    /// Seconds a stream token from `/voice` stays valid for the `start` message.
    pub stream_token_ttl: u64,
    /// Spoken by Twilio if the stream ends (TwiML `<Say>` after `</Connect>`); empty: none.
    pub fallback_say: String,
    /// Twilio's REST API (hang-up, transfer, outbound calls): `https://api.twilio.com`,
    /// or a fake on loopback in tests. `http(s)://host[:port][/path]`, no query.
    pub api_base_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub instructions: String,
    pub voice: String,
    /// An instruction for the model's first words (e.g. "Greet the caller as
    /// Acme support"); empty: the model waits for the caller to speak.
    pub greeting: String,
    /// Transcription model for the caller's speech; empty disables transcripts.
    pub transcription_model: String,
    pub turn_detection: TurnDetection,
    /// HTTP tools the model may call (`[[agent.tools]]`).
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnDetectionKind {
    ServerVad,
    SemanticVad,
    /// Manual turns: no server VAD (and so no server-side barge-in detection).
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnDetection {
    #[serde(rename = "type")]
    pub kind: TurnDetectionKind,
    /// server_vad: activation threshold, 0.0–1.0.
    pub threshold: f64,
    pub prefix_padding_ms: u32,
    pub silence_duration_ms: u32,
    /// semantic_vad: `low`, `medium`, `high` or `auto`.
    pub eagerness: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `callbridge=debug`, …); `RUST_LOG` overrides it.
    pub level: String,
}

/// Where Twilio's REST API lives when `twilio.api_base_url` is not set.
pub const DEFAULT_TWILIO_API_BASE_URL: &str = "https://api.twilio.com";

/// Admission default: what the load test showed one core holds with headroom.
const CALLS_PER_CORE: usize = 250;

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: None,
            max_calls: CALLS_PER_CORE * cores,
            drain_timeout: 300,
            realtime: RealtimeConfig {
                url: None,
                dialect: Dialect::Ga,
                model: None,
                delegation_model: "gpt-5.5".into(),
                connect_timeout: 10,
            },
            audio: AudioConfig {
                mode: AudioMode::Pcm16,
                playout_lead_ms: None,
            },
            twilio: TwilioConfig {
                validate_signatures: true,
                stream_token_ttl: 60,
                fallback_say: String::new(),
                api_base_url: DEFAULT_TWILIO_API_BASE_URL.into(),
            },
            agent: AgentConfig {
                instructions: "You are a helpful, concise voice assistant on a phone call. \
                               Keep answers short and speak naturally."
                    .into(),
                voice: "marin".into(),
                greeting: String::new(),
                transcription_model: "whisper-1".into(),
                turn_detection: TurnDetection {
                    kind: TurnDetectionKind::ServerVad,
                    threshold: 0.5,
                    prefix_padding_ms: 300,
                    silence_duration_ms: 500,
                    eagerness: "auto".into(),
                },
                tools: Vec::new(),
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
        }
    }
}

impl Config {
    /// Loads defaults ← `file` (if given; it must exist) ← `CALLBRIDGE_*` from `env`,
    /// then validates. `env` is passed in so tests need not touch the process environment.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvLayer(env_dict(env)));
        let mut config: Config = figment.extract().map_err(from_figment)?;
        config.expand_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.public_url {
            parse_public_url(url)?;
        }
        if self.max_calls == 0 {
            return Err(ConfigError::key("max_calls", "must be at least 1 (got 0)"));
        }
        self.realtime_url()?;
        match (&self.realtime.model, self.realtime.dialect.is_live()) {
            (Some(model), true) if model.trim().is_empty() => {
                return Err(ConfigError::key("realtime.model", "must not be empty"));
            }
            (Some(_), false) => {
                return Err(ConfigError::key(
                    "realtime.model",
                    format!(
                        "is for the GPT-Live dialects; the {} dialect names its model in realtime.url (?model=…)",
                        self.realtime.dialect
                    ),
                ));
            }
            _ => {}
        }
        if self.realtime.dialect.is_live() && self.realtime.delegation_model.trim().is_empty() {
            return Err(ConfigError::key(
                "realtime.delegation_model",
                "must not be empty",
            ));
        }
        if self.realtime.connect_timeout == 0 {
            return Err(ConfigError::key(
                "realtime.connect_timeout",
                "must be at least 1 second",
            ));
        }
        if let Some(lead) = self.audio.playout_lead_ms {
            if !(20..=2000).contains(&lead) {
                return Err(ConfigError::key(
                    "audio.playout_lead_ms",
                    format!("must be between 20 and 2000 (got {lead})"),
                ));
            }
        }
        self.twilio_api_base_url()?;
        if self.twilio.stream_token_ttl == 0 {
            return Err(ConfigError::key(
                "twilio.stream_token_ttl",
                "must be at least 1 second",
            ));
        }
        let td = &self.agent.turn_detection;
        if !(0.0..=1.0).contains(&td.threshold) {
            return Err(ConfigError::key(
                "agent.turn_detection.threshold",
                format!("must be between 0.0 and 1.0 (got {})", td.threshold),
            ));
        }
        if !["low", "medium", "high", "auto"].contains(&td.eagerness.as_str()) {
            return Err(ConfigError::key(
                "agent.turn_detection.eagerness",
                format!(
                    "unknown value {:?} (expected low, medium, high or auto)",
                    td.eagerness
                ),
            ));
        }
        if self.agent.voice.trim().is_empty() {
            return Err(ConfigError::key("agent.voice", "must not be empty"));
        }
        validate_tools(&self.agent.tools, "agent.tools")?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::key("log.level", e.to_string()));
        }
        Ok(())
    }

    /// `public_url`, parsed; `serve` cannot run without it.
    pub fn public_url(&self) -> Result<Url, ConfigError> {
        match &self.public_url {
            Some(url) => parse_public_url(url),
            None => Err(ConfigError::key(
                "public_url",
                "is required: the https://host[:port] Twilio uses to reach this server \
                 (set it in the config file or CALLBRIDGE_PUBLIC_URL)",
            )),
        }
    }

    /// `twilio.api_base_url`, parsed and checked: `http(s)://host[:port][/path]`,
    /// no query, fragment or credentials (those come from the environment).
    pub fn twilio_api_base_url(&self) -> Result<Url, ConfigError> {
        let raw = self.twilio.api_base_url.as_str();
        let parsed = Url::parse(raw);
        // Never echo a query or user info: either might carry a credential.
        let shown = match &parsed {
            Ok(url) => redact_query(url),
            Err(_) if raw.contains('@') => "<not shown>".to_owned(),
            Err(_) => match raw.split_once('?') {
                Some((base, _)) => format!("{base}?…"),
                None => raw.to_owned(),
            },
        };
        let bad =
            |why: &str| ConfigError::key("twilio.api_base_url", format!("{why} (got {shown:?})"));
        let url = parsed.map_err(|e| bad(&format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad(
                "must start with https:// (or http:// for a local fake)",
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not carry credentials (they come from TWILIO_AUTH_TOKEN or TWILIO_API_KEY_SID/_SECRET)",
            ));
        }
        Ok(url)
    }

    /// `realtime.url`, or the dialect's default, parsed and checked.
    pub fn realtime_url(&self) -> Result<Url, ConfigError> {
        let dialect = self.realtime.dialect;
        let raw = match (&self.realtime.url, dialect.default_url()) {
            (Some(url), _) => url.as_str(),
            (None, Some(default)) => default,
            (None, None) => {
                return Err(ConfigError::key(
                    "realtime.url",
                    format!(
                        "is required for the {dialect} dialect (your resource's endpoint, e.g. {})",
                        if dialect.is_live() {
                            "wss://<resource>.openai.azure.com/openai/v1/live/sessions"
                        } else {
                            "wss://<resource>.openai.azure.com/openai/v1/realtime?model=<deployment>"
                        }
                    ),
                ))
            }
        };
        let url = parse_realtime_url(raw)?;
        if dialect.is_live() && url.query().is_some() {
            return Err(ConfigError::key(
                "realtime.url",
                format!(
                    "GPT-Live takes no query string: the model goes in realtime.model (got {})",
                    redact_query(&url)
                ),
            ));
        }
        Ok(url)
    }

    /// The playout lead in force: `audio.playout_lead_ms`, or the protocol's default.
    pub fn playout_lead(&self) -> Duration {
        let ms = self
            .audio
            .playout_lead_ms
            .unwrap_or(if self.realtime.dialect.is_live() {
                DEFAULT_LIVE_PLAYOUT_LEAD_MS
            } else {
                DEFAULT_REALTIME_PLAYOUT_LEAD_MS
            });
        Duration::from_millis(ms)
    }

    /// The GPT-Live model named in `session.start`.
    pub fn live_model(&self) -> &str {
        self.realtime.model.as_deref().unwrap_or(DEFAULT_LIVE_MODEL)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }
}

/// `CALLBRIDGE_REALTIME__URL` → `realtime.url`; `CALLBRIDGE_MAX_CALLS` → `max_calls`.
/// `CALLBRIDGE_CONFIG` names the file and is not a key.
fn env_dict(env: &HashMap<String, String>) -> figment::value::Dict {
    let mut root = figment::value::Dict::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("CALLBRIDGE_") else {
            continue;
        };
        if rest.is_empty() || rest == "CONFIG" {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        insert_path(&mut root, &path, parse_env_value(value));
    }
    root
}

/// The environment layer, named so that errors say where a value came from.
struct EnvLayer(figment::value::Dict);

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("CALLBRIDGE_* environment")
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

/// Environment values are strings; read them the way figment's `Env` does
/// (numbers, booleans), so `CALLBRIDGE_MAX_CALLS=10` is a number.
fn parse_env_value(value: &str) -> figment::value::Value {
    value
        .parse::<figment::value::Value>()
        .unwrap_or_else(|never| match never {})
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

fn from_figment(err: figment::Error) -> ConfigError {
    // `agent.tools.0.url` reads as `agent.tools[0].url`, as validation names it.
    let mut key = String::new();
    for part in &err.path {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    let mut reason = err.kind.to_string();
    if let Some(meta) = err.metadata.as_ref() {
        match &meta.source {
            Some(source) => reason = format!("{reason} (from {} {source})", meta.name),
            None => reason = format!("{reason} (from {})", meta.name),
        }
    }
    if key.is_empty() {
        ConfigError::key("<root>", reason)
    } else {
        ConfigError::Key { key, reason }
    }
}

fn parse_public_url(raw: &str) -> Result<Url, ConfigError> {
    let bad = |why: &str| ConfigError::key("public_url", format!("{why} (got {raw:?})"));
    let url = Url::parse(raw).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(
            "must start with https:// (or http:// behind a TLS proxy)",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
        return Err(bad("must be scheme://host[:port] with no path or query"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    Ok(url)
}

/// Playout lead for Realtime: enough to ride out jitter; barge-in clears the rest.
pub const DEFAULT_REALTIME_PLAYOUT_LEAD_MS: u64 = 200;
/// Playout lead for GPT-Live: what was sent is what was heard, within a chunk.
pub const DEFAULT_LIVE_PLAYOUT_LEAD_MS: u64 = 60;

/// A URL for logs and errors: scheme, host, port and path, never the query
/// (an Azure URL may carry a key there).
pub fn redact_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    let mut text = shown.to_string();
    if url.query().is_some() {
        text.push_str("?…");
    }
    text
}

/// Parses `realtime.url`: `wss://` for real models, `ws://` for local peers.
pub fn parse_realtime_url(raw: &str) -> Result<Url, ConfigError> {
    // Never echo a query: an Azure URL may carry its key there.
    let shown = match raw.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => raw.to_owned(),
    };
    let bad = |why: &str| ConfigError::key("realtime.url", format!("{why} (got {shown:?})"));
    let url = Url::parse(raw).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "wss" | "ws") {
        return Err(bad("must start with wss:// (or ws:// for a local peer)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(url)
}

/// Names the model may not use for HTTP tools: the built-in call control.
pub const RESERVED_TOOL_NAMES: [&str; 2] = ["end_call", "transfer_call"];
/// `timeout_ms` of an HTTP tool when not set.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 5000;
/// The longest `timeout_ms` an HTTP tool may have: the caller is waiting.
pub const MAX_TOOL_TIMEOUT_MS: u64 = 60_000;
/// Headers the tool runner sets itself (the body is always JSON).
const RESERVED_TOOL_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "user-agent",
];

/// One HTTP tool the model may call (`[[agent.tools]]`). The bridge sends the
/// endpoint `{"name", "call_id", "arguments", "call"}` as JSON; a 2xx
/// answer's body is what the model reads (see [`crate::call::http_tools`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// What the model calls it: `^[a-zA-Z0-9_-]{1,64}$`, unique, not a built-in.
    pub name: String,
    /// When and why the model should call it.
    pub description: String,
    /// A JSON-Schema object (`type = "object"`); unset: no arguments.
    #[serde(default = "default_tool_parameters")]
    pub parameters: serde_json::Value,
    /// The endpoint, `https://` (or `http://`).
    pub url: String,
    #[serde(default)]
    pub method: ToolMethod,
    /// Bound on the whole request (connect, send, answer), 1–60000 ms.
    #[serde(default = "default_tool_timeout_ms")]
    pub timeout_ms: u64,
    /// Sent with every request; values may reference `${NAME}`, expanded
    /// from the environment at start-up and redacted in `Debug`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, ToolHeader>,
}

impl fmt::Debug for ToolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's query may carry a key: never shown.
        let url = match Url::parse(&self.url) {
            Ok(url) => redact_query(&url),
            Err(_) => "<invalid>".to_owned(),
        };
        f.debug_struct("ToolConfig")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("parameters", &self.parameters)
            .field("url", &url)
            .field("method", &self.method)
            .field("timeout_ms", &self.timeout_ms)
            .field("headers", &self.headers)
            .finish()
    }
}

impl ToolConfig {
    /// A POST tool with no arguments, no headers and the default timeout.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        url: impl Into<String>,
    ) -> Self {
        ToolConfig {
            name: name.into(),
            description: description.into(),
            parameters: default_tool_parameters(),
            url: url.into(),
            method: ToolMethod::default(),
            timeout_ms: DEFAULT_TOOL_TIMEOUT_MS,
            headers: Default::default(),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

fn default_tool_parameters() -> serde_json::Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

fn default_tool_timeout_ms() -> u64 {
    DEFAULT_TOOL_TIMEOUT_MS
}

/// The HTTP method of a tool's request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolMethod {
    #[default]
    #[serde(rename = "POST", alias = "post")]
    Post,
    #[serde(rename = "PUT", alias = "put")]
    Put,
}

impl ToolMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolMethod::Post => "POST",
            ToolMethod::Put => "PUT",
        }
    }
}

/// A tool's header value as written (`"Bearer ${ORDERS_TOKEN}"`) and, once
/// expanded, as sent. `Debug` shows neither; serializing gives the template,
/// never the expanded value.
#[derive(Clone, PartialEq, Eq)]
pub struct ToolHeader {
    template: String,
    value: Option<Secret>,
}

impl ToolHeader {
    /// A value as written; without `${…}` references it is ready to send.
    pub fn new(template: impl Into<String>) -> Self {
        let template = template.into();
        let value = match parse_template(&template) {
            Ok(parts) if parts.iter().all(|p| matches!(p, Part::Text(_))) => {
                Some(Secret::new(template.clone()))
            }
            _ => None,
        };
        ToolHeader { template, value }
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// The value to send; `None` until its `${…}` references are expanded
    /// ([`Config::expand_env`]).
    pub fn value(&self) -> Option<&Secret> {
        self.value.as_ref()
    }

    /// Expands `${NAME}` from `env`; `Err` holds the missing or empty
    /// variable's name and why.
    fn expand(&mut self, env: &HashMap<String, String>) -> Result<(), (String, &'static str)> {
        let parts = parse_template(&self.template).map_err(|why| (String::new(), why))?;
        let mut value = String::with_capacity(self.template.len());
        for part in parts {
            match part {
                Part::Text(text) => value.push_str(text),
                Part::Var(name) => match env.get(name) {
                    Some(v) if !v.is_empty() => value.push_str(v),
                    Some(_) => return Err((name.to_owned(), "is set but empty")),
                    None => return Err((name.to_owned(), "is not set")),
                },
            }
        }
        self.value = Some(Secret::new(value));
        Ok(())
    }
}

impl fmt::Debug for ToolHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for ToolHeader {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.template)
    }
}

impl<'de> Deserialize<'de> for ToolHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(ToolHeader::new)
    }
}

enum Part<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits `a ${NAME} b` into text and variable references. A `$` not
/// followed by `{` is text.
fn parse_template(template: &str) -> Result<Vec<Part<'_>>, &'static str> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("has a `${` without its closing `}`");
        };
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err("references a variable whose name is not [A-Za-z_][A-Za-z0-9_]*");
        }
        parts.push(Part::Var(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

impl Config {
    /// Expands the `${NAME}` references of tool headers from `env` (the
    /// environment [`Config::load`] was given). `load` calls it; a config
    /// built in code calls it before use.
    pub fn expand_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        expand_tool_headers(&mut self.agent.tools, "agent.tools", env)
    }
}

/// Expands the header values of `tools` (at config key `key`) from `env`.
pub fn expand_tool_headers(
    tools: &mut [ToolConfig],
    key: &str,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (i, tool) in tools.iter_mut().enumerate() {
        for (header, value) in tool.headers.iter_mut() {
            let at = format!("{key}[{i}].headers.{header}");
            value.expand(env).map_err(|(var, why)| {
                let reason = if var.is_empty() {
                    format!("tool `{}`, header `{header}`: the value {why}", tool.name)
                } else {
                    format!(
                        "tool `{}`, header `{header}`: the environment variable {var} {why}",
                        tool.name
                    )
                };
                ConfigError::Key { key: at, reason }
            })?;
        }
    }
    Ok(())
}

/// Checks `tools` (at config key `key`, e.g. `agent.tools`).
pub fn validate_tools(tools: &[ToolConfig], key: &str) -> Result<(), ConfigError> {
    for (i, tool) in tools.iter().enumerate() {
        let at = |field: &str| format!("{key}[{i}].{field}");
        let bad = |field: &str, reason: String| ConfigError::Key {
            key: at(field),
            reason,
        };
        let name = tool.name.as_str();
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(bad(
                "name",
                format!("must be 1 to 64 letters, digits, `_` or `-` (got {name:?})"),
            ));
        }
        if RESERVED_TOOL_NAMES.contains(&name) {
            return Err(bad(
                "name",
                format!("`{name}` is a built-in call-control tool; give this tool another name"),
            ));
        }
        if let Some(j) = tools[..i].iter().position(|t| t.name == name) {
            return Err(bad(
                "name",
                format!("`{name}` is already the name of {key}[{j}]; tool names must be unique"),
            ));
        }
        if tool.description.trim().is_empty() {
            return Err(bad(
                "description",
                "must not be empty: it tells the model when to call the tool".into(),
            ));
        }
        match &tool.parameters {
            serde_json::Value::Object(schema) => {
                if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
                    return Err(bad(
                        "parameters",
                        "must be a JSON-Schema object with type = \"object\"".into(),
                    ));
                }
                if schema.get("properties").is_some_and(|p| !p.is_object()) {
                    return Err(bad("parameters", "`properties` must be a table".into()));
                }
            }
            _ => {
                return Err(bad(
                    "parameters",
                    "must be a table (a JSON-Schema object with type = \"object\")".into(),
                ))
            }
        }
        let shown = match tool.url.split_once('?') {
            Some((base, _)) => format!("{base}?…"),
            None => tool.url.clone(),
        };
        let url = Url::parse(&tool.url)
            .map_err(|e| bad("url", format!("not a URL: {e} (got {shown:?})")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad(
                "url",
                format!("must start with https:// or http:// (got {shown:?})"),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("url", format!("has no host (got {shown:?})")));
        }
        if !(1..=MAX_TOOL_TIMEOUT_MS).contains(&tool.timeout_ms) {
            return Err(bad(
                "timeout_ms",
                format!(
                    "must be between 1 and {MAX_TOOL_TIMEOUT_MS} (got {})",
                    tool.timeout_ms
                ),
            ));
        }
        for (header, value) in &tool.headers {
            let at = format!("headers.{header}");
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(bad(&at, "is not a valid HTTP header name".into()));
            }
            if RESERVED_TOOL_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
                return Err(bad(&at, "is set by callbridge itself".into()));
            }
            if let Err(why) = parse_template(value.template()) {
                return Err(bad(&at, format!("the value {why}")));
            }
            // Never echo the value: it may be a secret.
            if let Some(v) = value.value() {
                if http::HeaderValue::from_str(v.expose()).is_err() {
                    return Err(bad(
                        &at,
                        "the value (after expanding ${…}) is not a valid HTTP header value".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tool_config_tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(Some(f.path()), &env)
    }

    fn key_error(result: Result<Config, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Key { key, reason }) => (key, reason),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    const TWO_TOOLS: &str = r#"
        [[agent.tools]]
        name = "lookup_order"
        description = "Look up an order by its number"
        url = "https://tools.example.com/orders?key=sekrit-in-url"
        timeout_ms = 3000
        headers = { Authorization = "Bearer ${ORDERS_TOKEN}", X-Tenant = "acme" }
        [agent.tools.parameters]
        type = "object"
        required = ["order_id"]
        [agent.tools.parameters.properties.order_id]
        type = "string"
        description = "The order number"

        [[agent.tools]]
        name = "log-workout"
        description = "Log a workout"
        url = "http://127.0.0.1:9000/workouts"
        method = "PUT"
    "#;

    #[test]
    fn tools_load_with_defaults_and_expanded_headers() {
        let c = load(TWO_TOOLS, &[("ORDERS_TOKEN", "tok-very-secret")]).unwrap();
        assert_eq!(c.agent.tools.len(), 2);
        let t = &c.agent.tools[0];
        assert_eq!(t.name, "lookup_order");
        assert_eq!(t.method, ToolMethod::Post);
        assert_eq!(t.timeout_ms, 3000);
        assert_eq!(
            t.parameters["properties"]["order_id"]["type"],
            serde_json::json!("string")
        );
        assert_eq!(t.parameters["required"], serde_json::json!(["order_id"]));
        let auth = &t.headers["Authorization"];
        assert_eq!(auth.template(), "Bearer ${ORDERS_TOKEN}");
        assert_eq!(auth.value().unwrap().expose(), "Bearer tok-very-secret");
        assert_eq!(t.headers["X-Tenant"].value().unwrap().expose(), "acme");
        let t = &c.agent.tools[1];
        assert_eq!(t.method, ToolMethod::Put);
        assert_eq!(t.timeout_ms, DEFAULT_TOOL_TIMEOUT_MS);
        assert_eq!(t.parameters, default_tool_parameters());
        assert!(t.headers.is_empty());
    }

    #[test]
    fn tool_secrets_are_not_shown_by_debug_or_serialized() {
        let c = load(TWO_TOOLS, &[("ORDERS_TOKEN", "tok-very-secret")]).unwrap();
        let shown = format!("{c:?} {:?}", c.agent);
        assert!(!shown.contains("tok-very-secret"), "{shown}");
        assert!(!shown.contains("sekrit-in-url"), "{shown}");
        assert!(shown.contains("lookup_order"), "{shown}");
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("tok-very-secret"), "{json}");
        assert!(json.contains("${ORDERS_TOKEN}"), "{json}");
    }

    #[test]
    fn a_missing_env_var_names_the_tool_the_header_and_the_variable() {
        let (key, reason) = key_error(load(TWO_TOOLS, &[]));
        assert_eq!(key, "agent.tools[0].headers.Authorization");
        assert!(reason.contains("lookup_order"), "{reason}");
        assert!(reason.contains("Authorization"), "{reason}");
        assert!(reason.contains("ORDERS_TOKEN"), "{reason}");
        assert!(reason.contains("not set"), "{reason}");
        let (_, reason) = key_error(load(TWO_TOOLS, &[("ORDERS_TOKEN", "")]));
        assert!(
            reason.contains("ORDERS_TOKEN") && reason.contains("empty"),
            "{reason}"
        );
    }

    fn one_tool(fields: &str) -> String {
        format!(
            "[[agent.tools]]\n{fields}\n{}",
            [
                ("name", "name = \"t\""),
                ("description", "description = \"d\""),
                ("url", "url = \"https://x.example/t\""),
            ]
            .iter()
            .filter(|(k, _)| !fields.lines().any(|l| l.trim_start().starts_with(k)))
            .map(|(_, line)| format!("{line}\n"))
            .collect::<String>()
        )
    }

    #[test]
    fn each_bad_tool_value_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("name = \"has space\"", "agent.tools[0].name"),
            ("name = \"\"", "agent.tools[0].name"),
            ("name = \"ünïcode\"", "agent.tools[0].name"),
            (
                &*format!("name = \"{}\"", "a".repeat(65)),
                "agent.tools[0].name",
            ),
            ("name = \"end_call\"", "agent.tools[0].name"),
            ("name = \"transfer_call\"", "agent.tools[0].name"),
            ("description = \"  \"", "agent.tools[0].description"),
            ("url = \"ftp://x.example/t\"", "agent.tools[0].url"),
            ("url = \"not a url\"", "agent.tools[0].url"),
            ("url = \"wss://x.example/t\"", "agent.tools[0].url"),
            ("timeout_ms = 0", "agent.tools[0].timeout_ms"),
            ("timeout_ms = 60001", "agent.tools[0].timeout_ms"),
            (
                "parameters = { type = \"string\" }",
                "agent.tools[0].parameters",
            ),
            (
                "parameters = { properties = {} }",
                "agent.tools[0].parameters",
            ),
            (
                "parameters = { type = \"object\", properties = 3 }",
                "agent.tools[0].parameters",
            ),
            (
                "headers = { \"Bad Name\" = \"x\" }",
                "agent.tools[0].headers.Bad Name",
            ),
            (
                "headers = { Content-Type = \"text/plain\" }",
                "agent.tools[0].headers.Content-Type",
            ),
            (
                "headers = { X-Key = \"${UNCLOSED\" }",
                "agent.tools[0].headers.X-Key",
            ),
            (
                "headers = { X-Key = \"${1BAD}\" }",
                "agent.tools[0].headers.X-Key",
            ),
            (
                "headers = { X-Key = \"line\\nbreak\" }",
                "agent.tools[0].headers.X-Key",
            ),
        ];
        for (fields, want) in cases {
            let (key, reason) = key_error(load(&one_tool(fields), &[]));
            assert_eq!(&key, want, "{fields}: {reason}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn method_is_post_or_put_and_unknown_tool_keys_are_rejected() {
        let (key, _) = key_error(load(&one_tool("method = \"GET\""), &[]));
        assert_eq!(key, "agent.tools[0].method");
        let c = load(&one_tool("method = \"put\""), &[]).unwrap();
        assert_eq!(c.agent.tools[0].method, ToolMethod::Put);
        let (key, _) = key_error(load(&one_tool("urll = \"https://x\""), &[]));
        assert_eq!(key, "agent.tools[0].urll");
        let toml = format!(
            "{}[[agent.tools]]\nname = \"u\"\nurl = \"https://x\"\n",
            one_tool("")
        );
        let (key, reason) = key_error(load(&toml, &[]));
        assert_eq!(key, "agent.tools[1]");
        assert!(reason.contains("description"), "{reason}");
    }

    #[test]
    fn duplicate_names_are_rejected_naming_the_second() {
        let toml = format!(
            "{}{}",
            one_tool("name = \"same\""),
            one_tool("name = \"same\"")
        );
        let (key, reason) = key_error(load(&toml, &[]));
        assert_eq!(key, "agent.tools[1].name");
        assert!(reason.contains("agent.tools[0]"), "{reason}");
    }

    #[test]
    fn a_url_query_is_never_echoed_in_errors() {
        let (key, reason) = key_error(load(
            &one_tool("url = \"ftp://x.example/t?key=sekrit\""),
            &[],
        ));
        assert_eq!(key, "agent.tools[0].url");
        assert!(!reason.contains("sekrit"), "{reason}");
    }

    #[test]
    fn header_values_are_never_echoed_in_errors() {
        let toml = one_tool("headers = { X-Key = \"Bearer ${TOKEN}\" }");
        let (key, reason) = key_error(load(&toml, &[("TOKEN", "bad\nsekrit")]));
        assert_eq!(key, "agent.tools[0].headers.X-Key");
        assert!(!reason.contains("sekrit"), "{reason}");
    }

    #[test]
    fn code_built_configs_expand_with_expand_env() {
        let mut c = Config::default();
        let mut tool = ToolConfig::new("t", "d", "https://x.example/t");
        tool.headers
            .insert("X-Key".into(), ToolHeader::new("k-${KEY}"));
        c.agent.tools.push(tool);
        assert!(c.agent.tools[0].headers["X-Key"].value().is_none());
        c.validate().unwrap();
        let env = HashMap::from([("KEY".to_owned(), "v".to_owned())]);
        c.expand_env(&env).unwrap();
        assert_eq!(
            c.agent.tools[0].headers["X-Key"].value().unwrap().expose(),
            "k-v"
        );
    }
}

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the few places that must send it (an HTTP header, an HMAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Secrets, from the environment only.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub openai_api_key: Option<Secret>,
    pub twilio_auth_token: Option<Secret>,
    /// The token being rotated out; signatures made with it are still accepted.
    pub twilio_auth_token_previous: Option<Secret>,
    /// A Twilio API key (`SK…`) for the REST API; preferred over the auth token.
    /// Set together with `twilio_api_key_secret` or not at all.
    pub twilio_api_key_sid: Option<String>,
    pub twilio_api_key_secret: Option<Secret>,
    /// The account (`AC…`) that places outbound calls; call control takes the
    /// account from each call's stream instead.
    pub twilio_account_sid: Option<String>,
}

impl Secrets {
    /// Reads `NAME` or `NAME_FILE` (a path whose content, trimmed, is the secret).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Secrets, ConfigError> {
        let twilio_api_key_sid = read_secret(env, "TWILIO_API_KEY_SID")?;
        let twilio_api_key_secret = read_secret(env, "TWILIO_API_KEY_SECRET")?;
        match (&twilio_api_key_sid, &twilio_api_key_secret) {
            (Some(_), None) => {
                return Err(ConfigError::Secret {
                    var: "TWILIO_API_KEY_SECRET".into(),
                    reason: "is not set, but TWILIO_API_KEY_SID is: set both or neither".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Secret {
                    var: "TWILIO_API_KEY_SID".into(),
                    reason: "is not set, but TWILIO_API_KEY_SECRET is: set both or neither".into(),
                })
            }
            _ => {}
        }
        let twilio_api_key_sid = twilio_api_key_sid
            .map(|s| check_sid(s, "TWILIO_API_KEY_SID", "SK"))
            .transpose()?;
        let twilio_account_sid = read_secret(env, "TWILIO_ACCOUNT_SID")?
            .map(|s| check_sid(s, "TWILIO_ACCOUNT_SID", "AC"))
            .transpose()?;
        Ok(Secrets {
            openai_api_key: read_secret(env, "OPENAI_API_KEY")?,
            twilio_auth_token: read_secret(env, "TWILIO_AUTH_TOKEN")?,
            twilio_auth_token_previous: read_secret(env, "TWILIO_AUTH_TOKEN_PREVIOUS")?,
            twilio_api_key_sid,
            twilio_api_key_secret,
            twilio_account_sid,
        })
    }
}

/// A Twilio SID: `prefix` and 32 hex digits. SIDs are not secret, so the
/// value is kept as a plain string; a bad value is still not echoed, in case
/// a secret was put there by mistake (e.g. the key SID and secret swapped).
fn check_sid(value: Secret, var: &str, prefix: &str) -> Result<String, ConfigError> {
    let sid = value.0;
    let ok = sid.len() == 34
        && sid.starts_with(prefix)
        && sid[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(sid)
    } else {
        Err(ConfigError::Secret {
            var: var.to_owned(),
            reason: format!(
                "must be {prefix} followed by 32 hex digits (got {} characters)",
                sid.chars().count()
            ),
        })
    }
}

fn read_secret(env: &HashMap<String, String>, var: &str) -> Result<Option<Secret>, ConfigError> {
    let file_var = format!("{var}_FILE");
    let direct = env.get(var).filter(|v| !v.is_empty());
    let file = env.get(&file_var).filter(|v| !v.is_empty());
    let value = match (direct, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Secret {
                var: var.to_owned(),
                reason: format!("both {var} and {file_var} are set; set only one"),
            })
        }
        (Some(v), None) => v.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Secret {
                var: file_var.clone(),
                reason: format!("cannot read {path}: {e}"),
            })?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        return Err(ConfigError::Secret {
            var: var.to_owned(),
            reason: "is empty".into(),
        });
    }
    Ok(Some(Secret(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn key_error(result: Result<Config, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Key { key, reason }) => (key, reason),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.realtime.url, None);
        assert_eq!(
            c.realtime_url().unwrap().as_str(),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(c.playout_lead(), Duration::from_millis(200));
        assert_eq!(c.realtime.dialect, Dialect::Ga);
        assert_eq!(c.audio.mode, AudioMode::Pcm16);
        assert!(c.twilio.validate_signatures);
        assert!(c.max_calls >= CALLS_PER_CORE);
        assert!(c.public_url.is_none());
        assert!(c.public_url().is_err());
    }

    #[test]
    fn shipped_default_toml_loads_and_equals_builtin_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let from_file = Config::load(Some(&path), &env(&[])).unwrap();
        let builtin = Config::default();
        // max_calls depends on the machine; everything else must agree exactly.
        let mut a = serde_json::to_value(&from_file).unwrap();
        let mut b = serde_json::to_value(&builtin).unwrap();
        a.as_object_mut().unwrap().remove("max_calls");
        b.as_object_mut().unwrap().remove("max_calls");
        assert_eq!(a, b);
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let f = toml_file(
            r#"
            listen = "127.0.0.1:9000"
            public_url = "https://bridge.example.com"
            max_calls = 10
            [realtime]
            url = "ws://127.0.0.1:7000/v1/realtime"
            dialect = "beta"
            [audio]
            mode = "pcmu"
            "#,
        );
        let c = Config::load(Some(f.path()), &env(&[])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.max_calls, 10);
        assert_eq!(c.realtime.dialect, Dialect::Beta);
        assert_eq!(c.audio.mode, AudioMode::Pcmu);
        // Untouched keys keep their defaults.
        assert_eq!(c.audio.playout_lead_ms, None);

        let c = Config::load(
            Some(f.path()),
            &env(&[
                ("CALLBRIDGE_MAX_CALLS", "20"),
                ("CALLBRIDGE_REALTIME__DIALECT", "azure"),
                (
                    "CALLBRIDGE_REALTIME__URL",
                    "wss://res.openai.azure.com/openai/v1/realtime?model=d",
                ),
                ("CALLBRIDGE_PUBLIC_URL", "https://other.example.com:8443"),
                (
                    "CALLBRIDGE_AGENT__TURN_DETECTION__SILENCE_DURATION_MS",
                    "700",
                ),
                ("CALLBRIDGE_TWILIO__VALIDATE_SIGNATURES", "false"),
                ("CALLBRIDGE_CONFIG", "/ignored/path.toml"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.max_calls, 20);
        assert_eq!(c.realtime.dialect, Dialect::Azure);
        assert!(c
            .realtime_url()
            .unwrap()
            .as_str()
            .starts_with("wss://res.openai.azure.com"));
        assert_eq!(c.public_url().unwrap().port(), Some(8443));
        assert_eq!(c.agent.turn_detection.silence_duration_ms, 700);
        assert!(!c.twilio.validate_signatures);
        // The file's value survives where env says nothing.
        assert_eq!(c.audio.mode, AudioMode::Pcmu);
    }

    #[test]
    fn missing_config_file_is_an_error_naming_it() {
        let err = Config::load(Some(Path::new("/nonexistent/cb.toml")), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cb.toml"), "{err}");
    }

    #[test]
    fn malformed_toml_is_an_error() {
        let f = toml_file("listen = \n");
        let err = Config::load(Some(f.path()), &env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Key { .. }), "{err:?}");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("CALLBRIDGE_REALTIME__DIALECT", "openai", "realtime.dialect"),
            ("CALLBRIDGE_AUDIO__MODE", "opus", "audio.mode"),
            ("CALLBRIDGE_MAX_CALLS", "0", "max_calls"),
            ("CALLBRIDGE_MAX_CALLS", "many", "max_calls"),
            (
                "CALLBRIDGE_REALTIME__URL",
                "https://api.openai.com/v1/realtime",
                "realtime.url",
            ),
            ("CALLBRIDGE_REALTIME__URL", "not a url", "realtime.url"),
            (
                "CALLBRIDGE_PUBLIC_URL",
                "ftp://bridge.example.com",
                "public_url",
            ),
            (
                "CALLBRIDGE_PUBLIC_URL",
                "https://bridge.example.com/media?x=1",
                "public_url",
            ),
            ("CALLBRIDGE_PUBLIC_URL", "bridge.example.com", "public_url"),
            ("CALLBRIDGE_LISTEN", "localhost", "listen"),
            (
                "CALLBRIDGE_AUDIO__PLAYOUT_LEAD_MS",
                "5",
                "audio.playout_lead_ms",
            ),
            (
                "CALLBRIDGE_AGENT__TURN_DETECTION__THRESHOLD",
                "1.5",
                "agent.turn_detection.threshold",
            ),
            (
                "CALLBRIDGE_AGENT__TURN_DETECTION__EAGERNESS",
                "eager",
                "agent.turn_detection.eagerness",
            ),
            (
                "CALLBRIDGE_AGENT__TURN_DETECTION__TYPE",
                "client_vad",
                "agent.turn_detection.type",
            ),
            (
                "CALLBRIDGE_TWILIO__STREAM_TOKEN_TTL",
                "0",
                "twilio.stream_token_ttl",
            ),
            ("CALLBRIDGE_NO_SUCH_KEY", "1", "no_such_key"),
        ];
        for (var, value, key) in cases {
            let (got_key, reason) = key_error(Config::load(None, &env(&[(var, value)])));
            assert_eq!(&got_key, key, "{var}={value}: {reason}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn live_dialects_have_their_own_defaults_and_checks() {
        let c = Config::load(None, &env(&[("CALLBRIDGE_REALTIME__DIALECT", "live")])).unwrap();
        assert_eq!(c.realtime.dialect, Dialect::Live);
        assert_eq!(
            c.realtime_url().unwrap().as_str(),
            "wss://api.openai.com/v1/live/sessions"
        );
        assert_eq!(c.live_model(), DEFAULT_LIVE_MODEL);
        assert_eq!(c.playout_lead(), Duration::from_millis(60));

        let c = Config::load(
            None,
            &env(&[
                ("CALLBRIDGE_REALTIME__DIALECT", "azure-live"),
                (
                    "CALLBRIDGE_REALTIME__URL",
                    "wss://res.openai.azure.com/openai/v1/live/sessions",
                ),
                ("CALLBRIDGE_REALTIME__MODEL", "my-deployment"),
                ("CALLBRIDGE_AUDIO__PLAYOUT_LEAD_MS", "40"),
            ]),
        )
        .unwrap();
        assert!(c.realtime.dialect.is_live() && c.realtime.dialect.is_azure());
        assert_eq!(c.live_model(), "my-deployment");
        assert_eq!(c.playout_lead(), Duration::from_millis(40));

        // Azure has no default endpoint; GPT-Live takes no query (and the
        // error does not echo it: it may hold a key); Realtime takes no model key.
        let (key, reason) = key_error(Config::load(
            None,
            &env(&[("CALLBRIDGE_REALTIME__DIALECT", "azure-live")]),
        ));
        assert_eq!(key, "realtime.url");
        assert!(reason.contains("required"), "{reason}");
        let (key, reason) = key_error(Config::load(
            None,
            &env(&[
                ("CALLBRIDGE_REALTIME__DIALECT", "live"),
                (
                    "CALLBRIDGE_REALTIME__URL",
                    "wss://api.openai.com/v1/live/sessions?api-key=sekrit",
                ),
            ]),
        ));
        assert_eq!(key, "realtime.url");
        assert!(!reason.contains("sekrit"), "{reason}");
        let (key, _) = key_error(Config::load(
            None,
            &env(&[("CALLBRIDGE_REALTIME__MODEL", "gpt-live-1")]),
        ));
        assert_eq!(key, "realtime.model");
        let (_, reason) = key_error(Config::load(
            None,
            &env(&[(
                "CALLBRIDGE_REALTIME__URL",
                "https://x.example/v1?api-key=sekrit",
            )]),
        ));
        assert!(!reason.contains("sekrit"), "{reason}");
    }

    #[test]
    fn unknown_key_in_file_is_rejected() {
        let f = toml_file("[realtime]\nurll = \"wss://x\"\n");
        let (key, _) = key_error(Config::load(Some(f.path()), &env(&[])));
        assert_eq!(key, "realtime.urll");
    }

    #[test]
    fn secrets_come_from_env_or_file_and_are_redacted() {
        let s = Secrets::from_env(&env(&[("OPENAI_API_KEY", "sk-live-123")])).unwrap();
        let key = s.openai_api_key.clone().unwrap();
        assert_eq!(key.expose(), "sk-live-123");
        let shown = format!("{s:?} {key}");
        assert!(!shown.contains("sk-live-123"), "{shown}");
        assert!(s.twilio_auth_token.is_none());

        let f = toml_file("tok-from-file\n");
        let path = f.path().to_str().unwrap();
        let s = Secrets::from_env(&env(&[("TWILIO_AUTH_TOKEN_FILE", path)])).unwrap();
        assert_eq!(s.twilio_auth_token.unwrap().expose(), "tok-from-file");
    }

    #[test]
    fn secret_errors_name_the_variable() {
        let err =
            Secrets::from_env(&env(&[("OPENAI_API_KEY_FILE", "/nonexistent/key")])).unwrap_err();
        assert!(err.to_string().starts_with("OPENAI_API_KEY_FILE"), "{err}");
        let err = Secrets::from_env(&env(&[
            ("OPENAI_API_KEY", "a"),
            ("OPENAI_API_KEY_FILE", "/x"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("set only one"), "{err}");
        let f = toml_file("  \n");
        let path = f.path().to_str().unwrap();
        let err = Secrets::from_env(&env(&[("TWILIO_AUTH_TOKEN_FILE", path)])).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn twilio_api_key_pair_and_account_sid() {
        let s = Secrets::from_env(&env(&[
            ("TWILIO_API_KEY_SID", KEY_SID),
            ("TWILIO_API_KEY_SECRET", "key-secret-xyz"),
            ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ]))
        .unwrap();
        assert_eq!(s.twilio_api_key_sid.as_deref(), Some(KEY_SID));
        assert_eq!(
            s.twilio_api_key_secret.as_ref().unwrap().expose(),
            "key-secret-xyz"
        );
        assert_eq!(s.twilio_account_sid.as_deref(), Some(ACCOUNT));
        assert!(!format!("{s:?}").contains("key-secret-xyz"));

        // The _FILE variants work for the pair too.
        let f = toml_file("key-secret-from-file\n");
        let path = f.path().to_str().unwrap();
        let s = Secrets::from_env(&env(&[
            ("TWILIO_API_KEY_SID", KEY_SID),
            ("TWILIO_API_KEY_SECRET_FILE", path),
        ]))
        .unwrap();
        assert_eq!(
            s.twilio_api_key_secret.unwrap().expose(),
            "key-secret-from-file"
        );
        assert!(s.twilio_account_sid.is_none());

        // None of them is required.
        let s = Secrets::from_env(&env(&[])).unwrap();
        assert!(s.twilio_api_key_sid.is_none() && s.twilio_api_key_secret.is_none());
    }

    #[test]
    fn twilio_api_key_half_set_is_an_error() {
        let err = Secrets::from_env(&env(&[("TWILIO_API_KEY_SID", KEY_SID)])).unwrap_err();
        assert!(
            err.to_string().starts_with("TWILIO_API_KEY_SECRET"),
            "{err}"
        );
        assert!(err.to_string().contains("both"), "{err}");
        let err =
            Secrets::from_env(&env(&[("TWILIO_API_KEY_SECRET", "key-secret-xyz")])).unwrap_err();
        assert!(err.to_string().starts_with("TWILIO_API_KEY_SID"), "{err}");
        assert!(!err.to_string().contains("key-secret-xyz"), "{err}");
    }

    #[test]
    fn twilio_sids_are_checked_and_not_echoed() {
        for (var, value) in [
            ("TWILIO_API_KEY_SID", "key-secret-xyz"),
            ("TWILIO_API_KEY_SID", ACCOUNT),
            ("TWILIO_ACCOUNT_SID", KEY_SID),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdeg"),
            ("TWILIO_ACCOUNT_SID", "AC0123"),
        ] {
            let mut vars = vec![(var, value)];
            if var == "TWILIO_API_KEY_SID" {
                vars.push(("TWILIO_API_KEY_SECRET", "s"));
            }
            let err = Secrets::from_env(&env(&vars)).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with(var), "{var}={value}: {text}");
            assert!(text.contains("32 hex digits"), "{text}");
            assert!(!text.contains(value), "{text}");
        }
    }

    #[test]
    fn twilio_api_base_url_default_override_and_validation() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.twilio.api_base_url, "https://api.twilio.com");
        assert_eq!(
            c.twilio_api_base_url().unwrap().as_str(),
            "https://api.twilio.com/"
        );
        let c = Config::load(
            None,
            &env(&[("CALLBRIDGE_TWILIO__API_BASE_URL", "http://127.0.0.1:4010")]),
        )
        .unwrap();
        assert_eq!(c.twilio_api_base_url().unwrap().port(), Some(4010));

        for bad in [
            "not a url",
            "ftp://api.twilio.com",
            "wss://api.twilio.com",
            "https://api.twilio.com/?token=sekrit",
            "https://api.twilio.com/#frag",
            "https://AC123:sekrit@api.twilio.com",
        ] {
            let (key, reason) = key_error(Config::load(
                None,
                &env(&[("CALLBRIDGE_TWILIO__API_BASE_URL", bad)]),
            ));
            assert_eq!(key, "twilio.api_base_url", "{bad}: {reason}");
            assert!(!reason.contains("sekrit"), "{reason}");
        }
    }
}
