//! A fake OpenAI GPT-Live server, written from /work/shared/GPT-LIVE.md alone
//! (it shares no code with the bridge). It records the upgrade request and
//! every client event, insists on `session.start` first and rejects unknown
//! or Realtime-only keys, detects caller turns by the energy of appended
//! audio, answers in the session's own format with transcript fragments and
//! ID-less audio deltas, yields by itself when talked over, runs the
//! `response.event` delegation round trip, and ends with `session.closed`.
//! Events the service does not have (`response.cancel`,
//! `conversation.item.truncate`, any Realtime event) get an `error`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What the model says after `session.commentary.append` (§6: it speaks the
/// commentary in its own words).
pub const GREETING: &str = "Hi, Acme support. How can I help?";
/// What it says after an ordinary caller turn.
pub const ANSWER: &str = "Sure, I can help with that.";
/// What every caller turn is transcribed as (`session.input_transcript.delta`).
pub const CALLER: &str = " Where is my order 123?";
/// Prefix of the spoken answer after a tool batch; the outputs follow it.
pub const TOOL_ANSWER: &str = "Good news:";

/// `session.start` keys the service knows (§2); anything else is
/// `unknown_parameter`, which is how Realtime-only keys fail startup.
const SESSION_KEYS: &[&str] = &[
    "model",
    "instructions",
    "audio",
    "delegation",
    "input",
    "store",
    "safety_identifier",
    "triggers",
];

/// What the fake does beyond the protocol's defaults.
#[derive(Clone, Debug)]
pub struct Script {
    /// Length of each spoken answer, in ms of audio.
    pub answer_ms: u32,
    /// Answer audio is sent this many times faster than real time (1 = real
    /// time, which is what the real service does, §4).
    pub speedup: u32,
    /// Trailing silence that ends a caller turn.
    pub silence_ms: u32,
    /// When the caller talks over an answer, the model stops sending that
    /// answer this long after the speech began (§5: it yields by itself, with
    /// no event). `None`: it ignores the caller, as it may for "mhm".
    pub yield_after_ms: Option<u32>,
    /// Delay before `session.started`; audio arriving in that window is a
    /// violation counted in `Record::audio_before_started` (§3).
    pub start_delay_ms: u32,
    /// `session.started` echoes this format instead of the one asked for,
    /// and the fake then talks it (§2: the bridge must check the echo).
    pub echo_format: Option<Value>,
    /// Answer `session.start` with an `error` of this code (e.g.
    /// `invalid_api_key`, `unknown_parameter`) and close.
    pub start_error: Option<String>,
    /// After the caller's first turn, delegate to the backend, which calls
    /// this function `(name, arguments JSON string)` (§6).
    pub function_call: Option<(String, String)>,
    /// The backend response carries two calls (`call_1`, `call_2`), so the
    /// bridge must batch both outputs before `response.create`.
    pub two_calls: bool,
    /// Send `session.usage.updated` after every answer (§7; the real
    /// service sends it about once a minute).
    pub usage_after_answer: bool,
    /// Answer `session.close` with `session.closed`; `false` leaves the
    /// bridge to its bounded wait.
    pub answer_close: bool,
    /// Drop the TCP connection (no close frame, no `session.closed`) on
    /// receiving this many client events.
    pub drop_after_events: Option<usize>,
    /// Sent right after `session.started` (e.g. an `info`).
    pub after_start: Vec<Value>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            answer_ms: 2000,
            speedup: 4,
            silence_ms: 500,
            yield_after_ms: Some(200),
            start_delay_ms: 0,
            echo_format: None,
            start_error: None,
            function_call: None,
            two_calls: false,
            usage_after_answer: true,
            answer_close: true,
            drop_after_events: None,
            after_start: Vec::new(),
        }
    }
}

/// One spoken answer.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// The whole text the model meant to say.
    pub text: String,
    /// The transcript fragments actually sent.
    pub spoken: String,
    /// ms of audio sent.
    pub sent_ms: u32,
    /// Stopped early because the caller talked over it.
    pub yielded: bool,
    /// Sent to the end.
    pub completed: bool,
}

