//! Leases (spec §10.6): at most one holder at a time of a role over a store
//! that several processes share — the garbage collector's, above all. A
//! lease is a small JSON object written only with conditional writes, so of
//! two processes that try to take it at once exactly one succeeds; it
//! expires unless renewed, so a holder that dies does not block the role
//! forever.
//!
//! Time: the holder writes `expires_ms` from its own clock (the time it
//! sent the write, plus the time to live). Another process takes an
//! unreleased lease over only once its own clock is past `expires_ms` plus
//! the allowed clock skew, so with clocks that differ by less than the skew
//! the holder's lease is valid for `ttl` of its own (monotonic) time from
//! the moment it sent its last successful write. [`Lease::check`] tells a
//! holder whether that still leaves the margin an operation needs; a holder
//! MUST check before each destructive step and stop when it fails.
//!
//! ```no_run
//! # use std::{sync::Arc, time::Duration};
//! # fn gc(objects: Arc<dyn tessera::storage::ObjectStore>) -> tessera::Result<()> {
//! use tessera::lease::{Lease, LeaseOptions, GC_LEASE};
//! let mut lease = Lease::acquire(objects, GC_LEASE, &Lease::default_holder(), LeaseOptions::default())?;
//! loop {
//!     lease.check(Duration::from_secs(60))?; // the next step takes at most a minute
//!     // ... delete one batch ...
//!     lease.renew()?;
//! #   break;
//! }
//! lease.release()?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::now_millis;
use crate::storage::{Cas, ObjectStore, Version};

/// The key of the garbage collector's lease (spec §10.6).
pub const GC_LEASE: &str = "gc/lease";

/// Format version of a lease object.
const LEASE_VERSION: u32 = 1;

/// How a lease is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long a lease stays valid after each acquisition or renewal.
    pub ttl: Duration,
    /// The most two processes' clocks may differ: another process takes an
    /// unreleased lease over only this long after it expired.
    pub max_clock_skew: Duration,
}

impl Default for LeaseOptions {
    /// 5 minutes to live, 1 minute of clock skew.
    fn default() -> Self {
        LeaseOptions {
            ttl: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(60),
        }
    }
}

/// Why a lease still held cannot be taken, and when it can be: the holder
/// counts it until `expires_ms` by its clock, another process only after
/// that plus the allowed clock skew.
fn held_detail(r: &LeaseRecord, now: u64, skew: Duration) -> String {
    let takeover = r.expires_ms.saturating_add(ms(skew));
    let secs = |ms: u64| ms.div_ceil(1000);
    if now < r.expires_ms {
        format!(
            "it expires in {} s unless renewed; another process may take it over {} s from now",
            secs(r.expires_ms - now),
            secs(takeover.saturating_sub(now))
        )
    } else {
        format!(
            "it expired {} s ago without a renewal; another process may take it over in {} s (the {} s allowed for clock skew)",
            secs(now - r.expires_ms),
            secs(takeover.saturating_sub(now)),
            skew.as_secs()
        )
    }
}

/// The lease object (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Format version (1).
    pub version: u32,
    /// Who holds (or last held) it.
    pub holder: String,
    /// Incremented by every acquisition: a fencing token a holder can
    /// write into what it publishes, so its work is told from a later
    /// holder's.
    pub token: u64,
    /// When the current holder acquired it (ms since the epoch, its clock).
    pub acquired_ms: u64,
    /// When it expires unless renewed (ms since the epoch, holder's clock).
    pub expires_ms: u64,
    /// Released by its holder: free at once.
    pub released: bool,
}

/// A held lease (see the module docs). Dropping it without
/// [`Lease::release`] leaves it to expire.
#[derive(Debug)]
pub struct Lease {
    objects: Arc<dyn ObjectStore>,
    key: String,
    record: LeaseRecord,
    version: Version,
    /// When the last successful write (acquire or renew) was sent.
    sent: Instant,
    opts: LeaseOptions,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn encode(r: &LeaseRecord) -> Vec<u8> {
    // Serializing a struct of strings and integers cannot fail.
    serde_json::to_vec(r).unwrap_or_default()
}

fn io(objects: &dyn ObjectStore, op: &'static str, key: &str, e: std::io::Error) -> Error {
    Error::io(op, objects.describe(key), e)
}

impl Lease {
    /// A holder name for this process: `pid N on HOST (random)`.
    pub fn default_holder() -> String {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown host".into());
        let nonce = blake3::hash(format!("{:?}{}", Instant::now(), now_millis()).as_bytes());
        format!(
            "pid {} on {host} ({})",
            std::process::id(),
            &nonce.to_hex()[..8]
        )
    }

    /// Reads the lease object at `key`, if any (to show who holds it).
    pub fn read(objects: &dyn ObjectStore, key: &str) -> Result<Option<LeaseRecord>> {
        match objects.get_versioned(key) {
            Ok(Some((b, _))) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::InvalidArgument(format!("lease {}: {e}", objects.describe(key)))
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(io(objects, "read lease", key, e)),
        }
    }

