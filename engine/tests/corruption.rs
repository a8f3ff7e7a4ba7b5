//! Damaged and foreign stores: every kind of damage is reported as its own
//! typed error naming the damaged object, damaged bytes never leave the
//! engine, and the undamaged rest of the store keeps working.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use common::noise;
use tessera::testing::checksum;
use tessera::testing::pack_key;
use tessera::testing::ChunkRef;
use tessera::testing::CONFIG;
use tessera::testing::{
    ChunkEntry, Recipe, RecipeError, StoreConfig, Trailer, FORMAT_VERSION, RECIPE_MAGIC,
    TABLE_ENTRY_LEN, TRAILER_LEN,
};
use tessera::unwrap_io;
use tessera::{ChunkParams, Error, FileId, PackId, ReadMode, Sha256, Stats, Store, StoreOptions};

const MODES: [ReadMode; 2] = [ReadMode::Mmap, ReadMode::Pread];

// ------------------------------------------------------------ fixture

/// A closed store holding a multi-pack "victim" file and an "other" file in
/// packs of its own, plus the location of one chunk in the victim's middle
/// (the one the tests damage).
struct Fixture {
    dir: tempfile::TempDir,
    victim: FileId,
    victim_data: Vec<u8>,
    other: FileId,
    other_data: Vec<u8>,
    /// The chunk to damage (its place in the victim file).
    chunk: ChunkRef,
    /// Its chunk-table entry.
    entry: ChunkEntry,
    /// Chunks in its pack.
    pack_chunks: u32,
    /// The pack file holding it.
    pack_file: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), common::small_packs()).expect("create store");
        let victim_data = noise(3 * 1024 * 1024 + 4321, 101);
        let other_data = noise(600_000, 202);
        let victim = store.put_bytes(&victim_data, &["t/victim"]).expect("put");
        let other = store.put_bytes(&other_data, &["t/other"]).expect("put");
        let layout = store.layout(&victim.file_id).expect("layout");
        let n = layout.chunk_count();
        assert!(n >= 8, "victim has only {n} chunks");
        let chunk = layout.chunk(n / 2).expect("middle chunk");
        let pack = store.pack(&chunk.pack).expect("open pack");
        let entry = pack.entry(chunk.pack_index).expect("entry");
        assert_eq!(entry.id, chunk.id);
        let victim_packs = layout.packs();
        assert!(victim_packs.len() >= 3, "victim in {victim_packs:?}");
        let other_packs = store.info(&other.file_id).expect("info").packs;
        assert!(
            other_packs.iter().all(|p| !victim_packs.contains(p)),
            "the other file must not share a pack with the victim"
        );
        let fx = Fixture {
            victim: victim.file_id,
            victim_data,
            other: other.file_id,
            other_data,
            chunk,
            entry,
            pack_chunks: pack.chunk_count(),
            pack_file: dir.path().join(pack_key(&chunk.pack)),
            dir,
        };
        assert!(fx.pack_file.is_file());
        fx
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn pack(&self) -> PackId {
        self.chunk.pack
    }

    fn chunk_end(&self) -> u64 {
        self.chunk.file_offset + u64::from(self.chunk.len)
    }

    fn open(&self, mode: ReadMode) -> Store {
        reopen(self.path(), mode)
    }

    /// The other file, in other packs, still reads back identical, and the
    /// victim's ranges before the damaged pack still read.
    fn assert_rest_intact(&self, store: &Store) {
        let back = store
            .read(&self.other)
            .expect("open other")
            .read_all()
            .expect("the undamaged file must still read");
        assert!(back == self.other_data, "other file changed");
        let r = store
            .read_range(&self.other, 1000, 5000)
            .expect("range of undamaged file");
        assert_eq!(&r[..], &self.other_data[1000..6000]);
        let layout = store.layout(&self.victim).expect("layout");
        let first = layout.chunk(0).expect("chunk 0");
        if first.pack != self.pack() {
            let r = store
                .read_range(&self.victim, 0, u64::from(first.len))
                .expect("victim chunk in an undamaged pack");
            assert_eq!(&r[..], &self.victim_data[..first.len as usize]);
        }
    }

    /// Reads the victim with a `FileReader` in pieces until it fails;
    /// returns the bytes delivered and the error.
    fn stream_victim(&self, store: &Store) -> (Vec<u8>, Error) {
        let mut r = store.read(&self.victim).expect("open victim");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 100_000];
        loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("reader delivered all {} bytes of a damaged file", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, unwrap_io(e)),
            }
        }
    }

    /// The bytes a reader delivered before failing are exactly the file's
    /// bytes before the damage at `limit`: nothing of the damaged chunk (or
    /// pack), and nothing intact held back because of damage further ahead.
    fn assert_clean_prefix(&self, got: &[u8], limit: u64) {
        assert!(
            got.len() as u64 <= limit,
            "reader delivered {} bytes, past {limit} (damaged chunk spans {}..{})",
            got.len(),
            self.chunk.file_offset,
            self.chunk_end()
        );
        assert_eq!(
            got.len() as u64,
            limit,
            "reader stopped short of the damage (read-ahead error reported early)"
        );
        assert!(
            got == &self.victim_data[..got.len()],
            "delivered bytes are not the original prefix"
        );
    }
}

