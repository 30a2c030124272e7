//! `X-Twilio-Signature`: computing and checking Twilio's request signatures.
//!
//! Twilio signs every request it makes to us with the account's auth token:
//! `base64(HMAC-SHA1(auth_token, url + name1 + value1 + name2 + value2 …))`,
//! where the form parameters are sorted (PROTOCOLS.md §1.2). The WebSocket
//! upgrade is a GET, so there it is the URL alone.
//!
//! This module mirrors the official SDK's `RequestValidator`
//! (twilio-python `twilio/request_validator.py`) rather than the prose docs,
//! because the SDK is what Twilio's own examples are tested against. Its
//! details that matter here:
//!
//! - Parameters are ordered by name, then by value; a name that occurs several
//!   times contributes each *distinct* value once (`sorted(set(values))`), so
//!   an exact duplicate pair is signed once.
//! - Sorting is by Unicode code point. Rust's byte-wise `str` order on UTF-8 is
//!   the same order, so no special collation is needed.
//! - Validation tries the URL both with and without a port, because Twilio's
//!   back end is inconsistent about signing the default port. The SDK removes
//!   *any* port, and adds `:443` for `https` but `:80` for every other scheme,
//!   `wss` included; we add `:443` for `wss`, since `wss://host:80` is never
//!   what Twilio signed.
//! - Names and values are concatenated with no separator, so the signature
//!   does not bind where a name ends and its value begins (`Digits=1234` and
//!   `Digit=s1234` sign alike). Handlers must only read the names they expect.
//! - Signatures of JSON bodies (`bodySHA256` in the query) also hash the body
//!   with SHA-256. Twilio's voice webhooks are form-encoded, so that body check
//!   is not implemented here; the URL part of such a signature still computes
//!   with [`compute`] and no parameters.
//!
//! The fixture `fixtures/twilio-signatures.json` is produced by the official
//! SDK (`conformance/twilio_signatures.py`) and a unit test below holds this
//! code to it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// HMAC-SHA1 keyed with `key`, shared with the stream tokens.
///
/// `new_from_slice` returns a `Result` only because the trait is shared with
/// fixed-key-size MACs: HMAC itself accepts keys of any length (RFC 2104 hashes
/// long keys and zero-pads short ones), so this never fails, whatever the key.
pub(crate) fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// The signature Twilio sends for a request to `url` with form `params`.
///
/// Used by the simulated caller to sign its requests, and by [`validate`].
/// `url` must be exactly the URL Twilio requested (scheme, host, optional
/// port, path, query); for the WebSocket upgrade pass no parameters.
pub fn compute(
    auth_token: &str,
    url: &str,
    params: &[(impl AsRef<str>, impl AsRef<str>)],
) -> String {
    let sorted = sorted_params(params);
    STANDARD.encode(
        signing_mac(auth_token, url, &sorted)
            .finalize()
            .into_bytes(),
    )
}

/// Whether `signature` (the `X-Twilio-Signature` header) is valid for a
/// request to `url` with form `params` under any of `auth_tokens`.
///
/// - Several tokens are accepted so that an auth-token rotation (Twilio lets
///   the old secondary token live on for a while) does not reject calls.
///   Empty tokens are skipped: an empty HMAC key is public knowledge, and an
///   unset secret must not turn into "anyone may sign".
/// - `url` must be rebuilt from the configured public base URL, never from the
///   `Host` header (proxies change it). It is tried as given and with the port
///   toggled (any port removed, or the default port added), like the official SDK.
/// - The comparison is constant time (`verify_slice`); an undecodable
///   signature is simply invalid. Which token or URL form matched may leak
///   through timing, which tells an attacker nothing about the tokens.
#[must_use]
pub fn validate(
    auth_tokens: &[&str],
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let Ok(expected) = STANDARD.decode(signature) else {
        return false;
    };
    let sorted = sorted_params(params);
    let other_url = port_variant(url);
    let urls = std::iter::once(url).chain(other_url.as_deref());
    for candidate in urls {
        for token in auth_tokens.iter().filter(|t| !t.is_empty()) {
            if signing_mac(token, candidate, &sorted)
                .verify_slice(&expected)
                .is_ok()
            {
                return true;
            }
        }
    }
    false
}

