//! Model sessions opened ahead of their call's stream, parked by CallSid.
//!
//! A webhook (or `POST /calls`) [`Parked::reserve`]s a place for its CallSid
//! and starts opening the session; the opener [`Reservation::fill`]s it once
//! the session is configured. The stream's `start` [`Parked::claim`]s it:
//! it may arrive while the session is still being opened, so a claim waits
//! for the opener (bounded) rather than open a second, paid session beside
//! it. A place nobody claims within `ttl` (the stream token's lifetime: no
//! stream can start after it) expires, and its session is handed to the
//! expiry callback to be closed.
//!
//! Generic over what is parked, so the timing logic is tested here with
//! paused time and no sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// Why a place was not reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max` places are taken: a parked session costs a connection (and,
    /// for protocols billed by time, money), so their number is bounded.
    Full,
    /// This CallSid has a place already (a webhook retried): the first
    /// opener goes on.
    Taken,
}

/// What [`Parked::reserve`]'s expiry callback is given.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired<T> {
    /// The session was ready and never claimed: close it.
    Ready(T),
    /// Still being opened: the opener's [`Reservation::fill`] hands it back,
    /// and the opener closes it.
    Opening,
}

type OnExpired<T> = Box<dyn FnOnce(Expired<T>) + Send>;

struct Entry<T> {
    id: u64,
    session: oneshot::Receiver<T>,
    timer: AbortHandle,
}

struct Inner<T> {
    entries: Mutex<HashMap<String, Entry<T>>>,
    max: usize,
    next_id: AtomicU64,
}

impl<T> Inner<T> {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `key`'s entry if it is still the one numbered `id`.
    fn take_if(&self, key: &str, id: u64) -> Option<Entry<T>> {
        let mut entries = self.entries();
        match entries.get(key) {
            Some(entry) if entry.id == id => entries.remove(key),
            _ => None,
        }
    }
}

/// The parking lot: at most `max` places, each for its own `ttl`.
pub struct Parked<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Parked<T> {
    fn clone(&self) -> Self {
        Parked {
            inner: self.inner.clone(),
        }
    }
}

/// A reserved place, to be filled by whoever opens the session. Dropped
/// unfilled (the opening failed), the place is freed at once, so the
/// stream's claim finds nothing and connects as it would have anyway.
pub struct Reservation<T> {
    inner: Arc<Inner<T>>,
    key: String,
    id: u64,
    tx: Option<oneshot::Sender<T>>,
}

impl<T> Reservation<T> {
    /// Parks `session`. `Err(session)` when its place is gone (it expired,
    /// or the stream came, waited its limit and went on without it): the
    /// caller closes it.
    pub fn fill(mut self, session: T) -> Result<(), T> {
        match self.tx.take() {
            Some(tx) => tx.send(session),
            None => Err(session),
        }
    }
}

impl<T> Drop for Reservation<T> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            if let Some(entry) = self.inner.take_if(&self.key, self.id) {
                entry.timer.abort();
            }
        }
    }
}

/// A claimed place whose session may still be on its way.
pub struct Claim<T>(oneshot::Receiver<T>);

