//! Repair never turns a readable file into an unreadable one, and `verify`
//! sees everything on disk: recipe and ref files that are damaged or missing
//! are healed from the index's verified copies (by `repair index` and by the
//! catch-up of an open after a crash); what cannot be healed is reported by
//! the open, by `verify` and by reads, never silently dropped.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_tree, noise, small_packs};
use tessera::testing::{model_key, recipe_key, ref_key};
use tessera::{Error, FileId, Store, StoreOptions};
use tessera::{Problem, VerifyOptions};
use tessera_synth::{DType, ModelSpec};

struct Fixture {
    dir: tempfile::TempDir,
    files: Vec<(FileId, Vec<u8>, String)>,
}

impl Fixture {
    /// Three files over several packs, each with a ref.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), small_packs()).expect("open");
        let mut files = Vec::new();
        for (i, n) in [200_000usize, 2_500_000, 700_000].into_iter().enumerate() {
            let data = noise(n, 40 + i as u64);
            let name = format!("org/m@v1:part{i}.bin");
            let rep = store.put_bytes(&data, &[&name]).expect("put");
            files.push((rep.file_id, data, name));
        }
        Fixture { dir, files }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn open(&self) -> Store {
        Store::open(self.root(), small_packs()).expect("open")
    }

    /// Every file reads back, and every ref names its file.
    fn check_all(&self, store: &Store) {
        for (id, data, name) in &self.files {
            let back = store.read(id).expect("open").read_all().expect("read");
            assert!(back == *data, "file {id} differs");
            assert_eq!(store.resolve_ref(name).expect("ref"), *id);
        }
    }

    /// Marks the store as not closed cleanly, as a crash would.
    fn leave_dirty(&self) {
        std::fs::write(self.path("dirty"), b"1").expect("dirty marker");
    }

    /// Deletes the index's contents, as a lost disk or a careless user would.
    fn lose_index(&self) {
        let index = self.path("index");
        std::fs::remove_dir_all(&index).expect("rm index");
        std::fs::create_dir_all(&index).expect("mkdir index");
    }
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).expect("read");
    let i = at.min(b.len() - 1);
    b[i] ^= 0x10;
    std::fs::write(path, &b).expect("write");
}

fn verify(store: &Store) -> tessera::VerifyReport {
    store.verify(VerifyOptions::default()).expect("verify")
}

fn names(ps: &[Problem]) -> String {
    format!("{ps:#?}")
}

#[test]
fn repair_heals_a_damaged_or_deleted_recipe_file_from_the_index() {
    for how in ["flipped", "deleted"] {
        let fx = Fixture::new();
        let (id, _, _) = &fx.files[1];
        let rel = recipe_key(id);
        let original = std::fs::read(fx.path(&rel)).expect("recipe");
        match how {
            "flipped" => flip(&fx.path(&rel), 100),
            _ => std::fs::remove_file(fx.path(&rel)).expect("rm"),
        }
        // verify sees it and names the file; reads still work from the
        // index's copy.
        let store = fx.open();
        let v = verify(&store);
        let obj = format!("file {id}");
        assert!(
            v.problems
                .iter()
                .any(|p| p.object == obj && p.detail.contains("recipe file")),
            "{how}: {}",
            names(&v.problems)
        );
        fx.check_all(&store);
        drop(store);
        let rep = Store::repair_index(fx.root(), small_packs()).expect("repair");
        assert!(rep.problems.is_empty(), "{how}: {}", names(&rep.problems));
        assert!(
            rep.healed.iter().any(|p| p.object == obj),
            "{how}: not healed: {}",
            names(&rep.healed)
        );
        assert_eq!(
            std::fs::read(fx.path(&rel)).expect("recipe"),
            original,
            "{how}"
        );
        let store = fx.open();
        fx.check_all(&store);
        let v = verify(&store);
        assert!(v.is_clean(), "{how}: {}", names(&v.problems));
    }
}

#[test]
fn repair_heals_a_damaged_ref_file_from_the_index() {
    let fx = Fixture::new();
    let (id, _, name) = &fx.files[0];
    let rel = ref_key(name);
    flip(&fx.path(&rel), 20);
    let store = fx.open();
    let v = verify(&store);
    assert!(!v.is_clean());
    assert!(
        v.problems
            .iter()
            .any(|p| p.object.contains(name.as_str()) || p.object == rel),
        "{}",
        names(&v.problems)
    );
    drop(store);
    let rep = Store::repair_index(fx.root(), small_packs()).expect("repair");
    assert!(rep.problems.is_empty(), "{}", names(&rep.problems));
    assert_eq!(rep.healed.len(), 1, "{}", names(&rep.healed));
    let store = fx.open();
    assert_eq!(store.resolve_ref(name).expect("ref"), *id);
    assert_eq!(store.read_ref_file(name).expect("ref file"), Some(*id));
    fx.check_all(&store);
    assert!(verify(&store).is_clean());
}

