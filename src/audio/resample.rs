//! Streaming resamplers between the telephone rate (8 kHz) and the Realtime
//! API's rate (24 kHz).
//!
//! Both directions use one linear-phase equiripple lowpass (`fir.rs`, made by
//! `scripts/design_fir.py`: 121 taps, flat within ±0.16 dB to 3.4 kHz,
//! ≈ 80 dB down from 4 kHz) in polyphase form, so the work per output sample
//! is a single short dot product and the delay is half the filter: 60 samples at 24 kHz = 2.5 ms each way. A generic
//! resampler library would cost several times that delay for the same
//! rejection (an FFT resampler fitting 20 ms frames delays 10 ms), and the
//! delay is added to every conversational turn.
//!
//! The arithmetic is `f32` with a fixed summation order. Q15 coefficients
//! would raise this filter's stopband to −69.5 dB (over the −70 dB bar), and
//! with Σ|taps| ≈ 2.1 a full-scale input could overflow an i32 accumulator.
//! The fixed order makes the output bit-identical however the input is split
//! into frames, and on every platform (Rust never reassociates or fuses float
//! operations on its own).
//!
//! Both types are causal and keep their state between calls: feed them the
//! frames of a stream in order, in any sizes, and the output equals what one
//! call with the whole stream would give.

use std::time::Duration;

use super::fir::TAPS;

/// Algorithmic delay of either resampler, in 24 kHz samples: the filter's
/// group delay, (N − 1) / 2. It is a multiple of 3 so that it is also a whole
/// number of 8 kHz samples (20).
pub const DELAY_SAMPLES_24K: usize = (TAPS.len() - 1) / 2;

const _: () = assert!(TAPS.len() % 2 == 1 && DELAY_SAMPLES_24K % 3 == 0);

/// The same delay in 8 kHz samples.
const DELAY_SAMPLES_8K: usize = DELAY_SAMPLES_24K / 3;

/// SIMD-friendly lengths: every dot product runs over whole chunks of
/// [`LANES`], the missing taps being zeros at the oldest end of the window.
/// Four: one SSE register of `f32` on baseline x86-64. Eight padded the
/// upsampler's 41-tap branches to 48 and cost 5.5 % more instructions per
/// call-second in pcm16 (`scripts/instructions`).
const LANES: usize = 4;
const fn padded(taps: usize) -> usize {
    taps.div_ceil(LANES) * LANES
}

/// Taps per polyphase branch of the upsampler: ⌈121 / 3⌉ = 41, padded to 44.
const BRANCH: usize = padded(TAPS.len().div_ceil(3));
/// Taps of the downsampler: 121, padded to 124.
const DOWN: usize = padded(TAPS.len());

/// The algorithmic delay as a duration (2.5 ms).
pub const fn delay() -> Duration {
    Duration::from_nanos(DELAY_SAMPLES_24K as u64 * 1_000_000_000 / 24_000)
}

/// Upsampler branches, each time-reversed so a branch lines up with the
/// newest-last input window, and scaled by 3 because zero-stuffing leaves
/// only every third sample non-zero (one third of the energy).
static UP_BRANCHES: [[f32; BRANCH]; 3] = build_up_branches();

/// Downsampler taps, time-reversed (a no-op for this symmetric filter, kept
/// so the code does not silently depend on symmetry).
static DOWN_TAPS: [f32; DOWN] = build_down_taps();

const fn build_up_branches() -> [[f32; BRANCH]; 3] {
    let mut branches = [[0.0f32; BRANCH]; 3];
    let mut phase = 0;
    while phase < 3 {
        let mut k = 0;
        while 3 * k + phase < TAPS.len() {
            branches[phase][BRANCH - 1 - k] = (3.0 * TAPS[3 * k + phase]) as f32;
            k += 1;
        }
        phase += 1;
    }
    branches
}

