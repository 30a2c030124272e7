//! The Twilio REST client (hang-up, transfer, outbound) against the fake
//! Twilio REST server on loopback.

mod support;

use std::time::{Duration, Instant};

use callbridge::config::{Config, Secret, Secrets};
use callbridge::metrics::{Metrics, TwilioOp, TwilioOutcome};
use callbridge::twilio::rest::{Credentials, HangUp, RestError, TwilioRest};
use callbridge::twilio::twiml::{self, DialTarget};
use support::fake_twilio_rest::{FakeTwilioRest, Recorded};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const CALL: &str = "CA00000000000000000000000000000001";
const AUTH_TOKEN: &str = "auth-token-sekrit-0123456789";
const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
const KEY_SECRET: &str = "key-secret-sekrit-9876543210";

fn token() -> Credentials {
    Credentials::AuthToken(Secret::new(AUTH_TOKEN))
}

fn api_key() -> Credentials {
    Credentials::ApiKey {
        sid: KEY_SID.into(),
        secret: Secret::new(KEY_SECRET),
    }
}

/// A fake that accepts both credentials, and a client for it.
async fn setup(credentials: Credentials) -> (FakeTwilioRest, TwilioRest, Metrics) {
    let fake = FakeTwilioRest::start(ACCOUNT, AUTH_TOKEN).await;
    fake.accept_api_key(KEY_SID, KEY_SECRET);
    let metrics = Metrics::new();
    let rest = TwilioRest::new(&fake.base_url(), credentials, metrics.clone())
        .unwrap()
        .with_backoff(Duration::from_millis(20));
    (fake, rest, metrics)
}

fn call_path(call: &str) -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{call}.json")
}

fn only_request(fake: &FakeTwilioRest) -> Recorded {
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    requests.into_iter().next().unwrap()
}

fn assert_no_secret(text: &str) {
    for secret in [AUTH_TOKEN, KEY_SECRET] {
        assert!(!text.contains(secret), "secret in {text:?}");
    }
}

#[tokio::test]
async fn hang_up_sends_status_completed_with_the_auth_token() {
    let (fake, rest, metrics) = setup(token()).await;
    assert_eq!(
        rest.hang_up(ACCOUNT, CALL).await.unwrap(),
        HangUp::Completed
    );
    let r = only_request(&fake);
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, call_path(CALL));
    assert_eq!(r.user.as_deref(), Some(ACCOUNT));
    assert!(r.authorized);
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.params, [("Status".to_owned(), "completed".to_owned())]);
    assert_eq!(fake.call(CALL).unwrap()["status"], "completed");
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Ok),
        1
    );
}

#[tokio::test]
async fn api_key_is_preferred_when_both_are_set() {
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
        twilio_api_key_sid: Some(KEY_SID.into()),
        twilio_api_key_secret: Some(Secret::new(KEY_SECRET)),
        ..Secrets::default()
    };
    let credentials = Credentials::from_secrets(&secrets).unwrap();
    let (fake, rest, _) = setup(credentials).await;
    assert_eq!(
        rest.hang_up(ACCOUNT, CALL).await.unwrap(),
        HangUp::Completed
    );
    let r = only_request(&fake);
    assert_eq!(r.user.as_deref(), Some(KEY_SID));
    assert!(r.authorized);

    // Built from config the same way; without credentials there is no client.
    let mut config = Config::default();
    config.twilio.api_base_url = fake.base_url();
    let rest = TwilioRest::from_config(&config, &secrets, Metrics::new())
        .unwrap()
        .unwrap();
    rest.hang_up(ACCOUNT, CALL).await.unwrap();
    assert_eq!(fake.requests()[1].user.as_deref(), Some(KEY_SID));
    assert!(
        TwilioRest::from_config(&config, &Secrets::default(), Metrics::new())
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn wrong_credentials_are_an_error_without_retry_or_secret() {
    let (fake, rest, metrics) = setup(Credentials::AuthToken(Secret::new("wrong-sekrit"))).await;
    let err = rest.hang_up(ACCOUNT, CALL).await.unwrap_err();
    assert!(
        matches!(
            err,
            RestError::Api {
                status: 401,
                code: Some(20003),
                ..
            }
        ),
        "{err:?}"
    );
    let text = format!("{err} {err:?} {rest:?}");
    assert!(!text.contains("wrong-sekrit"), "{text}");
    assert!(!only_request(&fake).authorized);
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Error),
        1
    );
}

