//! GC and repack on a store several nodes share (spec §10.6), against a
//! real S3-compatible server: each node is its own `S3Store` with its own
//! local cache, as separate processes are.
//!
//! What is checked: a collector on a node that wrote nothing deletes
//! exactly the files no ref in the bucket names and the packs only they
//! needed, whoever wrote them; what is named stays readable from a fresh
//! node and `verify` is clean; a node whose index still lists the deleted
//! packs stores their chunks again instead of naming them; during the
//! writer window a second collector is refused the lease, and a ref
//! naming a condemned file or a put that would name a condemned pack is
//! refused with nothing published (and succeeds after); the condemned set
//! and the lease are gone after; a repack on a shared store rewrites a half-dead pack and another
//! node that cached the old recipe still reads the file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::lease::{Lease, LeaseOptions, GC_LEASE};
use tessera::storage::ObjectStore;
use tessera::testing::{pack_key, recipe_key};
use tessera::{Error, FileId, GcOptions, RepackOptions, Store, VerifyOptions};
use tessera_s3::testing::{gc_test_options, s3_target, Node, S3Target};
use tessera_s3::S3Store;

const CONDEMNED: &str = "gc/condemned";

fn node(t: &S3Target, url: &str, local: &Path, create: bool) -> Node {
    t.node(url, local, gc_test_options(create))
}

fn gc_opts(window: Duration) -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        writer_window: window,
        lease: LeaseOptions {
            ttl: Duration::from_secs(8),
            max_clock_skew: Duration::from_secs(1),
        },
        ..GcOptions::default()
    }
}

fn read_all(store: &Store, id: &FileId) -> Vec<u8> {
    store.read(id).expect("read").read_all().expect("read all")
}

fn wait_for(s3: &S3Store, key: &str) {
    let t0 = Instant::now();
    while !s3.exists(key).expect("exists") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{key} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gc_across_nodes_deletes_only_what_no_ref_names() {
    let Some(t) = s3_target("gc_across_nodes_deletes_only_what_no_ref_names") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-nodes");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let b = node(t, &url, &tmp.path().join("b"), false);
    let keep = tessera_synth::noise(2_500_000, 1);
    let drop_a = tessera_synth::noise(2_000_000, 2);
    let drop_b = tessera_synth::noise(1_800_000, 3);
    let k = a.store.put_bytes(&keep, &["m/keep"]).expect("put").file_id;
    let da = a.store.put_bytes(&drop_a, &["m/da"]).expect("put").file_id;
    let db = b.store.put_bytes(&drop_b, &["m/db"]).expect("put").file_id;
    let (da_packs, db_packs) = (
        a.store.layout(&da).expect("layout").packs(),
        b.store.layout(&db).expect("layout").packs(),
    );
    a.store.delete_ref("m/da").expect("delete ref");
    b.store.delete_ref("m/db").expect("delete ref");

    // A collector on a third node, which wrote nothing and whose cache is
    // empty: it marks from the bucket.
    let c = node(t, &url, &tmp.path().join("c"), false);
    let rep = c
        .store
        .gc(&gc_opts(Duration::from_millis(800)))
        .expect("gc on a shared store");
    assert_eq!((rep.files, rep.dead_files), (3, 2), "{rep:?}");
    assert!(rep.dead_packs >= 2, "{rep:?}");
    assert!(rep.reclaimed_bytes > 3_000_000, "{rep:?}");
    let keys = a.s3.list("").expect("list");
    for f in [&da, &db] {
        assert!(!keys.contains(&recipe_key(f)), "recipe of {f} deleted");
    }
    assert!(keys.contains(&recipe_key(&k)));
    for p in da_packs.iter().chain(&db_packs) {
        assert!(!keys.contains(&pack_key(p)), "pack {p} deleted");
    }
    assert!(
        !keys.iter().any(|k| k == CONDEMNED),
        "condemned set removed"
    );
    let lease = Lease::read(a.s3.as_ref(), GC_LEASE)
        .expect("lease")
        .expect("lease object");
    assert!(lease.released, "lease released: {lease:?}");

    // What is named is whole, read by a node that starts empty.
    let d = node(t, &url, &tmp.path().join("d"), false);
    assert_eq!(read_all(&d.store, &k), keep);
    let v = d.store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "verify after gc: {:?}", v.problems);

    // Node b's index still lists the packs of the file it stored: storing
    // the same bytes again must not name them (they are gone); the chunks
    // are stored afresh and every node reads the file.
    let again = b.store.put_bytes(&drop_b, &["m/db2"]).expect("put again");
    assert_eq!(again.file_id, db);
    assert_eq!(again.new_chunks, again.chunks, "every chunk stored again");
    assert_eq!(read_all(&d.store, &db), drop_b);
    let v = d.store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "verify after re-put: {:?}", v.problems);
    for n in [a, b, c, d] {
        n.store.close().expect("close");
    }
}

