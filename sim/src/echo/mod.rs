//! `echo-realtime`: a local stand-in for a speech-to-speech model. **A test
//! tool, not a model.**
//!
//! It speaks two model protocols ([`EchoProtocol`]) well enough for the
//! bridge to hold a real call against it with no API key and no network:
//! smoke tests, `callbridge demo` and `callbridge loadtest` use it, in
//! process through [`serve`] or as the `callbridge echo-realtime` command.
//!
//! It is written from the protocol references, independently of the
//! bridge's own parsers, so that it checks the bridge's reading of each
//! protocol instead of repeating it.
//!
//! # OpenAI Realtime (`--protocol realtime`, the default)
//!
//! PROTOCOLS.md §2, GA and beta dialects ([`session`]). Two modes
//! ([`EchoMode`]):
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
//!   A `response.create` before the caller has said anything (a greeting)
//!   is answered with a one-second chime whose transcript is `(greeting)`.
//!   Scripted function calls (see [Scripted tool calls](#scripted-tool-calls))
//!   follow PROTOCOLS.md §2.5.
//! - **loopback**: for load tests. No VAD and no turns: every
//!   `input_audio_buffer.append` is answered at once by one audio delta with
//!   the same audio (byte-identical when input and output formats match)
//!   inside one long-lived response, so a load generator can time each
//!   frame's relay through the bridge with nothing added by the peer.
//!
//! Dialect: beta (`response.audio.delta`, …) when the upgrade request has
//! `OpenAI-Beta: realtime=v1`, GA otherwise. Any path is accepted.
//!
//! # OpenAI GPT-Live (`--protocol live`)
//!
//! GPT-LIVE.md ([`live`], [`live_config`]): full duplex, server-driven
//! turns, no cancel or truncate. Any path is accepted (the real one is
//! `/v1/live/sessions`); the first frame must be `session.start`, validated
//! as strictly as the real service (unknown or Realtime-only keys fail with
//! `unknown_parameter` and no `session.started`).
//!
//! - **turn** (default): caller audio flows in continuously as
//!   `session.input_audio.append`; when the energy VAD sees a caller turn
//!   end (500 ms of quiet), the peer speaks the caller's audio back as
//!   `session.output_audio.delta` (no ids) paced at real time, with
//!   placeholder `session.output_transcript.delta` fragments and a
//!   `session.input_transcript.delta` for the caller. Caller speech of
//!   200 ms or more while it talks makes it stop by itself, unannounced.
//!   `session.commentary.append` is acked and spoken (a chime whose
//!   transcript quotes it). Scripted function calls are delegated
//!   (see [Scripted tool calls](#scripted-tool-calls)).
//!   `session.usage.updated` follows each answer; `session.close` ends with
//!   `session.closed`.
//! - **loopback**: every `session.input_audio.append` is answered at once by
//!   one `session.output_audio.delta` with the same base64 (GPT-Live uses
//!   one format both ways, so it is always byte-identical).
//!
//! # Scripted tool calls
//!
//! The peer has no language model, so tool use is scripted, in turn mode
//! and for functions the session declares (a real model can call nothing
//! else; an undeclared one is logged once as a warning and the turn is
//! answered normally). The peer has no TTS either: what it "says" is a chime
//! whose transcript carries the words.
//!
//! - **`--tool-call NAME:ARGS_JSON`** ([`EchoOptions::tool_call`]): after
//!   the caller's first turn.
//!   - Realtime (`NAME` in `session.tools`, `tool_choice` not `"none"`): the
//!     response to the turn is the call: `response.created` →
//!     `response.output_item.added` (a `function_call` item: `id`,
//!     `call_id`, `name`, `arguments: ""`, `in_progress`) →
//!     `response.function_call_arguments.delta` (several) →
//!     `response.function_call_arguments.done` (`call_id`, `arguments`, and
//!     `name` in GA only) → `response.output_item.done` (`completed`) →
//!     `response.done` (`completed`, `output` = the call, `usage`). The
//!     client answers with `conversation.item.create` (a
//!     `function_call_output`, acked by `conversation.item.added`/`.done`,
//!     beta `.created`; one for an unknown `call_id` is logged as a
//!     warning, where the real API answers `invalid_tool_call_id`) and
//!     `response.create`, which starts an audio
//!     response whose transcript is `(answer from NAME: OUTPUT)`. A
//!     `response.create` while a response is active gets
//!     `conversation_already_has_active_response`.
//!   - GPT-Live (`NAME` in `session.delegation.responses.tools`):
//!     `session.delegation.created` and the nested `response.event` stream
//!     with the call, a spoken "(one moment, checking)", then after
//!     `response.item.create` + `response.create` the answer with the
//!     output in its transcript.
//! - **`--end-call-after N`** ([`EchoOptions::end_call_after`]): on the
//!   caller's Nth turn, if the session declares `end_call`, the peer says
//!   "Goodbye, thanks for calling." and calls `end_call` with
//!   `{"reason":"the caller is done"}`.
//!   - Realtime: one response with the goodbye message item (`output_index`
//!     0) and then the `function_call` item (`output_index` 1), ending in
//!     `response.done` `completed` with both in `output`.
//!   - GPT-Live: the goodbye is spoken, and once its audio is all sent the
//!     call is delegated as above.
//!
//!   After the output and `response.create` the peer says "Bye now." A
//!   goodbye cancelled by barge-in (Realtime) or talked over (GPT-Live)
//!   makes no call; the next turn tries again. With both options, the Nth
//!   turn's goodbye takes precedence over the tool call; it waits while a
//!   call's output is still to be answered (Realtime: a response speaks
//!   pending outputs first; GPT-Live: no `end_call` while a delegated
//!   call awaits its output).
//!
//! # Connect time
//!
//! **`--connect-delay-ms MS`** ([`EchoOptions::connect_delay`]): every
//! WebSocket handshake is held this long before the `101` goes out, standing
//! for a real provider's connect time (TLS, the upgrade, placing the
//! session), which on loopback is next to nothing. It is what pre-warm
//! hides, so the demo can show the first-turn latency with and without it.
//!
//! Scale: one task per session and no state shared between sessions beyond
//! an id counter, so thousands of sessions fit on one core; in loopback mode
//! an append is parsed into a small borrowed struct and answered with one
//! hand-written JSON string, with no `serde_json::Value`, in both protocols.

