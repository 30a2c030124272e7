//! The relay driven through channels, in paused time: pacing, barge-in and
//! bad input, deterministic to the millisecond.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};

use super::*;
use crate::call::tools::NoTools;
use crate::config::Config;
use crate::upstream::{driver_for, SessionSpec};

const SID: &str = "MZ0123456789abcdef0123456789abcdef";

struct Harness {
    to_bridge_twilio: mpsc::Sender<WsIn>,
    to_bridge_model: mpsc::Sender<WsIn>,
    from_bridge_twilio: mpsc::Receiver<WsOut>,
    from_bridge_model: mpsc::Receiver<WsOut>,
    task: tokio::task::JoinHandle<CallSummary>,
    metrics: Metrics,
}

fn stream_of(rx: mpsc::Receiver<WsIn>) -> impl Stream<Item = WsIn> + Unpin {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }))
}

fn start(mode: AudioMode) -> Harness {
    let mut config = Config::default();
    config.audio.mode = mode;
    start_with(&config, Arc::new(NoTools))
}

/// A call with the driver `config` selects, and `tools` answering its calls.
fn start_with(config: &Config, tools: Arc<dyn ToolRunner>) -> Harness {
    let (tt_tx, tt_rx) = mpsc::channel(1024);
    let (tm_tx, tm_rx) = mpsc::channel(1024);
    let (ft_tx, ft_rx) = mpsc::channel(4096);
    let (fm_tx, fm_rx) = mpsc::channel(4096);
    let metrics = Metrics::new();
    let params = CallParams {
        playout_lead: config.playout_lead(),
        greeting: config.agent.greeting.clone(),
        ..CallParams::new("CA1", SID, config.audio.mode)
    };
    let model = Model {
        driver: driver_for(SessionSpec::from_config(config, tools.specs())),
        tx: PollSender::new(fm_tx),
        rx: stream_of(tm_rx),
    };
    let task = tokio::spawn(run(
        params,
        metrics.clone(),
        tools,
        PollSender::new(ft_tx),
        stream_of(tt_rx),
        model,
        CancellationToken::new(),
    ));
    Harness {
        to_bridge_twilio: tt_tx,
        to_bridge_model: tm_tx,
        from_bridge_twilio: ft_rx,
        from_bridge_model: fm_rx,
        task,
        metrics,
    }
}

fn text(v: Value) -> WsIn {
    WsIn::Text(Bytes::from(v.to_string()))
}

fn json_of(out: WsOut) -> Value {
    match out {
        WsOut::Text(t) => serde_json::from_str(&t).unwrap(),
        WsOut::Close(code, _) => json!({"close": code}),
    }
}

fn drain(rx: &mut mpsc::Receiver<WsOut>) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(json_of(m));
    }
    out
}

/// Lets the bridge task run without advancing the clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn pcm16_ms(ms: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![0u8; ms * 48])
}

fn delta(resp: &str, item: &str, ms: usize) -> WsIn {
    text(
        json!({"type":"response.output_audio.delta","response_id":resp,"item_id":item,"output_index":0,"content_index":0,"delta":pcm16_ms(ms)}),
    )
}

fn media_ms(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == "media")
        .map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["media"]["payload"].as_str().unwrap())
                .unwrap()
                .len()
                / 8
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn session_update_goes_first_and_caller_audio_is_relayed_per_frame() {
    let mut h = start(AudioMode::Pcm16);
    settle().await;
    assert_eq!(
        json_of(h.from_bridge_model.recv().await.unwrap())["type"],
        "session.update"
    );
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
    for seq in 2..5 {
        h.to_bridge_twilio
            .send(text(json!({"event":"media","sequenceNumber":seq.to_string(),"streamSid":SID,"media":{"track":"inbound","chunk":"1","timestamp":"0","payload":payload}})))
            .await
            .unwrap();
    }
    settle().await;
    let sent = drain(&mut h.from_bridge_model);
    assert_eq!(sent.len(), 3, "one append per frame, no batching");
    for e in &sent {
        assert_eq!(e["type"], "input_audio_buffer.append");
        let audio = base64::engine::general_purpose::STANDARD
            .decode(e["audio"].as_str().unwrap())
            .unwrap();
        assert_eq!(audio.len(), 960);
    }
    // Marks are numbered too: no gap. A real gap is counted as inbound loss.
    for msg in [
        json!({"event":"mark","sequenceNumber":"5","streamSid":SID,"mark":{"name":"x"}}),
        json!({"event":"media","sequenceNumber":"6","media":{"payload":payload}}),
    ] {
        h.to_bridge_twilio.send(text(msg)).await.unwrap();
    }
    settle().await;
    assert_eq!(h.metrics.dropped_in_gap.get(), 0);
    h.to_bridge_twilio
        .send(text(
            json!({"event":"media","sequenceNumber":"9","media":{"payload":payload}}),
        ))
        .await
        .unwrap();
    settle().await;
    assert_eq!(h.metrics.dropped_in_gap.get(), 2);
    h.to_bridge_twilio
        .send(text(json!({"event":"stop","streamSid":SID})))
        .await
        .unwrap();
    let summary = h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::Completed);
    assert_eq!(summary.frames_in, 5);
    // Both sockets are closed at the end.
    assert!(drain(&mut h.from_bridge_model).contains(&json!({"close": 1000})));
}

