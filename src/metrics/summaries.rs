//! Call records sent to the summary webhook: `summaries_total{outcome}`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Labels1;

/// How a call record's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: the retry budget ran out, or the receiver refused it (4xx).
    Failed,
    /// Never sent: too many records pending, or still pending when the
    /// drain ended.
    Dropped,
}

impl SummaryOutcome {
    pub const ALL: [SummaryOutcome; 3] = [
        SummaryOutcome::Delivered,
        SummaryOutcome::Failed,
        SummaryOutcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SummaryOutcome::Delivered => "delivered",
            SummaryOutcome::Failed => "failed",
            SummaryOutcome::Dropped => "dropped",
        }
    }
}

/// One counter per outcome, resolved once.
#[derive(Clone, Debug)]
pub struct SummaryMetrics {
    outcomes: [Counter; 3],
    /// Delivery attempts that did not succeed (each retry counts).
    pub attempts_failed: Counter,
}

impl SummaryMetrics {
    pub(super) fn register(r: &mut Registry) -> SummaryMetrics {
        let family = Family::<Labels1, Counter>::default();
        r.register(
            "summaries",
            "Call records for the summary webhook, by how their delivery ended",
            family.clone(),
        );
        let outcomes =
            SummaryOutcome::ALL.map(|o| family.get_or_create(&[("outcome", o.as_str())]).clone());
        let attempts_failed = Counter::default();
        r.register(
            "call_record_attempts_failed",
            "Call record delivery attempts that failed (each retry counts)",
            attempts_failed.clone(),
        );
        SummaryMetrics {
            outcomes,
            attempts_failed,
        }
    }

    pub fn ended(&self, outcome: SummaryOutcome) {
        self.outcomes[outcome as usize].inc();
    }

    pub fn count(&self, outcome: SummaryOutcome) -> u64 {
        self.outcomes[outcome as usize].get()
    }
}
