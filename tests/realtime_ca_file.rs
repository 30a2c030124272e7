//! `realtime.ca_file`: the bridge trusts a private CA for its model's
//! `wss://` endpoint, besides the web roots. The model here is the echo peer
//! behind a local TLS terminator whose `localhost` certificate is signed by
//! a CA made for the test.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use callbridge::config::{Config, ConfigError, Dialect, Secret, Secrets};
use callbridge::metrics::Metrics;
use callbridge::server::{ServeError, Server};
use callbridge::upstream::client::{roots_with_ca_file, web_roots, ConnectError, ModelEndpoint};
use callbridge_sim::echo::{self, EchoOptions};
use callbridge_sim::CallOptions;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{Bridge, AUTH_TOKEN};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A private CA (as PEM) and a `localhost` certificate signed by it.
fn private_pki() -> (String, CertificateDer<'static>, PrivatePkcs8KeyDer<'static>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "callbridge model CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (
        pem("CERTIFICATE", ca.der()),
        leaf.der().clone(),
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
}

/// The echo peer behind TLS on 127.0.0.1:0: its `wss://localhost` address.
async fn tls_echo_peer(cert: CertificateDer<'static>, key: PrivatePkcs8KeyDer<'static>) -> Url {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend: SocketAddr = peer.local_addr().unwrap();
    tokio::spawn(echo::serve(
        peer,
        EchoOptions::default(),
        std::future::pending(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(key))
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
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
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    Url::parse(&format!("wss://localhost:{port}/v1/realtime")).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn key_error(result: Result<Config, ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::Key { key, reason }) => (key, reason),
        other => panic!("expected a key error, got {other:?}"),
    }
}

#[test]
fn a_bad_ca_file_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let (key, reason) = key_error(Config::load(
        None,
        &env(&[("CALLBRIDGE_REALTIME__CA_FILE", missing.to_str().unwrap())]),
    ));
    assert_eq!(key, "realtime.ca_file");
    assert!(
        reason.contains("missing.pem") && reason.contains("cannot read"),
        "{reason}"
    );

    let not_pem = write(dir.path(), "key.txt", "not a certificate\n");
    let (key, reason) = key_error(Config::load(
        None,
        &env(&[("CALLBRIDGE_REALTIME__CA_FILE", not_pem.to_str().unwrap())]),
    ));
    assert_eq!(key, "realtime.ca_file");
    assert!(reason.contains("no PEM certificate"), "{reason}");

    let junk = write(
        dir.path(),
        "junk.pem",
        &pem("CERTIFICATE", b"this is not DER"),
    );
    let (key, reason) = key_error(Config::load(
        None,
        &env(&[("CALLBRIDGE_REALTIME__CA_FILE", junk.to_str().unwrap())]),
    ));
    assert_eq!(key, "realtime.ca_file");
    assert!(reason.contains("not usable as a CA"), "{reason}");

    // From the TOML file too; and a good file loads.
    let (ca_pem, _, _) = private_pki();
    let good = write(dir.path(), "ca.pem", &ca_pem);
    let toml = write(
        dir.path(),
        "cb.toml",
        &format!("[realtime]\nca_file = {:?}\n", good.to_str().unwrap()),
    );
    let config = Config::load(Some(&toml), &env(&[])).unwrap();
    assert_eq!(config.realtime.ca_file.as_deref(), Some(good.as_path()));
    assert_eq!(Config::default().realtime.ca_file, None);

    // A config built in code is checked when the server is built.
    let mut config = Config {
        public_url: Some("http://127.0.0.1:8080".into()),
        ..Config::default()
    };
    config.realtime.url = Some("ws://127.0.0.1:9/v1/realtime".into());
    config.realtime.ca_file = Some(missing);
    let secrets = Secrets {
        twilio_auth_token: Some(Secret::new(AUTH_TOKEN)),
        ..Secrets::default()
    };
    match Server::new(config, secrets, Metrics::new()) {
        Err(ServeError::Config(ConfigError::Key { key, .. })) => {
            assert_eq!(key, "realtime.ca_file")
        }
        Err(other) => panic!("expected a realtime.ca_file error, got {other}"),
        Ok(_) => panic!("a missing CA file must stop start-up"),
    }
}

/// A whole call through a bridge whose model is `wss://` with a certificate
/// from the private CA: trusted through `realtime.ca_file`, the answer is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_reaches_a_wss_model_signed_by_the_ca_file_ca() {
    let (ca_pem, cert, key) = private_pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "model-ca.pem", &ca_pem);
    let model = tls_echo_peer(cert, key).await;

    let bridge = Bridge::start(model.as_str(), |c| {
        c.realtime.dialect = Dialect::Ga;
        c.realtime.ca_file = Some(ca.clone());
    })
    .await;
    let mut opts = CallOptions::new(
        Url::parse(&bridge.public_url).unwrap(),
        callbridge_sim::demo::SPEECH.to_vec(),
    );
    opts.auth_token = Some(AUTH_TOKEN.into());
    opts.trailing_silence = Duration::from_millis(1500);
    opts.max_duration = Duration::from_secs(30);
    let report = callbridge_sim::place_call(opts, None).await.unwrap();
    assert!(report.errors.is_empty(), "{report}");
    assert!(report.turns >= 1, "{report}");
    assert!(report.bytes_heard >= 8 * 1000, "{report}");
}

/// The CA is added to the web roots, not instead of them; without it the
/// same endpoint is refused.
#[tokio::test]
async fn the_ca_file_is_what_makes_the_model_trusted() {
    let (ca_pem, cert, key) = private_pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "model-ca.pem", &ca_pem);
    let model = tls_echo_peer(cert, key).await;

    let roots = roots_with_ca_file(Some(&ca)).unwrap();
    assert_eq!(roots.len(), web_roots().len() + 1);
    let trusted = ModelEndpoint::with_roots(
        model.clone(),
        Dialect::Ga,
        None,
        Duration::from_secs(5),
        roots,
    )
    .unwrap();
    assert!(trusted.connect().await.is_ok());

    let untrusted = ModelEndpoint::new(model, Dialect::Ga, None, Duration::from_secs(5)).unwrap();
    match untrusted.connect().await {
        Err(ConnectError::Io(msg)) => assert!(msg.to_lowercase().contains("certificate"), "{msg}"),
        Err(other) => panic!("expected a certificate error, got {other}"),
        Ok(_) => panic!("connected to a model no root vouches for"),
    }
}