/// Everything the fake saw, shared with the test.
#[derive(Default, Debug)]
pub struct Record {
    pub sessions: u32,
    /// Upgrade request path, query and headers, one entry per connection.
    pub paths: Vec<String>,
    pub queries: Vec<Option<String>>,
    pub headers: Vec<Vec<(String, String)>>,
    /// Client events in arrival order (all sessions).
    pub client_events: Vec<Value>,
    /// ms of input audio received after `session.started`.
    pub input_ms: f64,
    /// `session.input_audio.append` events received before `session.started`.
    pub audio_before_started: u32,
    pub answers: Vec<Answer>,
    /// Every `error` event sent (without its event_id).
    pub errors: Vec<Value>,
    /// Types of client events refused with an `error` (unknown events such
    /// as `response.cancel`, a first frame other than `session.start`, ...).
    pub rejected: Vec<String>,
    /// `(call_id, output)` of accepted function_call_outputs.
    pub tool_outputs: Vec<(String, String)>,
    /// `response.create`s that continued a complete batch.
    pub continuations: u32,
    /// `response.create`s refused because outputs were missing.
    pub partial_batches: u32,
    /// `usage.seconds` of each `session.usage.updated` sent.
    pub usage_seconds: Vec<u64>,
    pub close_requests: u32,
    pub closed_sent: u32,
    pub closed_by_client: u32,
    pub dropped: u32,
}

pub struct FakeLive {
    pub addr: SocketAddr,
    pub record: Arc<Mutex<Record>>,
}