#[test]
fn the_open_after_a_crash_heals_recipe_and_ref_files() {
    let fx = Fixture::new();
    let (id0, _, _) = &fx.files[0];
    let (_, _, name2) = &fx.files[2];
    flip(&fx.path(&recipe_key(id0)), 80);
    std::fs::remove_file(fx.path(&recipe_key(&fx.files[1].0))).expect("rm recipe");
    flip(&fx.path(&ref_key(name2)), 30);
    fx.leave_dirty();
    let store = fx.open();
    let rec = store.recovery().expect("caught up");
    assert!(
        rec.report.problems.is_empty(),
        "{}",
        names(&rec.report.problems)
    );
    assert_eq!(rec.report.healed.len(), 3, "{}", names(&rec.report.healed));
    fx.check_all(&store);
    let v = verify(&store);
    assert!(v.is_clean(), "{}", names(&v.problems));
}

/// A damaged recipe file with its index lost cannot be healed: the open
/// that rebuilt the index reports it, `verify` keeps reporting it (and the
/// ref that names the lost file), and reading the ref says the data is
/// damaged rather than "not found".
#[test]
fn damage_with_a_lost_index_is_reported_never_dropped() {
    let fx = Fixture::new();
    let (lost, _, name) = fx.files[1].clone();
    flip(&fx.path(&recipe_key(&lost)), 90);
    fx.lose_index();
    let store = fx.open();
    let rec = store.recovery().expect("caught up");
    let obj = format!("file {lost}");
    assert!(
        rec.report.problems.iter().any(|p| p.object == obj),
        "the open did not report the lost file: {}",
        names(&rec.report.problems)
    );
    assert!(
        rec.report
            .problems
            .iter()
            .any(|p| p.object == format!("ref {name}")),
        "the open did not report the ref: {}",
        names(&rec.report.problems)
    );
    // The other files are back.
    for (id, data, n) in [&fx.files[0], &fx.files[2]] {
        assert!(store.read(id).expect("open").read_all().expect("read") == *data);
        assert_eq!(store.resolve_ref(n).expect("ref"), *id);
    }
    match store.resolve_ref(&name) {
        Err(e @ Error::RefDangling { .. }) => {
            assert!(e.is_corruption() && !e.is_not_found());
            assert!(e.to_string().contains(&lost.to_hex()), "{e}");
        }
        other => panic!("expected RefDangling, got {other:?}"),
    }
    for _ in 0..2 {
        // Every verify, not only the first, says so.
        let v = verify(&store);
        assert!(!v.is_clean());
        assert!(
            v.problems
                .iter()
                .any(|p| p.object == obj && p.detail.contains("damaged")),
            "{}",
            names(&v.problems)
        );
        assert!(
            v.problems.iter().any(|p| p.object == format!("ref {name}")),
            "{}",
            names(&v.problems)
        );
    }
    drop(store);
    // repair index cannot bring it back either, and says so.
    let rep = Store::repair_index(fx.root(), small_packs()).expect("repair");
    assert!(
        rep.problems.iter().any(|p| p.object == obj),
        "{}",
        names(&rep.problems)
    );
    // Deleting the ref acknowledges its loss; the damaged recipe file is
    // still reported until it is removed.
    let store = fx.open();
    store.delete_ref(&name).expect("rm ref");
    // Its ref file is now a tombstone.
    assert_eq!(store.read_ref_file(&name).expect("ref file"), None);
    assert!(store.resolve_ref(&name).is_err());
    let v = verify(&store);
    assert_eq!(v.problems.len(), 1, "{}", names(&v.problems));
    assert_eq!(v.problems[0].object, obj);
}

/// A ref file damaged while the index is lost: nothing holds that ref any
/// more, which is reported, and the damaged file is kept (it is all that is
/// left of the ref); the rest of the store comes back.
#[test]
fn a_damaged_ref_file_with_a_lost_index_is_reported_and_kept() {
    let fx = Fixture::new();
    let (_, _, name) = fx.files[0].clone();
    let rel = ref_key(&name);
    flip(&fx.path(&rel), 50);
    fx.lose_index();
    let store = fx.open();
    let rec = store.recovery().expect("caught up");
    assert!(
        rec.report.problems.iter().any(|p| p.object == rel),
        "{}",
        names(&rec.report.problems)
    );
    assert!(fx.path(&rel).exists(), "the damaged ref file was deleted");
    assert!(store.resolve_ref(&name).is_err());
    for (id, data, n) in &fx.files[1..] {
        assert!(store.read(id).expect("open").read_all().expect("read") == *data);
        assert_eq!(store.resolve_ref(n).expect("ref"), *id);
    }
    let v = verify(&store);
    assert!(
        v.problems.iter().any(|p| p.object == rel),
        "{}",
        names(&v.problems)
    );
}

