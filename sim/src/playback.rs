//! Twilio's side of outbound audio: a playout queue drained at real time and
//! the mark echoes that depend on it (PROTOCOLS.md §1.3).
//!
//! The bridge's barge-in accounting trusts mark echoes to mean "played", so
//! the simulator must echo a mark only when everything queued before it has
//! played, at once when nothing is queued, and all pending marks together on
//! `clear`. Getting this wrong here would make the bridge look right (or
//! wrong) for the wrong reason. Pure state: the caller drives it once per
//! 20 ms tick, so no clock lives here.

use std::collections::VecDeque;

/// The queue of audio the bridge sent and the marks waiting on it.
#[derive(Debug)]
pub(crate) struct Playback {
    /// Whether the bytes themselves are kept (the caller records what was
    /// heard) or only counted (the load test, which runs thousands of these).
    keep_audio: bool,
    queue: VecDeque<u8>,
    /// Bytes ever queued and ever played (or cleared): positions on the
    /// outbound track, so a mark can wait for a position.
    enqueued: u64,
    played: u64,
    /// Marks waiting for `played` to reach their position.
    marks: VecDeque<(u64, String)>,
}

impl Playback {
    pub(crate) fn new(keep_audio: bool) -> Self {
        Playback {
            keep_audio,
            queue: VecDeque::new(),
            enqueued: 0,
            played: 0,
            marks: VecDeque::new(),
        }
    }

    /// Bytes waiting to play.
    pub(crate) fn queued(&self) -> u64 {
        self.enqueued - self.played
    }

    /// Marks waiting for their audio to play.
    pub(crate) fn pending_marks(&self) -> usize {
        self.marks.len()
    }

    /// Queues audio after everything already queued.
    pub(crate) fn enqueue(&mut self, audio: &[u8]) {
        if self.keep_audio {
            self.queue.extend(audio);
        }
        self.enqueued += audio.len() as u64;
    }

    /// Queues `n` bytes by count only (for a `Playback` that keeps no audio).
    pub(crate) fn enqueue_len(&mut self, n: usize) {
        debug_assert!(
            !self.keep_audio,
            "enqueue_len on a playback that keeps audio"
        );
        self.enqueued += n as u64;
    }

    /// A mark from the bridge: returned to be echoed now if nothing is
    /// queued, otherwise held until the audio before it has played.
    pub(crate) fn mark(&mut self, name: String) -> Option<String> {
        if self.queued() == 0 {
            Some(name)
        } else {
            self.marks.push_back((self.enqueued, name));
            None
        }
    }

    /// Plays up to `n` bytes (one tick). Appends exactly `n` bytes to `heard`
    /// when given: the audio, then silence if the queue ran dry. Marks whose
    /// audio has now played go to `due`, in order. Returns the bytes of
    /// bridge audio played.
    pub(crate) fn play(
        &mut self,
        n: usize,
        heard: Option<&mut Vec<u8>>,
        due: &mut Vec<String>,
    ) -> usize {
        let take = self.queued().min(n as u64) as usize;
        if let Some(heard) = heard {
            let before = heard.len();
            heard.extend(self.queue.drain(..take.min(self.queue.len())));
            heard.resize(before + n, crate::SILENCE);
        } else if self.keep_audio {
            self.queue.drain(..take.min(self.queue.len()));
        }
        self.played += take as u64;
        while let Some((at, _)) = self.marks.front() {
            if *at > self.played {
                break;
            }
            if let Some((_, name)) = self.marks.pop_front() {
                due.push(name);
            }
        }
        take
    }

    /// `clear`: drops the queued audio and releases every pending mark (whose
    /// echo then does not mean the audio played). Returns the bytes dropped.
    pub(crate) fn clear(&mut self, due: &mut Vec<String>) -> u64 {
        let dropped = self.queued();
        self.queue.clear();
        self.played = self.enqueued;
        due.extend(self.marks.drain(..).map(|(_, name)| name));
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_wait_for_their_audio() {
        let mut p = Playback::new(true);
        let mut due = Vec::new();
        // Nothing queued: echoed at once.
        assert_eq!(p.mark("a".into()), Some("a".into()));
        p.enqueue(&[1; 300]);
        assert_eq!(p.mark("b".into()), None);
        p.enqueue(&[2; 100]);
        assert_eq!(p.mark("c".into()), None);
        let mut heard = Vec::new();
        assert_eq!(p.play(160, Some(&mut heard), &mut due), 160);
        assert!(due.is_empty());
        assert_eq!(p.play(160, Some(&mut heard), &mut due), 160);
        assert_eq!(due, ["b"]);
        assert_eq!(p.play(160, Some(&mut heard), &mut due), 80);
        assert_eq!(due, ["b", "c"]);
        assert_eq!(heard.len(), 480);
        assert_eq!(&heard[..300], &[1; 300][..]);
        assert_eq!(&heard[300..400], &[2; 100][..]);
        assert!(heard[400..].iter().all(|&b| b == crate::SILENCE));
        assert_eq!(p.queued(), 0);
    }

    #[test]
    fn clear_releases_every_mark() {
        let mut p = Playback::new(false);
        let mut due = Vec::new();
        p.enqueue(&[0; 800]);
        assert_eq!(p.mark("x".into()), None);
        p.enqueue(&[0; 800]);
        assert_eq!(p.mark("y".into()), None);
        assert_eq!(p.play(160, None, &mut due), 160);
        assert_eq!(p.clear(&mut due), 1440);
        assert_eq!(due, ["x", "y"]);
        assert_eq!(p.queued(), 0);
        assert_eq!(p.pending_marks(), 0);
        // After a clear, new audio and marks start from a clean queue.
        p.enqueue(&[0; 160]);
        assert_eq!(p.mark("z".into()), None);
        due.clear();
        assert_eq!(p.play(160, None, &mut due), 160);
        assert_eq!(due, ["z"]);
    }
}
