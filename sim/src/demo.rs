//! `callbridge demo`: the whole product on loopback, with no keys and no
//! network. Starts the local model peer ([`crate::echo`], speaking Realtime
//! or GPT-Live as the dialect asks), a tiny HTTP tool endpoint
//! ([`crate::tool_server`]) and the real server ([`callbridge::server`]) on
//! `127.0.0.1:0`, with signature checks on and a throw-away auth token, then
//! places one simulated Twilio call:
//!
//! 1. The caller says "Hello". The peer answers with a scripted call of the
//!    configured HTTP tool `lookup_order {"order_id":"123"}`; the bridge
//!    POSTs it to the tool endpoint (the real [`callbridge::call::http_tools`]
//!    path) and hands the answer back, and the peer speaks it.
//! 2. The caller asks for a table; the peer echoes it, and the caller talks
//!    over the echo (barge-in).
//! 3. On that third caller turn the peer says goodbye and calls the built-in
//!    `end_call`. The bridge waits until the goodbye has been heard, hangs up
//!    through Twilio's REST API (the tool endpoint stands in for it, so
//!    nothing leaves the machine) and closes the stream with 1000, while the
//!    caller is still on the line.
//!
//! Before it, a short call to an assistant that greets measures the first
//! turn ([`crate::first_turn`]): how long after `start` the model session is
//! ready and the greeting arrives, with pre-warm on or off and the model's
//! connect time stood in for by the peer ([`DemoOptions`]).
//!
//! [`DemoReport`] holds what the caller, the bridge and the tool endpoint
//! saw; the call is written as a stereo WAV by the CLI.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::echo::{self, EchoOptions, EchoProtocol, ToolCall};
use crate::first_turn::{self, FirstTurn, FirstTurnOptions};
use crate::tool_server::{HangUp, ToolRequest, ToolServer, LOOKUP_ORDER};
use crate::{caller, rms, BargeIn, CallOptions, CallReport, Progress, SimError};
use crate::{FRAME, FRAME_BYTES, SILENCE, SPEECH_RMS};
use callbridge::audio::AudioMode;
use callbridge::config::{Config, Dialect, Secret, Secrets, ToolConfig};
use callbridge::metrics::{Metrics, TwilioOp, TwilioOutcome};
use callbridge::server::Server;
use callbridge::upstream::Usage;

/// Built in, so the demo and `callbridge call` run from any directory:
/// six seconds of espeak-ng speech, and an interjection for talking over
/// the answer (μ-law 8 kHz, from `fixtures/`).
pub const SPEECH: &[u8] = include_bytes!("../../fixtures/speech.ulaw");
pub const BARGE_IN: &[u8] = include_bytes!("../../fixtures/bargein.ulaw");

/// The order the peer looks up.
pub const ORDER_ID: &str = "123";
/// The caller's opening: the first 0.9 s of [`SPEECH`], "Hello," (the pause
/// after it is far shorter than a turn's end, so it is cut out alone).
const HELLO: Duration = Duration::from_millis(900);
/// When the caller's request starts: once the tool's answer has played.
const REQUEST_AT: Duration = Duration::from_secs(4);
/// The caller's turn on which the peer says goodbye and calls `end_call`:
/// 1 is the hello (answered by the tool call), 2 the request (echoed and
/// talked over), 3 the barge-in.
const END_CALL_ON_TURN: u32 = 3;
/// How long the caller stays on the line, silent, after talking over the
/// echo: far longer than the goodbye takes, so a call that the assistant
/// fails to end is ended by the caller, and the report shows it.
const CALLER_WAITS: Duration = Duration::from_secs(6);
/// How far back from the end of the call the goodbye is looked for.
pub const GOODBYE_WINDOW: Duration = Duration::from_secs(5);

/// Answer audio the caller hears before the echo it talks over, which the
/// barge-in threshold skips: the peer's spoken tool answer (a 1.5 s chime),
/// and over GPT-Live the "one moment, checking" (0.6 s) before it.
fn heard_before_echo(dialect: Dialect) -> Duration {
    if dialect.is_live() {
        Duration::from_millis(2100)
    } else {
        Duration::from_millis(1500)
    }
}

