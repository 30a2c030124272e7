//! Any text Twilio (or anyone who reached /media) sends must parse or fail
//! cleanly; a parsed message's accessors must not panic either.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Peer-supplied arithmetic must be checked: these targets only build with
// debug assertions and overflow checks on (fuzz/Cargo.toml, scripts/fuzz).
const _: () = assert!(cfg!(debug_assertions), "build fuzz targets with -a");

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(msg) = callbridge::twilio::messages::parse_inbound(text) {
            let _ = msg.sequence_number();
            let _ = msg.event();
            if let callbridge::twilio::messages::Inbound::Media { media, .. } = &msg {
                let _ = media.timestamp_ms();
                let _ = media.chunk_number();
            }
        }
    }
});
