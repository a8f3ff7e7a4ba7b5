//! The figures of the README's "Running against S3" section: ingest and restore
//! throughput to an S3-compatible server against the directory backend on
//! the same data, request counts per ingest and per full-file read, and
//! what a second node pays the first time it reads a file.
//!
//! ```sh
//! engine/s3/tests/s3server.sh run cargo run --release -p tessera-s3 --example s3-figures
//! ```
//!
//! Environment: the `AWS_*` connection and `TESSERA_S3_BUCKET` (what
//! `s3server.sh` exports); `TESSERA_FIGURES_MIB` (default 256) sizes the
//! model; `TESSERA_FIGURES_RUNS` (default 3) runs, medians reported.
//! Default store options (64 MiB packs, zstd 3): what the CLI uses.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tessera::{FileId, Store, StoreOptions};
use tessera_s3::{S3Options, S3Stats, S3Store};
use tessera_synth::{DType, ModelSpec};

const MIB: f64 = (1 << 20) as f64;

fn opts(create: bool) -> StoreOptions {
    StoreOptions {
        create,
        ..StoreOptions::default()
    }
}

/// A node's S3 client; with `disk`, an on-disk range cache in
/// `<local>/ranges` as the CLI keeps one.
fn s3(url: &str, local: &Path, disk: bool) -> Arc<S3Store> {
    let o = S3Options {
        staging_dir: Some(local.join("staging")),
        disk_cache_dir: disk.then(|| local.join("ranges")),
        ..S3Options::default()
    };
    Arc::new(S3Store::from_url(url, o).unwrap_or_else(|e| panic!("{url}: {e}")))
}

fn open(objects: &Arc<S3Store>, local: &Path, create: bool) -> Store {
    Store::open_with(objects.clone(), local, opts(create)).expect("open")
}

