//! Twilio's REST API, for what Media Streams cannot do (PROTOCOLS.md §4): hang
//! up a call, transfer it (replace its TwiML with a `<Dial>`), place a call.
//!
//! The one module under [`crate::twilio`] that does I/O. A [`TwilioRest`] is
//! built once at start-up from `twilio.api_base_url` and the credentials in
//! [`Secrets`], and cloned into every call (it is a few `Arc`s).
//!
//! - Credentials: an API key (`TWILIO_API_KEY_SID` + `TWILIO_API_KEY_SECRET`)
//!   where set, else the auth token with the account SID as the Basic-auth
//!   user. The account in the URL is the call's own (`start.accountSid`) for
//!   call control, and `TWILIO_ACCOUNT_SID` for outbound calls.
//! - Bounded: each request has a timeout (5 s by default), and is retried at
//!   most twice, with a short backoff, when it failed in a way that may pass:
//!   connection errors, timeouts, 5xx and 429. A 4xx is never retried. A call
//!   is only ever *created* once: `create_call` retries only failures where
//!   Twilio cannot have acted (no connection, or 429), because a timeout or a
//!   5xx may follow a call that was placed, and a retry would ring twice.
//! - Every request (each retry too) is counted in
//!   `callbridge_twilio_api_requests_total{op,outcome}`.
//! - Errors keep Twilio's error `code` and `message` so that the model can say
//!   what went wrong ("the transfer failed: …"); no error text ever holds a
//!   credential.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::config::{Config, Secret, Secrets};
use crate::http_client;
use crate::metrics::{Metrics, TwilioOp, TwilioOutcome};

/// The REST API version in every path.
const API_VERSION: &str = "2010-04-01";
/// Per-request time limit (connect, send, answer) unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after the first attempt, at most.
pub const MAX_RETRIES: u32 = 2;
/// Wait before the first retry; doubled before the second.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
/// Twilio's limit on inline TwiML (the `Twiml` parameter), in characters.
pub const MAX_TWIML_CHARS: usize = 4000;
/// Answers are small JSON objects; anything larger is not read.
const MAX_ANSWER_BYTES: usize = 64 << 10;
/// Twilio's error code for "the requested resource was not found".
pub const ERROR_NOT_FOUND: i64 = 20404;
/// The call progress events an outbound call reports to its status callback.
pub const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// How the bridge authenticates to the REST API (HTTP Basic).
#[derive(Clone, Debug)]
pub enum Credentials {
    /// An API key: `SK…` SID as the user, its secret as the password.
    ApiKey { sid: String, secret: Secret },
    /// The account's auth token; the user is the account SID of each request.
    AuthToken(Secret),
}

impl Credentials {
    /// The API key where both halves are set (preferred), else the auth
    /// token, else none (then hang-up, transfer and outbound are unavailable).
    pub fn from_secrets(secrets: &Secrets) -> Option<Credentials> {
        if let (Some(sid), Some(secret)) =
            (&secrets.twilio_api_key_sid, &secrets.twilio_api_key_secret)
        {
            return Some(Credentials::ApiKey {
                sid: sid.clone(),
                secret: secret.clone(),
            });
        }
        secrets
            .twilio_auth_token
            .clone()
            .map(Credentials::AuthToken)
    }

    fn user<'a>(&'a self, account_sid: &'a str) -> &'a str {
        match self {
            Credentials::ApiKey { sid, .. } => sid,
            Credentials::AuthToken(_) => account_sid,
        }
    }

    fn password(&self) -> &Secret {
        match self {
            Credentials::ApiKey { secret, .. } => secret,
            Credentials::AuthToken(token) => token,
        }
    }
}

/// What a hang-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangUp {
    /// Twilio ended the call.
    Completed,
    /// The call was already over (404, Twilio error 20404): nothing to do.
    AlreadyEnded,
}

/// Why a REST operation failed. `Display` is fit for logs and for the model;
/// it never contains a credential.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// A SID that is not `prefix` + 32 hex digits; no request was made.
    #[error("invalid {what}: expected {prefix} followed by 32 hex digits")]
    BadSid {
        what: &'static str,
        prefix: &'static str,
    },
    /// A parameter refused before sending; no request was made.
    #[error("invalid {name}: {reason}")]
    BadParam { name: &'static str, reason: String },
    #[error("Twilio API base URL {0}")]
    BadBaseUrl(String),
    #[error(
        "refusing to send Twilio credentials over plain http:// to {0}: \
         use https:// (plain http:// is for loopback fakes)"
    )]
    PlainText(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Twilio answered with an error status; `code` and `message` are from
    /// its JSON error body when it had one.
    #[error("Twilio answered HTTP {status}{}: {message}", code_suffix(*.code))]
    Api {
        status: u16,
        code: Option<i64>,
        message: String,
    },
    #[error("Twilio did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach Twilio's REST API: {0}")]
    Connect(String),
    #[error("unexpected answer from Twilio (HTTP {status}): {reason}")]
    BadAnswer { status: u16, reason: String },
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|c| format!(" (error {c})")).unwrap_or_default()
}