/// verify reports one problem per damaged object, not one per recipe term.
#[test]
fn verify_counts_each_damaged_object_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        pack_target_bytes: 256 << 10,
        ..small_packs()
    };
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    // Interleave two files' new chunks so each file has many terms.
    let a = noise(3_000_000, 1);
    let b = noise(3_000_000, 2);
    let mut ing = store.ingest();
    ing.add("input", &a[..], &["a"], &mut |_| {}).expect("a");
    ing.add("input", &b[..], &["b"], &mut |_| {}).expect("b");
    ing.commit().expect("commit");
    let ia = store.resolve_ref("a").expect("a");
    let packs = store.info(&ia).expect("info").packs;
    assert!(packs.len() >= 3, "{packs:?}");
    drop(store);
    for p in &packs {
        let rel = tessera::testing::pack_key(p);
        std::fs::remove_file(dir.path().join(rel)).expect("rm pack");
    }
    let store = Store::open(dir.path(), opts).expect("open");
    let v = store.verify(VerifyOptions::default()).expect("verify");
    let mut objects: Vec<&str> = v.problems.iter().map(|p| p.object.as_str()).collect();
    objects.sort();
    let n = objects.len();
    objects.dedup();
    assert_eq!(
        objects.len(),
        n,
        "an object is reported twice: {}",
        names(&v.problems)
    );
    // The packs, file a, and whatever of b lived in those packs.
    assert!(n <= packs.len() + 2, "{}", names(&v.problems));
    assert!(v.problems.iter().any(|p| p.object == format!("file {ia}")));
}

/// A file that changes while it is ingested is refused, naming the file;
/// nothing is stored for it.
#[test]
fn a_source_that_changes_while_it_is_read_is_refused() {
    for how in ["shrinks", "grows", "is rewritten"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            dir.path(),
            StoreOptions {
                ingest_batch_bytes: 1 << 20,
                ..small_packs()
            },
        )
        .expect("open");
        let input = dir.path().join("input.bin");
        let data = noise(8 << 20, 9);
        std::fs::write(&input, &data).expect("write input");
        let mut changed = false;
        let mut ing = store.ingest();
        let r = ing.add_file(&input, &["x"], &mut |_| {
            if changed {
                return;
            }
            changed = true;
            match how {
                "shrinks" => std::fs::OpenOptions::new()
                    .write(true)
                    .open(&input)
                    .and_then(|f| f.set_len(100_000))
                    .expect("truncate"),
                "grows" => {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&input)
                        .expect("open");
                    f.write_all(&noise(1 << 20, 10)).expect("append");
                }
                _ => {
                    // Same size, other bytes, and a later modification time.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let mut other = data.clone();
                    other[(7 << 20) + 5] ^= 1;
                    std::fs::write(&input, &other).expect("rewrite");
                }
            }
        });
        match r {
            Err(e @ Error::SourceChanged { .. }) => {
                assert!(e.to_string().contains("input.bin"), "{how}: {e}");
            }
            other => panic!("{how}: expected SourceChanged, got {other:?}"),
        }
        assert!(ing.is_empty(), "{how}: the changed file was staged");
        drop(ing);
        assert!(store.resolve_ref("x").is_err(), "{how}");
        assert_eq!(store.stats().expect("stats").files, 0, "{how}");
    }
}

