//! `verify` and `repair index`: a clean store verifies clean; damage is found
//! and named; a deleted index is rebuilt from packs, recipes and refs alone.

mod common;

use common::{copy_tree, noise, pack_files, small_packs};
use tessera::VerifyOptions;
use tessera::{Error, FileId, Store, StoreOptions};

/// A store with several files over several packs and refs; returns the files.
fn populate(dir: &std::path::Path) -> Vec<(FileId, Vec<u8>, String)> {
    populate_in(&Store::open(dir, small_packs()).expect("open"))
}

fn populate_in(store: &Store) -> Vec<(FileId, Vec<u8>, String)> {
    let mut out = Vec::new();
    for (i, n) in [0usize, 1, 300_000, 3_000_000, 2_500_000]
        .into_iter()
        .enumerate()
    {
        let data = noise(n, 100 + i as u64);
        let name = format!("org/m@v{i}:w.bin");
        let rep = store.put_bytes(&data, &[&name]).expect("put");
        out.push((rep.file_id, data, name));
    }
    // A second ref to the same file.
    store.set_ref("org/fork@v1:w.bin", out[3].0).expect("ref");
    store.delete_ref("org/m@v1:w.bin").expect("delete ref");
    out[1].2 = String::new();
    out
}

fn check_all(store: &Store, files: &[(FileId, Vec<u8>, String)]) {
    for (id, data, name) in files {
        let back = store.read(id).expect("open").read_all().expect("read");
        assert!(back == *data, "file {id} differs");
        if !name.is_empty() {
            assert_eq!(store.resolve_ref(name).expect("ref"), *id);
        }
    }
    assert_eq!(
        store.resolve_ref("org/fork@v1:w.bin").expect("fork ref"),
        files[3].0
    );
    assert!(store
        .resolve_ref("org/m@v1:w.bin")
        .expect_err("deleted")
        .is_not_found());
}

#[test]
fn clean_store_verifies_clean_with_and_without_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let store = Store::open(dir.path(), small_packs()).expect("reopen");
    let rep = store.verify(VerifyOptions::default()).expect("verify");
    assert!(rep.is_clean(), "{:?}", rep.problems);
    assert_eq!(rep.packs as usize, pack_files(dir.path()).len());
    assert_eq!(rep.packs_read, rep.packs);
    assert_eq!(rep.chunks_read, rep.chunks);
    assert_eq!(rep.files, 5);
    assert_eq!(rep.refs, 5);
    assert!(rep.orphan_packs.is_empty());
    let quick = store
        .verify(VerifyOptions {
            sample_percent: 0.0,
            read_data: true,
            read_files: false,
        })
        .expect("verify");
    assert!(quick.is_clean());
    assert_eq!(quick.packs_read, 0);
    check_all(&store, &files);
}

#[test]
fn repair_rebuilds_a_deleted_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let before = Store::open(dir.path(), small_packs())
        .expect("open")
        .stats()
        .expect("stats");
    std::fs::remove_dir_all(dir.path().join("index")).expect("delete index");
    // Without repair, the store refuses to open rather than look empty.
    match Store::open(dir.path(), small_packs()) {
        Err(e @ Error::IndexMissing { .. }) => assert!(e.to_string().contains("repair index")),
        other => panic!("expected IndexMissing, got {other:?}"),
    }
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!(rep.files, 5);
    assert_eq!(rep.refs, 5);
    let store = Store::open(dir.path(), small_packs()).expect("open repaired");
    let after = store.stats().expect("stats");
    assert_eq!(
        (
            after.files,
            after.refs,
            after.chunks,
            after.packs,
            after.logical_bytes,
            after.stored_bytes
        ),
        (
            before.files,
            before.refs,
            before.chunks,
            before.packs,
            before.logical_bytes,
            before.stored_bytes
        )
    );
    check_all(&store, &files);
    assert!(store
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
    // The repaired store takes new writes and dedups against the old data.
    let again = store.put_bytes(&files[3].1, &[]).expect("re-put");
    assert_eq!(again.new_chunks, 0);
}

