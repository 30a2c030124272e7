//! `echo-realtime`: a local stand-in for a Realtime model. **A test tool,
//! not a model.**
//!
//! It speaks the OpenAI Realtime WebSocket protocol (PROTOCOLS.md §2, GA and
//! beta dialects) well enough for the bridge to hold a real call against it
//! with no API key and no network: smoke tests, `callbridge demo` and
//! `callbridge loadtest` use it, in process through [`serve`] or as the
//! `callbridge echo-realtime` command.
//!
//! It is written from the protocol reference, independently of the bridge's
//! own parser (`realtime::events`), so that it checks the bridge's reading
//! of the protocol instead of repeating it.
//!
//! Two modes ([`EchoMode`]):
//!
//! - **turn** (default): behaves like a conversational model. An energy VAD
//!   ([`vad`], RMS over 20 ms windows above [`DEFAULT_THRESHOLD_DBFS`] for
//!   60 ms) emits `speech_started`/`speech_stopped`, commits the turn, and a
//!   response speaks the caller's own words back (from 300 ms before the
//!   speech to its end) with the full event sequence of a real response:
//!   audio deltas of varying sizes (20/40/100/60 ms, cycled), sent about
//!   twice as fast as real time as the real service does, interleaved with
//!   transcript deltas. Barge-in, `response.cancel`, `conversation.item.truncate`
//!   and manual turns (`turn_detection: null`) behave as PROTOCOLS.md says.
//! - **loopback**: for load tests. No VAD and no turns: every
//!   `input_audio_buffer.append` is answered at once by one audio delta with
//!   the same audio (byte-identical when input and output formats match)
//!   inside one long-lived response, so a load generator can time each
//!   frame's relay through the bridge with nothing added by the peer.
//!
//! Dialect: beta (`response.audio.delta`, …) when the upgrade request has
//! `OpenAI-Beta: realtime=v1`, GA otherwise. Any path is accepted.
//!
//! Scale: one task per session and no state shared between sessions beyond
//! an id counter, so thousands of sessions fit on one core; in loopback mode
//! an append is parsed into a small borrowed struct and answered with one
//! hand-written JSON string, with no `serde_json::Value`.

mod audio;
mod errors;
mod session;
mod session_config;
mod vad;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use session::Session;
pub use vad::DEFAULT_THRESHOLD_DBFS;

/// How long a client has to complete the WebSocket upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`serve`] waits, after shutdown, for sessions to close politely.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the peer does with the caller's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EchoMode {
    /// Detect turns by energy and speak each one back, like a model would.
    #[default]
    Turn,
    /// Answer every audio frame at once with the same audio (load tests).
    Loopback,
}

impl EchoMode {
    /// The name used on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            EchoMode::Turn => "turn",
            EchoMode::Loopback => "loopback",
        }
    }
}

