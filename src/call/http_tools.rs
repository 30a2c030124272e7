//! HTTP tools from config (`[[agent.tools]]`): the [`ToolRunner`] that
//! answers the model's function calls by calling the configured endpoints.
//!
//! The request contract: one `POST` (or `PUT`) per call with the JSON body
//!
//! ```json
//! {"name": "lookup_order", "call_id": "call_1", "arguments": {"order_id": "123"},
//!  "call": {"call_sid": "CA…", "stream_sid": "MZ…", "from": "+1…", "to": "+1…", "profile": "default"}}
//! ```
//!
//! with `Content-Type: application/json`, `User-Agent: callbridge/<version>`
//! and the tool's configured headers. The body of a 2xx answer (JSON or
//! text, at most [`MAX_BODY_BYTES`]) is what the model reads; an empty body
//! reads as `{"ok":true}`. Everything else becomes an `{"error": "…"}` output
//! the model can talk about: a timeout (`timeout_ms` bounds connecting,
//! sending and reading the answer), a non-2xx status (redirects are not
//! followed, so that headers never go elsewhere), an unreachable endpoint,
//! an oversized answer, or arguments that are not a JSON object (the
//! endpoint is then not called). A tool never fails a call.
//!
//! Logs name the tool, the call and what went wrong, never the arguments or
//! the answer. Outcomes are counted by the call core
//! (`callbridge_tool_calls_total`), not here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use url::Url;

use super::tools::{CallContext, ToolAnswer, ToolFuture, ToolOutcome, ToolRunner};
use crate::config::{ConfigError, ToolConfig, ToolMethod};
use crate::http_client;
use crate::upstream::{ToolCall, ToolSpec};

/// The largest 2xx body read; a longer answer is an error (a truncated JSON
/// text would mislead the model).
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// Of a non-2xx answer, at most this many bytes are read, and at most
/// [`EXCERPT_CHARS`] characters are passed on to the model.
const EXCERPT_READ_BYTES: usize = 1 << 10;
const EXCERPT_CHARS: usize = 200;

/// What a 2xx answer with an empty body reads as.
const EMPTY_OK: &str = r#"{"ok":true}"#;

/// The configured HTTP tools, with one HTTP client for all of them.
#[derive(Clone)]
pub struct HttpTools {
    client: reqwest::Client,
    tools: Arc<HashMap<String, Arc<Endpoint>>>,
    specs: Arc<Vec<ToolSpec>>,
}

impl std::fmt::Debug for HttpTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTools")
            .field(
                "tools",
                &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One tool's endpoint, ready to call.
struct Endpoint {
    name: String,
    url: Url,
    method: reqwest::Method,
    timeout: Duration,
    headers: HeaderMap,
}

impl HttpTools {
    /// Builds the runner for `tools` (validated and with their headers
    /// expanded, as [`crate::config::Config::load`] leaves them), trusting
    /// the public web PKI.
    pub fn new(tools: &[ToolConfig]) -> Result<HttpTools, ConfigError> {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(tools, roots)
    }

    /// Like [`HttpTools::new`], trusting `roots` instead (a private CA).
    pub fn with_roots(
        tools: &[ToolConfig],
        roots: rustls::RootCertStore,
    ) -> Result<HttpTools, ConfigError> {
        crate::config::validate_tools(tools, "agent.tools")?;
        let mut endpoints = HashMap::with_capacity(tools.len());
        let mut specs = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            let key = |field: &str| format!("agent.tools[{i}].{field}");
            let url = Url::parse(&tool.url).map_err(|e| ConfigError::Key {
                key: key("url"),
                reason: format!("not a URL: {e}"),
            })?;
            let mut headers = HeaderMap::with_capacity(tool.headers.len());
            for (name, value) in &tool.headers {
                let bad = |reason: &str| ConfigError::Key {
                    key: key(&format!("headers.{name}")),
                    reason: format!("tool `{}`, header `{name}`: {reason}", tool.name),
                };
                let header = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad("not a header name"))?;
                let Some(secret) = value.value() else {
                    return Err(bad(
                        "its ${…} references were not expanded (Config::expand_env)",
                    ));
                };
                let mut value = HeaderValue::from_str(secret.expose())
                    .map_err(|_| bad("not a valid HTTP header value"))?;
                value.set_sensitive(true);
                headers.insert(header, value);
            }
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if !headers.contains_key(ACCEPT) {
                headers.insert(
                    ACCEPT,
                    HeaderValue::from_static("application/json, text/plain;q=0.9, */*;q=0.5"),
                );
            }
            let method = match tool.method {
                ToolMethod::Post => reqwest::Method::POST,
                ToolMethod::Put => reqwest::Method::PUT,
            };
            specs.push(ToolSpec {
                name: tool.name.clone(),
                description: tool.description.clone(),
                parameters: tool.parameters.clone(),
            });
            endpoints.insert(
                tool.name.clone(),
                Arc::new(Endpoint {
                    name: tool.name.clone(),
                    url,
                    method,
                    timeout: tool.timeout(),
                    headers,
                }),
            );
        }
        let client_error = |e: String| ConfigError::Key {
            key: "agent.tools".into(),
            reason: format!("cannot build the HTTP client: {e}"),
        };
        let client = http_client::builder(roots)
            .map_err(|e| client_error(e.to_string()))?
            .tcp_nodelay(true)
            .build()
            .map_err(|e| client_error(e.to_string()))?;
        Ok(HttpTools {
            client,
            tools: Arc::new(endpoints),
            specs: Arc::new(specs),
        })
    }
}

