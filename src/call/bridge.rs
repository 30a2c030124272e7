//! The relay for one call: Twilio ⇄ model, with pacing, barge-in and tools.
//!
//! One task per call, one `select!` loop over: the caller's frames, the
//! model's events, the playout timer, the tool calls in flight and the
//! shutdown signal. Both sockets are generic `Sink`/`Stream`s of
//! [`WsIn`]/[`WsOut`]; the model's protocol is a [`Driver`], so nothing here
//! knows whether the call speaks Realtime or GPT-Live. Per-frame work reuses
//! the call's buffers; the only allocation per message is the message itself,
//! which the socket takes ownership of.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::control::{Action, CallControl};
use super::playout::{MarkEcho, Playout};
use super::reconnect::{Backoff, HeldAudio};
use super::tools::{CallContext, ToolAnswer, ToolFuture, ToolOutcome, ToolRunner};
use super::{close_code, WsIn, WsOut};
use crate::audio::{AudioMode, InboundTranscoder, OutboundTranscoder};
use crate::config::DtmfMode;
use crate::metrics::{Metrics, Outcome, Reject, Source};
use crate::twilio::messages::{self, parse_inbound, Inbound, MessageError};
use crate::twilio::rest::{HangUp, TwilioRest};
use crate::twilio::twiml;
use crate::upstream::{
    Driver, Heard, ModelEvent, Role, TalkOver, ToolCall, ToolOutput, Turn, Usage,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Twilio's frame: 20 ms of μ-law at 8 kHz. Answer audio goes out in these.
const TWILIO_FRAME_BYTES: usize = 160;
/// Application cap on one frame from Twilio: a 20 ms frame is ~300 bytes.
pub const MAX_TWILIO_FRAME: usize = 64 << 10;
/// A send that cannot complete in this long means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bad frames tolerated in a burst, and how fast the allowance refills.
const BAD_FRAME_BURST: f64 = 20.0;
const BAD_FRAME_REFILL_PER_SEC: f64 = 2.0;
/// After the caller hangs up, how long to wait for the model to confirm the
/// end of the session (and report its final usage).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// After the model's last sentence before a hang-up or transfer: this much
/// silence from the model means the sentence is over.
const LAST_WORDS_QUIET: Duration = Duration::from_millis(1000);
/// Caller audio kept while the model's socket is being reopened: 2 s.
const HELD_AUDIO_BYTES: usize = 2 * 8000;
/// A rollover that could not connect is tried again this much later.
const ROLLOVER_RETRY: Duration = Duration::from_secs(30);
/// How long the model must have been silent for a rollover to be quiet.
const QUIET_FOR_ROLLOVER: Duration = Duration::from_secs(1);
/// Caller frames all late for this long: Twilio's timestamps jumped (a
/// backlog is shed much faster, dropping being cheap), so the frames'
/// timing becomes the new reference rather than every frame being dropped.
const LATE_RESET: Duration = Duration::from_secs(2);
/// What the bridge's pings carry: nothing is read back from the pong.
const PING_PAYLOAD: &[u8] = b"callbridge";
/// Where the ping timer rests while no ping is due (it is never polled then).
const TIMER_AT_REST: Duration = Duration::from_secs(24 * 3600);
/// Keys a phone can send; anything else in a `dtmf` event is ignored.
const DTMF_KEYS: &str = "0123456789*#ABCD";
/// The longest key sequence kept before it is handed over anyway.
const MAX_DTMF_KEYS: usize = 32;

/// Everything the bridge needs to know about the call.
#[derive(Clone)]
pub struct CallParams {
    /// Who the call is, for tools and logs (call and stream SIDs, numbers,
    /// the assistant profile).
    pub context: CallContext,
    /// The Twilio account the call belongs to (`start.accountSid`), for REST.
    pub account_sid: String,
    pub mode: AudioMode,
    pub playout_lead: Duration,
    /// Audio later than this is dropped rather than delivered late, both
    /// ways (`audio.max_lag_ms`); zero: never.
    pub max_lag: Duration,
    /// An instruction for the model's first words; empty: wait for the caller.
    pub greeting: String,
    pub dtmf: DtmfMode,
    /// Silence that ends a key sequence.
    pub dtmf_timeout: Duration,
    /// The built-in `end_call` and `transfer_call` of this call's profile.
    pub control: Arc<CallControl>,
    /// Twilio's REST API, where credentials are configured.
    pub rest: Option<TwilioRest>,
    /// How long the model may be away (reconnecting) before the call ends.
    pub reconnect_budget: Duration,
    /// A model session older than this is replaced at the first quiet
    /// moment, before the provider's own limit cuts it.
    pub max_session: Duration,
    /// A WebSocket ping goes to the model this often; zero: never.
    pub ping_interval: Duration,
    /// Nothing from the model this long after a ping: its socket is dead
    /// (reconnected like a dropped one). Shorter than `ping_interval`.
    pub pong_timeout: Duration,
    /// No message from Twilio for this long: the stream is dead.
    pub idle_timeout: Duration,
    /// No call lasts longer.
    pub max_call: Duration,
    /// μ-law audio played to the caller while the model is away.
    pub reconnect_filler: Option<Arc<Vec<u8>>>,
    /// `log.transcripts`: log what was said, keyed and called with (each
    /// turn, keypad digits, tool arguments and results) at INFO. Off, none
    /// of it reaches the logs at any level.
    pub log_content: bool,
    /// `audio.heard_offset_ms`: subtracted from what the caller is believed
    /// to have heard when they talk over an answer.
    pub heard_offset: Duration,
    /// `audio.append_ms`: caller audio is sent to the model in appends of
    /// this much (20 ms: every Twilio frame as it comes).
    pub append_every: Duration,
    /// When the stream's `start` was accepted: the model-ready time
    /// (`callbridge_model_ready_seconds`) counts from here, so it includes
    /// opening the model's socket when that happens after `start`.
    pub stream_started: Instant,
}

impl CallParams {
    /// A call with defaults for everything but its identity (tests, tools).
    pub fn new(call_sid: &str, stream_sid: &str, mode: AudioMode) -> CallParams {
        CallParams {
            context: CallContext {
                call_sid: call_sid.to_owned(),
                stream_sid: stream_sid.to_owned(),
                profile: crate::config::DEFAULT_PROFILE.to_owned(),
                ..CallContext::default()
            },
            account_sid: String::new(),
            mode,
            playout_lead: Duration::from_millis(200),
            max_lag: Duration::from_millis(300),
            greeting: String::new(),
            dtmf: DtmfMode::Model,
            dtmf_timeout: Duration::from_millis(1500),
            control: Arc::new(CallControl::default()),
            rest: None,
            reconnect_budget: Duration::from_secs(10),
            max_session: Duration::from_secs(3300),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            max_call: Duration::from_secs(4 * 3600),
            reconnect_filler: None,
            log_content: false,
            heard_offset: Duration::ZERO,
            append_every: Duration::from_millis(20),
            stream_started: Instant::now(),
        }
    }
}

impl std::fmt::Debug for CallParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallParams")
            .field("context", &self.context)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What happened, for the end-of-call log line and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    pub outcome: Outcome,
    pub turns: u32,
    pub bargeins: u32,
    pub frames_in: u64,
    pub frames_out: u64,
    pub rejected: u64,
    pub tool_calls: u32,
    /// The conversation as text, one entry per turn.
    pub transcript: Vec<Turn>,
    /// When each turn of `transcript` began (its first words arrived),
    /// from the start of the call.
    pub transcript_at: Vec<Duration>,
    /// Every tool call, in the order they finished (dropped ones last).
    pub tool_log: Vec<ToolRecord>,
    /// The model's usage over every session of the call.
    pub usage: Usage,
    /// Why it ended, when it did not end normally.
    pub reason: Option<String>,
}

