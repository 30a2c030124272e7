//! Opening a call the way Twilio does: the signed voice webhook, the TwiML
//! answer, the signed WebSocket upgrade to the `<Stream url>` it names, and
//! the `connected` + `start` frames. Shared by the caller and the load test
//! so both exercise exactly the admission path a real call takes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::SimError;
use callbridge::twilio::{messages, signature};

/// The Media Stream socket, client side.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest TwiML answer read: real answers are a few hundred bytes, and a
/// misdirected URL must not make the simulator buffer a whole web page.
const MAX_TWIML: usize = 64 << 10;
/// Largest frame accepted from the bridge: its media chunks are ≤ 100 ms
/// (about 1 KiB of base64); anything near this is a bug worth failing on.
const MAX_FRAME: usize = 1 << 20;
/// Numbers Twilio would put in the webhook: Twilio's magic test numbers.
const FROM: &str = "+15005550006";
const TO: &str = "+15005550001";

/// The identifiers of one simulated call, in Twilio's shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sids {
    pub(crate) call: String,
    pub(crate) stream: String,
    pub(crate) account: String,
}

impl Sids {
    /// Fresh random SIDs (`CA`/`MZ`/`AC` + 32 hex digits); `call` replaces
    /// the CallSid when a test wants a known one.
    pub(crate) fn new(call: Option<String>) -> Result<Sids, SimError> {
        Ok(Sids {
            call: match call {
                Some(c) => c,
                None => sid("CA")?,
            },
            stream: sid("MZ")?,
            account: sid("AC")?,
        })
    }
}

fn sid(prefix: &str) -> Result<String, SimError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| SimError::Options(format!("no randomness: {e}")))?;
    let mut s = String::with_capacity(34);
    s.push_str(prefix);
    for b in raw {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    Ok(s)
}

/// What the TwiML told us: where the stream goes and its `<Parameter>`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) stream_url: Url,
    pub(crate) parameters: Vec<(String, String)>,
}

/// An open Media Stream, `connected` and `start` already sent.
pub(crate) struct Opened {
    pub(crate) ws: Ws,
    pub(crate) sids: Sids,
    pub(crate) stream_url: Url,
    /// The `sequenceNumber` of the next frame (`start` was 1).
    pub(crate) next_seq: u64,
}

/// `bridge` with the webhook path: `http://host:port` → `http://host:port/voice`.
/// A URL that already ends in `/voice` is used as given.
pub(crate) fn voice_url(bridge: &Url) -> Result<Url, SimError> {
    match bridge.scheme() {
        "http" => {}
        "https" => {
            return Err(SimError::Options(format!(
                "{bridge}: https is not supported by the simulator; give the bridge's plain http address"
            )))
        }
        other => {
            return Err(SimError::Options(format!(
                "{bridge}: unsupported scheme {other:?} (expected http://host:port)"
            )))
        }
    }
    if bridge.host_str().is_none() {
        return Err(SimError::Options(format!("{bridge}: no host")));
    }
    let mut url = bridge.clone();
    if !url.path().ends_with("/voice") {
        let path = format!("{}/voice", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Dials: webhook, TwiML, signed upgrade, `connected`, `start`. Each network
/// step is bounded by `timeout`.
pub(crate) async fn dial(
    bridge: &Url,
    auth_token: Option<&str>,
    sids: Sids,
    timeout: Duration,
    read_buffer: usize,
) -> Result<Opened, SimError> {
    let voice = voice_url(bridge)?;
    let answer = post_voice(&voice, auth_token, &sids, timeout).await?;
    let mut ws = connect_stream(&answer.stream_url, auth_token, timeout, read_buffer).await?;
    let mut text = String::with_capacity(512);
    messages::write_connected(&mut text);
    send_text(&mut ws, &text, timeout).await?;
    let params: Vec<(&str, &str)> = answer
        .parameters
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    messages::write_start(&mut text, &sids.stream, &sids.call, &sids.account, &params);
    send_text(&mut ws, &text, timeout).await?;
    Ok(Opened {
        ws,
        sids,
        stream_url: answer.stream_url,
        next_seq: 2,
    })
}

/// Sends one text frame, bounded: a bridge that stops reading must not
/// hang the simulator.
pub(crate) async fn send_text(ws: &mut Ws, text: &str, timeout: Duration) -> Result<(), SimError> {
    use futures_util::SinkExt as _;
    match tokio::time::timeout(timeout, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SimError::Stream(format!("send failed: {e}"))),
        Err(_) => Err(SimError::Timeout("sending to the bridge".into())),
    }
}

/// Sends a batch of text frames with one flush at the end, bounded by
/// `timeout`: a tick's media frame and the marks it released go out in one
/// write instead of one system call each, which matters when a load test
/// runs thousands of calls on the machine it measures.
pub(crate) async fn send_batch<S>(
    tx: &mut S,
    batch: &mut Vec<String>,
    timeout: Duration,
) -> Result<(), SimError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    use futures_util::SinkExt as _;
    if batch.is_empty() {
        return Ok(());
    }
    let send = async {
        for text in batch.drain(..) {
            tx.feed(Message::text(text)).await?;
        }
        tx.flush().await
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SimError::Stream(format!(
            "sending to the bridge failed: {e}"
        ))),
        Err(_) => Err(SimError::Timeout(
            "sending to the bridge (it stopped reading)".into(),
        )),
    }
}

