//! Built-in call control: the `end_call` and `transfer_call` tools.
//!
//! They are declared to the model only where a profile enables them, and
//! the bridge runs them itself: it answers the model at once (so it says
//! goodbye, or that it is connecting the caller), waits until that sentence
//! has been heard, then hangs up or transfers through Twilio's REST API.
//! Transfer targets are names from config; the model sees the names as an
//! enum and never a number, so it cannot be talked into dialling one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::config::{CallControlConfig, ConfigError};
use crate::twilio::twiml::DialTarget;
use crate::upstream::{ToolCall, ToolSpec};

pub const END_CALL: &str = "end_call";
pub const TRANSFER_CALL: &str = "transfer_call";

/// What the model asked the bridge to do with the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Hangup,
    Transfer { name: String, target: DialTarget },
}

/// One profile's call control, checked at start-up.
#[derive(Debug, Clone, Default)]
pub struct CallControl {
    end_call: bool,
    end_call_timeout: Duration,
    targets: BTreeMap<String, DialTarget>,
}

impl CallControl {
    /// `key` is where the config lives, for errors (`agent.call_control`).
    pub fn from_config(cfg: &CallControlConfig, key: &str) -> Result<CallControl, ConfigError> {
        let mut targets = BTreeMap::new();
        for (name, raw) in &cfg.transfer_targets {
            let target = DialTarget::parse(raw).map_err(|e| ConfigError::Key {
                key: format!("{key}.transfer_targets.{name}"),
                reason: e.to_string(),
            })?;
            targets.insert(name.clone(), target);
        }
        Ok(CallControl {
            end_call: cfg.end_call,
            end_call_timeout: cfg.end_call_timeout(),
            targets,
        })
    }

    /// How long the bridge waits for the last sentence to be heard.
    pub fn timeout(&self) -> Duration {
        self.end_call_timeout
    }

    /// The built-in tools this profile declares.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = Vec::new();
        if self.end_call {
            specs.push(ToolSpec {
                name: END_CALL.into(),
                description: "End the phone call. Call it when the conversation is over; \
                              the call ends once your goodbye has been heard."
                    .into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "reason": {"type": "string", "description": "Why the call ends."}
                    },
                }),
            });
        }
        if !self.targets.is_empty() {
            let names: Vec<&String> = self.targets.keys().collect();
            specs.push(ToolSpec {
                name: TRANSFER_CALL.into(),
                description: "Transfer the caller to a person or team. Tell the caller \
                              you are connecting them; the transfer happens once that \
                              has been heard."
                    .into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "target": {"type": "string", "enum": names, "description": "Who to transfer to."}
                    },
                    "required": ["target"],
                }),
            });
        }
        specs
    }

    /// The action a call asks for; `None` when it is not a built-in this
    /// profile declares, `Some(Err(message))` when its arguments are wrong.
    pub fn action(&self, call: &ToolCall) -> Option<Result<Action, String>> {
        match call.name.as_str() {
            END_CALL if self.end_call => Some(Ok(Action::Hangup)),
            TRANSFER_CALL if !self.targets.is_empty() => {
                let args: serde_json::Value =
                    serde_json::from_str(&call.arguments).unwrap_or_default();
                let Some(name) = args.get("target").and_then(|t| t.as_str()) else {
                    return Some(Err("transfer_call needs a `target`".into()));
                };
                Some(match self.targets.get(name) {
                    Some(target) => Ok(Action::Transfer {
                        name: name.to_owned(),
                        target: target.clone(),
                    }),
                    None => Err(format!(
                        "unknown transfer target {name:?}; the targets are: {}",
                        self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> CallControl {
        let cfg = CallControlConfig {
            end_call: true,
            end_call_timeout_ms: 10_000,
            transfer_targets: BTreeMap::from([
                ("sales".into(), "+14155550123".into()),
                ("support".into(), "sip:help@example.com".into()),
            ]),
        };
        CallControl::from_config(&cfg, "agent.call_control").unwrap()
    }

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            call_id: "c1".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn declared_only_where_enabled_with_names_as_an_enum() {
        assert!(CallControl::default().specs().is_empty());
        let specs = control().specs();
        assert_eq!(specs[0].name, END_CALL);
        assert_eq!(specs[1].name, TRANSFER_CALL);
        assert_eq!(
            specs[1].parameters["properties"]["target"]["enum"],
            json!(["sales", "support"])
        );
        // No number reaches the model.
        assert!(!specs[1].parameters.to_string().contains("4155550123"));
    }

    #[test]
    fn actions_from_calls() {
        let c = control();
        assert_eq!(c.action(&call(END_CALL, "{}")), Some(Ok(Action::Hangup)));
        match c.action(&call(TRANSFER_CALL, r#"{"target":"support"}"#)) {
            Some(Ok(Action::Transfer { name, target })) => {
                assert_eq!(name, "support");
                assert!(target.is_sip());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.action(&call(TRANSFER_CALL, r#"{"target":"+15550001111"}"#)),
            Some(Err(_))
        ));
        assert!(matches!(
            c.action(&call(TRANSFER_CALL, "not json")),
            Some(Err(_))
        ));
        assert_eq!(c.action(&call("lookup_order", "{}")), None);
        // Not enabled: not ours, so it goes to the HTTP tools (and fails there).
        assert_eq!(CallControl::default().action(&call(END_CALL, "{}")), None);
    }

    #[test]
    fn bad_targets_are_start_up_errors_naming_the_key() {
        let cfg = CallControlConfig {
            transfer_targets: BTreeMap::from([("x".into(), "5550123".into())]),
            ..CallControlConfig::default()
        };
        let err = CallControl::from_config(&cfg, "agents.sales.call_control").unwrap_err();
        assert!(
            err.to_string()
                .contains("agents.sales.call_control.transfer_targets.x"),
            "{err}"
        );
    }
}
