//! callbridge's test tooling, kept out of the service crate: the simulated
//! Twilio side of a phone call (for tests, `callbridge call`, `callbridge demo`
//! and `callbridge loadtest`) and [`echo`], the local model peer. It uses only
//! the public API of the `callbridge` crate.
//!
//! The bridge cannot be exercised without Twilio, and Twilio cannot be put in
//! a test, so this module plays Twilio's part as closely as the public
//! documentation (PROTOCOLS.md §1) allows: it POSTs the signed voice webhook,
//! reads the TwiML, opens the Media Stream with a signed upgrade, sends
//! `connected`, `start` and 20 ms μ-law frames on a real-time clock, and plays
//! the bridge's audio back at real time, echoing marks only once the audio
//! before them has played and flushing them all on `clear`, as Twilio does.
//! Everything it writes and parses goes through [`callbridge::twilio::messages`],
//! the same code the bridge uses, so the two cannot drift apart silently.
//!
//! # Layout
//!
//! - [`caller`]: one complete call with a script (speech, optional barge-in),
//!   recording what was sent and heard on one timeline.
//! - [`loadtest`]: many lean calls at once, measuring per-frame relay latency
//!   against a loopback Realtime peer, plus the bridge's CPU and memory.
//! - [`demo`]: the whole product on loopback, behind `callbridge demo`.
//! - [`first_turn`]: the first turn's latency with and without pre-warm
//!   (the demo's "first turn" line, the README's table).
//! - `stream` (private): the webhook, the TwiML scan, the signed upgrade and
//!   the `connected`/`start` opening, shared by both, over plain TCP or TLS
//!   ([`Transport`]: trusted roots, `--resolve`).
//! - `playback` (private): Twilio's playout queue and mark echoing.
//! - [`echo`]: `echo-realtime`, the local model peer (Realtime and GPT-Live).
//! - [`tool_server`]: a tiny HTTP tool endpoint on loopback (the demo's
//!   `lookup_order`), which also stands in for Twilio's REST hang-up.
#![forbid(unsafe_code)]

pub mod caller;
pub mod demo;
pub mod echo;
pub mod first_turn;
pub mod loadtest;
mod playback;
mod stream;
pub mod tool_server;

use std::path::Path;

use callbridge::audio::{g711, AudioMode, OutboundTranscoder};

pub use caller::{place_call, BargeIn, CallOptions, CallReport, Progress};
pub use loadtest::{run, LoadOptions, LoadReport};
pub use stream::Transport;

/// Bytes of μ-law in one 20 ms frame at 8 kHz: Twilio's frame size.
pub const FRAME_BYTES: usize = 160;
/// Twilio's frame period.
pub const FRAME: std::time::Duration = std::time::Duration::from_millis(20);
/// μ-law silence (the code for zero; Twilio and phones send 0xFF in pauses).
pub const SILENCE: u8 = 0xFF;

