//! A fake tool endpoint, written from the HTTP tool contract of issue 8
//! alone (it shares no code with the runner): the bridge POSTs (or PUTs)
//! `{"name", "call_id", "arguments", "call": {"call_sid", "stream_sid",
//! "from", "to", "profile"}}` as JSON, and a 2xx answer's body is what the
//! model reads.
//!
//! Every request is recorded (method, path, headers, body). Each path can be
//! scripted: answer JSON, answer plain text, answer a status, answer after a
//! delay, or close the connection without answering. Unscripted paths
//! answer 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// How the fake answers a path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with `application/json`.
    Json(Value),
    /// 200 with `text/plain`.
    Text(String),
    /// This status, with a plain-text body.
    Status(u16, String),
    /// The inner reply, after this long.
    Slow(Duration, Box<Reply>),
    /// Drop the connection without an answer.
    Close,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    pub raw_body: String,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    replies: HashMap<String, Reply>,
    seen: Vec<Seen>,
}

/// The fake, serving on 127.0.0.1:0 until dropped.
pub struct FakeTools {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTools {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTools {
    pub async fn start() -> FakeTools {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move { answer(state, method, uri, headers, body).await }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeTools { addr, state, task }
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer requests to `path` with `reply` from now on.
    pub fn script(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .replies
            .insert(path.to_owned(), reply);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_str(&raw_body).unwrap_or(Value::Null),
        raw_body,
        at: Instant::now(),
    };
    let reply = {
        let mut state = state.lock().unwrap();
        state.seen.push(seen);
        state.replies.get(uri.path()).cloned()
    };
    let mut reply = reply.unwrap_or(Reply::Status(404, "no such tool".into()));
    loop {
        match reply {
            Reply::Json(value) => {
                return (
                    [(header::CONTENT_TYPE, "application/json")],
                    value.to_string(),
                )
                    .into_response()
            }
            Reply::Text(text) => {
                return ([(header::CONTENT_TYPE, "text/plain")], text).into_response()
            }
            Reply::Status(code, text) => {
                let status = StatusCode::from_u16(code).unwrap();
                return (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response();
            }
            Reply::Slow(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            Reply::Close => {
                // Unwinding the connection's task drops its socket before any
                // answer is written. `resume_unwind` skips the panic hook, so
                // nothing is printed; the server's other connections go on.
                std::panic::resume_unwind(Box::new("fake tool: closing the connection"));
            }
        }
    }
}