/// What the bridge itself measured during the demo call.
#[derive(Debug, Clone, Default)]
pub struct BridgeSide {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bargeins: u64,
    pub truncations: u64,
    /// Mean of `speech_started` received → `clear` sent.
    pub bargein_reaction: Option<Duration>,
    /// Mean of the model's `speech_stopped` → first answer audio sent.
    pub turn_latency: Option<Duration>,
    pub rejected_or_errors: u64,
    /// `callbridge_tool_calls_total{name="lookup_order"}`: `ok`, and the
    /// rest (`error`, `timeout`, `dropped`).
    pub tool_calls_ok: u64,
    pub tool_calls_failed: u64,
    /// Mean `callbridge_tool_duration_seconds{name="lookup_order"}`.
    pub tool_duration: Option<Duration>,
    /// `callbridge_tool_calls_total{name="end_call",outcome="ok"}`.
    pub end_calls: u64,
    /// `callbridge_twilio_api_requests_total{op="hangup",outcome="ok"}`.
    pub rest_hangups: u64,
    /// The model's tokens (`callbridge_realtime_tokens_total`), input and
    /// output, every kind.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// GPT-Live's billed session time (`callbridge_model_session_seconds_total`).
    pub model_seconds: f64,
    /// The call's estimated cost (`callbridge_call_cost_usd`, from the
    /// bridge's `[pricing]`), once the bridge counted the call.
    pub cost_usd: Option<f64>,
}

/// How the call ended, from the caller's side.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// The caller sent `stop`: it hung up, so the assistant did not.
    pub caller_hung_up: bool,
    /// When the bridge closed the stream, on the call's timeline.
    pub closed_at: Option<Duration>,
    /// Answer audio the caller heard in the [`GOODBYE_WINDOW`] before the
    /// end of the call.
    pub goodbye_heard: Duration,
    /// From the end of the last answer audio heard to the end of the call.
    pub quiet_before_close: Option<Duration>,
}

/// Everything the demo call showed.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// What the simulated caller sent, heard and saw.
    pub call: CallReport,
    pub bridge: BridgeSide,
    /// What the tool endpoint received, and answered.
    pub tool_requests: Vec<ToolRequest>,
    /// The REST hang-ups the stand-in for Twilio's API received.
    pub hangups: Vec<HangUp>,
    /// When the first tool request arrived, on the call's timeline.
    pub tool_called_at: Option<Duration>,
    pub ending: Ending,
    /// The first turn of a call to an assistant that greets, measured
    /// before the demo call ([`crate::first_turn`]).
    pub first_turn: FirstTurn,
}

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dialect: Dialect,
    pub mode: AudioMode,
    /// Talk over the echo once this much of it has been heard.
    pub barge_in_after: Duration,
    /// The local peer holds each WebSocket handshake this long
    /// ([`EchoOptions::connect_delay`]): a real provider's connect time.
    pub connect_delay: Duration,
    /// `realtime.prewarm`: open the model session at the webhook.
    pub prewarm: bool,
    /// The simulated Twilio's pause between the webhook's answer and
    /// opening the stream ([`crate::CallOptions::stream_delay`]).
    pub stream_gap: Duration,
}

impl DemoOptions {
    pub fn new(dialect: Dialect, mode: AudioMode) -> DemoOptions {
        DemoOptions {
            dialect,
            mode,
            barge_in_after: Duration::from_millis(1500),
            connect_delay: Duration::ZERO,
            prewarm: true,
            stream_gap: Duration::ZERO,
        }
    }

    /// The first-turn probe with the same settings.
    pub fn first_turn(&self) -> FirstTurnOptions {
        FirstTurnOptions {
            dialect: self.dialect,
            mode: self.mode,
            connect_delay: self.connect_delay,
            prewarm: self.prewarm,
            stream_gap: self.stream_gap,
        }
    }
}

/// The arguments the peer calls `lookup_order` with.
pub fn tool_arguments() -> Value {
    json!({ "order_id": ORDER_ID })
}

