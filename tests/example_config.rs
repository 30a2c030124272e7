//! config/assistant-example.toml, the README's worked example, loads and
//! means what its comments say, so it cannot rot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use callbridge::audio::AudioMode;
use callbridge::config::{Config, ConfigError, DtmfMode, Profile, Secret, Secrets};
use callbridge::metrics::Metrics;
use callbridge::server::Server;

const TOKEN_VAR: &str = "ACME_API_TOKEN";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/assistant-example.toml")
}

fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load(Some(&example()), &env)
}

fn profile<'a>(profiles: &'a [Profile], name: &str) -> &'a Profile {
    profiles
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no profile {name}"))
}

fn tool_names(p: &Profile) -> Vec<&str> {
    p.agent.tools.iter().map(|t| t.name.as_str()).collect()
}

fn targets(p: &Profile) -> Vec<(&str, &str)> {
    p.agent
        .call_control
        .transfer_targets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn example_config_resolves_three_assistants_by_called_number() {
    let config = load(&[(TOKEN_VAR, "tok-example")]).unwrap();

    // Chosen by Twilio's `To`.
    assert_eq!(config.profile_name_for("+14155550100"), "sales");
    assert_eq!(config.profile_name_for("+14155550199"), "afterhours");
    assert_eq!(config.profile_name_for("+14155550198"), "afterhours");
    assert_eq!(config.profile_name_for("+14155550111"), "default");
    let profiles = config.profiles();
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "afterhours", "sales"]);

    // The front desk: a tool, end_call, two transfer targets, DTMF, a greeting.
    let desk = profile(&profiles, "default");
    assert_eq!(desk.audio_mode, AudioMode::Pcm16);
    assert_eq!(desk.agent.voice, "marin");
    assert!(desk.agent.greeting.contains("front desk"));
    assert_eq!(desk.agent.dtmf, DtmfMode::Model);
    assert_eq!(desk.agent.dtmf_timeout_ms, 2000);
    assert_eq!(tool_names(desk), ["lookup_order"]);
    let lookup = &desk.agent.tools[0];
    assert_eq!(lookup.timeout_ms, 3000);
    assert_eq!(lookup.parameters["required"][0], "order_id");
    let auth = lookup.headers["Authorization"].value().unwrap();
    assert_eq!(auth.expose(), "Bearer tok-example");
    assert!(desk.agent.call_control.end_call);
    assert_eq!(
        targets(desk),
        [
            ("sales", "+14155550123"),
            ("support", "sip:support@pbx.acme.example")
        ]
    );

    // Sales: its own voice, greeting, tool and target; the rest from [agent].
    let sales = profile(&profiles, "sales");
    assert_eq!(sales.agent.voice, "cedar");
    assert_eq!(sales.agent.greeting, "Greet the caller as Acme sales.");
    assert!(sales.agent.instructions.contains("sales assistant"));
    assert_eq!(tool_names(sales), ["book_callback"]);
    assert_eq!(
        sales.agent.tools[0].headers["Authorization"]
            .value()
            .unwrap()
            .expose(),
        "Bearer tok-example"
    );
    assert!(sales.agent.call_control.end_call);
    assert_eq!(sales.agent.call_control.end_call_timeout_ms, 10_000);
    assert_eq!(targets(sales), [("human", "+14155550123")]);
    assert_eq!(sales.agent.dtmf, DtmfMode::Model);
    assert_eq!(sales.agent.dtmf_timeout_ms, 2000);
    assert_eq!(sales.audio_mode, AudioMode::Pcm16);

    // After hours: no tools, no transfers, keypad ignored, μ-law through.
    let closed = profile(&profiles, "afterhours");
    assert_eq!(closed.audio_mode, AudioMode::Pcmu);
    assert_eq!(closed.agent.voice, "marin");
    assert!(closed.agent.greeting.contains("closed"));
    assert!(closed.agent.tools.is_empty());
    assert!(closed.agent.call_control.end_call);
    assert!(targets(closed).is_empty());
    assert_eq!(closed.agent.dtmf, DtmfMode::Ignore);

    // The header's secret never shows in Debug output.
    assert!(!format!("{config:?}").contains("tok-example"));

    // The server accepts it as is: tools, transfer targets and profiles.
    let mut config = config;
    config.public_url = Some("https://bridge.example.com".into());
    let secrets = Secrets {
        openai_api_key: Some(Secret::new("sk-example".to_owned())),
        twilio_auth_token: Some(Secret::new("twilio-example".to_owned())),
        ..Secrets::default()
    };
    Server::new(config, secrets, Metrics::new()).unwrap();
}

#[test]
fn example_config_needs_the_token_its_headers_reference() {
    for env in [&[][..], &[(TOKEN_VAR, "")][..]] {
        let err = load(env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(TOKEN_VAR), "{text}");
        assert!(text.contains("headers.Authorization"), "{text}");
    }
}