#[test]
fn repair_replaces_a_garbage_index_and_reports_damaged_packs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    // Damage one pack's chunk data: find the pack holding file 4's first chunk.
    let damaged_pack = {
        let store = Store::open(dir.path(), small_packs()).expect("open");
        store.layout(&files[4].0).expect("layout").recipe.terms[0].pack
    };
    let path = pack_files(dir.path())
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&damaged_pack.to_hex()))
        .expect("pack file");
    let mut bytes = std::fs::read(&path).expect("read pack");
    bytes[16 + 52 + 10] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write pack");
    // Replace the index with garbage.
    let index = dir.path().join("index");
    std::fs::remove_dir_all(&index).expect("rm");
    std::fs::create_dir_all(&index).expect("mkdir");
    std::fs::write(index.join("db"), noise(100_000, 1)).expect("garbage");
    std::fs::write(index.join("conf"), b"garbage").expect("garbage");

    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    let text = format!("{:?}", rep.problems);
    assert!(text.contains(&damaged_pack.to_hex()), "{text}");
    assert!(text.contains(&format!("file {}", files[4].0)), "{text}");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    // Everything not in the damaged pack is back.
    for (id, data, _) in &files[..4] {
        let info = store.info(id).expect("info");
        if !info.packs.contains(&damaged_pack) {
            assert!(store.read(id).expect("open").read_all().expect("read") == *data);
        }
    }
    match store.read(&files[4].0).expect("open").read_all() {
        Err(Error::ChunkCorrupt { pack, .. }) => assert_eq!(pack, damaged_pack),
        other => panic!("expected ChunkCorrupt, got {:?}", other.map(|v| v.len())),
    }
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(!v.is_clean());
    assert!(v
        .problems
        .iter()
        .any(|p| p.object == format!("pack {damaged_pack}")));
}

#[test]
fn verify_names_missing_and_orphan_packs_and_open_clears_temp_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let packs = pack_files(dir.path());
    // A missing pack: move one away. Then make it an orphan: rebuild the
    // index without it and put it back.
    let victim = packs.last().expect("a pack").clone();
    let hidden = dir.path().join("hidden.pack");
    std::fs::rename(&victim, &hidden).expect("hide pack");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let v = store.verify(VerifyOptions::default()).expect("verify");
    let name = victim
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    assert!(
        v.problems
            .iter()
            .any(|p| p.object == format!("pack {name}") && p.detail.contains("missing")),
        "{:?}",
        v.problems
    );
    drop(store);
    // Rebuild without the pack, then put it back: not indexed, but the
    // recipes of the files it held name it, so it is damage to repair
    // (which indexes it), never a reclaimable orphan.
    Store::repair_index(dir.path(), small_packs()).expect("repair");
    std::fs::rename(&hidden, &victim).expect("restore pack");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.orphan_packs.is_empty(), "{:?}", v.orphan_packs);
    assert!(
        v.problems
            .iter()
            .any(|p| p.object == format!("pack {name}") && p.detail.contains("not in the index")),
        "{:?}",
        v.problems
    );
    drop(store);
    Store::repair_index(dir.path(), small_packs()).expect("repair");
    // A pack no recipe names (another store's) is an orphan.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Store::open(other_dir.path(), small_packs()).expect("other store");
    other.put_bytes(&noise(200_000, 99), &["x"]).expect("put");
    other.close().expect("close");
    let stray = pack_files(other_dir.path()).pop().expect("a pack");
    let stray_name = stray
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let stray_id = tessera::PackId::from_hex(&stray_name).expect("a pack id");
    let stray_at = dir.path().join(tessera::testing::pack_key(&stray_id));
    std::fs::create_dir_all(stray_at.parent().expect("parent")).expect("mkdir");
    std::fs::copy(&stray, &stray_at).expect("copy stray pack");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert_eq!(v.orphan_packs.len(), 1, "{:?}", v.problems);
    assert_eq!(v.orphan_packs[0].to_hex(), stray_name);
    // A leftover temp file is removed at open.
    drop(store);
    std::fs::write(dir.path().join("tmp/123-0.pack"), b"partial").expect("tmp");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    drop((store, files));
}

