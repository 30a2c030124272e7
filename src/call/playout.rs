//! Outbound pacing and the mark ledger: what was sent to Twilio, and what the
//! caller has heard of it.
//!
//! Pure state: time is passed in, nothing here does I/O. The model's audio is
//! queued as μ-law 8 kHz (8 bytes = 1 ms) and released to Twilio no more than
//! `lead` ahead of real time, so that little is queued at Twilio and a
//! barge-in's `clear` throws away little; each chunk is followed by a mark
//! whose name carries (generation, cumulative ms of the item, item id).

use std::collections::VecDeque;
use std::fmt::Write as _;

use tokio::time::{Duration, Instant};

/// μ-law at 8 kHz: bytes per millisecond.
const BYTES_PER_MS: usize = 8;
/// Largest chunk sent in one media message (then a mark): 100 ms. Smaller
/// chunks give finer "played" acknowledgements, larger ones fewer messages.
const MAX_CHUNK_BYTES: usize = 100 * BYTES_PER_MS;
/// Smallest chunk worth a message (20 ms, one Twilio frame), unless the
/// item has less left.
const MIN_CHUNK_BYTES: usize = 20 * BYTES_PER_MS;
/// Unsent audio held at most (2 minutes); beyond that deltas are dropped and
/// counted rather than growing memory without bound.
const MAX_QUEUED_BYTES: usize = 120_000 * BYTES_PER_MS;

/// One chunk ready to send: the audio, then a mark with this name.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub payload: &'a [u8],
    pub mark: &'a str,
    /// How far ahead of real time the audio at Twilio runs once this is sent.
    pub lead: Duration,
}

/// Where to cut the model's item on barge-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub item_id: String,
    /// What the caller heard: ≥ acknowledged-played, ≤ sent.
    pub audio_end_ms: u64,
    pub acked_ms: u64,
    pub sent_ms: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum MarkEcho {
    /// Advanced what was played of an item.
    Played { item_id_len: usize, played_ms: u64 },
    /// From a generation before the last barge-in: `clear` echoes these, they
    /// do not mean the audio was played.
    Stale,
    /// Not one of ours.
    Foreign,
}

#[derive(Debug)]
struct ItemLedger {
    item_id: String,
    /// Bytes received from the model for this item (after transcoding).
    received: usize,
    /// Bytes sent to Twilio.
    sent: usize,
    /// Bytes Twilio acknowledged as played (via marks).
    acked: usize,
}

#[derive(Debug)]
pub struct Playout {
    lead: Duration,
    generation: u32,
    /// Unsent audio, contiguous from `read`.
    queue: Vec<u8>,
    read: usize,
    /// Item boundaries inside the unsent audio: (item index in `items`,
    /// bytes, when its oldest audio was queued if known).
    segments: VecDeque<(usize, usize, Option<Instant>)>,
    items: Vec<ItemLedger>,
    /// When everything sent so far will have finished playing at Twilio.
    play_end: Option<Instant>,
    mark_buf: String,
    /// `audio.heard_offset_ms`: how far behind Twilio's playing the caller's
    /// ear is (network and handset buffering), subtracted at barge-in.
    heard_offset: Duration,
    /// Audio later than this behind when it should have played is dropped
    /// rather than sent late; zero: never.
    max_lag: Duration,
}

impl Playout {
    pub fn new(lead: Duration) -> Self {
        Playout {
            lead,
            generation: 0,
            queue: Vec::with_capacity(MAX_CHUNK_BYTES * 4),
            read: 0,
            segments: VecDeque::new(),
            items: Vec::new(),
            play_end: None,
            mark_buf: String::with_capacity(64),
            heard_offset: Duration::ZERO,
            max_lag: Duration::ZERO,
        }
    }

    /// Subtract `offset` from what the caller is believed to have heard at
    /// a barge-in: audio Twilio played (marks echoed) or the clock says
    /// played reaches the caller's ear this much later.
    pub fn set_heard_offset(&mut self, offset: Duration) {
        self.heard_offset = offset;
    }

