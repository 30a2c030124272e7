//! One phone call: the handshake that admits a Media Stream ([`handshake`]),
//! the relay between Twilio and the model ([`bridge`]), and the pure pacing
//! and mark ledger behind barge-in ([`playout`]).
//!
//! The bridge sees both sockets as a [`Stream`](futures_util::Stream) of
//! [`WsIn`] and a [`Sink`](futures_util::Sink) of [`WsOut`], whatever library
//! carries them (axum for Twilio, tokio-tungstenite for the model), so unit
//! tests can drive a whole call through channels.

pub mod bridge;
pub mod handshake;
pub mod playout;

use bytes::Bytes;

/// A WebSocket message as the bridge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsIn {
    /// A text frame (already UTF-8 checked by the WebSocket layer).
    Text(Bytes),
    /// A binary frame: neither peer should send one; only its size is kept.
    Binary(usize),
    /// The peer closed, with its close code if it gave one.
    Close(Option<u16>),
}

/// What the bridge sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOut {
    Text(String),
    Close(u16, &'static str),
}

/// WebSocket close codes the bridge uses.
pub mod close_code {
    /// Normal end of the call.
    pub const NORMAL: u16 = 1000;
    /// Server going away (drain finished).
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation: failed handshake, bad token, too many bad frames.
    pub const POLICY: u16 = 1008;
    /// Internal error: the model could not be reached.
    pub const INTERNAL: u16 = 1011;
}
