//! Readers on a node whose cache is stale after another node's repack or
//! GC (spec §4.3, "Stale recipes"). Found by a probe: `cat` on a node that
//! had read a file before another node's repack failed with "pack ... is
//! missing" (exit 4, damage) once, then worked: the reader was made with
//! the cached recipe, the range check that followed reloaded the index's
//! copy, and the reader then compared the bucket's recipe with the index's
//! (now equal) instead of with its own, so it never switched. And a file
//! another node collected was "damaged" on the node that wrote it, but
//! "not found" on every other node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tessera::lease::LeaseOptions;
use tessera::storage::ObjectStore;
use tessera::testing::pack_key;
use tessera::{Error, GcOptions, RepackOptions, Store, StoreOptions};
use tessera_s3::testing::{gc_test_options, s3_target, S3Target};
use tessera_s3::S3Store;

fn node(t: &S3Target, url: &str, local: &Path, create: bool) -> (Arc<S3Store>, Store) {
    let n = t.node(url, local, gc_test_options(create));
    (n.s3, n.store)
}

#[test]
fn a_reader_made_before_another_read_reloaded_the_recipe_still_follows_a_repack() {
    let Some(t) = s3_target("stale_reader") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("stale-reader");
    let (s3, a) = node(t, &url, &tmp.path().join("a"), true);
    // Two files in one pack.
    let x = tessera_synth::noise(300_000, 31);
    let y = tessera_synth::noise(300_000, 32);
    let mut ing = a.ingest();
    let xf = ing.add("x", &x[..], &["m/x"], &mut |_| {}).expect("add x");
    let yf = ing.add("y", &y[..], &["m/y"], &mut |_| {}).expect("add y");
    ing.commit().expect("commit");
    let old = a.layout(&yf).expect("layout").packs();
    assert_eq!(
        old,
        a.layout(&xf).expect("layout").packs(),
        "one pack holds both"
    );
    // Node b reads y once: its cache holds y's recipe naming that pack.
    let (_, b) = node(t, &url, &tmp.path().join("b"), false);
    assert_eq!(b.read(&yf).expect("read").read_all().expect("read y"), y);
    a.delete_ref("m/x").expect("delete ref");

    let (_, c) = node(t, &url, &tmp.path().join("c"), false);
    let rep = c
        .repack(&RepackOptions {
            threshold: 0.9,
            gc: GcOptions {
                grace: Duration::ZERO,
                writer_window: Duration::from_millis(800),
                lease: LeaseOptions {
                    ttl: Duration::from_secs(8),
                    max_clock_skew: Duration::from_secs(1),
                },
                ..GcOptions::default()
            },
            ..RepackOptions::default()
        })
        .expect("repack");
    assert_eq!(rep.packs_rewritten, 1, "{rep:?}");
    assert!(!s3.list("").expect("list").contains(&pack_key(&old[0])));

    // What `cat` does: a reader first, then a check of the packs of the
    // range (which reloads the recipe into the index), then the read.
    for store in [&a, &b] {
        let reader = store.read(&yf).expect("reader");
        let size = reader.size();
        store.open_packs(&yf, 0, size).expect("open packs");
        assert_eq!(reader.read_all().expect("read after repack"), y);
    }
    // x was collected: "not found" on the node that wrote it too.
    match a.read(&xf).and_then(|r| r.read_all()) {
        Err(e) if e.is_not_found() => {}
        other => panic!("a collected file read as {other:?}"),
    }
    match a.read_range(&xf, 0, 10) {
        Err(e) if e.is_not_found() => {}
        Err(Error::PackMissing { .. }) | Ok(_) | Err(_) => {
            panic!("a range of a collected file did not say not found")
        }
    }
    for s in [a, b, c] {
        s.close().expect("close");
    }
}

/// Found by a probe: a `serve` node whose index still listed the chunks of
/// a file another node collected answered "missing chunks" from its index,
/// so a push uploaded nothing and its registration was refused (the packs
/// were gone) on every retry; a push of the collected file itself was
/// refused even after uploading, since registration took the old recipe.
/// Now the answer follows the dedup rule (the chunks of a deleted pack are
/// missing) and a registration whose known recipe names deleted packs
/// registers the file anew.
#[test]
fn missing_chunks_on_a_stale_node_counts_the_chunks_of_deleted_packs() {
    let Some(t) = s3_target("stale_missing") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = t.url("stale-missing");
    let (_, a) = node(t, &url, &tmp.path().join("a"), true);
    let x = tessera_synth::noise(2_500_000, 41);
    let xf = a.put_bytes(&x, &["m/x"]).expect("put").file_id;
    // The serving node reads x: its index lists x's chunks.
    let (_, s) = node(t, &url, &tmp.path().join("s"), false);
    assert_eq!(s.read(&xf).expect("read").read_all().expect("read x"), x);
    let chunks: Vec<tessera::ChunkId> = s
        .layout(&xf)
        .expect("layout")
        .recipe
        .chunks
        .iter()
        .map(|c| c.0)
        .collect();
    assert!(s.missing_chunks(&chunks).expect("missing").is_empty());

    a.delete_ref("m/x").expect("delete ref");
    let (_, c) = node(t, &url, &tmp.path().join("c"), false);
    let rep = c
        .gc(&GcOptions {
            grace: Duration::ZERO,
            writer_window: Duration::from_millis(800),
            ..GcOptions::default()
        })
        .expect("gc");
    assert_eq!(rep.dead_files, 1, "{rep:?}");

    let mut distinct = chunks.clone();
    distinct.sort();
    distinct.dedup();
    let missing = s.missing_chunks(&chunks).expect("missing after gc");
    assert_eq!(
        missing.len(),
        distinct.len(),
        "the chunks of collected packs were answered as held"
    );

    // A client uploads them and registers the file again: its old recipe
    // (still in s's index) names deleted packs, so the file is registered
    // anew from its chunks. (It used to be refused, busy, on every retry.)
    let client = Store::open(
        tmp.path().join("client"),
        StoreOptions {
            create: true,
            ..StoreOptions::default()
        },
    )
    .expect("client store");
    let cf = client.put_bytes(&x, &[]).expect("client put").file_id;
    assert_eq!(cf, xf);
    // One pack of all of them: not byte for byte any pack a stored.
    let (pack, bytes) = client.export_pack(&missing).expect("export");
    assert!(!a.layout(&xf).expect("layout").packs().contains(&pack));
    s.admit_pack(pack, bytes.into(), u64::MAX).expect("admit");
    let list = client.chunk_list(&xf).expect("chunk list");
    s.register_file(xf, x.len() as u64, &list, None, &["m/again"])
        .expect("register a collected file again");
    let (_, d) = node(t, &url, &tmp.path().join("d"), false);
    let got = d.resolve("m/again").expect("resolve");
    assert_eq!(d.read(&got).expect("read").read_all().expect("read all"), x);
    client.close().expect("close");
    d.close().expect("close");
    for st in [a, s, c] {
        st.close().expect("close");
    }
}
