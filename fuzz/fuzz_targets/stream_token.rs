//! The stream token arrives in `start.customParameters`: attacker-controlled.
//! Only a token issued for the CallSid may verify.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let tokens = callbridge::twilio::token::StreamTokens::new(b"fuzz-key", Duration::from_secs(60));
    if let Ok(text) = std::str::from_utf8(data) {
        let (token, call_sid) = text.split_once('\n').unwrap_or((text, "CA0"));
        if tokens.verify(token, call_sid, 1_000).is_ok() {
            assert_eq!(token, tokens.issue(call_sid, token_expiry(token).saturating_sub(60)));
        }
    }
});

fn token_expiry(token: &str) -> u64 {
    token.split('.').nth(1).and_then(|e| e.parse().ok()).unwrap_or(0)
}
