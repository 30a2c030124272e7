//! The echo peer speaking GPT-Live (`callbridge_sim::echo` with
//! `EchoProtocol::Live`) over real sockets on 127.0.0.1:0, driven by a plain
//! tokio-tungstenite client written from GPT-LIVE.md: strict startup, an
//! echoed turn with transcripts (μ-law and PCM16 at 16 kHz), the greeting by
//! commentary, the model yielding to a caller who talks over it, the
//! delegated function call round trip, `session.close`, and loopback byte
//! identity. Timing is only bounded by generous timeouts (answers stream at
//! real time); what is asserted is content and order.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use callbridge::audio::g711;
use callbridge_sim::echo::{self, EchoMode, EchoOptions, EchoProtocol};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Long enough for a whole echoed turn (about 6 s at real time) on a slow CI box.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

struct Peer {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn start(options: EchoOptions) -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(echo::serve(
        listener,
        EchoOptions {
            protocol: EchoProtocol::Live,
            ..options
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Peer {
        url: format!("ws://{addr}/v1/live/sessions"),
        _stop: stop,
    }
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string()))
        .await
        .expect("send");
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("timed out waiting for a server event")
            .expect("socket closed")
            .expect("socket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("server sent invalid JSON");
        }
    }
}

/// Every event up to and including the first that `done` accepts.
async fn recv_until(ws: &mut Ws, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = recv(ws).await;
        let last = done(&event);
        events.push(event);
        if last {
            return events;
        }
    }
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == kind
}

/// The socket ends (a close frame or EOF) without further events.
async fn expect_closed(ws: &mut Ws) {
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("the peer should close the socket")
        {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return,
            Some(Ok(Message::Text(text))) => panic!("unexpected event after the end: {text}"),
            Some(Ok(_)) => {}
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn find<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", types(events)))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name),
    )
    .expect("fixture")
}

fn session_start(format: Value, delegation: Value) -> Value {
    json!({"type": "session.start", "event_id": "cb_start", "session": {
        "model": "gpt-live-1",
        "instructions": "Repeat after me.",
        "audio": {"format": format, "output": {"voice": "marin"}},
        "delegation": delegation,
    }})
}

fn pcmu() -> Value {
    json!({"type": "audio/pcmu", "rate": 8000})
}

fn lookup_order_delegation() -> Value {
    json!({"type": "responses", "responses": {
        "model": "gpt-5.5",
        "instructions": "Use lookup_order for order status.",
        "tools": [{"type": "function", "name": "lookup_order", "description": "Look up an order",
                   "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                                  "required": ["order_id"], "additionalProperties": false},
                   "strict": true}],
        "tool_choice": "auto", "parallel_tool_calls": false}})
}

/// Connects and starts a session; returns the socket and `session.started`.
async fn started(peer: &Peer, format: Value, delegation: Value) -> (Ws, Value) {
    let mut ws = connect(&peer.url).await;
    send(&mut ws, session_start(format, delegation)).await;
    let started = recv(&mut ws).await;
    assert_eq!(started["type"], "session.started", "{started}");
    (ws, started)
}

async fn append_all(ws: &mut Ws, frames: &[Vec<u8>]) {
    for frame in frames {
        let event = json!({"type": "session.input_audio.append", "audio": BASE64.encode(frame)});
        ws.feed(Message::text(event.to_string()))
            .await
            .expect("send");
    }
    ws.flush().await.expect("flush");
}

/// `audio` as 20 ms frames of `frame_bytes`, then `silence_ms` of `silence`.
fn frames(audio: &[u8], frame_bytes: usize, silence: u8, silence_ms: usize) -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = audio.chunks(frame_bytes).map(<[u8]>::to_vec).collect();
    frames.extend(std::iter::repeat_n(
        vec![silence; frame_bytes],
        silence_ms / 20,
    ));
    frames
}

fn audio_of(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["type"] == "session.output_audio.delta")
        .flat_map(|e| {
            BASE64
                .decode(e["delta"].as_str().expect("delta"))
                .expect("base64")
        })
        .collect()
}

fn said(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "session.output_transcript.delta")
        .map(|e| e["delta"].as_str().expect("transcript delta"))
        .collect()
}