impl DemoReport {
    /// `Ok` when the tool round trip happened as scripted: one request to
    /// the endpoint, for this call, with the scripted arguments, answered
    /// 200, and counted `ok` by the bridge.
    pub fn tool_round_trip(&self) -> Result<(), String> {
        let [request] = self.tool_requests.as_slice() else {
            return Err(format!(
                "the tool endpoint got {} requests (expected 1)",
                self.tool_requests.len()
            ));
        };
        if request.name() != Some(LOOKUP_ORDER) {
            return Err(format!("the tool request names {:?}", request.name()));
        }
        if request.call_sid() != Some(self.call.call_sid.as_str()) {
            return Err(format!(
                "the tool request carries call_sid {:?}, not the call's {}",
                request.call_sid(),
                self.call.call_sid
            ));
        }
        if request.arguments() != Some(&tool_arguments()) {
            return Err(format!(
                "the tool request carries arguments {:?}",
                request.arguments()
            ));
        }
        if request.status != 200 {
            return Err(format!("the tool endpoint answered {}", request.status));
        }
        if self.bridge.tool_calls_ok != 1 || self.bridge.tool_calls_failed != 0 {
            return Err(format!(
                "the bridge counted {} ok and {} failed lookup_order calls (expected 1 ok)",
                self.bridge.tool_calls_ok, self.bridge.tool_calls_failed
            ));
        }
        Ok(())
    }

    /// `Ok` when the assistant ended the call after its goodbye was heard:
    /// `end_call` answered, the REST hang-up made, the stream closed with
    /// 1000 while the caller was still on the line, and answer audio heard
    /// in the last seconds before the close.
    pub fn ended_by_assistant(&self) -> Result<(), String> {
        if self.ending.caller_hung_up {
            return Err("the caller hung up: the assistant never ended the call".into());
        }
        if self.call.close_code != Some(1000) {
            return Err(format!(
                "the stream closed with {:?}, not 1000",
                self.call.close_code
            ));
        }
        if self.bridge.end_calls != 1 {
            return Err(format!(
                "the bridge answered {} end_call calls (expected 1)",
                self.bridge.end_calls
            ));
        }
        let hung_up = self
            .hangups
            .iter()
            .any(|h| h.call_sid == self.call.call_sid && h.status == "completed" && h.authorized);
        if !hung_up || self.bridge.rest_hangups != 1 {
            return Err(format!(
                "no REST hang-up of the call ({} requests received, {} answered ok)",
                self.hangups.len(),
                self.bridge.rest_hangups
            ));
        }
        if self.ending.goodbye_heard < Duration::from_secs(1) {
            return Err(format!(
                "the caller heard only {} ms of answer in the {} s before the close: no goodbye",
                self.ending.goodbye_heard.as_millis(),
                GOODBYE_WINDOW.as_secs()
            ));
        }
        Ok(())
    }
}

fn mean(count: u64, sum: f64) -> Option<Duration> {
    (count > 0).then(|| Duration::from_secs_f64(sum / count as f64))
}

