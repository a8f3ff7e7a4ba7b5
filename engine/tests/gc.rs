//! GC and repack (spec §10.5): what no ref names goes, what is named reads
//! back byte-identical — after a crash at any storage operation of either,
//! with readers and writers running beside them, and when a pack they would
//! copy is damaged.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{noise, small_packs};
use tessera::storage::Fs;
use tessera::testing::{CrashMode, Fault, FaultStorage, GC_JOURNAL};
use tessera::{ChunkParams, Error, FileId, GcOptions, RepackOptions, Store, StoreOptions};
use tessera_synth::SplitMix64;

fn no_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    }
}

fn repack_opts() -> RepackOptions {
    RepackOptions {
        gc: no_grace(),
        ..Default::default()
    }
}

/// `n` versions of a model: each is the one before with `edits` regions of
/// `region` bytes replaced.
fn versions(size: usize, n: usize, edits: usize, region: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    let mut out = vec![noise(size, seed)];
    for v in 1..n {
        let mut next = out[v - 1].clone();
        for e in 0..edits {
            let at = (rng.next_u64() as usize) % (size - region);
            let fresh = noise(region, seed * 1000 + (v * 100 + e) as u64);
            next[at..at + region].copy_from_slice(&fresh);
        }
        out.push(next);
    }
    out
}

fn read_all(store: &Store, id: &FileId) -> tessera::Result<Vec<u8>> {
    let mut out = Vec::new();
    store
        .read(id)?
        .read_to_end(&mut out)
        .map_err(tessera::unwrap_io)?;
    Ok(out)
}

fn assert_clean(store: &Store) {
    let rep = store.verify(Default::default()).expect("verify");
    assert!(rep.is_clean(), "verify: {:?}", rep.problems);
}

/// Stored bytes of a fresh store holding only `files`: what a perfect GC
/// and repack would leave.
fn baseline(files: &[&Vec<u8>], opts: StoreOptions) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), opts).expect("open");
    for f in files {
        store.put_bytes(f, &[]).expect("put");
    }
    store.stats().expect("stats").stored_bytes
}

/// The coalesced range requests a full pull of `file` into an empty store
/// makes (the pull client's defaults: 32 KiB gaps, 8 MiB requests).
fn pull_ranges(store: &Store, file: &FileId) -> usize {
    let empty = tempfile::tempdir().expect("tempdir");
    let local = Store::open(empty.path(), small_packs()).expect("open");
    let rec = store.reconstruction(file, None).expect("reconstruction");
    local
        .plan_download(&rec, 32 << 10, 8 << 20)
        .expect("plan")
        .fetches
        .len()
}

