//! Delivering call records: off the call's path, bounded, retried for a
//! bounded time, drained at shutdown.
//!
//! [`SummarySender::send`] returns at once: the record is serialised and a
//! task delivers it, so a call's slot and sockets are released before any
//! delivery starts. At most `summary.max_pending` records are waiting or
//! being retried; beyond that new ones are dropped (counted), so a dead
//! receiver costs a bounded amount of memory. A record is retried with
//! capped exponential backoff and jitter on a network error, a timeout, 408,
//! 429 or 5xx, until `summary.retry_budget_ms` would be exceeded; another
//! status (a 4xx: the receiver refuses it, or a 3xx: redirects are not
//! followed) gives up at once. On shutdown, [`SummarySender::drain`] tries
//! every pending record once more at once and waits for them until a
//! deadline; what is left then is dropped. Each record ends in exactly one
//! of `callbridge_summaries_total{outcome="delivered"|"failed"|"dropped"}`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use super::record::CallRecord;
use super::sign;
use crate::config::{redact_query, ConfigError, Secret, SummaryConfig};
use crate::http_client;
use crate::metrics::{SummaryMetrics, SummaryOutcome};

/// The first retry waits about this long; each next one twice as long…
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// …up to this.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Sends call records to their receivers. Cheap to clone; one per server.
#[derive(Clone)]
pub struct SummarySender {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    secret: Secret,
    timeout: Duration,
    budget: Duration,
    max_pending: usize,
    /// One permit per record waiting or being retried.
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Fired when the drain starts: every record waiting for its next
    /// attempt tries once at once.
    hurry: CancellationToken,
    /// Fired at the drain deadline: whatever is left is dropped.
    stop: CancellationToken,
    metrics: SummaryMetrics,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    /// Worth trying again: a network error, a timeout, 408, 429, 5xx.
    Retry(String),
    /// The receiver will not take it.
    Refused(String),
}

impl SummarySender {
    /// A sender with `config`'s timeouts and bounds, signing with `secret`.
    pub fn new(
        config: &SummaryConfig,
        secret: Secret,
        metrics: SummaryMetrics,
    ) -> Result<SummarySender, ConfigError> {
        let client_error = |e: String| {
            ConfigError::key("summary.url", format!("cannot build the HTTP client: {e}"))
        };
        let client = http_client::builder(http_client::web_roots())
            .map_err(|e| client_error(e.to_string()))?
            .build()
            .map_err(|e| client_error(e.to_string()))?;
        Ok(SummarySender {
            inner: Arc::new(Inner {
                client,
                secret,
                timeout: Duration::from_millis(config.timeout_ms),
                budget: Duration::from_millis(config.retry_budget_ms),
                max_pending: config.max_pending,
                slots: Arc::new(Semaphore::new(config.max_pending)),
                tracker: TaskTracker::new(),
                hurry: CancellationToken::new(),
                stop: CancellationToken::new(),
                metrics,
            }),
        })
    }

    /// Queues `record` for `url` and returns at once.
    pub fn send(&self, url: &Url, record: &CallRecord) {
        let inner = &self.inner;
        let body = match serde_json::to_vec(record) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                // Cannot happen for this type; counted rather than unwrapped.
                inner.metrics.ended(SummaryOutcome::Dropped);
                tracing::error!(error = %e, "call record not serialisable");
                return;
            }
        };
        let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
            inner.metrics.ended(SummaryOutcome::Dropped);
            tracing::warn!(
                max_pending = inner.max_pending,
                "call record dropped: too many records pending"
            );
            return;
        };
        if inner.stop.is_cancelled() {
            inner.metrics.ended(SummaryOutcome::Dropped);
            return;
        }
        let job = Job {
            inner: inner.clone(),
            url: url.clone(),
            body,
            call_sid: record.call_sid.clone(),
            _permit: permit,
        };
        inner.tracker.spawn(job.run());
    }

    /// Records waiting or being retried.
    pub fn pending(&self) -> usize {
        self.inner
            .max_pending
            .saturating_sub(self.inner.slots.available_permits())
    }

    /// Tries every pending record once more at once, then waits for them
    /// until `deadline`; what is still pending then is dropped.
    pub async fn drain(&self, deadline: Instant) {
        let inner = &self.inner;
        let pending = self.pending();
        if pending > 0 {
            tracing::info!(pending, "sending pending call records before exit");
        }
        inner.hurry.cancel();
        inner.tracker.close();
        if tokio::time::timeout_at(deadline, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.pending(),
                "drain deadline: dropping the call records still pending"
            );
            inner.stop.cancel();
            inner.tracker.wait().await;
        }
    }
}

