//! `[pricing]`: what the model's usage costs, for the per-call estimate
//! (`callbridge_call_cost_usd`, the `call ended` line, the call record).
//!
//! An estimate, not a bill: the defaults are the published prices of
//! `gpt-realtime` (checked 2025-12: text $4 / cached $0.40 / output $16,
//! audio $32 / cached $0.40 / output $64, per million tokens) and of
//! GPT-Live ($0.05 a minute, billed by the second). Input transcription
//! (`agent.transcription_model`) is billed apart by OpenAI and not included.
//! Set the prices of the model `realtime.url` names, or your contract's.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::upstream::Usage;

/// USD per million tokens, by the kinds of [`Usage`]; GPT-Live per minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    pub input_text: f64,
    pub input_audio: f64,
    pub input_cached_text: f64,
    pub input_cached_audio: f64,
    pub output_text: f64,
    pub output_audio: f64,
    /// GPT-Live bills session time, not tokens.
    pub live_per_minute: f64,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            input_text: 4.0,
            input_audio: 32.0,
            input_cached_text: 0.4,
            input_cached_audio: 0.4,
            output_text: 16.0,
            output_audio: 64.0,
            live_per_minute: 0.05,
        }
    }
}

/// No price is above this: a typo (a price per token given per million
/// tokens, say) stops start-up instead of inflating every estimate.
const MAX_PRICE: f64 = 10_000.0;

impl PricingConfig {
    /// The prices in the order of [`Usage::KINDS`].
    fn per_million(&self) -> [f64; 6] {
        [
            self.input_text,
            self.input_audio,
            self.input_cached_text,
            self.input_cached_audio,
            self.output_text,
            self.output_audio,
        ]
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let all = Usage::KINDS
            .iter()
            .copied()
            .zip(self.per_million())
            .chain([("live_per_minute", self.live_per_minute)]);
        for (kind, price) in all {
            if !(price.is_finite() && (0.0..=MAX_PRICE).contains(&price)) {
                return Err(ConfigError::key(
                    &format!("pricing.{kind}"),
                    format!("must be a price in USD between 0 and {MAX_PRICE} (got {price})"),
                ));
            }
        }
        Ok(())
    }

    /// The estimated cost of `usage`, in USD.
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        let tokens: f64 = usage
            .tokens()
            .iter()
            .zip(self.per_million())
            .map(|(n, price)| *n as f64 * price / 1e6)
            .sum();
        let seconds = if usage.seconds.is_finite() && usage.seconds > 0.0 {
            usage.seconds
        } else {
            0.0
        };
        tokens + seconds * self.live_per_minute / 60.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_tokens_times_price_per_million_plus_live_minutes() {
        let p = PricingConfig::default();
        let usage = Usage {
            input_text: 1_000_000,
            input_audio: 500_000,
            input_cached_text: 1_000_000,
            input_cached_audio: 2_000_000,
            output_text: 250_000,
            output_audio: 100_000,
            seconds: 0.0,
        };
        // 4 + 16 + 0.4 + 0.8 + 4 + 6.4
        assert!(
            (p.cost_usd(&usage) - 31.6).abs() < 1e-9,
            "{}",
            p.cost_usd(&usage)
        );
        let live = Usage {
            seconds: 90.0,
            ..Usage::default()
        };
        assert!((p.cost_usd(&live) - 0.075).abs() < 1e-12);
        assert_eq!(p.cost_usd(&Usage::default()), 0.0);
        let odd = Usage {
            seconds: f64::NAN,
            ..Usage::default()
        };
        assert_eq!(p.cost_usd(&odd), 0.0);
    }

    #[test]
    fn prices_must_be_finite_and_plausible() {
        assert!(PricingConfig::default().validate().is_ok());
        for bad in [-1.0, f64::INFINITY, f64::NAN, 1e9] {
            let p = PricingConfig {
                output_audio: bad,
                ..PricingConfig::default()
            };
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains("pricing.output_audio"), "{err}");
        }
    }
}
