//! Per-call stream tokens: tie a Media Stream to the call that asked for it.
//!
//! The `/voice` answer carries `<Parameter name="token" value="…"/>`, which
//! Twilio hands back in the stream's `start.customParameters`. Checking it
//! proves that the stream was started by TwiML we issued, for this `CallSid`,
//! recently. The upgrade signature alone cannot do that: it covers only the
//! fixed `wss://…/media` URL, so a signed upgrade could carry any call.
//!
//! The token also carries the assistant profile chosen at the webhook (by the
//! called number), so whichever replica accepts the stream uses the same
//! profile. (The caller's and the called number travel beside it as plain
//! `<Parameter>`s: altering them would take a validly signed upgrade, that
//! is, the auth token, which could mint tokens anyway.)
//!
//! An outbound call's TwiML is written before the call has a CallSid: its
//! token is issued for the call's reference instead (`OB…`, see
//! [`crate::outbound`]), which travels beside it as the `ref` parameter.
//!
//! The token is stateless (an HMAC) so that the `/voice` request and the
//! stream may land on different replicas behind a load balancer with nothing
//! shared but the key.
//!
//! Format: `v2.<expiry unix secs>.<profile>.<base64url(HMAC-SHA1(key, m))>`
//! where `m` is `v2` followed by the call SID, the profile and the expiry,
//! each as `|<byte length>:<bytes>` (so no field can bleed into another). URL-safe base64 without padding: the token needs no
//! escaping in XML, URLs or logs. SHA-1 is fine in HMAC and keeps us on the
//! crates we already need for Twilio's signatures.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::signature::hmac_sha1;

/// The version prefix; a new format gets a new one and old tokens fail as
/// [`TokenError::Malformed`] rather than as forgeries.
const VERSION: &str = "v2";

/// Longest token [`StreamTokens::verify`] looks at: `v2.` + 20 digits + `.` +
/// a 32-byte profile + `.` + 27 characters is 84; anything longer is not
/// ours and is not hashed.
const MAX_TOKEN_LEN: usize = 96;
/// Longest profile name a token carries.
pub const MAX_PROFILE_LEN: usize = 32;

/// Why a token was refused. The bridge closes the stream with 1008 in every
/// case but counts the reasons apart: `Expired` points at a slow or replayed
/// call setup, `BadSignature` at a forgery or a key mismatch between replicas.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TokenError {
    /// Not a `v2.<digits>.<profile>.<base64url>` token at all (includes empty).
    #[error("malformed stream token")]
    Malformed,
    /// Authentic, but its expiry has passed.
    #[error("stream token expired")]
    Expired,
    /// Well formed, but the MAC does not match this call SID, the profile
    /// and the expiry.
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