fn reopen(dir: &Path, mode: ReadMode) -> Store {
    Store::open(
        dir,
        StoreOptions {
            read_mode: mode,
            ..Default::default()
        },
    )
    .expect("reopen store")
}

fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).expect("read file");
    b[at as usize] ^= 0x5a;
    fs::write(path, b).expect("write file");
}

fn assert_chunk_corrupt(e: &Error, fx: &Fixture, detail_has: &str) {
    match e {
        Error::ChunkCorrupt {
            pack,
            offset,
            chunk,
            detail,
        } => {
            assert_eq!(*pack, fx.pack());
            assert_eq!(*chunk, fx.chunk.id);
            assert_eq!(*offset, fx.entry.offset);
            assert!(detail.contains(detail_has), "detail: {detail}");
        }
        other => panic!("expected ChunkCorrupt, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&fx.pack().to_hex()), "{msg}");
    assert!(msg.contains(&fx.chunk.id.to_hex()), "{msg}");
    assert!(e.is_corruption());
    assert!(!e.is_not_found());
}

/// Every way of reading the victim fails with an error `check` accepts.
/// With `whole_pack`, the damage may affect any chunk of the pack, so a
/// streaming reader must stop before the victim's first chunk in it;
/// otherwise only the damaged chunk is affected.
fn assert_victim_unreadable(store: &Store, fx: &Fixture, whole_pack: bool, check: impl Fn(&Error)) {
    let e = store
        .read(&fx.victim)
        .expect("open victim")
        .read_all()
        .expect_err("read_all of a damaged file");
    check(&e);
    let (got, e) = fx.stream_victim(store);
    check(&e);
    let limit = if whole_pack {
        let layout = store.layout(&fx.victim).expect("layout");
        (0..layout.chunk_count())
            .filter_map(|i| layout.chunk(i))
            .find(|c| c.pack == fx.pack())
            .expect("victim has a chunk in the damaged pack")
            .file_offset
    } else {
        fx.chunk.file_offset
    };
    fx.assert_clean_prefix(&got, limit);
    let e = store
        .read_range(&fx.victim, fx.chunk.file_offset, u64::from(fx.chunk.len))
        .expect_err("read_range over a damaged pack");
    check(&e);
    let e = store
        .read_range(&fx.victim, 0, fx.victim_data.len() as u64)
        .expect_err("read_range of the whole damaged file");
    check(&e);
}

// ------------------------------------------------------------ chunk damage

#[test]
fn flipped_chunk_data_byte_is_chunk_corrupt_in_both_read_modes() {
    let fx = Fixture::new();
    flip(
        &fx.pack_file,
        fx.entry.data_offset() + u64::from(fx.entry.stored_len) / 2,
    );
    for mode in MODES {
        let store = fx.open(mode);
        let check = |e: &Error| assert_chunk_corrupt(e, &fx, "does not hash");

        let e = store
            .read(&fx.victim)
            .expect("open")
            .read_all()
            .expect_err("read_all must fail");
        check(&e);

        // Chunk by chunk: everything delivered is the original prefix and
        // none of the damaged chunk's bytes are among it.
        let (got, e) = fx.stream_victim(&store);
        check(&e);
        fx.assert_clean_prefix(&got, fx.chunk.file_offset);

        // Ranges touching the damaged chunk fail, wherever they start.
        let (start, len) = (fx.chunk.file_offset, u64::from(fx.chunk.len));
        for (off, n) in [
            (start, len),
            (start + len / 2, 1),
            (start - 10, 20),
            (0, fx.victim_data.len() as u64),
        ] {
            let e = store
                .read_range(&fx.victim, off, n)
                .expect_err("range over the damaged chunk");
            check(&e);
        }

        // Everything around it still reads: only that chunk is lost.
        let before = store.read_range(&fx.victim, 0, start).expect("before");
        assert!(before[..] == fx.victim_data[..start as usize]);
        let end = fx.chunk_end();
        let rest = fx.victim_data.len() as u64 - end;
        let after = store.read_range(&fx.victim, end, rest).expect("after");
        assert!(after[..] == fx.victim_data[end as usize..]);
        // A streaming read that stops right before the damaged chunk
        // succeeds, although the chunk is within the reader's read-ahead.
        let mut head = Vec::new();
        store
            .read(&fx.victim)
            .expect("open")
            .take(start)
            .read_to_end(&mut head)
            .expect("read up to the damaged chunk");
        assert!(head[..] == fx.victim_data[..start as usize]);
        let mut r = store.read(&fx.victim).expect("open");
        r.seek(SeekFrom::Start(end)).expect("seek");
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).expect("read past the damage");
        assert!(tail[..] == fx.victim_data[end as usize..]);

        fx.assert_rest_intact(&store);
    }
}

/// `verify` reports the damaged pack and counts its bytes as read (it
/// read and hashed them; a report of "1 read, 0 B" was found confusing).
#[test]
fn verify_counts_the_bytes_of_a_damaged_pack_it_read() {
    let fx = Fixture::new();
    let len = fs::metadata(&fx.pack_file).expect("pack").len();
    flip(
        &fx.pack_file,
        fx.entry.data_offset() + u64::from(fx.entry.stored_len) / 2,
    );
    let store = fx.open(ReadMode::Pread);
    let rep = store
        .verify(tessera::VerifyOptions::default())
        .expect("verify");
    assert!(
        rep.problems
            .iter()
            .any(|p| p.object == format!("pack {}", fx.pack())),
        "{:?}",
        rep.problems
    );
    assert_eq!(rep.packs_read, rep.packs);
    let total: u64 = fs::read_dir(fx.path().join("packs"))
        .expect("packs dir")
        .flat_map(|d| fs::read_dir(d.expect("entry").path()).expect("subdir"))
        .map(|f| f.expect("pack").metadata().expect("meta").len())
        .sum();
    assert!(len > 0 && total >= len);
    assert_eq!(rep.bytes_read, total);
}

#[test]
fn flipped_chunk_record_header_byte_is_chunk_corrupt() {
    let fx = Fixture::new();
    let original = fs::read(&fx.pack_file).expect("read pack");
    // Magic, compression code, raw length, stored length, id, check value.
    for at in [1u64, 4, 9, 13, 30, 50] {
        flip(&fx.pack_file, fx.entry.offset + at);
        for mode in MODES {
            let store = fx.open(mode);
            assert_victim_unreadable(&store, &fx, false, |e| {
                assert_chunk_corrupt(e, &fx, "record header")
            });
            fx.assert_rest_intact(&store);
        }
        fs::write(&fx.pack_file, &original).expect("restore pack");
    }
    // Restored, it reads again: the failures above were the damage only.
    let store = fx.open(ReadMode::Pread);
    let back = store.read(&fx.victim).expect("open").read_all();
    assert!(back.expect("restored pack reads") == fx.victim_data);
}

// ------------------------------------------------------------ pack damage

fn assert_pack_corrupt(e: &Error, fx: &Fixture, detail_has: &str) {
    match e {
        Error::PackCorrupt { pack, detail } => {
            assert_eq!(*pack, fx.pack());
            assert!(detail.contains(detail_has), "detail: {detail}");
        }
        other => panic!("expected PackCorrupt, got {other:?}"),
    }
    assert!(e.to_string().contains(&fx.pack().to_hex()), "{e}");
    assert!(e.is_corruption());
}

#[test]
fn flipped_chunk_table_byte_is_pack_corrupt() {
    let fx = Fixture::new();
    let len = fs::metadata(&fx.pack_file).expect("stat").len();
    let tail = &fs::read(&fx.pack_file).expect("read")[(len - TRAILER_LEN as u64) as usize..];
    let trailer = Trailer::decode(tail).expect("trailer");
    assert_eq!(trailer.chunk_count, fx.pack_chunks);
    assert_eq!(
        trailer.table_offset + u64::from(trailer.chunk_count) * TABLE_ENTRY_LEN as u64,
        len - TRAILER_LEN as u64
    );
    // A byte of the damaged chunk's table entry (its stored length).
    flip(
        &fx.pack_file,
        trailer.table_offset + u64::from(fx.chunk.pack_index) * TABLE_ENTRY_LEN as u64 + 41,
    );
    for mode in MODES {
        let store = fx.open(mode);
        assert_victim_unreadable(&store, &fx, true, |e| {
            assert_pack_corrupt(e, &fx, "checksum")
        });
        fx.assert_rest_intact(&store);
    }
}

#[test]
fn damaged_trailer_is_pack_corrupt() {
    let fx = Fixture::new();
    let original = fs::read(&fx.pack_file).expect("read pack");
    let trailer_at = original.len() as u64 - TRAILER_LEN as u64;
    // The checksum, then the chunk count (which no longer fits the length).
    for (at, detail) in [
        (trailer_at + 20, "checksum"),
        (trailer_at + 8, "does not fit"),
    ] {
        flip(&fx.pack_file, at);
        let store = fx.open(ReadMode::Pread);
        assert_victim_unreadable(&store, &fx, true, |e| assert_pack_corrupt(e, &fx, detail));
        fx.assert_rest_intact(&store);
        drop(store);
        fs::write(&fx.pack_file, &original).expect("restore pack");
    }
}

#[test]
fn truncated_pack_is_pack_truncated() {
    let fx = Fixture::new();
    let full = fs::metadata(&fx.pack_file).expect("stat").len();
    for cut in [full / 2, full - 1, 10] {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&fx.pack_file)
            .expect("open pack");
        f.set_len(cut).expect("truncate");
        drop(f);
        for mode in MODES {
            let store = fx.open(mode);
            assert_victim_unreadable(&store, &fx, true, |e| {
                match e {
                    Error::PackTruncated { pack, len, .. } => {
                        assert_eq!(*pack, fx.pack());
                        assert_eq!(*len, cut);
                    }
                    other => panic!("cut to {cut}: expected PackTruncated, got {other:?}"),
                }
                assert!(e.to_string().contains(&fx.pack().to_hex()), "{e}");
                assert!(e.is_corruption());
            });
            fx.assert_rest_intact(&store);
        }
    }
}