#[test]
fn repack_reclaims_down_to_what_survivors_need() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vs = versions(4 << 20, 5, 8, 96 << 10, 3);
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let mut ids = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        let name = format!("org/m@v{}:model.bin", i + 1);
        ids.push(store.put_bytes(v, &[&name]).expect("put").file_id);
    }
    let before = store.stats().expect("stats");
    for i in 1..=3 {
        store
            .delete_ref(&format!("org/m@v{i}:model.bin"))
            .expect("delete ref");
    }

    // The default grace period keeps the files just stored.
    let rep = store.gc(&GcOptions::default()).expect("gc");
    assert_eq!((rep.dead_files, rep.dead_packs), (0, 0), "{rep:?}");
    // A dry run reports and changes nothing.
    let dry = store
        .gc(&GcOptions {
            dry_run: true,
            ..no_grace()
        })
        .expect("dry gc");
    assert_eq!(dry.dead_files, 3);
    assert_eq!(store.stats().expect("stats").files, 5);
    let info4 = store.info(&ids[3]).expect("info");
    let ranges4 = pull_ranges(&store, &ids[3]);

    let rep = store.repack(&repack_opts()).expect("repack");
    assert_eq!(rep.gc.dead_files, 3, "{rep:?}");
    assert!(rep.skipped.is_empty(), "{rep:?}");
    let after = store.stats().expect("stats");
    let ideal = baseline(&[&vs[3], &vs[4]], small_packs());
    eprintln!(
        "stored: {} before, {} after gc+repack, {} ideal ({:.2}%); {rep:?}",
        before.stored_bytes,
        after.stored_bytes,
        ideal,
        100.0 * after.stored_bytes as f64 / ideal as f64
    );
    assert!(
        after.stored_bytes as f64 <= ideal as f64 * 1.03,
        "stored {} after repack, a fresh store of the survivors holds {ideal}",
        after.stored_bytes
    );
    assert_eq!(after.stored_bytes, common::pack_bytes(dir.path()));
    assert_eq!((after.files, after.refs), (2, 2));
    // Survivors are byte-identical, the rest is gone.
    for (i, id) in ids.iter().enumerate() {
        if i >= 3 {
            assert_eq!(read_all(&store, id).expect("read survivor"), vs[i]);
        } else {
            match store.read(id) {
                Err(e) if e.is_not_found() => {}
                r => panic!("deleted v{} still readable: {:?}", i + 1, r.err()),
            }
            assert!(!dir.path().join(tessera::testing::recipe_key(id)).exists());
        }
    }
    // Repacked in read order: v4 reads from no more packs than before.
    let info4_after = store.info(&ids[3]).expect("info");
    let ranges4_after = pull_ranges(&store, &ids[3]);
    eprintln!(
        "v4: {} packs, {} ranges before; {} packs, {} ranges after",
        info4.packs.len(),
        ranges4,
        info4_after.packs.len(),
        ranges4_after
    );
    assert!(
        info4_after.packs.len() < info4.packs.len(),
        "{info4_after:?} vs {info4:?}"
    );
    assert!(
        ranges4_after < ranges4,
        "{ranges4_after} ranges after, {ranges4} before"
    );
    assert_clean(&store);
    // A second gc and repack have nothing to do and change nothing.
    let packs = common::pack_files(dir.path());
    let stats = store.stats().expect("stats");
    let again = store.gc(&no_grace()).expect("gc again");
    assert_eq!((again.dead_files, again.dead_packs), (0, 0));
    let again = store.repack(&repack_opts()).expect("repack again");
    assert_eq!(
        (
            again.gc.dead_files,
            again.gc.dead_packs,
            again.packs_rewritten
        ),
        (0, 0, 0)
    );
    assert_eq!(common::pack_files(dir.path()), packs);
    assert_eq!(
        store.stats().expect("stats").stored_bytes,
        stats.stored_bytes
    );
    drop(store);
    let store = Store::open(dir.path(), small_packs()).expect("reopen");
    assert_clean(&store);
    assert_eq!(read_all(&store, &ids[4]).expect("read"), vs[4]);
    // Deleted content stored again reads back (no stale index entry).
    let id = store.put_bytes(&vs[0], &["again"]).expect("put").file_id;
    assert_eq!(id, ids[0]);
    assert_eq!(read_all(&store, &id).expect("read"), vs[0]);
    assert_clean(&store);
}

#[test]
fn unnamed_files_inside_the_grace_period_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let named = store.put_bytes(&noise(300_000, 1), &["keep"]).expect("put");
    let unnamed = store.put_bytes(&noise(300_000, 2), &[]).expect("put");
    let rep = store
        .gc(&GcOptions {
            grace: Duration::from_secs(60),
            ..Default::default()
        })
        .expect("gc");
    assert_eq!((rep.dead_files, rep.young_packs), (0, 0));
    assert!(store.contains(&unnamed.file_id).expect("contains"));
    std::thread::sleep(Duration::from_millis(20));
    let rep = store
        .gc(&GcOptions {
            grace: Duration::from_millis(10),
            ..Default::default()
        })
        .expect("gc");
    assert_eq!(rep.dead_files, 1);
    assert!(!store.contains(&unnamed.file_id).expect("contains"));
    assert!(store.contains(&named.file_id).expect("contains"));
    assert_clean(&store);
}

#[test]
fn readers_in_flight_keep_reading_across_a_repack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vs = versions(3 << 20, 3, 6, 64 << 10, 9);
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let mut ids = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        ids.push(
            store
                .put_bytes(v, &[&format!("v{i}")])
                .expect("put")
                .file_id,
        );
    }
    store.delete_ref("v0").expect("delete");
    let mut reader = store.read(&ids[2]).expect("open reader");
    let mut head = vec![0u8; 100_000];
    reader.read_exact(&mut head).expect("read head");
    let packs_before = store.info(&ids[2]).expect("info").packs;
    let rep = store
        .repack(&RepackOptions {
            threshold: 1.0,
            ..repack_opts()
        })
        .expect("repack");
    assert!(rep.packs_rewritten > 0, "{rep:?}");
    // Some pack the reader's recipe names is gone now.
    let gone = packs_before
        .iter()
        .filter(|p| !dir.path().join(tessera::testing::pack_key(p)).exists())
        .count();
    assert!(gone > 0, "repack deleted none of the reader's packs");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("read rest");
    head.extend_from_slice(&rest);
    assert_eq!(head, vs[2]);
    assert_eq!(read_all(&store, &ids[1]).expect("read"), vs[1]);
    assert_clean(&store);
}