/// Every server event but audio deltas has a unique `event_id`; audio deltas
/// are `{type, delta}` only (no event, item or response id).
fn check_ids(events: &[Value], seen: &mut HashSet<String>) {
    for event in events {
        if event["type"] == "session.output_audio.delta" {
            let keys: Vec<&String> = event.as_object().expect("object").keys().collect();
            assert_eq!(keys.len(), 2, "audio delta with extra keys: {event}");
            continue;
        }
        let id = event["event_id"].as_str().expect("event_id");
        assert!(seen.insert(id.to_owned()), "duplicate event_id {id}");
    }
}

/// Checks the transcript fragments of an answer: integer timeline
/// positions, start ≤ end, in order.
fn check_transcript_times(events: &[Value]) {
    let mut last = 0;
    for e in events
        .iter()
        .filter(|e| e["type"] == "session.output_transcript.delta")
    {
        let (s, t) = (
            e["start_ms"].as_u64().expect("start_ms"),
            e["end_ms"].as_u64().expect("end_ms"),
        );
        assert!(s <= t && s >= last, "{e}");
        last = s;
    }
}

/// Where `needle` sits in `hay`, stepping by `step` bytes.
fn position(hay: &[u8], needle: &[u8], step: usize) -> Option<usize> {
    (0..=hay.len().checked_sub(needle.len())?)
        .step_by(step)
        .find(|&i| hay[i..i + needle.len()] == *needle)
}

#[tokio::test]
async fn strict_start_rejects_realtime_keys_and_closes() {
    let peer = start(EchoOptions::default()).await;

    let mut ws = connect(&peer.url).await;
    let mut start = session_start(pcmu(), Value::Null);
    start["session"]["turn_detection"] = json!({"type": "server_vad"});
    send(&mut ws, start).await;
    let error = recv(&mut ws).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["code"], "unknown_parameter");
    assert_eq!(error["error"]["param"], "session.turn_detection");
    assert_eq!(error["error"]["client_event_id"], "cb_start");
    expect_closed(&mut ws).await;

    // A format without its rate fails too.
    let mut ws = connect(&peer.url).await;
    send(
        &mut ws,
        session_start(json!({"type": "audio/pcmu"}), Value::Null),
    )
    .await;
    let error = recv(&mut ws).await;
    assert_eq!(
        error["error"]["param"], "session.audio.format.rate",
        "{error}"
    );
    expect_closed(&mut ws).await;

    // The first frame must be session.start.
    let mut ws = connect(&peer.url).await;
    send(
        &mut ws,
        json!({"type": "session.input_audio.append", "event_id": "a1", "audio": "//8="}),
    )
    .await;
    let error = recv(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    expect_closed(&mut ws).await;
}

