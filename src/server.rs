//! The HTTP side: routers, admission control, graceful drain, and the one
//! module that touches Twilio's sockets.
//!
//! Two listeners: the public one (`listen`) serves Twilio only (`/voice`,
//! `/media`, `/stream-status`, `/call-status`); the admin one
//! (`admin_listen`) serves `/metrics`, `/healthz` and `/readyz` to probes
//! and scrapers, and `POST /calls` (outbound calls, [`crate::outbound`])
//! when an admin token is set.
//! [`Server::run`] takes both listeners and its shutdown signal as
//! parameters, so tests start the real server on `127.0.0.1:0` and stop it
//! at will. axum's graceful shutdown does not wait for upgraded WebSockets,
//! so call tasks are tracked here: on shutdown the server stops admitting
//! calls, `/readyz` turns 503, live calls run on for up to `drain_timeout`,
//! and only then are they closed. The admin port answers throughout.
//!
//! Each call runs in a tracing span `call` carrying `call_sid` and
//! `stream_sid`, so every line it logs names the call; the call ends with
//! one `call ended` line (outcome, duration, turns, barge-ins, frames, tool
//! calls, tokens, estimated cost), then its record is queued for the
//! summary webhook (`crate::summary`), after the slot is released; the
//! drain sends pending records before exit. No audio, transcript or secret
//! is ever logged.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::summary::record::CallMeta;
use crate::summary::{CallRecord, SummarySender};

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, OriginalUri, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use url::Url;

use crate::call::bridge::{self, CallParams, CallSummary, Model};
use crate::call::control::CallControl;
use crate::call::handshake::{await_start, HandshakeError};
use crate::call::http_tools::HttpTools;
use crate::call::parked::{Expired, Parked};
use crate::call::prewarm::{self, Warm};
use crate::call::tools::{CallContext, NoTools, ToolRunner};
use crate::call::{close_code, WsIn, WsOut};
use crate::config::redact_query;
use crate::config::{Config, ConfigError, Profile, Secrets, DEFAULT_PROFILE};
use crate::metrics::{Metrics, Outcome, PrewarmResult};
use crate::outbound::{self, Outbound};
use crate::serve::{serve, HttpLimits};
use crate::twilio::rest::TwilioRest;
use crate::twilio::token::StreamTokens;
use crate::twilio::{signature, twiml};
use crate::upstream::client::{roots_with_ca_file, ConnectError, ModelEndpoint};
use crate::upstream::{driver_for, SessionSpec};

/// Twilio must send `start` this soon after the upgrade.
const START_DEADLINE: Duration = Duration::from_secs(5);
/// Frames above this are a protocol error that closes the socket; frames
/// between [`bridge::MAX_TWILIO_FRAME`] and this are dropped and counted.
const WS_MAX_MESSAGE: usize = 256 << 10;
/// What a stalled Twilio reader may make us buffer before the call is ended.
const WS_MAX_WRITE_BUFFER: usize = 1 << 20;
/// After the drain deadline, how long closing the remaining calls may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Open connections on the admin port (probes, scrapers, `POST /calls`).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The model's socket as calls hold it: boxed, so a session opened ahead of
/// its stream (pre-warm) can be parked in [`Shared`] and handed to a call
/// like one opened by it (one indirect call per frame).
type ModelTx =
    Pin<Box<dyn futures_util::Sink<WsOut, Error = tokio_tungstenite::tungstenite::Error> + Send>>;
type ModelRx = Pin<Box<dyn Stream<Item = WsIn> + Send>>;
/// A pre-warmed session waiting for its stream.
type WarmSession = Warm<ModelTx, ModelRx>;

fn boxed<S, R>((tx, rx): (S, R)) -> (ModelTx, ModelRx)
where
    S: futures_util::Sink<WsOut, Error = tokio_tungstenite::tungstenite::Error> + Send + 'static,
    R: Stream<Item = WsIn> + Send + 'static,
{
    (Box::pin(tx), Box::pin(rx))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Every required setting that is missing, named in one error.
    #[error("{0}")]
    Missing(MissingSettings),
    #[error(transparent)]
    Realtime(#[from] ConnectError),
    #[error("Twilio REST client: {0}")]
    TwilioRest(#[from] crate::twilio::rest::RestError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A setting `serve` cannot run without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSetting {
    /// The key or variable: `public_url`, `OPENAI_API_KEY`, `TWILIO_AUTH_TOKEN`.
    pub name: &'static str,
    /// Where to set it and why it is needed.
    pub help: String,
}

/// All the required settings that are missing (see [`Server::missing_settings`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissingSettings(pub Vec<MissingSetting>);

impl MissingSettings {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for MissingSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{} is required: {}", one.name, one.help),
            many => {
                write!(f, "{} required settings are missing:", many.len())?;
                for m in many {
                    write!(f, "\n  - {}: {}", m.name, m.help)?;
                }
                Ok(())
            }
        }
    }
}