impl FakeLive {
    pub async fn start(script: Script) -> FakeLive {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let rec = record.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (rec, script) = (rec.clone(), script.clone());
                tokio::spawn(async move { connection(tcp, rec, script).await });
            }
        });
        FakeLive { addr, record }
    }

    /// The OpenAI endpoint (§1); the fake accepts any path and records it.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/live/sessions", self.addr)
    }

    /// The Azure (Foundry) endpoint.
    pub fn azure_url(&self) -> String {
        format!("ws://{}/openai/v1/live/sessions", self.addr)
    }

    pub fn events(&self) -> Vec<Value> {
        self.record.lock().unwrap().client_events.clone()
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// A request header of the latest connection (names are lower case).
    pub fn header(&self, name: &str) -> Option<String> {
        let r = self.record.lock().unwrap();
        let h = r.headers.last()?;
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// ms of answer audio sent before each yield.
    pub fn yields(&self) -> Vec<u32> {
        let r = self.record.lock().unwrap();
        r.answers
            .iter()
            .filter(|a| a.yielded)
            .map(|a| a.sent_ms)
            .collect()
    }

    /// Writes the client events to target/conformance/<test>.live.jsonl for
    /// conformance/check_client_events.py, as `save_client_events` does for
    /// the Realtime dialects.
    pub fn write_conformance(&self, test: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/conformance");
        std::fs::create_dir_all(&dir).unwrap();
        let body: String = self.events().iter().map(|e| format!("{e}\n")).collect();
        std::fs::write(dir.join(format!("{test}.live.jsonl")), body).unwrap();
    }
}

/// The classic G.711 μ-law expansion and compression, written out here
/// independently of the bridge.
fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let t = ((((u & 0x0f) as i32) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

fn linear_to_ulaw(sample: i16) -> u8 {
    let sign = if sample < 0 { 0x80 } else { 0 };
    let pcm = (sample as i32).abs().min(32635) + 0x84;
    let exp = (0..8).rev().find(|e| pcm & (0x80 << e) != 0).unwrap_or(0);
    let mant = (pcm >> (exp + 3)) & 0x0f;
    !(sign | (exp << 4) | mant) as u8
}

/// G.711 A-law, likewise.
fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let seg = (a & 0x70) >> 4;
    let t = ((a & 0x0f) as i32) << 4;
    let t = match seg {
        0 => t + 8,
        _ => (t + 0x108) << (seg - 1),
    };
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

fn linear_to_alaw(sample: i16) -> u8 {
    let pcm = (sample as i32) >> 3;
    let (mask, pcm) = if pcm >= 0 {
        (0xd5, pcm)
    } else {
        (0x55, -pcm - 1)
    };
    let seg = (0..8).find(|s| pcm < (0x20 << s));
    let aval = match seg {
        None => 0x7f,
        Some(s) => (s << 4) | ((pcm >> if s < 2 { 1 } else { s }) & 0x0f),
    };
    (aval ^ mask) as u8
}

/// The session's one audio format, for both directions (§2).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Format {
    Pcm(u32),
    Ulaw,
    Alaw,
}

impl Format {
    fn parse(f: &Value) -> Option<Format> {
        match (f["type"].as_str()?, f["rate"].as_u64()) {
            ("audio/pcmu", Some(8000)) => Some(Format::Ulaw),
            ("audio/pcma", Some(8000) | None) => Some(Format::Alaw),
            ("audio/pcm", None) => Some(Format::Pcm(24000)),
            ("audio/pcm", Some(r @ (16000 | 24000))) => Some(Format::Pcm(r as u32)),
            _ => None,
        }
    }

    fn rate(self) -> u32 {
        if let Format::Pcm(r) = self {
            r
        } else {
            8000
        }
    }

    fn decode(self, b: &[u8]) -> Vec<i16> {
        match self {
            Format::Ulaw => b.iter().map(|&c| ulaw_to_linear(c)).collect(),
            Format::Alaw => b.iter().map(|&c| alaw_to_linear(c)).collect(),
            Format::Pcm(_) => b
                .chunks_exact(2)
                .map(|p| i16::from_le_bytes([p[0], p[1]]))
                .collect(),
        }
    }

    /// A 440 Hz tone of `ms` milliseconds, continuing phase from `offset_ms`.
    fn tone(self, ms: u32, offset_ms: u32) -> Vec<u8> {
        let rate = self.rate() as usize;
        let start = rate * offset_ms as usize / 1000;
        let n = rate * ms as usize / 1000;
        let samples = (start..start + n).map(|i| {
            ((i as f64 * 440.0 * std::f64::consts::TAU / rate as f64).sin() * 8000.0) as i16
        });
        match self {
            Format::Ulaw => samples.map(linear_to_ulaw).collect(),
            Format::Alaw => samples.map(linear_to_alaw).collect(),
            Format::Pcm(_) => samples.flat_map(i16::to_le_bytes).collect(),
        }
    }
}

/// A startup rejection: (code, param, message).
type Reject = (&'static str, String, String);

fn fail(code: &'static str, param: &str) -> Reject {
    let what = match code {
        "unknown_parameter" => "Unknown parameter",
        "missing_required_parameter" => "Missing required parameter",
        _ => "Invalid value for",
    };
    (code, param.to_owned(), format!("{what}: '{param}'."))
}

fn check_keys(obj: &Value, allowed: &[&str], prefix: &str) -> Result<(), Reject> {
    let bad = obj.as_object().into_iter().flatten().map(|(k, _)| k);
    match bad.into_iter().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(fail("unknown_parameter", &format!("{prefix}{k}"))),
        None => Ok(()),
    }
}

/// Validates `session.start.session` strictly (§2) and returns the format.
fn validate_start(sess: &Value) -> Result<Value, Reject> {
    let req = |p: &str| fail("missing_required_parameter", p);
    let bad = |p: &str| fail("invalid_value", p);
    if !sess.is_object() {
        return Err(req("session"));
    }
    check_keys(sess, SESSION_KEYS, "session.")?;
    if !sess["model"].is_string() {
        return Err(req("session.model"));
    }
    let audio = &sess["audio"];
    check_keys(audio, &["format", "output"], "session.audio.")?;
    check_keys(&audio["output"], &["voice"], "session.audio.output.")?;
    let format = &audio["format"];
    check_keys(format, &["type", "rate"], "session.audio.format.")?;
    let format = if format.is_null() {
        json!({"type":"audio/pcm","rate":24000})
    } else if !matches!(
        format["type"].as_str(),
        Some("audio/pcm" | "audio/pcmu" | "audio/pcma")
    ) {
        return Err(bad("session.audio.format.type"));
    } else if format["type"] == "audio/pcmu" && format["rate"].is_null() {
        return Err(req("session.audio.format.rate"));
    } else if Format::parse(format).is_none() {
        return Err(bad("session.audio.format.rate"));
    } else {
        format.clone()
    };
    let d = &sess["delegation"];
    if !d.is_null()
        && !matches!(
            d["type"].as_str(),
            Some("client" | "responses" | "decisions")
        )
    {
        return Err(bad("session.delegation.type"));
    }
    Ok(format)
}

/// Keys each client event may carry besides `type` and `event_id` (`["*"]`:
/// any); `None`: the service has no such event (§9: `response.cancel`,
/// `conversation.item.truncate`, `input_audio_buffer.*`, ...).
fn event_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "session.start" | "session.update" => &["session"],
        "session.input_audio.append" => &["audio"],
        "session.commentary.append" | "session.thinking.append" | "session.instructions.append" => {
            &["content", "delegation_id"]
        }
        "response.item.create" => &["item"],
        "response.create" => &["response"],
        "session.input_audio.mute" | "session.input_audio.unmute" | "session.close" => &[],
        // Documented, not modelled: accepted and ignored.
        "session.output_audio.fixture.play"
        | "decision.create"
        | "decision.item.create"
        | "decision.item.delete" => &["*"],
        _ => return None,
    })
}