/// Ways sled's files can be damaged behind its back.
fn damage_index(index: &std::path::Path, how: &str) {
    let db = index.join("db");
    let mut bytes = std::fs::read(&db).expect("read db");
    match how {
        "zeroed" => bytes.iter_mut().for_each(|b| *b = 0),
        "truncated" => bytes.truncate(1000),
        "emptied" => bytes.clear(),
        "garbage head" => bytes[..64].copy_from_slice(&noise(64, 7)),
        "garbage middle" => {
            let mid = bytes.len() / 2;
            bytes[mid..mid + 64].copy_from_slice(&noise(64, 8));
        }
        "garbage tail" => {
            let end = bytes.len();
            bytes[end - 4096..].copy_from_slice(&noise(4096, 9));
        }
        other => panic!("unknown damage {other}"),
    }
    std::fs::write(&db, &bytes).expect("write db");
}

/// Whatever sled does with damaged files (report corruption, or come back
/// with less than it had and no error), opening the store brings every file
/// and ref back: the index is rebuilt, or caught up because it disagrees
/// with the record of the last clean close.
#[test]
fn open_recovers_from_a_damaged_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    // The store as the writing session left it, and after a read-only
    // reopen (which lets sled write a snapshot): sled reacts differently.
    let as_written = tempfile::tempdir().expect("tempdir");
    copy_tree(dir.path(), as_written.path());
    let before = Store::open(dir.path(), small_packs())
        .expect("open")
        .stats()
        .expect("stats");
    for (when, src) in [("as written", as_written.path()), ("reopened", dir.path())] {
        for how in [
            "zeroed",
            "truncated",
            "emptied",
            "garbage head",
            "garbage middle",
            "garbage tail",
        ] {
            let what = format!("{how}, {when}");
            let copy = tempfile::tempdir().expect("tempdir");
            copy_tree(src, copy.path());
            damage_index(&copy.path().join("index"), how);
            let store = Store::open(copy.path(), small_packs())
                .unwrap_or_else(|e| panic!("{what}: open: {e}"));
            let reason = store.recovery().map(|r| r.reason);
            eprintln!("{what}: {reason:?}");
            if !how.starts_with("garbage m") && !how.starts_with("garbage t") {
                // sled's log head is gone: it reports damage or comes back
                // with less. (Garbage in the middle or at the tail of the log
                // can land in space sled no longer uses.)
                assert!(reason.is_some(), "{what}: the open did not catch up");
            }
            check_all(&store, &files);
            let after = store.stats().expect("stats");
            assert_eq!(after, before, "{what}");
            assert!(
                store
                    .verify(VerifyOptions::default())
                    .expect("verify")
                    .is_clean(),
                "{what}"
            );
        }
    }
}

/// With automatic rebuilding off, sled's report of damage is a typed error
/// naming the index and the command that repairs it.
#[test]
fn damaged_index_is_a_clear_error_when_rebuilding_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    // A reopen lets sled write a snapshot; damage to its log is then
    // something sled detects (see `open_recovers_from_a_damaged_index`).
    drop(Store::open(dir.path(), small_packs()).expect("open"));
    damage_index(&dir.path().join("index"), "zeroed");
    let strict = StoreOptions {
        rebuild_damaged_index: false,
        ..small_packs()
    };
    match Store::open(dir.path(), strict) {
        Err(e @ Error::IndexDamaged { .. }) => {
            assert!(e.is_corruption());
            let msg = e.to_string();
            assert!(
                msg.contains("index") && msg.contains("repair index"),
                "{msg}"
            );
        }
        other => panic!("expected IndexDamaged, got {other:?}"),
    }
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    let store = Store::open(dir.path(), small_packs()).expect("open");
    check_all(&store, &files);
}

/// Losing a write that changes no count (a ref pointed at another file) is
/// still noticed: every write transaction bumps the index's generation,
/// which the clean-close record holds.
#[test]
fn a_lost_ref_retarget_is_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let snap = tempfile::tempdir().expect("tempdir");
    copy_tree(&dir.path().join("index"), snap.path());
    {
        let store = Store::open(dir.path(), small_packs()).expect("open");
        store.set_ref(&files[0].2, files[2].0).expect("retarget");
    }
    // sled comes back from the clean close without that last write.
    std::fs::remove_dir_all(dir.path().join("index")).expect("rm");
    std::fs::create_dir_all(dir.path().join("index")).expect("mkdir");
    copy_tree(snap.path(), &dir.path().join("index"));
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let rec = store.recovery().expect("caught up");
    assert_eq!(rec.reason, tessera::CatchUpReason::CountersDiffer);
    assert_eq!(rec.report.refs, 1, "{rec:?}");
    assert_eq!(store.resolve_ref(&files[0].2).expect("ref"), files[2].0);
}

