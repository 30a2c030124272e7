//! Measurements of the resamplers on synthetic signals: the numbers behind
//! the quality bars (flat passband, alias/image rejection, stated delay).
//!
//! The unit tests assert on these and `examples/resampler_report.rs` prints
//! them, so the README quotes exactly what the tests check, measured on the
//! Rust implementation (not on the filter design).
//!
//! Tones are measured with a single-bin DFT (Goertzel) over 0.1 s windows at
//! frequencies that are multiples of 10 Hz: the window then holds a whole
//! number of cycles of every tone involved, so there is no leakage between
//! them and a −80 dB image next to a 0 dB tone is measured as such.

use std::fmt;

use super::resample::{Downsampler, Upsampler, DELAY_SAMPLES_24K};

/// Measurement window: 0.1 s, i.e. 10 Hz DFT bins at any rate.
const WINDOW_8K: usize = 800;
const WINDOW_24K: usize = 2400;
/// Input samples (8 kHz) skipped before the window so the filter has settled.
const SETTLE_8K: usize = 60;
/// Test-tone amplitude: near full scale, so i16 rounding noise (≈ −100 dB)
/// stays far below the rejection being measured.
const AMPLITUDE: f64 = 30_000.0;

/// A sine of `amplitude` at `freq` Hz sampled at `rate`, rounded to i16.
pub fn sine(freq: f64, rate: u32, amplitude: f64, len: usize) -> Vec<i16> {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    (0..len)
        .map(|n| (amplitude * (w * n as f64).sin()).round() as i16)
        .collect()
}

/// Amplitude of the `freq` component of `signal` (Goertzel). Exact only when
/// the signal holds a whole number of cycles of `freq` and of every other
/// component; otherwise neighbouring tones leak in.
pub fn tone_amplitude(signal: &[i16], rate: u32, freq: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in signal {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    2.0 * power.sqrt() / signal.len() as f64
}

/// Root mean square of `signal`.
pub fn rms(signal: &[i16]) -> f64 {
    if signal.is_empty() {
        return 0.0;
    }
    let sum: f64 = signal.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / signal.len() as f64).sqrt()
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.log10()
}

/// Gain in dB of 8 kHz → 24 kHz for a tone at `freq`.
pub fn upsampler_gain_db(freq: f64) -> f64 {
    let input = sine(freq, 8000, AMPLITUDE, SETTLE_8K + WINDOW_8K + SETTLE_8K);
    let mut out = Vec::new();
    Upsampler::new().process(&input, &mut out);
    let window = &out[3 * SETTLE_8K..3 * SETTLE_8K + WINDOW_24K];
    let reference = tone_amplitude(&input[SETTLE_8K..SETTLE_8K + WINDOW_8K], 8000, freq);
    db(tone_amplitude(window, 24_000, freq) / reference)
}

/// Gain in dB of 24 kHz → 8 kHz for a tone at `freq`.
pub fn downsampler_gain_db(freq: f64) -> f64 {
    let input = sine(
        freq,
        24_000,
        AMPLITUDE,
        3 * (SETTLE_8K + WINDOW_8K + SETTLE_8K),
    );
    let mut out = Vec::new();
    Downsampler::new().process(&input, &mut out);
    let window = &out[SETTLE_8K..SETTLE_8K + WINDOW_8K];
    let reference = tone_amplitude(
        &input[3 * SETTLE_8K..3 * SETTLE_8K + WINDOW_24K],
        24_000,
        freq,
    );
    db(tone_amplitude(window, 8000, freq) / reference)
}

/// Gain in dB of 8 kHz → 24 kHz → 8 kHz (what the model hears, re-encoded).
pub fn round_trip_gain_db(freq: f64) -> f64 {
    let input = sine(freq, 8000, AMPLITUDE, 2 * SETTLE_8K + WINDOW_8K + SETTLE_8K);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    Upsampler::new().process(&input, &mut up);
    Downsampler::new().process(&up, &mut down);
    let start = 2 * SETTLE_8K;
    let reference = tone_amplitude(&input[start..start + WINDOW_8K], 8000, freq);
    db(tone_amplitude(&down[start..start + WINDOW_8K], 8000, freq) / reference)
}