#[test]
fn writers_and_readers_run_beside_gc_and_repack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let base = noise(1 << 20, 5);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop, base) = (store.clone(), stop.clone(), base.clone());
        std::thread::spawn(move || {
            let mut kept: Vec<(FileId, Vec<u8>)> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 8 {
                // Half new data, half shared with the base (dedup against
                // chunks GC and repack are moving).
                let mut data = base.clone();
                let fresh = noise(300_000, 100 + n);
                let at = (n as usize * 70_000) % (base.len() - fresh.len());
                data[at..at + fresh.len()].copy_from_slice(&fresh);
                let name = format!("w/{n}");
                let id = store.put_bytes(&data, &[&name]).expect("put").file_id;
                if n % 2 == 1 {
                    store.delete_ref(&name).expect("delete");
                } else {
                    kept.push((id, data));
                }
                n += 1;
            }
            kept
        })
    };
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (name, id) in store.list_refs("w/").expect("refs") {
                    match read_all(&store, &id) {
                        Ok(d) => assert_eq!(d.len(), 1 << 20, "{name}"),
                        // Its ref was deleted and GC took it meanwhile.
                        Err(e) if e.is_not_found() => {}
                        Err(e) => panic!("read of {name} during GC: {e}"),
                    }
                    reads += 1;
                }
            }
            reads
        })
    };
    for i in 0..6 {
        if i % 2 == 0 {
            store.gc(&no_grace()).expect("gc");
        } else {
            store
                .repack(&RepackOptions {
                    threshold: 0.9,
                    ..repack_opts()
                })
                .expect("repack");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    let kept = writer.join().expect("writer");
    let reads = reader.join().expect("reader");
    assert!(reads > 0);
    store.repack(&repack_opts()).expect("final repack");
    for (id, data) in &kept {
        assert_eq!(&read_all(&store, id).expect("read kept"), data);
    }
    assert_eq!(store.stats().expect("stats").files, kept.len() as u64);
    assert_clean(&store);
}

#[test]
fn repack_leaves_a_damaged_pack_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    // Small files a and b alternating, then every a deleted: each pack is
    // half garbage.
    let mut bs = Vec::new();
    for i in 0..16u64 {
        store
            .put_bytes(&noise(120_000, 500 + i), &[&format!("a{i}")])
            .expect("put");
        let b = noise(120_000, 600 + i);
        let id = store
            .put_bytes(&b, &[&format!("b{i}")])
            .expect("put")
            .file_id;
        bs.push((id, b));
        store.delete_ref(&format!("a{i}")).expect("delete");
    }
    // Damage the last chunk of b0.
    let (ib, b) = bs[0].clone();
    let layout = store.layout(&ib).expect("layout");
    let last = layout.chunk_count() - 1;
    let c = layout.chunk(last).expect("last chunk");
    let pack_path = dir.path().join(tessera::testing::pack_key(&c.pack));
    let entry = store
        .pack(&c.pack)
        .expect("pack")
        .entry(c.pack_index)
        .expect("entry");
    let mut bytes = std::fs::read(&pack_path).expect("read pack");
    let at = (entry.offset + entry.record_len() - 10) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&pack_path, &bytes).expect("write pack");
    drop(layout);
    let rep = store.repack(&repack_opts()).expect("repack");
    assert_eq!(rep.skipped.len(), 1, "{rep:?}");
    assert!(rep.skipped[0].contains(&c.pack.to_hex()), "{rep:?}");
    assert!(rep.packs_rewritten > 0, "{rep:?}");
    assert!(pack_path.exists(), "the damaged pack was deleted");
    // b0 still fails where it is damaged, and only there.
    match store.read_range(&ib, c.file_offset, 10) {
        Err(e) if e.is_corruption() => {}
        r => panic!("damaged chunk read gave {:?}", r.map(|b| b.len())),
    }
    let head = store
        .read_range(&ib, 0, c.file_offset)
        .expect("read the rest");
    assert_eq!(&head[..], &b[..c.file_offset as usize]);
    for (id, data) in &bs[1..] {
        assert_eq!(&read_all(&store, id).expect("read"), data);
    }
}

// ------------------------------------------------------------ crash sweep

const PARAMS: ChunkParams = ChunkParams {
    min: 4096,
    avg: 16384,
    max: 65536,
    normalization: 1,
};

