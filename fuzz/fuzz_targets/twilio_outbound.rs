//! What the simulator parses from a bridge under test.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Peer-supplied arithmetic must be checked: these targets only build with
// debug assertions and overflow checks on (fuzz/Cargo.toml, scripts/fuzz).
const _: () = assert!(cfg!(debug_assertions), "build fuzz targets with -a");

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = callbridge::twilio::messages::parse_outbound(text);
    }
});
