//! HTTP tools (`[[agent.tools]]`): the runner against a fake tool endpoint
//! written from the contract alone, and one tool round trip through the real
//! server with the fake Realtime model calling the function.

mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use callbridge::call::http_tools::HttpTools;
use callbridge::call::tools::{CallContext, ToolAnswer, ToolOutcome, ToolRunner};
use callbridge::config::{Config, Dialect, Secret, Secrets, ToolConfig};
use callbridge::metrics::Metrics;
use callbridge::server::Server;
use callbridge::upstream::ToolCall;
use serde_json::{json, Value};
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_tools::{FakeTools, Reply};
use support::fake_twilio::{self, run_caller, CallerScript};
use support::{fixture, save_client_events, wait_until, API_KEY, AUTH_TOKEN};

/// Every test's bound: a runner that hangs fails the test instead.
const BOUND: Duration = Duration::from_secs(20);

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A config file with `toml`, loaded as `callbridge serve` loads it (so
/// `${NAME}` header values are expanded from `env`).
fn load(toml: &str, env: &HashMap<String, String>) -> Config {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    Config::load(Some(f.path()), env).unwrap()
}

/// One tool at `url`, loaded from config.
fn tool(name: &str, url: &str, extra: &str) -> Vec<ToolConfig> {
    let toml = format!(
        "[[agent.tools]]\nname = \"{name}\"\ndescription = \"test tool\"\nurl = \"{url}\"\n{extra}\n"
    );
    load(&toml, &env(&[])).agent.tools
}

fn ctx() -> CallContext {
    CallContext {
        call_sid: "CA00000000000000000000000000000001".into(),
        stream_sid: "MZ00000000000000000000000000000001".into(),
        from: "+14155550100".into(),
        to: "+14155550199".into(),
        profile: "default".into(),
    }
}

fn call(name: &str, call_id: &str, arguments: &str) -> ToolCall {
    ToolCall {
        call_id: call_id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

async fn run(runner: &HttpTools, c: ToolCall) -> ToolAnswer {
    tokio::time::timeout(BOUND, runner.run(c, &ctx()))
        .await
        .expect("a tool call always ends")
}

/// The `error` text of an `{"error": …}` output.
fn error_text(answer: &ToolAnswer) -> String {
    let v: Value = serde_json::from_str(&answer.output)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.output));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
        .to_owned()
}

#[tokio::test]
async fn round_trip_sends_the_contract_and_returns_the_body() {
    let fake = FakeTools::start().await;
    let answer_body = json!({"status": "shipped", "eta_days": 2, "note": "ünïcode ✓"});
    fake.script("/orders/lookup", Reply::Json(answer_body.clone()));
    let toml = format!(
        r#"
        [[agent.tools]]
        name = "lookup_order"
        description = "Look up an order"
        url = "{}"
        timeout_ms = 3000
        headers = {{ Authorization = "Bearer ${{ORDERS_TOKEN}}", X-Tenant = "acme" }}
        [agent.tools.parameters]
        type = "object"
        [agent.tools.parameters.properties.order_id]
        type = "string"
        "#,
        fake.url("/orders/lookup")
    );
    let config = load(&toml, &env(&[("ORDERS_TOKEN", "tok-123-secret")]));
    let runner = HttpTools::new(&config.agent.tools).unwrap();

    let specs = runner.specs();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "lookup_order");
    assert_eq!(specs[0].description, "Look up an order");
    assert_eq!(
        specs[0].parameters,
        json!({"type":"object","properties":{"order_id":{"type":"string"}}})
    );

    let answer = run(
        &runner,
        call(
            "lookup_order",
            "call_abc",
            r#"{"order_id": "A-17", "rush": true}"#,
        ),
    )
    .await;
    assert_eq!(answer.outcome, ToolOutcome::Ok, "{}", answer.output);
    assert_eq!(answer.output, answer_body.to_string());

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/orders/lookup");
    assert_eq!(
        r.body,
        json!({
            "name": "lookup_order",
            "call_id": "call_abc",
            "arguments": {"order_id": "A-17", "rush": true},
            "call": {
                "call_sid": "CA00000000000000000000000000000001",
                "stream_sid": "MZ00000000000000000000000000000001",
                "from": "+14155550100",
                "to": "+14155550199",
                "profile": "default",
            },
        })
    );
    assert_eq!(r.header("authorization"), Some("Bearer tok-123-secret"));
    assert_eq!(r.header("x-tenant"), Some("acme"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("user-agent"),
        Some(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
    );
    // The runner's Debug never shows the secret either.
    assert!(!format!("{runner:?} {config:?}").contains("tok-123-secret"));
}

#[tokio::test]
async fn put_and_a_text_body() {
    let fake = FakeTools::start().await;
    fake.script("/log", Reply::Text("Logged: 5 km run.".into()));
    let runner =
        HttpTools::new(&tool("log_workout", &fake.url("/log"), "method = \"PUT\"")).unwrap();
    let answer = run(&runner, call("log_workout", "c1", r#"{"km":5}"#)).await;
    assert_eq!(answer, ToolAnswer::ok("Logged: 5 km run."));
    assert_eq!(fake.requests()[0].method, "PUT");
}

#[tokio::test]
async fn an_empty_2xx_body_reads_as_ok() {
    let fake = FakeTools::start().await;
    fake.script("/ping", Reply::Text(String::new()));
    let runner = HttpTools::new(&tool("ping", &fake.url("/ping"), "")).unwrap();
    let answer = run(&runner, call("ping", "c1", "{}")).await;
    assert_eq!(answer, ToolAnswer::ok(r#"{"ok":true}"#));
}

#[tokio::test]
async fn an_error_status_becomes_an_error_output() {
    let fake = FakeTools::start().await;
    fake.script(
        "/orders",
        Reply::Status(500, "database\n   unavailable".into()),
    );
    let runner = HttpTools::new(&tool("lookup_order", &fake.url("/orders"), "")).unwrap();
    let answer = run(&runner, call("lookup_order", "c1", "{}")).await;
    assert_eq!(answer.outcome, ToolOutcome::Error);
    assert_eq!(
        error_text(&answer),
        "the tool lookup_order answered HTTP 500: database unavailable"
    );

    // A long error body is cut to a short excerpt.
    fake.script("/orders", Reply::Status(503, "x".repeat(100_000)));
    let answer = run(&runner, call("lookup_order", "c2", "{}")).await;
    let text = error_text(&answer);
    assert!(
        text.starts_with("the tool lookup_order answered HTTP 503: xxx"),
        "{text}"
    );
    assert!(text.len() < 400, "{} bytes", text.len());

    // An empty error body: no excerpt.
    fake.script("/orders", Reply::Status(404, String::new()));
    let answer = run(&runner, call("lookup_order", "c3", "{}")).await;
    assert_eq!(
        error_text(&answer),
        "the tool lookup_order answered HTTP 404"
    );
}

#[tokio::test]
async fn a_slow_endpoint_times_out() {
    let fake = FakeTools::start().await;
    fake.script(
        "/slow",
        Reply::Slow(Duration::from_secs(30), Box::new(Reply::Json(json!({})))),
    );
    let runner =
        HttpTools::new(&tool("slow_tool", &fake.url("/slow"), "timeout_ms = 200")).unwrap();
    let answer = run(&runner, call("slow_tool", "c1", "{}")).await;
    assert_eq!(answer.outcome, ToolOutcome::Timeout);
    assert_eq!(
        answer.output,
        json!({"error": "the tool slow_tool did not answer within 200 ms"}).to_string()
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let runner = HttpTools::new(&tool("gone", &format!("http://{addr}/t?key=sekrit"), "")).unwrap();
    let answer = run(&runner, call("gone", "c1", "{}")).await;
    assert_eq!(answer.outcome, ToolOutcome::Error);
    let text = error_text(&answer);
    assert!(
        text.starts_with("the tool gone could not be reached"),
        "{text}"
    );
    // The URL (whose query may hold a key) is not in what the model reads.
    assert!(!text.contains("sekrit"), "{text}");
}

#[tokio::test]
async fn a_closed_connection_is_an_error() {
    let fake = FakeTools::start().await;
    fake.script("/close", Reply::Close);
    let runner = HttpTools::new(&tool("flaky", &fake.url("/close"), "")).unwrap();
    let answer = run(&runner, call("flaky", "c1", "{}")).await;
    assert_eq!(answer.outcome, ToolOutcome::Error);
    let text = error_text(&answer);
    assert!(
        text.starts_with("the request to the tool flaky failed: "),
        "{text}"
    );
    assert_eq!(fake.requests().len(), 1);

    // The fake (and the runner's client) go on serving.
    fake.script("/close", Reply::Json(json!({"ok": 1})));
    let answer = run(&runner, call("flaky", "c2", "{}")).await;
    assert_eq!(answer, ToolAnswer::ok(r#"{"ok":1}"#));
}

#[tokio::test]
async fn an_oversized_answer_is_an_error() {
    let fake = FakeTools::start().await;
    fake.script("/big", Reply::Text("x".repeat(200_000)));
    let runner = HttpTools::new(&tool("big", &fake.url("/big"), "")).unwrap();
    let answer = run(&runner, call("big", "c1", "{}")).await;
    assert_eq!(answer.outcome, ToolOutcome::Error);
    assert_eq!(
        error_text(&answer),
        "the tool big answered more than 65536 bytes"
    );
}

#[tokio::test]
async fn invalid_arguments_never_reach_the_endpoint() {
    let fake = FakeTools::start().await;
    fake.script("/t", Reply::Json(json!({})));
    let runner = HttpTools::new(&tool("t", &fake.url("/t"), "")).unwrap();
    for arguments in [
        r#"{"order_id": "A-1""#,
        "not json",
        "[1, 2]",
        "\"text\"",
        "42",
    ] {
        let answer = run(&runner, call("t", "c1", arguments)).await;
        assert_eq!(answer.outcome, ToolOutcome::Error, "{arguments}");
        let text = error_text(&answer);
        assert!(
            text.starts_with("invalid arguments: "),
            "{arguments}: {text}"
        );
    }
    // Unknown tool names are answered without a request too.
    let answer = run(&runner, call("made_up", "c1", "{}")).await;
    assert_eq!(answer.outcome, ToolOutcome::Error);
    assert!(error_text(&answer).contains("made_up"));
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_concurrently() {
    let fake = FakeTools::start().await;
    fake.script(
        "/slow",
        Reply::Slow(
            Duration::from_millis(800),
            Box::new(Reply::Json(json!({"which": "slow"}))),
        ),
    );
    fake.script("/fast", Reply::Json(json!({"which": "fast"})));
    let mut tools = tool("slow_tool", &fake.url("/slow"), "");
    tools.extend(tool("fast_tool", &fake.url("/fast"), ""));
    let runner = HttpTools::new(&tools).unwrap();

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let slow = runner.run(call("slow_tool", "c_slow", "{}"), &ctx());
    let tx = done_tx.clone();
    tokio::spawn(async move { tx.send(("slow", slow.await)).unwrap() });
    // The slow call is at the endpoint before the fast one starts.
    wait_until("the slow request", || !fake.requests_to("/slow").is_empty()).await;
    let fast = runner.run(call("fast_tool", "c_fast", "{}"), &ctx());
    tokio::spawn(async move { done_tx.send(("fast", fast.await)).unwrap() });

    let mut order = Vec::new();
    for _ in 0..2 {
        let (which, answer) = tokio::time::timeout(BOUND, done_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            answer.outcome,
            ToolOutcome::Ok,
            "{which}: {}",
            answer.output
        );
        assert_eq!(answer.output, json!({ "which": which }).to_string());
        order.push(which);
    }
    assert_eq!(order, ["fast", "slow"]);
}

/// The whole path: the model calls the function after the caller's first
/// turn; the bridge calls the endpoint with the call's identity, gives the
/// model the endpoint's body as the function_call_output, then asks for
/// one response, which the caller hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_round_trip_through_the_server() {
    let tools = FakeTools::start().await;
    let body = json!({"order_id": "A-17", "status": "shipped"});
    tools.script("/orders", Reply::Json(body.clone()));
    let fake = FakeRealtime::start(Script {
        answer_ms: 1500,
        function_call: Some(("lookup_order".into(), r#"{"order_id":"A-17"}"#.into())),
        ..Script::default()
    })
    .await;

    // Built by Server::new from the config, as `callbridge serve` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let toml = format!(
        r#"
        public_url = "http://{addr}"
        [realtime]
        dialect = "ga"
        url = "{}"
        [[agent.tools]]
        name = "lookup_order"
        description = "Look up an order"
        url = "{}"
        headers = {{ X-Api-Key = "${{ORDERS_KEY}}" }}
        [agent.tools.parameters]
        type = "object"
        required = ["order_id"]
        properties = {{ order_id = {{ type = "string" }} }}
        "#,
        fake.url(),
        tools.url("/orders"),
    );
    let config = load(&toml, &env(&[("ORDERS_KEY", "key-e2e")]));
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
        openai_api_key: Some(Secret::new(API_KEY)),
        ..Secrets::default()
    };
    let metrics = Metrics::new();
    let server = Server::new(config, secrets, metrics.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let task = tokio::spawn(server.run(listener, admin, async move {
        let _ = stopped.await;
    }));

    let sid = "CA000000000000000000000000000000e2";
    let params = fake_twilio::voice_params(sid);
    let voice_url = format!("http://{addr}/voice");
    let sig = fake_twilio::sign(AUTH_TOKEN, &voice_url, &params);
    let (status, twiml) = fake_twilio::post_form(addr, "/voice", &params, Some(&sig)).await;
    assert_eq!(status, 200, "{twiml}");
    let (stream_url, token) = fake_twilio::parse_twiml(&twiml).unwrap();
    let sig = fake_twilio::sign(AUTH_TOKEN, &stream_url, &[]);
    let ws = fake_twilio::open_stream(&stream_url, Some(&sig))
        .await
        .unwrap();
    let mut script =
        CallerScript::new(sid, &token, fixture("speech.ulaw"), Duration::from_secs(20));
    script.end_after_first_answer = Some(Duration::from_millis(1800));
    let log = run_caller(ws, script).await;

    // The tool was declared, and called once with the call's identity.
    let events = fake.events();
    assert_eq!(events[0]["type"], "session.update");
    assert_eq!(events[0]["session"]["tools"][0]["name"], "lookup_order");
    let seen = tools.requests_to("/orders");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let r = &seen[0];
    assert_eq!(r.body["name"], "lookup_order");
    assert_eq!(r.body["arguments"], json!({"order_id": "A-17"}));
    assert_eq!(r.body["call"]["call_sid"], sid);
    assert_eq!(r.body["call"]["stream_sid"], fake_twilio::STREAM_SID);
    assert_eq!(r.body["call"]["profile"], "default");
    assert!(r.body["call"]["from"].is_string() && r.body["call"]["to"].is_string());
    assert_eq!(r.header("x-api-key"), Some("key-e2e"));
    let call_id = r.body["call_id"].as_str().unwrap().to_owned();

    // The model got the body as the output, then exactly one response.create.
    let outputs: Vec<(usize, &Value)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e["type"] == "conversation.item.create" && e["item"]["type"] == "function_call_output"
        })
        .collect();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let (at, item) = outputs[0];
    assert_eq!(item["item"]["call_id"], call_id.as_str());
    assert_eq!(item["item"]["output"], body.to_string());
    let creates: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "response.create")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(creates.len(), 1, "response.create at {creates:?}");
    assert!(creates[0] > at);

    // The caller heard the answer that followed.
    assert!(log.heard_ms >= 1000, "heard {} ms", log.heard_ms);
    assert_eq!(log.close_code, Some(1000));
    wait_until("tool call counted", || {
        metrics.tool_calls("lookup_order", "ok") == 1
    })
    .await;
    assert_eq!(metrics.tool_calls("lookup_order", "error"), 0);
    save_client_events("http_tools", Dialect::Ga, &events);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[test]
fn server_new_refuses_tools_with_unexpanded_headers() {
    let mut config = Config {
        public_url: Some("http://127.0.0.1:1".into()),
        ..Config::default()
    };
    config.realtime.url = Some("ws://127.0.0.1:1/v1/realtime?model=x".into());
    let mut t = ToolConfig::new("t", "d", "http://127.0.0.1:1/t");
    t.headers.insert(
        "X-Key".into(),
        callbridge::config::ToolHeader::new("${NEVER_EXPANDED}"),
    );
    config.agent.tools.push(t);
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
        ..Secrets::default()
    };
    let err = match Server::new(config, secrets, Metrics::new()) {
        Ok(_) => panic!("an unexpanded header must stop start-up"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("agent.tools[0].headers.X-Key"), "{err}");
    // An Arc'd runner is what the server holds; it stays usable from tests.
    let _: Arc<dyn ToolRunner> =
        Arc::new(HttpTools::new(&[ToolConfig::new("t", "d", "http://127.0.0.1:1/t")]).unwrap());
}
