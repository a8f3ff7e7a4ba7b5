//! A collector whose deletions are slow and whose lease renewals fail
//! (spec §10.6, "Leases"). Found by a probe through a throttling proxy: the
//! lease was checked only once per batch of 64 deletions, so a collector
//! whose renewals were refused kept deleting, one slow DELETE after
//! another, for minutes after its lease had lapsed — meanwhile a writer on
//! another node, seeing the condemned set void, named packs the collector
//! then deleted. Now the lease is checked before every deletion, and each
//! deletion is sent only while the lease still holds.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera::lease::LeaseOptions;
use tessera::testing::{Call, Intercepted, Interceptor};
use tessera::{Error, GcOptions, Store, StoreOptions};
use tessera_s3::testing::s3_target;
use tessera_s3::S3Store;

const CHECK_VALID: Duration = Duration::from_millis(300);
const LEASE_TTL: Duration = Duration::from_secs(3);
const DELETE_TAKES: Duration = Duration::from_millis(400);

/// Makes deletions slow, and refuses lease writes once deleting has begun.
#[derive(Debug, Default)]
struct SlowCollector {
    deleting: AtomicBool,
    /// When each deletion was started.
    deletes: Mutex<Vec<Instant>>,
    /// When the last lease write that succeeded was sent.
    last_lease_write: Mutex<Option<Instant>>,
}

impl Interceptor for SlowCollector {
    fn before(&self, call: Call, key: &str) -> io::Result<()> {
        match call {
            Call::Delete if key.starts_with("packs/") => {
                self.deleting.store(true, Ordering::SeqCst);
                self.deletes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now());
                std::thread::sleep(DELETE_TAKES);
                Ok(())
            }
            Call::PutIfVersion if key == "gc/lease" && self.deleting.load(Ordering::SeqCst) => Err(
                io::Error::other("503 SlowDown (the test refuses lease writes)"),
            ),
            _ => Ok(()),
        }
    }

    fn after(&self, call: Call, key: &str, sent: Instant, ok: bool) {
        if call == Call::PutIfVersion && key == "gc/lease" && ok {
            *self
                .last_lease_write
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(sent);
        }
    }
}

#[test]
fn a_collector_that_loses_its_lease_stops_deleting_at_once() {
    let Some(t) = s3_target("slow_collector") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("slow-collector");
    let s3 = |name: &str| {
        let mut o = t.options();
        o.staging_dir = Some(tmp.path().join(name).join("staging"));
        Arc::new(S3Store::from_url(&url, o).unwrap_or_else(|e| panic!("{url}: {e}")))
    };
    let opts = |create| StoreOptions {
        create,
        pack_target_bytes: 256 << 10,
        gc_check_valid: CHECK_VALID,
        ..StoreOptions::default()
    };
    // About 20 packs nothing names any more.
    let a = Store::open_with(s3("a"), tmp.path().join("a"), opts(true)).expect("open a");
    a.put_bytes(&tessera_synth::noise(5 << 20, 9), &["m/old"])
        .expect("put");
    a.delete_ref("m/old").expect("unname");
    let slow = Arc::new(Intercepted::new(s3("c"), SlowCollector::default()));
    let c = Store::open_with(slow.clone(), tmp.path().join("c"), opts(false)).expect("open c");
    let r = c.gc(&GcOptions {
        grace: Duration::ZERO,
        writer_window: CHECK_VALID * 3,
        lease: LeaseOptions {
            ttl: LEASE_TTL,
            max_clock_skew: Duration::from_secs(1),
        },
        ..GcOptions::default()
    });
    let deletes = slow
        .hooks()
        .deletes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let last = slow
        .hooks()
        .last_lease_write
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .expect("the lease was written");
    assert!(
        matches!(r, Err(Error::LeaseLost { .. })),
        "gc with its renewals refused: {r:?}"
    );
    assert!(!deletes.is_empty(), "nothing was deleted at all");
    // The lease held until `last + LEASE_TTL` by the collector's clock: no
    // deletion may start later, and after the renewal failed (a heartbeat
    // every ttl/4) at most the deletion in flight finishes.
    let lapsed = last + LEASE_TTL;
    for d in &deletes {
        assert!(
            *d < lapsed,
            "a deletion started {:?} after the lease lapsed",
            *d - lapsed
        );
    }
    let after_loss = deletes
        .iter()
        .filter(|d| **d > last + LEASE_TTL / 4 + DELETE_TAKES)
        .count();
    assert!(
        after_loss <= 1,
        "{after_loss} deletions started after the renewal failed ({} in all)",
        deletes.len()
    );
    for s in [a, c] {
        s.close().expect("close");
    }
}
