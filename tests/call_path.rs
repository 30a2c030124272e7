//! End-to-end: the real server on 127.0.0.1:0, a fake Twilio caller and a
//! fake Realtime server, both written from PROTOCOLS.md alone.

mod support;

use std::time::Duration;

use callbridge::audio::AudioMode;
use callbridge::config::Dialect;
use callbridge::metrics::Outcome;
use futures_util::SinkExt;
use serde_json::{json, Value};
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{self, run_caller, CallerScript};
use support::{close_code, fixture, save_client_events, wait_until, Bridge, API_KEY, AUTH_TOKEN};
use tokio_tungstenite::tungstenite::Message;

fn call_sid(n: u32) -> String {
    format!("CA{n:032x}")
}

/// One whole turn: the caller speaks the fixture, the model answers, the
/// caller hears the answer paced in real time and acknowledges marks.
async fn full_turn(dialect: Dialect, mode: AudioMode, name: &str) {
    let fake = FakeRealtime::start(Script {
        answer_ms: 1500,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.realtime.dialect = dialect;
        c.audio.mode = mode;
    })
    .await;
    let sid = call_sid(1);
    let (ws, token) = bridge.connect(&sid).await;
    let speech = fixture("speech.ulaw");
    let mut script = CallerScript::new(&sid, &token, speech, Duration::from_secs(15));
    script.end_after_first_answer = Some(Duration::from_millis(1800));
    let log = run_caller(ws, script).await;

    // The model heard the caller: session first, then appends in the mode's format.
    let events = fake.events();
    assert_eq!(events[0]["type"], "session.update", "{:?}", events[0]);
    let appends = fake.events_of("input_audio_buffer.append");
    assert!(appends.len() > 250, "only {} appends", appends.len());
    let per_frame = match mode {
        AudioMode::Pcm16 => 960,
        AudioMode::Pcmu => 160,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let len = b64
        .decode(appends[10]["audio"].as_str().unwrap())
        .unwrap()
        .len();
    assert_eq!(len, per_frame);

    // The caller heard the answer, in Twilio's shapes, and acked marks.
    assert!(log.heard_ms >= 1000, "heard {} ms", log.heard_ms);
    assert!(!log.marks_echoed.is_empty());
    assert_eq!(log.binary_frames, 0);
    for (_, v) in &log.received {
        assert_eq!(v["streamSid"], fake_twilio::STREAM_SID, "{v}");
        match v["event"].as_str() {
            Some("media") => assert!(v["media"]["payload"]
                .as_str()
                .is_some_and(|p| !p.is_empty())),
            Some("mark") => assert!(v["mark"]["name"].as_str().is_some()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(log.close_code, Some(1000));

    // The model's socket was closed when the call stopped.
    wait_until("model socket closed", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;
    assert!(bridge.metrics.turn_latency.count() >= 1);
    assert!(bridge.metrics.first_audio.count() == 1);

    // Headers of the dialect.
    let headers = fake.record.lock().unwrap().headers[0].clone();
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match dialect {
        Dialect::Ga => {
            assert_eq!(header("authorization"), Some(format!("Bearer {API_KEY}")));
            assert_eq!(header("openai-beta"), None);
        }
        Dialect::Beta => {
            assert_eq!(header("authorization"), Some(format!("Bearer {API_KEY}")));
            assert_eq!(header("openai-beta").as_deref(), Some("realtime=v1"));
        }
        Dialect::Azure => {
            assert_eq!(header("api-key").as_deref(), Some(API_KEY));
            assert_eq!(header("authorization"), None);
        }
        Dialect::Live | Dialect::AzureLive => unreachable!("Realtime scenarios only"),
    }
    save_client_events(name, dialect, &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_turn_ga_pcm16() {
    full_turn(Dialect::Ga, AudioMode::Pcm16, "full_turn_ga_pcm16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_turn_ga_pcmu() {
    full_turn(Dialect::Ga, AudioMode::Pcmu, "full_turn_ga_pcmu").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_turn_beta_pcm16() {
    full_turn(Dialect::Beta, AudioMode::Pcm16, "full_turn_beta_pcm16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_turn_beta_pcmu() {
    full_turn(Dialect::Beta, AudioMode::Pcmu, "full_turn_beta_pcmu").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_turn_azure_pcm16() {
    full_turn(Dialect::Azure, AudioMode::Pcm16, "full_turn_azure_pcm16").await;
}

/// PROTOCOLS.md §3: clear, cancel, truncate within [acked, sent], and no
/// audio of the cancelled response after the clear.
async fn barge_in(dialect: Dialect, mode: AudioMode, name: &str) {
    let fake = FakeRealtime::start(Script {
        answer_ms: 6000,
        late_deltas_after_cancel: 3,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.realtime.dialect = dialect;
        c.audio.mode = mode;
    })
    .await;
    let sid = call_sid(2);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(30),
    );
    script.bargein = Some((Duration::from_millis(1000), fixture("bargein.ulaw")));
    script.end_after_first_answer = Some(Duration::from_millis(3500));
    let log = run_caller(ws, script).await;

    assert_eq!(log.clears.len(), 1, "clears: {:?}", log.clears);
    let clear_at = log.clears[0];
    let bargein_at = log.bargein_at.expect("barge-in audio was sent");
    assert!(clear_at > bargein_at);
    // Nothing of the cancelled response was played after the clear (the
    // caller still speaks for seconds, so no new answer can start yet).
    assert_eq!(
        log.media_between(clear_at, clear_at + Duration::from_millis(1500)),
        0
    );

    // The session cancelled the response itself (server VAD with
    // interrupt_response, as the real API): the bridge sends no cancel, so
    // no response_cancel_not_active error either.
    assert!(fake.events_of("response.cancel").is_empty());
    let truncates = fake.events_of("conversation.item.truncate");
    assert_eq!(truncates.len(), 1, "{truncates:?}");
    let t = &truncates[0];
    assert_eq!(t["item_id"], "item_out2");
    assert_eq!(t["content_index"], 0);
    let end_ms = t["audio_end_ms"].as_u64().unwrap();
    let heard = log.heard_at_clear[0];
    let received = log.received_at_clear[0];
    eprintln!("barge-in: audio_end_ms={end_ms} heard={heard} received={received}");
    // Between what Twilio acknowledged as played (the caller heard at least
    // up to the last echoed mark, ≤ heard) and what was sent (≤ received).
    assert!(
        end_ms <= received,
        "audio_end_ms {end_ms} > sent {received}"
    );
    assert!(
        end_ms + 120 >= heard.saturating_sub(100),
        "audio_end_ms {end_ms} far below heard {heard}"
    );
    assert!(
        end_ms >= 1000 - 120,
        "audio_end_ms {end_ms}: barge-in came after 1000 ms heard"
    );
    let events = fake.events();

    assert_eq!(bridge.metrics.bargeins.get(), 1);
    assert_eq!(bridge.metrics.truncations_sent.get(), 1);
    assert!(
        bridge.metrics.dropped_out_stale.get() >= 1,
        "late deltas must be dropped"
    );
    assert_eq!(bridge.metrics.bargein_latency.count(), 1);
    save_client_events(name, dialect, &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_ga_pcm16() {
    barge_in(Dialect::Ga, AudioMode::Pcm16, "barge_in_ga_pcm16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_beta_pcmu() {
    barge_in(Dialect::Beta, AudioMode::Pcmu, "barge_in_beta_pcmu").await;
}

/// Two items in one response, the second already partly sent to Twilio
/// when the caller talks over the first: the item playing is truncated at
/// its heard point, the one after it at 0, never left as if heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_with_two_items_queued_truncates_the_one_playing() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 1500,
        items_per_response: 2,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| c.audio.mode = AudioMode::Pcmu).await;
    let sid = call_sid(9);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(30),
    );
    // The fake's VAD needs a few hundred ms of barge-in speech: the
    // session hears it when about 1.3-1.4 s were heard, near the end of the
    // first item, with the second partly sent (the playout lead is 200 ms).
    script.bargein = Some((Duration::from_millis(1000), fixture("bargein.ulaw")));
    script.end_after_first_answer = Some(Duration::from_millis(3500));
    let log = run_caller(ws, script).await;

    assert_eq!(log.clears.len(), 1, "clears: {:?}", log.clears);
    let truncates = fake.events_of("conversation.item.truncate");
    let cuts: Vec<(String, u64)> = truncates
        .iter()
        .map(|t| {
            (
                t["item_id"].as_str().unwrap_or_default().to_owned(),
                t["audio_end_ms"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let heard = log.heard_at_clear[0];
    eprintln!("two items: truncates={cuts:?} heard={heard}");
    let cut_of = |second: bool| {
        cuts.iter()
            .find(|(id, _)| id.ends_with("_1") == second)
            .map(|(_, end)| *end)
    };
    // What the caller had heard is known to ±1 mark (the fake acknowledges
    // per chunk): the cut must be within that of it.
    let near = |end: u64, heard: u64| end + 150 >= heard && end <= heard + 250;
    if heard + 50 < 1500 {
        // In the first item: cut there; the second never heard, cut at 0.
        let first = cut_of(false).expect("the item playing is truncated");
        assert!(near(first, heard), "first cut at {first}, heard {heard}");
        assert_eq!(cut_of(true), Some(0), "the second item was never heard");
    } else if heard > 1500 + 50 {
        // Into the second: the first was heard whole, not cut short.
        assert!(cut_of(false).is_none_or(|end| end >= 1500), "{cuts:?}");
        let second = cut_of(true).expect("the item playing is truncated");
        assert!(
            near(second, heard - 1500),
            "second cut at {second}, heard {heard}"
        );
    }
    // Every cut within what the fake sent of that item.
    for (id, end) in &cuts {
        let sent = fake
            .record
            .lock()
            .unwrap()
            .sent_ms
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, ms)| u64::from(*ms));
        assert!(
            sent.is_some_and(|ms| *end <= ms),
            "{id} cut at {end}, sent {sent:?}"
        );
    }
    assert!(fake.events_of("response.cancel").is_empty());
    // No item_truncate_invalid_item_id, no invalid_value.
    assert_eq!(bridge.metrics.errors("model_error"), 0);
}

/// `audio.heard_offset_ms` moves the truncation back by the delay between
/// Twilio playing audio and the caller hearing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heard_offset_moves_the_truncation_back() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 6000,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.audio.mode = AudioMode::Pcmu;
        c.audio.heard_offset_ms = 700;
    })
    .await;
    let sid = call_sid(11);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(30),
    );
    script.bargein = Some((Duration::from_millis(1000), fixture("bargein.ulaw")));
    script.end_after_first_answer = Some(Duration::from_millis(3500));
    let log = run_caller(ws, script).await;
    let heard = log.heard_at_clear[0];
    let truncates = fake.events_of("conversation.item.truncate");
    assert_eq!(truncates.len(), 1, "{truncates:?}");
    let end_ms = truncates[0]["audio_end_ms"].as_u64().unwrap();
    eprintln!("heard offset: audio_end_ms={end_ms} heard={heard}");
    // 700 ms before what the caller had heard by Twilio's playing (which
    // the barge_in tests pin within a mark of `heard`).
    assert!(
        end_ms + 700 <= heard + 250 && end_ms + 700 + 150 >= heard,
        "audio_end_ms {end_ms}, heard {heard}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hangs_up_mid_response_closes_the_model_socket() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 5000,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = call_sid(3);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(20),
    );
    script.end_after_first_answer = Some(Duration::from_millis(300));
    script.hang_up = true;
    let log = run_caller(ws, script).await;
    assert!(log.first_answer_at.is_some());
    wait_until("model socket closed", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::CallerGone) == 1
    })
    .await;
}

#[tokio::test]
async fn benign_errors_do_not_end_the_call_and_fatal_ones_do() {
    let benign = json!({"type":"error","error":{"type":"invalid_request_error","code":"response_cancel_not_active","message":"x","param":null,"event_id":null}});
    let unknown = json!({"type":"some.future_event","payload":{"x":[1,2]}});
    // Quota: a new session could not fix it either, so no reconnect.
    let fatal = json!({"type":"error","error":{"type":"insufficient_quota","code":"insufficient_quota","message":"You exceeded your current quota.","param":null,"event_id":null}});
    let fake = FakeRealtime::start(Script {
        after_session: vec![benign.clone(), unknown, benign, fatal],
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = call_sid(4);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 8000], Duration::from_secs(5)),
    )
    .await;
    // The fatal error ended the call cleanly, after the benign ones were ignored.
    assert_eq!(log.close_code, Some(1000));
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::UpstreamFailed) == 1
    })
    .await;
    assert_eq!(bridge.metrics.errors("model_fatal"), 1);
    assert_eq!(bridge.metrics.errors("model_error"), 0);
}

/// The model's socket drops mid-call: the caller stays connected, a new
/// session is configured and told the conversation so far, and the call
/// goes on until the caller hangs up.
#[tokio::test]
async fn a_dropped_model_socket_is_reconnected_and_the_call_goes_on() {
    let fake = FakeRealtime::start(Script {
        close_after_events: Some(350),
        answer_ms: 1000,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = call_sid(5);
    let (ws, token) = bridge.connect(&sid).await;
    let mut speech = fixture("speech.ulaw");
    speech.extend(vec![0xFF; 8000]);
    speech.extend(fixture("speech.ulaw"));
    let log = run_caller(
        ws,
        CallerScript::new(&sid, &token, speech, Duration::from_secs(16)),
    )
    .await;
    // The caller hung up (stop); the bridge never closed on them.
    assert_eq!(log.close_code, Some(1000));
    assert_eq!(fake.record.lock().unwrap().sessions, 2, "one reconnect");
    // The second session got the session again, then the first turn as text.
    let events = fake.events();
    let updates: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "session.update")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(updates.len(), 2);
    let replay = &events[updates[1] + 1];
    assert_eq!(replay["type"], "conversation.item.create");
    assert_eq!(replay["item"]["role"], "user");
    assert_eq!(replay["item"]["content"][0]["text"], "hello there");
    assert_eq!(bridge.metrics.reconnects("ok"), 1);
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
    })
    .await;
    save_client_events("reconnect", Dialect::Ga, &fake.events());
}

/// With reconnection off, a lost socket ends the call cleanly (the caller
/// then hears the TwiML fallback).
#[tokio::test]
async fn without_a_reconnect_budget_a_lost_socket_ends_the_call_cleanly() {
    let fake = FakeRealtime::start(Script {
        close_after_events: Some(20),
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| c.realtime.reconnect_budget_ms = 0).await;
    let sid = call_sid(15);
    let (ws, token) = bridge.connect(&sid).await;
    let log = run_caller(
        ws,
        CallerScript::new(&sid, &token, vec![0xFF; 16000], Duration::from_secs(5)),
    )
    .await;
    assert_eq!(log.close_code, Some(1000));
    wait_until("call counted", || {
        bridge.metrics.calls_total(Outcome::UpstreamFailed) == 1
    })
    .await;
}

/// A session older than max_session_secs is replaced at a quiet moment;
/// the conversation continues in the new one.
#[tokio::test]
async fn the_model_session_rolls_over_and_the_call_goes_on() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 800,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| c.realtime.max_session_secs = 5).await;
    let sid = call_sid(16);
    let (ws, token) = bridge.connect(&sid).await;
    let mut speech = fixture("speech.ulaw");
    speech.extend(vec![0xFF; 24000]);
    speech.extend(fixture("speech.ulaw"));
    let log = run_caller(
        ws,
        CallerScript::new(&sid, &token, speech, Duration::from_secs(20)),
    )
    .await;
    assert_eq!(log.close_code, Some(1000));
    let (sessions, closed) = {
        let r = fake.record.lock().unwrap();
        (r.sessions, r.closed_by_client)
    };
    assert!(sessions >= 2, "rolled over: {sessions} sessions");
    assert!(closed >= 1, "the old session was closed");
    assert!(bridge.metrics.reconnects("rollover") >= 1);
    // The caller heard answers before and after the rollover.
    assert!(log.heard_ms > 1000, "heard {} ms", log.heard_ms);
}

