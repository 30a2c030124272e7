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

mod agent;
mod outbound;
mod pricing;
mod secrets;
mod summary;
mod tools;

pub use agent::{
    is_e164, AgentConfig, CallControlConfig, DtmfMode, Profile, ProfileConfig, TurnDetection,
    TurnDetectionKind, DEFAULT_PROFILE,
};
pub use outbound::OutboundConfig;
pub use pricing::PricingConfig;
pub use secrets::{Secret, Secrets};
pub use summary::{parse_summary_url, SummaryConfig};
pub use tools::{
    expand_tool_headers, validate_tools, ToolConfig, ToolHeader, ToolMethod,
    DEFAULT_TOOL_TIMEOUT_MS, MAX_TOOL_TIMEOUT_MS, RESERVED_TOOL_NAMES,
};

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
    pub(crate) fn key(key: &str, reason: impl Into<String>) -> Self {
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
    /// Bind address of the Twilio-facing HTTP/WebSocket server (`/voice`, `/media`, …).
    pub listen: SocketAddr,
    /// Bind address of the admin server: `/metrics`, `/healthz`, `/readyz`.
    /// Never the Twilio-facing port: probes, scrapes and the drain use this one.
    pub admin_listen: SocketAddr,
    /// The `https://host[:port]` Twilio reaches. Required by `serve`.
    pub public_url: Option<String>,
    /// Admission limit: concurrent calls this process accepts.
    pub max_calls: usize,
    /// Seconds a SIGTERM waits for live calls before closing them.
    pub drain_timeout: u64,
    /// No call lasts longer than this, in seconds.
    pub max_call_secs: u64,
    pub realtime: RealtimeConfig,
    pub audio: AudioConfig,
    pub twilio: TwilioConfig,
    /// Limits on the public port, against strangers holding it open.
    pub http: HttpConfig,
    pub agent: AgentConfig,
    /// Per-number assistants (`[agents.<name>]`), chosen by the called number.
    #[serde(default)]
    pub agents: std::collections::BTreeMap<String, ProfileConfig>,
    /// Outbound calls: which destinations `POST /calls` may dial.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// The call summary webhook (`[summary]`).
    #[serde(default)]
    pub summary: SummaryConfig,
    /// Prices for the per-call cost estimate (`[pricing]`).
    #[serde(default)]
    pub pricing: PricingConfig,
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
    /// A PEM file of CA certificates trusted for a `wss://` model endpoint,
    /// in addition to the public web roots (a private CA). Unset: web roots only.
    pub ca_file: Option<PathBuf>,
    /// How long a call may wait for a lost model socket to be reopened, ms.
    pub reconnect_budget_ms: u64,
    /// A WebSocket ping goes to the model this often, ms; 0: never. A socket
    /// that died without a FIN or RST (a NAT or load balancer forgot it)
    /// would otherwise look like a quiet model until the call times out.
    pub ping_interval_ms: u64,
    /// No pong (nor any other frame) this long after a ping: the socket is
    /// treated as lost and reconnected, ms. Less than `ping_interval_ms`.
    pub pong_timeout_ms: u64,
    /// A session older than this is replaced at the first quiet moment,
    /// before the provider's own limit (60 min at OpenAI, 30 at Azure).
    pub max_session_secs: u64,
    /// A μ-law 8 kHz file (`.ulaw`) played to the caller while reconnecting.
    pub reconnect_filler: Option<PathBuf>,
    /// Open and configure a call's model session as soon as the call is
    /// admitted (voice webhook, `POST /calls`), before its stream starts,
    /// so the first turn does not wait for the model's connect and setup.
    /// At most `max_calls` wait at once, each for the stream token's
    /// lifetime. A waiting session is an open one: GPT-Live bills it by
    /// the second; Realtime bills tokens, so an idle one costs next to
    /// nothing.
    pub prewarm: bool,
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
    /// Subtracted from what the caller is believed to have heard when they
    /// talk over an answer, ms: the delay between Twilio playing audio (its
    /// mark echoed) and the caller hearing it (network, carrier, handset).
    /// Measure it on your own calls; 0 trusts Twilio's marks as they are.
    #[serde(default)]
    pub heard_offset_ms: u64,
    /// Audio more than this late, in ms, is dropped (and counted) rather
    /// than delivered late, both ways: caller frames that reach the bridge
    /// later than Twilio's timestamps say they should, and answer audio that
    /// waited in the bridge past the moment it should have played. What the
    /// bridge does when it cannot keep up, instead of queueing. 0: never.
    pub max_lag_ms: u64,
    /// Caller audio goes to the model in appends of this many ms (a
    /// multiple of 20, up to 200): 20 sends each Twilio frame as it comes.
    /// Larger appends cost the bridge, the kernel and the model fewer
    /// messages, and delay what the model hears (its turn detection
    /// included) by up to `append_ms − 20`: a cost–latency trade for
    /// operators at scale; the default serves callers.
    #[serde(default = "default_append_ms")]
    pub append_ms: u64,
}

