//! Scripted tool calls of the echo peer (`--tool-call`, `--end-call-after`)
//! over real sockets on 127.0.0.1:0, driven by plain tokio-tungstenite
//! clients written from PROTOCOLS.md §2.4–2.5 (Realtime) and GPT-LIVE.md §6:
//! the Realtime function call's event order and round trip (including the
//! active-response error), `end_call` on the Nth
//! turn in both protocols, and the fallback to a normal answer when the
//! session does not declare the tool.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use callbridge_sim::echo::{self, EchoOptions, EchoProtocol};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Long enough for a GPT-Live answer streamed at real time on a slow CI box.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

const LOOKUP_ARGS: &str = r#"{"order_id":"A-12345"}"#;
const LOOKUP_OUTPUT: &str = r#"{"status":"shipped","eta":"Friday"}"#;
const END_CALL_ARGS: &str = r#"{"reason":"the caller is done"}"#;

struct Peer {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn start(options: EchoOptions) -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let path = options.protocol.path();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(echo::serve(listener, options, async move {
        let _ = stopped.await;
    }));
    Peer {
        url: format!("ws://{addr}{path}"),
        _stop: stop,
    }
}

/// A Realtime peer that answers as fast as it can (the tests measure order,
/// not pacing).
fn realtime(tool_call: Option<&str>, end_call_after: Option<u32>) -> EchoOptions {
    EchoOptions {
        protocol: EchoProtocol::Realtime,
        speed: 0.0,
        tool_call: tool_call.map(|t| t.parse().expect("tool call")),
        end_call_after,
        ..EchoOptions::default()
    }
}

fn live(tool_call: Option<&str>, end_call_after: Option<u32>) -> EchoOptions {
    EchoOptions {
        protocol: EchoProtocol::Live,
        ..realtime(tool_call, end_call_after)
    }
}

async fn connect(url: &str, beta: bool) -> Ws {
    let mut request = url.into_client_request().expect("request");
    if beta {
        request
            .headers_mut()
            .insert("OpenAI-Beta", HeaderValue::from_static("realtime=v1"));
    }
    tokio_tungstenite::connect_async(request)
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

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn find<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", types(events)))
}

/// The event types from the last `response.created` on, with runs of one
/// kind of delta collapsed into one entry.
fn response_shape(events: &[Value]) -> Vec<&str> {
    let kinds = types(events);
    let from = kinds
        .iter()
        .rposition(|k| *k == "response.created")
        .expect("response.created");
    let mut shape: Vec<&str> = Vec::new();
    for kind in &kinds[from..] {
        if !(kind.ends_with(".delta") && shape.last() == Some(kind)) {
            shape.push(kind);
        }
    }
    shape
}

/// Concatenated text of the deltas of type `kind`.
fn joined(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["delta"].as_str().expect("delta"))
        .collect()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name),
    )
    .expect("fixture")
}

/// One caller turn: 1.5 s of the speech fixture in 20 ms μ-law frames, then
/// 800 ms of silence, as `append_type` events.
async fn speak(ws: &mut Ws, append_type: &str) {
    let speech = fixture("speech.ulaw");
    let mut frames: Vec<Vec<u8>> = speech[..12_000].chunks(160).map(<[u8]>::to_vec).collect();
    frames.extend(std::iter::repeat_n(vec![0xFF; 160], 40));
    for frame in frames {
        let event = json!({"type": append_type, "audio": BASE64.encode(frame)});
        ws.feed(Message::text(event.to_string()))
            .await
            .expect("send");
    }
    ws.flush().await.expect("flush");
}

fn function_tool(name: &str) -> Value {
    json!({"type": "function", "name": name, "description": format!("The {name} tool"),
           "parameters": {"type": "object", "properties": {}}})
}

