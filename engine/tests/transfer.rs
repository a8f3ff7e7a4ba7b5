//! Incremental transfer between two stores, through the engine's API (the
//! HTTP server and client are tested in `engine/http`): pull moves only the
//! chunks the local store lacks, push uploads only the chunks the server
//! lacks, and nothing a peer sends is kept before it is verified.

mod common;

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use common::{dir_bytes, noise, opts};
use sha2::Digest;
use tessera::{verify_fetched, ChunkId, Error, FileId, PutReport, Reconstruction, Sha256, Store};
use tessera_synth::{DType, ModelSpec};

fn model(spec: &ModelSpec) -> Vec<u8> {
    let mut v = Vec::new();
    spec.reader().read_to_end(&mut v).expect("generate");
    v
}

/// Pulls `file` from `server` into `client` the way a client over HTTP
/// does; returns the bytes fetched and the number of requests.
fn pull(server: &Store, client: &Store, file: &FileId, gap: u64) -> (u64, usize) {
    let rec = server.reconstruction(file, None).expect("reconstruction");
    rec.check().expect("a server's reconstruction checks");
    let plan = client.plan_download(&rec, gap, 16 << 20).expect("plan");
    let mut fetched = 0;
    for f in &plan.fetches {
        let body = server
            .pack_bytes(&f.pack)
            .and_then(|p| p.read(f.start, f.len()))
            .expect("range");
        fetched += body.len() as u64;
        let chunks = verify_fetched(f, &body).expect("verify");
        client.admit_chunks(&chunks).expect("admit");
    }
    let chunks: Vec<(ChunkId, u32)> = rec.chunks().map(|(_, c)| (c.id, c.len)).collect();
    let rep = client
        .register_file(*file, rec.size, &chunks, Some(rec.sha256), &[])
        .expect("register");
    assert_eq!(rep.file_id, *file);
    let want = server.read(file).expect("open").read_all().expect("read");
    let got = client.read(file).expect("open").read_all().expect("read");
    assert!(got == want, "the registered file reads other bytes");
    (fetched, plan.fetches.len())
}

