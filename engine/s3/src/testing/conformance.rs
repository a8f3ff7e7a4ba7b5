//! The `ObjectStore` contract as executable checks, written once over
//! `&dyn ObjectStore` and run against every backend (the directory store
//! and the S3 store in this crate's tests). Each check panics with a message
//! naming the backend and what broke.
//!
//! [`run_all`] wants an empty store location; the checks use disjoint key
//! namespaces so they can also run one by one on a shared store (except
//! [`foreign_rule`], which needs an empty one).

use std::io;
use std::sync::Barrier;

use tessera::storage::{ObjectStore, PutMode};

/// Deterministic test bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn ok<T>(r: io::Result<T>, s: &dyn ObjectStore, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{}: {what}: unexpected error: {e}", s.location()),
    }
}

fn err_kind<T: std::fmt::Debug>(
    r: io::Result<T>,
    s: &dyn ObjectStore,
    what: &str,
    kind: io::ErrorKind,
) -> io::Error {
    match r {
        Ok(v) => panic!(
            "{}: {what}: expected {kind:?}, got success ({v:?})",
            s.location()
        ),
        Err(e) => {
            assert_eq!(
                e.kind(),
                kind,
                "{}: {what}: expected {kind:?}, got {e}",
                s.location()
            );
            e
        }
    }
}

fn publish_staged(
    s: &dyn ObjectStore,
    key: &str,
    parts: &[&[u8]],
    mode: PutMode,
) -> io::Result<()> {
    let mut o = s.stage()?;
    for p in parts {
        o.write_all(p)?;
    }
    o.publish(key, mode)
}

/// Every check, in order, on an empty store.
pub fn run_all(s: &dyn ObjectStore) {
    run_single_threaded(s);
    concurrent_create(s, 8);
}

/// Every check but [`concurrent_create`], in order, on an empty store.
pub fn run_single_threaded(s: &dyn ObjectStore) {
    assert_eq!(
        ok(s.list(""), s, "list an empty store"),
        Vec::<String>::new(),
        "{}: run_all wants an empty store",
        s.location()
    );
    foreign_rule(s);
    publish_create_and_replace(s);
    missing_keys(s);
    list_by_prefix(s);
    ranged_reads(s);
    exists_and_delete(s);
    staged_not_published(s);
}

/// Create-only publish fails with `AlreadyExists` and keeps the first
/// object; replace swaps it whole; staged objects may be written in pieces;
/// empty objects work.
pub fn publish_create_and_replace(s: &dyn ObjectStore) {
    let key = "pub/ab/first.pack";
    ok(
        publish_staged(s, key, &[b"hello ", b"world"], PutMode::Create),
        s,
        "create-only publish of a new key",
    );
    assert_eq!(ok(s.get(key), s, "get"), b"hello world");
    let e = err_kind(
        publish_staged(s, key, &[b"other"], PutMode::Create),
        s,
        "create-only publish over an existing key",
        io::ErrorKind::AlreadyExists,
    );
    assert!(
        !e.to_string().is_empty(),
        "{}: AlreadyExists without a message",
        s.location()
    );
    assert_eq!(
        ok(s.get(key), s, "get after a refused create"),
        b"hello world",
        "{}: a refused create-only publish changed the object",
        s.location()
    );
    err_kind(
        s.put(key, b"again", PutMode::Create),
        s,
        "create-only put over an existing key",
        io::ErrorKind::AlreadyExists,
    );
    ok(s.put(key, b"replaced", PutMode::Replace), s, "replace");
    assert_eq!(ok(s.get(key), s, "get after replace"), b"replaced");
    ok(
        s.put("pub/cd/new.ref", b"r", PutMode::Replace),
        s,
        "replace of a missing key creates it",
    );
    assert_eq!(ok(s.get("pub/cd/new.ref"), s, "get"), b"r");
    ok(s.put("pub/empty", b"", PutMode::Create), s, "empty object");
    assert_eq!(ok(s.get("pub/empty"), s, "get empty"), b"");
    let h = ok(s.open("pub/empty"), s, "open empty");
    assert_eq!(h.len(), 0, "{}: empty object length", s.location());
    assert!(ok(h.read_at(0, 0), s, "read 0 bytes of empty").is_empty());
    err_kind(
        h.read_at(0, 1),
        s,
        "read past the end of an empty object",
        io::ErrorKind::UnexpectedEof,
    );
    // A published object is readable by a fresh handle.
    let big = pattern(200_000, 7);
    ok(
        publish_staged(
            s,
            "pub/ab/big.pack",
            &[&big[..1000], &big[1000..]],
            PutMode::Create,
        ),
        s,
        "publish 200 kB",
    );
    let h = ok(s.open("pub/ab/big.pack"), s, "open");
    assert_eq!(h.len(), big.len() as u64);
    assert_eq!(&ok(h.read_at(0, big.len()), s, "read whole")[..], &big[..]);
}

