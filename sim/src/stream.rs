//! Opening a call the way Twilio does: the signed voice webhook, the TwiML
//! answer, the signed WebSocket upgrade to the `<Stream url>` it names, and
//! the `connected` + `start` frames. Shared by the caller and the load test
//! so both exercise exactly the admission path a real call takes.
//!
//! Both legs speak plain `http://`/`ws://` or TLS (`https://`/`wss://`, as
//! Twilio does against a deployment), through one [`Transport`]: the roots
//! to trust and the `--resolve` overrides of where to connect.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
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

use rustls::pki_types::ServerName;

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

/// How the simulator reaches the bridge: which certificates it trusts for
/// `https://`/`wss://`, and which hosts it connects to at another address.
///
/// The default trusts the public web roots and resolves names normally.
/// Cheap to clone: a load test shares one among all its calls.
#[derive(Clone, Default)]
pub struct Transport {
    /// `None` (the default): the web roots only, configured per connection.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether `tls` includes a private CA (`--ca-file`).
    private_ca: bool,
    resolve: Vec<Resolve>,
}

/// `--resolve HOST:ADDR`: connect to `addr` whenever a URL's host is `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolve {
    /// Lowercase, as [`Url`] keeps domain names.
    host: String,
    addr: ResolveAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResolveAddr {
    /// `ip:port`: this exact socket address.
    Socket(SocketAddr),
    /// A bare IP: the URL's own port on it.
    Ip(IpAddr),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("private_ca", &self.private_ca)
            .field("resolve", &self.resolve)
            .finish()
    }
}

impl Transport {
    /// Trusts the web roots plus, with `ca_file`, every certificate of that
    /// PEM file (a private CA); `resolve` holds `HOST:ADDR` overrides like
    /// curl's `--resolve`: a URL whose host is `HOST` is connected to `ADDR`
    /// (`ip:port`, `[v6]:port`, or a bare IP for the URL's own port), while
    /// TLS (SNI, certificate name) and the `Host` header still use `HOST`.
    pub fn new(ca_file: Option<&Path>, resolve: &[String]) -> Result<Transport, SimError> {
        let resolve = resolve
            .iter()
            .map(|v| parse_resolve(v))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = callbridge::upstream::client::roots_with_ca_file(ca_file)
            .map_err(|e| SimError::Options(format!("--ca-file {e}")))?;
        Ok(Transport {
            tls: Some(client_config(roots)?),
            private_ca: ca_file.is_some(),
            resolve,
        })
    }

    /// Where to open the TCP connection for `url`, and whether `--resolve`
    /// chose it.
    fn target(&self, url: &Url) -> Result<(String, bool), SimError> {
        let host = url
            .host_str()
            .ok_or_else(|| SimError::Options(format!("{url}: no host")))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| SimError::Options(format!("{url}: no port")))?;
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        let found = self
            .resolve
            .iter()
            .find(|r| r.host.eq_ignore_ascii_case(host_bare));
        Ok(match found.map(|r| r.addr) {
            Some(ResolveAddr::Socket(addr)) => (addr.to_string(), true),
            Some(ResolveAddr::Ip(ip)) => (SocketAddr::new(ip, port).to_string(), true),
            None => (format!("{host}:{port}"), false),
        })
    }

    /// The port a URL's connection goes to (after `--resolve`).
    pub(crate) fn target_port(&self, url: &Url) -> Option<u16> {
        let (target, _) = self.target(url).ok()?;
        target.rsplit_once(':')?.1.parse().ok()
    }

    /// TCP (no Nagle) to the URL's host, or to its `--resolve` address, then
    /// TLS for `https`/`wss` with the URL's host as the server name.
    pub(crate) async fn connect(&self, url: &Url) -> Result<MaybeTlsStream<TcpStream>, SimError> {
        let (target, resolved) = self.target(url)?;
        let host = url.host_str().unwrap_or_default();
        let shown = if resolved {
            format!("{host} ({target} by --resolve)")
        } else {
            target.clone()
        };
        let tcp = TcpStream::connect(&target)
            .await
            .map_err(|e| SimError::Unreachable {
                addr: shown.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        match url.scheme() {
            "http" | "ws" => Ok(MaybeTlsStream::Plain(tcp)),
            "https" | "wss" => {
                let name = match url.host() {
                    Some(url::Host::Domain(d)) => ServerName::try_from(d.to_owned()),
                    Some(url::Host::Ipv4(ip)) => Ok(ServerName::from(IpAddr::V4(ip))),
                    Some(url::Host::Ipv6(ip)) => Ok(ServerName::from(IpAddr::V6(ip))),
                    None => return Err(SimError::Options(format!("{url}: no host"))),
                }
                .map_err(|e| SimError::Options(format!("{url}: not a TLS server name: {e}")))?;
                let config = match &self.tls {
                    Some(config) => config.clone(),
                    None => client_config(callbridge::upstream::client::web_roots())?,
                };
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.tls_error(&shown, e))?;
                Ok(MaybeTlsStream::Rustls(tls))
            }
            other => Err(SimError::Options(format!(
                "{url}: unsupported scheme {other:?}"
            ))),
        }
    }

    /// A failed TLS handshake, said plainly: an untrusted certificate is
    /// the one an operator can fix from here (`--ca-file`).
    fn tls_error(&self, host: &str, e: std::io::Error) -> SimError {
        use rustls::CertificateError as C;
        let rustls_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => SimError::Unreachable {
                addr: host.to_owned(),
                reason: format!(
                    "TLS: {e} (the certificate must name the URL's host; --resolve keeps that host)"
                ),
            },
            Some(rustls::Error::InvalidCertificate(_)) => SimError::Untrusted {
                host: host.to_owned(),
                reason: e.to_string(),
                private_ca: self.private_ca,
            },
            _ => SimError::Unreachable {
                addr: host.to_owned(),
                reason: format!("TLS handshake failed: {e}"),
            },
        }
    }
}

