//! Behaviour specific to the S3 backend: staging, errors, counters, the
//! block cache, conditional writes, the runtime bridge, retries. Tests that
//! need a server are skipped, loudly, without one; the retry tests use a
//! fake server on loopback and always run.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tessera::storage::{ObjectStore, PutMode};
use tessera_s3::testing::conformance::{concurrent_create, pattern};
use tessera_s3::testing::{s3_target, S3Target};
use tessera_s3::{CasOutcome, RetryOptions, S3Options, S3Store};

fn store(t: &S3Target, name: &str, opts: S3Options) -> (S3Store, tempfile::TempDir) {
    let staging = tempfile::tempdir().expect("tempdir");
    let s = t.store(
        name,
        S3Options {
            staging_dir: Some(staging.path().join("staging")),
            ..opts
        },
    );
    (s, staging)
}

#[test]
fn location_describe_and_errors_name_the_object() {
    let Some(t) = s3_target("location_describe_and_errors_name_the_object") else {
        return;
    };
    let (s, _d) = store(t, "names", S3Options::default());
    let loc = s.location();
    assert!(loc.starts_with(&format!("s3://{}/", t.bucket)), "{loc}");
    assert!(!loc.ends_with('/'));
    assert_eq!(
        s.describe("packs/ab/x.pack"),
        format!("{loc}/packs/ab/x.pack")
    );
    let e = s.get("packs/ab/missing.pack").expect_err("missing");
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(
        e.to_string()
            .contains(&format!("{loc}/packs/ab/missing.pack")),
        "{e}"
    );
    let e = s.delete("refs/00/missing.ref").expect_err("missing");
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(
        e.to_string()
            .contains(&format!("{loc}/refs/00/missing.ref")),
        "{e}"
    );
    let e = s.open("x/missing").map(|_| ()).expect_err("missing");
    assert!(e.to_string().contains(&format!("{loc}/x/missing")), "{e}");
    s.put("k", b"v", PutMode::Create).expect("put");
    let e = s.put("k", b"w", PutMode::Create).expect_err("exists");
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert!(e.to_string().contains(&format!("{loc}/k")), "{e}");
    let e = s.get("a//b").expect_err("bad key");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains(&loc), "{e}");
}

#[test]
fn staging_is_local_and_discard_staged_removes_only_leftovers() {
    let Some(t) = s3_target("staging_is_local_and_discard_staged_removes_only_leftovers") else {
        return;
    };
    let (s, _d) = store(t, "staging", S3Options::default());
    let dir = s.staging_dir().to_path_buf();
    let mut o = s.stage().expect("stage");
    o.write_all(b"half a pack").expect("write");
    let staged: Vec<_> = std::fs::read_dir(&dir).expect("staging dir").collect();
    assert_eq!(staged.len(), 1, "one staged file");
    drop(o);
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "dropped staged file removed"
    );
    // What a crash leaves, and a file that is not ours.
    std::fs::write(dir.join("4242-17.tmp"), b"leftover").expect("write");
    std::fs::write(dir.join("keep.me"), b"not ours").expect("write");
    s.discard_staged().expect("discard");
    assert!(!dir.join("4242-17.tmp").exists(), "leftover discarded");
    assert!(dir.join("keep.me").exists(), "unrelated file kept");
    assert_eq!(
        s.list("").expect("list"),
        Vec::<String>::new(),
        "nothing in the bucket"
    );
    // Publishing removes the staged file.
    let mut o = s.stage().expect("stage");
    o.write_all(b"whole").expect("write");
    o.publish("packs/ab/p.pack", PutMode::Create)
        .expect("publish");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        1,
        "only keep.me left"
    );
    assert_eq!(s.get("packs/ab/p.pack").expect("get"), b"whole");
}

