//! Outbound calls placed by this replica and not yet streaming: their
//! reference, the CallSid Twilio gave them, and their context.
//!
//! The stream token of an outbound call is bound to the call's reference,
//! not its CallSid (unknown when the TwiML is written). Where this replica
//! placed the call, the entry here closes the gap: the stream's CallSid must
//! be the one `Calls.json` returned, the reference is used once, and the
//! context is picked up. Entries live as long as the token (then they are
//! pruned); when Twilio reports the call over, its entry is kept, used up,
//! so that the token cannot start a stream afterwards either.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Most calls waiting at once; beyond it `POST /calls` answers 503.
pub const MAX_PENDING: usize = 10_000;

#[derive(Debug)]
struct Entry {
    /// None while `Calls.json` is in flight.
    call_sid: Option<String>,
    context: Option<String>,
    expires_unix: u64,
    claimed: bool,
}

/// What a stream's `start` found for its reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Placed here: the stream may go on, with this context.
    Placed { context: Option<String> },
    /// Not placed here (another replica, or this one restarted): the token
    /// alone vouches for the stream, and no context is known.
    Unknown,
    /// Placed here for another CallSid: a token copied to another call.
    WrongCall,
    /// A second stream with the same reference, or one after the call ended.
    AlreadyUsed,
}

/// The pending table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many outbound calls waiting to be answered")]
pub struct Full;

#[derive(Debug, Default)]
pub struct Pending {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is one insert or remove): keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a call about to be placed; drops entries past their expiry.
    pub fn insert(
        &self,
        reference: &str,
        context: Option<String>,
        expires_unix: u64,
        now_unix: u64,
    ) -> Result<(), Full> {
        let mut entries = self.lock();
        entries.retain(|_, e| e.expires_unix >= now_unix);
        if entries.len() >= MAX_PENDING {
            return Err(Full);
        }
        entries.insert(
            reference.to_owned(),
            Entry {
                call_sid: None,
                context,
                expires_unix,
                claimed: false,
            },
        );
        Ok(())
    }

    /// Twilio created the call: its SID.
    pub fn created(&self, reference: &str, call_sid: &str) {
        if let Some(entry) = self.lock().get_mut(reference) {
            // A stream that raced ahead of the answer already named it.
            entry.call_sid.get_or_insert_with(|| call_sid.to_owned());
        }
    }

    /// The call was not placed.
    pub fn forget(&self, reference: &str) {
        self.lock().remove(reference);
    }

    /// Twilio reports `call_sid` over: its entry is used up (and its
    /// context dropped) until it expires.
    pub fn call_over(&self, call_sid: &str) {
        for entry in self
            .lock()
            .values_mut()
            .filter(|e| e.call_sid.as_deref() == Some(call_sid))
        {
            entry.claimed = true;
            entry.context = None;
        }
    }

    /// A stream started with `reference` for `call_sid`.
    ///
    /// An entry whose `Calls.json` has not answered yet takes the stream's
    /// CallSid (Twilio cannot stream a call before creating it, and the
    /// token already proved the TwiML is ours).
    pub fn claim(&self, reference: &str, call_sid: &str, now_unix: u64) -> Claim {
        let mut entries = self.lock();
        let Some(entry) = entries
            .get_mut(reference)
            .filter(|e| e.expires_unix >= now_unix)
        else {
            return Claim::Unknown;
        };
        if entry.claimed {
            return Claim::AlreadyUsed;
        }
        match &entry.call_sid {
            Some(sid) if sid != call_sid => return Claim::WrongCall,
            Some(_) => {}
            None => entry.call_sid = Some(call_sid.to_owned()),
        }
        entry.claimed = true;
        Claim::Placed {
            context: entry.context.take(),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = "OB0123456789abcdef0123456789abcdef";
    const CALL: &str = "CA0123456789abcdef0123456789abcdef";
    const OTHER: &str = "CAffffffffffffffffffffffffffffffff";

    #[test]
    fn a_placed_call_is_claimed_once_by_its_call_sid() {
        let p = Pending::default();
        p.insert(REF, Some("ctx".into()), 200, 100).unwrap();
        p.created(REF, CALL);
        assert_eq!(p.claim(REF, OTHER, 150), Claim::WrongCall);
        assert_eq!(
            p.claim(REF, CALL, 150),
            Claim::Placed {
                context: Some("ctx".into())
            }
        );
        assert_eq!(p.claim(REF, CALL, 150), Claim::AlreadyUsed);
        // Expired: pruned on the next insert, unknown from then on.
        p.insert("OB1", None, 400, 201).unwrap();
        assert_eq!(p.claim(REF, CALL, 202), Claim::Unknown);
    }

    #[test]
    fn a_call_over_before_its_stream_uses_its_entry_up() {
        let p = Pending::default();
        p.insert(REF, Some("ctx".into()), 200, 100).unwrap();
        p.created(REF, CALL);
        p.call_over(OTHER);
        p.call_over(CALL);
        assert_eq!(p.claim(REF, CALL, 150), Claim::AlreadyUsed);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_stream_ahead_of_the_answer_names_the_call() {
        let p = Pending::default();
        p.insert(REF, None, 200, 100).unwrap();
        assert_eq!(p.claim(REF, CALL, 101), Claim::Placed { context: None });
        // The answer's SID does not overwrite the one the stream named.
        p.created(REF, OTHER);
        p.call_over(OTHER);
        assert_eq!(p.claim(REF, CALL, 101), Claim::AlreadyUsed);
    }

    #[test]
    fn expired_and_forgotten_entries_are_unknown() {
        let p = Pending::default();
        p.insert(REF, None, 200, 100).unwrap();
        assert_eq!(p.claim(REF, CALL, 201), Claim::Unknown);
        p.forget(REF);
        assert!(p.is_empty());
        // Inserting prunes what has expired.
        p.insert(REF, None, 200, 100).unwrap();
        p.insert("OB1", None, 400, 300).unwrap();
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let p = Pending::default();
        for i in 0..MAX_PENDING {
            p.insert(&format!("OB{i}"), None, 200, 100).unwrap();
        }
        assert_eq!(p.insert(REF, None, 200, 100), Err(Full));
        // Once they expire there is room again.
        p.insert(REF, None, 400, 201).unwrap();
        assert_eq!(p.len(), 1);
    }
}
