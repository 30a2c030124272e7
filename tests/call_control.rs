//! End-to-end: the assistant acts on the call. The real server on
//! 127.0.0.1:0 with a fake Twilio caller, a fake Realtime model that calls
//! functions (PROTOCOLS.md §2.5) and a fake Twilio REST API (§4): end_call
//! waits for the goodbye to be heard before hanging up, transfer_call sends
//! escaped <Dial> TwiML, keypad digits reach the model and never the logs,
//! the greeting is spoken first, and profiles are chosen by the called
//! number and carried in the signed stream token.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use callbridge::config::{Config, ProfileConfig};
use callbridge::metrics::{Outcome, TwilioOp, TwilioOutcome};
use callbridge::twilio::twiml::{dial, DialTarget};
use serde_json::Value;
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{self, run_caller, CallerScript, ACCOUNT_SID};
use support::fake_twilio_rest::FakeTwilioRest;
use support::logs::captured_logs;
use support::{fixture, save_client_events, wait_until, Bridge, AUTH_TOKEN};

fn call_sid(n: u32) -> String {
    format!("CA{:032x}", 0xcc_0000 + n)
}

async fn bridge_with_rest(
    fake: &FakeRealtime,
    rest: &FakeTwilioRest,
    tweak: impl FnOnce(&mut Config),
) -> Bridge {
    let base = rest.base_url();
    Bridge::start(&fake.url(), move |c| {
        c.twilio.api_base_url = base;
        tweak(c);
    })
    .await
}

/// The tool outputs the model was given.
fn function_outputs(fake: &FakeRealtime) -> Vec<Value> {
    fake.events_of("conversation.item.create")
        .into_iter()
        .filter(|e| e["item"]["type"] == "function_call_output")
        .collect()
}

#[tokio::test]
async fn end_call_hangs_up_only_after_the_goodbye_was_heard() {
    let fake = FakeRealtime::start(Script {
        function_call: Some(("end_call".into(), r#"{"reason":"done"}"#.into())),
        answer_ms: 2000,
        ..Script::default()
    })
    .await;
    let rest = FakeTwilioRest::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let bridge = bridge_with_rest(&fake, &rest, |c| c.agent.call_control.end_call = true).await;
    let sid = call_sid(1);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(
            &sid,
            &token,
            fixture("speech.ulaw"),
            Duration::from_secs(25),
        ),
    )
    .await;

    // Declared, answered at once, and the model went on to say goodbye.
    let session = &fake.events()[0];
    let tools = session["session"]["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t["name"] == "end_call"), "{tools:?}");
    let outputs = function_outputs(&fake);
    assert_eq!(outputs.len(), 1);
    assert!(outputs[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("\"ok\":true"));
    assert_eq!(fake.events_of("response.create").len(), 1);

    // The bridge ended the call (the caller never said stop) ...
    let closed_at = log.closed_at.expect("the bridge closed the stream");
    assert_eq!(log.close_code, Some(1000));
    // ... after the whole goodbye had played: nothing left unplayed, every
    // mark echoed, and the REST hang-up came after the last answer audio.
    assert_eq!(log.unplayed_at_close_ms, 0);
    assert!(log.heard_ms >= 1800, "heard {} ms", log.heard_ms);
    let marks_sent = log
        .received
        .iter()
        .filter(|(_, v)| v["event"] == "mark")
        .count();
    assert_eq!(log.marks_echoed.len(), marks_sent);
    let hangups: Vec<_> = rest
        .requests()
        .into_iter()
        .filter(|r| r.param("Status") == Some("completed"))
        .collect();
    assert_eq!(hangups.len(), 1, "{:?}", rest.requests());
    let h = &hangups[0];
    assert!(h.authorized);
    assert_eq!(
        h.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json")
    );
    let last_audio = log
        .received
        .iter()
        .rev()
        .find(|(_, v)| v["event"] == "media")
        .map(|(t, _)| *t)
        .unwrap();
    // Twilio had played every byte (no audio queued, every mark echoed) when
    // the bridge closed, and the hang-up came after the last audio was sent.
    assert!(h.at > last_audio, "hang-up before the goodbye was sent");
    assert!(h.at <= closed_at);
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;
    assert_eq!(bridge.metrics.tool_calls("end_call", "ok"), 1);
    assert_eq!(
        bridge
            .metrics
            .twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Ok),
        1
    );
    save_client_events("end_call", callbridge::config::Dialect::Ga, &fake.events());
}

#[tokio::test]
async fn end_call_of_a_call_already_gone_still_ends_cleanly() {
    let fake = FakeRealtime::start(Script {
        function_call: Some(("end_call".into(), "{}".into())),
        answer_ms: 800,
        ..Script::default()
    })
    .await;
    let rest = FakeTwilioRest::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let bridge = bridge_with_rest(&fake, &rest, |c| c.agent.call_control.end_call = true).await;
    let sid = call_sid(2);
    rest.end_call(&sid);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(
            &sid,
            &token,
            fixture("speech.ulaw"),
            Duration::from_secs(25),
        ),
    )
    .await;
    assert_eq!(log.close_code, Some(1000));
    assert!(log.closed_at.is_some());
    assert_eq!(
        bridge
            .metrics
            .twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::NotFound),
        1
    );
}