mod audio;
mod errors;
mod live;
mod live_config;
mod session;
mod session_config;
mod vad;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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

use live::LiveSession;
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

/// Which model protocol the peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EchoProtocol {
    /// OpenAI Realtime (GA, or beta with `OpenAI-Beta: realtime=v1`).
    #[default]
    Realtime,
    /// OpenAI GPT-Live (`session.start`, full duplex, delegation).
    Live,
}

impl EchoProtocol {
    /// The name used on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            EchoProtocol::Realtime => "realtime",
            EchoProtocol::Live => "live",
        }
    }

    /// The path the real service serves this protocol on (the peer accepts
    /// any path).
    pub const fn path(self) -> &'static str {
        match self {
            EchoProtocol::Realtime => "/v1/realtime",
            EchoProtocol::Live => "/v1/live/sessions",
        }
    }
}

impl fmt::Display for EchoProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`EchoProtocol`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown echo protocol {0:?} (expected \"realtime\" or \"live\")")]
pub struct ParseEchoProtocolError(pub String);

impl FromStr for EchoProtocol {
    type Err = ParseEchoProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "realtime" => Ok(EchoProtocol::Realtime),
            "live" => Ok(EchoProtocol::Live),
            other => Err(ParseEchoProtocolError(other.to_owned())),
        }
    }
}

/// A function call the peer makes after the caller's first turn:
/// `NAME:ARGS_JSON` on the command line, e.g.
/// `lookup_order:{"order_id":"123"}` (`NAME` alone means `{}`).
///
/// The function must be declared to the model, as a real model can only
/// call declared tools: in `session.tools` (Realtime, both dialects, with a
/// `tool_choice` other than `"none"`) or in
/// `session.delegation.responses.tools` (GPT-Live). If it is not, the peer
/// logs a warning and answers the turn normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON object in compact text: what the call's
    /// `arguments` string carries.
    pub arguments: String,
}

/// A `NAME:ARGS_JSON` that is not a usable [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tool call {input:?}: {reason} (expected NAME:ARGS_JSON, e.g. lookup_order:{{\"order_id\":\"123\"}})")]
pub struct ParseToolCallError {
    pub input: String,
    pub reason: String,
}