struct Shared {
    config: Config,
    public: Url,
    endpoint: ModelEndpoint,
    /// Every assistant profile, by name (`default` is `[agent]`).
    assistants: HashMap<String, Assistant>,
    /// Twilio's REST API, where credentials are configured.
    rest: Option<TwilioRest>,
    /// Played to callers while their model socket is being reopened.
    reconnect_filler: Option<Arc<Vec<u8>>>,
    auth_tokens: Vec<String>,
    stream_tokens: StreamTokens,
    /// `POST /calls`, its pending calls and their status callbacks.
    outbound: Outbound,
    metrics: Metrics,
    active: AtomicUsize,
    /// Upgraded `/media` sockets still waiting for a valid `start`: their
    /// own small budget, apart from `max_calls`.
    pending_streams: Arc<Semaphore>,
    /// CallSids with a live stream in this process: one stream each.
    streaming: Mutex<HashSet<String>>,
    draining: AtomicBool,
    tracker: TaskTracker,
    /// Fired when the drain deadline passes: live calls close.
    close_calls: CancellationToken,
    /// Sends call records, where any profile has a summary URL.
    summaries: Option<SummarySender>,
    /// Model sessions opened ahead of their streams, by CallSid.
    parked: Parked<WarmSession>,
}

/// One assistant profile, ready for calls: its settings, what runs its
/// tools, and its call control.
struct Assistant {
    profile: Profile,
    tools: Arc<dyn ToolRunner>,
    control: Arc<CallControl>,
    /// Where this profile's call records go.
    summary_url: Option<Url>,
}

