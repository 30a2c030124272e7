//! The pieces of surviving a lost model socket that need no I/O: the
//! backoff between attempts, and the caller audio held while the model is
//! away.
//!
//! A Realtime or GPT-Live session cannot be resumed: a new socket is a new
//! session, configured again and seeded with the conversation so far as
//! text. What the caller says meanwhile is kept (a couple of seconds, the
//! newest) and sent to the new session first, so a short outage costs the
//! model nothing it needed.

use std::collections::VecDeque;

use tokio::time::Duration;

/// Capped exponential backoff with jitter: 100 ms, 200 ms, 400 ms … up to
/// 2 s, each ±25 %, so that many calls that lost the same endpoint at once
/// do not all come back in the same millisecond.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    state: u64,
}

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

impl Backoff {
    /// `seed` varies the jitter between calls (any number; not secret).
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            state: seed | 1,
        }
    }

    /// The wait before the next attempt; the first attempt waits nothing.
    pub fn next_delay(&mut self) -> Duration {
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        if attempt == 0 {
            return Duration::ZERO;
        }
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (attempt - 1).min(16));
        let base = exp.min(BACKOFF_CAP);
        // xorshift64: cheap, deterministic per seed, good enough for jitter.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let jitter = (self.state % 501) as u32; // 0..=500 → −25 %..+25 %
        base * (750 + jitter) / 1000
    }
}

/// Caller audio (μ-law, as Twilio sent it) kept while no model socket is
/// open: at most `cap` bytes, the oldest dropped first and counted.
#[derive(Debug)]
pub struct HeldAudio {
    buf: VecDeque<u8>,
    cap: usize,
}

impl HeldAudio {
    pub fn new(cap: usize) -> HeldAudio {
        HeldAudio {
            // Allocated on first use: most calls never lose the model, and
            // 16 KB reserved up front was a fifth of a call's memory.
            buf: VecDeque::new(),
            cap,
        }
    }

    /// Keeps `ulaw`; returns how many bytes of older audio had to go.
    pub fn push(&mut self, ulaw: &[u8]) -> usize {
        let mut dropped = 0;
        let keep = &ulaw[ulaw.len().saturating_sub(self.cap)..];
        dropped += ulaw.len() - keep.len();
        let over = (self.buf.len() + keep.len()).saturating_sub(self.cap);
        dropped += over;
        self.buf.drain(..over);
        self.buf.extend(keep);
        dropped
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Takes everything kept, in frames of at most `frame` bytes.
    pub fn take_frames(&mut self, frame: usize) -> Vec<Vec<u8>> {
        let all: Vec<u8> = self.buf.drain(..).collect();
        all.chunks(frame.max(1)).map(<[u8]>::to_vec).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        let mut b = Backoff::new(42);
        assert_eq!(b.next_delay(), Duration::ZERO);
        let mut last_base = Duration::ZERO;
        for n in 1..12u32 {
            let d = b.next_delay();
            let base = (BACKOFF_BASE * 2u32.pow((n - 1).min(16))).min(BACKOFF_CAP);
            assert!(
                d >= base * 3 / 4 && d <= base * 5 / 4,
                "attempt {n}: {d:?} vs {base:?}"
            );
            assert!(base >= last_base);
            last_base = base;
        }
        assert_eq!(last_base, BACKOFF_CAP);
        // Different seeds spread out.
        let a: Vec<_> = (0..5).map(|_| Backoff::new(1).next_delay()).collect();
        let mut x = Backoff::new(1);
        let mut y = Backoff::new(2);
        x.next_delay();
        y.next_delay();
        assert_ne!(
            (x.next_delay(), x.next_delay()),
            (y.next_delay(), y.next_delay())
        );
        assert!(a.iter().all(|d| d.is_zero()));
    }

    #[test]
    fn held_audio_keeps_the_newest_and_counts_what_it_drops() {
        let mut h = HeldAudio::new(400);
        assert_eq!(h.push(&[1; 160]), 0);
        assert_eq!(h.push(&[2; 160]), 0);
        assert_eq!(h.push(&[3; 160]), 80);
        assert_eq!(h.len(), 400);
        // One push larger than the cap keeps its own tail only.
        assert_eq!(h.push(&[4; 1000]), 1000);
        let frames = h.take_frames(160);
        assert_eq!(
            frames.iter().map(Vec::len).collect::<Vec<_>>(),
            [160, 160, 80]
        );
        assert!(frames.iter().flatten().all(|&b| b == 4));
        assert!(h.is_empty());
    }
}
