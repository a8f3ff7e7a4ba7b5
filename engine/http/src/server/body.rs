//! Request bodies: bounded in size, with an idle timeout and a deadline.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::error::{ApiError, ApiResult};

/// Reads a whole request body of at most `limit` bytes. `what` names it in
/// errors. A declared length over the limit is refused before any byte is
/// read.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    idle: Duration,
    deadline: Duration,
    what: &str,
) -> ApiResult<Bytes> {
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request(format!("{what}: bad Content-Length")))?,
        ),
    };
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(ApiError::too_large(format!(
            "{what}: {n} bytes, more than the {limit} this server accepts"
        )));
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
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    return Err(ApiError::too_large(format!(
                        "{what}: more than the {limit} bytes this server accepts"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(buf.freeze())
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
