//! What the simulator parses from a bridge under test.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = callbridge::twilio::messages::parse_outbound(text);
    }
});
