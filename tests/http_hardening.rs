//! The public port against strangers: half-sent requests, idle and
//! keep-alive connections, slow and oversized bodies, more connections than
//! the cap, upgraded streams that never start, and a second stream for a
//! call already streaming. Each test runs the real server on 127.0.0.1:0
//! and would fail against a server without the limit it checks.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use callbridge::metrics::Outcome;
use support::fake_realtime::{FakeRealtime, Script};
use support::fake_twilio::{self, run_caller, CallerScript};
use support::{fixture, wait_until, Bridge, AUTH_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the server to close a connection: far above
/// the timeouts configured here, so it only fails when nothing closes it.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Reads until the server closes `tcp`; what it sent before closing, or
/// None if it kept the connection open for [`CLOSE_WITHIN`].
async fn read_until_closed(tcp: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(CLOSE_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// Connects and sends `send`. A write the server refuses (a connection it
/// closed at once) is not an error here: what it answers is read after.
async fn connect(addr: SocketAddr, send: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    if !send.is_empty() {
        let _ = tcp.write_all(send.as_bytes()).await;
    }
    tcp
}

fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_idle_connections_are_closed_by_the_server() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| c.http.header_read_timeout_ms = 300).await;
    let head = format!("POST /voice HTTP/1.1\r\nHost: {}\r\n", bridge.addr);
    let mut half_sent = Vec::new();
    let mut silent = Vec::new();
    for _ in 0..20 {
        half_sent.push(connect(bridge.addr, &head).await);
        silent.push(connect(bridge.addr, "").await);
    }
    // A whole request, answered, then the connection idles in keep-alive.
    let mut keep_alive = connect(
        bridge.addr,
        &format!("GET /nope HTTP/1.1\r\nHost: {}\r\n\r\n", bridge.addr),
    )
    .await;
    for tcp in half_sent.iter_mut().chain(silent.iter_mut()) {
        assert!(
            read_until_closed(tcp).await.is_some(),
            "a connection without a whole request head must be closed"
        );
    }
    let answered = read_until_closed(&mut keep_alive)
        .await
        .expect("an idle keep-alive connection must be closed");
    assert_eq!(status_of(&answered), Some(404), "{answered}");
    // The port still serves Twilio.
    let sid = format!("CA{:032x}", 1);
    let (stream_url, _token) = bridge.answer(&sid).await;
    assert!(stream_url.ends_with("/media"), "{stream_url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_bodies_are_refused_and_counted() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.http.body_timeout_ms = 300;
        c.http.max_body_bytes = 2048;
    })
    .await;
    for path in ["/voice", "/stream-status"] {
        // Promises 200 bytes, sends 10, then waits.
        let mut slow = connect(
            bridge.addr,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nCallSid=CA",
                bridge.addr
            ),
        )
        .await;
        let answer = read_until_closed(&mut slow)
            .await
            .expect("a stalled body must end the request");
        assert_eq!(status_of(&answer), Some(408), "{path}: {answer}");

        let big = "a".repeat(5000);
        let (status, _) =
            fake_twilio::post_form(bridge.addr, path, &[("CallSid", big.as_str())], None).await;
        assert_eq!(status, 413, "{path}: a body over max_body_bytes");
    }
    assert_eq!(bridge.metrics.errors("body_timeout"), 2);
    assert_eq!(bridge.metrics.errors("body_too_large"), 2);
    // Normal webhooks still pass.
    let sid = format!("CA{:032x}", 2);
    bridge.answer(&sid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once_and_the_port_recovers() {
    let fake = FakeRealtime::start(Script::default()).await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.http.max_connections = 8;
        // Long enough that only the cap can close the extra connection.
        c.http.header_read_timeout_ms = 60_000;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect(bridge.addr, "").await);
    }
    let mut extra = connect(bridge.addr, "").await;
    assert!(
        read_until_closed(&mut extra).await.is_some(),
        "the ninth connection must be closed"
    );
    assert!(bridge.metrics.errors("connection_cap") >= 1);
    // The admin port is apart: it answers while the public one is full.
    assert_eq!(fake_twilio::get(bridge.admin, "/healthz").await.0, 200);

    drop(held);
    let sid = format!("CA{:032x}", 3);
    let params = fake_twilio::voice_params(&sid);
    let sig = fake_twilio::sign(AUTH_TOKEN, &format!("{}/voice", bridge.public_url), &params);
    // The held connections' slots come back once the server sees them close.
    // Until then a new connection is closed at once (a reset, when the
    // request was already on its way): try again.
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let request = format!(
        "POST /voice HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nX-Twilio-Signature: {sig}\r\nConnection: close\r\n\r\n{form}",
        bridge.addr,
        form.len()
    );
    let mut answered = None;
    for _ in 0..100 {
        let mut tcp = connect(bridge.addr, &request).await;
        if let Some(response) = read_until_closed(&mut tcp).await {
            if status_of(&response) == Some(200) {
                answered = Some(response);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = answered.expect("the port serves again once connections close");
    assert!(body.contains("<Stream"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_waiting_for_start_have_their_own_budget_and_hold_no_call_slot() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 500,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |c| {
        c.max_calls = 2;
        c.http.max_pending_streams = 2;
    })
    .await;
    let url = format!("ws://{}/media", bridge.addr);
    let sig = fake_twilio::sign(AUTH_TOKEN, &url, &[]);
    // Upgraded, never started.
    let _idle_a = fake_twilio::open_stream(&url, Some(&sig)).await.unwrap();
    assert_eq!(bridge.metrics.calls_active.get(), 0, "no slot before start");

    let sid = format!("CA{:032x}", 4);
    let (ws, token) = bridge.connect(&sid).await;
    let mut script = CallerScript::new(
        &sid,
        &token,
        fixture("speech.ulaw"),
        Duration::from_secs(12),
    );
    script.end_after_first_answer = Some(Duration::from_millis(300));
    let live = tokio::spawn(run_caller(ws, script));
    wait_until("the real call admitted", || {
        bridge.metrics.calls_active.get() == 1
    })
    .await;

    let _idle_b = fake_twilio::open_stream(&url, Some(&sig)).await.unwrap();
    // Two streams wait for `start`: the budget is spent although a call
    // slot is free.
    assert_eq!(
        fake_twilio::open_stream(&url, Some(&sig)).await.err(),
        Some(503)
    );
    assert_eq!(bridge.metrics.errors("pending_streams_full"), 1);
    assert_eq!(bridge.metrics.calls_active.get(), 1);

    let log = live.await.unwrap();
    assert_eq!(log.close_code, Some(1000), "the real call ended normally");
    assert!(log.heard_ms > 0, "the real call heard its answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_for_a_call_already_streaming_is_refused_with_1008() {
    let fake = FakeRealtime::start(Script {
        answer_ms: 500,
        ..Script::default()
    })
    .await;
    let bridge = Bridge::start(&fake.url(), |_| {}).await;
    let sid = format!("CA{:032x}", 5);
    let (ws, token) = bridge.connect(&sid).await;
    let first = tokio::spawn(run_caller(
        ws,
        CallerScript::new(&sid, &token, fixture("speech.ulaw"), Duration::from_secs(3)),
    ));
    wait_until("first stream admitted", || {
        bridge.metrics.calls_active.get() == 1
    })
    .await;

    // The same token and CallSid again, within the token's TTL.
    let url = format!("ws://{}/media", bridge.addr);
    let sig = fake_twilio::sign(AUTH_TOKEN, &url, &[]);
    let again = fake_twilio::open_stream(&url, Some(&sig)).await.unwrap();
    let second = run_caller(
        again,
        CallerScript::new(&sid, &token, Vec::new(), Duration::from_secs(2)),
    )
    .await;
    assert_eq!(second.close_code, Some(1008));
    assert_eq!(bridge.metrics.errors("duplicate_stream"), 1);
    assert_eq!(bridge.metrics.calls_total(Outcome::Unauthorized), 1);

    let log = first.await.unwrap();
    assert_eq!(log.close_code, Some(1000), "the first stream is untouched");
    assert_eq!(
        fake.record.lock().unwrap().sessions,
        1,
        "one model session for the call"
    );

    // Once the first stream has ended, the CallSid is free again (a token
    // still within its TTL may open a new stream).
    wait_until("first call ended", || {
        bridge.metrics.calls_active.get() == 0
    })
    .await;
    let third = fake_twilio::open_stream(&url, Some(&sig)).await.unwrap();
    let log = run_caller(
        third,
        CallerScript::new(&sid, &token, Vec::new(), Duration::from_millis(500)),
    )
    .await;
    assert_ne!(
        log.close_code,
        Some(1008),
        "a finished call frees its CallSid"
    );
}
