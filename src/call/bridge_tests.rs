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
    start_with_room(config, tools, 4096)
}

/// [`start_with`], the socket to Twilio holding `twilio_room` messages: a
/// Twilio side that stops reading stalls the bridge once it is full.
fn start_with_room(config: &Config, tools: Arc<dyn ToolRunner>, twilio_room: usize) -> Harness {
    let (tt_tx, tt_rx) = mpsc::channel(1024);
    let (tm_tx, tm_rx) = mpsc::channel(1024);
    let (ft_tx, ft_rx) = mpsc::channel(twilio_room);
    let (fm_tx, fm_rx) = mpsc::channel(4096);
    let metrics = Metrics::new();
    let params = CallParams {
        playout_lead: config.playout_lead(),
        max_lag: Duration::from_millis(config.audio.max_lag_ms),
        append_every: Duration::from_millis(config.audio.append_ms),
        greeting: config.agent.greeting.clone(),
        ..CallParams::new("CA1", SID, config.audio.mode)
    };
    let model = Model {
        driver: driver_for(SessionSpec::from_config(config, tools.specs())),
        tx: PollSender::new(fm_tx),
        rx: stream_of(tm_rx),
        reconnect: None,
        opened_at: None,
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
        WsOut::Ping(_) => json!({"ping": true}),
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

/// `audio.append_ms`: frames are gathered into appends of that length,
/// transcoded as one stream (the same audio as frame by frame); a partial
/// append still gathering when the call ends is not sent.
#[tokio::test(start_paused = true)]
async fn caller_frames_are_gathered_into_appends_of_append_ms() {
    let mut config = Config::default();
    config.audio.mode = AudioMode::Pcm16;
    config.audio.append_ms = 100;
    let mut h = start_with(&config, Arc::new(NoTools));
    settle().await;
    assert_eq!(
        json_of(h.from_bridge_model.recv().await.unwrap())["type"],
        "session.update"
    );
    // Twelve different frames of arbitrary μ-law codes (not silence).
    let frames: Vec<Vec<u8>> = (0..12u8)
        .map(|f| {
            (0..160u8)
                .map(|i| i.wrapping_mul(7).wrapping_add(f * 13))
                .collect()
        })
        .collect();
    let send = |seq: u64, frame: &[u8]| {
        let payload = base64::engine::general_purpose::STANDARD.encode(frame);
        text(
            json!({"event":"media","sequenceNumber":seq.to_string(),"streamSid":SID,
            "media":{"track":"inbound","chunk":"1","timestamp":((seq - 2) * 20).to_string(),"payload":payload}}),
        )
    };
    for (i, frame) in frames[..4].iter().enumerate() {
        h.to_bridge_twilio
            .send(send(i as u64 + 2, frame))
            .await
            .unwrap();
    }
    settle().await;
    assert!(drain(&mut h.from_bridge_model).is_empty(), "80 ms: not yet");
    for (i, frame) in frames.iter().enumerate().skip(4) {
        h.to_bridge_twilio
            .send(send(i as u64 + 2, frame))
            .await
            .unwrap();
    }
    settle().await;
    let sent = drain(&mut h.from_bridge_model);
    assert_eq!(sent.len(), 2, "12 frames: two appends of 100 ms");
    let mut gathered = Vec::new();
    for e in &sent {
        assert_eq!(e["type"], "input_audio_buffer.append");
        let audio = base64::engine::general_purpose::STANDARD
            .decode(e["audio"].as_str().unwrap())
            .unwrap();
        assert_eq!(audio.len(), 100 * 48, "100 ms of 24 kHz PCM16");
        gathered.extend(audio);
    }
    // The same bytes as ten frames transcoded one by one.
    let mut one_by_one = crate::audio::InboundTranscoder::new(AudioMode::Pcm16);
    let mut expected = Vec::new();
    for frame in &frames[..10] {
        expected.extend_from_slice(one_by_one.transcode(frame));
    }
    assert_eq!(gathered, expected);
    h.to_bridge_twilio
        .send(text(json!({"event":"stop","streamSid":SID})))
        .await
        .unwrap();
    let summary = h.task.await.unwrap();
    assert_eq!(
        summary.frames_in, 10,
        "the two frames still gathering are not relayed"
    );
    assert_eq!(h.metrics.frames_in.get(), 10);
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
        reconnect: None,
        opened_at: None,
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
        json!({"event":"media","sequenceNumber":seq.to_string(),"streamSid":SID,"media":{"track":"inbound","chunk":"1","timestamp":(seq.saturating_sub(2) * 20).to_string(),"payload":payload}}),
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
    // The call record's list: the made-up one answered, the slow one dropped.
    let log: Vec<(&str, &str)> = summary
        .tool_log
        .iter()
        .map(|t| (t.name.as_str(), t.outcome))
        .collect();
    assert_eq!(log, vec![("unknown", "ok"), ("slow", "dropped")]);
    drain(&mut h.from_bridge_model);
}

/// Usage is summed over every `response.done` of the call, by kind, for the
/// call (its summary) and the process (`realtime_tokens_total{kind}`); the
/// transcript's turns carry when they began.
#[tokio::test(start_paused = true)]
async fn usage_is_summed_over_responses_and_turns_are_timed() {
    let mut h = start(AudioMode::Pcm16);
    settle().await;
    let m = &h.to_bridge_model;
    let done = |id: &str, text_in: u64, audio: u64, cached_audio: u64, out_audio: u64| {
        text(
            json!({"type":"response.done","response":{"id":id,"status":"completed","usage":{
            "input_tokens": text_in + audio, "output_tokens": out_audio + 5,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio,
                "cached_tokens": cached_audio,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": cached_audio}},
            "output_token_details": {"text_tokens": 5, "audio_tokens": out_audio}}}}),
        )
    };
    tokio::time::advance(Duration::from_millis(1000)).await;
    m.send(text(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"u1","content_index":0,"transcript":"Hello there"})))
        .await
        .unwrap();
    settle().await;
    tokio::time::advance(Duration::from_millis(500)).await;
    m.send(text(json!({"type":"response.output_audio_transcript.done","response_id":"r1","item_id":"a1","output_index":0,"content_index":0,"transcript":"Hi! How can I help?"})))
        .await
        .unwrap();
    m.send(done("r1", 100, 20, 0, 60)).await.unwrap();
    m.send(done("r2", 100, 50, 20, 40)).await.unwrap();
    // A response without usage adds nothing.
    m.send(text(
        json!({"type":"response.done","response":{"id":"r3","status":"cancelled"}}),
    ))
    .await
    .unwrap();
    m.send(done("r4", 120, 80, 70, 10)).await.unwrap();
    settle().await;
    h.to_bridge_twilio
        .send(text(json!({"event":"stop","streamSid":SID})))
        .await
        .unwrap();
    let summary = h.task.await.unwrap();
    let expected = Usage {
        input_text: 320,
        input_audio: 20 + 30 + 10,
        input_cached_text: 0,
        input_cached_audio: 90,
        output_text: 15,
        output_audio: 110,
        seconds: 0.0,
    };
    assert_eq!(summary.usage, expected);
    for (kind, n) in Usage::KINDS.iter().zip(expected.tokens()) {
        assert_eq!(h.metrics.usage.tokens(kind), n, "{kind}");
    }
    let turns: Vec<(Role, u128)> = summary
        .transcript
        .iter()
        .zip(&summary.transcript_at)
        .map(|(t, at)| (t.role, at.as_millis()))
        .collect();
    assert_eq!(turns, vec![(Role::Caller, 1000), (Role::Assistant, 1500)]);
    drain(&mut h.from_bridge_model);
}

