//! Writes every variant of every client event the bridge can send, through
//! each protocol driver, so that conformance/check_client_events.py validates
//! them all against the official `openai` models (not only those the call
//! scenarios happen to hit).

mod support;

use callbridge::audio::AudioMode;
use callbridge::config::{Config, Dialect, TurnDetectionKind};
use callbridge::upstream::{driver_for, Heard, Role, SessionSpec, ToolOutput, ToolSpec, Turn};
use serde_json::{json, Value};

fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: "lookup_order".into(),
        description: "Look up an order by its number".into(),
        parameters: json!({
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        }),
    }]
}

fn history() -> Vec<Turn> {
    vec![
        Turn {
            role: Role::Caller,
            text: "Where is my order 123?".into(),
        },
        Turn {
            role: Role::Assistant,
            text: "It shipped on \"Monday\".".into(),
        },
    ]
}

#[test]
fn all_client_event_variants() {
    for dialect in Dialect::ALL {
        let mut out: Vec<String> = Vec::new();
        for mode in [AudioMode::Pcm16, AudioMode::Pcmu] {
            for kind in [
                TurnDetectionKind::ServerVad,
                TurnDetectionKind::SemanticVad,
                TurnDetectionKind::None,
            ] {
                for transcription in ["whisper-1", ""] {
                    for with_tools in [false, true] {
                        let mut config = Config::default();
                        config.realtime.dialect = dialect;
                        config.audio.mode = mode;
                        config.agent.turn_detection.kind = kind;
                        config.agent.transcription_model = transcription.into();
                        let tools = if with_tools { tools() } else { Vec::new() };
                        let mut driver = driver_for(SessionSpec::from_config(&config, tools));
                        driver.open(&[], &mut out);
                        driver.open(&history(), &mut out);
                    }
                }
            }
        }
        let mut config = Config::default();
        config.realtime.dialect = dialect;
        let mut driver = driver_for(SessionSpec::from_config(&config, tools()));
        let mut append = String::new();
        driver.append_audio(&[0, 1, 2, 3, 255], &mut append);
        out.push(append);
        driver.speak("Greet the caller as \"Acme\" support.", &mut out);
        driver.user_text("The caller pressed on the keypad: 1 2 3 #", &mut out);
        driver.interrupt(
            &[
                Heard {
                    item_id: "item_1",
                    audio_end_ms: 1234,
                },
                Heard {
                    item_id: "item_2",
                    audio_end_ms: 0,
                },
            ],
            &mut out,
        );
        driver.tool_outputs(
            &[
                ToolOutput {
                    call_id: "call_1".into(),
                    output: r#"{"status":"shipped"}"#.into(),
                },
                ToolOutput {
                    call_id: "call_2".into(),
                    output: r#"{"error":"timeout"}"#.into(),
                },
            ],
            &mut out,
        );
        driver.close(&mut out);
        let events: Vec<Value> = out
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert!(events.len() > 10, "{dialect}: {}", events.len());
        support::save_client_events(&format!("variants_{dialect}"), dialect, &events);
    }
}
