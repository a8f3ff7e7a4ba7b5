//! The registry server: an embeddable axum [`Router`] over a
//! [`tessera::Store`] ([`Server::router`]), and a hardened accept loop
//! around it ([`Server::serve`]): header-read and body timeouts, bounded
//! bodies, a connection limit, graceful shutdown.
//!
//! Every engine call is blocking and runs on tokio's blocking pool; files
//! and packs are streamed in bounded slices, so a response's memory does
//! not grow with the file.

mod body;
mod budget;
mod conns;
mod error;
mod handlers;
mod recovery;
mod stall;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tessera::Store;
use tokio::net::TcpListener;

use crate::auth::Policy;

pub use error::ApiError;

/// The default [`ServerConfig::body_budget`]: 512 MiB, six full-size pack
/// uploads (two pushes at full speed, each sending two packs at a time).
pub const DEFAULT_BODY_BUDGET: u64 = 512 << 20;

/// The default [`ServerConfig::response_budget`]: 512 MiB, about 340
/// responses stalled at once at their largest (a file response holds 1.5
/// MiB at most, a pack response 1 MiB).
pub const DEFAULT_RESPONSE_BUDGET: u64 = 512 << 20;

/// How long a new connection waits for the slot of an idle connection it
/// asked to close.
const REAP_WAIT: Duration = Duration::from_secs(1);

/// Limits and timeouts of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How long a signed pack URL stays valid.
    pub url_ttl: Duration,
    /// How long a client may take to send a request's headers (also how
    /// long an idle keep-alive connection is kept).
    pub header_timeout: Duration,
    /// How long a request body may go without sending a byte.
    pub body_idle_timeout: Duration,
    /// How long a whole request body may take.
    pub body_deadline: Duration,
    /// Largest JSON body.
    pub max_json_body: u64,
    /// Largest pack upload.
    pub max_pack_body: u64,
    /// Request-body bytes buffered at once, over all requests (pack
    /// uploads and JSON bodies). A body takes its share before it is read
    /// (its `Content-Length`, or in steps as it arrives without one) and
    /// gives it back when its request ends; a body larger than the whole
    /// budget is `413`.
    pub body_budget: u64,
    /// Response bytes held in memory at once, over all responses. A file,
    /// pack or reconstruction response takes the most it can hold at once
    /// before it is built (a reconstruction: its answer, estimated from
    /// its chunk count; a file: its decode window and one slice; a pack:
    /// one read; a ref list, once listed, about 100 bytes a ref) and gives
    /// it back once its body is sent or dropped. One
    /// response larger than the whole budget takes all of it.
    pub response_budget: u64,
    /// How long a request may wait for body or response budget before it
    /// is answered `503 overloaded` with `Retry-After`.
    pub budget_wait: Duration,
    /// Connections served at once. With all taken, a new connection
    /// closes the one idle longest (no request in flight: not yet sent
    /// its first request, or between keep-alive requests) and takes its
    /// slot; only when every connection has a request in flight is a new
    /// one closed at accept.
    pub max_connections: usize,
    /// Send at most this many bytes per second in one file or pack
    /// response (`None`: as fast as the client reads).
    pub max_rate: Option<u64>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// How long a response may wait for the client to read (take) any of
    /// it before the connection is closed.
    pub write_stall_timeout: Duration,
    /// File registrations (`POST /v1/files`) that read their file at once;
    /// others wait their turn. A registration reads the whole file (its
    /// SHA-256 cannot skip a chunk listed many times), so a few short
    /// requests can name a lot of reading: this bounds the cores they take
    /// from everything else. Default: the machine's cores.
    pub max_registrations: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            url_ttl: Duration::from_secs(3600),
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            body_deadline: Duration::from_secs(600),
            max_json_body: crate::protocol::MAX_JSON_BODY,
            max_pack_body: crate::protocol::MAX_PACK_BODY,
            body_budget: DEFAULT_BODY_BUDGET,
            response_budget: DEFAULT_RESPONSE_BUDGET,
            budget_wait: Duration::from_secs(10),
            max_connections: 1024,
            max_rate: None,
            shutdown_grace: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(60),
            max_registrations: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Counters of what a server sent and received (for tests, benchmarks and
/// logs).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Pack bytes sent (`GET /v1/packs`).
    pub pack_bytes_sent: AtomicU64,
    /// Pack GET requests answered with bytes.
    pub pack_requests: AtomicU64,
    /// File bytes sent (`GET /v1/files`).
    pub file_bytes_sent: AtomicU64,
    /// Pack bytes received and admitted (`PUT /v1/packs`).
    pub pack_bytes_admitted: AtomicU64,
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Request bodies refused `503 overloaded` for want of body budget.
    pub body_budget_refusals: AtomicU64,
    /// Requests refused `503 overloaded` for want of response budget.
    pub response_budget_refusals: AtomicU64,
}