/// A Realtime session in μ-law with server VAD and function `tools`;
/// returns the socket after `session.updated`.
async fn realtime_session(peer: &Peer, beta: bool, tools: &[&str]) -> Ws {
    let mut ws = connect(&peer.url, beta).await;
    assert_eq!(recv(&mut ws).await["type"], "session.created");
    let tools: Vec<Value> = tools.iter().map(|t| function_tool(t)).collect();
    let session = if beta {
        json!({"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw",
               "turn_detection": {"type": "server_vad"}, "tools": tools, "tool_choice": "auto"})
    } else {
        json!({"type": "realtime", "audio": {
                   "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                   "output": {"format": {"type": "audio/pcmu"}}},
               "tools": tools, "tool_choice": "auto"})
    };
    send(
        &mut ws,
        json!({"type": "session.update", "event_id": "cb_update", "session": session}),
    )
    .await;
    let updated = recv(&mut ws).await;
    assert_eq!(updated["type"], "session.updated", "{updated}");
    assert_eq!(
        updated["session"]["tools"].as_array().unwrap().len(),
        tools.len()
    );
    ws
}

/// Checks the events of a function call item at `index` of a Realtime
/// response (PROTOCOLS.md §2.5) and returns its `call_id`.
fn check_function_call(events: &[Value], index: u64, name: &str, args: &str, beta: bool) -> String {
    let response_id = find(events, "response.created")["response"]["id"]
        .as_str()
        .expect("response id")
        .to_owned();
    let added = events
        .iter()
        .find(|e| e["type"] == "response.output_item.added" && e["item"]["type"] == "function_call")
        .expect("output_item.added for the call");
    assert_eq!(added["response_id"], response_id.as_str());
    assert_eq!(added["output_index"], index);
    let item = &added["item"];
    assert_eq!(item["name"], name);
    assert_eq!(item["arguments"], "");
    assert_eq!(item["status"], "in_progress");
    let item_id = item["id"].as_str().expect("item id");
    let call_id = item["call_id"].as_str().expect("call_id").to_owned();

    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .collect();
    assert!(!deltas.is_empty());
    for delta in &deltas {
        assert_eq!(delta["item_id"], item_id);
        assert_eq!(delta["call_id"], call_id.as_str());
        assert_eq!(delta["output_index"], index);
    }
    assert_eq!(
        joined(events, "response.function_call_arguments.delta"),
        args
    );
    let done = find(events, "response.function_call_arguments.done");
    assert_eq!(done["call_id"], call_id.as_str());
    assert_eq!(done["item_id"], item_id);
    assert_eq!(done["arguments"], args);
    if beta {
        assert!(done.get("name").is_none(), "beta .done has no name: {done}");
    } else {
        assert_eq!(done["name"], name);
    }
    let item_done = events
        .iter()
        .find(|e| e["type"] == "response.output_item.done" && e["item"]["type"] == "function_call")
        .expect("output_item.done for the call");
    assert_eq!(item_done["output_index"], index);
    let item = &item_done["item"];
    assert_eq!(item["status"], "completed");
    assert_eq!(item["id"], item_id);
    assert_eq!(item["call_id"], call_id.as_str());
    assert_eq!(item["arguments"], args);

    let response = &events.last().expect("events")["response"];
    assert_eq!(events.last().unwrap()["type"], "response.done");
    assert_eq!(response["id"], response_id.as_str());
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][index as usize], *item);
    assert!(
        response["usage"]["total_tokens"].as_u64().is_some(),
        "{response}"
    );
    call_id
}

#[tokio::test]
async fn realtime_function_call_round_trip() {
    // Paced at twice real time (the default), so the continuation is still
    // running when the second response.create arrives.
    let peer = start(EchoOptions {
        speed: 2.0,
        ..realtime(Some(&format!("lookup_order:{LOOKUP_ARGS}")), None)
    })
    .await;
    let mut ws = realtime_session(&peer, false, &["lookup_order"]).await;

    speak(&mut ws, "input_audio_buffer.append").await;
    let events = recv_until(&mut ws, is("response.done")).await;
    let kinds = types(&events);
    let committed = kinds
        .iter()
        .position(|k| *k == "input_audio_buffer.committed")
        .expect("committed");
    assert!(committed < kinds.iter().position(|k| *k == "response.created").unwrap());
    assert_eq!(
        response_shape(&events),
        [
            "response.created",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.done"
        ]
    );
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .count()
            >= 2,
        "the arguments should arrive in several deltas"
    );
    let call_id = check_function_call(&events, 0, "lookup_order", LOOKUP_ARGS, false);
    let output = &events.last().unwrap()["response"]["output"];
    assert_eq!(output.as_array().unwrap().len(), 1, "{output}");

    // The output is acked like any item.
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "event_id": "cb_output", "item": {
            "type": "function_call_output", "call_id": call_id, "output": LOOKUP_OUTPUT}}),
    )
    .await;
    let added = recv(&mut ws).await;
    assert_eq!(added["type"], "conversation.item.added", "{added}");
    assert_eq!(added["item"]["type"], "function_call_output");
    assert_eq!(added["item"]["call_id"], call_id.as_str());
    assert_eq!(added["item"]["output"], LOOKUP_OUTPUT);
    assert!(added["item"]["id"].is_string());
    assert_eq!(recv(&mut ws).await["type"], "conversation.item.done");

    // Continue; a second response.create while that response runs is refused.
    send(
        &mut ws,
        json!({"type": "response.create", "event_id": "cb_continue"}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "response.create", "event_id": "cb_again"}),
    )
    .await;
    let events = recv_until(&mut ws, is("response.done")).await;
    let error = find(&events, "error");
    assert_eq!(
        error["error"]["code"], "conversation_already_has_active_response",
        "{error}"
    );
    assert_eq!(error["error"]["event_id"], "cb_again");
    let created = find(&events, "response.created");
    let done = events.last().unwrap();
    assert_eq!(done["response"]["id"], created["response"]["id"]);
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(done["response"]["output"][0]["type"], "message");
    // An audio answer (a chime of 1.5 s in μ-law) that says the tool's output.
    let audio: usize = events
        .iter()
        .filter(|e| e["type"] == "response.output_audio.delta")
        .map(|e| {
            BASE64
                .decode(e["delta"].as_str().unwrap())
                .expect("base64")
                .len()
        })
        .sum();
    assert!(audio >= 8 * 1000, "{audio} bytes of audio");
    let transcript = joined(&events, "response.output_audio_transcript.delta");
    assert!(transcript.contains(LOOKUP_OUTPUT), "{transcript}");
    assert_eq!(
        find(&events, "response.output_audio_transcript.done")["transcript"],
        transcript.as_str()
    );

    // Only once: the next turn is echoed.
    speak(&mut ws, "input_audio_buffer.append").await;
    let events = recv_until(&mut ws, is("response.done")).await;
    assert!(!types(&events).contains(&"response.function_call_arguments.done"));
    let transcript = joined(&events, "response.output_audio_transcript.delta");
    assert!(transcript.starts_with("(echo of "), "{transcript}");
}