/// The test's ends of one model session: what to send the bridge as the
/// model, and what the bridge sent it.
type Session = (mpsc::Sender<WsIn>, mpsc::Receiver<WsOut>);

struct Reconnecting {
    h: Harness,
    /// Every new session the bridge opened.
    sessions: mpsc::UnboundedReceiver<Session>,
    /// Scripted outcomes of connection attempts (true: accept); empty: accept.
    script: Arc<std::sync::Mutex<std::collections::VecDeque<bool>>>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
}

/// A call whose model socket can be reopened, with `tweak` on its params.
fn start_reconnecting(tweak: impl FnOnce(&mut CallParams)) -> Reconnecting {
    let (tt_tx, tt_rx) = mpsc::channel(1024);
    let (tm_tx, tm_rx) = mpsc::channel(1024);
    let (ft_tx, ft_rx) = mpsc::channel(4096);
    let (fm_tx, fm_rx) = mpsc::channel(4096);
    let metrics = Metrics::new();
    let mut params = CallParams::new("CA1", SID, AudioMode::Pcmu);
    tweak(&mut params);
    let (sessions_tx, sessions) = mpsc::unbounded_channel();
    let script: Arc<std::sync::Mutex<std::collections::VecDeque<bool>>> = Default::default();
    let attempts: Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let (s2, a2) = (script.clone(), attempts.clone());
    let connector: Connector<_, _> = Box::new(move || {
        a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let accept = s2.lock().unwrap().pop_front().unwrap_or(true);
        let sessions_tx = sessions_tx.clone();
        Box::pin(async move {
            if !accept {
                return Err("connection refused".to_owned());
            }
            let (to_bridge, rx) = mpsc::channel(1024);
            let (tx, from_bridge) = mpsc::channel(4096);
            let _ = sessions_tx.send((to_bridge, from_bridge));
            Ok((PollSender::new(tx), stream_of(rx)))
        }) as Connecting<_, _>
    });
    let mut config = Config::default();
    config.audio.mode = AudioMode::Pcmu;
    let model = Model {
        driver: driver_for(SessionSpec::from_config(&config, Vec::new())),
        tx: PollSender::new(fm_tx),
        rx: stream_of(tm_rx),
        reconnect: Some(connector),
        opened_at: None,
    };
    let task = tokio::spawn(run(
        params,
        metrics.clone(),
        Arc::new(NoTools),
        PollSender::new(ft_tx),
        stream_of(tt_rx),
        model,
        CancellationToken::new(),
    ));
    Reconnecting {
        h: Harness {
            to_bridge_twilio: tt_tx,
            to_bridge_model: tm_tx,
            from_bridge_twilio: ft_rx,
            from_bridge_model: fm_rx,
            task,
            metrics,
        },
        sessions,
        script,
        attempts,
    }
}