#[test]
fn writers_during_the_window_name_nothing_condemned() {
    let Some(t) = s3_target("writers_during_the_window_name_nothing_condemned") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-window");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let b = node(t, &url, &tmp.path().join("b"), false);
    let dead = tessera_synth::noise(2_200_000, 7);
    let d = a.store.put_bytes(&dead, &["m/dead"]).expect("put").file_id;
    let old_packs = a.store.layout(&d).expect("layout").packs();
    // b knows the file (and its packs) before it is condemned.
    assert_eq!(read_all(&b.store, &d), dead);
    a.store.delete_ref("m/dead").expect("delete ref");

    let c = node(t, &url, &tmp.path().join("c"), false);
    let collector = std::thread::spawn(move || {
        let r = c.store.gc(&gc_opts(Duration::from_secs(4)));
        (c, r)
    });
    wait_for(&a.s3, CONDEMNED);

    // One collector at a time.
    let e = node(t, &url, &tmp.path().join("e"), false);
    match e.store.gc(&gc_opts(Duration::from_secs(1))) {
        Err(Error::LeaseHeld { .. }) => {}
        other => panic!("a second collector must be refused the lease: {other:?}"),
    }
    // A ref naming the condemned file is refused, and not written; the
    // error says when to retry.
    match b.store.set_ref("m/revived", d) {
        Err(Error::Busy(m)) => assert!(
            m.contains("condemned") && m.contains("writer window ends in about"),
            "{m}"
        ),
        other => panic!("a ref naming a condemned file must be refused: {other:?}"),
    }
    assert!(b
        .store
        .read_ref_file("m/revived")
        .expect("ref file")
        .is_none());
    // Storing the same content again during the window builds the same
    // packs (same chunks, same order) as the condemned ones: refused, with
    // nothing published, until the collection is over.
    match b.store.put_bytes(&dead, &["m/again"]) {
        Err(Error::Busy(m)) => assert!(m.contains("condemned"), "{m}"),
        other => panic!("naming a condemned pack must be refused: {other:?}"),
    }
    assert!(b
        .store
        .read_ref_file("m/again")
        .expect("ref file")
        .is_none());

    let (c, r) = collector.join().expect("collector thread");
    let rep = r.expect("gc");
    assert_eq!(rep.dead_files, 1, "{rep:?}");
    assert_eq!(rep.dead_packs as usize, old_packs.len(), "{rep:?}");
    let keys = a.s3.list("").expect("list");
    for p in &old_packs {
        assert!(!keys.contains(&pack_key(p)), "pack {p} deleted");
    }
    assert!(!keys.contains(&recipe_key(&d)));
    assert!(!keys.iter().any(|k| k == CONDEMNED));
    // Now the same put succeeds: b's index still lists the deleted packs,
    // so it finds them gone and stores every chunk again.
    let again = b
        .store
        .put_bytes(&dead, &["m/again"])
        .expect("put after the gc");
    assert_eq!(again.file_id, d);
    assert_eq!(again.new_chunks, again.chunks, "every chunk stored again");
    // Every node reads it: a fresh one, and a, whose cached recipe names
    // the deleted packs' old copies.
    let f = node(t, &url, &tmp.path().join("f"), false);
    assert_eq!(read_all(&f.store, &d), dead);
    assert_eq!(read_all(&a.store, &d), dead);
    let v = f.store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    b.store.set_ref("m/revived", d).expect("set ref after gc");
    for n in [a, b, c, e, f] {
        n.store.close().expect("close");
    }
}

