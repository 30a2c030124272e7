//! The echo peer's voice activity detector: RMS energy over 20 ms windows.
//!
//! A real Realtime or GPT-Live server uses a neural VAD; the echo peer needs
//! something predictable instead, so that tests can say exactly when a turn
//! starts and ends. Energy is enough for the clean speech fixtures and for a human on a
//! headset, and it depends on nothing but the samples (no clock), so the same
//! audio always gives the same events at the same `audio_*_ms`.
//!
//! Positions are in *ticks*: 24 kHz sample periods since the session's first
//! input audio. One 24 kHz sample is one tick and one 8 kHz sample is three,
//! so a session may switch input formats without its timeline jumping, and
//! `ticks / 24` is milliseconds.
//!
//! The GPT-Live peer has one fixed rate per session, which may be 16 kHz
//! (1.5 ticks a sample), so it uses [`Vad::with_rate`]: its ticks are the
//! samples themselves.

/// Ticks per millisecond.
pub(crate) const TICKS_PER_MS: u64 = 24;

/// Length of one analysis window. 20 ms is what Twilio sends per frame, and
/// short enough that speech onsets are placed to within one frame.
pub(crate) const WINDOW_MS: u64 = 20;

/// Loud windows in a row needed to declare speech (60 ms): one click or one
/// noisy frame must not start a turn, let alone barge in on a response.
pub(crate) const START_WINDOWS: u32 = 3;

/// The default energy threshold: -40 dBFS RMS over a window, where 0 dBFS is
/// the RMS of a full-scale square wave (32768).
///
/// Telephone line noise and comfort noise sit around -60 to -50 dBFS and
/// digital silence below -70 (μ-law's smallest codes decode to ±8, -72 dBFS);
/// voiced speech normalised the usual way is -30 to -15 dBFS. -40 dBFS sits
/// between the two with 10 dB of margin each side. The quiet tails of words
/// (-45 dBFS) fall below it; that only shortens a turn by a window or two,
/// and [`super::session`] adds a short tail when it speaks the turn back.
pub const DEFAULT_THRESHOLD_DBFS: f32 = -40.0;

/// What a window changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VadEvent {
    /// Speech began at tick `at` (the start of the first of the loud windows
    /// that confirmed it).
    Started { at: u64 },
    /// Speech that began at `start` ended: the last loud window ended at
    /// `voiced_end`, and `at` is where the required silence was complete
    /// (what the Realtime API reports as `audio_end_ms`).
    Stopped {
        start: u64,
        voiced_end: u64,
        at: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Quiet { run: u32, run_start: u64 },
    Speech { start: u64, last_loud_end: u64 },
}

const QUIET: State = State::Quiet {
    run: 0,
    run_start: 0,
};

/// Streaming energy VAD. Feed it every input sample in order, in frames of
/// any size; it keeps the partial window between calls.
#[derive(Debug, Clone)]
pub(crate) struct Vad {
    /// Mean-square threshold in sample units², so a window is compared with
    /// one multiply and no square root or logarithm.
    threshold_ms: f64,
    /// Ticks per millisecond: [`TICKS_PER_MS`] for the Realtime peer's
    /// 24 kHz timeline, the sample rate in kHz for [`Vad::with_rate`].
    ticks_per_ms: u64,
    ticks_per_sample: u64,
    window_samples: u32,
    sum_sq: u64,
    count: u32,
    state: State,
}

impl Vad {
    /// `ticks_per_sample`: 1 for 24 kHz input, 3 for 8 kHz.
    pub(crate) fn new(threshold_dbfs: f32, ticks_per_sample: u64) -> Self {
        let amplitude = 32768.0 * 10f64.powf(f64::from(threshold_dbfs) / 20.0);
        let mut vad = Self {
            threshold_ms: amplitude * amplitude,
            ticks_per_ms: TICKS_PER_MS,
            ticks_per_sample,
            window_samples: 0,
            sum_sq: 0,
            count: 0,
            state: QUIET,
        };
        vad.set_ticks_per_sample(ticks_per_sample);
        vad
    }

    /// A detector whose ticks are the samples themselves, at `samples_per_ms`
    /// kHz (8, 16 or 24): for a session with one fixed rate, such as a
    /// GPT-Live session at 16 kHz, which the 24 kHz timeline cannot count in
    /// whole ticks. Silences passed to [`Vad::process`] are then in samples.
    pub(crate) fn with_rate(threshold_dbfs: f32, samples_per_ms: u64) -> Self {
        let mut vad = Self::new(threshold_dbfs, 1);
        vad.ticks_per_ms = samples_per_ms.max(1);
        vad.set_ticks_per_sample(1);
        vad
    }

    /// Changes the input rate; forgets the partial window and any speech.
    pub(crate) fn set_ticks_per_sample(&mut self, ticks_per_sample: u64) {
        self.ticks_per_sample = ticks_per_sample.max(1);
        self.window_samples = (WINDOW_MS * self.ticks_per_ms / self.ticks_per_sample) as u32;
        self.reset();
    }

    /// Forgets the partial window and any speech in progress, without events.
    pub(crate) fn reset(&mut self) {
        self.sum_sq = 0;
        self.count = 0;
        self.state = QUIET;
    }

    /// The tick where the speech in progress started, if any.
    pub(crate) fn speech_start(&self) -> Option<u64> {
        match self.state {
            State::Speech { start, .. } => Some(start),
            State::Quiet { .. } => None,
        }
    }

