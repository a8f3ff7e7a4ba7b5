//! Bringing the store back after a failed write. A write that fails (a full
//! disk, a bucket that stopped answering) poisons the store: it refuses
//! every later write until recovered (spec §10.1 rule 8), and writes are
//! answered `503 unavailable` with `Retry-After`. A server runs for weeks,
//! so it does not wait for a restart: any request that finds the store
//! poisoned starts [`tessera::Store::recover_poisoned`] in the background,
//! which catches the index up with the objects as a reopen would and lets
//! writes in again. While the cause lasts (the disk still full), attempts
//! back off: 1 s after the last one, doubling to at most a minute, back to
//! 1 s once the store has stayed writable for ten minutes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera::Store;

/// The first wait between attempts.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A store poisoned again this long after the last attempt starts from
/// [`FIRST_DELAY`] again.
const RESET_AFTER: Duration = Duration::from_secs(600);
/// How long an attempt waits for writers, GC and repack to finish.
const GATE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    running: bool,
    last: Option<Instant>,
    delay: Duration,
}

/// When the store was last recovered, and whether an attempt runs.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    state: Arc<Mutex<State>>,
}

impl Recovery {
    /// Starts an attempt to recover `store` in the background if it is
    /// poisoned, none is running and the back-off allows one now.
    pub(crate) fn kick(&self, store: &Store) {
        if !store.is_poisoned() {
            return;
        }
        let now = Instant::now();
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.running {
                return;
            }
            s.delay = match s.last {
                Some(last) if now.duration_since(last) < s.delay => return,
                Some(last) if now.duration_since(last) < RESET_AFTER => {
                    (s.delay * 2).clamp(FIRST_DELAY, MAX_DELAY)
                }
                _ => FIRST_DELAY,
            };
            s.running = true;
            s.last = Some(now);
        }
        let (store, state) = (store.clone(), self.state.clone());
        let run = move || {
            // Success is logged by the engine, with what the catch-up did.
            if let Err(e) = store.recover_poisoned(GATE_WAIT) {
                tracing::warn!(store = %store.location(), error = %e, "the store still refuses writes; trying again later");
            }
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.running = false;
            s.last = Some(Instant::now());
        };
        // Off the async threads: the catch-up lists and reads objects.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(run)),
            Err(_) => drop(std::thread::spawn(run)),
        }
    }
}
