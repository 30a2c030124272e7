//! The simulated Twilio over TLS, as against a deployment: the real bridge
//! (`callbridge::server::Server` on 127.0.0.1:0, the echo peer as its model)
//! behind a local TLS terminator whose certificate, for `bridge.test`, is
//! signed by a private CA. The caller dials `https://bridge.test:PORT` with
//! `--resolve bridge.test:127.0.0.1:PORT` and the CA as `--ca-file`: the
//! webhook goes over TLS, the TwiML names `wss://bridge.test:PORT/media`, and
//! both legs are signed over those public URLs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use callbridge::config::{Config, Dialect, Secret, Secrets};
use callbridge::metrics::Metrics;
use callbridge::server::Server;
use callbridge_sim::echo::{self, EchoMode, EchoOptions};
use callbridge_sim::{CallOptions, LoadOptions, SimError, Transport};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

const AUTH_TOKEN: &str = "tls-test-auth-token-0123456789";
const HOST: &str = "bridge.test";

/// A private CA and a server certificate for `names` signed by it.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn private_pki(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "callbridge test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    Pki {
        ca_pem: pem(ca.der()),
        chain: vec![leaf.der().clone()],
        key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
    }
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A TLS terminator on 127.0.0.1:0 in front of `backend` (plain TCP), as a
/// load balancer or ingress would be.
async fn tls_terminator(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    addr
}

/// The echo peer, the bridge (public URL `https://bridge.test:PORT`) and the
/// TLS terminator in front of it; returns the terminator's address.
async fn bridge_behind_tls(pki: &Pki, mode: EchoMode) -> SocketAddr {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let options = EchoOptions {
        mode,
        ..EchoOptions::default()
    };
    tokio::spawn(echo::serve(peer, options, std::future::pending()));

    // The terminator's port is the public one, so bind the bridge first
    // and point the terminator at it; the bridge learns its public URL
    // before it serves.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tls_terminator(pki, listener.local_addr().unwrap()).await;
    let mut config = Config {
        public_url: Some(format!("https://{HOST}:{}", tls.port())),
        ..Config::default()
    };
    config.realtime.url = Some(format!("ws://{peer_addr}/v1/realtime"));
    config.realtime.dialect = Dialect::Ga;
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
        ..Secrets::default()
    };
    let server = Server::new(config, secrets, Metrics::new()).unwrap();
    tokio::spawn(async move {
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        server
            .run(listener, admin, std::future::pending())
            .await
            .unwrap();
    });
    tls
}

fn ca_file(pki: &Pki) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).unwrap();
    (dir, path)
}

fn bridge_url(tls: SocketAddr) -> Url {
    Url::parse(&format!("https://{HOST}:{}", tls.port())).unwrap()
}

fn resolve(tls: SocketAddr) -> Vec<String> {
    vec![format!("{HOST}:{tls}")]
}

fn speech() -> Vec<u8> {
    callbridge_sim::demo::SPEECH.to_vec()
}

/// The whole call over TLS: signed webhook over https, TwiML naming a
/// wss:// stream, signed upgrade; the echo peer's answer is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_https_and_wss_with_a_private_ca_and_resolve() {
    let pki = private_pki(&[HOST]);
    let tls = bridge_behind_tls(&pki, EchoMode::Turn).await;
    let (_dir, ca) = ca_file(&pki);

    let mut opts = CallOptions::new(bridge_url(tls), speech());
    opts.transport = Transport::new(Some(&ca), &resolve(tls)).unwrap();
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.trailing_silence = Duration::from_millis(1500);
    opts.max_duration = Duration::from_secs(30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = callbridge_sim::place_call(opts, Some(tx)).await.unwrap();

    assert!(report.errors.is_empty(), "{report}");
    assert!(report.turns >= 1, "{report}");
    assert!(report.bytes_heard >= 8 * 1000, "{report}");
    assert!(report.marks_echoed >= 1, "{report}");
    assert_eq!(report.close_code, Some(1000), "{report}");
    match rx.recv().await {
        Some(callbridge_sim::Progress::Streaming { stream_url, .. }) => assert_eq!(
            stream_url,
            format!("wss://{HOST}:{}/media", tls.port()),
            "the stream goes to the public wss:// URL"
        ),
        other => panic!("expected Streaming first, got {other:?}"),
    }
}

