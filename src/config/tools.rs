//! HTTP tools from config (`[[agent.tools]]`): their shape, validation, and
//! the `${NAME}` expansion of header values at start-up.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{redact_query, Config, ConfigError, Secret};

/// Names the model may not use for HTTP tools: the built-in call control.
pub const RESERVED_TOOL_NAMES: [&str; 2] = ["end_call", "transfer_call"];
/// `timeout_ms` of an HTTP tool when not set.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 5000;
/// The longest `timeout_ms` an HTTP tool may have: the caller is waiting.
pub const MAX_TOOL_TIMEOUT_MS: u64 = 60_000;
/// Headers the tool runner sets itself (the body is always JSON).
const RESERVED_TOOL_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "user-agent",
];

/// One HTTP tool the model may call (`[[agent.tools]]`). The bridge sends the
/// endpoint `{"name", "call_id", "arguments", "call"}` as JSON; a 2xx
/// answer's body is what the model reads (see [`crate::call::http_tools`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// What the model calls it: `^[a-zA-Z0-9_-]{1,64}$`, unique, not a built-in.
    pub name: String,
    /// When and why the model should call it.
    pub description: String,
    /// A JSON-Schema object (`type = "object"`); unset: no arguments.
    #[serde(default = "default_tool_parameters")]
    pub parameters: serde_json::Value,
    /// The endpoint, `https://` (or `http://`).
    pub url: String,
    #[serde(default)]
    pub method: ToolMethod,
    /// Bound on the whole request (connect, send, answer), 1–60000 ms.
    #[serde(default = "default_tool_timeout_ms")]
    pub timeout_ms: u64,
    /// Sent with every request; values may reference `${NAME}`, expanded
    /// from the environment at start-up and redacted in `Debug`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, ToolHeader>,
}

impl fmt::Debug for ToolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's query may carry a key: never shown.
        let url = match Url::parse(&self.url) {
            Ok(url) => redact_query(&url),
            Err(_) => "<invalid>".to_owned(),
        };
        f.debug_struct("ToolConfig")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("parameters", &self.parameters)
            .field("url", &url)
            .field("method", &self.method)
            .field("timeout_ms", &self.timeout_ms)
            .field("headers", &self.headers)
            .finish()
    }
}

impl ToolConfig {
    /// A POST tool with no arguments, no headers and the default timeout.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        url: impl Into<String>,
    ) -> Self {
        ToolConfig {
            name: name.into(),
            description: description.into(),
            parameters: default_tool_parameters(),
            url: url.into(),
            method: ToolMethod::default(),
            timeout_ms: DEFAULT_TOOL_TIMEOUT_MS,
            headers: Default::default(),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

fn default_tool_parameters() -> serde_json::Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

fn default_tool_timeout_ms() -> u64 {
    DEFAULT_TOOL_TIMEOUT_MS
}

/// The HTTP method of a tool's request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolMethod {
    #[default]
    #[serde(rename = "POST", alias = "post")]
    Post,
    #[serde(rename = "PUT", alias = "put")]
    Put,
}

impl ToolMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolMethod::Post => "POST",
            ToolMethod::Put => "PUT",
        }
    }
}

/// A tool's header value as written (`"Bearer ${ORDERS_TOKEN}"`) and, once
/// expanded, as sent. `Debug` shows neither; serializing gives the template,
/// never the expanded value.
#[derive(Clone, PartialEq, Eq)]
pub struct ToolHeader {
    template: String,
    value: Option<Secret>,
}

impl ToolHeader {
    /// A value as written; without `${…}` references it is ready to send.
    pub fn new(template: impl Into<String>) -> Self {
        let template = template.into();
        let value = match parse_template(&template) {
            Ok(parts) if parts.iter().all(|p| matches!(p, Part::Text(_))) => {
                Some(Secret::new(template.clone()))
            }
            _ => None,
        };
        ToolHeader { template, value }
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// The value to send; `None` until its `${…}` references are expanded
    /// ([`Config::expand_env`]).
    pub fn value(&self) -> Option<&Secret> {
        self.value.as_ref()
    }

    /// Expands `${NAME}` from `env`; `Err` holds the missing or empty
    /// variable's name and why.
    fn expand(&mut self, env: &HashMap<String, String>) -> Result<(), (String, &'static str)> {
        let parts = parse_template(&self.template).map_err(|why| (String::new(), why))?;
        let mut value = String::with_capacity(self.template.len());
        for part in parts {
            match part {
                Part::Text(text) => value.push_str(text),
                Part::Var(name) => match env.get(name) {
                    Some(v) if !v.is_empty() => value.push_str(v),
                    Some(_) => return Err((name.to_owned(), "is set but empty")),
                    None => return Err((name.to_owned(), "is not set")),
                },
            }
        }
        self.value = Some(Secret::new(value));
        Ok(())
    }
}

impl fmt::Debug for ToolHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for ToolHeader {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.template)
    }
}