impl RestError {
    /// Twilio's error code (e.g. 20404, 21210), when it gave one.
    pub fn twilio_code(&self) -> Option<i64> {
        match self {
            RestError::Api { code, .. } => *code,
            _ => None,
        }
    }

    /// The call does not exist (any more): 404 with error 20404.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RestError::Api {
                status: 404,
                code: Some(ERROR_NOT_FOUND),
                ..
            }
        )
    }

    fn outcome(&self) -> TwilioOutcome {
        match self {
            RestError::Timeout(_) => TwilioOutcome::Timeout,
            e if e.is_not_found() => TwilioOutcome::NotFound,
            _ => TwilioOutcome::Error,
        }
    }
}

/// Which failures a request may be repeated after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Updates of a live call: repeating one has the same effect.
    Idempotent,
    /// Creating a call: only where Twilio surely did not act.
    UnlessMaybeDone,
}

/// One failed attempt, and whether Twilio surely did not act on it.
struct Failure {
    error: RestError,
    not_sent: bool,
}

/// The client for Twilio's REST API. Cheap to clone.
#[derive(Clone)]
pub struct TwilioRest {
    client: reqwest::Client,
    base: Arc<Url>,
    credentials: Arc<Credentials>,
    metrics: Metrics,
    timeout: Duration,
    backoff: Duration,
}

