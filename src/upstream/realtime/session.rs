//! The `session.update` the bridge sends first, in the configured dialect.
//!
//! GA (and Azure GA) nest audio settings under `session.audio.{input,output}`
//! and require `session.type = "realtime"`; the beta dialect keeps them flat
//! (`input_audio_format`, `voice`, `turn_detection` at the top of `session`).
//! Built once per call (and again after a reconnect), so a `serde_json::Value`
//! is fine here.

use serde_json::{json, Value};

use crate::audio::AudioMode;
use crate::config::{AgentConfig, Dialect, TurnDetectionKind};
use crate::upstream::{SessionSpec, ToolSpec};

/// Builds the full `session.update` client event.
pub fn session_update(spec: &SessionSpec) -> Value {
    let (mode, agent) = (spec.mode, &spec.agent);
    let mut session = match spec.dialect {
        Dialect::Beta => beta_session(mode, agent),
        _ => ga_session(mode, agent),
    };
    if !spec.tools.is_empty() {
        session["tools"] = tools(&spec.tools);
        session["tool_choice"] = json!("auto");
    }
    json!({"type": "session.update", "session": session})
}

/// Function tools: the same shape in GA and beta.
fn tools(specs: &[ToolSpec]) -> Value {
    specs
        .iter()
        .map(|t| {
            json!({
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
            })
        })
        .collect()
}

fn ga_session(mode: AudioMode, agent: &AgentConfig) -> Value {
    let format = match mode {
        AudioMode::Pcm16 => json!({"type": "audio/pcm", "rate": 24000}),
        AudioMode::Pcmu => json!({"type": "audio/pcmu"}),
    };
    let mut input = json!({
        "format": format.clone(),
        "turn_detection": turn_detection(agent),
    });
    if !agent.transcription_model.is_empty() {
        input["transcription"] = json!({"model": agent.transcription_model});
    }
    json!({
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": agent.instructions,
        "audio": {
            "input": input,
            "output": {"format": format, "voice": agent.voice},
        },
    })
}

fn beta_session(mode: AudioMode, agent: &AgentConfig) -> Value {
    let format = match mode {
        AudioMode::Pcm16 => "pcm16",
        AudioMode::Pcmu => "g711_ulaw",
    };
    let transcription = if agent.transcription_model.is_empty() {
        Value::Null
    } else {
        json!({"model": agent.transcription_model})
    };
    json!({
        // The beta API accepts audio only together with text.
        "modalities": ["audio", "text"],
        "instructions": agent.instructions,
        "voice": agent.voice,
        "input_audio_format": format,
        "output_audio_format": format,
        "input_audio_transcription": transcription,
        "turn_detection": turn_detection(agent),
    })
}

/// Both dialects share this shape. The server creates and interrupts
/// responses itself; the bridge still cancels and truncates on barge-in
/// because only it knows what the caller actually heard.
fn turn_detection(agent: &AgentConfig) -> Value {
    let td = &agent.turn_detection;
    match td.kind {
        TurnDetectionKind::ServerVad => json!({
            "type": "server_vad",
            "threshold": td.threshold,
            "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms,
            "create_response": true,
            "interrupt_response": true,
        }),
        TurnDetectionKind::SemanticVad => json!({
            "type": "semantic_vad",
            "eagerness": td.eagerness,
            "create_response": true,
            "interrupt_response": true,
        }),
        TurnDetectionKind::None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn session_update(dialect: Dialect, mode: AudioMode, agent: &AgentConfig) -> Value {
        let mut config = Config::default();
        config.realtime.dialect = dialect;
        config.audio.mode = mode;
        config.agent = agent.clone();
        super::session_update(&SessionSpec::from_config(&config, Vec::new()))
    }

    #[test]
    fn ga_pcm16_matches_the_documented_shape() {
        let agent = Config::default().agent;
        let v = session_update(Dialect::Ga, AudioMode::Pcm16, &agent);
        assert_eq!(v["type"], "session.update");
        let s = &v["session"];
        assert_eq!(s["type"], "realtime");
        assert_eq!(s["output_modalities"], json!(["audio"]));
        assert_eq!(
            s["audio"]["input"]["format"],
            json!({"type":"audio/pcm","rate":24000})
        );
        assert_eq!(
            s["audio"]["output"]["format"],
            json!({"type":"audio/pcm","rate":24000})
        );
        assert_eq!(s["audio"]["output"]["voice"], "marin");
        assert_eq!(s["audio"]["input"]["transcription"]["model"], "whisper-1");
        assert_eq!(s["audio"]["input"]["turn_detection"]["type"], "server_vad");
        assert_eq!(
            s["audio"]["input"]["turn_detection"]["silence_duration_ms"],
            500
        );
    }

    #[test]
    fn pcmu_mode_uses_mulaw_both_ways_in_each_dialect() {
        let agent = Config::default().agent;
        let ga = session_update(Dialect::Azure, AudioMode::Pcmu, &agent);
        assert_eq!(
            ga["session"]["audio"]["input"]["format"],
            json!({"type":"audio/pcmu"})
        );
        assert_eq!(
            ga["session"]["audio"]["output"]["format"],
            json!({"type":"audio/pcmu"})
        );
        let beta = session_update(Dialect::Beta, AudioMode::Pcmu, &agent);
        assert_eq!(beta["session"]["input_audio_format"], "g711_ulaw");
        assert_eq!(beta["session"]["output_audio_format"], "g711_ulaw");
        assert!(beta["session"].get("type").is_none());
    }

    #[test]
    fn manual_turns_and_no_transcription() {
        let mut agent = Config::default().agent;
        agent.turn_detection.kind = TurnDetectionKind::None;
        agent.transcription_model.clear();
        let ga = session_update(Dialect::Ga, AudioMode::Pcm16, &agent);
        assert!(ga["session"]["audio"]["input"]["turn_detection"].is_null());
        assert!(ga["session"]["audio"]["input"]
            .get("transcription")
            .is_none());
        let beta = session_update(Dialect::Beta, AudioMode::Pcm16, &agent);
        assert!(beta["session"]["turn_detection"].is_null());
        assert!(beta["session"]["input_audio_transcription"].is_null());
    }
}
