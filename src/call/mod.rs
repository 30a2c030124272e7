//! One phone call: the handshake that admits a Media Stream ([`handshake`]),
//! the relay between Twilio and the model ([`bridge`]), and the pure pacing
//! and mark ledger behind barge-in ([`playout`]), and what runs the model's
//! function calls ([`tools`], and [`http_tools`] for the configured HTTP tools).
//! A call's model session may be opened before its stream starts
//! ([`prewarm`]) and wait for it by CallSid ([`parked`]).
//!
//! The bridge sees both sockets as a [`Stream`](futures_util::Stream) of
//! [`WsIn`] and a [`Sink`](futures_util::Sink) of [`WsOut`] (see [`crate::ws`]),
//! and the model through the [`crate::upstream::Driver`] interface, so it
//! does not know which model protocol a call uses.

pub mod bridge;
pub mod control;
pub mod handshake;
pub mod http_tools;
pub mod parked;
pub mod playout;
pub mod prewarm;
pub mod reconnect;
pub mod tools;

pub use crate::ws::{close_code, WsIn, WsOut};
