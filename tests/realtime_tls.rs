//! The model's socket over real TLS (`wss://`): a local rustls server with a
//! self-signed certificate stands in for OpenAI, which tests cannot reach.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callbridge::call::{WsIn, WsOut};
use callbridge::config::{Dialect, Secret};
use callbridge::upstream::client::{ConnectError, ModelEndpoint};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use url::Url;

type Headers = Arc<Mutex<Vec<(String, String)>>>;

/// A TLS WebSocket server for `localhost` that records the upgrade's
/// headers, greets with `session.created` and echoes one message.
async fn tls_peer() -> (u16, CertificateDer<'static>, Headers) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let headers: Headers = Arc::default();
    let seen = headers.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                #[allow(clippy::result_large_err)]
                let record = move |req: &Request, resp: Response| {
                    let mut h = seen.lock().unwrap();
                    for (k, v) in req.headers() {
                        h.push((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()));
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, record).await else {
                    return;
                };
                let _ = ws
                    .send(Message::Text(r#"{"type":"session.created"}"#.into()))
                    .await;
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    let _ = ws.send(Message::Text(t)).await;
                }
                let _ = ws.close(None).await;
            });
        }
    });
    (port, cert, headers)
}

fn url(port: u16) -> Url {
    Url::parse(&format!(
        "wss://localhost:{port}/v1/realtime?model=gpt-realtime"
    ))
    .unwrap()
}

#[tokio::test]
async fn wss_carries_events_both_ways_with_the_dialect_headers() {
    let (port, cert, headers) = tls_peer().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let endpoint = ModelEndpoint::with_roots(
        url(port),
        Dialect::Beta,
        Some(Secret::new("sk-tls-test")),
        Duration::from_secs(5),
        roots,
    )
    .unwrap();
    let (mut tx, mut rx) = endpoint.connect().await.unwrap();
    let first = rx.next().await.unwrap();
    assert_eq!(first, WsIn::Text(r#"{"type":"session.created"}"#.into()));
    tx.send(WsOut::Text(
        r#"{"type":"session.update","session":{}}"#.into(),
    ))
    .await
    .unwrap();
    let echoed = rx.next().await.unwrap();
    assert_eq!(
        echoed,
        WsIn::Text(r#"{"type":"session.update","session":{}}"#.into())
    );

    let headers = headers.lock().unwrap().clone();
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("authorization").as_deref(), Some("Bearer sk-tls-test"));
    assert_eq!(get("openai-beta").as_deref(), Some("realtime=v1"));
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let (port, _cert, headers) = tls_peer().await;
    // The public web PKI does not trust a self-signed certificate.
    let endpoint =
        ModelEndpoint::new(url(port), Dialect::Ga, None, Duration::from_secs(5)).unwrap();
    match endpoint.connect().await {
        Err(ConnectError::Io(msg)) => assert!(msg.to_lowercase().contains("certificate"), "{msg}"),
        Err(other) => panic!("expected a TLS certificate error, got {other}"),
        Ok(_) => panic!("connected to an untrusted server"),
    }
    assert!(
        headers.lock().unwrap().is_empty(),
        "no request may reach an untrusted server"
    );
}
