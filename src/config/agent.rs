//! The assistant: what the model is told and may do (`[agent]`), and the
//! per-number assistant profiles (`[agents.<name>]`) that override it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{validate_tools, AudioMode, ConfigError, ToolConfig};

/// The name of the profile `[agent]` itself forms.
pub const DEFAULT_PROFILE: &str = "default";

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
    /// Built-in tools that end or transfer the call.
    #[serde(default)]
    pub call_control: CallControlConfig,
    /// What keypad digits do: `model` (told to the model) or `ignore`.
    #[serde(default)]
    pub dtmf: DtmfMode,
    /// Silence that ends a key sequence (`#` ends it at once), in ms.
    #[serde(default = "default_dtmf_timeout_ms")]
    pub dtmf_timeout_ms: u64,
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

fn default_dtmf_timeout_ms() -> u64 {
    1500
}

/// Built-in call control, each declared to the model only where enabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallControlConfig {
    /// Declare `end_call`: the model may hang up once its goodbye was heard.
    pub end_call: bool,
    /// The longest wait for the goodbye to finish playing before hanging up.
    pub end_call_timeout_ms: u64,
    /// Names the model may transfer to, and where each goes (an E.164 number
    /// or a SIP URI). `transfer_call` is declared when this is not empty; the
    /// model sees the names only, as an enum.
    pub transfer_targets: BTreeMap<String, String>,
}

impl Default for CallControlConfig {
    fn default() -> Self {
        CallControlConfig {
            end_call: false,
            end_call_timeout_ms: 10_000,
            transfer_targets: BTreeMap::new(),
        }
    }
}

impl CallControlConfig {
    pub fn end_call_timeout(&self) -> Duration {
        Duration::from_millis(self.end_call_timeout_ms)
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(1000..=60_000).contains(&self.end_call_timeout_ms) {
            return Err(ConfigError::key(
                &format!("{key}.end_call_timeout_ms"),
                format!(
                    "must be between 1000 and 60000 (got {})",
                    self.end_call_timeout_ms
                ),
            ));
        }
        // The targets themselves are parsed where the call control is built
        // (`call::control`), which knows Twilio's dial syntax.
        for name in self.transfer_targets.keys() {
            if !is_name(name, 64) {
                return Err(ConfigError::key(
                    &format!("{key}.transfer_targets.{name}"),
                    "a target name is 1-64 letters, digits, '_' or '-'",
                ));
            }
        }
        Ok(())
    }
}

/// What keypad digits do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMode {
    /// Each key sequence reaches the model as a message from the caller.
    #[default]
    Model,
    /// Digits are counted and dropped.
    Ignore,
}

/// `[agents.<name>]`: an assistant for some called numbers. Every key but
/// `numbers` is optional and defaults to `[agent]`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The called numbers (E.164, Twilio's `To`) this assistant answers.
    #[serde(default)]
    pub numbers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_mode: Option<AudioMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcription_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_detection: Option<TurnDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_control: Option<CallControlConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtmf: Option<DtmfMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtmf_timeout_ms: Option<u64>,
    /// Where this assistant's call records go, instead of `summary.url`;
    /// `""`: none for this profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_url: Option<String>,
}

/// One assistant, resolved: `[agent]` with a profile's overrides applied.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub agent: AgentConfig,
    pub audio_mode: AudioMode,
    /// Where call records go (see `[summary]`); `None`: nowhere.
    /// [`ProfileConfig::resolve`] sets only the profile's own;
    /// `Config::profiles` falls back to `summary.url`.
    pub summary_url: Option<String>,
}

impl ProfileConfig {
    /// This profile over `base`.
    pub fn resolve(&self, name: &str, base: &AgentConfig, mode: AudioMode) -> Profile {
        let pick =
            |own: &Option<String>, base: &String| own.clone().unwrap_or_else(|| base.clone());
        Profile {
            name: name.to_owned(),
            agent: AgentConfig {
                instructions: pick(&self.instructions, &base.instructions),
                voice: pick(&self.voice, &base.voice),
                greeting: pick(&self.greeting, &base.greeting),
                transcription_model: pick(&self.transcription_model, &base.transcription_model),
                turn_detection: self
                    .turn_detection
                    .clone()
                    .unwrap_or_else(|| base.turn_detection.clone()),
                tools: self.tools.clone().unwrap_or_else(|| base.tools.clone()),
                call_control: self
                    .call_control
                    .clone()
                    .unwrap_or_else(|| base.call_control.clone()),
                dtmf: self.dtmf.unwrap_or(base.dtmf),
                dtmf_timeout_ms: self.dtmf_timeout_ms.unwrap_or(base.dtmf_timeout_ms),
            },
            audio_mode: self.audio_mode.unwrap_or(mode),
            summary_url: self.summary_url.clone().filter(|u| !u.is_empty()),
        }
    }
}

impl AgentConfig {
    /// Checks what the types alone do not; `key` is where this agent lives
    /// (`agent` or `agents.<name>`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let td = &self.turn_detection;
        if !(0.0..=1.0).contains(&td.threshold) {
            return Err(ConfigError::key(
                &format!("{key}.turn_detection.threshold"),
                format!("must be between 0.0 and 1.0 (got {})", td.threshold),
            ));
        }
        if !["low", "medium", "high", "auto"].contains(&td.eagerness.as_str()) {
            return Err(ConfigError::key(
                &format!("{key}.turn_detection.eagerness"),
                format!(
                    "unknown value {:?} (expected low, medium, high or auto)",
                    td.eagerness
                ),
            ));
        }
        if self.voice.trim().is_empty() {
            return Err(ConfigError::key(
                &format!("{key}.voice"),
                "must not be empty",
            ));
        }
        if !(100..=10_000).contains(&self.dtmf_timeout_ms) {
            return Err(ConfigError::key(
                &format!("{key}.dtmf_timeout_ms"),
                format!(
                    "must be between 100 and 10000 (got {})",
                    self.dtmf_timeout_ms
                ),
            ));
        }
        validate_tools(&self.tools, &format!("{key}.tools"))?;
        self.call_control.validate(&format!("{key}.call_control"))
    }
}

/// Profile names travel in stream tokens: short and plain.
pub(super) fn is_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `+` and 8 to 15 digits, the first not 0.
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// Checks every profile, and that no number is claimed twice.
pub(super) fn validate_profiles(
    profiles: &BTreeMap<String, ProfileConfig>,
    base: &AgentConfig,
    mode: AudioMode,
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, profile) in profiles {
        let key = format!("agents.{name}");
        if !is_name(name, 32) || name == DEFAULT_PROFILE {
            return Err(ConfigError::key(
                &key,
                format!(
                    "a profile name is 1-32 letters, digits, '_' or '-', and not {DEFAULT_PROFILE:?}"
                ),
            ));
        }
        for number in &profile.numbers {
            if !is_e164(number) {
                return Err(ConfigError::key(
                    &format!("{key}.numbers"),
                    format!("{number:?} is not an E.164 number (+ and 8-15 digits)"),
                ));
            }
            if let Some(other) = seen.insert(number, name) {
                return Err(ConfigError::key(
                    &format!("{key}.numbers"),
                    format!("{number} is already answered by agents.{other}"),
                ));
            }
        }
        if let Some(url) = profile.summary_url.as_deref().filter(|u| !u.is_empty()) {
            super::parse_summary_url(url, &format!("{key}.summary_url"))?;
        }
        profile.resolve(name, base, mode).agent.validate(&key)?;
    }
    Ok(())
}