    /// Lets [`Playout::shed_late`] drop queued audio that would reach Twilio
    /// more than `max_lag` after it should have played; zero: never.
    pub fn with_max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Queues μ-law audio of `item_id`. Returns false (nothing queued) when
    /// the queue is full. Audio queued this way is never late.
    pub fn push(&mut self, item_id: &str, ulaw: &[u8]) -> bool {
        self.push_inner(item_id, ulaw, None)
    }

    /// [`Playout::push`] of audio that arrived at `now`: it should start
    /// playing then, or when what is before it has played, whichever is
    /// later; if it is still here `max_lag` after that, the bridge fell
    /// behind and the late part is dropped.
    pub fn push_at(&mut self, item_id: &str, ulaw: &[u8], now: Instant) -> bool {
        self.push_inner(item_id, ulaw, Some(now))
    }

    fn push_inner(&mut self, item_id: &str, ulaw: &[u8], now: Option<Instant>) -> bool {
        if ulaw.is_empty() {
            return true;
        }
        if self.queue.len() - self.read + ulaw.len() > MAX_QUEUED_BYTES {
            return false;
        }
        let idx = match self.items.iter().rposition(|i| i.item_id == item_id) {
            Some(idx) => idx,
            None => {
                self.prune();
                self.items.push(ItemLedger {
                    item_id: item_id.to_owned(),
                    received: 0,
                    sent: 0,
                    acked: 0,
                });
                self.items.len() - 1
            }
        };
        self.items[idx].received += ulaw.len();
        match self.segments.back_mut() {
            Some((i, len, _)) if *i == idx => *len += ulaw.len(),
            _ => self.segments.push_back((idx, ulaw.len(), now)),
        }
        if self.read > 0 && self.read >= self.queue.len() - self.read {
            // Reclaim what was sent once it outweighs what is still queued.
            // Waiting for the queue to empty is not enough: audio that keeps
            // arriving while older audio waits (a bridge running behind, an
            // answer streamed as it is played) never empties it, and the
            // sent prefix grew by the call's whole answer audio, without
            // bound. Moving the unsent tail costs at most what was sent
            // since the last move, so each byte is moved once on average.
            self.queue.drain(..self.read);
            self.read = 0;
        }
        self.queue.extend_from_slice(ulaw);
        true
    }

    /// Forgets fully played items, keeping the ledger small on long calls.
    fn prune(&mut self) {
        if self.segments.is_empty() && self.items.iter().all(|i| i.acked >= i.sent) {
            self.items.clear();
        }
    }

    fn lead_at(&self, now: Instant) -> Duration {
        self.play_end
            .map_or(Duration::ZERO, |end| end.saturating_duration_since(now))
    }

    fn bytes_to_duration(bytes: usize) -> Duration {
        Duration::from_micros(bytes as u64 * 1000 / BYTES_PER_MS as u64)
    }

    /// Room under the lead, in bytes, and the least worth sending now.
    fn room(&self, now: Instant, seg_len: usize) -> (usize, usize) {
        let space = self.lead.saturating_sub(self.lead_at(now));
        let space_bytes = (space.as_micros() as usize * BYTES_PER_MS) / 1000;
        (space_bytes, seg_len.min(MIN_CHUNK_BYTES))
    }

    /// When the next chunk may go, if anything is waiting.
    pub fn next_send_at(&self, now: Instant) -> Option<Instant> {
        let &(_, seg_len, _) = self.segments.front()?;
        let (space, min_chunk) = self.room(now, seg_len);
        if space >= min_chunk {
            Some(now)
        } else {
            Some(now + Self::bytes_to_duration(min_chunk - space))
        }
    }