#[tokio::test(start_paused = true)]
async fn answer_audio_is_paced_at_the_lead() {
    let mut h = start(AudioMode::Pcm16);
    settle().await;
    drain(&mut h.from_bridge_model);
    h.to_bridge_model
        .send(text(
            json!({"type":"response.created","response":{"id":"r1"}}),
        ))
        .await
        .unwrap();
    h.to_bridge_model
        .send(delta("r1", "i1", 2000))
        .await
        .unwrap();
    settle().await;
    let out = drain(&mut h.from_bridge_twilio);
    assert_eq!(media_ms(&out), 200, "only the lead goes out at once");
    // 20 ms Twilio frames, a mark closing each 100 ms chunk.
    let media: Vec<&Value> = out.iter().filter(|e| e["event"] == "media").collect();
    assert_eq!(media.len(), 10);
    assert!(media
        .iter()
        .all(|e| e["media"]["payload"].as_str().unwrap().len() == 216));
    let kinds: Vec<&str> = out.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds[5], "mark");
    assert_eq!(kinds[11], "mark");
    assert_eq!(kinds.len(), 12);
    let mut total = 200;
    for _ in 0..50 {
        tokio::time::advance(Duration::from_millis(20)).await;
        settle().await;
        total += media_ms(&drain(&mut h.from_bridge_twilio));
    }
    assert!((1180..=1200).contains(&total), "sent {total} ms after 1 s");
    drop(h.to_bridge_twilio);
    assert_eq!(h.task.await.unwrap().outcome, Outcome::CallerGone);
}