/// A rustls client configuration (ring, as the bridge's own client) trusting `roots`.
fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, SimError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Options(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `HOST:ADDR`: `bridge.example.com:203.0.113.5:443`, `h:[2001:db8::1]:443`,
/// or `h:203.0.113.5` (the URL's port).
fn parse_resolve(value: &str) -> Result<Resolve, SimError> {
    let bad = |why: &str| {
        SimError::Options(format!(
            "--resolve {value:?}: {why} (expected HOST:ADDR, e.g. bridge.example.com:203.0.113.5:443)"
        ))
    };
    let (host, addr) = value
        .split_once(':')
        .ok_or_else(|| bad("no ':' between HOST and ADDR"))?;
    let host = host.trim();
    if host.is_empty() || host.starts_with('[') || host.contains('/') {
        return Err(bad("HOST must be a host name, as in the URL"));
    }
    let addr = addr.trim();
    let addr = if let Ok(socket) = addr.parse::<SocketAddr>() {
        ResolveAddr::Socket(socket)
    } else if let Ok(ip) = addr.parse::<IpAddr>() {
        ResolveAddr::Ip(ip)
    } else if let Some((port, ip)) = addr
        .split_once(':')
        .and_then(|(p, ip)| Some((p.parse::<u16>().ok()?, ip.parse::<IpAddr>().ok()?)))
    {
        // curl's HOST:PORT:ADDR: say how to write it here.
        return Err(bad(&format!(
            "ADDR comes with its port here, not before it: {host}:{}",
            SocketAddr::new(ip, port)
        )));
    } else {
        return Err(bad(
            "ADDR must be an IP address and port, like 203.0.113.5:443 or [2001:db8::1]:443",
        ));
    };
    Ok(Resolve {
        host: host.to_ascii_lowercase(),
        addr,
    })
}

/// `bridge` with the webhook path: `http://host:port` → `http://host:port/voice`.
/// A URL that already ends in `/voice` is used as given.
pub(crate) fn voice_url(bridge: &Url) -> Result<Url, SimError> {
    match bridge.scheme() {
        "http" | "https" => {}
        other => {
            return Err(SimError::Options(format!(
                "{bridge}: unsupported scheme {other:?} (expected http://host[:port] or https://host[:port])"
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

/// Dials: webhook, TwiML, (a pause of `stream_delay`), signed upgrade,
/// `connected`, `start`. Each network step is bounded by `timeout`.
pub(crate) async fn dial(
    bridge: &Url,
    transport: &Transport,
    auth_token: Option<&str>,
    sids: Sids,
    timeout: Duration,
    stream_delay: Duration,
    read_buffer: usize,
) -> Result<Opened, SimError> {
    let voice = voice_url(bridge)?;
    let answer = post_voice(&voice, transport, auth_token, &sids, timeout).await?;
    if !stream_delay.is_zero() {
        tokio::time::sleep(stream_delay).await;
    }
    open(answer, transport, auth_token, sids, timeout, read_buffer).await
}

/// Opens the stream a TwiML answer names: signed upgrade, `connected`,
/// `start` with its parameters. Used directly for an outbound call, whose
/// TwiML Twilio got in `Calls.json` rather than from a webhook.
pub(crate) async fn open(
    answer: Answer,
    transport: &Transport,
    auth_token: Option<&str>,
    sids: Sids,
    timeout: Duration,
    read_buffer: usize,
) -> Result<Opened, SimError> {
    let mut ws = connect_stream(
        &answer.stream_url,
        transport,
        auth_token,
        timeout,
        read_buffer,
    )
    .await?;
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
    transport: &Transport,
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
        let io = transport.connect(voice).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
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
    transport: &Transport,
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
    // Our own connection (TLS and --resolve included); the request keeps
    // the URL's host for the Host header.
    let connecting = async {
        let io = transport.connect(stream_url).await?;
        tokio_tungstenite::client_async_with_config(request, io, Some(config))
            .await
            .map_err(StreamError::Ws)
    };
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(SimError::Timeout(format!("opening {stream_url}"))),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(StreamError::Sim(e))) => Err(e),
        Ok(Err(StreamError::Ws(tungstenite::Error::Http(response)))) => {
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
        Ok(Err(StreamError::Ws(tungstenite::Error::Io(e)))) => Err(SimError::Unreachable {
            addr: stream_url.to_string(),
            reason: e.to_string(),
        }),
        Ok(Err(StreamError::Ws(e))) => Err(SimError::Stream(format!("{endpoint}: {e}"))),
    }
}

/// Opening the stream failed while connecting (already a [`SimError`]) or
/// in the WebSocket handshake.
enum StreamError {
    Sim(SimError),
    Ws(tungstenite::Error),
}

impl From<SimError> for StreamError {
    fn from(e: SimError) -> Self {
        StreamError::Sim(e)
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
        assert_eq!(u("https://h").unwrap(), "https://h/voice");
        assert!(u("ws://h").is_err());
        assert!(u("ftp://h").is_err());
    }

    #[test]
    fn resolve_values() {
        let r = |v: &str| parse_resolve(v);
        assert_eq!(
            r("Bridge.Example.com:203.0.113.5:443").unwrap(),
            Resolve {
                host: "bridge.example.com".into(),
                addr: ResolveAddr::Socket("203.0.113.5:443".parse().unwrap()),
            }
        );
        assert_eq!(
            r("h:[2001:db8::1]:8443").unwrap().addr,
            ResolveAddr::Socket("[2001:db8::1]:8443".parse().unwrap())
        );
        assert_eq!(
            r("h:127.0.0.1").unwrap().addr,
            ResolveAddr::Ip("127.0.0.1".parse().unwrap())
        );
        for bad in [
            "",
            "h",
            "h:",
            ":1.2.3.4:1",
            "h:443:1.2.3.4",
            "h:example.com:443",
            "h:1.2.3.4:x",
        ] {
            let e = r(bad).unwrap_err().to_string();
            assert!(
                e.contains("--resolve") && e.contains("HOST:ADDR"),
                "{bad}: {e}"
            );
        }
        let curl = r("h:443:1.2.3.4").unwrap_err().to_string();
        assert!(curl.contains("h:1.2.3.4:443"), "{curl}");
    }

    #[test]
    fn resolve_picks_the_address_and_keeps_the_port_otherwise() {
        let t = Transport::new(
            None,
            &[
                "bridge.example.com:127.0.0.1:9443".into(),
                "other.example.com:10.0.0.1".into(),
            ],
        )
        .unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            t.target(&url("https://bridge.example.com/voice")).unwrap(),
            ("127.0.0.1:9443".into(), true)
        );
        assert_eq!(
            t.target(&url("wss://BRIDGE.example.com:8443/media"))
                .unwrap(),
            ("127.0.0.1:9443".into(), true)
        );
        assert_eq!(
            t.target(&url("https://other.example.com:8443/")).unwrap(),
            ("10.0.0.1:8443".into(), true)
        );
        assert_eq!(
            t.target(&url("http://unlisted.example.com/")).unwrap(),
            ("unlisted.example.com:80".into(), false)
        );
        assert_eq!(
            t.target_port(&url("https://bridge.example.com/")),
            Some(9443)
        );
        assert_eq!(
            Transport::default()
                .target(&url("http://[::1]:8080/"))
                .unwrap(),
            ("[::1]:8080".into(), false)
        );
    }

    #[test]
    fn a_bad_ca_file_is_an_option_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = Transport::new(Some(&missing), &[]).unwrap_err().to_string();
        assert!(
            e.contains("--ca-file") && e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let not_pem = dir.path().join("key.txt");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let e = Transport::new(Some(&not_pem), &[]).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