impl FromStr for ToolCall {
    type Err = ParseToolCallError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseToolCallError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, args) = s.split_once(':').unwrap_or((s, "{}"));
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(fail("the name must be 1-64 of a-z, A-Z, 0-9, _ and -"));
        }
        let args: serde_json::Value =
            serde_json::from_str(args).map_err(|e| fail(&format!("ARGS_JSON is not JSON: {e}")))?;
        if !args.is_object() {
            return Err(fail("ARGS_JSON must be a JSON object"));
        }
        Ok(ToolCall {
            name: name.to_owned(),
            arguments: args.to_string(),
        })
    }
}

/// How the peer behaves; `Default` is what `callbridge echo-realtime` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoOptions {
    /// The model protocol spoken on every connection.
    pub protocol: EchoProtocol,
    pub mode: EchoMode,
    /// VAD threshold: RMS of a 20 ms window in dBFS (0 dBFS = full-scale
    /// square wave). Default [`DEFAULT_THRESHOLD_DBFS`] (-40): between line
    /// noise (about -55) and speech (about -25).
    pub vad_threshold_dbfs: f32,
    /// How many times faster than real time Realtime turn responses are
    /// sent. The real service sends faster than real time, which is why the
    /// bridge must pace playout itself; 2.0 by default. Zero, negative or
    /// non-finite: as fast as possible. GPT-Live answers always stream at
    /// real time, as the real service does, whatever this says.
    pub speed: f64,
    /// Pause before the first audio delta of an answer (Realtime: after
    /// `response.created`), standing in for the model's think time (so demos
    /// can show a realistic turn latency). Zero by default, so tests measure
    /// the bridge alone.
    pub first_audio_delay: Duration,
    /// A function call to make after the caller's first turn (Realtime: the
    /// response to that turn is the call; GPT-Live: a delegated call). None
    /// by default.
    pub tool_call: Option<ToolCall>,
    /// On the caller's Nth turn (counting from 1), say a goodbye and call
    /// the `end_call` tool with `{"reason":"the caller is done"}`, if the
    /// session declares a function named `end_call`. None by default.
    pub end_call_after: Option<u32>,
    /// Held before completing each WebSocket handshake (the TCP connection
    /// is accepted at once; the `101 Switching Protocols` answer waits), to
    /// stand for a real provider's connect time: TLS, the upgrade, and
    /// placing the session, which on loopback take next to nothing. The
    /// session's own setup (`session.update` → `session.updated`) is
    /// answered at once, as before. Zero by default.
    pub connect_delay: Duration,
}

impl Default for EchoOptions {
    fn default() -> Self {
        Self {
            protocol: EchoProtocol::Realtime,
            mode: EchoMode::Turn,
            vad_threshold_dbfs: DEFAULT_THRESHOLD_DBFS,
            speed: 2.0,
            first_audio_delay: Duration::ZERO,
            tool_call: None,
            end_call_after: None,
            connect_delay: Duration::ZERO,
        }
    }
}

/// The built-in hang-up tool that [`EchoOptions::end_call_after`] calls.
pub(crate) const END_CALL: &str = "end_call";

/// What the peer says before it calls `end_call` (the transcript of the
/// goodbye; the audio is a chime).
pub(crate) const GOODBYE: &str = "Goodbye, thanks for calling.";

/// What the peer says once `end_call` has its output.
pub(crate) const BYE_NOW: &str = "Bye now.";

