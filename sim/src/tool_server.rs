//! A tiny HTTP endpoint on loopback that an assistant's tool talks to: the
//! demo's "order system" ([`LOOKUP_ORDER`]) and, so that the assistant's
//! hang-up never leaves the machine, a stand-in for the one request of
//! Twilio's REST API that `end_call` makes.
//!
//! - `POST /lookup_order`: the HTTP tool contract (`{"name", "call_id",
//!   "arguments", "call": {...}}` in, any 2xx body out). Order `123` is
//!   shipped and arrives Friday; any other order is a 404 with
//!   `{"error": …}`, which the bridge hands the model as a tool error.
//! - `POST /2010-04-01/Accounts/{AC…}/Calls/{CA…}.json` with
//!   `Status=completed`: answered like Twilio (the call resource as JSON)
//!   when HTTP Basic auth carries the account SID and the auth token the
//!   server was started with; 401 otherwise.
//!
//! Everything else is a 404. Every request to those two paths is recorded,
//! so a demo or a test can show what the bridge actually sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The tool this server implements.
pub const LOOKUP_ORDER: &str = "lookup_order";
/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 64 << 10;

/// One `POST /lookup_order` as the server received it, and its answer.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// The body as JSON (`Null` when it was not JSON).
    pub body: Value,
    pub status: u16,
    /// The answer's body.
    pub answer: String,
    pub at: Instant,
}

impl ToolRequest {
    fn field(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(&self.body, |v, key| v.get(key))
    }

    /// `name`: the tool the model called.
    pub fn name(&self) -> Option<&str> {
        self.field(&["name"]).and_then(Value::as_str)
    }

    /// `arguments`: the model's arguments, parsed by the bridge.
    pub fn arguments(&self) -> Option<&Value> {
        self.field(&["arguments"])
    }

    /// `call.call_sid`: the phone call the tool was called on.
    pub fn call_sid(&self) -> Option<&str> {
        self.field(&["call", "call_sid"]).and_then(Value::as_str)
    }

    /// `call.<key>` (`stream_sid`, `from`, `to`, `profile`).
    pub fn call(&self, key: &str) -> Option<&str> {
        self.field(&["call", key]).and_then(Value::as_str)
    }
}

/// One REST hang-up (`Status=completed` on a call) as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HangUp {
    pub account_sid: String,
    pub call_sid: String,
    /// The `Status` form field.
    pub status: String,
    /// Whether Basic auth carried the account SID and the expected token.
    pub authorized: bool,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Seen {
    tools: Vec<ToolRequest>,
    hangups: Vec<HangUp>,
}

struct Shared {
    twilio_auth_token: Option<String>,
    seen: Mutex<Seen>,
}

/// The server, on `127.0.0.1:0` until [`ToolServer::stop`] or drop.
pub struct ToolServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ToolServer {
    /// Starts serving. `twilio_auth_token`: the token the REST stand-in
    /// accepts (the bridge's `TWILIO_AUTH_TOKEN`); `None` refuses every
    /// REST request.
    pub async fn start(twilio_auth_token: Option<String>) -> std::io::Result<ToolServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            twilio_auth_token,
            seen: Mutex::new(Seen::default()),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, shared.clone(), stopped));
        Ok(ToolServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: Twilio's REST base URL, for `twilio.api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of a tool, for `[[agent.tools]] url`.
    pub fn tool_url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Every `POST /lookup_order`, in arrival order.
    pub fn tool_requests(&self) -> Vec<ToolRequest> {
        self.lock().tools.clone()
    }

    /// Every REST hang-up, in arrival order.
    pub fn hangups(&self) -> Vec<HangUp> {
        self.lock().hangups.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    // Dropping the set at the end aborts the connections still open
    // (reqwest keeps them alive for reuse).
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(req, &shared).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn json_reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", body.to_string())
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "body too large"}),
            )
        }
    };
    let path = parts.uri.path();
    if parts.method == Method::POST && path == format!("/{LOOKUP_ORDER}") {
        return lookup_order(&body, shared);
    }
    if parts.method == Method::POST {
        if let Some((account, call)) = call_resource(path) {
            return hang_up(account, call, &parts.headers, &body, shared);
        }
    }
    json_reply(StatusCode::NOT_FOUND, &json!({"error": "not found"}))
}