/// A store is created only in a new or empty directory; a directory that
/// holds a store's files but lost its config is a damaged store.
#[test]
fn stores_are_created_only_in_empty_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("mine");
    std::fs::create_dir_all(root.join("tmp")).expect("mkdir");
    std::fs::write(root.join("tmp/notes.txt"), b"my notes").expect("user file");
    std::fs::write(root.join("report.pdf"), b"pdf").expect("user file");
    match Store::open(&root, small_packs()) {
        Err(e @ Error::NotAStore { .. }) => assert!(e.to_string().contains("not empty"), "{e}"),
        other => panic!("expected NotAStore, got {other:?}"),
    }
    // Nothing was touched or added.
    assert_eq!(
        std::fs::read(root.join("tmp/notes.txt")).expect("kept"),
        b"my notes"
    );
    let mut entries: Vec<String> = std::fs::read_dir(&root)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["report.pdf", "tmp"]);

    // An empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    drop(Store::open(&empty, small_packs()).expect("create in an empty dir"));

    // A store without its config is damaged, not new.
    let fx = Fixture::new();
    let config = std::fs::read(fx.path("tessera.store")).expect("config");
    std::fs::remove_file(fx.path("tessera.store")).expect("rm config");
    for create in [true, false] {
        match Store::open(
            fx.root(),
            StoreOptions {
                create,
                ..small_packs()
            },
        ) {
            Err(e @ Error::ConfigMissing { .. }) => {
                assert!(e.to_string().contains("repair config"), "{e}");
                assert!(e.is_corruption());
            }
            other => panic!("expected ConfigMissing, got {other:?}"),
        }
    }
    assert!(
        !fx.path("tessera.store").exists(),
        "the config was re-created"
    );
    // Other parameters than the store's are refused; the right ones are
    // confirmed against the stored files and the config comes back.
    let wrong = tessera::ChunkParams {
        avg: 32 * 1024,
        ..Default::default()
    };
    let err = Store::repair_config(fx.root(), wrong, &small_packs()).expect_err("wrong params");
    assert!(err.to_string().contains("not chunked with"), "{err}");
    assert!(!fx.path("tessera.store").exists());
    let rep = Store::repair_config(fx.root(), Default::default(), &small_packs()).expect("repair");
    assert!(rep.boundaries_checked > 10, "{rep:?}");
    assert_eq!(
        std::fs::read(fx.path("tessera.store")).expect("config"),
        config
    );
    let store = fx.open();
    fx.check_all(&store);
    drop(store);
    // An intact config is not rewritten.
    assert!(Store::repair_config(fx.root(), Default::default(), &small_packs()).is_err());
}

/// Ref names never collide with file ids or sha256 aliases, nor read as
/// other names (white space at either end, empty, `.` or `..` segments,
/// invisible or direction-changing characters): such names are refused,
/// and explicit `file:`, `sha256:` and `ref:` forms resolve. Names with
/// spaces, dots and non-ASCII letters inside are fine.
#[test]
fn names_are_unambiguous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let a = store
        .put_bytes(&noise(100_000, 1), &["org/a"])
        .expect("put");
    let b = store.put_bytes(&noise(100_000, 2), &[]).expect("put");
    let hex = b.file_id.to_hex();
    for bad in [
        hex.clone(),
        hex.to_uppercase(),
        format!("file:{hex}"),
        "sha256:x".into(),
        "ref:x".into(),
        // Found by a hostile probe: names that read as other names.
        " ".into(),
        " org/a".into(),
        "org/a ".into(),
        "/org/a".into(),
        "org/a/".into(),
        "org//a".into(),
        "org/../a".into(),
        "org/./a".into(),
        "org/\u{202E}txt.exe".into(),
        "org/a\u{200B}".into(),
        // Found by the second probe: more that render as nothing.
        "org/\u{00AD}a".into(),
        "org/\u{3164}".into(),
        "org/a\u{FE0F}".into(),
        "org/a\u{E0001}".into(),
        "org/a\u{034F}".into(),
        // Look-alikes with another Unicode form (NFKC).
        "org/A\u{030A}sa".into(),
        "org\u{FF0F}a".into(),
        "org/\u{FB01}ne".into(),
        "org/\u{FF41}".into(),
    ] {
        let e = store.set_ref(&bad, a.file_id).expect_err(&bad);
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        assert!(store.put_bytes(b"z", &[bad.as_str()]).is_err(), "{bad}");
    }
    assert_eq!(store.resolve(&hex).expect("id"), b.file_id);
    assert_eq!(
        store.resolve(&format!("file:{hex}")).expect("file:"),
        b.file_id
    );
    let sha = b.sha256.to_hex();
    assert_eq!(store.resolve(&sha).expect("sha"), b.file_id);
    assert_eq!(
        store.resolve(&format!("sha256:{sha}")).expect("sha256:"),
        b.file_id
    );
    assert!(store
        .resolve(&format!("file:{sha}"))
        .expect_err("a sha256 is not a file id")
        .is_not_found());
    assert_eq!(store.resolve("org/a").expect("ref"), a.file_id);
    assert_eq!(store.resolve("ref:org/a").expect("ref:"), a.file_id);
    for good in [
        "org/my model@v1.0:weights/..bin",
        "org/モデル@v1:a b.bin",
        "org/\u{00C5}sa",
        "a",
    ] {
        store.set_ref(good, a.file_id).expect(good);
        assert_eq!(store.resolve(good).expect(good), a.file_id);
    }
    // A hostile name is not echoed in full.
    let long = "x".repeat(10_000);
    let e = store.set_ref(&long, a.file_id).expect_err("too long");
    assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
    let e = store.resolve(&"y".repeat(10_000)).expect_err("unknown");
    assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
}