#[test]
fn pull_moves_only_missing_chunks_and_push_only_new_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Store::open(tmp.path().join("server"), opts()).expect("server");
    let client = Store::open(tmp.path().join("client"), opts()).expect("client");
    let base = ModelSpec::base(5, 12 << 20, DType::BF16);
    let (tuned, _) = base.finetune(6, 0.10);
    let (v1, v2) = (model(&base), model(&tuned));
    let id1 = server.put_bytes(&v1, &["m@v1"]).expect("put v1").file_id;
    let id2 = server.put_bytes(&v2, &["m@v2"]).expect("put v2").file_id;

    // v1 into an empty client: everything.
    let (got1, _) = pull(&server, &client, &id1, 1 << 20);
    assert!(client.read(&id1).expect("open").read_all().expect("read") == v1);
    assert!(
        got1 >= v1.len() as u64 / 2,
        "fetched only {got1} bytes for v1"
    );

    // v2: only what v2 adds. Its new chunks' records, exactly, with no gap
    // allowed; at most 5% more with coalescing.
    let rec2 = server.reconstruction(&id2, None).expect("rec");
    let plan0 = client.plan_download(&rec2, 0, 16 << 20).expect("plan");
    let needed: u64 = plan0
        .fetches
        .iter()
        .flat_map(|f| &f.chunks)
        .map(|c| c.record_len)
        .sum();
    assert_eq!(plan0.fetch_bytes, needed);
    assert!(plan0.reused_chunks > 0);
    let (got2, requests) = pull(&server, &client, &id2, 64 << 10);
    assert!(
        got2 as f64 <= needed as f64 * 1.05,
        "pulled {got2} bytes for v2, its new chunks are {needed}"
    );
    assert!(
        got2 < v2.len() as u64 / 4,
        "v2 pulled {got2} of {} bytes",
        v2.len()
    );
    eprintln!(
        "v2: {got2} bytes in {requests} requests ({needed} needed, file {})",
        v2.len()
    );
    assert!(client.read(&id2).expect("open").read_all().expect("read") == v2);
    // Pulling again fetches nothing.
    let again = client.plan_download(&rec2, 0, 16 << 20).expect("plan");
    assert!(again.fetches.is_empty());

    // A ranged reconstruction covers exactly the chunks of the range.
    let r = server
        .reconstruction(&id2, Some((1_000_000, 300_000)))
        .expect("range");
    r.check().expect("check");
    assert!(!r.is_whole_file());
    let covered: u64 = r.terms.iter().map(|t| t.unpacked_len).sum();
    assert!((300_000..300_000 + 2 * (256 << 10)).contains(&covered));

    // Push: a fine-tune made on the client sends about its changed tensors.
    let (tuned3, _) = base.finetune(7, 0.10);
    let v3 = model(&tuned3);
    let id3 = client.put_bytes(&v3, &[]).expect("local put").file_id;
    let list = client.chunk_list(&id3).expect("chunks");
    let ids: Vec<ChunkId> = list.iter().map(|c| c.0).collect();
    let missing = server.missing_chunks(&ids).expect("missing");
    assert!(!missing.is_empty() && missing.len() < ids.len() / 2);
    let (pack, bytes) = client.export_pack(&missing).expect("export");
    let sent = bytes.len();
    let admitted = server
        .admit_pack(pack, Bytes::from(bytes), u64::MAX)
        .expect("admit");
    assert_eq!(admitted.new_chunks as usize, missing.len());
    let rep = server
        .register_file(id3, v3.len() as u64, &list, None, &["m@v3"])
        .expect("register");
    assert!(rep.new_file);
    assert_eq!(rep.sha256, client.info(&id3).expect("info").sha256);
    assert!(server.read(&id3).expect("open").read_all().expect("read") == v3);
    assert!(sent < v3.len() / 4, "pushed {sent} of {} bytes", v3.len());

    // A fork (the same file under another name) sends no chunk data.
    let list2 = server.chunk_list(&id2).expect("chunks");
    let ids2: Vec<ChunkId> = list2.iter().map(|c| c.0).collect();
    assert!(client.missing_chunks(&ids2).expect("missing").is_empty());
    let fork = client
        .register_file(id2, v2.len() as u64, &list2, None, &["fork@v1"])
        .expect("fork");
    assert!(!fork.new_file);
    assert_eq!(client.resolve("fork@v1").expect("ref"), id2);
}