impl fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioRest")
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TwilioRest {
    /// A client for the API at `base_url` (`https://api.twilio.com`, or a
    /// fake on loopback: plain `http://` is refused for any other host).
    pub fn new(
        base_url: &str,
        credentials: Credentials,
        metrics: Metrics,
    ) -> Result<TwilioRest, RestError> {
        let base = parse_base_url(base_url)?;
        // Never follows a redirect with the credentials.
        let client = http_client::builder(http_client::web_roots())
            .map_err(|e| RestError::Tls(e.to_string()))?
            .connect_timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|e| RestError::Tls(error_chain(&e)))?;
        Ok(TwilioRest {
            client,
            base: Arc::new(base),
            credentials: Arc::new(credentials),
            metrics,
            timeout: DEFAULT_TIMEOUT,
            backoff: DEFAULT_BACKOFF,
        })
    }

    /// From `twilio.api_base_url` and the secrets; `None` when no credentials
    /// are set (call control and outbound calls are then unavailable).
    pub fn from_config(
        config: &Config,
        secrets: &Secrets,
        metrics: Metrics,
    ) -> Result<Option<TwilioRest>, RestError> {
        let Some(credentials) = Credentials::from_secrets(secrets) else {
            return Ok(None);
        };
        let base = config
            .twilio_api_base_url()
            .map_err(|e| RestError::BadBaseUrl(e.to_string()))?;
        TwilioRest::new(base.as_str(), credentials, metrics).map(Some)
    }

    /// Sets the per-request time limit (each attempt has its own).
    pub fn with_timeout(mut self, timeout: Duration) -> TwilioRest {
        self.timeout = timeout;
        self
    }

    /// Sets the wait before the first retry (doubled before the second).
    pub fn with_backoff(mut self, backoff: Duration) -> TwilioRest {
        self.backoff = backoff;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ends a live call (`Status=completed`). A call that is already over
    /// (404, Twilio error 20404) is [`HangUp::AlreadyEnded`], not an error.
    pub async fn hang_up(&self, account_sid: &str, call_sid: &str) -> Result<HangUp, RestError> {
        check_sid(account_sid, "account SID", "AC")?;
        check_sid(call_sid, "call SID", "CA")?;
        let url = self.url(account_sid, Some(call_sid))?;
        let form = [("Status", "completed")];
        match self
            .post(TwilioOp::Hangup, account_sid, url, &form, Retry::Idempotent)
            .await
        {
            Ok(_) => Ok(HangUp::Completed),
            Err(e) if e.is_not_found() => Ok(HangUp::AlreadyEnded),
            Err(e) => Err(e),
        }
    }

    /// Replaces a live call's TwiML with `twiml` (e.g. [`super::twiml::dial`]
    /// for a transfer), which ends its Media Stream. A call that is already
    /// over is an error here ([`RestError::is_not_found`]): it was not
    /// transferred.
    pub async fn redirect(
        &self,
        account_sid: &str,
        call_sid: &str,
        twiml: &str,
    ) -> Result<(), RestError> {
        check_sid(account_sid, "account SID", "AC")?;
        check_sid(call_sid, "call SID", "CA")?;
        check_twiml(twiml)?;
        let url = self.url(account_sid, Some(call_sid))?;
        let form = [("Twiml", twiml)];
        self.post(
            TwilioOp::Transfer,
            account_sid,
            url,
            &form,
            Retry::Idempotent,
        )
        .await
        .map(drop)
    }

    /// Places a call from `from` to `to` that runs `twiml`, reporting its
    /// progress (initiated, ringing, answered, completed) to
    /// `status_callback_url`. Returns the new call's SID (`CA…`).
    pub async fn create_call(
        &self,
        account_sid: &str,
        to: &str,
        from: &str,
        twiml: &str,
        status_callback_url: &str,
    ) -> Result<String, RestError> {
        check_sid(account_sid, "account SID", "AC")?;
        check_party("To", to)?;
        check_party("From", from)?;
        check_twiml(twiml)?;
        check_callback_url(status_callback_url)?;
        let url = self.url(account_sid, None)?;
        let mut form = vec![
            ("To", to),
            ("From", from),
            ("Twiml", twiml),
            ("StatusCallback", status_callback_url),
            ("StatusCallbackMethod", "POST"),
        ];
        form.extend(STATUS_CALLBACK_EVENTS.map(|e| ("StatusCallbackEvent", e)));
        let (status, body) = self
            .post(
                TwilioOp::CreateCall,
                account_sid,
                url,
                &form,
                Retry::UnlessMaybeDone,
            )
            .await?;
        let bad = |reason: &str| RestError::BadAnswer {
            status,
            reason: reason.to_owned(),
        };
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| bad("the body is not JSON"))?;
        let sid = json
            .get("sid")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("no `sid` in the answer"))?;
        if !valid_sid(sid, "CA") {
            return Err(bad("`sid` is not a call SID"));
        }
        Ok(sid.to_owned())
    }

    /// `{base}/2010-04-01/Accounts/{account}/Calls[/{call}].json`; the SIDs
    /// are checked before they get here.
    fn url(&self, account_sid: &str, call_sid: Option<&str>) -> Result<Url, RestError> {
        let mut url = (*self.base).clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| RestError::BadBaseUrl("cannot take a path".into()))?;
            path.pop_if_empty()
                .extend([API_VERSION, "Accounts", account_sid]);
            match call_sid {
                Some(call) => path.extend(["Calls", &format!("{call}.json")]),
                None => path.push("Calls.json"),
            };
        }
        Ok(url)
    }

    /// POSTs `form` to `url`, retrying as `retry` allows; counts every
    /// attempt. Returns a 2xx answer's status and body.
    async fn post(
        &self,
        op: TwilioOp,
        account_sid: &str,
        url: Url,
        form: &[(&str, &str)],
        retry: Retry,
    ) -> Result<(u16, Vec<u8>), RestError> {
        let mut retries = 0;
        loop {
            let result = self.attempt(account_sid, &url, form).await;
            let failure = match result {
                Ok(answer) => {
                    self.metrics.twilio_api_request(op, TwilioOutcome::Ok);
                    return Ok(answer);
                }
                Err(failure) => failure,
            };
            let error = failure.error;
            self.metrics.twilio_api_request(op, error.outcome());
            let may_pass = match &error {
                RestError::Api { status, .. } => *status == 429 || *status >= 500,
                RestError::Timeout(_) | RestError::Connect(_) => true,
                _ => false,
            };
            let allowed = match retry {
                Retry::Idempotent => may_pass,
                Retry::UnlessMaybeDone => {
                    may_pass
                        && (failure.not_sent || matches!(error, RestError::Api { status: 429, .. }))
                }
            };
            if !allowed || retries >= MAX_RETRIES {
                if !error.is_not_found() {
                    tracing::warn!(op = op.as_str(), retries, error = %error, "Twilio REST request failed");
                }
                return Err(error);
            }
            let wait = self.backoff * 2u32.pow(retries);
            tracing::info!(op = op.as_str(), error = %error, ?wait, "Twilio REST request failed; retrying");
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    /// One request, bounded by the timeout from connect to the last byte.
    async fn attempt(
        &self,
        account_sid: &str,
        url: &Url,
        form: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), Failure> {
        let credentials = &*self.credentials;
        let exchange = async {
            let mut response = self
                .client
                .post(url.clone())
                .basic_auth(
                    credentials.user(account_sid),
                    Some(credentials.password().expose()),
                )
                .header(reqwest::header::ACCEPT, "application/json")
                .form(form)
                .send()
                .await
                .map_err(|e| Failure {
                    not_sent: e.is_connect(),
                    error: if e.is_timeout() {
                        RestError::Timeout(self.timeout)
                    } else {
                        RestError::Connect(self.scrub(error_chain(&e)))
                    },
                })?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                            return Err(Failure {
                                not_sent: false,
                                error: RestError::BadAnswer {
                                    status,
                                    reason: format!("the answer is over {MAX_ANSWER_BYTES} bytes"),
                                },
                            });
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Failure {
                            not_sent: false,
                            error: RestError::Connect(self.scrub(error_chain(&e))),
                        })
                    }
                }
            }
            Ok((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Failure {
                    not_sent: false,
                    error: RestError::Timeout(self.timeout),
                })
            }
        };
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        Err(Failure {
            not_sent: false,
            error: self.api_error(status, &body),
        })
    }

    /// Twilio's error body: `{"code": 20404, "message": "…", "more_info": "…",
    /// "status": 404}`. Anything else keeps the status and a generic message.
    fn api_error(&self, status: u16, body: &[u8]) -> RestError {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let code = json
            .as_ref()
            .and_then(|j| j.get("code"))
            .and_then(serde_json::Value::as_i64);
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(serde_json::Value::as_str)
            .map(|m| self.scrub(m.chars().take(300).collect()))
            .unwrap_or_else(|| {
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_owned()
            });
        RestError::Api {
            status,
            code,
            message,
        }
    }

    /// Removes the password from text that came from elsewhere (an answer,
    /// a transport error), should it ever appear there.
    fn scrub(&self, text: String) -> String {
        let secret = self.credentials.password().expose();
        if secret.is_empty() || !text.contains(secret) {
            text
        } else {
            text.replace(secret, "<redacted>")
        }
    }
}

