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
    let mut xml = String::with_capacity(
        256 + stream_url.len()
            + status_callback_url.len()
            + token.len()
            + fallback_say.map_or(0, str::len),
    );
    xml.push_str(DECLARATION);
    xml.push_str("<Response>\n  <Connect>\n    <Stream url=\"");
    escape_into(&mut xml, stream_url);
    xml.push_str("\" statusCallback=\"");
    escape_into(&mut xml, status_callback_url);
    xml.push_str("\">\n      <Parameter name=\"token\" value=\"");
    escape_into(&mut xml, token);
    xml.push_str("\"/>\n    </Stream>\n  </Connect>\n");
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
}