fn default_append_ms() -> u64 {
    20
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
    /// No message from Twilio for this long ends the call, ms (Twilio
    /// streams continuously, silence included).
    pub idle_timeout_ms: u64,
}

/// What the public port allows a client before it is a real call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// A request head must arrive whole within this, ms; idle keep-alive
    /// connections are closed after it too.
    pub header_read_timeout_ms: u64,
    /// A request body (`/voice`, `/stream-status`, `/call-status`) must
    /// arrive within this, ms.
    pub body_timeout_ms: u64,
    /// Largest request body accepted, bytes (Twilio's forms are ~2 KB).
    pub max_body_bytes: usize,
    /// Open HTTP connections on the public port beyond which new ones are
    /// closed at once (Media Streams leave the count once upgraded).
    pub max_connections: usize,
    /// Upgraded `/media` sockets that have not yet sent a valid `start`:
    /// beyond this many, upgrades are refused with 503. They never hold a
    /// `max_calls` slot.
    pub max_pending_streams: usize,
}

impl HttpConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
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
    /// Log what callers and the model said, keypad digits, and tool
    /// arguments and results, at INFO. Off by default: they are personal
    /// data (PINs, card numbers, health details) and belong in call records
    /// you control, not in a log pipeline.
    #[serde(default)]
    pub transcripts: bool,
    /// A tracing filter (`info`, `callbridge=debug`, …); `RUST_LOG` overrides it.
    pub level: String,
}

/// Where Twilio's REST API lives when `twilio.api_base_url` is not set.
pub const DEFAULT_TWILIO_API_BASE_URL: &str = "https://api.twilio.com";

