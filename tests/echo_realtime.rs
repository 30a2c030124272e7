//! `echo-realtime` (`callbridge_sim::echo`) over real sockets on 127.0.0.1:0,
//! driven by a plain tokio-tungstenite client: both dialects, the full event
//! sequence of a response, cancel/truncate/error handling, loopback mode and
//! barge-in. Timing is only ever bounded by generous timeouts; what is
//! asserted is content and order.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use callbridge::audio::{g711, AudioMode, InboundTranscoder};
use callbridge_sim::echo::{self, EchoMode, EchoOptions};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Long enough for a whole echoed turn (about 5 s of audio at 2×) on a slow CI box.
const RECV_TIMEOUT: Duration = Duration::from_secs(20);

struct Peer {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(options: EchoOptions) -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(echo::serve(listener, options, async move {
        let _ = stopped.await;
    }));
    Peer {
        url: format!("ws://{addr}/v1/realtime?model=gpt-realtime"),
        stop: Some(stop),
        task,
    }
}

async fn connect(url: &str, beta: bool) -> Ws {
    let mut request = url.into_client_request().expect("request");
    if beta {
        request
            .headers_mut()
            .insert("OpenAI-Beta", HeaderValue::from_static("realtime=v1"));
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    ws
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

/// Every event up to and including the first of type `kind`.
async fn recv_until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = recv(ws).await;
        let done = event["type"] == kind;
        events.push(event);
        if done {
            return events;
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
            .join("fixtures")
            .join(name),
    )
    .expect("fixture")
}

/// A μ-law fixture as 20 ms frames of 24 kHz PCM16, as the bridge sends it.
fn pcm16_frames(ulaw: &[u8]) -> Vec<Vec<u8>> {
    let mut transcoder = InboundTranscoder::new(AudioMode::Pcm16);
    ulaw.chunks(160)
        .map(|frame| transcoder.transcode(frame).to_vec())
        .collect()
}

fn append(audio: &[u8]) -> Value {
    json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(audio)})
}

async fn append_all(ws: &mut Ws, frames: &[Vec<u8>]) {
    for frame in frames {
        ws.feed(Message::text(append(frame).to_string()))
            .await
            .expect("send");
    }
    ws.flush().await.expect("flush");
}

fn decode_delta(event: &Value) -> Vec<u8> {
    BASE64
        .decode(event["delta"].as_str().expect("delta is a string"))
        .expect("delta is base64")
}

fn ga_update(format: Value, turn_detection: Value) -> Value {
    json!({"type": "session.update", "session": {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": "repeat after me",
        "audio": {
            "input": {"format": format, "turn_detection": turn_detection},
            "output": {"format": format, "voice": "marin"},
        },
    }})
}

fn server_vad() -> Value {
    json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
           "silence_duration_ms": 500, "create_response": true, "interrupt_response": true})
}

/// Checks that `events`, from `response.created` to `response.done`, are
/// exactly the sequence of PROTOCOLS.md §2.4 for one audio response, with
/// consistent ids and transcript; returns the decoded audio deltas.
fn check_response(events: &[Value], names: &ResponseNames) -> Vec<Vec<u8>> {
    let start = events
        .iter()
        .position(|e| e["type"] == "response.created")
        .expect("response.created");
    let response = &events[start..];
    let kinds = types(response);
    let n = kinds.len();
    assert!(n >= 9, "short response: {kinds:?}");
    assert_eq!(
        kinds[..3],
        [
            "response.created",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds[n - 5..],
        [
            names.transcript_done,
            names.audio_done,
            "response.content_part.done",
            "response.output_item.done",
            "response.done"
        ]
    );
    for kind in &kinds[3..n - 5] {
        assert!(
            *kind == names.audio_delta || *kind == names.transcript_delta,
            "unexpected {kind} inside a response: {kinds:?}"
        );
    }

    let created = &response[0]["response"];
    assert_eq!(created["status"], "in_progress");
    let response_id = created["id"].as_str().expect("response id");
    assert!(response_id.starts_with("resp_"));
    let item = &response[1]["item"];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    let item_id = item["id"].as_str().expect("item id");
    assert!(item_id.starts_with("item_"));
    for event in &response[1..n - 1] {
        assert_eq!(event["response_id"], response_id, "{event}");
    }
    for event in &response[2..n - 2] {
        assert_eq!(event["item_id"], item_id, "{event}");
    }

    let transcript: String = response
        .iter()
        .filter(|e| e["type"] == names.transcript_delta)
        .map(|e| e["delta"].as_str().expect("transcript delta"))
        .collect();
    assert_eq!(response[n - 5]["transcript"], transcript.as_str());
    assert!(transcript.starts_with("(echo of "), "{transcript}");

    let done = &response[n - 1]["response"];
    assert_eq!(done["id"], response_id);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["id"], item_id);
    let usage = &done["usage"];
    for key in ["total_tokens", "input_tokens", "output_tokens"] {
        assert!(usage[key].is_u64(), "usage.{key} missing: {usage}");
    }
    assert!(usage["total_tokens"].as_u64() > Some(0));

    response
        .iter()
        .filter(|e| e["type"] == names.audio_delta)
        .map(decode_delta)
        .collect()
}