#[test]
fn counters_count_each_request() {
    let Some(t) = s3_target("counters_count_each_request") else {
        return;
    };
    let (s, _d) = store(t, "counters", S3Options::default());
    let data = pattern(300_000, 5);
    let c0 = s.stats();
    s.put("a/b", &data, PutMode::Create).expect("put");
    let c1 = s.stats();
    let d = c1.since(&c0);
    assert_eq!((d.puts, d.requests()), (1, 1), "put: {d}");
    assert!(d.bytes_up >= data.len() as u64, "put: {d}");
    assert_eq!(s.get("a/b").expect("get"), data);
    let d = s.stats().since(&c1);
    assert_eq!((d.gets, d.requests()), (1, 1), "get: {d}");
    assert!(d.bytes_down >= data.len() as u64, "get: {d}");
    let c2 = s.stats();
    assert!(s.exists("a/b").expect("exists"));
    assert_eq!(s.list("a/").expect("list"), ["a/b"]);
    s.delete("a/b").expect("delete");
    let d = s.stats().since(&c2);
    assert_eq!(
        (d.heads, d.lists, d.deletes),
        (2, 1, 1),
        "exists+list+delete: {d}"
    );
}

#[test]
fn ranged_reads_go_through_the_block_cache() {
    let Some(t) = s3_target("ranged_reads_go_through_the_block_cache") else {
        return;
    };
    let (s, _d) = store(t, "cache", S3Options::default());
    let mib = 1usize << 20;
    let data = pattern(6 * mib + 1000, 9);
    s.put("packs/ab/big.pack", &data, PutMode::Create)
        .expect("put");
    let c0 = s.stats();
    let h = s.open("packs/ab/big.pack").expect("open");
    let d = s.stats().since(&c0);
    assert_eq!(
        (d.gets, d.requests()),
        (1, 1),
        "open is one ranged GET: {d}"
    );
    // Sequential 64 KiB reads of the whole object: block 0 is cached by the
    // open, then the read-ahead window grows (2, 4, 8 blocks a GET).
    let c1 = s.stats();
    let mut off = 0;
    while off < data.len() {
        let n = (64 << 10).min(data.len() - off);
        let got = h.read_at(off as u64, n).expect("read");
        assert_eq!(&got[..], &data[off..off + n]);
        off += n;
    }
    let d = s.stats().since(&c1);
    assert!(
        d.gets <= 3,
        "7 blocks after the first should take at most 3 GETs with read-ahead: {d}"
    );
    assert_eq!(
        d.bytes_down as usize,
        data.len() - mib,
        "each byte fetched once: {d}"
    );
    // Everything is cached now: a second pass, through a new handle, sends
    // nothing.
    let c2 = s.stats();
    let h2 = s.open("packs/ab/big.pack").expect("reopen");
    let all = h2.read_at(0, data.len()).expect("read all");
    assert_eq!(&all[..], &data[..]);
    let d = s.stats().since(&c2);
    assert_eq!(
        d.requests(),
        0,
        "a reopen of a cached object sends nothing: {d}"
    );
    assert!(d.cache_hits >= 7, "{d}");
}