/// Rejection in dB (positive = below the input) of a 24 kHz tone at `freq`
/// (≥ 4 kHz, so all of it would alias): output RMS relative to input RMS.
pub fn downsampler_rejection_db(freq: f64) -> f64 {
    let input = sine(
        freq,
        24_000,
        AMPLITUDE,
        3 * (SETTLE_8K + WINDOW_8K + SETTLE_8K),
    );
    let mut out = Vec::new();
    Downsampler::new().process(&input, &mut out);
    let residual = rms(&out[SETTLE_8K..SETTLE_8K + WINDOW_8K]).max(f64::MIN_POSITIVE);
    db(rms(&input[3 * SETTLE_8K..3 * SETTLE_8K + WINDOW_24K]) / residual)
}

/// Rejection in dB (positive = below the input tone) of the strongest image
/// the upsampler makes of an 8 kHz tone at `freq` (< 4 kHz): the images at
/// 8000 − f and 8000 + f (those at 16000 ± f fold onto them at 24 kHz).
pub fn upsampler_image_rejection_db(freq: f64) -> f64 {
    let input = sine(freq, 8000, AMPLITUDE, SETTLE_8K + WINDOW_8K + SETTLE_8K);
    let mut out = Vec::new();
    Upsampler::new().process(&input, &mut out);
    let window = &out[3 * SETTLE_8K..3 * SETTLE_8K + WINDOW_24K];
    let image = tone_amplitude(window, 24_000, 8000.0 - freq)
        .max(tone_amplitude(window, 24_000, 8000.0 + freq))
        .max(f64::MIN_POSITIVE);
    db(tone_amplitude(&input[SETTLE_8K..SETTLE_8K + WINDOW_8K], 8000, freq) / image)
}

/// Delay of the upsampler in 24 kHz samples: where an impulse comes out.
pub fn upsampler_measured_delay() -> usize {
    let mut input = vec![0i16; 100];
    input[10] = 10_000;
    let mut out = Vec::new();
    Upsampler::new().process(&input, &mut out);
    peak_index(&out).saturating_sub(3 * 10)
}

/// Delay of the downsampler in 24 kHz samples: where an impulse comes out.
pub fn downsampler_measured_delay() -> usize {
    let mut input = vec![0i16; 300];
    input[30] = 30_000;
    let mut out = Vec::new();
    Downsampler::new().process(&input, &mut out);
    (3 * peak_index(&out)).saturating_sub(30)
}

fn peak_index(signal: &[i16]) -> usize {
    signal
        .iter()
        .enumerate()
        .max_by_key(|(_, x)| x.unsigned_abs())
        .map_or(0, |(i, _)| i)
}

/// A frequency and what was measured there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AtFreq {
    pub freq: f64,
    pub db: f64,
}

/// Gain range over a sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GainRange {
    pub min: AtFreq,
    pub max: AtFreq,
}

impl GainRange {
    /// Largest deviation from 0 dB.
    pub fn deviation_db(&self) -> f64 {
        self.min.db.abs().max(self.max.db.abs())
    }
}

/// Everything the quality bars talk about, measured on the implementation.
#[derive(Debug, Clone, PartialEq)]
pub struct ResamplerReport {
    pub step_hz: f64,
    pub passband_up: GainRange,
    pub passband_down: GainRange,
    pub passband_round_trip: GainRange,
    /// Weakest rejection of 24 kHz tones from 4 kHz to 12 kHz by the downsampler.
    pub worst_alias_rejection: AtFreq,
    /// Weakest rejection of upsampler images of 8 kHz tones from 100 Hz to 4 kHz.
    pub worst_image_rejection: AtFreq,
    pub delay_samples_24k: usize,
    pub up_measured_delay_24k: usize,
    pub down_measured_delay_24k: usize,
}

