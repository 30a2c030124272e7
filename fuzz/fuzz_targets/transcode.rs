//! Caller and model audio of any length and content, in any split: never a
//! panic; odd PCM byte counts are errors; output lengths follow the ratio.
#![no_main]
use callbridge::audio::{AudioMode, InboundTranscoder, OutboundTranscoder};
use libfuzzer_sys::fuzz_target;

// Peer-supplied arithmetic must be checked: these targets only build with
// debug assertions and overflow checks on (fuzz/Cargo.toml, scripts/fuzz).
const _: () = assert!(cfg!(debug_assertions), "build fuzz targets with -a");

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = (split as usize).min(rest.len());
    for mode in [AudioMode::Pcm16, AudioMode::Pcmu] {
        let mut inbound = InboundTranscoder::new(mode);
        let mut outbound = OutboundTranscoder::new(mode);
        for part in [&rest[..cut], &rest[cut..]] {
            let up = inbound.transcode(part).len();
            if mode == AudioMode::Pcm16 {
                assert_eq!(up, part.len() * 6);
            }
            match outbound.transcode(part) {
                Ok(_) => assert!(mode == AudioMode::Pcmu || part.len() % 2 == 0),
                Err(_) => assert!(mode == AudioMode::Pcm16 && part.len() % 2 == 1),
            }
        }
        let _ = inbound.flush();
        let _ = outbound.flush();
    }
});