impl ToolRunner for HttpTools {
    fn specs(&self) -> Vec<ToolSpec> {
        self.specs.as_ref().clone()
    }

    fn run(&self, call: ToolCall, ctx: &CallContext) -> ToolFuture {
        let Some(endpoint) = self.tools.get(&call.name).cloned() else {
            tracing::warn!(call_sid = %ctx.call_sid, tool = %call.name, "the model called a tool that is not configured");
            return ready(ToolAnswer::error(
                ToolOutcome::Error,
                &format!("no tool named {} is configured", call.name),
            ));
        };
        let arguments = match parse_arguments(&call.arguments) {
            Ok(arguments) => arguments,
            Err(why) => {
                tracing::warn!(call_sid = %ctx.call_sid, tool = %endpoint.name, "the model sent invalid tool arguments; the tool was not called");
                return ready(ToolAnswer::error(
                    ToolOutcome::Error,
                    &format!("invalid arguments: {why}"),
                ));
            }
        };
        let body = serde_json::json!({
            "name": call.name,
            "call_id": call.call_id,
            "arguments": arguments,
            "call": ctx,
        })
        .to_string();
        let client = self.client.clone();
        let call_sid = ctx.call_sid.clone();
        Box::pin(async move { endpoint.call(&client, body, &call_sid).await })
    }
}

fn ready(answer: ToolAnswer) -> ToolFuture {
    Box::pin(std::future::ready(answer))
}

/// The model's arguments text as a JSON object (an empty text is `{}`).
fn parse_arguments(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    // serde_json's messages give a position, never the text itself.
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!("expected a JSON object, got {}", kind(&other))),
        Err(e) => Err(format!("not valid JSON ({e})")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How a request went wrong before a status could be judged.
enum Failure {
    Timeout,
    /// No connection could be made.
    Unreachable(String),
    /// The exchange broke off (the connection closed, the body was cut).
    Failed(String),
    TooLarge,
}

impl Endpoint {
    async fn call(&self, client: &reqwest::Client, body: String, call_sid: &str) -> ToolAnswer {
        let request = client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .body(body);
        // reqwest's timeout covers the whole exchange too; this one also
        // bounds anything between its checks.
        let exchange = async {
            let response = request.send().await.map_err(|e| classify(&e))?;
            let status = response.status();
            let limit = if status.is_success() {
                MAX_BODY_BYTES
            } else {
                EXCERPT_READ_BYTES
            };
            let body = read_capped(response, limit, status.is_success()).await?;
            Ok::<_, Failure>((status, body))
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        };
        let name = &self.name;
        match result {
            Ok((status, body)) if status.is_success() => {
                let text = String::from_utf8_lossy(&body);
                if text.trim().is_empty() {
                    ToolAnswer::ok(EMPTY_OK)
                } else {
                    ToolAnswer::ok(text.into_owned())
                }
            }
            Ok((status, body)) => {
                tracing::warn!(call_sid, tool = %name, status = status.as_u16(), "the tool endpoint answered an error status");
                let mut message = format!("the tool {name} answered HTTP {}", status.as_u16());
                let excerpt = excerpt(&body);
                if !excerpt.is_empty() {
                    message.push_str(": ");
                    message.push_str(&excerpt);
                }
                ToolAnswer::error(ToolOutcome::Error, &message)
            }
            Err(Failure::Timeout) => {
                let ms = self.timeout.as_millis();
                tracing::warn!(call_sid, tool = %name, timeout_ms = ms as u64, "the tool endpoint did not answer in time");
                ToolAnswer::error(
                    ToolOutcome::Timeout,
                    &format!("the tool {name} did not answer within {ms} ms"),
                )
            }
            Err(Failure::Unreachable(cause)) => {
                tracing::warn!(call_sid, tool = %name, error = %cause, "the tool endpoint could not be reached");
                ToolAnswer::error(
                    ToolOutcome::Error,
                    &format!("the tool {name} could not be reached: {cause}"),
                )
            }
            Err(Failure::Failed(cause)) => {
                tracing::warn!(call_sid, tool = %name, error = %cause, "the request to the tool endpoint failed");
                ToolAnswer::error(
                    ToolOutcome::Error,
                    &format!("the request to the tool {name} failed: {cause}"),
                )
            }
            Err(Failure::TooLarge) => {
                tracing::warn!(call_sid, tool = %name, limit = MAX_BODY_BYTES, "the tool endpoint's answer is too large");
                ToolAnswer::error(
                    ToolOutcome::Error,
                    &format!("the tool {name} answered more than {MAX_BODY_BYTES} bytes"),
                )
            }
        }
    }
}

/// Reads at most `limit` bytes of the body. `strict`: a longer body is
/// [`Failure::TooLarge`]; otherwise it is cut at `limit`.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    strict: bool,
) -> Result<Vec<u8>, Failure> {
    if strict && response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Failure::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    if strict {
                        return Err(Failure::TooLarge);
                    }
                    body.extend_from_slice(&chunk[..limit - body.len()]);
                    return Ok(body);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(classify(&e)),
        }
    }
}

