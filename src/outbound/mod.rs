//! Outbound calls: `POST /calls` on the admin port places a call through
//! Twilio's REST API and connects it, once answered, to an assistant.
//!
//! 1. The request (bearer token, [`request::CallRequest`]) is checked:
//!    E.164 numbers, `outbound.allowed_prefixes`, the profile, the context.
//! 2. [`Outbound::place_call`] writes the TwiML — `<Connect><Stream>` to our
//!    `/media` with a stream token, the call's reference (`ref`), the
//!    profile and the numbers as `<Parameter>`s — and creates the call
//!    (`Calls.json` with `To`, `From`, `Twiml`, and `/call-status` as the
//!    status callback). The context never goes into the TwiML: it stays in
//!    this replica's [`pending::Pending`] table, keyed by the reference.
//! 3. When the callee answers, Twilio opens the stream. The token is bound
//!    to the reference (the CallSid did not exist when it was issued; see
//!    [`crate::call::handshake`]); where this replica placed the call, the
//!    stream's CallSid must be the one Twilio returned, and the context is
//!    added to the model's instructions for that call only.
//!
//! The token must outlive the ringing: it is valid for
//! `twilio.stream_token_ttl` plus [`RING_TIMEOUT`] (Twilio's default ring
//! timeout, which `Calls.json` leaves as is).

pub mod auth;
pub mod client;
pub mod http;
pub mod pending;
pub mod request;

use std::collections::HashSet;
use std::time::Duration;

use url::Url;

use crate::config::{Config, OutboundConfig, Secrets};
use crate::metrics::{Metrics, OutboundOutcome};
use crate::twilio::rest::{RestError, TwilioRest};
use crate::twilio::token::StreamTokens;
use crate::twilio::twiml;

pub use auth::AdminToken;
pub use pending::Claim;
pub use request::{CallRequest, RequestError};

/// How long Twilio lets an outbound call ring before giving up (its default
/// `Timeout`, which callbridge does not change).
pub const RING_TIMEOUT: Duration = Duration::from_secs(60);
/// An outbound call's reference: this prefix and 32 lowercase hex digits.
/// Never a CallSid (`CA…`), so a reference-bound token and a CallSid-bound
/// one can never stand in for each other.
pub const REF_PREFIX: &str = "OB";

/// True for a reference [`Outbound::place_call`] could have made.
pub fn is_ref(value: &str) -> bool {
    value.len() == REF_PREFIX.len() + 32
        && value.starts_with(REF_PREFIX)
        && value[REF_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_ref() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    let mut reference = String::with_capacity(REF_PREFIX.len() + 32);
    reference.push_str(REF_PREFIX);
    for b in bytes {
        reference.push_str(&format!("{b:02x}"));
    }
    Ok(reference)
}

/// Why a call was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The request is at fault (HTTP 400).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// This server cannot place calls now (HTTP 503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// Twilio refused or failed (HTTP 502).
    #[error(transparent)]
    Twilio(#[from] RestError),
}

/// A call Twilio created: what the work that starts with it (opening its
/// model session ahead of the answer) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub call_sid: String,
    /// The assistant profile that answers it.
    pub profile: String,
    /// The call's context as the model reads it, if the request had one.
    pub context: Option<String>,
    /// How long its stream token stays valid: no stream starts later.
    pub token_ttl: Duration,
}

/// Everything outbound calls need, built once at start-up.
pub struct Outbound {
    /// None: `POST /calls` is off (404).
    admin: Option<AdminToken>,
    rest: Option<TwilioRest>,
    account_sid: Option<String>,
    allowed: OutboundConfig,
    profiles: HashSet<String>,
    /// (number, profile) of every profile's numbers.
    numbers: Vec<(String, String)>,
    tokens: StreamTokens,
    token_ttl: Duration,
    stream_url: String,
    stream_status_url: String,
    call_status_url: String,
    fallback_say: Option<String>,
    pending: pending::Pending,
    metrics: Metrics,
}

impl Outbound {
    /// `token_key`: the stream-token key (the same on every replica).
    pub fn new(
        config: &Config,
        secrets: &Secrets,
        public: &Url,
        token_key: &[u8],
        rest: Option<TwilioRest>,
        metrics: Metrics,
    ) -> Result<Outbound, getrandom::Error> {
        let admin = secrets
            .admin_token
            .as_ref()
            .map(AdminToken::new)
            .transpose()?;
        let token_ttl = Duration::from_secs(config.twilio.stream_token_ttl) + RING_TIMEOUT;
        let at = |scheme: Option<&str>, path: &str| {
            let mut url = public.clone();
            if let Some(scheme) = scheme {
                let _ = url.set_scheme(scheme);
            }
            url.set_path(path);
            url.to_string()
        };
        let ws = if public.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        let outbound = Outbound {
            rest,
            account_sid: secrets.twilio_account_sid.clone(),
            allowed: config.outbound.clone(),
            profiles: config.profiles().into_iter().map(|p| p.name).collect(),
            numbers: config
                .agents
                .iter()
                .flat_map(|(name, p)| p.numbers.iter().map(move |n| (n.clone(), name.clone())))
                .collect(),
            tokens: StreamTokens::new(token_key, token_ttl),
            token_ttl,
            stream_url: at(Some(ws), "/media"),
            stream_status_url: at(None, "/stream-status"),
            call_status_url: at(None, "/call-status"),
            fallback_say: Some(config.twilio.fallback_say.clone()).filter(|s| !s.is_empty()),
            pending: pending::Pending::default(),
            metrics,
            admin,
        };
        if outbound.admin.is_some() {
            match outbound.unavailable() {
                Some(why) => tracing::warn!("POST /calls will answer 503: {why}"),
                None if outbound.allowed.allowed_prefixes.is_empty() => tracing::info!(
                    "outbound calls enabled to any E.164 number (outbound.allowed_prefixes is empty)"
                ),
                None => tracing::info!("outbound calls enabled"),
            }
        }
        Ok(outbound)
    }

