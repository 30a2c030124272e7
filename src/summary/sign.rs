//! The signature of a call record: `X-Callbridge-Signature`.
//!
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. The
//! timestamp is inside the MAC so that a receiver can refuse old records
//! (replays); each delivery attempt is signed anew, so a retried record
//! carries a fresh timestamp. `v1` names the scheme: a future one can be
//! sent beside it, and receivers ignore the parts they do not know.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "X-Callbridge-Signature";

type HmacSha256 = Hmac<Sha256>;

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// HMAC-SHA256 of `"<timestamp>.<body>"`. `new_from_slice` returns a
/// `Result` only because the trait is shared with fixed-key-size MACs: HMAC
/// accepts keys of any length, so this never fails, whatever the secret.
fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body`, signed at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = format!("t={timestamp},v1=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks a header value against `body`: the `t` must be within
/// `tolerance_secs` of `now` and one `v1` must match (constant-time).
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", hex)) => tags.push(decode_hex(hex).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, timestamp, body);
    if tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"call_sid":"CA1"}"#;

    #[test]
    fn matches_a_vector_computed_with_pythons_hmac() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test",
        //   b"1750000000.{\"call_sid\":\"CA1\"}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"whsec_test", 1_750_000_000, BODY),
            "t=1750000000,v1=74f863c8bfb4e78ea57704231d2926ff12cae9bcc7ce0cfa0af11b01bda35055"
        );
    }

    #[test]
    fn verify_accepts_its_own_and_refuses_the_rest() {
        let h = signature(b"k", 1000, BODY);
        assert_eq!(verify(b"k", &h, BODY, 1100, 300), Ok(()));
        // Unknown parts and a second scheme are ignored.
        assert_eq!(
            verify(b"k", &format!("{h},v0=zz,x=1"), BODY, 1000, 300),
            Ok(())
        );
        assert_eq!(
            verify(b"other", &h, BODY, 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", &h, b"{}", 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", &h, BODY, 1301, 300),
            Err(SignatureError::Stale)
        );
        for bad in [
            "",
            "t=1000",
            "v1=00",
            "t=x,v1=00",
            "t=1000,v1=0",
            "t=1000,v1=zz",
        ] {
            assert_eq!(
                verify(b"k", bad, BODY, 1000, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }
}