/// A reqwest error as a [`Failure`], its cause without the URL (whose query
/// may carry a key).
fn classify(err: &reqwest::Error) -> Failure {
    if err.is_timeout() {
        return Failure::Timeout;
    }
    // The innermost cause says what happened ("Connection refused", …).
    let mut cause: &dyn std::error::Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let mut text = cause.to_string();
    if std::ptr::addr_eq(cause, err) {
        text = if err.is_connect() {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        };
    }
    if err.is_connect() {
        Failure::Unreachable(text)
    } else {
        Failure::Failed(text)
    }
}

/// A short, single-line excerpt of an error answer's body.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(EXCERPT_CHARS);
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() >= EXCERPT_CHARS {
            break;
        }
    }
    if out.chars().count() > EXCERPT_CHARS {
        out = out.chars().take(EXCERPT_CHARS).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_a_json_object() {
        assert_eq!(
            parse_arguments(r#"{"a":1}"#).unwrap(),
            serde_json::json!({"a":1})
        );
        assert_eq!(parse_arguments("  ").unwrap(), serde_json::json!({}));
        let err = parse_arguments("[1]").unwrap_err();
        assert!(err.contains("an array"), "{err}");
        let err = parse_arguments(r#"{"pin":"1234""#).unwrap_err();
        assert!(err.starts_with("not valid JSON"), "{err}");
        assert!(!err.contains("1234"), "{err}");
    }

    #[test]
    fn excerpts_are_short_and_single_line() {
        assert_eq!(excerpt(b"  internal\n  error \r\n"), "internal error");
        let long = "x".repeat(5000);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(b""), "");
    }

    #[test]
    fn specs_follow_the_config_order() {
        let tools = vec![
            ToolConfig::new("b_tool", "second", "http://127.0.0.1:1/b"),
            ToolConfig::new("a_tool", "first", "https://x.example/a"),
        ];
        let runner = HttpTools::new(&tools).unwrap();
        let names: Vec<String> = runner.specs().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["b_tool", "a_tool"]);
        assert_eq!(runner.specs()[0].parameters["type"], "object");
    }

    #[test]
    fn unexpanded_headers_are_refused() {
        let mut tool = ToolConfig::new("t", "d", "https://x.example/t");
        tool.headers.insert(
            "X-Key".into(),
            crate::config::ToolHeader::new("${NOT_EXPANDED}"),
        );
        let err = HttpTools::new(&[tool]).unwrap_err();
        assert!(
            err.to_string().contains("agent.tools[0].headers.X-Key"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unknown_tools_and_bad_arguments_never_reach_the_network() {
        // Port 1 on loopback: nothing listens; were it called, the answer
        // would be "could not be reached".
        let runner = HttpTools::new(&[ToolConfig::new("t", "d", "http://127.0.0.1:1/t")]).unwrap();
        let ctx = CallContext::default();
        let answer = runner
            .run(
                ToolCall {
                    call_id: "c".into(),
                    name: "nope".into(),
                    arguments: "{}".into(),
                },
                &ctx,
            )
            .await;
        assert_eq!(answer.outcome, ToolOutcome::Error);
        assert!(
            answer.output.contains("no tool named nope"),
            "{}",
            answer.output
        );
        let answer = runner
            .run(
                ToolCall {
                    call_id: "c".into(),
                    name: "t".into(),
                    arguments: "not json".into(),
                },
                &ctx,
            )
            .await;
        assert_eq!(answer.outcome, ToolOutcome::Error);
        let v: Value = serde_json::from_str(&answer.output).unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid arguments: "),
            "{v}"
        );
    }
}
