//! Any frame from the model's socket must parse or fail cleanly, through
//! every protocol driver (Realtime GA/beta/Azure and GPT-Live).
#![no_main]
use callbridge::config::{Config, Dialect};
use callbridge::upstream::{driver_for, SessionSpec};
use libfuzzer_sys::fuzz_target;

// Peer-supplied arithmetic must be checked: these targets only build with
// debug assertions and overflow checks on (fuzz/Cargo.toml, scripts/fuzz).
const _: () = assert!(cfg!(debug_assertions), "build fuzz targets with -a");

fuzz_target!(|data: &[u8]| {
    for dialect in [Dialect::Ga, Dialect::Beta, Dialect::Live] {
        let mut config = Config::default();
        config.realtime.dialect = dialect;
        let mut driver = driver_for(SessionSpec::from_config(&config, Vec::new()));
        let mut out = Vec::new();
        driver.open(&[], &mut out);
        // Twice: the second frame meets the state the first one left.
        let _ = driver.on_frame(data, &mut out);
        let _ = driver.on_frame(data, &mut out);
    }
});