#[test]
fn repack_on_a_shared_store_rewrites_and_other_nodes_follow() {
    let Some(t) = s3_target("repack_on_a_shared_store_rewrites_and_other_nodes_follow") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-repack");
    let a = node(t, &url, &tmp.path().join("a"), true);
    // Two files in one pack: one ingest, small files.
    let x = tessera_synth::noise(300_000, 21);
    let y = tessera_synth::noise(300_000, 22);
    let mut ing = a.store.ingest();
    let xf = ing.add("x", &x[..], &["m/x"], &mut |_| {}).expect("add x");
    let yf = ing.add("y", &y[..], &["m/y"], &mut |_| {}).expect("add y");
    ing.commit().expect("commit");
    let shared_pack = a.store.layout(&yf).expect("layout").packs();
    assert_eq!(
        shared_pack,
        a.store.layout(&xf).expect("layout").packs(),
        "one pack holds both"
    );
    // Node b caches y's recipe, naming that pack.
    let b = node(t, &url, &tmp.path().join("b"), false);
    assert_eq!(read_all(&b.store, &yf), y);
    a.store.delete_ref("m/x").expect("delete ref");
    // And a pack nothing names any more, which the GC deletes whole.
    a.store
        .put_bytes(&tessera_synth::noise(300_000, 23), &["m/z"])
        .expect("put z");
    a.store.delete_ref("m/z").expect("delete ref");

    let c = node(t, &url, &tmp.path().join("c"), false);
    let opts = |dry_run| RepackOptions {
        threshold: 0.9,
        gc: GcOptions {
            dry_run,
            ..gc_opts(Duration::from_millis(800))
        },
        ..RepackOptions::default()
    };
    // A dry run's estimate counts the dead pack gone too (it did not).
    let dry = c.store.repack(&opts(true)).expect("dry run");
    let rep = c
        .store
        .repack(&opts(false))
        .expect("repack on a shared store");
    assert!(
        dry.stored_bytes_after.abs_diff(rep.stored_bytes_after) < 16 << 10,
        "estimated {} bytes after, got {}",
        dry.stored_bytes_after,
        rep.stored_bytes_after
    );
    assert_eq!(rep.packs_rewritten, 1, "{rep:?}");
    assert_eq!(rep.gc.dead_files, 2, "x and z: {rep:?}");
    let keys = a.s3.list("").expect("list");
    assert!(
        !keys.contains(&pack_key(&shared_pack[0])),
        "old pack deleted"
    );
    assert!(!keys.contains(&recipe_key(&xf)));
    assert!(rep.stored_bytes_after < rep.stored_bytes_before, "{rep:?}");
    // b's cached recipe names the deleted pack: it reloads and reads.
    assert_eq!(read_all(&b.store, &yf), y);
    let d = node(t, &url, &tmp.path().join("d"), false);
    assert_eq!(read_all(&d.store, &yf), y);
    let v = d.store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    for n in [a, b, c, d] {
        n.store.close().expect("close");
    }
}