/// The scripted `end_call` function call.
pub(crate) fn end_call() -> ToolCall {
    ToolCall {
        name: END_CALL.to_owned(),
        arguments: r#"{"reason":"the caller is done"}"#.to_owned(),
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
    tracing::info!(
        listen = %local,
        protocol = %options.protocol,
        mode = %options.mode,
        "echo-realtime serving"
    );
    let options = Arc::new(options);
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
                    sessions.spawn(run_session(stream, peer, options.clone(), stop_rx.clone()));
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

/// What [`drive`] needs of a session of either protocol: a pure state
/// machine fed with client events and clock ticks, with an outbox of server
/// events.
trait Peer {
    fn id(&self) -> &str;
    /// When [`Peer::on_tick`] next has something to send.
    fn next_due(&self) -> Option<Instant>;
    fn on_tick(&mut self, now: Instant);
    fn on_text(&mut self, text: &str, now: Instant);
    fn on_binary(&mut self);
    fn outbox(&mut self) -> &mut Vec<String>;
    /// The session is over: close the socket once the outbox is sent.
    fn wants_close(&self) -> bool;
}

impl Peer for Session {
    fn id(&self) -> &str {
        Session::id(self)
    }
    fn next_due(&self) -> Option<Instant> {
        Session::next_due(self)
    }
    fn on_tick(&mut self, now: Instant) {
        Session::on_tick(self, now);
    }
    fn on_text(&mut self, text: &str, now: Instant) {
        Session::on_text(self, text, now);
    }
    fn on_binary(&mut self) {
        Session::on_binary(self);
    }
    fn outbox(&mut self) -> &mut Vec<String> {
        &mut self.out
    }
    fn wants_close(&self) -> bool {
        false
    }
}

impl Peer for LiveSession {
    fn id(&self) -> &str {
        LiveSession::id(self)
    }
    fn next_due(&self) -> Option<Instant> {
        LiveSession::next_due(self)
    }
    fn on_tick(&mut self, now: Instant) {
        LiveSession::on_tick(self, now);
    }
    fn on_text(&mut self, text: &str, now: Instant) {
        LiveSession::on_text(self, text, now);
    }
    fn on_binary(&mut self) {
        LiveSession::on_binary(self);
    }
    fn outbox(&mut self) -> &mut Vec<String> {
        &mut self.out
    }
    fn wants_close(&self) -> bool {
        self.close
    }
}

async fn run_session(
    stream: TcpStream,
    peer: SocketAddr,
    options: Arc<EchoOptions>,
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
    if !options.connect_delay.is_zero() {
        tokio::time::sleep(options.connect_delay).await;
    }
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
    let started = Instant::now();
    match options.protocol {
        EchoProtocol::Realtime => {
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
                tool_calls = stats.tool_calls,
                errors = stats.errors,
                secs = started.elapsed().as_secs_f64(),
                "echo-realtime session ended"
            );
        }
        EchoProtocol::Live => {
            // GPT-Live takes no query and no beta header: the model comes in
            // `session.start`.
            let mut session = LiveSession::new(&options, session_tag());
            tracing::info!(
                session = session.id(),
                %peer,
                protocol = "live",
                mode = %options.mode,
                "echo-realtime session connected"
            );
            let end = drive(&mut ws, &mut session, &mut stop).await;
            let stats = session.stats;
            tracing::info!(
                session = session.id(),
                protocol = "live",
                mode = %options.mode,
                end,
                frames_in = stats.frames_in,
                deltas_out = stats.deltas_out,
                turns = stats.turns,
                answers = stats.answers,
                yielded = stats.yielded,
                tool_calls = stats.tool_calls,
                errors = stats.errors,
                secs = started.elapsed().as_secs_f64(),
                "echo-realtime session ended"
            );
        }
    }
}

/// How long a session that closed the socket itself waits for the client's
/// close frame before dropping the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The session's event loop; returns why it ended.
///
/// Timer first, then the socket: a client that floods appends must not hold
/// up the deltas of a response (the real service keeps streaming too).
async fn drive<S, P>(
    ws: &mut WebSocketStream<S>,
    session: &mut P,
    stop: &mut watch::Receiver<bool>,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Peer,
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
        if session.wants_close() {
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            let _ = ws.send(close).await;
            // Let the client answer the close, so it sees a clean ending.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            return "closed by peer";
        }
    }
}

/// Sends the session's queued events with one flush for the lot.
async fn send_pending<S, P>(
    ws: &mut WebSocketStream<S>,
    session: &mut P,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Peer,
{
    let out = session.outbox();
    if out.is_empty() {
        return Ok(());
    }
    for text in out.drain(..) {
        ws.feed(Message::Text(text.into())).await?;
    }
    ws.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_call_parses_name_and_json_arguments() {
        let call: ToolCall = r#"lookup_order:{ "order_id": "123" }"#.parse().expect("valid");
        assert_eq!(call.name, "lookup_order");
        assert_eq!(call.arguments, r#"{"order_id":"123"}"#);
        let bare: ToolCall = "ping".parse().expect("no arguments");
        assert_eq!(bare.arguments, "{}");
        for bad in [":{}", "a b:{}", "f:[1]", "f:{", "f:\"x\""] {
            assert!(bad.parse::<ToolCall>().is_err(), "{bad}");
        }
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in [EchoProtocol::Realtime, EchoProtocol::Live] {
            assert_eq!(p.as_str().parse::<EchoProtocol>(), Ok(p));
        }
        assert!("gpt-live".parse::<EchoProtocol>().is_err());
        assert_eq!(EchoOptions::default().protocol, EchoProtocol::Realtime);
    }
}