#[tokio::test]
async fn transfer_call_sends_escaped_dial_twiml_after_the_hand_off() {
    let target = "sip:help@example.com?x=1&y=<2>";
    let fake = FakeRealtime::start(Script {
        function_call: Some(("transfer_call".into(), r#"{"target":"support"}"#.into())),
        answer_ms: 1000,
        ..Script::default()
    })
    .await;
    let rest = FakeTwilioRest::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let bridge = bridge_with_rest(&fake, &rest, |c| {
        c.agent.call_control.transfer_targets = BTreeMap::from([
            ("support".into(), target.into()),
            ("sales".into(), "+14155550123".into()),
        ]);
    })
    .await;
    let sid = call_sid(3);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(
            &sid,
            &token,
            fixture("speech.ulaw"),
            Duration::from_secs(25),
        ),
    )
    .await;

    // The model saw names, never numbers.
    let session = fake.events()[0].to_string();
    assert!(session.contains("transfer_call") && session.contains("\"support\""));
    assert!(!session.contains("4155550123") && !session.contains("help@example.com"));
    // The redirect replaced the call's TwiML with a <Dial>, every value escaped.
    let updates: Vec<_> = rest
        .requests()
        .into_iter()
        .filter(|r| r.param("Twiml").is_some())
        .collect();
    assert_eq!(updates.len(), 1);
    let twiml = updates[0].param("Twiml").unwrap();
    assert_eq!(twiml, dial(&DialTarget::parse(target).unwrap()));
    assert!(
        twiml.contains("<Sip>sip:help@example.com?x=1&amp;y=&lt;2&gt;</Sip>"),
        "{twiml}"
    );
    assert_eq!(log.close_code, Some(1000));
    assert_eq!(log.unplayed_at_close_ms, 0);
    assert_eq!(bridge.metrics.tool_calls("transfer_call", "ok"), 1);
}

#[tokio::test]
async fn a_failed_transfer_is_told_to_the_model_and_the_call_goes_on() {
    let fake = FakeRealtime::start(Script {
        function_call: Some(("transfer_call".into(), r#"{"target":"sales"}"#.into())),
        answer_ms: 800,
        ..Script::default()
    })
    .await;
    let rest = FakeTwilioRest::start(ACCOUNT_SID, AUTH_TOKEN).await;
    rest.fail_next(10, 500);
    let bridge = bridge_with_rest(&fake, &rest, |c| {
        c.agent.call_control.transfer_targets =
            BTreeMap::from([("sales".into(), "+14155550123".into())]);
    })
    .await;
    let sid = call_sid(4);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(
            &sid,
            &token,
            fixture("speech.ulaw"),
            Duration::from_secs(14),
        ),
    )
    .await;
    // The caller hung up (stop); the bridge did not end the call itself.
    assert!(log.closed_at.is_none());
    let told = fake
        .events_of("response.create")
        .into_iter()
        .filter_map(|e| e["response"]["instructions"].as_str().map(str::to_owned))
        .collect::<Vec<_>>();
    assert!(
        told.iter().any(|t| t.contains("transfer to sales failed")),
        "{told:?}"
    );
    assert_eq!(bridge.metrics.errors("transfer_failed"), 1);
}

#[tokio::test]
async fn a_transfer_to_an_unknown_target_is_an_error_the_model_hears() {
    let fake = FakeRealtime::start(Script {
        function_call: Some((
            "transfer_call".into(),
            r#"{"target":"+15550001111"}"#.into(),
        )),
        answer_ms: 500,
        ..Script::default()
    })
    .await;
    let rest = FakeTwilioRest::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let bridge = bridge_with_rest(&fake, &rest, |c| {
        c.agent.call_control.transfer_targets =
            BTreeMap::from([("sales".into(), "+14155550123".into())]);
    })
    .await;
    let sid = call_sid(5);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(
            &sid,
            &token,
            fixture("speech.ulaw"),
            Duration::from_secs(10),
        ),
    )
    .await;
    let outputs = function_outputs(&fake);
    assert_eq!(outputs.len(), 1);
    let output = outputs[0]["item"]["output"].as_str().unwrap();
    assert!(
        output.contains("\"error\"") && output.contains("unknown transfer target"),
        "{output}"
    );
    // Nothing was dialled, and the call went on until the caller hung up.
    assert!(rest.requests().is_empty());
    assert!(log.closed_at.is_none());
    assert_eq!(bridge.metrics.tool_calls("transfer_call", "error"), 1);
}

#[tokio::test]
async fn keypad_digits_reach_the_model_and_never_the_logs() {
    let logs = captured_logs();
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = call_sid(6);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(&sid, &token, vec![0xFF; 160], Duration::from_secs(5));
    // One sequence ended by '#', one ended by silence.
    for (i, d) in ["7", "3", "9", "5", "#"].iter().enumerate() {
        script
            .dtmf
            .push((Duration::from_millis(500 + 100 * i as u64), (*d).into()));
    }
    script.dtmf.push((Duration::from_millis(1500), "8".into()));
    script.dtmf.push((Duration::from_millis(1600), "6".into()));
    let _ = run_caller(ws, script).await;

    let texts: Vec<String> = fake
        .events_of("conversation.item.create")
        .into_iter()
        .filter(|e| e["item"]["role"] == "user")
        .map(|e| {
            e["item"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        texts,
        [
            "The caller pressed on the keypad: 7 3 9 5 #",
            "The caller pressed on the keypad: 8 6"
        ]
    );
    // Each followed by a response.create (no response was active).
    assert_eq!(fake.events_of("response.create").len(), 2);
    assert_eq!(bridge.metrics.dtmf_digits.get(), 7);
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains(&sid), "the capture works: the call is logged");
    // (Bare "7395" is no test: it turns up in port numbers and timestamps.)
    for secret in ["7 3 9 5", "pressed on the keypad", "digit=7", "digit=\"7\""] {
        assert!(!logs.contains(secret), "{secret:?} reached the logs");
    }
    save_client_events("dtmf", callbridge::config::Dialect::Ga, &fake.events());
}

#[tokio::test]
async fn the_greeting_is_spoken_first() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.agent.greeting = "Greet the caller as Acme support.".into();
    })
    .await;
    let sid = call_sid(7);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(&sid, &token, vec![0xFF; 160], Duration::from_secs(6));
    script.end_after_first_answer = Some(Duration::from_millis(500));
    let log = run_caller(ws, script).await;
    let events = fake.events();
    assert_eq!(events[0]["type"], "session.update");
    assert_eq!(events[1]["type"], "response.create");
    assert_eq!(
        events[1]["response"]["instructions"],
        "Greet the caller as Acme support."
    );
    assert!(
        log.first_answer_at.is_some(),
        "the caller heard the greeting without speaking"
    );
}