impl<T> Claim<T> {
    /// The session, once its opener has it, waiting at most `limit`;
    /// `None` if the opening failed or took longer (the opener then finds
    /// its place gone and closes what it opened).
    pub async fn wait(self, limit: Duration) -> Option<T> {
        match tokio::time::timeout(limit, self.0).await {
            Ok(Ok(session)) => Some(session),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

impl<T: Send + 'static> Parked<T> {
    /// `max` places (zero: pre-warm never happens).
    pub fn new(max: usize) -> Parked<T> {
        Parked {
            inner: Arc::new(Inner {
                entries: Mutex::new(HashMap::new()),
                max,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Reserves `key`'s place for `ttl`. If nobody claims it by then it is
    /// removed and `on_expired` is called with what it held.
    pub fn reserve(
        &self,
        key: &str,
        ttl: Duration,
        on_expired: impl FnOnce(Expired<T>) + Send + 'static,
    ) -> Result<Reservation<T>, Refused> {
        let mut entries = self.inner.entries();
        if entries.contains_key(key) {
            return Err(Refused::Taken);
        }
        if entries.len() >= self.inner.max {
            return Err(Refused::Full);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let on_expired: OnExpired<T> = Box::new(on_expired);
        let weak = Arc::downgrade(&self.inner);
        let owned_key = key.to_owned();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let Some(inner) = weak.upgrade() else { return };
            let Some(mut entry) = inner.take_if(&owned_key, id) else {
                return;
            };
            match entry.session.try_recv() {
                Ok(session) => on_expired(Expired::Ready(session)),
                Err(oneshot::error::TryRecvError::Empty) => on_expired(Expired::Opening),
                // The opener gave up: its drop has normally removed the
                // place already; nothing to close.
                Err(oneshot::error::TryRecvError::Closed) => {}
            }
        })
        .abort_handle();
        entries.insert(
            key.to_owned(),
            Entry {
                id,
                session: rx,
                timer,
            },
        );
        Ok(Reservation {
            inner: self.inner.clone(),
            key: key.to_owned(),
            id,
            tx: Some(tx),
        })
    }

    /// Takes `key`'s place, if it has one: the stream has started.
    pub fn claim(&self, key: &str) -> Option<Claim<T>> {
        let entry = self.inner.entries().remove(key)?;
        entry.timer.abort();
        Some(Claim(entry.session))
    }

    /// Takes every place (the server is draining: no stream will start).
    pub fn claim_all(&self) -> Vec<Claim<T>> {
        self.inner
            .entries()
            .drain()
            .map(|(_, entry)| {
                entry.timer.abort();
                Claim(entry.session)
            })
            .collect()
    }

    /// Places taken (ready or still opening).
    pub fn len(&self) -> usize {
        self.inner.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    const TTL: Duration = Duration::from_secs(60);
    const WAIT: Duration = Duration::from_secs(5);

    type Seen = Arc<StdMutex<Vec<Expired<&'static str>>>>;
    type Callback = Box<dyn FnOnce(Expired<&'static str>) + Send>;

    /// What the expiry callback saw, and a maker of callbacks that record it.
    fn recorder() -> (Seen, impl Fn() -> Callback) {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        (seen, move || {
            let s = s.clone();
            Box::new(move |e| s.lock().unwrap().push(e))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_gets_the_parked_session_and_nothing_expires() {
        let (seen, cb) = recorder();
        let parked = Parked::new(4);
        parked
            .reserve("CA1", TTL, cb())
            .unwrap()
            .fill("session")
            .unwrap();
        assert_eq!(parked.len(), 1);
        let claim = parked.claim("CA1").expect("parked");
        assert_eq!(claim.wait(WAIT).await, Some("session"));
        assert!(parked.is_empty());
        tokio::time::sleep(TTL * 2).await;
        assert!(seen.lock().unwrap().is_empty(), "a claimed session expired");
        assert!(parked.claim("CA1").is_none(), "claimed twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_waits_for_a_session_still_opening() {
        let (_seen, cb) = recorder();
        let parked = Parked::new(4);
        let reservation = parked.reserve("CA1", TTL, cb()).unwrap();
        let claim = parked.claim("CA1").expect("reserved");
        let opener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reservation.fill("late")
        });
        assert_eq!(claim.wait(WAIT).await, Some("late"));
        assert_eq!(opener.await.unwrap(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_gives_up_after_its_limit_and_the_opener_gets_its_session_back() {
        let (_seen, cb) = recorder();
        let parked = Parked::new(4);
        let reservation = parked.reserve("CA1", TTL, cb()).unwrap();
        let claim = parked.claim("CA1").unwrap();
        assert_eq!(claim.wait(WAIT).await, None);
        // The opener finishes too late: it must close what it opened.
        assert_eq!(reservation.fill("late"), Err("late"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_opening_frees_the_place_and_the_claim_misses() {
        let (seen, cb) = recorder();
        let parked = Parked::new(1);
        let reservation = parked.reserve("CA1", TTL, cb()).unwrap();
        let claim = parked.claim("CA1").unwrap();
        drop(reservation);
        assert_eq!(claim.wait(WAIT).await, None);
        // Freed before the claim too.
        let reservation = parked.reserve("CA2", TTL, cb()).unwrap();
        drop(reservation);
        assert!(parked.is_empty());
        assert!(parked.claim("CA2").is_none());
        let _opening = parked
            .reserve("CA3", TTL, cb())
            .expect("the place is free again");
        tokio::time::sleep(TTL * 2).await;
        assert_eq!(seen.lock().unwrap().as_slice(), &[Expired::Opening]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unclaimed_session_expires_after_the_ttl_exactly() {
        let (seen, cb) = recorder();
        let parked = Parked::new(4);
        parked
            .reserve("CA1", TTL, cb())
            .unwrap()
            .fill("session")
            .unwrap();
        tokio::time::sleep(TTL - Duration::from_millis(1)).await;
        assert!(seen.lock().unwrap().is_empty(), "expired early");
        assert_eq!(parked.len(), 1);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            &[Expired::Ready("session")]
        );
        assert!(parked.is_empty());
        // The stream comes too late: a miss.
        assert!(parked.claim("CA1").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_still_opening_at_expiry_goes_back_to_its_opener() {
        let (seen, cb) = recorder();
        let parked = Parked::new(4);
        let reservation = parked.reserve("CA1", TTL, cb()).unwrap();
        tokio::time::sleep(TTL + Duration::from_secs(1)).await;
        assert_eq!(seen.lock().unwrap().as_slice(), &[Expired::Opening]);
        assert_eq!(reservation.fill("session"), Err("session"));
    }

    #[tokio::test(start_paused = true)]
    async fn claim_all_empties_the_lot_and_nothing_expires() {
        let (seen, cb) = recorder();
        let parked = Parked::new(4);
        parked
            .reserve("CA1", TTL, cb())
            .unwrap()
            .fill("one")
            .unwrap();
        let opening = parked.reserve("CA2", TTL, cb()).unwrap();
        let claims = parked.claim_all();
        assert!(parked.is_empty());
        let mut got = Vec::new();
        for claim in claims {
            got.push(claim.wait(Duration::ZERO).await);
        }
        got.sort();
        assert_eq!(got, [None, Some("one")]);
        assert_eq!(opening.fill("two"), Err("two"));
        tokio::time::sleep(TTL * 2).await;
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn places_are_bounded_and_one_per_call() {
        let (_seen, cb) = recorder();
        let parked: Parked<&str> = Parked::new(2);
        let _a = parked.reserve("CA1", TTL, cb()).unwrap();
        assert_eq!(parked.reserve("CA1", TTL, cb()).err(), Some(Refused::Taken));
        let _b = parked.reserve("CA2", TTL, cb()).unwrap();
        assert_eq!(parked.reserve("CA3", TTL, cb()).err(), Some(Refused::Full));
        let none: Parked<&str> = Parked::new(0);
        assert_eq!(none.reserve("CA1", TTL, cb()).err(), Some(Refused::Full));
    }
}