/// The index and the clean-close record restored together from an older
/// copy agree with each other; the ref files written since do not. The
/// record holds a stamp of the ref tree, so the open catches up and the
/// ref files win: no stale target, no deleted ref, no missing new one
/// (hostile probe F5: `cat` of a re-pointed ref gave the old file, exit 0).
#[test]
fn an_index_restored_with_its_clean_record_does_not_hide_newer_ref_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let snap = tempfile::tempdir().expect("tempdir");
    copy_tree(&dir.path().join("index"), snap.path());
    let clean = std::fs::read(dir.path().join("clean")).expect("clean record");
    // Filesystem timestamps come from a coarse clock (a few ms): let it
    // tick between the close above and the ref writes below.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let new = noise(200_000, 99);
    let new_id = {
        let store = Store::open(dir.path(), small_packs()).expect("open");
        store.set_ref(&files[0].2, files[2].0).expect("retarget");
        store.delete_ref(&files[4].2).expect("delete");
        store
            .put_bytes(&new, &["org/new@v1:w.bin"])
            .expect("put")
            .file_id
    };
    std::fs::remove_dir_all(dir.path().join("index")).expect("rm");
    std::fs::create_dir_all(dir.path().join("index")).expect("mkdir");
    copy_tree(snap.path(), &dir.path().join("index"));
    std::fs::write(dir.path().join("clean"), clean).expect("restore the record");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let rec = store.recovery().expect("caught up");
    assert_eq!(rec.reason, tessera::CatchUpReason::RefsChanged);
    assert!(rec.report.problems.is_empty(), "{rec:?}");
    assert_eq!(store.resolve_ref(&files[0].2).expect("ref"), files[2].0);
    assert!(store
        .resolve_ref(&files[4].2)
        .expect_err("deleted")
        .is_not_found());
    assert_eq!(
        store.resolve_ref("org/new@v1:w.bin").expect("new ref"),
        new_id
    );
    let back = store.read(&new_id).expect("open").read_all().expect("read");
    assert!(back == new);
    assert!(store
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
    drop(store);
    // Closed cleanly, the store opens without catching up again.
    let store = Store::open(dir.path(), small_packs()).expect("open");
    assert!(store.recovery().is_none(), "{:?}", store.recovery());
}

