//! The stream token arrives in `start.customParameters`: attacker-controlled.
//! Only a token issued for the CallSid may verify, and it
//! verifies to the profile it was issued with.
#![no_main]
use callbridge::twilio::token::StreamTokens;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

// Peer-supplied arithmetic must be checked: these targets only build with
// debug assertions and overflow checks on (fuzz/Cargo.toml, scripts/fuzz).
const _: () = assert!(cfg!(debug_assertions), "build fuzz targets with -a");

fuzz_target!(|data: &[u8]| {
    let tokens = StreamTokens::new(b"fuzz-key", Duration::from_secs(60));
    if let Ok(text) = std::str::from_utf8(data) {
        let (token, call_sid) = text.split_once('\n').unwrap_or((text, "CA0"));
        if let Ok(profile) = tokens.verify(token, call_sid, 1_000) {
            let expiry = token
                .split('.')
                .nth(1)
                .and_then(|e| e.parse::<u64>().ok())
                .unwrap_or(0);
            assert_eq!(
                token,
                tokens.issue(call_sid, profile, expiry.saturating_sub(60))
            );
        }
    }
});
