//! End-to-end over GPT-Live: the real server on 127.0.0.1:0, a fake Twilio
//! caller (PROTOCOLS.md) and a fake GPT-Live server written from GPT-LIVE.md
//! alone. The call core is the same as for Realtime; these tests check what
//! differs: session.start first and no audio before session.started, μ-law
//! passed through untouched, no clear/cancel/truncate when the caller talks
//! over the model, delegated function calls answered as one batch, and
//! session.close at hang-up.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use callbridge::audio::AudioMode;
use callbridge::call::tools::{CallContext, ToolAnswer, ToolFuture, ToolRunner};
use callbridge::config::Dialect;
use callbridge::metrics::Outcome;
use callbridge::upstream::{ToolCall, ToolSpec};
use serde_json::json;
use support::fake_live::{FakeLive, Script, TOOL_ANSWER};
use support::fake_twilio::{run_caller, CallerScript};
use support::{fixture, wait_until, Bridge, API_KEY};

fn call_sid(n: u32) -> String {
    format!("CA{:032x}", 0x11_0000 + n)
}

async fn live_bridge(fake: &FakeLive, mode: AudioMode) -> Bridge {
    Bridge::start(&fake.url(), |c| {
        c.realtime.dialect = Dialect::Live;
        c.audio.mode = mode;
    })
    .await
}

/// A whole call: the caller speaks, the model answers, the caller hangs up.
async fn live_turn(mode: AudioMode, name: &str) {
    let fake = FakeLive::start(Script {
        answer_ms: 1500,
        ..Script::default()
    })
    .await;
    let bridge = live_bridge(&fake, mode).await;
    let sid = call_sid(1);
    let (ws, token) = bridge.connect(&sid).await;
    let speech = fixture("speech.ulaw");
    let mut script = CallerScript::new(&sid, &token, speech.clone(), Duration::from_secs(15));
    script.end_after_first_answer = Some(Duration::from_millis(1800));
    let log = run_caller(ws, script).await;

    // Connected as GPT-Live wants: the documented path, no query, bearer key,
    // no Realtime beta header; session.start first, audio only after started.
    {
        let r = fake.record.lock().unwrap();
        assert_eq!(r.paths, ["/v1/live/sessions"]);
        assert_eq!(r.queries, [None]);
        assert_eq!(r.audio_before_started, 0);
        assert!(r.rejected.is_empty(), "refused: {:?}", r.rejected);
        assert!(r.input_ms > 5000.0, "model heard {} ms", r.input_ms);
    }
    assert_eq!(
        fake.header("authorization"),
        Some(format!("Bearer {API_KEY}"))
    );
    assert_eq!(fake.header("openai-beta"), None);
    assert!(fake
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("callbridge/")));
    let events = fake.events();
    assert_eq!(events[0]["type"], "session.start");
    let format = &events[0]["session"]["audio"]["format"];
    let appends = fake.events_of("session.input_audio.append");
    let audio = |i: usize| {
        base64::engine::general_purpose::STANDARD
            .decode(appends[i]["audio"].as_str().unwrap())
            .unwrap()
    };
    match mode {
        AudioMode::Pcmu => {
            assert_eq!(*format, json!({"type":"audio/pcmu","rate":8000}));
            // Passed through untouched: every append is a 20 ms frame of
            // what the caller sent, in order.
            let first = audio(0);
            assert_eq!(first.len(), 160);
            let at = speech
                .windows(160)
                .position(|w| w == first.as_slice())
                .expect("the first append is a frame of the caller's audio");
            assert_eq!(audio(1), speech[at + 160..at + 320]);
        }
        AudioMode::Pcm16 => {
            assert_eq!(*format, json!({"type":"audio/pcm","rate":24000}));
            assert_eq!(audio(0).len(), 960);
        }
    }

    // The caller heard the answer; the bridge never cleared on its own guess.
    assert!(log.heard_ms >= 1000, "heard {} ms", log.heard_ms);
    assert!(log.clears.is_empty());
    assert_eq!(log.close_code, Some(1000));

    // Hang-up: session.close, confirmed by session.closed.
    wait_until("session closed", || {
        let r = fake.record.lock().unwrap();
        r.close_requests == 1 && r.closed_sent == 1
    })
    .await;
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;
    assert!(bridge.metrics.first_audio.count() == 1);
    assert!(bridge.metrics.model_seconds.get() > 0.0);
    fake.write_conformance(name);
}