/// The mean of histogram `family{name="…"}` from the metrics exposition.
fn labelled_mean(metrics: &Metrics, family: &str, name: &str) -> Option<Duration> {
    let text = metrics.encode();
    let value = |part: &str| {
        let prefix = format!("{family}_{part}{{name=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (count, sum) = (value("count")?, value("sum")?);
    (count >= 1.0).then(|| Duration::from_secs_f64(sum / count))
}

/// What the caller says: "Hello", a pause for the tool's answer, then the
/// whole request.
fn script() -> Vec<u8> {
    let bytes = |d: Duration| d.as_millis() as usize * 8;
    let mut audio = SPEECH[..bytes(HELLO)].to_vec();
    audio.resize(bytes(REQUEST_AT), SILENCE);
    audio.extend_from_slice(SPEECH);
    audio
}

/// The end of the call as heard: answer audio in the last seconds, and the
/// quiet after it.
fn ending_heard(heard: &[u8]) -> (Duration, Option<Duration>) {
    let audible: Vec<bool> = heard
        .chunks(FRAME_BYTES)
        .map(|f| rms(f) > SPEECH_RMS)
        .collect();
    let n = audible.len();
    let window = (GOODBYE_WINDOW.as_millis() / FRAME.as_millis()) as usize;
    let frames = |k: usize| FRAME * u32::try_from(k).unwrap_or(u32::MAX);
    let in_window = audible[n.saturating_sub(window)..]
        .iter()
        .filter(|a| **a)
        .count();
    let quiet = audible.iter().rposition(|a| *a).map(|i| frames(n - 1 - i));
    (frames(in_window), quiet)
}

/// What the narration channel showed: who ended the call, and when.
#[derive(Default)]
struct Watched {
    started: Option<Instant>,
    caller_hung_up: bool,
    closed_at: Option<Duration>,
}

/// Runs the demo call end to end, pre-warmed, with no connect delay.
pub async fn run(
    dialect: Dialect,
    mode: AudioMode,
    barge_in_after: Duration,
    progress: Option<tokio::sync::mpsc::UnboundedSender<caller::Progress>>,
) -> Result<DemoReport, SimError> {
    let options = DemoOptions {
        barge_in_after,
        ..DemoOptions::new(dialect, mode)
    };
    run_with(&options, progress).await
}

/// Runs the demo call end to end, as `options` say.
pub async fn run_with(
    demo: &DemoOptions,
    progress: Option<tokio::sync::mpsc::UnboundedSender<caller::Progress>>,
) -> Result<DemoReport, SimError> {
    let (dialect, mode, barge_in_after) = (demo.dialect, demo.mode, demo.barge_in_after);
    let first_turn = first_turn::measure(demo.first_turn()).await?;
    let io = |what: &str, e: std::io::Error| SimError::Options(format!("{what}: {e}"));
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| SimError::Options(e.to_string()))?;
    let auth_token: String = key.iter().map(|b| format!("{b:02x}")).collect();

    let tools = ToolServer::start(Some(auth_token.clone()))
        .await
        .map_err(|e| io("starting the tool endpoint", e))?;

    let peer_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| io("binding the local Realtime peer", e))?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(|e| io("local Realtime peer", e))?;
    let (stop_peer, peer_stopped) = oneshot::channel::<()>();
    let protocol = if dialect.is_live() {
        EchoProtocol::Live
    } else {
        EchoProtocol::Realtime
    };
    let options = EchoOptions {
        protocol,
        tool_call: Some(ToolCall {
            name: LOOKUP_ORDER.to_owned(),
            arguments: tool_arguments().to_string(),
        }),
        end_call_after: Some(END_CALL_ON_TURN),
        connect_delay: demo.connect_delay,
        ..EchoOptions::default()
    };
    let peer = tokio::spawn(echo::serve(peer_listener, options, async {
        let _ = peer_stopped.await;
    }));

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| io("binding the bridge", e))?;
    let addr = listener.local_addr().map_err(|e| io("bridge", e))?;
    let mut config = Config {
        public_url: Some(format!("http://{addr}")),
        ..Config::default()
    };
    config.realtime.dialect = dialect;
    config.realtime.url = Some(if dialect.is_live() {
        format!("ws://{peer_addr}/v1/live/sessions")
    } else {
        format!("ws://{peer_addr}/v1/realtime?model=echo")
    });
    config.audio.mode = mode;
    config.realtime.prewarm = demo.prewarm;
    // A real `[[agent.tools]]` entry: the bridge's HTTP tool runner calls it.
    let mut tool = ToolConfig::new(
        LOOKUP_ORDER,
        "Look up an order's status and delivery day by its order number.",
        tools.tool_url(LOOKUP_ORDER),
    );
    tool.parameters = json!({
        "type": "object",
        "required": ["order_id"],
        "properties": {
            "order_id": {"type": "string", "description": "The order number the caller reads out"}
        },
    });
    tool.timeout_ms = 2000;
    config.agent.tools = vec![tool];
    config.agent.call_control.end_call = true;
    // The auth token is also the REST credential: the hang-up goes to the
    // local stand-in, never to api.twilio.com.
    config.twilio.api_base_url = tools.base_url();
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(auth_token.clone())),
        ..Secrets::default()
    };
    let metrics = Metrics::new();
    let server = Server::new(config, secrets, metrics.clone())
        .map_err(|e| SimError::Options(format!("starting the bridge: {e}")))?;
    let (stop_bridge, bridge_stopped) = oneshot::channel::<()>();
    // The admin routes (/metrics, /healthz, /readyz) on a port of their own.
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| io("binding the bridge's admin port", e))?;
    let bridge = tokio::spawn(server.run(listener, admin, async {
        let _ = bridge_stopped.await;
    }));

    let url =
        url::Url::parse(&format!("http://{addr}")).map_err(|e| SimError::Options(e.to_string()))?;
    let mut opts = CallOptions::new(url, script());
    opts.auth_token = Some(auth_token);
    opts.barge_in = Some(BargeIn {
        audio: BARGE_IN.to_vec(),
        after_heard: heard_before_echo(dialect) + barge_in_after,
    });
    opts.trailing_silence = CALLER_WAITS;
    opts.stream_delay = demo.stream_gap;
    opts.max_duration = Duration::from_secs(60);

    // Watch the narration on its way to the CLI: it says who ended the call.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        let mut watched = Watched::default();
        while let Some(event) = rx.recv().await {
            match &event {
                Progress::Streaming { .. } => watched.started = Some(Instant::now()),
                Progress::Stopped { .. } => watched.caller_hung_up = true,
                Progress::Closed { at, .. } => watched.closed_at = Some(*at),
                _ => {}
            }
            if let Some(forward) = &progress {
                let _ = forward.send(event);
            }
        }
        watched
    });
    let report = caller::place_call(opts, Some(tx)).await;
    let watched = watcher.await.unwrap_or_default();

    let tool_calls = |outcome: &str| metrics.tool_calls(LOOKUP_ORDER, outcome);
    let bridge_side = BridgeSide {
        frames_in: metrics.frames_in.get(),
        frames_out: metrics.frames_out.get(),
        bargeins: metrics.bargeins.get(),
        truncations: metrics.truncations_sent.get(),
        bargein_reaction: mean(
            metrics.bargein_latency.count(),
            metrics.bargein_latency.sum(),
        ),
        turn_latency: mean(metrics.turn_latency.count(), metrics.turn_latency.sum()),
        rejected_or_errors: 0,
        tool_calls_ok: tool_calls("ok"),
        tool_calls_failed: tool_calls("error") + tool_calls("timeout") + tool_calls("dropped"),
        tool_duration: labelled_mean(&metrics, "callbridge_tool_duration_seconds", LOOKUP_ORDER),
        end_calls: metrics.tool_calls("end_call", "ok"),
        rest_hangups: metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Ok),
        input_tokens: 0,
        output_tokens: 0,
        model_seconds: 0.0,
        cost_usd: None,
    };
    let _ = stop_bridge.send(());
    let _ = stop_peer.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), bridge).await;
    // The drain has waited for the call: its usage and cost are counted.
    let tokens = |kinds: &[&str]| kinds.iter().map(|k| metrics.usage.tokens(k)).sum::<u64>();
    let bridge_side = BridgeSide {
        input_tokens: tokens(&Usage::KINDS[..4]),
        output_tokens: tokens(&Usage::KINDS[4..]),
        model_seconds: metrics.model_seconds.get(),
        cost_usd: (metrics.usage.call_cost.count() > 0).then(|| metrics.usage.call_cost.sum()),
        ..bridge_side
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), peer).await;
    let tool_requests = tools.tool_requests();
    let hangups = tools.hangups();
    tools.stop().await;

    let call = report?;
    let (goodbye_heard, quiet_before_close) = ending_heard(&call.heard);
    let tool_called_at = match (watched.started, tool_requests.first()) {
        (Some(started), Some(request)) => Some(request.at.saturating_duration_since(started)),
        _ => None,
    };
    Ok(DemoReport {
        call,
        bridge: bridge_side,
        tool_requests,
        hangups,
        tool_called_at,
        ending: Ending {
            caller_hung_up: watched.caller_hung_up,
            closed_at: watched.closed_at,
            goodbye_heard,
            quiet_before_close,
        },
        first_turn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_hello_pause_request() {
        let audio = script();
        assert_eq!(audio.len(), 32_000 + SPEECH.len());
        assert_eq!(&audio[..7200], &SPEECH[..7200]);
        assert!(audio[7200..32_000].iter().all(|&b| b == SILENCE));
        assert_eq!(&audio[32_000..], SPEECH);
    }

    #[test]
    fn ending_counts_audio_before_the_close() {
        let loud: Vec<u8> = {
            let mut tone = Vec::new();
            callbridge::audio::g711::encode_into(
                &callbridge::audio::measure::sine(440.0, 8000, 8000.0, 160 * 50),
                &mut tone,
            );
            tone
        };
        // 10 s of silence, 1 s of answer, 1 s of quiet.
        let mut heard = vec![SILENCE; 80_000];
        heard.extend_from_slice(&loud);
        heard.extend(std::iter::repeat_n(SILENCE, 8000));
        let (goodbye, quiet) = ending_heard(&heard);
        assert_eq!(goodbye, Duration::from_secs(1));
        assert_eq!(quiet, Some(Duration::from_secs(1)));
        assert_eq!(ending_heard(&[SILENCE; 800]), (Duration::ZERO, None));
    }
}
