//! `callbridge demo`: the whole product on loopback, with no keys and no
//! network. Starts the local model peer ([`crate::echo`], speaking Realtime
//! or GPT-Live as the dialect asks) and the real
//! server ([`callbridge::server`]) on `127.0.0.1:0`, with signature checks on and a
//! throw-away auth token, then places one simulated Twilio call that speaks
//! the speech fixture, talks over the answer (barge-in), and hangs up once
//! the last answer has played. Prints what happened and writes the call as a
//! stereo WAV (caller left, what the caller heard right).

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::echo::{self, EchoOptions, EchoProtocol};
use crate::{caller, BargeIn, CallOptions, CallReport, SimError};
use callbridge::audio::AudioMode;
use callbridge::config::{Config, Dialect, Secret, Secrets};
use callbridge::metrics::Metrics;
use callbridge::server::Server;

/// Built in, so the demo and `callbridge call` run from any directory:
/// six seconds of espeak-ng speech, and an interjection for talking over
/// the answer (μ-law 8 kHz, from `fixtures/`).
pub const SPEECH: &[u8] = include_bytes!("../../fixtures/speech.ulaw");
pub const BARGE_IN: &[u8] = include_bytes!("../../fixtures/bargein.ulaw");

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
}

fn mean(count: u64, sum: f64) -> Option<Duration> {
    (count > 0).then(|| Duration::from_secs_f64(sum / count as f64))
}

/// Runs the demo call end to end.
pub async fn run(
    dialect: Dialect,
    mode: AudioMode,
    barge_in_after: Duration,
    progress: Option<tokio::sync::mpsc::UnboundedSender<caller::Progress>>,
) -> Result<(CallReport, BridgeSide), SimError> {
    let io = |what: &str, e: std::io::Error| SimError::Options(format!("{what}: {e}"));
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
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| SimError::Options(e.to_string()))?;
    let auth_token: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(auth_token.clone())),
        ..Secrets::default()
    };
    let metrics = Metrics::new();
    let server = Server::new(config, secrets, metrics.clone())
        .map_err(|e| SimError::Options(format!("starting the bridge: {e}")))?;
    let (stop_bridge, bridge_stopped) = oneshot::channel::<()>();
    let bridge = tokio::spawn(server.run(listener, async {
        let _ = bridge_stopped.await;
    }));

    let url =
        url::Url::parse(&format!("http://{addr}")).map_err(|e| SimError::Options(e.to_string()))?;
    let mut opts = CallOptions::new(url, SPEECH.to_vec());
    opts.auth_token = Some(auth_token);
    opts.barge_in = Some(BargeIn {
        audio: BARGE_IN.to_vec(),
        after_heard: barge_in_after,
    });
    opts.max_duration = Duration::from_secs(60);
    let report = caller::place_call(opts, progress).await;

    let side = BridgeSide {
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
    };
    let _ = stop_bridge.send(());
    let _ = stop_peer.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), bridge).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), peer).await;
    Ok((report?, side))
}