/// Multiples of `step_hz` (itself a multiple of 10 Hz) in `from..=to`.
fn sweep(from: f64, to: f64, step_hz: f64) -> impl Iterator<Item = f64> {
    let count = ((to - from) / step_hz).floor() as usize;
    (0..=count).map(move |i| from + step_hz * i as f64)
}

fn gain_range(freqs: impl Iterator<Item = f64>, gain: impl Fn(f64) -> f64) -> GainRange {
    let mut range = GainRange {
        min: AtFreq {
            freq: 0.0,
            db: f64::INFINITY,
        },
        max: AtFreq {
            freq: 0.0,
            db: f64::NEG_INFINITY,
        },
    };
    for freq in freqs {
        let db = gain(freq);
        if db < range.min.db {
            range.min = AtFreq { freq, db };
        }
        if db > range.max.db {
            range.max = AtFreq { freq, db };
        }
    }
    range
}

/// Runs every measurement, sweeping in steps of `step_hz` (a multiple of
/// 10 Hz; smaller is finer and slower). The passband is 100 Hz – 3.4 kHz.
pub fn resampler_report(step_hz: f64) -> ResamplerReport {
    let passband = || sweep(100.0, 3400.0, step_hz).chain([3400.0]);
    ResamplerReport {
        step_hz,
        passband_up: gain_range(passband(), upsampler_gain_db),
        passband_down: gain_range(passband(), downsampler_gain_db),
        passband_round_trip: gain_range(passband(), round_trip_gain_db),
        worst_alias_rejection: gain_range(
            sweep(4000.0, 11_990.0, step_hz),
            downsampler_rejection_db,
        )
        .min,
        worst_image_rejection: gain_range(
            sweep(100.0, 3990.0, step_hz).chain([3990.0]),
            upsampler_image_rejection_db,
        )
        .min,
        delay_samples_24k: DELAY_SAMPLES_24K,
        up_measured_delay_24k: upsampler_measured_delay(),
        down_measured_delay_24k: downsampler_measured_delay(),
    }
}

impl fmt::Display for ResamplerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |f: &mut fmt::Formatter<'_>, name: &str, r: &GainRange| {
            writeln!(
                f,
                "passband {name:<10} {:+.3} dB @ {} Hz .. {:+.3} dB @ {} Hz (±{:.3} dB)",
                r.min.db,
                r.min.freq,
                r.max.db,
                r.max.freq,
                r.deviation_db()
            )
        };
        writeln!(f, "sweep step {} Hz, passband 100-3400 Hz", self.step_hz)?;
        range(f, "8k->24k", &self.passband_up)?;
        range(f, "24k->8k", &self.passband_down)?;
        range(f, "round trip", &self.passband_round_trip)?;
        writeln!(
            f,
            "alias rejection (24k->8k, 4-12 kHz tones): worst {:.1} dB @ {} Hz",
            self.worst_alias_rejection.db, self.worst_alias_rejection.freq
        )?;
        writeln!(
            f,
            "image rejection (8k->24k, 0.1-4 kHz tones): worst {:.1} dB @ {} Hz",
            self.worst_image_rejection.db, self.worst_image_rejection.freq
        )?;
        let ms = |samples: usize| samples as f64 / 24.0;
        write!(
            f,
            "delay: stated {} samples @24k ({:.3} ms); measured up {} ({:.3} ms), down {} ({:.3} ms)",
            self.delay_samples_24k,
            ms(self.delay_samples_24k),
            self.up_measured_delay_24k,
            ms(self.up_measured_delay_24k),
            self.down_measured_delay_24k,
            ms(self.down_measured_delay_24k)
        )
    }
}
