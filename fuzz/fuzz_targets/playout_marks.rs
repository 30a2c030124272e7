//! Mark names echoed by Twilio are attacker-controlled text; the ledger must
//! take any of them, with two items queued (one playing, the next partly
//! sent); every truncation must stay between acked and sent, name each item
//! at most once, and marks from before a barge-in must count for nothing.
#![no_main]
use callbridge::call::playout::{MarkEcho, Playout};
use libfuzzer_sys::fuzz_target;
use tokio::time::{Duration, Instant};

// Peer-supplied arithmetic must be checked: these targets only build with
// debug assertions and overflow checks on (fuzz/Cargo.toml, scripts/fuzz).
const _: () = assert!(cfg!(debug_assertions), "build fuzz targets with -a");

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut p = Playout::new(Duration::from_millis(200));
    // 300 ms of item_a, then 400 ms of item_b; sending every 100 ms under a
    // 200 ms lead sends all of item_a and 200 ms of item_b by t0 + 300 ms.
    p.push("item_a", &[0xFF; 8 * 300]);
    p.push("item_b", &[0xFF; 8 * 400]);
    for step in 0..4 {
        let now = t0 + Duration::from_millis(100 * step);
        while p.next_chunk(now).is_some() {}
    }
    let names: Vec<&str> = std::str::from_utf8(data)
        .map(|text| text.split('\n').collect())
        .unwrap_or_default();
    for name in &names {
        let _ = p.on_mark(name);
    }
    let cuts = p.interrupt(t0 + Duration::from_millis(350));
    for (i, t) in cuts.iter().enumerate() {
        assert!(
            t.acked_ms <= t.audio_end_ms && t.audio_end_ms <= t.sent_ms,
            "{t:?}"
        );
        assert!(t.item_id == "item_a" || t.item_id == "item_b", "{t:?}");
        assert!(cuts[..i].iter().all(|c| c.item_id != t.item_id), "{cuts:?}");
    }
    // Twilio echoes the pending marks on `clear`: none of them was played.
    for name in &names {
        assert!(
            !matches!(p.on_mark(name), MarkEcho::Played { .. }),
            "{name}"
        );
    }
});