#[tokio::test]
async fn hang_up_of_an_ended_call_is_already_ended() {
    let (fake, rest, metrics) = setup(token()).await;
    fake.end_call(CALL);
    assert_eq!(
        rest.hang_up(ACCOUNT, CALL).await.unwrap(),
        HangUp::AlreadyEnded
    );
    assert_eq!(fake.requests().len(), 1, "a 404 is not retried");
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::NotFound),
        1
    );
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Ok),
        0
    );
}

#[tokio::test]
async fn redirect_sends_escaped_dial_twiml() {
    let (fake, rest, metrics) = setup(token()).await;
    let hostile = "sip:a<b>&c\"d@example.com";
    let target = DialTarget::parse(hostile).unwrap();
    let xml = twiml::dial(&target);
    rest.redirect(ACCOUNT, CALL, &xml).await.unwrap();
    let r = only_request(&fake);
    assert_eq!(r.path, call_path(CALL));
    let sent = r.param("Twiml").unwrap();
    assert_eq!(sent, xml);
    assert!(
        sent.contains(
            "<Response><Dial><Sip>sip:a&lt;b&gt;&amp;c&quot;d@example.com</Sip></Dial></Response>"
        ),
        "{sent}"
    );
    assert_eq!(sent.matches("<Dial>").count(), 1);
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Transfer, TwilioOutcome::Ok),
        1
    );

    // A phone number goes in <Number>.
    let xml = twiml::dial(&DialTarget::parse("+14155550123").unwrap());
    rest.redirect(ACCOUNT, CALL, &xml).await.unwrap();
    assert!(fake.requests()[1]
        .param("Twiml")
        .unwrap()
        .contains("<Dial><Number>+14155550123</Number></Dial>"));
}

#[tokio::test]
async fn redirect_of_an_ended_call_is_a_not_found_error() {
    let (fake, rest, metrics) = setup(token()).await;
    fake.end_call(CALL);
    let xml = twiml::dial(&DialTarget::parse("+14155550123").unwrap());
    let err = rest.redirect(ACCOUNT, CALL, &xml).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.twilio_code(), Some(20404));
    assert!(err.to_string().contains("20404"), "{err}");
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Transfer, TwilioOutcome::NotFound),
        1
    );
}

#[tokio::test]
async fn create_call_sends_every_param_and_returns_the_sid() {
    let (fake, rest, metrics) = setup(token()).await;
    let connect = twiml::connect_stream(
        "wss://bridge.example.com/media",
        "https://bridge.example.com/stream-status",
        "v1.tok&en",
        None,
    );
    let sid = rest
        .create_call(
            ACCOUNT,
            "+14155550123",
            "+15005550006",
            &connect,
            "https://bridge.example.com/call-status",
        )
        .await
        .unwrap();
    assert!(sid.starts_with("CA") && sid.len() == 34, "{sid}");
    let r = only_request(&fake);
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"));
    assert_eq!(r.user.as_deref(), Some(ACCOUNT));
    assert_eq!(r.param("To"), Some("+14155550123"));
    assert_eq!(r.param("From"), Some("+15005550006"));
    assert_eq!(r.param("Twiml"), Some(connect.as_str()));
    assert_eq!(
        r.param("StatusCallback"),
        Some("https://bridge.example.com/call-status")
    );
    assert_eq!(
        r.params_named("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    assert_eq!(fake.call(&sid).unwrap()["status"], "queued");
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::CreateCall, TwilioOutcome::Ok),
        1
    );
}

#[tokio::test]
async fn create_call_with_the_api_key_uses_the_outbound_account() {
    let (fake, rest, _) = setup(api_key()).await;
    let connect = twiml::say_and_hangup("hello");
    rest.create_call(
        ACCOUNT,
        "+14155550123",
        "+15005550006",
        &connect,
        "https://h/call-status",
    )
    .await
    .unwrap();
    let r = only_request(&fake);
    assert_eq!(r.user.as_deref(), Some(KEY_SID));
    assert_eq!(r.path, format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"));
}

#[tokio::test]
async fn a_500_is_retried_then_succeeds() {
    let (fake, rest, metrics) = setup(token()).await;
    fake.fail_next(1, 500);
    assert_eq!(
        rest.hang_up(ACCOUNT, CALL).await.unwrap(),
        HangUp::Completed
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(requests
        .iter()
        .all(|r| r.param("Status") == Some("completed")));
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Error),
        1
    );
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Ok),
        1
    );
}