#[tokio::test]
async fn missing_or_wrong_signatures_get_403_and_open_no_session() {
    let fake = FakeRealtime::start(Script::default()).await;
    // Pre-warm off: this test counts the sessions streams open, and the
    // webhook would open one of its own (tests/prewarm.rs).
    let bridge = Bridge::start(&fake.url(), |c| c.realtime.prewarm = false).await;
    let sid = call_sid(6);
    let params = fake_twilio::voice_params(&sid);
    let url = format!("{}/voice", bridge.public_url);

    let (status, _) = fake_twilio::post_form(bridge.addr, "/voice", &params, None).await;
    assert_eq!(status, 403);
    let wrong = fake_twilio::sign("not-the-token", &url, &params);
    let (status, _) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&wrong)).await;
    assert_eq!(status, 403);
    // Signed, then a parameter changed on the way.
    let good = fake_twilio::sign(AUTH_TOKEN, &url, &params);
    let mut tampered = params.clone();
    tampered[5] = ("From", "+19005550123");
    let (status, _) = fake_twilio::post_form(bridge.addr, "/voice", &tampered, Some(&good)).await;
    assert_eq!(status, 403);
    // Signed for another host: the URL is rebuilt from public_url, not Host.
    let other = fake_twilio::sign(AUTH_TOKEN, "https://evil.example.com/voice", &params);
    let (status, _) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&other)).await;
    assert_eq!(status, 403);
    let (status, _) = fake_twilio::post_form(bridge.addr, "/stream-status", &params, None).await;
    assert_eq!(status, 403);

    let (stream_url, _) = bridge.answer(&sid).await;
    assert_eq!(stream_url, format!("ws://{}/media", bridge.addr));
    assert_eq!(
        fake_twilio::open_stream(&stream_url, None).await.err(),
        Some(403)
    );
    let wrong = fake_twilio::sign("not-the-token", &stream_url, &[]);
    assert_eq!(
        fake_twilio::open_stream(&stream_url, Some(&wrong))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(fake.record.lock().unwrap().sessions, 0);
    assert_eq!(bridge.metrics.errors("bad_signature"), 7);
}