const fn build_down_taps() -> [f32; DOWN] {
    let mut taps = [0.0f32; DOWN];
    let mut j = 0;
    while j < TAPS.len() {
        taps[DOWN - 1 - j] = TAPS[j] as f32;
        j += 1;
    }
    taps
}

/// Sums the lanes in a fixed tree order.
#[inline]
fn reduce(lanes: [f32; LANES]) -> f32 {
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
}

/// Dot product with [`LANES`] independent partial sums: the compiler maps the
/// lanes onto SIMD registers without having to reorder float additions
/// (which it may not do), and the order is fixed by this code, not by frame
/// boundaries.
#[inline]
fn dot(window: &[f32], coeffs: &[f32; DOWN]) -> f32 {
    let window = &window[..DOWN];
    let mut lanes = [0.0f32; LANES];
    for (w, c) in window.chunks_exact(LANES).zip(coeffs.chunks_exact(LANES)) {
        for ((lane, w), c) in lanes.iter_mut().zip(w).zip(c) {
            *lane += w * c;
        }
    }
    reduce(lanes)
}

/// The three upsampler branches over one window in a single pass, so each
/// input chunk is loaded once for three outputs.
#[inline]
fn dot3(window: &[f32]) -> [f32; 3] {
    let window = &window[..BRANCH];
    let mut lanes = [[0.0f32; LANES]; 3];
    for (i, w) in window.chunks_exact(LANES).enumerate() {
        for (lanes, branch) in lanes.iter_mut().zip(&UP_BRANCHES) {
            let c = &branch[i * LANES..(i + 1) * LANES];
            for ((lane, w), c) in lanes.iter_mut().zip(w).zip(c) {
                *lane += w * c;
            }
        }
    }
    lanes.map(reduce)
}

/// Rounds to the nearest integer and saturates to the i16 range.
///
/// Adding ±0.5 and truncating avoids a `roundf` library call on baseline
/// x86-64 (no SSE4.1); `as` saturates, so filter overshoot on full-scale
/// input clips instead of wrapping.
#[inline]
fn to_i16(x: f32) -> i16 {
    (x + 0.5f32.copysign(x)) as i16
}

/// 8 kHz → 24 kHz. Every input sample yields exactly three output samples,
/// so no input is ever held back.
#[derive(Debug, Clone)]
pub struct Upsampler {
    /// The last `BRANCH - 1` inputs, then the frame being processed.
    history: Vec<f32>,
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler {
    /// See [`DELAY_SAMPLES_24K`].
    pub const DELAY_SAMPLES_24K: usize = DELAY_SAMPLES_24K;

    pub fn new() -> Self {
        let mut history = Vec::with_capacity(BRANCH - 1 + 480);
        history.resize(BRANCH - 1, 0.0);
        Self { history }
    }

    /// See [`delay`].
    pub const fn delay() -> Duration {
        delay()
    }

    /// Appends `3 * input.len()` samples to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.history.extend(input.iter().map(|&s| f32::from(s)));
        out.reserve(3 * input.len());
        for window in self.history.windows(BRANCH) {
            out.extend(dot3(window).map(to_i16));
        }
        self.history.drain(..input.len());
    }

    /// Emits the last [`DELAY_SAMPLES_24K`] samples the filter still holds,
    /// so the output covers the whole input, then starts over from silence.
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        self.process(&[0; DELAY_SAMPLES_8K], out);
        self.reset();
    }

    /// Forgets the stream so far, as if newly constructed.
    pub fn reset(&mut self) {
        self.history.clear();
        self.history.resize(BRANCH - 1, 0.0);
    }
}