fn crash_opts() -> StoreOptions {
    StoreOptions {
        pack_target_bytes: 160 << 10,
        chunking: Some(PARAMS),
        create: true,
        ..Default::default()
    }
}

/// Four versions (two named) on a simulated disk.
fn crash_fixture(root: &Path) -> (FaultStorage, Vec<(FileId, Vec<u8>, bool)>) {
    let fs = FaultStorage::new(root);
    let store = tessera::testing::open_on(&fs, root, crash_opts()).expect("open");
    let vs = versions(400_000, 4, 5, 20_000, 21);
    let mut files = Vec::new();
    for (i, v) in vs.into_iter().enumerate() {
        let keep = i >= 2;
        let name = format!("v{i}");
        let id = store.put_bytes(&v, &[&name]).expect("put").file_id;
        if !keep {
            store.delete_ref(&name).expect("delete ref");
        }
        files.push((id, v, keep));
    }
    store.close().expect("close");
    (fs, files)
}

fn run_op(store: &Store, repack: bool) -> tessera::Result<()> {
    if repack {
        store
            .repack(&RepackOptions {
                threshold: 1.0,
                recompress: true,
                ..repack_opts()
            })
            .map(|_| ())
    } else {
        store.gc(&no_grace()).map(|_| ())
    }
}

/// After a crash: named files read back, unnamed ones read back or are
/// gone, verify is clean, no journal is left; then the same operation,
/// run again, finishes the job.
fn check_after_crash(
    store: &Store,
    files: &[(FileId, Vec<u8>, bool)],
    fs: &FaultStorage,
    repack: bool,
    at: &str,
) {
    for (id, data, keep) in files {
        match read_all(store, id) {
            Ok(d) => assert!(&d == data, "{at}: {id} reads other bytes"),
            Err(e) if e.is_not_found() && !keep => {}
            Err(e) => panic!(
                "{at}: {} file {id}: {e}",
                if *keep { "named" } else { "unnamed" }
            ),
        }
    }
    assert!(
        fs.read(GC_JOURNAL).is_err(),
        "{at}: the journal outlived the reopen"
    );
    let rep = store.verify(Default::default()).expect("verify");
    assert!(rep.is_clean(), "{at}: verify: {:?}", rep.problems);
    run_op(store, repack).unwrap_or_else(|e| panic!("{at}: rerun: {e}"));
    for (id, data, keep) in files {
        match read_all(store, id) {
            Ok(d) if *keep => assert!(&d == data, "{at}: {id} reads other bytes after rerun"),
            Err(e) if e.is_not_found() && !keep => {}
            r => panic!(
                "{at}: after rerun, {id} (named: {keep}): {:?}",
                r.map(|d| d.len())
            ),
        }
    }
    let rep = store.verify(Default::default()).expect("verify");
    assert!(
        rep.is_clean(),
        "{at}: verify after rerun: {:?}",
        rep.problems
    );
}

fn sweep(repack: bool) {
    // How many storage operations the whole operation takes.
    let probe = tempfile::tempdir().expect("tempdir");
    let (fs, _) = crash_fixture(probe.path());
    let store = tessera::testing::open_on(&fs, probe.path(), crash_opts()).expect("open");
    let before = fs.ops();
    run_op(&store, repack).expect("probe run");
    let total = fs.ops() - before;
    drop(store);
    assert!(total > 10, "only {total} storage operations");
    let modes = [
        CrashMode::PowerLoss,
        CrashMode::ProcessKill,
        CrashMode::PowerLossPartial(7),
    ];
    let mut crashed_in_recovery = 0;
    for n in 1..=total {
        let root = tempfile::tempdir().expect("tempdir");
        let (fs, files) = crash_fixture(root.path());
        let store = tessera::testing::open_on(&fs, root.path(), crash_opts()).expect("open");
        fs.inject(Fault {
            kind: None,
            nth: n,
            sticky: true,
        });
        let at = format!(
            "{} crash at storage op {n}/{total}",
            if repack { "repack" } else { "gc" }
        );
        match run_op(&store, repack) {
            Err(_) => {}
            Ok(()) => panic!("{at}: the operation succeeded through a failed write"),
        }
        drop(store);
        let mode = modes[n as usize % modes.len()];
        let mut fs = fs.crash_with(mode);
        // Every third point also crashes the recovery once.
        if n % 3 == 0 {
            fs.inject(Fault {
                kind: None,
                nth: 1 + n % 4,
                sticky: true,
            });
            if tessera::testing::open_on(&fs, root.path(), crash_opts()).is_err() {
                crashed_in_recovery += 1;
                fs = fs.crash_with(modes[(n as usize + 1) % modes.len()]);
            } else {
                fs.clear_fault();
            }
        }
        let store = tessera::testing::open_on(&fs, root.path(), crash_opts())
            .unwrap_or_else(|e| panic!("{at}: reopen: {e}"));
        check_after_crash(&store, &files, &fs, repack, &format!("{at} ({mode:?})"));
    }
    eprintln!("{total} crash points, {crashed_in_recovery} with a crash during recovery too");
}