#[tokio::test]
async fn twiml_answer_has_the_documented_shape() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.twilio.fallback_say = "Sorry & goodbye".into()
    })
    .await;
    let sid = call_sid(7);
    let params = fake_twilio::voice_params(&sid);
    let sig = fake_twilio::sign(AUTH_TOKEN, &format!("{}/voice", bridge.public_url), &params);
    let (status, body) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&sig)).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
        "{body}"
    );
    let connect = body.find("<Connect>").unwrap();
    let stream = body
        .find(&format!("<Stream url=\"ws://{}/media\"", bridge.addr))
        .unwrap();
    let status_cb = body
        .find(&format!(
            "statusCallback=\"http://{}/stream-status\"",
            bridge.addr
        ))
        .unwrap();
    let end = body.find("</Connect>").unwrap();
    let say = body.find("<Say>Sorry &amp; goodbye</Say>").unwrap();
    assert!(
        connect < stream && stream < status_cb && status_cb < end && end < say,
        "{body}"
    );
}

/// Opens a signed stream and sends `connected` + a `start` of our making.
async fn start_with(bridge: &Bridge, start: Value) -> Option<u16> {
    let (stream_url, _) = bridge.answer(&call_sid(9)).await;
    let sig = fake_twilio::sign(AUTH_TOKEN, &stream_url, &[]);
    let mut ws = fake_twilio::open_stream(&stream_url, Some(&sig))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"event":"connected","protocol":"Call","version":"1.0.0"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    if !start.is_null() {
        ws.send(Message::Text(start.to_string().into()))
            .await
            .unwrap();
    }
    close_code(&mut ws).await
}