/// A reader keeps at most `pack_cache` packs mapped (plus those in use).
#[cfg(target_os = "linux")]
#[test]
fn pack_mappings_are_bounded_by_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        pack_target_bytes: 256 << 10,
        pack_cache: 3,
        read_ahead_chunks: 2,
        ..small_packs()
    };
    let store = Store::open(dir.path(), opts).expect("open");
    let data = noise(6_000_000, 3);
    let id = store.put_bytes(&data, &[]).expect("put").file_id;
    assert!(store.info(&id).expect("info").packs.len() > 10);
    let back = store.read(&id).expect("open").read_all().expect("read");
    assert!(back == data);
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let mapped: std::collections::HashSet<&str> = maps
        .lines()
        .filter(|l| l.contains(&*dir.path().to_string_lossy()) && l.ends_with(".pack"))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert!(
        mapped.len() <= 3,
        "{} packs mapped: {mapped:?}",
        mapped.len()
    );
}

/// The pack (file) of a store holding `file`'s first chunk.
fn pack_of(fx: &Fixture, file: &FileId) -> (tessera::PackId, PathBuf) {
    let store = fx.open();
    let pack = store.info(file).expect("info").packs[0];
    (pack, fx.path(&tessera::testing::pack_key(&pack)))
}

/// A pack whose chunk table is damaged cannot be opened; `repair index`
/// finds its records by scanning them (spec §6), re-packs the verified
/// chunks, rewrites the recipes that named it, and keeps the damaged pack
/// under `damaged/`. Every file reads back and verify is clean.
#[test]
fn repair_salvages_a_pack_whose_footer_is_damaged() {
    let fx = Fixture::new();
    let (pack, path) = pack_of(&fx, &fx.files[1].0);
    let len = std::fs::metadata(&path).expect("stat").len() as usize;
    // A byte of the chunk table (just before the 56-byte trailer).
    flip(&path, len - 56 - 20);
    {
        let store = fx.open();
        let e = store.read(&fx.files[1].0).and_then(|r| r.read_all());
        assert!(
            e.is_err_and(|e| e.is_corruption()),
            "the damage is not seen"
        );
    }
    let rep = Store::repair_index(fx.root(), small_packs()).expect("repair");
    assert!(
        rep.problems.is_empty(),
        "{}\nhealed: {}",
        names(&rep.problems),
        names(&rep.healed)
    );
    // Only the table was damaged: every record verifies, so the pack is
    // rebuilt byte for byte under its own name.
    assert!(
        rep.healed
            .iter()
            .any(|h| h.object == format!("pack {pack}") && h.detail.contains("rewritten whole")),
        "{}",
        names(&rep.healed)
    );
    let kept = fx.path(&format!("damaged/{}", tessera::testing::pack_key(&pack)));
    assert_eq!(std::fs::metadata(&kept).expect("kept").len() as usize, len);
    let rebuilt = std::fs::read(&path).expect("rebuilt pack");
    assert_eq!(tessera::testing::pack_id_of(&rebuilt), pack);
    let store = fx.open();
    fx.check_all(&store);
    let v = verify(&store);
    assert!(v.is_clean(), "{}", names(&v.problems));
    assert_eq!(v.damaged_kept, 1);
}