struct ResponseNames {
    audio_delta: &'static str,
    audio_done: &'static str,
    transcript_delta: &'static str,
    transcript_done: &'static str,
}

const GA: ResponseNames = ResponseNames {
    audio_delta: "response.output_audio.delta",
    audio_done: "response.output_audio.done",
    transcript_delta: "response.output_audio_transcript.delta",
    transcript_done: "response.output_audio_transcript.done",
};

const BETA: ResponseNames = ResponseNames {
    audio_delta: "response.audio.delta",
    audio_done: "response.audio.done",
    transcript_delta: "response.audio_transcript.delta",
    transcript_done: "response.audio_transcript.done",
};

fn assert_unique_event_ids(events: &[Value]) {
    let mut seen = HashSet::new();
    for event in events {
        let id = event["event_id"]
            .as_str()
            .expect("every event has an event_id");
        assert!(id.starts_with("event_"), "{id}");
        assert!(seen.insert(id.to_owned()), "duplicate event_id {id}");
    }
}

#[tokio::test]
async fn ga_turn_is_detected_and_spoken_back_with_the_full_event_sequence() {
    let peer = start(EchoOptions::default()).await;
    let mut ws = connect(&peer.url, false).await;

    let created = recv(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    assert!(created["session"]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("sess_")));
    assert_eq!(created["session"]["type"], "realtime");
    assert_eq!(created["session"]["model"], "gpt-realtime");
    assert_eq!(
        created["session"]["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );

    send(
        &mut ws,
        ga_update(json!({"type": "audio/pcm", "rate": 24000}), server_vad()),
    )
    .await;
    let updated = recv(&mut ws).await;
    assert_eq!(updated["type"], "session.updated", "{updated}");
    assert_eq!(
        updated["session"]["audio"]["output"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    assert_eq!(
        updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"],
        500
    );

    let mut frames = pcm16_frames(&fixture("speech.ulaw"));
    frames.extend(std::iter::repeat_n(vec![0u8; 960], 50)); // 1 s of silence
    let sent: Vec<u8> = frames.concat();
    append_all(&mut ws, &frames).await;

    let events = recv_until(&mut ws, "response.done").await;
    let kinds = types(&events);
    let started = find(&events, "input_audio_buffer.speech_started");
    let stopped = find(&events, "input_audio_buffer.speech_stopped");
    let start_ms = started["audio_start_ms"].as_u64().expect("audio_start_ms");
    let end_ms = stopped["audio_end_ms"].as_u64().expect("audio_end_ms");
    assert!(end_ms > start_ms, "{start_ms}..{end_ms}");
    // The fixture has 300 ms of silence before the speech.
    assert!(
        (250..=500).contains(&start_ms),
        "speech starts at {start_ms} ms"
    );
    let user_item = started["item_id"].as_str().expect("item_id");
    assert_eq!(stopped["item_id"], user_item);
    let committed = find(&events, "input_audio_buffer.committed");
    assert_eq!(committed["item_id"], user_item);
    let added = find(&events, "conversation.item.added");
    assert_eq!(added["item"]["id"], user_item);
    assert_eq!(added["item"]["role"], "user");
    assert_eq!(
        find(&events, "conversation.item.done")["item"]["id"],
        user_item
    );
    let at = |kind: &str| kinds.iter().position(|k| *k == kind).expect(kind);
    assert!(at("input_audio_buffer.speech_started") < at("input_audio_buffer.speech_stopped"));
    assert!(at("input_audio_buffer.speech_stopped") < at("input_audio_buffer.committed"));
    assert!(at("input_audio_buffer.committed") < at("conversation.item.added"));
    assert!(at("conversation.item.added") < at("response.created"));
    assert!(
        !kinds.contains(&"conversation.item.created"),
        "beta name in GA"
    );

    let deltas = check_response(&events, &GA);
    assert!(!deltas.is_empty());
    let sizes: HashSet<usize> = deltas.iter().map(Vec::len).collect();
    assert!(sizes.len() >= 2, "delta sizes should vary: {sizes:?}");
    let audio: Vec<u8> = deltas.concat();
    let audio_ms = audio.len() as i64 / 48;
    let turn_ms = (end_ms - start_ms) as i64;
    assert!(
        (audio_ms - turn_ms).abs() <= 400,
        "echoed {audio_ms} ms for a {turn_ms} ms turn"
    );
    // PCM16 in and out: the answer is the caller's audio, byte for byte,
    // from 300 ms before the speech.
    let offset = start_ms.saturating_sub(300) as usize * 48;
    assert_eq!(audio[..], sent[offset..offset + audio.len()]);
    assert_unique_event_ids(&events);

    drop(ws);
    if let Some(stop) = peer.stop {
        let _ = stop.send(());
    }
    peer.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn beta_dialect_uses_beta_names_and_ulaw() {
    let peer = start(EchoOptions::default()).await;
    let mut ws = connect(&peer.url, true).await;
    let created = recv(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    assert!(created["session"].get("type").is_none());
    assert_eq!(created["session"]["input_audio_format"], "pcm16");

    send(
        &mut ws,
        json!({"type": "session.update", "session": {
            "modalities": ["audio", "text"],
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": server_vad(),
        }}),
    )
    .await;
    let updated = recv(&mut ws).await;
    assert_eq!(updated["type"], "session.updated", "{updated}");
    assert_eq!(updated["session"]["output_audio_format"], "g711_ulaw");

    let speech = fixture("speech.ulaw");
    let mut frames: Vec<Vec<u8>> = speech.chunks(160).map(<[u8]>::to_vec).collect();
    frames.extend(std::iter::repeat_n(vec![0xFFu8; 160], 50));
    let sent = frames.concat();
    append_all(&mut ws, &frames).await;

    let events = recv_until(&mut ws, "response.done").await;
    let kinds = types(&events);
    for ga_only in [
        "conversation.item.added",
        "conversation.item.done",
        "response.output_audio.delta",
    ] {
        assert!(!kinds.contains(&ga_only), "GA name {ga_only} in beta");
    }
    let start_ms = find(&events, "input_audio_buffer.speech_started")["audio_start_ms"]
        .as_u64()
        .expect("audio_start_ms");
    let end_ms = find(&events, "input_audio_buffer.speech_stopped")["audio_end_ms"]
        .as_u64()
        .expect("audio_end_ms");
    let item = find(&events, "conversation.item.created");
    assert_eq!(item["item"]["role"], "user");
    let transcription = find(
        &events,
        "conversation.item.input_audio_transcription.completed",
    );
    assert_eq!(transcription["item_id"], item["item"]["id"]);
    assert_eq!(transcription["content_index"], 0);
    assert!(transcription["transcript"]
        .as_str()
        .is_some_and(|t| t.starts_with("(caller spoke ")));

    let audio = check_response(&events, &BETA).concat();
    let audio_ms = audio.len() as i64 / 8;
    let turn_ms = (end_ms - start_ms) as i64;
    assert!(
        (audio_ms - turn_ms).abs() <= 400,
        "echoed {audio_ms} ms for a {turn_ms} ms turn"
    );
    // μ-law out: the caller's samples again (compared decoded, since ±0
    // have two codes).
    let offset = start_ms.saturating_sub(300) as usize * 8;
    let decoded = |codes: &[u8]| codes.iter().map(|&c| g711::decode(c)).collect::<Vec<_>>();
    assert_eq!(
        decoded(&audio),
        decoded(&sent[offset..offset + audio.len()])
    );
    assert_unique_event_ids(&events);
}

#[tokio::test]
async fn cancel_truncate_and_client_errors_leave_the_session_usable() {
    let peer = start(EchoOptions::default()).await;
    let mut ws = connect(&peer.url, false).await;
    assert_eq!(recv(&mut ws).await["type"], "session.created");

    // A beta key in a GA session.update is rejected, and nothing changes.
    send(
        &mut ws,
        json!({"type": "session.update", "event_id": "evt_beta",
               "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}}),
    )
    .await;
    let err = recv(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["code"], "unknown_parameter");
    assert_eq!(err["error"]["event_id"], "evt_beta");

    // Manual turns.
    send(
        &mut ws,
        ga_update(json!({"type": "audio/pcm", "rate": 24000}), Value::Null),
    )
    .await;
    let updated = recv(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    assert!(updated["session"]["audio"]["input"]["turn_detection"].is_null());

    send(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;
    let err = recv(&mut ws).await;
    assert_eq!(err["error"]["code"], "input_audio_buffer_commit_empty");

    send(
        &mut ws,
        json!({"type": "response.cancel", "event_id": "evt_c1"}),
    )
    .await;
    let err = recv(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(
        err["error"],
        json!({"type": "invalid_request_error", "code": "response_cancel_not_active",
               "message": err["error"]["message"], "param": null, "event_id": "evt_c1"})
    );
    assert!(err["error"]["message"].is_string());

    send(
        &mut ws,
        json!({"type": "no.such.event", "event_id": "evt_u"}),
    )
    .await;
    let err = recv(&mut ws).await;
    assert_eq!(err["error"]["code"], "unknown_event");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(err["error"]["event_id"], "evt_u");

    ws.send(Message::text("{\"type\": \"input_audio_buffer.append\", "))
        .await
        .expect("send");
    let err = recv(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["code"], "invalid_json");

    // 2 s of the fixture, committed by hand: no VAD events in manual mode.
    let frames = pcm16_frames(&fixture("speech.ulaw"));
    append_all(&mut ws, &frames[15..115]).await;
    send(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;
    let events = recv_until(&mut ws, "conversation.item.done").await;
    assert_eq!(
        types(&events),
        [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done"
        ]
    );

    send(&mut ws, json!({"type": "response.create"})).await;
    let events = recv_until(&mut ws, GA.audio_delta).await;
    let response_id = find(&events, "response.created")["response"]["id"]
        .as_str()
        .expect("response id")
        .to_owned();
    let item_id = find(&events, "response.output_item.added")["item"]["id"]
        .as_str()
        .expect("item id")
        .to_owned();

    // A second response while one runs is refused.
    send(
        &mut ws,
        json!({"type": "response.create", "event_id": "evt_r2"}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "response.cancel", "response_id": response_id}),
    )
    .await;
    let mut received = decode_delta(events.last().expect("a delta")).len();
    let mut refused = false;
    let done = loop {
        let event = recv(&mut ws).await;
        match event["type"].as_str() {
            Some("response.output_audio.delta") => received += decode_delta(&event).len(),
            Some("error") => {
                assert_eq!(
                    event["error"]["code"],
                    "conversation_already_has_active_response"
                );
                refused = true;
            }
            Some("response.done") => break event,
            _ => {}
        }
    };
    assert!(refused);
    assert_eq!(done["response"]["id"], response_id.as_str());
    assert_eq!(done["response"]["status"], "cancelled");
    assert_eq!(
        done["response"]["status_details"]["reason"],
        "client_cancelled"
    );

    // Nothing more of it arrives: the next event answers the next request.
    send(&mut ws, json!({"type": "response.cancel"})).await;
    let err = recv(&mut ws).await;
    assert_eq!(err["error"]["code"], "response_cancel_not_active", "{err}");

    let received_ms = received as u64 / 48;
    assert!(received_ms >= 20);
    send(
        &mut ws,
        json!({"type": "conversation.item.truncate", "item_id": item_id,
               "content_index": 0, "audio_end_ms": received_ms + 1000}),
    )
    .await;
    let err = recv(&mut ws).await;
    assert_eq!(err["error"]["code"], "invalid_value", "{err}");
    assert_eq!(err["error"]["param"], "audio_end_ms");

    send(
        &mut ws,
        json!({"type": "conversation.item.truncate", "item_id": item_id,
               "content_index": 0, "audio_end_ms": received_ms}),
    )
    .await;
    let truncated = recv(&mut ws).await;
    assert_eq!(
        truncated,
        json!({"type": "conversation.item.truncated", "event_id": truncated["event_id"],
               "item_id": item_id, "content_index": 0, "audio_end_ms": received_ms})
    );

    send(
        &mut ws,
        json!({"type": "conversation.item.truncate", "item_id": "item_nope",
               "content_index": 0, "audio_end_ms": 0}),
    )
    .await;
    let err = recv(&mut ws).await;
    assert_eq!(err["error"]["code"], "item_truncate_invalid_item_id");

    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_1", "output": "{}"}}),
    )
    .await;
    let events = recv_until(&mut ws, "conversation.item.done").await;
    assert_eq!(events[0]["type"], "conversation.item.added");
    assert_eq!(events[0]["item"]["call_id"], "call_1");
    assert!(events[0]["item"]["id"].is_string());

    send(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    assert_eq!(recv(&mut ws).await["type"], "input_audio_buffer.cleared");
}

#[tokio::test]
async fn loopback_answers_every_frame_at_once_with_the_same_audio() {
    let peer = start(EchoOptions {
        mode: EchoMode::Loopback,
        ..EchoOptions::default()
    })
    .await;
    let mut ws = connect(&peer.url, false).await;
    assert_eq!(recv(&mut ws).await["type"], "session.created");
    send(
        &mut ws,
        ga_update(json!({"type": "audio/pcmu"}), server_vad()),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "session.updated");

    let speech = fixture("speech.ulaw");
    let frames: Vec<String> = speech[4000..]
        .chunks(160)
        .take(50)
        .map(|f| BASE64.encode(f))
        .collect();
    for frame in &frames {
        send(
            &mut ws,
            json!({"type": "input_audio_buffer.append", "audio": frame}),
        )
        .await;
    }
    let mut events = Vec::new();
    let mut deltas = Vec::new();
    while deltas.len() < frames.len() {
        let event = recv(&mut ws).await;
        if event["type"] == GA.audio_delta {
            deltas.push(event.clone());
        }
        events.push(event);
    }
    let kinds = types(&events);
    assert_eq!(
        kinds[..3],
        [
            "response.created",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "response.created").count(),
        1
    );
    assert!(!kinds.iter().any(|k| k.starts_with("input_audio_buffer.")));
    let response_id = &events[0]["response"]["id"];
    let item_id = &events[1]["item"]["id"];
    for (delta, frame) in deltas.iter().zip(&frames) {
        assert_eq!(delta["delta"], frame.as_str());
        assert_eq!(&delta["response_id"], response_id);
        assert_eq!(&delta["item_id"], item_id);
    }
    assert_unique_event_ids(&events);

    // Different formats in and out: μ-law in, 24 kHz PCM16 out.
    let mut ws = connect(&peer.url, false).await;
    assert_eq!(recv(&mut ws).await["type"], "session.created");
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}}}}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "session.updated");
    for frame in frames.iter().take(5) {
        send(
            &mut ws,
            json!({"type": "input_audio_buffer.append", "audio": frame}),
        )
        .await;
    }
    let mut seen = 0;
    while seen < 5 {
        let event = recv(&mut ws).await;
        if event["type"] == GA.audio_delta {
            assert_eq!(decode_delta(&event).len(), 960);
            seen += 1;
        }
    }
}

#[tokio::test]
async fn speech_during_a_response_cancels_it() {
    let peer = start(EchoOptions::default()).await;
    let mut ws = connect(&peer.url, false).await;
    assert_eq!(recv(&mut ws).await["type"], "session.created");
    send(
        &mut ws,
        ga_update(json!({"type": "audio/pcm", "rate": 24000}), server_vad()),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "session.updated");

    let mut frames = pcm16_frames(&fixture("speech.ulaw"));
    frames.extend(std::iter::repeat_n(vec![0u8; 960], 50));
    append_all(&mut ws, &frames).await;
    let events = recv_until(&mut ws, GA.audio_delta).await;
    let first_end = find(&events, "input_audio_buffer.speech_stopped")["audio_end_ms"]
        .as_u64()
        .expect("audio_end_ms");
    let response_id = find(&events, "response.created")["response"]["id"].clone();

    // The caller talks over the answer while its deltas are still flowing.
    append_all(&mut ws, &pcm16_frames(&fixture("bargein.ulaw"))).await;
    let events = recv_until(&mut ws, "response.done").await;
    let kinds = types(&events);
    let started = kinds
        .iter()
        .position(|k| *k == "input_audio_buffer.speech_started")
        .expect("speech_started");
    assert_eq!(
        started,
        kinds.len() - 2,
        "cancel follows speech_started: {kinds:?}"
    );
    assert!(
        events[started]["audio_start_ms"].as_u64() > Some(first_end),
        "{}",
        events[started]
    );
    let done = &events[kinds.len() - 1]["response"];
    assert_eq!(done["id"], response_id);
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["status_details"]["reason"], "turn_detected");
    assert_eq!(done["output"][0]["status"], "incomplete");
}

#[tokio::test]
async fn shutdown_closes_live_sessions() {
    let mut peer = start(EchoOptions::default()).await;
    let mut ws = connect(&peer.url, false).await;
    assert_eq!(recv(&mut ws).await["type"], "session.created");
    if let Some(stop) = peer.stop.take() {
        let _ = stop.send(());
    }
    let close = tokio::time::timeout(RECV_TIMEOUT, ws.next())
        .await
        .expect("timed out waiting for close");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    tokio::time::timeout(RECV_TIMEOUT, peer.task)
        .await
        .expect("serve returns")
        .expect("join")
        .expect("serve");
}
