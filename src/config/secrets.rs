//! Secrets: from the environment only (or `*_FILE` paths, as Kubernetes
//! mounts them), never from the TOML layer, and redacted wherever printed.

use std::collections::HashMap;
use std::fmt;

use super::ConfigError;

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
    /// The bearer token of the admin port's `POST /calls`
    /// (`CALLBRIDGE_ADMIN_TOKEN` or `_FILE`); unset, outbound calls are off.
    pub admin_token: Option<Secret>,
    /// The key that signs call records (`X-Callbridge-Signature`), from
    /// `CALLBRIDGE_SUMMARY_SECRET`; required when a summary URL is set.
    pub summary_secret: Option<Secret>,
}

/// The secrets named `CALLBRIDGE_…`: read here, and so not configuration
/// keys for the `CALLBRIDGE_*` environment layer.
pub(super) const CALLBRIDGE_SECRET_VARS: &[&str] = &[
    "CALLBRIDGE_ADMIN_TOKEN",
    "CALLBRIDGE_ADMIN_TOKEN_FILE",
    "CALLBRIDGE_SUMMARY_SECRET",
    "CALLBRIDGE_SUMMARY_SECRET_FILE",
];

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
            admin_token: read_secret(env, "CALLBRIDGE_ADMIN_TOKEN")?,
            summary_secret: read_secret(env, "CALLBRIDGE_SUMMARY_SECRET")?,
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

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn admin_token_from_the_variable_or_a_file() {
        let s = Secrets::from_env(&env(&[("CALLBRIDGE_ADMIN_TOKEN", " tok-1 ")])).unwrap();
        assert_eq!(s.admin_token.as_ref().map(Secret::expose), Some("tok-1"));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"tok-2\n").unwrap();
        let path = file.path().to_str().unwrap();
        let s = Secrets::from_env(&env(&[("CALLBRIDGE_ADMIN_TOKEN_FILE", path)])).unwrap();
        assert_eq!(s.admin_token.as_ref().map(Secret::expose), Some("tok-2"));
        assert!(Secrets::from_env(&env(&[])).unwrap().admin_token.is_none());
        let both = Secrets::from_env(&env(&[
            ("CALLBRIDGE_ADMIN_TOKEN", "a"),
            ("CALLBRIDGE_ADMIN_TOKEN_FILE", path),
        ]))
        .unwrap_err()
        .to_string();
        assert!(both.contains("set only one"), "{both}");
        assert!(!format!("{s:?}").contains("tok-2"));
    }
}