#[tokio::test(start_paused = true)]
async fn barge_in_clears_truncates_and_drops_late_deltas() {
    let mut h = start(AudioMode::Pcm16);
    settle().await;
    drain(&mut h.from_bridge_model);
    h.to_bridge_model
        .send(text(
            json!({"type":"response.created","response":{"id":"r1"}}),
        ))
        .await
        .unwrap();
    h.to_bridge_model
        .send(delta("r1", "i1", 3000))
        .await
        .unwrap();
    settle().await;
    // Twilio plays 500 ms and acknowledges the marks it reached.
    let mut sent = drain(&mut h.from_bridge_twilio);
    for _ in 0..5 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        sent.extend(drain(&mut h.from_bridge_twilio));
    }
    let marks: Vec<String> = sent
        .iter()
        .filter(|e| e["event"] == "mark")
        .map(|e| e["mark"]["name"].as_str().unwrap().to_owned())
        .collect();
    // The first 400 ms of marks echoed (as if the 4th chunk was still playing).
    for name in marks.iter().take(4) {
        h.to_bridge_twilio
            .send(text(
                json!({"event":"mark","streamSid":SID,"mark":{"name":name}}),
            ))
            .await
            .unwrap();
    }
    settle().await;
    let sent_ms = media_ms(&sent);
    assert_eq!(sent_ms, 700, "500 ms played + 200 ms lead");

    h.to_bridge_model
        .send(text(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":5000,"item_id":"in2"})))
        .await
        .unwrap();
    settle().await;
    let to_twilio = drain(&mut h.from_bridge_twilio);
    assert_eq!(to_twilio, vec![json!({"event":"clear","streamSid":SID})]);
    // Server VAD cancels the response by itself (interrupt_response):
    // the bridge sends no response.cancel, only the truncate.
    let to_model = drain(&mut h.from_bridge_model);
    assert_eq!(to_model.len(), 1, "{to_model:?}");
    assert_eq!(to_model[0]["type"], "conversation.item.truncate");
    assert_eq!(to_model[0]["item_id"], "i1");
    // 700 ms sent, 200 ms of it still queued at Twilio: 500 ms heard, which
    // is between the 400 ms acknowledged and the 700 ms sent.
    assert_eq!(to_model[0]["audio_end_ms"], 500);

    // Marks flushed by the clear are stale; late deltas of r1 are dropped.
    for name in marks.iter().skip(4) {
        h.to_bridge_twilio
            .send(text(
                json!({"event":"mark","streamSid":SID,"mark":{"name":name}}),
            ))
            .await
            .unwrap();
    }
    h.to_bridge_model
        .send(delta("r1", "i1", 100))
        .await
        .unwrap();
    h.to_bridge_model
        .send(text(
            json!({"type":"response.output_audio.done","response_id":"r1","item_id":"i1"}),
        ))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    settle().await;
    assert!(
        drain(&mut h.from_bridge_twilio).is_empty(),
        "no stale audio after clear"
    );
    assert_eq!(h.metrics.dropped_out_stale.get(), 1);

    // The next response plays normally, in the new generation.
    h.to_bridge_model
        .send(text(
            json!({"type":"response.done","response":{"id":"r1","status":"cancelled"}}),
        ))
        .await
        .unwrap();
    h.to_bridge_model
        .send(text(
            json!({"type":"response.created","response":{"id":"r2"}}),
        ))
        .await
        .unwrap();
    h.to_bridge_model
        .send(delta("r2", "i2", 100))
        .await
        .unwrap();
    settle().await;
    let out = drain(&mut h.from_bridge_twilio);
    assert_eq!(media_ms(&out), 100);
    assert!(out.iter().any(|e| e["mark"]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("1:"))));
    assert_eq!(h.metrics.bargeins.get(), 1);
    assert_eq!(h.metrics.truncations_sent.get(), 1);
    drop(h.to_bridge_twilio);
    h.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn speech_with_nothing_playing_is_not_a_barge_in() {
    let mut h = start(AudioMode::Pcmu);
    settle().await;
    drain(&mut h.from_bridge_model);
    h.to_bridge_model
        .send(text(
            json!({"type":"input_audio_buffer.speech_started","audio_start_ms":0,"item_id":"in1"}),
        ))
        .await
        .unwrap();
    settle().await;
    assert!(drain(&mut h.from_bridge_twilio).is_empty());
    assert!(drain(&mut h.from_bridge_model).is_empty());
    assert_eq!(h.metrics.bargeins.get(), 0);
    drop(h.to_bridge_twilio);
    h.task.await.unwrap();
}

/// A tiny deterministic generator for garbage.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(start_paused = true)]
async fn garbage_from_the_model_never_ends_or_breaks_the_call() {
    let h = start(AudioMode::Pcm16);
    settle().await;
    let mut rng = XorShift(0x9E3779B97F4A7C15);
    let templates = [
        r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"AAE"}"#,
        r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"AAEC"}"#,
        r#"{"type":"response.created","response":{"id":5}}"#,
        r#"{"type":"error","error":null}"#,
        r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":-1}"#,
        r#"{"type":"response.done","response":{"id":"r","usage":{"input_tokens":"x"}}}"#,
        r#"{"type":"conversation.item.truncated"}"#,
    ];
    for i in 0..500 {
        let frame = if i % 3 == 0 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| (rng.next() % 128) as u8).collect();
            WsIn::Text(Bytes::from(bytes))
        } else if i % 7 == 0 {
            WsIn::Binary(12)
        } else {
            let t = templates[(rng.next() % templates.len() as u64) as usize];
            WsIn::Text(Bytes::from(t))
        };
        h.to_bridge_model.send(frame).await.unwrap();
    }
    settle().await;
    assert!(!h.task.is_finished(), "model garbage is dropped, not fatal");
    h.to_bridge_twilio
        .send(text(json!({"event":"stop"})))
        .await
        .unwrap();
    assert_eq!(h.task.await.unwrap().outcome, Outcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_bad_twilio_frames_closes_with_1008() {
    let mut h = start(AudioMode::Pcm16);
    settle().await;
    for _ in 0..15 {
        h.to_bridge_twilio
            .send(WsIn::Text(Bytes::from_static(b"{nope")))
            .await
            .unwrap();
    }
    settle().await;
    assert!(!h.task.is_finished(), "a few bad frames are tolerated");
    // The allowance refills slowly: after 10 s, 20 more are fine.
    tokio::time::advance(Duration::from_secs(10)).await;
    for _ in 0..20 {
        h.to_bridge_twilio.send(WsIn::Binary(3)).await.unwrap();
    }
    settle().await;
    assert!(!h.task.is_finished());
    for _ in 0..5 {
        let _ = h
            .to_bridge_twilio
            .send(WsIn::Text(Bytes::from_static(b"[]")))
            .await;
    }
    let summary = h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::ProtocolError);
    let closes: Vec<Value> = drain(&mut h.from_bridge_twilio);
    assert!(closes.contains(&json!({"close": 1008})), "{closes:?}");
}

