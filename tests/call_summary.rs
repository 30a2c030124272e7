//! Call records (the summary webhook) and per-call cost, end to end: the
//! real server, the fake Twilio caller and fake Realtime model, and a local
//! receiver that checks `X-Callbridge-Signature` with its own HMAC-SHA256
//! (not the bridge's signing code).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use callbridge::call::tools::{CallContext, ToolAnswer, ToolFuture, ToolRunner};
use callbridge::config::{Config, Secret, Secrets};
use callbridge::metrics::{Metrics, Outcome, SummaryOutcome};
use callbridge::server::Server;
use callbridge::upstream::{ToolCall, ToolSpec};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{self, Ws, ACCOUNT_SID, STREAM_SID};
use support::{fixture, wait_until, Bridge, AUTH_TOKEN, SUMMARY_SECRET};
use tokio_tungstenite::tungstenite::Message;

const CALL_SID: &str = "CA00000000000000000000000000000042";

/// What the receiver got: one entry per request.
#[derive(Debug, Clone)]
struct Received {
    signature: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A local receiver: answers each request with the next status of
/// `statuses` (the last one repeats) after `delay`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(statuses: Vec<u16>, delay: Duration) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/records",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                let statuses = statuses.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(Received {
                            signature: header("x-callbridge-signature"),
                            content_type: header("content-type"),
                            body: body.to_vec(),
                        });
                        seen.len()
                    };
                    let status = statuses[(n - 1).min(statuses.len() - 1)];
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/records?token=receiver-side"),
            got,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// The receiver's check, written from the README alone: `t=<unix>,v1=<hex