#[test]
fn a_crash_anywhere_in_gc_loses_nothing_named() {
    sweep(false);
}

#[test]
fn a_crash_anywhere_in_repack_loses_nothing_named() {
    sweep(true);
}

#[test]
fn a_journal_that_does_not_parse_stops_the_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (fs, _) = crash_fixture(root.path());
    {
        fs.create_dir_all("gc").expect("mkdir");
        let mut h = fs.create_new("tmp/j").expect("create");
        h.write_all(b"{not json").expect("write");
        h.sync().expect("sync");
        drop(h);
        fs.rename("tmp/j", GC_JOURNAL).expect("rename");
    }
    match tessera::testing::open_on(&fs, root.path(), crash_opts()) {
        Err(e @ Error::JournalCorrupt { .. }) => {
            assert!(e.is_corruption());
            let msg = e.to_string();
            assert!(
                msg.contains("journal") && msg.contains("Remove it"),
                "{msg}"
            );
        }
        r => panic!("open with a damaged journal: {:?}", r.map(|_| ())),
    }
}

/// A journal that lists files a ref names (a stale copy put back, or a
/// forged one) is not obeyed for them: the open that finishes it deletes
/// neither those files nor the packs they use, and deletes the rest.
#[test]
fn a_journal_listing_named_files_spares_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let named = noise(1_500_000, 31);
    let a = store.put_bytes(&named, &["org/m@v1:a.bin"]).expect("put");
    let b = store
        .put_bytes(&noise(900_000, 32), &["org/m@v1:b.bin"])
        .expect("put");
    store.delete_ref("org/m@v1:b.bin").expect("rm ref");
    let a_packs = store.info(&a.file_id).expect("info").packs;
    let b_packs = store.info(&b.file_id).expect("info").packs;
    drop(store);
    let hexes = |ps: &[tessera::PackId]| ps.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>();
    let packs = [hexes(&a_packs), hexes(&b_packs)].concat().join(",");
    let journal = format!(
        "{{\"files\":[[\"{}\",null],[\"{}\",null]],\"packs\":[{packs}],\"relink\":[]}}",
        a.file_id, b.file_id
    );
    std::fs::create_dir_all(dir.path().join("gc")).expect("mkdir");
    std::fs::write(dir.path().join(GC_JOURNAL), journal).expect("journal");
    let store = Store::open(dir.path(), small_packs()).expect("open finishes the journal");
    assert!(!dir.path().join(GC_JOURNAL).exists(), "journal left");
    let back = store
        .read(&a.file_id)
        .expect("named file")
        .read_all()
        .expect("read");
    assert!(back == named, "the named file changed");
    assert!(store.read(&b.file_id).is_err(), "the unnamed file was kept");
    for p in &a_packs {
        assert!(
            dir.path().join(tessera::testing::pack_key(p)).exists(),
            "{p}"
        );
    }
    let v = store
        .verify(tessera::VerifyOptions::default())
        .expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
}

/// Found by a hostile probe: a journal listing only packs (no file) was
/// finished by the next open, even of a read-only command, deleting a pack
/// a named file needed. A listed pack that a named file's recipe uses is
/// kept; one nothing uses still goes.
#[test]
fn a_journal_listing_packs_named_files_use_spares_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let named = noise(1_500_000, 41);
    let a = store.put_bytes(&named, &["m/a"]).expect("put");
    let b = store.put_bytes(&noise(900_000, 42), &["m/b"]).expect("put");
    store.delete_ref("m/b").expect("rm ref");
    let a_packs = store.info(&a.file_id).expect("info").packs;
    let b_packs: Vec<_> = store
        .info(&b.file_id)
        .expect("info")
        .packs
        .into_iter()
        .filter(|p| !a_packs.contains(p))
        .collect();
    assert!(!b_packs.is_empty());
    drop(store);
    let packs: Vec<String> = a_packs
        .iter()
        .chain(&b_packs)
        .map(|p| format!("\"{p}\""))
        .collect();
    let journal = format!(
        "{{\"files\":[],\"packs\":[{}],\"relink\":[]}}",
        packs.join(",")
    );
    std::fs::create_dir_all(dir.path().join("gc")).expect("mkdir");
    std::fs::write(dir.path().join(GC_JOURNAL), journal).expect("journal");
    let store = Store::open(dir.path(), small_packs()).expect("open finishes the journal");
    assert!(!dir.path().join(GC_JOURNAL).exists(), "journal left");
    for p in &a_packs {
        assert!(
            dir.path().join(tessera::testing::pack_key(p)).exists(),
            "a pack m/a needs was deleted: {p}"
        );
    }
    for p in &b_packs {
        assert!(
            !dir.path().join(tessera::testing::pack_key(p)).exists(),
            "a pack nothing named uses was kept: {p}"
        );
    }
    assert!(read_all(&store, &a.file_id).expect("read") == named);
}

