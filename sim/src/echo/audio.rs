//! Audio helpers of the echo peer: the session's audio formats, decoding
//! and rendering of PCM16 and μ-law, and the buffer of captured input. Kept
//! apart from the protocol state machine so each can be read on its own.

use serde_json::{json, Value};

use super::vad::TICKS_PER_MS;
use callbridge::audio::g711;
use callbridge::audio::resample::{Downsampler, Upsampler};

/// The longest turn kept (and spoken back). Bounds memory per session when a
/// caller never stops talking, or a client never commits in manual mode.
const MAX_CAPTURE_MS: u64 = 30_000;

/// An audio format of the session, input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// PCM16 little-endian mono, 24 kHz (GA `audio/pcm`, beta `pcm16`).
    Pcm16,
    /// G.711 μ-law, 8 kHz (GA `audio/pcmu`, beta `g711_ulaw`).
    Pcmu,
}

impl Format {
    pub(crate) fn ticks_per_sample(self) -> u64 {
        match self {
            Format::Pcm16 => 1,
            Format::Pcmu => 3,
        }
    }

    pub(crate) fn bytes_per_sample(self) -> usize {
        match self {
            Format::Pcm16 => 2,
            Format::Pcmu => 1,
        }
    }

    pub(crate) fn bytes_per_ms(self) -> usize {
        match self {
            Format::Pcm16 => 48,
            Format::Pcmu => 8,
        }
    }

    pub(crate) fn samples_per_ms(self) -> u64 {
        match self {
            Format::Pcm16 => 24,
            Format::Pcmu => 8,
        }
    }

    /// Microseconds of audio in `bytes` of this format.
    pub(crate) fn micros(self, bytes: usize) -> u64 {
        match self {
            Format::Pcm16 => bytes as u64 * 1_000_000 / 48_000,
            Format::Pcmu => bytes as u64 * 125,
        }
    }

    pub(crate) fn ga_json(self) -> Value {
        match self {
            Format::Pcm16 => json!({"type": "audio/pcm", "rate": 24000}),
            Format::Pcmu => json!({"type": "audio/pcmu"}),
        }
    }

    pub(crate) fn beta_name(self) -> &'static str {
        match self {
            Format::Pcm16 => "pcm16",
            Format::Pcmu => "g711_ulaw",
        }
    }
}

/// The input audio kept for the turn in progress: samples at the input
/// format's rate, the first at tick `start`.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) samples: Vec<i16>,
    pub(crate) start: u64,
    ticks_per_sample: u64,
}

impl Capture {
    pub(crate) fn new(format: Format, start: u64) -> Self {
        Self {
            samples: Vec::new(),
            start,
            ticks_per_sample: format.ticks_per_sample(),
        }
    }

    pub(crate) fn end(&self) -> u64 {
        self.start + self.samples.len() as u64 * self.ticks_per_sample
    }

    fn index(&self, tick: u64) -> usize {
        let i = tick.saturating_sub(self.start) / self.ticks_per_sample;
        (i as usize).min(self.samples.len())
    }

    pub(crate) fn slice(&self, from: u64, to: u64) -> &[i16] {
        let (a, b) = (self.index(from), self.index(to));
        &self.samples[a..b.max(a)]
    }

    /// Drops samples before `tick`, but only once at least as many samples
    /// would go as stay: each sample is then moved O(1) times on average,
    /// whatever the frame size.
    pub(crate) fn drop_before(&mut self, tick: u64) {
        let n = self.index(tick);
        if n > 0 && n >= self.samples.len() - n {
            self.samples.drain(..n);
            self.start += n as u64 * self.ticks_per_sample;
        }
    }

    /// Keeps at most `MAX_CAPTURE_MS` (dropping in steps of a quarter of it).
    pub(crate) fn cap(&mut self) {
        let max = (MAX_CAPTURE_MS * TICKS_PER_MS / self.ticks_per_sample) as usize;
        if self.samples.len() > max + max / 4 {
            let n = self.samples.len() - max;
            self.samples.drain(..n);
            self.start += n as u64 * self.ticks_per_sample;
        }
    }
}

pub(crate) fn to_ms(ticks: u64) -> u64 {
    ticks / TICKS_PER_MS
}

pub(crate) fn decode_pcm(format: Format, bytes: &[u8], out: &mut Vec<i16>) {
    out.clear();
    match format {
        Format::Pcm16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        ),
        Format::Pcmu => g711::decode_into(bytes, out),
    }
}

pub(crate) fn extend_le(out: &mut Vec<u8>, samples: &[i16]) {
    out.reserve(samples.len() * 2);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// A soft two-note chime (A4 then E5, -16 dBFS, 10 ms fades) of `ms`
/// milliseconds at `samples_per_ms` kHz: what the peer "says" when it has
/// no caller audio to echo (a greeting, a goodbye, a tool result). Shared
/// by both protocols.
pub(crate) fn chime_samples(samples_per_ms: u64, ms: u64) -> Vec<i16> {
    let rate = samples_per_ms as f64 * 1000.0;
    let n = (ms * samples_per_ms) as usize;
    let fade = (10 * samples_per_ms) as usize;
    (0..n)
        .map(|i| {
            let freq = if i < n / 2 { 440.0 } else { 659.25 };
            let t = i as f64 / rate;
            let edge = i.min(n - 1 - i).min(fade) as f64 / fade.max(1) as f64;
            (5200.0 * edge * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// [`chime_samples`] of `ms` milliseconds, encoded in a Realtime `format`.
pub(crate) fn chime(format: Format, ms: u64) -> Vec<u8> {
    let samples = chime_samples(format.samples_per_ms(), ms);
    let mut out = Vec::with_capacity(samples.len() * format.bytes_per_sample());
    match format {
        Format::Pcm16 => extend_le(&mut out, &samples),
        Format::Pcmu => g711::encode_into(&samples, &mut out),
    }
    out
}

/// Renders a whole captured turn in `output` format, with fresh resamplers
/// flushed at the end so the answer's last 2.5 ms are not lost.
pub(crate) fn render(samples: &[i16], input: Format, output: Format) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(samples.len() * 2 * 3);
    let mut converted = Vec::new();
    match (input, output) {
        (Format::Pcm16, Format::Pcm16) => extend_le(&mut bytes, samples),
        (Format::Pcmu, Format::Pcmu) => g711::encode_into(samples, &mut bytes),
        (Format::Pcmu, Format::Pcm16) => {
            let mut up = Upsampler::new();
            up.process(samples, &mut converted);
            up.flush(&mut converted);
            extend_le(&mut bytes, &converted);
        }
        (Format::Pcm16, Format::Pcmu) => {
            let mut down = Downsampler::new();
            down.process(samples, &mut converted);
            down.flush(&mut converted);
            g711::encode_into(&converted, &mut bytes);
        }
    }
    bytes
}
