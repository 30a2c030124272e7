//! `[outbound]`: what `POST /calls` may dial.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Outbound calls (`POST /calls` on the admin port, `callbridge dial`).
/// The endpoint itself is switched on by `CALLBRIDGE_ADMIN_TOKEN`, a secret,
/// so it is not here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Destination prefixes that may be called (`+1`, `+4420`), each `+` and
    /// 1 to 15 digits. Empty: any E.164 number (the endpoint already needs
    /// the admin token); list the countries you call to keep a leaked token
    /// from dialling premium-rate numbers abroad (toll fraud).
    pub allowed_prefixes: Vec<String>,
}

impl OutboundConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for prefix in &self.allowed_prefixes {
            if !is_prefix(prefix) {
                return Err(ConfigError::key(
                    "outbound.allowed_prefixes",
                    format!(
                        "{prefix:?} is not a number prefix (+ and 1-15 digits, the first not 0)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `number` (already checked as E.164) may be called.
    pub fn allows(&self, number: &str) -> bool {
        self.allowed_prefixes.is_empty()
            || self
                .allowed_prefixes
                .iter()
                .any(|prefix| number.starts_with(prefix.as_str()))
    }
}

/// `+` and 1 to 15 digits, the first not 0: the start of an E.164 number.
fn is_prefix(prefix: &str) -> bool {
    prefix.strip_prefix('+').is_some_and(|digits| {
        (1..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(prefixes: &[&str]) -> OutboundConfig {
        OutboundConfig {
            allowed_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn empty_allows_any_number() {
        let c = with(&[]);
        assert!(c.validate().is_ok());
        assert!(c.allows("+14155550100"));
        assert!(c.allows("+882345678901"));
    }

    #[test]
    fn prefixes_gate_destinations() {
        let c = with(&["+1", "+4420"]);
        assert!(c.validate().is_ok());
        assert!(c.allows("+14155550100"));
        assert!(c.allows("+442071234567"));
        assert!(!c.allows("+447911123456"));
        assert!(!c.allows("+882345678901"));
    }

    #[test]
    fn bad_prefixes_are_named() {
        for bad in ["1", "+", "+0", "+1a", " +1", "+1234567890123456", ""] {
            let err = with(&[bad]).validate().unwrap_err().to_string();
            assert!(err.contains("outbound.allowed_prefixes"), "{err}");
        }
    }
}