/// One record on its way.
struct Job {
    inner: Arc<Inner>,
    url: Url,
    body: Bytes,
    call_sid: String,
    /// Released when the job ends, however it ends.
    _permit: OwnedSemaphorePermit,
}

impl Job {
    async fn run(self) {
        let inner = self.inner.clone();
        let give_up_at = Instant::now() + inner.budget;
        let mut jitter = Jitter::new(&self.call_sid);
        let mut hurried = false;
        let mut attempts: u32 = 0;
        let outcome = loop {
            attempts = attempts.saturating_add(1);
            let why = tokio::select! {
                attempt = self.attempt() => match attempt {
                    Attempt::Delivered => break SummaryOutcome::Delivered,
                    Attempt::Refused(why) => {
                        inner.metrics.attempts_failed.inc();
                        self.given_up(attempts, &why);
                        break SummaryOutcome::Failed;
                    }
                    Attempt::Retry(why) => why,
                },
                _ = inner.stop.cancelled() => break SummaryOutcome::Dropped,
            };
            inner.metrics.attempts_failed.inc();
            let delay = jitter.delay(attempts);
            if Instant::now() + delay > give_up_at {
                self.given_up(attempts, &why);
                break SummaryOutcome::Failed;
            }
            tracing::debug!(call_sid = %self.call_sid, attempts, error = %why, retry_in_ms = delay.as_millis() as u64, "call record not delivered yet");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Once, when the drain starts: try now, not after the wait.
                _ = inner.hurry.cancelled(), if !hurried => hurried = true,
                _ = inner.stop.cancelled() => break SummaryOutcome::Dropped,
            }
        };
        if outcome == SummaryOutcome::Delivered {
            tracing::debug!(call_sid = %self.call_sid, attempts, "call record delivered");
        }
        inner.metrics.ended(outcome);
    }

    fn given_up(&self, attempts: u32, why: &str) {
        tracing::warn!(
            call_sid = %self.call_sid,
            url = %redact_query(&self.url),
            attempts,
            error = why,
            "call record given up"
        );
    }

    /// One signed POST; the signature's timestamp is the attempt's.
    async fn attempt(&self) -> Attempt {
        let inner = &self.inner;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign::signature(inner.secret.expose().as_bytes(), now, &self.body);
        let sent = inner
            .client
            .post(self.url.clone())
            .timeout(inner.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::HEADER, signature)
            .body(self.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Attempt::Retry(format!("HTTP {}", status.as_u16()))
                } else {
                    Attempt::Refused(format!("HTTP {}", status.as_u16()))
                }
            }
            // The URL may carry a receiver's token in its query: not logged.
            Err(e) if e.is_timeout() => Attempt::Retry("timeout".into()),
            Err(e) => Attempt::Retry(e.without_url().to_string()),
        }
    }
}

/// Capped exponential backoff, ±25 % jitter, so that the records of many
/// calls ended by one outage do not all come back at once.
struct Jitter(u64);

impl Jitter {
    fn new(seed: &str) -> Jitter {
        // FNV-1a of the call SID: varies per record, needs no RNG.
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Jitter(hash | 1)
    }

    /// The wait after attempt `n` (1-based) failed.
    fn delay(&mut self, n: u32) -> Duration {
        let base = BACKOFF_BASE
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(BACKOFF_CAP);
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let jitter = (self.0 % 501) as u32; // 0..=500 → −25 %..+25 %
        base * (750 + jitter) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        let mut j = Jitter::new("CA1");
        let delays: Vec<Duration> = (1..=12).map(|n| j.delay(n)).collect();
        for (n, d) in delays.iter().enumerate() {
            let base = BACKOFF_BASE.saturating_mul(1 << n.min(16)).min(BACKOFF_CAP);
            assert!(*d >= base * 3 / 4 && *d <= base * 5 / 4, "{n}: {d:?}");
        }
        assert!(j.delay(u32::MAX) <= BACKOFF_CAP * 5 / 4);
    }
}