fn types_of(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

/// The socket drops mid-call: the caller stays connected, a new session
/// is configured and told the conversation so far, and what the caller
/// said meanwhile reaches it first.
#[tokio::test(start_paused = true)]
async fn a_lost_model_socket_is_reconnected_and_the_conversation_replayed() {
    let mut r = start_reconnecting(|_| {});
    r.script.lock().unwrap().push_back(false); // the first attempt fails
    settle().await;
    let m = r.h.to_bridge_model.clone();
    m.send(text(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"in1","content_index":0,"transcript":"Where is my order?"})))
        .await
        .unwrap();
    m.send(text(json!({"type":"response.output_audio_transcript.done","item_id":"out1","response_id":"r1","output_index":0,"content_index":0,"transcript":"It shipped."})))
        .await
        .unwrap();
    settle().await;
    drop(m);
    drop(std::mem::replace(
        &mut r.h.to_bridge_model,
        mpsc::channel(1).0,
    ));
    settle().await;
    // While away: the caller keeps talking.
    for seq in 2..12 {
        r.h.to_bridge_twilio.send(media_frame(seq)).await.unwrap();
    }
    settle().await;
    assert!(r.sessions.try_recv().is_err(), "the first attempt failed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    let (_to_new, mut from_new) = r.sessions.try_recv().expect("reconnected");
    let sent = drain(&mut from_new);
    assert_eq!(
        &types_of(&sent)[..3],
        [
            "session.update",
            "conversation.item.create",
            "conversation.item.create"
        ]
    );
    assert_eq!(sent[1]["item"]["content"][0]["text"], "Where is my order?");
    assert_eq!(sent[1]["item"]["role"], "user");
    assert_eq!(sent[2]["item"]["content"][0]["type"], "output_text");
    assert_eq!(sent[2]["item"]["content"][0]["text"], "It shipped.");
    // The held audio (10 frames) follows, then live audio flows again.
    assert_eq!(types_of(&sent[3..]), ["input_audio_buffer.append"; 10]);
    r.h.to_bridge_twilio.send(media_frame(12)).await.unwrap();
    settle().await;
    assert_eq!(
        types_of(&drain(&mut from_new)),
        ["input_audio_buffer.append"]
    );
    assert_eq!(r.h.metrics.reconnects("ok"), 1);
    assert_eq!(r.attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The caller heard no close.
    assert!(!drain(&mut r.h.from_bridge_twilio)
        .iter()
        .any(|e| e.get("close").is_some()));
}

/// Audio gathered for the next append when the model drops is held with
/// the rest and reaches the new session first.
#[tokio::test(start_paused = true)]
async fn audio_gathered_for_an_append_survives_a_reconnect() {
    let mut r = start_reconnecting(|p| p.append_every = Duration::from_millis(100));
    settle().await;
    for seq in 2..5 {
        r.h.to_bridge_twilio.send(media_frame(seq)).await.unwrap();
    }
    settle().await;
    assert_eq!(
        types_of(&drain(&mut r.h.from_bridge_model)),
        ["session.update"]
    );
    drop(std::mem::replace(
        &mut r.h.to_bridge_model,
        mpsc::channel(1).0,
    ));
    settle().await;
    for seq in 5..7 {
        r.h.to_bridge_twilio.send(media_frame(seq)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    let (_to_new, mut from_new) = r.sessions.try_recv().expect("reconnected");
    let sent = drain(&mut from_new);
    assert_eq!(types_of(&sent)[0], "session.update");
    let held: usize = sent[1..]
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "input_audio_buffer.append");
            base64::engine::general_purpose::STANDARD
                .decode(e["audio"].as_str().unwrap())
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(held, 5 * 160, "3 gathered + 2 while away, all μ-law");
    assert_eq!(r.h.metrics.dropped_in_reconnect.get(), 0);
}

/// Every attempt fails: the call ends cleanly once the budget is spent.
#[tokio::test(start_paused = true)]
async fn a_spent_reconnect_budget_ends_the_call_cleanly() {
    let mut r = start_reconnecting(|p| p.reconnect_budget = Duration::from_secs(3));
    r.script.lock().unwrap().extend([false; 100]);
    settle().await;
    drop(std::mem::replace(
        &mut r.h.to_bridge_model,
        mpsc::channel(1).0,
    ));
    // Keep the Twilio leg alive while the model is away.
    for seq in 2..200u64 {
        if r.h.task.is_finished() {
            break;
        }
        let _ = r.h.to_bridge_twilio.send(media_frame(seq)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = r.h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::UpstreamFailed);
    assert_eq!(r.h.metrics.reconnects("failed"), 1);
    let attempts = r.attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!((3..=10).contains(&attempts), "{attempts} attempts in 3 s");
    // More than 2 s of audio arrived while away: the oldest was dropped, counted.
    assert!(r.h.metrics.dropped_in_reconnect.get() > 0);
    assert!(drain(&mut r.h.from_bridge_twilio).contains(&json!({"close": 1000})));
}

/// Errors a new socket cannot fix end the call at once, without retrying.
#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let r = start_reconnecting(|_| {});
    settle().await;
    r.h.to_bridge_model
        .send(text(json!({"type":"error","error":{"type":"insufficient_quota","code":"insufficient_quota","message":"no"}})))
        .await
        .unwrap();
    let summary = r.h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::UpstreamFailed);
    assert_eq!(r.attempts.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// An expired session is replaced like a lost socket.
#[tokio::test(start_paused = true)]
async fn an_expired_session_is_replaced() {
    let mut r = start_reconnecting(|_| {});
    settle().await;
    r.h.to_bridge_model
        .send(text(json!({"type":"error","error":{"type":"invalid_request_error","code":"session_expired","message":"Your session hit the maximum duration of 60 minutes."}})))
        .await
        .unwrap();
    settle().await;
    let (_to_new, mut from_new) = r.sessions.try_recv().expect("a new session");
    assert_eq!(types_of(&drain(&mut from_new)), ["session.update"]);
    assert_eq!(r.h.metrics.reconnects("ok"), 1);
}

/// Before the provider's limit, at a quiet moment, the session is rolled
/// over: a fresh one is configured with the conversation, the old one is
/// closed, and the caller's audio goes to the new one.
#[tokio::test(start_paused = true)]
async fn the_session_rolls_over_at_a_quiet_moment() {
    let mut r = start_reconnecting(|p| p.max_session = Duration::from_secs(5));
    settle().await;
    r.h.to_bridge_model
        .send(text(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"in1","content_index":0,"transcript":"Hello"})))
        .await
        .unwrap();
    // The caller is speaking when the limit comes: no rollover yet.
    r.h.to_bridge_model
        .send(text(
            json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1,"item_id":"in2"}),
        ))
        .await
        .unwrap();
    for seq in 2..300u64 {
        r.h.to_bridge_twilio.send(media_frame(seq)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        r.sessions.try_recv().is_err(),
        "no rollover while the caller speaks"
    );
    r.h.to_bridge_model
        .send(text(
            json!({"type":"input_audio_buffer.speech_stopped","audio_end_ms":6000,"item_id":"in2"}),
        ))
        .await
        .unwrap();
    // The caller's turn is answered (a rollover never cuts into that).
    for event in [
        json!({"type":"response.created","response":{"id":"r1"}}),
        json!({"type":"response.done","response":{"id":"r1","status":"completed"}}),
    ] {
        r.h.to_bridge_model.send(text(event)).await.unwrap();
    }
    for seq in 300..400u64 {
        r.h.to_bridge_twilio.send(media_frame(seq)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_to_new, mut from_new) = r.sessions.try_recv().expect("rolled over");
    let sent = drain(&mut from_new);
    assert_eq!(
        &types_of(&sent)[..2],
        ["session.update", "conversation.item.create"]
    );
    assert!(types_of(&sent[2..])
        .iter()
        .all(|t| *t == "input_audio_buffer.append"));
    assert!(
        sent.len() > 10,
        "the caller's audio goes to the new session"
    );
    let old = drain(&mut r.h.from_bridge_model);
    assert!(
        old.contains(&json!({"close": 1000})),
        "the old session was closed"
    );
    assert_eq!(r.h.metrics.reconnects("rollover"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_twilio_leg_and_an_endless_call_are_ended() {
    let r = start_reconnecting(|p| p.idle_timeout = Duration::from_secs(15));
    settle().await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    let summary = r.h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::IdleTimeout);

    let r = start_reconnecting(|p| p.max_call = Duration::from_secs(60));
    settle().await;
    for seq in 2..4000u64 {
        if r.h.task.is_finished() {
            break;
        }
        let _ = r.h.to_bridge_twilio.send(media_frame(seq)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = r.h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::MaxDuration);
}

fn pings_in(events: &[Value]) -> usize {
    events.iter().filter(|e| e.get("ping").is_some()).count()
}

/// A model socket that went silent (no FIN, no RST: a NAT forgot it) is
/// pinged every interval; with no answer within the pong timeout it is
/// taken for dead and reconnected, and the new session is pinged in turn.
#[tokio::test(start_paused = true)]
async fn a_model_that_stops_answering_pings_is_reconnected() {
    let mut r = start_reconnecting(|p| p.idle_timeout = Duration::from_secs(600));
    settle().await;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(19_900)).await;
    assert_eq!(pings_in(&drain(&mut r.h.from_bridge_model)), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pings_in(&drain(&mut r.h.from_bridge_model)),
        1,
        "one ping at 20 s"
    );
    // The socket stays up for the whole pong timeout…
    tokio::time::sleep_until(started + Duration::from_millis(29_900)).await;
    settle().await;
    assert!(r.sessions.try_recv().is_err(), "no reconnect before 30 s");
    // …and is replaced once it has passed.
    tokio::time::sleep_until(started + Duration::from_millis(30_100)).await;
    settle().await;
    let (_to_new, mut from_new) = r.sessions.try_recv().expect("reconnected at 30 s");
    assert_eq!(r.h.metrics.reconnects("ok"), 1);
    assert_eq!(r.h.metrics.errors("model_ping_timeout"), 1);
    assert_eq!(types_of(&drain(&mut from_new)), ["session.update"]);
    // The new session has a schedule of its own: its first ping 20 s on.
    tokio::time::sleep(Duration::from_millis(19_800)).await;
    assert_eq!(pings_in(&drain(&mut from_new)), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pings_in(&drain(&mut from_new)), 1);
    assert!(!r.h.task.is_finished(), "the call goes on");
}

/// A model that answers pings (with a pong, or with any other frame) is
/// never reconnected, however long the call.
#[tokio::test(start_paused = true)]
async fn a_model_that_answers_pings_keeps_its_socket() {
    for answer_with_pong in [true, false] {
        let mut r = start_reconnecting(|p| p.idle_timeout = Duration::from_secs(600));
        let mut from_model = std::mem::replace(&mut r.h.from_bridge_model, mpsc::channel(1).1);
        let to_model = r.h.to_bridge_model.clone();
        let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = pings.clone();
        let responder = tokio::spawn(async move {
            while let Some(out) = from_model.recv().await {
                if let WsOut::Ping(_) = out {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // A real peer answers after a round trip, well within the timeout.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let answer = if answer_with_pong {
                        WsIn::Pong
                    } else {
                        text(json!({"type":"rate_limits.updated","rate_limits":[]}))
                    };
                    if to_model.send(answer).await.is_err() {
                        return;
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(205)).await;
        settle().await;
        assert_eq!(
            pings.load(std::sync::atomic::Ordering::SeqCst),
            10,
            "a ping every 20 s"
        );
        assert!(r.sessions.try_recv().is_err(), "never reconnected");
        assert_eq!(r.h.metrics.reconnects("ok"), 0);
        assert_eq!(r.h.metrics.errors("model_ping_timeout"), 0);
        assert!(!r.h.task.is_finished());
        responder.abort();
    }
}

/// `ping_interval` zero: no ping is ever sent, and a silent model is left
/// alone (the Twilio idle timeout and `max_call` still bound the call).
#[tokio::test(start_paused = true)]
async fn pings_can_be_turned_off() {
    let mut r = start_reconnecting(|p| {
        p.ping_interval = Duration::ZERO;
        p.idle_timeout = Duration::from_secs(600);
    });
    tokio::time::sleep(Duration::from_secs(120)).await;
    settle().await;
    assert_eq!(pings_in(&drain(&mut r.h.from_bridge_model)), 0);
    assert!(r.sessions.try_recv().is_err());
}

/// Twilio is never pinged, so a pong from it is unasked-for: ignored, not
/// counted as a bad frame, and the call goes on.
#[tokio::test(start_paused = true)]
async fn a_pong_from_twilio_is_ignored() {
    let mut h = start(AudioMode::Pcmu);
    settle().await;
    for _ in 0..50 {
        h.to_bridge_twilio.send(WsIn::Pong).await.unwrap();
    }
    settle().await;
    assert!(!h.task.is_finished());
    assert!(drain(&mut h.from_bridge_twilio).is_empty());
    h.to_bridge_twilio
        .send(text(json!({"event":"stop","streamSid":SID})))
        .await
        .unwrap();
    let summary = h.task.await.unwrap();
    assert_eq!(summary.outcome, Outcome::Completed);
    assert_eq!(summary.rejected, 0, "a pong is not a bad frame");
}

/// Caller audio that reaches the bridge more than `audio.max_lag_ms` later
/// than Twilio's timestamps say (a backlog on the way in) is dropped and
/// counted, not sent to the model; punctual audio, and audio without a
/// timestamp, is relayed.
#[tokio::test(start_paused = true)]
async fn late_caller_audio_is_dropped_and_counted() {
    let mut h = start(AudioMode::Pcmu);
    settle().await;
    drain(&mut h.from_bridge_model);
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
    let media = |seq: u64, ts: Option<u64>| {
        let mut m = json!({"event":"media","sequenceNumber":seq.to_string(),"streamSid":SID,"media":{"track":"inbound","chunk":"1","payload":payload}});
        if let Some(ts) = ts {
            m["media"]["timestamp"] = json!(ts.to_string());
        }
        text(m)
    };
    let start = tokio::time::Instant::now();
    // Ten frames on time, 20 ms apart.
    for i in 0..10u64 {
        tokio::time::sleep_until(start + Duration::from_millis(20 * i)).await;
        h.to_bridge_twilio
            .send(media(i + 2, Some(20 * i)))
            .await
            .unwrap();
    }
    settle().await;
    assert_eq!(drain(&mut h.from_bridge_model).len(), 10);
    // Then a backlog: the next five frames arrive together, 500 ms late.
    tokio::time::sleep_until(start + Duration::from_millis(700)).await;
    for i in 10..15u64 {
        h.to_bridge_twilio
            .send(media(i + 2, Some(20 * i)))
            .await
            .unwrap();
    }
    // 300 ms late is within the bound (frame 15 stamped 300, due at 300 ms,
    // arriving at 600 ms), as is one with no timestamp at all.
    tokio::time::sleep_until(start + Duration::from_millis(600 + 700)).await;
    h.to_bridge_twilio
        .send(media(17, Some(1000)))
        .await
        .unwrap();
    h.to_bridge_twilio.send(media(18, None)).await.unwrap();
    settle().await;
    assert_eq!(h.metrics.dropped_in_late.get(), 5);
    assert_eq!(drain(&mut h.from_bridge_model).len(), 2);
    h.to_bridge_twilio
        .send(text(json!({"event":"stop","streamSid":SID})))
        .await
        .unwrap();
    let summary = h.task.await.unwrap();
    assert_eq!(summary.frames_in, 12);
}

/// Answer audio the bridge could not send in time (here its socket to
/// Twilio stalls for a second) is dropped once it is more than
/// `audio.max_lag_ms` behind, rather than played late: the caller hears
/// the answer as of now, and the drop is counted.
#[tokio::test(start_paused = true)]
async fn answer_audio_more_than_max_lag_late_is_dropped_not_played_late() {
    let mut config = Config::default();
    config.audio.mode = AudioMode::Pcmu;
    let mut h = start_with_room(&config, Arc::new(NoTools), 4);
    settle().await;
    h.to_bridge_model
        .send(text(
            json!({"type":"response.created","response":{"id":"r1"}}),
        ))
        .await
        .unwrap();
    let ulaw = base64::engine::general_purpose::STANDARD.encode(vec![0x7fu8; 8 * 2000]);
    h.to_bridge_model
        .send(text(json!({"type":"response.output_audio.delta","response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":ulaw})))
        .await
        .unwrap();
    settle().await;
    // Twilio reads nothing for a second: the bridge is stuck mid-chunk.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut out = Vec::new();
    // Twilio reads again: the stalled write completes at 1 s.
    for _ in 0..10 {
        out.extend(drain(&mut h.from_bridge_twilio));
        settle().await;
    }
    for _ in 0..400 {
        out.extend(drain(&mut h.from_bridge_twilio));
        settle().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.extend(drain(&mut h.from_bridge_twilio));
    // The lead's 200 ms was taken (and is being written) when the socket
    // filled up; the rest was due from 200 ms on, and at 1 s 500 ms of it
    // was more than 300 ms late: 25 frames dropped, the other 1.5 s played.
    assert_eq!(h.metrics.dropped_out_late.get(), 25);
    assert_eq!(media_ms(&out), 1500);
    assert!(out.iter().all(|e| e["event"] != "media"
        || base64::engine::general_purpose::STANDARD
            .decode(e["media"]["payload"].as_str().unwrap())
            .unwrap()
            .len()
            == 160));
}

/// Timestamps that stop advancing say nothing (those frames are relayed);
/// a clock that steps back makes frames look late, and after 2 s of nothing
/// but late frames their timing is the new reference, so such a step costs
/// at most 2 s of caller audio; one stamped far ahead is relayed and only
/// blinds the check.
#[tokio::test(start_paused = true)]
async fn timestamp_jumps_cost_at_most_two_seconds_of_caller_audio() {
    let mut h = start(AudioMode::Pcmu);
    settle().await;
    drain(&mut h.from_bridge_model);
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
    let media = |seq: u64, ts: u64| {
        text(
            json!({"event":"media","sequenceNumber":seq.to_string(),"media":{"timestamp":ts.to_string(),"payload":payload}}),
        )
    };
    let start = tokio::time::Instant::now();
    let mut relayed = 0;
    for i in 0..350u64 {
        let ts = match i {
            0..50 => 20 * i,     // on time
            50..100 => 0,        // stuck
            300 => u64::MAX / 2, // forged, far ahead
            _ => 20 * i - 1000,  // Twilio's clock 1 s behind
        };
        tokio::time::sleep_until(start + Duration::from_millis(20 * i)).await;
        h.to_bridge_twilio.send(media(i + 2, ts)).await.unwrap();
        settle().await;
        relayed += drain(&mut h.from_bridge_model).len() as u64;
    }
    // Frames 100 to 199 (2 s) dropped, then the new timing holds.
    assert_eq!(h.metrics.dropped_in_late.get(), 100);
    assert_eq!(relayed, 250);
}