/// The form Twilio posts to the voice URL for an incoming call.
fn webhook_params(sids: &Sids) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", sids.account.clone()),
        ("ApiVersion", "2010-04-01".into()),
        ("CallSid", sids.call.clone()),
        ("CallStatus", "ringing".into()),
        ("Called", TO.into()),
        ("Caller", FROM.into()),
        ("Direction", "inbound".into()),
        ("From", FROM.into()),
        ("To", TO.into()),
    ]
}

/// POSTs the voice webhook (signed when there is a token) and reads the TwiML.
pub(crate) async fn post_voice(
    voice: &Url,
    auth_token: Option<&str>,
    sids: &Sids,
    timeout: Duration,
) -> Result<Answer, SimError> {
    let params = webhook_params(sids);
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let host = voice.host_str().unwrap_or_default();
    let port = voice.port_or_known_default().unwrap_or(80);
    let addr = format!("{host}:{port}");
    let authority = &voice[url::Position::BeforeHost..url::Position::AfterPort];
    let path = &voice[url::Position::BeforePath..url::Position::AfterQuery];
    let mut request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::USER_AGENT, "TwilioProxy/1.1")
        .header(http::header::ACCEPT, "*/*");
    if let Some(token) = auth_token {
        request = request.header(
            "X-Twilio-Signature",
            signature::compute(token, voice.as_str(), &params),
        );
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| SimError::Options(format!("{voice}: {e}")))?;

    let exchange = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| SimError::Unreachable {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| SimError::Unreachable {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let driver = tokio::spawn(conn);
        let result = async {
            let response =
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| SimError::Unreachable {
                        addr: addr.clone(),
                        reason: format!("POST {voice}: {e}"),
                    })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_TWIML)
                .collect()
                .await
                .map_err(|e| SimError::Http {
                    endpoint: voice.to_string(),
                    status: status.as_u16(),
                    body: format!("unreadable body: {e}"),
                })?
                .to_bytes();
            Ok::<_, SimError>((status, body))
        }
        .await;
        driver.abort();
        result
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SimError::Timeout(format!("waiting for POST {voice}")))??;
    let text = String::from_utf8_lossy(&body);
    match status.as_u16() {
        200 => parse_twiml(&text),
        403 => Err(SimError::Forbidden {
            endpoint: format!("POST {voice}"),
            signed: auth_token.is_some(),
        }),
        code => Err(SimError::Http {
            endpoint: format!("POST {voice}"),
            status: code,
            body: shorten(text.trim(), 120),
        }),
    }
}