#[test]
fn deleted_pack_is_pack_missing() {
    let fx = Fixture::new();
    fs::remove_file(&fx.pack_file).expect("delete pack");
    for mode in MODES {
        let store = fx.open(mode);
        assert_victim_unreadable(&store, &fx, true, |e| {
            match e {
                Error::PackMissing { pack, object } => {
                    assert_eq!(*pack, fx.pack());
                    assert_eq!(object, &fx.pack_file.display().to_string());
                }
                other => panic!("expected PackMissing, got {other:?}"),
            }
            assert!(e.to_string().contains(&fx.pack().to_hex()), "{e}");
        });
        fx.assert_rest_intact(&store);
    }
}

#[test]
fn pack_of_another_version_is_unsupported_version() {
    let fx = Fixture::new();
    let mut b = fs::read(&fx.pack_file).expect("read pack");
    b[8..12].copy_from_slice(&(FORMAT_VERSION + 6).to_le_bytes());
    fs::write(&fx.pack_file, &b).expect("write pack");
    for mode in MODES {
        let store = fx.open(mode);
        assert_victim_unreadable(&store, &fx, true, |e| {
            match e {
                Error::UnsupportedVersion {
                    object,
                    found,
                    supported,
                } => {
                    assert!(object.contains(&fx.pack().to_hex()), "object: {object}");
                    assert_eq!(*found, FORMAT_VERSION + 6);
                    assert_eq!(*supported, FORMAT_VERSION);
                }
                other => panic!("expected UnsupportedVersion, got {other:?}"),
            }
            assert!(e.to_string().contains(&fx.pack().to_hex()), "{e}");
        });
        fx.assert_rest_intact(&store);
    }
    // Not a pack at all (bad magic) is PackCorrupt.
    b[0] ^= 0xff;
    fs::write(&fx.pack_file, &b).expect("write pack");
    let store = fx.open(ReadMode::Pread);
    assert_victim_unreadable(&store, &fx, true, |e| assert_pack_corrupt(e, &fx, "magic"));
    fx.assert_rest_intact(&store);
}

