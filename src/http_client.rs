//! The one way the service builds an outgoing HTTP client: HTTP tools,
//! Twilio's REST API and the call-record webhook all go through reqwest on
//! our own rustls configuration (ring, so no second crypto provider), never
//! follow redirects (a redirect would carry credentials or a signed record
//! somewhere the operator did not configure), and name themselves the same.

use std::sync::Arc;

/// Sent as `User-Agent` on every outgoing request, the model's socket too.
pub const USER_AGENT: &str = concat!("callbridge/", env!("CARGO_PKG_VERSION"));

/// The web's root certificates (webpki-roots).
pub fn web_roots() -> rustls::RootCertStore {
    rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
}

/// A client builder trusting `roots`, with the settings every caller shares;
/// callers add their own timeouts.
pub fn builder(roots: rustls::RootCertStore) -> Result<reqwest::ClientBuilder, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none()))
}
