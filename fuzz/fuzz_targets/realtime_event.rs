//! Any frame from the model's socket must parse or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(callbridge::realtime::events::ServerEvent::Error(e)) =
        callbridge::realtime::events::parse_server_event(data)
    {
        let _ = (e.is_benign(), e.is_fatal(), e.code());
    }
});