#[test]
fn repack_reclaims_chunks_two_nodes_stored_twice() {
    let Some(t) = s3_target("repack_reclaims_chunks_two_nodes_stored_twice") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-dups");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let b = node(t, &url, &tmp.path().join("b"), false);
    // Two files sharing 600 kB; b has never seen a's packs, so it stores
    // the shared chunks again (dedup across nodes is by what each knows).
    let common = tessera_synth::noise(600_000, 41);
    let x: Vec<u8> = [&common[..], &tessera_synth::noise(200_000, 42)].concat();
    let y: Vec<u8> = [&common[..], &tessera_synth::noise(200_000, 43)].concat();
    let xf = a.store.put_bytes(&x, &["m/x"]).expect("put x").file_id;
    let put_y = b.store.put_bytes(&y, &["m/y"]).expect("put y");
    assert_eq!(
        put_y.new_chunks, put_y.chunks,
        "b stored the shared chunks again"
    );
    let yf = put_y.file_id;
    let before = a.s3.list("packs/").expect("list").len();

    let c = node(t, &url, &tmp.path().join("c"), false);
    let rep = c
        .store
        .repack(&RepackOptions {
            threshold: 0.9,
            gc: gc_opts(Duration::from_millis(800)),
            ..RepackOptions::default()
        })
        .expect("repack");
    assert!(rep.gc.duplicate_bytes > 500_000, "{rep:?}");
    assert_eq!(rep.packs_rewritten, 1, "{rep:?}");
    assert!(
        rep.stored_bytes_before - rep.stored_bytes_after > 500_000,
        "the second copy is gone: {rep:?}"
    );
    assert_eq!(a.s3.list("packs/").expect("list").len(), before);
    // Both files read whole from every node; verify is clean.
    let d = node(t, &url, &tmp.path().join("d"), false);
    for n in [&a, &b, &d] {
        assert_eq!(read_all(&n.store, &xf), x);
        assert_eq!(read_all(&n.store, &yf), y);
    }
    let v = d.store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    for n in [a, b, c, d] {
        n.store.close().expect("close");
    }
}

#[test]
fn a_condemned_set_holds_writers_only_while_its_collector_holds_the_lease() {
    let Some(t) =
        s3_target("a_condemned_set_holds_writers_only_while_its_collector_holds_the_lease")
    else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-void");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let data = tessera_synth::noise(500_000, 51);
    let f = a.store.put_bytes(&data, &["m/f"]).expect("put").file_id;
    let set = |token: u64| {
        format!(
            r#"{{"version":1,"token":{token},"holder":"test","published_ms":0,"window_ms":1000,"files":["{}"],"packs":[]}}"#,
            f.to_hex()
        )
    };
    let objects: Arc<dyn ObjectStore> = a.s3.clone();
    // The collector holds the lease with the set's token: writers obey it.
    let lease = Lease::acquire(
        objects.clone(),
        GC_LEASE,
        "collector",
        LeaseOptions::default(),
    )
    .expect("lease");
    a.s3.put(
        CONDEMNED,
        set(lease.token()).as_bytes(),
        tessera::storage::PutMode::Replace,
    )
    .expect("publish set");
    match a.store.set_ref("m/g", f) {
        Err(Error::Busy(m)) => assert!(m.contains("condemned"), "{m}"),
        other => panic!("a live condemned set must be obeyed: {other:?}"),
    }
    // A set whose token is not the lease's (a dead collector's, the lease
    // since taken by another) does not hold writers.
    a.s3.put(
        CONDEMNED,
        set(lease.token() + 7).as_bytes(),
        tessera::storage::PutMode::Replace,
    )
    .expect("publish set");
    a.store.set_ref("m/g", f).expect("a stale set is void");
    // Nor one whose collector released (or lost) the lease.
    a.s3.put(
        CONDEMNED,
        set(lease.token()).as_bytes(),
        tessera::storage::PutMode::Replace,
    )
    .expect("publish set");
    lease.release().expect("release");
    a.store
        .set_ref("m/h", f)
        .expect("a released lease voids the set");
    a.store.close().expect("close");
}

