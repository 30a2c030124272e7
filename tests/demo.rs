//! The README's first command, in-process: a whole call through the real
//! server, the local model peer and the demo's tool endpoint, in both
//! protocols: a tool round trip, a barge-in, and the assistant ending the
//! call with `end_call` after its goodbye was heard.

use std::time::Duration;

use callbridge::audio::AudioMode;
use callbridge::config::Dialect;
use callbridge_sim::demo::{tool_arguments, DemoReport};
use callbridge_sim::first_turn::{self, FirstTurnOptions};
use callbridge_sim::tool_server::LOOKUP_ORDER;

async fn demo(dialect: Dialect) -> DemoReport {
    callbridge_sim::demo::run(dialect, AudioMode::Pcmu, Duration::from_millis(1500), None)
        .await
        .unwrap()
}

/// The configured HTTP tool was called once, for this call, with the
/// scripted arguments, and the bridge counted it.
fn assert_tool_round_trip(demo: &DemoReport) {
    let report = &demo.call;
    let [request] = demo.tool_requests.as_slice() else {
        panic!("tool requests: {:?}", demo.tool_requests);
    };
    assert_eq!(request.name(), Some(LOOKUP_ORDER));
    assert_eq!(request.call_sid(), Some(report.call_sid.as_str()));
    assert_eq!(request.call("stream_sid"), Some(report.stream_sid.as_str()));
    assert_eq!(request.call("profile"), Some("default"));
    assert_eq!(request.arguments(), Some(&tool_arguments()));
    assert!(request.body["call_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(request.status, 200);
    assert_eq!(demo.bridge.tool_calls_ok, 1, "{:?}", demo.bridge);
    assert_eq!(demo.bridge.tool_calls_failed, 0, "{:?}", demo.bridge);
    assert!(demo.bridge.tool_duration.is_some(), "{:?}", demo.bridge);
    demo.tool_round_trip().unwrap();
}

/// The assistant ended the call: `end_call` answered, the REST hang-up made,
/// the stream closed with 1000 before the caller hung up, and the goodbye
/// heard just before the close.
fn assert_ended_by_end_call(demo: &DemoReport) {
    let report = &demo.call;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.close_code, Some(1000), "{report}");
    assert!(!demo.ending.caller_hung_up, "{:?}", demo.ending);
    assert!(demo.ending.closed_at.is_some(), "{:?}", demo.ending);
    assert_eq!(demo.bridge.end_calls, 1, "{:?}", demo.bridge);
    assert_eq!(demo.bridge.rest_hangups, 1, "{:?}", demo.bridge);
    let [hangup] = demo.hangups.as_slice() else {
        panic!("hang-ups: {:?}", demo.hangups);
    };
    assert_eq!(hangup.call_sid, report.call_sid);
    assert_eq!(hangup.status, "completed");
    assert!(hangup.authorized);
    // The whole goodbye (1.2 s) and "Bye now." (0.6 s) was heard, just
    // before the close.
    assert!(
        demo.ending.goodbye_heard >= Duration::from_millis(1700),
        "{:?}",
        demo.ending
    );
    let quiet = demo.ending.quiet_before_close.unwrap();
    assert!(quiet < Duration::from_secs(3), "{:?}", demo.ending);
    demo.ended_by_assistant().unwrap();
}

/// The demo reports the first turn (a greeting call measured before it):
/// pre-warmed by default, with both figures.
fn assert_first_turn_pre_warmed(demo: &DemoReport) {
    let turn = &demo.first_turn;
    assert!(turn.errors.is_empty(), "{turn:?}");
    assert!(turn.prewarm_hit, "{turn:?}");
    assert!(turn.model_ready.is_some(), "{turn:?}");
    assert!(turn.first_answer.is_some(), "{turn:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_call_has_a_tool_round_trip_a_barge_in_and_ends_by_end_call_in_pcmu_mode() {
    let demo = demo(Dialect::Ga).await;
    let (report, side) = (&demo.call, &demo.bridge);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // The tool's answer, the echo (talked over), the goodbye.
    assert!(report.turns >= 3, "{report}");
    assert_eq!(report.clears, 1, "{report}");
    assert_eq!(side.bargeins, 1);
    assert_eq!(side.truncations, 1);
    assert!(report.talk_over_stop.is_some(), "{report}");
    assert!(side.frames_in > 500 && side.frames_out > 50, "{side:?}");
    // The peer reports usage as the service does: the call has a cost.
    assert!(side.input_tokens > 0 && side.output_tokens > 0, "{side:?}");
    assert!(side.cost_usd.is_some_and(|c| c > 0.0), "{side:?}");
    // The caller heard answer audio, and both tracks cover the same timeline.
    assert!(report.bytes_heard > 8 * 2000, "{report}");
    assert_eq!(report.sent.len(), report.heard.len());
    assert_tool_round_trip(&demo);
    assert_ended_by_end_call(&demo);
    assert_first_turn_pre_warmed(&demo);
}

/// GPT-Live: the model yields by itself when talked over; the bridge sends
/// no `clear` and tells the model nothing about what was heard. Its tool
/// call and its `end_call` are delegated, and run through the same runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_call_over_gpt_live_has_a_tool_round_trip_the_model_yields_and_ends_by_end_call() {
    let demo = demo(Dialect::Live).await;
    let (report, side) = (&demo.call, &demo.bridge);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.turns >= 3, "{report}");
    assert_eq!(report.clears, 0, "{report}");
    assert_eq!(side.bargeins, 0);
    assert!(report.talk_over_stop.is_some(), "{report}");
    // GPT-Live bills time: the cost comes from the session's seconds.
    assert!(side.cost_usd.is_some_and(|c| c > 0.0), "{side:?}");
    assert!(report.bytes_heard > 8 * 2000, "{report}");
    assert_tool_round_trip(&demo);
    assert_ended_by_end_call(&demo);
    assert_first_turn_pre_warmed(&demo);
}

/// The first-turn probe behind the README's table: without pre-warm the
/// first answer waits for the model's connect (stood in for by the peer's
/// handshake delay); with it, and the stream arriving after the connect is
/// done, the stream takes over the ready session. Only lower bounds on time
/// are asserted: they follow from the peer's own delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_turn_waits_for_the_connect_only_without_pre_warm() {
    let connect = Duration::from_millis(200);
    let base = FirstTurnOptions {
        dialect: Dialect::Ga,
        mode: AudioMode::Pcmu,
        connect_delay: connect,
        prewarm: false,
        stream_gap: Duration::from_millis(400),
    };
    let cold = first_turn::measure(base).await.unwrap();
    assert!(cold.errors.is_empty(), "{cold:?}");
    assert!(!cold.prewarm_hit, "{cold:?}");
    assert!(cold.model_ready.unwrap() >= connect, "{cold:?}");
    assert!(cold.first_answer.unwrap() >= connect, "{cold:?}");

    let warm = first_turn::measure(FirstTurnOptions {
        prewarm: true,
        ..base
    })
    .await
    .unwrap();
    assert!(warm.errors.is_empty(), "{warm:?}");
    assert!(warm.prewarm_hit, "{warm:?}");
    assert!(
        warm.model_ready.is_some() && warm.first_answer.is_some(),
        "{warm:?}"
    );
}