impl CallSummary {
    /// A call that ended before the relay started (the model unavailable).
    pub fn empty(outcome: Outcome, reason: &str) -> CallSummary {
        CallSummary {
            outcome,
            turns: 0,
            bargeins: 0,
            frames_in: 0,
            frames_out: 0,
            rejected: 0,
            tool_calls: 0,
            transcript: Vec::new(),
            transcript_at: Vec::new(),
            tool_log: Vec::new(),
            usage: Usage::default(),
            reason: Some(reason.to_owned()),
        }
    }
}

/// One tool call, for the call record: no arguments or results (they may
/// hold the caller's data and belong to the tool's own logs).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRecord {
    /// The declared name (`unknown` for a name that was not declared).
    pub name: String,
    /// `ok`, `error`, `timeout`, or `dropped` (the call ended first).
    pub outcome: &'static str,
    /// When it started, from the start of the call.
    pub at: Duration,
    pub took: Duration,
}

/// Why the loop stopped: the outcome, and a reason when it was not normal.
struct End(Outcome, Option<String>);

type Step = Result<(), End>;

fn end(outcome: Outcome, why: impl Into<String>) -> End {
    End(outcome, Some(why.into()))
}

/// Opening a new socket to the model (a reconnect, a rollover).
pub type Connecting<MS, MR> = Pin<Box<dyn Future<Output = Result<(MS, MR), String>> + Send>>;
/// What opens one; `None` in [`Model::reconnect`]: a lost socket ends the call.
pub type Connector<MS, MR> = Box<dyn FnMut() -> Connecting<MS, MR> + Send>;

/// The model's side of a call: its protocol driver and its socket.
pub struct Model<MS, MR> {
    pub driver: Box<dyn Driver>,
    pub tx: MS,
    pub rx: MR,
    pub reconnect: Option<Connector<MS, MR>>,
    /// `Some(when)`: the session was opened and configured before the
    /// stream started (pre-warmed, see [`crate::call::prewarm`]) at `when`.
    /// The bridge does not configure it again, and counts the session's age
    /// (for the rollover) from then.
    pub opened_at: Option<Instant>,
}

/// Runs the call until either side ends it or `shutdown` fires.
pub async fn run<TS, TR, MS, MR, E1, E2>(
    params: CallParams,
    metrics: Metrics,
    tools: Arc<dyn ToolRunner>,
    twilio_tx: TS,
    mut twilio_rx: TR,
    model: Model<MS, MR>,
    shutdown: CancellationToken,
) -> CallSummary
where
    TS: Sink<WsOut, Error = E1> + Unpin,
    TR: Stream<Item = WsIn> + Unpin,
    MS: Sink<WsOut, Error = E2> + Unpin + Send + 'static,
    MR: Stream<Item = WsIn> + Unpin + Send + 'static,
{
    let Model {
        driver,
        tx: model_tx,
        rx,
        mut reconnect,
        opened_at,
    } = model;
    let mut model_rx = Some(rx);
    let mut call = Bridge::new(params, metrics, tools, driver, twilio_tx, model_tx);
    if let Some(at) = opened_at {
        call.session_started = at;
        call.preopened = true;
    }
    let result = call
        .run_loop(&mut twilio_rx, &mut model_rx, &mut reconnect, &shutdown)
        .await;
    let End(outcome, reason) = result;
    if let (true, Some(rx)) = (
        matches!(outcome, Outcome::Completed | Outcome::CallerGone),
        model_rx.as_mut(),
    ) {
        call.close_model(rx).await;
    }
    // Tool calls still running have no call to answer any more.
    let ended_at = call.started.elapsed();
    for batch in std::mem::take(&mut call.batches) {
        for name in batch.pending {
            call.m.tool_call(&name, "dropped", Duration::ZERO);
            call.tool_log.push(ToolRecord {
                name,
                outcome: "dropped",
                at: ended_at,
                took: Duration::ZERO,
            });
        }
    }
    let twilio_code = match outcome {
        Outcome::ProtocolError | Outcome::Unauthorized => close_code::POLICY,
        Outcome::Drained => close_code::GOING_AWAY,
        _ => close_code::NORMAL,
    };
    // Close both at once: an open model session costs money.
    let mut model_tx = call.model_tx.take();
    let model_close = async {
        if let Some(tx) = model_tx.as_mut() {
            let _ = tx
                .send(WsOut::Close(close_code::NORMAL, "call ended"))
                .await;
        }
    };
    let twilio_close = call.twilio_tx.send(WsOut::Close(twilio_code, "call ended"));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = futures_util::join!(model_close, twilio_close);
    })
    .await;
    if call.p.log_content {
        if let Some(turn) = call.transcript.last() {
            log_turn(&call.p.context.call_sid, turn);
        }
    }
    CallSummary {
        outcome,
        turns: call.turns.max(call.caller_turns),
        bargeins: call.bargeins,
        frames_in: call.frames_in,
        frames_out: call.frames_out,
        rejected: call.rejected,
        tool_calls: call.tool_calls,
        transcript: call.transcript,
        transcript_at: call.transcript_at,
        tool_log: call.tool_log,
        usage: call.usage,
        reason,
    }
}

/// One tool call in flight: its batch, and when it started.
type Running = std::pin::Pin<Box<dyn std::future::Future<Output = Finished> + Send>>;

struct Finished {
    batch: u64,
    name: String,
    output: ToolOutput,
    outcome: ToolOutcome,
    started: Instant,
    took: Duration,
}

/// A hang-up or transfer in progress.
struct Ending {
    action: Action,
    /// Set once the model was answered (it then says its last sentence).
    answered_at: Option<Instant>,
    /// The last answer audio after that.
    last_audio: Option<Instant>,
    /// Whatever happens, act by then.
    deadline: Option<Instant>,
}

/// The calls of one answer: the model is answered once all have outputs.
struct Batch {
    id: u64,
    /// Names of the calls still running.
    pending: Vec<String>,
    outputs: Vec<ToolOutput>,
}

/// The model's socket is gone and a new one is being opened.
struct Away {
    deadline: Instant,
    backoff: Backoff,
}