/// A truncated pack (and one with a damaged record header in the middle):
/// the records before the cut, and after the damaged header, are salvaged;
/// a file whose chunks are gone is reported, never read as other bytes.
#[test]
fn repair_salvages_what_verifies_of_a_truncated_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        pack_target_bytes: 4 << 20,
        ..small_packs()
    };
    let store = Store::open(dir.path(), opts.clone()).expect("open");
    // Three files in one pack, in this order.
    let datas: Vec<Vec<u8>> = (0..3).map(|i| noise(600_000, 70 + i)).collect();
    let mut ing = store.ingest();
    for d in &datas {
        ing.add("f", &d[..], &[], &mut |_| {}).expect("add");
    }
    let reports = ing.commit().expect("commit");
    let files: Vec<(FileId, Vec<u8>)> = reports.iter().map(|r| r.file_id).zip(datas).collect();
    let pack = store.info(&files[0].0).expect("info").packs[0];
    assert!(files
        .iter()
        .all(|(id, _)| store.info(id).expect("info").packs == [pack]));
    drop(store);
    let path = dir.path().join(tessera::testing::pack_key(&pack));
    let mut bytes = std::fs::read(&path).expect("read");
    // Damage the first record header of the second file's data, and cut the
    // pack in the middle of the third file's data.
    let second = bytes.len() / 3 + 1000;
    let hdr = (second..)
        .find(|&i| bytes[i..].starts_with(b"TCHK"))
        .expect("a record");
    bytes[hdr + 10] ^= 0xff;
    bytes.truncate(bytes.len() * 5 / 6);
    std::fs::write(&path, &bytes).expect("write");
    let rep = Store::repair_index(dir.path(), opts.clone()).expect("repair");
    assert!(
        rep.healed
            .iter()
            .any(|h| h.object == format!("pack {pack}")),
        "{}",
        names(&rep.healed)
    );
    let store = Store::open(dir.path(), opts).expect("open");
    // The report's figures are of the index it left (salvaged pack
    // included), and names each file once, with what is lost after salvage
    // (a probe found the catch-up's count and salvage's side by side).
    let stats = store.stats().expect("stats");
    assert_eq!((rep.packs, rep.chunks), (stats.packs, stats.chunks));
    for (id, _) in &files {
        let object = format!("file {id}");
        let n = rep.problems.iter().filter(|p| p.object == object).count();
        assert!(
            n <= 1,
            "{object} reported {n} times: {}",
            names(&rep.problems)
        );
    }
    // The first file is whole again.
    let back = store
        .read(&files[0].0)
        .expect("open")
        .read_all()
        .expect("read");
    assert!(back == files[0].1);
    // The others lost chunks: reported, and reads fail rather than lie.
    for (id, _) in &files[1..] {
        assert!(
            rep.problems
                .iter()
                .any(|p| p.object == format!("file {id}")),
            "{}",
            names(&rep.problems)
        );
        match store.read(id).and_then(|r| r.read_all()) {
            Ok(_) => panic!("file {id} read back despite lost chunks"),
            Err(e) => assert!(e.is_corruption(), "{e}"),
        }
    }
    // Every chunk of the second file but the one whose header was damaged
    // came back (they are readable by range).
    let layout = store.layout(&files[1].0).expect("layout");
    let readable = (0..layout.chunk_count())
        .filter(|&i| {
            let c = layout.chunk(i).expect("chunk");
            store
                .read_range(&files[1].0, c.file_offset, u64::from(c.len))
                .is_ok()
        })
        .count();
    assert_eq!(readable, layout.chunk_count() - 1);
}

/// A ref file that goes missing (a careless `rm`, a lost directory entry)
/// while the index names the ref is damage, not a deletion: `verify`
/// reports it, and both `repair index` and the catch-up of an open after a
/// crash rewrite it from the index — the ref is never dropped (which would
/// let GC delete a named file). `ref rm` still deletes for good: it leaves
/// a tombstone, which is how recovery tells the two apart.
///
/// The open notices a ref file removed since the last clean close (its
/// fan-out directory's modification time is in the clean-close record's
/// stamp) and catches up; where it cannot tell (the directory's time put
/// back: a coarse clock), `verify` reports the loss and `repair` heals it.
#[test]
fn a_missing_ref_file_is_rewritten_from_the_index() {
    for how in ["repair", "open", "crash"] {
        let fx = Fixture::new();
        let (id, _, name) = fx.files[1].clone();
        let rel = ref_key(&name);
        let fanout = fx.path(&rel).parent().expect("fan-out dir").to_path_buf();
        let modified = std::fs::metadata(&fanout)
            .and_then(|m| m.modified())
            .expect("mtime");
        // Filesystem times may come from a coarse clock (a few ms): let it
        // tick between the ref writes of the fixture and the removal.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::remove_file(fx.path(&rel)).expect("rm ref file");
        if how == "repair" {
            std::fs::File::open(&fanout)
                .and_then(|d| d.set_modified(modified))
                .expect("put the time back");
            let store = fx.open();
            let v = verify(&store);
            assert!(!v.is_clean(), "{how}: a missing ref file is clean");
            drop(store);
            let rep = Store::repair_index(fx.root(), small_packs()).expect("repair");
            assert!(rep.problems.is_empty(), "{how}: {}", names(&rep.problems));
            assert!(
                rep.healed.iter().any(|p| p.object.contains(name.as_str())),
                "{how}: not healed: {}",
                names(&rep.healed)
            );
        } else {
            if how == "crash" {
                fx.leave_dirty();
            }
            let store = fx.open();
            let rec = store.recovery().expect("caught up");
            assert_eq!(
                rec.reason,
                if how == "crash" {
                    tessera::CatchUpReason::UncleanShutdown
                } else {
                    tessera::CatchUpReason::RefsChanged
                },
                "{how}"
            );
            assert!(
                rec.report
                    .healed
                    .iter()
                    .any(|p| p.object.contains(name.as_str())),
                "{how}: not healed: {}",
                names(&rec.report.healed)
            );
        }
        let store = fx.open();
        assert_eq!(
            store.read_ref_file(&name).expect("ref file"),
            Some(id),
            "{how}"
        );
        fx.check_all(&store);
        let v = verify(&store);
        assert!(v.is_clean(), "{how}: {}", names(&v.problems));
        let gc = store
            .gc(&tessera::GcOptions {
                grace: std::time::Duration::ZERO,
                ..Default::default()
            })
            .expect("gc");
        assert_eq!(gc.dead_files, 0, "{how}: gc deleted a named file");
        fx.check_all(&store);
        // A deletion is still one, across a crash (its ref file is a
        // tombstone), and so is a second.
        store.delete_ref(&name).expect("ref rm");
        drop(store);
        fx.leave_dirty();
        let store = fx.open();
        assert!(store.resolve_ref(&name).is_err(), "{how}: ref rm undone");
        assert_eq!(
            store.read_ref_file(&name).expect("tombstone"),
            None,
            "{how}"
        );
        assert!(fx.path(&rel).exists(), "{how}: no tombstone");
        assert!(verify(&store).is_clean(), "{how}");
        let again = store.delete_ref(&name).expect_err("deleted twice");
        assert!(again.is_not_found(), "{how}: {again}");
        store.set_ref(&name, id).expect("set again");
        assert_eq!(store.resolve_ref(&name).expect("ref"), id, "{how}");
    }
}

