//! The model's usage and its estimated cost: `realtime_tokens_total{kind}`
//! and the `call_cost_usd` histogram.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{AtomicHistogram, Labels1};
use crate::upstream::Usage;

/// Per-call cost buckets, USD: a short call costs cents, a long one dollars.
const COST_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Token counters by kind (bounded: [`Usage::KINDS`]) and the cost histogram.
#[derive(Clone, Debug)]
pub struct UsageMetrics {
    tokens: [Counter; 6],
    /// The estimated cost of each call that reached the model, USD.
    pub call_cost: AtomicHistogram,
}

impl UsageMetrics {
    pub(super) fn register(r: &mut Registry) -> UsageMetrics {
        let family = Family::<Labels1, Counter>::default();
        r.register(
            "realtime_tokens",
            "Model tokens used, by kind (input_text, input_audio, input_cached_text, \
             input_cached_audio, output_text, output_audio)",
            family.clone(),
        );
        let tokens = Usage::KINDS.map(|kind| family.get_or_create(&[("kind", kind)]).clone());
        let call_cost = AtomicHistogram::new(COST_BUCKETS);
        r.register(
            "call_cost_usd",
            "Estimated model cost per call, USD ([pricing]; an estimate, not a bill)",
            call_cost.clone(),
        );
        UsageMetrics { tokens, call_cost }
    }

    /// Counts one increment of usage (a `response.done`, say).
    pub fn count(&self, usage: &Usage) {
        for (counter, n) in self.tokens.iter().zip(usage.tokens()) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// Tokens counted so far of `kind` (one of [`Usage::KINDS`]).
    pub fn tokens(&self, kind: &str) -> u64 {
        Usage::KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.tokens[i].get())
    }
}
