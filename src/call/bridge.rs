//! The relay for one call: Twilio ⇄ model, with pacing and barge-in.
//!
//! One task per call, one `select!` loop over: the caller's frames, the
//! model's events, the playout timer and the shutdown signal. Both sockets
//! are generic `Sink`/`Stream`s of [`WsIn`]/[`WsOut`]. Per-frame work reuses
//! the call's buffers; the only allocation per message is the message itself,
//! which the socket takes ownership of.

use std::collections::VecDeque;

use base64::Engine as _;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::playout::{MarkEcho, Playout};
use super::{close_code, WsIn, WsOut};
use crate::audio::{AudioMode, InboundTranscoder, OutboundTranscoder};
use crate::metrics::{Metrics, Outcome, Reject, Source};
use crate::realtime::events::{
    parse_server_event, write_append, write_response_cancel, write_truncate, ServerEvent,
};
use crate::twilio::messages::{self, parse_inbound, Inbound, MessageError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Twilio's frame: 20 ms of μ-law at 8 kHz. Answer audio goes out in these.
const TWILIO_FRAME_BYTES: usize = 160;
/// Application cap on one frame from Twilio: a 20 ms frame is ~300 bytes.
pub const MAX_TWILIO_FRAME: usize = 64 << 10;
/// A send that cannot complete in this long means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bad frames tolerated in a burst, and how fast the allowance refills.
const BAD_FRAME_BURST: f64 = 20.0;
const BAD_FRAME_REFILL_PER_SEC: f64 = 2.0;

/// Everything the bridge needs to know about the call.
#[derive(Debug, Clone)]
pub struct CallParams {
    pub call_sid: String,
    pub stream_sid: String,
    pub mode: AudioMode,
    pub playout_lead: Duration,
    /// The `session.update` to send first (and again after a reconnect).
    pub session_update: String,
}

/// What happened, for the end-of-call log line and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    pub outcome: Outcome,
    pub turns: u32,
    pub bargeins: u32,
    pub frames_in: u64,
    pub frames_out: u64,
    pub rejected: u64,
    /// Why it ended, when it did not end normally.
    pub reason: Option<String>,
}

/// Why the loop stopped: the outcome, and a reason when it was not normal.
struct End(Outcome, Option<String>);

type Step = Result<(), End>;

fn end(outcome: Outcome, why: impl Into<String>) -> End {
    End(outcome, Some(why.into()))
}

/// Runs the call until either side ends it or `shutdown` fires.
pub async fn run<TS, TR, MS, MR, E1, E2>(
    params: CallParams,
    metrics: Metrics,
    twilio_tx: TS,
    mut twilio_rx: TR,
    model_tx: MS,
    mut model_rx: MR,
    shutdown: CancellationToken,
) -> CallSummary
where
    TS: Sink<WsOut, Error = E1> + Unpin,
    TR: Stream<Item = WsIn> + Unpin,
    MS: Sink<WsOut, Error = E2> + Unpin,
    MR: Stream<Item = WsIn> + Unpin,
{
    let mut call = Bridge::new(params, metrics, twilio_tx, model_tx);
    let result = call
        .run_loop(&mut twilio_rx, &mut model_rx, &shutdown)
        .await;
    let End(outcome, reason) = result;
    let twilio_code = match outcome {
        Outcome::ProtocolError | Outcome::Unauthorized => close_code::POLICY,
        Outcome::Drained => close_code::GOING_AWAY,
        _ => close_code::NORMAL,
    };
    // Close both at once: an open model session costs money.
    let model_close = call
        .model_tx
        .send(WsOut::Close(close_code::NORMAL, "call ended"));
    let twilio_close = call.twilio_tx.send(WsOut::Close(twilio_code, "call ended"));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = futures_util::join!(model_close, twilio_close);
    })
    .await;
    CallSummary {
        outcome,
        turns: call.turns,
        bargeins: call.bargeins,
        frames_in: call.frames_in,
        frames_out: call.frames_out,
        rejected: call.rejected,
        reason,
    }
}

struct Bridge<TS, MS> {
    p: CallParams,
    m: Metrics,
    twilio_tx: TS,
    model_tx: MS,
    inbound: InboundTranscoder,
    outbound: OutboundTranscoder,
    playout: Playout,
    /// Reused scratch buffers.
    ulaw_in: Vec<u8>,
    model_audio: Vec<u8>,
    b64: String,
    /// Media messages of the chunk being sent (the Vec is reused).
    frames_pending: Vec<String>,
    active_response: Option<String>,
    /// Responses cancelled by barge-in whose late deltas must be dropped.
    cancelled: VecDeque<String>,
    speech_stopped_at: Option<Instant>,
    started: Instant,
    first_audio_sent: bool,
    last_seq: Option<u64>,
    bad_allowance: f64,
    bad_at: Instant,
    turns: u32,
    bargeins: u32,
    frames_in: u64,
    frames_out: u64,
    rejected: u64,
}