fn sales_profile(c: &mut Config) {
    c.agents.insert(
        "sales".into(),
        ProfileConfig {
            numbers: vec!["+14155550177".into()],
            instructions: Some("You are Acme's sales line.".into()),
            ..ProfileConfig::default()
        },
    );
}

/// Answers `/voice` for a call to `to`; (stream url, token).
async fn answer_to(bridge: &Bridge, call_sid: &str, to: &str) -> (String, String) {
    let mut params = fake_twilio::voice_params(call_sid);
    for p in params.iter_mut() {
        if p.0 == "To" {
            p.1 = to;
        }
    }
    let url = format!("{}/voice", bridge.public_url);
    let sig = fake_twilio::sign(AUTH_TOKEN, &url, &params);
    let (status, body) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&sig)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("<Parameter name=\"to\" value=\"{to}\"/>")),
        "{body}"
    );
    fake_twilio::parse_twiml(&body).unwrap()
}

async fn open(url: &str) -> fake_twilio::Ws {
    let sig = fake_twilio::sign(AUTH_TOKEN, url, &[]);
    fake_twilio::open_stream(url, Some(&sig)).await.unwrap()
}

#[tokio::test]
async fn the_profile_is_chosen_by_the_called_number() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), sales_profile).await;
    for (n, to, instructions) in [
        (8, "+14155550177", "You are Acme's sales line."),
        (
            9,
            "+14155550199",
            Config::default().agent.instructions.as_str(),
        ),
    ] {
        let sid = call_sid(n);
        let (url, token) = answer_to(&bridge, &sid, to).await;
        let ws = open(&url).await;
        let _ = run_caller(
            ws,
            CallerScript::new(&sid, &token, vec![0xFF; 160], Duration::from_secs(1)),
        )
        .await;
        let updates = fake.events_of("session.update");
        assert_eq!(
            updates.last().unwrap()["session"]["instructions"],
            instructions
        );
    }
}

