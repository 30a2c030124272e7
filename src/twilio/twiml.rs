//! TwiML answers to Twilio's voice webhook (PROTOCOLS.md §1.1).
//!
//! Built as strings from fixed templates: there are three shapes, all small,
//! and an XML library would add a dependency without adding safety. What does
//! need care is escaping: the URLs, the token and the spoken text come from
//! configuration or from us, but a value with `&` or `"` in it must still give
//! well-formed XML, because Twilio answers malformed TwiML by dropping the call
//! with "an application error has occurred".

/// The XML declaration every answer starts with.
const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// Connects the call to our Media Stream.
///
/// - `stream_url` is the `wss://…/media` URL, built from the configured public
///   URL. It cannot carry a query string (Twilio drops it), which is why the
///   per-call `token` travels as a `<Parameter>` and comes back in
///   `start.customParameters.token`.
/// - `status_callback_url` receives stream-started/stopped/error events.
/// - `fallback_say`, if given, is spoken when our server closes the stream
///   (e.g. the model failed): TwiML after `</Connect>` runs then, so the
///   caller hears an apology instead of dead air before the hang-up.
pub fn connect_stream(
    stream_url: &str,
    status_callback_url: &str,
    token: &str,
    fallback_say: Option<&str>,
) -> String {
    connect_stream_with(
        stream_url,
        status_callback_url,
        &[("token", token)],
        fallback_say,
    )
}

/// Like [`connect_stream`], with every `(name, value)` as a `<Parameter>`
/// (the token, and the call's numbers, which `start` does not carry).
pub fn connect_stream_with(
    stream_url: &str,
    status_callback_url: &str,
    params: &[(&str, &str)],
    fallback_say: Option<&str>,
) -> String {
    let params_len: usize = params.iter().map(|(n, v)| n.len() + v.len() + 40).sum();
    let mut xml = String::with_capacity(
        256 + stream_url.len()
            + status_callback_url.len()
            + params_len
            + fallback_say.map_or(0, str::len),
    );
    xml.push_str(DECLARATION);
    xml.push_str("<Response>\n  <Connect>\n    <Stream url=\"");
    escape_into(&mut xml, stream_url);
    xml.push_str("\" statusCallback=\"");
    escape_into(&mut xml, status_callback_url);
    xml.push_str("\">\n");
    for (name, value) in params {
        xml.push_str("      <Parameter name=\"");
        escape_into(&mut xml, name);
        xml.push_str("\" value=\"");
        escape_into(&mut xml, value);
        xml.push_str("\"/>\n");
    }
    xml.push_str("    </Stream>\n  </Connect>\n");
    if let Some(text) = fallback_say {
        xml.push_str("  <Say>");
        escape_into(&mut xml, text);
        xml.push_str("</Say>\n");
    }
    xml.push_str("</Response>\n");
    xml
}

/// Turns the caller away with a busy signal, when we are at `max_calls` or
/// draining. Rejecting costs nothing on Twilio's side (the call is never
/// answered), and the caller's phone shows busy so they can retry.
pub fn busy() -> String {
    format!("{DECLARATION}<Response><Reject reason=\"busy\"/></Response>\n")
}

/// Says `text` and hangs up: for answers that should be heard, e.g. "this
/// service is not available", where a busy tone would only invite redialling.
pub fn say_and_hangup(text: &str) -> String {
    let mut xml = String::with_capacity(DECLARATION.len() + 40 + text.len());
    xml.push_str(DECLARATION);
    xml.push_str("<Response><Say>");
    escape_into(&mut xml, text);
    xml.push_str("</Say><Hangup/></Response>\n");
    xml
}