fn start_msg(call_sid: &str, token: &str, encoding: &str) -> Value {
    json!({"event":"start","sequenceNumber":"1","streamSid":fake_twilio::STREAM_SID,
           "start":{"accountSid":fake_twilio::ACCOUNT_SID,"streamSid":fake_twilio::STREAM_SID,"callSid":call_sid,
                    "tracks":["inbound"],"mediaFormat":{"encoding":encoding,"sampleRate":8000,"channels":1},
                    "customParameters":{"token":token}}})
}

#[tokio::test]
async fn bad_token_wrong_format_and_late_start_close_with_1008() {
    let fake = FakeRealtime::start(Script::default()).await;
    // Pre-warm off: this test counts the sessions streams open, and the
    // webhook would open one of its own (tests/prewarm.rs).
    let bridge = Bridge::start(&fake.url(), |c| c.realtime.prewarm = false).await;
    let sid = call_sid(9);
    let (_, token) = bridge.answer(&sid).await;

    // A token issued for this call, presented for another.
    let (_, other_token) = bridge.answer(&call_sid(10)).await;
    assert_eq!(
        start_with(&bridge, start_msg(&sid, &other_token, "audio/x-mulaw")).await,
        Some(1008)
    );
    // Garbage token, missing token.
    assert_eq!(
        start_with(
            &bridge,
            start_msg(&sid, "v1.99999999999.AAAA", "audio/x-mulaw")
        )
        .await,
        Some(1008)
    );
    let mut no_token = start_msg(&sid, &token, "audio/x-mulaw");
    no_token["start"]["customParameters"] = json!({});
    assert_eq!(start_with(&bridge, no_token).await, Some(1008));
    // Wrong media format.
    assert_eq!(
        start_with(&bridge, start_msg(&sid, &token, "audio/x-alaw")).await,
        Some(1008)
    );
    // No start within 5 s.
    assert_eq!(start_with(&bridge, Value::Null).await, Some(1008));

    assert_eq!(
        fake.record.lock().unwrap().sessions,
        0,
        "no model session for a refused stream"
    );
    assert_eq!(bridge.metrics.calls_total(Outcome::Unauthorized), 5);
}