#[tokio::test]
async fn pcmu_turn_is_echoed_at_real_time_with_transcripts() {
    let peer = start(EchoOptions::default()).await;
    let (mut ws, started) = started(&peer, pcmu(), Value::Null).await;
    let session = &started["session"];
    assert_eq!(started["client_event_id"], "cb_start");
    assert!(session["id"].as_str().unwrap().starts_with("live_"));
    assert_eq!(session["status"], "active");
    assert_eq!(session["model"], "gpt-live-1");
    assert_eq!(session["audio"]["format"], pcmu());
    assert_eq!(session["audio"]["output"]["voice"], "marin");
    assert!(session["expires_at"].as_u64().is_some());

    let speech = fixture("speech.ulaw");
    let sent = frames(&speech, 160, 0xFF, 1000);
    append_all(&mut ws, &sent).await;
    let sent = sent.concat();

    let t0 = Instant::now();
    let events = recv_until(&mut ws, is("session.usage.updated")).await;
    let elapsed = t0.elapsed();
    let kinds = types(&events);
    check_ids(&events, &mut HashSet::new());
    for kind in &kinds {
        assert!(
            [
                "session.input_transcript.delta",
                "session.output_audio.delta",
                "session.output_transcript.delta",
                "session.usage.updated"
            ]
            .contains(kind),
            "unexpected {kind}"
        );
    }
    let heard = find(&events, "session.input_transcript.delta");
    assert!(heard["delta"].as_str().unwrap().contains("caller spoke"));
    assert!(heard["start_ms"].as_u64() < heard["end_ms"].as_u64());
    let first_audio = kinds
        .iter()
        .position(|k| *k == "session.output_audio.delta")
        .expect("audio");
    assert!(kinds[..first_audio].contains(&"session.input_transcript.delta"));

    // The caller's own audio, byte for byte (one format both ways).
    let audio = audio_of(&events);
    assert!(audio.len() > 8000 * 4, "echoed only {} bytes", audio.len());
    assert!(
        position(&sent, &audio, 1).is_some(),
        "the echo is not the caller's audio"
    );
    // Deltas of varying sizes, at about real time.
    let sizes: HashSet<usize> = events
        .iter()
        .filter(|e| e["type"] == "session.output_audio.delta")
        .map(|e| e["delta"].as_str().unwrap().len())
        .collect();
    assert!(sizes.len() >= 2, "{sizes:?}");
    let audio_secs = audio.len() as f64 / 8000.0;
    assert!(
        elapsed.as_secs_f64() > audio_secs * 0.8,
        "{audio_secs} s of audio arrived in {elapsed:?}: faster than real time"
    );

    let transcript = said(&events);
    assert!(
        transcript.starts_with("(echo of ") && transcript.ends_with(" s of your speech)"),
        "{transcript}"
    );
    check_transcript_times(&events);
    let usage = &events.last().unwrap()["usage"];
    assert!(usage["seconds"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(
        usage["seconds"].is_f64(),
        "seconds must be a float: {usage}"
    );
}

#[tokio::test]
async fn pcm16k_turn_is_echoed_byte_for_byte() {
    let peer = start(EchoOptions::default()).await;
    let format = json!({"type": "audio/pcm", "rate": 16000});
    let (mut ws, started) = started(&peer, format.clone(), Value::Null).await;
    assert_eq!(started["session"]["audio"]["format"], format);

    // The first 2 s of the speech fixture at 16 kHz (linear interpolation).
    let mut samples = Vec::new();
    g711::decode_into(&fixture("speech.ulaw")[..16_000], &mut samples);
    let mut pcm = Vec::new();
    for (i, &s) in samples.iter().enumerate() {
        let next = samples.get(i + 1).copied().unwrap_or(s);
        let mid = ((i32::from(s) + i32::from(next)) / 2) as i16;
        pcm.extend_from_slice(&s.to_le_bytes());
        pcm.extend_from_slice(&mid.to_le_bytes());
    }
    let sent = frames(&pcm, 640, 0, 1000);
    append_all(&mut ws, &sent).await;
    let sent = sent.concat();

    let events = recv_until(&mut ws, is("session.usage.updated")).await;
    let audio = audio_of(&events);
    assert!(audio.len() > 32_000, "echoed only {} bytes", audio.len());
    assert_eq!(audio.len() % 2, 0);
    assert!(position(&sent, &audio, 2).is_some());
}

#[tokio::test]
async fn commentary_greets_and_other_appends_are_acked() {
    let peer = start(EchoOptions::default()).await;
    let (mut ws, _) = started(&peer, pcmu(), Value::Null).await;
    let mut seen = HashSet::new();

    send(
        &mut ws,
        json!({"type": "session.instructions.append", "event_id": "cb_instr",
               "delegation_id": null, "content": "Be brief."}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "session.instructions.appended", "{ack}");
    assert_eq!(ack["client_event_id"], "cb_instr");
    send(
        &mut ws,
        json!({"type": "session.thinking.append", "event_id": "cb_think",
               "delegation_id": null, "content": "The caller is a regular."}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "session.thinking.appended", "{ack}");
    // delegation_id is required (nullable).
    send(
        &mut ws,
        json!({"type": "session.commentary.append", "event_id": "cb_bad", "content": "Hi"}),
    )
    .await;
    let error = recv(&mut ws).await;
    assert_eq!(error["error"]["param"], "delegation_id", "{error}");

    send(
        &mut ws,
        json!({"type": "session.commentary.append", "event_id": "cb_greet", "delegation_id": null,
               "content": "Greet the caller now as Acme support, then listen."}),
    )
    .await;
    let events = recv_until(&mut ws, is("session.usage.updated")).await;
    check_ids(&events, &mut seen);
    let ack = &events[0];
    assert_eq!(ack["type"], "session.commentary.appended", "{ack}");
    assert_eq!(ack["client_event_id"], "cb_greet");
    assert!(ack["start_ms"].as_u64().is_some() && ack["end_ms"].as_u64().is_some());
    let audio = audio_of(&events);
    assert!(audio.len() >= 8000, "greeting of {} bytes", audio.len());
    let transcript = said(&events);
    assert!(transcript.contains("Greet the caller now"), "{transcript}");
    check_transcript_times(&events);
}

#[tokio::test]
async fn the_model_yields_when_the_caller_talks_over_it() {
    let peer = start(EchoOptions::default()).await;
    let (mut ws, _) = started(&peer, pcmu(), Value::Null).await;
    // Continuous input, as a bridge sends it: silence while the peer speaks.
    let lead_in = frames(&[], 160, 0xFF, 200);
    append_all(&mut ws, &lead_in).await;
    send(
        &mut ws,
        json!({"type": "session.commentary.append", "delegation_id": null,
               "content": "Greet the caller."}),
    )
    .await;
    let mut greeting = recv_until(&mut ws, is("session.output_audio.delta")).await;

    // "Sorry, wait." (the first 0.7 s of the barge-in fixture) over the greeting.
    let bargein = frames(&fixture("bargein.ulaw")[..5600], 160, 0xFF, 800);
    append_all(&mut ws, &bargein).await;
    let sent = [lead_in.concat(), bargein.concat()].concat();
    greeting.extend(recv_until(&mut ws, is("session.usage.updated")).await);
    let cut = audio_of(&greeting).len();
    assert!(
        cut < 1200 * 8,
        "the greeting played on in full ({cut} bytes) over the caller"
    );
    assert!(
        !said(&greeting).ends_with(')'),
        "the whole greeting transcript was sent: {}",
        said(&greeting)
    );
    // No event marks the yield: only audio, transcripts and usage.
    for kind in types(&greeting) {
        assert!(
            kind.starts_with("session.output_")
                || kind == "session.usage.updated"
                || kind == "session.commentary.appended"
                || kind == "session.input_transcript.delta",
            "{kind}"
        );
    }

    // Then the caller's interjection is heard and answered.
    let events = recv_until(&mut ws, is("session.usage.updated")).await;
    assert!(
        types(&events).contains(&"session.input_transcript.delta")
            || types(&greeting).contains(&"session.input_transcript.delta")
    );
    assert!(said(&events).starts_with("(echo of "), "{}", said(&events));
    let echoed = audio_of(&events);
    assert!(echoed.len() > 8 * 300, "echoed only {} bytes", echoed.len());
    assert!(position(&sent, &echoed, 1).is_some());

    // No cancel and no truncate in GPT-Live.
    send(
        &mut ws,
        json!({"type": "response.cancel", "event_id": "cb_cancel"}),
    )
    .await;
    let error = recv(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["client_event_id"], "cb_cancel");
    send(
        &mut ws,
        json!({"type": "conversation.item.truncate", "event_id": "cb_trunc",
               "item_id": "x", "content_index": 0, "audio_end_ms": 0}),
    )
    .await;
    let error = recv(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["client_event_id"], "cb_trunc");
}

#[tokio::test]
async fn delegated_function_call_round_trip() {
    let peer = start(EchoOptions {
        tool_call: Some(r#"lookup_order:{"order_id":"123"}"#.parse().expect("tool call")),
        ..EchoOptions::default()
    })
    .await;
    let (mut ws, started) = started(&peer, pcmu(), lookup_order_delegation()).await;
    assert_eq!(started["session"]["delegation"]["type"], "responses");
    let mut seen = HashSet::new();

    // The caller's first turn: 1.5 s of speech, then quiet.
    append_all(
        &mut ws,
        &frames(&fixture("speech.ulaw")[..12_000], 160, 0xFF, 800),
    )
    .await;
    let events = recv_until(&mut ws, |e| {
        e["type"] == "response.event" && e["event"]["type"] == "response.completed"
    })
    .await;
    check_ids(&events, &mut seen);
    let created = find(&events, "session.delegation.created");
    let delegation = &created["delegation"];
    assert_eq!(delegation["type"], "delegation");
    assert_eq!(delegation["target"], "responses");
    assert!(created["offset_ms"].as_u64().is_some());
    let delegation_id = delegation["id"].as_str().expect("delegation id");
    let response_id = delegation["response_id"].as_str().expect("response id");
    let nested: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.event")
        .inspect(|e| assert_eq!(e["delegation_id"], delegation_id))
        .map(|e| &e["event"])
        .collect();
    assert_eq!(nested[0]["type"], "response.created");
    assert_eq!(nested[0]["response"]["id"], response_id);
    assert_eq!(nested[0]["response"]["status"], "in_progress");
    let done = nested
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .expect("output_item.done");
    assert!(done["output_index"].is_u64() && done["sequence_number"].is_u64());
    let item = &done["item"];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["status"], "completed");
    assert_eq!(item["name"], "lookup_order");
    assert_eq!(item["arguments"], r#"{"order_id":"123"}"#);
    assert!(item["id"].is_string());
    let call_id = item["call_id"].as_str().expect("call_id").to_owned();
    let completed = nested.last().unwrap();
    assert_eq!(completed["response"]["status"], "completed");
    assert_eq!(completed["response"]["output"], json!([]));

    // A partial batch (no output yet) is rejected.
    send(
        &mut ws,
        json!({"type": "response.create", "event_id": "cb_early"}),
    )
    .await;
    let error = recv_until(&mut ws, is("error")).await;
    let error = &error.last().unwrap()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["client_event_id"], "cb_early");

    send(
        &mut ws,
        json!({"type": "response.item.create", "event_id": "cb_out1", "item": {
            "type": "function_call_output", "call_id": call_id,
            "output": "{\"status\":\"shipped\",\"eta\":\"Friday\"}"}}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "response.create", "event_id": "cb_cont1"}),
    )
    .await;
    let mut events = recv_until(&mut ws, |e| {
        e["type"] == "response.event" && e["event"]["type"] == "response.output_text.delta"
    })
    .await;
    let text = events.last().unwrap();
    assert_eq!(text["delegation_id"], delegation_id);
    assert!(text["event"]["delta"].as_str().unwrap().contains("shipped"));
    assert!(
        !types(&events).contains(&"error"),
        "the complete batch was rejected: {events:?}"
    );

    // The acknowledgement, then the answer that says the tool's output.
    let output = r#"{"status":"shipped","eta":"Friday"}"#;
    loop {
        let more = recv_until(&mut ws, is("session.usage.updated")).await;
        events.extend(more);
        if said(&events).contains(output) {
            break;
        }
    }
    check_ids(&events, &mut seen);
    let transcript = said(&events);
    assert!(transcript.contains(output), "{transcript}");
}

#[tokio::test]
async fn session_close_ends_with_session_closed() {
    let peer = start(EchoOptions::default()).await;
    let (mut ws, started) = started(&peer, pcmu(), Value::Null).await;
    append_all(&mut ws, &frames(&[], 160, 0xFF, 200)).await;
    send(
        &mut ws,
        json!({"type": "session.close", "event_id": "cb_close"}),
    )
    .await;
    let events = recv_until(&mut ws, is("session.closed")).await;
    let closed = events.last().unwrap();
    assert_eq!(closed["client_event_id"], "cb_close");
    assert_eq!(closed["reason"], "close_requested");
    assert_eq!(closed["session"]["id"], started["session"]["id"]);
    assert_eq!(closed["session"]["status"], "active");
    assert!(closed["usage"]["seconds"].is_f64(), "{closed}");
    expect_closed(&mut ws).await;
}

#[tokio::test]
async fn loopback_answers_every_frame_with_the_same_bytes() {
    let peer = start(EchoOptions {
        mode: EchoMode::Loopback,
        ..EchoOptions::default()
    })
    .await;
    let (mut ws, _) = started(&peer, pcmu(), Value::Null).await;
    let speech = fixture("speech.ulaw");
    let frames: Vec<String> = speech[4000..]
        .chunks(160)
        .take(50)
        .map(|f| BASE64.encode(f))
        .collect();
    for frame in &frames {
        send(
            &mut ws,
            json!({"type": "session.input_audio.append", "audio": frame}),
        )
        .await;
        let delta = recv(&mut ws).await;
        assert_eq!(
            delta,
            json!({"type": "session.output_audio.delta", "delta": frame})
        );
    }
    // Commentary is acked but not spoken in loopback.
    send(
        &mut ws,
        json!({"type": "session.commentary.append", "delegation_id": null, "content": "Hi"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "session.commentary.appended");
    send(&mut ws, json!({"type": "session.close"})).await;
    assert_eq!(recv(&mut ws).await["type"], "session.closed");
    expect_closed(&mut ws).await;
}
