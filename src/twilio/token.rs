//! Per-call stream tokens: tie a Media Stream to the call that asked for it.
//!
//! The `/voice` answer carries `<Parameter name="token" value="…"/>`, which
//! Twilio hands back in the stream's `start.customParameters`. Checking it
//! proves that the stream was started by TwiML we issued, for this `CallSid`,
//! recently. The upgrade signature alone cannot do that: it covers only the
//! fixed `wss://…/media` URL, so a signed upgrade could carry any call.
//!
//! The token is stateless (an HMAC over the call SID and an expiry) so that
//! the `/voice` request and the stream may land on different replicas behind a
//! load balancer with nothing shared but the key.
//!
//! Format: `v1.<expiry unix secs>.<base64url(HMAC-SHA1(key, "v1|" + call_sid + "|" + expiry))>`,
//! URL-safe base64 without padding, so the token needs no escaping in XML,
//! URLs or logs. SHA-1 is fine in HMAC and keeps us on the crates we already
//! need for Twilio's signatures.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::signature::hmac_sha1;

/// The version prefix; a new format gets a new one and old tokens fail as
/// [`TokenError::Malformed`] rather than as forgeries.
const VERSION: &str = "v1";

/// Longest token [`StreamTokens::verify`] looks at: `v1.` + 20 digits + `.` +
/// 27 characters is 51; anything much longer is not ours and is not hashed.
const MAX_TOKEN_LEN: usize = 64;

/// Why a token was refused. The bridge closes the stream with 1008 in every
/// case but counts the reasons apart: `Expired` points at a slow or replayed
/// call setup, `BadSignature` at a forgery or a key mismatch between replicas.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TokenError {
    /// Not a `v1.<digits>.<base64url>` token at all (includes empty).
    #[error("malformed stream token")]
    Malformed,
    /// Authentic, but its expiry has passed.
    #[error("stream token expired")]
    Expired,
    /// Well formed, but the MAC does not match this call SID and expiry.
    #[error("stream token signature mismatch")]
    BadSignature,
}

/// Issues and checks stream tokens with one secret key.
///
/// `Debug` does not print the key.
#[derive(Clone)]
pub struct StreamTokens {
    key: Vec<u8>,
    ttl: Duration,
}

