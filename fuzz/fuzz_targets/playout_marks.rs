//! Mark names echoed by Twilio are attacker-controlled text; the ledger must
//! take any of them, and a truncation must stay between acked and sent.
#![no_main]
use callbridge::call::playout::Playout;
use libfuzzer_sys::fuzz_target;
use tokio::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut p = Playout::new(Duration::from_millis(200));
    p.push("item_a", &[0xFF; 8 * 500]);
    while p.next_chunk(t0).is_some() {}
    if let Ok(text) = std::str::from_utf8(data) {
        for name in text.split('\n') {
            let _ = p.on_mark(name);
        }
    }
    if let Some(t) = p.interrupt(t0 + Duration::from_millis(50)) {
        assert!(t.acked_ms <= t.audio_end_ms && t.audio_end_ms <= t.sent_ms);
    }
});
