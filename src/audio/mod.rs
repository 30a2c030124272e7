//! Audio for the call path: the per-call transcoders between Twilio's format
//! (8 kHz G.711 μ-law) and the Realtime model's input/output format.
//!
//! Everything here is pure (no I/O, no clock) so it can be tested and
//! benchmarked on its own, and so `callbridge audio convert` ([`convert`]) can
//! run exactly the code a call runs.

pub mod convert;
mod fir;
pub mod g711;
pub mod measure;
pub mod resample;

use std::fmt;
use std::str::FromStr;

use resample::{Downsampler, Upsampler};

/// The audio format spoken with the Realtime model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioMode {
    /// PCM16 LE 24 kHz: the model hears and speaks at its native rate, at the
    /// cost of transcoding (and 2.5 ms of resampler delay) each way.
    #[default]
    Pcm16,
    /// G.711 μ-law 8 kHz: bytes pass through untouched, no transcoding or
    /// delay, but the model works from telephone-quality audio.
    Pcmu,
}

impl AudioMode {
    /// The name used in configuration and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            AudioMode::Pcm16 => "pcm16",
            AudioMode::Pcmu => "pcmu",
        }
    }
}

impl fmt::Display for AudioMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`AudioMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audio mode {0:?} (expected \"pcm16\" or \"pcmu\")")]
pub struct ParseAudioModeError(pub String);

impl FromStr for AudioMode {
    type Err = ParseAudioModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pcm16" => Ok(AudioMode::Pcm16),
            "pcmu" => Ok(AudioMode::Pcmu),
            other => Err(ParseAudioModeError(other.to_owned())),
        }
    }
}

/// Audio the model sent that cannot be transcoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AudioError {
    #[error("PCM16 input has an odd byte count ({0})")]
    OddByteCount(usize),
}

/// Caller → model: μ-law 8 kHz in, the model's input format out.
///
/// One per call. The output is a slice of a buffer the transcoder reuses, so
/// the steady-state per-frame path allocates nothing.
#[derive(Debug, Clone)]
pub struct InboundTranscoder {
    mode: AudioMode,
    upsampler: Upsampler,
    pcm8k: Vec<i16>,
    pcm24k: Vec<i16>,
    bytes: Vec<u8>,
}

impl InboundTranscoder {
    pub fn new(mode: AudioMode) -> Self {
        Self {
            mode,
            upsampler: Upsampler::new(),
            pcm8k: Vec::with_capacity(160),
            pcm24k: Vec::with_capacity(480),
            bytes: Vec::with_capacity(960),
        }
    }

    pub fn mode(&self) -> AudioMode {
        self.mode
    }

    /// Returns `ulaw` in the model's input format: PCM16 LE 24 kHz (3 × 2
    /// bytes per input byte) or, in pcmu mode, the input itself.
    pub fn transcode(&mut self, ulaw: &[u8]) -> &[u8] {
        self.bytes.clear();
        match self.mode {
            AudioMode::Pcmu => self.bytes.extend_from_slice(ulaw),
            AudioMode::Pcm16 => {
                self.pcm8k.clear();
                g711::decode_into(ulaw, &mut self.pcm8k);
                self.pcm24k.clear();
                self.upsampler.process(&self.pcm8k, &mut self.pcm24k);
                extend_le(&mut self.bytes, &self.pcm24k);
            }
        }
        &self.bytes
    }

    /// Returns the audio still inside the resampler (2.5 ms) and starts over
    /// from silence; empty in pcmu mode.
    pub fn flush(&mut self) -> &[u8] {
        self.bytes.clear();
        if self.mode == AudioMode::Pcm16 {
            self.pcm24k.clear();
            self.upsampler.flush(&mut self.pcm24k);
            extend_le(&mut self.bytes, &self.pcm24k);
        }
        &self.bytes
    }

    /// Drops the resampler state without emitting it.
    pub fn reset(&mut self) {
        self.upsampler.reset();
    }
}

/// Model → caller: the model's output format in, μ-law 8 kHz out.
///
/// One per call. The output is a slice of a buffer the transcoder reuses, so
/// the steady-state per-frame path allocates nothing.
#[derive(Debug, Clone)]
pub struct OutboundTranscoder {
    mode: AudioMode,
    downsampler: Downsampler,
    pcm24k: Vec<i16>,
    pcm8k: Vec<i16>,
    bytes: Vec<u8>,
}

impl OutboundTranscoder {
    pub fn new(mode: AudioMode) -> Self {
        Self {
            mode,
            downsampler: Downsampler::new(),
            // Grown to the largest delta on first use and reused from then
            // on; reserving for a 100 ms delta up front cost every call
            // 14 KB, in pcmu mode for buffers it never touches.
            pcm24k: Vec::new(),
            pcm8k: Vec::new(),
            bytes: Vec::new(),
        }
    }

    pub fn mode(&self) -> AudioMode {
        self.mode
    }

    /// Returns `model` audio as μ-law 8 kHz. In pcm16 mode the input must be
    /// whole little-endian samples: an odd byte count is rejected before any
    /// state changes, so the stream stays aligned for the next delta.
    pub fn transcode(&mut self, model: &[u8]) -> Result<&[u8], AudioError> {
        self.bytes.clear();
        match self.mode {
            AudioMode::Pcmu => self.bytes.extend_from_slice(model),
            AudioMode::Pcm16 => {
                if model.len() % 2 != 0 {
                    return Err(AudioError::OddByteCount(model.len()));
                }
                self.pcm24k.clear();
                self.pcm24k.extend(
                    model
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
                self.pcm8k.clear();
                self.downsampler.process(&self.pcm24k, &mut self.pcm8k);
                g711::encode_into(&self.pcm8k, &mut self.bytes);
            }
        }
        Ok(&self.bytes)
    }

    /// Returns the audio still inside the resampler (the last 2.5 ms of the
    /// response) and starts over from silence; empty in pcmu mode.
    pub fn flush(&mut self) -> &[u8] {
        self.bytes.clear();
        if self.mode == AudioMode::Pcm16 {
            self.pcm8k.clear();
            self.downsampler.flush(&mut self.pcm8k);
            g711::encode_into(&self.pcm8k, &mut self.bytes);
        }
        &self.bytes
    }

    /// Drops the resampler state without emitting it: on barge-in the rest of
    /// the cancelled response must not leak into the next one.
    pub fn reset(&mut self) {
        self.downsampler.reset();
    }
}

/// Appends `samples` as PCM16 LE. Written into a pre-sized slice: pushing
/// two bytes at a time checked the capacity for every sample.
fn extend_le(bytes: &mut Vec<u8>, samples: &[i16]) {
    let start = bytes.len();
    bytes.resize(start + samples.len() * 2, 0);
    for (le, s) in bytes[start..].chunks_exact_mut(2).zip(samples) {
        le.copy_from_slice(&s.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::measure::{sine, tone_amplitude};
    use super::*;

    fn ulaw_sine(freq: f64, len: usize) -> Vec<u8> {
        let mut codes = Vec::new();
        g711::encode_into(&sine(freq, 8000, 12_000.0, len), &mut codes);
        codes
    }

    fn round_trip(codes: &[u8], frame: usize) -> Vec<u8> {
        let mut inbound = InboundTranscoder::new(AudioMode::Pcm16);
        let mut outbound = OutboundTranscoder::new(AudioMode::Pcm16);
        let mut out = Vec::new();
        for chunk in codes.chunks(frame) {
            let pcm = inbound.transcode(chunk).to_vec();
            assert_eq!(pcm.len(), chunk.len() * 6);
            out.extend_from_slice(outbound.transcode(&pcm).unwrap());
        }
        let tail = inbound.flush().to_vec();
        out.extend_from_slice(outbound.transcode(&tail).unwrap());
        out.extend_from_slice(outbound.flush());
        out
    }

    #[test]
    fn sine_survives_the_round_trip() {
        let codes = ulaw_sine(1000.0, 8000);
        let back = round_trip(&codes, 160);
        // 20 + 20 samples of delay, all flushed out at the end.
        let delay = 2 * resample::DELAY_SAMPLES_24K / 3;
        assert_eq!(back.len(), codes.len() + delay);
        let mut original = Vec::new();
        g711::decode_into(&codes, &mut original);
        let mut returned = Vec::new();
        g711::decode_into(&back[delay..], &mut returned);
        // Sample by sample after the delay, within μ-law's own step size
        // (two quantizations, about 1/16 of the level).
        let (window_in, window_out) = (&original[800..7200], &returned[800..7200]);
        for (n, (&a, &b)) in window_in.iter().zip(window_out).enumerate() {
            let tolerance = 64 + i32::from(a).abs() / 12;
            assert!(
                (i32::from(a) - i32::from(b)).abs() <= tolerance,
                "sample {n}: {a} vs {b}"
            );
        }
        let ratio =
            tone_amplitude(window_out, 8000, 1000.0) / tone_amplitude(window_in, 8000, 1000.0);
        assert!((20.0 * ratio.log10()).abs() < 0.5, "gain {ratio}");
    }

    #[test]
    fn frame_splits_do_not_change_the_output() {
        let codes = ulaw_sine(700.0, 4000);
        let whole = round_trip(&codes, codes.len());
        for frame in [1, 159, 160, 161, 480, 999] {
            assert!(round_trip(&codes, frame) == whole, "frame {frame}");
        }
        // The outbound side split at odd 24 kHz sample counts.
        let mut inbound = InboundTranscoder::new(AudioMode::Pcm16);
        let pcm = inbound.transcode(&codes).to_vec();
        let mut outbound = OutboundTranscoder::new(AudioMode::Pcm16);
        let one_shot = outbound.transcode(&pcm).unwrap().to_vec();
        outbound.reset();
        let mut split = Vec::new();
        for chunk in pcm.chunks(2 * 161) {
            split.extend_from_slice(outbound.transcode(chunk).unwrap());
        }
        assert!(split == one_shot);
    }

    #[test]
    fn pcmu_passes_through_untouched() {
        let codes: Vec<u8> = (0..=255).collect();
        let mut inbound = InboundTranscoder::new(AudioMode::Pcmu);
        let mut outbound = OutboundTranscoder::new(AudioMode::Pcmu);
        assert_eq!(inbound.transcode(&codes), &codes[..]);
        assert!(inbound.flush().is_empty());
        // Odd lengths are fine for μ-law.
        assert_eq!(outbound.transcode(&codes[..3]), Ok(&codes[..3]));
        assert!(outbound.flush().is_empty());
    }

    #[test]
    fn odd_byte_count_is_an_error_and_leaves_state_alone() {
        let mut pcm = Vec::new();
        for s in sine(500.0, 24_000, 8000.0, 960) {
            pcm.extend_from_slice(&s.to_le_bytes());
        }
        let mut clean = OutboundTranscoder::new(AudioMode::Pcm16);
        let expected = clean.transcode(&pcm).unwrap().to_vec();

        let mut outbound = OutboundTranscoder::new(AudioMode::Pcm16);
        assert_eq!(
            outbound.transcode(&pcm[..3]),
            Err(AudioError::OddByteCount(3))
        );
        assert_eq!(
            AudioError::OddByteCount(3).to_string(),
            "PCM16 input has an odd byte count (3)"
        );
        assert_eq!(outbound.transcode(&pcm).unwrap(), &expected[..]);
    }

    #[test]
    fn reset_drops_the_cancelled_response() {
        let mut pcm = Vec::new();
        for s in sine(500.0, 24_000, 8000.0, 480) {
            pcm.extend_from_slice(&s.to_le_bytes());
        }
        let mut outbound = OutboundTranscoder::new(AudioMode::Pcm16);
        let first = outbound.transcode(&pcm).unwrap().to_vec();
        outbound.transcode(&pcm).unwrap();
        outbound.reset();
        assert_eq!(outbound.transcode(&pcm).unwrap(), &first[..]);
    }

    #[test]
    fn buffers_are_reused_once_warm() {
        let codes = ulaw_sine(300.0, 160);
        let mut inbound = InboundTranscoder::new(AudioMode::Pcm16);
        let mut outbound = OutboundTranscoder::new(AudioMode::Pcm16);
        let pcm = inbound.transcode(&codes).to_vec();
        outbound.transcode(&pcm).unwrap();
        let first_in = inbound.transcode(&codes).as_ptr();
        let first_out = outbound.transcode(&pcm).unwrap().as_ptr();
        for _ in 0..50 {
            assert_eq!(inbound.transcode(&codes).as_ptr(), first_in);
            assert_eq!(outbound.transcode(&pcm).unwrap().as_ptr(), first_out);
        }
    }

    #[test]
    fn audio_mode_names() {
        assert_eq!(AudioMode::default(), AudioMode::Pcm16);
        for mode in [AudioMode::Pcm16, AudioMode::Pcmu] {
            assert_eq!(mode.to_string().parse::<AudioMode>(), Ok(mode));
        }
        assert_eq!("pcmu".parse::<AudioMode>(), Ok(AudioMode::Pcmu));
        assert!("PCMU".parse::<AudioMode>().is_err());
        assert_eq!(
            "g729".parse::<AudioMode>().unwrap_err().to_string(),
            "unknown audio mode \"g729\" (expected \"pcm16\" or \"pcmu\")"
        );
    }
}
