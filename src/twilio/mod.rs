//! Everything Twilio-specific, as pure functions and types (no I/O).
//!
//! Twilio reaches the bridge three ways, and each has its own module:
//!
//! - [`signature`]: every webhook and the WebSocket upgrade carry
//!   `X-Twilio-Signature`; checking it is the only thing that stops a stranger
//!   from opening (paid) Realtime sessions through us.
//! - [`twiml`]: the answer to `POST /voice` that connects the call to our
//!   Media Stream, or turns the caller away when we are full.
//! - [`token`]: a per-call token carried from that answer to the stream's
//!   `start` message, so that any replica can check that a stream belongs to
//!   the call it claims without shared state.
//! - [`messages`]: the JSON frames of a Media Stream, in both directions (the
//!   reverse direction serves the simulated caller used by tests, demo and load
//!   tests).
//! - [`rest`]: the exception to "no I/O": the client for Twilio's REST API
//!   (hang-up, transfer, outbound calls; `PROTOCOLS.md` §4).
//!
//! The wire formats are described in `PROTOCOLS.md` §1; the signature code is
//! checked against the official `twilio` Python package by
//! `conformance/twilio_signatures.py` and `fixtures/twilio-signatures.json`.

pub mod messages;
pub mod rest;
pub mod signature;
pub mod token;
pub mod twiml;