#[tokio::test]
async fn realtime_beta_function_call_names_its_events_the_beta_way() {
    let peer = start(realtime(Some(&format!("lookup_order:{LOOKUP_ARGS}")), None)).await;
    let mut ws = realtime_session(&peer, true, &["lookup_order"]).await;
    speak(&mut ws, "input_audio_buffer.append").await;
    let events = recv_until(&mut ws, is("response.done")).await;
    let call_id = check_function_call(&events, 0, "lookup_order", LOOKUP_ARGS, true);
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": LOOKUP_OUTPUT}}),
    )
    .await;
    let created = recv(&mut ws).await;
    assert_eq!(created["type"], "conversation.item.created", "{created}");
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = recv_until(&mut ws, is("response.done")).await;
    assert!(types(&events).contains(&"response.audio.delta"));
    let transcript = joined(&events, "response.audio_transcript.delta");
    assert!(transcript.contains(LOOKUP_OUTPUT), "{transcript}");
}

#[tokio::test]
async fn realtime_end_call_after_the_nth_turn() {
    let peer = start(realtime(None, Some(2))).await;
    let mut ws = realtime_session(&peer, false, &["lookup_order", "end_call"]).await;

    // Turn 1: an ordinary echo.
    speak(&mut ws, "input_audio_buffer.append").await;
    let events = recv_until(&mut ws, is("response.done")).await;
    assert!(!types(&events).contains(&"response.function_call_arguments.done"));

    // Turn 2: one response with the goodbye, then the end_call call.
    speak(&mut ws, "input_audio_buffer.append").await;
    let events = recv_until(&mut ws, is("response.done")).await;
    let shape = response_shape(&events);
    let media = [
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
    ];
    let first_media = shape.iter().position(|k| media.contains(k)).expect("audio");
    let last_media = shape
        .iter()
        .rposition(|k| media.contains(k))
        .expect("audio");
    assert_eq!(shape[first_media - 1], "response.content_part.added");
    assert_eq!(
        shape[last_media + 1],
        "response.output_audio_transcript.done"
    );
    let shape: Vec<&str> = shape.into_iter().filter(|k| !media.contains(k)).collect();
    assert_eq!(
        shape,
        [
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_audio_transcript.done",
            "response.output_audio.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.done"
        ]
    );
    let said = joined(&events, "response.output_audio_transcript.delta");
    assert_eq!(said, "Goodbye, thanks for calling.");
    let message = &find(&events, "response.output_item.added")["item"];
    assert_eq!(message["type"], "message");
    let call_id = check_function_call(&events, 1, "end_call", END_CALL_ARGS, false);
    let output = &events.last().unwrap()["response"]["output"];
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[0]["status"], "completed");
    assert_eq!(output[0]["content"][0]["transcript"], said.as_str());
    assert_eq!(output[1]["type"], "function_call");

    // The bridge answers; the peer says a short last word.
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": "{\"ok\":true}"}}),
    )
    .await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = recv_until(&mut ws, is("response.done")).await;
    assert_eq!(
        types(&events)[..2],
        ["conversation.item.added", "conversation.item.done"]
    );
    assert_eq!(
        joined(&events, "response.output_audio_transcript.delta"),
        "Bye now."
    );
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
}