#[tokio::test]
async fn a_tampered_or_unknown_profile_in_a_token_is_refused() {
    let fake = FakeRealtime::start(Script::default()).await;
    // Pre-warm off: the webhook would open a session of its own (see
    // tests/prewarm.rs); this test counts the sessions streams open.
    let with_sales = Bridge::start(&fake.url(), |c| {
        sales_profile(c);
        c.realtime.prewarm = false;
    })
    .await;
    let sid = call_sid(10);
    let (url, token) = answer_to(&with_sales, &sid, "+14155550177").await;
    assert!(token.contains(".sales."), "{token}");

    // Tampered: the profile is under the MAC.
    let forged = token.replacen(".sales.", ".default.", 1);
    let mut ws = open(&url).await;
    let refused = run_caller(
        ws,
        CallerScript::new(&sid, &forged, vec![0xFF; 160], Duration::from_secs(2)),
    )
    .await;
    assert_eq!(refused.close_code, Some(1008));

    // Authentic but unknown here: a replica with the same auth token and
    // no such profile refuses it the same way.
    let without = Bridge::start(&fake.url(), |c| c.realtime.prewarm = false).await;
    let (url_b, _) = without.answer(&sid).await;
    ws = open(&url_b).await;
    let refused = run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 160], Duration::from_secs(2)),
    )
    .await;
    assert_eq!(refused.close_code, Some(1008));
    assert_eq!(without.metrics.errors("unknown_profile"), 1);
    assert_eq!(
        fake.record.lock().unwrap().sessions,
        0,
        "no model session for a refused stream"
    );
}
