//! The bridge from the engine's synchronous calls to object_store's async
//! ones.
//!
//! A store owns a small multi-threaded tokio runtime. A call spawns its
//! future on that runtime and waits for the result on a plain channel, so
//! the calling thread never enters the runtime: it may be a rayon worker, a
//! plain thread, or a worker of another tokio runtime (a server that embeds
//! the engine) without deadlock or the "cannot block within a runtime"
//! panic — the future makes progress on the store's own threads whatever
//! the caller's thread is doing. (A caller on an async runtime still blocks
//! that worker while it waits, as for any blocking I/O: it should use
//! `spawn_blocking`, as it would for a directory store.)
//!
//! Every future is bounded by a deadline, so a wait always ends; dropping
//! the store shuts the runtime down in the background, which is allowed
//! from inside an async context too.

use std::future::Future;
use std::io;
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

/// A tokio runtime driven from synchronous code.
#[derive(Debug)]
pub(crate) struct Bridge {
    handle: Handle,
    runtime: Option<Runtime>,
    deadline: Duration,
}

impl Bridge {
    /// A runtime with `threads` workers; each call waits at most `deadline`.
    pub(crate) fn new(threads: usize, deadline: Duration) -> io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tessera-s3")
            .enable_all()
            .build()
            .map_err(|e| io::Error::new(e.kind(), format!("start the S3 client runtime: {e}")))?;
        Ok(Bridge {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            deadline,
        })
    }

    /// Runs `fut` on the store's runtime and waits for its output. `what`
    /// names the operation and object for the errors of the bridge itself
    /// (a deadline passed, a task that panicked).
    pub(crate) fn run<F, T>(&self, what: impl FnOnce() -> String, fut: F) -> io::Result<T>
    where
        F: Future<Output = io::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.run_within(self.deadline, what, fut)
    }

    /// [`Bridge::run`], ended (with `TimedOut`) at `by` if that comes
    /// first: no request or retry of `fut` is sent after it. Past `by`,
    /// `fut` is not started.
    pub(crate) fn run_by<F, T>(
        &self,
        by: std::time::Instant,
        what: impl FnOnce() -> String,
        fut: F,
    ) -> io::Result<T>
    where
        F: Future<Output = io::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let left = by.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: not sent, its time is up", what()),
            ));
        }
        self.run_within(left.min(self.deadline), what, fut)
    }

    fn run_within<F, T>(
        &self,
        deadline: Duration,
        what: impl FnOnce() -> String,
        fut: F,
    ) -> io::Result<T>
    where
        F: Future<Output = io::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let r = match tokio::time::timeout(deadline, fut).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {deadline:?}"),
                )),
            };
            // The receiver is gone only if the caller panicked meanwhile.
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: {e}", what()),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other(format!(
                "{}: the S3 client task ended without an answer (it panicked, or the runtime \
                 is shutting down)",
                what()
            ))),
        }
    }

    /// A handle to spawn on (read-ahead tasks).
    #[allow(dead_code)]
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Not `drop(rt)`: that blocks, and panics inside an async context.
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_plain_threads_and_ends_slow_futures_at_the_deadline() {
        let b = Bridge::new(1, Duration::from_millis(200)).expect("runtime");
        let v = b
            .run(|| "add".into(), async { Ok::<_, io::Error>(1 + 1) })
            .expect("run");
        assert_eq!(v, 2);
        let e = b
            .run(|| "GET s3://b/k".into(), async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            })
            .expect_err("deadline");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("GET s3://b/k"), "{e}");
    }

    #[test]
    fn a_call_with_a_time_limit_ends_by_it_and_is_not_started_after_it() {
        let b = Bridge::new(1, Duration::from_secs(30)).expect("runtime");
        let by = std::time::Instant::now() + Duration::from_millis(200);
        let e = b
            .run_by(by, || "DELETE s3://b/k".into(), async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            })
            .expect_err("time limit");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(std::time::Instant::now() < by + Duration::from_secs(5));
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = started.clone();
        let e = b
            .run_by(by, || "DELETE s3://b/k".into(), async move {
                s.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .expect_err("past its time");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("not sent"), "{e}");
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn runs_and_drops_inside_another_runtime() {
        let b = Bridge::new(1, Duration::from_secs(5)).expect("runtime");
        let v = b
            .run(|| "x".into(), async { Ok::<_, io::Error>(7) })
            .expect("run");
        assert_eq!(v, 7);
        drop(b); // would panic if it blocked on shutdown
    }

    #[test]
    fn a_panicking_future_is_an_error_not_a_hang() {
        let b = Bridge::new(1, Duration::from_secs(5)).expect("runtime");
        let e = b
            .run(|| "PUT s3://b/k".into(), async {
                if std::hint::black_box(true) {
                    panic!("boom");
                }
                Ok::<(), io::Error>(())
            })
            .expect_err("panic");
        assert!(e.to_string().contains("PUT s3://b/k"), "{e}");
    }
}