/// A catch-up that fails leaves the `dirty` marker, so the next open tries
/// again instead of trusting a half-updated index; stray files where the
/// fan-out directories should be are reported, not fatal.
#[test]
fn a_failed_catch_up_is_retried_by_the_next_open() {
    use tessera::storage::Fs;
    use tessera::testing::{open_on, Fault, FaultStorage, OpKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultStorage::new(dir.path());
    let files = populate_in(&open_on(&fs, dir.path(), small_packs()).expect("create"));
    // The index loses everything, and a stray file sits in recipes/.
    std::fs::remove_dir_all(dir.path().join("index")).expect("rm");
    std::fs::create_dir_all(dir.path().join("index")).expect("mkdir");
    let mut h = fs.create_new("recipes/stray").expect("stray file");
    h.write_all(b"x").expect("write");
    h.sync().expect("sync");
    drop(h);
    fs.sync_dir("recipes").expect("sync");
    // The catch-up's first index write fails.
    fs.inject(Fault {
        kind: Some(OpKind::Index),
        nth: 1,
        sticky: false,
    });
    let err = open_on(&fs, dir.path(), small_packs()).expect_err("catch-up fails");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert!(fs.exists("dirty").expect("stat"), "dirty marker kept");
    let store = open_on(&fs, dir.path(), small_packs()).expect("open");
    let rec = store.recovery().expect("caught up");
    assert_eq!(rec.reason, tessera::CatchUpReason::UncleanShutdown);
    assert!(
        rec.report
            .problems
            .iter()
            .any(|p| p.object == "recipes/stray"),
        "{:?}",
        rec.report.problems
    );
    check_all(&store, &files);
}

/// `verify` re-hashes every chunk but trusts a recipe's SHA-256 field;
/// `read_files` reads each file back and checks it. A recipe rewritten with
/// a valid checksum and another file's SHA-256 (then indexed by `repair
/// index`) would make `sha256:` of the other file serve this one.
#[test]
fn verify_reading_files_back_catches_a_recipe_that_records_another_sha256() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (noise(700_000, 41), noise(500_000, 42));
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let ida = store.put_bytes(&a, &["a"]).expect("put").file_id;
    let idb = store.put_bytes(&b, &["b"]).expect("put").file_id;
    let with_files = VerifyOptions {
        read_files: true,
        ..Default::default()
    };
    let rep = store.verify(with_files).expect("verify");
    assert!(rep.is_clean(), "{:?}", rep.problems);
    assert_eq!(
        (rep.files_read, rep.file_bytes_read),
        (2, (a.len() + b.len()) as u64)
    );
    let sha_b = store.info(&idb).expect("info").sha256;
    store.close().expect("close");

    let path = dir.path().join(tessera::testing::recipe_key(&ida));
    let mut recipe = tessera::testing::Recipe::decode(ida, &std::fs::read(&path).expect("read"))
        .expect("recipe");
    recipe.sha256 = sha_b;
    std::fs::write(&path, recipe.encode()).expect("forge");
    std::fs::remove_dir_all(dir.path().join("index")).expect("rm index");
    Store::repair_index(dir.path(), small_packs()).expect("repair");

    let store = Store::open(dir.path(), small_packs()).expect("open");
    assert!(store
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
    let rep = store.verify(with_files).expect("verify");
    assert_eq!(rep.files_read, 1, "{:?}", rep.problems);
    let [p] = &rep.problems[..] else {
        panic!("expected one problem, got {:?}", rep.problems)
    };
    assert_eq!(p.object, format!("file {ida}"));
    assert!(
        p.detail
            .contains(&format!("records {} bytes and sha256 {sha_b}", a.len())),
        "{}",
        p.detail
    );
}

/// Found by a hostile probe: with the store's lock file deleted while a
/// process had the store open, `repair index` took the index database's own
/// lock error for damage, deleted the live index and rebuilt one beside
/// it (two live indexes). Now that is "in use", and nothing is touched.
#[test]
fn repair_leaves_an_index_in_use_alone_when_the_lock_file_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let store = Store::open(dir.path(), small_packs()).expect("open");
    std::fs::remove_file(dir.path().join("lock")).expect("remove the lock file");
    // (An open fails the same way: one code path. The index's lock is
    // retried for 10 s first, for this process's own earlier index.)
    match Store::repair_index(dir.path(), small_packs()) {
        Err(Error::IndexInUse { .. }) => {}
        other => panic!("want IndexInUse, got {other:?}"),
    }
    // The first process goes on undisturbed, and its writes last.
    let data = noise(200_000, 77);
    let id = store
        .put_bytes(&data, &["org/late@v1:w.bin"])
        .expect("put")
        .file_id;
    store.close().expect("close");
    let store = Store::open(dir.path(), small_packs()).expect("reopen");
    check_all(&store, &files);
    assert!(store.read(&id).expect("open").read_all().expect("read") == data);
    assert!(
        store.recovery().is_none(),
        "closed cleanly: nothing to catch up"
    );
}