impl fmt::Display for EchoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`EchoMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown echo mode {0:?} (expected \"turn\" or \"loopback\")")]
pub struct ParseEchoModeError(pub String);

impl FromStr for EchoMode {
    type Err = ParseEchoModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "turn" => Ok(EchoMode::Turn),
            "loopback" => Ok(EchoMode::Loopback),
            other => Err(ParseEchoModeError(other.to_owned())),
        }
    }
}

/// How the peer behaves; `Default` is what `callbridge echo-realtime` runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EchoOptions {
    pub mode: EchoMode,
    /// VAD threshold: RMS of a 20 ms window in dBFS (0 dBFS = full-scale
    /// square wave). Default [`DEFAULT_THRESHOLD_DBFS`] (-40): between line
    /// noise (about -55) and speech (about -25).
    pub vad_threshold_dbfs: f32,
    /// How many times faster than real time turn responses are sent. The real
    /// service sends faster than real time, which is why the bridge must pace
    /// playout itself; 2.0 by default. Zero, negative or non-finite: as fast
    /// as possible.
    pub speed: f64,
    /// Pause between `response.created` and the first audio delta, standing
    /// in for the model's think time (so demos can show a realistic turn
    /// latency). Zero by default, so tests measure the bridge alone.
    pub first_audio_delay: Duration,
}

impl Default for EchoOptions {
    fn default() -> Self {
        Self {
            mode: EchoMode::Turn,
            vad_threshold_dbfs: DEFAULT_THRESHOLD_DBFS,
            speed: 2.0,
            first_audio_delay: Duration::ZERO,
        }
    }
}

/// The two event-name dialects of the Realtime protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Ga,
    Beta,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Ga => "ga",
            Dialect::Beta => "beta",
        })
    }
}

/// Serves sessions until `shutdown` resolves. One task per session.
///
/// On shutdown it stops accepting, tells each live session to close (1001,
/// going away) and waits up to two seconds for them before aborting the
/// rest. Errors accepting a connection (say, out of file descriptors) are
/// logged and retried, not returned: one bad moment must not end a load test.
pub async fn serve(
    listener: TcpListener,
    options: EchoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, mode = %options.mode, "echo-realtime serving");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Deltas are small and latency is what load tests measure.
                    let _ = stream.set_nodelay(true);
                    sessions.spawn(run_session(stream, peer, options, stop_rx.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "echo-realtime accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        sessions.abort_all();
    }
    tracing::info!(listen = %local, "echo-realtime stopped");
    Ok(())
}

/// `<8 hex digits unique to this process><session number in hex>`: every id
/// a session makes starts with it, so ids are unique across sessions and,
/// very likely, across restarts of the peer (a bridge that reconnects must
/// not see a new session reuse an old response id).
fn session_tag() -> String {
    static NONCE: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nonce = *NONCE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.subsec_nanos()
            ^ (now.as_secs() as u32).rotate_left(7)
            ^ std::process::id().rotate_left(19)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{nonce:08x}{n:x}")
}

/// Whether the upgrade asks for the beta dialect: `OpenAI-Beta: realtime=v1`,
/// possibly among other comma-separated values.
fn wants_beta(request: &Request) -> bool {
    request
        .headers()
        .get_all("openai-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("realtime=v1"))
}

/// The `model` (or Azure `deployment`) query parameter, echoed in the session.
fn model_of(request: &Request) -> Option<String> {
    request
        .uri()
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "model" || *k == "deployment")
        .map(|(_, v)| v.chars().take(128).collect())
}

async fn run_session(
    stream: TcpStream,
    peer: SocketAddr,
    options: EchoOptions,
    mut stop: watch::Receiver<bool>,
) {
    let mut beta = false;
    let mut model = None;
    // The signature is tungstenite's `Callback`; the large `Err` is its type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        beta = wants_beta(request);
        model = model_of(request);
        Ok(response)
    };
    // A small read buffer: tungstenite zero-fills it on every read, and the
    // default 128 KiB was a quarter of the peer's CPU under load.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 << 10);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let mut ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "echo-realtime handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "echo-realtime handshake timed out");
            return;
        }
    };
    let dialect = if beta { Dialect::Beta } else { Dialect::Ga };
    let model = model.unwrap_or_else(|| "echo-realtime".to_owned());
    let mut session = Session::new(dialect, &options, model, session_tag());
    tracing::info!(
        session = session.id(),
        %peer,
        %dialect,
        mode = %options.mode,
        "echo-realtime session started"
    );
    let started = Instant::now();
    let end = drive(&mut ws, &mut session, &mut stop).await;
    let stats = session.stats;
    tracing::info!(
        session = session.id(),
        %dialect,
        mode = %options.mode,
        end,
        frames_in = stats.frames_in,
        deltas_out = stats.deltas_out,
        turns = stats.turns,
        responses = stats.responses,
        cancelled = stats.cancelled,
        errors = stats.errors,
        secs = started.elapsed().as_secs_f64(),
        "echo-realtime session ended"
    );
}

/// The session's event loop; returns why it ended.
///
/// Timer first, then the socket: a client that floods appends must not hold
/// up the deltas of a response (the real service keeps streaming too).
async fn drive<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    stop: &mut watch::Receiver<bool>,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if send_pending(ws, session).await.is_err() {
        return "write failed";
    }
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    loop {
        let due = session.next_due();
        if let Some(due) = due {
            if sleep.deadline() != due {
                sleep.as_mut().reset(due);
            }
        }
        tokio::select! {
            biased;
            _ = &mut stopped => {
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "echo-realtime shutting down".into(),
                }));
                let _ = ws.send(close).await;
                return "shutdown";
            }
            () = &mut sleep, if due.is_some() => session.on_tick(Instant::now()),
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => session.on_text(text.as_str(), Instant::now()),
                Some(Ok(Message::Binary(_))) => session.on_binary(),
                Some(Ok(Message::Close(_))) | None => return "closed by client",
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(err)) => {
                    tracing::debug!(session = session.id(), error = %err, "echo-realtime read failed");
                    return "read failed";
                }
            },
        }
        if send_pending(ws, session).await.is_err() {
            return "write failed";
        }
    }
}

/// Sends the session's queued events with one flush for the lot.
async fn send_pending<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if session.out.is_empty() {
        return Ok(());
    }
    for text in session.out.drain(..) {
        ws.feed(Message::Text(text.into())).await?;
    }
    ws.flush().await
}
