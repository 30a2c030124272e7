//! A fake OpenAI Realtime server, written from PROTOCOLS.md §2 alone (it
//! shares no code with the bridge): records every client event and the
//! upgrade headers, detects speech by the energy of appended audio, answers
//! each turn with the documented response event sequence and audio deltas of
//! varying sizes, honours `response.cancel` and `conversation.item.truncate`,
//! and can be scripted to send errors, late deltas, to close, or to call a
//! function (§2.5) and answer again once it has the output.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What the fake does beyond the protocol's defaults.
#[derive(Clone, Debug)]
pub struct Script {
    /// Length of each answer, in ms of audio.
    pub answer_ms: u32,
    /// Answer deltas are sent this much faster than real time.
    pub speedup: u32,
    /// Sent right after `session.updated` (e.g. benign errors).
    pub after_session: Vec<Value>,
    /// Deltas of a response still sent after its `response.cancel` arrived,
    /// as a real server may have them in flight.
    pub late_deltas_after_cancel: u32,
    /// Close the first session's socket after this many client events
    /// (later sessions, after a reconnect, stay up).
    pub close_after_events: Option<usize>,
    /// `(name, arguments)`: the caller's first turn is answered with a
    /// completed response holding this function call (§2.5); once its
    /// function_call_output and a response.create arrive, a normal audio
    /// answer follows.
    pub function_call: Option<(String, String)>,
    /// Audio items per response, each `answer_ms` long (the real service
    /// may answer with several output items in one response).
    pub items_per_response: u32,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            answer_ms: 3000,
            speedup: 4,
            after_session: Vec::new(),
            late_deltas_after_cancel: 0,
            close_after_events: None,
            function_call: None,
            items_per_response: 1,
        }
    }
}

/// Everything the fake saw, shared with the test.
#[derive(Default, Debug)]
pub struct Record {
    pub sessions: u32,
    pub headers: Vec<Vec<(String, String)>>,
    /// Client events in arrival order (all sessions).
    pub client_events: Vec<Value>,
    /// The same, per session, sessions in the order they were opened.
    pub session_events: Vec<Vec<Value>>,
    /// Audio answers started, per session.
    pub session_answers: Vec<u32>,
    pub closed_by_client: u32,
    /// ms of answer audio sent per item id.
    pub sent_ms: Vec<(String, u32)>,
}

pub struct FakeRealtime {
    pub addr: SocketAddr,
    pub record: Arc<Mutex<Record>>,
}

impl FakeRealtime {
    pub async fn start(script: Script) -> FakeRealtime {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let rec = record.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let rec = rec.clone();
                let script = script.clone();
                tokio::spawn(async move { session(tcp, rec, script).await });
            }
        });
        FakeRealtime { addr, record }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime?model=gpt-realtime", self.addr)
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
}