/// Found by a hostile probe: with the index lost, a ref whose ref file is
/// damaged read as "not found" (exit 3), which a registry takes for "no
/// such model". It is damage (exit 4). (Two swapped ref files read as not
/// found too: the catch-up now puts them back.)
#[test]
fn a_damaged_or_misplaced_ref_file_without_an_index_entry_is_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let (a, b, c) = (&files[0].2, &files[2].2, &files[3].2);
    let path = |name: &str| dir.path().join(tessera::testing::ref_key(name));
    // Damage a's ref file in its file-id field; swap b's and c's.
    let mut bytes = std::fs::read(path(a)).expect("ref file");
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(path(a), bytes).expect("write");
    let (pb, pc) = (path(b), path(c));
    let (xb, xc) = (
        std::fs::read(&pb).expect("read"),
        std::fs::read(&pc).expect("read"),
    );
    std::fs::write(&pb, xc).expect("write");
    std::fs::write(&pc, xb).expect("write");
    std::fs::remove_dir_all(dir.path().join("index")).expect("lose the index");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            allow_missing_index: true,
            ..small_packs()
        },
    )
    .expect("open");
    match store.resolve_ref(a) {
        Err(e @ Error::RefCorrupt { .. }) => assert!(e.is_corruption(), "{e}"),
        other => panic!("{a}: want RefCorrupt, got {other:?}"),
    }
    // The swapped ones were put back by the open's catch-up (each is a
    // complete copy of the other ref).
    assert_eq!(store.resolve_ref(b).expect("b"), files[2].0);
    assert_eq!(store.resolve_ref(c).expect("c"), files[3].0);
    // A ref that never existed is still simply not found.
    assert!(store
        .resolve_ref("org/never@v1:w.bin")
        .expect_err("absent")
        .is_not_found());
}

/// Found by a hostile probe: two ref files swapped, with the index lost:
/// `repair index` said "no copy of this ref is left to rewrite it from",
/// though each misplaced file is a complete copy of the other ref. It puts
/// each where it belongs.
#[test]
fn repair_puts_swapped_ref_files_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let (b, c) = (&files[2].2, &files[3].2);
    let path = |name: &str| dir.path().join(tessera::testing::ref_key(name));
    let (pb, pc) = (path(b), path(c));
    let (xb, xc) = (
        std::fs::read(&pb).expect("read"),
        std::fs::read(&pc).expect("read"),
    );
    std::fs::write(&pb, &xc).expect("write");
    std::fs::write(&pc, &xb).expect("write");
    std::fs::remove_dir_all(dir.path().join("index")).expect("lose the index");
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    for name in [b, c] {
        assert!(
            rep.healed
                .iter()
                .any(|h| h.object == format!("ref {name}")
                    && h.detail.contains("another ref's name")),
            "{name}: {:?}",
            rep.healed
        );
    }
    assert_eq!(std::fs::read(&pb).expect("read"), xb);
    assert_eq!(std::fs::read(&pc).expect("read"), xc);
    let store = Store::open(dir.path(), small_packs()).expect("open");
    check_all(&store, &files);
}

/// The pack a pack file's bytes are (the hash of its bytes, spec §2).
fn content_id(path: &std::path::Path) -> String {
    tessera::testing::pack_id_of(&std::fs::read(path).expect("read pack")).to_string()
}

fn name_of(path: &std::path::Path) -> String {
    let stem = path.file_stem().expect("pack file name");
    stem.to_string_lossy().into_owned()
}

#[test]
fn repair_stores_packs_found_under_each_others_names_under_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let packs = pack_files(dir.path());
    assert!(packs.len() >= 3, "{packs:?}");
    // Three packs' files rotated: each intact, under another's name (the
    // name of the next one is the one its bytes are).
    let bytes: Vec<Vec<u8>> = packs[..3]
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    for i in 0..3 {
        std::fs::write(&packs[i], &bytes[(i + 1) % 3]).expect("write");
    }
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    for p in &packs[..3] {
        let object = format!("pack {}", name_of(p));
        assert!(
            rep.healed
                .iter()
                .any(|h| h.object == object && h.detail.contains("not the pack of its name")),
            "{object}: {:?}",
            rep.healed
        );
    }
    // Every pack file is now the pack its name says, and the files as
    // found are kept.
    for p in pack_files(dir.path()) {
        assert_eq!(content_id(&p), name_of(&p), "{p:?}");
    }
    for (i, p) in packs[..3].iter().enumerate() {
        let kept = dir
            .path()
            .join("damaged")
            .join(p.strip_prefix(dir.path()).expect("inside the store"));
        assert_eq!(std::fs::read(&kept).expect("kept"), bytes[(i + 1) % 3]);
    }
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    check_all(&store, &files);
    drop(store);
    // Nothing is left to do.
    let again = Store::repair_index(dir.path(), small_packs()).expect("repair again");
    assert!(again.problems.is_empty(), "{:?}", again.problems);
    assert!(
        !again.healed.iter().any(|h| h.object.starts_with("pack ")),
        "{:?}",
        again.healed
    );
}