#[tokio::test]
async fn live_full_turn_pcmu() {
    live_turn(AudioMode::Pcmu, "live_turn_pcmu").await;
}

#[tokio::test]
async fn live_full_turn_pcm16() {
    live_turn(AudioMode::Pcm16, "live_turn_pcm16").await;
}

#[tokio::test]
async fn talking_over_the_model_sends_no_clear_cancel_or_truncate() {
    let fake = FakeLive::start(Script {
        answer_ms: 6000,
        speedup: 1,
        yield_after_ms: Some(200),
        ..Script::default()
    })
    .await;
    let bridge = live_bridge(&fake, AudioMode::Pcmu).await;
    let sid = call_sid(2);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(14),
    );
    script.bargein = Some((Duration::from_millis(1000), fixture("bargein.ulaw")));
    let log = run_caller(ws, script).await;
    assert!(
        log.bargein_at.is_some(),
        "the caller talked over the answer"
    );
    // The model yielded by itself; the bridge stayed out of it.
    let yields = fake.yields();
    assert_eq!(yields.len(), 1, "{yields:?}");
    assert!(yields[0] < 6000);
    assert!(log.clears.is_empty());
    assert!(fake.record.lock().unwrap().rejected.is_empty());
    assert_eq!(bridge.metrics.bargeins.get(), 0);
    // With the shallow GPT-Live lead little was queued at Twilio when the
    // model stopped, so the caller stopped hearing it soon after talking
    // over it: the fixture's leading silence, the model's reaction
    // (detection + 200 ms), its last delta (up to 200 ms) and the lead. A
    // model that did not yield would have played all 1.5 s of the window.
    let at = log.bargein_at.unwrap();
    let after = log.media_between(at, at + Duration::from_millis(1500));
    assert!(
        after * 20 <= 1000,
        "{} ms of answer after talking over it",
        after * 20
    );
    assert!(log.media_between(at - Duration::from_millis(500), at) > 10);
    fake.write_conformance("live_talk_over");
}

/// Answers `lookup_order` after a short delay, and remembers what it was asked.
#[derive(Default)]
struct StubTools {
    calls: Mutex<Vec<(ToolCall, CallContext)>>,
}

impl ToolRunner for StubTools {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "lookup_order".into(),
            description: "Look up an order by number".into(),
            parameters: json!({"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}),
        }]
    }

    fn run(&self, call: ToolCall, ctx: &CallContext) -> ToolFuture {
        self.calls.lock().unwrap().push((call.clone(), ctx.clone()));
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ToolAnswer::ok(json!({"status": "shipped", "call": call.call_id}).to_string())
        })
    }
}

