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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// OpenAI's GA Realtime API (`session.type = "realtime"`, `response.output_audio.*`).
    Ga,
    /// The pre-GA event names, sent with `OpenAI-Beta: realtime=v1`.
    Beta,
    /// Azure OpenAI: GA event names, `api-key` header.
    Azure,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Ga => "ga",
            Dialect::Beta => "beta",
            Dialect::Azure => "azure",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Realtime endpoint, `wss://` (or `ws://` for local peers).
    pub url: String,
    pub dialect: Dialect,
    /// Seconds allowed for the TCP + TLS + WebSocket handshake to the model.
    pub connect_timeout: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// `pcm16` transcodes to 24 kHz PCM16; `pcmu` passes μ-law through.
    pub mode: AudioMode,
    /// How far ahead of real time model audio is sent to Twilio, in ms.
    /// Small keeps barge-in precise; large rides out jitter.
    pub playout_lead_ms: u64,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub instructions: String,
    pub voice: String,
    /// Transcription model for the caller's speech; empty disables transcripts.
    pub transcription_model: String,
    pub turn_detection: TurnDetection,
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
                url: "wss://api.openai.com/v1/realtime?model=gpt-realtime".into(),
                dialect: Dialect::Ga,
                connect_timeout: 10,
            },
            audio: AudioConfig {
                mode: AudioMode::Pcm16,
                playout_lead_ms: 200,
            },
            twilio: TwilioConfig {
                validate_signatures: true,
                stream_token_ttl: 60,
                fallback_say: String::new(),
            },
            agent: AgentConfig {
                instructions: "You are a helpful, concise voice assistant on a phone call. \
                               Keep answers short and speak naturally."
                    .into(),
                voice: "marin".into(),
                transcription_model: "whisper-1".into(),
                turn_detection: TurnDetection {
                    kind: TurnDetectionKind::ServerVad,
                    threshold: 0.5,
                    prefix_padding_ms: 300,
                    silence_duration_ms: 500,
                    eagerness: "auto".into(),
                },
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
        let config: Config = figment.extract().map_err(from_figment)?;
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
        parse_realtime_url(&self.realtime.url)?;
        if self.realtime.connect_timeout == 0 {
            return Err(ConfigError::key(
                "realtime.connect_timeout",
                "must be at least 1 second",
            ));
        }
        if !(20..=2000).contains(&self.audio.playout_lead_ms) {
            return Err(ConfigError::key(
                "audio.playout_lead_ms",
                format!(
                    "must be between 20 and 2000 (got {})",
                    self.audio.playout_lead_ms
                ),
            ));
        }
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
    let key = err.path.join(".");
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

/// Parses `realtime.url`: `wss://` for real models, `ws://` for local peers.
pub fn parse_realtime_url(raw: &str) -> Result<Url, ConfigError> {
    let bad = |why: &str| ConfigError::key("realtime.url", format!("{why} (got {raw:?})"));
    let url = Url::parse(raw).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "wss" | "ws") {
        return Err(bad("must start with wss:// (or ws:// for a local peer)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(url)
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
}

impl Secrets {
    /// Reads `NAME` or `NAME_FILE` (a path whose content, trimmed, is the secret).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Secrets, ConfigError> {
        Ok(Secrets {
            openai_api_key: read_secret(env, "OPENAI_API_KEY")?,
            twilio_auth_token: read_secret(env, "TWILIO_AUTH_TOKEN")?,
            twilio_auth_token_previous: read_secret(env, "TWILIO_AUTH_TOKEN_PREVIOUS")?,
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
        assert_eq!(
            c.realtime.url,
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
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
        assert_eq!(c.audio.playout_lead_ms, 200);

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
        assert!(c.realtime.url.starts_with("wss://res.openai.azure.com"));
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
}