impl<'de> Deserialize<'de> for ToolHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(ToolHeader::new)
    }
}

enum Part<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits `a ${NAME} b` into text and variable references. A `$` not
/// followed by `{` is text.
fn parse_template(template: &str) -> Result<Vec<Part<'_>>, &'static str> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("has a `${` without its closing `}`");
        };
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err("references a variable whose name is not [A-Za-z_][A-Za-z0-9_]*");
        }
        parts.push(Part::Var(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

impl Config {
    /// Expands the `${NAME}` references of tool headers from `env` (the
    /// environment [`Config::load`] was given). `load` calls it; a config
    /// built in code calls it before use.
    pub fn expand_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        expand_tool_headers(&mut self.agent.tools, "agent.tools", env)?;
        for (name, profile) in &mut self.agents {
            if let Some(tools) = &mut profile.tools {
                expand_tool_headers(tools, &format!("agents.{name}.tools"), env)?;
            }
        }
        Ok(())
    }
}

/// Expands the header values of `tools` (at config key `key`) from `env`.
pub fn expand_tool_headers(
    tools: &mut [ToolConfig],
    key: &str,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (i, tool) in tools.iter_mut().enumerate() {
        for (header, value) in tool.headers.iter_mut() {
            let at = format!("{key}[{i}].headers.{header}");
            value.expand(env).map_err(|(var, why)| {
                let reason = if var.is_empty() {
                    format!("tool `{}`, header `{header}`: the value {why}", tool.name)
                } else {
                    format!(
                        "tool `{}`, header `{header}`: the environment variable {var} {why}",
                        tool.name
                    )
                };
                ConfigError::Key { key: at, reason }
            })?;
        }
    }
    Ok(())
}

/// Checks `tools` (at config key `key`, e.g. `agent.tools`).
pub fn validate_tools(tools: &[ToolConfig], key: &str) -> Result<(), ConfigError> {
    for (i, tool) in tools.iter().enumerate() {
        let at = |field: &str| format!("{key}[{i}].{field}");
        let bad = |field: &str, reason: String| ConfigError::Key {
            key: at(field),
            reason,
        };
        let name = tool.name.as_str();
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(bad(
                "name",
                format!("must be 1 to 64 letters, digits, `_` or `-` (got {name:?})"),
            ));
        }
        if RESERVED_TOOL_NAMES.contains(&name) {
            return Err(bad(
                "name",
                format!("`{name}` is a built-in call-control tool; give this tool another name"),
            ));
        }
        if let Some(j) = tools[..i].iter().position(|t| t.name == name) {
            return Err(bad(
                "name",
                format!("`{name}` is already the name of {key}[{j}]; tool names must be unique"),
            ));
        }
        if tool.description.trim().is_empty() {
            return Err(bad(
                "description",
                "must not be empty: it tells the model when to call the tool".into(),
            ));
        }
        match &tool.parameters {
            serde_json::Value::Object(schema) => {
                if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
                    return Err(bad(
                        "parameters",
                        "must be a JSON-Schema object with type = \"object\"".into(),
                    ));
                }
                if schema.get("properties").is_some_and(|p| !p.is_object()) {
                    return Err(bad("parameters", "`properties` must be a table".into()));
                }
            }
            _ => {
                return Err(bad(
                    "parameters",
                    "must be a table (a JSON-Schema object with type = \"object\")".into(),
                ))
            }
        }
        let shown = match tool.url.split_once('?') {
            Some((base, _)) => format!("{base}?…"),
            None => tool.url.clone(),
        };
        let url = Url::parse(&tool.url)
            .map_err(|e| bad("url", format!("not a URL: {e} (got {shown:?})")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad(
                "url",
                format!("must start with https:// or http:// (got {shown:?})"),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("url", format!("has no host (got {shown:?})")));
        }
        if !(1..=MAX_TOOL_TIMEOUT_MS).contains(&tool.timeout_ms) {
            return Err(bad(
                "timeout_ms",
                format!(
                    "must be between 1 and {MAX_TOOL_TIMEOUT_MS} (got {})",
                    tool.timeout_ms
                ),
            ));
        }
        for (header, value) in &tool.headers {
            let at = format!("headers.{header}");
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(bad(&at, "is not a valid HTTP header name".into()));
            }
            if RESERVED_TOOL_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
                return Err(bad(&at, "is set by callbridge itself".into()));
            }
            if let Err(why) = parse_template(value.template()) {
                return Err(bad(&at, format!("the value {why}")));
            }
            // Never echo the value: it may be a secret.
            if let Some(v) = value.value() {
                if http::HeaderValue::from_str(v.expose()).is_err() {
                    return Err(bad(
                        &at,
                        "the value (after expanding ${…}) is not a valid HTTP header value".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(Some(f.path()), &env)
    }

    fn key_error(result: Result<Config, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Key { key, reason }) => (key, reason),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    const TWO_TOOLS: &str = r#"
        [[agent.tools]]
        name = "lookup_order"
        description = "Look up an order by its number"
        url = "https://tools.example.com/orders?key=sekrit-in-url"
        timeout_ms = 3000
        headers = { Authorization = "Bearer ${ORDERS_TOKEN}", X-Tenant = "acme" }
        [agent.tools.parameters]
        type = "object"
        required = ["order_id"]
        [agent.tools.parameters.properties.order_id]
        type = "string"
        description = "The order number"

        [[agent.tools]]
        name = "log-workout"
        description = "Log a workout"
        url = "http://127.0.0.1:9000/workouts"
        method = "PUT"
    "#;

    #[test]
    fn tools_load_with_defaults_and_expanded_headers() {
        let c = load(TWO_TOOLS, &[("ORDERS_TOKEN", "tok-very-secret")]).unwrap();
        assert_eq!(c.agent.tools.len(), 2);
        let t = &c.agent.tools[0];
        assert_eq!(t.name, "lookup_order");
        assert_eq!(t.method, ToolMethod::Post);
        assert_eq!(t.timeout_ms, 3000);
        assert_eq!(
            t.parameters["properties"]["order_id"]["type"],
            serde_json::json!("string")
        );
        assert_eq!(t.parameters["required"], serde_json::json!(["order_id"]));
        let auth = &t.headers["Authorization"];
        assert_eq!(auth.template(), "Bearer ${ORDERS_TOKEN}");
        assert_eq!(auth.value().unwrap().expose(), "Bearer tok-very-secret");
        assert_eq!(t.headers["X-Tenant"].value().unwrap().expose(), "acme");
        let t = &c.agent.tools[1];
        assert_eq!(t.method, ToolMethod::Put);
        assert_eq!(t.timeout_ms, DEFAULT_TOOL_TIMEOUT_MS);
        assert_eq!(t.parameters, default_tool_parameters());
        assert!(t.headers.is_empty());
    }

    #[test]
    fn tool_secrets_are_not_shown_by_debug_or_serialized() {
        let c = load(TWO_TOOLS, &[("ORDERS_TOKEN", "tok-very-secret")]).unwrap();
        let shown = format!("{c:?} {:?}", c.agent);
        assert!(!shown.contains("tok-very-secret"), "{shown}");
        assert!(!shown.contains("sekrit-in-url"), "{shown}");
        assert!(shown.contains("lookup_order"), "{shown}");
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("tok-very-secret"), "{json}");
        assert!(json.contains("${ORDERS_TOKEN}"), "{json}");
    }

    #[test]
    fn a_missing_env_var_names_the_tool_the_header_and_the_variable() {
        let (key, reason) = key_error(load(TWO_TOOLS, &[]));
        assert_eq!(key, "agent.tools[0].headers.Authorization");
        assert!(reason.contains("lookup_order"), "{reason}");
        assert!(reason.contains("Authorization"), "{reason}");
        assert!(reason.contains("ORDERS_TOKEN"), "{reason}");
        assert!(reason.contains("not set"), "{reason}");
        let (_, reason) = key_error(load(TWO_TOOLS, &[("ORDERS_TOKEN", "")]));
        assert!(
            reason.contains("ORDERS_TOKEN") && reason.contains("empty"),
            "{reason}"
        );
    }

    fn one_tool(fields: &str) -> String {
        format!(
            "[[agent.tools]]\n{fields}\n{}",
            [
                ("name", "name = \"t\""),
                ("description", "description = \"d\""),
                ("url", "url = \"https://x.example/t\""),
            ]
            .iter()
            .filter(|(k, _)| !fields.lines().any(|l| l.trim_start().starts_with(k)))
            .map(|(_, line)| format!("{line}\n"))
            .collect::<String>()
        )
    }

    #[test]
    fn each_bad_tool_value_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("name = \"has space\"", "agent.tools[0].name"),
            ("name = \"\"", "agent.tools[0].name"),
            ("name = \"ünïcode\"", "agent.tools[0].name"),
            (
                &*format!("name = \"{}\"", "a".repeat(65)),
                "agent.tools[0].name",
            ),
            ("name = \"end_call\"", "agent.tools[0].name"),
            ("name = \"transfer_call\"", "agent.tools[0].name"),
            ("description = \"  \"", "agent.tools[0].description"),
            ("url = \"ftp://x.example/t\"", "agent.tools[0].url"),
            ("url = \"not a url\"", "agent.tools[0].url"),
            ("url = \"wss://x.example/t\"", "agent.tools[0].url"),
            ("timeout_ms = 0", "agent.tools[0].timeout_ms"),
            ("timeout_ms = 60001", "agent.tools[0].timeout_ms"),
            (
                "parameters = { type = \"string\" }",
                "agent.tools[0].parameters",
            ),
            (
                "parameters = { properties = {} }",
                "agent.tools[0].parameters",
            ),
            (
                "parameters = { type = \"object\", properties = 3 }",
                "agent.tools[0].parameters",
            ),
            (
                "headers = { \"Bad Name\" = \"x\" }",
                "agent.tools[0].headers.Bad Name",
            ),
            (
                "headers = { Content-Type = \"text/plain\" }",
                "agent.tools[0].headers.Content-Type",
            ),
            (
                "headers = { X-Key = \"${UNCLOSED\" }",
                "agent.tools[0].headers.X-Key",
            ),
            (
                "headers = { X-Key = \"${1BAD}\" }",
                "agent.tools[0].headers.X-Key",
            ),
            (
                "headers = { X-Key = \"line\\nbreak\" }",
                "agent.tools[0].headers.X-Key",
            ),
        ];
        for (fields, want) in cases {
            let (key, reason) = key_error(load(&one_tool(fields), &[]));
            assert_eq!(&key, want, "{fields}: {reason}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn method_is_post_or_put_and_unknown_tool_keys_are_rejected() {
        let (key, _) = key_error(load(&one_tool("method = \"GET\""), &[]));
        assert_eq!(key, "agent.tools[0].method");
        let c = load(&one_tool("method = \"put\""), &[]).unwrap();
        assert_eq!(c.agent.tools[0].method, ToolMethod::Put);
        let (key, _) = key_error(load(&one_tool("urll = \"https://x\""), &[]));
        assert_eq!(key, "agent.tools[0].urll");
        let toml = format!(
            "{}[[agent.tools]]\nname = \"u\"\nurl = \"https://x\"\n",
            one_tool("")
        );
        let (key, reason) = key_error(load(&toml, &[]));
        assert_eq!(key, "agent.tools[1]");
        assert!(reason.contains("description"), "{reason}");
    }

    #[test]
    fn duplicate_names_are_rejected_naming_the_second() {
        let toml = format!(
            "{}{}",
            one_tool("name = \"same\""),
            one_tool("name = \"same\"")
        );
        let (key, reason) = key_error(load(&toml, &[]));
        assert_eq!(key, "agent.tools[1].name");
        assert!(reason.contains("agent.tools[0]"), "{reason}");
    }

    #[test]
    fn a_url_query_is_never_echoed_in_errors() {
        let (key, reason) = key_error(load(
            &one_tool("url = \"ftp://x.example/t?key=sekrit\""),
            &[],
        ));
        assert_eq!(key, "agent.tools[0].url");
        assert!(!reason.contains("sekrit"), "{reason}");
    }

    #[test]
    fn header_values_are_never_echoed_in_errors() {
        let toml = one_tool("headers = { X-Key = \"Bearer ${TOKEN}\" }");
        let (key, reason) = key_error(load(&toml, &[("TOKEN", "bad\nsekrit")]));
        assert_eq!(key, "agent.tools[0].headers.X-Key");
        assert!(!reason.contains("sekrit"), "{reason}");
    }

    #[test]
    fn code_built_configs_expand_with_expand_env() {
        let mut c = Config::default();
        let mut tool = ToolConfig::new("t", "d", "https://x.example/t");
        tool.headers
            .insert("X-Key".into(), ToolHeader::new("k-${KEY}"));
        c.agent.tools.push(tool);
        assert!(c.agent.tools[0].headers["X-Key"].value().is_none());
        c.validate().unwrap();
        let env = HashMap::from([("KEY".to_owned(), "v".to_owned())]);
        c.expand_env(&env).unwrap();
        assert_eq!(
            c.agent.tools[0].headers["X-Key"].value().unwrap().expose(),
            "k-v"
        );
    }
}
