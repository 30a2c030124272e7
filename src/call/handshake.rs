//! Admission of a Media Stream: `connected`, then `start` within a deadline,
//! in Twilio's μ-law format, carrying a valid token for its CallSid. Only a
//! stream that passes this costs a model session.
//!
//! An outbound call's TwiML was written before Twilio gave the call a
//! CallSid, so its token is bound to the call's reference instead, which
//! travels beside it as the `ref` parameter (see [`crate::outbound`]). A
//! `ref` that is not a reference we could have made is refused; where the
//! replica knows the reference, the server then checks the CallSid too.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};

use super::WsIn;
use crate::metrics::{Metrics, Reject, Source};
use crate::twilio::messages::{parse_inbound, Inbound, MessageError};
use crate::twilio::token::{StreamTokens, TokenError};

/// What Twilio told us in `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfo {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub custom_parameters: HashMap<String, String>,
    /// The assistant profile the stream token names (`default` without one).
    pub profile: String,
    /// An outbound call's reference (`ref`), which its token is bound to.
    pub outbound_ref: Option<String>,
}

impl StartInfo {
    /// A custom parameter our TwiML set (`from`, `to`), or "".
    pub fn param(&self, name: &str) -> &str {
        self.custom_parameters.get(name).map_or("", String::as_str)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("no start message within {0:?}")]
    Timeout(Duration),
    #[error("the caller closed before start")]
    Closed,
    #[error("{0} arrived before start")]
    NoStart(&'static str),
    #[error("unsupported media format {encoding}/{sample_rate}/{channels}")]
    MediaFormat {
        encoding: String,
        sample_rate: u32,
        channels: u16,
    },
    #[error("stream token missing from start.customParameters")]
    MissingToken,
    #[error("stream token rejected: {0:?}")]
    BadToken(TokenError),
    #[error("the `ref` parameter is not an outbound call reference")]
    BadRef,
}

/// Reads until `start` (skipping `connected` and counting junk), then checks it.
/// `tokens` is None when signature validation is off (local testing).
pub async fn await_start<R>(
    rx: &mut R,
    deadline: Duration,
    tokens: Option<&StreamTokens>,
    metrics: &Metrics,
) -> Result<StartInfo, HandshakeError>
where
    R: Stream<Item = WsIn> + Unpin,
{
    let mut start = tokio::time::timeout(deadline, read_start(rx, metrics))
        .await
        .map_err(|_| HandshakeError::Timeout(deadline))??;
    let outbound_ref = match start.custom_parameters.get("ref") {
        Some(r) if crate::outbound::is_ref(r) => Some(r.clone()),
        Some(_) => return Err(HandshakeError::BadRef),
        None => None,
    };
    // What the token is bound to: the reference of an outbound call, else
    // the CallSid.
    let subject = outbound_ref.as_deref().unwrap_or(&start.call_sid);
    let token = start.custom_parameters.get("token");
    let profile = match (tokens, token) {
        (Some(_), None) => return Err(HandshakeError::MissingToken),
        (Some(tokens), Some(token)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            tokens
                .verify(token, subject, now)
                .map_err(HandshakeError::BadToken)?
                .to_owned()
        }
        // Local testing without signatures: the profile is taken on trust.
        (None, Some(token)) => StreamTokens::unverified_profile(token)
            .unwrap_or_default()
            .to_owned(),
        (None, None) => String::new(),
    };
    start.profile = profile;
    start.outbound_ref = outbound_ref;
    Ok(start)
}

async fn read_start<R>(rx: &mut R, metrics: &Metrics) -> Result<StartInfo, HandshakeError>
where
    R: Stream<Item = WsIn> + Unpin,
{
    loop {
        let frame = match rx.next().await {
            None | Some(WsIn::Close(_)) => return Err(HandshakeError::Closed),
            Some(WsIn::Binary(_)) => {
                metrics.rejected.inc(Source::Twilio, Reject::Binary);
                continue;
            }
            Some(WsIn::Pong) => continue,
            Some(WsIn::Text(t)) => t,
        };
        let text = std::str::from_utf8(&frame).unwrap_or_default();
        match parse_inbound(text) {
            Ok(Inbound::Connected { .. }) => continue,
            Ok(Inbound::Start { start, .. }) => {
                let format = &start.media_format;
                if !format.is_twilio_mulaw() {
                    return Err(HandshakeError::MediaFormat {
                        encoding: format.encoding.to_string(),
                        sample_rate: format.sample_rate,
                        channels: format.channels,
                    });
                }
                return Ok(StartInfo {
                    stream_sid: start.stream_sid.to_string(),
                    call_sid: start.call_sid.to_string(),
                    account_sid: start.account_sid.to_string(),
                    custom_parameters: start.custom_parameters.clone(),
                    profile: String::new(),
                    outbound_ref: None,
                });
            }
            Ok(Inbound::Media { .. }) => return Err(HandshakeError::NoStart("media")),
            Ok(Inbound::Stop { .. }) => return Err(HandshakeError::NoStart("stop")),
            Ok(_) => continue,
            Err(MessageError::UnknownEvent(_)) => {
                metrics.rejected.inc(Source::Twilio, Reject::UnknownEvent);
            }
            Err(_) => metrics.rejected.inc(Source::Twilio, Reject::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    const CALL: &str = "CA0123456789abcdef0123456789abcdef";
    const REF: &str = "OB0123456789abcdef0123456789abcdef";

    fn start(params: serde_json::Value) -> Vec<WsIn> {
        let start = json!({"event":"start","sequenceNumber":"1","streamSid":"MZ1",
            "start":{"accountSid":"AC1","streamSid":"MZ1","callSid":CALL,"tracks":["inbound"],
                "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
                "customParameters":params}});
        vec![WsIn::Text(Bytes::from(start.to_string()))]
    }

    async fn run(
        params: serde_json::Value,
        tokens: Option<&StreamTokens>,
    ) -> Result<StartInfo, HandshakeError> {
        let mut rx = futures_util::stream::iter(start(params));
        await_start(&mut rx, Duration::from_secs(1), tokens, &Metrics::new()).await
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[tokio::test]
    async fn an_outbound_token_is_bound_to_its_reference() {
        let t = StreamTokens::new(b"k", Duration::from_secs(120));
        let token = t.issue(REF, "sales", now());
        let info = run(json!({"token": token, "ref": REF}), Some(&t))
            .await
            .unwrap();
        assert_eq!(info.profile, "sales");
        assert_eq!(info.outbound_ref.as_deref(), Some(REF));
        // Without its reference it is checked against the CallSid, and fails.
        assert_eq!(
            run(json!({"token": token}), Some(&t)).await,
            Err(HandshakeError::BadToken(TokenError::BadSignature))
        );
        // Another reference does not verify.
        let other = "OBffffffffffffffffffffffffffffffff";
        assert_eq!(
            run(json!({"token": token, "ref": other}), Some(&t)).await,
            Err(HandshakeError::BadToken(TokenError::BadSignature))
        );
    }

    #[tokio::test]
    async fn a_ref_that_is_not_a_reference_is_refused() {
        let t = StreamTokens::new(b"k", Duration::from_secs(60));
        // An inbound token with its CallSid passed off as a reference.
        let token = t.issue(CALL, "default", now());
        for bad in [CALL, "", "OB1", "ob0123456789abcdef0123456789abcdef"] {
            assert_eq!(
                run(json!({"token": token, "ref": bad}), Some(&t)).await,
                Err(HandshakeError::BadRef),
                "{bad}"
            );
            // Even with signature checks off.
            assert_eq!(
                run(json!({"token": token, "ref": bad}), None).await,
                Err(HandshakeError::BadRef)
            );
        }
        // Inbound is unchanged.
        let info = run(json!({"token": token}), Some(&t)).await.unwrap();
        assert_eq!(
            (info.profile.as_str(), info.outbound_ref),
            ("default", None)
        );
    }
}