/// Missing keys: `get`, `open` and `delete` are `NotFound`, `exists` false.
pub fn missing_keys(s: &dyn ObjectStore) {
    let k = "missing/ab/nothing.pack";
    assert!(!ok(s.exists(k), s, "exists of a missing key"));
    err_kind(s.get(k), s, "get of a missing key", io::ErrorKind::NotFound);
    err_kind(
        s.open(k).map(|_| ()),
        s,
        "open of a missing key",
        io::ErrorKind::NotFound,
    );
    err_kind(
        s.delete(k),
        s,
        "delete of a missing key",
        io::ErrorKind::NotFound,
    );
}

/// `list(prefix)`: every key starting with the prefix (not only whole
/// path segments), relative to the store, sorted.
pub fn list_by_prefix(s: &dyn ObjectStore) {
    let keys = [
        "lst/packs/ab/1.pack",
        "lst/packs/ab/2.pack",
        "lst/packs/cd/3.pack",
        "lst/recipes/ab/r.recipe",
        "lst/refs/00/r.ref",
        "lst/refs/00/s.ref",
        "lst/refs/01/t.ref",
        "lst/top",
        "lstx/other",
    ];
    // Published in a scrambled order: the listing must sort.
    for k in keys.iter().rev() {
        ok(s.put(k, k.as_bytes(), PutMode::Create), s, "put");
    }
    let list = |p: &str| ok(s.list(p), s, &format!("list {p:?}"));
    let want = |p: &str| -> Vec<String> {
        keys.iter()
            .filter(|k| k.starts_with(p))
            .map(|k| k.to_string())
            .collect()
    };
    for p in [
        "lst/",
        "lst/packs/",
        "lst/packs/ab/",
        "lst/packs/ab/1",
        "lst/refs/0",
        "lst/refs/00/",
        "lst/refs/00/s",
        "lst/t",
        "lst",
        "lst/nothing/",
        "lst/packs/ab/1.pack",
    ] {
        assert_eq!(list(p), want(p), "{}: list({p:?})", s.location());
    }
    let all = list("");
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "{}: list(\"\") not sorted", s.location());
    for k in keys {
        assert!(
            all.iter().any(|a| a == k),
            "{}: list(\"\") lacks {k}",
            s.location()
        );
    }
}

/// Listing past one page: `n` keys (S3 pages hold 1000), all returned,
/// sorted, with no duplicates.
pub fn list_many(s: &dyn ObjectStore, n: usize) {
    let keys: Vec<String> = (0..n)
        .map(|i| format!("many/{:02x}/{i:06}.ref", (i * 7919) % 256))
        .collect();
    let threads = 8;
    std::thread::scope(|sc| {
        for t in 0..threads {
            let keys = &keys;
            sc.spawn(move || {
                for k in keys.iter().skip(t).step_by(threads) {
                    ok(s.put(k, b"x", PutMode::Create), s, "put");
                }
            });
        }
    });
    let mut want = keys.clone();
    want.sort();
    let got = ok(s.list("many/"), s, "list many/");
    assert_eq!(got.len(), n, "{}: list many/ count", s.location());
    assert_eq!(got, want, "{}: list many/", s.location());
    let sub: Vec<String> = want
        .iter()
        .filter(|k| k.starts_with("many/0"))
        .cloned()
        .collect();
    assert_eq!(
        ok(s.list("many/0"), s, "list many/0"),
        sub,
        "{}: list many/0",
        s.location()
    );
}

