//! The one module that touches the model's socket: connects to `realtime.url`
//! with the dialect's headers and adapts tungstenite messages to the bridge's
//! [`WsIn`]/[`WsOut`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::Connector;
use url::Url;

use crate::call::{WsIn, WsOut};
use crate::config::{Dialect, Secret};

/// Model deltas can be large (a whole sentence of audio in one frame).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to the Realtime endpoint timed out after {0:?}")]
    Timeout(Duration),
    #[error("the Realtime endpoint refused the upgrade with HTTP {0}")]
    Http(u16),
    #[error("cannot reach the Realtime endpoint: {0}")]
    Io(String),
    #[error("the API key cannot be sent as an HTTP header value")]
    BadKey,
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// Where and how to connect; cheap to clone, built once at start-up.
#[derive(Clone)]
pub struct RealtimeEndpoint {
    pub url: Url,
    pub dialect: Dialect,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for RealtimeEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeEndpoint")
            .field("url", &self.url.as_str())
            .field("dialect", &self.dialect)
            .field("api_key", &self.api_key)
            .finish()
    }
}

impl RealtimeEndpoint {
    pub fn new(
        url: Url,
        dialect: Dialect,
        api_key: Option<Secret>,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(url, dialect, api_key, connect_timeout, roots)
    }

    /// Like [`RealtimeEndpoint::new`], trusting `roots` instead of the public
    /// web PKI (a private CA, or a test server's self-signed certificate).
    pub fn with_roots(
        url: Url,
        dialect: Dialect,
        api_key: Option<Secret>,
        connect_timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Result<Self, ConnectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(RealtimeEndpoint {
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
            match self.dialect {
                Dialect::Ga | Dialect::Beta => {
                    let value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                        .map_err(|_| ConnectError::BadKey)?;
                    headers.insert("authorization", value);
                }
                Dialect::Azure => {
                    let value =
                        HeaderValue::from_str(key.expose()).map_err(|_| ConnectError::BadKey)?;
                    headers.insert("api-key", value);
                }
            }
        }
        if self.dialect == Dialect::Beta {
            request
                .headers_mut()
                .insert("openai-beta", HeaderValue::from_static("realtime=v1"));
        }
        // tungstenite zero-fills its read buffer on every read: the default
        // 128 KiB cost 12% of the bridge's CPU under load (profiled);
        // model frames are read in 8 KiB steps just as well.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 << 10)
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

/// tungstenite → bridge: text frames as bytes (no copy), control frames
/// handled by tungstenite itself, errors end the stream.
pub fn adapt_stream<S>(stream: S) -> impl Stream<Item = WsIn> + Unpin + Send
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send,
{
    stream
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Text(t)) => Some(WsIn::Text(t.into())),
                Ok(Message::Binary(b)) => Some(WsIn::Binary(b.len())),
                Ok(Message::Close(frame)) => Some(WsIn::Close(frame.map(|f| u16::from(f.code)))),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) | Err(_) => None,
            })
        })
}

/// bridge → tungstenite.
pub fn adapt_sink<S>(sink: S) -> impl Sink<WsOut, Error = tungstenite::Error> + Unpin + Send
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin + Send,
{
    sink.with(|out: WsOut| {
        std::future::ready(Ok::<_, tungstenite::Error>(match out {
            WsOut::Text(text) => Message::Text(text.into()),
            WsOut::Close(code, reason) => Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            })),
        }))
    })
}
