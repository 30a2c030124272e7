//! What was said, keyed and called with reaches the logs only when the
//! operator asks for it (`log.transcripts = true`), and then at INFO: the
//! same call, once with it off (captured at TRACE: nothing) and once on.
//! Its own test binary, so that no other test's logs mix in.

mod support;

use std::sync::Arc;
use std::time::Duration;

use callbridge::call::tools::{CallContext, ToolAnswer, ToolFuture, ToolRunner};
use callbridge::metrics::Outcome;
use callbridge::upstream::{ToolCall, ToolSpec};
use serde_json::json;
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{run_caller, CallerScript};
use support::logs::captured_logs;
use support::{fixture, wait_until, Bridge};

/// Answers `lookup_order` at once.
struct Lookup;

impl ToolRunner for Lookup {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "lookup_order".into(),
            description: "Look up an order".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }]
    }

    fn run(&self, _call: ToolCall, _ctx: &CallContext) -> ToolFuture {
        Box::pin(async { ToolAnswer::ok(r#"{"status":"shipped-ZX9"}"#) })
    }
}

/// One call: speech, answered first with a `lookup_order` call (arguments
/// `{"order_id":"Q-4417"}`) and then "Hello" (with its transcript), then
/// the keys 4 2 #. Returns what the process logged meanwhile.
async fn call_and_capture(transcripts: bool, n: u32) -> String {
    let logs = captured_logs();
    logs.lock().unwrap().clear();
    let fake = FakeRealtime::start(Script {
        answer_ms: 600,
        function_call: Some(("lookup_order".into(), r#"{"order_id":"Q-4417"}"#.into())),
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start_with_tools(&fake.url(), Arc::new(Lookup), |c| {
        c.log.transcripts = transcripts;
    })
    .await;
    let sid = format!("CA{n:032x}");
    let (ws, token) = bridge.connect(&sid).await;
    let mut speech = fixture("speech.ulaw");
    speech.truncate(16_000);
    let mut script = CallerScript::new(&sid, &token, speech, Duration::from_secs(5));
    for (i, key) in ["4", "2", "#"].iter().enumerate() {
        script
            .dtmf
            .push((Duration::from_millis(3500 + 100 * i as u64), (*key).into()));
    }
    let log = run_caller(ws, script).await;
    assert!(log.heard_ms > 0, "the model answered");
    wait_until("call ended", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains(&sid), "the capture works: the call is logged");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_digits_and_tool_data_are_logged_only_when_asked() {
    let off = call_and_capture(false, 31).await;
    for said in ["digits=42#", "Hello", "Q-4417", "ZX9"] {
        assert!(
            !off.contains(said),
            "{said:?} reached the logs with log.transcripts off"
        );
    }

    let on = call_and_capture(true, 32).await;
    let line_with = |needle: &str| {
        on.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{on}"))
            .to_owned()
    };
    assert!(line_with("digits=42#").contains("INFO"));
    let turn = line_with("text=Hello");
    assert!(
        turn.contains("INFO") && turn.contains("transcript"),
        "{turn}"
    );
    assert!(line_with("Q-4417").contains("tool arguments"));
    assert!(line_with("ZX9").contains("tool result"));
}