    /// The speech in progress, if any: where it started and where its last
    /// loud window ended (so `end - start` is how long it has been voiced,
    /// not counting the silence since).
    pub(crate) fn voiced(&self) -> Option<(u64, u64)> {
        match self.state {
            State::Speech {
                start,
                last_loud_end,
            } => Some((start, last_loud_end)),
            State::Quiet { .. } => None,
        }
    }

    /// Analyses `samples`, the first of which is at tick `start`, and appends
    /// what changed to `events`. Speech ends after `silence_ticks` without a
    /// loud window.
    pub(crate) fn process(
        &mut self,
        samples: &[i16],
        start: u64,
        silence_ticks: u64,
        events: &mut Vec<VadEvent>,
    ) {
        let mut tick = start;
        for &sample in samples {
            let s = i64::from(sample);
            self.sum_sq += (s * s) as u64;
            self.count += 1;
            tick += self.ticks_per_sample;
            if self.count == self.window_samples {
                let loud = self.sum_sq as f64 > self.threshold_ms * f64::from(self.window_samples);
                self.sum_sq = 0;
                self.count = 0;
                self.window(loud, tick, silence_ticks, events);
            }
        }
    }

    fn window(&mut self, loud: bool, end: u64, silence_ticks: u64, events: &mut Vec<VadEvent>) {
        let window_ticks = WINDOW_MS * self.ticks_per_ms;
        match &mut self.state {
            State::Quiet { run, run_start } => {
                if !loud {
                    *run = 0;
                    return;
                }
                if *run == 0 {
                    *run_start = end.saturating_sub(window_ticks);
                }
                *run += 1;
                if *run >= START_WINDOWS {
                    let start = *run_start;
                    self.state = State::Speech {
                        start,
                        last_loud_end: end,
                    };
                    events.push(VadEvent::Started { at: start });
                }
            }
            State::Speech {
                start,
                last_loud_end,
            } => {
                if loud {
                    *last_loud_end = end;
                } else if end - *last_loud_end >= silence_ticks {
                    let event = VadEvent::Stopped {
                        start: *start,
                        voiced_end: *last_loud_end,
                        at: end,
                    };
                    self.state = QUIET;
                    events.push(event);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE_500: u64 = 500 * TICKS_PER_MS;

    fn tone(amplitude: i16, ms: usize, rate: usize) -> Vec<i16> {
        // A square wave: its RMS is its amplitude, which keeps the dBFS
        // arithmetic of these tests exact.
        (0..ms * rate / 1000)
            .map(|i| if i % 8 < 4 { amplitude } else { -amplitude })
            .collect()
    }

    #[test]
    fn speech_needs_three_loud_windows_and_500_ms_of_silence() {
        let mut vad = Vad::new(-40.0, 1);
        let mut events = Vec::new();
        let mut audio = tone(0, 100, 24_000);
        audio.extend(tone(3000, 1000, 24_000));
        audio.extend(tone(0, 600, 24_000));
        vad.process(&audio, 0, SILENCE_500, &mut events);
        assert_eq!(
            events,
            vec![
                VadEvent::Started { at: 100 * 24 },
                VadEvent::Stopped {
                    start: 100 * 24,
                    voiced_end: 1100 * 24,
                    at: 1600 * 24
                },
            ]
        );
    }

    #[test]
    fn a_short_click_is_not_speech() {
        let mut vad = Vad::new(-40.0, 3);
        let mut events = Vec::new();
        let mut audio = tone(20_000, 40, 8000);
        audio.extend(tone(0, 200, 8000));
        vad.process(&audio, 0, SILENCE_500, &mut events);
        assert!(events.is_empty());
        assert_eq!(vad.speech_start(), None);
    }

    #[test]
    fn threshold_is_minus_40_dbfs() {
        // 328 is just above 32768 × 10^(-40/20) = 327.68, 327 just below.
        for (amplitude, expect) in [(328, true), (327, false)] {
            let mut vad = Vad::new(-40.0, 1);
            let mut events = Vec::new();
            vad.process(&tone(amplitude, 100, 24_000), 0, SILENCE_500, &mut events);
            assert_eq!(!events.is_empty(), expect, "amplitude {amplitude}");
        }
    }

    #[test]
    fn with_rate_counts_in_samples() {
        // 16 kHz: 320-sample windows, positions in samples.
        let mut vad = Vad::with_rate(-40.0, 16);
        let mut events = Vec::new();
        let mut audio = tone(0, 100, 16_000);
        audio.extend(tone(3000, 300, 16_000));
        vad.process(&audio, 0, 500 * 16, &mut events);
        assert_eq!(events, vec![VadEvent::Started { at: 100 * 16 }]);
        assert_eq!(vad.voiced(), Some((100 * 16, 400 * 16)));
        audio = tone(0, 500, 16_000);
        vad.process(&audio, 400 * 16, 500 * 16, &mut events);
        assert_eq!(
            events[1],
            VadEvent::Stopped {
                start: 100 * 16,
                voiced_end: 400 * 16,
                at: 900 * 16
            }
        );
        assert_eq!(vad.voiced(), None);
    }

    #[test]
    fn frame_sizes_do_not_change_the_events() {
        let mut audio = tone(0, 300, 8000);
        audio.extend(tone(5000, 700, 8000));
        audio.extend(tone(0, 700, 8000));
        let mut whole = Vec::new();
        Vad::new(-40.0, 3).process(&audio, 0, SILENCE_500, &mut whole);
        let mut split = Vec::new();
        let mut vad = Vad::new(-40.0, 3);
        let mut tick = 0;
        for chunk in audio.chunks(77) {
            vad.process(chunk, tick, SILENCE_500, &mut split);
            tick += chunk.len() as u64 * 3;
        }
        assert_eq!(whole.len(), 2);
        assert_eq!(whole, split);
    }
}
