//! The WebSocket message types both legs of a call share, and the adapter
//! from tokio-tungstenite's socket (the model's leg) to them.
//!
//! The call core sees each socket as a [`Stream`] of [`WsIn`] and a [`Sink`]
//! of [`WsOut`], whatever library carries it (axum for Twilio,
//! tokio-tungstenite for the model), so unit tests drive a whole call through
//! channels. This module sits below both `call` and `upstream`, which keeps
//! the two free of an import cycle.

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

/// A WebSocket message as the call core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsIn {
    /// A text frame (already UTF-8 checked by the WebSocket layer).
    Text(Bytes),
    /// A binary frame: neither peer should send one; only its size is kept.
    Binary(usize),
    /// The peer closed, with its close code if it gave one.
    Close(Option<u16>),
    /// The answer to one of our pings (its payload is not needed: any pong,
    /// like any frame, shows the socket still carries data to us).
    Pong,
}

/// What the call core sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOut {
    Text(String),
    /// A WebSocket ping (RFC 6455 §5.5.2): the peer must answer with a pong,
    /// which is how a socket that silently died is told from a quiet one.
    Ping(Bytes),
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
    /// Try again later: the server filled up between upgrade and `start`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// tungstenite → call core: text frames as bytes (no copy), pongs passed on
/// (they answer the bridge's pings), the peer's pings answered by tungstenite
/// itself, errors end the stream.
pub fn adapt_stream<S>(stream: S) -> impl Stream<Item = WsIn> + Unpin + Send
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send,
{
    stream
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Text(t)) => Some(WsIn::Text(t.into())),
                Ok(Message::Binary(b)) => Some(WsIn::Binary(b.len())),
                Ok(Message::Close(frame)) => Some(WsIn::Close(frame.map(|f| u16::from(f.code)))),
                Ok(Message::Pong(_)) => Some(WsIn::Pong),
                Ok(Message::Ping(_) | Message::Frame(_)) | Err(_) => None,
            })
        })
}

/// call core → tungstenite.
pub fn adapt_sink<S>(sink: S) -> impl Sink<WsOut, Error = tungstenite::Error> + Unpin + Send
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin + Send,
{
    sink.with(|out: WsOut| {
        std::future::ready(Ok::<_, tungstenite::Error>(match out {
            WsOut::Text(text) => Message::Text(text.into()),
            WsOut::Ping(payload) => Message::Ping(payload),
            WsOut::Close(code, reason) => Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            })),
        }))
    })
}