/// The classic G.711 μ-law expansion, written out here independently.
fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let t = ((((u & 0x0f) as i32) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

fn linear_to_ulaw(sample: i16) -> u8 {
    let mut pcm = sample as i32;
    let sign = if pcm < 0 { 0x80 } else { 0 };
    if pcm < 0 {
        pcm = -pcm;
    }
    pcm = pcm.min(32635) + 0x84;
    let mut exp = 7;
    let mut mask = 0x4000;
    while exp > 0 && pcm & mask == 0 {
        exp -= 1;
        mask >>= 1;
    }
    let mant = (pcm >> (exp + 3)) & 0x0f;
    !(sign | (exp << 4) | mant) as u8
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Pcm24k,
    Ulaw8k,
}

struct Session {
    /// 1 for the first session the fake accepted, and so on.
    nth: u32,
    beta: bool,
    /// The session cancels the active response itself on speech_started.
    interrupts: bool,
    input: Format,
    output: Format,
    vad: bool,
    silence_ms: u32,
    /// ms of input audio so far.
    input_ms: f64,
    speaking: bool,
    loud_run_ms: f64,
    quiet_run_ms: f64,
    speech_start_ms: f64,
    item_seq: u32,
    /// The response in progress; cleared by its task when it completes.
    active: Arc<Mutex<Option<(String, String)>>>,
    cancel_tx: Option<mpsc::UnboundedSender<()>>,
    /// The scripted function call was made (it is made once).
    function_called: bool,
    /// Its call_id, until its function_call_output arrives.
    awaiting_output: Option<String>,
    /// The output arrived: the next response.create is answered.
    output_received: bool,
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn session(tcp: tokio::net::TcpStream, rec: Arc<Mutex<Record>>, script: Script) {
    let headers = Arc::new(Mutex::new(Vec::new()));
    let h = headers.clone();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
        let mut h = h.lock().unwrap();
        for (k, v) in req.headers() {
            h.push((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()));
        }
        Ok(resp)
    })
    .await;
    let Ok(ws) = ws else { return };
    let headers = headers.lock().unwrap().clone();
    let beta = headers
        .iter()
        .any(|(k, v)| k == "openai-beta" && v == "realtime=v1");
    let nth = {
        let mut r = rec.lock().unwrap();
        r.sessions += 1;
        r.headers.push(headers);
        r.session_events.push(Vec::new());
        r.session_answers.push(0);
        r.sessions
    };
    let (mut tx, mut rx) = ws.split();
    // All server events go through one channel so that response tasks and
    // the reader interleave like a real server's single socket.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(mut ev) = out_rx.recv().await {
            n += 1;
            ev["event_id"] = json!(format!("event_{n}"));
            if tx.send(Message::Text(ev.to_string().into())).await.is_err() {
                break;
            }
        }
        let _ = tx.close().await;
    });
    let _ = out_tx.send(
        json!({"type":"session.created","session":{"id":"sess_1","object":"realtime.session"}}),
    );
    let mut s = Session {
        nth,
        beta,
        interrupts: true,
        input: Format::Pcm24k,
        output: Format::Pcm24k,
        vad: true,
        silence_ms: 500,
        input_ms: 0.0,
        speaking: false,
        loud_run_ms: 0.0,
        quiet_run_ms: 0.0,
        speech_start_ms: 0.0,
        item_seq: 0,
        active: Arc::new(Mutex::new(None)),
        cancel_tx: None,
        function_called: false,
        awaiting_output: None,
        output_received: false,
    };
    let mut count = 0usize;
    while let Some(msg) = rx.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => {
                rec.lock().unwrap().closed_by_client += 1;
                break;
            }
            Ok(_) => continue,
        };
        let Ok(ev) = serde_json::from_str::<Value>(&text) else {
            let _ = out_tx.send(error_event("invalid_json", None));
            continue;
        };
        {
            let mut r = rec.lock().unwrap();
            r.client_events.push(ev.clone());
            if let Some(mine) = r.session_events.get_mut(nth as usize - 1) {
                mine.push(ev.clone());
            }
        }
        count += 1;
        handle(&mut s, &ev, &out_tx, &rec, &script);
        if nth == 1 && script.close_after_events == Some(count) {
            break;
        }
    }
    drop(out_tx);
    if let Some(c) = s.cancel_tx.take() {
        let _ = c.send(());
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

fn error_event(code: &str, event_id: Option<&Value>) -> Value {
    json!({"type":"error","error":{"type":"invalid_request_error","code":code,"message":code,"param":null,"event_id":event_id.cloned().unwrap_or(Value::Null)}})
}

fn handle(
    s: &mut Session,
    ev: &Value,
    out: &mpsc::UnboundedSender<Value>,
    rec: &Arc<Mutex<Record>>,
    script: &Script,
) {
    match ev["type"].as_str().unwrap_or("") {
        "session.update" => {
            let sess = &ev["session"];
            let (inp, outp, td) = if s.beta {
                (
                    sess["input_audio_format"].as_str() == Some("g711_ulaw"),
                    sess["output_audio_format"].as_str() == Some("g711_ulaw"),
                    &sess["turn_detection"],
                )
            } else {
                (
                    sess["audio"]["input"]["format"]["type"] == "audio/pcmu",
                    sess["audio"]["output"]["format"]["type"] == "audio/pcmu",
                    &sess["audio"]["input"]["turn_detection"],
                )
            };
            s.input = if inp { Format::Ulaw8k } else { Format::Pcm24k };
            s.output = if outp { Format::Ulaw8k } else { Format::Pcm24k };
            s.vad = !td.is_null();
            // As the real API: with server VAD the response is cancelled on
            // speech_started unless interrupt_response is false (§2.2).
            s.interrupts = s.vad && td["interrupt_response"].as_bool() != Some(false);
            if let Some(ms) = td["silence_duration_ms"].as_u64() {
                s.silence_ms = ms as u32;
            }
            let _ = out.send(json!({"type":"session.updated","session":sess}));
            for e in &script.after_session {
                let _ = out.send(e.clone());
            }
        }
        "input_audio_buffer.append" => {
            let Some(audio) = ev["audio"].as_str().and_then(|a| B64.decode(a).ok()) else {
                let _ = out.send(error_event("invalid_value", ev.get("event_id")));
                return;
            };
            on_audio(s, &audio, out, rec, script);
        }
        "response.cancel" => {
            let active = s.active.lock().unwrap().take();
            match active {
                Some((resp, item)) => cancel(s, &resp, &item, out, script),
                None => {
                    let _ = out.send(error_event(
                        "response_cancel_not_active",
                        ev.get("event_id"),
                    ));
                }
            }
        }
        "conversation.item.create" => {
            let item = &ev["item"];
            if item["type"] == "function_call_output" {
                let call_id = item["call_id"].as_str();
                let known = call_id.is_some() && call_id == s.awaiting_output.as_deref();
                if !known || !item["output"].is_string() {
                    let _ = out.send(error_event("invalid_value", ev.get("event_id")));
                    return;
                }
                s.awaiting_output = None;
                s.output_received = true;
                let _ = out.send(json!({"type":"conversation.item.added","item":{"id":format!("item_fco{}", s.item_seq),"object":"realtime.item","type":"function_call_output","call_id":call_id,"output":item["output"]},"previous_item_id":null}));
            }
        }
        "response.create" => {
            if s.active.lock().unwrap().is_some() {
                let _ = out.send(error_event(
                    "conversation_already_has_active_response",
                    ev.get("event_id"),
                ));
            } else {
                // The real API answers every response.create made while no
                // response is active (a greeting, a continuation after tool
                // outputs, a digit message).
                s.output_received = false;
                respond(s, out, rec, script);
            }
        }
        "conversation.item.truncate" => {
            let item = ev["item_id"].as_str().unwrap_or("");
            let end = ev["audio_end_ms"].as_u64().unwrap_or(u64::MAX);
            let sent = rec
                .lock()
                .unwrap()
                .sent_ms
                .iter()
                .find(|(i, _)| i == item)
                .map(|(_, ms)| *ms as u64);
            match sent {
                Some(ms) if end <= ms => {
                    let _ = out.send(json!({"type":"conversation.item.truncated","item_id":item,"content_index":0,"audio_end_ms":end}));
                }
                Some(_) => {
                    let _ = out.send(error_event("invalid_value", ev.get("event_id")));
                }
                None => {
                    let _ = out.send(error_event(
                        "item_truncate_invalid_item_id",
                        ev.get("event_id"),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn on_audio(
    s: &mut Session,
    audio: &[u8],
    out: &mpsc::UnboundedSender<Value>,
    rec: &Arc<Mutex<Record>>,
    script: &Script,
) {
    let (samples, rate): (Vec<i16>, f64) = match s.input {
        Format::Ulaw8k => (audio.iter().map(|&c| ulaw_to_linear(c)).collect(), 8000.0),
        Format::Pcm24k => (
            audio
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            24000.0,
        ),
    };
    if samples.is_empty() {
        return;
    }
    let ms = samples.len() as f64 * 1000.0 / rate;
    let rms =
        (samples.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
    s.input_ms += ms;
    if !s.vad {
        return;
    }
    // -40 dBFS: well above μ-law silence, well below speech.
    let loud = rms > 328.0;
    if loud {
        s.loud_run_ms += ms;
        s.quiet_run_ms = 0.0;
    } else {
        s.quiet_run_ms += ms;
        s.loud_run_ms = 0.0;
    }
    if !s.speaking && s.loud_run_ms >= 60.0 {
        s.speaking = true;
        s.item_seq += 1;
        s.speech_start_ms = s.input_ms - s.loud_run_ms;
        let _ = out.send(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":s.speech_start_ms as u64,"item_id":format!("item_in{}", s.item_seq)}));
        if s.interrupts {
            let active = s.active.lock().unwrap().take();
            if let Some((resp, item)) = active {
                cancel(s, &resp, &item, out, script);
            }
        }
    } else if s.speaking && s.quiet_run_ms >= s.silence_ms as f64 {
        s.speaking = false;
        let item_in = format!("item_in{}", s.item_seq);
        let _ = out.send(json!({"type":"input_audio_buffer.speech_stopped","audio_end_ms":(s.input_ms - s.quiet_run_ms) as u64,"item_id":item_in}));
        let _ = out.send(json!({"type":"input_audio_buffer.committed","item_id":item_in,"previous_item_id":null}));
        let _ = out.send(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":item_in,"content_index":0,"transcript":"hello there"}));
        match &script.function_call {
            Some((name, arguments)) if !s.function_called => {
                s.function_called = true;
                function_call(s, name, arguments, out);
            }
            _ => respond(s, out, rec, script),
        }
    }
}

fn cancel(
    s: &mut Session,
    resp: &str,
    item: &str,
    out: &mpsc::UnboundedSender<Value>,
    script: &Script,
) {
    if let Some(c) = s.cancel_tx.take() {
        let _ = c.send(());
    }
    let delta = if s.beta {
        "response.audio.delta"
    } else {
        "response.output_audio.delta"
    };
    for _ in 0..script.late_deltas_after_cancel {
        let _ = out.send(json!({"type":delta,"response_id":resp,"item_id":item,"output_index":0,"content_index":0,"delta":B64.encode(tone(s.output, 40, 0))}));
    }
    let _ = out.send(json!({"type":"response.done","response":{"id":resp,"object":"realtime.response","status":"cancelled","output":[],"usage":{"total_tokens":3,"input_tokens":2,"output_tokens":1}}}));
}

/// A completed response holding one function call, per §2.5.
fn function_call(s: &mut Session, name: &str, arguments: &str, out: &mpsc::UnboundedSender<Value>) {
    s.item_seq += 1;
    let resp = format!("resp_{}", s.item_seq);
    let item = format!("item_fc{}", s.item_seq);
    let call_id = format!("call_{}", s.item_seq);
    s.awaiting_output = Some(call_id.clone());
    let added = if s.beta {
        "conversation.item.created"
    } else {
        "conversation.item.added"
    };
    let mut item_obj = json!({"id":item,"object":"realtime.item","type":"function_call","status":"in_progress","name":name,"call_id":call_id,"arguments":""});
    let _ = out.send(json!({"type":"response.created","response":{"id":resp,"object":"realtime.response","status":"in_progress","output":[]}}));
    let _ = out.send(json!({"type":"response.output_item.added","response_id":resp,"output_index":0,"item":item_obj}));
    let _ = out.send(json!({"type":added,"item":item_obj,"previous_item_id":null}));
    let _ = out.send(json!({"type":"response.function_call_arguments.delta","response_id":resp,"item_id":item,"output_index":0,"call_id":call_id,"delta":arguments}));
    let _ = out.send(json!({"type":"response.function_call_arguments.done","response_id":resp,"item_id":item,"output_index":0,"call_id":call_id,"name":name,"arguments":arguments}));
    item_obj["status"] = json!("completed");
    item_obj["arguments"] = json!(arguments);
    let _ = out.send(json!({"type":"response.output_item.done","response_id":resp,"output_index":0,"item":item_obj}));
    let _ = out.send(json!({"type":"response.done","response":{"id":resp,"object":"realtime.response","status":"completed","output":[item_obj],"usage":{"total_tokens":12,"input_tokens":10,"output_tokens":2}}}));
}

/// Every answer's audio in a μ-law session (`audio/pcmu` out): the bytes a
/// caller must hear, in order, when nothing of the answer is lost.
pub fn answer_audio_ulaw(ms: u32) -> Vec<u8> {
    tone(Format::Ulaw8k, ms, 0)
}

/// A 440 Hz tone of `ms` milliseconds in the session's output format,
/// continuing phase from `offset_ms`.
fn tone(format: Format, ms: u32, offset_ms: u32) -> Vec<u8> {
    let rate = if format == Format::Pcm24k {
        24000
    } else {
        8000
    };
    let n = rate * ms as usize / 1000;
    let start = rate * offset_ms as usize / 1000;
    let samples = (start..start + n)
        .map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / rate as f64).sin() * 8000.0) as i16);
    match format {
        Format::Pcm24k => samples.flat_map(|x| x.to_le_bytes()).collect(),
        Format::Ulaw8k => samples.map(linear_to_ulaw).collect(),
    }
}

fn respond(
    s: &mut Session,
    out: &mpsc::UnboundedSender<Value>,
    rec: &Arc<Mutex<Record>>,
    script: &Script,
) {
    s.item_seq += 1;
    let resp = format!("resp_{}", s.item_seq);
    let item = format!("item_out{}", s.item_seq);
    *s.active.lock().unwrap() = Some((resp.clone(), item.clone()));
    let active = s.active.clone();
    let (cancel_tx, mut cancel_rx) = mpsc::unbounded_channel();
    s.cancel_tx = Some(cancel_tx);
    let (audio_delta, audio_done, tr_delta, tr_done, added) = if s.beta {
        (
            "response.audio.delta",
            "response.audio.done",
            "response.audio_transcript.delta",
            "response.audio_transcript.done",
            "conversation.item.created",
        )
    } else {
        (
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.delta",
            "response.output_audio_transcript.done",
            "conversation.item.added",
        )
    };
    let out = out.clone();
    let rec = rec.clone();
    let format = s.output;
    let answer_ms = script.answer_ms;
    let speedup = script.speedup.max(1);
    let items: Vec<String> = (0..script.items_per_response.max(1))
        .map(|k| {
            if k == 0 {
                item.clone()
            } else {
                format!("{item}_{k}")
            }
        })
        .collect();
    {
        let mut r = rec.lock().unwrap();
        for id in &items {
            r.sent_ms.push((id.clone(), 0));
        }
        if let Some(n) = r.session_answers.get_mut(s.nth as usize - 1) {
            *n += 1;
        }
    }
    tokio::spawn(async move {
        let _ = out.send(json!({"type":"response.created","response":{"id":resp,"object":"realtime.response","status":"in_progress","output":[]}}));
        let mut done_items = Vec::new();
        for (index, item) in items.iter().enumerate() {
            *active.lock().unwrap() = Some((resp.clone(), item.clone()));
            let item_obj = json!({"id":item,"object":"realtime.item","type":"message","role":"assistant","status":"in_progress","content":[]});
            let _ = out.send(json!({"type":"response.output_item.added","response_id":resp,"output_index":index,"item":item_obj}));
            let _ = out.send(json!({"type":added,"item":item_obj,"previous_item_id":null}));
            let _ = out.send(json!({"type":"response.content_part.added","response_id":resp,"item_id":item,"output_index":index,"content_index":0,"part":{"type":"audio","transcript":""}}));
            let _ = out.send(json!({"type":tr_delta,"response_id":resp,"item_id":item,"output_index":index,"content_index":0,"delta":"Hello"}));
            // Deltas of varying sizes, as the real service sends.
            let sizes = [20u32, 60, 100, 40, 200, 80];
            let mut sent = 0u32;
            let mut i = 0;
            while sent < answer_ms {
                let ms = sizes[i % sizes.len()].min(answer_ms - sent);
                i += 1;
                let wait = Duration::from_millis((ms / speedup) as u64);
                tokio::select! {
                    _ = cancel_rx.recv() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let _ = out.send(json!({"type":audio_delta,"response_id":resp,"item_id":item,"output_index":index,"content_index":0,"delta":B64.encode(tone(format, ms, sent))}));
                sent += ms;
                if let Some(e) = rec
                    .lock()
                    .unwrap()
                    .sent_ms
                    .iter_mut()
                    .find(|(i, _)| i == item)
                {
                    e.1 = sent;
                }
            }
            if cancel_rx.try_recv().is_ok() {
                return;
            }
            let _ = out.send(json!({"type":tr_done,"response_id":resp,"item_id":item,"output_index":index,"content_index":0,"transcript":"Hello"}));
            let _ = out.send(json!({"type":audio_done,"response_id":resp,"item_id":item,"output_index":index,"content_index":0}));
            let _ = out.send(json!({"type":"response.content_part.done","response_id":resp,"item_id":item,"output_index":index,"content_index":0,"part":{"type":"audio","transcript":"Hello"}}));
            let _ = out.send(json!({"type":"response.output_item.done","response_id":resp,"output_index":index,"item":item_obj}));
            done_items.push(item_obj);
        }
        active.lock().unwrap().take();
        let _ = out.send(json!({"type":"response.done","response":{"id":resp,"object":"realtime.response","status":"completed","output":done_items,"usage":{"total_tokens":30,"input_tokens":20,"output_tokens":10}}}));
    });
}
