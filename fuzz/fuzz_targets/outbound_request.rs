//! The body of `POST /calls` is checked before anything reaches Twilio or
//! the model: whatever bytes arrive, a request that passes has two E.164
//! numbers, a destination on the allow-list, and a context that renders
//! bounded and with nothing that looks like markup.
#![no_main]
use callbridge::config::{is_e164, OutboundConfig};
use callbridge::outbound::request::{self, CONTEXT_LEAD, MAX_CONTEXT_BYTES};
use libfuzzer_sys::fuzz_target;

// Peer-supplied arithmetic must be checked: these targets only build with
// debug assertions and overflow checks on (fuzz/Cargo.toml, scripts/fuzz).
const _: () = assert!(cfg!(debug_assertions), "build fuzz targets with -a");

fuzz_target!(|data: &[u8]| {
    let allowed = OutboundConfig {
        allowed_prefixes: vec!["+1".into(), "+4420".into()],
    };
    let Ok(call) = request::parse(data, &allowed) else {
        return;
    };
    assert!(is_e164(&call.to) && is_e164(&call.from));
    assert!(call.to.starts_with("+1") || call.to.starts_with("+4420"));
    let Some(raw) = call.context.as_deref() else {
        return;
    };
    if let Ok(Some(text)) = request::render_context(Some(raw)) {
        let json = text.strip_prefix(CONTEXT_LEAD).expect("the lead comes first");
        assert!(json.len() <= MAX_CONTEXT_BYTES);
        assert!(!json.contains(['<', '>', '&']));
        // The same JSON as sent, whitespace aside: parsed the same way
        // (numbers included, however lossy f64 parsing is).
        let back: serde_json::Value = serde_json::from_str(json).expect("still JSON");
        let sent: serde_json::Value = serde_json::from_str(raw.get()).expect("parsed before");
        assert_eq!(back, sent);
        assert!(back.is_object());
    }
});
