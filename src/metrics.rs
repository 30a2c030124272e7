//! Every metric, defined in one place, on one registry.
//!
//! The per-frame path must take no lock shared across calls. prometheus-client
//! families guard their label map with a lock and its histogram takes a lock
//! per observation, so: every labelled series the bridge touches is resolved
//! once here into a plain handle (a clone of the family's own atomic), and
//! histograms are [`AtomicHistogram`], a lock-free histogram that encodes
//! through prometheus-client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

mod prewarm;
mod summaries;
mod usage;

pub use prewarm::{PrewarmMetrics, PrewarmResult};
pub use summaries::{SummaryMetrics, SummaryOutcome};
pub use usage::UsageMetrics;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
/// Labels whose values come from config (tool names): bounded, but not static.
type LabelsOwned = Vec<(String, String)>;

/// Latency buckets, seconds: fine below 10 ms (relay, barge-in), coarse above.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A histogram whose `observe` is a few relaxed atomic adds.
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<HistInner>,
}

#[derive(Debug)]
struct HistInner {
    bounds: &'static [f64],
    /// One per bound plus +Inf; per-bucket (not cumulative) counts.
    counts: Vec<AtomicU64>,
    /// Sum in nanoseconds (or nano-units), so it can be an integer atomic.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        AtomicHistogram {
            inner: Arc::new(HistInner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self.inner.bounds.partition_point(|b| *b < value);
        if let Some(c) = self.inner.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = (value.max(0.0) * 1e9) as u64;
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Total observations, for tests and reports.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn sum(&self) -> f64 {
        self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self
            .inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect();
        let count = counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Clone)]
struct HistCtor(&'static [f64]);

impl MetricConstructor<AtomicHistogram> for HistCtor {
    fn new_metric(&self) -> AtomicHistogram {
        AtomicHistogram::new(self.0)
    }
}

/// How a call ended (`calls_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Twilio sent `stop` (the caller or Twilio ended the call).
    Completed,
    /// The Twilio socket closed without `stop`.
    CallerGone,
    /// The model's socket was lost or refused.
    UpstreamFailed,
    /// Turned away: over `max_calls` or draining.
    Rejected,
    /// Failed the handshake: signature, token, `start`, media format.
    Unauthorized,
    /// Too many bad frames, or a stalled peer.
    ProtocolError,
    /// Closed by the server at the end of a drain.
    Drained,
    /// Nothing from Twilio for `twilio.idle_timeout_ms`: a dead stream.
    IdleTimeout,
    /// The call reached `max_call_secs`.
    MaxDuration,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Completed,
        Outcome::CallerGone,
        Outcome::UpstreamFailed,
        Outcome::Rejected,
        Outcome::Unauthorized,
        Outcome::ProtocolError,
        Outcome::Drained,
        Outcome::IdleTimeout,
        Outcome::MaxDuration,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::CallerGone => "caller_gone",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Rejected => "rejected",
            Outcome::Unauthorized => "unauthorized",
            Outcome::ProtocolError => "protocol_error",
            Outcome::Drained => "drained",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::MaxDuration => "max_duration",
        }
    }
}

/// Why a message was rejected (`messages_rejected_total{source,reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    UnknownEvent,
    BadBase64,
    Oversize,
    Binary,
    BadAudio,
}

impl Reject {
    const ALL: [Reject; 6] = [
        Reject::Malformed,
        Reject::UnknownEvent,
        Reject::BadBase64,
        Reject::Oversize,
        Reject::Binary,
        Reject::BadAudio,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::UnknownEvent => "unknown_event",
            Reject::BadBase64 => "bad_base64",
            Reject::Oversize => "oversize",
            Reject::Binary => "binary",
            Reject::BadAudio => "bad_audio",
        }
    }
}

/// A Twilio REST operation (`twilio_api_requests_total{op}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwilioOp {
    /// `Status=completed` on a live call.
    Hangup,
    /// A TwiML update (`<Dial>`) on a live call.
    Transfer,
    /// `POST Calls.json`: an outbound call.
    CreateCall,
}

