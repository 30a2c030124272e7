//! What runs the model's function calls.
//!
//! The call core hands each [`ToolCall`] of a finished answer to a
//! [`ToolRunner`] and answers the model once every call of that answer has
//! an output. A runner never fails: whatever goes wrong becomes an output of
//! the form `{"error": "…"}` that the model can talk about, so a tool can
//! never kill a call.

use std::future::Future;
use std::pin::Pin;

use crate::upstream::{ToolCall, ToolSpec};

/// The call a tool runs for (sent to HTTP tools as `call`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallContext {
    pub call_sid: String,
    pub stream_sid: String,
    /// The caller's and the called number, as Twilio's webhook gave them
    /// (empty when unknown).
    pub from: String,
    pub to: String,
    /// The assistant profile answering the call (`default` for `[agent]`).
    pub profile: String,
}

/// How a tool call went (`callbridge_tool_calls_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutcome {
    Ok,
    Error,
    Timeout,
}

impl ToolOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolOutcome::Ok => "ok",
            ToolOutcome::Error => "error",
            ToolOutcome::Timeout => "timeout",
        }
    }
}

/// What a tool call produced: the output the model reads, and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolAnswer {
    pub output: String,
    pub outcome: ToolOutcome,
}

impl ToolAnswer {
    pub fn ok(output: impl Into<String>) -> Self {
        ToolAnswer {
            output: output.into(),
            outcome: ToolOutcome::Ok,
        }
    }

    /// An `{"error": …}` output the model can talk about.
    pub fn error(outcome: ToolOutcome, message: &str) -> Self {
        ToolAnswer {
            output: error_output(message),
            outcome,
        }
    }
}

/// A tool's answer, boxed so that runners of every kind fit one slot.
pub type ToolFuture = Pin<Box<dyn Future<Output = ToolAnswer> + Send>>;

pub trait ToolRunner: Send + Sync + 'static {
    /// The tools declared to the model.
    fn specs(&self) -> Vec<ToolSpec>;
    /// Runs one call; the output is what the model reads.
    fn run(&self, call: ToolCall, ctx: &CallContext) -> ToolFuture;
}

/// No tools configured: every call is answered with an error the model can
/// speak about.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTools;

impl ToolRunner for NoTools {
    fn specs(&self) -> Vec<ToolSpec> {
        Vec::new()
    }

    fn run(&self, call: ToolCall, _ctx: &CallContext) -> ToolFuture {
        Box::pin(std::future::ready(ToolAnswer::error(
            ToolOutcome::Error,
            &format!("no tool named {} is configured", call.name),
        )))
    }
}

/// `{"error": message}` as JSON text.
pub fn error_output(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}