#[test]
fn hostile_uploads_are_refused_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Store::open(tmp.path().join("server"), opts()).expect("server");
    let client = Store::open(tmp.path().join("client"), opts()).expect("client");
    server
        .put_bytes(&noise(300_000, 1), &["keep"])
        .expect("put");
    let data = noise(900_000, 2);
    let id = client.put_bytes(&data, &[]).expect("put").file_id;
    let list = client.chunk_list(&id).expect("chunks");
    let ids: Vec<ChunkId> = list.iter().map(|c| c.0).collect();
    let (pack, good) = client.export_pack(&ids).expect("export");
    let before = (
        server.stats().expect("stats"),
        dir_bytes(&tmp.path().join("server/packs")),
    );
    let refused = |what: &str, r: tessera::Result<tessera::AdmitReport>| match r {
        Err(e @ Error::Rejected { .. }) => eprintln!("{what}: {e}"),
        other => panic!("{what}: expected Rejected, got {other:?}"),
    };
    // A flipped byte anywhere: the id no longer matches.
    let mut bad = good.clone();
    bad[200] ^= 1;
    refused(
        "flipped byte",
        server.admit_pack(pack, Bytes::from(bad.clone()), u64::MAX),
    );
    // The same, claiming the id of the damaged bytes: a chunk fails.
    let mut h = tessera::testing::pack_id_of(&bad);
    refused(
        "damaged chunk",
        server.admit_pack(h, Bytes::from(bad), u64::MAX),
    );
    // Truncated.
    let cut = good[..good.len() - 100].to_vec();
    h = tessera::testing::pack_id_of(&cut);
    refused(
        "truncated",
        server.admit_pack(h, Bytes::from(cut), u64::MAX),
    );
    // Garbage.
    let junk = noise(5000, 3);
    h = tessera::testing::pack_id_of(&junk);
    refused("garbage", server.admit_pack(h, Bytes::from(junk), u64::MAX));
    // A pack whose chunks decode to more than the caller allows, refused
    // from its chunk table (one byte over is enough).
    match server.admit_pack(pack, Bytes::from(good.clone()), data.len() as u64 - 1) {
        Err(e @ Error::Rejected { .. }) => assert!(e.to_string().contains("decode to more"), "{e}"),
        other => panic!("over the raw limit: expected Rejected, got {other:?}"),
    }
    // A registration naming chunks the server does not hold.
    match server.register_file(id, data.len() as u64, &list, None, &["x"]) {
        Err(e @ Error::ChunksMissing { .. }) => {
            assert!(e.to_string().contains("not stored"), "{e}")
        }
        other => panic!("expected ChunksMissing, got {other:?}"),
    }
    // A chunk list that does not hash to the file id, and a wrong size.
    let mut wrong = list.clone();
    wrong.swap(0, 1);
    assert!(matches!(
        server.register_file(id, data.len() as u64, &wrong, None, &[]),
        Err(Error::Rejected { .. })
    ));
    assert!(matches!(
        server.register_file(id, 5, &list, None, &[]),
        Err(Error::Rejected { .. })
    ));
    let after = (
        server.stats().expect("stats"),
        dir_bytes(&tmp.path().join("server/packs")),
    );
    assert_eq!(before, after, "a refused upload left something behind");
    // A pack holding a chunk twice counts it once as new.
    let (twice, twice_bytes) = client.export_pack(&[ids[0], ids[0]]).expect("export");
    let rep = server
        .admit_pack(twice, Bytes::from(twice_bytes), u64::MAX)
        .expect("admit");
    assert_eq!((rep.chunks, rep.new_chunks), (2, 1));
    // The good pack is admitted; a wrong sha256 claim is still refused.
    server
        .admit_pack(pack, Bytes::from(good), u64::MAX)
        .expect("admit");
    let other = tessera::Sha256([7; 32]);
    match server.register_file(id, data.len() as u64, &list, Some(other), &[]) {
        Err(e @ Error::Rejected { .. }) => assert!(e.to_string().contains("sha256"), "{e}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!server.contains(&id).expect("contains"));
    server
        .register_file(id, data.len() as u64, &list, None, &["x"])
        .expect("register");
    assert!(server.read(&id).expect("open").read_all().expect("read") == data);
    // Registering a stored file again only adds the ref.
    let again = server
        .register_file(id, data.len() as u64, &list, None, &["y"])
        .expect("register again");
    assert_eq!((again.file_id, again.new_chunks), (id, 0));
    assert_eq!(server.resolve("y").expect("ref y"), id);
}

#[test]
fn tampered_downloads_are_caught() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Store::open(tmp.path().join("server"), opts()).expect("server");
    let client = Store::open(tmp.path().join("client"), opts()).expect("client");
    let data = noise(700_000, 4);
    let id = server.put_bytes(&data, &[]).expect("put").file_id;
    let rec = server.reconstruction(&id, None).expect("rec");
    // A reconstruction whose chunk list was changed no longer hashes to the
    // file id.
    let mut forged: Reconstruction = rec.clone();
    forged.terms[0].chunks[0].id = ChunkId::of(b"other");
    assert!(forged.check().is_err());
    // A response whose bytes were changed fails verification.
    let plan = client.plan_download(&rec, 0, 16 << 20).expect("plan");
    let f = &plan.fetches[0];
    let body = server
        .pack_bytes(&f.pack)
        .and_then(|p| p.read(f.start, f.len()))
        .expect("range");
    let mut bad = body.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(verify_fetched(f, &Bytes::from(bad)).is_err());
    assert!(verify_fetched(f, &body.slice(..body.len() - 1)).is_err());
    // Serialized and back, it is the same reconstruction.
    let json = serde_json::to_string(&rec).expect("json");
    let back: Reconstruction = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, rec);
}

