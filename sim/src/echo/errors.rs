//! The `error` events the peer sends: client mistakes, as the real service
//! reports them (code, message, offending parameter), shared by the event
//! handlers and the `session.update` parser.

/// A client mistake, reported as an `error` event; the session goes on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
}

impl ApiError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
        }
    }

    pub(crate) fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub(crate) fn missing(param: &str) -> Self {
        Self::new(
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
        )
        .param(param)
    }

    pub(crate) fn invalid_type(param: &str, expected: &str) -> Self {
        Self::new(
            "invalid_type",
            format!("Invalid type for '{param}': expected {expected}."),
        )
        .param(param)
    }

    pub(crate) fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        Self::new("invalid_value", message).param(param)
    }

    pub(crate) fn unknown_parameter(param: &str) -> Self {
        Self::new(
            "unknown_parameter",
            format!("Unknown parameter: '{param}'."),
        )
        .param(param)
    }
}