#[tokio::test(start_paused = true)]
async fn drain_signal_closes_with_going_away() {
    let (tt_tx, tt_rx) = mpsc::channel(8);
    let (tm_tx, tm_rx) = mpsc::channel(8);
    let (ft_tx, mut ft_rx) = mpsc::channel(64);
    let (fm_tx, _fm_rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let params = CallParams::new("CA1", SID, AudioMode::Pcmu);
    let model = Model {
        driver: driver_for(SessionSpec::from_config(&Config::default(), Vec::new())),
        tx: PollSender::new(fm_tx),
        rx: stream_of(tm_rx),
    };
    let task = tokio::spawn(run(
        params,
        Metrics::new(),
        Arc::new(NoTools),
        PollSender::new(ft_tx),
        stream_of(tt_rx),
        model,
        shutdown.clone(),
    ));
    settle().await;
    shutdown.cancel();
    assert_eq!(task.await.unwrap().outcome, Outcome::Drained);
    assert_eq!(json_of(ft_rx.recv().await.unwrap()), json!({"close": 1001}));
    drop((tt_tx, tm_tx));
}

/// A tool that answers after `delay`, counting the calls it started.
struct SlowTool {
    delay: Duration,
    started: std::sync::atomic::AtomicUsize,
}

impl ToolRunner for SlowTool {
    fn specs(&self) -> Vec<crate::upstream::ToolSpec> {
        ["slow", "fast"]
            .into_iter()
            .map(|name| crate::upstream::ToolSpec {
                name: name.into(),
                description: "test".into(),
                parameters: json!({"type":"object"}),
            })
            .collect()
    }

    fn run(&self, call: crate::upstream::ToolCall, _: &CallContext) -> ToolFuture {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = if call.name == "slow" {
            self.delay
        } else {
            Duration::ZERO
        };
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            crate::call::tools::ToolAnswer::ok(format!("{{\"from\":\"{}\"}}", call.name))
        })
    }
}

fn function_call(resp: &str, call_id: &str, name: &str) -> WsIn {
    text(
        json!({"type":"response.output_item.done","response_id":resp,"output_index":0,"item":{"id":format!("fc_{call_id}"),"type":"function_call","call_id":call_id,"name":name,"arguments":"{}","status":"completed"}}),
    )
}

fn media_frame(seq: u64) -> WsIn {
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
    text(
        json!({"event":"media","sequenceNumber":seq.to_string(),"streamSid":SID,"media":{"track":"inbound","chunk":"1","timestamp":"0","payload":payload}}),
    )
}