// ------------------------------------------------------------ store config

fn new_store_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::open(dir.path());
    store.put_bytes(b"hello", &["t/hello"]).expect("put");
    dir
}

#[test]
fn store_of_an_unknown_version_is_unsupported_version() {
    let dir = new_store_dir();
    let cfg_path = dir.path().join(CONFIG);
    let cfg = StoreConfig::decode(&fs::read(&cfg_path).expect("read config")).expect("config");
    let future = StoreConfig { version: 99, ..cfg }.encode();
    fs::write(&cfg_path, &future).expect("write config");
    for create in [false, true] {
        let e = Store::open(
            dir.path(),
            StoreOptions {
                create,
                ..Default::default()
            },
        )
        .expect_err("a version-99 store must not open");
        match &e {
            Error::UnsupportedVersion {
                object,
                found,
                supported,
            } => {
                assert!(
                    object.contains(&dir.path().display().to_string()),
                    "{object}"
                );
                assert_eq!(*found, 99);
                assert_eq!(*supported, tessera::testing::STORE_VERSION);
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        assert!(e.to_string().contains("99"), "{e}");
        // Never "repaired" by overwriting.
        assert_eq!(fs::read(&cfg_path).expect("read config"), future);
    }
}

#[test]
fn garbage_config_is_config_corrupt() {
    let dir = new_store_dir();
    let cfg_path = dir.path().join(CONFIG);
    let good = fs::read(&cfg_path).expect("read config");
    let mut flipped = good.clone();
    flipped[20] ^= 1;
    let cases: [(&str, Vec<u8>); 4] = [
        ("short garbage", b"this is not a store config".to_vec()),
        ("noise of the right length", noise(good.len(), 5)),
        ("flipped chunk parameter", flipped),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        fs::write(&cfg_path, &bytes).expect("write config");
        for create in [false, true] {
            let e = Store::open(
                dir.path(),
                StoreOptions {
                    create,
                    ..Default::default()
                },
            )
            .expect_err(what);
            match &e {
                Error::ConfigCorrupt { object, .. } => {
                    assert_eq!(object, &cfg_path.display().to_string(), "{what}")
                }
                other => panic!("{what}: expected ConfigCorrupt, got {other:?}"),
            }
            assert!(e.to_string().contains(CONFIG), "{e}");
            assert!(e.is_corruption());
            assert_eq!(fs::read(&cfg_path).expect("read config"), bytes, "{what}");
        }
    }
    // Put back, the store opens and its data is intact.
    fs::write(&cfg_path, &good).expect("write config");
    let store = reopen(dir.path(), ReadMode::Mmap);
    let id = store.resolve("t/hello").expect("ref");
    assert_eq!(
        store.read(&id).expect("open").read_all().expect("read"),
        b"hello"
    );
}

#[test]
fn chunk_parameters_are_fixed_for_the_life_of_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let custom = ChunkParams {
        min: 8 * 1024,
        avg: 32 * 1024,
        max: 128 * 1024,
        normalization: 2,
    };
    let open = |chunking: Option<ChunkParams>, create: bool| {
        Store::open(
            dir.path(),
            StoreOptions {
                chunking,
                create,
                ..Default::default()
            },
        )
    };
    let data = noise(500_000, 8);
    let id = {
        let store = open(Some(custom), true).expect("create with custom params");
        assert_eq!(store.chunk_params(), custom);
        store.put_bytes(&data, &[]).expect("put").file_id
    };
    for other in [
        ChunkParams::default(),
        ChunkParams {
            normalization: 1,
            ..custom
        },
        ChunkParams {
            max: 256 * 1024,
            ..custom
        },
    ] {
        for create in [false, true] {
            let e = open(Some(other), create).expect_err("other chunk params");
            match &e {
                Error::ChunkParamsMismatch {
                    location: path,
                    stored,
                    requested,
                } => {
                    assert_eq!(path, &dir.path().display().to_string());
                    assert_eq!(stored, &custom.to_string());
                    assert_eq!(requested, &other.to_string());
                }
                e => panic!("expected ChunkParamsMismatch, got {e:?}"),
            }
            let msg = e.to_string();
            assert!(msg.contains(&custom.to_string()), "{msg}");
            assert!(msg.contains(&other.to_string()), "{msg}");
        }
    }
    for chunking in [Some(custom), None] {
        let store = open(chunking, false).expect("same params (or none) open");
        assert_eq!(store.chunk_params(), custom);
        assert_eq!(store.stats().expect("stats").chunking, custom);
        // Same params chunk the same: putting the data again adds nothing.
        let rep = store.put_bytes(&data, &[]).expect("put again");
        assert_eq!(rep.file_id, id);
        assert_eq!(rep.new_chunks, 0);
        assert!(store.read(&id).expect("open").read_all().expect("read") == data);
    }
}

// ------------------------------------------------------------ not found

#[test]
fn unknown_names_are_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::open(dir.path());
    let rep = store
        .put_bytes(&noise(50_000, 1), &["t/known"])
        .expect("put");
    let unknown = FileId([0xab; 32]);

    let checks: Vec<(&str, Error)> = vec![
        ("read", store.read(&unknown).expect_err("read")),
        ("info", store.info(&unknown).expect_err("info")),
        ("layout", store.layout(&unknown).expect_err("layout")),
        (
            "read_range",
            store.read_range(&unknown, 0, 1).expect_err("read_range"),
        ),
        (
            "by_sha256",
            store.by_sha256(&Sha256([0xcd; 32])).expect_err("sha"),
        ),
        (
            "resolve hex",
            store.resolve(&unknown.to_hex()).expect_err("resolve id"),
        ),
        (
            "resolve ref",
            store.resolve("t/unknown").expect_err("resolve ref"),
        ),
        (
            "resolve_ref",
            store.resolve_ref("t/unknown").expect_err("resolve_ref"),
        ),
        (
            "delete_ref",
            store
                .delete_ref("t/unknown")
                .expect_err("delete missing ref"),
        ),
        (
            "set_ref to unknown file",
            store.set_ref("t/new", unknown).expect_err("set_ref"),
        ),
    ];
    for (what, e) in checks {
        assert!(
            e.is_not_found(),
            "{what}: expected NotFound, got {e:?} ({e})"
        );
        assert!(matches!(e, Error::NotFound { .. }), "{what}");
        assert!(!e.is_corruption(), "{what}");
        let msg = e.to_string();
        assert!(msg.contains("not found"), "{what}: {msg}");
        assert!(
            msg.contains(&unknown.to_hex())
                || msg.contains(&"cd".repeat(32))
                || msg.contains("t/unknown"),
            "{what}: message does not name the object: {msg}"
        );
    }
    // The failed calls changed nothing.
    assert!(store
        .resolve_ref("t/new")
        .expect_err("t/new")
        .is_not_found());
    assert_eq!(store.resolve("t/known").expect("known"), rep.file_id);
    let refs = store.list_refs("").expect("refs");
    assert_eq!(refs, vec![("t/known".to_string(), rep.file_id)]);
    assert_eq!(store.stats().expect("stats").refs, 1);
    // Deleting a ref twice: the second time it is gone.
    store.delete_ref("t/known").expect("delete");
    assert!(store
        .delete_ref("t/known")
        .expect_err("again")
        .is_not_found());
    assert_eq!(store.stats().expect("stats").refs, 0);
}