    /// Whether `POST /calls` is served (an admin token is set).
    pub fn enabled(&self) -> bool {
        self.admin.is_some()
    }

    fn unavailable(&self) -> Option<&'static str> {
        if self.rest.is_none() {
            Some("no Twilio REST credentials (TWILIO_API_KEY_SID + TWILIO_API_KEY_SECRET, or TWILIO_AUTH_TOKEN)")
        } else if self.account_sid.is_none() {
            Some("TWILIO_ACCOUNT_SID is not set")
        } else {
            None
        }
    }

    /// The profile a request names, or the one answering its `from` number.
    fn profile_for<'a>(&'a self, request: &'a CallRequest) -> Result<&'a str, RequestError> {
        match request.profile.as_deref() {
            Some(name) if self.profiles.contains(name) => Ok(name),
            Some(name) => Err(RequestError::UnknownProfile(
                name.chars().take(40).collect(),
            )),
            None => Ok(self
                .numbers
                .iter()
                .find(|(n, _)| *n == request.from)
                .map_or(crate::config::DEFAULT_PROFILE, |(_, p)| p.as_str())),
        }
    }

    /// Places one call (the request already parsed by [`request::parse`]);
    /// returns what was placed. The one place an outbound call is admitted:
    /// work that should start with the call (the server opens its model
    /// session ahead of the answer) starts from the [`Placed`], keyed by
    /// its CallSid.
    pub async fn place_call(
        &self,
        request: CallRequest,
        now_unix: u64,
    ) -> Result<Placed, PlaceError> {
        let (Some(rest), Some(account_sid)) = (&self.rest, &self.account_sid) else {
            return Err(PlaceError::Unavailable(
                self.unavailable()
                    .unwrap_or("outbound calls are not configured"),
            ));
        };
        let profile = self.profile_for(&request)?;
        let context = request::render_context(request.context.as_deref())?;
        let reference =
            new_ref().map_err(|_| PlaceError::Unavailable("the OS random source failed"))?;
        let token = self.tokens.issue(&reference, profile, now_unix);
        let xml = twiml::connect_stream_with(
            &self.stream_url,
            &self.stream_status_url,
            &[
                ("token", &token),
                ("ref", &reference),
                ("profile", profile),
                ("from", &request.from),
                ("to", &request.to),
                // Twilio's own word for a call placed through the API; the
                // call record reports it.
                ("direction", "outbound-api"),
            ],
            self.fallback_say.as_deref(),
        );
        let expires = now_unix.saturating_add(self.token_ttl.as_secs());
        self.pending
            .insert(&reference, context.clone(), expires, now_unix)
            .map_err(|_| PlaceError::Unavailable("too many outbound calls waiting"))?;
        match rest
            .create_call(
                account_sid,
                &request.to,
                &request.from,
                &xml,
                &self.call_status_url,
            )
            .await
        {
            Ok(call_sid) => {
                self.pending.created(&reference, &call_sid);
                tracing::info!(call_sid, profile, "outbound call placed");
                Ok(Placed {
                    call_sid,
                    profile: profile.to_owned(),
                    context,
                    token_ttl: self.token_ttl,
                })
            }
            Err(e) => {
                self.pending.forget(&reference);
                Err(PlaceError::Twilio(e))
            }
        }
    }

    /// A stream's `start` named `reference`: see [`pending::Pending::claim`].
    pub fn claim(&self, reference: &str, call_sid: &str, now_unix: u64) -> Claim {
        self.pending.claim(reference, call_sid, now_unix)
    }

    /// A signed status callback: counted; a call that is over leaves the
    /// pending table.
    pub fn status_callback(&self, params: &[(String, String)]) {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        let outcome = OutboundOutcome::from_call_status(get("CallStatus"));
        self.metrics.outbound_call(outcome);
        let call_sid = get("CallSid");
        if outcome.is_final() && !call_sid.is_empty() {
            self.pending.call_over(call_sid);
        }
        tracing::info!(call_sid, status = outcome.as_str(), "outbound call status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_fresh_and_never_call_sids() {
        let a = new_ref().unwrap();
        let b = new_ref().unwrap();
        assert!(is_ref(&a) && is_ref(&b) && a != b, "{a} {b}");
        for bad in [
            "",
            "OB",
            "CA0123456789abcdef0123456789abcdef",
            "OB0123456789ABCDEF0123456789abcdef",
            "OB0123456789abcdef0123456789abcde",
            "OB0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!is_ref(bad), "{bad}");
        }
    }
}
