//! A one-shot result that other threads wait for: how concurrent callers
//! share one request (an open, a block fetch) instead of each sending it.

use std::io;
use std::sync::{Condvar, Mutex};

/// What a shared request ended with: its value, or its error's kind and
/// message (so each waiter gets its own `io::Error`).
pub(crate) type Shared<T> = Result<T, (io::ErrorKind, String)>;

/// The slot a request's result is put in.
pub(crate) struct Slot<T> {
    done: Mutex<Option<Shared<T>>>,
    cv: Condvar,
}

impl<T: Clone> Slot<T> {
    pub(crate) fn new() -> Self {
        Slot {
            done: Mutex::new(None),
            cv: Condvar::new(),
        }
    }

    /// Sets the result (the first one set wins) and wakes the waiters.
    pub(crate) fn complete(&self, r: Shared<T>) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(r);
        }
        self.cv.notify_all();
    }

    /// Waits for the result.
    pub(crate) fn wait(&self) -> io::Result<T> {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = d.as_ref() {
                return r.clone().map_err(|(kind, msg)| io::Error::new(kind, msg));
            }
            d = self.cv.wait(d).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// An error as a [`Shared`] one.
pub(crate) fn share(e: &io::Error) -> (io::ErrorKind, String) {
    (e.kind(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_get_the_first_result() {
        let s = Arc::new(Slot::<u32>::new());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        s.complete(Ok(5));
        s.complete(Err((io::ErrorKind::Other, "late".into())));
        assert_eq!(t.join().expect("join").expect("value"), 5);
        let e = Slot::<u32>::new();
        e.complete(Err((io::ErrorKind::NotFound, "gone".into())));
        assert_eq!(e.wait().expect_err("err").kind(), io::ErrorKind::NotFound);
    }
}
