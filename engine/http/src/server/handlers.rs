//! The endpoints of `format-spec/PROTOCOL.md` §3.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use tessera::{FileId, FileReader, PackBytes, PackId};

use super::body::{parse_json, read_body, refuse, Buffered};
use super::budget::{held, held_answer, Hold};
use super::error::{ApiError, ApiResult};
use super::{Inner, ServerStats};
use crate::auth::Access;
use crate::protocol::{
    parse_range, ByteRange, MissingRequest, MissingResponse, PackAdmitted, ReconstructionResponse,
    RefEntry, RefInfo, RefList, RegisterRequest, RegisterResponse, ServerInfo, SetRef,
    UnreadableRef, MAX_MISSING_IDS, PROTOCOL_VERSION,
};

type St = State<Arc<Inner>>;

/// Slices a response body is streamed in.
const SLICE: u64 = 256 << 10;
/// Bytes of a pack read from storage at once (then sent in slices): what a
/// pack response holds at most.
const PACK_READ: u64 = 1 << 20;
/// Chunks a file response decodes ahead of what it sends: with the chunk
/// being sent, at most 5 × 256 KiB held (the store's own read-ahead, 16,
/// is for local readers).
const FILE_READ_AHEAD: usize = 4;
/// What a reconstruction answer holds per chunk it lists, with its JSON
/// (about 100 bytes a chunk, [`RECON_JSON_PER_CHUNK`] reserved) and its
/// parsed form (about 60).
const RECON_BYTES_PER_CHUNK: u64 = 256;
/// Bytes reserved per chunk for a reconstruction's JSON, so that the
/// buffer rarely grows (a growing vector briefly holds twice its size).
const RECON_JSON_PER_CHUNK: usize = 128;
/// `Cache-Control` of content named by its id.
const IMMUTABLE_PUBLIC: &str = "public, max-age=31536000, immutable";
const IMMUTABLE_PRIVATE: &str = "private, max-age=31536000, immutable";

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1", get(info))
        .route("/v1/files/{*name}", get(get_file))
        .route("/v1/files", post(post_file))
        .route("/v1/reconstructions/{*name}", get(get_reconstruction))
        .route("/v1/packs/{id}", get(get_pack).put(put_pack))
        .route("/v1/chunks/missing", post(post_missing))
        .route("/v1/refs", get(list_refs))
        .route("/v1/admin/gc", post(post_gc))
        .route("/v1/admin/repack", post(post_repack))
        .route(
            "/v1/refs/{*name}",
            get(get_ref).put(put_ref).delete(delete_ref),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            redact_location,
        ))
        .layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            log_request,
        ))
        .layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            recover_store,
        ))
        .with_state(inner)
}

/// After a request, starts bringing the store back if a failed write
/// poisoned it (see `recovery.rs`).
async fn recover_store(State(s): St, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    s.recovery.kick(&s.store);
    resp
}

/// Error bodies larger than this are passed on as they are (an error body
/// is one line).
const REDACT_LIMIT: usize = 64 << 10;

/// An error names the stored object it is about by where this server
/// keeps it (a directory path, a bucket URL): a client needs to know which
/// object, not where the server keeps its store, so in error bodies the
/// store's location reads `<store>` (`<store>/packs/ab/ab12….pack`) when
/// it is an absolute path or a URL.
async fn redact_location(State(s): St, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status().as_u16() < 400 {
        return resp;
    }
    // The store's location, and where its index lives (on a bucket, a
    // local directory), the longer first. Only absolute paths and URLs say
    // where the server keeps things: a relative name (a store opened as
    // `s`) says nothing, and could be any word or ref name in a message.
    let mut places = vec![
        s.store.location(),
        s.store.local_dir().display().to_string(),
    ];
    places.retain(|p| p.starts_with('/') || p.contains("://"));
    places.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, REDACT_LIMIT).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut out = None;
            for p in &places {
                if let Some(t) = redact(out.as_deref().unwrap_or(&text), p) {
                    out = Some(t);
                }
            }
            let redacted = out.map_or(bytes, Bytes::from);
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(redacted))
        }
        Err(_) => ApiError::internal("an error answer too long to send").into_response(),
    }
}