/// The load generator takes the same transport: a few loopback calls over
/// TLS all connect, and their frames come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_over_tls() {
    let pki = private_pki(&[HOST]);
    let tls = bridge_behind_tls(&pki, EchoMode::Loopback).await;
    let (_dir, ca) = ca_file(&pki);

    let mut opts = LoadOptions::new(bridge_url(tls), 3, Duration::from_secs(1));
    opts.ramp = Duration::from_millis(200);
    opts.transport = Transport::new(Some(&ca), &resolve(tls)).unwrap();
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.bridge_pid = Some(std::process::id());
    let report = callbridge_sim::run(opts).await.unwrap();
    assert_eq!(report.calls_connected, 3, "{report}");
    assert_eq!(report.calls_failed, 0, "{report}");
    assert!(report.frames_received > 0, "{report}");
}

/// Without the CA the web roots do not vouch for the certificate: the call
/// fails before anything is sent, saying so and what to do.
#[tokio::test]
async fn without_the_ca_the_certificate_is_not_trusted() {
    let pki = private_pki(&[HOST]);
    let tls = bridge_behind_tls(&pki, EchoMode::Turn).await;

    let mut opts = CallOptions::new(bridge_url(tls), speech());
    opts.transport = Transport::new(None, &resolve(tls)).unwrap();
    opts.auth_token = Some(AUTH_TOKEN.into());
    let err = callbridge_sim::place_call(opts, None).await.unwrap_err();
    assert!(matches!(err, SimError::Untrusted { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("certificate not trusted: "), "{text}");
    assert!(text.contains(HOST), "{text}");
    assert!(text.ends_with("(use --ca-file for a private CA)"), "{text}");

    // A CA that did not sign it does not help, and the message says so.
    let other = private_pki(&[HOST]);
    let (_dir, wrong_ca) = ca_file(&other);
    let mut opts = CallOptions::new(bridge_url(tls), speech());
    opts.transport = Transport::new(Some(&wrong_ca), &resolve(tls)).unwrap();
    let err = callbridge_sim::place_call(opts, None).await.unwrap_err();
    assert!(matches!(err, SimError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("--ca-file CA"), "{err}");
}

/// A certificate for another name is refused even from a trusted CA:
/// `--resolve` changes where to connect, never which name is checked.
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = private_pki(&["elsewhere.test"]);
    let tls = bridge_behind_tls(&pki, EchoMode::Turn).await;
    let (_dir, ca) = ca_file(&pki);
    let mut opts = CallOptions::new(bridge_url(tls), speech());
    opts.transport = Transport::new(Some(&ca), &resolve(tls)).unwrap();
    let err = callbridge_sim::place_call(opts, None).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SimError::Unreachable { .. }), "{err:?}");
    assert!(text.contains("not valid for name"), "{text}");
    assert!(text.contains("by --resolve"), "{text}");
}

/// Plain http:// still works with a transport that has a CA and a resolve
/// entry for another host (nothing TLS leaks into plain calls), and a
/// resolve entry for a plain URL's host redirects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_unchanged_and_resolve_applies_to_it() {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    tokio::spawn(echo::serve(
        peer,
        EchoOptions::default(),
        std::future::pending(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config {
        public_url: Some(format!("http://plain.test:{}", addr.port())),
        ..Config::default()
    };
    config.realtime.url = Some(format!("ws://{peer_addr}/v1/realtime"));
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
        ..Secrets::default()
    };
    let server = Server::new(config, secrets, Metrics::new()).unwrap();
    tokio::spawn(async move {
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        server
            .run(listener, admin, std::future::pending())
            .await
            .unwrap();
    });

    let mut opts = CallOptions::new(
        Url::parse(&format!("http://plain.test:{}", addr.port())).unwrap(),
        speech(),
    );
    opts.transport = Transport::new(None, &[format!("plain.test:{addr}")]).unwrap();
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.trailing_silence = Duration::from_millis(1500);
    opts.max_duration = Duration::from_secs(30);
    let report = callbridge_sim::place_call(opts, None).await.unwrap();
    assert!(report.errors.is_empty(), "{report}");
    assert!(report.turns >= 1, "{report}");
}