/// Found by review: refs-seen versions are content ETags. A node that
/// deletes a ref itself changes its index, not refs-seen; when another node
/// writes the ref back to the same bytes (the same ETag), a refresh that
/// trusted the version alone skipped it, and the collector marked without
/// it. Now a refresh also compares the index, and a collector rereads every
/// ref.
#[test]
fn a_ref_set_back_to_the_same_bytes_is_seen_by_the_collector() {
    let Some(t) = s3_target("a_ref_set_back_to_the_same_bytes_is_seen_by_the_collector") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-review-aba");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let b = node(t, &url, &tmp.path().join("b"), false);
    let data = tessera_synth::noise(1_500_000, 77);
    let f = a.store.put_bytes(&data, &["m/r"]).expect("put").file_id;
    // a's refresh records the ref's version (its ETag) in node/refs-seen.
    a.store.refresh().expect("refresh");
    // a deletes the ref (index and bucket; refs-seen untouched) ...
    a.store.delete_ref("m/r").expect("delete ref");
    // ... and b puts it back, naming the same file: same bytes, same ETag.
    b.store.set_ref("m/r", f).expect("b sets the ref again");
    assert_eq!(a.store.read_ref_file("m/r").expect("ref file"), Some(f));
    // a collects: the bucket's ref names f, so nothing may be deleted.
    let rep = a
        .store
        .gc(&gc_opts(Duration::from_millis(800)))
        .expect("gc");
    let keys = a.s3.list("").expect("list");
    assert!(
        keys.contains(&recipe_key(&f)),
        "the recipe of a file the bucket's ref m/r names was deleted: {rep:?}"
    );
    let d = node(t, &url, &tmp.path().join("d"), false);
    assert_eq!(read_all(&d.store, &f), data);
    for n in [a, b, d] {
        n.store.close().expect("close");
    }
}

/// Found by review: a file stored again whose recipe object was already in
/// the bucket with the same bytes was not rewritten, so its age stayed the
/// old object's `Last-Modified` and a collection right after the put
/// deleted it inside the grace period. Now the recipe is written again.
#[test]
fn a_file_stored_again_starts_its_grace_period_again() {
    let Some(t) = s3_target("a_file_stored_again_starts_its_grace_period_again") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-review-age");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let b = node(t, &url, &tmp.path().join("b"), false);
    let data = tessera_synth::noise(1_500_000, 78);
    let f = a.store.put_bytes(&data, &["m/old"]).expect("put").file_id;
    a.store.delete_ref("m/old").expect("delete ref");
    std::thread::sleep(Duration::from_secs(5));
    // b stores the same bytes now (no ref yet: it sets one a little later,
    // well within the grace period).
    let again = b.store.put_bytes(&data, &[]).expect("put again");
    assert_eq!(again.file_id, f);
    let c = node(t, &url, &tmp.path().join("c"), false);
    let mut opts = gc_opts(Duration::from_millis(800));
    opts.grace = Duration::from_secs(3);
    let rep = c.store.gc(&opts).expect("gc");
    // b stored f less than a grace period ago: it must still be there.
    let r = b.store.set_ref("m/new", f);
    assert!(
        r.is_ok(),
        "a file b stored just before the gc (grace {:?}) was collected: {r:?}; {rep:?}",
        opts.grace
    );
    for n in [a, b, c] {
        n.store.close().expect("close");
    }
}