/// Why a simulated call could not be placed (or a load test could not run).
///
/// Each message is one line that names what failed, because the CLI prints it
/// as is and exits non-zero: "bridge unreachable", "403" and "busy" are the
/// failures an operator must tell apart at a glance.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid option: {0}")]
    Options(String),
    #[error("cannot reach the bridge at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("certificate not trusted: {host}: {reason} ({})", if *private_ca { "neither the web roots nor the --ca-file CA vouch for it" } else { "use --ca-file for a private CA" })]
    Untrusted {
        host: String,
        reason: String,
        /// Whether a private CA (`--ca-file`) was trusted too.
        private_ca: bool,
    },
    #[error("{endpoint}: 403 Forbidden ({})", if *signed { "the bridge rejected our X-Twilio-Signature: is TWILIO_AUTH_TOKEN the bridge's token?" } else { "the bridge wants signed requests: set TWILIO_AUTH_TOKEN" })]
    Forbidden { endpoint: String, signed: bool },
    #[error("the bridge answered busy ({0})")]
    Busy(String),
    #[error("{endpoint}: HTTP {status}: {body}")]
    Http {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("the TwiML answer has no usable <Connect><Stream url=…>: {0}")]
    Twiml(String),
    #[error("timed out {0}")]
    Timeout(String),
    #[error("media stream: {0}")]
    Stream(String),
    #[error("{}: {reason}", path.display())]
    Audio {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// Reads caller audio as μ-law 8 kHz: `.ulaw` (raw, as Twilio sends it) or a
/// 16-bit mono `.wav` at 8 or 24 kHz. 24 kHz goes through the bridge's own
/// downsampler, so a WAV recorded from a model sounds here as it would on the
/// phone.
pub fn load_audio(path: &Path) -> Result<Vec<u8>, SimError> {
    let fail = |reason: String| SimError::Audio {
        path: path.to_owned(),
        reason,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let codes = match ext.as_deref() {
        Some("ulaw") => bytes,
        Some("wav") => {
            let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
                .map_err(|e| fail(format!("not a readable WAV file: {e}")))?;
            let spec = reader.spec();
            if spec.channels != 1
                || spec.bits_per_sample != 16
                || spec.sample_format != hound::SampleFormat::Int
            {
                return Err(fail(format!(
                    "only 16-bit integer mono WAV is supported (got {} channels, {} bits)",
                    spec.channels, spec.bits_per_sample
                )));
            }
            let samples: Vec<i16> = reader
                .into_samples::<i16>()
                .collect::<Result<_, _>>()
                .map_err(|e| fail(format!("truncated WAV: {e}")))?;
            match spec.sample_rate {
                8000 => {
                    let mut codes = Vec::with_capacity(samples.len());
                    g711::encode_into(&samples, &mut codes);
                    codes
                }
                24_000 => {
                    let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                    let mut down = OutboundTranscoder::new(AudioMode::Pcm16);
                    let mut codes = down
                        .transcode(&pcm)
                        .map_err(|e| fail(e.to_string()))?
                        .to_vec();
                    codes.extend_from_slice(down.flush());
                    codes
                }
                rate => {
                    return Err(fail(format!(
                        "unsupported sample rate {rate} Hz (only 8000 and 24000)"
                    )))
                }
            }
        }
        _ => return Err(fail("unknown extension (expected .ulaw or .wav)".into())),
    };
    if codes.is_empty() {
        return Err(fail("no audio (empty input)".into()));
    }
    Ok(codes)
}

/// Writes μ-law 8 kHz as a PCM16 8 kHz WAV, one channel per track (mono for
/// one track, stereo for two: e.g. caller left, bridge right). Tracks of
/// different lengths are padded with silence.
pub fn write_wav(path: &Path, tracks: &[&[u8]]) -> Result<(), SimError> {
    let fail = |reason: String| SimError::Audio {
        path: path.to_owned(),
        reason,
    };
    let channels = u16::try_from(tracks.len())
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| fail("no track to write".into()))?;
    let spec = hound::WavSpec {
        channels,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let len = tracks.iter().map(|t| t.len()).max().unwrap_or(0);
    let mut writer =
        hound::WavWriter::create(path, spec).map_err(|e| fail(format!("cannot write: {e}")))?;
    for n in 0..len {
        for track in tracks {
            let code = track.get(n).copied().unwrap_or(SILENCE);
            writer
                .write_sample(g711::decode(code))
                .map_err(|e| fail(format!("cannot write: {e}")))?;
        }
    }
    writer
        .finalize()
        .map_err(|e| fail(format!("cannot write: {e}")))
}

/// RMS level of a μ-law frame, in linear PCM16 units.
pub fn rms(ulaw: &[u8]) -> f64 {
    if ulaw.is_empty() {
        return 0.0;
    }
    let sum: f64 = ulaw
        .iter()
        .map(|&c| {
            let s = f64::from(g711::decode(c));
            s * s
        })
        .sum();
    (sum / ulaw.len() as f64).sqrt()
}

/// A frame louder than this counts as speech when the caller times its turns.
/// The fixtures' pauses sit near 4, their speech well above 150; a phone
/// line's noise floor is far below this.
pub const SPEECH_RMS: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_of_silence_and_tone() {
        assert_eq!(rms(&[]), 0.0);
        assert!(rms(&[SILENCE; FRAME_BYTES]) < 1.0);
        let mut tone = Vec::new();
        g711::encode_into(
            &callbridge::audio::measure::sine(440.0, 8000, 8000.0, 160),
            &mut tone,
        );
        let level = rms(&tone);
        assert!((5000.0..6000.0).contains(&level), "{level}");
        assert!(level > SPEECH_RMS);
    }

    #[test]
    fn wav_round_trip_and_ulaw_load() {
        let dir = tempfile::tempdir().unwrap();
        let codes: Vec<u8> = (0..=255).collect();
        let ulaw = dir.path().join("a.ulaw");
        std::fs::write(&ulaw, &codes).unwrap();
        assert_eq!(load_audio(&ulaw).unwrap(), codes);

        let wav = dir.path().join("a.wav");
        write_wav(&wav, &[&codes]).unwrap();
        let back = load_audio(&wav).unwrap();
        // Negative zero (0x7F) re-encodes as 0xFF; everything else survives.
        let mut expected = codes.clone();
        expected[0x7F] = 0xFF;
        assert_eq!(back, expected);

        let stereo = dir.path().join("s.wav");
        write_wav(&stereo, &[&codes, &codes[..10]]).unwrap();
        let r = hound::WavReader::open(&stereo).unwrap();
        assert_eq!(r.spec().channels, 2);
        assert_eq!(r.len(), 512);

        assert!(load_audio(&dir.path().join("missing.ulaw")).is_err());
        let empty = dir.path().join("e.ulaw");
        std::fs::write(&empty, b"").unwrap();
        assert!(load_audio(&empty).is_err());
        assert!(load_audio(&dir.path().join("x.mp3")).is_err());
    }
}