/// A profile name fit for a token: 1–32 letters, digits, `_` or `-`.
fn is_profile(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROFILE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

    /// The token for `call_sid` answered by `profile`, valid until
    /// `now_unix_secs + ttl` inclusive. Time is passed in so that callers and
    /// tests control the clock. A profile name unfit for a token (config
    /// validation prevents it) gives a token that never verifies.
    pub fn issue(&self, call_sid: &str, profile: &str, now_unix_secs: u64) -> String {
        let expiry = now_unix_secs.saturating_add(self.ttl.as_secs()).to_string();
        let tag = self.mac(call_sid, profile, &expiry).finalize().into_bytes();
        let mut token = String::with_capacity(VERSION.len() + expiry.len() + profile.len() + 30);
        token.push_str(VERSION);
        token.push('.');
        token.push_str(&expiry);
        token.push('.');
        token.push_str(profile);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// Checks `token` (from the network) against the call SID of the same
    /// `start` message, and returns the profile it carries.
    ///
    /// The MAC is checked, in constant time, before the expiry, so that an
    /// expiry is only believed once it is known to be ours. The expiry must be
    /// canonical decimal digits and is authenticated exactly as received, so
    /// no two spellings of one token are accepted.
    pub fn verify<'t>(
        &self,
        token: &'t str,
        call_sid: &str,
        now_unix_secs: u64,
    ) -> Result<&'t str, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(VERSION), Some(expiry), Some(profile), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let canonical = !expiry.is_empty()
            && expiry.bytes().all(|b| b.is_ascii_digit())
            && (expiry == "0" || !expiry.starts_with('0'));
        let Some(expiry_secs) = expiry.parse::<u64>().ok().filter(|_| canonical) else {
            return Err(TokenError::Malformed);
        };
        if !is_profile(profile) {
            return Err(TokenError::Malformed);
        }
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return Err(TokenError::Malformed);
        };
        if self
            .mac(call_sid, profile, expiry)
            .verify_slice(&tag)
            .is_err()
        {
            return Err(TokenError::BadSignature);
        }
        if now_unix_secs > expiry_secs {
            return Err(TokenError::Expired);
        }
        Ok(profile)
    }

    /// The profile a token names, read without checking it: only for local
    /// testing with signature checks off, where nothing is authenticated.
    pub fn unverified_profile(token: &str) -> Option<&str> {
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(VERSION), Some(_), Some(profile)) if is_profile(profile) => Some(profile),
            _ => None,
        }
    }

    /// HMAC over the version and every bound field, length-prefixed.
    fn mac(&self, call_sid: &str, profile: &str, expiry: &str) -> Hmac<Sha1> {
        let mut mac = hmac_sha1(&self.key);
        mac.update(VERSION.as_bytes());
        for field in [call_sid, profile, expiry] {
            mac.update(format!("|{}:", field.len()).as_bytes());
            mac.update(field.as_bytes());
        }
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
    fn round_trip_carries_the_profile() {
        let t = tokens();
        let token = t.issue(CALL, "sales", NOW);
        assert!(token.starts_with("v2.1750000060.sales."), "{token}");
        assert!(token.len() <= MAX_TOKEN_LEN);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{token}"
        );
        assert_eq!(t.verify(&token, CALL, NOW), Ok("sales"));
        assert_eq!(t.verify(&token, CALL, NOW + 60), Ok("sales"));
        // Another replica with the same key agrees.
        let other = StreamTokens::new(b"replica-shared-secret", Duration::from_secs(5));
        assert_eq!(other.verify(&token, CALL, NOW + 1), Ok("sales"));
        // The longest profile still fits.
        let long = "p".repeat(MAX_PROFILE_LEN);
        let token = t.issue(CALL, &long, u64::MAX - 100);
        assert_eq!(t.verify(&token, CALL, 0), Ok(long.as_str()));
    }

    #[test]
    fn known_value() {
        // Pins the format.
        let t = StreamTokens::new(b"k", Duration::from_secs(100));
        let mut mac = hmac_sha1(b"k");
        mac.update(b"v2|3:CA1|7:default|3:100");
        let want = format!(
            "v2.100.default.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(t.issue("CA1", "default", 0), want);
    }

    #[test]
    fn every_bound_field_counts() {
        let t = tokens();
        let token = t.issue(CALL, "default", NOW);
        for other in ["CA0123456789abcdef0123456789abcdee", ""] {
            assert_eq!(
                t.verify(&token, other, NOW),
                Err(TokenError::BadSignature),
                "{other:?}"
            );
        }
        // A tampered profile is a forgery, not another assistant.
        let forged = token.replacen(".default.", ".sales.", 1);
        assert_eq!(t.verify(&forged, CALL, NOW), Err(TokenError::BadSignature));
        let other = StreamTokens::new(b"another-secret", Duration::from_secs(60));
        assert_eq!(
            other.verify(&token, CALL, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expired() {
        let t = tokens();
        let token = t.issue(CALL, "default", NOW);
        assert_eq!(t.verify(&token, CALL, NOW + 61), Err(TokenError::Expired));
        assert_eq!(t.verify(&token, CALL, u64::MAX), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_expiry_or_tag() {
        let t = tokens();
        let token = t.issue(CALL, "default", NOW);
        let tag = token.rsplit('.').next().unwrap();
        for expiry in [
            "1750000061",
            "9999999999",
            "01750000060",
            "+1750000060",
            "1750000060 ",
            "",
        ] {
            let forged = format!("v2.{expiry}.default.{tag}");
            assert!(t.verify(&forged, CALL, NOW).is_err(), "{forged}");
        }
        assert_eq!(
            t.verify(&format!("v2.9999999999.default.{tag}"), CALL, NOW),
            Err(TokenError::BadSignature)
        );
        let (head, tag) = token.rsplit_once('.').unwrap();
        let mut flipped = tag.as_bytes().to_vec();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            t.verify(&format!("{head}.{flipped}"), CALL, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            t.verify(&format!("{head}."), CALL, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let t = tokens();
        let token = t.issue(CALL, "default", NOW);
        let long = "v2.1.default.".to_string() + &"A".repeat(100);
        let long_profile = format!("v2.1.{}.AAAA", "p".repeat(MAX_PROFILE_LEN + 1));
        for bad in [
            "",
            ".",
            "...",
            "v2",
            "v2.",
            "v2...",
            "v1.1750000060.AAAA",
            "V2.1750000060.default.AAAA",
            "v2.-1.default.AAAA",
            "v2.abc.default.AAAA",
            "v2.18446744073709551616.default.AAAA",
            "v2.1750000060.default.not base64!",
            "v2.1750000060.default.AAAA.extra",
            "v2.1750000060..AAAA",
            "v2.1750000060.de fault.AAAA",
            "v2.1750000060.default.AAAA=",
            "garbage",
            "😀.😀.😀.😀",
            long.as_str(),
            long_profile.as_str(),
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
    fn unverified_profile_is_read_only_from_our_format() {
        let token = tokens().issue(CALL, "sales", NOW);
        assert_eq!(StreamTokens::unverified_profile(&token), Some("sales"));
        for bad in [
            "",
            "v1.1.sales.AAAA",
            "v2.1",
            "v2.1.de fault.AAAA",
            "garbage",
        ] {
            assert_eq!(StreamTokens::unverified_profile(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ttl_saturates_and_debug_hides_key() {
        let t = StreamTokens::new(b"super-secret-key", Duration::MAX);
        let token = t.issue(CALL, "default", NOW);
        assert!(token.starts_with(&format!("v2.{}.", u64::MAX)));
        assert_eq!(t.verify(&token, CALL, u64::MAX), Ok("default"));
        let debug = format!("{t:?}");
        assert!(!debug.contains("super-secret"), "{debug}");
    }
}