/// A configured server, ready to run on a listener.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Checks everything that would make a call fail later: `public_url`,
    /// the API key for OpenAI's own endpoints, the Twilio auth token (all
    /// the missing ones in one [`ServeError::Missing`]).
    /// Each profile's function calls go to its HTTP tools (`agent.tools`,
    /// `agents.<name>.tools`).
    pub fn new(config: Config, secrets: Secrets, metrics: Metrics) -> Result<Server, ServeError> {
        Self::build(config, secrets, metrics, None)
    }

    /// Like [`Server::new`], with `tools` running every profile's function
    /// calls (tests, embedders).
    pub fn with_tools(
        config: Config,
        secrets: Secrets,
        metrics: Metrics,
        tools: Arc<dyn ToolRunner>,
    ) -> Result<Server, ServeError> {
        Self::build(config, secrets, metrics, Some(tools))
    }

    fn build(
        config: Config,
        secrets: Secrets,
        metrics: Metrics,
        tools: Option<Arc<dyn ToolRunner>>,
    ) -> Result<Server, ServeError> {
        // Configs built in code (tests, the demo) get the same checks as loaded ones.
        config.validate()?;
        let missing = Self::missing_settings(&config, &secrets);
        if !missing.is_empty() {
            return Err(ServeError::Missing(missing));
        }
        let public = config.public_url()?;
        let realtime_url = config.realtime_url()?;
        let auth_tokens: Vec<String> = [
            &secrets.twilio_auth_token,
            &secrets.twilio_auth_token_previous,
        ]
        .into_iter()
        .flatten()
        .map(|s| s.expose().to_owned())
        .collect();
        if !config.twilio.validate_signatures {
            tracing::warn!(
                "twilio.validate_signatures is false: anyone who can reach this server can open calls; use this for local testing only"
            );
        }
        // Any replica sharing the auth token can check any other's stream
        // tokens; without one (local testing) a per-process key is enough.
        let token_key = match auth_tokens.first() {
            Some(token) => format!("callbridge-stream-token-v1:{token}").into_bytes(),
            None => {
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
                key
            }
        };
        let stream_tokens = StreamTokens::new(
            &token_key,
            Duration::from_secs(config.twilio.stream_token_ttl),
        );
        let roots = roots_with_ca_file(config.realtime.ca_file.as_deref())
            .map_err(|e| ConfigError::key("realtime.ca_file", e.to_string()))?;
        let endpoint = ModelEndpoint::with_roots(
            realtime_url,
            config.realtime.dialect,
            secrets.openai_api_key.clone(),
            Duration::from_secs(config.realtime.connect_timeout),
            roots,
        )?;
        let mut assistants = HashMap::new();
        for profile in config.profiles() {
            let key = if profile.name == DEFAULT_PROFILE {
                "agent".to_owned()
            } else {
                format!("agents.{}", profile.name)
            };
            let runner: Arc<dyn ToolRunner> = match (&tools, profile.agent.tools.is_empty()) {
                (Some(injected), _) => injected.clone(),
                (None, true) => Arc::new(NoTools),
                (None, false) => Arc::new(HttpTools::new(&profile.agent.tools)?),
            };
            let control = CallControl::from_config(
                &profile.agent.call_control,
                &format!("{key}.call_control"),
            )?;
            let summary_key = if profile.name == DEFAULT_PROFILE {
                "summary.url".to_owned()
            } else {
                format!("{key}.summary_url")
            };
            let summary_url = profile
                .summary_url
                .as_deref()
                .map(|url| crate::config::parse_summary_url(url, &summary_key))
                .transpose()?;
            assistants.insert(
                profile.name.clone(),
                Assistant {
                    profile,
                    tools: runner,
                    control: Arc::new(control),
                    summary_url,
                },
            );
        }
        let rest = TwilioRest::from_config(&config, &secrets, metrics.clone())?;
        let outbound = Outbound::new(
            &config,
            &secrets,
            &public,
            &token_key,
            rest.clone(),
            metrics.clone(),
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let reconnect_filler = match &config.realtime.reconnect_filler {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(bytes) if !bytes.is_empty() => Some(Arc::new(bytes)),
                Ok(_) => {
                    return Err(ServeError::Config(ConfigError::Key {
                        key: "realtime.reconnect_filler".into(),
                        reason: format!("{} is empty", path.display()),
                    }))
                }
                Err(e) => {
                    return Err(ServeError::Config(ConfigError::Key {
                        key: "realtime.reconnect_filler".into(),
                        reason: format!("cannot read {}: {e}", path.display()),
                    }))
                }
            },
        };
        let summaries = match (
            assistants.values().any(|a| a.summary_url.is_some()),
            &secrets.summary_secret,
        ) {
            (true, Some(secret)) => Some(SummarySender::new(
                &config.summary,
                secret.clone(),
                metrics.summaries.clone(),
            )?),
            _ => None,
        };
        metrics.calls_max.set(config.max_calls as i64);
        let (config_prewarm, max_calls) = (config.realtime.prewarm, config.max_calls);
        let pending_streams = Arc::new(Semaphore::new(config.http.max_pending_streams));
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                public,
                endpoint,
                assistants,
                rest,
                reconnect_filler,
                auth_tokens,
                stream_tokens,
                outbound,
                metrics,
                active: AtomicUsize::new(0),
                pending_streams,
                streaming: Mutex::new(HashSet::new()),
                draining: AtomicBool::new(false),
                tracker: TaskTracker::new(),
                close_calls: CancellationToken::new(),
                summaries,
                parked: Parked::new(if config_prewarm { max_calls } else { 0 }),
            }),
        })
    }

    /// The required settings missing from `config` and `secrets`, all of
    /// them: `public_url`; `OPENAI_API_KEY` when `realtime.url` is OpenAI's
    /// or Azure's service; `TWILIO_AUTH_TOKEN` while signatures are checked.
    pub fn missing_settings(config: &Config, secrets: &Secrets) -> MissingSettings {
        let mut missing = Vec::new();
        if config.public_url.is_none() {
            missing.push(MissingSetting {
                name: "public_url",
                help: "the https://host[:port] Twilio uses to reach this server \
                       (CALLBRIDGE_PUBLIC_URL, or public_url in the config file)"
                    .into(),
            });
        }
        if let Ok(url) = config.realtime_url() {
            if secrets.openai_api_key.is_none() && ModelEndpoint::needs_api_key(&url) {
                missing.push(MissingSetting {
                    name: "OPENAI_API_KEY",
                    help: format!(
                        "(or OPENAI_API_KEY_FILE) the API key for realtime.url ({}), \
                         OpenAI's or Azure's service",
                        redact_query(&url)
                    ),
                });
            }
        }
        let has_token =
            secrets.twilio_auth_token.is_some() || secrets.twilio_auth_token_previous.is_some();
        if config.twilio.validate_signatures && !has_token {
            missing.push(MissingSetting {
                name: "TWILIO_AUTH_TOKEN",
                help: "(or TWILIO_AUTH_TOKEN_FILE) your Twilio auth token, which checks \
                       Twilio's signatures while twilio.validate_signatures is true \
                       (turn that off for local testing only)"
                    .into(),
            });
        }
        let records = config.profiles().iter().any(|p| p.summary_url.is_some());
        if records && secrets.summary_secret.is_none() {
            missing.push(MissingSetting {
                name: "CALLBRIDGE_SUMMARY_SECRET",
                help: "(or CALLBRIDGE_SUMMARY_SECRET_FILE) the key that signs call records, \
                       needed because a summary URL is set (summary.url or a profile's \
                       summary_url); receivers check X-Callbridge-Signature with it"
                    .into(),
            });
        }
        MissingSettings(missing)
    }

    /// The public (Twilio-facing) routes: `/voice`, `/media`,
    /// `/stream-status`, `/call-status`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/voice", post(voice))
            .route("/media", get(media))
            .route("/stream-status", post(stream_status))
            .route("/call-status", post(call_status))
            .with_state(self.shared.clone())
    }

    /// The admin routes: `/metrics`, `/healthz`, `/readyz`, `POST /calls`.
    pub fn admin_router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route(
                "/calls",
                post(place_call).layer(DefaultBodyLimit::max(outbound::request::MAX_BODY_BYTES)),
            )
            .with_state(self.shared.clone())
    }

    /// Serves Twilio on `public` and the admin routes on `admin` until
    /// `shutdown` resolves, then drains: no new calls, `/readyz` 503, live
    /// calls run on up to `drain_timeout`, then are closed cleanly; both
    /// listeners stop after that.
    pub async fn run(
        self,
        public: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let shared = self.shared.clone();
        let stop_http = CancellationToken::new();
        let http = &shared.config.http;
        let public_limits = HttpLimits {
            header_read_timeout: http.header_read_timeout(),
            max_connections: http.max_connections,
            nodelay: true,
        };
        // The admin port faces probes and scrapers, not the internet: the
        // same head timeout, a small fixed cap.
        let admin_limits = HttpLimits {
            header_read_timeout: http.header_read_timeout(),
            max_connections: ADMIN_MAX_CONNECTIONS,
            nodelay: false,
        };
        let refused = {
            let m = shared.metrics.clone();
            move || m.error("connection_cap")
        };
        let admin_refused = {
            let m = shared.metrics.clone();
            move || m.error("admin_connection_cap")
        };
        let public_task = tokio::spawn(serve(
            public,
            self.router(),
            public_limits,
            refused,
            stop_http.clone(),
        ));
        let admin_task = tokio::spawn(serve(
            admin,
            self.admin_router(),
            admin_limits,
            admin_refused,
            stop_http.clone(),
        ));

        shutdown.await;
        let drain_started = tokio::time::Instant::now();
        shared.draining.store(true, Ordering::SeqCst);
        shared.metrics.draining.set(1);
        let live = shared.active.load(Ordering::SeqCst);
        tracing::info!(
            live_calls = live,
            drain_timeout_s = shared.config.drain_timeout,
            "draining"
        );
        shared.close_parked();
        shared.tracker.close();
        if tokio::time::timeout(shared.config.drain_timeout(), shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                live_calls = shared.active.load(Ordering::SeqCst),
                "drain timeout reached; closing live calls"
            );
            shared.close_calls.cancel();
            let _ = tokio::time::timeout(CLOSE_GRACE, shared.tracker.wait()).await;
        }
        if let Some(summaries) = &shared.summaries {
            // Within the drain timeout, but a call closed at its deadline
            // still gets a moment for its record.
            let deadline = (drain_started + shared.config.drain_timeout())
                .max(tokio::time::Instant::now() + CLOSE_GRACE);
            summaries.drain(deadline).await;
        }
        stop_http.cancel();
        let joined = |r: Result<std::io::Result<()>, tokio::task::JoinError>| match r {
            Ok(result) => result.map_err(ServeError::Io),
            Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
        };
        let public_result = joined(public_task.await);
        let admin_result = joined(admin_task.await);
        public_result.and(admin_result)
    }
}

