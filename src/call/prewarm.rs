//! Pre-warm: a call's model session opened and configured before its stream
//! starts, so the caller's first turn does not wait for the model's connect
//! and session setup.
//!
//! When the voice webhook (or `POST /calls`) admits a call, the server
//! reserves a place for its CallSid in [`Parked`](super::parked::Parked),
//! opens the model's socket and runs [`configure`]: the driver's first
//! frames (`session.update`, GPT-Live's `session.start`) go out and the
//! model's frames are read until the driver reports the session ready
//! (`session.updated`, `session.started`). The [`Warm`] session is parked;
//! the stream's `start` claims it and the bridge takes it over as is
//! ([`Model::opened_at`](super::bridge::Model::opened_at)): no second
//! `session.update`, and the greeting is asked for only once the stream has
//! started, when the caller can hear it. No caller audio exists before the
//! stream, so none is sent.
//!
//! Anything that goes wrong here only costs the head start: the stream then
//! connects as it would have without pre-warm.

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;

use crate::upstream::{Driver, ModelEvent};
use crate::ws::{close_code, WsIn, WsOut};

/// A model session opened and configured ahead of its stream.
pub struct Warm<MS, MR> {
    /// The driver, in the state the session's setup left it.
    pub driver: Box<dyn Driver>,
    pub tx: MS,
    pub rx: MR,
    /// When the session was opened (its age counts from here).
    pub opened_at: Instant,
    /// The assistant profile it was configured for: a stream whose token
    /// names another one does not take it.
    pub profile: String,
}

/// Why a session could not be configured ahead of its stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WarmError {
    #[error("cannot open the model's socket: {0}")]
    Connect(String),
    #[error("cannot write to the model's socket")]
    Write,
    #[error("the model closed the socket during setup")]
    Closed,
    #[error("the model refused the session ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("the session was not ready within {0:?}")]
    Timeout(Duration),
}

/// Sends the driver's opening frames and reads until the session is ready,
/// within `limit`. On failure the socket is closed (politely, briefly) and
/// the error returned; the stream will connect on its own.
///
/// Frames before the session is ready carry nothing the call needs
/// (`session.created`, rate limits); an error event means the session is
/// not what was asked for, so it fails the pre-warm rather than be handed
/// to a call: the stream's own connect then meets (and reports) it.
pub async fn configure<MS, MR, E>(
    driver: &mut dyn Driver,
    tx: &mut MS,
    rx: &mut MR,
    limit: Duration,
) -> Result<(), WarmError>
where
    MS: Sink<WsOut, Error = E> + Unpin,
    MR: Stream<Item = WsIn> + Unpin,
{
    let setup = async {
        let mut out = Vec::with_capacity(2);
        driver.open(&[], &mut out);
        loop {
            for frame in out.drain(..) {
                tx.feed(WsOut::Text(frame))
                    .await
                    .map_err(|_| WarmError::Write)?;
            }
            tx.flush().await.map_err(|_| WarmError::Write)?;
            let frame = match rx.next().await {
                None | Some(WsIn::Close(_)) => return Err(WarmError::Closed),
                Some(WsIn::Pong | WsIn::Binary(_)) => continue,
                Some(WsIn::Text(frame)) => frame,
            };
            match driver.on_frame(&frame, &mut out) {
                Ok(ModelEvent::Ready) => return Ok(()),
                Ok(ModelEvent::Error { code, message } | ModelEvent::Fatal { code, message }) => {
                    return Err(WarmError::Refused { code, message })
                }
                Ok(ModelEvent::Closed { .. } | ModelEvent::Lost { .. }) => {
                    return Err(WarmError::Closed)
                }
                Ok(_) | Err(_) => {}
            }
        }
    };
    let result = match tokio::time::timeout(limit, setup).await {
        Ok(result) => result,
        Err(_) => Err(WarmError::Timeout(limit)),
    };
    if result.is_err() {
        close(tx, "setup failed").await;
    }
    result
}

