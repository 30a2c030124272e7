//! `POST /calls` as HTTP: status codes and JSON bodies. The server's route
//! passes in what only it knows (whether it is admitting calls).
//!
//! | status | when | body |
//! |---|---|---|
//! | 201 | the call was created | `{"call_sid": "CA…"}` |
//! | 400 | bad JSON, number, profile, context; `to` not allowed | `{"error": code, "message"}` |
//! | 401 | missing or wrong bearer token | `{"error": "unauthorized", …}` |
//! | 404 | no admin token is set: the endpoint does not exist | text |
//! | 413 | body over 8 KiB | text |
//! | 502 | Twilio refused or failed | `{"error": "twilio_error", "message", "twilio_code"}` |
//! | 503 | draining, full, Twilio credentials or `TWILIO_ACCOUNT_SID` missing | `{"error": "unavailable", "message"}` |

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{request, Outbound, PlaceError, Placed};

/// Whether the server takes new calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Open,
    Draining,
    Full,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// Answers one `POST /calls`. `on_placed` runs once Twilio has created the
/// call, before the answer goes out (the server pre-warms its model session).
pub async fn post_calls(
    outbound: &Outbound,
    admission: Admission,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: u64,
    on_placed: impl FnOnce(&Placed),
) -> Response {
    let Some(admin) = &outbound.admin else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    if !admin.check(headers) {
        outbound.metrics.error("admin_unauthorized");
        tracing::warn!("POST /calls: missing or wrong admin token");
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    match admission {
        Admission::Open => {}
        Admission::Draining => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is draining",
            )
        }
        Admission::Full => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is at max_calls",
            )
        }
    }
    let request = match request::parse(body, &outbound.allowed) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
    };
    match outbound.place_call(request, now_unix).await {
        Ok(placed) => {
            on_placed(&placed);
            (
                StatusCode::CREATED,
                axum::Json(json!({ "call_sid": placed.call_sid })),
            )
                .into_response()
        }
        Err(PlaceError::Request(e)) => error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
        Err(PlaceError::Unavailable(why)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
        }
        Err(PlaceError::Twilio(e)) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({
                "error": "twilio_error",
                "message": e.to_string(),
                "twilio_code": e.twilio_code(),
            })),
        )
            .into_response(),
    }
}