/// Appends `s` escaped for both XML text and attribute values.
///
/// The five markup characters become entities. Tab, line feed and carriage
/// return become character references, because XML parsers turn them into
/// spaces inside attribute values (and `\r` into `\n` everywhere). Characters
/// XML 1.0 forbids even as references (other C0 controls, U+FFFE, U+FFFF)
/// become U+FFFD, so the document stays well formed whatever the input.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// Hands the call to `target` (a transfer): `<Dial><Number>` for a phone
/// number, `<Dial><Sip>` for a SIP URI, the value escaped.
///
/// Sent as the `Twiml` of a REST update on the live call (PROTOCOLS.md §4),
/// which replaces the running `<Connect><Stream>` and so ends the stream.
pub fn dial(target: &DialTarget) -> String {
    let (open, close) = match target.kind {
        DialKind::Number => ("<Number>", "</Number>"),
        DialKind::Sip => ("<Sip>", "</Sip>"),
    };
    let mut xml = String::with_capacity(DECLARATION.len() + 64 + target.value.len());
    xml.push_str(DECLARATION);
    xml.push_str("<Response><Dial>");
    xml.push_str(open);
    escape_into(&mut xml, &target.value);
    xml.push_str(close);
    xml.push_str("</Dial></Response>\n");
    xml
}

/// The longest SIP URI accepted as a transfer target. Twilio takes at most
/// 4000 characters of inline TwiML; a URI longer than this is a mistake.
pub const MAX_SIP_URI_LEN: usize = 1024;

/// Where a transfer goes: an E.164 phone number or a SIP URI, checked by
/// [`DialTarget::parse`] (also used when it is read from config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DialTarget {
    kind: DialKind,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialKind {
    Number,
    Sip,
}

/// Why a transfer target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialTargetError {
    #[error("a transfer target must not be empty")]
    Empty,
    #[error(
        "{0:?} is not an E.164 phone number: expected + and 8 to 15 digits, \
         the first not 0, with no spaces or punctuation (e.g. +14155550123)"
    )]
    BadNumber(String),
    #[error("the SIP URI {0:?} has nothing after its scheme (e.g. sip:help@example.com)")]
    EmptySip(String),
    #[error("the SIP URI {0:?} contains whitespace or a control character")]
    SipWhitespace(String),
    #[error("the SIP URI is {0} characters long; at most {MAX_SIP_URI_LEN} are accepted")]
    SipTooLong(usize),
    #[error(
        "{0:?} is neither an E.164 phone number (+14155550123) \
         nor a SIP URI (sip:… or sips:…)"
    )]
    Unknown(String),
}

impl DialTarget {
    /// Accepts `+` followed by 8–15 digits (E.164), or a `sip:`/`sips:` URI
    /// without whitespace or control characters. Nothing else: in particular
    /// no local formats (`(415) 555-0123`), which Twilio would guess at.
    pub fn parse(raw: &str) -> Result<DialTarget, DialTargetError> {
        // Errors quote the value (it comes from config), cut to a sane length.
        let shown = || raw.chars().take(64).collect::<String>();
        if raw.is_empty() {
            return Err(DialTargetError::Empty);
        }
        if let Some(digits) = raw.strip_prefix('+') {
            let ok = (8..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            return if ok {
                Ok(DialTarget {
                    kind: DialKind::Number,
                    value: raw.to_owned(),
                })
            } else {
                Err(DialTargetError::BadNumber(shown()))
            };
        }
        let scheme_len = ["sip:", "sips:"]
            .iter()
            .find(|scheme| {
                raw.get(..scheme.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
            })
            .map(|scheme| scheme.len());
        let Some(scheme_len) = scheme_len else {
            return Err(if raw.bytes().all(|b| b.is_ascii_digit()) {
                DialTargetError::BadNumber(shown())
            } else {
                DialTargetError::Unknown(shown())
            });
        };
        let len = raw.chars().count();
        if len > MAX_SIP_URI_LEN {
            return Err(DialTargetError::SipTooLong(len));
        }
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\u{fffe}' || c == '\u{ffff}')
        {
            return Err(DialTargetError::SipWhitespace(shown()));
        }
        if raw.len() == scheme_len {
            return Err(DialTargetError::EmptySip(shown()));
        }
        Ok(DialTarget {
            kind: DialKind::Sip,
            value: raw.to_owned(),
        })
    }

    /// The number or URI, as given.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    pub fn is_sip(&self) -> bool {
        self.kind == DialKind::Sip
    }
}

impl std::str::FromStr for DialTarget {
    type Err = DialTargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DialTarget::parse(s)
    }
}

impl TryFrom<String> for DialTarget {
    type Error = DialTargetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DialTarget::parse(&s)
    }
}

impl From<DialTarget> for String {
    fn from(target: DialTarget) -> String {
        target.value
    }
}