// ------------------------------------------------------------ hostile recipes

// A global allocator that records, per thread and only while asked to, the
// largest single allocation, so a test can show a decoder rejects a hostile
// length field without first allocating what it claims.
struct Tracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; `note`
// only touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f`, returning its result and the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|m| m.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, LARGEST.with(|m| m.get()))
}

/// A recipe with the given header fields, `body` after the header, and a
/// valid checksum (so the decoder gets past the checksum to the counts).
fn hostile_recipe(version: u32, size: u64, terms: u64, chunks: u64, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&RECIPE_MAGIC);
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&terms.to_le_bytes());
    b.extend_from_slice(&chunks.to_le_bytes());
    b.extend_from_slice(&[0x11; 32]);
    b.extend_from_slice(body);
    let sum = checksum(&b);
    b.extend_from_slice(&sum);
    b
}

#[test]
fn hostile_recipe_counts_are_rejected_without_allocating() {
    // The instrument works: it sees a large allocation.
    let (v, largest) = largest_allocation(|| Vec::<u8>::with_capacity(1 << 20));
    assert!(largest >= 1 << 20 && v.capacity() >= 1 << 20);
    let file = FileId([3; 32]);
    let one_term = [0u8; 48];
    let cases: [(&str, u64, u64, &[u8]); 8] = [
        ("u64::MAX terms", u64::MAX, 0, &[]),
        ("u64::MAX chunks", 0, u64::MAX, &[]),
        ("u64::MAX of both", u64::MAX, u64::MAX, &[]),
        // 2^24 terms would be a 768 MiB allocation that usually succeeds.
        ("2^24 terms", 1 << 24, 0, &[]),
        ("2^24 chunks", 0, 1 << 24, &one_term),
        // Counts whose byte sizes wrap to exactly the buffer length in
        // 64-bit arithmetic: 48 * 2^62 = 12 * 2^64 and 36 * 2^62 = 9 * 2^64.
        ("2^62 terms (wraps to 0 bytes)", 1 << 62, 0, &[]),
        ("2^62 chunks (wraps to 0 bytes)", 0, 1 << 62, &[]),
        ("1 + 2^62 chunks (wraps to one term)", 1, 1 << 62, &one_term),
    ];
    for (what, terms, chunks, body) in cases {
        let b = hostile_recipe(FORMAT_VERSION, 0, terms, chunks, body);
        let (r, largest) = largest_allocation(|| Recipe::decode(file, &b));
        assert!(
            matches!(r, Err(RecipeError::Corrupt(_))),
            "{what}: expected Corrupt, got {r:?}"
        );
        assert!(
            largest < 64 * 1024,
            "{what}: decoding allocated {largest} bytes at once"
        );
    }
    // An intact recipe of another version is a version error, not "corrupt".
    let b = hostile_recipe(FORMAT_VERSION + 1, 0, 0, 0, &[]);
    assert_eq!(
        Recipe::decode(file, &b),
        Err(RecipeError::Version(FORMAT_VERSION + 1))
    );
    // The same header with sane counts does decode (the cases above failed
    // on their counts, not on something else): an empty file's recipe.
    let empty = tessera::FileIdHasher::new().finish();
    let b = hostile_recipe(FORMAT_VERSION, 0, 0, 0, &[]);
    let r = Recipe::decode(empty, &b).expect("empty recipe decodes");
    assert!(r.terms.is_empty() && r.chunks.is_empty());
}