impl<TS, MS, E1, E2> Bridge<TS, MS>
where
    TS: Sink<WsOut, Error = E1> + Unpin,
    MS: Sink<WsOut, Error = E2> + Unpin,
{
    fn new(p: CallParams, m: Metrics, twilio_tx: TS, model_tx: MS) -> Self {
        let now = Instant::now();
        Bridge {
            inbound: InboundTranscoder::new(p.mode),
            outbound: OutboundTranscoder::new(p.mode),
            playout: Playout::new(p.playout_lead),
            p,
            m,
            twilio_tx,
            model_tx,
            ulaw_in: Vec::with_capacity(512),
            model_audio: Vec::with_capacity(16 << 10),
            b64: String::with_capacity(2048),
            frames_pending: Vec::with_capacity(8),
            active_response: None,
            cancelled: VecDeque::with_capacity(4),
            speech_stopped_at: None,
            started: now,
            first_audio_sent: false,
            last_seq: None,
            bad_allowance: BAD_FRAME_BURST,
            bad_at: now,
            turns: 0,
            bargeins: 0,
            frames_in: 0,
            frames_out: 0,
            rejected: 0,
        }
    }

    async fn run_loop<TR, MR>(
        &mut self,
        twilio_rx: &mut TR,
        model_rx: &mut MR,
        shutdown: &CancellationToken,
    ) -> End
    where
        TR: Stream<Item = WsIn> + Unpin,
        MR: Stream<Item = WsIn> + Unpin,
    {
        let session_update = self.p.session_update.clone();
        if let Err(e) = self.send_model(session_update).await {
            return e;
        }
        loop {
            let wake = self.playout.next_send_at(Instant::now());
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(End(Outcome::Drained, None)),
                msg = twilio_rx.next() => match msg {
                    None | Some(WsIn::Close(_)) => Err(End(Outcome::CallerGone, None)),
                    Some(WsIn::Binary(_)) => self.bad_twilio(Reject::Binary),
                    Some(WsIn::Text(text)) => self.on_twilio(&text).await,
                },
                msg = model_rx.next() => match msg {
                    None => Err(end(Outcome::UpstreamFailed, "the model's socket ended")),
                    Some(WsIn::Close(code)) => Err(end(
                        Outcome::UpstreamFailed,
                        format!("the model closed the socket (code {code:?})"),
                    )),
                    Some(WsIn::Binary(_)) => {
                        self.m.rejected.inc(Source::Realtime, Reject::Binary);
                        Ok(())
                    }
                    Some(WsIn::Text(text)) => self.on_model(&text).await,
                },
                _ = sleep_until_opt(wake) => self.pump().await,
            };
            if let Err(e) = step {
                return e;
            }
        }
    }

    async fn send_twilio(&mut self, msg: String) -> Step {
        let sent = tokio::time::timeout(WRITE_TIMEOUT, self.twilio_tx.send(WsOut::Text(msg))).await;
        self.twilio_result(sent)
    }

    /// Queues without flushing, so that a chunk and its mark (and several
    /// chunks) go out in one write.
    async fn feed_twilio(&mut self, msg: String) -> Step {
        let fed = tokio::time::timeout(WRITE_TIMEOUT, self.twilio_tx.feed(WsOut::Text(msg))).await;
        self.twilio_result(fed)
    }

    async fn flush_twilio(&mut self) -> Step {
        let flushed = tokio::time::timeout(WRITE_TIMEOUT, self.twilio_tx.flush()).await;
        self.twilio_result(flushed)
    }

    fn twilio_result<E>(&self, r: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Step {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End(Outcome::CallerGone, None)),
            Err(_) => {
                self.m.error("twilio_write_timeout");
                Err(end(Outcome::ProtocolError, "Twilio stopped reading"))
            }
        }
    }

    async fn send_model(&mut self, msg: String) -> Step {
        match tokio::time::timeout(WRITE_TIMEOUT, self.model_tx.send(WsOut::Text(msg))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(end(
                Outcome::UpstreamFailed,
                "cannot write to the model's socket",
            )),
            Err(_) => {
                self.m.error("realtime_write_timeout");
                Err(end(Outcome::UpstreamFailed, "the model stopped reading"))
            }
        }
    }

    /// Counts a bad frame from Twilio; a burst of them ends the call.
    fn bad_twilio(&mut self, reason: Reject) -> Step {
        self.m.rejected.inc(Source::Twilio, reason);
        self.rejected += 1;
        let now = Instant::now();
        let refill = now.duration_since(self.bad_at).as_secs_f64() * BAD_FRAME_REFILL_PER_SEC;
        self.bad_at = now;
        self.bad_allowance = (self.bad_allowance + refill).min(BAD_FRAME_BURST) - 1.0;
        if self.bad_allowance < 0.0 {
            return Err(end(
                Outcome::ProtocolError,
                "too many invalid frames from Twilio",
            ));
        }
        Ok(())
    }

    async fn on_twilio(&mut self, frame: &[u8]) -> Step {
        let received = Instant::now();
        if frame.len() > MAX_TWILIO_FRAME {
            return self.bad_twilio(Reject::Oversize);
        }
        let Ok(text) = std::str::from_utf8(frame) else {
            return self.bad_twilio(Reject::Malformed);
        };
        let event = match parse_inbound(text) {
            Ok(event) => event,
            Err(MessageError::UnknownEvent(_)) => return self.bad_twilio(Reject::UnknownEvent),
            Err(_) => return self.bad_twilio(Reject::Malformed),
        };
        // Every message from `start` on is numbered (marks and dtmf too):
        // a gap means Twilio lost messages on the way.
        if let Some(seq) = event.sequence_number() {
            if let Some(last) = self.last_seq {
                if seq > last + 1 {
                    self.m.dropped_in_gap.inc_by(seq - last - 1);
                }
            }
            self.last_seq = Some(seq);
        }
        match event {
            Inbound::Media { media, .. } => {
                self.ulaw_in.clear();
                if B64
                    .decode_vec(media.payload.as_bytes(), &mut self.ulaw_in)
                    .is_err()
                {
                    return self.bad_twilio(Reject::BadBase64);
                }
                let audio = self.inbound.transcode(&self.ulaw_in);
                let mut msg = String::new();
                write_append(&mut msg, audio);
                self.send_model(msg).await?;
                self.frames_in += 1;
                self.m.frames_in.inc();
                self.m.relay_in.observe_duration(received.elapsed());
            }
            Inbound::Mark { mark, .. } => {
                if let MarkEcho::Foreign = self.playout.on_mark(&mark.name) {
                    tracing::debug!(name = %mark.name, "mark that is not ours");
                }
            }
            Inbound::Stop { .. } => return Err(End(Outcome::Completed, None)),
            Inbound::Dtmf { dtmf, .. } => {
                tracing::info!(call_sid = %self.p.call_sid, digit = %dtmf.digit, "dtmf");
            }
            Inbound::Connected { .. } | Inbound::Start { .. } => {
                tracing::debug!(call_sid = %self.p.call_sid, "repeated connected/start ignored");
            }
        }
        Ok(())
    }

    async fn on_model(&mut self, frame: &[u8]) -> Step {
        let received = Instant::now();
        let event = match parse_server_event(frame) {
            Ok(event) => event,
            Err(e) => {
                self.m.rejected.inc(Source::Realtime, Reject::Malformed);
                tracing::warn!(call_sid = %self.p.call_sid, error = %e, "malformed event from the model");
                return Ok(());
            }
        };
        match event {
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                delta,
            } => {
                if self.cancelled.iter().any(|c| *c == response_id) {
                    self.m.dropped_out_stale.inc();
                    return Ok(());
                }
                self.model_audio.clear();
                if B64
                    .decode_vec(delta.as_bytes(), &mut self.model_audio)
                    .is_err()
                {
                    self.m.rejected.inc(Source::Realtime, Reject::BadBase64);
                    return Ok(());
                }
                match self.outbound.transcode(&self.model_audio) {
                    Ok(ulaw) => {
                        if !self.playout.push(&item_id, ulaw) {
                            self.m.dropped_out_overflow.inc();
                        }
                    }
                    Err(_) => {
                        self.m.rejected.inc(Source::Realtime, Reject::BadAudio);
                        return Ok(());
                    }
                }
                self.pump().await?;
                self.m.relay_out.observe_duration(received.elapsed());
            }
            ServerEvent::AudioDone {
                item_id,
                response_id,
            } => {
                if !self.cancelled.iter().any(|c| *c == response_id) {
                    let tail = self.outbound.flush();
                    if !self.playout.push(&item_id, tail) {
                        self.m.dropped_out_overflow.inc();
                    }
                    self.pump().await?;
                }
            }
            ServerEvent::SpeechStarted { .. } => self.barge_in(received).await?,
            ServerEvent::SpeechStopped { .. } => {
                self.turns += 1;
                self.speech_stopped_at = Some(received);
            }
            ServerEvent::ResponseCreated { response_id } => {
                self.active_response = Some(response_id.into_owned());
            }
            ServerEvent::ResponseDone(done) => {
                if self.active_response.as_deref() == Some(done.response_id.as_str()) {
                    self.active_response = None;
                }
                if let Some(usage) = done.usage {
                    self.m.tokens_input.inc_by(usage.input_tokens);
                    self.m.tokens_output.inc_by(usage.output_tokens);
                }
                if done.status == "failed" {
                    self.m.error("response_failed");
                    tracing::warn!(call_sid = %self.p.call_sid, response_id = %done.response_id, "response failed");
                }
            }
            ServerEvent::InputTranscript { transcript, .. } => {
                tracing::info!(call_sid = %self.p.call_sid, turn = self.turns, caller = %transcript.trim(), "transcript");
            }
            ServerEvent::OutputTranscript { transcript, .. } => {
                tracing::info!(call_sid = %self.p.call_sid, turn = self.turns, assistant = %transcript.trim(), "transcript");
            }
            ServerEvent::Error(err) => {
                if err.is_benign() {
                    tracing::debug!(call_sid = %self.p.call_sid, code = err.code(), "benign realtime error");
                } else if err.is_fatal() {
                    self.m.error("realtime_fatal");
                    tracing::error!(call_sid = %self.p.call_sid, code = err.code(), message = err.message.as_deref().unwrap_or(""), "fatal realtime error");
                    return Err(end(
                        Outcome::UpstreamFailed,
                        format!("realtime error {}", err.code()),
                    ));
                } else {
                    self.m.error("realtime_error");
                    tracing::warn!(call_sid = %self.p.call_sid, code = err.code(), message = err.message.as_deref().unwrap_or(""), "realtime error");
                }
            }
            ServerEvent::SessionCreated
            | ServerEvent::SessionUpdated
            | ServerEvent::Truncated { .. }
            | ServerEvent::Other(_) => {}
        }
        Ok(())
    }

    /// PROTOCOLS.md §3: clear, cancel, truncate, new generation.
    async fn barge_in(&mut self, received: Instant) -> Step {
        let playing = self.playout.is_playing(received);
        if !playing && self.active_response.is_none() {
            return Ok(());
        }
        self.bargeins += 1;
        self.m.bargeins.inc();
        if playing {
            let mut msg = String::with_capacity(64);
            messages::write_clear(&mut msg, &self.p.stream_sid);
            self.send_twilio(msg).await?;
            self.m.bargein_latency.observe_duration(received.elapsed());
        }
        let truncation = self.playout.interrupt(Instant::now());
        self.outbound.reset();
        if let Some(id) = self.active_response.take() {
            let mut msg = String::with_capacity(64);
            write_response_cancel(&mut msg, Some(&id));
            if self.cancelled.len() == 4 {
                self.cancelled.pop_front();
            }
            self.cancelled.push_back(id);
            self.send_model(msg).await?;
        }
        match truncation {
            Some(t) if t.audio_end_ms > 0 => {
                let mut msg = String::with_capacity(96);
                write_truncate(&mut msg, &t.item_id, t.audio_end_ms);
                self.m.truncations_sent.inc();
                tracing::debug!(call_sid = %self.p.call_sid, item_id = %t.item_id, audio_end_ms = t.audio_end_ms, acked_ms = t.acked_ms, sent_ms = t.sent_ms, "truncate");
                self.send_model(msg).await?;
            }
            _ => {
                self.m.truncations_skipped.inc();
            }
        }
        Ok(())
    }

    /// Sends every chunk the lead allows now, each followed by its mark,
    /// in one flush.
    async fn pump(&mut self) -> Step {
        let mut fed = false;
        loop {
            let now = Instant::now();
            let (mark, lead) = {
                let Some(chunk) = self.playout.next_chunk(now) else {
                    return if fed {
                        self.flush_twilio().await
                    } else {
                        Ok(())
                    };
                };
                // Cut into Twilio's own 20 ms frames; one mark per chunk.
                for piece in chunk.payload.chunks(TWILIO_FRAME_BYTES) {
                    self.b64.clear();
                    B64.encode_string(piece, &mut self.b64);
                    let mut media = String::with_capacity(self.b64.len() + 96);
                    messages::write_media(&mut media, &self.p.stream_sid, &self.b64);
                    self.frames_pending.push(media);
                }
                let mut mark = String::with_capacity(128);
                messages::write_mark(&mut mark, &self.p.stream_sid, chunk.mark);
                (mark, chunk.lead)
            };
            let mut frames = std::mem::take(&mut self.frames_pending);
            for media in frames.drain(..) {
                self.feed_twilio(media).await?;
                self.frames_out += 1;
                self.m.frames_out.inc();
            }
            self.frames_pending = frames;
            self.feed_twilio(mark).await?;
            fed = true;
            self.m.playout_lead.observe_duration(lead);
            if let Some(stopped) = self.speech_stopped_at.take() {
                self.m
                    .turn_latency
                    .observe_duration(now.duration_since(stopped));
            }
            if !self.first_audio_sent {
                self.first_audio_sent = true;
                self.m
                    .first_audio
                    .observe_duration(now.duration_since(self.started));
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;
