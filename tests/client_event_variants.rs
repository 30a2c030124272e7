//! Writes every variant of every client event the bridge can send, so that
//! conformance/check_client_events.py validates them all against the
//! official `openai` models (not only those the call scenarios happen to hit).

mod support;

use callbridge::audio::AudioMode;
use callbridge::config::{Config, Dialect, TurnDetectionKind};
use callbridge::realtime::events::{write_append, write_response_cancel, write_truncate};
use callbridge::realtime::session::session_update;
use serde_json::Value;

#[test]
fn all_client_event_variants() {
    for dialect in [Dialect::Ga, Dialect::Azure, Dialect::Beta] {
        let mut events: Vec<Value> = Vec::new();
        for mode in [AudioMode::Pcm16, AudioMode::Pcmu] {
            for kind in [
                TurnDetectionKind::ServerVad,
                TurnDetectionKind::SemanticVad,
                TurnDetectionKind::None,
            ] {
                for transcription in ["whisper-1", ""] {
                    let mut agent = Config::default().agent;
                    agent.turn_detection.kind = kind;
                    agent.transcription_model = transcription.into();
                    events.push(session_update(dialect, mode, &agent));
                }
            }
        }
        let mut s = String::new();
        write_append(&mut s, &[0, 1, 2, 3, 255]);
        events.push(serde_json::from_str(&s).unwrap());
        write_response_cancel(&mut s, Some("resp_1"));
        events.push(serde_json::from_str(&s).unwrap());
        write_response_cancel(&mut s, None);
        events.push(serde_json::from_str(&s).unwrap());
        write_truncate(&mut s, "item_1", 1234);
        events.push(serde_json::from_str(&s).unwrap());
        support::save_client_events(&format!("variants_{dialect}"), dialect, &events);
    }
}