/// `text` with every path under `place` (`place/…`, not inside a longer
/// word or path: a store opened as `s` leaves "this" alone) written
/// `<store>/…`; `None` when there is none.
fn redact(text: &str, place: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find(place) {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + place.len()..];
        let word = |c: char| c.is_alphanumeric() || "_-./~:".contains(c);
        let bounded = before.is_none_or(|c| !word(c)) && after.starts_with('/');
        out.push_str(&rest[..at]);
        if bounded {
            out.push_str("<store>");
            changed = true;
        } else {
            out.push_str(place);
        }
        rest = after;
    }
    out.push_str(rest);
    changed.then_some(out)
}

async fn log_request(State(s): St, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let t = Instant::now();
    let resp = next.run(req).await;
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        %method,
        path = %tessera_clip(&path),
        status = resp.status().as_u16(),
        ms = t.elapsed().as_millis() as u64,
        peer,
        "request"
    );
    resp
}

fn tessera_clip(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_endpoint",
        format!(
            "no endpoint {} {} (a Tessera server's URL is its base: http://HOST:PORT, \
             or the prefix it is served under)",
            req.method(),
            tessera_clip(req.uri().path())
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            req.method(),
            tessera_clip(req.uri().path())
        ),
    )
}

/// Runs a blocking engine call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tessera::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
        .map_err(ApiError::from)
}

fn path_arg(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

/// Query parameters, percent-decoded (`+` is a space).
fn query_params(q: Option<&str>) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ApiError::bad_request("the query string is not UTF-8"))
        };
        out.insert(dec(k)?, dec(v)?);
    }
    Ok(out)
}