/// Closes a session nobody will use (it expired, or failed setup), without
/// waiting long for a peer that does not read.
pub async fn close<MS, E>(tx: &mut MS, reason: &'static str)
where
    MS: Sink<WsOut, Error = E> + Unpin,
{
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tx.send(WsOut::Close(close_code::NORMAL, reason)),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Dialect};
    use crate::upstream::{driver_for, SessionSpec};
    use bytes::Bytes;
    use futures_util::stream;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    const LIMIT: Duration = Duration::from_secs(5);

    fn driver(dialect: Dialect) -> Box<dyn Driver> {
        let mut config = Config::default();
        config.realtime.dialect = dialect;
        config.audio.mode = crate::audio::AudioMode::Pcmu;
        driver_for(SessionSpec::from_config(&config, Vec::new()))
    }

    fn text(s: &str) -> WsIn {
        WsIn::Text(Bytes::from(s.to_owned()))
    }

    /// Runs `configure` against `frames` from the model; returns the result
    /// and what was sent.
    async fn run(dialect: Dialect, frames: Vec<WsIn>) -> (Result<(), WarmError>, Vec<WsOut>) {
        let (tx, mut sent) = mpsc::channel(16);
        let mut tx = PollSender::new(tx);
        // Never ends on its own: a model that stops talking is silent, not gone.
        let mut rx = stream::iter(frames).chain(stream::pending());
        let mut d = driver(dialect);
        let result = configure(d.as_mut(), &mut tx, &mut rx, LIMIT).await;
        drop(tx);
        let mut out = Vec::new();
        while let Some(frame) = sent.recv().await {
            out.push(frame);
        }
        (result, out)
    }

    fn kinds(sent: &[WsOut]) -> Vec<String> {
        sent.iter()
            .map(|f| match f {
                WsOut::Text(t) => serde_json::from_str::<serde_json::Value>(t).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                WsOut::Close(code, _) => format!("close {code}"),
                WsOut::Ping(_) => "ping".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn realtime_is_ready_on_session_updated() {
        let (result, sent) = run(
            Dialect::Ga,
            vec![
                text(r#"{"type":"session.created","session":{}}"#),
                text(r#"{"type":"session.updated","session":{}}"#),
            ],
        )
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(kinds(&sent), ["session.update"]);
    }

    #[tokio::test]
    async fn live_is_ready_on_session_started() {
        let started = r#"{"type":"session.started","session":{"id":"s1","audio":{"format":{"type":"audio/pcmu","rate":8000}}}}"#;
        let (result, sent) = run(Dialect::Live, vec![text(started)]).await;
        assert_eq!(result, Ok(()), "{sent:?}");
        assert_eq!(kinds(&sent), ["session.start"]);
    }

    #[tokio::test]
    async fn an_error_or_a_close_during_setup_fails_and_closes_the_socket() {
        let error = r#"{"type":"error","error":{"type":"invalid_request_error","code":"unknown_parameter","message":"bad"}}"#;
        let (result, sent) = run(Dialect::Ga, vec![text(error)]).await;
        assert!(
            matches!(result, Err(WarmError::Refused { .. })),
            "{result:?}"
        );
        assert_eq!(kinds(&sent), ["session.update", "close 1000"]);

        let (result, sent) = run(Dialect::Ga, vec![WsIn::Close(Some(1011))]).await;
        assert_eq!(result, Err(WarmError::Closed));
        assert_eq!(kinds(&sent), ["session.update", "close 1000"]);

        let (result, _) = run(Dialect::Ga, vec![text("not json"), WsIn::Close(None)]).await;
        assert_eq!(
            result,
            Err(WarmError::Closed),
            "a malformed frame is skipped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_model_times_out() {
        let (result, sent) = run(Dialect::Ga, vec![]).await;
        assert_eq!(result, Err(WarmError::Timeout(LIMIT)));
        assert_eq!(kinds(&sent), ["session.update", "close 1000"]);
    }
}
