//! A writer whose publication lands late (spec §10.6, "Windows"): the
//! writer check is made before a ref is sent, but nothing bounds how long
//! the request takes once sent (a slow link, a throttled and retried PUT).
//! Found by a probe through a throttling proxy: a `ref set` whose PUT
//! landed after another node's collector had marked and deleted the file
//! reported success, leaving a ref to a file that no longer existed.
//!
//! Here the bucket is reached through a backend that holds one ref write
//! until the test releases it: the collector on another node runs its
//! whole collection meanwhile. The late write must then fail, not succeed.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::lease::LeaseOptions;
use tessera::storage::ObjectStore;
use tessera::testing::{recipe_key, ref_key, Call, Intercepted, Interceptor};
use tessera::{Error, FileId, GcOptions, Result, Store, StoreOptions, VerifyOptions};
use tessera_s3::testing::s3_target;
use tessera_s3::S3Store;

/// The writer check is good for this long in these tests; the collector's
/// window is more than twice it, as the spec requires.
const CHECK_VALID: Duration = Duration::from_millis(300);

/// Holds the writes of one key until the test releases them.
#[derive(Debug)]
struct HoldWrite {
    key: String,
    entered: AtomicBool,
    released: AtomicBool,
}

impl Interceptor for HoldWrite {
    fn before(&self, call: Call, key: &str) -> io::Result<()> {
        if !matches!(call, Call::Put | Call::PutIfVersion) || key != self.key {
            return Ok(());
        }
        self.entered.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while !self.released.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// An S3 store whose writes of `key` wait for a release.
fn held_write(inner: Arc<S3Store>, key: String) -> Arc<Intercepted<HoldWrite>> {
    Arc::new(Intercepted::new(
        inner,
        HoldWrite {
            key,
            entered: AtomicBool::new(false),
            released: AtomicBool::new(false),
        },
    ))
}

fn open(objects: Arc<dyn ObjectStore>, local: &Path, create: bool) -> Store {
    let opts = StoreOptions {
        create,
        pack_target_bytes: 1 << 20,
        gc_check_valid: CHECK_VALID,
        ..StoreOptions::default()
    };
    Store::open_with(objects, local, opts)
        .unwrap_or_else(|e| panic!("open with cache {}: {e}", local.display()))
}

/// Node a stores a file and unnames it (and, with `before`, points the ref
/// at another, named file); node w names it again with `write`, whose ref
/// write is held while node c runs a whole collection (which deletes the
/// file); then the write lands. It must fail, and the ref must be put back
/// as it was: a fresh node then finds no ref (or the other file) and
/// verifies the store clean.
fn ref_landing_after_a_collection(
    test: &str,
    before: bool,
    write: fn(&Store, &[u8], FileId) -> Result<()>,
) {
    let Some(t) = s3_target(test) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url(test);
    let s3 = |name: &str| {
        let mut o = t.options();
        o.staging_dir = Some(tmp.path().join(name).join("staging"));
        Arc::new(S3Store::from_url(&url, o).unwrap_or_else(|e| panic!("{url}: {e}")))
    };
    // An old file nothing names any more: a collection may take it.
    let a = open(s3("a"), &tmp.path().join("a"), true);
    let data = tessera_synth::noise(1_200_000, 5);
    let f = a.put_bytes(&data, &["m/old"]).expect("put").file_id;
    a.delete_ref("m/old").expect("delete ref");
    let other = tessera_synth::noise(300_000, 7);
    let g = a
        .put_bytes(&other, &["m/other"])
        .expect("put other")
        .file_id;
    if before {
        a.set_ref("m/keep", g).expect("ref to the other file");
    }

    // Node w names it again, but its ref write is held on the way.
    let held = held_write(s3("w"), ref_key("m/keep"));
    let w = open(held.clone(), &tmp.path().join("w"), false);
    let writer = std::thread::spawn(move || {
        let r = write(&w, &data, f);
        (w, r)
    });
    let t0 = Instant::now();
    while !held.hooks().entered.load(Ordering::SeqCst) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the ref write never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // Meanwhile node c collects: the ref is not in the bucket at its second
    // mark, so the file is deleted.
    let c = open(s3("c"), &tmp.path().join("c"), false);
    c.gc(&GcOptions {
        grace: Duration::ZERO,
        writer_window: CHECK_VALID * 3,
        lease: LeaseOptions {
            ttl: Duration::from_secs(8),
            max_clock_skew: Duration::from_secs(1),
        },
        ..GcOptions::default()
    })
    .expect("gc");
    assert!(
        !held.inner().exists(&recipe_key(&f)).expect("exists"),
        "the collection should have deleted the unnamed file"
    );

    // The held write lands now, long after its check: it must not report
    // success for a ref naming a collected file.
    held.hooks().released.store(true, Ordering::SeqCst);
    let (w, r) = writer.join().expect("writer thread");
    let put_back = if before {
        format!("it names file {g} again")
    } else {
        "there is no such ref again".to_string()
    };
    match r {
        Err(Error::Busy(msg)) => assert!(
            msg.contains("is gone")
                && msg.contains("named what a GC on another node collected")
                && msg.contains("ref m/keep was put back")
                && msg.contains(&put_back),
            "unexpected message: {msg}"
        ),
        other => panic!("a ref written after its file was collected reported {other:?}"),
    }
    // The writer's own index follows the put-back.
    let expected: Vec<(String, FileId)> = if before {
        vec![("m/keep".to_string(), g)]
    } else {
        Vec::new()
    };
    assert_eq!(w.list_refs("m/keep").expect("writer's refs"), expected);
    // Put back in the bucket: a node that never saw the late write agrees,
    // and nothing dangles.
    let d = open(s3("d"), &tmp.path().join("d"), false);
    d.refresh().expect("refresh");
    match d.resolve("m/keep") {
        Ok(named) if before => assert_eq!(named, g),
        Err(e) if !before && e.is_not_found() => {}
        other => panic!("m/keep after the put-back: {other:?}"),
    }
    let listed: Vec<String> = d
        .list_refs("m/")
        .expect("refs")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(listed.contains(&"m/keep".to_string()), before, "{listed:?}");
    let v = d.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    // And the ref can be set again: over the tombstone as a ref that does
    // not exist (compare-and-set expecting none), over the old value as it.
    let expect = if before { Some(g) } else { None };
    d.compare_and_set_ref("m/keep", expect, g)
        .expect("set the ref again");
    assert_eq!(d.resolve("m/keep").expect("resolve"), g);
    for s in [a, c, w, d] {
        s.close().expect("close");
    }
}

#[test]
fn a_ref_set_that_lands_after_a_collection_deleted_its_file_fails() {
    ref_landing_after_a_collection("slow-ref-set", true, |w, _, f| w.set_ref("m/keep", f));
}

#[test]
fn a_put_whose_ref_lands_after_a_collection_deleted_its_file_fails() {
    ref_landing_after_a_collection("slow-put-ref", false, |w, data, _| {
        w.put_bytes(data, &["m/keep"]).map(|_| ())
    });
}

#[test]
fn a_late_ref_to_a_file_that_survives_is_confirmed() {
    let Some(t) = s3_target("slow_writer_ok") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("slow-ref-ok");
    let s3 = |name: &str| {
        let mut o = t.options();
        o.staging_dir = Some(tmp.path().join(name).join("staging"));
        Arc::new(S3Store::from_url(&url, o).unwrap_or_else(|e| panic!("{url}: {e}")))
    };
    let a = open(s3("a"), &tmp.path().join("a"), true);
    let data = tessera_synth::noise(900_000, 6);
    let f = a.put_bytes(&data, &["m/v1"]).expect("put").file_id;
    let held = held_write(s3("w"), ref_key("m/also"));
    let w = open(held.clone(), &tmp.path().join("w"), false);
    let writer = std::thread::spawn(move || {
        let r = w.set_ref("m/also", f);
        (w, r)
    });
    while !held.hooks().entered.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Slower than the check is good for, but nothing collected the file:
    // the confirmation finds it and the write succeeds.
    std::thread::sleep(CHECK_VALID * 2);
    held.hooks().released.store(true, Ordering::SeqCst);
    let (w, r) = writer.join().expect("writer thread");
    r.expect("a late ref to a stored, uncondemned file");
    assert_eq!(w.resolve("m/also").expect("resolve"), f);
    for s in [a, w] {
        s.close().expect("close");
    }
}
