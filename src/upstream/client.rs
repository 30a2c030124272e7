//! The one module that touches the model's socket: connects to `realtime.url`
//! with the dialect's headers and adapts tungstenite messages to the call
//! core's [`WsIn`]/[`WsOut`] (see [`crate::ws`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, Stream, StreamExt};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::Connector;
use url::Url;

use crate::config::{redact_query, Dialect, Secret};
use crate::ws::{adapt_sink, adapt_stream, WsIn, WsOut};

/// Sent on every connection, so the provider can tell the bridge's traffic apart.
use crate::http_client::USER_AGENT;

/// Model deltas can be large (a whole sentence of audio in one frame).
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Bytes gathered before a write to the socket (tungstenite's default).
const WRITE_BUFFER_BYTES: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to the model endpoint timed out after {0:?}")]
    Timeout(Duration),
    #[error("the model endpoint refused the upgrade with HTTP {0}")]
    Http(u16),
    #[error("cannot reach the model endpoint: {0}")]
    Io(String),
    #[error("refusing to send the API key over plain ws:// to {0}: use wss:// (plain ws:// is for loopback peers)")]
    PlainTextKey(String),
    #[error("the API key cannot be sent as an HTTP header value")]
    BadKey,
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// Where and how to connect; cheap to clone, built once at start-up.
#[derive(Clone)]
pub struct ModelEndpoint {
    pub url: Url,
    pub dialect: Dialect,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ModelEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEndpoint")
            .field("url", &redact_query(&self.url))
            .field("dialect", &self.dialect)
            .field("api_key", &self.api_key)
            .finish()
    }
}

impl ModelEndpoint {
    pub fn new(
        url: Url,
        dialect: Dialect,
        api_key: Option<Secret>,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        Self::with_roots(url, dialect, api_key, connect_timeout, web_roots())
    }

    /// Like [`ModelEndpoint::new`], trusting `roots` instead of the public
    /// web PKI (a private CA, or a test server's self-signed certificate).
    pub fn with_roots(
        url: Url,
        dialect: Dialect,
        api_key: Option<Secret>,
        connect_timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Result<Self, ConnectError> {
        if api_key.is_some() && url.scheme() == "ws" && !is_loopback(&url) {
            return Err(ConnectError::PlainTextKey(redact_query(&url)));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ModelEndpoint {
            url,
            dialect,
            api_key,
            connect_timeout,
            tls: Arc::new(tls),
        })
    }

    /// True when the URL is OpenAI's or Azure's own service, which needs a key.
    pub fn needs_api_key(url: &Url) -> bool {
        url.host_str().is_some_and(|h| {
            h == "api.openai.com" || h.ends_with(".openai.azure.com") || h.ends_with(".azure.com")
        })
    }

    /// Opens the socket: TCP with `TCP_NODELAY`, TLS for `wss://`, the
    /// dialect's auth headers. Returns the two halves as the bridge sees them.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            impl Sink<WsOut, Error = tungstenite::Error> + Unpin + Send + use<>,
            impl Stream<Item = WsIn> + Unpin + Send + use<>,
        ),
        ConnectError,
    > {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        if let Some(key) = &self.api_key {
            let headers = request.headers_mut();
            if self.dialect.is_azure() {
                let value =
                    HeaderValue::from_str(key.expose()).map_err(|_| ConnectError::BadKey)?;
                headers.insert("api-key", value);
            } else {
                let value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| ConnectError::BadKey)?;
                headers.insert("authorization", value);
            }
        }
        request
            .headers_mut()
            .insert("user-agent", HeaderValue::from_static(USER_AGENT));
        if self.dialect == Dialect::Beta {
            request
                .headers_mut()
                .insert("openai-beta", HeaderValue::from_static("realtime=v1"));
        }
        // tungstenite zero-fills its read buffer on every read: the default
        // 128 KiB cost 12% of the bridge's CPU under load (profiled);
        // model frames are read in 8 KiB steps just as well.
        // Writes: the bridge awaits each send to the socket (5 s at most),
        // so the buffer holds one message beyond what the kernel took; the
        // cap makes that a rule (a write over it fails, and the socket is
        // replaced) rather than a habit.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 << 10)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_write_buffer_size(WRITE_BUFFER_BYTES + MAX_MESSAGE_BYTES)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connector = Connector::Rustls(self.tls.clone());
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(connector),
        );
        let (socket, _response) = match tokio::time::timeout(self.connect_timeout, connecting).await
        {
            Err(_) => return Err(ConnectError::Timeout(self.connect_timeout)),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                return Err(ConnectError::Http(resp.status().as_u16()))
            }
            Ok(Err(e)) => return Err(ConnectError::Io(e.to_string())),
            Ok(Ok(ok)) => ok,
        };
        let (sink, stream) = socket.split();
        Ok((adapt_sink(sink), adapt_stream(stream)))
    }
}

/// The public web PKI's roots (Mozilla's, via `webpki-roots`), which the
/// bridge trusts for `wss://` unless told otherwise.
pub fn web_roots() -> rustls::RootCertStore {
    rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
}

/// A CA file that cannot be used: unreadable, not PEM, no certificate in
/// it, or a certificate rustls cannot take as a trust anchor.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct CaFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// Reads every `CERTIFICATE` in a PEM file (a private CA, or a bundle of
/// them); anything else in the file (keys, comments) is ignored. A file with
/// no certificate is an error, so a wrong path to a key file is caught.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let fail = |reason: String| CaFileError {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The web roots plus every certificate of `ca_file` (PEM), when given:
/// what to trust for a private CA without distrusting the public ones.
pub fn roots_with_ca_file(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, CaFileError> {
    let mut roots = web_roots();
    if let Some(path) = ca_file {
        for (n, cert) in read_ca_file(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| CaFileError {
                path: path.to_owned(),
                reason: format!("certificate {} is not usable as a CA: {e}", n + 1),
            })?;
        }
    }
    Ok(roots)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}