/// True for `prefix` followed by 32 hex digits (`AC…`, `CA…`, `SK…`).
pub fn valid_sid(value: &str, prefix: &str) -> bool {
    value.len() == prefix.len() + 32
        && value.starts_with(prefix)
        && value[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_sid(value: &str, what: &'static str, prefix: &'static str) -> Result<(), RestError> {
    if valid_sid(value, prefix) {
        Ok(())
    } else {
        Err(RestError::BadSid { what, prefix })
    }
}

/// `To` and `From`: a number, SIP URI or client name, checked by the caller;
/// here only what could never be right.
fn check_party(name: &'static str, value: &str) -> Result<(), RestError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > 256 {
        "is too long"
    } else if value.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(RestError::BadParam {
        name,
        reason: reason.to_owned(),
    })
}

fn check_twiml(twiml: &str) -> Result<(), RestError> {
    let chars = twiml.chars().count();
    if twiml.trim().is_empty() {
        return Err(RestError::BadParam {
            name: "Twiml",
            reason: "must not be empty".into(),
        });
    }
    if chars > MAX_TWIML_CHARS {
        return Err(RestError::BadParam {
            name: "Twiml",
            reason: format!("is {chars} characters; Twilio accepts at most {MAX_TWIML_CHARS}"),
        });
    }
    Ok(())
}

fn check_callback_url(raw: &str) -> Result<(), RestError> {
    let ok = Url::parse(raw)
        .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some());
    if ok {
        Ok(())
    } else {
        Err(RestError::BadParam {
            name: "StatusCallback",
            reason: "must be an http(s) URL".into(),
        })
    }
}