    /// Takes the lease at `key` for `holder`: when there is none, it was
    /// released, or it expired (by this process's clock, more than
    /// `max_clock_skew` ago). Otherwise [`Error::LeaseHeld`], naming the
    /// holder. Of several processes trying at once, exactly one succeeds.
    pub fn acquire(
        objects: Arc<dyn ObjectStore>,
        key: &str,
        holder: &str,
        opts: LeaseOptions,
    ) -> Result<Lease> {
        let store = objects.as_ref();
        // What this process last tried to write, and when it sent it.
        let mut tried: Option<(LeaseRecord, Instant)> = None;
        for _ in 0..3 {
            let current = store
                .get_versioned(key)
                .map_err(|e| io(store, "read lease", key, e))?;
            // A write whose answer was lost (the backend retried it and
            // found its own first attempt there) did take the lease.
            if let (Some((bytes, v)), Some((mine, sent))) = (&current, &tried) {
                if serde_json::from_slice::<LeaseRecord>(bytes).ok().as_ref() == Some(mine) {
                    return Ok(Lease {
                        objects: objects.clone(),
                        key: key.to_string(),
                        record: mine.clone(),
                        version: v.clone(),
                        sent: *sent,
                        opts,
                    });
                }
            }
            let sent = Instant::now();
            let now = now_millis();
            let (token, expect) = match &current {
                None => (1, None),
                Some((bytes, v)) => match serde_json::from_slice::<LeaseRecord>(bytes) {
                    Ok(r)
                        if !r.released
                            && now <= r.expires_ms.saturating_add(ms(opts.max_clock_skew)) =>
                    {
                        return Err(Error::LeaseHeld {
                            object: store.describe(key),
                            detail: held_detail(&r, now, opts.max_clock_skew),
                            holder: r.holder,
                        })
                    }
                    Ok(r) => (r.token + 1, Some(v)),
                    Err(e) => {
                        tracing::warn!(lease = %store.describe(key), error = %e,
                            "the lease object does not decode; taking it over");
                        (1, Some(v))
                    }
                },
            };
            let record = LeaseRecord {
                version: LEASE_VERSION,
                holder: holder.to_string(),
                token,
                acquired_ms: now,
                expires_ms: now.saturating_add(ms(opts.ttl)),
                released: false,
            };
            tried = Some((record.clone(), sent));
            match store
                .put_if_version(key, &encode(&record), expect)
                .map_err(|e| io(store, "write lease", key, e))?
            {
                Cas::Written(version) => {
                    return Ok(Lease {
                        objects,
                        key: key.to_string(),
                        record,
                        version,
                        sent,
                        opts,
                    })
                }
                // Someone else wrote it meanwhile: look again (and most
                // likely report them as the holder).
                Cas::Conflict => continue,
            }
        }
        Err(Error::LeaseHeld {
            object: store.describe(key),
            holder: "another process".into(),
            detail: "it changed three times while this process tried to take it".into(),
        })
    }

    /// Extends the lease by its time to live from now. Fails with
    /// [`Error::LeaseLost`] when another process took it over (it had
    /// expired) or it was released, or when it lapsed before this call
    /// (others may have counted it expired); the holder must then stop.
    pub fn renew(&mut self) -> Result<()> {
        // Once it lapsed, others may have counted it expired (a collector's
        // condemned set is void for writers then): a late renewal is a loss.
        if self.remaining().is_zero() {
            return Err(Error::LeaseLost {
                object: self.objects.describe(&self.key),
                detail: format!(
                    "it lapsed ({} ms without a renewal) before this renewal",
                    self.sent.elapsed().as_millis()
                ),
            });
        }
        let sent = Instant::now();
        let now = now_millis();
        let mut record = self.record.clone();
        record.expires_ms = now.saturating_add(ms(self.opts.ttl));
        self.write(record, sent, "renew")
    }

    /// Releases the lease (another process may take it at once).
    pub fn release(mut self) -> Result<()> {
        let mut record = self.record.clone();
        record.released = true;
        record.expires_ms = now_millis();
        self.write(record, Instant::now(), "release")
    }

    fn write(&mut self, record: LeaseRecord, sent: Instant, what: &str) -> Result<()> {
        let store = self.objects.as_ref();
        match store
            .put_if_version(&self.key, &encode(&record), Some(&self.version))
            .map_err(|e| io(store, "write lease", &self.key, e))?
        {
            Cas::Written(v) => {
                self.version = v;
                self.record = record;
                self.sent = sent;
                Ok(())
            }
            Cas::Conflict => Err(Error::LeaseLost {
                object: store.describe(&self.key),
                detail: format!(
                    "could not {what} it: another process took it over after it expired, or it was released"
                ),
            }),
        }
    }

    /// Ok while the lease is certainly held for at least `margin` more (by
    /// this process's monotonic clock since its last successful write);
    /// else [`Error::LeaseLost`]. Call before every destructive step, with
    /// the longest that step can take.
    pub fn check(&self, margin: Duration) -> Result<()> {
        let left = self.remaining();
        if left > margin {
            return Ok(());
        }
        Err(Error::LeaseLost {
            object: self.objects.describe(&self.key),
            detail: format!(
                "{} ms of it are left, less than the {} ms the next step needs; renew it first",
                left.as_millis(),
                margin.as_millis()
            ),
        })
    }

