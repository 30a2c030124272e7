//! Pre-warmed model sessions (`prewarm_total{result}`) and the time from a
//! stream's `start` to its model session being ready (`model_ready_seconds`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::{AtomicHistogram, Labels1, LATENCY_BUCKETS};

/// What became of a pre-warmed session, or of a stream's look for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrewarmResult {
    /// The stream found its session parked, opened and configured.
    Hit,
    /// The stream found none (another replica answered the webhook,
    /// pre-warm is off, full, or failed): it connected as before.
    Miss,
    /// A parked session's stream never came: it was closed after the
    /// stream token's lifetime.
    Expired,
}

impl PrewarmResult {
    pub const ALL: [PrewarmResult; 3] = [Self::Hit, Self::Miss, Self::Expired];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Expired => "expired",
        }
    }
}

/// `callbridge_prewarm_total{result}` (three series, resolved once) and
/// `callbridge_model_ready_seconds`.
#[derive(Clone, Debug)]
pub struct PrewarmMetrics {
    results: [Counter; 3],
    /// A stream's `start` accepted → its model session configured (at once
    /// for a pre-warmed one): the wait the caller's first turn cannot avoid.
    pub model_ready: AtomicHistogram,
}

impl PrewarmMetrics {
    pub(super) fn register(r: &mut Registry) -> PrewarmMetrics {
        let family = Family::<Labels1, Counter>::default();
        r.register(
            "prewarm",
            "Pre-warmed model sessions, by result (hit, miss, expired)",
            family.clone(),
        );
        let results =
            PrewarmResult::ALL.map(|r| family.get_or_create(&[("result", r.as_str())]).clone());
        let model_ready = AtomicHistogram::new(LATENCY_BUCKETS);
        r.register_with_unit(
            "model_ready",
            "Stream start accepted to the model session configured (zero wait when pre-warmed)",
            Unit::Seconds,
            model_ready.clone(),
        );
        PrewarmMetrics {
            results,
            model_ready,
        }
    }

    pub fn count(&self, result: PrewarmResult) {
        self.results[result as usize].inc();
    }

    pub fn get(&self, result: PrewarmResult) -> u64 {
        self.results[result as usize].get()
    }
}