/// Pulls the file of `rec` from `server` into `client` through an
/// assembly writing `out`: small requests, added in reverse order (the
/// worst order for hashing in file order) from `threads` threads at once,
/// holding at most `hold` bytes when given.
fn assemble(
    server: &Store,
    client: &Store,
    rec: &Reconstruction,
    out: &Path,
    threads: usize,
    hold: Option<u64>,
) -> tessera::Result<PutReport> {
    let plan = client.plan_download(rec, 0, 256 << 10).expect("plan");
    let file = std::fs::File::create(out).expect("create output");
    let a = client.assemble(rec, &plan, file)?;
    if let Some(h) = hold {
        a.set_hold_bytes(h);
    }
    let fetches: Vec<_> = plan.fetches.iter().rev().collect();
    let per = fetches.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let runs: Vec<_> = fetches
            .chunks(per)
            .map(|part| {
                let a = &a;
                s.spawn(move || -> tessera::Result<()> {
                    for f in part {
                        let body = server.pack_bytes(&f.pack)?.read(f.start, f.len())?;
                        a.add(&verify_fetched(f, &body)?)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for r in runs {
            r.join().expect("adding thread")?;
        }
        Ok::<(), Error>(())
    })?;
    let read_back = a.chunks_read_back();
    let rep = a.finish(&[])?;
    if hold == Some(0) {
        assert!(read_back > 0, "nothing was read back");
    }
    Ok(rep)
}

/// The output and the client's copy of `file` are `want`, and the client
/// registered it with its true SHA-256.
fn assert_assembled(client: &Store, file: &FileId, out: &Path, want: &[u8], rep: &PutReport) {
    let sha = Sha256(sha2::Sha256::digest(want).into());
    assert_eq!(
        (rep.file_id, rep.sha256, rep.size),
        (*file, sha, want.len() as u64)
    );
    assert!(
        std::fs::read(out).expect("read output") == want,
        "the output differs"
    );
    assert_eq!(client.info(file).expect("registered").sha256, sha);
    let stored = client.read(file).expect("open").read_all().expect("read");
    assert!(stored == want, "the registered file differs");
}

#[test]
fn an_assembled_pull_writes_and_registers_the_file_without_reading_it_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Store::open(tmp.path().join("server"), opts()).expect("server");
    let client = Store::open(tmp.path().join("client"), opts()).expect("client");
    let base = ModelSpec::base(8, 6 << 20, DType::BF16);
    let (tuned, _) = base.finetune(9, 0.10);
    let (v1, v2) = (model(&base), model(&tuned));
    // A file holding the same chunks more than once.
    let (a, b) = (noise(400_000, 1), noise(300_000, 2));
    let repeats = [&a[..], &b[..], &a[..], &a[..], &b[..]].concat();
    let id1 = server.put_bytes(&v1, &[]).expect("v1").file_id;
    let id2 = server.put_bytes(&v2, &[]).expect("v2").file_id;
    let idr = server.put_bytes(&repeats, &[]).expect("repeats").file_id;
    let out = tmp.path().join("out");

    // v1 into an empty store, added from three threads in reverse order.
    let rec1 = server.reconstruction(&id1, None).expect("rec");
    let rep = assemble(&server, &client, &rec1, &out, 3, None).expect("v1");
    assert_assembled(&client, &id1, &out, &v1, &rep);
    assert!(rep.new_file);

    // v2 with v1 local: the chunks the store held are read from it (and
    // written out) by the assembly itself.
    let rec2 = server.reconstruction(&id2, None).expect("rec");
    let plan = client.plan_download(&rec2, 0, 256 << 10).expect("plan");
    assert!(plan.reused_chunks > 0 && plan.fetch_chunks > 0);
    let rep = assemble(&server, &client, &rec2, &out, 1, None).expect("v2");
    assert_assembled(&client, &id2, &out, &v2, &rep);

    // Repeated chunks, nothing held: every chunk not waited for is read
    // back from the store to be hashed.
    let recr = server.reconstruction(&idr, None).expect("rec");
    let rep = assemble(&server, &client, &recr, &out, 2, Some(0)).expect("repeats");
    assert_assembled(&client, &idr, &out, &repeats, &rep);

    // Into a store that holds the file already (another pull got there
    // first): only the output is new. A longer output is cut to size.
    std::fs::write(&out, vec![7u8; v1.len() + 1000]).expect("write");
    let plan = client.plan_download(&rec1, 0, 256 << 10).expect("plan");
    assert!(plan.fetches.is_empty());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&out)
        .expect("open");
    let a = client.assemble(&rec1, &plan, file).expect("assemble");
    let rep = a.finish(&["pulled/v1"]).expect("finish");
    assert_assembled(&client, &id1, &out, &v1, &rep);
    assert!(!rep.new_file);
    assert_eq!(client.resolve("pulled/v1").expect("ref"), id1);
}

#[test]
fn an_assembly_refuses_a_sha256_other_than_its_contents_and_registers_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Store::open(tmp.path().join("server"), opts()).expect("server");
    let client = Store::open(tmp.path().join("client"), opts()).expect("client");
    let data = noise(900_000, 3);
    let id = server.put_bytes(&data, &[]).expect("put").file_id;
    let rec = server.reconstruction(&id, None).expect("rec");
    let out = tmp.path().join("out");

    // A reconstruction naming another SHA-256 (its chunk list, and so the
    // file id, intact): the content is verified, the SHA-256 is not its.
    let mut lying = rec.clone();
    lying.sha256 = Sha256([0x5a; 32]);
    lying.check().expect("the chunk list still checks");
    match assemble(&server, &client, &lying, &out, 2, None) {
        Err(Error::Rejected { reason, .. }) => {
            assert!(reason.contains("hashes to sha256"), "{reason}")
        }
        other => panic!("a wrong sha256 was not refused: {other:?}"),
    }
    assert!(!client.contains(&id).expect("contains"));
    assert!(client.info(&id).is_err());

    // The refused run admitted its verified chunks: assembled again, the
    // file needs no fetch and is registered with its true SHA-256.
    let plan = client.plan_download(&rec, 0, 64 << 10).expect("plan");
    assert!(plan.fetches.is_empty());
    let file = std::fs::File::create(&out).expect("create");
    let a = client.assemble(&rec, &plan, file).expect("assemble");
    let rep = a.finish(&[]).expect("all chunks stored");
    assert_assembled(&client, &id, &out, &data, &rep);

    // A chunk never added: refused, nothing registered.
    let other = noise(500_000, 4);
    let ido = server.put_bytes(&other, &[]).expect("put").file_id;
    let reco = server.reconstruction(&ido, None).expect("rec");
    let plan = client.plan_download(&reco, 0, 64 << 10).expect("plan");
    assert!(plan.fetches.len() > 1);
    let file = std::fs::File::create(&out).expect("create");
    let a = client.assemble(&reco, &plan, file).expect("assemble");
    let f = &plan.fetches[0];
    let body = server
        .pack_bytes(&f.pack)
        .and_then(|p| p.read(f.start, f.len()))
        .expect("range");
    a.add(&verify_fetched(f, &body).expect("verify"))
        .expect("add");
    assert!(
        a.finish(&[]).is_err(),
        "an assembly missing chunks finished"
    );
    assert!(!client.contains(&ido).expect("contains"));

    // Only a whole file is assembled.
    let part = server.reconstruction(&ido, Some((10, 1000))).expect("rec");
    let file = std::fs::File::create(&out).expect("create");
    assert!(client.assemble(&part, &plan, file).is_err());
}