#[tokio::test]
async fn realtime_undeclared_tools_answer_the_turn_normally() {
    // Neither lookup_order nor end_call is declared (only another tool).
    let peer = start(realtime(
        Some(&format!("lookup_order:{LOOKUP_ARGS}")),
        Some(1),
    ))
    .await;
    let mut ws = realtime_session(&peer, false, &["transfer_call"]).await;
    speak(&mut ws, "input_audio_buffer.append").await;
    let events = recv_until(&mut ws, is("response.done")).await;
    assert!(
        !types(&events).contains(&"response.function_call_arguments.done"),
        "{:?}",
        types(&events)
    );
    let transcript = joined(&events, "response.output_audio_transcript.delta");
    assert!(transcript.starts_with("(echo of "), "{transcript}");
    let done = events.last().unwrap();
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(done["response"]["output"][0]["type"], "message");
    assert_eq!(done["response"]["output"].as_array().unwrap().len(), 1);
}

fn live_start(tools: &[&str]) -> Value {
    let tools: Vec<Value> = tools.iter().map(|t| function_tool(t)).collect();
    json!({"type": "session.start", "event_id": "cb_start", "session": {
        "model": "gpt-live-1",
        "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}},
        "delegation": {"type": "responses", "responses": {"model": "gpt-5.5", "tools": tools}},
    }})
}

async fn live_session(peer: &Peer, tools: &[&str]) -> Ws {
    let mut ws = connect(&peer.url, false).await;
    send(&mut ws, live_start(tools)).await;
    let started = recv(&mut ws).await;
    assert_eq!(started["type"], "session.started", "{started}");
    ws
}

#[tokio::test]
async fn live_end_call_after_the_nth_turn() {
    let peer = start(live(None, Some(1))).await;
    let mut ws = live_session(&peer, &["end_call"]).await;

    // The goodbye is spoken; once its audio is all sent, end_call is delegated.
    speak(&mut ws, "session.input_audio.append").await;
    let events = recv_until(&mut ws, |e| {
        e["type"] == "response.event" && e["event"]["type"] == "response.completed"
    })
    .await;
    let kinds = types(&events);
    let goodbye_done = kinds
        .iter()
        .position(|k| *k == "session.usage.updated")
        .expect("usage after the goodbye");
    let created = kinds
        .iter()
        .position(|k| *k == "session.delegation.created")
        .expect("delegation");
    let last_audio = kinds
        .iter()
        .rposition(|k| *k == "session.output_audio.delta")
        .expect("goodbye audio");
    assert!(
        last_audio < goodbye_done && goodbye_done < created,
        "{kinds:?}"
    );
    assert_eq!(
        joined(&events, "session.output_transcript.delta"),
        "Goodbye, thanks for calling."
    );
    let delegation = &events[created]["delegation"];
    assert_eq!(delegation["target"], "responses");
    let delegation_id = delegation["id"].as_str().expect("delegation id");
    let nested: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.event")
        .inspect(|e| assert_eq!(e["delegation_id"], delegation_id))
        .map(|e| &e["event"])
        .collect();
    let done = nested
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .expect("output_item.done");
    let item = &done["item"];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["status"], "completed");
    assert_eq!(item["name"], "end_call");
    assert_eq!(item["arguments"], END_CALL_ARGS);
    let call_id = item["call_id"].as_str().expect("call_id");

    send(
        &mut ws,
        json!({"type": "response.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": "{\"ok\":true}"}}),
    )
    .await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = recv_until(&mut ws, is("session.usage.updated")).await;
    assert!(!types(&events).contains(&"error"), "{:?}", types(&events));
    assert_eq!(
        joined(&events, "session.output_transcript.delta"),
        "Bye now."
    );
    assert!(types(&events).contains(&"session.output_audio.delta"));
}

#[tokio::test]
async fn live_undeclared_end_call_answers_the_turn_normally() {
    let peer = start(live(None, Some(1))).await;
    let mut ws = live_session(&peer, &["lookup_order"]).await;
    speak(&mut ws, "session.input_audio.append").await;
    let events = recv_until(&mut ws, is("session.usage.updated")).await;
    assert!(!types(&events).contains(&"session.delegation.created"));
    let said = joined(&events, "session.output_transcript.delta");
    assert!(said.starts_with("(echo of "), "{said}");
}