#[tokio::test]
async fn invalid_frames_are_counted_and_a_burst_closes_the_call() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = call_sid(11);
    let (mut ws, token) = bridge.connect(&sid).await;
    let send = |v: String| Message::Text(v.into());
    ws.send(send(
        json!({"event":"connected","protocol":"Call","version":"1.0.0"}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(send(start_msg(&sid, &token, "audio/x-mulaw").to_string()))
        .await
        .unwrap();
    // A few bad frames: dropped and counted, the call goes on.
    ws.send(send("not json".into())).await.unwrap();
    ws.send(send(
        json!({"event":"media","media":{"payload":"!!!not base64"}}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(send(json!({"event":"party"}).to_string()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    ws.send(send(
        json!({"event":"media","media":{"payload":"x".repeat(70_000)}}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(send(
        json!({"event":"media","sequenceNumber":"3","media":{"payload":"/////w=="}}).to_string(),
    ))
    .await
    .unwrap();
    wait_until("append relayed", || {
        !fake.events_of("input_audio_buffer.append").is_empty()
    })
    .await;
    let m = &bridge.metrics;
    let text = m.encode();
    for reason in [
        "malformed",
        "bad_base64",
        "unknown_event",
        "binary",
        "oversize",
    ] {
        let line = format!(
            "callbridge_messages_rejected_total{{source=\"twilio\",reason=\"{reason}\"}} 1"
        );
        assert!(text.contains(&line), "missing {line}");
    }
    // A burst ends it with 1008.
    for _ in 0..40 {
        if ws.send(send("{".into())).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(1008));
    wait_until("call counted", || {
        m.calls_total(Outcome::ProtocolError) == 1
    })
    .await;
    wait_until("model socket closed", || {
        fake.record.lock().unwrap().closed_by_client == 1
    })
    .await;
}