impl std::fmt::Display for DialTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_stream_exact() {
        let xml = connect_stream(
            "wss://bridge.example.com/media",
            "https://bridge.example.com/stream-status",
            "v1.1750000060.abc-_",
            Some("Sorry, something went wrong. Goodbye."),
        );
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Connect>
    <Stream url="wss://bridge.example.com/media" statusCallback="https://bridge.example.com/stream-status">
      <Parameter name="token" value="v1.1750000060.abc-_"/>
    </Stream>
  </Connect>
  <Say>Sorry, something went wrong. Goodbye.</Say>
</Response>
"#
        );
    }

    #[test]
    fn connect_stream_without_fallback() {
        let xml = connect_stream("wss://h/media", "https://h/stream-status", "t", None);
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Connect>
    <Stream url="wss://h/media" statusCallback="https://h/stream-status">
      <Parameter name="token" value="t"/>
    </Stream>
  </Connect>
</Response>
"#
        );
        assert!(!xml.contains("<Say"));
    }

    #[test]
    fn hostile_values_are_escaped() {
        let xml = connect_stream(
            "wss://h/media\"/><Redirect>https://evil</Redirect><x a=\"",
            "https://h/s?a=1&b=2",
            "'\"<>&",
            Some("</Say><Dial>+15005550006</Dial><Say>"),
        );
        assert!(!xml.contains("<Redirect>"));
        assert!(!xml.contains("<Dial>"));
        assert!(xml.contains("url=\"wss://h/media&quot;/&gt;&lt;Redirect&gt;https://evil&lt;/Redirect&gt;&lt;x a=&quot;\""));
        assert!(xml.contains("statusCallback=\"https://h/s?a=1&amp;b=2\""));
        assert!(xml.contains("value=\"&apos;&quot;&lt;&gt;&amp;\""));
        assert!(
            xml.contains("<Say>&lt;/Say&gt;&lt;Dial&gt;+15005550006&lt;/Dial&gt;&lt;Say&gt;</Say>")
        );
    }

    #[test]
    fn control_characters() {
        let mut out = String::new();
        escape_into(&mut out, "a\tb\nc\rd\u{0}e\u{1b}f\u{ffff}g é 😀");
        assert_eq!(out, "a&#9;b&#10;c&#13;d\u{fffd}e\u{fffd}f\u{fffd}g é 😀");
    }

    #[test]
    fn busy_exact() {
        assert_eq!(
            busy(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Reject reason=\"busy\"/></Response>\n"
        );
    }

    #[test]
    fn say_and_hangup_exact() {
        assert_eq!(
            say_and_hangup("We're closed & <busy>."),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Response><Say>We&apos;re closed &amp; &lt;busy&gt;.</Say><Hangup/></Response>\n"
        );
    }

    // --- dial ---

    /// A small well-formedness check for the flat TwiML we write: tags nest,
    /// text holds no markup, and every `&` starts one of the references
    /// `escape_into` writes. Returns the element names in document order and
    /// the text content, unescaped.
    fn check_xml(xml: &str) -> (Vec<String>, String) {
        let body = xml.strip_prefix(DECLARATION).expect("declaration");
        let mut stack: Vec<String> = Vec::new();
        let mut elements = Vec::new();
        let mut text = String::new();
        let mut rest = body;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('<') {
                let end = after.find('>').expect("unclosed tag");
                let tag = &after[..end];
                assert!(!tag.contains('<') && !tag.contains('"'), "bad tag {tag:?}");
                if let Some(name) = tag.strip_prefix('/') {
                    assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
                } else {
                    stack.push(tag.to_owned());
                    elements.push(tag.to_owned());
                }
                rest = &after[end + 1..];
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                let mut chunk = &rest[..end];
                assert!(!chunk.contains('>'), "raw > in text {chunk:?}");
                while let Some(amp) = chunk.find('&') {
                    text.push_str(&chunk[..amp]);
                    let semi = chunk[amp..].find(';').expect("unterminated reference") + amp;
                    text.push(match &chunk[amp + 1..semi] {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        "#9" => '\t',
                        "#10" => '\n',
                        "#13" => '\r',
                        other => panic!("unknown reference &{other};"),
                    });
                    chunk = &chunk[semi + 1..];
                }
                text.push_str(chunk);
                rest = &rest[end..];
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        (elements, text.trim_end_matches('\n').to_owned())
    }

    #[test]
    fn dial_number_exact() {
        let target = DialTarget::parse("+14155550123").unwrap();
        assert!(!target.is_sip());
        assert_eq!(
            dial(&target),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Response><Dial><Number>+14155550123</Number></Dial></Response>\n"
        );
    }

    #[test]
    fn dial_sip_exact() {
        let target = DialTarget::parse("sip:help@example.com;transport=tls").unwrap();
        assert!(target.is_sip());
        assert_eq!(
            dial(&target),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Response><Dial><Sip>sip:help@example.com;transport=tls</Sip></Dial></Response>\n"
        );
    }

    #[test]
    fn dial_escapes_hostile_sip_uri() {
        for raw in [
            "sip:a<b>&c\"d'e@example.com",
            "sip:x</Sip></Dial><Dial><Number>+19005550000</Number></Dial><Dial><Sip>y",
            "sips:&amp;&lt;@example.com?X-Header=\"1\"&b=<2>",
        ] {
            let target = DialTarget::parse(raw).unwrap();
            let xml = dial(&target);
            let (elements, text) = check_xml(&xml);
            assert_eq!(elements, ["Response", "Dial", "Sip"], "{xml}");
            assert_eq!(xml.matches("<Dial>").count(), 1, "{xml}");
            assert_eq!(text, raw, "{xml}");
        }
    }

    #[test]
    fn dial_target_accepts_e164_and_sip_only() {
        for ok in [
            "+14155550123",
            "+44207946000",
            "+12345678",
            "+123456789012345",
            "sip:help@example.com",
            "sips:help@example.com:5061",
            "SIP:Help@Example.com",
            "sip:+14155550123@trunk.example.com;user=phone",
        ] {
            let t = DialTarget::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(t.as_str(), ok);
            assert_eq!(t.to_string(), ok);
            assert_eq!(ok.parse::<DialTarget>().unwrap(), t);
        }
        let kind = |e: &DialTargetError| match e {
            DialTargetError::Empty => "empty",
            DialTargetError::BadNumber(_) => "number",
            DialTargetError::EmptySip(_) => "empty sip",
            DialTargetError::SipWhitespace(_) => "sip whitespace",
            DialTargetError::SipTooLong(_) => "sip too long",
            DialTargetError::Unknown(_) => "unknown",
        };
        for (raw, expected) in [
            ("", "empty"),
            ("+1234567", "number"),
            ("+1234567890123456", "number"),
            ("+1 415 555 0123", "number"),
            ("+1-415-555-0123", "number"),
            ("+04155550123", "number"),
            ("+", "number"),
            ("14155550123", "number"),
            ("sip:", "empty sip"),
            ("sips:", "empty sip"),
            ("sip:a b@example.com", "sip whitespace"),
            ("sip:a@example.com\n", "sip whitespace"),
            ("sip:a\u{0}@example.com", "sip whitespace"),
            ("sip:a\u{85}@example.com", "sip whitespace"),
            ("tel:+14155550123", "unknown"),
            ("https://example.com", "unknown"),
            (" +14155550123", "unknown"),
            ("sipx:a@example.com", "unknown"),
        ] {
            let err = DialTarget::parse(raw).unwrap_err();
            assert_eq!(kind(&err), expected, "{raw:?}: {err}");
            assert!(!err.to_string().is_empty());
        }
        let long = format!("sip:{}@example.com", "a".repeat(MAX_SIP_URI_LEN));
        assert!(matches!(
            DialTarget::parse(&long),
            Err(DialTargetError::SipTooLong(_))
        ));
    }

    #[test]
    fn dial_target_from_config_values() {
        let targets: std::collections::BTreeMap<String, DialTarget> =
            serde_json::from_str(r#"{"sales":"+14155550123","support":"sip:help@example.com"}"#)
                .unwrap();
        assert!(!targets["sales"].is_sip());
        assert!(targets["support"].is_sip());
        assert_eq!(
            serde_json::to_string(&targets["sales"]).unwrap(),
            "\"+14155550123\""
        );
        let err = serde_json::from_str::<DialTarget>("\"555-0123\"").unwrap_err();
        assert!(err.to_string().contains("E.164"), "{err}");
    }
}