/// Found by review: writers void a condemned set once the collector's lease
/// expired (plus the skew); a collector whose second mark waited for its
/// node's gate (a local ingest held it) past the lease's expiry renewed it
/// late and deleted what a writer had named meanwhile. Now a heartbeat
/// renews the lease through every step and a late renewal stops the run:
/// the writer stays refused throughout, and nothing it named is deleted.
#[test]
fn the_collectors_lease_stays_renewed_while_it_waits() {
    let Some(t) = s3_target("the_collectors_lease_stays_renewed_while_it_waits") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-review-lapse");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let b = node(t, &url, &tmp.path().join("b"), false);
    let dead = tessera_synth::noise(1_200_000, 79);
    let d = a.store.put_bytes(&dead, &["m/dead"]).expect("put").file_id;
    assert_eq!(read_all(&b.store, &d), dead);
    a.store.delete_ref("m/dead").expect("delete ref");
    let c = node(t, &url, &tmp.path().join("c"), false);
    let cs = c.store.clone();
    let collector = std::thread::spawn(move || cs.gc(&gc_opts(Duration::from_secs(3))));
    wait_for(&a.s3, CONDEMNED);
    // An ingest on the collector's node (a server taking an upload) holds
    // the gate; the collector's second mark waits for it.
    let ing = c.store.ingest();
    // The collector's heartbeat keeps its lease (ttl 8 s) renewed while it
    // waits, so the set stays in force past the lease's time to live and
    // the writers' skew (the default, 60 s): b is refused all along.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(72) {
        match b.store.set_ref("m/revived", d) {
            Err(Error::Busy(m)) => assert!(m.contains("condemned"), "{m}"),
            other => panic!(
                "a ref named a condemned file after {:?}: {other:?}",
                t0.elapsed()
            ),
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    drop(ing);
    let rep = collector.join().expect("collector thread").expect("gc");
    assert_eq!(rep.dead_files, 1, "{rep:?}");
    assert!(b
        .store
        .read_ref_file("m/revived")
        .expect("ref file")
        .is_none());
    assert!(matches!(b.store.set_ref("m/revived", d), Err(e) if e.is_not_found()));
}

/// Found by a hostile probe (data loss): a ref object with one flipped bit
/// made a collector whose cache had not seen the ref log a warning, count
/// the file unnamed and delete its recipe and packs. Now a ref object the
/// collector cannot read stops it before it condemns anything, naming the
/// object; once the ref is intact again the file reads back whole.
#[test]
fn a_damaged_ref_object_stops_gc() {
    let Some(t) = s3_target("a_damaged_ref_object_stops_gc") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-damaged-ref");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let data = tessera_synth::noise(2_200_000, 95);
    let f = a.store.put_bytes(&data, &["m/v1"]).expect("put").file_id;
    let packs = a.store.layout(&f).expect("layout").packs();
    let key = tessera::testing::ref_key("m/v1");
    let good = a.s3.get(&key).expect("ref object");
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    a.s3.put(&key, &bad, tessera::storage::PutMode::Replace)
        .expect("damage the ref");
    // A collector that never saw the ref, and one (a) whose index holds it.
    let c = node(t, &url, &tmp.path().join("c"), false);
    for (who, n) in [("fresh node", &c), ("writer", &a)] {
        for dry_run in [true, false] {
            let opts = GcOptions {
                dry_run,
                ..gc_opts(Duration::from_millis(800))
            };
            match n.store.gc(&opts) {
                Err(e @ Error::RefUnreadable { .. }) => {
                    assert!(e.to_string().contains(&key), "{e}");
                    assert!(e.is_corruption(), "{e:?}");
                }
                other => panic!("gc on the {who} over a damaged ref object: {other:?}"),
            }
            assert!(matches!(
                n.store.repack(&RepackOptions {
                    gc: opts,
                    ..Default::default()
                }),
                Err(Error::RefUnreadable { .. })
            ));
        }
    }
    let keys = a.s3.list("").expect("list");
    assert!(keys.contains(&recipe_key(&f)), "recipe kept");
    for p in &packs {
        assert!(keys.contains(&pack_key(p)), "pack {p} kept");
    }
    assert!(!keys.iter().any(|k| k == CONDEMNED), "nothing condemned");
    a.s3.put(&key, &good, tessera::storage::PutMode::Replace)
        .expect("restore the ref");
    let d = node(t, &url, &tmp.path().join("d"), false);
    let named = d.store.resolve("m/v1").expect("resolve");
    assert_eq!(named, f);
    assert_eq!(read_all(&d.store, &f), data);
    for n in [a, c, d] {
        n.store.close().expect("close");
    }
}

/// Found by a hostile probe: a recipe object that does not decode stopped
/// GC as "store busy" (exit 1, as if a retry would help). It is damage:
/// `RecipeUnreadable` naming the object on a node that never saw the
/// recipe; the node that wrote it marks from its index's verified copy.
/// Nothing is condemned or deleted. The error gives the decoder's reason.
#[test]
fn a_damaged_recipe_object_stops_gc_as_damage() {
    let Some(t) = s3_target("a_damaged_recipe_object_stops_gc_as_damage") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-damaged-recipe");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let data = tessera_synth::noise(2_200_000, 97);
    let f = a.store.put_bytes(&data, &["m/v1"]).expect("put").file_id;
    let packs = a.store.layout(&f).expect("layout").packs();
    let key = recipe_key(&f);
    a.s3.put(&key, b"not a recipe", tessera::storage::PutMode::Replace)
        .expect("damage the recipe");
    let c = node(t, &url, &tmp.path().join("c"), false);
    match c.store.gc(&gc_opts(Duration::from_millis(800))) {
        Err(e @ Error::RecipeUnreadable { .. }) => {
            assert!(e.to_string().contains(&key), "{e}");
            assert!(e.is_corruption(), "{e:?}");
            // The decoder's reason, not only "does not decode".
            assert!(e.to_string().contains("shorter than a recipe"), "{e}");
        }
        other => panic!("gc on a fresh node over a damaged recipe object: {other:?}"),
    }
    let rep = a
        .store
        .gc(&gc_opts(Duration::from_millis(800)))
        .expect("gc on the writer, from its verified copy");
    assert_eq!((rep.dead_files, rep.dead_packs), (0, 0), "{rep:?}");
    let keys = a.s3.list("").expect("list");
    assert!(keys.contains(&key), "recipe kept");
    for p in &packs {
        assert!(keys.contains(&pack_key(p)), "pack {p} kept");
    }
    assert!(!keys.iter().any(|k| k == CONDEMNED), "nothing condemned");
    for n in [a, c] {
        n.store.close().expect("close");
    }
}

/// Found by a hostile probe: a pack a live file needs, overwritten with
/// garbage, was reported damaged and also as an "orphan" (unreferenced;
/// reclaimable) by `verify` on a node that had not indexed it.
#[test]
fn verify_never_calls_a_pack_a_file_needs_reclaimable() {
    let Some(t) = s3_target("verify_never_calls_a_pack_a_file_needs_reclaimable") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-garbage-pack");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let data = tessera_synth::noise(2_200_000, 96);
    let f = a.store.put_bytes(&data, &["m/v2"]).expect("put").file_id;
    let pack = a.store.layout(&f).expect("layout").packs()[0];
    a.s3.put(
        &pack_key(&pack),
        &tessera_synth::noise(300_000, 97),
        tessera::storage::PutMode::Replace,
    )
    .expect("garbage over the pack");
    let v = node(t, &url, &tmp.path().join("v"), false);
    let rep = v.store.verify(VerifyOptions::default()).expect("verify");
    assert!(!rep.is_clean(), "the garbage pack is damage");
    assert!(
        rep.problems
            .iter()
            .any(|p| p.detail.contains(&pack.to_string())),
        "{:?}",
        rep.problems
    );
    assert!(
        !rep.orphan_packs.contains(&pack),
        "a pack file {f} needs is listed as an orphan (reclaimable): {:?}",
        rep.orphan_packs
    );
    for n in [a, v] {
        n.store.close().expect("close");
    }
}

/// Found by a hostile probe: a writer window of u64::MAX seconds panicked
/// (an `Instant` overflow) after the condemned set was published, and the
/// lease heartbeat kept the process alive renewing the lease forever.
/// Such windows (and graces, leases, waits) are refused before anything
/// is published or leased.
#[test]
fn absurd_gc_durations_are_refused_before_anything_is_published() {
    let Some(t) = s3_target("absurd_gc_durations_are_refused_before_anything_is_published") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("gc-absurd");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let data = tessera_synth::noise(1_200_000, 98);
    let f = a.store.put_bytes(&data, &["m/x"]).expect("put").file_id;
    a.store.delete_ref("m/x").expect("delete ref");
    let huge = Duration::from_secs(u64::MAX);
    let mut cases = Vec::new();
    for k in 0..4 {
        let mut o = gc_opts(Duration::from_millis(800));
        match k {
            0 => o.writer_window = huge,
            1 => o.grace = Duration::from_secs(1 << 61),
            2 => o.lease.ttl = huge,
            _ => o.wait = huge,
        }
        cases.push(o);
    }
    for o in cases {
        match a.store.gc(&o) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("longer"), "{m}"),
            other => panic!("gc with {o:?}: {other:?}"),
        }
    }
    assert!(
        Lease::read(a.s3.as_ref(), GC_LEASE)
            .expect("lease")
            .is_none(),
        "no lease taken"
    );
    assert!(
        !a.s3.exists(CONDEMNED).expect("exists"),
        "nothing condemned"
    );
    assert_eq!(read_all(&a.store, &f), data);
    a.store.close().expect("close");
}