/// A model description is trusted only when it checks (spec §7.2): one
/// whose tensor offset was changed (still valid JSON), another file's copied
/// over it, or an unchecked version 1 object is reported by `verify` and
/// recomputed from the file on the next read — a tensor read never returns
/// other bytes.
#[test]
fn a_model_description_that_does_not_check_is_recomputed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    // Two safetensors files from the synthetic model generator.
    let spec = ModelSpec::base(7, 2 << 20, DType::BF16);
    let file = spec.to_bytes();
    let (tensor, range) = spec.tensor_ranges().into_iter().next().expect("a tensor");
    let w = file[range.start as usize..range.end as usize].to_vec();
    let id = store
        .put_bytes(&file, &["org/m@v1:m.safetensors"])
        .expect("put")
        .file_id;
    let other = ModelSpec::base(8, 2 << 20, DType::BF16).to_bytes();
    let other_id = store
        .put_bytes(&other, &["org/m@v2:m.safetensors"])
        .expect("put")
        .file_id;
    let path = dir.path().join(model_key(&id));
    let good = std::fs::read(&path).expect("description");
    let text = String::from_utf8(good.clone()).expect("utf-8");
    let info = store.model_info(&id).expect("info");
    let w_off = info
        .tensors
        .iter()
        .find(|t| t.name == tensor)
        .and_then(|t| t.offset)
        .expect("described");
    assert_eq!(w_off, range.start);
    // The offset's last digit, changed: still JSON, another range.
    let needle = format!("\"offset\":{w_off},");
    assert!(text.contains(&needle), "{text}");
    let shifted = text.replacen(&needle, &format!("\"offset\":{},", w_off + 1), 1);
    let v1 = {
        let v: serde_json::Value = serde_json::from_str(&shifted).expect("json");
        serde_json::json!({"version": 1, "info": v["info"]}).to_string()
    };
    // What an older sniffer wrote: version 2 (the offset shifted, so a
    // description trusted for its version alone would serve other bytes).
    let v2 = shifted.replacen("\"version\":3", "\"version\":2", 1);
    assert_ne!(v2, shifted);
    let copied = std::fs::read(dir.path().join(model_key(&other_id))).expect("other");
    let v1_again = v1.clone().into_bytes();
    for (how, bytes, why) in [
        ("offset changed", shifted.into_bytes(), "checksum"),
        ("another file's", copied, "another file"),
        ("version 1", v1.into_bytes(), "version 1"),
        ("version 2", v2.into_bytes(), "version 2"),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        let v = verify(&store);
        assert!(
            v.problems
                .iter()
                .any(|p| p.object == format!("file {id}") && p.detail.contains(why)),
            "{how}: {}",
            names(&v.problems)
        );
        let (off, len) = store.tensor_range(&id, &tensor).expect("tensor");
        assert_eq!((off, len), (w_off, w.len() as u64), "{how}");
        let got = store.read_range(&id, off, len).expect("read");
        assert!(got[..] == w[..], "{how}: other bytes");
        assert_eq!(std::fs::read(&path).expect("rewritten"), good, "{how}");
        assert!(verify(&store).is_clean(), "{how}");
    }
    // `repair index` recomputes them too (a store written by an engine
    // whose descriptions were version 1 is healed in one command).
    std::fs::write(&path, &v1_again).expect("write");
    drop(store);
    let rep = Store::repair_index(dir.path(), small_packs()).expect("repair");
    assert!(
        rep.healed
            .iter()
            .any(|p| p.object == format!("file {id}") && p.detail.contains("model description")),
        "{}",
        names(&rep.healed)
    );
    assert_eq!(std::fs::read(&path).expect("rewritten"), good);
    let store = Store::open(dir.path(), small_packs()).expect("open");
    assert!(verify(&store).is_clean());
}