/// Ranged reads: any range inside the object, across internal boundaries,
/// from several threads at once; past the end is `UnexpectedEof`.
pub fn ranged_reads(s: &dyn ObjectStore) {
    let mib = 1usize << 20;
    let data = pattern(2 * mib + mib / 2 + 17, 11);
    ok(
        publish_staged(s, "rng/ab/r.pack", &[&data], PutMode::Create),
        s,
        "publish",
    );
    let h = ok(s.open("rng/ab/r.pack"), s, "open");
    let len = data.len();
    assert_eq!(h.len(), len as u64, "{}: handle length", s.location());
    let cases = [
        (0, 10),
        (5, 1),
        (mib - 5, 10),
        (mib, mib),
        (mib - 1, mib + 2),
        (len - 1, 1),
        (len - 100, 100),
        (0, len),
        (len, 0),
        (123, 0),
    ];
    for (off, n) in cases {
        let got = ok(h.read_at(off as u64, n), s, &format!("read {n} at {off}"));
        assert_eq!(
            &got[..],
            &data[off..off + n],
            "{}: read {n} at {off}",
            s.location()
        );
    }
    for (off, n) in [(len - 1, 2), (len, 1), (len + 1, 0), (0, len + 1)] {
        err_kind(
            h.read_at(off as u64, n),
            s,
            &format!("read {n} at {off} of {len}"),
            io::ErrorKind::UnexpectedEof,
        );
    }
    err_kind(
        h.read_at(u64::MAX, 1),
        s,
        "read at u64::MAX",
        io::ErrorKind::UnexpectedEof,
    );
    // Concurrent readers of one handle, overlapping ranges, a fresh handle
    // so nothing is cached yet.
    let h = ok(s.open("rng/ab/r.pack"), s, "open again");
    std::thread::scope(|sc| {
        for t in 0..4usize {
            let (h, data) = (&h, &data);
            sc.spawn(move || {
                for i in 0..12usize {
                    let off = (t * 300_007 + i * 190_001) % (len - 70_000);
                    let n = 1 + (i * 6_007) % 65_536;
                    let got = ok(h.read_at(off as u64, n), s, "concurrent read");
                    assert_eq!(
                        &got[..],
                        &data[off..off + n],
                        "{}: concurrent read {n} at {off}",
                        s.location()
                    );
                }
            });
        }
    });
}

/// `exists` follows publish and delete; a deleted key is gone from `get`
/// and `list`.
pub fn exists_and_delete(s: &dyn ObjectStore) {
    let k = "del/ab/k.ref";
    assert!(!ok(s.exists(k), s, "exists before put"));
    ok(s.put(k, b"v", PutMode::Create), s, "put");
    assert!(ok(s.exists(k), s, "exists after put"));
    ok(s.delete(k), s, "delete");
    assert!(!ok(s.exists(k), s, "exists after delete"));
    err_kind(s.get(k), s, "get after delete", io::ErrorKind::NotFound);
    assert!(
        !ok(s.list("del/"), s, "list").iter().any(|x| x == k),
        "{}: a deleted key is still listed",
        s.location()
    );
    err_kind(s.delete(k), s, "second delete", io::ErrorKind::NotFound);
    // A deleted key may be created again.
    ok(s.put(k, b"w", PutMode::Create), s, "re-create");
    assert_eq!(ok(s.get(k), s, "get"), b"w");
}

/// A staged object that is never published leaves nothing visible, before
/// or after `discard_staged`.
pub fn staged_not_published(s: &dyn ObjectStore) {
    let before = ok(s.list(""), s, "list");
    let mut o = ok(s.stage(), s, "stage");
    ok(o.write_all(&pattern(100_000, 3)), s, "write staged");
    let mut kept = ok(s.stage(), s, "stage another");
    ok(kept.write_all(b"kept"), s, "write staged");
    assert_eq!(
        ok(s.list(""), s, "list"),
        before,
        "{}: staged bytes are visible",
        s.location()
    );
    drop(o);
    ok(
        kept.publish("stg/ab/kept.ref", PutMode::Create),
        s,
        "publish",
    );
    ok(s.discard_staged(), s, "discard_staged");
    let mut want = before;
    want.push("stg/ab/kept.ref".to_string());
    want.sort();
    assert_eq!(
        ok(s.list(""), s, "list"),
        want,
        "{}: only the published object appears",
        s.location()
    );
}