/// Opens the WebSocket to the stream URL, signing the upgrade over the URL
/// alone (a GET has no form parameters), as Twilio does.
async fn connect_stream(
    stream_url: &Url,
    auth_token: Option<&str>,
    timeout: Duration,
    read_buffer: usize,
) -> Result<Ws, SimError> {
    let endpoint = format!("GET {stream_url}");
    let mut request = stream_url
        .as_str()
        .into_client_request()
        .map_err(|e| SimError::Twiml(format!("stream url {stream_url}: {e}")))?;
    let headers = request.headers_mut();
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("Twilio.TmeWs/1.0"),
    );
    if let Some(token) = auth_token {
        let none: [(&str, &str); 0] = [];
        let sig = signature::compute(token, stream_url.as_str(), &none);
        let value = HeaderValue::from_str(&sig)
            .map_err(|e| SimError::Options(format!("signature header: {e}")))?;
        headers.insert("x-twilio-signature", value);
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        // Frames are fed in batches and flushed once (see `send_batch`).
        .write_buffer_size(16 << 10)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(SimError::Timeout(format!("opening {stream_url}"))),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| shorten(String::from_utf8_lossy(b).trim(), 120))
                .unwrap_or_default();
            match status {
                403 => Err(SimError::Forbidden {
                    endpoint,
                    signed: auth_token.is_some(),
                }),
                503 => Err(SimError::Busy(format!("{endpoint}: 503 {body}"))),
                _ => Err(SimError::Http {
                    endpoint,
                    status,
                    body,
                }),
            }
        }
        Ok(Err(tungstenite::Error::Io(e))) => Err(SimError::Unreachable {
            addr: stream_url.to_string(),
            reason: e.to_string(),
        }),
        Ok(Err(e)) => Err(SimError::Stream(format!("{endpoint}: {e}"))),
    }
}

/// Finds `<Connect><Stream url="…">` and its `<Parameter>`s in a TwiML answer.
///
/// A scan, not an XML parser: the answers are tiny and machine-written, and
/// the simulator only needs what Twilio acts on. A `<Reject>` answer (the
/// bridge is full or draining) is reported as busy.
pub(crate) fn parse_twiml(xml: &str) -> Result<Answer, SimError> {
    if let Some(tag) = find_tag(xml, "Reject") {
        let reason = attribute(tag, "reason").unwrap_or_else(|| "rejected".into());
        return Err(SimError::Busy(format!(
            "TwiML <Reject reason=\"{reason}\">"
        )));
    }
    let Some(start) = find_tag_at(xml, "Stream") else {
        let what = if find_tag(xml, "Hangup").is_some() {
            "the call was hung up"
        } else {
            "no <Stream>"
        };
        return Err(SimError::Twiml(format!(
            "{what}: {}",
            shorten(xml.trim(), 160)
        )));
    };
    let tag = &xml[start.0..start.1];
    let url = attribute(tag, "url").ok_or_else(|| SimError::Twiml("<Stream> has no url".into()))?;
    let stream_url =
        Url::parse(&url).map_err(|e| SimError::Twiml(format!("<Stream url={url:?}>: {e}")))?;
    if !matches!(stream_url.scheme(), "ws" | "wss") {
        return Err(SimError::Twiml(format!(
            "<Stream url={url:?}>: not a ws:// or wss:// URL"
        )));
    }
    let mut parameters = Vec::new();
    if !tag.ends_with("/>") {
        let body_end = xml[start.1..]
            .find("</Stream")
            .map_or(xml.len(), |i| start.1 + i);
        let mut rest = &xml[start.1..body_end];
        while let Some((s, e)) = find_tag_at(rest, "Parameter") {
            let p = &rest[s..e];
            if let (Some(name), Some(value)) = (attribute(p, "name"), attribute(p, "value")) {
                parameters.push((name, value));
            }
            rest = &rest[e..];
        }
    }
    Ok(Answer {
        stream_url,
        parameters,
    })
}

fn find_tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    find_tag_at(xml, name).map(|(s, e)| &xml[s..e])
}