/// Admission default, from the measured capacity (README, "Performance"):
/// 300 calls on 2 cores hold relay p99 ≤ 5 ms with no lost or late frame in
/// both audio modes on every run, with the load generator and the model peer
/// on the same cores; 400 held in pcmu but sat at the edge in pcm16 (p99
/// 4.1 and 5.0 ms on two runs). Alone, the bridge would carry more; the
/// margin is kept for TLS, which the loopback measurement does not include.
const CALLS_PER_CORE: usize = 150;

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9091)),
            public_url: None,
            max_calls: CALLS_PER_CORE * cores,
            drain_timeout: 300,
            max_call_secs: 4 * 3600,
            realtime: RealtimeConfig {
                url: None,
                dialect: Dialect::Ga,
                model: None,
                delegation_model: "gpt-5.5".into(),
                connect_timeout: 10,
                ca_file: None,
                reconnect_budget_ms: 10_000,
                ping_interval_ms: 20_000,
                pong_timeout_ms: 10_000,
                max_session_secs: 3300,
                reconnect_filler: None,
                prewarm: true,
            },
            audio: AudioConfig {
                mode: AudioMode::Pcm16,
                playout_lead_ms: None,
                heard_offset_ms: 0,
                max_lag_ms: 300,
                append_ms: default_append_ms(),
            },
            twilio: TwilioConfig {
                validate_signatures: true,
                stream_token_ttl: 60,
                fallback_say: String::new(),
                api_base_url: DEFAULT_TWILIO_API_BASE_URL.into(),
                idle_timeout_ms: 15_000,
            },
            http: HttpConfig {
                header_read_timeout_ms: 10_000,
                body_timeout_ms: 10_000,
                max_body_bytes: 64 << 10,
                max_connections: 1024,
                max_pending_streams: 64,
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
                call_control: CallControlConfig::default(),
                dtmf: DtmfMode::Model,
                dtmf_timeout_ms: 1500,
            },
            agents: std::collections::BTreeMap::new(),
            outbound: OutboundConfig::default(),
            summary: SummaryConfig::default(),
            pricing: PricingConfig::default(),
            log: LogConfig {
                transcripts: false,
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
        if same_socket(self.listen, self.admin_listen) {
            return Err(ConfigError::key(
                "admin_listen",
                format!(
                    "must differ from listen ({}): /metrics, /healthz and /readyz are never served on the Twilio-facing port",
                    self.listen
                ),
            ));
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
        if let Some(path) = &self.realtime.ca_file {
            crate::upstream::client::roots_with_ca_file(Some(path))
                .map_err(|e| ConfigError::key("realtime.ca_file", e.to_string()))?;
        }
        if let Some(lead) = self.audio.playout_lead_ms {
            if !(20..=2000).contains(&lead) {
                return Err(ConfigError::key(
                    "audio.playout_lead_ms",
                    format!("must be between 20 and 2000 (got {lead})"),
                ));
            }
        }
        if self.audio.max_lag_ms != 0 && !(60..=10_000).contains(&self.audio.max_lag_ms) {
            return Err(ConfigError::key(
                "audio.max_lag_ms",
                format!(
                    "must be 0 (off) or between 60 and 10000 (got {})",
                    self.audio.max_lag_ms
                ),
            ));
        }
        let append = self.audio.append_ms;
        if !(20..=200).contains(&append) || append % 20 != 0 {
            return Err(ConfigError::key(
                "audio.append_ms",
                format!("must be a multiple of 20 between 20 and 200 (got {append})"),
            ));
        }
        self.twilio_api_base_url()?;
        if self.twilio.stream_token_ttl == 0 {
            return Err(ConfigError::key(
                "twilio.stream_token_ttl",
                "must be at least 1 second",
            ));
        }
        self.validate_ping()?;
        let ranges: [(&str, u64, u64, u64); 10] = [
            ("max_call_secs", self.max_call_secs, 5, 7 * 24 * 3600),
            (
                "realtime.reconnect_budget_ms",
                self.realtime.reconnect_budget_ms,
                0,
                120_000,
            ),
            (
                "realtime.max_session_secs",
                self.realtime.max_session_secs,
                5,
                24 * 3600,
            ),
            (
                "twilio.idle_timeout_ms",
                self.twilio.idle_timeout_ms,
                1000,
                600_000,
            ),
            ("audio.heard_offset_ms", self.audio.heard_offset_ms, 0, 2000),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
                100,
                120_000,
            ),
            (
                "http.body_timeout_ms",
                self.http.body_timeout_ms,
                100,
                120_000,
            ),
            (
                "http.max_body_bytes",
                self.http.max_body_bytes as u64,
                1024,
                16 << 20,
            ),
            (
                "http.max_connections",
                self.http.max_connections as u64,
                1,
                1_000_000,
            ),
            (
                "http.max_pending_streams",
                self.http.max_pending_streams as u64,
                1,
                100_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::key(
                    key,
                    format!("must be between {min} and {max} (got {value})"),
                ));
            }
        }
        self.agent.validate("agent")?;
        agent::validate_profiles(&self.agents, &self.agent, self.audio.mode)?;
        self.outbound.validate()?;
        self.summary.validate()?;
        self.pricing.validate()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::key("log.level", e.to_string()));
        }
        Ok(())
    }

    /// The model socket's ping: off (0), or an interval with a pong timeout
    /// shorter than it, so that one ping's verdict is in before the next.
    fn validate_ping(&self) -> Result<(), ConfigError> {
        let (interval, timeout) = (
            self.realtime.ping_interval_ms,
            self.realtime.pong_timeout_ms,
        );
        if interval != 0 && !(100..=600_000).contains(&interval) {
            return Err(ConfigError::key(
                "realtime.ping_interval_ms",
                format!("must be 0 (off) or between 100 and 600000 (got {interval})"),
            ));
        }
        if !(50..=300_000).contains(&timeout) {
            return Err(ConfigError::key(
                "realtime.pong_timeout_ms",
                format!("must be between 50 and 300000 (got {timeout})"),
            ));
        }
        if interval != 0 && timeout >= interval {
            return Err(ConfigError::key(
                "realtime.pong_timeout_ms",
                format!("must be less than realtime.ping_interval_ms ({interval}) (got {timeout})"),
            ));
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

    /// Every assistant: `[agent]` as the default profile, then each
    /// `[agents.<name>]` resolved over it.
    pub fn profiles(&self) -> Vec<Profile> {
        let global = self.summary.url.clone().filter(|u| !u.is_empty());
        let mut all = vec![Profile {
            name: DEFAULT_PROFILE.to_owned(),
            agent: self.agent.clone(),
            audio_mode: self.audio.mode,
            summary_url: global.clone(),
        }];
        all.extend(self.agents.iter().map(|(name, p)| {
            let mut resolved = p.resolve(name, &self.agent, self.audio.mode);
            if p.summary_url.is_none() {
                resolved.summary_url = global.clone();
            }
            resolved
        }));
        all
    }

    /// The profile answering calls to `to`: the one listing the number, or
    /// the default.
    pub fn profile_name_for(&self, to: &str) -> &str {
        self.agents
            .iter()
            .find(|(_, p)| p.numbers.iter().any(|n| n == to))
            .map_or(DEFAULT_PROFILE, |(name, _)| name.as_str())
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }
}

/// `CALLBRIDGE_REALTIME__URL` → `realtime.url`; `CALLBRIDGE_MAX_CALLS` → `max_calls`.
/// `CALLBRIDGE_CONFIG` names the file and is not a key; neither are the
/// admin token's variables (secrets) nor the Kubernetes service-link
/// variables ([`is_service_link`]).
fn env_dict(env: &HashMap<String, String>) -> figment::value::Dict {
    let mut root = figment::value::Dict::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest.is_empty()
            || rest == "CONFIG"
            || secrets::CALLBRIDGE_SECRET_VARS.contains(&name.as_str())
            || is_service_link(name, value)
        {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        insert_path(&mut root, &path, parse_env_value(value));
    }
    root
}

const ENV_PREFIX: &str = "CALLBRIDGE_";
/// `CALLBRIDGE_*` variables that are secrets ([`Secrets`]), not keys.
const ENV_LAYER: &str = "CALLBRIDGE_* environment";

/// True for a variable the kubelet injects into every pod of a namespace
/// that has a Service named `callbridge` (`CALLBRIDGE_SERVICE_HOST`,
/// `CALLBRIDGE_SERVICE_PORT[_<PORT NAME>]`, `CALLBRIDGE_PORT=tcp://…`,
/// `CALLBRIDGE_PORT_8080_TCP[_PROTO|_PORT|_ADDR]`) or `callbridge-<x>` (the
/// same shapes with `<X>_` after the prefix; there, a bare `…_PORT` counts
/// only with a `tcp://`, `udp://` or `sctp://` value, so that a mistyped
/// `CALLBRIDGE_ADMIN_PORT=9091` is still reported). These are not
/// configuration keys and never stop the service; a real key is never one.
pub fn is_service_link(name: &str, value: &str) -> bool {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return false;
    };
    if rest.is_empty() || known_keys().contains(&env_to_key(rest)) {
        return false;
    }
    // The Service named `callbridge` itself: by name alone.
    if rest == "PORT" || rest.starts_with("PORT_") || rest.starts_with("SERVICE_") {
        return true;
    }
    // A Service named `callbridge-<x>`: Service names are DNS labels, so the
    // `<X>` part has single underscores only, never the `__` of a section.
    if rest.contains("__") {
        return false;
    }
    let parts: Vec<&str> = rest.split('_').collect();
    let is_proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    (1..parts.len()).any(|i| match &parts[i..] {
        ["SERVICE", "HOST"] => true,
        ["SERVICE", "PORT", ..] => true,
        ["PORT"] => ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|scheme| value.starts_with(scheme)),
        ["PORT", port, proto] | ["PORT", port, proto, "PROTO" | "PORT" | "ADDR"] => {
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && is_proto(proto)
        }
        _ => false,
    })
}