/// Found by a hostile probe (on S3): a collection cut short between a dead
/// file's recipe and its model description left the description, which
/// `verify` then reported as damage for ever, since nothing collected it.
/// Descriptions now go first, and GC collects one whose file is not stored.
#[test]
fn a_description_left_without_its_file_is_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let kept = store
        .put_bytes(&noise(300_000, 51), &["m/kept"])
        .expect("put");
    let gone = store
        .put_bytes(&noise(300_000, 52), &["m/gone"])
        .expect("put");
    let kept_key = dir.path().join(tessera::testing::model_key(&kept.file_id));
    let gone_key = dir.path().join(tessera::testing::model_key(&gone.file_id));
    assert!(kept_key.exists() && gone_key.exists());
    let description = std::fs::read(&gone_key).expect("read description");
    store.delete_ref("m/gone").expect("rm ref");
    store.gc(&no_grace()).expect("gc");
    assert!(!gone_key.exists(), "a dead file's description was kept");
    // What a cut-short collection on a bucket leaves: the description only.
    std::fs::write(&gone_key, &description).expect("leave it behind");
    let v = store
        .verify(tessera::VerifyOptions::default())
        .expect("verify");
    assert!(!v.is_clean(), "verify missed the leftover");
    let dry = store
        .gc(&GcOptions {
            dry_run: true,
            ..no_grace()
        })
        .expect("dry run");
    assert_eq!(dry.dead_files, 1, "{dry:?}");
    assert!(gone_key.exists(), "a dry run deleted it");
    store.gc(&no_grace()).expect("gc");
    assert!(!gone_key.exists(), "the leftover description was kept");
    assert!(kept_key.exists(), "a stored file's description was deleted");
    let v = store
        .verify(tessera::VerifyOptions::default())
        .expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
}

/// Found by a hostile probe (on S3, where it lost a named file): a damaged
/// ref file must never let the file it names be collected. With the
/// index's verified copy of the ref, GC keeps the file; once the index has
/// no copy (rebuilt from the files after it was lost), GC stops with an
/// error naming the ref file and deletes nothing.
#[test]
fn a_damaged_ref_file_never_lets_its_file_be_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        create: true,
        ..small_packs()
    };
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    let data = noise(700_000, 93);
    let id = store.put_bytes(&data, &["m/a"]).expect("put").file_id;
    store.close().expect("close");
    let key = tessera::testing::ref_key("m/a");
    let path = dir.path().join(&key);
    let mut bytes = std::fs::read(&path).expect("read ref file");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).expect("damage ref file");

    // The index's verified copy names the file: it stays.
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    let rep = store.gc(&no_grace()).expect("gc with the index's copy");
    assert_eq!(rep.dead_files, 0, "{rep:?}");
    assert_eq!(read_all(&store, &id).expect("read"), data);
    store.close().expect("close");

    // The index lost, and rebuilt from the files: it has no copy of the
    // damaged ref. GC must stop, naming the ref file, and delete nothing.
    std::fs::remove_dir_all(dir.path().join("index")).expect("drop the index");
    let _ = Store::repair_index(dir.path(), opts.clone()).expect("repair index");
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    let packs = std::fs::read_dir(dir.path().join("packs"))
        .expect("packs")
        .count();
    for dry_run in [true, false] {
        let gc = GcOptions {
            dry_run,
            ..no_grace()
        };
        match store.gc(&gc) {
            Err(e @ Error::RefUnreadable { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&key), "{msg}");
                assert!(e.is_corruption(), "{e:?}");
            }
            other => panic!("gc over a damaged ref file with no index copy: {other:?}"),
        }
        assert!(matches!(
            store.repack(&RepackOptions {
                gc,
                ..Default::default()
            }),
            Err(Error::RefUnreadable { .. })
        ));
    }
    assert_eq!(read_all(&store, &id).expect("read after gc"), data);
    assert_eq!(
        std::fs::read_dir(dir.path().join("packs"))
            .expect("packs")
            .count(),
        packs
    );
    store.close().expect("close");
}

