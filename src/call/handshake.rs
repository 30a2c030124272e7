//! Admission of a Media Stream: `connected`, then `start` within a deadline,
//! in Twilio's μ-law format, carrying a valid token for its CallSid. Only a
//! stream that passes this costs a model session.

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
    let token = start.custom_parameters.get("token");
    let profile = match (tokens, token) {
        (Some(_), None) => return Err(HandshakeError::MissingToken),
        (Some(tokens), Some(token)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            tokens
                .verify(token, &start.call_sid, now)
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