/// Two calls of one response run beside the relay: the caller keeps being
/// heard and barge-in keeps working while the slow one runs; both outputs
/// then go back with one response.create, sent only once no response is
/// active.
#[tokio::test(start_paused = true)]
async fn tools_run_beside_the_relay_and_are_answered_as_one_batch() {
    let tools = Arc::new(SlowTool {
        delay: Duration::from_secs(3),
        started: Default::default(),
    });
    let mut h = start_with(&Config::default(), tools.clone());
    settle().await;
    drain(&mut h.from_bridge_model);
    let m = &h.to_bridge_model;
    m.send(text(
        json!({"type":"response.created","response":{"id":"r1"}}),
    ))
    .await
    .unwrap();
    m.send(function_call("r1", "c1", "slow")).await.unwrap();
    m.send(function_call("r1", "c2", "fast")).await.unwrap();
    m.send(text(
        json!({"type":"response.done","response":{"id":"r1","status":"completed"}}),
    ))
    .await
    .unwrap();
    settle().await;
    assert_eq!(tools.started.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The fast call is done, the slow one is not: nothing is sent yet.
    assert!(drain(&mut h.from_bridge_model).is_empty());

    // Meanwhile the caller speaks and the model answers: both keep flowing.
    for seq in 2..12 {
        h.to_bridge_twilio.send(media_frame(seq)).await.unwrap();
    }
    m.send(text(
        json!({"type":"response.created","response":{"id":"r2"}}),
    ))
    .await
    .unwrap();
    m.send(delta("r2", "i2", 500)).await.unwrap();
    settle().await;
    let to_model = drain(&mut h.from_bridge_model);
    assert_eq!(
        to_model
            .iter()
            .filter(|e| e["type"] == "input_audio_buffer.append")
            .count(),
        10
    );
    assert!(media_ms(&drain(&mut h.from_bridge_twilio)) > 0);
    // A barge-in while the tool runs still clears and truncates.
    m.send(text(
        json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1,"item_id":"in"}),
    ))
    .await
    .unwrap();
    settle().await;
    assert_eq!(
        drain(&mut h.from_bridge_twilio),
        vec![json!({"event":"clear","streamSid":SID})]
    );
    let after_barge = drain(&mut h.from_bridge_model);
    assert_eq!(after_barge[0]["type"], "conversation.item.truncate");

    // A new response is active when the slow tool finishes: the outputs go
    // at once, the response.create waits for response.done.
    m.send(text(
        json!({"type":"response.created","response":{"id":"r3"}}),
    ))
    .await
    .unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle().await;
    let outputs = drain(&mut h.from_bridge_model);
    let types: Vec<&str> = outputs.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        ["conversation.item.create", "conversation.item.create"],
        "{outputs:?}"
    );
    let mut ids: Vec<&str> = outputs
        .iter()
        .filter_map(|e| e["item"]["call_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["c1", "c2"]);
    m.send(text(
        json!({"type":"response.done","response":{"id":"r3","status":"completed"}}),
    ))
    .await
    .unwrap();
    settle().await;
    assert_eq!(
        drain(&mut h.from_bridge_model),
        vec![json!({"type":"response.create"})]
    );
    assert_eq!(h.metrics.tool_calls("slow", "ok"), 1);
    assert_eq!(h.metrics.tool_calls("fast", "ok"), 1);
}

/// A tool still running when the call ends has no one to answer: its
/// result is dropped and counted. Calls of a cancelled response never run,
/// and a name the model made up is counted as `unknown`.
#[tokio::test(start_paused = true)]
async fn late_tool_results_are_dropped_and_made_up_names_bounded() {
    let tools = Arc::new(SlowTool {
        delay: Duration::from_secs(30),
        started: Default::default(),
    });
    let mut h = start_with(&Config::default(), tools.clone());
    settle().await;
    let m = &h.to_bridge_model;
    // Cancelled: never run.
    m.send(text(
        json!({"type":"response.created","response":{"id":"r0"}}),
    ))
    .await
    .unwrap();
    m.send(function_call("r0", "c0", "fast")).await.unwrap();
    m.send(text(
        json!({"type":"response.done","response":{"id":"r0","status":"cancelled"}}),
    ))
    .await
    .unwrap();
    // Completed: the slow one and a made-up one run.
    m.send(text(
        json!({"type":"response.created","response":{"id":"r1"}}),
    ))
    .await
    .unwrap();
    m.send(function_call("r1", "c1", "slow")).await.unwrap();
    m.send(function_call("r1", "c2", "rm_rf")).await.unwrap();
    m.send(text(
        json!({"type":"response.done","response":{"id":"r1","status":"completed"}}),
    ))
    .await
    .unwrap();
    settle().await;
    assert_eq!(tools.started.load(std::sync::atomic::Ordering::SeqCst), 2);
    h.to_bridge_twilio
        .send(text(json!({"event":"stop","streamSid":SID})))
        .await
        .unwrap();
    let summary = h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::Completed);
    assert_eq!(summary.tool_calls, 2);
    assert_eq!(h.metrics.tool_calls("slow", "dropped"), 1);
    assert_eq!(h.metrics.tool_calls("unknown", "ok"), 1);
    assert_eq!(h.metrics.tool_calls("rm_rf", "ok"), 0);
    drain(&mut h.from_bridge_model);
}
