//! The client: [`Client`] speaks the protocol; [`pull`] and [`push`] move
//! files between a local store and a server.
//!
//! The local store is the client's chunk cache: a pull keeps every chunk it
//! fetched (verified), so the next version of a model costs only what that
//! version adds, and a push uploads only what the server lacks.

mod pull;
mod push;

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera::{ChunkParams, Store, StoreOptions};

use crate::protocol::{
    encode_query, encode_segment, ErrorBody, MissingRequest, MissingResponse, PackAdmitted,
    ReconstructionResponse, RefEntry, RefInfo, RefList, RegisterRequest, RegisterResponse,
    ServerInfo, SetRef, MAX_MISSING_IDS, PROTOCOL_VERSION,
};

pub use pull::{pull, PullReport};
pub use push::{push, PushFile, PushInput, PushReport};
pub use reqwest::StatusCode;

/// How a client talks to a server.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Bearer token.
    pub token: Option<String>,
    /// Range requests in flight at once during a pull (and pack uploads
    /// during a push).
    pub parallel: usize,
    /// Largest range request of a pull.
    pub max_request: u64,
    /// Records of one pack less than this many bytes apart share a request.
    pub gap: u64,
    /// A response that sends nothing for this long is abandoned (and
    /// retried).
    pub stall_timeout: Duration,
    /// Connecting gives up after this long.
    pub connect_timeout: Duration,
    /// Attempts after the first for a request that failed for a reason
    /// that may pass (network, timeout, 5xx).
    pub retries: u32,
    /// The first wait before a retry (doubled each time).
    pub backoff: Duration,
    /// The longest wait before a retry.
    pub max_backoff: Duration,
    /// Largest pack a push uploads (chunks' raw bytes).
    pub max_pack_bytes: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            parallel: 4,
            max_request: 8 << 20,
            gap: 32 << 10,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 6,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_pack_bytes: 64 << 20,
        }
    }
}

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{method} {url}: {status} {code}: {message}")]
    Http {
        /// The method.
        method: Method,
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The error code from the body (or the status text).
        code: String,
        /// The message from the body.
        message: String,
        /// How long the server asked the client to wait (`Retry-After`
        /// in seconds; `503 overloaded` sends one).
        retry_after: Option<Duration>,
    },
    /// The request did not get an answer (refused, reset, timed out).
    #[error("{method} {url}: {detail}")]
    Network {
        /// The method.
        method: Method,
        /// The URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The server answered something this client cannot use.
    #[error("{url}: {detail}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The local store refused or failed.
    #[error("local store: {0}")]
    Engine(#[from] tessera::Error),
    /// A local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// Whether trying again may help (network, timeouts, 5xx, 408, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Network { .. } => true,
            // A server that reports damage would only report it again.
            ClientError::Http { code, .. } if code == "damaged" => false,
            ClientError::Http { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// How long the server asked to wait before trying again (at most a
    /// minute; zero when it did not say).
    pub fn retry_after(&self) -> Duration {
        match self {
            ClientError::Http {
                retry_after: Some(d),
                ..
            } => (*d).min(Duration::from_secs(60)),
            _ => Duration::ZERO,
        }
    }

    /// The HTTP status, for an error answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ClientError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Result alias of the client.
pub type ClientResult<T> = Result<T, ClientError>;

/// Largest JSON answer the client reads.
const MAX_JSON_ANSWER: u64 = 1 << 30;

/// A connection to one server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    opts: ClientOptions,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Requests sent again after a transient failure (by `send_retry`).
    retries: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Client {
    /// A client of the server at `base` (`http://host:port`, with or
    /// without a trailing `/`).
    pub fn new(base: &str, opts: ClientOptions) -> ClientResult<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "server URL {base:?}: want http://HOST[:PORT] or https://…"
            )));
        }
        // A URL that does not parse would fail every request (and be
        // retried as a network failure); a query or fragment would be cut
        // off by the paths appended to it.
        match reqwest::Url::parse(&base) {
            Err(e) => {
                return Err(ClientError::Usage(format!("server URL {base:?}: {e}")));
            }
            // Credentials in the URL would be sent as Basic auth instead of
            // the token, and printed with every message naming the URL.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return Err(ClientError::Usage(
                    "server URL: user or password in the URL; give a token with --token or TESSERA_TOKEN instead".into(),
                ));
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                return Err(ClientError::Usage(format!(
                    "server URL {base:?}: a server's URL is its base, without `?` or `#`"
                )));
            }
            // An endpoint's URL given as the base (`…/v1/files`) would put
            // every path under it: the name would read as a ref that does
            // not exist.
            Ok(u) if u.path_segments().is_some_and(|mut s| s.any(|s| s == "v1")) => {
                return Err(ClientError::Usage(format!(
                    "server URL {base:?}: a server's URL is its base (what comes before /v1/…), not an endpoint's"
                )));
            }
            Ok(_) => {}
        }
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(opts.parallel.max(1) * 2)
            .build()
            .map_err(|e| ClientError::Usage(format!("HTTP client: {e}")))?;
        Ok(Client {
            base,
            http,
            opts,
            requests: Default::default(),
            retries: Default::default(),
        })
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// HTTP requests this client (and its clones) sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests this client (and its clones) sent again after a transient
    /// failure (not counting the range retries of a pull, which it counts
    /// itself).
    pub fn retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base` + `path` (a path starting with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, url: &str, auth: bool) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.opts.token {
            Some(t) if auth => rb.bearer_auth(t),
            _ => rb,
        }
    }

    /// Sends a request (with the token); an error status becomes
    /// [`ClientError::Http`] with the server's message. The exchange up to
    /// the answer's headers is bounded by `timeout`.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        timeout: Duration,
    ) -> ClientResult<reqwest::Response> {
        self.send_as(method, url, build, timeout, true).await
    }

    /// [`Client::send`], with the token only when `auth` (pack URLs carry
    /// their own signature, and may point elsewhere).
    pub(crate) async fn send_as(
        &self,
        method: Method,
        url: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        timeout: Duration,
        auth: bool,
    ) -> ClientResult<reqwest::Response> {
        let rb = build(self.request(method.clone(), url, auth));
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let net = |detail: String| ClientError::Network {
            method: method.clone(),
            url: url.to_string(),
            detail,
        };
        let resp = match tokio::time::timeout(timeout, rb.send()).await {
            Err(_) => {
                return Err(net(format!(
                    "no answer within {} s",
                    timeout.as_secs_f64().round()
                )))
            }
            Ok(Err(e)) => return Err(net(describe(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(resp, 64 << 10, self.opts.stall_timeout)
            .await
            .unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                status.canonical_reason().unwrap_or("error").to_string(),
                String::from_utf8_lossy(&body).chars().take(300).collect(),
            ),
        };
        Err(ClientError::Http {
            method,
            url: url.to_string(),
            status,
            code,
            message,
            retry_after,
        })
    }

    /// Sends with retries (for idempotent requests, and uploads whose
    /// repetition is harmless): transient failures are retried with
    /// exponential backoff.
    pub(crate) async fn send_retry(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        timeout: Duration,
    ) -> ClientResult<reqwest::Response> {
        let mut attempt = 0;
        loop {
            match self.send(method.clone(), url, &build, timeout).await {
                Err(e) if e.is_transient() && attempt < self.opts.retries => {
                    let wait = self.backoff(attempt).max(e.retry_after());
                    tracing::warn!(error = %e, "retrying in {:.1} s", wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    self.retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                r => return r,
            }
        }
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let f = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.opts
            .backoff
            .saturating_mul(f)
            .min(self.opts.max_backoff)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> ClientResult<T> {
        let url = self.url(path);
        let resp = self
            .send_retry(Method::GET, &url, |r| r, self.opts.stall_timeout)
            .await?;
        json_of(resp, &url, self.opts.stall_timeout).await
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> ClientResult<T> {
        let url = self.url(path);
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
            url: url.clone(),
            detail: format!("encoding the request: {e}"),
        })?;
        let resp = self
            .send_retry(
                method,
                &url,
                |r| {
                    r.header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                },
                self.opts.stall_timeout,
            )
            .await?;
        json_of(resp, &url, self.opts.stall_timeout).await
    }

    /// `GET /v1`: the protocol version and chunking parameters.
    pub async fn server_info(&self) -> ClientResult<ServerInfo> {
        let info: ServerInfo = self.get_json("/v1").await?;
        if info.protocol != PROTOCOL_VERSION {
            return Err(ClientError::Protocol {
                url: self.url("/v1"),
                detail: format!(
                    "the server speaks protocol {}, this client {PROTOCOL_VERSION}",
                    info.protocol
                ),
            });
        }
        Ok(info)
    }

    /// `GET /v1/reconstructions/{name}` of the whole file.
    pub async fn reconstruction(&self, name: &str) -> ClientResult<ReconstructionResponse> {
        self.get_json(&format!("/v1/reconstructions/{}", encode_segment(name)))
            .await
    }

    /// `GET /v1/files/{name}`: the file's bytes, or bytes `start..=end` of
    /// it (held in memory: for small files and ranges; [`pull`] is the way
    /// to download a model).
    pub async fn get_file(&self, name: &str, range: Option<(u64, u64)>) -> ClientResult<Bytes> {
        let url = self.url(&format!("/v1/files/{}", encode_segment(name)));
        let resp = self
            .send_retry(
                Method::GET,
                &url,
                |r| match range {
                    Some((a, b)) => r.header(reqwest::header::RANGE, format!("bytes={a}-{b}")),
                    None => r,
                },
                self.opts.stall_timeout,
            )
            .await?;
        let want = if range.is_some() {
            reqwest::StatusCode::PARTIAL_CONTENT
        } else {
            reqwest::StatusCode::OK
        };
        if resp.status() != want {
            return Err(ClientError::Protocol {
                url,
                detail: format!("expected {want}, got {}", resp.status()),
            });
        }
        read_limited(resp, u64::MAX, self.opts.stall_timeout).await
    }

    /// `GET /v1/files/{name}?tensor=T`: one tensor's bytes of a model file
    /// (PROTOCOL §4.1).
    pub async fn get_tensor(&self, name: &str, tensor: &str) -> ClientResult<Bytes> {
        let url = self.url(&format!(
            "/v1/files/{}?tensor={}",
            encode_segment(name),
            encode_segment(tensor)
        ));
        let resp = self
            .send_retry(Method::GET, &url, |r| r, self.opts.stall_timeout)
            .await?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ClientError::Protocol {
                url,
                detail: format!("expected 200, got {}", resp.status()),
            });
        }
        read_limited(resp, u64::MAX, self.opts.stall_timeout).await
    }

    /// `GET /v1/refs/{name}`.
    pub async fn get_ref(&self, name: &str) -> ClientResult<RefInfo> {
        self.get_json(&format!("/v1/refs/{}", encode_segment(name)))
            .await
    }

    /// `PUT /v1/refs/{name}`.
    pub async fn set_ref(&self, name: &str, file: tessera::FileId) -> ClientResult<RefEntry> {
        self.send_json(
            Method::PUT,
            &format!("/v1/refs/{}", encode_segment(name)),
            &SetRef { file_id: file },
        )
        .await
    }

    /// `DELETE /v1/refs/{name}`.
    pub async fn delete_ref(&self, name: &str) -> ClientResult<()> {
        let url = self.url(&format!("/v1/refs/{}", encode_segment(name)));
        self.send_retry(Method::DELETE, &url, |r| r, self.opts.stall_timeout)
            .await
            .map(|_| ())
    }

    /// `GET /v1/refs?prefix=`: the refs, and the ref objects the server
    /// could not read (a list that may lack refs).
    pub async fn list_refs(&self, prefix: &str) -> ClientResult<RefList> {
        self.get_json(&format!("/v1/refs?prefix={}", encode_query(prefix)))
            .await
    }

    /// `POST /v1/chunks/missing`, in requests of at most 100,000 ids.
    pub async fn missing_chunks(
        &self,
        ids: &[tessera::ChunkId],
        refs: &[String],
    ) -> ClientResult<(Vec<tessera::ChunkId>, u64)> {
        let mut out = Vec::new();
        let mut requests = 0;
        // The first question carries the refs, so the server refuses a ref
        // it will not register before anything is uploaded (an empty list
        // still asks once, for that).
        let parts: Vec<&[tessera::ChunkId]> = if ids.is_empty() {
            vec![ids]
        } else {
            ids.chunks(MAX_MISSING_IDS).collect()
        };
        for (i, part) in parts.into_iter().enumerate() {
            let r: MissingResponse = self
                .send_json(
                    Method::POST,
                    "/v1/chunks/missing",
                    &MissingRequest {
                        chunks: part.to_vec(),
                        refs: if i == 0 { refs.to_vec() } else { Vec::new() },
                    },
                )
                .await?;
            out.extend(r.missing);
            requests += 1;
        }
        Ok((out, requests))
    }

    /// `PUT /v1/packs/{id}`.
    pub async fn put_pack(
        &self,
        pack: tessera::PackId,
        bytes: Bytes,
    ) -> ClientResult<PackAdmitted> {
        let url = self.url(&format!("/v1/packs/{pack}"));
        // An upload may take a while: allow a minute per 8 MiB on top.
        let timeout = self.opts.stall_timeout
            + Duration::from_secs(60 * (1 + bytes.len() as u64 / (8 << 20)));
        let resp = self
            .send_retry(
                Method::PUT,
                &url,
                |r| {
                    r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .body(bytes.clone())
                },
                timeout,
            )
            .await?;
        json_of(resp, &url, self.opts.stall_timeout).await
    }

    /// `POST /v1/files`.
    pub async fn register(&self, req: &RegisterRequest) -> ClientResult<RegisterResponse> {
        self.send_json(Method::POST, "/v1/files", req).await
    }
}

/// A reqwest error, with its causes, in one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Reads an answer's body, at most `limit` bytes, each piece within
/// `stall`.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: u64,
    stall: Duration,
) -> ClientResult<Bytes> {
    let url = resp.url().to_string();
    let mut buf = BytesMut::new();
    loop {
        let next = tokio::time::timeout(stall, resp.chunk())
            .await
            .map_err(|_| ClientError::Network {
                method: Method::GET,
                url: url.clone(),
                detail: format!("the answer stalled for {} s", stall.as_secs()),
            })?
            .map_err(|e| ClientError::Network {
                method: Method::GET,
                url: url.clone(),
                detail: describe(&e),
            })?;
        match next {
            None => return Ok(buf.freeze()),
            Some(b) => {
                if buf.len() as u64 + b.len() as u64 > limit {
                    return Err(ClientError::Protocol {
                        url,
                        detail: format!("the answer is larger than {limit} bytes"),
                    });
                }
                buf.extend_from_slice(&b);
            }
        }
    }
}

async fn json_of<T: DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
    stall: Duration,
) -> ClientResult<T> {
    let body = read_limited(resp, MAX_JSON_ANSWER, stall).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        detail: format!("unexpected answer: {e}"),
    })
}

/// Opens (creating it if new) the local store at `dir` with the server's
/// chunking parameters; a store made with other parameters is refused
/// (nothing would dedup against the server). With `wait`, waits for
/// another process to release the store. `pickle` is the local store's
/// policy for files with pickles: a pull refuses to store (and write out)
/// a file it forbids, a push refuses to upload it.
pub fn open_local_store(
    dir: &Path,
    server: &ServerInfo,
    wait: bool,
    pickle: tessera::PicklePolicy,
) -> ClientResult<Store> {
    let params: ChunkParams = server.chunking.into();
    let opts = StoreOptions {
        create: true,
        chunking: Some(params),
        lock_wait: wait.then_some(Duration::MAX),
        pickle_policy: pickle,
        ..Default::default()
    };
    match Store::open(dir, opts) {
        Err(tessera::Error::ChunkParamsMismatch { stored, .. }) => Err(ClientError::Usage(format!(
            "local store {} uses chunking {stored}, the server {params}: use another --store for this server",
            dir.display()
        ))),
        r => Ok(r?),
    }
}

/// What a pull or push reports while it runs (a progress bar).
pub trait Progress: Send + Sync {
    /// The bytes this phase will move.
    fn start(&self, _what: &str, _total: u64) {}
    /// `n` more bytes moved.
    fn advance(&self, _n: u64) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
