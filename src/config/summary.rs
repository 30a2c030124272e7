//! `[summary]`: the call summary webhook. At the end of each call a JSON
//! record of it is POSTed to `url` (or the profile's `summary_url`), signed
//! with `CALLBRIDGE_SUMMARY_SECRET`; see `crate::summary`.

use serde::{Deserialize, Serialize};
use url::Url;

use super::{redact_query, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummaryConfig {
    /// Where call records go: `https://…` (or `http://` to a local
    /// receiver). Unset: no records, unless a profile names its own.
    pub url: Option<String>,
    /// One delivery attempt (connect, send, answer), ms.
    pub timeout_ms: u64,
    /// How long a record is retried (with backoff) before it is given up, ms.
    pub retry_budget_ms: u64,
    /// Records waiting or being retried at most; beyond it new ones are
    /// dropped (and counted), so a dead receiver cannot grow memory.
    pub max_pending: usize,
}

impl Default for SummaryConfig {
    fn default() -> Self {
        SummaryConfig {
            url: None,
            timeout_ms: 5_000,
            retry_budget_ms: 60_000,
            max_pending: 1_000,
        }
    }
}

impl SummaryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            parse_summary_url(url, "summary.url")?;
        }
        let ranges: [(&str, u64, u64, u64); 3] = [
            ("summary.timeout_ms", self.timeout_ms, 100, 60_000),
            (
                "summary.retry_budget_ms",
                self.retry_budget_ms,
                0,
                3_600_000,
            ),
            ("summary.max_pending", self.max_pending as u64, 1, 100_000),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::key(
                    key,
                    format!("must be between {min} and {max} (got {value})"),
                ));
            }
        }
        Ok(())
    }
}

/// A receiver's URL: `http(s)://host…`, no credentials in it (the query
/// may carry a receiver's token: it is never echoed).
pub fn parse_summary_url(raw: &str, key: &str) -> Result<Url, ConfigError> {
    // An unparsable value is not echoed: it may hold a credential.
    let url = Url::parse(raw).map_err(|e| ConfigError::key(key, format!("not a URL: {e}")))?;
    let bad = |why: &str| ConfigError::key(key, format!("{why} (got {})", redact_query(&url)));
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(
            "must start with https:// (or http:// for a local receiver)",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_urls_are_checked_without_echoing_secrets() {
        assert!(parse_summary_url("https://records.example.com/cb?token=x", "summary.url").is_ok());
        assert!(parse_summary_url("http://127.0.0.1:9/records", "summary.url").is_ok());
        for bad in [
            "ftp://records.example.com/",
            "not a url",
            "https://user:pw@records.example.com/",
        ] {
            let err = parse_summary_url(bad, "summary.url")
                .unwrap_err()
                .to_string();
            assert!(err.contains("summary.url"), "{err}");
            assert!(!err.contains("pw"), "{err}");
        }
        let err = parse_summary_url("ftp://h/?key=sekrit", "summary.url")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sekrit"), "{err}");
    }

    #[test]
    fn bounds_are_enforced() {
        let c = SummaryConfig {
            max_pending: 0,
            ..SummaryConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("summary.max_pending"));
        let c = SummaryConfig {
            timeout_ms: 10,
            ..SummaryConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("summary.timeout_ms"));
    }
}