fn parse_base_url(raw: &str) -> Result<Url, RestError> {
    let url = Url::parse(raw).map_err(|e| RestError::BadBaseUrl(format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(RestError::BadBaseUrl(
            "must be https://host[:port] (or http:// for a loopback fake)".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(RestError::BadBaseUrl("must not have a query".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RestError::BadBaseUrl(
            "must not carry credentials (they come from the environment)".into(),
        ));
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(RestError::PlainText(
            url.host_str().unwrap_or_default().to_owned(),
        ));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// An error and its causes, one line, without the URL (reqwest's own
/// `Display` stops at "error sending request").
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(i) = text.find(" for url (") {
        text.truncate(i);
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids() {
        assert!(valid_sid("AC0123456789abcdef0123456789abcdef", "AC"));
        assert!(valid_sid("CA0123456789ABCDEF0123456789abcdef", "CA"));
        assert!(!valid_sid("CA0123456789abcdef0123456789abcdef", "AC"));
        assert!(!valid_sid("AC0123456789abcdef0123456789abcde", "AC"));
        assert!(!valid_sid("AC0123456789abcdef0123456789abcdeg", "AC"));
        assert!(!valid_sid("AC0123456789abcdef0123456789abcdef0", "AC"));
        assert!(!valid_sid("AC../../0123456789abcdef0123456789ab", "AC"));
        assert!(!valid_sid("", "AC"));
    }

    #[test]
    fn base_url_rules() {
        assert!(parse_base_url("https://api.twilio.com").is_ok());
        assert!(parse_base_url("http://127.0.0.1:4010").is_ok());
        assert!(parse_base_url("http://[::1]:4010").is_ok());
        assert!(parse_base_url("http://localhost:4010/prefix").is_ok());
        assert!(matches!(
            parse_base_url("http://api.twilio.com"),
            Err(RestError::PlainText(_))
        ));
        for bad in [
            "api.twilio.com",
            "ftp://api.twilio.com",
            "https://api.twilio.com/?x=1",
            "https://u:p@api.twilio.com",
        ] {
            assert!(
                matches!(parse_base_url(bad), Err(RestError::BadBaseUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_keep_a_base_path() {
        let rest = TwilioRest::new(
            "http://127.0.0.1:1/proxy/",
            Credentials::AuthToken(Secret::new("t")),
            Metrics::new(),
        )
        .unwrap();
        let account = "AC0123456789abcdef0123456789abcdef";
        let call = "CA0123456789abcdef0123456789abcdef";
        assert_eq!(
            rest.url(account, Some(call)).unwrap().as_str(),
            format!("http://127.0.0.1:1/proxy/2010-04-01/Accounts/{account}/Calls/{call}.json")
        );
        let rest = TwilioRest::new(
            "https://api.twilio.com",
            Credentials::AuthToken(Secret::new("t")),
            Metrics::new(),
        )
        .unwrap();
        assert_eq!(
            rest.url(account, None).unwrap().as_str(),
            format!("https://api.twilio.com/2010-04-01/Accounts/{account}/Calls.json")
        );
    }

    #[test]
    fn credentials_prefer_the_api_key() {
        let mut secrets = Secrets {
            twilio_auth_token: Some(Secret::new("token")),
            ..Secrets::default()
        };
        let account = "AC0123456789abcdef0123456789abcdef";
        let c = Credentials::from_secrets(&secrets).unwrap();
        assert_eq!(c.user(account), account);
        assert_eq!(c.password().expose(), "token");
        secrets.twilio_api_key_sid = Some("SK0123456789abcdef0123456789abcdef".into());
        secrets.twilio_api_key_secret = Some(Secret::new("key-secret"));
        let c = Credentials::from_secrets(&secrets).unwrap();
        assert_eq!(c.user(account), "SK0123456789abcdef0123456789abcdef");
        assert_eq!(c.password().expose(), "key-secret");
        assert!(!format!("{c:?}").contains("key-secret"));
        assert!(Credentials::from_secrets(&Secrets::default()).is_none());
    }

    #[test]
    fn api_errors_keep_twilios_code_and_message() {
        let rest = TwilioRest::new(
            "https://api.twilio.com",
            Credentials::AuthToken(Secret::new("tok-secret")),
            Metrics::new(),
        )
        .unwrap();
        let e = rest.api_error(
            400,
            br#"{"code":21210,"message":"The source phone number provided, +15005550001, is not yet verified.","more_info":"https://www.twilio.com/docs/errors/21210","status":400}"#,
        );
        assert_eq!(e.twilio_code(), Some(21210));
        assert_eq!(
            e.to_string(),
            "Twilio answered HTTP 400 (error 21210): The source phone number provided, +15005550001, is not yet verified."
        );
        let e = rest.api_error(404, br#"{"code":20404,"message":"not found","status":404}"#);
        assert!(e.is_not_found());
        assert_eq!(e.outcome(), TwilioOutcome::NotFound);
        let e = rest.api_error(404, b"<html>nginx</html>");
        assert!(!e.is_not_found());
        assert_eq!(e.to_string(), "Twilio answered HTTP 404: Not Found");
        // A secret echoed back is scrubbed.
        let e = rest.api_error(401, br#"{"code":20003,"message":"bad tok-secret"}"#);
        assert!(!e.to_string().contains("tok-secret"), "{e}");
    }
}