/// Two threads publish the same new key create-only at the same moment,
/// `rounds` times: each time exactly one wins, the other gets
/// `AlreadyExists`, and the object is the winner's.
pub fn concurrent_create(s: &dyn ObjectStore, rounds: usize) {
    for r in 0..rounds {
        let key = format!("cc/ab/{r}.pack");
        let barrier = Barrier::new(2);
        let results: Vec<(u8, io::Result<()>)> = std::thread::scope(|sc| {
            let hs: Vec<_> = [b'A', b'B']
                .into_iter()
                .map(|tag| {
                    let (barrier, key) = (&barrier, &key);
                    sc.spawn(move || {
                        let body = vec![tag; 50_000];
                        let r = s.stage().and_then(|mut o| {
                            o.write_all(&body)?;
                            barrier.wait();
                            o.publish(key, PutMode::Create)
                        });
                        (tag, r)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| match h.join() {
                    Ok(v) => v,
                    Err(_) => panic!("{}: a publishing thread panicked", s.location()),
                })
                .collect()
        });
        let winners: Vec<u8> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "{}: round {r}: {} create-only publishes of one key succeeded ({:?})",
            s.location(),
            winners.len(),
            results
                .iter()
                .map(|(t, r)| (*t as char, r.as_ref().map_err(|e| e.to_string())))
                .collect::<Vec<_>>()
        );
        for (_, res) in &results {
            if let Err(e) = res {
                assert_eq!(
                    e.kind(),
                    io::ErrorKind::AlreadyExists,
                    "{}: round {r}: the loser got {e}",
                    s.location()
                );
            }
        }
        let got = ok(s.get(&key), s, "get the winner");
        assert!(
            got.len() == 50_000 && got.iter().all(|&b| b == winners[0]),
            "{}: round {r}: the object is not the winner's",
            s.location()
        );
    }
}

/// `foreign()` on an empty location is `None`; a store's objects are not
/// foreign; anything else is, and is named.
pub fn foreign_rule(s: &dyn ObjectStore) {
    assert_eq!(ok(s.foreign(), s, "foreign of an empty location"), None);
    ok(s.put("tessera.store", b"config", PutMode::Create), s, "put");
    ok(s.put("dirty", b"", PutMode::Create), s, "put");
    ok(s.put("packs/ab/x.pack", b"p", PutMode::Create), s, "put");
    ok(
        s.put("recipes/0f/y.recipe", b"r", PutMode::Create),
        s,
        "put",
    );
    ok(s.put("refs/00/z.ref", b"f", PutMode::Create), s, "put");
    assert_eq!(
        ok(s.foreign(), s, "foreign of a store's objects"),
        None,
        "{}: a store's own objects are foreign",
        s.location()
    );
    ok(s.put("notes.txt", b"mine", PutMode::Create), s, "put");
    let f = ok(s.foreign(), s, "foreign");
    assert!(
        f.as_deref().is_some_and(|d| d.contains("notes.txt")),
        "{}: a stray object is not reported: {f:?}",
        s.location()
    );
    ok(s.delete("notes.txt"), s, "delete");
    ok(s.put("packs/zz/bad.pack", b"p", PutMode::Create), s, "put");
    let f = ok(s.foreign(), s, "foreign");
    assert!(
        f.as_deref().is_some_and(|d| d.contains("packs/zz")),
        "{}: a non-hex fan-out is not reported: {f:?}",
        s.location()
    );
    for k in [
        "packs/zz/bad.pack",
        "tessera.store",
        "dirty",
        "packs/ab/x.pack",
        "recipes/0f/y.recipe",
        "refs/00/z.ref",
    ] {
        ok(s.delete(k), s, "delete");
    }
}
