//! The OpenAI Realtime protocol: server and client events ([`events`]), the
//! session configuration per dialect ([`session`]), and the socket ([`client`]).

pub mod client;
pub mod events;
pub mod session;
