//! The client side of `POST /calls`: what `callbridge dial` runs.

use std::time::Duration;

use url::Url;

use super::CallRequest;
use crate::config::Secret;

/// Creating a call may take Twilio a few seconds, and the bridge retries
/// what is safe to retry: allow for that.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why `dial` did not place a call. `Display` is one line for a person.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("bad --bridge URL: {0}")]
    BadUrl(String),
    #[error("the bridge refused the admin token (401): check CALLBRIDGE_ADMIN_TOKEN")]
    Unauthorized,
    #[error("the bridge does not take outbound calls (404): set CALLBRIDGE_ADMIN_TOKEN on it, and use its admin port")]
    Disabled,
    #[error("the request was refused (400 {code}): {message}")]
    BadRequest { code: String, message: String },
    #[error("the bridge cannot place calls now (503): {0}")]
    Unavailable(String),
    #[error("Twilio refused the call (502{}): {message}", .twilio_code.map(|c| format!(", Twilio error {c}")).unwrap_or_default())]
    Twilio {
        twilio_code: Option<i64>,
        message: String,
    },
    #[error("unexpected answer from the bridge (HTTP {status}): {message}")]
    Unexpected { status: u16, message: String },
    #[error("cannot reach the bridge: {0}")]
    Connect(String),
}

/// POSTs `request` to `{bridge}/calls` with the admin token; returns the
/// new call's CallSid.
pub async fn dial(
    bridge: &str,
    token: &Secret,
    request: &CallRequest,
) -> Result<String, DialError> {
    let mut url = Url::parse(bridge).map_err(|e| DialError::BadUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(DialError::BadUrl("expected http(s)://host:port".into()));
    }
    url.set_path("/calls");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DialError::Connect(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DIAL_TIMEOUT)
        .build()
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let response = client
        .post(url)
        .bearer_auth(token.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(
            serde_json::to_vec(request)
                .map_err(|e| DialError::Connect(format!("cannot encode the request: {e}")))?,
        )
        .send()
        .await
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = |key: &str| {
        json.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    match status {
        201 => match json.get("call_sid").and_then(|v| v.as_str()) {
            Some(sid) if crate::twilio::rest::valid_sid(sid, "CA") => Ok(sid.to_owned()),
            _ => Err(DialError::Unexpected {
                status,
                message: "no call_sid in the answer".into(),
            }),
        },
        400 => Err(DialError::BadRequest {
            code: text("error"),
            message: text("message"),
        }),
        401 => Err(DialError::Unauthorized),
        404 => Err(DialError::Disabled),
        502 => Err(DialError::Twilio {
            twilio_code: json.get("twilio_code").and_then(|v| v.as_i64()),
            message: text("message"),
        }),
        503 => Err(DialError::Unavailable(text("message"))),
        _ => Err(DialError::Unexpected {
            status,
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        }),
    }
}