/// HMAC-SHA256(secret, "<t>.<body>")>`, with the timestamp near now.
fn verify(secret: &str, received: &Received) -> Result<(), String> {
    let header = received.signature.as_deref().ok_or("no signature header")?;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (t, v1) = (t.ok_or("no t")?, v1.ok_or("no v1")?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at: u64 = t.parse().map_err(|_| "t is not a number")?;
    if now.abs_diff(at) > 300 {
        return Err(format!("timestamp {at} is not near now ({now})"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&received.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if expected == v1 {
        Ok(())
    } else {
        Err(format!("v1 {v1} is not {expected}"))
    }
}

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
        Box::pin(async { ToolAnswer::ok(r#"{"status":"shipped"}"#) })
    }
}

/// The `<Parameter>`s of a TwiML answer, as Twilio hands them back in
/// `start.customParameters`.
fn parameters(twiml: &str) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for tag in twiml.split("<Parameter ").skip(1) {
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            let at = tag.find(&key)? + key.len();
            let end = tag[at..].find('"')?;
            Some(tag[at..at + end].to_owned())
        };
        if let (Some(name), Some(value)) = (attr("name"), attr("value")) {
            out.insert(name, Value::String(value));
        }
    }
    out
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// One call as Twilio would place it: the signed webhook, the stream with
/// every `<Parameter>` back in `start`, the caller's speech, then silence
/// until `answers` answers' worth of audio was heard; then `stop`.
async fn place_call(bridge: &Bridge, answer_frames: usize) {
    let params = fake_twilio::voice_params(CALL_SID);
    let sig = fake_twilio::sign(AUTH_TOKEN, &format!("{}/voice", bridge.public_url), &params);
    let (status, twiml) = fake_twilio::post_form(bridge.addr, "/voice", &params, Some(&sig)).await;
    assert_eq!(status, 200, "{twiml}");
    let (stream_url, _) = fake_twilio::parse_twiml(&twiml).unwrap();
    let sig = fake_twilio::sign(AUTH_TOKEN, &stream_url, &[]);
    let mut ws = fake_twilio::open_stream(&stream_url, Some(&sig))
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"event":"connected","protocol":"Call","version":"1.0.0"}),
    )
    .await;
    send(
        &mut ws,
        json!({"event":"start","sequenceNumber":"1","streamSid":STREAM_SID,
               "start":{"accountSid":ACCOUNT_SID,"streamSid":STREAM_SID,"callSid":CALL_SID,
                        "tracks":["inbound"],
                        "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
                        "customParameters": parameters(&twiml)}}),
    )
    .await;
    let mut audio = fixture("speech.ulaw");
    audio.extend(vec![0xFF; 8000 * 30]);
    let b64 = base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let mut heard = 0;
    let mut seq = 2u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in audio.chunks(160) {
        tick.tick().await;
        send(
            &mut ws,
            json!({"event":"media","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,
                   "media":{"track":"inbound","chunk":seq.to_string(),"timestamp":"0","payload":b64.encode(frame)}}),
        )
        .await;
        seq += 1;
        // Read whatever arrived; marks are echoed as Twilio does.
        while let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::ZERO, ws.next()).await
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["event"].as_str() {
                Some("media") => heard += 1,
                Some("mark") => {
                    send(&mut ws, json!({"event":"mark","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,"mark":v["mark"]})).await;
                    seq += 1;
                }
                _ => {}
            }
        }
        if heard >= answer_frames {
            break;
        }
    }
    assert!(heard >= answer_frames, "heard only {heard} frames");
    send(&mut ws, json!({"event":"stop","sequenceNumber":seq.to_string(),"streamSid":STREAM_SID,"stop":{"accountSid":ACCOUNT_SID,"callSid":CALL_SID}})).await;
    assert_eq!(support::close_code(&mut ws).await, Some(1000));
}

/// The fake model: a function call on the first turn, then a 500 ms answer.
async fn model() -> FakeRealtime {
    FakeRealtime::start(Script {
        answer_ms: 500,
        function_call: Some(("lookup_order".into(), r#"{"order_id":"42"}"#.into())),
        ..Script::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_call_record_reaches_the_receiver_with_usage_and_cost() {
    let receiver = Receiver::start(vec![200], Duration::ZERO).await;
    let fake = model().await;
    let url = receiver.url.clone();
    let bridge = Bridge::start_with_tools(&fake.url(), Arc::new(Lookup), move |c| {
        c.summary.url = Some(url);
    })
    .await;
    place_call(&bridge, 20).await;
    wait_until("record delivered", || {
        bridge.metrics.summaries.count(SummaryOutcome::Delivered) == 1
    })
    .await;

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    verify(SUMMARY_SECRET, &got[0]).unwrap();
    assert!(verify("another-secret", &got[0]).is_err());
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
    let record: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(record["version"], 1);
    assert_eq!(record["call_sid"], CALL_SID);
    assert_eq!(record["stream_sid"], STREAM_SID);
    assert_eq!(record["account_sid"], ACCOUNT_SID);
    assert_eq!(record["direction"], "inbound");
    assert_eq!(record["from"], "+14155550100");
    assert_eq!(record["to"], "+14155550199");
    assert_eq!(record["profile"], "default");
    assert_eq!(record["outcome"], "completed");
    assert!(record["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(record["duration_ms"].as_u64().unwrap() > 0);
    assert!(record["turns"].as_u64().unwrap() >= 1);
    // Both sides of the conversation, in order, timed.
    let transcript = record["transcript"].as_array().unwrap();
    assert_eq!(transcript[0]["role"], "caller");
    assert_eq!(transcript[0]["text"], "hello there");
    assert!(
        transcript
            .iter()
            .any(|t| t["role"] == "assistant" && t["text"] == "Hello"),
        "{transcript:?}"
    );
    let times: Vec<u64> = transcript
        .iter()
        .map(|t| t["at_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The tool call, without its arguments or result.
    let tools = record["tool_calls"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!(tools[0]["name"], "lookup_order");
    assert_eq!(tools[0]["outcome"], "ok");
    assert!(tools[0]["duration_ms"].is_u64() && tools[0]["at_ms"].is_u64());
    assert!(!String::from_utf8_lossy(&got[0].body).contains("shipped"));
    // Usage: the fake's two completed responses (10 + 20 input, 2 + 10
    // output tokens, no details: counted as text), priced by [pricing].
    let usage = &record["usage"];
    assert_eq!(usage["input_text_tokens"], 30, "{usage}");
    assert_eq!(usage["output_text_tokens"], 12, "{usage}");
    assert_eq!(usage["input_audio_tokens"], 0);
    let cost = 30.0 * 4.0 / 1e6 + 12.0 * 16.0 / 1e6;
    assert!(
        (record["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9,
        "{record}"
    );
    // The same figures for the process.
    assert_eq!(bridge.metrics.usage.tokens("input_text"), 30);
    assert_eq!(bridge.metrics.usage.call_cost.count(), 1);
    assert!((bridge.metrics.usage.call_cost.sum() - cost).abs() < 1e-6);
    // And for the call's profile.
    let profile = record["profile"].as_str().unwrap();
    assert_eq!(
        bridge.metrics.usage.profile_tokens(profile, "input_text"),
        30
    );
    assert_eq!(
        bridge.metrics.usage.profile_tokens(profile, "output_text"),
        12
    );
    assert!((bridge.metrics.usage.profile_cost(profile) - cost).abs() < 1e-9);
    let text = bridge.metrics.encode();
    assert!(
        text.contains(&format!(
            "callbridge_profile_tokens_total{{profile=\"{profile}\",kind=\"input_text\"}} 30"
        )),
        "{text}"
    );
    assert!(
        text.contains("callbridge_summaries_total{outcome=\"delivered\"} 1"),
        "{text}"
    );
    assert!(text.contains("callbridge_call_cost_usd_count 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_then_given_up_and_the_call_is_untouched() {
    let receiver = Receiver::start(vec![500], Duration::ZERO).await;
    let fake = model().await;
    let url = receiver.url.clone();
    let bridge = Bridge::start_with_tools(&fake.url(), Arc::new(Lookup), move |c| {
        c.summary.url = Some(url);
        c.summary.retry_budget_ms = 1500;
    })
    .await;
    // The call itself completes normally: answered, closed with 1000.
    place_call(&bridge, 20).await;
    wait_until("call counted and its slot released", || {
        bridge.metrics.calls_total(Outcome::Completed) == 1
            && bridge.metrics.calls_active.get() == 0
    })
    .await;
    wait_until("record given up", || {
        bridge.metrics.summaries.count(SummaryOutcome::Failed) == 1
    })
    .await;
    let got = receiver.received();
    // Retried (backoff 250 ms, 500 ms, …, within 1.5 s), each attempt signed
    // anew over the same body; and then no more.
    assert!(got.len() >= 2, "only {} attempts", got.len());
    assert!(got.len() <= 6, "{} attempts in a 1.5 s budget", got.len());
    for attempt in &got {
        verify(SUMMARY_SECRET, attempt).unwrap();
        assert_eq!(attempt.body, got[0].body);
    }
    assert_eq!(
        bridge.metrics.summaries.attempts_failed.get(),
        got.len() as u64
    );
    assert_eq!(bridge.metrics.summaries.count(SummaryOutcome::Delivered), 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.received().len(),
        got.len(),
        "retried after giving up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_is_not_retried() {
    let receiver = Receiver::start(vec![400], Duration::ZERO).await;
    let fake = model().await;
    let url = receiver.url.clone();
    let bridge = Bridge::start_with_tools(&fake.url(), Arc::new(Lookup), move |c| {
        c.summary.url = Some(url);
    })
    .await;
    place_call(&bridge, 20).await;
    wait_until("record refused", || {
        bridge.metrics.summaries.count(SummaryOutcome::Failed) == 1
    })
    .await;
    assert_eq!(receiver.received().len(), 1);
}

/// SIGTERM right after a call: the record that failed its first attempt
/// is tried again before the server exits, not after its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_sends_pending_records_before_exit() {
    let receiver = Receiver::start(vec![503, 200], Duration::from_millis(200)).await;
    let fake = model().await;
    let url = receiver.url.clone();
    let mut bridge = Bridge::start_with_tools(&fake.url(), Arc::new(Lookup), move |c| {
        c.summary.url = Some(url);
    })
    .await;
    place_call(&bridge, 20).await;
    wait_until("first attempt made", || !receiver.received().is_empty()).await;
    bridge.shutdown();
    let task = &mut bridge.task;
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the server exits within its drain")
        .unwrap();
    assert_eq!(bridge.metrics.summaries.count(SummaryOutcome::Delivered), 1);
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn a_summary_url_without_a_secret_refuses_to_start() {
    for set in [
        |c: &mut Config| c.summary.url = Some("https://records.example.com/".into()),
        |c: &mut Config| {
            let profile = callbridge::config::ProfileConfig {
                numbers: vec!["+14155550100".into()],
                summary_url: Some("https://records.example.com/sales".into()),
                ..Default::default()
            };
            c.agents.insert("sales".into(), profile);
        },
    ] {
        let mut config = Config {
            public_url: Some("https://bridge.example.com".into()),
            ..Config::default()
        };
        set(&mut config);
        let secrets = Secrets {
            twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
            openai_api_key: Some(Secret::new("sk-x")),
            ..Secrets::default()
        };
        let err = Server::new(config, secrets, Metrics::new())
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(text.contains("CALLBRIDGE_SUMMARY_SECRET"), "{text}");
    }
}
