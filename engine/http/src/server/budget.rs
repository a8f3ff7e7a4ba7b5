//! Server-wide memory budgets: every byte a request makes the server hold
//! is taken from a budget first and given back when it is let go, so what
//! all requests hold at once never adds up to more than the budget. There
//! are two, so that neither direction can starve the other:
//!
//! - request bodies ([`ServerConfig::body_budget`](super::ServerConfig::body_budget)):
//!   a body with a `Content-Length` takes its whole length before its
//!   first byte is read; one without (chunked) takes budget in steps as its
//!   bytes arrive; given back when the request ends;
//! - responses ([`ServerConfig::response_budget`](super::ServerConfig::response_budget)):
//!   a response takes the most it can hold at once before it is built (a
//!   reconstruction its answer, a file its decode window and one slice, a
//!   pack one read) and gives it back when its body has been sent or
//!   dropped ([`held`]). A client that stops reading keeps its share only
//!   until the write stall timeout.
//!
//! A request waits for budget in arrival order (FIFO) for at most
//! [`ServerConfig::budget_wait`](super::ServerConfig::budget_wait) in all,
//! then is answered `503 overloaded` with `Retry-After`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget is counted in units of this many bytes (a semaphore counts
/// permits in `u32` per acquisition).
const UNIT: u64 = 1024;

/// A chunked body takes budget in steps of at least this many bytes.
pub(crate) const STEP: u64 = 256 << 10;

/// One budget, shared by every request of a server.
#[derive(Debug)]
pub(crate) struct Budget {
    units: Arc<Semaphore>,
    total_units: u32,
}

impl Budget {
    /// A budget of `bytes` (rounded down to whole KiB, at least one KiB,
    /// at most `u32::MAX` KiB).
    pub(crate) fn new(bytes: u64) -> Budget {
        let total_units = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX).max(1);
        Budget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// The whole budget in bytes.
    pub(crate) fn total(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes taken by requests now.
    pub(crate) fn in_use(&self) -> u64 {
        let free = self.units.available_permits() as u64;
        (u64::from(self.total_units).saturating_sub(free)) * UNIT
    }

    /// An empty hold on this budget, grown with [`Hold::grow_to`].
    pub(crate) fn hold(&self) -> Hold {
        Hold {
            units: self.units.clone(),
            total_units: self.total_units,
            permit: None,
        }
    }
}

/// Budget held by one request or response; given back when dropped.
#[derive(Debug)]
pub(crate) struct Hold {
    units: Arc<Semaphore>,
    total_units: u32,
    permit: Option<OwnedSemaphorePermit>,
}

/// Why a hold could not grow.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Short {
    /// More than the whole budget: no wait can give it.
    OverTotal,
    /// Other requests hold the budget still at the deadline.
    Busy,
}

impl Hold {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// Grows the hold to at least `bytes`, waiting until `deadline` at
    /// most.
    pub(crate) async fn grow_to(
        &mut self,
        bytes: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), Short> {
        let want_units = bytes.div_ceil(UNIT);
        if want_units > u64::from(self.total_units) {
            return Err(Short::OverTotal);
        }
        let have = self.permit.as_ref().map_or(0, |p| p.num_permits() as u64);
        let Some(more) = want_units.checked_sub(have).filter(|&m| m > 0) else {
            return Ok(());
        };
        // `more` <= total_units, which is a u32.
        let more = u32::try_from(more).map_err(|_| Short::OverTotal)?;
        let acquire = self.units.clone().acquire_many_owned(more);
        let permit = match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(p)) => p,
            // The semaphore is never closed; treat it as busy anyway.
            Ok(Err(_)) | Err(_) => return Err(Short::Busy),
        };
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        Ok(())
    }
}

/// `body` (its size as it was), holding `hold` until the body is done with:
/// sent to its end, or dropped with its connection.
pub(crate) fn held(body: axum::body::Body, hold: Hold) -> axum::body::Body {
    use http_body_util::BodyExt;
    axum::body::Body::new(body.map_frame(move |frame| {
        let _keep = &hold;
        frame
    }))
}

/// A whole answer built in memory (a reconstruction, a ref list), sent in
/// slices of at most `slice` bytes, each copied out, so that the answer's
/// buffer is let go only when the body is, and `hold` with it: a single
/// frame of the whole answer would be taken by the connection at once,
/// ending the body (and the hold) while every byte of it still waits to be
/// sent.
pub(crate) fn held_answer(answer: bytes::Bytes, slice: usize, hold: Hold) -> axum::body::Body {
    axum::body::Body::new(Sliced {
        rest: answer,
        slice: slice.max(1),
        _hold: hold,
    })
}

struct Sliced {
    rest: bytes::Bytes,
    slice: usize,
    _hold: Hold,
}

impl http_body::Body for Sliced {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.rest.len().min(self.slice);
        let frame = bytes::Bytes::copy_from_slice(&self.rest[..n]);
        let rest = self.rest.slice(n..);
        self.rest = rest;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn holds_are_bounded_and_given_back() {
        let b = Budget::new(1 << 20);
        assert_eq!(b.total(), 1 << 20);
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        let mut a = b.hold();
        a.grow_to(700 << 10, soon()).await.expect("fits");
        assert_eq!(b.in_use(), 700 << 10);
        let mut c = b.hold();
        assert_eq!(c.grow_to(400 << 10, soon()).await, Err(Short::Busy));
        assert_eq!(c.bytes(), 0);
        assert_eq!(
            c.grow_to((1 << 20) + 1, soon()).await,
            Err(Short::OverTotal)
        );
        c.grow_to(300 << 10, soon()).await.expect("fits");
        c.grow_to(100, soon()).await.expect("already held");
        assert_eq!(b.in_use(), 1000 << 10);
        drop(a);
        c.grow_to(900 << 10, soon()).await.expect("fits now");
        assert_eq!(b.in_use(), 900 << 10);
        drop(c);
        assert_eq!(b.in_use(), 0);
    }

    /// Found by a probe: a reconstruction answer sent as one frame gave
    /// its budget back as soon as the connection took the frame, so 600
    /// never-read answers of 6.7 MB were all admitted (4.6 GB). An answer
    /// now goes out in copied slices and holds its budget until the last
    /// is taken.
    #[tokio::test]
    async fn an_answer_holds_its_budget_until_its_last_slice_is_taken() {
        use http_body_util::BodyExt;
        let b = Budget::new(1 << 20);
        let mut hold = b.hold();
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        hold.grow_to(600 << 10, soon).await.expect("fits");
        let answer = bytes::Bytes::from(vec![7u8; 500_000]);
        let mut body = held_answer(answer, 200_000, hold);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(500_000));
        let mut got = 0;
        for want in [200_000, 200_000, 100_000] {
            assert_eq!(b.in_use(), 600 << 10, "given back before the end");
            let frame = body.frame().await.expect("a frame").expect("ok");
            let data = frame.into_data().expect("data");
            assert_eq!(data.len(), want);
            got += data.len();
        }
        assert_eq!(got, 500_000);
        assert!(body.frame().await.is_none());
        drop(body);
        assert_eq!(b.in_use(), 0);
    }
}
