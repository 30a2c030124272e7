//! Call records: at the end of each call, a JSON record of it is POSTed to
//! the summary webhook (`summary.url`, or the profile's `summary_url`),
//! signed so that the receiver can tell it came from this bridge.
//!
//! - [`record`]: the record's JSON shape ([`CallRecord`]), built from the
//!   bridge's [`crate::call::bridge::CallSummary`]. No audio, no tool
//!   arguments or results; the transcript is there (it is what the record
//!   is for), so the receiver must treat records as the callers' data.
//! - [`sign`]: `X-Callbridge-Signature: t=<unix seconds>,v1=<hex
//!   HMAC-SHA256(secret, "<t>.<body>")>`, and its check.
//! - [`deliver`]: the sender: bounded, off the call's path, retried with
//!   backoff for a bounded time, drained at shutdown; outcomes counted in
//!   `callbridge_summaries_total{outcome}`.

pub mod deliver;
pub mod record;
pub mod sign;

pub use deliver::SummarySender;
pub use record::CallRecord;
