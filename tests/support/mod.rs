//! Test doubles for both peers of the bridge, and a harness that starts the
//! real server on 127.0.0.1:0.
#![allow(dead_code)]

pub mod fake_live;
pub mod fake_realtime;
pub mod fake_tools;
pub mod fake_twilio;
pub mod fake_twilio_rest;
pub mod fault_proxy;
pub mod logs;

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use callbridge::call::tools::{NoTools, ToolRunner};
use callbridge::config::{Config, Dialect, Secret, Secrets};
use callbridge::metrics::Metrics;
use callbridge::server::Server;
use tokio::sync::oneshot;

pub const AUTH_TOKEN: &str = "test-auth-token-0123456789";
pub const API_KEY: &str = "sk-test-not-a-real-key";
/// Signs call records (`CALLBRIDGE_SUMMARY_SECRET`) where a test sets a summary URL.
pub const SUMMARY_SECRET: &str = "whsec-test-0123456789";

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
    .unwrap()
}

pub struct Bridge {
    /// The public (Twilio-facing) port: `/voice`, `/media`, `/stream-status`.
    pub addr: SocketAddr,
    /// The admin port: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    pub metrics: Metrics,
    pub public_url: String,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Bridge {
    /// Starts `callbridge serve`'s server against `realtime_url`, its public
    /// and admin listeners each on 127.0.0.1:0.
    pub async fn start(realtime_url: &str, tweak: impl FnOnce(&mut Config)) -> Bridge {
        Self::start_with_tools(realtime_url, Arc::new(NoTools), tweak).await
    }

    /// Like [`Bridge::start`], with `tools` answering the model's function calls.
    pub async fn start_with_tools(
        realtime_url: &str,
        tools: Arc<dyn ToolRunner>,
        tweak: impl FnOnce(&mut Config),
    ) -> Bridge {
        Self::start_with_secrets(realtime_url, tools, tweak, |_| {}).await
    }

    /// Like [`Bridge::start_with_tools`], with `tweak_secrets` changing the
    /// secrets (auth token and API key set) before the server starts.
    pub async fn start_with_secrets(
        realtime_url: &str,
        tools: Arc<dyn ToolRunner>,
        tweak: impl FnOnce(&mut Config),
        tweak_secrets: impl FnOnce(&mut Secrets),
    ) -> Bridge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let mut config = Config {
            public_url: Some(format!("http://{addr}")),
            ..Config::default()
        };
        config.realtime.url = Some(realtime_url.to_owned());
        config.realtime.dialect = Dialect::Ga;
        tweak(&mut config);
        config.validate().unwrap();
        let mut secrets = Secrets {
            twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
            openai_api_key: Some(Secret::new(API_KEY)),
            summary_secret: Some(Secret::new(SUMMARY_SECRET)),
            ..Secrets::default()
        };
        tweak_secrets(&mut secrets);
        let metrics = Metrics::new();
        let server = Server::with_tools(config, secrets, metrics.clone(), tools).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listener, admin_listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Bridge {
            addr,
            admin,
            metrics,
            public_url: format!("http://{addr}"),
            stop: Some(stop),
            task,
        }
    }

    /// Starts the drain (like SIGTERM).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// POSTs the signed webhook and returns (stream url, token).
    pub async fn answer(&self, call_sid: &str) -> (String, String) {
        let params = fake_twilio::voice_params(call_sid);
        let url = format!("{}/voice", self.public_url);
        let sig = fake_twilio::sign(AUTH_TOKEN, &url, &params);
        let (status, body) = fake_twilio::post_form(self.addr, "/voice", &params, Some(&sig)).await;
        assert_eq!(status, 200, "{body}");
        fake_twilio::parse_twiml(&body).unwrap_or_else(|| panic!("no stream in {body}"))
    }

    /// Answers and opens the signed stream.
    pub async fn connect(&self, call_sid: &str) -> (fake_twilio::Ws, String) {
        let (stream_url, token) = self.answer(call_sid).await;
        let sig = fake_twilio::sign(AUTH_TOKEN, &stream_url, &[]);
        let ws = fake_twilio::open_stream(&stream_url, Some(&sig))
            .await
            .unwrap();
        (ws, token)
    }
}

/// Polls `cond` every 20 ms for up to 6 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Reads until the bridge closes the stream; its close code.
pub async fn close_code(ws: &mut fake_twilio::Ws) -> Option<u16> {
    use futures_util::StreamExt;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    });
    closed.await.expect("the bridge must close the stream")
}

/// Saves the client events a test saw, for the conformance check against
/// the official `openai` package (conformance/check_client_events.py).
/// `dialect` picks the SDK models: the beta dialect's, GA's (GA and Azure),
/// or GPT-Live's (OpenAI and Azure).
pub fn save_client_events(test: &str, dialect: Dialect, events: &[serde_json::Value]) {
    let dialect = match dialect {
        Dialect::Beta => "beta",
        Dialect::Ga | Dialect::Azure => "ga",
        Dialect::Live | Dialect::AzureLive => "live",
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/conformance");
    std::fs::create_dir_all(&dir).unwrap();
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(dir.join(format!("{test}.{dialect}.jsonl")), body).unwrap();
}
