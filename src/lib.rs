//! callbridge: puts a speech-to-speech model on a Twilio phone number.
//!
//! Twilio streams a call's 8 kHz G.711 μ-law audio over a WebSocket (Media
//! Streams); callbridge relays it to a speech-to-speech model (the OpenAI
//! Realtime protocol, or GPT-Live) and plays the model's answer back to the
//! caller, stopping at once when the caller talks over it.
//!
//! # Layout
//!
//! - [`config`]: typed configuration, defaults ← TOML file ← `CALLBRIDGE_*` env;
//!   secrets from the environment only, redacted in `Debug`.
//! - [`audio`]: pure audio code: G.711 μ-law tables ([`audio::g711`]), the
//!   streaming 8 ⇄ 24 kHz polyphase resampler ([`audio::resample`]), per-call
//!   transcoders, and the offline converter behind `callbridge audio convert`.
//! - [`twilio`]: Twilio protocol code: Media Streams messages, request
//!   signatures, per-call stream tokens, TwiML (pure), and the REST client
//!   for hang-up, transfer and outbound calls.
//! - [`ws`]: the WebSocket message types both legs share, and the adapter
//!   for the model's socket (below both `call` and `upstream`: no cycles).
//! - [`upstream`]: the model side behind one interface ([`upstream::Driver`]):
//!   the OpenAI Realtime protocol (GA, legacy beta, Azure) and GPT-Live as
//!   pure protocol drivers, and the client socket (the one module that
//!   touches it).
//! - [`call`]: one call: the Media Stream handshake, the relay loop (generic
//!   over `Sink`/`Stream` and over the driver; reconnection and rollover),
//!   the pure pacing + mark ledger behind barge-in, the tool runner interface
//!   and HTTP tools, the built-in call control (`end_call`, transfer), and
//!   pre-warm (a session opened and configured before its stream starts,
//!   parked by CallSid).
//! - [`http_client`]: the one builder of outgoing HTTP clients (tools,
//!   Twilio's REST API, call records): our rustls config, no redirects.
//! - [`metrics`]: every Prometheus metric, defined once; lock-free on the
//!   per-frame path.
//! - [`outbound`]: outbound calls: `POST /calls` on the admin port (checked
//!   request, TwiML with a reference-bound stream token, `Calls.json`), the
//!   pending calls whose context reaches the model, status callbacks, and
//!   the client behind `callbridge dial`.
//! - [`summary`]: call records: their JSON shape, their signature
//!   (`X-Callbridge-Signature`) and their delivery to the summary webhook
//!   (bounded, retried, drained at shutdown).
//! - [`server`]: the axum server: the public port (`/voice`, `/media`,
//!   `/stream-status`) and the admin port (`/metrics`, `/healthz`,
//!   `/readyz`); profiles, admission control and graceful drain.
//! - [`serve`]: the accept loop under both ports: hyper's header-read timer
//!   and a cap on open connections.
//!
//! The test tooling (the local model peer, the simulated Twilio caller, the
//! demo and the load generator) lives in its own crate, `callbridge-sim`
//! (`sim/`), and the `callbridge` command in `callbridge-cli` (`cli/`): both
//! use only this crate's public API, and the service carries no test code.
#![forbid(unsafe_code)]

pub mod audio;
pub mod call;
pub mod config;
pub mod http_client;
pub mod metrics;
pub mod outbound;
pub mod serve;
pub mod server;
pub mod summary;
pub mod twilio;
pub mod upstream;
pub mod ws;