/// Ingest never deduplicates against a pack that is gone: a new file
/// sharing chunks with a lost pack is stored whole and reads back, and
/// putting a file whose packs were lost again stores its chunks again and
/// makes it readable (its recipe replaced in the index and on disk) — the
/// caller who still has the bytes can always heal the store.
#[test]
fn a_put_never_names_chunks_in_a_lost_pack_and_a_re_put_heals() {
    for how in ["new file", "re-put"] {
        let fx = Fixture::new();
        let (id, data, name) = fx.files[1].clone();
        let packs = fx.open().info(&id).expect("info").packs;
        assert!(packs.len() >= 3, "{how}: {} packs", packs.len());
        // Two lost packs: stored again, their chunks share one new pack (a
        // single lost pack could come back byte for byte, under its name).
        for p in &packs[..2] {
            std::fs::remove_file(fx.path(&tessera::testing::pack_key(p))).expect("rm pack");
        }
        let store = Store::open(fx.root(), common::opts()).expect("open");
        assert!(store.read(&id).and_then(|r| r.read_all()).is_err(), "{how}");
        if how == "new file" {
            let mut longer = data.clone();
            longer.extend_from_slice(b"one more line");
            let b = store
                .put_bytes(&longer, &["org/m@v2:longer.bin"])
                .expect("put");
            let back = store
                .read(&b.file_id)
                .expect("open")
                .read_all()
                .expect("read");
            assert!(back == longer, "a new file named chunks of a lost pack");
            let named = store.info(&b.file_id).expect("info").packs;
            assert!(!named.iter().any(|p| packs[..2].contains(p)), "{how}");
        } else {
            let again = store.put_bytes(&data, &[&name]).expect("re-put");
            assert_eq!(again.file_id, id);
            let named = store.info(&id).expect("info").packs;
            let on_disk: Vec<bool> = named
                .iter()
                .map(|p| fx.path(&tessera::testing::pack_key(p)).exists())
                .collect();
            assert!(
                !named.iter().any(|p| packs[..2].contains(p)),
                "{how}: {named:?} {on_disk:?} lost {:?}",
                &packs[..2]
            );
            fx.check_all(&store);
            let v = verify(&store);
            assert!(v.is_clean(), "{how}: {}", names(&v.problems));
            drop(store);
            let store = fx.open();
            fx.check_all(&store);
        }
    }
}

/// Found by a hostile probe: an index older than a GC (restored from a
/// copy) made the catch-up rewrite the recipes of the files that GC had
/// deleted, from the index's copies: they came back unreadable (their pack
/// was gone too), `verify` and `repair` reported damage, and the default
/// grace kept GC from clearing it for an hour. A file no ref file names
/// whose recipe and packs are gone was collected: the catch-up drops it,
/// and its gone packs, from the index.
#[test]
fn an_index_older_than_a_gc_does_not_bring_collected_files_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = noise(700_000, 91);
    let gone = noise(900_000, 92);
    let store = Store::open(dir.path(), small_packs()).expect("open");
    let keep_id = store.put_bytes(&keep, &["m/keep"]).expect("put").file_id;
    let gone_id = store.put_bytes(&gone, &["m/gone"]).expect("put").file_id;
    store.close().expect("close");
    let old_index = dir.path().join("old-index");
    copy_tree(&dir.path().join("index"), &old_index);

    let store = Store::open(dir.path(), small_packs()).expect("open");
    store.delete_ref("m/gone").expect("rm");
    let r = store
        .gc(&tessera::GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        })
        .expect("gc");
    assert_eq!(r.dead_files, 1);
    assert!(r.dead_packs >= 1);
    store.close().expect("close");

    std::fs::remove_dir_all(dir.path().join("index")).expect("rm index");
    std::fs::rename(&old_index, dir.path().join("index")).expect("restore the old index");
    let store = Store::open(dir.path(), small_packs()).expect("open");
    assert!(!store.contains(&gone_id).expect("contains"));
    let rep = store.verify(VerifyOptions::default()).expect("verify");
    assert!(rep.is_clean(), "{}", names(&rep.problems));
    assert!(
        store
            .read(&keep_id)
            .expect("open")
            .read_all()
            .expect("read")
            == keep
    );
    assert!(store
        .resolve_ref("m/gone")
        .expect_err("deleted")
        .is_not_found());
    // What the index dropped is stored again by a new put, and reads.
    let again = store
        .put_bytes(&gone, &["m/gone"])
        .expect("put again")
        .file_id;
    assert_eq!(again, gone_id);
    assert!(
        store
            .read(&gone_id)
            .expect("open")
            .read_all()
            .expect("read")
            == gone
    );
}