impl TwilioOp {
    pub const ALL: [TwilioOp; 3] = [TwilioOp::Hangup, TwilioOp::Transfer, TwilioOp::CreateCall];
    pub fn as_str(self) -> &'static str {
        match self {
            TwilioOp::Hangup => "hangup",
            TwilioOp::Transfer => "transfer",
            TwilioOp::CreateCall => "create_call",
        }
    }
}

/// How one Twilio REST request ended (`twilio_api_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwilioOutcome {
    /// A 2xx answer.
    Ok,
    /// 404 with Twilio error 20404: the call is already over.
    NotFound,
    /// Any other HTTP error, a connection failure, or an unreadable answer.
    Error,
    /// No answer within the request timeout.
    Timeout,
}

impl TwilioOutcome {
    pub const ALL: [TwilioOutcome; 4] = [
        TwilioOutcome::Ok,
        TwilioOutcome::NotFound,
        TwilioOutcome::Error,
        TwilioOutcome::Timeout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TwilioOutcome::Ok => "ok",
            TwilioOutcome::NotFound => "not_found",
            TwilioOutcome::Error => "error",
            TwilioOutcome::Timeout => "timeout",
        }
    }
}

/// An outbound call's progress as Twilio's status callback reports it
/// (`outbound_calls_total{outcome}`): a fixed set, so the label is bounded
/// whatever `CallStatus` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundOutcome {
    Initiated,
    Ringing,
    /// `in-progress`: the callee picked up.
    Answered,
    Completed,
    Busy,
    /// `no-answer`.
    NoAnswer,
    Failed,
    Canceled,
    /// A status this version does not know (`queued`, or something new).
    Other,
}

impl OutboundOutcome {
    pub const ALL: [OutboundOutcome; 9] = [
        OutboundOutcome::Initiated,
        OutboundOutcome::Ringing,
        OutboundOutcome::Answered,
        OutboundOutcome::Completed,
        OutboundOutcome::Busy,
        OutboundOutcome::NoAnswer,
        OutboundOutcome::Failed,
        OutboundOutcome::Canceled,
        OutboundOutcome::Other,
    ];

    /// From Twilio's `CallStatus` value.
    pub fn from_call_status(status: &str) -> Self {
        match status {
            "initiated" => OutboundOutcome::Initiated,
            "ringing" => OutboundOutcome::Ringing,
            "in-progress" | "answered" => OutboundOutcome::Answered,
            "completed" => OutboundOutcome::Completed,
            "busy" => OutboundOutcome::Busy,
            "no-answer" => OutboundOutcome::NoAnswer,
            "failed" => OutboundOutcome::Failed,
            "canceled" => OutboundOutcome::Canceled,
            _ => OutboundOutcome::Other,
        }
    }

    /// The call is over: no stream will come for it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OutboundOutcome::Completed
                | OutboundOutcome::Busy
                | OutboundOutcome::NoAnswer
                | OutboundOutcome::Failed
                | OutboundOutcome::Canceled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutboundOutcome::Initiated => "initiated",
            OutboundOutcome::Ringing => "ringing",
            OutboundOutcome::Answered => "answered",
            OutboundOutcome::Completed => "completed",
            OutboundOutcome::Busy => "busy",
            OutboundOutcome::NoAnswer => "no_answer",
            OutboundOutcome::Failed => "failed",
            OutboundOutcome::Canceled => "canceled",
            OutboundOutcome::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Twilio,
    Model,
}

/// Pre-resolved series for one label combination each.
#[derive(Clone)]
pub struct Rejects {
    twilio: [Counter; 6],
    model: [Counter; 6],
}

impl Rejects {
    pub fn inc(&self, source: Source, reason: Reject) {
        let i = Reject::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        let set = match source {
            Source::Twilio => &self.twilio,
            Source::Model => &self.model,
        };
        set[i].inc();
    }
}

