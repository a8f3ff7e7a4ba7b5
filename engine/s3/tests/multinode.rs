//! Several Tessera "nodes" over one bucket, in one test process: each node
//! is its own `S3Store` (own connection pool and block cache) with its own
//! local cache directory, exactly what two processes have. The real-process
//! versions (two `tessera` binaries) are in `tools/tests/s3.rs`.
//!
//! What is checked: a node with an empty cache finds files, refs and sha256
//! aliases another node wrote; `refresh` indexes them from a listing; ref
//! updates from two nodes at once never lose one (compare-and-set chains);
//! blind sets and deletes are seen by the other node; two nodes storing the
//! same file at once agree on one recipe and `verify` is clean on both
//! (chunks stored twice are tolerated); a node whose cached recipe names a
//! pack another node removed reloads the recipe; the GC lease over S3.
//! GC and repack across nodes are in `gc.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::lease::{Lease, LeaseOptions, GC_LEASE};
use tessera::storage::{ObjectStore, PutMode};
use tessera::testing::{pack_key, recipe_key, PackReader, Recipe, Term};
use tessera::{Error, FileId, Store, StoreOptions, VerifyOptions};
use tessera_s3::testing::{s3_target, Node, S3Target};
use tessera_s3::S3Store;

const MIB: usize = 1 << 20;