// ------------------------------------------------------------ reopen

#[test]
fn reopened_store_reads_everything_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "t/empty"),
        (b"x".to_vec(), "t/one-byte"),
        (noise(200_000, 1), "t/small"),
        (noise(3 * 1024 * 1024 + 5, 2), "t/multi-pack"),
        (noise(200_000, 1), "t/small-again"),
    ];
    let (ids, refs, stats): (Vec<FileId>, Vec<(String, FileId)>, Stats) = {
        let store = Store::open(dir.path(), common::small_packs()).expect("create");
        let mut ids = Vec::new();
        for (data, r) in &files {
            ids.push(store.put_bytes(data, &[*r]).expect("put").file_id);
        }
        assert!(store.info(&ids[3]).expect("info").packs.len() >= 3);
        store.set_ref("u/alias", ids[2]).expect("set ref");
        store.set_ref("t/small", ids[1]).expect("move ref");
        store.delete_ref("t/small-again").expect("delete ref");
        let refs = store.list_refs("").expect("refs");
        assert_eq!(refs.len(), 5);
        (ids, refs, store.stats().expect("stats"))
    };
    assert_eq!(stats.files, 4, "two puts of the same bytes are one file");
    assert_eq!(stats.refs, 5);
    for mode in MODES {
        let store = reopen(dir.path(), mode);
        for ((data, _), id) in files.iter().zip(&ids) {
            let back = store.read(id).expect("open").read_all().expect("read");
            assert!(
                back == *data,
                "{} bytes did not survive a reopen",
                data.len()
            );
            assert_eq!(store.info(id).expect("info").size, data.len() as u64);
            if !data.is_empty() {
                let n = data.len() as u64;
                let r = store.read_range(id, n / 3, n / 2).expect("range");
                assert!(r[..] == data[(n / 3) as usize..(n / 3 + n / 2) as usize]);
            }
        }
        assert_eq!(store.list_refs("").expect("refs"), refs);
        assert_eq!(store.resolve("t/small").expect("ref"), ids[1]);
        assert_eq!(store.resolve("u/alias").expect("ref"), ids[2]);
        assert!(store
            .resolve("t/small-again")
            .expect_err("gone")
            .is_not_found());
        assert_eq!(
            store.read_ref_file("u/alias").expect("ref file"),
            Some(ids[2])
        );
        assert_eq!(
            store.read_ref_file("t/small").expect("ref file"),
            Some(ids[1])
        );
        assert_eq!(
            store.read_ref_file("t/small-again").expect("ref file"),
            None
        );
        assert_eq!(store.stats().expect("stats"), stats);
    }
}
