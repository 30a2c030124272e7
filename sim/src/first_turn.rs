//! The first turn's latency, with and without pre-warm: what `callbridge
//! demo` reports on its "first turn" line and what the README's
//! "First-turn latency" table is made of.
//!
//! One call on loopback, to an assistant that speaks first (a greeting), so
//! its first answer waits for nothing but the model session: the local peer
//! ([`crate::echo`]) holds each WebSocket handshake for `connect_delay` (a
//! real provider's connect time), the bridge runs with `realtime.prewarm`
//! on or off, and the simulated Twilio opens the stream `stream_gap` after
//! the webhook's answer (Twilio's own pause between fetching the TwiML and
//! connecting the stream; on loopback there is none unless asked for). The
//! caller stays silent.
//!
//! Two figures, each from where it can be seen:
//! - **model ready**: `start` accepted → the model session configured, as
//!   the bridge measured it (`callbridge_model_ready_seconds`);
//! - **first answer audio**: the caller sending `start` → the first answer
//!   media arriving, on the simulated caller's clock.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::echo::{self, EchoOptions, EchoProtocol};
use crate::{caller, CallOptions, Progress, SimError, SILENCE};
use callbridge::audio::AudioMode;
use callbridge::config::{Config, Dialect, Secret, Secrets};
use callbridge::metrics::{Metrics, PrewarmResult};
use callbridge::server::Server;

/// What the assistant is told to say first.
const GREETING: &str = "Greet the caller.";

/// How the probe call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstTurnOptions {
    pub dialect: Dialect,
    pub mode: AudioMode,
    /// The peer holds each WebSocket handshake this long.
    pub connect_delay: Duration,
    /// `realtime.prewarm`.
    pub prewarm: bool,
    /// The simulated Twilio's pause between the webhook's answer and
    /// opening the stream.
    pub stream_gap: Duration,
}

/// What the probe call measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirstTurn {
    /// `start` accepted → model session configured (the bridge's figure).
    pub model_ready: Option<Duration>,
    /// `start` sent → first answer audio received (the caller's figure).
    pub first_answer: Option<Duration>,
    /// The stream took over a pre-warmed session.
    pub prewarm_hit: bool,
    /// Anything that went wrong on the call.
    pub errors: Vec<String>,
}

/// Places the probe call and measures its first turn.
pub async fn measure(opts: FirstTurnOptions) -> Result<FirstTurn, SimError> {
    let io = |what: &str, e: std::io::Error| SimError::Options(format!("{what}: {e}"));
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| SimError::Options(e.to_string()))?;
    let auth_token: String = key.iter().map(|b| format!("{b:02x}")).collect();

    let peer_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| io("binding the local model peer", e))?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(|e| io("local model peer", e))?;
    let protocol = if opts.dialect.is_live() {
        EchoProtocol::Live
    } else {
        EchoProtocol::Realtime
    };
    let (stop_peer, peer_stopped) = oneshot::channel::<()>();
    let peer = tokio::spawn(echo::serve(
        peer_listener,
        EchoOptions {
            protocol,
            connect_delay: opts.connect_delay,
            ..EchoOptions::default()
        },
        async {
            let _ = peer_stopped.await;
        },
    ));

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| io("binding the bridge", e))?;
    let addr = listener.local_addr().map_err(|e| io("bridge", e))?;
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| io("binding the bridge's admin port", e))?;
    let mut config = Config {
        public_url: Some(format!("http://{addr}")),
        ..Config::default()
    };
    config.realtime.dialect = opts.dialect;
    config.realtime.url = Some(format!("ws://{peer_addr}{}", protocol.path()));
    config.realtime.prewarm = opts.prewarm;
    config.audio.mode = opts.mode;
    config.agent.greeting = GREETING.into();
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(auth_token.clone())),
        ..Secrets::default()
    };
    let metrics = Metrics::new();
    let server = Server::new(config, secrets, metrics.clone())
        .map_err(|e| SimError::Options(format!("starting the bridge: {e}")))?;
    let (stop_bridge, bridge_stopped) = oneshot::channel::<()>();
    let bridge = tokio::spawn(server.run(listener, admin, async {
        let _ = bridge_stopped.await;
    }));

    let url =
        url::Url::parse(&format!("http://{addr}")).map_err(|e| SimError::Options(e.to_string()))?;
    // Silent: the greeting is the first answer, whatever the caller does.
    let mut call = CallOptions::new(url, vec![SILENCE; 160]);
    call.auth_token = Some(auth_token);
    call.stream_delay = opts.stream_gap;
    // Long enough for the slowest connect to be heard; the call then ends
    // once the greeting has played.
    call.trailing_silence = opts.connect_delay + Duration::from_secs(1);
    call.max_duration = opts.connect_delay + Duration::from_secs(15);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = caller::place_call(call, Some(tx)).await;
    let mut first_answer = None;
    while let Ok(event) = rx.try_recv() {
        if let Progress::AnswerStarted { at, .. } = event {
            first_answer.get_or_insert(at);
        }
    }

    let _ = stop_bridge.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), bridge).await;
    let _ = stop_peer.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), peer).await;
    let report = report?;
    let ready = &metrics.prewarm.model_ready;
    Ok(FirstTurn {
        model_ready: (ready.count() == 1).then(|| Duration::from_secs_f64(ready.sum())),
        first_answer,
        prewarm_hit: metrics.prewarm.get(PrewarmResult::Hit) == 1,
        errors: report.errors,
    })
}