const RUNNING: u8 = 0;
const YIELD: u8 = 1;
const STOP: u8 = 2;
const DONE: u8 = 3;

enum Flow {
    Continue,
    Close,
    Drop,
    Gone,
}

struct Session {
    out: mpsc::UnboundedSender<Value>,
    rec: Arc<Mutex<Record>>,
    script: Script,
    id: String,
    start_seen: bool,
    started: Arc<AtomicBool>,
    started_at: Instant,
    closing: bool,
    snapshot: Value,
    format: Format,
    muted: bool,
    /// The session timeline: ms of input audio so far.
    input_ms: f64,
    speaking: bool,
    loud_run_ms: f64,
    quiet_run_ms: f64,
    speech_start_ms: f64,
    answer: Option<Arc<AtomicU8>>,
    delegated: bool,
    pending_calls: Vec<String>,
    outputs: Vec<String>,
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn connection(tcp: TcpStream, rec: Arc<Mutex<Record>>, script: Script) {
    let seen = Arc::new(Mutex::new((String::new(), None, Vec::new())));
    let s2 = seen.clone();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
        let headers = req.headers().iter();
        *s2.lock().unwrap() = (
            req.uri().path().to_owned(),
            req.uri().query().map(str::to_owned),
            headers
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
        );
        Ok(resp)
    })
    .await;
    let Ok(ws) = ws else { return };
    let n = {
        let (path, query, headers) = seen.lock().unwrap().clone();
        let mut r = rec.lock().unwrap();
        r.sessions += 1;
        r.paths.push(path);
        r.queries.push(query);
        r.headers.push(headers);
        r.sessions
    };
    let (mut tx, mut rx) = ws.split();
    // One channel for all server events, so that answer tasks and the reader
    // interleave like a real server's single socket.
    let (out, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(mut ev) = out_rx.recv().await {
            // Audio deltas carry no event_id (§4).
            if ev["type"] != "session.output_audio.delta" {
                n += 1;
                ev["event_id"] = json!(format!("ev_{n}"));
            }
            if tx.send(Message::Text(ev.to_string().into())).await.is_err() {
                break;
            }
        }
        let _ = tx.close().await;
    });
    let mut s = Session {
        out,
        rec: rec.clone(),
        script: script.clone(),
        id: format!("live_{n}"),
        start_seen: false,
        started: Arc::new(AtomicBool::new(false)),
        started_at: Instant::now(),
        closing: false,
        snapshot: Value::Null,
        format: Format::Pcm(24000),
        muted: false,
        input_ms: 0.0,
        speaking: false,
        loud_run_ms: 0.0,
        quiet_run_ms: 0.0,
        speech_start_ms: 0.0,
        answer: None,
        delegated: false,
        pending_calls: Vec::new(),
        outputs: Vec::new(),
    };
    let mut count = 0usize;
    let flow = loop {
        let text = match rx.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_)) | Err(_)) | None => break Flow::Gone,
            Some(Ok(_)) => continue,
        };
        let Ok(ev) = serde_json::from_str::<Value>(&text) else {
            s.error("invalid_json", "Invalid JSON.".into(), None, &Value::Null);
            continue;
        };
        rec.lock().unwrap().client_events.push(ev.clone());
        count += 1;
        if script.drop_after_events == Some(count) {
            break Flow::Drop;
        }
        if let flow @ (Flow::Close | Flow::Drop | Flow::Gone) = s.handle(&ev) {
            break flow;
        }
    };
    s.stop_answer(STOP);
    drop(s);
    match flow {
        Flow::Drop => {
            // No close frame: the TCP connection just goes away.
            rec.lock().unwrap().dropped += 1;
            writer.abort();
            return;
        }
        Flow::Gone => rec.lock().unwrap().closed_by_client += 1,
        Flow::Close | Flow::Continue => {}
    }
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        eprintln!("fake_live: writer did not finish");
    }
}