    /// Takes the next chunk if the lead allows one now: as much as fits
    /// under the lead in whole 20 ms frames, at most 100 ms, never across an
    /// item boundary. Only the last of what is queued of an item can end in
    /// a part of a frame (Twilio plays any length).
    pub fn next_chunk(&mut self, now: Instant) -> Option<Chunk<'_>> {
        let &(idx, seg_len, _) = self.segments.front()?;
        let (space, min_chunk) = self.room(now, seg_len);
        if space < min_chunk {
            return None;
        }
        let mut take = seg_len.min(MAX_CHUNK_BYTES).min(space);
        if take < seg_len && take > MIN_CHUNK_BYTES {
            // Whole 20 ms frames: a wake-up a little late finds room for a
            // frame and a sliver, and the sliver would go out as a media
            // message of its own. It waits for the next frame instead. Only
            // the end of what is queued (an item's last audio) is shorter.
            take -= take % MIN_CHUNK_BYTES;
        }
        if take == seg_len {
            self.segments.pop_front();
        } else if let Some(front) = self.segments.front_mut() {
            front.1 -= take;
        }
        let start = self.read;
        self.read += take;
        let item = &mut self.items[idx];
        item.sent += take;
        let dur = Self::bytes_to_duration(take);
        let begin = self.play_end.filter(|end| *end > now).unwrap_or(now);
        let end = begin + dur;
        self.play_end = Some(end);
        self.mark_buf.clear();
        let _ = write!(
            self.mark_buf,
            "{}:{}:{}",
            self.generation,
            item.sent / BYTES_PER_MS,
            item.item_id
        );
        Some(Chunk {
            payload: &self.queue[start..start + take],
            mark: &self.mark_buf,
            lead: end - now,
        })
    }

    /// Drops the front of the queue where it is more than `max_lag` behind
    /// when it should have played: the bridge could not keep up (its task
    /// ran late), and late audio only delays everything after it. Whole
    /// frames, within the front segment; a later call drops more if need be.
    /// Returns the bytes dropped. Call before [`Playout::next_chunk`].
    ///
    /// The dropped audio counts as sent and played (the answer's position
    /// moves on, as it would have in real time): by then everything sent
    /// before it has played too, so the ledger is acknowledged up to it.
    pub fn shed_late(&mut self, now: Instant) -> usize {
        if self.max_lag.is_zero() {
            return 0;
        }
        let Some(&(idx, seg_len, Some(queued_at))) = self.segments.front() else {
            return 0;
        };
        let due = self.play_end.map_or(queued_at, |end| end.max(queued_at));
        let Some(excess) = now
            .saturating_duration_since(due)
            .checked_sub(self.max_lag)
            .filter(|e| !e.is_zero())
        else {
            return 0;
        };
        let late = (excess.as_micros() as usize).saturating_mul(BYTES_PER_MS) / 1000;
        let dropped = late
            .div_ceil(MIN_CHUNK_BYTES)
            .saturating_mul(MIN_CHUNK_BYTES)
            .min(seg_len);
        if dropped == seg_len {
            self.segments.pop_front();
        } else if let Some(front) = self.segments.front_mut() {
            front.1 -= dropped;
            // What is left should have played right after what was dropped.
            front.2 = Some(due + Self::bytes_to_duration(dropped));
        }
        self.read += dropped;
        let item = &mut self.items[idx];
        item.sent += dropped;
        item.acked = item.sent;
        dropped
    }

    /// Applies a mark Twilio echoed.
    pub fn on_mark(&mut self, name: &str) -> MarkEcho {
        let mut parts = name.splitn(3, ':');
        let (Some(gen), Some(ms), Some(item_id)) = (parts.next(), parts.next(), parts.next())
        else {
            return MarkEcho::Foreign;
        };
        let (Ok(gen), Ok(ms)) = (gen.parse::<u32>(), ms.parse::<u64>()) else {
            return MarkEcho::Foreign;
        };
        if gen != self.generation {
            return MarkEcho::Stale;
        }
        match self.items.iter_mut().rev().find(|i| i.item_id == item_id) {
            Some(item) => {
                // Marks count whole milliseconds: the mark of everything
                // sent so far acknowledges the sub-millisecond rest too, or
                // a finished item would look unplayed forever. Saturating:
                // `ms` is whatever Twilio (or a forger) echoed.
                let bytes = if ms == (item.sent / BYTES_PER_MS) as u64 {
                    item.sent
                } else {
                    usize::try_from(ms)
                        .unwrap_or(usize::MAX)
                        .saturating_mul(BYTES_PER_MS)
                        .min(item.sent)
                };
                item.acked = item.acked.max(bytes);
                MarkEcho::Played {
                    item_id_len: item.item_id.len(),
                    played_ms: (item.acked / BYTES_PER_MS) as u64,
                }
            }
            None => MarkEcho::Stale,
        }
    }

    /// True while the caller may still be hearing (or about to hear) audio.
    pub fn is_playing(&self, now: Instant) -> bool {
        !self.segments.is_empty()
            || self.lead_at(now) > Duration::ZERO
            || self.items.iter().any(|i| i.acked < i.sent)
    }

    /// Barge-in: drops unsent audio, bumps the generation so that marks
    /// echoed by `clear` count for nothing, and says where to truncate each
    /// item the caller did not hear in full, oldest first: the one that was
    /// playing at its heard point, and every later one (queued at Twilio or
    /// not yet sent) at what was heard of it, which is nothing.
    ///
    /// What is still queued at Twilio (the clock's lead) was not heard; it
    /// is the newest audio sent, so it is subtracted from the newest item
    /// first, walking back. Marks set a floor: what Twilio confirmed played
    /// was heard. The heard offset counts as more unheard audio, and lowers
    /// the marks' floor by as much.
    pub fn interrupt(&mut self, now: Instant) -> Vec<Truncation> {
        let offset_ms = u64::try_from(self.heard_offset.as_millis()).unwrap_or(u64::MAX);
        let lead_ms = u64::try_from(self.lead_at(now).as_millis()).unwrap_or(u64::MAX);
        let mut unheard_ms = lead_ms.saturating_add(offset_ms);
        let mut cuts = Vec::new();
        for item in self.items.iter().rev() {
            let sent_ms = (item.sent / BYTES_PER_MS) as u64;
            let acked_ms = (item.acked / BYTES_PER_MS) as u64;
            let received_ms = (item.received / BYTES_PER_MS) as u64;
            let queued_ms = unheard_ms.min(sent_ms);
            unheard_ms -= queued_ms;
            let heard_ms = (sent_ms - queued_ms)
                .max(acked_ms.saturating_sub(offset_ms))
                .min(sent_ms);
            if heard_ms >= received_ms {
                // Heard in full: so was everything before it.
                break;
            }
            cuts.push(Truncation {
                item_id: item.item_id.clone(),
                audio_end_ms: heard_ms,
                acked_ms,
                sent_ms,
            });
        }
        cuts.reverse();
        self.generation = self.generation.wrapping_add(1);
        self.queue.clear();
        self.read = 0;
        self.segments.clear();
        self.items.clear();
        self.play_end = None;
        cuts
    }

    /// Unsent bytes, for tests and diagnostics.
    pub fn queued_bytes(&self) -> usize {
        self.queue.len() - self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A late wake-up (here 0.3 ms late, room for 162 bytes) takes one whole
    /// frame and leaves the rest for the next; the end of the queue goes out
    /// as it is.
    #[test]
    fn chunks_are_whole_frames_but_for_the_end_of_the_queue() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200));
        assert!(p.push("item_a", &[0x7f; 8 * 1000 + 5]));
        let mut sizes = Vec::new();
        while let Some(c) = p.next_chunk(t0) {
            sizes.push(c.payload.len());
        }
        assert_eq!(sizes, vec![800, 800]);
        let late = t0 + Duration::from_micros(20_300);
        assert_eq!(p.next_chunk(late).map(|c| c.payload.len()), Some(160));
        assert!(p.next_chunk(late).is_none());
        // Much later: everything left, the 5-byte tail included, at most
        // 100 ms a chunk, whole frames but for that tail.
        let mut t = late;
        let mut rest = Vec::new();
        while p.queued_bytes() > 0 {
            t += ms(500);
            while let Some(c) = p.next_chunk(t) {
                rest.push(c.payload.len());
            }
        }
        // (The bridge cuts a chunk into 160-byte media messages: only the
        // very last one, 5 bytes, is short.)
        let (last, whole) = rest.split_last().unwrap();
        assert!(whole.iter().all(|n| n % 160 == 0), "{rest:?}");
        assert_eq!(last % 160, 5, "{rest:?}");
        assert_eq!(rest.iter().sum::<usize>(), 8 * 1000 + 5 - 1760);
    }

    /// Audio still queued `max_lag` after it should have played (the bridge
    /// stalled) is dropped in whole frames, as if it had played, and the
    /// rest goes on from there; audio on time, or queued without a time, is
    /// never dropped.
    #[test]
    fn late_audio_is_shed_in_whole_frames_and_the_answer_moves_on() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200)).with_max_lag(ms(300));
        assert!(p.push_at("item_a", &[0x7f; 8 * 1000], t0));
        assert_eq!(p.shed_late(t0), 0);
        while p.next_chunk(t0).is_some() {}
        // 200 ms sent. On time at t0 + 480 ms (due at 200, 280 behind).
        assert_eq!(p.shed_late(t0 + ms(480)), 0);
        // Stalled until t0 + 1 s: the next audio was due at 200 ms, 800 ms
        // ago; 500 ms of it is more than 300 ms late: 25 frames dropped.
        let t1 = t0 + ms(1000);
        assert_eq!(p.shed_late(t1), 8 * 500);
        assert_eq!(p.shed_late(t1), 0, "what is left is within the bound");
        assert_eq!(p.queued_bytes(), 8 * 300);
        let c = p.next_chunk(t1).unwrap();
        assert_eq!(c.payload.len(), 800);
        assert_eq!(c.mark, "0:800:item_a");
        // Without a bound, or for audio queued without a time: nothing.
        let mut q = Playout::new(ms(200));
        assert!(q.push_at("i", &[0; 8 * 1000], t0));
        assert_eq!(q.shed_late(t0 + ms(5000)), 0);
        let mut r = Playout::new(ms(200)).with_max_lag(ms(300));
        assert!(r.push("i", &[0; 8 * 1000]));
        assert_eq!(r.shed_late(t0 + ms(5000)), 0);
    }

    /// Audio that keeps coming while older audio still waits never empties
    /// the queue; what was sent must still be let go of. (The first version
    /// kept every byte of such a stream: 8 KB per call-second, which an
    /// overloaded load test showed as 200 MB at 1,000 calls.)
    #[test]
    fn a_queue_that_never_empties_stays_bounded() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200));
        // Half a second ahead of what can go out, then one 20 ms frame in
        // and one out every 20 ms, for 10 minutes.
        assert!(p.push_at("i", &[0x7f; 8 * 500], t0));
        let mut sent = 0;
        for n in 0..30_000u32 {
            let now = t0 + ms(20) * n;
            assert!(p.push_at("i", &[0x7f; 160], now));
            while let Some(c) = p.next_chunk(now) {
                sent += c.payload.len();
            }
            assert!(p.queued_bytes() >= 160, "never empties");
        }
        assert!(sent > 30_000 * 150, "audio kept flowing: {sent}");
        assert!(
            p.queue.capacity() <= 16 * 1024,
            "sent audio is let go of: capacity {}",
            p.queue.capacity()
        );
    }

    #[test]
    fn paces_to_the_lead_and_no_further() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200));
        assert!(p.push("item_a", &[0x7f; 8 * 1000])); // one second
        let mut sent = 0;
        let mut marks = Vec::new();
        while let Some(c) = p.next_chunk(t0) {
            sent += c.payload.len();
            marks.push(c.mark.to_owned());
        }
        // 200 ms lead at most, in 100 ms chunks.
        assert_eq!(sent, 8 * 200);
        assert_eq!(marks, vec!["0:100:item_a", "0:200:item_a"]);
        assert_eq!(p.next_send_at(t0), Some(t0 + ms(20)));
        // After 100 ms of playing, one more chunk fits.
        let t1 = t0 + ms(100);
        let c = p.next_chunk(t1).unwrap();
        assert_eq!(c.payload.len(), 800);
        assert_eq!(c.mark, "0:300:item_a");
        assert_eq!(c.lead, ms(200));
        assert!(p.next_chunk(t1).is_none());
        assert_eq!(p.next_send_at(t1), Some(t1 + ms(20)));
    }

    #[test]
    fn next_send_at_waits_for_the_lead_to_drain() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200));
        assert_eq!(p.next_send_at(t0), None);
        p.push("i", &[0; 8 * 500]);
        assert_eq!(p.next_send_at(t0), Some(t0));
        while p.next_chunk(t0).is_some() {}
        // 200 ms queued at Twilio: the next chunk may go once 20 ms have played.
        assert_eq!(p.next_send_at(t0), Some(t0 + ms(20)));
        let t = t0 + ms(50);
        assert_eq!(p.next_send_at(t), Some(t));
        let c = p.next_chunk(t).unwrap();
        // What fits under the lead, in whole 20 ms frames: 40 of the 50 ms.
        assert_eq!(c.payload.len(), 8 * 40);
        assert_eq!(c.lead, ms(190));
        assert_eq!(p.next_send_at(t), Some(t + ms(10)));
    }

    #[test]
    fn the_last_mark_acknowledges_a_partial_millisecond() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200));
        // 100 ms and 5 bytes: the mark says 100 ms.
        p.push("i", &[0x7f; 8 * 100 + 5]);
        let marks: Vec<String> =
            std::iter::from_fn(|| p.next_chunk(t0).map(|c| c.mark.to_owned())).collect();
        assert_eq!(marks.last().map(String::as_str), Some("0:100:i"));
        for m in &marks {
            p.on_mark(m);
        }
        assert!(!p.is_playing(t0 + ms(1000)), "all of it was played");
        // A hostile, huge millisecond count neither panics nor over-acks.
        assert!(matches!(
            p.on_mark(&format!("0:{}:i", u64::MAX)),
            MarkEcho::Played { played_ms: 100, .. }
        ));
    }

    #[test]
    fn marks_advance_played_and_stale_ones_do_not() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(300));
        p.push("item_x", &[0; 8 * 300]);
        let mut names = Vec::new();
        while let Some(c) = p.next_chunk(t0) {
            names.push(c.mark.to_owned());
        }
        assert_eq!(
            p.on_mark(&names[0]),
            MarkEcho::Played {
                item_id_len: 6,
                played_ms: 100
            }
        );
        assert_eq!(p.on_mark("someone-else"), MarkEcho::Foreign);
        let cuts = p.interrupt(t0 + ms(150));
        assert_eq!(cuts.len(), 1);
        let cut = &cuts[0];
        assert_eq!(cut.item_id, "item_x");
        assert_eq!(cut.sent_ms, 300);
        assert_eq!(cut.acked_ms, 100);
        // 150 ms of 300 sent were still queued at Twilio: heard 150.
        assert_eq!(cut.audio_end_ms, 150);
        // Echoes that `clear` provokes are stale.
        assert_eq!(p.on_mark(&names[1]), MarkEcho::Stale);
        assert_eq!(p.generation(), 1);
        assert!(!p.is_playing(t0 + ms(150)));
        assert_eq!(p.queued_bytes(), 0);
    }

    #[test]
    fn truncation_is_between_acked_and_sent() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200));
        p.push("it", &[0; 8 * 1000]);
        while p.next_chunk(t0).is_some() {}
        // Immediately: nothing heard by the clock, nothing acked.
        let mut q = Playout::new(ms(200));
        q.push("it", &[0; 8 * 1000]);
        while q.next_chunk(t0).is_some() {}
        let cut = &q.interrupt(t0)[0];
        assert_eq!(cut.audio_end_ms, 0);
        // A mark acknowledged more than the clock says: the ack wins.
        p.on_mark("0:200:it");
        let cut = &p.interrupt(t0 + ms(10))[0];
        assert_eq!(cut.audio_end_ms, 200);
        assert!(cut.audio_end_ms >= cut.acked_ms && cut.audio_end_ms <= cut.sent_ms);
    }

    #[test]
    fn nothing_received_means_no_truncation_unsent_audio_is_cut_at_zero() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(200));
        assert!(p.interrupt(t0).is_empty());
        // Received but never sent: the caller heard none of it.
        p.push("a", &[1; 80]);
        assert!(p.is_playing(t0));
        let cuts = p.interrupt(t0);
        assert_eq!(cuts.len(), 1);
        assert_eq!((cuts[0].item_id.as_str(), cuts[0].audio_end_ms), ("a", 0));
    }

    #[test]
    fn several_items_the_playing_one_is_cut_where_heard_and_later_ones_at_zero() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(300));
        // Item a: 500 ms, all of it sent and echoed long ago (heard).
        p.push("a", &[1; 8 * 500]);
        let mut t = t0;
        while p.next_send_at(t).is_some() {
            while let Some(c) = p.next_chunk(t) {
                let mark = c.mark.to_owned();
                p.on_mark(&mark);
            }
            t += ms(20);
        }
        // Item b: 400 ms (the response completed while it plays); item c
        // follows at once (the next response, e.g. after a tool call).
        p.push("b", &[2; 8 * 400]);
        p.push("c", &[3; 8 * 1000]);
        let t1 = t + ms(1000);
        while p.next_chunk(t1).is_some() {}
        // 300 ms lead: 300 ms of b sent, nothing of c yet. 200 ms on, the
        // 100 ms left of b's sent audio are still queued at Twilio.
        let t2 = t1 + ms(200);
        while p.next_chunk(t2).is_some() {}
        // Now b is fully sent (400) and 100 ms of c; 300 ms queued at Twilio:
        // all 100 of c, and the last 200 of b. The caller heard 200 of b.
        let cuts = p.interrupt(t2);
        let got: Vec<(&str, u64)> = cuts
            .iter()
            .map(|c| (c.item_id.as_str(), c.audio_end_ms))
            .collect();
        assert_eq!(got, [("b", 200), ("c", 0)]);
    }

    #[test]
    fn the_heard_offset_moves_the_cut_back_across_items() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(300));
        p.set_heard_offset(ms(250));
        p.push("b", &[2; 8 * 400]);
        p.push("c", &[3; 8 * 1000]);
        while p.next_chunk(t0).is_some() {}
        let t1 = t0 + ms(200);
        while p.next_chunk(t1).is_some() {}
        // As in the test above the caller heard 200 ms of b by Twilio's
        // clock; 250 ms less reaches past b's start: b is cut at 0.
        let got: Vec<(String, u64)> = p
            .interrupt(t1)
            .into_iter()
            .map(|c| (c.item_id, c.audio_end_ms))
            .collect();
        assert_eq!(got, [("b".to_owned(), 0), ("c".to_owned(), 0)]);

        // Echoed marks are a floor lowered by the offset too.
        let mut q = Playout::new(ms(100));
        q.set_heard_offset(ms(50));
        q.push("d", &[4; 8 * 600]);
        let mut t = t0;
        for _ in 0..20 {
            while let Some(c) = q.next_chunk(t) {
                let mark = c.mark.to_owned();
                q.on_mark(&mark);
            }
            t += ms(20);
        }
        // 400 ms played and echoed (the clock leads by 100 ms of sent audio).
        let cut = &q.interrupt(t)[0];
        assert!(cut.acked_ms >= 400, "{cut:?}");
        assert_eq!(cut.audio_end_ms, cut.acked_ms - 50, "{cut:?}");
    }

    #[test]
    fn chunks_do_not_cross_items_and_ledger_is_pruned() {
        let t0 = Instant::now();
        let mut p = Playout::new(ms(2000));
        p.push("a", &[1; 80]);
        p.push("b", &[2; 80]);
        let c = p.next_chunk(t0).unwrap();
        assert_eq!((c.payload, c.mark), (&[1u8; 80][..], "0:10:a"));
        let c = p.next_chunk(t0).unwrap();
        assert_eq!((c.payload, c.mark), (&[2u8; 80][..], "0:10:b"));
        p.on_mark("0:10:a");
        p.on_mark("0:10:b");
        assert!(!p.is_playing(t0 + ms(30)));
        p.push("c", &[3; 8]);
        assert_eq!(p.items.len(), 1);
    }

    #[test]
    fn queue_is_bounded() {
        let mut p = Playout::new(ms(200));
        let big = vec![0u8; MAX_QUEUED_BYTES];
        assert!(p.push("a", &big));
        assert!(!p.push("a", &[0; 8]));
    }
}