#[test]
fn the_disk_cache_serves_a_later_process_and_stays_bounded() {
    let Some(t) = s3_target("the_disk_cache_serves_a_later_process_and_stays_bounded") else {
        return;
    };
    let mib = 1usize << 20;
    let url = t.url("disk");
    let local = tempfile::tempdir().expect("tempdir");
    let ranges = local.path().join("ranges");
    let node = |disk_bytes: u64| {
        let o = S3Options {
            staging_dir: Some(local.path().join("staging")),
            disk_cache_dir: Some(ranges.clone()),
            disk_cache_bytes: disk_bytes,
            ..t.options()
        };
        S3Store::from_url(&url, o).expect("store")
    };
    let data = pattern(6 * mib + 1000, 21);
    let a = node(64 << 20);
    a.put("packs/ab/big.pack", &data, PutMode::Create)
        .expect("put");
    let all = a.open("packs/ab/big.pack").expect("open");
    assert_eq!(&all.read_at(0, data.len()).expect("read")[..], &data[..]);
    assert!(a.disk_cached_bytes() >= data.len() as u64);
    drop(all);
    drop(a);
    // A later process (new client, empty memory): only the open's first
    // block is fetched; the rest comes from disk.
    let b = node(64 << 20);
    let c0 = b.stats();
    let h = b.open("packs/ab/big.pack").expect("open");
    assert_eq!(&h.read_at(0, data.len()).expect("read")[..], &data[..]);
    let d = b.stats().since(&c0);
    assert_eq!((d.gets, d.requests()), (1, 1), "only the open: {d}");
    assert_eq!(d.bytes_down as usize, mib, "{d}");
    assert_eq!(d.disk_hits, 6, "{d}");
    drop(h);
    // A replaced object has another ETag: its old blocks are not served.
    let data2 = pattern(3 * mib, 22);
    b.put("packs/ab/big.pack", &data2, PutMode::Replace)
        .expect("replace");
    drop(b);
    let c = node(64 << 20);
    let h = c.open("packs/ab/big.pack").expect("open");
    assert_eq!(&h.read_at(0, data2.len()).expect("read")[..], &data2[..]);
    drop(h);
    drop(c);
    // A damaged cache file is a miss: the block is fetched again.
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for fan in std::fs::read_dir(&ranges).expect("ranges").flatten() {
        if fan.path().is_dir() {
            files.extend(
                std::fs::read_dir(fan.path())
                    .expect("fan")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    assert!(files.len() >= 9, "{} cached blocks", files.len());
    for f in &files {
        let mut b = std::fs::read(f).expect("read");
        let last = b.len() - 1;
        b[last] ^= 0x55;
        std::fs::write(f, &b).expect("write");
    }
    let e = node(64 << 20);
    let c0 = e.stats();
    let h = e.open("packs/ab/big.pack").expect("open");
    assert_eq!(&h.read_at(0, data2.len()).expect("read")[..], &data2[..]);
    let d = e.stats().since(&c0);
    assert_eq!(
        (d.disk_hits, d.bytes_down as usize),
        (0, data2.len()),
        "{d}"
    );
    drop(h);
    drop(e);
    // Bounded: a 3 MiB disk cache after reading 6 MiB holds at most 3 MiB.
    let bound = 3 * mib as u64;
    let f = node(bound);
    f.put("packs/cd/other.pack", &data, PutMode::Create)
        .expect("put");
    let h = f.open("packs/cd/other.pack").expect("open");
    assert_eq!(&h.read_at(0, data.len()).expect("read")[..], &data[..]);
    let mut on_disk = 0;
    for fan in std::fs::read_dir(&ranges).expect("ranges").flatten() {
        if fan.path().is_dir() {
            for e in std::fs::read_dir(fan.path()).expect("fan").flatten() {
                on_disk += e.metadata().expect("meta").len();
            }
        }
    }
    assert!(on_disk <= bound, "{on_disk} bytes on disk, bound {bound}");
}

#[test]
fn without_a_cache_nothing_is_read_ahead() {
    let Some(t) = s3_target("without_a_cache_nothing_is_read_ahead") else {
        return;
    };
    let opts = S3Options {
        block_size: 100_000,
        cache_bytes: 0,
        ..S3Options::default()
    };
    let (s, _d) = store(t, "nocache", opts);
    let data = pattern(1_000_000, 6);
    s.put("p", &data, PutMode::Create).expect("put");
    let h = s.open("p").expect("open");
    let c0 = s.stats();
    for b in 0..10usize {
        let off = b * 100_000;
        let got = h.read_at(off as u64, 100_000).expect("read");
        assert_eq!(&got[..], &data[off..off + 100_000]);
    }
    let d = s.stats().since(&c0);
    // Block 0 came with the open; each other block is one exact GET.
    assert_eq!((d.gets, d.bytes_down), (9, 900_000), "{d}");
}

#[test]
fn concurrent_opens_and_reads_share_requests() {
    let Some(t) = s3_target("concurrent_opens_and_reads_share_requests") else {
        return;
    };
    let (s, _d) = store(t, "share", S3Options::default());
    let data = pattern(5 << 20, 4);
    s.put("packs/ab/s.pack", &data, PutMode::Create)
        .expect("put");
    let c0 = s.stats();
    let barrier = std::sync::Barrier::new(8);
    let handles: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                sc.spawn(|| {
                    barrier.wait();
                    s.open("packs/ab/s.pack").expect("open")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("join")).collect()
    });
    let d = s.stats().since(&c0);
    assert_eq!(d.requests(), 1, "8 concurrent opens, one GET: {d}");
    // Eight handles read the same far block at once: one GET.
    let c1 = s.stats();
    std::thread::scope(|sc| {
        for h in &handles {
            let (barrier, data) = (&barrier, &data);
            sc.spawn(move || {
                barrier.wait();
                let off = 3 << 20;
                assert_eq!(
                    &h.read_at(off as u64, 1000).expect("read")[..],
                    &data[off..off + 1000]
                );
            });
        }
    });
    let d = s.stats().since(&c1);
    assert_eq!(d.gets, 1, "8 concurrent reads of one block, one GET: {d}");
}

#[test]
fn a_replaced_object_is_never_served_stale() {
    let Some(t) = s3_target("a_replaced_object_is_never_served_stale") else {
        return;
    };
    let opts = S3Options {
        block_size: 64 << 10,
        readahead_blocks: 1,
        ..S3Options::default()
    };
    let (s, _d) = store(t, "stale", opts.clone());
    let v1 = pattern(300_000, 1);
    let v2 = pattern(300_000, 2);
    s.put("packs/ab/p.pack", &v1, PutMode::Replace)
        .expect("put");
    let h1 = s.open("packs/ab/p.pack").expect("open");
    assert_eq!(
        &h1.read_at(70_000, 10).expect("read")[..],
        &v1[70_000..70_010]
    );
    // Replaced through this store: a new handle sees v2.
    s.put("packs/ab/p.pack", &v2, PutMode::Replace)
        .expect("replace");
    let h2 = s.open("packs/ab/p.pack").expect("open");
    assert_eq!(
        &h2.read_at(70_000, 10).expect("read")[..],
        &v2[70_000..70_010]
    );
    // The old handle's uncached blocks belong to v1, which is gone: a GET
    // with If-Match fails instead of mixing versions.
    let e = h1
        .read_at(200_000, 10)
        .expect_err("object changed under the handle");
    assert!(e.to_string().contains("changed"), "{e}");
}

#[test]
fn conditional_writes_for_refs() {
    let Some(t) = s3_target("conditional_writes_for_refs") else {
        return;
    };
    let (s, _d) = store(t, "cas", S3Options::default());
    let k = "refs/ab/r.ref";
    let CasOutcome::Written(e1) = s.put_if_absent(k, b"one").expect("create") else {
        panic!("put_if_absent of a new key did not write");
    };
    assert_eq!(
        s.put_if_absent(k, b"two").expect("create again"),
        CasOutcome::Conflict
    );
    let v = s.get_with_etag(k).expect("get");
    assert_eq!((&v.data[..], &v.etag), (&b"one"[..], &e1));
    // If-Match with the current ETag writes; with a stale one it does not.
    let CasOutcome::Written(e2) = s.put_if_match(k, b"three", &e1).expect("cas") else {
        panic!("put_if_match with the current ETag did not write");
    };
    assert_ne!(e1, e2);
    assert_eq!(
        s.put_if_match(k, b"four", &e1).expect("stale cas"),
        CasOutcome::Conflict
    );
    assert_eq!(s.get(k).expect("get"), b"three");
    assert_eq!(
        s.put_if_match("refs/ab/none.ref", b"x", &e2)
            .expect("cas of missing"),
        CasOutcome::Conflict
    );
    assert!(!s.exists("refs/ab/none.ref").expect("exists"));
}

#[test]
fn create_only_publish_is_atomic_under_contention() {
    let Some(t) = s3_target("create_only_publish_is_atomic_under_contention") else {
        return;
    };
    let (s, _d) = store(t, "contention", S3Options::default());
    concurrent_create(&s, 40);
}

#[test]
fn calls_from_rayon_threads() {
    let Some(t) = s3_target("calls_from_rayon_threads") else {
        return;
    };
    let (s, _d) = store(t, "rayon", S3Options::default());
    let keys: Vec<String> = (0..64).map(|i| format!("r/{i:03}")).collect();
    keys.par_iter().for_each(|k| {
        s.put(k, k.as_bytes(), PutMode::Create).expect("put");
        assert_eq!(s.get(k).expect("get"), k.as_bytes());
    });
    assert_eq!(s.list("r/").expect("list"), keys);
}

fn use_inside_async(t: &S3Target, name: &str) {
    let (s, _d) = store(t, name, S3Options::default());
    s.put("k/a", b"async", PutMode::Create).expect("put");
    assert_eq!(s.get("k/a").expect("get"), b"async");
    let h = s.open("k/a").expect("open");
    assert_eq!(&h.read_at(1, 3).expect("read")[..], b"syn");
    assert_eq!(s.list("k/").expect("list"), ["k/a"]);
    drop(h);
    drop(s); // shuts its runtime down without blocking this one
}

#[tokio::test]
async fn calls_from_inside_a_current_thread_tokio_runtime() {
    let Some(t) = s3_target("calls_from_inside_a_current_thread_tokio_runtime") else {
        return;
    };
    use_inside_async(t, "tokio-ct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_inside_a_multi_thread_tokio_runtime() {
    let Some(t) = s3_target("calls_from_inside_a_multi_thread_tokio_runtime") else {
        return;
    };
    use_inside_async(t, "tokio-mt");
    // And from a spawned task, as a server's handler would.
    let r = tokio::spawn(async move { use_inside_async(t, "tokio-task") }).await;
    assert!(r.is_ok(), "the task panicked");
}

/// A fake S3 endpoint on loopback: answers every request with `status`
/// (or never answers, when `status` is 0). Returns its URL and a stop flag.
fn fake_server(status: u16) -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop2.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    if status == 0 {
                        held.push(c); // accept, never answer
                        continue;
                    }
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 65536];
                    let _ = c.read(&mut buf);
                    let _ = write!(
                        c,
                        "HTTP/1.1 {status} Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (url, stop)
}

fn fast_failing(endpoint: &str, staging: &std::path::Path) -> S3Options {
    S3Options {
        staging_dir: Some(staging.to_path_buf()),
        request_timeout: Some(Duration::from_millis(400)),
        connect_timeout: Some(Duration::from_millis(400)),
        retry: RetryOptions {
            max_retries: 2,
            init_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            retry_timeout: Duration::from_secs(5),
        },
        ..S3Options::endpoint(endpoint, "k", "s", "us-east-1")
    }
}

#[test]
fn server_errors_are_retried_then_reported_naming_the_object() {
    let (url, stop) = fake_server(503);
    let d = tempfile::tempdir().expect("tempdir");
    let s = S3Store::from_url("s3://bkt/pre", fast_failing(&url, d.path())).expect("store");
    let e = s
        .put("packs/ab/x.pack", b"data", PutMode::Replace)
        .expect_err("503");
    eprintln!("{e}");
    assert!(
        e.to_string().contains("s3://bkt/pre/packs/ab/x.pack"),
        "{e}"
    );
    let st = s.stats();
    assert_eq!(st.puts, 3, "first attempt + 2 retries: {st}");
    assert_eq!(st.failed, 3, "{st}");
    let e = s.get("refs/00/r.ref").expect_err("503");
    assert!(e.to_string().contains("s3://bkt/pre/refs/00/r.ref"), "{e}");
    assert_eq!(s.stats().gets, 3, "{}", s.stats());
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_silent_server_times_out_with_a_clear_error() {
    let (url, stop) = fake_server(0);
    let d = tempfile::tempdir().expect("tempdir");
    let s = S3Store::from_url("s3://bkt/pre", fast_failing(&url, d.path())).expect("store");
    let t0 = Instant::now();
    let e = s.get("tessera.store").expect_err("timeout");
    let took = t0.elapsed();
    eprintln!("after {took:?}: {e}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let msg = e.to_string();
    assert!(msg.contains("s3://bkt/pre/tessera.store"), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
    assert!(
        s.stats().gets >= 2,
        "the timeout was retried: {}",
        s.stats()
    );
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn an_unreachable_server_fails_fast_naming_the_object() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let d = tempfile::tempdir().expect("tempdir");
    let s = S3Store::from_url(
        "s3://bkt",
        fast_failing(&format!("http://127.0.0.1:{port}"), d.path()),
    )
    .expect("store");
    let t0 = Instant::now();
    let e = s.exists("dirty").expect_err("refused");
    eprintln!("{e}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(e.to_string().contains("s3://bkt/dirty"), "{e}");
    assert!(e.to_string().contains("onnection refused"), "{e}");
}

#[test]
fn a_create_only_put_whose_connection_drops_is_retried() {
    // The first connection reads the request and closes without an answer
    // (what a server restart does to a PUT in flight); later ones answer 200.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    n += 1;
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_millis(300)));
                    let mut buf = [0u8; 65536];
                    let _ = c.read(&mut buf);
                    if n > 1 {
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let d = tempfile::tempdir().expect("tempdir");
    let s = S3Store::from_url("s3://bkt/pre", fast_failing(&url, d.path())).expect("store");
    s.put("packs/ab/x.pack", b"data", PutMode::Create)
        .expect("the dropped create-only PUT is sent again and succeeds");
    let st = s.stats();
    assert!(st.puts >= 2, "retried: {st}");
    stop.store(true, Ordering::Relaxed);
}