impl Session {
    fn send(&self, ev: Value) {
        let _ = self.out.send(ev);
    }

    fn error(&self, code: &str, message: String, param: Option<String>, client_event_id: &Value) {
        let ev = json!({"type":"error","error":{"type":"invalid_request_error","code":code,
            "message":message,"param":param,"client_event_id":client_event_id}});
        self.rec.lock().unwrap().errors.push(ev.clone());
        self.send(ev);
    }

    fn reject(&self, kind: &str, code: &str, message: String, param: Option<String>, id: &Value) {
        self.rec.lock().unwrap().rejected.push(kind.to_owned());
        self.error(code, message, param, id);
    }

    fn handle(&mut self, ev: &Value) -> Flow {
        let kind = ev["type"].as_str().unwrap_or("");
        let id = ev.get("event_id").cloned().unwrap_or(Value::Null);
        // A refused event ends a session that never started (§2: start first).
        let refused = if self.start_seen {
            Flow::Continue
        } else {
            Flow::Close
        };
        let Some(keys) = event_keys(kind) else {
            let msg =
                format!("Invalid value: '{kind}'. Supported values are GPT-Live client events.");
            self.reject(kind, "invalid_value", msg, Some("type".into()), &id);
            return refused;
        };
        if !self.start_seen && kind != "session.start" {
            let msg = "The first event must be session.start.".to_owned();
            self.reject(kind, "invalid_event", msg, Some("type".into()), &id);
            return Flow::Close;
        }
        if keys != ["*"] {
            let mut allowed = vec!["type", "event_id"];
            allowed.extend_from_slice(keys);
            if let Err((code, param, msg)) = check_keys(ev, &allowed, "") {
                self.reject(kind, code, msg, Some(param), &id);
                return refused;
            }
        }
        if self.closing {
            return Flow::Continue; // stopped taking new work (§7)
        }
        match kind {
            "session.start" if self.start_seen => {
                let msg = "The session has already started.".to_owned();
                self.reject(kind, "session_already_started", msg, None, &id);
            }
            "session.start" => return self.start(&ev["session"], &id),
            "session.update" => self.update(&ev["session"], &id),
            "session.input_audio.append" => self.audio(ev, &id),
            "session.input_audio.mute" | "session.input_audio.unmute" => {
                self.muted = kind.ends_with(".mute");
                let ack = if self.muted { "muted" } else { "unmuted" };
                self.send(
                    json!({"type":format!("session.input_audio.{ack}"),"client_event_id":id}),
                );
            }
            "session.commentary.append"
            | "session.thinking.append"
            | "session.instructions.append" => self.append(kind, ev, &id),
            "response.item.create" => self.item(&ev["item"], &id),
            "response.create" => self.continue_backend(&id),
            "session.close" => return self.close(&id),
            _ => {}
        }
        Flow::Continue
    }