impl Inner {
    fn access(&self, headers: &HeaderMap) -> ApiResult<Access> {
        let auth = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?,
            ),
        };
        self.policy
            .identify(auth)
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }

    /// The error for a write `access` may not make.
    fn deny_write(&self, access: &Access, what: &str) -> ApiError {
        match access {
            Access::Anonymous => ApiError::unauthorized(format!("{what} needs a token")),
            _ => ApiError::forbidden(format!("this token may not write {what}")),
        }
    }

    /// Refuses ref names a registration would refuse: names the engine
    /// does not take (400) and names `access` may not write (401/403).
    /// Checked first at registration, and at a push's first question, so
    /// that a push is refused before it uploads anything.
    fn check_refs(&self, access: &Access, refs: &[String]) -> ApiResult<()> {
        for r in refs {
            tessera::check_ref_name(r)?;
            if !self.policy.can_write(access, r) {
                return Err(self.deny_write(access, &format!("ref {}", tessera_clip(r))));
            }
        }
        Ok(())
    }

    /// Resolves `name` to a file `access` may read, and whether it is
    /// readable through a public ref. A file it may not read is "not
    /// found", like a file that does not exist.
    async fn readable_file(&self, access: &Access, name: &str) -> ApiResult<(FileId, bool)> {
        let hidden = || ApiError::not_found(format!("file not found: {}", tessera_clip(name)));
        let store = self.store.clone();
        if let Some(r) = ref_of_name(name) {
            if !self.policy.can_read(access, r) {
                return Err(hidden());
            }
            let public = !self.policy.is_enforced() || self.policy.is_public(r);
            let r = r.to_string();
            let id = blocking(move || store.resolve_ref(&r)).await?;
            return Ok((id, public));
        }
        let name = name.to_string();
        let resolved = blocking(move || Ok(store.resolve(&name))).await?;
        let id = match resolved {
            Ok(id) => id,
            // The engine says which of file id and sha256 it looked for:
            // with tokens, a name nobody may read must not answer
            // differently from one that is not stored.
            Err(e) if self.policy.is_enforced() && e.is_not_found() => return Err(hidden()),
            Err(e) => return Err(e.into()),
        };
        if !self.policy.is_enforced() {
            return Ok((id, true));
        }
        let public = self
            .file_has_ref_under(&id, self.policy.public_prefixes())
            .await?;
        if public {
            return Ok((id, true));
        }
        match self.policy.read_prefixes(access) {
            None => Ok((id, false)),
            Some(prefixes) => {
                if self.file_has_ref_under(&id, prefixes).await? {
                    Ok((id, false))
                } else {
                    Err(hidden())
                }
            }
        }
    }

    /// Whether some ref under one of `prefixes` names `file`.
    async fn file_has_ref_under(&self, file: &FileId, prefixes: Vec<String>) -> ApiResult<bool> {
        if prefixes.is_empty() {
            return Ok(false);
        }
        let store = self.store.clone();
        let file = *file;
        blocking(move || {
            for p in &prefixes {
                if store.list_refs(p)?.iter().any(|(_, id)| *id == file) {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }
}

/// The ref a `{name}` means, if it names one (SPEC §8.2): `ref:NAME`, or
/// anything that is not `file:`, `sha256:` or 64 hex digits.
fn ref_of_name(name: &str) -> Option<&str> {
    if let Some(r) = name.strip_prefix("ref:") {
        return Some(r);
    }
    let hex64 = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if hex64 || name.starts_with("file:") || name.starts_with("sha256:") {
        None
    } else {
        Some(name)
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn info(State(s): St) -> Json<ServerInfo> {
    Json(ServerInfo {
        protocol: PROTOCOL_VERSION,
        chunking: s.store.chunk_params().into(),
    })
}

fn etag_of(id: &str) -> String {
    format!("\"{id}\"")
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// The range to serve: `None` for the whole resource. An `If-Range` that is
/// not our (strong) ETag means the whole resource.
fn wanted_range(headers: &HeaderMap, size: u64, etag: &str) -> Option<ByteRange> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    if let Some(ir) = headers.get(header::IF_RANGE) {
        if ir.to_str().ok().map(str::trim) != Some(etag) {
            return None;
        }
    }
    parse_range(range, size)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn not_modified(etag: &str, cache: &'static str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    r.headers_mut().insert(header::ETAG, hv(etag));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

fn unsatisfiable(what: &str, size: u64) -> Response {
    let mut r = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range",
        format!("the range is past the end of {what} ({size} bytes)"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
    r
}

/// A 200 or 206 answer with `body` for bytes `start..=end` of `size`.
fn content(
    range: Option<(u64, u64)>,
    size: u64,
    etag: &str,
    cache: &'static str,
    body: Body,
) -> Response {
    let (status, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, b - a + 1),
        None => (StatusCode::OK, size),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv(etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Some((a, b)) = range {
        h.insert(header::CONTENT_RANGE, hv(&format!("bytes {a}-{b}/{size}")));
    }
    r
}

/// Paces a response at `rate` bytes per second.
async fn pace(rate: Option<u64>, bytes: u64) {
    if let Some(rate) = rate.filter(|&r| r > 0) {
        tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
    }
}

/// Streams bytes `start..end` of a file, one slice at a time on the
/// blocking pool (bounded memory: the reader's window and one slice).
fn file_body(
    reader: FileReader,
    start: u64,
    end: u64,
    rate: Option<u64>,
    stats: Arc<ServerStats>,
) -> Body {
    // The state carries the size of the slice sent last: pacing waits for
    // it before the next one, so what is counted as sent has been handed
    // to the connection.
    let stream = futures_util::stream::try_unfold(
        (Some(reader), start, 0u64),
        move |(reader, pos, last)| {
            let stats = stats.clone();
            async move {
                pace(rate, last).await;
                let Some(mut reader) = reader.filter(|_| pos < end) else {
                    return Ok::<_, std::io::Error>(None);
                };
                let n = (end - pos).min(SLICE);
                let (reader, buf) = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n as usize];
                    reader.read_exact(&mut buf).map(|()| (reader, buf))
                })
                .await
                .map_err(std::io::Error::other)?
                .inspect_err(|e| {
                    // The status line went out already: the log is where
                    // an operator learns of the damage.
                    tracing::warn!(at = pos, error = %e, "a file response stopped early");
                })?;
                stats.file_bytes_sent.fetch_add(n, Ordering::Relaxed);
                Ok(Some((Bytes::from(buf), (Some(reader), pos + n, n))))
            }
        },
    );
    Body::from_stream(stream)
}

/// A tensor named in a file request: `?tensor=NAME` after any name, or
/// `{id}/tensors/{NAME}` after a file id, `file:ID` or `sha256:HEX` (a ref
/// of that shape is reached as `ref:NAME`). Returns the file's name and the
/// tensor's.
fn split_tensor(name: String, query: Option<&str>) -> ApiResult<(String, Option<String>)> {
    if let Some(t) = query_params(query)?.remove("tensor") {
        return Ok((name, Some(t)));
    }
    if let Some((file, tensor)) = name.split_once("/tensors/") {
        if ref_of_name(file).is_none() && !file.starts_with("ref:") {
            return Ok((file.to_string(), Some(tensor.to_string())));
        }
    }
    Ok((name, None))
}

async fn get_file(
    State(s): St,
    headers: HeaderMap,
    method: Method,
    RawQuery(query): RawQuery,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let (name, tensor) = split_tensor(path_arg(name)?, query.as_deref())?;
    let access = s.access(&headers)?;
    let (id, public) = s.readable_file(&access, &name).await?;
    let cache = if public {
        IMMUTABLE_PUBLIC
    } else {
        IMMUTABLE_PRIVATE
    };
    let store = s.store.clone();
    let reader = blocking(move || store.read(&id)).await?;
    // The window served: the whole file, or one tensor's bytes.
    let (base, size, etag, what) = match tensor {
        None => (
            0,
            reader.size(),
            etag_of(&id.to_hex()),
            format!("file {id}"),
        ),
        Some(t) => {
            let (store, name) = (s.store.clone(), t.clone());
            let (offset, length) = blocking(move || store.tensor_range(&id, &name)).await?;
            let tag = etag_of(&format!("{id}/{}", blake3::hash(t.as_bytes()).to_hex()));
            (
                offset,
                length,
                tag,
                format!("tensor {} of file {id}", tessera_clip(&t)),
            )
        }
    };
    if none_match(&headers, &etag) {
        return Ok(not_modified(&etag, cache));
    }
    let range = match wanted_range(&headers, size, &etag) {
        Some(ByteRange::Unsatisfiable) => return Ok(unsatisfiable(&what, size)),
        Some(ByteRange::Bytes(a, b)) => Some((a, b)),
        None => None,
    };
    let (start, end) = range.map_or((0, size), |(a, b)| (a, b + 1));
    let (start, end) = (base + start, base + end);
    if method == Method::HEAD {
        return Ok(content(range, size, &etag, cache, Body::empty()));
    }
    let mut reader = reader;
    reader.set_read_ahead(FILE_READ_AHEAD);
    let hold = response_hold(&s, reader.max_held() + SLICE, &what).await?;
    // Open every pack of the range first: a missing or damaged pack is an
    // error answer, not a response cut short.
    let store = s.store.clone();
    let reader = blocking(move || {
        store.open_packs(&id, start, end - start)?;
        let mut reader = reader;
        reader.limit_read_ahead(end);
        reader
            .seek(SeekFrom::Start(start))
            .map_err(tessera::unwrap_io)?;
        Ok(reader)
    })
    .await?;
    let body = file_body(reader, start, end, s.config.max_rate, s.stats.clone());
    Ok(content(range, size, &etag, cache, held(body, hold)))
}

async fn get_reconstruction(
    State(s): St,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path_arg(name)?;
    let access = s.access(&headers)?;
    let (id, _) = s.readable_file(&access, &name).await?;
    let store = s.store.clone();
    let reader = blocking(move || store.read(&id)).await?;
    let size = reader.size();
    let range = match wanted_range(&headers, size, &etag_of(&id.to_hex())) {
        Some(ByteRange::Unsatisfiable) => return Ok(unsatisfiable(&format!("file {id}"), size)),
        Some(ByteRange::Bytes(a, b)) => Some((a, b - a + 1)),
        None => None,
    };
    // The answer is held whole (built, then serialized) until sent: take
    // budget for it before building it.
    let (a, b) = range.map_or((0, size), |(a, n)| (a, a + n));
    let chunks = reader.chunks_in(a, b) as u64;
    drop(reader);
    let hold = response_hold(
        &s,
        chunks.saturating_mul(RECON_BYTES_PER_CHUNK),
        &format!("reconstruction of file {id}"),
    )
    .await?;
    let store = s.store.clone();
    let rec = blocking(move || store.reconstruction(&id, range)).await?;
    let packs: BTreeSet<PackId> = rec.terms.iter().map(|t| t.pack).collect();
    let ttl = s.config.url_ttl.as_secs().max(1);
    let pack_urls = packs
        .into_iter()
        .map(|p| {
            let q = s.policy.sign_pack(&p, &id, ttl);
            (p, format!("/v1/packs/{p}?{q}"))
        })
        .collect();
    let capacity = chunks as usize * RECON_JSON_PER_CHUNK;
    let mut r = json_answer(
        &ReconstructionResponse {
            reconstruction: rec,
            pack_urls,
        },
        capacity,
        hold,
    )?;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn parse_pack_id(s: &str) -> ApiResult<PackId> {
    PackId::from_hex(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "not a pack id: {:?} (want 64 hex digits)",
            tessera_clip(s)
        ))
    })
}

/// Streams bytes `start..end` of a pack, read in pieces of [`PACK_READ`]
/// through the one handle opened for the response (a repack deleting the
/// pack meanwhile does not cut it short on a directory store).
fn pack_body(
    bytes: Arc<PackBytes>,
    pack: PackId,
    start: u64,
    end: u64,
    rate: Option<u64>,
    stats: Arc<ServerStats>,
) -> Body {
    let stream = futures_util::stream::try_unfold(
        (Bytes::new(), start, 0u64),
        move |(mut buffered, pos, last)| {
            let (bytes, stats) = (bytes.clone(), stats.clone());
            async move {
                pace(rate, last).await;
                if pos >= end {
                    return Ok::<_, std::io::Error>(None);
                }
                if buffered.is_empty() {
                    let n = (end - pos).min(PACK_READ);
                    buffered = tokio::task::spawn_blocking(move || bytes.read(pos, n))
                        .await
                        .map_err(std::io::Error::other)?
                        .map_err(|e| {
                            tracing::warn!(%pack, at = pos, error = %e, "a pack response stopped early");
                            std::io::Error::other(e)
                        })?;
                }
                let n = (buffered.len() as u64).min(SLICE);
                if n == 0 {
                    return Err(std::io::Error::other(format!(
                        "pack {pack} ended early at {pos}"
                    )));
                }
                let slice = buffered.split_to(n as usize);
                stats.pack_bytes_sent.fetch_add(n, Ordering::Relaxed);
                Ok(Some((slice, (buffered, pos + n, n))))
            }
        },
    );
    Body::from_stream(stream)
}

async fn get_pack(
    State(s): St,
    headers: HeaderMap,
    method: Method,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let pack = parse_pack_id(&path_arg(id)?)?;
    // With tokens, the URL names the file it was handed out for, and reads
    // only the byte ranges of that file's records: a pack can hold chunks
    // of files the holder may not read.
    let allowed = if s.policy.is_enforced() {
        let q = query_params(query.as_deref())?;
        let file = s
            .policy
            .check_pack(
                &pack,
                q.get("file").map(String::as_str),
                q.get("exp").map(String::as_str),
                q.get("sig").map(String::as_str),
            )
            .map_err(|why| ApiError::forbidden(format!("pack {pack}: {why}")))?;
        let store = s.store.clone();
        let spans = blocking(move || store.pack_spans(&file, &pack)).await?;
        Some((file, spans))
    } else {
        None
    };
    let etag = etag_of(&pack.to_hex());
    let store = s.store.clone();
    // "Not found" for a pack that is not stored (`pack_size` would call it
    // damage).
    let bytes = Arc::new(blocking(move || store.pack_bytes(&pack)).await?);
    let size = bytes.len();
    if none_match(&headers, &etag) {
        return Ok(not_modified(&etag, IMMUTABLE_PRIVATE));
    }
    // Through a signed URL, GET and HEAD alike read only the file's
    // records, and a refusal names no byte position (it would tell the
    // pack's size).
    let outside = |what: &str| {
        let file = allowed
            .as_ref()
            .map(|(f, _)| f.to_string())
            .unwrap_or_default();
        ApiError::forbidden(format!(
            "pack {pack}: {what}; this URL reads only the records of file {file} (ask for a range inside them)"
        ))
    };
    let range = match wanted_range(&headers, size, &etag) {
        Some(ByteRange::Unsatisfiable) if allowed.is_some() => {
            return Err(outside("the range is not all records of the file"))
        }
        Some(ByteRange::Unsatisfiable) => return Ok(unsatisfiable(&format!("pack {pack}"), size)),
        Some(ByteRange::Bytes(a, b)) => Some((a, b)),
        None => None,
    };
    let (start, end) = range.map_or((0, size), |(a, b)| (a, b + 1));
    if let Some((_, spans)) = &allowed {
        if range.is_none() {
            return Err(outside("no Range"));
        }
        if !tessera::within_spans(spans, start, end) {
            return Err(outside("the range is not all records of the file"));
        }
    }
    if method == Method::HEAD {
        return Ok(content(
            range,
            size,
            &etag,
            IMMUTABLE_PRIVATE,
            Body::empty(),
        ));
    }
    let hold = response_hold(&s, (end - start).min(PACK_READ), &format!("pack {pack}")).await?;
    s.stats.pack_requests.fetch_add(1, Ordering::Relaxed);
    let body = pack_body(bytes, pack, start, end, s.config.max_rate, s.stats.clone());
    Ok(content(
        range,
        size,
        &etag,
        IMMUTABLE_PRIVATE,
        held(body, hold),
    ))
}

/// Takes `bytes` of the response budget for a response about `what` (the
/// whole budget when it is more), waiting in arrival order at most
/// [`super::ServerConfig::budget_wait`]; then `503 overloaded`.
async fn response_hold(s: &Inner, bytes: u64, what: &str) -> ApiResult<Hold> {
    let total = s.responses.total();
    let mut hold = s.responses.hold();
    let deadline = tokio::time::Instant::now() + s.config.budget_wait;
    match hold.grow_to(bytes.min(total), deadline).await {
        Ok(()) => Ok(hold),
        Err(_) => {
            s.stats
                .response_budget_refusals
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                what,
                bytes,
                budget = total,
                "response budget exhausted; refusing a request"
            );
            Err(ApiError::overloaded(format!(
                "{what}: the server holds its limit of {total} bytes of responses being sent; try again shortly"
            )))
        }
    }
}

async fn put_pack(
    State(s): St,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Response> {
    let access = match s.access(&headers) {
        Ok(a) => a,
        Err(e) => return Err(refuse(body, e).await),
    };
    if !s.policy.is_writer(&access) {
        return Err(refuse(body, s.deny_write(&access, "packs")).await);
    }
    let pack = match path_arg(id).and_then(|p| parse_pack_id(&p)) {
        Ok(p) => p,
        Err(e) => return Err(refuse(body, e).await),
    };
    let cfg = &s.config;
    let Buffered { bytes, hold } = read_body(
        &s,
        body,
        &headers,
        cfg.max_pack_body,
        &format!("pack {pack}"),
    )
    .await?;
    let n = bytes.len() as u64;
    let store = s.store.clone();
    // A pack's chunks may decode to no more than the largest body this
    // server accepts: the reference client fills packs by raw size, and
    // highly compressed records cannot buy more decoding than that.
    let max_raw = cfg.max_pack_body;
    // The budget is held until the pack is admitted (or refused), also if
    // the client goes away meanwhile.
    let rep = blocking(move || {
        let _hold = hold;
        store.admit_pack(pack, bytes, max_raw)
    })
    .await?;
    s.stats.pack_bytes_admitted.fetch_add(n, Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        Json(PackAdmitted {
            pack: rep.pack,
            chunks: rep.chunks,
            new_chunks: rep.new_chunks,
        }),
    )
        .into_response())
}

async fn post_missing(State(s): St, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let access = match s.access(&headers) {
        Ok(a) => a,
        Err(e) => return Err(refuse(body, e).await),
    };
    if !s.policy.is_writer(&access) {
        let e = s.deny_write(&access, "(asking which chunks are stored)");
        return Err(refuse(body, e).await);
    }
    let (req, hold): (MissingRequest, _) = json_body(
        &s,
        body,
        &headers,
        s.config.max_json_body,
        "chunks/missing request",
    )
    .await?;
    s.check_refs(&access, &req.refs)?;
    if req.chunks.len() > MAX_MISSING_IDS {
        return Err(ApiError::too_large(format!(
            "chunks/missing request: {} ids, at most {MAX_MISSING_IDS} per request",
            req.chunks.len()
        )));
    }
    let store = s.store.clone();
    let missing = blocking(move || {
        let _hold = hold;
        store.missing_chunks(&req.chunks)
    })
    .await?;
    Ok(Json(MissingResponse { missing }).into_response())
}

/// Reads a JSON body of at most `limit` bytes within the server's body
/// timeouts and budget and parses it; `what` names it in errors. The
/// returned hold keeps the body's budget until the request is done with
/// the parsed value.
async fn json_body<T: serde::de::DeserializeOwned>(
    s: &Inner,
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    what: &str,
) -> ApiResult<(T, Hold)> {
    let Buffered { bytes, hold } = read_body(s, body, headers, limit, what).await?;
    Ok((parse_json(&bytes, what)?, hold))
}

async fn post_file(State(s): St, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let access = match s.access(&headers) {
        Ok(a) => a,
        Err(e) => return Err(refuse(body, e).await),
    };
    if !s.policy.is_writer(&access) {
        return Err(refuse(body, s.deny_write(&access, "files")).await);
    }
    let (req, hold): (RegisterRequest, _) = json_body(
        &s,
        body,
        &headers,
        s.config.max_json_body,
        "file registration",
    )
    .await?;
    s.check_refs(&access, &req.refs)?;
    // One turn of the registrations that read at once (its body budget
    // held meanwhile: the body is buffered).
    let turn = s
        .registrations
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the server is shutting down"))?;
    let store = s.store.clone();
    let rep = blocking(move || {
        let (_hold, _turn) = (hold, turn);
        let refs: Vec<&str> = req.refs.iter().map(String::as_str).collect();
        store.register_file(req.file_id, req.size, &req.chunks, req.sha256, &refs)
    })
    .await?;
    let status = if rep.new_file {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RegisterResponse {
            file_id: rep.file_id,
            sha256: rep.sha256,
            size: rep.size,
            new_file: rep.new_file,
        }),
    )
        .into_response())
}

async fn get_ref(
    State(s): St,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path_arg(name)?;
    let access = s.access(&headers)?;
    if !s.policy.can_read(&access, &name) {
        return Err(ApiError::not_found(format!(
            "ref not found: {}",
            tessera_clip(&name)
        )));
    }
    let store = s.store.clone();
    let info = blocking(move || {
        let id = store.resolve_ref(&name)?;
        let info = store.info(&id)?;
        Ok(RefInfo {
            name,
            file_id: id,
            size: info.size,
            sha256: info.sha256,
        })
    })
    .await?;
    Ok(Json(info).into_response())
}

async fn put_ref(
    State(s): St,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Response> {
    let checked = path_arg(name).and_then(|name| {
        let access = s.access(&headers)?;
        if !s.policy.can_write(&access, &name) {
            return Err(s.deny_write(&access, &format!("ref {}", tessera_clip(&name))));
        }
        Ok((name, access))
    });
    let (name, access) = match checked {
        Ok(x) => x,
        Err(e) => return Err(refuse(body, e).await),
    };
    let limit = s.config.max_json_body.min(1 << 20);
    let (req, _hold): (SetRef, _) = json_body(&s, body, &headers, limit, "ref body").await?;
    // The target must be a file this token may read: a ref is not a way
    // to reach someone else's file.
    let (id, _) = s
        .readable_file(&access, &format!("file:{}", req.file_id))
        .await?;
    let store = s.store.clone();
    let n = name.clone();
    blocking(move || store.set_ref(&n, id)).await?;
    Ok(Json(RefEntry { name, file_id: id }).into_response())
}

async fn delete_ref(
    State(s): St,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path_arg(name)?;
    let access = s.access(&headers)?;
    if !s.policy.can_write(&access, &name) {
        return Err(s.deny_write(&access, &format!("ref {}", tessera_clip(&name))));
    }
    let store = s.store.clone();
    blocking(move || store.delete_ref(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_refs(
    State(s): St,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let access = s.access(&headers)?;
    let q = query_params(query.as_deref())?;
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    // List only under the prefixes the token may read.
    let scans: Vec<String> = match s.policy.read_prefixes(&access) {
        None => vec![prefix],
        Some(readable) => {
            let mut v: Vec<String> = readable
                .into_iter()
                .filter_map(|p| {
                    if p.starts_with(&prefix) {
                        Some(p)
                    } else if prefix.starts_with(&p) {
                        Some(prefix.clone())
                    } else {
                        None
                    }
                })
                .collect();
            v.sort();
            v.dedup();
            v
        }
    };
    let store = s.store.clone();
    let (refs, unreadable) = blocking(move || {
        let mut all = BTreeMap::new();
        for p in &scans {
            for (name, id) in store.list_refs(p)? {
                all.insert(name, id);
            }
        }
        Ok((all, store.unreadable_refs()))
    })
    .await?;
    // A list of many refs is held whole until sent: its answer (about 100
    // bytes a ref beside its name) and the list, from the response budget.
    let bytes: u64 = refs.keys().map(|n| n.len() as u64 * 2 + 100).sum();
    let hold = response_hold(&s, bytes, "ref list").await?;
    let capacity = bytes as usize / 2;
    json_answer(
        &RefList {
            refs: refs
                .into_iter()
                .map(|(name, file_id)| RefEntry { name, file_id })
                .collect(),
            unreadable: unreadable
                .into_iter()
                .map(|p| UnreadableRef {
                    object: p.object,
                    detail: p.detail,
                })
                .collect(),
        },
        capacity,
        hold,
    )
}

/// A JSON answer built whole (into a buffer of about `capacity` bytes),
/// sent in slices with `hold` kept until the last is taken (see
/// [`held_answer`]).
fn json_answer<T: serde::Serialize>(value: &T, capacity: usize, hold: Hold) -> ApiResult<Response> {
    let mut buf = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut buf, value)
        .map_err(|e| ApiError::internal(format!("encoding an answer: {e}")))?;
    let mut r = Response::new(held_answer(Bytes::from(buf), SLICE as usize, hold));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// The GC options of an admin request's query: `grace` (seconds, default
/// one hour), `window` (seconds, the writer window on a shared store,
/// default 300) and `dry_run`.
fn gc_query(q: &BTreeMap<String, String>) -> ApiResult<tessera::GcOptions> {
    let mut opts = tessera::GcOptions::default();
    let secs = |key: &str| -> ApiResult<Option<Duration>> {
        q.get(key)
            .map(|g| {
                g.parse().map(Duration::from_secs).map_err(|_| {
                    ApiError::bad_request(format!("{key}={}: want seconds", tessera_clip(g)))
                })
            })
            .transpose()
    };
    if let Some(g) = secs("grace")? {
        opts.grace = g;
    }
    if let Some(w) = secs("window")? {
        opts.writer_window = w;
    }
    opts.dry_run = matches!(q.get("dry_run").map(String::as_str), Some("1" | "true"));
    Ok(opts)
}

fn fraction_query(q: &BTreeMap<String, String>, key: &str, default: f64) -> ApiResult<f64> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
            _ => Err(ApiError::bad_request(format!(
                "{key}={}: want a fraction between 0 and 1",
                tessera_clip(v)
            ))),
        },
    }
}

impl Inner {
    fn require_admin(&self, headers: &HeaderMap, what: &str) -> ApiResult<()> {
        let access = self.access(headers)?;
        if self.policy.is_admin(&access) {
            return Ok(());
        }
        Err(match access {
            Access::Anonymous => ApiError::unauthorized(format!("{what} needs an admin token")),
            _ => ApiError::forbidden(format!("{what} needs an admin token")),
        })
    }
}

/// `POST /v1/admin/gc`: runs a GC; the response is its report.
async fn post_gc(
    State(s): St,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    s.require_admin(&headers, "gc")?;
    let opts = gc_query(&query_params(query.as_deref())?)?;
    let store = s.store.clone();
    let rep = blocking(move || store.gc(&opts)).await?;
    Ok(Json(rep).into_response())
}

/// `POST /v1/admin/repack`: runs GC then repack; the response is the
/// report. Query: `grace`, `dry_run`, `threshold`, `max_garbage`.
async fn post_repack(
    State(s): St,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    s.require_admin(&headers, "repack")?;
    let q = query_params(query.as_deref())?;
    let defaults = tessera::RepackOptions::default();
    let opts = tessera::RepackOptions {
        gc: gc_query(&q)?,
        threshold: fraction_query(&q, "threshold", defaults.threshold)?,
        max_garbage: fraction_query(&q, "max_garbage", defaults.max_garbage)?,
        ..defaults
    };
    let store = s.store.clone();
    let rep = blocking(move || store.repack(&opts)).await?;
    Ok(Json(rep).into_response())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn only_paths_under_the_store_are_redacted() {
        assert_eq!(
            redact("pack s/packs/ab.pack: this is bad (s/x)", "s").as_deref(),
            Some("pack <store>/packs/ab.pack: this is bad (<store>/x)")
        );
        assert_eq!(redact("this store's refs", "s"), None);
        assert_eq!(redact("see /a/s/packs/x and xs/y", "s"), None);
        assert_eq!(
            redact("\"/srv/st/packs/a\" /srv/st", "/srv/st").as_deref(),
            Some("\"<store>/packs/a\" /srv/st")
        );
        assert_eq!(
            redact("s3://b/p/recipes/x", "s3://b/p").as_deref(),
            Some("<store>/recipes/x")
        );
    }
}