impl ServerStats {
    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) policy: Policy,
    pub(crate) config: ServerConfig,
    pub(crate) stats: Arc<ServerStats>,
    /// [`ServerConfig::body_budget`].
    pub(crate) bodies: budget::Budget,
    /// [`ServerConfig::response_budget`].
    pub(crate) responses: budget::Budget,
    /// Turns of [`ServerConfig::max_registrations`].
    pub(crate) registrations: Arc<tokio::sync::Semaphore>,
    /// Bringing the store back after a failed write.
    pub(crate) recovery: recovery::Recovery,
}

/// A registry server over one store.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

/// Why a server would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No token file and a listen address other than loopback.
    #[error("refusing to listen on {0} without --tokens: a server without a token file lets anyone read and write, so it listens on loopback only (127.0.0.1, [::1])")]
    OpenNonLoopback(SocketAddr),
    /// The listener failed.
    #[error("listening socket: {0}")]
    Io(#[from] io::Error),
}

impl Server {
    /// A server over `store` with access `policy`.
    pub fn new(store: Store, policy: Policy, config: ServerConfig) -> Server {
        Server {
            inner: Arc::new(Inner {
                store,
                policy,
                bodies: budget::Budget::new(config.body_budget),
                responses: budget::Budget::new(config.response_budget),
                registrations: Arc::new(tokio::sync::Semaphore::new(
                    config.max_registrations.max(1),
                )),
                config,
                stats: Arc::default(),
                recovery: recovery::Recovery::default(),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.inner.stats.clone()
    }

    /// Request-body bytes buffered now (taken from
    /// [`ServerConfig::body_budget`]).
    pub fn body_bytes_buffered(&self) -> u64 {
        self.inner.bodies.in_use()
    }

    /// Response bytes held now (taken from
    /// [`ServerConfig::response_budget`]).
    pub fn response_bytes_held(&self) -> u64 {
        self.inner.responses.in_use()
    }

    /// The access policy (tests sign URLs with it).
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The router, to embed in another axum application (the embedder then
    /// owns timeouts and connection limits).
    pub fn router(&self) -> Router {
        handlers::router(self.inner.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then stops
    /// accepting, lets requests in flight finish (up to
    /// [`ServerConfig::shutdown_grace`]) and returns. A server without
    /// tokens refuses any address that is not loopback.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        if !self.inner.policy.is_enforced() && !addr.ip().is_loopback() {
            return Err(ServeError::OpenNonLoopback(addr));
        }
        let app = self.router();
        let cfg = &self.inner.config;
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_timeout)
            .keep_alive(true);
        let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
        let table = conns::Table::new();
        tracing::info!(%addr, tokens = self.inner.policy.is_enforced(), "serving");
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                // Every slot taken: close the connection idle longest (no
                // request in flight on it) and take its slot.
                Err(_) if table.reap_oldest_idle() => {
                    let wait = tokio::time::timeout(REAP_WAIT, slots.clone().acquire_owned());
                    match wait.await {
                        Ok(Ok(p)) => {
                            tracing::debug!(%peer, "connection limit reached; closed an idle connection for a new one");
                            p
                        }
                        _ => {
                            tracing::warn!(%peer, "connection limit reached; closing a new connection");
                            drop(stream);
                            continue;
                        }
                    }
                }
                Err(_) => {
                    tracing::warn!(%peer, "connection limit reached with every connection busy; closing a new connection");
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let entry = table.enter();
            let conn_state = entry.conn.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let busy = conn_state.busy();
                    let app = app.clone();
                    async move {
                        let resp = tower::ServiceExt::oneshot(app, req).await?;
                        Ok::<_, std::convert::Infallible>(resp.map(|b| busy.attach(b)))
                    }
                },
            );
            let stream = stall::StallGuard::new(stream, cfg.write_stall_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let mut conn = Box::pin(conn);
                loop {
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            break;
                        }
                        () = entry.conn.reap_requested() => {
                            if entry.conn.is_idle() {
                                tracing::debug!(%peer, "closing an idle connection for a new one");
                                break;
                            }
                            entry.conn.decline_reap();
                        }
                    }
                }
                // Closes the connection (if it is open still), then frees
                // its slot.
                drop(conn);
                drop(entry);
                drop(permit);
            });
        }
        drop(listener);
        tracing::info!("shutting down: waiting for requests in flight");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(cfg.shutdown_grace) => {
                tracing::warn!("requests still in flight after the grace period; stopping anyway");
            }
        }
        Ok(())
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