struct Bridge<TS, MS> {
    p: CallParams,
    m: Metrics,
    /// None while the model is away (reconnecting).
    model_tx: Option<MS>,
    /// Why the model's socket must be replaced (found while writing to it).
    model_broken: Option<String>,
    away: Option<Away>,
    /// A rollover to a fresh session is connecting; the old one goes on.
    rolling: bool,
    /// Caller audio kept for the next session.
    held: HeldAudio,
    /// Model sessions opened for this call (reconnects and rollovers add).
    sessions: u32,
    session_started: Instant,
    /// No rollover is tried before this (after a failed one).
    rollover_after: Instant,
    /// When the next ping goes to the model.
    next_ping: Instant,
    /// A ping is out: unless the model sends something by then, its socket
    /// is dead.
    pong_due: Option<Instant>,
    caller_speaking: bool,
    /// The caller finished a turn and the model has not answered it yet.
    turn_pending: bool,
    last_model_audio: Option<Instant>,
    last_twilio: Instant,
    tools: Arc<dyn ToolRunner>,
    /// Tool names declared to the model: the metric label for any other is
    /// `unknown`, so a model cannot grow the label set.
    known_tools: Vec<String>,
    driver: Box<dyn Driver>,
    /// A hang-up or transfer the model asked for, waiting for its last
    /// sentence to be heard.
    ending: Option<Ending>,
    /// Keypad digits of the sequence being typed, and when it times out.
    dtmf_keys: String,
    dtmf_due: Option<Instant>,
    twilio_tx: TS,
    /// Client events the driver produced, sent in order (the Vec is reused).
    outbox: Vec<String>,
    running: FuturesUnordered<Running>,
    batches: Vec<Batch>,
    next_batch: u64,
    greeted: bool,
    /// The first session was configured before the stream started.
    preopened: bool,
    /// `callbridge_model_ready_seconds` has this call's observation.
    ready_observed: bool,
    inbound: InboundTranscoder,
    outbound: OutboundTranscoder,
    playout: Playout,
    /// Reused scratch buffers.
    ulaw_in: Vec<u8>,
    /// Caller audio (μ-law) gathered for the next append when
    /// `append_every` is longer than a frame, and how much makes one.
    pending_in: Vec<u8>,
    append_bytes: usize,
    model_audio: Vec<u8>,
    b64: String,
    /// Media messages of the chunk being sent (the Vec is reused).
    frames_pending: Vec<String>,
    speech_stopped_at: Option<Instant>,
    started: Instant,
    first_audio_sent: bool,
    last_seq: Option<u64>,
    /// Caller audio lateness: the least (arrival − Twilio timestamp) seen,
    /// in ms from `started`, and when it was set.
    in_base: Option<(i128, Instant)>,
    /// Since when every caller frame has been late.
    in_late_since: Option<Instant>,
    /// The latest Twilio timestamp seen.
    in_last_ts: Option<u64>,
    bad_allowance: f64,
    bad_at: Instant,
    turns: u32,
    bargeins: u32,
    frames_in: u64,
    frames_out: u64,
    rejected: u64,
    tool_calls: u32,
    transcript: Vec<Turn>,
    /// When each turn of `transcript` began, from `started`.
    transcript_at: Vec<Duration>,
    tool_log: Vec<ToolRecord>,
    /// Usage summed over the call (every answer, every session).
    usage: Usage,
    /// Caller turns seen in transcripts: the turn count for protocols that
    /// do not signal the end of the caller's speech (GPT-Live).
    caller_turns: u32,
}

