//! The connections a server holds, and which of them are idle: with every
//! slot taken ([`super::ServerConfig::max_connections`]), a new connection
//! closes the connection idle longest instead of being turned away.
//!
//! A connection is idle while no request is in flight on it: before its
//! first request's headers are complete (a client that connected and sent
//! nothing, or is still trickling headers) and between keep-alive requests.
//! A request is in flight from its complete headers until its response
//! body is sent (or dropped). Closing an idle connection loses nothing: no
//! request was answered on it, and HTTP clients retry a request on a
//! keep-alive connection the server closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::sync::Notify;

/// One connection's state.
#[derive(Debug)]
pub(crate) struct Conn {
    in_flight: AtomicUsize,
    /// Milliseconds since the table's start at which the connection last
    /// became idle (accepted, or its last response ended).
    idle_since: AtomicU64,
    reap: Notify,
    /// Asked to close, and not yet declined.
    reaping: AtomicBool,
    base: Instant,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a request in flight until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Whether no request is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Completes when the server asks this connection to close (it then
    /// closes if it is idle still).
    pub(crate) async fn reap_requested(&self) {
        self.reap.notified().await;
    }

    /// Declines a request to close (a request started meanwhile).
    pub(crate) fn decline_reap(&self) {
        self.reaping.store(false, Ordering::SeqCst);
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Conn>);

impl Busy {
    /// `body`, keeping the request in flight until it is sent or dropped.
    pub(crate) fn attach(self, body: Body) -> Body {
        Body::new(body.map_frame(move |f| {
            self.touch();
            f
        }))
    }

    fn touch(&self) {}
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connections of a server.
#[derive(Debug)]
pub(crate) struct Table {
    base: Instant,
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// A connection's entry in the table; removed when dropped.
pub(crate) struct Entry {
    table: Arc<Table>,
    id: u64,
    pub(crate) conn: Arc<Conn>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Table {
    pub(crate) fn new() -> Arc<Table> {
        Arc::new(Table {
            base: Instant::now(),
            next: AtomicU64::new(0),
            conns: Mutex::default(),
        })
    }

    /// Enters a new (idle) connection.
    pub(crate) fn enter(self: &Arc<Self>) -> Entry {
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            reap: Notify::new(),
            reaping: AtomicBool::new(false),
            base: self.base,
        });
        conn.idle_since.store(conn.now_ms(), Ordering::SeqCst);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, conn.clone());
        Entry {
            table: self.clone(),
            id,
            conn,
        }
    }

    /// Asks the connection idle longest to close; false when none is idle.
    pub(crate) fn reap_oldest_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = conns
            .values()
            .filter(|c| c.is_idle() && !c.reaping.load(Ordering::SeqCst))
            .min_by_key(|c| c.idle_since.load(Ordering::SeqCst));
        match oldest {
            Some(c) => {
                c.reaping.store(true, Ordering::SeqCst);
                c.reap.notify_one();
                true
            }
            None => false,
        }
    }
}