    /// How long the lease is certainly still held.
    pub fn remaining(&self) -> Duration {
        self.opts.ttl.saturating_sub(self.sent.elapsed())
    }

    /// The fencing token of this acquisition (grows with every one).
    pub fn token(&self) -> u64 {
        self.record.token
    }

    /// Who holds it (this process's holder name).
    pub fn holder(&self) -> &str {
        &self.record.holder
    }

    /// The lease object as last written.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DirStore, ReadMode};

    fn store() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let d = tempfile::tempdir().expect("tempdir");
        let s: Arc<dyn ObjectStore> = Arc::new(DirStore::new(d.path(), ReadMode::Pread));
        (d, s)
    }

    /// Found by a probe: a lease past its expiry but within the clock skew
    /// was refused with "it expires in 0 s", for up to another minute.
    #[test]
    fn a_held_lease_says_when_it_can_be_taken_over() {
        let r = LeaseRecord {
            version: 1,
            holder: "pid 1 on h".into(),
            token: 3,
            acquired_ms: 0,
            expires_ms: 100_000,
            released: false,
        };
        let skew = Duration::from_secs(60);
        let d = held_detail(&r, 90_000, skew);
        assert!(
            d.contains("expires in 10 s") && d.contains("take it over 70 s from now"),
            "{d}"
        );
        let d = held_detail(&r, 130_000, skew);
        assert!(
            d.contains("expired 30 s ago") && d.contains("take it over in 30 s"),
            "{d}"
        );
    }

    fn quick(ttl_ms: u64) -> LeaseOptions {
        LeaseOptions {
            ttl: Duration::from_millis(ttl_ms),
            max_clock_skew: Duration::ZERO,
        }
    }

    #[test]
    fn one_holder_at_a_time_and_release_frees_it() {
        let (_d, s) = store();
        let a = Lease::acquire(s.clone(), GC_LEASE, "a", LeaseOptions::default()).expect("a");
        assert_eq!(a.token(), 1);
        match Lease::acquire(s.clone(), GC_LEASE, "b", LeaseOptions::default()) {
            Err(Error::LeaseHeld { holder, .. }) => assert_eq!(holder, "a"),
            other => panic!("b must not get a held lease: {other:?}"),
        }
        a.check(Duration::from_secs(1)).expect("held");
        a.release().expect("release");
        let b = Lease::acquire(s.clone(), GC_LEASE, "b", LeaseOptions::default()).expect("b");
        assert_eq!(b.token(), 2, "every acquisition gets a new token");
        let rec = Lease::read(s.as_ref(), GC_LEASE)
            .expect("read")
            .expect("there");
        assert_eq!(rec.holder, "b");
        assert!(!rec.released);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew() {
        let (_d, s) = store();
        // TTLs long enough that a loaded machine (fsyncs of other builds)
        // does not expire a lease before the next step looks at it.
        let mut a = Lease::acquire(s.clone(), GC_LEASE, "a", quick(1000)).expect("a");
        assert!(Lease::acquire(s.clone(), GC_LEASE, "b", quick(1000)).is_err());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            matches!(a.check(Duration::ZERO), Err(Error::LeaseLost { .. })),
            "a must know its lease is no longer certain"
        );
        let b = Lease::acquire(s.clone(), GC_LEASE, "b", quick(10_000)).expect("b takes over");
        assert_eq!(b.token(), 2);
        assert!(matches!(a.renew(), Err(Error::LeaseLost { .. })));
        b.check(Duration::from_secs(1)).expect("b holds it");
    }

    #[test]
    fn a_renewed_lease_outlives_its_first_ttl() {
        let (_d, s) = store();
        let mut a = Lease::acquire(s.clone(), GC_LEASE, "a", quick(800)).expect("a");
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(300));
            a.renew().expect("renew");
            assert!(Lease::acquire(s.clone(), GC_LEASE, "b", quick(800)).is_err());
        }
        assert!(a.remaining() > Duration::from_millis(50));
    }

    #[test]
    fn the_clock_skew_delays_a_takeover() {
        let (_d, s) = store();
        let opts = LeaseOptions {
            ttl: Duration::from_millis(20),
            max_clock_skew: Duration::from_millis(1000),
        };
        let _a = Lease::acquire(s.clone(), GC_LEASE, "a", opts).expect("a");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            Lease::acquire(s.clone(), GC_LEASE, "b", opts).is_err(),
            "expired by less than the skew: still held"
        );
        std::thread::sleep(Duration::from_millis(1000));
        Lease::acquire(s, GC_LEASE, "b", opts).expect("expired by more than the skew");
    }

    #[test]
    fn racing_acquirers_get_exactly_one_lease() {
        let (_d, s) = store();
        for round in 0..10 {
            let key = format!("gc/lease-{round}");
            let won: Vec<bool> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..4)
                    .map(|i| {
                        let (s, key) = (s.clone(), key.clone());
                        sc.spawn(move || {
                            Lease::acquire(s, &key, &format!("t{i}"), LeaseOptions::default())
                                .is_ok()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}");
        }
    }
}