impl fmt::Debug for StreamTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTokens")
            .field("key", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl StreamTokens {
    /// `key` must be secret and the same on every replica; `ttl` bounds the
    /// time from answering `/voice` to the stream's `start` (Twilio takes well
    /// under a second; allow for slow networks, e.g. 60 s). Whole seconds
    /// count; sub-second parts of `ttl` are dropped.
    pub fn new(key: &[u8], ttl: Duration) -> Self {
        Self {
            key: key.to_vec(),
            ttl,
        }
    }

    /// The token for `call_sid`, valid until `now_unix_secs + ttl` inclusive.
    /// Time is passed in so that callers and tests control the clock.
    pub fn issue(&self, call_sid: &str, now_unix_secs: u64) -> String {
        let expiry = now_unix_secs.saturating_add(self.ttl.as_secs()).to_string();
        let tag = self.mac(call_sid, &expiry).finalize().into_bytes();
        let mut token = String::with_capacity(VERSION.len() + expiry.len() + 29);
        token.push_str(VERSION);
        token.push('.');
        token.push_str(&expiry);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// Checks `token` (from the network) against the `call_sid` of the same
    /// `start` message.
    ///
    /// The MAC is checked, in constant time, before the expiry, so that an
    /// expiry is only believed once it is known to be ours. The expiry must be
    /// canonical decimal digits and is authenticated exactly as received, so
    /// no two spellings of one token are accepted.
    pub fn verify(
        &self,
        token: &str,
        call_sid: &str,
        now_unix_secs: u64,
    ) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(VERSION), Some(expiry), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let canonical = !expiry.is_empty()
            && expiry.bytes().all(|b| b.is_ascii_digit())
            && (expiry == "0" || !expiry.starts_with('0'));
        let Some(expiry_secs) = expiry.parse::<u64>().ok().filter(|_| canonical) else {
            return Err(TokenError::Malformed);
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return Err(TokenError::Malformed);
        };
        if self.mac(call_sid, expiry).verify_slice(&tag).is_err() {
            return Err(TokenError::BadSignature);
        }
        if now_unix_secs > expiry_secs {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// HMAC over `v1|call_sid|expiry`. The expiry is digits only and last,
    /// so a `|` inside a call SID cannot make two inputs collide.
    fn mac(&self, call_sid: &str, expiry: &str) -> Hmac<Sha1> {
        let mut mac = hmac_sha1(&self.key);
        mac.update(VERSION.as_bytes());
        mac.update(b"|");
        mac.update(call_sid.as_bytes());
        mac.update(b"|");
        mac.update(expiry.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: &str = "CA0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_750_000_000;

    fn tokens() -> StreamTokens {
        StreamTokens::new(b"replica-shared-secret", Duration::from_secs(60))
    }

    #[test]
    fn round_trip() {
        let t = tokens();
        let token = t.issue(CALL, NOW);
        assert_eq!(token.len(), 3 + 10 + 1 + 27);
        assert!(token.starts_with("v1.1750000060."), "{token}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{token}"
        );
        assert_eq!(t.verify(&token, CALL, NOW), Ok(()));
        assert_eq!(t.verify(&token, CALL, NOW + 60), Ok(()));
        // Another replica with the same key agrees.
        let other = StreamTokens::new(b"replica-shared-secret", Duration::from_secs(5));
        assert_eq!(other.verify(&token, CALL, NOW + 1), Ok(()));
    }

    #[test]
    fn known_value() {
        // Pins the format: HMAC-SHA1("k", "v1|CA1|100"), base64url without padding.
        let t = StreamTokens::new(b"k", Duration::from_secs(100));
        let mut mac = hmac_sha1(b"k");
        mac.update(b"v1|CA1|100");
        let want = format!(
            "v1.100.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(t.issue("CA1", 0), want);
    }

    #[test]
    fn wrong_call_sid_or_key() {
        let token = tokens().issue(CALL, NOW);
        assert_eq!(
            tokens().verify(&token, "CA0123456789abcdef0123456789abcdee", NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            tokens().verify(&token, "", NOW),
            Err(TokenError::BadSignature)
        );
        let other = StreamTokens::new(b"another-secret", Duration::from_secs(60));
        assert_eq!(
            other.verify(&token, CALL, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expired() {
        let t = tokens();
        let token = t.issue(CALL, NOW);
        assert_eq!(t.verify(&token, CALL, NOW + 61), Err(TokenError::Expired));
        assert_eq!(t.verify(&token, CALL, u64::MAX), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_expiry() {
        let t = tokens();
        let token = t.issue(CALL, NOW);
        let tag = token.rsplit('.').next().unwrap();
        for expiry in [
            "1750000061",
            "9999999999",
            "01750000060",
            "+1750000060",
            "1750000060 ",
            "",
        ] {
            let forged = format!("v1.{expiry}.{tag}");
            assert!(t.verify(&forged, CALL, NOW).is_err(), "{forged}");
        }
        assert_eq!(
            t.verify(&format!("v1.9999999999.{tag}"), CALL, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            t.verify(&format!("v1.01750000060.{tag}"), CALL, NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn tampered_tag() {
        let t = tokens();
        let token = t.issue(CALL, NOW);
        let (head, tag) = token.rsplit_once('.').unwrap();
        let mut flipped = tag.as_bytes().to_vec();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            t.verify(&format!("{head}.{flipped}"), CALL, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            t.verify(&format!("{head}.{}", &tag[..20]), CALL, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            t.verify(&format!("{head}."), CALL, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage() {
        let t = tokens();
        let token = t.issue(CALL, NOW);
        let long = "v1.1.".to_string() + &"A".repeat(100);
        for bad in [
            "",
            ".",
            "..",
            "v1",
            "v1.",
            "v1..",
            "v2.1750000060.AAAA",
            "V1.1750000060.AAAA",
            "v1.-1.AAAA",
            "v1.abc.AAAA",
            "v1.18446744073709551616.AAAA",
            "v1.1750000060.not base64!",
            "v1.1750000060.AAAA.extra",
            "v1.1750000060.AAAA=",
            "garbage",
            "😀.😀.😀",
            long.as_str(),
        ] {
            assert_eq!(
                t.verify(bad, CALL, NOW),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            t.verify(&format!("{token}="), CALL, NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            t.verify(&format!(" {token}"), CALL, NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn ttl_saturates_and_debug_hides_key() {
        let t = StreamTokens::new(b"super-secret-key", Duration::MAX);
        let token = t.issue(CALL, NOW);
        assert!(token.starts_with(&format!("v1.{}.", u64::MAX)));
        assert_eq!(t.verify(&token, CALL, u64::MAX), Ok(()));
        let debug = format!("{t:?}");
        assert!(!debug.contains("super-secret"), "{debug}");
    }
}