    fn start(&mut self, sess: &Value, id: &Value) -> Flow {
        self.start_seen = true;
        if let Some(code) = &self.script.start_error {
            self.error(code, format!("Scripted startup error: {code}."), None, id);
            return Flow::Close;
        }
        let asked = match validate_start(sess) {
            Ok(f) => f,
            Err((code, param, msg)) => {
                self.error(code, msg, Some(param), id);
                return Flow::Close;
            }
        };
        let format = self.script.echo_format.clone().unwrap_or(asked);
        self.format = Format::parse(&format).unwrap_or(Format::Pcm(24000));
        let voice = sess["audio"]["output"]["voice"].clone();
        let delegation = match &sess["delegation"] {
            Value::Null => json!({"type":"client"}),
            d => d.clone(),
        };
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        self.snapshot = json!({"id":self.id,"expires_at":expires,"status":"active",
            "model":sess["model"],"audio":{"format":format,
            "output":{"voice":if voice.is_null() { json!("marin") } else { voice }}},
            "delegation":delegation});
        if !sess["instructions"].is_null() {
            self.snapshot["instructions"] = sess["instructions"].clone();
        }
        self.started_at = Instant::now();
        let (started, out) = (self.started.clone(), self.out.clone());
        let mut events =
            vec![json!({"type":"session.started","client_event_id":id,"session":self.snapshot})];
        events.extend(self.script.after_start.iter().cloned());
        let go = move || {
            started.store(true, SeqCst);
            events.into_iter().for_each(|e| drop(out.send(e)));
        };
        match self.script.start_delay_ms {
            0 => go(),
            ms => drop(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms as u64)).await;
                go()
            })),
        }
        Flow::Continue
    }

    /// Mid-call update: only `delegation` (same type) and `triggers` (§2).
    fn update(&mut self, sess: &Value, id: &Value) {
        if let Err((code, param, msg)) = check_keys(sess, &["delegation", "triggers"], "session.") {
            return self.error(code, msg, Some(param), id);
        }
        let d = &sess["delegation"];
        if !d.is_null() && d["type"] != self.snapshot["delegation"]["type"] {
            let p = "session.delegation.type";
            return self.error(
                "invalid_value",
                format!("'{p}' is immutable."),
                Some(p.into()),
                id,
            );
        }
        for k in ["delegation", "triggers"] {
            if !sess[k].is_null() {
                self.snapshot[k] = sess[k].clone();
            }
        }
        self.send(json!({"type":"session.updated","client_event_id":id,"session":self.snapshot}));
    }

    fn audio(&mut self, ev: &Value, id: &Value) {
        let Some(bytes) = ev["audio"].as_str().and_then(|a| B64.decode(a).ok()) else {
            let msg = "Invalid audio: not base64.".to_owned();
            return self.error("invalid_audio", msg, Some("audio".into()), id);
        };
        if !self.started.load(SeqCst) {
            self.rec.lock().unwrap().audio_before_started += 1;
            return;
        }
        let samples = self.format.decode(&bytes);
        if samples.is_empty() {
            return;
        }
        let ms = samples.len() as f64 * 1000.0 / self.format.rate() as f64;
        let power = samples.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        let rms = (power / samples.len() as f64).sqrt();
        self.input_ms += ms;
        self.rec.lock().unwrap().input_ms += ms;
        // -40 dBFS: well above μ-law silence, well below speech. Muted
        // input is heard as silence (§3).
        if !self.muted && rms > 328.0 {
            self.loud_run_ms += ms;
            self.quiet_run_ms = 0.0;
        } else {
            self.quiet_run_ms += ms;
            self.loud_run_ms = 0.0;
        }
        if !self.speaking && self.loud_run_ms >= 60.0 {
            self.speaking = true;
            self.speech_start_ms = self.input_ms - self.loud_run_ms;
            if let (Some(a), Some(after)) = (self.running(), self.script.yield_after_ms) {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after as u64)).await;
                    let _ = a.compare_exchange(RUNNING, YIELD, SeqCst, SeqCst);
                });
            }
        } else if self.speaking && self.quiet_run_ms >= self.script.silence_ms as f64 {
            self.speaking = false;
            let end = (self.input_ms - self.quiet_run_ms) as u64;
            self.send(
                json!({"type":"session.input_transcript.delta","delta":CALLER,
                "start_ms":self.speech_start_ms as u64,"end_ms":end}),
            );
            self.turn_ended();
        }
    }

    fn running(&self) -> Option<Arc<AtomicU8>> {
        self.answer.clone().filter(|a| a.load(SeqCst) == RUNNING)
    }

    fn stop_answer(&mut self, how: u8) {
        if let Some(a) = self.answer.take() {
            let _ = a.compare_exchange(RUNNING, how, SeqCst, SeqCst);
        }
    }

    fn turn_ended(&mut self) {
        if self.running().is_some() {
            return; // talked over without making the model yield: no new answer
        }
        match self.script.function_call.clone() {
            Some((name, args)) if !self.delegated => self.delegate(&name, &args),
            _ => self.speak(ANSWER.to_owned()),
        }
    }

    fn backend(&self, event: Value) {
        self.send(json!({"type":"response.event","delegation_id":"dlg_1","event":event}));
    }

    /// §6 steps 1–2: a backend response whose function calls appear only as
    /// nested `response.output_item.done`; `response.completed` has none.
    fn delegate(&mut self, name: &str, args: &str) {
        self.delegated = true;
        self.send(json!({"type":"session.delegation.created","offset_ms":self.input_ms as u64,
            "delegation":{"id":"dlg_1","type":"delegation","target":"responses","response_id":"resp_1"}}));
        self.backend(
            json!({"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}),
        );
        let n = if self.script.two_calls { 2 } else { 1 };
        self.pending_calls = (1..=n).map(|i| format!("call_{i}")).collect();
        for i in 1..=n {
            self.backend(
                json!({"type":"response.output_item.done","output_index":i - 1,"item":{
                "type":"function_call","id":format!("fc_{i}"),"call_id":format!("call_{i}"),
                "name":name,"arguments":args,"status":"completed"}}),
            );
        }
        self.backend(json!({"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[]}}));
    }

    fn item(&mut self, item: &Value, id: &Value) {
        match item["type"].as_str() {
            Some("function_call_output") => {}
            Some("message") => return, // context for the backend; nothing to do
            _ => {
                let msg = "Invalid value for 'item.type'.".to_owned();
                return self.error("invalid_value", msg, Some("item.type".into()), id);
            }
        }
        let (Some(call), Some(output)) = (item["call_id"].as_str(), item["output"].as_str()) else {
            let msg = "function_call_output needs call_id and a string output.".to_owned();
            return self.error("invalid_value", msg, Some("item.output".into()), id);
        };
        if !self.pending_calls.iter().any(|c| c == call) {
            let msg = format!("No pending function call '{call}'.");
            return self.error("invalid_value", msg, Some("item.call_id".into()), id);
        }
        self.pending_calls.retain(|c| c != call);
        self.outputs.push(output.to_owned());
        let mut r = self.rec.lock().unwrap();
        r.tool_outputs.push((call.to_owned(), output.to_owned()));
    }

    /// §6 step 3: `response.create` continues the backend, only once every
    /// call of the batch has its output.
    fn continue_backend(&mut self, id: &Value) {
        if !self.pending_calls.is_empty() {
            self.rec.lock().unwrap().partial_batches += 1;
            let msg = format!(
                "Missing function_call_output for {}.",
                self.pending_calls.join(", ")
            );
            return self.error("incomplete_function_call_outputs", msg, None, id);
        }
        if self.outputs.is_empty() {
            return; // nothing to continue; a real backend would start a run
        }
        self.rec.lock().unwrap().continuations += 1;
        let text = std::mem::take(&mut self.outputs).join(" ");
        self.backend(
            json!({"type":"response.created","response":{"id":"resp_2","status":"in_progress"}}),
        );
        self.backend(json!({"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":text}));
        self.backend(json!({"type":"response.completed","response":{"id":"resp_2","status":"completed","output":[]}}));
        self.speak(format!("{TOOL_ANSWER} {text}"));
    }

    fn append(&mut self, kind: &str, ev: &Value, id: &Value) {
        if !ev["content"].is_string() || ev.get("delegation_id").is_none() {
            let p = if ev["content"].is_string() {
                "delegation_id"
            } else {
                "content"
            };
            let msg = format!("Missing required parameter: '{p}'.");
            return self.error("missing_required_parameter", msg, Some(p.into()), id);
        }
        if !ev["delegation_id"].is_null() && self.snapshot["delegation"]["type"] == "responses" {
            let msg = "delegation_id must be null with responses delegation.".to_owned();
            return self.error("invalid_value", msg, Some("delegation_id".into()), id);
        }
        let t = self.input_ms as u64;
        let ack = kind.replace(".append", ".appended");
        self.send(json!({"type":ack,"client_event_id":id,"start_ms":t,"end_ms":t}));
        if kind == "session.commentary.append" {
            self.speak(GREETING.to_owned());
        }
    }

    fn close(&mut self, id: &Value) -> Flow {
        self.rec.lock().unwrap().close_requests += 1;
        self.closing = true;
        if !self.script.answer_close {
            return Flow::Continue;
        }
        self.stop_answer(STOP);
        let seconds = usage(self.started_at);
        let mut session = self.snapshot.clone();
        session["status"] = json!("closed");
        self.send(
            json!({"type":"session.closed","client_event_id":id,"reason":"close_requested",
            "session":session,"usage":{"seconds":seconds}}),
        );
        self.rec.lock().unwrap().closed_sent += 1;
        Flow::Close
    }

    /// Speaks `text`: transcript fragments spread over `answer_ms` of tone,
    /// in deltas of varying sizes, paced at `speedup` × real time.
    fn speak(&mut self, text: String) {
        self.stop_answer(STOP);
        let state = Arc::new(AtomicU8::new(RUNNING));
        self.answer = Some(state.clone());
        let idx = {
            let mut r = self.rec.lock().unwrap();
            r.answers.push(Answer {
                text: text.clone(),
                ..Answer::default()
            });
            r.answers.len() - 1
        };
        let (out, rec, format, t0) = (
            self.out.clone(),
            self.rec.clone(),
            self.format,
            self.input_ms as u32,
        );
        let (total, speedup) = (self.script.answer_ms.max(1), self.script.speedup.max(1));
        let (usage_after, started_at) = (self.script.usage_after_answer, self.started_at);
        tokio::spawn(async move {
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            let mut next = 0;
            let fragment = |next: &mut usize, at: u32, end: u32| {
                let delta = words[*next];
                *next += 1;
                rec.lock().unwrap().answers[idx].spoken.push_str(delta);
                let _ = out.send(
                    json!({"type":"session.output_transcript.delta","delta":delta,
                    "start_ms":t0 + at,"end_ms":t0 + end}),
                );
            };
            let sizes = [20u32, 60, 100, 40, 200, 80];
            let mut sent = 0u32;
            for i in 0.. {
                if sent >= total {
                    break;
                }
                let ms = sizes[i % sizes.len()].min(total - sent);
                while next < words.len() && sent as usize * words.len() >= next * total as usize {
                    fragment(&mut next, sent, sent + ms);
                }
                let _ = out.send(json!({"type":"session.output_audio.delta","delta":B64.encode(format.tone(ms, sent))}));
                sent += ms;
                rec.lock().unwrap().answers[idx].sent_ms = sent;
                tokio::time::sleep(Duration::from_millis((ms / speedup) as u64)).await;
                match state.load(SeqCst) {
                    YIELD => return rec.lock().unwrap().answers[idx].yielded = true,
                    STOP => return,
                    _ => {}
                }
            }
            while next < words.len() {
                fragment(&mut next, total, total);
            }
            if state
                .compare_exchange(RUNNING, DONE, SeqCst, SeqCst)
                .is_err()
            {
                return;
            }
            rec.lock().unwrap().answers[idx].completed = true;
            if usage_after {
                let seconds = usage(started_at);
                rec.lock().unwrap().usage_seconds.push(seconds);
                let _ =
                    out.send(json!({"type":"session.usage.updated","usage":{"seconds":seconds}}));
            }
        });
    }
}

/// Cumulative billed seconds since `session.started` (billed per second).
fn usage(started_at: Instant) -> u64 {
    started_at.elapsed().as_secs_f64().ceil() as u64
}