impl<TS, MS, E1, E2> Bridge<TS, MS>
where
    TS: Sink<WsOut, Error = E1> + Unpin,
    MS: Sink<WsOut, Error = E2> + Unpin + Send + 'static,
{
    fn new(
        p: CallParams,
        m: Metrics,
        tools: Arc<dyn ToolRunner>,
        driver: Box<dyn Driver>,
        twilio_tx: TS,
        model_tx: MS,
    ) -> Self {
        let now = Instant::now();
        let first_ping = now + p.ping_interval;
        let mut playout = Playout::new(p.playout_lead).with_max_lag(p.max_lag);
        playout.set_heard_offset(p.heard_offset);
        // 8 μ-law bytes per ms; never less than one frame.
        let append_bytes = usize::try_from(p.append_every.as_millis())
            .unwrap_or(usize::MAX)
            .saturating_mul(8)
            .max(TWILIO_FRAME_BYTES);
        Bridge {
            inbound: InboundTranscoder::new(p.mode),
            outbound: OutboundTranscoder::new(p.mode),
            playout,
            known_tools: tools
                .specs()
                .into_iter()
                .chain(p.control.specs())
                .map(|t| t.name)
                .collect(),
            p,
            m,
            tools,
            driver,
            twilio_tx,
            model_tx: Some(model_tx),
            model_broken: None,
            away: None,
            rolling: false,
            held: HeldAudio::new(HELD_AUDIO_BYTES),
            sessions: 1,
            session_started: now,
            rollover_after: now,
            next_ping: first_ping,
            pong_due: None,
            caller_speaking: false,
            turn_pending: false,
            last_model_audio: None,
            last_twilio: now,
            outbox: Vec::with_capacity(4),
            ending: None,
            dtmf_keys: String::new(),
            dtmf_due: None,
            running: FuturesUnordered::new(),
            batches: Vec::new(),
            next_batch: 0,
            greeted: false,
            preopened: false,
            ready_observed: false,
            ulaw_in: Vec::with_capacity(512),
            pending_in: Vec::with_capacity(if append_bytes > TWILIO_FRAME_BYTES {
                append_bytes + TWILIO_FRAME_BYTES
            } else {
                0
            }),
            append_bytes,
            // Grows to the call's largest delta once (16 KB reserved up
            // front was a fifth of a call's memory).
            model_audio: Vec::new(),
            b64: String::with_capacity(2048),
            frames_pending: Vec::with_capacity(8),
            speech_stopped_at: None,
            started: now,
            first_audio_sent: false,
            last_seq: None,
            in_base: None,
            in_late_since: None,
            in_last_ts: None,
            bad_allowance: BAD_FRAME_BURST,
            bad_at: now,
            turns: 0,
            bargeins: 0,
            frames_in: 0,
            frames_out: 0,
            rejected: 0,
            tool_calls: 0,
            transcript: Vec::new(),
            transcript_at: Vec::new(),
            tool_log: Vec::new(),
            usage: Usage::default(),
            caller_turns: 0,
        }
    }

    async fn run_loop<TR, MR>(
        &mut self,
        twilio_rx: &mut TR,
        model_rx: &mut Option<MR>,
        reconnect: &mut Option<Connector<MS, MR>>,
        shutdown: &CancellationToken,
    ) -> End
    where
        TR: Stream<Item = WsIn> + Unpin,
        MR: Stream<Item = WsIn> + Unpin + Send + 'static,
    {
        if self.preopened {
            // Configured already: the greeting (if any) is all that is owed,
            // now that the caller is listening.
            self.observe_ready();
        } else {
            self.driver.open(&[], &mut self.outbox);
            if let Err(e) = self.flush_outbox().await {
                return e;
            }
        }
        if self.driver.ready() {
            if let Err(e) = self.greet().await {
                return e;
            }
        }
        let mut connecting: Option<Connecting<MS, MR>> = None;
        // One timer of each kind for the whole call, moved rather than
        // recreated: a new `Sleep` on every pass registers (and the old one
        // deregisters) with the runtime's timer wheel for each frame.
        let ping_timer = tokio::time::sleep(TIMER_AT_REST);
        tokio::pin!(ping_timer);
        let wake_timer = tokio::time::sleep(TIMER_AT_REST);
        tokio::pin!(wake_timer);
        let own_timer = tokio::time::sleep(TIMER_AT_REST);
        tokio::pin!(own_timer);
        loop {
            let wake = self.playout.next_send_at(Instant::now());
            let timer = self.next_timer();
            let ping_at = self.ping_at();
            for (at, sleep) in [
                (ping_at, ping_timer.as_mut()),
                (wake, wake_timer.as_mut()),
                (timer, own_timer.as_mut()),
            ] {
                if let Some(at) = at.filter(|at| *at != sleep.deadline()) {
                    sleep.reset(at);
                }
            }
            let mut step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(End(Outcome::Drained, None)),
                msg = twilio_rx.next() => match msg {
                    None | Some(WsIn::Close(_)) => Err(End(Outcome::CallerGone, None)),
                    Some(WsIn::Binary(_)) => self.bad_twilio(Reject::Binary),
                    Some(WsIn::Text(text)) => {
                        self.last_twilio = Instant::now();
                        self.on_twilio(&text).await
                    }
                    // Twilio is never pinged; an unasked-for pong is harmless.
                    Some(WsIn::Pong) => Ok(()),
                },
                msg = next_or_pending(model_rx) => match msg {
                    None => self.broken("the model's socket ended"),
                    Some(WsIn::Pong) => {
                        self.pong_due = None;
                        Ok(())
                    }
                    Some(WsIn::Close(code)) => {
                        self.broken(format!("the model closed the socket (code {code:?})"))
                    }
                    Some(WsIn::Binary(_)) => {
                        self.pong_due = None;
                        self.m.rejected.inc(Source::Model, Reject::Binary);
                        Ok(())
                    }
                    Some(WsIn::Text(text)) => {
                        // Any frame shows the socket alive, as a pong does:
                        // a pong queued behind a long answer is not late.
                        self.pong_due = None;
                        self.on_model(&text).await
                    }
                },
                done = poll_or_pending(&mut connecting) => {
                    connecting = None;
                    self.connected(done, model_rx, reconnect, &mut connecting).await
                }
                () = &mut wake_timer, if wake.is_some() => self.pump().await,
                Some(done) = self.running.next(), if !self.running.is_empty() => {
                    self.tool_finished(done).await
                }
                () = &mut own_timer, if timer.is_some() => self.on_timer().await,
                () = &mut ping_timer, if ping_at.is_some() => self.on_ping_timer().await,
            };
            if step.is_ok() {
                if let Some(reason) = self.model_broken.take() {
                    step = self.lost(reason, model_rx, reconnect, &mut connecting);
                } else if connecting.is_none() && reconnect.is_some() && self.rollover_due() {
                    self.start_rollover(reconnect, &mut connecting);
                }
            }
            if let Err(e) = step {
                return e;
            }
        }
    }

    /// When the ping timer must fire: the pong's deadline while one is
    /// awaited, else the next ping; never while pings are off or the model
    /// is away (a new socket starts its own schedule).
    fn ping_at(&self) -> Option<Instant> {
        if self.p.ping_interval.is_zero() || self.model_tx.is_none() {
            return None;
        }
        Some(
            self.pong_due
                .map_or(self.next_ping, |due| due.min(self.next_ping)),
        )
    }

    /// A ping unanswered for `pong_timeout` means the socket is dead: lost
    /// like a dropped one (reconnected within the budget). Otherwise the
    /// next ping goes out when due. Both deadlines move into the future, so
    /// the timer is never left armed in the past.
    async fn on_ping_timer(&mut self) -> Step {
        let now = Instant::now();
        if self.pong_due.is_some_and(|due| now >= due) {
            self.pong_due = None;
            self.m.error("model_ping_timeout");
            tracing::warn!(call_sid = %self.p.context.call_sid, timeout_ms = self.p.pong_timeout.as_millis() as u64, "the model did not answer a ping");
            return self.broken(format!(
                "ping timeout: nothing from the model for {:?} after a ping",
                self.p.pong_timeout
            ));
        }
        if now < self.next_ping {
            return Ok(());
        }
        self.next_ping = now + self.p.ping_interval;
        if self.pong_due.is_none() {
            self.pong_due = Some(now + self.p.pong_timeout);
        }
        self.send_model_frame(WsOut::Ping(bytes::Bytes::from_static(PING_PAYLOAD)))
            .await
    }

    /// The model's socket cannot be used any more: noted, and dealt with
    /// (reconnect, or end the call) once the current step is done.
    fn broken(&mut self, why: impl Into<String>) -> Step {
        if self.model_tx.is_some() {
            self.model_broken = Some(why.into());
        }
        Ok(())
    }

    /// Starts (or goes on) reconnecting, within the budget; without a way
    /// to reconnect the call ends as before.
    fn lost<MR: Send + 'static>(
        &mut self,
        reason: String,
        model_rx: &mut Option<MR>,
        reconnect: &mut Option<Connector<MS, MR>>,
        connecting: &mut Option<Connecting<MS, MR>>,
    ) -> Step {
        let Some(connect) = reconnect.as_mut() else {
            return Err(end(Outcome::UpstreamFailed, reason));
        };
        tracing::warn!(call_sid = %self.p.context.call_sid, reason = %reason, "lost the model's session; reconnecting");
        self.model_tx = None;
        *model_rx = None;
        self.rolling = false;
        let now = Instant::now();
        if self.away.is_none() {
            let seed = self
                .p
                .context
                .call_sid
                .bytes()
                .fold(now.elapsed().as_nanos() as u64, |h, b| {
                    h.rotate_left(5) ^ u64::from(b)
                });
            self.away = Some(Away {
                deadline: now + self.p.reconnect_budget,
                backoff: Backoff::new(seed),
            });
            if let Some(filler) = self.p.reconnect_filler.clone() {
                if !self.playout.push("reconnect_filler", &filler) {
                    self.m.dropped_out_overflow.inc();
                }
            }
        }
        *connecting = self.attempt(connect);
        Ok(())
    }

    /// The next connection attempt, after its backoff, bounded by what is
    /// left of the budget.
    fn attempt<MR: Send + 'static>(
        &mut self,
        connect: &mut Connector<MS, MR>,
    ) -> Option<Connecting<MS, MR>> {
        let away = self.away.as_mut()?;
        let delay = away.backoff.next_delay();
        let deadline = away.deadline;
        let open = connect();
        Some(Box::pin(async move {
            tokio::time::sleep(delay).await;
            match tokio::time::timeout_at(deadline, open).await {
                Ok(result) => result,
                Err(_) => Err("the reconnect budget ran out while connecting".to_owned()),
            }
        }))
    }

    /// A connection attempt finished: a new session replaces the old one
    /// (seeded with the conversation so far), or the next attempt is
    /// scheduled, or the budget is spent and the call ends.
    async fn connected<MR>(
        &mut self,
        done: Result<(MS, MR), String>,
        model_rx: &mut Option<MR>,
        reconnect: &mut Option<Connector<MS, MR>>,
        connecting: &mut Option<Connecting<MS, MR>>,
    ) -> Step
    where
        MR: Stream<Item = WsIn> + Unpin + Send + 'static,
    {
        let rollover = self.rolling;
        let now = Instant::now();
        let (tx, rx) = match done {
            Ok(pair) => pair,
            Err(e) if rollover => {
                self.rolling = false;
                self.rollover_after = now + ROLLOVER_RETRY;
                self.m.reconnect("rollover_failed");
                tracing::warn!(call_sid = %self.p.context.call_sid, error = %e, "session rollover could not connect; the current session goes on");
                return Ok(());
            }
            Err(e) => {
                let Some(connect) = reconnect.as_mut() else {
                    return Err(end(Outcome::UpstreamFailed, e));
                };
                if self.away.as_ref().is_none_or(|a| now >= a.deadline) {
                    self.m.reconnect("failed");
                    return Err(end(
                        Outcome::UpstreamFailed,
                        format!("could not reconnect to the model within the budget: {e}"),
                    ));
                }
                tracing::debug!(call_sid = %self.p.context.call_sid, error = %e, "reconnect attempt failed");
                *connecting = self.attempt(connect);
                return Ok(());
            }
        };
        if rollover {
            // The old session ends now; a session close costs nothing to wait for.
            let mut bye = Vec::new();
            self.driver.close(&mut bye);
            if let Some(old) = self.model_tx.as_mut() {
                for msg in bye {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, old.feed(WsOut::Text(msg))).await;
                }
                let _ = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    old.send(WsOut::Close(close_code::NORMAL, "session rollover")),
                )
                .await;
            }
        }
        self.model_tx = Some(tx);
        *model_rx = Some(rx);
        self.rolling = false;
        self.away = None;
        self.sessions += 1;
        self.session_started = now;
        self.next_ping = now + self.p.ping_interval;
        self.pong_due = None;
        self.caller_speaking = false;
        self.turn_pending = false;
        self.m.reconnect(if rollover { "rollover" } else { "ok" });
        tracing::info!(call_sid = %self.p.context.call_sid, sessions = self.sessions, rollover, "new model session");
        let history = self.transcript.clone();
        self.driver.open(&history, &mut self.outbox);
        self.flush_outbox().await?;
        if self.driver.ready() {
            self.flush_held().await?;
        }
        Ok(())
    }

    /// A session near the provider's limit is replaced at the first quiet
    /// moment: no answer being generated or played, the caller not
    /// speaking, no tool running, nothing ending.
    fn rollover_due(&self) -> bool {
        let now = Instant::now();
        self.away.is_none()
            && !self.rolling
            && now >= self.rollover_after
            && now.duration_since(self.session_started) >= self.p.max_session
            && !self.driver.answering()
            && !self.caller_speaking
            && !self.turn_pending
            && !self.playout.is_playing(now)
            && self.running.is_empty()
            && self.ending.is_none()
            && self
                .last_model_audio
                .is_none_or(|at| now.duration_since(at) >= QUIET_FOR_ROLLOVER)
    }

    fn start_rollover<MR: Send + 'static>(
        &mut self,
        reconnect: &mut Option<Connector<MS, MR>>,
        connecting: &mut Option<Connecting<MS, MR>>,
    ) {
        if let Some(connect) = reconnect.as_mut() {
            tracing::info!(call_sid = %self.p.context.call_sid, "rolling the model session over");
            self.rolling = true;
            let deadline = Instant::now() + self.p.reconnect_budget;
            let open = connect();
            *connecting = Some(Box::pin(async move {
                match tokio::time::timeout_at(deadline, open).await {
                    Ok(result) => result,
                    Err(_) => Err("timed out".to_owned()),
                }
            }));
        }
    }

    /// Sends the caller audio kept while the model was away.
    async fn flush_held(&mut self) -> Step {
        for frame in self.held.take_frames(TWILIO_FRAME_BYTES) {
            let audio = self.inbound.transcode(&frame);
            let mut msg = String::new();
            self.driver.append_audio(audio, &mut msg);
            self.send_model(msg).await?;
            self.frames_in += 1;
            self.m.frames_in.inc();
        }
        Ok(())
    }

    async fn send_twilio(&mut self, msg: String) -> Step {
        let sent = tokio::time::timeout(WRITE_TIMEOUT, self.twilio_tx.send(WsOut::Text(msg))).await;
        self.twilio_result(sent)
    }

    fn twilio_result<E>(&self, r: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Step {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End(Outcome::CallerGone, None)),
            Err(_) => {
                self.m.error("twilio_write_timeout");
                Err(end(Outcome::ProtocolError, "Twilio stopped reading"))
            }
        }
    }

    /// Writes to the model; a failed or stalled write marks the socket
    /// broken (reconnected, or the call ends). While the model is away the
    /// message is dropped: a new session starts from the transcript.
    async fn send_model(&mut self, msg: String) -> Step {
        self.send_model_frame(WsOut::Text(msg)).await
    }

    /// [`Self::send_model`] for any frame (a ping too).
    async fn send_model_frame(&mut self, frame: WsOut) -> Step {
        let Some(tx) = self.model_tx.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(WRITE_TIMEOUT, tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => self.broken("cannot write to the model's socket"),
            Err(_) => {
                self.m.error("model_write_timeout");
                self.broken("the model stopped reading")
            }
        }
    }

    /// Sends what the driver queued, in order.
    async fn flush_outbox(&mut self) -> Step {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let mut queued = std::mem::take(&mut self.outbox);
        let mut result = Ok(());
        for msg in queued.drain(..) {
            if result.is_ok() {
                result = self.send_model(msg).await;
            }
        }
        self.outbox = queued;
        result
    }

    /// The first session is configured: how long after `start` (once per call).
    fn observe_ready(&mut self) {
        if !self.ready_observed {
            self.ready_observed = true;
            self.m
                .prewarm
                .model_ready
                .observe_duration(self.p.stream_started.elapsed());
        }
    }

    /// The model speaks first, once per call, when a greeting is configured.
    async fn greet(&mut self) -> Step {
        if self.greeted || self.p.greeting.is_empty() {
            return Ok(());
        }
        self.greeted = true;
        let greeting = std::mem::take(&mut self.p.greeting);
        self.driver.speak(&greeting, &mut self.outbox);
        self.flush_outbox().await
    }

    /// After the caller hung up: asks the model to end the session and, where
    /// the protocol confirms it, waits briefly for the confirmation and the
    /// final usage.
    async fn close_model<MR>(&mut self, model_rx: &mut MR)
    where
        MR: Stream<Item = WsIn> + Unpin,
    {
        let confirms = self.driver.close(&mut self.outbox);
        if self.flush_outbox().await.is_err() || !confirms {
            return;
        }
        let wait = async {
            while let Some(msg) = model_rx.next().await {
                let frame = match msg {
                    WsIn::Text(frame) => frame,
                    WsIn::Pong => continue,
                    WsIn::Binary(_) | WsIn::Close(_) => return,
                };
                if let Ok(ModelEvent::Closed { usage }) =
                    self.driver.on_frame(&frame, &mut Vec::new())
                {
                    self.count_usage(usage);
                    return;
                }
            }
        };
        if tokio::time::timeout(CLOSE_WAIT, wait).await.is_err() {
            tracing::debug!(call_sid = %self.p.context.call_sid, "the model did not confirm the end of the session");
        }
    }

    /// Counts usage for the process and sums it for the call.
    fn count_usage(&mut self, usage: Usage) {
        self.m.usage.count(&usage);
        if usage.seconds.is_finite() && usage.seconds > 0.0 {
            self.m.model_seconds.inc_by(usage.seconds);
        }
        self.usage.add(&usage);
    }

    /// Starts every call of one finished answer; they run beside the relay.
    /// Built-in call control is answered at once and arms the hang-up or
    /// transfer, which waits for the model's last sentence to be heard.
    fn start_tools(&mut self, calls: Vec<ToolCall>) {
        let id = self.next_batch;
        self.next_batch += 1;
        let mut pending = Vec::with_capacity(calls.len());
        for call in calls {
            self.tool_calls += 1;
            let label = if self.known_tools.contains(&call.name) {
                call.name.clone()
            } else {
                "unknown".to_owned()
            };
            tracing::info!(call_sid = %self.p.context.call_sid, tool = %label, "tool call");
            if self.p.log_content {
                tracing::info!(call_sid = %self.p.context.call_sid, tool = %label, arguments = %call.arguments, "tool arguments");
            }
            pending.push(label.clone());
            let call_id = call.call_id.clone();
            let started = Instant::now();
            let future: ToolFuture = match self.p.control.action(&call) {
                Some(action) => Box::pin(std::future::ready(self.arm(action))),
                None => self.tools.run(call, &self.p.context),
            };
            self.running.push(Box::pin(async move {
                let answer = future.await;
                Finished {
                    batch: id,
                    name: label,
                    output: ToolOutput {
                        call_id,
                        output: answer.output,
                    },
                    outcome: answer.outcome,
                    started,
                    took: started.elapsed(),
                }
            }));
        }
        self.batches.push(Batch {
            id,
            pending,
            outputs: Vec::new(),
        });
    }

    /// The model asked to hang up or transfer: what it is told, and the
    /// ending armed (or why not).
    fn arm(&mut self, action: Result<Action, String>) -> ToolAnswer {
        let action = match action {
            Ok(action) => action,
            Err(why) => return ToolAnswer::error(ToolOutcome::Error, &why),
        };
        if matches!(action, Action::Transfer { .. }) && self.p.rest.is_none() {
            return ToolAnswer::error(
                ToolOutcome::Error,
                "transfers are not available: Twilio's REST API has no credentials configured",
            );
        }
        if self.ending.is_some() {
            return ToolAnswer::error(
                ToolOutcome::Error,
                "the call is already ending or being transferred",
            );
        }
        let note = match &action {
            Action::Hangup => "The call will end once your goodbye has been heard. Say a brief goodbye now.",
            Action::Transfer { .. } => "The caller will be transferred once they have heard you. Tell them briefly that you are connecting them now.",
        };
        tracing::info!(call_sid = %self.p.context.call_sid, action = ?action, "call control requested");
        self.ending = Some(Ending {
            action,
            answered_at: None,
            last_audio: None,
            deadline: None,
        });
        ToolAnswer::ok(serde_json::json!({ "ok": true, "note": note }).to_string())
    }

    /// One tool call finished; a complete batch is answered at once.
    async fn tool_finished(&mut self, done: Finished) -> Step {
        self.m
            .tool_call(&done.name, done.outcome.as_str(), done.took);
        tracing::info!(call_sid = %self.p.context.call_sid, tool = %done.name, outcome = done.outcome.as_str(), took_ms = done.took.as_millis() as u64, "tool call finished");
        if self.p.log_content {
            tracing::info!(call_sid = %self.p.context.call_sid, tool = %done.name, result = %done.output.output, "tool result");
        }
        self.tool_log.push(ToolRecord {
            name: done.name.clone(),
            outcome: done.outcome.as_str(),
            at: done.started.saturating_duration_since(self.started),
            took: done.took,
        });
        let Some(pos) = self.batches.iter().position(|b| b.id == done.batch) else {
            return Ok(());
        };
        let batch = &mut self.batches[pos];
        batch.outputs.push(done.output);
        if let Some(i) = batch.pending.iter().position(|n| *n == done.name) {
            batch.pending.swap_remove(i);
        }
        if !batch.pending.is_empty() {
            return Ok(());
        }
        let batch = self.batches.remove(pos);
        self.driver.tool_outputs(&batch.outputs, &mut self.outbox);
        // The model now says its last sentence: the ending's clock starts.
        if let Some(ending) = self.ending.as_mut().filter(|e| e.answered_at.is_none()) {
            let now = Instant::now();
            ending.answered_at = Some(now);
            ending.deadline = Some(now + self.p.control.timeout());
        }
        self.flush_outbox().await
    }

    /// When the loop must wake for a timer of its own: a key sequence
    /// timing out, or an ending to check.
    fn next_timer(&self) -> Option<Instant> {
        let ending = self.ending.as_ref().and_then(|e| {
            // Once quiet, the marks (or the deadline) say when it was heard:
            // a time in the past would only spin the loop.
            let now = Instant::now();
            let quiet = e
                .last_audio
                .map(|at| at + LAST_WORDS_QUIET)
                .filter(|q| *q > now);
            match (quiet, e.deadline) {
                (Some(q), Some(d)) => Some(q.min(d)),
                (q, d) => q.or(d),
            }
        });
        let mut at = self.last_twilio + self.p.idle_timeout;
        at = at.min(self.started + self.p.max_call);
        if let Some(away) = &self.away {
            at = at.min(away.deadline);
        }
        if !self.rolling && self.away.is_none() {
            // Wake to look for a quiet moment once a rollover is due.
            let due = (self.session_started + self.p.max_session).max(self.rollover_after);
            let now = Instant::now();
            at = at.min(if due > now {
                due
            } else {
                now + Duration::from_millis(250)
            });
        }
        Some(
            [self.dtmf_due, ending]
                .into_iter()
                .flatten()
                .fold(at, Instant::min),
        )
    }

    async fn on_timer(&mut self) -> Step {
        let now = Instant::now();
        if now >= self.last_twilio + self.p.idle_timeout {
            self.m.error("twilio_idle");
            return Err(end(
                Outcome::IdleTimeout,
                format!("nothing from Twilio for {:?}", self.p.idle_timeout),
            ));
        }
        if self.away.as_ref().is_some_and(|a| now >= a.deadline) {
            self.m.reconnect("failed");
            return Err(end(
                Outcome::UpstreamFailed,
                "could not reconnect to the model within the budget",
            ));
        }
        if now >= self.started + self.p.max_call {
            return Err(end(
                Outcome::MaxDuration,
                format!("the call reached max_call_secs ({:?})", self.p.max_call),
            ));
        }
        if self.dtmf_due.is_some_and(|due| due <= now) {
            self.flush_dtmf().await?;
        }
        self.check_ending(now).await
    }

    /// Acts on an armed ending once its last sentence was heard: the model
    /// spoke after being answered, fell quiet, and Twilio played it all
    /// (every mark echoed); or the deadline passed.
    async fn check_ending(&mut self, now: Instant) -> Step {
        let Some(ending) = &self.ending else {
            return Ok(());
        };
        let heard = ending
            .last_audio
            .is_some_and(|at| now >= at + LAST_WORDS_QUIET)
            && !self.playout.is_playing(now);
        let late = ending.deadline.is_some_and(|d| now >= d);
        if !(heard || late) {
            return Ok(());
        }
        let Some(ending) = self.ending.take() else {
            return Ok(());
        };
        if late && !heard {
            tracing::info!(call_sid = %self.p.context.call_sid, "the last sentence did not finish in time; acting anyway");
        }
        let ctx = &self.p.context;
        match ending.action {
            Action::Hangup => {
                if let Some(rest) = &self.p.rest {
                    match rest.hang_up(&self.p.account_sid, &ctx.call_sid).await {
                        Ok(HangUp::Completed) | Ok(HangUp::AlreadyEnded) => {}
                        Err(e) => {
                            // Closing the stream still ends the call: the
                            // TwiML after </Connect> runs, then Twilio hangs up.
                            tracing::warn!(call_sid = %ctx.call_sid, error = %e, "REST hang-up failed; closing the stream");
                        }
                    }
                }
                Err(end(Outcome::Completed, "ended by the assistant"))
            }
            Action::Transfer { name, target } => {
                let Some(rest) = &self.p.rest else {
                    return Ok(());
                };
                match rest
                    .redirect(&self.p.account_sid, &ctx.call_sid, &twiml::dial(&target))
                    .await
                {
                    Ok(()) => {
                        tracing::info!(call_sid = %ctx.call_sid, target = %name, "transferred");
                        Err(end(Outcome::Completed, format!("transferred to {name}")))
                    }
                    Err(e) => {
                        tracing::warn!(call_sid = %ctx.call_sid, target = %name, error = %e, "transfer failed");
                        self.m.error("transfer_failed");
                        let text = format!(
                            "The transfer to {name} failed ({e}). Tell the caller, and offer to help another way."
                        );
                        self.driver.speak(&text, &mut self.outbox);
                        self.flush_outbox().await
                    }
                }
            }
        }
    }

    /// A keypad digit: collected into one entry per key sequence, ended by
    /// `#` or by `dtmf_timeout` of silence. Digits can be PINs and card
    /// numbers: they are counted, never logged.
    async fn on_dtmf(&mut self, digit: &str) -> Step {
        self.m.dtmf_digits.inc();
        if self.p.dtmf == DtmfMode::Ignore {
            return Ok(());
        }
        let Some(key) = digit
            .chars()
            .next()
            .filter(|c| digit.len() == 1 && DTMF_KEYS.contains(*c))
        else {
            return self.bad_twilio(Reject::Malformed);
        };
        self.dtmf_keys.push(key);
        if key == '#' || self.dtmf_keys.len() >= MAX_DTMF_KEYS {
            return self.flush_dtmf().await;
        }
        self.dtmf_due = Some(Instant::now() + self.p.dtmf_timeout);
        Ok(())
    }

    /// Hands the key sequence to the model as something the caller did.
    async fn flush_dtmf(&mut self) -> Step {
        self.dtmf_due = None;
        if self.dtmf_keys.is_empty() {
            return Ok(());
        }
        if self.p.log_content {
            tracing::info!(call_sid = %self.p.context.call_sid, digits = %self.dtmf_keys, "keypad digits");
        }
        let mut text = String::from("The caller pressed on the keypad:");
        for key in self.dtmf_keys.drain(..) {
            text.push(' ');
            text.push(key);
        }
        self.driver.user_text(&text, &mut self.outbox);
        self.flush_outbox().await
    }

    /// Words of the conversation, grouped into turns by speaker.
    fn record_transcript(&mut self, role: Role, text: &str, delta: bool) {
        if text.trim().is_empty() {
            return;
        }
        match self.transcript.last_mut() {
            Some(turn) if turn.role == role => {
                if !delta && !turn.text.ends_with(' ') && !text.starts_with(' ') {
                    turn.text.push(' ');
                }
                turn.text.push_str(text);
            }
            _ => {
                if self.p.log_content {
                    if let Some(done) = self.transcript.last() {
                        log_turn(&self.p.context.call_sid, done);
                    }
                }
                if role == Role::Caller {
                    self.caller_turns += 1;
                }
                self.transcript.push(Turn {
                    role,
                    text: text.trim_start().to_owned(),
                });
                self.transcript_at.push(self.started.elapsed());
            }
        }
        // The words themselves reach the logs only with `log.transcripts`
        // (one line per finished turn, see `log_turn`): they are the caller's.
        tracing::debug!(call_sid = %self.p.context.call_sid, role = ?role, bytes = text.len(), "transcript");
    }

    /// Counts a bad frame from Twilio; a burst of them ends the call.
    fn bad_twilio(&mut self, reason: Reject) -> Step {
        self.m.rejected.inc(Source::Twilio, reason);
        self.rejected += 1;
        let now = Instant::now();
        let refill = now.duration_since(self.bad_at).as_secs_f64() * BAD_FRAME_REFILL_PER_SEC;
        self.bad_at = now;
        self.bad_allowance = (self.bad_allowance + refill).min(BAD_FRAME_BURST) - 1.0;
        if self.bad_allowance < 0.0 {
            return Err(end(
                Outcome::ProtocolError,
                "too many invalid frames from Twilio",
            ));
        }
        Ok(())
    }

    async fn on_twilio(&mut self, frame: &[u8]) -> Step {
        let received = Instant::now();
        if frame.len() > MAX_TWILIO_FRAME {
            return self.bad_twilio(Reject::Oversize);
        }
        let Ok(text) = std::str::from_utf8(frame) else {
            return self.bad_twilio(Reject::Malformed);
        };
        let event = match parse_inbound(text) {
            Ok(event) => event,
            Err(MessageError::UnknownEvent(_)) => return self.bad_twilio(Reject::UnknownEvent),
            Err(_) => return self.bad_twilio(Reject::Malformed),
        };
        // Every message from `start` on is numbered (marks and dtmf too):
        // a gap means Twilio lost messages on the way.
        if let Some(seq) = event.sequence_number() {
            if let Some(last) = self.last_seq {
                if seq > last + 1 {
                    self.m.dropped_in_gap.inc_by(seq - last - 1);
                }
            }
            self.last_seq = Some(seq);
        }
        match event {
            Inbound::Media { media, .. } => {
                self.ulaw_in.clear();
                if B64
                    .decode_vec(media.payload.as_bytes(), &mut self.ulaw_in)
                    .is_err()
                {
                    return self.bad_twilio(Reject::BadBase64);
                }
                if self.caller_late(received, media.timestamp_ms()) {
                    self.m
                        .dropped_in_late
                        .inc_by(self.ulaw_in.len().div_ceil(TWILIO_FRAME_BYTES).max(1) as u64);
                    return Ok(());
                }
                if self.model_tx.is_none() || (self.sessions > 1 && !self.driver.ready()) {
                    // The model is away or its new session not ready yet:
                    // keep the newest audio for it, what was gathered for
                    // the next append first.
                    let mut dropped = self.held.push(&self.pending_in);
                    self.pending_in.clear();
                    dropped += self.held.push(&self.ulaw_in);
                    if dropped > 0 {
                        self.m
                            .dropped_in_reconnect
                            .inc_by(dropped.div_ceil(TWILIO_FRAME_BYTES) as u64);
                    }
                    return Ok(());
                }
                if !self.driver.ready() {
                    // The first session is not configured yet: never burst
                    // old audio at it.
                    self.m.dropped_in_not_ready.inc();
                    return Ok(());
                }
                let block = if self.append_bytes > TWILIO_FRAME_BYTES {
                    // `audio.append_ms`: gather frames into one append.
                    self.pending_in.extend_from_slice(&self.ulaw_in);
                    if self.pending_in.len() < self.append_bytes {
                        return Ok(());
                    }
                    &self.pending_in
                } else {
                    &self.ulaw_in
                };
                let frames = (block.len() / TWILIO_FRAME_BYTES).max(1) as u64;
                let audio = self.inbound.transcode(block);
                let mut msg = String::new();
                self.driver.append_audio(audio, &mut msg);
                self.pending_in.clear();
                self.send_model(msg).await?;
                self.frames_in += frames;
                self.m.frames_in.inc_by(frames);
                self.m.relay_in.observe_duration(received.elapsed());
            }
            Inbound::Mark { mark, .. } => {
                if let MarkEcho::Foreign = self.playout.on_mark(&mark.name) {
                    tracing::debug!(name = %mark.name, "mark that is not ours");
                }
                if self.ending.is_some() {
                    self.check_ending(Instant::now()).await?;
                }
            }
            Inbound::Stop { .. } => return Err(End(Outcome::Completed, None)),
            Inbound::Dtmf { dtmf, .. } => self.on_dtmf(&dtmf.digit).await?,
            Inbound::Connected { .. } | Inbound::Start { .. } => {
                tracing::debug!(call_sid = %self.p.context.call_sid, "repeated connected/start ignored");
            }
        }
        Ok(())
    }

    /// Whether caller audio stamped `timestamp_ms` by Twilio arrived more
    /// than `max_lag` later than it should have: later, relative to Twilio's
    /// clock, than the most punctual frame so far. Lateness means a backlog
    /// on the way in (the bridge, or its writes to the model, fell behind);
    /// late audio is dropped so that the model hears the caller as of now.
    ///
    /// The reference may creep later by 1 ms per second (0.1 %), so that a
    /// Twilio clock a little slower than ours cannot, over a long call, make
    /// every frame look late; a backlog grows much faster than that. And
    /// after [`LATE_RESET`] of nothing but late frames the reference is
    /// reset: timestamps that jump cost at most that much audio, never the
    /// rest of the call. A timestamp that does not advance past the latest
    /// one (stuck, repeated, stepped back, or behind one forged far ahead)
    /// says nothing: that frame is relayed unchecked.
    fn caller_late(&mut self, received: Instant, timestamp_ms: Option<u64>) -> bool {
        let Some(ts) = timestamp_ms.filter(|_| !self.p.max_lag.is_zero()) else {
            return false;
        };
        if self.in_last_ts.is_some_and(|last| ts <= last) {
            return false;
        }
        self.in_last_ts = Some(ts);
        let since_ms = received.saturating_duration_since(self.started).as_millis();
        let offset = i128::try_from(since_ms).unwrap_or(i128::MAX) - i128::from(ts);
        let reference = self.in_base.map(|(base, at)| {
            let creep = received.saturating_duration_since(at).as_millis() / 1000;
            base.saturating_add(i128::try_from(creep).unwrap_or(i128::MAX))
        });
        let late = reference.is_some_and(|reference| {
            offset.saturating_sub(reference) > i128::from(self.p.max_lag.as_millis() as u64)
        });
        if late {
            let since = *self.in_late_since.get_or_insert(received);
            if received.saturating_duration_since(since) < LATE_RESET {
                return true;
            }
        }
        self.in_late_since = None;
        if reference.is_none_or(|reference| offset < reference) || late {
            self.in_base = Some((offset, received));
        }
        false
    }

    async fn on_model(&mut self, frame: &[u8]) -> Step {
        let received = Instant::now();
        let event = match self.driver.on_frame(frame, &mut self.outbox) {
            Ok(event) => event,
            Err(e) => {
                self.m.rejected.inc(Source::Model, Reject::Malformed);
                tracing::warn!(call_sid = %self.p.context.call_sid, error = %e, "malformed event from the model");
                return Ok(());
            }
        };
        match event {
            ModelEvent::Audio { item, b64 } => {
                self.model_audio.clear();
                if B64
                    .decode_vec(b64.as_bytes(), &mut self.model_audio)
                    .is_err()
                {
                    self.m.rejected.inc(Source::Model, Reject::BadBase64);
                    return Ok(());
                }
                match self.outbound.transcode(&self.model_audio) {
                    Ok(ulaw) => {
                        if !self.playout.push_at(&item, ulaw, received) {
                            self.m.dropped_out_overflow.inc();
                        }
                    }
                    Err(_) => {
                        self.m.rejected.inc(Source::Model, Reject::BadAudio);
                        return Ok(());
                    }
                }
                self.last_model_audio = Some(received);
                if let Some(ending) = self.ending.as_mut().filter(|e| e.answered_at.is_some()) {
                    ending.last_audio = Some(received);
                }
                self.pump().await?;
                self.m.relay_out.observe_duration(received.elapsed());
            }
            ModelEvent::StaleAudio => {
                self.m.dropped_out_stale.inc();
            }
            ModelEvent::AudioDone { item } => {
                let tail = self.outbound.flush();
                if !self.playout.push_at(&item, tail, received) {
                    self.m.dropped_out_overflow.inc();
                }
                self.pump().await?;
            }
            ModelEvent::CallerStarted => {
                self.caller_speaking = true;
                if self.driver.talk_over() == TalkOver::Interrupt {
                    self.barge_in(received).await?;
                }
            }
            ModelEvent::CallerStopped => {
                self.caller_speaking = false;
                self.turn_pending = true;
                self.turns += 1;
                self.speech_stopped_at = Some(received);
            }
            ModelEvent::Ready => {
                self.observe_ready();
                self.flush_held().await?;
                self.greet().await?;
            }
            ModelEvent::AnswerDone {
                tool_calls,
                usage,
                failed,
            } => {
                self.turn_pending = false;
                self.count_usage(usage);
                if failed {
                    self.m.error("response_failed");
                    tracing::warn!(call_sid = %self.p.context.call_sid, "the model's answer failed");
                }
                if !tool_calls.is_empty() {
                    self.start_tools(tool_calls);
                }
            }
            ModelEvent::Transcript { role, text, delta } => {
                self.record_transcript(role, &text, delta);
            }
            ModelEvent::Usage(usage) => self.count_usage(usage),
            ModelEvent::Error { code, message } => {
                self.m.error("model_error");
                tracing::warn!(call_sid = %self.p.context.call_sid, code = %code, message = %message, "model error");
            }
            ModelEvent::Fatal { code, message } => {
                self.m.error("model_fatal");
                tracing::error!(call_sid = %self.p.context.call_sid, code = %code, message = %message, "fatal model error");
                return Err(end(
                    Outcome::UpstreamFailed,
                    format!("model error {code}: {message}"),
                ));
            }
            ModelEvent::Closed { usage } => {
                self.count_usage(usage);
                self.broken("the model ended the session")?;
            }
            ModelEvent::Lost { reason } => {
                self.broken(format!("the model's session ended: {reason}"))?;
            }
            ModelEvent::None => {}
        }
        self.flush_outbox().await
    }

    /// PROTOCOLS.md §3: clear, then the driver stops the answer and tells the
    /// model what was heard; a new generation drops stale marks.
    async fn barge_in(&mut self, received: Instant) -> Step {
        let playing = self.playout.is_playing(received);
        if !playing && !self.driver.answering() {
            return Ok(());
        }
        self.bargeins += 1;
        self.m.bargeins.inc();
        if playing {
            let mut msg = String::with_capacity(64);
            messages::write_clear(&mut msg, &self.p.context.stream_sid);
            self.send_twilio(msg).await?;
            self.m.bargein_latency.observe_duration(received.elapsed());
        }
        let cuts = self.playout.interrupt(Instant::now());
        self.outbound.reset();
        let heard: Vec<Heard<'_>> = cuts
            .iter()
            .map(|t| Heard {
                item_id: &t.item_id,
                audio_end_ms: t.audio_end_ms,
            })
            .collect();
        if cuts.is_empty() {
            self.m.truncations_skipped.inc();
        }
        for t in &cuts {
            self.m.truncations_sent.inc();
            tracing::debug!(call_sid = %self.p.context.call_sid, item_id = %t.item_id, audio_end_ms = t.audio_end_ms, acked_ms = t.acked_ms, sent_ms = t.sent_ms, "truncate");
        }
        self.driver.interrupt(&heard, &mut self.outbox);
        self.flush_outbox().await
    }

    /// Sends every chunk the lead allows now, each followed by its mark,
    /// in one flush.
    async fn pump(&mut self) -> Step {
        let mut frames = std::mem::take(&mut self.frames_pending);
        loop {
            let now = Instant::now();
            let late = self.playout.shed_late(now);
            if late > 0 {
                self.m
                    .dropped_out_late
                    .inc_by(late.div_ceil(TWILIO_FRAME_BYTES) as u64);
            }
            let Some(chunk) = self.playout.next_chunk(now) else {
                break;
            };
            // Cut into Twilio's own 20 ms frames; one mark per chunk.
            for piece in chunk.payload.chunks(TWILIO_FRAME_BYTES) {
                self.b64.clear();
                B64.encode_string(piece, &mut self.b64);
                let mut media = String::with_capacity(self.b64.len() + 96);
                messages::write_media(&mut media, &self.p.context.stream_sid, &self.b64);
                frames.push(media);
                self.frames_out += 1;
                self.m.frames_out.inc();
            }
            let mut mark = String::with_capacity(128);
            messages::write_mark(&mut mark, &self.p.context.stream_sid, chunk.mark);
            frames.push(mark);
            self.m.playout_lead.observe_duration(chunk.lead);
            if let Some(stopped) = self.speech_stopped_at.take() {
                self.m
                    .turn_latency
                    .observe_duration(now.duration_since(stopped));
            }
            if !self.first_audio_sent {
                self.first_audio_sent = true;
                self.m
                    .first_audio
                    .observe_duration(now.duration_since(self.started));
            }
        }
        if frames.is_empty() {
            self.frames_pending = frames;
            return Ok(());
        }
        // Every chunk due now and its mark: fed, then flushed as one write,
        // under one write timeout (a timer per message cost more than the
        // message's JSON).
        let tx = &mut self.twilio_tx;
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            for msg in frames.drain(..) {
                tx.feed(WsOut::Text(msg)).await?;
            }
            tx.flush().await
        })
        .await;
        frames.clear();
        self.frames_pending = frames;
        self.twilio_result(written)
    }
}

/// The next message of the model's socket; never, while there is none.
async fn next_or_pending<MR: Stream<Item = WsIn> + Unpin>(rx: &mut Option<MR>) -> Option<WsIn> {
    match rx.as_mut() {
        Some(rx) => rx.next().await,
        None => std::future::pending().await,
    }
}

/// The pending connection attempt's result; never, while there is none.
async fn poll_or_pending<T>(fut: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match fut.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;

/// One finished turn of the conversation, logged only with `log.transcripts`.
fn log_turn(call_sid: &str, turn: &Turn) {
    tracing::info!(call_sid, role = ?turn.role, text = %turn.text, "transcript");
}
