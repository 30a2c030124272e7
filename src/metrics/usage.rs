//! The model's usage and its estimated cost: `realtime_tokens_total{kind}`
//! (as it happens), the `call_cost_usd` histogram, and per-profile sums
//! (`profile_tokens_total{profile,kind}`, `profile_cost_usd_total{profile}`,
//! counted once per call at its end: profile names come from config, so the
//! label set is bounded).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{AtomicHistogram, Labels1, LabelsOwned};
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
    profile_tokens: Family<LabelsOwned, Counter>,
    profile_cost: Family<LabelsOwned, Counter<f64, AtomicU64>>,
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
        let profile_tokens = Family::<LabelsOwned, Counter>::default();
        r.register(
            "profile_tokens",
            "Model tokens used by the calls of each assistant profile, by kind \
             (counted when each call ends)",
            profile_tokens.clone(),
        );
        let profile_cost = Family::<LabelsOwned, Counter<f64, AtomicU64>>::default();
        r.register(
            "profile_cost_usd",
            "Estimated model cost of the calls of each assistant profile, USD \
             (counted when each call ends; an estimate, not a bill)",
            profile_cost.clone(),
        );
        UsageMetrics {
            tokens,
            call_cost,
            profile_tokens,
            profile_cost,
        }
    }

    /// Adds a finished call's usage and cost to its profile's sums (once per
    /// call: takes the families' locks).
    pub fn count_call(&self, profile: &str, usage: &Usage, cost_usd: f64) {
        for (kind, n) in Usage::KINDS.iter().zip(usage.tokens()) {
            if n > 0 {
                self.profile_tokens
                    .get_or_create(&vec![
                        ("profile".to_owned(), profile.to_owned()),
                        ("kind".to_owned(), (*kind).to_owned()),
                    ])
                    .inc_by(n);
            }
        }
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.profile_cost
                .get_or_create(&vec![("profile".to_owned(), profile.to_owned())])
                .inc_by(cost_usd);
        }
    }

    /// Tokens of `kind` counted for `profile`'s finished calls.
    pub fn profile_tokens(&self, profile: &str, kind: &str) -> u64 {
        self.profile_tokens
            .get_or_create(&vec![
                ("profile".to_owned(), profile.to_owned()),
                ("kind".to_owned(), kind.to_owned()),
            ])
            .get()
    }

    /// Estimated cost counted for `profile`'s finished calls, USD.
    pub fn profile_cost(&self, profile: &str) -> f64 {
        self.profile_cost
            .get_or_create(&vec![("profile".to_owned(), profile.to_owned())])
            .get()
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