/// The tool: `arguments.order_id` looked up in an order book of one.
fn lookup_order(body: &[u8], shared: &Shared) -> Response<Full<Bytes>> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let order_id = request
        .get("arguments")
        .and_then(|a| a.get("order_id"))
        .and_then(Value::as_str);
    let (status, answer) = match order_id {
        // Written out, so the keys keep this order.
        Some("123") => (
            StatusCode::OK,
            r#"{"order_id":"123","status":"shipped","eta":"Friday"}"#.to_owned(),
        ),
        Some(other) => (
            StatusCode::NOT_FOUND,
            json!({"error": format!("no order {other}")}).to_string(),
        ),
        None => (
            StatusCode::BAD_REQUEST,
            json!({"error": "arguments.order_id (a string) is required"}).to_string(),
        ),
    };
    if let Ok(mut seen) = shared.seen.lock() {
        seen.tools.push(ToolRequest {
            body: request,
            status: status.as_u16(),
            answer: answer.clone(),
            at: Instant::now(),
        });
    }
    reply(status, "application/json", answer)
}

/// `/2010-04-01/Accounts/{AC…}/Calls/{CA…}.json` → the two SIDs.
fn call_resource(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/2010-04-01/Accounts/")?;
    let (account, rest) = rest.split_once('/')?;
    let call = rest.strip_prefix("Calls/")?.strip_suffix(".json")?;
    let sid = |s: &str, prefix: &str| {
        s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    (sid(account, "AC") && sid(call, "CA")).then_some((account, call))
}

/// Basic auth as `(user, password)`.
fn basic_auth(headers: &http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Twilio's "update a call": only `Status=completed` (the hang-up).
fn hang_up(
    account: &str,
    call: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let authorized = match (&shared.twilio_auth_token, basic_auth(headers)) {
        (Some(token), Some((user, password))) => user == account && &password == token,
        _ => false,
    };
    let status = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "Status")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if let Ok(mut seen) = shared.seen.lock() {
        seen.hangups.push(HangUp {
            account_sid: account.to_owned(),
            call_sid: call.to_owned(),
            status: status.clone(),
            authorized,
            at: Instant::now(),
        });
    }
    if !authorized {
        // Twilio's answer to bad credentials.
        return json_reply(
            StatusCode::UNAUTHORIZED,
            &json!({"code": 20003, "message": "Authenticate", "status": 401}),
        );
    }
    if status != "completed" {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"code": 21220, "message": "this stand-in only hangs up (Status=completed)", "status": 400}),
        );
    }
    json_reply(
        StatusCode::OK,
        &json!({"sid": call, "account_sid": account, "status": "completed"}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_resource_paths() {
        let ac = format!("AC{}", "a".repeat(32));
        let ca = format!("CA{}", "0".repeat(32));
        let path = format!("/2010-04-01/Accounts/{ac}/Calls/{ca}.json");
        assert_eq!(call_resource(&path), Some((ac.as_str(), ca.as_str())));
        assert_eq!(
            call_resource("/2010-04-01/Accounts/AC1/Calls/CA1.json"),
            None
        );
        assert_eq!(
            call_resource(&format!("/2010-04-01/Accounts/{ac}/Calls.json")),
            None
        );
    }

    #[test]
    fn basic_auth_decodes() {
        let mut headers = http::HeaderMap::new();
        let value = base64::engine::general_purpose::STANDARD.encode("ACx:tok");
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Basic {value}").parse().unwrap(),
        );
        assert_eq!(
            basic_auth(&headers),
            Some(("ACx".to_owned(), "tok".to_owned()))
        );
        assert_eq!(basic_auth(&http::HeaderMap::new()), None);
    }
}