/// 24 kHz → 8 kHz. Keeps one output per three inputs; inputs that do not
/// complete a group wait in the history for the next call, so the output
/// phase never depends on frame sizes.
#[derive(Debug, Clone)]
pub struct Downsampler {
    /// The last `DOWN - 1` inputs, then the frame being processed.
    history: Vec<f32>,
    /// Index in `history` of the input sample the next output is aligned to.
    next: usize,
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Downsampler {
    /// See [`DELAY_SAMPLES_24K`].
    pub const DELAY_SAMPLES_24K: usize = DELAY_SAMPLES_24K;

    pub fn new() -> Self {
        let mut history = Vec::with_capacity(DOWN - 1 + 960);
        history.resize(DOWN - 1, 0.0);
        Self {
            history,
            next: DOWN - 1,
        }
    }

    /// See [`delay`].
    pub const fn delay() -> Duration {
        delay()
    }

    /// Appends one sample to `out` per three input samples, counting from the
    /// first sample since construction or reset.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.history.extend(input.iter().map(|&s| f32::from(s)));
        out.reserve(input.len() / 3 + 1);
        while self.next < self.history.len() {
            let window = &self.history[self.next + 1 - DOWN..=self.next];
            out.push(to_i16(dot(window, &DOWN_TAPS)));
            self.next += 3;
        }
        let consumed = self.history.len() - (DOWN - 1);
        self.history.drain(..consumed);
        self.next -= consumed;
    }