/// Byte range of the first `<name …>` / `<name …/>` start tag.
fn find_tag_at(xml: &str, name: &str) -> Option<(usize, usize)> {
    let open = format!("<{name}");
    let mut from = 0;
    while let Some(i) = xml[from..].find(&open) {
        let s = from + i;
        let after = s + open.len();
        match xml[after..].chars().next() {
            Some(c) if c.is_whitespace() || c == '>' || c == '/' => {
                let e = xml[after..].find('>').map(|j| after + j + 1)?;
                return Some((s, e));
            }
            _ => from = after,
        }
    }
    None
}

/// The unescaped value of attribute `name` in a start tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let mut rest = tag;
    loop {
        let i = rest.find(name)?;
        let before = rest[..i].chars().next_back();
        let after = rest[i + name.len()..].trim_start();
        rest = &rest[i + name.len()..];
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let Some(after) = after.strip_prefix('=') else {
            continue;
        };
        let after = after.trim_start();
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let value = &after[1..];
        let end = value.find(quote)?;
        return Some(unescape(&value[..end]));
    }
}

/// XML entities: the five named ones and numeric references.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else {
            break;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

pub(crate) use callbridge::twilio::messages::shorten;

#[cfg(test)]
mod tests {
    use super::*;
    use callbridge::twilio::twiml;

    #[test]
    fn reads_the_bridges_own_twiml() {
        let xml = twiml::connect_stream(
            "ws://127.0.0.1:8080/media",
            "http://127.0.0.1:8080/stream-status",
            "v1.123.a&b\"c",
            Some("Sorry & goodbye"),
        );
        let answer = parse_twiml(&xml).unwrap();
        assert_eq!(answer.stream_url.as_str(), "ws://127.0.0.1:8080/media");
        assert_eq!(
            answer.parameters,
            [("token".to_owned(), "v1.123.a&b\"c".to_owned())]
        );
    }

    #[test]
    fn busy_and_broken_answers() {
        assert!(
            matches!(parse_twiml(&twiml::busy()), Err(SimError::Busy(r)) if r.contains("busy"))
        );
        assert!(matches!(
            parse_twiml(&twiml::say_and_hangup("closed")),
            Err(SimError::Twiml(m)) if m.contains("hung up")
        ));
        assert!(
            parse_twiml("<Response><Connect><Streamer url=\"ws://h/\"/></Connect></Response>")
                .is_err()
        );
        assert!(parse_twiml(
            "<Response><Connect><Stream url=\"https://h/media\"/></Connect></Response>"
        )
        .is_err());
        assert!(parse_twiml("<Response><Connect><Stream url='ws://h/m'").is_err());
        let a = parse_twiml("<Response><Connect><Stream name=\"x\" url='ws://h/m'/></Connect><Parameter name=\"a\" value=\"b\"/></Response>").unwrap();
        assert_eq!(a.stream_url.as_str(), "ws://h/m");
        assert!(
            a.parameters.is_empty(),
            "parameters outside the stream are not its own"
        );
    }

    #[test]
    fn entities() {
        assert_eq!(
            unescape("a&amp;b&lt;&gt;&quot;&apos;&#65;&#x42;"),
            "a&b<>\"'AB"
        );
        assert_eq!(unescape("&bogus; & &#xZZ;"), "&bogus; & &#xZZ;");
        assert_eq!(unescape("tail&amp"), "tail&amp");
    }

    #[test]
    fn sids_look_like_twilio_s() {
        let s = Sids::new(None).unwrap();
        for (sid, prefix) in [(&s.call, "CA"), (&s.stream, "MZ"), (&s.account, "AC")] {
            assert_eq!(sid.len(), 34);
            assert!(sid.starts_with(prefix));
            assert!(sid[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_eq!(Sids::new(Some("CAx".into())).unwrap().call, "CAx");
    }

    #[test]
    fn voice_urls() {
        let u = |s: &str| voice_url(&Url::parse(s).unwrap()).map(|u| u.to_string());
        assert_eq!(
            u("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/voice"
        );
        assert_eq!(u("http://h:1/app/").unwrap(), "http://h:1/app/voice");
        assert_eq!(u("http://h/voice?x=1").unwrap(), "http://h/voice");
        assert!(u("https://h").is_err());
        assert!(u("ws://h").is_err());
    }
}