/// `REALTIME__URL` → `realtime.url`.
fn env_to_key(rest: &str) -> String {
    rest.split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// `realtime.url` → `CALLBRIDGE_REALTIME__URL`.
fn key_to_env(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join("__")
    )
}

/// Every configuration key, dotted (`realtime.url`); tables of user-chosen
/// names (`agents`) and lists (`agent.tools`) appear as themselves.
fn known_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) if !map.is_empty() => {
                    for (k, v) in map {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                _ => out.push(prefix.to_owned()),
            }
        }
        let mut keys = Vec::new();
        if let Ok(value) = serde_json::to_value(Config::default()) {
            walk("", &value, &mut keys);
        }
        keys.sort();
        keys
    })
}

/// The real key an unknown one most likely meant: the nearest by edit
/// distance (in the form it was written: `CALLBRIDGE_…` names compare as
/// names, so `LOG_FORMAT` finds `LOG__FORMAT`), or else the key with the
/// same last part in another section (`CALLBRIDGE_URL` → `realtime.url`;
/// the first in key order where several have it).
/// `siblings` are the keys valid where the unknown one was found.
fn closest_key(unknown: &str, siblings: &[String], from_env: bool) -> Option<String> {
    let form = |key: &str| {
        if from_env {
            key_to_env(key)
        } else {
            key.to_owned()
        }
    };
    let written = form(unknown);
    let mut candidates: Vec<String> = known_keys().to_vec();
    candidates.extend(siblings.iter().cloned());
    let best = candidates
        .iter()
        .filter(|k| k.as_str() != unknown)
        .map(|k| (edit_distance(&written, &form(k)), k))
        .min_by(|(da, a), (db, b)| da.cmp(db).then(a.len().cmp(&b.len())));
    if let Some((distance, key)) = best {
        let len = written
            .len()
            .saturating_sub(if from_env { ENV_PREFIX.len() } else { 0 });
        if distance <= 2.max(len / 4) {
            return Some(key.clone());
        }
    }
    let last = unknown.rsplit('.').next().unwrap_or(unknown);
    candidates
        .iter()
        .filter(|k| k.rsplit('.').next() == Some(last) && k.as_str() != unknown)
        // Several (`realtime.url`, `summary.url`): the first in key order.
        .min()
        .cloned()
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and transpositions of neighbours each cost 1 (ASCII case ignored).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The environment layer, named so that errors say where a value came from.
struct EnvLayer(figment::value::Dict);

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(ENV_LAYER)
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
    if let figment::error::Kind::UnknownField(field, expected) = &err.kind {
        return unknown_key(key, field, expected, err.metadata.as_ref());
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

/// True when binding both addresses would collide: the same non-zero port
/// on the same address, or on any address when one of them is a wildcard.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// An unknown key: named as it was written (the variable, for the
/// environment), with the closest real key when one is close.
fn unknown_key(
    key: String,
    field: &str,
    expected: &[&str],
    meta: Option<&figment::Metadata>,
) -> ConfigError {
    let from_env = meta.is_some_and(|m| m.name == ENV_LAYER);
    let parent = key
        .strip_suffix(field)
        .map(|p| p.trim_end_matches('.'))
        .unwrap_or("");
    let siblings: Vec<String> = expected
        .iter()
        .map(|e| {
            if parent.is_empty() {
                (*e).to_owned()
            } else {
                format!("{parent}.{e}")
            }
        })
        .collect();
    let suggestion = closest_key(&key, &siblings, from_env);
    let mut reason = if from_env {
        format!("unknown key, set by {}", key_to_env(&key))
    } else {
        match meta.and_then(|m| m.source.as_ref()) {
            Some(source) => format!("unknown key (in {source})"),
            None => "unknown key".to_owned(),
        }
    };
    match suggestion {
        Some(s) if from_env => reason.push_str(&format!("; did you mean {}?", key_to_env(&s))),
        Some(s) => reason.push_str(&format!("; did you mean `{s}`?")),
        None if expected.is_empty() => {}
        None => {
            let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            reason.push_str(&format!("; expected one of {}", list.join(", ")));
        }
    }
    ConfigError::Key { key, reason }
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
        assert_eq!(c.admin_listen, "0.0.0.0:9091".parse().unwrap());
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
        assert_eq!(c.audio.max_lag_ms, 300);

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
    fn the_model_ping_is_off_or_has_a_timeout_shorter_than_its_interval() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(
            (c.realtime.ping_interval_ms, c.realtime.pong_timeout_ms),
            (20_000, 10_000)
        );
        let load = |interval: &str, timeout: &str| {
            Config::load(
                None,
                &env(&[
                    ("CALLBRIDGE_REALTIME__PING_INTERVAL_MS", interval),
                    ("CALLBRIDGE_REALTIME__PONG_TIMEOUT_MS", timeout),
                ]),
            )
        };
        assert!(load("0", "10000").is_ok(), "0 turns the ping off");
        assert!(load("1000", "500").is_ok());
        let (key, reason) = key_error(load("1000", "1000"));
        assert_eq!(key, "realtime.pong_timeout_ms");
        assert!(reason.contains("less than"), "{reason}");
        let (key, _) = key_error(load("50", "40"));
        assert_eq!(key, "realtime.ping_interval_ms");
        let (key, _) = key_error(load("0", "0"));
        assert_eq!(key, "realtime.pong_timeout_ms");
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
            ("CALLBRIDGE_AUDIO__MAX_LAG_MS", "20", "audio.max_lag_ms"),
            ("CALLBRIDGE_AUDIO__MAX_LAG_MS", "60000", "audio.max_lag_ms"),
            ("CALLBRIDGE_AUDIO__APPEND_MS", "10", "audio.append_ms"),
            ("CALLBRIDGE_AUDIO__APPEND_MS", "50", "audio.append_ms"),
            ("CALLBRIDGE_AUDIO__APPEND_MS", "220", "audio.append_ms"),
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
        let (key, reason) = key_error(Config::load(Some(f.path()), &env(&[])));
        assert_eq!(key, "realtime.urll");
        assert!(reason.contains("did you mean `realtime.url`?"), "{reason}");
        // figment names the file relative to the working directory when it can.
        let name = f.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(reason.contains(&name), "{reason}");
    }

    /// What the kubelet injects for a Service named `callbridge` (and one
    /// named `callbridge-admin`) in the pod's namespace.
    const SERVICE_LINKS: &[(&str, &str)] = &[
        ("CALLBRIDGE_PORT", "tcp://10.96.0.12:8080"),
        ("CALLBRIDGE_SERVICE_HOST", "10.96.0.12"),
        ("CALLBRIDGE_SERVICE_PORT", "8080"),
        ("CALLBRIDGE_SERVICE_PORT_HTTP", "8080"),
        ("CALLBRIDGE_SERVICE_PORT_ADMIN", "9091"),
        ("CALLBRIDGE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("CALLBRIDGE_PORT_8080_TCP_PROTO", "tcp"),
        ("CALLBRIDGE_PORT_8080_TCP_PORT", "8080"),
        ("CALLBRIDGE_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("CALLBRIDGE_PORT_9091_TCP_ADDR", "10.96.0.12"),
        ("CALLBRIDGE_ADMIN_SERVICE_HOST", "10.96.0.13"),
        ("CALLBRIDGE_ADMIN_SERVICE_PORT", "9091"),
        ("CALLBRIDGE_ADMIN_PORT", "tcp://10.96.0.13:9091"),
        ("CALLBRIDGE_ADMIN_PORT_9091_TCP", "tcp://10.96.0.13:9091"),
        ("CALLBRIDGE_ADMIN_PORT_9091_TCP_ADDR", "10.96.0.13"),
        ("CALLBRIDGE_MEDIA_GW_PORT_5060_UDP_PROTO", "udp"),
    ];

    #[test]
    fn kubernetes_service_links_never_stop_the_service() {
        let mut vars = SERVICE_LINKS.to_vec();
        vars.push(("CALLBRIDGE_MAX_CALLS", "7"));
        vars.push(("CALLBRIDGE_ADMIN_LISTEN", "127.0.0.1:9191"));
        let c = Config::load(None, &env(&vars)).unwrap();
        // The real keys beside them still apply.
        assert_eq!(c.max_calls, 7);
        assert_eq!(c.admin_listen, "127.0.0.1:9191".parse().unwrap());
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        for (name, value) in SERVICE_LINKS {
            assert!(is_service_link(name, value), "{name}");
        }
        // Real keys and near misses are not service links.
        for (name, value) in [
            ("CALLBRIDGE_LISTEN", "0.0.0.0:8080"),
            ("CALLBRIDGE_ADMIN_LISTEN", "0.0.0.0:9091"),
            ("CALLBRIDGE_ADMIN_PORT", "9091"),
            ("CALLBRIDGE_REALTIME__PORT", "tcp://10.0.0.1:1"),
            ("CALLBRIDGE_ADMIN_PORT_HTTP_TCP", "tcp://10.0.0.1:1"),
            ("OTHER_PORT", "tcp://10.0.0.1:1"),
        ] {
            assert!(!is_service_link(name, value), "{name}={value}");
        }
    }

    #[test]
    fn the_admin_token_variables_are_secrets_not_keys() {
        let c = Config::load(
            None,
            &env(&[
                ("CALLBRIDGE_ADMIN_TOKEN", "s3cret-admin"),
                ("CALLBRIDGE_ADMIN_TOKEN_FILE", "/nonexistent"),
            ]),
        )
        .unwrap();
        assert!(c.outbound.allowed_prefixes.is_empty());
        // A near miss is still a mistyped key.
        let err = Config::load(None, &env(&[("CALLBRIDGE_ADMIN_TOKN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key"), "{err}");
    }

    #[test]
    fn outbound_prefixes_from_file_and_env() {
        let f = toml_file("[outbound]\nallowed_prefixes = [\"+1\", \"+44\"]\n");
        let c = Config::load(Some(f.path()), &env(&[])).unwrap();
        assert_eq!(c.outbound.allowed_prefixes, ["+1", "+44"]);
        let c = Config::load(
            None,
            &env(&[("CALLBRIDGE_OUTBOUND__ALLOWED_PREFIXES", "[\"+33\"]")]),
        )
        .unwrap();
        assert_eq!(c.outbound.allowed_prefixes, ["+33"]);
        let f = toml_file("[outbound]\nallowed_prefixes = [\"44\"]\n");
        let err = Config::load(Some(f.path()), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outbound.allowed_prefixes"), "{err}");
        let f = toml_file("[outbound]\nallowed_prefix = []\n");
        let err = Config::load(Some(f.path()), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did you mean `outbound.allowed_prefixes`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_env_keys_are_errors_naming_the_closest_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "CALLBRIDGE_REALTIME__URLL",
                "realtime.urll",
                "CALLBRIDGE_REALTIME__URL",
            ),
            (
                "CALLBRIDGE_REALTIME_URL",
                "realtime_url",
                "CALLBRIDGE_REALTIME__URL",
            ),
            (
                "CALLBRIDGE_LOG_FORMAT",
                "log_format",
                "CALLBRIDGE_LOG__FORMAT",
            ),
            ("CALLBRIDGE_MAXCALLS", "maxcalls", "CALLBRIDGE_MAX_CALLS"),
            (
                "CALLBRIDGE_ADMIN_LISTN",
                "admin_listn",
                "CALLBRIDGE_ADMIN_LISTEN",
            ),
            (
                "CALLBRIDGE_REALTIME__DIALETC",
                "realtime.dialetc",
                "CALLBRIDGE_REALTIME__DIALECT",
            ),
            (
                "CALLBRIDGE_AGENT__TURN_DETECTION__THRESHHOLD",
                "agent.turn_detection.threshhold",
                "CALLBRIDGE_AGENT__TURN_DETECTION__THRESHOLD",
            ),
            // The right name in the wrong place.
            ("CALLBRIDGE_URL", "url", "CALLBRIDGE_REALTIME__URL"),
            (
                "CALLBRIDGE_TWILIO__MODE",
                "twilio.mode",
                "CALLBRIDGE_AUDIO__MODE",
            ),
        ];
        for (var, key, suggestion) in cases {
            let (got, reason) = key_error(Config::load(None, &env(&[(var, "1")])));
            assert_eq!(&got, key, "{var}: {reason}");
            assert!(reason.contains(&format!("set by {var}")), "{var}: {reason}");
            assert!(
                reason.ends_with(&format!("did you mean {suggestion}?")),
                "{var}: {reason}"
            );
        }
        // Nothing close: still an error, with the keys that exist there.
        for var in ["CALLBRIDGE_NO_SUCH_KEY", "CALLBRIDGE_ADMIN_PORT"] {
            let (_, reason) = key_error(Config::load(None, &env(&[(var, "9091")])));
            assert!(!reason.contains("did you mean"), "{var}: {reason}");
            assert!(
                reason.contains("expected one of `listen`, `admin_listen`"),
                "{var}: {reason}"
            );
        }
    }

    #[test]
    fn admin_listen_must_not_be_the_public_port() {
        for (listen, admin) in [
            ("0.0.0.0:8080", "0.0.0.0:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
        ] {
            let (key, reason) = key_error(Config::load(
                None,
                &env(&[
                    ("CALLBRIDGE_LISTEN", listen),
                    ("CALLBRIDGE_ADMIN_LISTEN", admin),
                ]),
            ));
            assert_eq!(key, "admin_listen", "{listen} {admin}: {reason}");
        }
        for (listen, admin) in [
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("0.0.0.0:8080", "127.0.0.1:9091"),
        ] {
            Config::load(
                None,
                &env(&[
                    ("CALLBRIDGE_LISTEN", listen),
                    ("CALLBRIDGE_ADMIN_LISTEN", admin),
                ]),
            )
            .unwrap();
        }
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

    #[test]
    fn summary_url_per_profile_falls_back_to_the_global_one() {
        let f = toml_file(
            r#"
            [summary]
            url = "https://records.example.com/all"
            retry_budget_ms = 1000
            [pricing]
            output_audio = 20.0
            [agents.own]
            numbers = ["+14155550100"]
            summary_url = "https://records.example.com/own"
            [agents.none]
            numbers = ["+14155550101"]
            summary_url = ""
            [agents.inherits]
            numbers = ["+14155550102"]
            "#,
        );
        let c = Config::load(Some(f.path()), &env(&[])).unwrap();
        assert_eq!(c.summary.retry_budget_ms, 1000);
        assert_eq!(c.pricing.output_audio, 20.0);
        assert_eq!(c.pricing.input_audio, 32.0);
        let url = |name: &str| {
            c.profiles()
                .into_iter()
                .find(|p| p.name == name)
                .and_then(|p| p.summary_url)
        };
        assert_eq!(
            url("default").as_deref(),
            Some("https://records.example.com/all")
        );
        assert_eq!(
            url("own").as_deref(),
            Some("https://records.example.com/own")
        );
        assert_eq!(url("none"), None);
        assert_eq!(
            url("inherits").as_deref(),
            Some("https://records.example.com/all")
        );

        let f = toml_file(
            r#"
            [agents.bad]
            summary_url = "ftp://records.example.com/"
            "#,
        );
        let (key, _) = key_error(Config::load(Some(f.path()), &env(&[])));
        assert_eq!(key, "agents.bad.summary_url");
        let (key, _) = key_error(Config::load(
            None,
            &env(&[("CALLBRIDGE_PRICING__INPUT_AUDIO", "-1")]),
        ));
        assert_eq!(key, "pricing.input_audio");
    }

    #[test]
    fn the_summary_secret_is_a_secret_not_a_config_key() {
        let vars = env(&[
            ("CALLBRIDGE_SUMMARY_SECRET", "s3cret"),
            ("CALLBRIDGE_SUMMARY__URL", "https://records.example.com/"),
        ]);
        let c = Config::load(None, &vars).unwrap();
        assert_eq!(
            c.summary.url.as_deref(),
            Some("https://records.example.com/")
        );
        let secrets = Secrets::from_env(&vars).unwrap();
        assert_eq!(
            secrets
                .summary_secret
                .map(|s| s.expose().to_owned())
                .as_deref(),
            Some("s3cret")
        );
        // A near miss is still an unknown key, not a silently ignored secret.
        let (key, _) = key_error(Config::load(
            None,
            &env(&[("CALLBRIDGE_SUMMARY_SECRT", "x")]),
        ));
        assert_eq!(key, "summary_secrt");
    }
}
