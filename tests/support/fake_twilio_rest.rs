//! A fake of Twilio's REST API, written from PROTOCOLS.md §4 alone (it shares
//! no code with the bridge): `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`
//! creates a call, `POST …/Calls/{CallSid}.json` updates one (`Status`,
//! `Twiml`, `Url`). HTTP Basic auth with `AccountSid:AuthToken` or
//! `ApiKeySid:ApiKeySecret`, form-encoded bodies, JSON answers, Twilio's error
//! shape (`{"code", "message", "more_info", "status"}`).
//!
//! Every request is recorded (method, path, Basic-auth user, form params),
//! authorized or not. It can be scripted to answer 404 / 20404 for a call that
//! is over, to fail the next N requests with a status (500, 429, 400…), or to
//! hang without answering.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The Basic-auth user, when the header could be read.
    pub user: Option<String>,
    /// True when the credentials were accepted.
    pub authorized: bool,
    pub content_type: Option<String>,
    /// Form parameters in order, repeated names kept.
    pub params: Vec<(String, String)>,
    /// When it arrived.
    pub at: tokio::time::Instant,
}

impl Recorded {
    /// The first value of `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn params_named(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct State {
    account_sid: String,
    /// Accepted (user, password) pairs.
    credentials: Vec<(String, String)>,
    requests: Vec<Recorded>,
    /// Calls answered 404 / 20404.
    ended: HashSet<String>,
    /// Failures to answer before the normal answer: (count, status).
    fail_next: Option<(usize, u16)>,
    hang: bool,
    calls: HashMap<String, Value>,
    created: u64,
}

/// The fake, serving on 127.0.0.1:0 until dropped.
pub struct FakeTwilioRest {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTwilioRest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTwilioRest {
    /// A fake for one account, accepting `account_sid:auth_token`.
    pub async fn start(account_sid: &str, auth_token: &str) -> FakeTwilioRest {
        let state = Arc::new(Mutex::new(State {
            account_sid: account_sid.to_owned(),
            credentials: vec![(account_sid.to_owned(), auth_token.to_owned())],
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move { handle(state, method, uri, headers, body).await }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeTwilioRest { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, for `twilio.api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Also accepts the API key `sid:secret` for the account.
    pub fn accept_api_key(&self, sid: &str, secret: &str) {
        self.state
            .lock()
            .unwrap()
            .credentials
            .push((sid.to_owned(), secret.to_owned()));
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Answers updates of `call_sid` with 404 / 20404, as for a call that is over.
    pub fn end_call(&self, call_sid: &str) {
        self.state.lock().unwrap().ended.insert(call_sid.to_owned());
    }

    /// Answers the next `count` requests (after the auth check) with `status`
    /// and Twilio's error body, then answers normally again.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.state.lock().unwrap().fail_next = Some((count, status));
    }

    /// While on, requests are recorded and never answered.
    pub fn hang(&self, on: bool) {
        self.state.lock().unwrap().hang = on;
    }

    /// The call as the fake knows it (after an update or a create).
    pub fn call(&self, call_sid: &str) -> Option<Value> {
        self.state.lock().unwrap().calls.get(call_sid).cloned()
    }
}

/// `{"code", "message", "more_info", "status"}` with `status`.
fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Twilio API\"".parse().unwrap(),
        );
    }
    response
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(B64.decode(encoded).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn call_json(account: &str, sid: &str, to: &str, from: &str, status: &str) -> Value {
    json!({
        "sid": sid,
        "account_sid": account,
        "to": to,
        "from": from,
        "status": status,
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{account}/Calls/{sid}.json"),
    })
}

async fn handle(
    state: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let auth = basic_auth(&headers);
    let (authorized, hang) = {
        let mut s = state.lock().unwrap();
        let authorized = auth
            .as_ref()
            .is_some_and(|(u, p)| s.credentials.iter().any(|(cu, cp)| cu == u && cp == p));
        s.requests.push(Recorded {
            at: tokio::time::Instant::now(),
            method: method.to_string(),
            path: path.clone(),
            user: auth.as_ref().map(|(u, _)| u.clone()),
            authorized,
            content_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            params: params.clone(),
        });
        (authorized, s.hang)
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if !authorized {
        let message = if auth.is_none() {
            "Authentication Error - No credentials provided"
        } else {
            "Authentication Error - invalid username"
        };
        return twilio_error(401, 20003, message);
    }

    let mut s = state.lock().unwrap();
    if let Some((count, status)) = s.fail_next.filter(|(count, _)| *count > 0) {
        s.fail_next = (count > 1).then(|| (count - 1, status));
        let (code, message) = match status {
            429 => (20429, "Too Many Requests"),
            400 => (21201, "No 'To' number is specified"),
            s if s >= 500 => (20500, "Internal Server Error"),
            _ => (20001, "Error"),
        };
        return twilio_error(status, code, message);
    }

    let account = s.account_sid.clone();
    let prefix = format!("/2010-04-01/Accounts/{account}/");
    let not_found = |path: &str| {
        twilio_error(
            404,
            20404,
            &format!("The requested resource {path} was not found"),
        )
    };
    let Some(resource) = path.strip_prefix(&prefix) else {
        // Another account's URL, or no account at all.
        return not_found(&path);
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };

    if resource == "Calls.json" {
        if method != Method::POST {
            return twilio_error(405, 20004, "Method not allowed");
        }
        let Some(to) = param("To") else {
            return twilio_error(400, 21201, "No 'To' number is specified");
        };
        let Some(from) = param("From") else {
            return twilio_error(400, 21603, "A 'From' phone number is required.");
        };
        if param("Twiml").is_none() && param("Url").is_none() {
            return twilio_error(400, 21205, "Url parameter is required.");
        }
        s.created += 1;
        let sid = format!("CA{:032x}", 0xca11_0000_u64 + s.created);
        let call = call_json(&account, &sid, &to, &from, "queued");
        s.calls.insert(sid, call.clone());
        return (StatusCode::CREATED, axum::Json(call)).into_response();
    }

    let Some(call_sid) = resource
        .strip_prefix("Calls/")
        .and_then(|r| r.strip_suffix(".json"))
        .filter(|sid| is_sid(sid, "CA"))
    else {
        return not_found(&path);
    };
    if s.ended.contains(call_sid) {
        return not_found(&path);
    }
    let call_sid = call_sid.to_owned();
    let mut call = s.calls.get(&call_sid).cloned().unwrap_or_else(|| {
        call_json(
            &account,
            &call_sid,
            "+15005550006",
            "+15005550001",
            "in-progress",
        )
    });
    if method == Method::POST {
        let status = param("Status");
        let twiml = param("Twiml");
        let url = param("Url");
        match status.as_deref() {
            Some("completed" | "canceled") => {
                call["status"] = json!(status.unwrap());
            }
            Some(other) => {
                return twilio_error(400, 21218, &format!("Invalid Status: {other}"));
            }
            None if twiml.is_none() && url.is_none() => {
                return twilio_error(400, 21205, "Url, Twiml or Status is required.");
            }
            None => {}
        }
        s.calls.insert(call_sid, call.clone());
    } else if method != Method::GET {
        return twilio_error(405, 20004, "Method not allowed");
    }
    (StatusCode::OK, axum::Json(call)).into_response()
}