impl Shared {
    fn stream_tokens_ttl(&self) -> Duration {
        Duration::from_secs(self.config.twilio.stream_token_ttl)
    }

    /// What `assistant`'s model session is configured with; `call_context`:
    /// an outbound call's context.
    fn session_spec(&self, assistant: &Assistant, call_context: Option<&str>) -> SessionSpec {
        let declared: Vec<_> = assistant
            .tools
            .specs()
            .into_iter()
            .chain(assistant.control.specs())
            .collect();
        SessionSpec::for_profile(&self.config, &assistant.profile, declared)
            .with_call_context(call_context)
    }

    /// Pre-warm (`realtime.prewarm`): opens and configures `call_sid`'s
    /// model session in the background and parks it for `ttl` (its stream
    /// token's lifetime), for the stream's `start` to take over. Never
    /// fails the call: if there is no room, or opening fails, the stream
    /// connects when it starts, as it would have anyway.
    fn prewarm(
        self: &Arc<Self>,
        call_sid: &str,
        profile: &str,
        call_context: Option<String>,
        ttl: Duration,
    ) {
        let Some(assistant) = self.assistants.get(profile) else {
            return;
        };
        let metrics = self.metrics.clone();
        let sid = call_sid.to_owned();
        let expired = move |expired: Expired<WarmSession>| {
            metrics.prewarm.count(PrewarmResult::Expired);
            tracing::info!(
                call_sid = sid,
                "a pre-warmed model session expired: its stream never started"
            );
            if let Expired::Ready(mut warm) = expired {
                tokio::spawn(async move { prewarm::close(&mut warm.tx, "unused").await });
            }
        };
        let reservation = match self.parked.reserve(call_sid, ttl, expired) {
            Ok(reservation) => reservation,
            Err(refused) => {
                if self.config.realtime.prewarm {
                    tracing::debug!(call_sid, ?refused, "no pre-warm for this call");
                }
                return;
            }
        };
        let mut driver = driver_for(self.session_spec(assistant, call_context.as_deref()));
        let shared = self.clone();
        let profile = profile.to_owned();
        let span = tracing::info_span!("prewarm", call_sid);
        self.tracker.spawn(
            async move {
                let m = &shared.metrics;
                let opened_at = tokio::time::Instant::now();
                let (mut tx, mut rx) = match shared.endpoint.connect().await {
                    Ok(pair) => boxed(pair),
                    Err(err) => {
                        m.error("prewarm_failed");
                        tracing::warn!(error = %err, "pre-warm: cannot open the model session; the stream will try again");
                        return;
                    }
                };
                m.upstream_connect.observe_duration(opened_at.elapsed());
                let limit = Duration::from_secs(shared.config.realtime.connect_timeout);
                if let Err(err) = prewarm::configure(driver.as_mut(), &mut tx, &mut rx, limit).await
                {
                    m.error("prewarm_failed");
                    tracing::warn!(error = %err, "pre-warm: the model session could not be set up; the stream will try again");
                    return;
                }
                let warm = Warm {
                    driver,
                    tx,
                    rx,
                    opened_at,
                    profile,
                };
                if let Err(mut warm) = reservation.fill(warm) {
                    prewarm::close(&mut warm.tx, "unused").await;
                }
            }
            .instrument(span),
        );
    }

    /// The stream's pre-warmed session, if this replica has one for it (it
    /// may still be opening: worth waiting for, as a new socket would take
    /// as long). Counts a hit or a miss.
    async fn take_warm(&self, call_sid: &str, profile: &str) -> Option<WarmSession> {
        let wait = Duration::from_secs(self.config.realtime.connect_timeout.saturating_mul(2));
        let warm = match self.parked.claim(call_sid) {
            Some(claim) => claim.wait(wait).await,
            None => None,
        };
        let warm = match warm {
            Some(warm) if warm.profile == profile => Some(warm),
            Some(mut other) => {
                // Not what this stream's token names: never hand a call
                // another profile's session.
                prewarm::close(&mut other.tx, "unused").await;
                None
            }
            None => None,
        };
        let result = if warm.is_some() {
            PrewarmResult::Hit
        } else {
            PrewarmResult::Miss
        };
        self.metrics.prewarm.count(result);
        warm
    }