#[tokio::test]
async fn delegated_function_calls_are_answered_as_one_batch() {
    let fake = FakeLive::start(Script {
        function_call: Some(("lookup_order".into(), r#"{"order_id":"123"}"#.into())),
        two_calls: true,
        ..Script::default()
    })
    .await;
    let tools = Arc::new(StubTools::default());
    let bridge = Bridge::start_with_tools(&fake.url(), tools.clone(), |c| {
        c.realtime.dialect = Dialect::Live;
        c.audio.mode = AudioMode::Pcmu;
    })
    .await;
    let sid = call_sid(3);
    let (ws, token) = bridge.connect(&sid).await;
    let script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(12),
    );
    let log = run_caller(ws, script).await;

    // Declared under delegation.responses.tools.
    let start = &fake.events()[0];
    assert_eq!(
        start["session"]["delegation"]["responses"]["tools"][0]["name"],
        "lookup_order"
    );
    // Both calls ran, with the call's identity, and were answered together.
    let calls = tools.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0.arguments, r#"{"order_id":"123"}"#);
    assert_eq!(calls[0].1.call_sid, sid);
    let r = fake.record.lock().unwrap();
    assert_eq!(r.tool_outputs.len(), 2);
    assert!(r.tool_outputs[0].1.contains("shipped"));
    assert_eq!(r.continuations, 1);
    assert_eq!(r.partial_batches, 0);
    assert!(
        r.answers.iter().any(|a| a.text.starts_with(TOOL_ANSWER)),
        "the model spoke the result: {:?}",
        r.answers
    );
    drop(r);
    assert!(log.heard_ms > 0);
    assert_eq!(bridge.metrics.tool_calls("lookup_order", "ok"), 2);
    fake.write_conformance("live_tools");
}

#[tokio::test]
async fn greeting_is_spoken_first_through_commentary() {
    let fake = FakeLive::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.realtime.dialect = Dialect::Live;
        c.audio.mode = AudioMode::Pcmu;
        c.agent.greeting = "Greet the caller as Acme support.".into();
    })
    .await;
    let sid = call_sid(4);
    let (ws, token) = bridge.connect(&sid).await;
    // Silence only: anything heard is the greeting.
    let mut script = CallerScript::new(&sid, &token, vec![0xFF; 160], Duration::from_secs(5));
    script.end_after_first_answer = Some(Duration::from_millis(1500));
    let log = run_caller(ws, script).await;
    let commentary = fake.events_of("session.commentary.append");
    assert_eq!(commentary.len(), 1);
    assert_eq!(
        commentary[0]["content"],
        "Greet the caller as Acme support."
    );
    assert!(commentary[0]["delegation_id"].is_null());
    assert!(log.heard_ms >= 1000, "heard {} ms", log.heard_ms);
    fake.write_conformance("live_greeting");
}

/// A startup error (no session.started) or an echoed format other than the
/// one asked for ends the call cleanly, before any audio reaches the model.
async fn refused_session(script: Script, n: u32) {
    let fake = FakeLive::start(script).await;
    let bridge = live_bridge(&fake, AudioMode::Pcmu).await;
    let sid = call_sid(n);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 8000], Duration::from_secs(5)),
    )
    .await;
    assert_eq!(log.close_code, Some(1000));
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::UpstreamFailed) == 1
    })
    .await;
    assert_eq!(bridge.metrics.errors("model_fatal"), 1);
    assert_eq!(fake.events_of("session.input_audio.append").len(), 0);
}

#[tokio::test]
async fn a_startup_error_ends_the_call_cleanly() {
    refused_session(
        Script {
            start_error: Some("unknown_parameter".into()),
            ..Script::default()
        },
        5,
    )
    .await;
}

#[tokio::test]
async fn a_format_mismatch_in_session_started_ends_the_call() {
    refused_session(
        Script {
            echo_format: Some(json!({"type":"audio/pcm","rate":24000})),
            ..Script::default()
        },
        6,
    )
    .await;
}

#[tokio::test]
async fn azure_live_sends_the_key_as_api_key() {
    let fake = FakeLive::start(Script::default()).await;
    let bridge = Bridge::start(&fake.azure_url(), |c| {
        c.realtime.dialect = Dialect::AzureLive;
        c.realtime.model = Some("my-gpt-live".into());
        c.audio.mode = AudioMode::Pcmu;
    })
    .await;
    let sid = call_sid(7);
    let (ws, token) = bridge.connect(&sid).await;
    run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 1600], Duration::from_secs(2)),
    )
    .await;
    assert_eq!(fake.header("api-key").as_deref(), Some(API_KEY));
    assert_eq!(fake.header("authorization"), None);
    assert_eq!(
        fake.record.lock().unwrap().paths,
        ["/openai/v1/live/sessions"]
    );
    assert_eq!(fake.events()[0]["session"]["model"], "my-gpt-live");
}

#[tokio::test]
async fn hang_up_waits_only_briefly_for_session_closed() {
    let fake = FakeLive::start(Script {
        answer_close: false,
        ..Script::default()
    })
    .await;
    let bridge = live_bridge(&fake, AudioMode::Pcmu).await;
    let sid = call_sid(8);
    let (ws, token) = bridge.connect(&sid).await;
    run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 1600], Duration::from_secs(1)),
    )
    .await;
    // The model never confirms: the bridge gives up after its bounded wait
    // and still closes the model's socket and counts the call.
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;
    let r = fake.record.lock().unwrap();
    assert_eq!(r.close_requests, 1);
    assert_eq!(r.closed_sent, 0);
}
