//! Request counters: every HTTP request the store sends (retries
//! included) goes through [`CountingConnector`], which counts it by kind
//! and adds up the bytes of request and response bodies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;

/// The live counters of a store.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    gets: AtomicU64,
    heads: AtomicU64,
    puts: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) disk_hits: AtomicU64,
}

/// A snapshot of a store's request counters (see [`crate::S3Store::stats`]).
/// Counts are HTTP requests actually sent, retries included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct S3Stats {
    /// Object GETs (whole or ranged).
    pub gets: u64,
    /// HEADs (exists, delete, the length of an empty object).
    pub heads: u64,
    /// PUTs (uploads, conditional or not).
    pub puts: u64,
    /// LIST pages.
    pub lists: u64,
    /// DELETEs.
    pub deletes: u64,
    /// Any other request.
    pub other: u64,
    /// Requests that failed in transport or got a 5xx answer (each retry
    /// of a failing request counts again).
    pub failed: u64,
    /// Bytes of request bodies sent.
    pub bytes_up: u64,
    /// Bytes of response bodies received (by their `Content-Length`).
    pub bytes_down: u64,
    /// Block reads served from the store's block cache.
    pub cache_hits: u64,
    /// Block reads that needed a request.
    pub cache_misses: u64,
    /// Of the cache hits, those served by the on-disk tier
    /// ([`crate::S3Options::disk_cache_dir`]).
    pub disk_hits: u64,
}

impl S3Stats {
    /// Every request sent.
    pub fn requests(&self) -> u64 {
        self.gets + self.heads + self.puts + self.lists + self.deletes + self.other
    }

    /// The counts accumulated since `earlier` (a snapshot of the same store).
    pub fn since(&self, earlier: &S3Stats) -> S3Stats {
        S3Stats {
            gets: self.gets.saturating_sub(earlier.gets),
            heads: self.heads.saturating_sub(earlier.heads),
            puts: self.puts.saturating_sub(earlier.puts),
            lists: self.lists.saturating_sub(earlier.lists),
            deletes: self.deletes.saturating_sub(earlier.deletes),
            other: self.other.saturating_sub(earlier.other),
            failed: self.failed.saturating_sub(earlier.failed),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
            cache_hits: self.cache_hits.saturating_sub(earlier.cache_hits),
            cache_misses: self.cache_misses.saturating_sub(earlier.cache_misses),
            disk_hits: self.disk_hits.saturating_sub(earlier.disk_hits),
        }
    }
}

impl std::fmt::Display for S3Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests (GET {}, HEAD {}, PUT {}, LIST {}, DELETE {}, other {}, failed {}), \
             {} B up, {} B down, cache {} hits ({} from disk) / {} misses",
            self.requests(),
            self.gets,
            self.heads,
            self.puts,
            self.lists,
            self.deletes,
            self.other,
            self.failed,
            self.bytes_up,
            self.bytes_down,
            self.cache_hits,
            self.disk_hits,
            self.cache_misses
        )
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> S3Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        S3Stats {
            gets: g(&self.gets),
            heads: g(&self.heads),
            puts: g(&self.puts),
            lists: g(&self.lists),
            deletes: g(&self.deletes),
            other: g(&self.other),
            failed: g(&self.failed),
            bytes_up: g(&self.bytes_up),
            bytes_down: g(&self.bytes_down),
            cache_hits: g(&self.cache_hits),
            cache_misses: g(&self.cache_misses),
            disk_hits: g(&self.disk_hits),
        }
    }

    fn count_request(&self, req: &HttpRequest) {
        let query = |name: &str| {
            req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p.split('=').next().is_some_and(|k| k == name))
            })
        };
        let counter = match *req.method() {
            http::Method::GET if query("list-type") => &self.lists,
            http::Method::GET => &self.gets,
            http::Method::HEAD => &self.heads,
            http::Method::PUT => &self.puts,
            // object_store deletes through the bulk API (POST ?delete).
            http::Method::DELETE => &self.deletes,
            http::Method::POST if query("delete") => &self.deletes,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.bytes_up
            .fetch_add(req.body().content_length() as u64, Ordering::Relaxed);
    }

    fn count_response(&self, head: bool, r: &Result<HttpResponse, HttpError>) {
        match r {
            Ok(resp) => {
                if resp.status().is_server_error() {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                if head {
                    // Its Content-Length is the object's; no body follows.
                    return;
                }
                let len = resp
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                self.bytes_down.fetch_add(len, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Builds object_store's usual reqwest client, wrapped to count requests.
#[derive(Debug)]
pub(crate) struct CountingConnector {
    pub(crate) counters: Arc<Counters>,
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Counting {
            inner,
            counters: self.counters.clone(),
        }))
    }
}

#[derive(Debug)]
struct Counting {
    inner: HttpClient,
    counters: Arc<Counters>,
}

#[async_trait]
impl HttpService for Counting {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.counters.count_request(&req);
        let head = req.method() == http::Method::HEAD;
        let r = self.inner.execute(req).await;
        self.counters.count_response(head, &r);
        r
    }
}