fn read_all(store: &Store, id: &FileId) -> usize {
    let mut r = store.read(id).expect("read");
    let mut buf = vec![0u8; 4 << 20];
    let mut n = 0;
    loop {
        let k = std::io::Read::read(&mut r, &mut buf).expect("read");
        if k == 0 {
            return n;
        }
        n += k;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One measured operation: seconds and the S3 requests it sent.
struct M {
    secs: f64,
    s3: S3Stats,
}

fn measure(objects: Option<&S3Store>, f: impl FnOnce()) -> M {
    let c = objects.map(|o| o.stats());
    let t0 = Instant::now();
    f();
    let secs = t0.elapsed().as_secs_f64();
    let s3 = match (objects, c) {
        (Some(o), Some(c)) => o.stats().since(&c),
        _ => S3Stats::default(),
    };
    M { secs, s3 }
}

fn main() {
    let bucket = std::env::var("TESSERA_S3_BUCKET")
        .expect("TESSERA_S3_BUCKET (run under engine/s3/tests/s3server.sh run ...)");
    let mib: u64 = std::env::var("TESSERA_FIGURES_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let runs: usize = std::env::var("TESSERA_FIGURES_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let v1 = ModelSpec::base(7, mib << 20, DType::BF16);
    let (v2, _) = v1.finetune(8, 0.1);
    let (b1, b2) = (v1.to_bytes(), v2.to_bytes());
    let size = b1.len() as f64;
    eprintln!(
        "model: {:.0} MiB bf16 safetensors, fine-tune v2 (10% of tensors); {runs} runs",
        size / MIB
    );

    let mut rows: Vec<(String, Vec<M>)> = Vec::new();
    let mut push = |name: &str, m: M| match rows.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(m),
        None => rows.push((name.to_string(), vec![m])),
    };
    for run in 0..runs {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = format!(
            "s3://{bucket}/figures/{}-{run}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        );
        // Node A writes.
        let a_dir = tmp.path().join("node-a");
        let a = s3(&url, &a_dir, false);
        let store = open(&a, &a_dir, true);
        let mut id1 = FileId([0; 32]);
        let mut id2 = FileId([0; 32]);
        push(
            "S3: ingest v1",
            measure(Some(&a), || {
                id1 = store
                    .put_bytes(&b1, &["acme/m@v1:model"])
                    .expect("put")
                    .file_id
            }),
        );
        push(
            "S3: ingest v2 (fine-tune of v1)",
            measure(Some(&a), || {
                id2 = store
                    .put_bytes(&b2, &["acme/m@v2:model"])
                    .expect("put")
                    .file_id
            }),
        );
        push(
            "S3: re-put v1 (all duplicate)",
            measure(Some(&a), || {
                store.put_bytes(&b1, &["acme/m@v1b:model"]).expect("put");
            }),
        );
        store.close().expect("close");
        // Node A again, cold caches (new S3 client, new engine): full read.
        let a2 = s3(&url, &a_dir, false);
        let store = open(&a2, &a_dir, false);
        push(
            "S3: cold full read of v2 (node A, index warm)",
            measure(Some(&a2), || assert_eq!(read_all(&store, &id2), b2.len())),
        );
        store.close().expect("close");
        // Node B: empty cache (the CLI's on-disk range cache on), first read
        // of v2 by ref, then again.
        let b_dir = tmp.path().join("node-b");
        let b = s3(&url, &b_dir, true);
        let mut opened = None;
        push(
            "S3: node B opens the store (empty cache)",
            measure(Some(&b), || opened = Some(open(&b, &b_dir, false))),
        );
        let store = opened.expect("opened");
        push(
            "S3: node B first read of v2 by ref (resolve + discover + read)",
            measure(Some(&b), || {
                let id = store.resolve("acme/m@v2:model").expect("resolve");
                assert_eq!(read_all(&store, &id), b2.len())
            }),
        );
        push(
            "S3: node B second read of v2 by ref",
            measure(Some(&b), || {
                let id = store.resolve("acme/m@v2:model").expect("resolve");
                assert_eq!(read_all(&store, &id), b2.len())
            }),
        );
        store.close().expect("close");
        // Node B again, a new process: the on-disk range cache is warm.
        let b_again = s3(&url, &b_dir, true);
        let store = open(&b_again, &b_dir, false);
        push(
            "S3: node B, new process, full read of v2 (on-disk range cache warm)",
            measure(Some(&b_again), || {
                let id = store.resolve("acme/m@v2:model").expect("resolve");
                assert_eq!(read_all(&store, &id), b2.len())
            }),
        );
        store.close().expect("close");
        // Node C: empty cache, first 1 MiB range of v1 by id.
        let c_dir = tmp.path().join("node-c");
        let c = s3(&url, &c_dir, false);
        let store = open(&c, &c_dir, false);
        push(
            "S3: node C first 1 MiB range read of v1 by id",
            measure(Some(&c), || {
                let r = store
                    .read_range(&id1, b1.len() as u64 / 2, 1 << 20)
                    .expect("range");
                assert_eq!(r.len(), 1 << 20);
            }),
        );
        push(
            "S3: node C refresh (whole bucket listed)",
            measure(Some(&c), || {
                store.refresh().expect("refresh");
            }),
        );
        store.close().expect("close");
        // Node D: repair index from the listing alone.
        let d_dir = tmp.path().join("node-d");
        let d = s3(&url, &d_dir, false);
        push(
            "S3: node D repair index from the bucket",
            measure(Some(&d), || {
                Store::repair_index_with(d.clone(), &d_dir, opts(false)).expect("repair");
            }),
        );
        // Node D collects after v1's refs are gone: v1's recipe and the
        // packs only it names are deleted, in two phases 2 s apart (the
        // writer window; writers' checks are good for 1 s here).
        let d_opts = StoreOptions {
            gc_check_valid: std::time::Duration::from_secs(1),
            ..opts(false)
        };
        let store = Store::open_with(d.clone(), &d_dir, d_opts).expect("open");
        store.delete_ref("acme/m@v1:model").expect("delete ref");
        store.delete_ref("acme/m@v1b:model").expect("delete ref");
        push(
            "S3: node D gc, v1 unnamed (includes the 2 s writer window)",
            measure(Some(&d), || {
                let r = store
                    .gc(&tessera::GcOptions {
                        grace: std::time::Duration::ZERO,
                        writer_window: std::time::Duration::from_secs(2),
                        ..tessera::GcOptions::default()
                    })
                    .expect("gc");
                assert_eq!(r.dead_files, 1);
            }),
        );
        store.close().expect("close");

        // The directory backend on the same data (same disk as the caches).
        let dir = tmp.path().join("dir-store");
        let ds = Store::open(&dir, opts(true)).expect("dir store");
        push(
            "dir: ingest v1",
            measure(None, || {
                ds.put_bytes(&b1, &["acme/m@v1:model"]).expect("put");
            }),
        );
        push(
            "dir: ingest v2 (fine-tune of v1)",
            measure(None, || {
                ds.put_bytes(&b2, &["acme/m@v2:model"]).expect("put");
            }),
        );
        ds.close().expect("close");
        let ds = Store::open(&dir, opts(false)).expect("dir store");
        push(
            "dir: full read of v2 (fresh engine; page cache warm)",
            measure(None, || assert_eq!(read_all(&ds, &id2), b2.len())),
        );
        ds.close().expect("close");
        eprintln!("run {run} done");
    }
    println!("| operation | median time | throughput (file size / time) | S3 requests | bytes up / down |");
    println!("|---|---|---|---|---|");
    for (name, ms) in &rows {
        let secs = median(ms.iter().map(|m| m.secs).collect());
        // Request counts are the same every run; show the last one's.
        let s = &ms[ms.len() - 1].s3;
        let reqs = if s.requests() == 0 {
            "—".to_string()
        } else {
            format!(
                "{} (GET {}, HEAD {}, PUT {}, LIST {})",
                s.requests(),
                s.gets,
                s.heads,
                s.puts,
                s.lists
            )
        };
        let bytes = if s.requests() == 0 {
            "—".to_string()
        } else {
            format!(
                "{:.1} / {:.1} MiB",
                s.bytes_up as f64 / MIB,
                s.bytes_down as f64 / MIB
            )
        };
        let thr =
            if name.contains("ingest") || name.contains("re-put") || name.contains("read of v2") {
                format!("{:.0} MB/s", size / 1e6 / secs)
            } else {
                "—".into()
            };
        println!("| {name} | {:.3} s | {thr} | {reqs} | {bytes} |", secs);
    }
}
