//! A fake Twilio, written from PROTOCOLS.md §1 alone (it shares no code with
//! the bridge): POSTs the signed voice webhook, reads the TwiML, opens the
//! signed Media Stream, sends `connected`, `start` and 20 ms μ-law frames in
//! real time, plays the bridge's audio in real time, echoes each `mark` only
//! once the audio queued before it has played, and on `clear` drops the queue
//! and echoes every pending mark at once.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const STREAM_SID: &str = "MZ0123456789abcdef0123456789abcdef";

/// Twilio's signature: base64(HMAC-SHA1(token, url + sorted name+value)).
pub fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

fn form_encode(params: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// POSTs `path` like Twilio does. `signature`: None = no header.
pub async fn post_form(
    addr: std::net::SocketAddr,
    path: &str,
    params: &[(&str, &str)],
    signature: Option<&str>,
) -> (u16, String) {
    let body = form_encode(params);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(sig) = signature {
        req.push_str(&format!("X-Twilio-Signature: {sig}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    http_roundtrip(addr, &req).await
}

pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_roundtrip(addr, &req).await
}

async fn http_roundtrip(addr: std::net::SocketAddr, req: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn voice_params(call_sid: &str) -> Vec<(&str, &str)> {
    vec![
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
    ]
}

/// Every `<Parameter name value>` of a TwiML document, unescaped, in order.
pub fn twiml_parameters(body: &str) -> Vec<(String, String)> {
    let unescape = |v: &str| {
        v.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    };
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find("<Parameter name=\"") {
        rest = &rest[at + "<Parameter name=\"".len()..];
        let Some(name_end) = rest.find('"') else {
            break;
        };
        let name = unescape(&rest[..name_end]);
        let Some(v) = rest.find("value=\"") else {
            break;
        };
        let value_start = v + "value=\"".len();
        let Some(value_len) = rest[value_start..].find('"') else {
            break;
        };
        out.push((name, unescape(&rest[value_start..value_start + value_len])));
        rest = &rest[value_start + value_len..];
    }
    out
}

/// The `<Stream url>` and token `<Parameter>` of a TwiML answer.
pub fn parse_twiml(body: &str) -> Option<(String, String)> {
    let attr = |tag_start: &str, name: &str| -> Option<String> {
        let at = body.find(tag_start)?;
        let rest = &body[at..];
        let key = format!("{name}=\"");
        let v = rest.find(&key)? + key.len();
        let end = rest[v..].find('"')?;
        Some(
            rest[v..v + end]
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'"),
        )
    };
    let url = attr("<Stream", "url")?;
    let token = attr("<Parameter name=\"token\"", "value")?;
    Some((url, token))
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens the stream; Err(status) when the upgrade is refused.
pub async fn open_stream(url: &str, signature: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(sig) = signature {
        req.headers_mut()
            .insert("x-twilio-signature", sig.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("stream connect failed: {e}"),
    }
}

#[derive(Clone, Debug)]
pub struct CallerScript {
    pub call_sid: String,
    pub token: String,
    /// μ-law 8 kHz, sent in 20 ms frames, then silence.
    pub audio: Vec<u8>,
    /// When this much answer audio has been heard, speak `bargein` over it.
    pub bargein: Option<(Duration, Vec<u8>)>,
    /// Total call length; then `stop` (or a bare close, see `hang_up`).
    pub duration: Duration,
    /// End with a socket close and no `stop`, like a dropped connection.
    pub hang_up: bool,
    /// Skip `start` (for the late-start test): send only `connected`.
    pub send_start: bool,
    /// Override `start.mediaFormat`.
    pub media_format: Option<Value>,
    /// Stop the call this long after answer audio is first heard.
    pub end_after_first_answer: Option<Duration>,
    /// Keypad digits pressed, each at this long after the stream started.
    pub dtmf: Vec<(Duration, String)>,
    /// More `start.customParameters` beside the token (an outbound call's
    /// `ref`, `profile`, numbers), as the TwiML's `<Parameter>`s give them.
    pub params: Vec<(String, String)>,
}

impl CallerScript {
    pub fn new(call_sid: &str, token: &str, audio: Vec<u8>, duration: Duration) -> Self {
        CallerScript {
            call_sid: call_sid.into(),
            token: token.into(),
            audio,
            bargein: None,
            duration,
            hang_up: false,
            send_start: true,
            media_format: None,
            end_after_first_answer: None,
            dtmf: Vec::new(),
            params: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
pub struct CallerLog {
    /// Every message the bridge sent, with its arrival time.
    pub received: Vec<(Instant, Value)>,
    pub heard_ms: u64,
    pub received_ms: u64,
    pub first_answer_at: Option<Instant>,
    pub bargein_at: Option<Instant>,
    pub clears: Vec<Instant>,
    /// Answer audio heard, and received, when each `clear` arrived (ms).
    pub heard_at_clear: Vec<u64>,
    pub received_at_clear: Vec<u64>,
    pub marks_echoed: Vec<String>,
    pub close_code: Option<u16>,
    /// When the bridge closed the stream (before the caller sent `stop`).
    pub closed_at: Option<Instant>,
    /// Answer audio still queued for playing when the bridge closed (ms).
    pub unplayed_at_close_ms: u64,
    /// Non-text frames from the bridge (Twilio treats them as errors).
    pub binary_frames: u32,
}

impl CallerLog {
    pub fn media_between(&self, from: Instant, to: Instant) -> usize {
        self.received
            .iter()
            .filter(|(t, v)| *t > from && *t < to && v["event"] == "media")
            .count()
    }
}

async fn send(ws: &mut Ws, v: Value) {
    let _ = ws.send(Message::Text(v.to_string().into())).await;
}

enum Queued {
    Audio(Vec<u8>),
    Mark(String),
}

/// Plays one call over an open stream.
pub async fn run_caller(mut ws: Ws, script: CallerScript) -> CallerLog {
    let mut log = CallerLog::default();
    let mut seq = 1u64;
    send(
        &mut ws,
        json!({"event":"connected","protocol":"Call","version":"1.0.0"}),
    )
    .await;
    if script.send_start {
        let format = script
            .media_format
            .clone()
            .unwrap_or(json!({"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}));
        let mut custom = serde_json::Map::new();
        for (name, value) in &script.params {
            custom.insert(name.clone(), Value::String(value.clone()));
        }
        custom.insert("token".into(), Value::String(script.token.clone()));
        send(
            &mut ws,
            json!({"event":"start","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,
                   "start":{"accountSid":ACCOUNT_SID,"streamSid":STREAM_SID,"callSid":script.call_sid,
                            "tracks":["inbound"],"mediaFormat":format,
                            "customParameters":custom}}),
        )
        .await;
        seq += 1;
    }
    let started = Instant::now();
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut frame_no = 0u64;
    let mut sending: Vec<u8> = script.audio.clone();
    let mut pos = 0usize;
    let mut barged = false;
    let mut dtmf = script.dtmf.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                if now.duration_since(started) >= script.duration
                    || script.end_after_first_answer.zip(log.first_answer_at).is_some_and(|(d, t)| now.duration_since(t) >= d)
                {
                    break;
                }
                while let Some(pos) = dtmf.iter().position(|(at, _)| now.duration_since(started) >= *at) {
                    let (_, digit) = dtmf.remove(pos);
                    send(&mut ws, json!({"event":"dtmf","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,"dtmf":{"track":"inbound_track","digit":digit}})).await;
                    seq += 1;
                }
                if let Some((after, audio)) = &script.bargein {
                    if !barged && log.heard_ms >= after.as_millis() as u64 {
                        barged = true;
                        sending = audio.clone();
                        pos = 0;
                        log.bargein_at = Some(now);
                    }
                }
                let mut frame = [0xFFu8; 160];
                if pos < sending.len() {
                    let n = (sending.len() - pos).min(160);
                    frame[..n].copy_from_slice(&sending[pos..pos + n]);
                    pos += n;
                }
                if script.send_start {
                    send(&mut ws, json!({"event":"media","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,
                        "media":{"track":"inbound","chunk":(frame_no + 1).to_string(),"timestamp":(frame_no * 20).to_string(),"payload":B64.encode(frame)}})).await;
                    seq += 1;
                }
                frame_no += 1;
                // Play 20 ms of what the bridge queued, echoing marks as reached.
                let mut budget = 160usize;
                loop {
                    match queue.front_mut() {
                        Some(Queued::Mark(_)) => {
                            if let Some(Queued::Mark(name)) = queue.pop_front() {
                                send(&mut ws, json!({"event":"mark","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,"mark":{"name":name}})).await;
                                seq += 1;
                                log.marks_echoed.push(name);
                            }
                        }
                        Some(Queued::Audio(a)) if budget > 0 => {
                            let n = a.len().min(budget);
                            a.drain(..n);
                            budget -= n;
                            log.heard_ms += (n / 8) as u64;
                            if a.is_empty() { queue.pop_front(); }
                        }
                        _ => break,
                    }
                }
            }
            msg = ws.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        match v["event"].as_str() {
                            Some("media") => {
                                let bytes = v["media"]["payload"].as_str().and_then(|p| B64.decode(p).ok()).unwrap_or_default();
                                if log.first_answer_at.is_none() { log.first_answer_at = Some(now); }
                                log.received_ms += (bytes.len() / 8) as u64;
                                queue.push_back(Queued::Audio(bytes));
                            }
                            Some("mark") => {
                                let name = v["mark"]["name"].as_str().unwrap_or("").to_owned();
                                if queue.is_empty() {
                                    send(&mut ws, json!({"event":"mark","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,"mark":{"name":name}})).await;
                                    seq += 1;
                                    log.marks_echoed.push(name);
                                } else {
                                    queue.push_back(Queued::Mark(name));
                                }
                            }
                            Some("clear") => {
                                log.clears.push(now);
                                log.heard_at_clear.push(log.heard_ms);
                                log.received_at_clear.push(log.received_ms);
                                for q in std::mem::take(&mut queue) {
                                    if let Queued::Mark(name) = q {
                                        send(&mut ws, json!({"event":"mark","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,"mark":{"name":name}})).await;
                                        seq += 1;
                                        log.marks_echoed.push(name);
                                    }
                                }
                            }
                            _ => {}
                        }
                        log.received.push((now, v));
                    }
                    Some(Ok(Message::Binary(_))) => log.binary_frames += 1,
                    Some(Ok(Message::Close(frame))) => {
                        log.close_code = frame.map(|f| u16::from(f.code));
                        log.closed_at = Some(now);
                        log.unplayed_at_close_ms = queue
                            .iter()
                            .map(|q| match q {
                                Queued::Audio(a) => (a.len() / 8) as u64,
                                Queued::Mark(_) => 0,
                            })
                            .sum();
                        return log;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return log,
                }
            }
        }
    }
    if script.hang_up {
        drop(ws);
        return log;
    }
    send(&mut ws, json!({"event":"stop","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,"stop":{"accountSid":ACCOUNT_SID,"callSid":script.call_sid}})).await;
    // Wait (bounded) for the bridge to close.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(frame) = m {
                log.close_code = frame.map(|f| u16::from(f.code));
                break;
            }
        }
    })
    .await;
    log
}