    /// Twilio reported the call over (an outbound call nobody answered):
    /// its pre-warmed session will never be used. Closed now, counted
    /// `expired`, as it would have been at the token's expiry.
    fn discard_warm(&self, call_sid: &str) {
        let Some(claim) = self.parked.claim(call_sid) else {
            return;
        };
        self.metrics.prewarm.count(PrewarmResult::Expired);
        tracing::info!(
            call_sid,
            "the call is over before its stream: its pre-warmed model session is closed"
        );
        self.tracker.spawn(async move {
            // Ready: closed here. Still opening: not waited for; the opener
            // finds its place gone and closes what it opened.
            if let Some(mut warm) = claim.wait(Duration::ZERO).await {
                prewarm::close(&mut warm.tx, "call over").await;
            }
        });
    }

    /// Draining: no stream will be admitted, so no pre-warmed session will
    /// be used. Each is closed now (one still opening is closed by its
    /// opener, which finds its place gone).
    fn close_parked(&self) {
        for claim in self.parked.claim_all() {
            self.metrics.prewarm.count(PrewarmResult::Expired);
            self.tracker.spawn(async move {
                if let Some(mut warm) = claim.wait(Duration::ZERO).await {
                    prewarm::close(&mut warm.tx, "going away").await;
                }
            });
        }
    }

    fn is_full(&self) -> bool {
        self.active.load(Ordering::SeqCst) >= self.config.max_calls
    }

    fn accepting(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && !self.is_full()
    }

    /// The URL Twilio signed: rebuilt from `public_url`, never from `Host`.
    fn signed_url(&self, scheme: &str, uri: &axum::http::Uri) -> String {
        let mut url = self.public.clone();
        if scheme != url.scheme() {
            // http→ws and https→wss keep the same authority.
            let _ = url.set_scheme(scheme);
        }
        url.set_path(uri.path());
        url.set_query(uri.query());
        url.to_string()
    }

    fn check_signature(&self, headers: &HeaderMap, url: &str, params: &[(String, String)]) -> bool {
        if !self.config.twilio.validate_signatures {
            return true;
        }
        let Some(sig) = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let tokens: Vec<&str> = self.auth_tokens.iter().map(String::as_str).collect();
        signature::validate(&tokens, url, params, sig)
    }

