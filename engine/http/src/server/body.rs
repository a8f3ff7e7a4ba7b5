//! Request bodies: bounded in size, with an idle timeout and a deadline,
//! and buffered only within the server-wide body budget
//! ([`super::budget`]).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::budget::{Hold, Short, STEP};
use super::error::{ApiError, ApiResult};
use super::Inner;

/// A whole request body, and the budget its bytes hold until dropped.
pub(crate) struct Buffered {
    /// The body.
    pub(crate) bytes: Bytes,
    /// Its share of the server's body budget.
    pub(crate) hold: Hold,
}

/// The answer to a body that found no budget.
fn overloaded(s: &Inner, what: &str, bytes: u64, short: Short) -> ApiError {
    let total = s.bodies.total();
    match short {
        Short::OverTotal => ApiError::too_large(format!(
            "{what}: {bytes} bytes, more than the {total} this server buffers at once"
        )),
        Short::Busy => {
            s.stats
                .body_budget_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                what,
                bytes,
                budget = total,
                "body budget exhausted; refusing a request body"
            );
            ApiError::overloaded(format!(
                "{what}: the server is buffering its limit of {total} bytes of request bodies; try again shortly"
            ))
        }
    }
}

/// Reads a whole request body of at most `limit` bytes, within the
/// server's body timeouts and its body budget. `what` names it in errors.
/// A declared length over the limit is refused before any byte is read; a
/// declared length takes its budget before any byte is read too, a body
/// without one takes budget as its bytes arrive. Waiting for budget ends
/// at [`super::ServerConfig::budget_wait`] with `503 overloaded`.
pub(crate) async fn read_body(
    s: &Inner,
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    what: &str,
) -> ApiResult<Buffered> {
    let (idle, deadline) = (s.config.body_idle_timeout, s.config.body_deadline);
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                let e = ApiError::bad_request(format!("{what}: bad Content-Length"));
                return Err(refuse(body, e).await);
            }
        },
    };
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(ApiError::too_large(format!(
            "{what}: {n} bytes, more than the {limit} this server accepts"
        )));
    }
    let budget_deadline = tokio::time::Instant::now() + s.config.budget_wait;
    let mut hold = s.bodies.hold();
    if let Some(n) = declared.filter(|&n| n > 0) {
        if let Err(short) = hold.grow_to(n, budget_deadline).await {
            return Err(refuse(body, overloaded(s, what, n, short)).await);
        }
    }
    let start = Instant::now();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    let mut stream = body.into_data_stream();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let wait = idle.min(left);
        let next = match tokio::time::timeout(wait, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "{what}: the body stalled ({} bytes received in {:.0} s)",
                        buf.len(),
                        start.elapsed().as_secs_f64()
                    ),
                ))
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "{what}: the body broke off after {} bytes: {e}",
                    buf.len()
                )))
            }
            Some(Ok(chunk)) => {
                let total = buf.len() as u64 + chunk.len() as u64;
                if total > limit {
                    return Err(ApiError::too_large(format!(
                        "{what}: more than the {limit} bytes this server accepts"
                    )));
                }
                if total > hold.bytes() {
                    // No Content-Length, or more bytes than it said (hyper
                    // refuses those): take budget before buffering them.
                    let step = hold.bytes().saturating_add(STEP);
                    let want = total.max(step.min(limit).min(s.bodies.total()));
                    if let Err(short) = hold.grow_to(want, budget_deadline).await {
                        return Err(overloaded(s, what, want, short));
                    }
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(Buffered {
        bytes: buf.freeze(),
        hold,
    })
}

/// Parses a JSON body, naming it in the error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

/// Bytes of an unread body a refusal reads first, so that a client still
/// sending gets the answer instead of a reset connection.
const DRAIN_LIMIT: usize = 1 << 20;

/// Returns `err` after reading (and discarding) up to [`DRAIN_LIMIT`]
/// bytes of `body`, for at most a second.
pub(crate) async fn refuse(body: Body, err: ApiError) -> ApiError {
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while read < DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            _ => break,
        }
    }
    err
}