/// Found by a hostile probe: a named file's recipe damaged and the index
/// (its verified copy) lost; `repair index` could not index the recipe or
/// the ref, and GC then deleted the packs of the file's chunks, so
/// restoring the recipe from a backup no longer brought the file back. A
/// file a ref names must have its recipe read, or GC stops: the damage is
/// named, nothing is deleted, and once the recipe is restored the file reads
/// back; giving the ref up lets GC run.
#[test]
fn a_named_file_whose_recipe_is_lost_stops_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        create: true,
        ..small_packs()
    };
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    let v = versions(600_000, 2, 4, 20_000, 94);
    let v0 = store.put_bytes(&v[0], &["m/v0"]).expect("put").file_id;
    let v1 = store.put_bytes(&v[1], &["m/v1"]).expect("put").file_id;
    store.close().expect("close");
    let recipe = dir.path().join(tessera::testing::recipe_key(&v1));
    let backup = std::fs::read(&recipe).expect("read recipe");
    let packs = |d: &Path| {
        let mut n = 0;
        for sub in std::fs::read_dir(d.join("packs")).expect("packs") {
            n += std::fs::read_dir(sub.expect("entry").path())
                .expect("fan-out")
                .count();
        }
        n
    };
    let before = packs(dir.path());

    for damage in ["truncated", "missing"] {
        match damage {
            "truncated" => std::fs::write(&recipe, &backup[..100]).expect("truncate"),
            _ => std::fs::remove_file(&recipe).expect("remove"),
        }
        std::fs::remove_dir_all(dir.path().join("index")).expect("drop the index");
        let _ = Store::repair_index(dir.path(), opts.clone()).expect("repair index");
        let store = Store::open(dir.path(), opts.clone()).expect("open");
        for dry_run in [true, false] {
            let gc = GcOptions {
                dry_run,
                ..no_grace()
            };
            match store.gc(&gc) {
                Err(e @ Error::RecipeUnreadable { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("m/v1") && msg.contains(&v1.to_hex()), "{msg}");
                    assert!(e.is_corruption(), "{e:?}");
                }
                other => panic!("{damage}: gc with a named file's recipe lost: {other:?}"),
            }
            assert!(
                matches!(
                    store.repack(&RepackOptions {
                        gc,
                        ..Default::default()
                    }),
                    Err(Error::RecipeUnreadable { .. })
                ),
                "{damage}: repack"
            );
        }
        assert_eq!(packs(dir.path()), before, "{damage}: a pack was deleted");
        assert_eq!(read_all(&store, &v0).expect("v0"), v[0]);
        store.close().expect("close");
        // Restored from a backup, the file is back whole.
        std::fs::write(&recipe, &backup).expect("restore");
        std::fs::remove_dir_all(dir.path().join("index")).expect("drop the index");
        let _ = Store::repair_index(dir.path(), opts.clone()).expect("repair index");
        let store = Store::open(dir.path(), opts.clone()).expect("open");
        assert_eq!(
            read_all(&store, &v1).expect("v1 restored"),
            v[1],
            "{damage}"
        );
        store.close().expect("close");
    }

    // Given up (the ref deleted), GC runs and keeps what v0 needs.
    std::fs::remove_file(&recipe).expect("remove");
    std::fs::remove_dir_all(dir.path().join("index")).expect("drop the index");
    let _ = Store::repair_index(dir.path(), opts.clone()).expect("repair index");
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    store.delete_ref("m/v1").expect("give the file up");
    store.gc(&no_grace()).expect("gc");
    assert_eq!(read_all(&store, &v0).expect("v0 after gc"), v[0]);
    store.close().expect("close");
}