#[test]
fn a_pack_copied_over_another_is_kept_once_and_what_is_lost_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let packs = pack_files(dir.path());
    let (kept, lost) = (&packs[0], &packs[1]);
    std::fs::copy(kept, lost).expect("copy a pack over another");
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(
        rep.healed
            .iter()
            .any(|h| h.object == format!("pack {}", name_of(lost))
                && h.detail.contains("stored under its own name")),
        "{:?}",
        rep.healed
    );
    // The lost pack's chunks are reported, per file; no pack is.
    assert!(!rep.problems.is_empty());
    assert!(
        rep.problems
            .iter()
            .all(|p| p.object.starts_with("file ") && p.detail.contains("stored nowhere")),
        "{:?}",
        rep.problems
    );
    assert_eq!(content_id(kept), name_of(kept));
    assert!(!lost.exists(), "the copy stays in packs/");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(
        v.problems.iter().all(|p| !p.object.starts_with("pack ")),
        "{:?}",
        v.problems
    );
    // Every file the report does not name reads back whole.
    let mut whole = 0;
    for (id, data, _) in &files {
        if rep
            .problems
            .iter()
            .all(|p| p.object != format!("file {id}"))
        {
            let back = store.read(id).expect("open").read_all().expect("read");
            assert!(back == *data, "file {id} differs");
            whole += 1;
        }
    }
    assert!(whole > 0);
}

#[test]
fn a_put_never_takes_another_object_under_its_packs_name_for_its_pack() {
    let a = noise(400_000, 7);
    let b = noise(500_000, 8);
    // The pack a put of `a` builds, from a store of its own.
    let first = tempfile::tempdir().expect("tempdir");
    Store::open(first.path(), common::opts())
        .expect("open")
        .put_bytes(&a, &["x/a"])
        .expect("put a");
    let [pack_a] = pack_files(first.path()).try_into().expect("one pack");
    // Another store, whose object under that name is another pack.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), common::opts()).expect("open");
    let fb = store.put_bytes(&b, &["x/b"]).expect("put b").file_id;
    let [pack_b] = pack_files(dir.path()).try_into().expect("one pack");
    let planted = dir
        .path()
        .join(pack_a.strip_prefix(first.path()).expect("inside"));
    std::fs::create_dir_all(planted.parent().expect("fanout")).expect("mkdir");
    std::fs::copy(&pack_b, &planted).expect("plant");
    let err = store
        .put_bytes(&a, &["x/a"])
        .expect_err("the name is taken");
    assert!(
        matches!(err, Error::PackNameTaken { .. }) && err.is_corruption(),
        "{err}"
    );
    assert!(err.to_string().contains("repair index"), "{err}");
    assert!(store
        .resolve_ref("x/a")
        .expect_err("not stored")
        .is_not_found());
    // The same for a pack a client uploads (`push`).
    let upload = std::fs::read(&pack_a).expect("read");
    let id_a = tessera::testing::pack_id_of(&upload);
    let err = store
        .admit_pack(id_a, upload.into(), 1 << 30)
        .expect_err("the name is taken");
    assert!(matches!(err, Error::PackNameTaken { .. }), "{err}");
    let back = store.read(&fb).expect("open").read_all().expect("read b");
    assert!(back == b);
    drop(store);
    // Repair stores the planted copy under its own name; then `a` goes in.
    let rep = Store::repair_index(dir.path(), common::opts()).expect("repair");
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    let store = Store::open(dir.path(), common::opts()).expect("open");
    let fa = store.put_bytes(&a, &["x/a"]).expect("put a").file_id;
    let back = store.read(&fa).expect("open").read_all().expect("read a");
    assert!(back == a);
    assert!(store
        .verify(VerifyOptions::default())
        .expect("verify")
        .is_clean());
}