    /// Emits the output the filter still holds (feeds
    /// [`DELAY_SAMPLES_24K`] zeros), then starts over from silence and phase 0.
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        self.process(&[0; DELAY_SAMPLES_24K], out);
        self.reset();
    }

    /// Forgets the stream so far, as if newly constructed.
    pub fn reset(&mut self) {
        self.history.clear();
        self.history.resize(DOWN - 1, 0.0);
        self.next = DOWN - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::measure::{self, sine};

    /// Speech-like test input: a few tones plus a deterministic pseudo-random
    /// component, so every tap and every rounding path is exercised.
    fn test_signal(len: usize, rate: u32) -> Vec<i16> {
        let a = sine(440.0, rate, 9000.0, len);
        let b = sine(3100.0, rate, 6000.0, len);
        let mut state = 0x1234_5678u32;
        a.iter()
            .zip(&b)
            .map(|(&x, &y)| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (state >> 16) as i16 / 4;
                x.saturating_add(y).saturating_add(noise)
            })
            .collect()
    }

    const FRAME_PATTERNS: &[&[usize]] = &[
        &[1],
        &[159],
        &[160],
        &[161],
        &[480],
        &[4800],
        &[1, 159, 160, 161, 480, 4800, 7, 2, 3],
    ];

    fn in_frames(input: &[i16], sizes: &[usize], mut process: impl FnMut(&[i16])) {
        let mut rest = input;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (frame, tail) = rest.split_at(size.min(rest.len()));
            process(frame);
            rest = tail;
        }
    }

    #[test]
    fn upsampler_streaming_equals_one_shot() {
        let input = test_signal(12_345, 8000);
        let mut whole = Vec::new();
        let mut up = Upsampler::new();
        up.process(&input, &mut whole);
        up.flush(&mut whole);
        assert_eq!(whole.len(), 3 * input.len() + DELAY_SAMPLES_24K);
        for sizes in FRAME_PATTERNS {
            let mut streamed = Vec::new();
            in_frames(&input, sizes, |frame| up.process(frame, &mut streamed));
            up.flush(&mut streamed);
            assert!(streamed == whole, "frame sizes {sizes:?}");
        }
    }

    #[test]
    fn downsampler_streaming_equals_one_shot() {
        let input = test_signal(3 * 12_345 + 2, 24_000);
        let mut whole = Vec::new();
        let mut down = Downsampler::new();
        down.process(&input, &mut whole);
        down.flush(&mut whole);
        assert_eq!(whole.len(), (input.len() + DELAY_SAMPLES_24K).div_ceil(3));
        for sizes in FRAME_PATTERNS {
            let mut streamed = Vec::new();
            in_frames(&input, sizes, |frame| down.process(frame, &mut streamed));
            down.flush(&mut streamed);
            assert!(streamed == whole, "frame sizes {sizes:?}");
        }
    }

    #[test]
    fn flush_and_reset_start_a_fresh_stream() {
        let input = test_signal(1000, 8000);
        let fresh = |input: &[i16]| {
            let mut out = Vec::new();
            Upsampler::new().process(input, &mut out);
            out
        };
        let mut up = Upsampler::new();
        let mut out = Vec::new();
        up.process(&input, &mut out);
        up.flush(&mut out);
        out.clear();
        up.process(&input, &mut out);
        assert_eq!(out, fresh(&input));
        up.reset();
        out.clear();
        up.process(&input, &mut out);
        assert_eq!(out, fresh(&input));

        // The downsampler's phase restarts too: 2 leftover samples must not
        // shift the next stream.
        let input = test_signal(1000, 24_000);
        let mut expected = Vec::new();
        Downsampler::new().process(&input, &mut expected);
        let mut down = Downsampler::new();
        let mut out = Vec::new();
        down.process(&input[..2], &mut out);
        down.reset();
        out.clear();
        down.process(&input, &mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn passband_is_flat_within_half_a_db() {
        for freq in (100..=3400).step_by(100).map(f64::from) {
            for (name, gain) in [
                ("up", measure::upsampler_gain_db(freq)),
                ("down", measure::downsampler_gain_db(freq)),
                ("round trip", measure::round_trip_gain_db(freq)),
            ] {
                assert!(gain.abs() <= 0.5, "{name} gain {gain:.3} dB at {freq} Hz");
            }
        }
    }

    #[test]
    fn downsampler_rejects_what_would_alias_by_70_db() {
        let freqs = [4000, 4100, 4500, 5000, 6000, 8000, 10_000, 11_000, 11_990];
        for freq in freqs.into_iter().chain((4000..12_000).step_by(50)) {
            let rejection = measure::downsampler_rejection_db(f64::from(freq));
            assert!(rejection >= 70.0, "{rejection:.1} dB at {freq} Hz");
        }
    }

    #[test]
    fn upsampler_images_are_70_db_down() {
        for freq in (100..4000).step_by(50).chain([3990]) {
            let rejection = measure::upsampler_image_rejection_db(f64::from(freq));
            assert!(rejection >= 70.0, "{rejection:.1} dB at {freq} Hz");
        }
    }

    #[test]
    fn stated_delay_is_the_measured_delay_and_at_most_3_ms() {
        assert_eq!(measure::upsampler_measured_delay(), DELAY_SAMPLES_24K);
        assert_eq!(measure::downsampler_measured_delay(), DELAY_SAMPLES_24K);
        assert_eq!(Upsampler::DELAY_SAMPLES_24K, DELAY_SAMPLES_24K);
        assert_eq!(Downsampler::DELAY_SAMPLES_24K, DELAY_SAMPLES_24K);
        assert_eq!(delay(), Duration::from_micros(2500));
        assert_eq!(Upsampler::delay(), delay());
        assert_eq!(Downsampler::delay(), delay());
        assert!(delay() <= Duration::from_millis(3));
    }

    #[test]
    fn full_scale_input_saturates_instead_of_wrapping() {
        // A full-scale square wave overshoots (Gibbs); the output must clip.
        let input: Vec<i16> = (0..2000)
            .map(|n| {
                if (n / 20) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let mut up = Vec::new();
        Upsampler::new().process(&input, &mut up);
        assert!(up.contains(&i16::MAX) && up.contains(&i16::MIN));
        let mut down = Vec::new();
        Downsampler::new().process(&up, &mut down);
        // No sign flips from wrap-around: settled output follows the input's sign.
        for (n, &y) in down.iter().enumerate().skip(40).take(1900) {
            let x = input[n - 40];
            let phase = (n - 40) % 20;
            if (3..17).contains(&phase) {
                assert_eq!(y.signum(), x.signum(), "sample {n}");
            }
        }
    }

    #[test]
    fn silence_stays_silent() {
        let mut out = Vec::new();
        Upsampler::new().process(&[0; 160], &mut out);
        assert!(out.iter().all(|&s| s == 0));
        out.clear();
        Downsampler::new().process(&[0; 480], &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }
}