/// The parameters in the order the SDK signs them: by name, then by value,
/// exact duplicates once (the SDK's `sorted(set(values))` per name).
fn sorted_params(params: &[(impl AsRef<str>, impl AsRef<str>)]) -> Vec<(&str, &str)> {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_ref(), v.as_ref()))
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// The MAC over `url` followed by every name and value, fed piecewise so the
/// signed string is never built.
fn signing_mac(auth_token: &str, url: &str, sorted: &[(&str, &str)]) -> Hmac<Sha1> {
    let mut mac = hmac_sha1(auth_token.as_bytes());
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The other form of `url` that a valid signature may have been computed on:
/// without its port if it has one, else with the scheme's default port.
///
/// Twilio signs `https://host/voice` or `https://host:443/voice` depending on
/// the product and the phase of the moon; the SDK therefore accepts both. Like
/// the SDK, any explicit port is removed (not only the default one). Unlike the
/// SDK, which adds `:80` to every scheme but `https`, `wss` gets `:443` (and
/// `ws` `:80`): the SDK's `wss://host:80` can never be what Twilio signed,
/// while `wss://host:443` can. Unknown schemes, a missing `://` and
/// non-numeric ports give `None`: only the URL as given is tried.
///
/// Works on the string rather than through `url::Url`, which would normalise
/// (drop default ports, re-encode the path) and so change what is signed.
fn port_variant(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_start = scheme.len() + 3;
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    // Skip any `user:password@`; a `:` inside `[…]` belongs to an IPv6 address.
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_port = &authority[host_start..];
    let colon = host_port
        .rfind(':')
        .filter(|&i| !host_port[i..].contains(']'));
    let host_end = authority_start + host_start + colon.unwrap_or(host_port.len());
    let after_authority = &url[authority_start + authority_len..];
    match colon {
        Some(i) => {
            let port = &host_port[i + 1..];
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some([&url[..host_end], after_authority].concat())
        }
        None => {
            let default_port =
                if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
                    ":443"
                } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
                    ":80"
                } else {
                    return None;
                };
            Some([&url[..host_end], default_port, after_authority].concat())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const TOKEN: &str = "12345";

    fn form() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    /// PROTOCOLS.md §1.2, from twilio-python's own tests.
    const FORM_VECTORS: [(&str, &str); 4] = [
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        ),
        (
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            "kvajT1Ptam85bY51eRf/AJRuM3w=",
        ),
        (
            "http://mycompany.com:80/myapp.php?foo=1&bar=2",
            "0ZXoZLH/DfblKGATFgpif+LLRf4=",
        ),
        (
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
        ),
    ];

    #[test]
    fn form_vectors_compute_and_validate() {
        let params = form();
        for (url, sig) in FORM_VECTORS {
            assert_eq!(compute(TOKEN, url, &params), sig, "{url}");
            assert!(validate(&[TOKEN], url, &params, sig), "{url}");
        }
    }

    #[test]
    fn params_order_given_does_not_matter() {
        let mut params = form();
        params.reverse();
        let (url, sig) = FORM_VECTORS[0];
        assert_eq!(compute(TOKEN, url, &params), sig);
        assert!(validate(&[TOKEN], url, &params, sig));
        // &str pairs work too (the simulated caller signs with those).
        let borrowed: Vec<(&str, &str)> = params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(compute(TOKEN, url, &borrowed), sig);
    }

    /// The URL part of a JSON-body signature is an ordinary URL signature.
    #[test]
    fn json_body_url_signature() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2\
                   &bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let none: [(&str, &str); 0] = [];
        assert_eq!(compute(TOKEN, url, &none), "a9nBmqA0ju/hNViExpshrM61xv4=");
    }

    #[test]
    fn rejects_wrong_token_and_changed_params() {
        let (url, sig) = FORM_VECTORS[0];
        let params = form();
        assert!(!validate(&["12346"], url, &params, sig));
        assert!(!validate(&[], url, &params, sig));

        let mut tampered = params.clone();
        tampered[3].1 = "+14158675310".into();
        assert!(!validate(&[TOKEN], url, &tampered, sig));

        let mut missing = params.clone();
        missing.remove(2);
        assert!(!validate(&[TOKEN], url, &missing, sig));

        let mut extra = params.clone();
        extra.push(("CallStatus".into(), "ringing".into()));
        assert!(!validate(&[TOKEN], url, &extra, sig));

        assert!(!validate(
            &[TOKEN],
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            sig
        ));
        assert!(!validate(
            &[TOKEN],
            "https://evil.example/myapp.php?foo=1&bar=2",
            &params,
            sig
        ));
    }

    /// A property of Twilio's scheme, pinned so nobody relies on the opposite:
    /// names and values are concatenated without separators, so moving
    /// characters across a name/value boundary keeps the signature whenever the
    /// sort order is unchanged. The signature authenticates the string, not
    /// the split; handlers must read only the parameter names they expect.
    #[test]
    fn name_value_boundary_is_not_signed() {
        let (url, sig) = FORM_VECTORS[0];
        let mut shifted = form();
        shifted[2] = ("Digit".into(), "s1234".into());
        assert!(validate(&[TOKEN], url, &shifted, sig));
    }

    #[test]
    fn rejects_garbage_signatures() {
        let (url, sig) = FORM_VECTORS[0];
        let params = form();
        for bad in [
            "",
            "not base64!",
            "RSOYDt4T1cUTdK1PDd93/VVr8B8",   // unpadded
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=x", // trailing junk
            "RSOYDt4T1cUTdK1PDd93/VVr8B9=",  // non-canonical last char
            "RSOYDt4T1cUTdK1PDd93/VVr",      // truncated MAC
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            " RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        ] {
            assert!(!validate(&[TOKEN], url, &params, bad), "{bad:?}");
        }
        assert!(validate(&[TOKEN], url, &params, sig));
    }

    #[test]
    fn accepts_either_port_form() {
        let params = form();
        // Signed without port, checked against a URL configured with :443 and vice versa.
        let (_, no_port_sig) = FORM_VECTORS[0];
        let (_, port_sig) = FORM_VECTORS[1];
        assert!(validate(
            &[TOKEN],
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &params,
            no_port_sig
        ));
        assert!(validate(
            &[TOKEN],
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
            port_sig
        ));
        // http: the default port is 80 …
        let (_, http80_sig) = FORM_VECTORS[2];
        assert!(validate(
            &[TOKEN],
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
            http80_sig
        ));
        // … and an https URL never matches a signature made with :80.
        assert!(!validate(
            &[TOKEN],
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
            http80_sig
        ));
        // A non-default port is removed like the SDK does, but never invented.
        let (_, p1234_sig) = FORM_VECTORS[3];
        assert!(validate(
            &[TOKEN],
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            &params,
            p1234_sig
        ));
        assert!(!validate(
            &[TOKEN],
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
            p1234_sig
        ));
    }

    #[test]
    fn websocket_upgrade_ports() {
        let none: [(String, String); 0] = [];
        let plain = compute(TOKEN, "wss://bridge.example.com/media", &none);
        let with_port = compute(TOKEN, "wss://bridge.example.com:443/media", &none);
        assert_ne!(plain, with_port);
        for url in [
            "wss://bridge.example.com/media",
            "wss://bridge.example.com:443/media",
        ] {
            assert!(validate(&[TOKEN], url, &none, &plain), "{url}");
            assert!(validate(&[TOKEN], url, &none, &with_port), "{url}");
        }
        let http80 = compute(TOKEN, "wss://bridge.example.com:80/media", &none);
        assert!(!validate(
            &[TOKEN],
            "wss://bridge.example.com/media",
            &none,
            &http80
        ));
    }

    #[test]
    fn port_variants() {
        let cases = [
            ("https://h/voice", Some("https://h:443/voice")),
            ("https://h:443/voice", Some("https://h/voice")),
            ("HTTPS://h/voice", Some("HTTPS://h:443/voice")),
            ("http://h/voice?x=1", Some("http://h:80/voice?x=1")),
            ("http://h:8080/voice", Some("http://h/voice")),
            ("wss://h/media", Some("wss://h:443/media")),
            ("ws://h/media", Some("ws://h:80/media")),
            ("https://h", Some("https://h:443")),
            ("https://h?a=b:c", Some("https://h:443?a=b:c")),
            ("https://h#f", Some("https://h:443#f")),
            ("https://u:p@h/x", Some("https://u:p@h:443/x")),
            ("https://u:p@h:8443/x", Some("https://u:p@h/x")),
            ("https://[::1]/x", Some("https://[::1]:443/x")),
            ("https://[::1]:8443/x", Some("https://[::1]/x")),
            ("https://h/a:b", Some("https://h:443/a:b")),
            ("https://h:/x", None),
            ("https://h:abc/x", None),
            ("ftp://h/x", None),
            ("h/x", None),
            ("", None),
        ];
        for (url, want) in cases {
            assert_eq!(port_variant(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn token_rotation() {
        let (url, sig) = FORM_VECTORS[0];
        let params = form();
        assert!(validate(&["new-token", TOKEN], url, &params, sig));
        assert!(validate(&[TOKEN, "new-token"], url, &params, sig));
        assert!(!validate(&["new-token", "older-token"], url, &params, sig));
        let new_sig = compute("new-token", url, &params);
        assert!(validate(&["new-token", TOKEN], url, &params, &new_sig));
    }

    #[test]
    fn empty_token_is_never_accepted() {
        let url = "https://h/voice";
        let none: [(String, String); 0] = [];
        let forged = compute("", url, &none);
        assert!(!validate(&[""], url, &none, &forged));
        assert!(!validate(&["", TOKEN], url, &none, &forged));
    }

    /// The SDK signs each distinct value of a repeated name once, in order.
    #[test]
    fn repeated_names() {
        let url = "https://h/voice";
        let a = compute(TOKEN, url, &[("a", "2"), ("a", "1"), ("a", "2")]);
        let b = compute(TOKEN, url, &[("a", "1"), ("a", "2")]);
        assert_eq!(a, b);
        let mut mac = hmac_sha1(TOKEN.as_bytes());
        mac.update(b"https://h/voicea1a2");
        assert_eq!(b, STANDARD.encode(mac.finalize().into_bytes()));
    }

    /// Sorting is by (name, value), not by the concatenation `name + value`.
    #[test]
    fn sort_is_by_name_then_value() {
        let url = "https://h/voice";
        let got = compute(TOKEN, url, &[("ab", ""), ("a", "z")]);
        let mut mac = hmac_sha1(TOKEN.as_bytes());
        mac.update(b"https://h/voiceazab");
        assert_eq!(got, STANDARD.encode(mac.finalize().into_bytes()));
    }

    /// RFC 2202 HMAC-SHA1 vectors, including the keys longer than a block,
    /// to show `hmac_sha1` is plain HMAC for any key.
    #[test]
    fn hmac_sha1_rfc2202() {
        let cases: [(&[u8], &[u8], &str); 3] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b617318655057264e28bc0b6fb378c8ef146be00",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            ),
            (
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "aa4ae5e15272d00e95705637ce8a3b55ed402112",
            ),
        ];
        for (key, data, want) in cases {
            let mut mac = hmac_sha1(key);
            mac.update(data);
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hex, want);
        }
    }

    #[derive(Deserialize)]
    struct Vector {
        name: String,
        token: String,
        url: String,
        params: Vec<(String, String)>,
        signature: String,
    }

    /// Vectors made by the official twilio-python SDK
    /// (`python3 conformance/twilio_signatures.py --write`).
    #[test]
    fn official_sdk_fixture() {
        let vectors: Vec<Vector> =
            serde_json::from_str(include_str!("../../fixtures/twilio-signatures.json")).unwrap();
        assert!(vectors.len() >= 10, "fixture unexpectedly small");
        for v in &vectors {
            assert_eq!(
                compute(&v.token, &v.url, &v.params),
                v.signature,
                "{}",
                v.name
            );
            assert!(
                validate(&[&v.token], &v.url, &v.params, &v.signature),
                "{}",
                v.name
            );
            assert!(
                validate(&["rotated-away", &v.token], &v.url, &v.params, &v.signature),
                "{}",
                v.name
            );
            let wrong = format!("{}x", v.token);
            assert!(
                !validate(&[&wrong], &v.url, &v.params, &v.signature),
                "{}",
                v.name
            );
            if let Some(((_, value), rest)) = v.params.split_last() {
                let mut tampered = rest.to_vec();
                tampered.push((v.params[v.params.len() - 1].0.clone(), format!("{value}!")));
                assert!(
                    !validate(&[&v.token], &v.url, &tampered, &v.signature),
                    "{}",
                    v.name
                );
            }
        }
    }
}