/// Handles to every metric. Cheap to clone (all `Arc`s); one per process.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub calls_active: Gauge,
    pub calls_max: Gauge,
    pub draining: Gauge,
    calls_total: Family<Labels1, Counter>,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub dropped_in_gap: Counter,
    pub dropped_out_stale: Counter,
    pub dropped_out_overflow: Counter,
    pub dropped_in_not_ready: Counter,
    /// Caller audio dropped because more arrived while reconnecting than is kept.
    pub dropped_in_reconnect: Counter,
    /// Audio later than `audio.max_lag_ms`, dropped rather than delivered
    /// late (counted in 20 ms frames).
    pub dropped_in_late: Counter,
    pub dropped_out_late: Counter,
    pub rejected: Rejects,
    pub bargeins: Counter,
    pub truncations_sent: Counter,
    pub truncations_skipped: Counter,
    pub upstream_reconnects: Family<Labels1, Counter>,
    /// Tokens by kind, and each call's estimated cost.
    pub usage: UsageMetrics,
    /// Call records for the summary webhook.
    pub summaries: SummaryMetrics,
    /// Pre-warmed model sessions and the model-ready time.
    pub prewarm: PrewarmMetrics,
    pub model_seconds: Counter<f64, AtomicU64>,
    pub dtmf_digits: Counter,
    tool_calls: Family<LabelsOwned, Counter>,
    tool_duration: Family<LabelsOwned, AtomicHistogram, HistCtor>,
    errors_total: Family<Labels1, Counter>,
    twilio_api_requests: Family<Labels2, Counter>,
    outbound_calls: Family<Labels1, Counter>,
    pub turn_latency: AtomicHistogram,
    pub first_audio: AtomicHistogram,
    pub bargein_latency: AtomicHistogram,
    pub relay_in: AtomicHistogram,
    pub relay_out: AtomicHistogram,
    pub upstream_connect: AtomicHistogram,
    pub call_duration: AtomicHistogram,
    pub playout_lead: AtomicHistogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("callbridge");
        let calls_active = Gauge::default();
        r.register("calls_active", "Calls in progress", calls_active.clone());
        let calls_max = Gauge::default();
        r.register(
            "calls_max",
            "Admission limit (max_calls)",
            calls_max.clone(),
        );
        let draining = Gauge::default();
        r.register(
            "draining",
            "1 while the server drains after SIGTERM",
            draining.clone(),
        );

        let calls_total = Family::<Labels1, Counter>::default();
        r.register("calls", "Calls ended, by outcome", calls_total.clone());
        for o in Outcome::ALL {
            let _ = calls_total.get_or_create(&[("outcome", o.as_str())]);
        }

        let frames = Family::<Labels1, Counter>::default();
        r.register(
            "frames",
            "Media frames relayed, by direction",
            frames.clone(),
        );
        let frames_in = frames.get_or_create(&[("direction", "inbound")]).clone();
        let frames_out = frames.get_or_create(&[("direction", "outbound")]).clone();

        let dropped = Family::<Labels2, Counter>::default();
        r.register(
            "frames_dropped",
            "Media frames dropped or lost, by direction and reason",
            dropped.clone(),
        );
        let dropped_in_gap = dropped
            .get_or_create(&[("direction", "inbound"), ("reason", "sequence_gap")])
            .clone();
        let dropped_out_stale = dropped
            .get_or_create(&[("direction", "outbound"), ("reason", "cancelled_response")])
            .clone();
        let dropped_out_overflow = dropped
            .get_or_create(&[("direction", "outbound"), ("reason", "queue_full")])
            .clone();
        let dropped_in_reconnect = dropped
            .get_or_create(&[("direction", "inbound"), ("reason", "reconnect_overflow")])
            .clone();
        let dropped_in_not_ready = dropped
            .get_or_create(&[("direction", "inbound"), ("reason", "session_not_ready")])
            .clone();
        let dropped_in_late = dropped
            .get_or_create(&[("direction", "inbound"), ("reason", "late")])
            .clone();
        let dropped_out_late = dropped
            .get_or_create(&[("direction", "outbound"), ("reason", "late")])
            .clone();

        let rejected_family = Family::<Labels2, Counter>::default();
        r.register(
            "messages_rejected",
            "Messages dropped as invalid, by source and reason",
            rejected_family.clone(),
        );
        let resolve = |source: &'static str| {
            Reject::ALL.map(|reason| {
                rejected_family
                    .get_or_create(&[("source", source), ("reason", reason.as_str())])
                    .clone()
            })
        };
        let rejected = Rejects {
            twilio: resolve("twilio"),
            model: resolve("model"),
        };

        let bargeins = Counter::default();
        r.register(
            "bargeins",
            "Barge-ins: caller spoke over playing audio",
            bargeins.clone(),
        );
        let truncations = Family::<Labels1, Counter>::default();
        r.register(
            "truncations",
            "conversation.item.truncate decisions, by result",
            truncations.clone(),
        );
        let truncations_sent = truncations.get_or_create(&[("result", "sent")]).clone();
        let truncations_skipped = truncations.get_or_create(&[("result", "skipped")]).clone();

        let upstream_reconnects = Family::<Labels1, Counter>::default();
        r.register(
            "upstream_reconnects",
            "Reconnections to the Realtime endpoint, by result",
            upstream_reconnects.clone(),
        );
        let usage = UsageMetrics::register(&mut r);
        let summaries = SummaryMetrics::register(&mut r);
        let prewarm = PrewarmMetrics::register(&mut r);
        let model_seconds = Counter::<f64, AtomicU64>::default();
        r.register(
            "model_session_seconds",
            "Model session time billed by the second (GPT-Live), as reported by the model",
            model_seconds.clone(),
        );
        let dtmf_digits = Counter::default();
        r.register(
            "dtmf_digits",
            "Keypad digits received (counted only: they may be PINs)",
            dtmf_digits.clone(),
        );
        let tool_calls = Family::<LabelsOwned, Counter>::default();
        r.register(
            "tool_calls",
            "Tool calls run for the model, by tool name and outcome",
            tool_calls.clone(),
        );
        let errors_total = Family::<Labels1, Counter>::default();
        r.register("errors", "Errors, by kind", errors_total.clone());
        let twilio_api_requests = Family::<Labels2, Counter>::default();
        r.register(
            "twilio_api_requests",
            "Requests to Twilio's REST API (each retry counts), by operation and outcome",
            twilio_api_requests.clone(),
        );
        for op in TwilioOp::ALL {
            for outcome in TwilioOutcome::ALL {
                let _ = twilio_api_requests
                    .get_or_create(&[("op", op.as_str()), ("outcome", outcome.as_str())]);
            }
        }
        let outbound_calls = Family::<Labels1, Counter>::default();
        r.register(
            "outbound_calls",
            "Outbound calls' progress as Twilio's status callbacks report it, by outcome",
            outbound_calls.clone(),
        );
        for outcome in OutboundOutcome::ALL {
            let _ = outbound_calls.get_or_create(&[("outcome", outcome.as_str())]);
        }

        let mut hist = |name: &str, help: &str, buckets: &'static [f64]| {
            let h = AtomicHistogram::new(buckets);
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
            h
        };
        let turn_latency = hist(
            "turn_latency",
            "Caller stops speaking to first answer audio sent to Twilio",
            LATENCY_BUCKETS,
        );
        let first_audio = hist(
            "first_audio",
            "Call start to first answer audio sent",
            LATENCY_BUCKETS,
        );
        let bargein_latency = hist(
            "bargein_latency",
            "speech_started received to Twilio clear sent",
            LATENCY_BUCKETS,
        );
        let upstream_connect = hist(
            "upstream_connect",
            "Time to open the Realtime WebSocket",
            LATENCY_BUCKETS,
        );
        let call_duration = hist("call_duration", "Call duration", DURATION_BUCKETS);
        let playout_lead = hist(
            "playout_lead",
            "Audio queued at Twilio ahead of real time, sampled per chunk sent",
            LATENCY_BUCKETS,
        );
        let relay = Family::<Labels1, AtomicHistogram, HistCtor>::new_with_constructor(HistCtor(
            LATENCY_BUCKETS,
        ));
        r.register_with_unit(
            "relay_latency",
            "Message in to message out inside the bridge, by direction",
            Unit::Seconds,
            relay.clone(),
        );
        let relay_in = relay.get_or_create(&[("direction", "inbound")]).clone();
        let relay_out = relay.get_or_create(&[("direction", "outbound")]).clone();
        let tool_duration = Family::<LabelsOwned, AtomicHistogram, HistCtor>::new_with_constructor(
            HistCtor(LATENCY_BUCKETS),
        );
        r.register_with_unit(
            "tool_duration",
            "Time a tool call took, by tool name",
            Unit::Seconds,
            tool_duration.clone(),
        );

        Metrics {
            registry: Arc::new(r),
            calls_active,
            calls_max,
            draining,
            calls_total,
            frames_in,
            frames_out,
            dropped_in_gap,
            dropped_out_stale,
            dropped_out_overflow,
            dropped_in_not_ready,
            dropped_in_reconnect,
            dropped_in_late,
            dropped_out_late,
            rejected,
            bargeins,
            truncations_sent,
            truncations_skipped,
            upstream_reconnects,
            usage,
            summaries,
            prewarm,
            model_seconds,
            dtmf_digits,
            tool_calls,
            tool_duration,
            errors_total,
            twilio_api_requests,
            outbound_calls,
            turn_latency,
            first_audio,
            bargein_latency,
            relay_in,
            relay_out,
            upstream_connect,
            call_duration,
            playout_lead,
        }
    }

    /// Once per call: not on the per-frame path, so the family lookup is fine.
    pub fn call_ended(&self, outcome: Outcome) {
        self.calls_total
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn calls_total(&self, outcome: Outcome) -> u64 {
        self.calls_total
            .get_or_create(&[("outcome", outcome.as_str())])
            .get()
    }

    /// Once per tool call. `name` comes from config, so the label set is bounded.
    pub fn tool_call(&self, name: &str, outcome: &'static str, took: Duration) {
        self.tool_calls
            .get_or_create(&vec![
                ("name".to_owned(), name.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
        self.tool_duration
            .get_or_create(&vec![("name".to_owned(), name.to_owned())])
            .observe_duration(took);
    }

    pub fn tool_calls(&self, name: &str, outcome: &str) -> u64 {
        self.tool_calls
            .get_or_create(&vec![
                ("name".to_owned(), name.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .get()
    }

    /// A reconnect or rollover outcome: ok, failed, rollover, rollover_failed.
    pub fn reconnect(&self, result: &'static str) {
        self.upstream_reconnects
            .get_or_create(&[("result", result)])
            .inc();
    }

    pub fn reconnects(&self, result: &'static str) -> u64 {
        self.upstream_reconnects
            .get_or_create(&[("result", result)])
            .get()
    }

    /// Rare events only (errors, reconnects): takes the family's lock.
    pub fn error(&self, kind: &'static str) {
        self.errors_total.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn errors(&self, kind: &'static str) -> u64 {
        self.errors_total.get_or_create(&[("kind", kind)]).get()
    }

    /// Once per Twilio REST request (a rare event: takes the family's lock).
    pub fn twilio_api_request(&self, op: TwilioOp, outcome: TwilioOutcome) {
        self.twilio_api_requests
            .get_or_create(&[("op", op.as_str()), ("outcome", outcome.as_str())])
            .inc();
    }

    pub fn twilio_api_requests(&self, op: TwilioOp, outcome: TwilioOutcome) -> u64 {
        self.twilio_api_requests
            .get_or_create(&[("op", op.as_str()), ("outcome", outcome.as_str())])
            .get()
    }

    /// Once per status callback of an outbound call.
    pub fn outbound_call(&self, outcome: OutboundOutcome) {
        self.outbound_calls
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn outbound_calls(&self, outcome: OutboundOutcome) -> u64 {
        self.outbound_calls
            .get_or_create(&[("outcome", outcome.as_str())])
            .get()
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    ///
    /// prometheus-client writes OpenMetrics, where a counter's family is
    /// named without `_total` and `# UNIT`/`# EOF` lines appear. Prometheus
    /// scrapes that fine, but the classic text format is what every tool
    /// reads (promtool checks it), so the few differing lines are rewritten.
    pub fn encode(&self) -> String {
        let mut om = String::with_capacity(16 << 10);
        if prometheus_client::encoding::text::encode(&mut om, &self.registry).is_err() {
            return String::new();
        }
        to_prometheus_text(&om)
    }
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_sum() {
        let h = AtomicHistogram::new(&[0.001, 0.01]);
        h.observe(0.0005);
        h.observe(0.001);
        h.observe(0.005);
        h.observe(5.0);
        assert_eq!(h.count(), 4);
        assert!((h.sum() - 5.0065).abs() < 1e-6);
        let m = Metrics::new();
        m.relay_in.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains(
                "callbridge_relay_latency_seconds_bucket{le=\"0.0025\",direction=\"inbound\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("callbridge_relay_latency_seconds_count{direction=\"inbound\"} 1"));
    }

    #[test]
    fn outbound_outcomes_are_bounded() {
        for (status, want) in [
            ("initiated", "initiated"),
            ("ringing", "ringing"),
            ("in-progress", "answered"),
            ("completed", "completed"),
            ("busy", "busy"),
            ("no-answer", "no_answer"),
            ("failed", "failed"),
            ("canceled", "canceled"),
            ("queued", "other"),
            ("", "other"),
            ("<script>", "other"),
        ] {
            assert_eq!(OutboundOutcome::from_call_status(status).as_str(), want);
        }
        let m = Metrics::new();
        m.outbound_call(OutboundOutcome::from_call_status("no-answer"));
        let text = m.encode();
        assert!(text.contains("callbridge_outbound_calls_total{outcome=\"no_answer\"} 1"));
        assert!(text.contains("callbridge_outbound_calls_total{outcome=\"other\"} 0"));
        assert!(OutboundOutcome::Busy.is_final() && !OutboundOutcome::Ringing.is_final());
    }

    #[test]
    fn twilio_api_requests_are_counted_per_op_and_outcome() {
        let m = Metrics::new();
        m.twilio_api_request(TwilioOp::Hangup, TwilioOutcome::NotFound);
        m.twilio_api_request(TwilioOp::Hangup, TwilioOutcome::NotFound);
        m.twilio_api_request(TwilioOp::Transfer, TwilioOutcome::Ok);
        assert_eq!(
            m.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::NotFound),
            2
        );
        assert_eq!(
            m.twilio_api_requests(TwilioOp::Transfer, TwilioOutcome::Ok),
            1
        );
        assert_eq!(
            m.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Ok),
            0
        );
        let text = m.encode();
        let series = "callbridge_twilio_api_requests_total{";
        assert!(
            text.contains(&format!("{series}op=\"hangup\",outcome=\"not_found\"}} 2")),
            "{text}"
        );
        // Every combination is exported from the start (bounded: 3 x 4).
        assert_eq!(text.matches(series).count(), 12);
    }

    #[test]
    fn every_designed_metric_is_exposed() {
        let m = Metrics::new();
        m.call_ended(Outcome::Completed);
        m.error("test");
        m.upstream_reconnects
            .get_or_create(&[("result", "ok")])
            .inc();
        let text = m.encode();
        for name in [
            "callbridge_calls_active ",
            "callbridge_calls_max ",
            "callbridge_draining ",
            "callbridge_calls_total{outcome=\"completed\"} 1",
            "callbridge_frames_total{direction=\"inbound\"}",
            "callbridge_frames_dropped_total{",
            "callbridge_messages_rejected_total{source=\"twilio\",reason=\"malformed\"}",
            "callbridge_bargeins_total ",
            "callbridge_truncations_total{result=\"sent\"}",
            "callbridge_upstream_reconnects_total{result=\"ok\"} 1",
            "callbridge_realtime_tokens_total{kind=\"input_audio\"} 0",
            "callbridge_realtime_tokens_total{kind=\"output_audio\"} 0",
            "callbridge_call_cost_usd_bucket",
            "callbridge_summaries_total{outcome=\"delivered\"} 0",
            "callbridge_summaries_total{outcome=\"dropped\"} 0",
            "callbridge_errors_total{kind=\"test\"} 1",
            "callbridge_turn_latency_seconds_bucket",
            "callbridge_first_audio_seconds_bucket",
            "callbridge_bargein_latency_seconds_bucket",
            "callbridge_relay_latency_seconds_count{direction=\"outbound\"}",
            "callbridge_upstream_connect_seconds_bucket",
            "callbridge_call_duration_seconds_bucket",
            "callbridge_playout_lead_seconds_bucket",
            "callbridge_twilio_api_requests_total{op=\"create_call\",outcome=\"timeout\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
