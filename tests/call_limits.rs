//! Bounds on the Twilio leg, against the real server: a stream that goes
//! silent (a half-open socket) and a call that outlives `max_call_secs` are
//! ended, counted by outcome, and their model session is closed.

mod support;

use std::time::Duration;

use callbridge::metrics::Outcome;
use futures_util::SinkExt;
use serde_json::json;
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{self, run_caller, CallerScript};
use support::{close_code, fixture, wait_until, Bridge, AUTH_TOKEN};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_leg_that_goes_silent_is_ended_and_its_model_session_closed() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| c.twilio.idle_timeout_ms = 1000).await;
    let sid = format!("CA{:032x}", 21);
    let (stream_url, token) = bridge.answer(&sid).await;
    let sig = fake_twilio::sign(AUTH_TOKEN, &stream_url, &[]);
    let mut ws = fake_twilio::open_stream(&stream_url, Some(&sig))
        .await
        .unwrap();
    let start = json!({"event":"start","sequenceNumber":"1","streamSid":fake_twilio::STREAM_SID,
        "start":{"accountSid":fake_twilio::ACCOUNT_SID,"streamSid":fake_twilio::STREAM_SID,"callSid":sid,
                 "tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
                 "customParameters":{"token":token}}});
    for message in [
        json!({"event":"connected","protocol":"Call","version":"1.0.0"}),
        start,
    ] {
        ws.send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }
    wait_until("call admitted", || bridge.metrics.calls_active.get() == 1).await;
    // Then nothing, with the socket left open: what a half-open
    // connection looks like from here.
    let code = close_code(&mut ws).await;
    assert_eq!(
        code,
        Some(1000),
        "ended cleanly, so the TwiML fallback runs"
    );
    wait_until("counted", || {
        bridge.metrics.calls_total(Outcome::IdleTimeout) == 1
    })
    .await;
    wait_until("model session closed", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
    assert_eq!(bridge.metrics.calls_active.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_max_call_secs_is_ended() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 800,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| c.max_call_secs = 5).await;
    let sid = format!("CA{:032x}", 22);
    let (ws, token) = bridge.connect(&sid).await;
    // Two seconds of speech, answered, then silence: the caller would stay
    // for 20 s; the bridge ends the call at 5.
    let mut speech = fixture("speech.ulaw");
    speech.truncate(16_000);
    let log = run_caller(
        ws,
        CallerScript::new(&sid, &token, speech, Duration::from_secs(20)),
    )
    .await;
    assert!(
        log.closed_at.is_some(),
        "the bridge, not the caller, ended it"
    );
    assert_eq!(log.close_code, Some(1000));
    assert!(log.heard_ms > 0, "the call worked until then");
    wait_until("counted", || {
        bridge.metrics.calls_total(Outcome::MaxDuration) == 1
    })
    .await;
    wait_until("model session closed", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
}