fn opts(create: bool) -> StoreOptions {
    StoreOptions {
        create,
        pack_target_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

/// One node: its own S3 client over `url` and its own local directory.
fn node(t: &S3Target, url: &str, local: &Path, create: bool) -> Node {
    t.node(url, local, opts(create))
}

fn read_all(store: &Store, id: &FileId) -> Vec<u8> {
    store.read(id).expect("read").read_all().expect("read all")
}

#[test]
fn a_second_node_finds_what_the_first_wrote() {
    let Some(t) = s3_target("a_second_node_finds_what_the_first_wrote") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("second-node");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let data = tessera_synth::noise(6 * MIB + 4321, 11);
    let other = tessera_synth::noise(300_000, 12);
    let put = a.store.put_bytes(&data, &["m/x@v1:w.bin"]).expect("put");
    let put2 = a
        .store
        .put_bytes(&other, &["m/x@v1:other.bin"])
        .expect("put");

    // A second node with an empty cache: nothing in its index, yet every
    // name resolves, from the bucket.
    let b = node(t, &url, &tmp.path().join("b"), false);
    assert_eq!(
        b.store.stats().expect("stats").files,
        0,
        "b's cache starts empty"
    );
    assert!(b.store.list_refs("").expect("refs").is_empty());
    let c0 = b.s3.stats();
    let t0 = Instant::now();
    let id = b.store.resolve("m/x@v1:w.bin").expect("by ref");
    assert_eq!(id, put.file_id);
    let got = read_all(&b.store, &id);
    let first = b.s3.stats().since(&c0);
    let first_secs = t0.elapsed().as_secs_f64();
    assert!(got == data, "b reads a's file byte for byte");
    let c1 = b.s3.stats();
    assert!(read_all(&b.store, &id) == data);
    let again = b.s3.stats().since(&c1);
    assert_eq!(
        again.requests(),
        0,
        "once found, the file is read from b's caches: {again}"
    );
    eprintln!(
        "second node, first read of a {} MiB file by ref (1 MiB packs): {first} in {:.3} s; again: {again}",
        data.len() / MIB,
        first_secs
    );
    // By file id and by sha256, through a third node each time.
    let c = node(t, &url, &tmp.path().join("c"), false);
    assert_eq!(
        c.store.resolve(&put2.file_id.to_hex()).expect("by id"),
        put2.file_id
    );
    assert!(c.store.contains(&put.file_id).expect("contains"));
    assert_eq!(read_all(&c.store, &put2.file_id), other);
    let d = node(t, &url, &tmp.path().join("d"), false);
    let by_sha = d
        .store
        .resolve(&format!("sha256:{}", put.sha256))
        .expect("by sha256 (a listing)");
    assert_eq!(by_sha, put.file_id);
    let info = d.store.info(&put.file_id).expect("info");
    assert_eq!(info.size, data.len() as u64);
    // An unknown id is still "not found", after looking in the bucket.
    let missing = FileId([7; 32]);
    assert!(matches!(
        c.store.resolve(&missing.to_hex()),
        Err(e) if e.is_not_found()
    ));

    // refresh: listings show what the other node wrote.
    let rep = b.store.refresh().expect("refresh");
    assert_eq!(rep.refs_updated, 1, "b knew one ref already: {rep:?}");
    let names: Vec<String> = b
        .store
        .list_refs("m/x@v1:")
        .expect("refs")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["m/x@v1:other.bin", "m/x@v1:w.bin"]);
    assert_eq!(b.store.stats().expect("stats").files, 2);
    // A second refresh reads no ref again (their versions are unchanged).
    let c2 = b.s3.stats();
    let rep = b.store.refresh().expect("refresh");
    let d2 = b.s3.stats().since(&c2);
    assert_eq!((rep.packs, rep.files, rep.refs_updated), (0, 0, 0));
    assert_eq!(d2.gets, 0, "nothing changed, nothing read: {d2}");

    // verify over the bucket, from a node that wrote nothing.
    let v = c.store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "verify on c: {:?}", v.problems);
    assert_eq!((v.files, v.refs), (2, 2));

    let objects = a.s3.list("").expect("list");
    for n in [a, b, c, d] {
        n.store.close().expect("close");
    }
    // A GC journal in the bucket (left by a single-process GC over it) is
    // finished only by a lease holder (spec §10.6): a node opening the
    // shared store deletes nothing it lists.
    let packs: Vec<String> = objects
        .iter()
        .filter_map(|k| k.strip_prefix("packs/"))
        .filter_map(|k| k.split('/').nth(1)?.strip_suffix(".pack"))
        .map(str::to_string)
        .collect();
    assert!(!packs.is_empty());
    let s3 = Arc::new(S3Store::from_url(&url, t.options()).expect("s3"));
    let journal = format!(r#"{{"files":[],"packs":["{}"]}}"#, packs[0]);
    s3.put("gc/journal", journal.as_bytes(), PutMode::Create)
        .expect("journal");
    let e = node(t, &url, &tmp.path().join("e"), false);
    let after = s3.list("").expect("list");
    assert!(after.iter().any(|k| k == "gc/journal"), "the journal stays");
    assert_eq!(
        after
            .into_iter()
            .filter(|k| k != "gc/journal")
            .collect::<Vec<_>>(),
        objects,
        "nothing the journal lists was deleted"
    );
    e.store.close().expect("close");
}

#[test]
fn ref_updates_from_two_nodes_are_never_lost() {
    let Some(t) = s3_target("ref_updates_from_two_nodes_are_never_lost") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("ref-race");
    let a = node(t, &url, &tmp.path().join("a"), true);
    // A chain of files: the ref moves from file k to file k+1, by
    // compare-and-set; every step must land exactly once.
    const STEPS: usize = 12;
    let files: Vec<FileId> = (0..=2 * STEPS)
        .map(|k| {
            a.store
                .put_bytes(format!("version {k}").as_bytes(), &[])
                .expect("put")
                .file_id
        })
        .collect();
    a.store
        .compare_and_set_ref("race/counter", None, files[0])
        .expect("create");
    assert!(matches!(
        a.store.compare_and_set_ref("race/counter", None, files[1]),
        Err(Error::RefConflict { .. })
    ));
    let b = node(t, &url, &tmp.path().join("b"), false);
    let conflicts: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = [&a.store, &b.store]
            .into_iter()
            .map(|store| {
                let files = &files;
                s.spawn(move || {
                    let (mut done, mut lost) = (0, 0);
                    while done < STEPS {
                        let cur = store.resolve_ref("race/counter").expect("resolve");
                        let k = files.iter().position(|f| *f == cur).expect("a chain file");
                        match store.compare_and_set_ref("race/counter", Some(cur), files[k + 1]) {
                            Ok(()) => done += 1,
                            Err(Error::RefConflict { .. }) => lost += 1,
                            Err(e) => panic!("cas: {e}"),
                        }
                    }
                    lost
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let end = a.store.resolve_ref("race/counter").expect("resolve");
    assert_eq!(
        end,
        files[2 * STEPS],
        "{} successful steps from two nodes must move the ref {} files on",
        2 * STEPS,
        2 * STEPS
    );
    assert_eq!(b.store.resolve_ref("race/counter").expect("b"), end);
    eprintln!(
        "compare-and-set race: {} steps each, conflicts seen {conflicts:?}",
        STEPS
    );

    // Blind sets from both nodes at once: each succeeds (retried on the
    // new state), the ref ends at one of them, and both nodes agree.
    std::thread::scope(|s| {
        for (store, first) in [(&a.store, 0usize), (&b.store, 1)] {
            let files = &files;
            s.spawn(move || {
                for k in (first..8).step_by(2) {
                    store.set_ref("race/blind", files[k]).expect("blind set");
                }
            });
        }
    });
    let ra = a.store.resolve_ref("race/blind").expect("a");
    let rb = b.store.resolve_ref("race/blind").expect("b");
    assert_eq!(ra, rb, "both nodes read the ref from the bucket");
    assert!(ra == files[6] || ra == files[7], "the last set of one node");

    // A deletion by one node is seen by the other (which had it cached).
    a.store.delete_ref("race/blind").expect("delete");
    assert!(matches!(b.store.resolve_ref("race/blind"), Err(e) if e.is_not_found()));
    b.store.refresh().expect("refresh");
    assert!(b.store.list_refs("race/blind").expect("list").is_empty());
    a.store.close().expect("close");
    b.store.close().expect("close");
}

#[test]
fn two_nodes_storing_the_same_file_agree_and_verify_clean() {
    let Some(t) = s3_target("two_nodes_storing_the_same_file_agree_and_verify_clean") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("same-file");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let b = node(t, &url, &tmp.path().join("b"), false);
    let data = tessera_synth::noise(4 * MIB + 99, 21);
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| a.store.put_bytes(&data, &["same/a"]).expect("a put"));
        let hb = s.spawn(|| b.store.put_bytes(&data, &["same/b"]).expect("b put"));
        (ha.join().expect("a"), hb.join().expect("b"))
    });
    assert_eq!(ra.file_id, rb.file_id);
    // Each node dedups against its own index: the chunks may be stored
    // twice (in each node's packs); one recipe object wins and both nodes
    // index that one.
    let recipe = a.s3.get(&recipe_key(&ra.file_id)).expect("recipe object");
    Recipe::decode(ra.file_id, &recipe).expect("a valid recipe");
    for n in [&a, &b] {
        assert!(read_all(&n.store, &ra.file_id) == data);
        let v = n.store.verify(VerifyOptions::default()).expect("verify");
        assert!(v.is_clean(), "verify: {:?}", v.problems);
        assert_eq!(v.files, 1);
        assert_eq!(v.refs, 2);
    }
    let packs = a.s3.list("packs/").expect("list").len();
    eprintln!("the same 4 MiB file from two nodes at once: {packs} packs in the bucket");

    // A node that has not seen a's chunks stores them again, next to other
    // data (so in packs of other ids): chunks stored twice are not damage.
    let c = node(t, &url, &tmp.path().join("c"), false);
    let mut longer = tessera_synth::noise(MIB + 3, 22);
    longer.extend_from_slice(&data);
    let rc = c.store.put_bytes(&longer, &["same/longer"]).expect("c put");
    assert!(rc.new_chunks > 0);
    let mut seen = std::collections::HashMap::new();
    for key in a.s3.list("packs/").expect("list") {
        let id = tessera::testing::pack_of_key(&key).expect("a pack key");
        let r = PackReader::open(a.s3.as_ref(), id).expect("open pack");
        for i in 0..r.chunk_count() {
            *seen.entry(r.entry(i).expect("entry").id).or_insert(0) += 1;
        }
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(twice > 0, "some chunk is stored in two packs");
    for n in [&a, &b, &c] {
        assert!(read_all(&n.store, &rc.file_id) == longer);
        let v = n.store.verify(VerifyOptions::default()).expect("verify");
        assert!(
            v.is_clean(),
            "verify with duplicated chunks: {:?}",
            v.problems
        );
        assert_eq!((v.files, v.refs), (2, 3));
    }
    let rep = Store::repair_index_with(
        Arc::new(S3Store::from_url(&url, t.options()).expect("s3")),
        tmp.path().join("e"),
        opts(false),
    )
    .expect("repair index");
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    eprintln!("{twice} chunks stored in two packs; verify clean on every node");
    for n in [a, b, c] {
        n.store.close().expect("close");
    }
}

#[test]
fn a_node_whose_cached_recipe_names_a_removed_pack_reloads_it() {
    let Some(t) = s3_target("a_node_whose_cached_recipe_names_a_removed_pack_reloads_it") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("stale-recipe");
    let a = node(t, &url, &tmp.path().join("a"), true);
    let data = tessera_synth::noise(3 * MIB + 7, 31);
    let put = a.store.put_bytes(&data, &["stale/x"]).expect("put");
    let b = node(t, &url, &tmp.path().join("b"), false);
    assert!(
        read_all(&b.store, &put.file_id) == data,
        "b caches the recipe"
    );

    // What another node's repack does: the chunks copied into one new
    // pack, the recipe replaced to name it, the old packs removed.
    let old = Recipe::decode(
        put.file_id,
        &a.s3.get(&recipe_key(&put.file_id)).expect("recipe"),
    )
    .expect("recipe");
    let ids: Vec<_> = old.chunks.iter().map(|(c, _)| *c).collect();
    let (pack, bytes) = a.store.export_pack(&ids).expect("export");
    a.s3.put(&pack_key(&pack), &bytes, PutMode::Create)
        .expect("new pack");
    let reader = PackReader::open(a.s3.as_ref(), pack).expect("open new pack");
    assert_eq!(reader.chunk_count() as usize, ids.len());
    let new = Recipe {
        terms: vec![Term {
            pack,
            first_chunk: 0,
            chunk_count: ids.len() as u32,
            unpacked_len: data.len() as u64,
        }],
        ..old.clone()
    };
    a.s3.put(&recipe_key(&put.file_id), &new.encode(), PutMode::Replace)
        .expect("replace recipe");
    for t in &old.terms {
        if t.pack != pack {
            let _ = a.s3.delete(&pack_key(&t.pack));
        }
    }
    drop(b);
    // A fresh engine over b's cache (its index still holds the old recipe).
    let b = node(t, &url, &tmp.path().join("b"), false);
    let got = b
        .store
        .read_range(&put.file_id, 0, data.len() as u64)
        .expect("the read reloads the recipe and succeeds");
    assert!(got[..] == data[..]);
    b.store.open_packs(&put.file_id, 0, 10).expect("open packs");
    a.store.close().expect("close");
    b.store.close().expect("close");
}

#[test]
fn the_gc_lease_over_s3_has_one_holder() {
    let Some(t) = s3_target("the_gc_lease_over_s3_has_one_holder") else {
        return;
    };
    let url = t.url("lease");
    let mk = || -> Arc<dyn ObjectStore> {
        Arc::new(S3Store::from_url(&url, t.options()).expect("store"))
    };
    // Four processes' worth of clients race for the lease, ten times.
    for round in 0..10 {
        let key = format!("gc/lease-race-{round}");
        let won: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let (objects, key) = (mk(), key.clone());
                    s.spawn(move || {
                        Lease::acquire(objects, &key, &format!("n{i}"), LeaseOptions::default())
                            .is_ok()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}");
    }
    // Expiry and takeover, renewal refused to the old holder.
    let quick = LeaseOptions {
        // Long enough that a loaded machine does not expire it early.
        ttl: Duration::from_millis(1000),
        max_clock_skew: Duration::from_millis(200),
    };
    let mut first = Lease::acquire(mk(), GC_LEASE, "first", quick).expect("first");
    first.renew().expect("renew while held");
    assert!(matches!(
        Lease::acquire(mk(), GC_LEASE, "second", quick),
        Err(Error::LeaseHeld { holder, .. }) if holder == "first"
    ));
    std::thread::sleep(Duration::from_millis(1400));
    let second = Lease::acquire(mk(), GC_LEASE, "second", quick).expect("takeover");
    assert_eq!(second.token(), first.token() + 1);
    assert!(matches!(first.renew(), Err(Error::LeaseLost { .. })));
    second.release().expect("release");
    let third = Lease::acquire(mk(), GC_LEASE, "third", LeaseOptions::default()).expect("free");
    assert_eq!(third.token(), 3);
}