/// No chunk is empty: a pack with a 0-byte record and a registration
/// listing a 0-byte chunk are refused (a file of such chunks would
/// reconstruct to a chunk list that no longer hashes to its id).
#[test]
fn empty_chunks_are_refused() {
    use tessera::testing::{pack_header, ChunkEntry, Compression, Trailer};
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Store::open(tmp.path().join("server"), opts()).expect("server");
    let empty = ChunkId(*blake3::hash(b"").as_bytes());
    let mut bytes = pack_header().to_vec();
    let e = ChunkEntry {
        id: empty,
        offset: bytes.len() as u64,
        stored_len: 0,
        raw_len: 0,
        compression: Compression::None,
    };
    bytes.extend_from_slice(&e.encode_header());
    let table_offset = bytes.len() as u64;
    let mut table = Vec::new();
    e.encode_table_entry(&mut table);
    bytes.extend_from_slice(&table);
    bytes.extend_from_slice(&Trailer::encode(table_offset, 1, &table));
    let id = tessera::testing::pack_id_of(&bytes);
    match server.admit_pack(id, Bytes::from(bytes), u64::MAX) {
        Err(e @ Error::Rejected { .. }) => assert!(e.to_string().contains("empty"), "{e}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    let data = noise(100_000, 5);
    let f = server.put_bytes(&data, &[]).expect("put").file_id;
    let mut list = server.chunk_list(&f).expect("chunks");
    list.insert(0, (empty, 0));
    let mut h = tessera::FileIdHasher::new();
    for (c, len) in &list {
        h.push(c, u64::from(*len));
    }
    match server.register_file(h.finish(), data.len() as u64, &list, None, &["z"]) {
        Err(e @ Error::Rejected { .. }) => assert!(e.to_string().contains("0 bytes"), "{e}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Found by a hostile probe: a registration whose short chunk list repeats
/// one stored chunk makes the server read gigabytes (its SHA-256 cannot
/// skip repeats), and it held the GC gate all along, so a GC waited behind
/// it. The reading now runs outside the gate: a GC (here one that gives up
/// after half a second) is not held up, and the registration still
/// commits, having found its chunks stored under the gate.
#[test]
fn a_long_registration_does_not_hold_up_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), opts()).expect("open");
    let small = store
        .put_bytes(&noise(300_000, 71), &["seed"])
        .expect("put")
        .file_id;
    let (chunk, len) = store.chunk_list(&small).expect("chunks")[0];
    // About 3 GB: seconds of reading at test speed.
    let n = (3u64 << 30) / u64::from(len);
    let list: Vec<(ChunkId, u32)> = (0..n).map(|_| (chunk, len)).collect();
    let mut h = tessera::FileIdHasher::new();
    for (id, l) in &list {
        h.push(id, u64::from(*l));
    }
    let file = h.finish();
    let size = n * u64::from(len);
    let registering = {
        let (store, list) = (store.clone(), list.clone());
        std::thread::spawn(move || store.register_file(file, size, &list, None, &["big"]))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let gc = store.gc(&tessera::GcOptions {
        dry_run: true,
        wait: std::time::Duration::from_millis(500),
        ..Default::default()
    });
    assert!(
        !registering.is_finished(),
        "the registration should still be reading (make the list longer)"
    );
    gc.expect("a GC is not held up by a registration reading its chunks");
    let put = registering.join().expect("thread").expect("register");
    assert_eq!((put.file_id, put.size), (file, size));
    assert_eq!(store.resolve("big").expect("ref"), file);
}
