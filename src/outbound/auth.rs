//! The admin port's bearer token (`CALLBRIDGE_ADMIN_TOKEN`), checked in
//! constant time.
//!
//! Both the expected and the presented token are run through HMAC-SHA1
//! under a per-process random key and the tags compared with
//! `verify_slice` (constant time): the time taken depends neither on where
//! the two first differ nor on the presented token's length.

use std::fmt;

use axum::http::{header, HeaderMap};
use hmac::Mac as _;

use crate::config::Secret;
use crate::twilio::signature::hmac_sha1;

pub struct AdminToken {
    key: [u8; 32],
    tag: Vec<u8>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    pub fn new(token: &Secret) -> Result<AdminToken, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        let mut mac = hmac_sha1(&key);
        mac.update(token.expose().as_bytes());
        Ok(AdminToken {
            key,
            tag: mac.finalize().into_bytes().to_vec(),
        })
    }

    /// True when `Authorization: Bearer <token>` carries the token.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let mut mac = hmac_sha1(&self.key);
        mac.update(presented.as_bytes());
        // An empty token is never set (secrets refuse it), so "" never passes.
        mac.verify_slice(&self.tag).is_ok() && !presented.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = AdminToken::new(&Secret::new("tok-123")).unwrap();
        assert!(t.check(&headers(Some("Bearer tok-123"))));
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Bearer tok-12"),
            Some("Bearer tok-1234"),
            Some("bearer tok-123"),
            Some("Basic dG9rLTEyMw=="),
            Some("tok-123"),
        ] {
            assert!(!t.check(&headers(bad)), "{bad:?}");
        }
        assert!(!format!("{t:?}").contains("tok"));
    }
}