    fn ws_scheme(&self) -> &'static str {
        if self.public.scheme() == "https" {
            "wss"
        } else {
            "ws"
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn twiml_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

fn forbidden(shared: &Shared, path: &str) -> Response {
    shared.metrics.error("bad_signature");
    tracing::warn!(endpoint = path, "missing or invalid X-Twilio-Signature");
    (StatusCode::FORBIDDEN, "invalid signature\n").into_response()
}

/// A Twilio form POST's parameters, if the body arrives within
/// `http.body_timeout_ms` and `http.max_body_bytes` (else 408 or 413, and
/// hyper closes the connection) and its signature checks out (else 403).
async fn signed_form(
    shared: &Shared,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(String, String)>, Response> {
    let limits = &shared.config.http;
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let body: Bytes = match tokio::time::timeout(limits.body_timeout(), read).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            let too_large = e.into_inner().is::<http_body_util::LengthLimitError>();
            return Err(if too_large {
                shared.metrics.error("body_too_large");
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response()
            } else {
                (StatusCode::BAD_REQUEST, "cannot read the request body\n").into_response()
            });
        }
        Err(_) => {
            shared.metrics.error("body_timeout");
            return Err((StatusCode::REQUEST_TIMEOUT, "request body too slow\n").into_response());
        }
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let url = shared.signed_url(shared.public.scheme(), uri);
    if shared.check_signature(headers, &url, &params) {
        Ok(params)
    } else {
        Err(forbidden(shared, uri.path()))
    }
}

/// Twilio's voice webhook: answers with a `<Connect><Stream>` carrying a
/// token bound to this CallSid, or a busy answer when full or draining.
async fn voice(
    State(shared): State<Arc<Shared>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let params = match signed_form(&shared, &uri, &headers, body).await {
        Ok(params) => params,
        Err(refused) => return refused,
    };
    let Some(call_sid) = params
        .iter()
        .find(|(k, _)| k == "CallSid")
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
    else {
        return (StatusCode::BAD_REQUEST, "CallSid missing\n").into_response();
    };
    if !shared.accepting() {
        shared.metrics.call_ended(Outcome::Rejected);
        tracing::info!(
            call_sid,
            draining = shared.draining.load(Ordering::SeqCst),
            "busy: call rejected"
        );
        return twiml_response(twiml::busy());
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let (from, to) = (param("From"), param("To"));
    let profile = shared.config.profile_name_for(to);
    let token = shared.stream_tokens.issue(call_sid, profile, now_unix());
    let mut stream_url = shared.public.clone();
    let _ = stream_url.set_scheme(shared.ws_scheme());
    stream_url.set_path("/media");
    let mut status_url = shared.public.clone();
    status_url.set_path("/stream-status");
    let fallback = Some(shared.config.twilio.fallback_say.as_str()).filter(|s| !s.is_empty());
    tracing::info!(call_sid, profile, "incoming call");
    shared.prewarm(call_sid, profile, None, shared.stream_tokens_ttl());
    twiml_response(twiml::connect_stream_with(
        stream_url.as_str(),
        status_url.as_str(),
        &[
            ("token", &token),
            ("from", from),
            ("to", to),
            ("direction", param("Direction")),
        ],
        fallback,
    ))
}

/// Twilio's stream status callback: logged, nothing else.
async fn stream_status(
    State(shared): State<Arc<Shared>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let params = match signed_form(&shared, &uri, &headers, body).await {
        Ok(params) => params,
        Err(refused) => return refused,
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    if get("StreamEvent") == "stream-error" {
        shared.metrics.error("stream_error");
        tracing::warn!(
            call_sid = get("CallSid"),
            stream_sid = get("StreamSid"),
            error = get("StreamError"),
            "stream error"
        );
    } else {
        tracing::info!(
            call_sid = get("CallSid"),
            stream_sid = get("StreamSid"),
            event = get("StreamEvent"),
            "stream status"
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

/// An outbound call's status callback: counted (see [`crate::outbound`]).
async fn call_status(
    State(shared): State<Arc<Shared>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let params = match signed_form(&shared, &uri, &headers, body).await {
        Ok(params) => params,
        Err(refused) => return refused,
    };
    shared.outbound.status_callback(&params);
    let status = params
        .iter()
        .find(|(k, _)| k == "CallStatus")
        .map_or("", |(_, v)| v.as_str());
    if crate::metrics::OutboundOutcome::from_call_status(status).is_final() {
        if let Some((_, call_sid)) = params.iter().find(|(k, _)| k == "CallSid") {
            shared.discard_warm(call_sid);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /calls` on the admin port (see [`crate::outbound::http`]).
async fn place_call(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let admission = if shared.draining.load(Ordering::SeqCst) {
        outbound::http::Admission::Draining
    } else if shared.is_full() {
        outbound::http::Admission::Full
    } else {
        outbound::http::Admission::Open
    };
    outbound::http::post_calls(
        &shared.outbound,
        admission,
        &headers,
        &body,
        now_unix(),
        |placed| {
            shared.prewarm(
                &placed.call_sid,
                &placed.profile,
                placed.context.clone(),
                placed.token_ttl,
            )
        },
    )
    .await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if shared.is_full() {
        (StatusCode::SERVICE_UNAVAILABLE, "full\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// Holds one admission slot; releasing it on drop keeps the count right on
/// every path out of a call, panics included.
struct Slot(Arc<Shared>);

impl Slot {
    fn acquire(shared: &Arc<Shared>) -> Option<Slot> {
        if shared.draining.load(Ordering::SeqCst) {
            return None;
        }
        let max = shared.config.max_calls;
        let mut current = shared.active.load(Ordering::SeqCst);
        loop {
            if current >= max {
                return None;
            }
            match shared.active.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        shared.metrics.calls_active.inc();
        Some(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.calls_active.dec();
    }
}

/// Holds a CallSid's claim to the one live stream this process allows it;
/// released on drop.
struct Streaming(Arc<Shared>, String);

impl Streaming {
    fn claim(shared: &Arc<Shared>, call_sid: &str) -> Option<Streaming> {
        let mut live = shared
            .streaming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.insert(call_sid.to_owned())
            .then(|| Streaming(shared.clone(), call_sid.to_owned()))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0
            .streaming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.1);
    }
}

/// The Media Stream upgrade: signature first, then a pending-stream permit,
/// then 101. The call slot is taken only once `start` is verified, so
/// sockets that never start cannot fill `max_calls`.
async fn media(
    State(shared): State<Arc<Shared>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let url = shared.signed_url(shared.ws_scheme(), &uri);
    if !shared.check_signature(&headers, &url, &[]) {
        return forbidden(&shared, "/media");
    }
    if !shared.accepting() {
        shared.metrics.call_ended(Outcome::Rejected);
        return (StatusCode::SERVICE_UNAVAILABLE, "not accepting calls\n").into_response();
    }
    let Ok(pending) = shared.pending_streams.clone().try_acquire_owned() else {
        shared.metrics.error("pending_streams_full");
        shared.metrics.call_ended(Outcome::Rejected);
        tracing::warn!("stream upgrade refused: too many streams waiting for `start`");
        return (StatusCode::SERVICE_UNAVAILABLE, "not accepting calls\n").into_response();
    };
    let tracked = shared.tracker.token();
    // Every line the call logs carries its ids, recorded once `start` names
    // them. ERROR level: no log filter that keeps the call's warnings and
    // errors drops the span that names the call.
    let span = tracing::error_span!(
        "call",
        call_sid = tracing::field::Empty,
        stream_sid = tracing::field::Empty
    );
    upgrade
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        // tungstenite zero-fills the read buffer per read: keep it small.
        // Writes are buffered until flushed, so a chunk and its mark leave
        // in one write.
        .read_buffer_size(8 << 10)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            async move {
                let _tracked = tracked;
                handle_call(shared, pending, socket).await;
            }
            .instrument(span)
        })
}

fn adapt_twilio(
    socket: WebSocket,
) -> (
    impl Sink<WsOut, Error = axum::Error> + Unpin + Send,
    impl Stream<Item = WsIn> + Unpin + Send,
) {
    let (tx, rx) = socket.split();
    let tx = tx.with(|out: WsOut| {
        std::future::ready(Ok::<_, axum::Error>(match out {
            WsOut::Text(text) => Message::Text(text.into()),
            WsOut::Ping(payload) => Message::Ping(payload),
            WsOut::Close(code, reason) => Message::Close(Some(axum::extract::ws::CloseFrame {
                code,
                reason: reason.into(),
            })),
        }))
    });
    let rx = rx
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Text(t)) => Some(WsIn::Text(t.into())),
                Ok(Message::Binary(b)) => Some(WsIn::Binary(b.len())),
                Ok(Message::Close(frame)) => Some(WsIn::Close(frame.map(|f| f.code))),
                // The bridge does not ping Twilio (its idle timeout watches
                // the leg); a pong is passed on and ignored there.
                Ok(Message::Pong(_)) => Some(WsIn::Pong),
                Ok(Message::Ping(_)) | Err(_) => None,
            })
        });
    (tx, rx)
}

/// A stream turned away before any model session: how it is closed, counted
/// and logged (one `call ended` line, like every call).
struct Refusal {
    code: u16,
    close_reason: &'static str,
    outcome: Outcome,
    log_reason: &'static str,
}

impl Refusal {
    /// Closed with 1008 and a short reason for Twilio; the log says why.
    fn policy(outcome: Outcome, close_reason: &'static str, log_reason: &'static str) -> Refusal {
        Refusal {
            code: close_code::POLICY,
            close_reason,
            outcome,
            log_reason,
        }
    }

    async fn close<S>(self, twilio_tx: &mut S, m: &Metrics, started: tokio::time::Instant)
    where
        S: Sink<WsOut> + Unpin,
    {
        let _ = twilio_tx
            .send(WsOut::Close(self.code, self.close_reason))
            .await;
        m.call_ended(self.outcome);
        log_call_ended(self.outcome, started.elapsed(), None, None, self.log_reason);
    }
}

async fn handle_call(shared: Arc<Shared>, pending: OwnedSemaphorePermit, socket: WebSocket) {
    let started = tokio::time::Instant::now();
    let started_at = SystemTime::now();
    let (mut twilio_tx, mut twilio_rx) = adapt_twilio(socket);
    let m = &shared.metrics;

    let start = match await_start(
        &mut twilio_rx,
        START_DEADLINE,
        Some(&shared.stream_tokens),
        m,
    )
    .await
    {
        Ok(start) => start,
        Err(err) => {
            let outcome = match err {
                HandshakeError::Closed => Outcome::CallerGone,
                _ => Outcome::Unauthorized,
            };
            tracing::warn!(error = %err, "media stream refused");
            let refusal = Refusal::policy(outcome, "stream refused", "stream refused");
            return refusal.close(&mut twilio_tx, m, started).await;
        }
    };
    // The model-ready clock starts once `start` is verified.
    let start_accepted = tokio::time::Instant::now();
    let call_sid = start.call_sid.clone();
    let span = tracing::Span::current();
    span.record("call_sid", call_sid.as_str());
    span.record("stream_sid", start.stream_sid.as_str());
    let profile_name = if start.profile.is_empty() {
        DEFAULT_PROFILE
    } else {
        start.profile.as_str()
    };
    // A token names a profile this server does not have: refused like a bad
    // token (a config mismatch between replicas, or a forgery).
    let Some(assistant) = shared.assistants.get(profile_name) else {
        m.error("unknown_profile");
        tracing::warn!("media stream refused: the token names an unknown profile");
        let refusal = Refusal::policy(Outcome::Unauthorized, "stream refused", "unknown profile");
        return refusal.close(&mut twilio_tx, m, started).await;
    };
    // One live stream per CallSid: a token (valid for its whole TTL) must
    // not open a second paid model session beside the first.
    let Some(_streaming) = Streaming::claim(&shared, &call_sid) else {
        m.error("duplicate_stream");
        tracing::warn!("media stream refused: this call already has a live stream");
        let refusal = Refusal::policy(
            Outcome::Unauthorized,
            "stream already open",
            "duplicate stream",
        );
        return refusal.close(&mut twilio_tx, m, started).await;
    };
    // An outbound call placed by this replica: the CallSid must be the one
    // Twilio gave it, once; its context goes to the model.
    let call_context = match start.outbound_ref.as_deref() {
        None => None,
        Some(reference) => match shared.outbound.claim(reference, &call_sid, now_unix()) {
            outbound::Claim::Placed { context } => context,
            outbound::Claim::Unknown => None,
            refused @ (outbound::Claim::WrongCall | outbound::Claim::AlreadyUsed) => {
                m.error("outbound_ref_mismatch");
                tracing::warn!(claim = ?refused, "media stream refused: the outbound reference belongs to another call or was used");
                let refusal = Refusal::policy(
                    Outcome::Unauthorized,
                    "stream refused",
                    "outbound reference refused",
                );
                return refusal.close(&mut twilio_tx, m, started).await;
            }
        },
    };
    // Admitted: the call now counts against max_calls, not the pending budget.
    let Some(slot) = Slot::acquire(&shared) else {
        tracing::warn!("media stream refused: full or draining");
        let refusal = Refusal {
            code: close_code::TRY_AGAIN_LATER,
            close_reason: "not accepting calls",
            outcome: Outcome::Rejected,
            log_reason: "busy",
        };
        return refusal.close(&mut twilio_tx, m, started).await;
    };
    drop(pending);
    tracing::info!(
        profile = profile_name,
        outbound = start.outbound_ref.is_some(),
        "stream started"
    );
    let context = CallContext {
        call_sid: call_sid.clone(),
        stream_sid: start.stream_sid.clone(),
        from: start.param("from").to_owned(),
        to: start.param("to").to_owned(),
        profile: profile_name.to_owned(),
    };
    // What the call record needs besides the bridge's summary.
    let record = |summary: &CallSummary, duration: Duration, cost_usd: f64| {
        let meta = CallMeta {
            context: &context,
            account_sid: &start.account_sid,
            direction: start.param("direction"),
            started_at,
            duration,
        };
        CallRecord::new(&meta, summary, cost_usd)
    };

    let cfg = &shared.config;
    let agent = &assistant.profile.agent;
    let params = CallParams {
        context: context.clone(),
        account_sid: start.account_sid.clone(),
        mode: assistant.profile.audio_mode,
        playout_lead: cfg.playout_lead(),
        max_lag: Duration::from_millis(cfg.audio.max_lag_ms),
        greeting: agent.greeting.clone(),
        dtmf: agent.dtmf,
        dtmf_timeout: Duration::from_millis(agent.dtmf_timeout_ms),
        control: assistant.control.clone(),
        rest: shared.rest.clone(),
        reconnect_budget: Duration::from_millis(cfg.realtime.reconnect_budget_ms),
        max_session: Duration::from_secs(cfg.realtime.max_session_secs),
        ping_interval: Duration::from_millis(cfg.realtime.ping_interval_ms),
        pong_timeout: Duration::from_millis(cfg.realtime.pong_timeout_ms),
        idle_timeout: Duration::from_millis(cfg.twilio.idle_timeout_ms),
        max_call: Duration::from_secs(cfg.max_call_secs),
        reconnect_filler: shared.reconnect_filler.clone(),
        log_content: cfg.log.transcripts,
        heard_offset: Duration::from_millis(cfg.audio.heard_offset_ms),
        append_every: Duration::from_millis(cfg.audio.append_ms),
        stream_started: start_accepted,
    };
    // Opens a new socket to the same endpoint: a reconnect or a session
    // rollover.
    let reconnect = (cfg.realtime.reconnect_budget_ms > 0).then(|| {
        let shared = shared.clone();
        Box::new(move || {
            let shared = shared.clone();
            Box::pin(async move {
                let started = tokio::time::Instant::now();
                let pair = shared.endpoint.connect().await.map_err(|e| {
                    shared.metrics.error("upstream_connect");
                    e.to_string()
                })?;
                shared
                    .metrics
                    .upstream_connect
                    .observe_duration(started.elapsed());
                Ok(boxed(pair))
            }) as bridge::Connecting<_, _>
        }) as bridge::Connector<_, _>
    });
    let model = match shared.take_warm(&call_sid, profile_name).await {
        Some(warm) => {
            tracing::debug!("pre-warmed model session taken over");
            Model {
                driver: warm.driver,
                tx: warm.tx,
                rx: warm.rx,
                reconnect,
                opened_at: Some(warm.opened_at),
            }
        }
        None => {
            let connect_started = tokio::time::Instant::now();
            let (model_tx, model_rx) = match shared.endpoint.connect().await {
                Ok(pair) => boxed(pair),
                Err(err) => {
                    m.error("upstream_connect");
                    m.call_ended(Outcome::UpstreamFailed);
                    tracing::error!(error = %err, "cannot open the model session");
                    let _ = twilio_tx
                        .send(WsOut::Close(close_code::INTERNAL, "model unavailable"))
                        .await;
                    let duration = started.elapsed();
                    log_call_ended(
                        Outcome::UpstreamFailed,
                        duration,
                        None,
                        None,
                        "model unavailable",
                    );
                    drop(slot);
                    let summary = CallSummary::empty(Outcome::UpstreamFailed, "model unavailable");
                    send_record(&shared, assistant, || record(&summary, duration, 0.0));
                    return;
                }
            };
            m.upstream_connect
                .observe_duration(connect_started.elapsed());
            Model {
                driver: driver_for(shared.session_spec(assistant, call_context.as_deref())),
                tx: model_tx,
                rx: model_rx,
                reconnect,
                opened_at: None,
            }
        }
    };
    let summary = bridge::run(
        params,
        m.clone(),
        assistant.tools.clone(),
        twilio_tx,
        twilio_rx,
        model,
        shared.close_calls.clone(),
    )
    .await;
    let duration = started.elapsed();
    let cost_usd = cfg.pricing.cost_usd(&summary.usage);
    m.call_ended(summary.outcome);
    m.call_duration.observe_duration(duration);
    m.usage.call_cost.observe(cost_usd);
    m.usage.count_call(profile_name, &summary.usage, cost_usd);
    log_call_ended(
        summary.outcome,
        duration,
        Some(&summary),
        Some(cost_usd),
        summary.reason.as_deref().unwrap_or(""),
    );
    drop(slot);
    send_record(&shared, assistant, || record(&summary, duration, cost_usd));
}

/// Queues the call's record for its profile's receiver, if it has one
/// (after the slot is released: delivery never holds a call's resources).
fn send_record(shared: &Shared, assistant: &Assistant, record: impl FnOnce() -> CallRecord) {
    if let (Some(sender), Some(url)) = (&shared.summaries, &assistant.summary_url) {
        sender.send(url, &record());
    }
}

/// The one line that ends every call's log, inside its `call` span (which
/// names the call and stream): counts only, never audio or the transcript.
/// Frames dropped are not counted per call: `callbridge_frames_dropped_total`
/// has them for the process.
fn log_call_ended(
    outcome: Outcome,
    duration: Duration,
    summary: Option<&CallSummary>,
    cost_usd: Option<f64>,
    reason: &str,
) {
    let (input_tokens, output_tokens) = summary.map_or((0, 0), |s| {
        (s.usage.input_tokens(), s.usage.output_tokens())
    });
    let s = summary.map_or((0, 0, 0, 0, 0, 0), |s| {
        (
            s.turns,
            s.bargeins,
            s.frames_in,
            s.frames_out,
            s.rejected,
            s.tool_calls,
        )
    });
    tracing::info!(
        outcome = outcome.as_str(),
        duration_s = duration.as_secs_f64(),
        turns = s.0,
        bargeins = s.1,
        frames_in = s.2,
        frames_out = s.3,
        rejected = s.4,
        tool_calls = s.5,
        input_tokens,
        output_tokens,
        cost_usd = cost_usd.unwrap_or(0.0),
        reason,
        "call ended"
    );
}