#[tokio::test]
async fn retries_stop_after_two() {
    let (fake, rest, metrics) = setup(token()).await;
    fake.fail_next(5, 503);
    let xml = twiml::dial(&DialTarget::parse("+14155550123").unwrap());
    let err = rest.redirect(ACCOUNT, CALL, &xml).await.unwrap_err();
    assert!(
        matches!(
            err,
            RestError::Api {
                status: 503,
                code: Some(20500),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Internal Server Error"), "{err}");
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Transfer, TwilioOutcome::Error),
        3
    );
}

#[tokio::test]
async fn a_429_is_retried_even_for_create_call() {
    let (fake, rest, _) = setup(token()).await;
    fake.fail_next(1, 429);
    let connect = twiml::say_and_hangup("hello");
    rest.create_call(
        ACCOUNT,
        "+14155550123",
        "+15005550006",
        &connect,
        "https://h/s",
    )
    .await
    .unwrap();
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let (fake, rest, metrics) = setup(token()).await;
    fake.fail_next(1, 400);
    let err = rest.hang_up(ACCOUNT, CALL).await.unwrap_err();
    assert!(matches!(err, RestError::Api { status: 400, .. }), "{err:?}");
    assert_eq!(err.twilio_code(), Some(21201));
    assert_eq!(
        err.to_string(),
        "Twilio answered HTTP 400 (error 21201): No 'To' number is specified"
    );
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Error),
        1
    );
}

#[tokio::test]
async fn create_call_never_retries_what_may_have_placed_a_call() {
    let (fake, rest, metrics) = setup(token()).await;
    fake.fail_next(1, 500);
    let connect = twiml::say_and_hangup("hello");
    let err = rest
        .create_call(
            ACCOUNT,
            "+14155550123",
            "+15005550006",
            &connect,
            "https://h/s",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RestError::Api { status: 500, .. }), "{err:?}");
    assert_eq!(fake.requests().len(), 1, "a 500 may follow a placed call");
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::CreateCall, TwilioOutcome::Error),
        1
    );

    fake.hang(true);
    let rest = rest.with_timeout(Duration::from_millis(150));
    let err = rest
        .create_call(
            ACCOUNT,
            "+14155550123",
            "+15005550006",
            &connect,
            "https://h/s",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RestError::Timeout(_)), "{err:?}");
    assert_eq!(
        fake.requests().len(),
        2,
        "a timeout may follow a placed call"
    );
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::CreateCall, TwilioOutcome::Timeout),
        1
    );
}

#[tokio::test]
async fn a_hanging_server_times_out_and_is_retried() {
    let (fake, rest, metrics) = setup(token()).await;
    fake.hang(true);
    let rest = rest.with_timeout(Duration::from_millis(150));
    let started = Instant::now();
    let err = rest.hang_up(ACCOUNT, CALL).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RestError::Timeout(_)), "{err:?}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert_eq!(fake.requests().len(), 3);
    // Three attempts of 150 ms and two short backoffs: bounded.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Timeout),
        3
    );
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let metrics = Metrics::new();
    let rest = TwilioRest::new(&format!("http://{addr}"), token(), metrics.clone())
        .unwrap()
        .with_backoff(Duration::from_millis(10));
    let err = rest.hang_up(ACCOUNT, CALL).await.unwrap_err();
    assert!(matches!(err, RestError::Connect(_)), "{err:?}");
    assert_no_secret(&format!("{err} {err:?}"));
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::Hangup, TwilioOutcome::Error),
        3
    );
    // Nothing reached Twilio, so even a create may be retried.
    let connect = twiml::say_and_hangup("hello");
    let err = rest
        .create_call(
            ACCOUNT,
            "+14155550123",
            "+15005550006",
            &connect,
            "https://h/s",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RestError::Connect(_)), "{err:?}");
    assert_eq!(
        metrics.twilio_api_requests(TwilioOp::CreateCall, TwilioOutcome::Error),
        3
    );
}