/// Time spans too long to compute with are refused, not wrapped: a grace
/// of 2^61 s was once taken as none (its milliseconds wrapped to 0), which
/// made a file stored a moment ago collectable.
#[test]
fn absurd_durations_are_refused_not_wrapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            create: true,
            ..small_packs()
        },
    )
    .expect("open");
    let data = noise(300_000, 94);
    let id = store.put_bytes(&data, &[]).expect("put").file_id;
    let huge = Duration::from_secs(1 << 61);
    for opts in [
        GcOptions {
            grace: huge,
            ..Default::default()
        },
        GcOptions {
            wait: Duration::MAX,
            ..Default::default()
        },
        GcOptions {
            writer_window: Duration::MAX,
            ..Default::default()
        },
    ] {
        for dry_run in [true, false] {
            let opts = GcOptions {
                dry_run,
                ..opts.clone()
            };
            match store.gc(&opts) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains("longer"), "{m}"),
                other => panic!("gc with {opts:?}: {other:?}"),
            }
        }
    }
    // The longest allowed grace keeps everything.
    let rep = store
        .gc(&GcOptions {
            grace: tessera::MAX_DURATION,
            ..Default::default()
        })
        .expect("gc");
    assert_eq!(rep.dead_files, 0, "{rep:?}");
    assert_eq!(read_all(&store, &id).expect("read"), data);
    assert!(matches!(
        Store::open(
            dir.path(),
            StoreOptions {
                refresh_after: Some(Duration::MAX),
                ..small_packs()
            }
        ),
        Err(Error::InvalidArgument(_))
    ));
}

/// Found by a hostile probe. A chunk two files share is damaged; `repair
/// index` leaves the damaged copy out of the index; the first file is put
/// again (its chunk stored afresh, verified) and later retired. GC then
/// deleted the pack holding the only verified copy, pointed the index at
/// the damaged one and exited 0 — a put of the second file then deduped
/// onto it. Now GC keeps that pack and reports the damage, and `repair
/// index` points the second file at the verified copy.
#[test]
fn gc_keeps_the_only_verified_copy_of_a_damaged_chunk_and_repair_uses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = noise(900_000, 41);
    let a = shared.clone();
    let mut b = shared.clone();
    b.extend_from_slice(&noise(400_000, 42));
    let (victim, b_id) = {
        let store = Store::open(dir.path(), small_packs()).expect("open");
        store.put_bytes(&a, &["m/a"]).expect("put a");
        let b_id = store.put_bytes(&b, &["m/b"]).expect("put b").file_id;
        // A chunk of the shared part, named by both files at one place.
        let layout = store.layout(&b_id).expect("layout");
        let c = layout.chunk(1).expect("chunk 1");
        let entry = store
            .pack(&c.pack)
            .expect("pack")
            .entry(c.pack_index)
            .expect("entry");
        store.close().expect("close");
        (
            (
                dir.path().join(tessera::testing::pack_key(&c.pack)),
                entry.data_offset() + u64::from(entry.stored_len) / 2,
            ),
            b_id,
        )
    };
    let mut bytes = std::fs::read(&victim.0).expect("read pack");
    bytes[victim.1 as usize] ^= 0x5a;
    std::fs::write(&victim.0, bytes).expect("write pack");
    // Repair leaves the damaged copy out of the index.
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(!rep.problems.is_empty(), "the damage is reported");

    let store = Store::open(dir.path(), small_packs()).expect("open");
    // The first file again: its chunk is stored afresh, verified.
    store.put_bytes(&a, &["m/a"]).expect("put a again");
    assert!(store.read(&b_id).expect("open").read_all().is_err());
    // Retired; GC must keep the verified copy, and say why.
    store.delete_ref("m/a").expect("rm ref");
    let r = store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        })
        .expect("gc");
    assert_eq!(r.damaged.len(), 1, "{:?}", r.damaged);
    assert!(r.damaged[0].contains("is kept"), "{}", r.damaged[0]);
    // Nothing deletes it later either: repack leaves a pack kept for that.
    let rr = store
        .repack(&RepackOptions {
            gc: GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            ..RepackOptions::default()
        })
        .expect("repack");
    assert_eq!(rr.gc.damaged.len(), 1, "{:?}", rr.gc.damaged);
    store.close().expect("close");

    // Repair points the second file at the verified copy: it reads.
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(
        rep.healed
            .iter()
            .any(|h| h.object == format!("file {b_id}") && h.detail.contains("does not verify")),
        "{:?}",
        rep.healed
    );
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let back = store
        .read(&b_id)
        .expect("open")
        .read_all()
        .expect("b reads");
    assert!(back == b, "b differs");
    // The damaged copy is named by nothing now: a repack rewrites its pack
    // and the store verifies clean.
    let rr = store
        .repack(&RepackOptions {
            threshold: 1.0,
            gc: GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            ..RepackOptions::default()
        })
        .expect("repack");
    assert!(rr.gc.damaged.is_empty(), "{:?}", rr.gc.damaged);
    let v = store
        .verify(tessera::VerifyOptions::default())
        .expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    assert!(store.read(&b_id).expect("open").read_all().expect("b") == b);
}