#[tokio::test]
async fn bad_sids_and_params_are_refused_without_a_request() {
    let (fake, rest, metrics) = setup(token()).await;
    let xml = twiml::dial(&DialTarget::parse("+14155550123").unwrap());
    let bad_calls = [
        "",
        "CA0000",
        "AC00000000000000000000000000000001",
        "CA0000000000000000000000000000000g",
        "CA../../../Accounts/AC00000000000000",
        "CA00000000000000000000000000000001/x",
    ];
    for call in bad_calls {
        let err = rest.hang_up(ACCOUNT, call).await.unwrap_err();
        assert!(
            matches!(err, RestError::BadSid { prefix: "CA", .. }),
            "{call}: {err:?}"
        );
        let err = rest.redirect(ACCOUNT, call, &xml).await.unwrap_err();
        assert!(matches!(err, RestError::BadSid { .. }), "{call}: {err:?}");
    }
    for account in [
        "",
        KEY_SID,
        "AC0123",
        "AC0123456789abcdef0123456789abcdef?x=1",
    ] {
        let err = rest.hang_up(account, CALL).await.unwrap_err();
        assert!(
            matches!(err, RestError::BadSid { prefix: "AC", .. }),
            "{account}: {err:?}"
        );
        let err = rest
            .create_call(account, "+14155550123", "+15005550006", &xml, "https://h/s")
            .await
            .unwrap_err();
        assert!(
            matches!(err, RestError::BadSid { .. }),
            "{account}: {err:?}"
        );
    }
    let long = "x".repeat(5000);
    for (to, from, twiml, callback) in [
        ("", "+15005550006", xml.as_str(), "https://h/s"),
        (
            "+14155550123",
            "+1500\n5550006",
            xml.as_str(),
            "https://h/s",
        ),
        ("+14155550123", "+15005550006", "", "https://h/s"),
        ("+14155550123", "+15005550006", long.as_str(), "https://h/s"),
        ("+14155550123", "+15005550006", xml.as_str(), "not a url"),
        ("+14155550123", "+15005550006", xml.as_str(), "ftp://h/s"),
    ] {
        let err = rest
            .create_call(ACCOUNT, to, from, twiml, callback)
            .await
            .unwrap_err();
        assert!(matches!(err, RestError::BadParam { .. }), "{err:?}");
    }
    let err = rest.redirect(ACCOUNT, CALL, &long).await.unwrap_err();
    assert!(err.to_string().contains("4000"), "{err}");
    assert!(fake.requests().is_empty(), "{:#?}", fake.requests());
    for op in TwilioOp::ALL {
        for outcome in TwilioOutcome::ALL {
            assert_eq!(metrics.twilio_api_requests(op, outcome), 0);
        }
    }
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    for credentials in [token(), api_key()] {
        let (fake, rest, _) = setup(credentials).await;
        let mut errors = Vec::new();
        fake.fail_next(1, 400);
        errors.push(rest.hang_up(ACCOUNT, CALL).await.unwrap_err());
        fake.fail_next(3, 500);
        errors.push(rest.hang_up(ACCOUNT, CALL).await.unwrap_err());
        fake.end_call(CALL);
        errors.push(
            rest.redirect(ACCOUNT, CALL, "<Response/>")
                .await
                .unwrap_err(),
        );
        errors.push(rest.hang_up(ACCOUNT, "CA1").await.unwrap_err());
        fake.hang(true);
        let quick = rest.clone().with_timeout(Duration::from_millis(50));
        errors.push(quick.hang_up(ACCOUNT, CALL).await.unwrap_err());
        for err in &errors {
            assert_no_secret(&format!("{err} {err:?}"));
        }
        assert_no_secret(&format!("{rest:?}"));
    }
    let wrong = FakeTwilioRest::start(ACCOUNT, "other-token").await;
    let rest = TwilioRest::new(&wrong.base_url(), api_key(), Metrics::new()).unwrap();
    let err = rest.hang_up(ACCOUNT, CALL).await.unwrap_err();
    assert_eq!(err.twilio_code(), Some(20003));
    assert_no_secret(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn plain_http_is_for_loopback_only() {
    let err = TwilioRest::new("http://api.twilio.com", token(), Metrics::new()).unwrap_err();
    assert!(matches!(err, RestError::PlainText(_)), "{err:?}");
    assert_no_secret(&err.to_string());
    assert!(TwilioRest::new("https://api.twilio.com", token(), Metrics::new()).is_ok());
    assert!(TwilioRest::new("http://localhost:1", token(), Metrics::new()).is_ok());
}
