//! Pull and push through a real server on a loopback port: a pull of v2
//! with v1 local moves about what v2 adds, a push of a fine-tune sends
//! about its changed tensors, a push of a fork sends no chunk data, and 32
//! clients pull while another pushes.

mod common;

use std::sync::Arc;

use common::{curl, model, open, s, TestServer};
use tessera::{Store, VerifyOptions};
use tessera_http::client::{pull, push, Client, ClientOptions, NoProgress, PushInput};
use tessera_http::{Policy, ServerConfig, ServerStats};
use tessera_synth::{DType, ModelSpec};

fn client(url: &str) -> Client {
    Client::new(url, ClientOptions::default()).expect("client")
}

/// A server (open policy, default limits) over a store in `dir/srv` that
/// holds a bf16 model of `size` bytes (from `seed`) under ref `m@v1:w`.
async fn serve_model(dir: &std::path::Path, seed: u64, size: u64) -> (Store, Vec<u8>, TestServer) {
    let store = open(&dir.join("srv"));
    let data = model(&ModelSpec::base(seed, size, DType::BF16));
    store.put_bytes(&data, &["m@v1:w"]).expect("put");
    let srv = TestServer::start(store.clone(), Policy::open(), ServerConfig::default()).await;
    (store, data, srv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_moves_what_v2_adds_and_push_sends_only_new_chunks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server_store = open(&tmp.path().join("srv"));
    let base = ModelSpec::base(5, 12 << 20, DType::BF16);
    let (tuned, _) = base.finetune(6, 0.10);
    let (v1, v2) = (model(&base), model(&tuned));
    let id1 = server_store
        .put_bytes(&v1, &["acme/llm@v1:model.bin"])
        .expect("v1")
        .file_id;
    let id2 = server_store
        .put_bytes(&v2, &["acme/llm@v2:model.bin"])
        .expect("v2")
        .file_id;
    let srv = TestServer::start(
        server_store.clone(),
        Policy::open(),
        ServerConfig::default(),
    )
    .await;
    let stats = srv.stats();
    let c = client(&srv.url);
    let local = open(&tmp.path().join("local"));
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");

    // v1 into an empty store: everything.
    let r1 = pull(
        &c,
        &local,
        "acme/llm@v1:model.bin",
        &out.join("v1.bin"),
        Arc::new(NoProgress),
    )
    .await
    .expect("pull v1");
    assert_eq!(r1.file_id, id1);
    assert!(std::fs::read(out.join("v1.bin")).expect("read") == v1);
    // Registered locally as it was assembled, with its true SHA-256.
    let want_sha = server_store.info(&id1).expect("info").sha256;
    assert_eq!(r1.sha256, want_sha);
    assert_eq!(local.info(&id1).expect("registered").sha256, want_sha);
    assert!(local.read(&id1).expect("open").read_all().expect("read") == v1);
    assert!(r1.bytes_downloaded > v1.len() as u64 / 2);
    assert_eq!(r1.bytes_reused, 0);
    assert!(
        !out.join(".v1.bin.tessera-pull").exists(),
        "download dir left behind"
    );

    // v2 with v1 local: what v2 adds (its new chunks' records), within 5%.
    let rec2 = server_store.reconstruction(&id2, None).expect("rec");
    let needed: u64 = local
        .plan_download(&rec2, 0, u64::MAX)
        .expect("plan")
        .fetches
        .iter()
        .flat_map(|f| &f.chunks)
        .map(|c| c.record_len)
        .sum();
    let sent_before = ServerStats::get(&stats.pack_bytes_sent);
    let r2 = pull(
        &c,
        &local,
        &id2.to_hex(),
        &out.join("v2.bin"),
        Arc::new(NoProgress),
    )
    .await
    .expect("pull v2");
    let sent = ServerStats::get(&stats.pack_bytes_sent) - sent_before;
    assert!(std::fs::read(out.join("v2.bin")).expect("read") == v2);
    assert_eq!(
        sent, r2.bytes_downloaded,
        "client and server disagree on bytes moved"
    );
    assert!(
        r2.bytes_downloaded as f64 <= needed as f64 * 1.05 && r2.bytes_downloaded >= needed,
        "v2 pulled {} bytes, its new chunks are {needed}",
        r2.bytes_downloaded
    );
    assert!(r2.bytes_reused > v2.len() as u64 / 2);
    eprintln!(
        "v2: {} bytes in {} requests ({needed} needed, file {})",
        r2.bytes_downloaded,
        r2.requests,
        v2.len()
    );
    // Again: nothing to fetch.
    let r3 = pull(
        &c,
        &local,
        "acme/llm@v2:model.bin",
        &out.join("v2b.bin"),
        Arc::new(NoProgress),
    )
    .await
    .expect("pull again");
    assert_eq!(r3.bytes_downloaded, 0);
    assert!(std::fs::read(out.join("v2b.bin")).expect("read") == v2);

    // Push a fine-tune made locally: about its changed tensors.
    let (tuned3, changed) = base.finetune(7, 0.10);
    let v3 = model(&tuned3);
    let changed_bytes: u64 = tuned3
        .tensor_ranges()
        .iter()
        .filter(|(n, _)| changed.contains(n))
        .map(|(_, r)| r.end - r.start)
        .sum();
    let f3 = tmp.path().join("v3.bin");
    std::fs::write(&f3, &v3).expect("write");
    let admitted_before = ServerStats::get(&stats.pack_bytes_admitted);
    let rep = push(
        &c,
        &local,
        &[PushInput {
            path: Some(f3.clone()),
            shown: "v3.bin".into(),
            ref_name: Some("acme/llm@v3:model.bin".into()),
        }],
        Arc::new(NoProgress),
    )
    .await
    .expect("push");
    assert_eq!(
        ServerStats::get(&stats.pack_bytes_admitted) - admitted_before,
        rep.bytes_uploaded
    );
    eprintln!(
        "push v3: {} bytes uploaded in {} packs, {} of {} chunks; changed tensors {changed_bytes} bytes",
        rep.bytes_uploaded, rep.packs_uploaded, rep.chunks_uploaded, rep.chunks_total
    );
    assert!(rep.files[0].new_file);
    assert!(
        rep.bytes_uploaded as f64 <= changed_bytes as f64 * 1.5 + (1 << 20) as f64,
        "pushed {} bytes for {changed_bytes} changed",
        rep.bytes_uploaded
    );
    assert!(rep.bytes_uploaded as f64 >= changed_bytes as f64 * 0.3);
    let id3 = server_store.resolve("acme/llm@v3:model.bin").expect("ref");
    assert_eq!(id3, rep.files[0].file_id);
    assert!(
        server_store
            .read(&id3)
            .expect("open")
            .read_all()
            .expect("read")
            == v3
    );

    // A fork (the same bytes under another name): no chunk data at all.
    let fork = push(
        &c,
        &local,
        &[PushInput {
            path: Some(out.join("v2.bin")),
            shown: "v2.bin".into(),
            ref_name: Some("fork/llm@v1:model.bin".into()),
        }],
        Arc::new(NoProgress),
    )
    .await
    .expect("push fork");
    assert_eq!((fork.bytes_uploaded, fork.packs_uploaded), (0, 0));
    assert!(!fork.files[0].new_file);
    assert_eq!(
        server_store.resolve("fork/llm@v1:model.bin").expect("fork"),
        id2
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_pull_while_one_pushes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server_store = open(&tmp.path().join("srv"));
    let base = ModelSpec::base(21, 3 << 20, DType::BF16);
    let v1 = model(&base);
    let id1 = server_store
        .put_bytes(&v1, &["acme/small@v1:model.bin"])
        .expect("v1")
        .file_id;
    let srv = TestServer::start(
        server_store.clone(),
        Policy::open(),
        ServerConfig::default(),
    )
    .await;
    let url = srv.url.clone();
    let (tuned, _) = base.finetune(22, 0.2);
    let v2 = model(&tuned);
    let f2 = tmp.path().join("v2.bin");
    std::fs::write(&f2, &v2).expect("write");

    let pusher = {
        let (url, dir, f2) = (url.clone(), tmp.path().join("pusher"), f2.clone());
        let pusher_store = open(&dir);
        tokio::spawn(async move {
            let c = client(&url);
            push(
                &c,
                &pusher_store,
                &[PushInput {
                    path: Some(f2),
                    shown: "v2".into(),
                    ref_name: Some("acme/small@v2:model.bin".into()),
                }],
                Arc::new(NoProgress),
            )
            .await
        })
    };
    let mut pullers = Vec::new();
    for i in 0..32 {
        let (url, root) = (url.clone(), tmp.path().join(format!("puller-{i}")));
        pullers.push(tokio::spawn(async move {
            let store = open(&root.join("store"));
            let c = client(&url);
            let out = root.join("v1.bin");
            let r = pull(
                &c,
                &store,
                "acme/small@v1:model.bin",
                &out,
                Arc::new(NoProgress),
            )
            .await;
            (r, std::fs::read(&out).ok())
        }));
    }
    for (i, p) in pullers.into_iter().enumerate() {
        let (r, bytes) = p.await.expect("task");
        let r = r.unwrap_or_else(|e| panic!("puller {i}: {e}"));
        assert_eq!(r.file_id, id1);
        assert!(
            bytes.as_deref() == Some(&v1[..]),
            "puller {i} wrote other bytes"
        );
    }
    let rep = pusher.await.expect("task").expect("push");
    let id2 = server_store
        .resolve("acme/small@v2:model.bin")
        .expect("pushed ref");
    assert_eq!(id2, rep.files[0].file_id);
    assert!(
        server_store
            .read(&id2)
            .expect("open")
            .read_all()
            .expect("read")
            == v2
    );
    let v = server_store
        .verify(VerifyOptions::default())
        .expect("verify");
    assert!(v.is_clean(), "server store damaged: {:?}", v.problems);
    srv.stop().await;
}

/// A part file an earlier run left is used when its bytes verify and
/// counted as resumed; a damaged one is thrown away, fetched again, and
/// not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_part_counts_as_resumed_only_when_it_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server_store, data, srv) = serve_model(tmp.path(), 9, 2 << 20).await;
    let c = client(&srv.url);
    let rec = c
        .reconstruction("m@v1:w")
        .await
        .expect("rec")
        .reconstruction;
    let term = &rec.terms[0];
    let good = server_store
        .pack_bytes(&term.pack)
        .and_then(|p| p.read(term.pack_start, 1000))
        .expect("pack bytes");
    for (case, left, resumed) in [
        ("damaged", vec![0xAA; 1000], 0),
        ("intact", good.to_vec(), 1000),
    ] {
        let local = open(&tmp.path().join(format!("local-{case}")));
        let out = tmp.path().join(format!("{case}.bin"));
        let dir = tmp.path().join(format!(".{case}.bin.tessera-pull"));
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(
            dir.join(format!("{}-{}.part", term.pack, term.pack_start)),
            &left,
        )
        .expect("plant part");
        let r = pull(&c, &local, "m@v1:w", &out, Arc::new(NoProgress))
            .await
            .expect("pull");
        assert!(std::fs::read(&out).expect("read") == data, "{case}");
        assert_eq!(r.bytes_resumed, resumed, "{case}: {r:?}");
        assert!(!dir.exists(), "{case}: the download directory stayed");
    }
}

/// A repack that lands in the middle of a pull (the pack the pull reads
/// is rewritten into another and deleted) does not fail the pull: the
/// ranges of the vanished pack are planned again from a fresh
/// reconstruction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_survives_a_repack_that_deletes_its_pack() {
    use tessera::{GcOptions, RepackOptions};
    let tmp = tempfile::tempdir().expect("tempdir");
    let server_store = open(&tmp.path().join("srv"));
    let a = tessera_synth::noise(8 << 20, 71);
    let b = tessera_synth::noise(1 << 20, 72);
    let id = server_store.put_bytes(&a, &["a"]).expect("put").file_id;
    server_store.put_bytes(&b, &["b"]).expect("put");
    let srv = TestServer::start(
        server_store.clone(),
        Policy::open(),
        ServerConfig {
            max_rate: Some(4 << 20),
            ..Default::default()
        },
    )
    .await;
    let stats = srv.stats();
    let c = Client::new(
        &srv.url,
        ClientOptions {
            parallel: 1,
            max_request: 2 << 20,
            ..Default::default()
        },
    )
    .expect("client");
    let local = open(&tmp.path().join("local"));
    let out = tmp.path().join("a.bin");
    let pulling = {
        let (c, local, out) = (c.clone(), local.clone(), out.clone());
        tokio::spawn(async move { pull(&c, &local, "a", &out, Arc::new(NoProgress)).await })
    };
    // Once the first range is being sent, the two small packs are combined
    // into one and deleted.
    while ServerStats::get(&stats.pack_requests) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let st = server_store.clone();
    let rep = tokio::task::spawn_blocking(move || {
        st.repack(&RepackOptions {
            gc: GcOptions {
                grace: std::time::Duration::ZERO,
                ..Default::default()
            },
            ..Default::default()
        })
    })
    .await
    .expect("join")
    .expect("repack");
    assert!(rep.packs_rewritten >= 1, "{rep:?}");
    // Four paced ranges of 2 MiB at 4 MiB/s: the pull still has some to go.
    assert!(
        !pulling.is_finished(),
        "the pull ended before the repack did: nothing was exercised"
    );
    let r = pulling.await.expect("join").expect("pull across a repack");
    assert_eq!(r.file_id, id);
    assert!(std::fs::read(&out).expect("read") == a);
    // Nothing fetched twice.
    assert!(r.bytes_downloaded < a.len() as u64 + (64 << 10), "{r:?}");
}

/// Runs a collection on the server's store when the upload phase starts,
/// that is after the client asked which chunks the server lacks.
struct CollectOnUpload(tessera::Store, std::sync::atomic::AtomicBool);

impl tessera_http::client::Progress for CollectOnUpload {
    fn start(&self, what: &str, _total: u64) {
        if what == "upload" && !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let rep = self
                .0
                .gc(&tessera::GcOptions {
                    grace: std::time::Duration::ZERO,
                    ..Default::default()
                })
                .expect("gc");
            assert_eq!(rep.dead_files, 1, "{rep:?}");
        }
    }
}

/// Found by a probe (on S3 nodes, where another node's GC did it): when
/// the chunks the server said it held are collected before the client
/// registers its file, the registration is refused ("not stored"), and the
/// client used to give up. It now asks again which chunks are missing,
/// uploads them and registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_held_chunks_are_collected_before_it_registers_plans_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server_store = open(&tmp.path().join("srv"));
    let data = tessera_synth::noise(3 << 20, 91);
    // The server holds the data, unnamed: a collection may take it.
    server_store.put_bytes(&data, &["old"]).expect("put");
    server_store.delete_ref("old").expect("delete ref");
    let srv = TestServer::start(
        server_store.clone(),
        Policy::open(),
        ServerConfig::default(),
    )
    .await;
    let c = client(&srv.url);
    let local = open(&tmp.path().join("local"));
    let file = tmp.path().join("x.bin");
    std::fs::write(&file, &data).expect("write");
    let rep = push(
        &c,
        &local,
        &[PushInput {
            path: Some(file),
            shown: "x.bin".into(),
            ref_name: Some("again".into()),
        }],
        Arc::new(CollectOnUpload(
            server_store.clone(),
            std::sync::atomic::AtomicBool::new(false),
        )),
    )
    .await
    .expect("a push whose chunks were collected under it");
    assert!(
        rep.chunks_uploaded > 0,
        "the second plan uploaded nothing: {rep:?}"
    );
    let id = server_store.resolve("again").expect("ref");
    assert_eq!(id, rep.files[0].file_id);
    assert!(
        server_store
            .read(&id)
            .expect("open")
            .read_all()
            .expect("read")
            == data
    );
    let v = server_store
        .verify(VerifyOptions::default())
        .expect("verify");
    assert!(v.is_clean(), "server store damaged: {:?}", v.problems);
    srv.stop().await;
}

/// A push of a file the server lists but whose pack it lost stores the
/// chunks again: the server counts the chunks of a lost pack as missing
/// (found on S3 nodes, where another node's GC had deleted the pack and
/// the push uploaded nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_a_file_whose_pack_the_server_lost_stores_it_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("srv");
    let server_store = open(&root);
    let data = tessera_synth::noise(2 << 20, 92);
    let id = server_store.put_bytes(&data, &["x"]).expect("put").file_id;
    let packs = server_store.layout(&id).expect("layout").packs();
    for p in &packs {
        std::fs::remove_file(root.join(tessera::testing::pack_key(p))).expect("remove pack");
    }
    let srv = TestServer::start(
        server_store.clone(),
        Policy::open(),
        ServerConfig::default(),
    )
    .await;
    let c = client(&srv.url);
    let local = open(&tmp.path().join("local"));
    let file = tmp.path().join("x.bin");
    std::fs::write(&file, &data).expect("write");
    let rep = push(
        &c,
        &local,
        &[PushInput {
            path: Some(file),
            shown: "x.bin".into(),
            ref_name: Some("again".into()),
        }],
        Arc::new(NoProgress),
    )
    .await
    .expect("push");
    assert!(rep.chunks_uploaded > 0, "nothing was uploaded: {rep:?}");
    let got = server_store.resolve("again").expect("ref");
    assert_eq!(got, id);
    assert!(
        server_store
            .read(&got)
            .expect("open")
            .read_all()
            .expect("read")
            == data
    );
    srv.stop().await;
}

/// Found by a hostile probe: a pull wrote through symbolic links in its
/// download directory (a part file or the temp output planted as a link
/// sent pack bytes or the file into the link's target) and reused a
/// download directory anyone could write in. Now files there are never
/// opened through a link, the temp output is created new, a download
/// directory not private to this user is refused, and an output that is a
/// link to a file has the file it leads to replaced (the link stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_never_writes_through_links() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server_store, data, srv) = serve_model(tmp.path(), 10, 2 << 20).await;
    let c = client(&srv.url);
    let term = c
        .reconstruction("m@v1:w")
        .await
        .expect("rec")
        .reconstruction
        .terms[0]
        .clone();
    let victim = tmp.path().join("victim");
    let victim_bytes = b"not to be touched".to_vec();
    let dir_of = |case: &str| tmp.path().join(format!(".{case}.bin.tessera-pull"));
    let private = |dir: &std::path::Path| {
        std::fs::create_dir(dir).expect("mkdir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    };

    // The temp output planted as a link: removed, the file created new.
    std::fs::write(&victim, &victim_bytes).expect("victim");
    let dir = dir_of("tmp-link");
    private(&dir);
    symlink(&victim, dir.join("output.tmp")).expect("plant link");
    let out = tmp.path().join("tmp-link.bin");
    pull(
        &c,
        &open(&tmp.path().join("l1")),
        "m@v1:w",
        &out,
        Arc::new(NoProgress),
    )
    .await
    .expect("pull past a planted temp link");
    assert_eq!(std::fs::read(&victim).expect("victim"), victim_bytes);
    let meta = std::fs::symlink_metadata(&out).expect("output");
    assert!(meta.file_type().is_file(), "the output is a file: {meta:?}");
    assert!(std::fs::read(&out).expect("read") == data);

    // A pull to `case.bin` whose first part file is planted beforehand
    // (by `plant(victim, part)`), into a fresh local store.
    let part_of = |case: &str| {
        let dir = dir_of(case);
        private(&dir);
        dir.join(format!("{}-{}.part", term.pack, term.pack_start))
    };
    let pull_to = |case: &str| {
        let (c, out, local) = (
            c.clone(),
            tmp.path().join(format!("{case}.bin")),
            open(&tmp.path().join(format!("local-{case}"))),
        );
        async move {
            let r = pull(&c, &local, "m@v1:w", &out, Arc::new(NoProgress)).await;
            (r, out)
        }
    };

    // A part file planted as a link: the pull fails, the target untouched.
    symlink(&victim, part_of("part-link")).expect("plant part link");
    let (r, out) = pull_to("part-link").await;
    assert!(
        r.is_err(),
        "a part that is a link is not written through: {r:?}"
    );
    assert_eq!(std::fs::read(&victim).expect("victim"), victim_bytes);
    assert!(!out.exists());

    // A part file hard-linked to another file: refused the same way.
    std::fs::hard_link(&victim, part_of("part-hardlink")).expect("plant hard link");
    let (r, _) = pull_to("part-hardlink").await;
    assert!(r.is_err(), "a hard-linked part is not written: {r:?}");
    assert_eq!(std::fs::read(&victim).expect("victim"), victim_bytes);

    // A download directory others may write in is refused, nothing written.
    let dir = dir_of("open-dir");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = tmp.path().join("open-dir.bin");
    let e = pull(
        &c,
        &open(&tmp.path().join("l3")),
        "m@v1:w",
        &out,
        Arc::new(NoProgress),
    )
    .await
    .expect_err("a world-writable download directory");
    assert!(e.to_string().contains("not private to this user"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 0);
    assert!(!out.exists());

    // An output that is a link to a file: that file is replaced, the link
    // stays.
    let target = tmp.path().join("real.bin");
    std::fs::write(&target, b"old").expect("target");
    let link = tmp.path().join("link.bin");
    symlink(&target, &link).expect("link");
    pull(
        &c,
        &open(&tmp.path().join("l4")),
        "m@v1:w",
        &link,
        Arc::new(NoProgress),
    )
    .await
    .expect("pull to a link");
    assert!(std::fs::symlink_metadata(&link)
        .expect("link")
        .file_type()
        .is_symlink());
    assert!(std::fs::read(&target).expect("target") == data);
    srv.stop().await;
}

/// Found by a hostile probe: a failed pull (here one the local store's
/// pickle policy refuses) left an empty download directory behind. What
/// a failed pull received stays for the next run; an empty directory goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_leaves_no_empty_download_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server_store = tessera::Store::open(
        tmp.path().join("srv"),
        tessera::StoreOptions {
            pickle_policy: tessera::PicklePolicy::Allow,
            ..common::opts()
        },
    )
    .expect("open");
    let evil = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
    server_store
        .put_bytes(evil, &["m@v1:evil.pkl"])
        .expect("put");
    let srv = TestServer::start(server_store, Policy::open(), ServerConfig::default()).await;
    let c = client(&srv.url);
    let out = tmp.path().join("evil.pkl");
    let e = pull(
        &c,
        &open(&tmp.path().join("local")),
        "m@v1:evil.pkl",
        &out,
        Arc::new(NoProgress),
    )
    .await
    .expect_err("refused by the local policy");
    assert!(
        matches!(
            e,
            tessera_http::client::ClientError::Engine(tessera::Error::Refused { .. })
        ),
        "{e:?}"
    );
    assert!(!out.exists());
    assert!(
        !tmp.path().join(".evil.pkl.tessera-pull").exists(),
        "an empty download directory stayed"
    );
    srv.stop().await;
}

/// Found by a probe: the pickle policy was applied only to files new to a
/// store. A pull of a file the local store held already (stored under
/// `allow`) wrote it out under `deny-unsafe`, and a push of a file the
/// server held already (stored under `allow`) set a new ref to it on a
/// server running `deny-unsafe`. The stored description decides now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pickle_policy_applies_to_files_a_store_holds_already() {
    use tessera::PicklePolicy;
    let tmp = tempfile::tempdir().expect("tempdir");
    let evil = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
    let with = |dir: &str, pickle_policy| {
        Store::open(
            tmp.path().join(dir),
            tessera::StoreOptions {
                pickle_policy,
                ..common::opts()
            },
        )
        .expect("open")
    };
    // Refused by this store's policy, or by the server's (422).
    let refused = |e: &tessera_http::client::ClientError| {
        use tessera_http::client::ClientError;
        match e {
            ClientError::Engine(tessera::Error::Refused { .. }) => true,
            ClientError::Http { status, code, .. } => {
                status.as_u16() == 422 && code == "refused_by_policy"
            }
            _ => false,
        }
    };
    // The server stores it under `allow`; the client store holds it too.
    let srv_store = with("srv", PicklePolicy::Allow);
    srv_store.put_bytes(evil, &["m@v1:evil.pkl"]).expect("put");
    with("local", PicklePolicy::Allow)
        .put_bytes(evil, &[])
        .expect("put");
    let srv = TestServer::start(srv_store, Policy::open(), ServerConfig::default()).await;
    let c = client(&srv.url);
    let out = tmp.path().join("evil.pkl");
    for policy in [PicklePolicy::DenyUnsafe, PicklePolicy::Deny] {
        let local = with("local", policy);
        let e = pull(&c, &local, "m@v1:evil.pkl", &out, Arc::new(NoProgress))
            .await
            .expect_err("refused by the local policy");
        assert!(refused(&e), "{e:?}");
        assert!(!out.exists());
        drop(local);
    }
    // `allow` writes it out.
    pull(
        &c,
        &with("local", PicklePolicy::Allow),
        "m@v1:evil.pkl",
        &out,
        Arc::new(NoProgress),
    )
    .await
    .expect("allowed");
    assert!(std::fs::read(&out).expect("out") == evil);
    srv.stop().await;

    // A server running `deny-unsafe` that holds the file (stored under
    // `allow`) refuses a new ref to it, as it refuses its upload.
    let srv_store = with("srv2", PicklePolicy::Allow);
    let file = srv_store.put_bytes(evil, &[]).expect("put").file_id;
    drop(srv_store);
    let server = with("srv2", PicklePolicy::DenyUnsafe);
    let srv = TestServer::start(server.clone(), Policy::open(), ServerConfig::default()).await;
    let c = client(&srv.url);
    let input = tmp.path().join("evil2.pkl");
    std::fs::write(&input, evil).expect("write");
    let e = push(
        &c,
        &with("local2", PicklePolicy::Allow),
        &[PushInput {
            path: Some(input),
            shown: "evil2.pkl".into(),
            ref_name: Some("attacker/x@v1:evil.pkl".into()),
        }],
        Arc::new(NoProgress),
    )
    .await
    .expect_err("refused by the server's policy");
    assert!(refused(&e), "{e:?}");
    assert!(server
        .resolve_ref("attacker/x@v1:evil.pkl")
        .expect_err("no such ref")
        .is_not_found());
    assert!(server.contains(&file).expect("contains"));
    srv.stop().await;
}

/// Found by a second hostile probe: two pulls to one output at once each
/// wrote their temp file and renamed it into place by name, so the first
/// could move the second's half-written file into place and exit 0. Now a
/// pull holds its download directory (an exclusive lock on its `lock`
/// file) for the whole run: a second pull to that output is refused while
/// the first runs, and goes ahead once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pull_to_one_output_is_refused_while_the_first_runs() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_store, data, srv) = serve_model(tmp.path(), 11, 1 << 20).await;
    let c = client(&srv.url);
    let out = tmp.path().join("x.bin");
    let dir = tmp.path().join(".x.bin.tessera-pull");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // The first pull, as far as the second can tell: it holds the lock.
    let first = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .expect("lock file");
    first.try_lock().expect("lock");
    let e = pull(
        &c,
        &open(&tmp.path().join("l1")),
        "m@v1:w",
        &out,
        Arc::new(NoProgress),
    )
    .await
    .expect_err("a second pull to the same output");
    assert!(e.to_string().contains("another pull is writing"), "{e}");
    assert!(!out.exists());
    assert!(
        dir.join("lock").exists(),
        "the first pull's directory is left alone"
    );
    drop(first);
    pull(
        &c,
        &open(&tmp.path().join("l2")),
        "m@v1:w",
        &out,
        Arc::new(NoProgress),
    )
    .await
    .expect("once the first is done");
    assert!(std::fs::read(&out).expect("read") == data);
    assert!(!dir.exists());
    srv.stop().await;
}

/// A push to a ref the token may not write, or to a name no registration
/// takes, is refused at its first question: nothing is uploaded, and the
/// server holds no chunk of the file afterwards. A ref the token may write
/// still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_ref_it_may_not_write_uploads_nothing() {
    use tessera_http::client::ClientError;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server_store = open(&tmp.path().join("srv"));
    let srv = TestServer::start(
        server_store.clone(),
        common::policy(),
        ServerConfig::default(),
    )
    .await;
    let stats = srv.stats();
    let alice = Client::new(
        &srv.url,
        ClientOptions {
            token: Some(common::ALICE.to_string()),
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let local = open(&tmp.path().join("local"));
    let file = tmp.path().join("x.bin");
    std::fs::write(&file, tessera_synth::noise(2 << 20, 17)).expect("write");
    let push_as = |name: &str| {
        let (alice, local, file, name) =
            (alice.clone(), local.clone(), file.clone(), name.to_string());
        async move {
            push(
                &alice,
                &local,
                &[PushInput {
                    path: Some(file),
                    shown: "x.bin".into(),
                    ref_name: Some(name),
                }],
                Arc::new(NoProgress),
            )
            .await
        }
    };
    for (name, status) in [
        ("bob/stolen@v1:x.bin", 403),
        ("alice/ trailing@v1 ", 400),
        ("alice/a/../b", 400),
    ] {
        match push_as(name).await {
            Err(ClientError::Http { status: s, .. }) => {
                assert_eq!(s.as_u16(), status, "push to {name:?}")
            }
            other => panic!("push to {name:?}: {other:?}"),
        }
        assert_eq!(
            ServerStats::get(&stats.pack_bytes_admitted),
            0,
            "a refused push to {name:?} uploaded packs first"
        );
        assert_eq!(server_store.stats().expect("stats").chunks, 0);
    }
    let rep = push_as("alice/m@v1:x.bin").await.expect("push to alice/");
    assert!(rep.bytes_uploaded > 0);
    assert_eq!(
        ServerStats::get(&stats.pack_bytes_admitted),
        rep.bytes_uploaded
    );
    assert_eq!(
        server_store.resolve("alice/m@v1:x.bin").expect("ref"),
        rep.files[0].file_id
    );
    srv.stop().await;
}

/// A failed write (a full disk, a bucket that stopped answering) poisons
/// the server's store. The server brings it back on its own once the cause
/// is gone: a push during a one-off failure succeeds through its retries,
/// and while writes keep failing they are answered `503` with
/// `Retry-After`, then resume without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_writes_again_after_a_failed_write() {
    use tessera::testing::{open_on, Fault, FaultStorage, OpKind};
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(&root).expect("mkdir");
    let fs = FaultStorage::new(&root);
    let server_store = open_on(&fs, &root, common::opts()).expect("open");
    let base = tessera_synth::noise(1 << 20, 30);
    let base_id = server_store
        .put_bytes(&base, &["base"])
        .expect("put")
        .file_id;
    let srv = TestServer::start(
        server_store.clone(),
        Policy::open(),
        ServerConfig::default(),
    )
    .await;
    let c = client(&srv.url);
    let local = open(&tmp.path().join("local"));
    let push_one = |name: &str, seed: u64| {
        let data = tessera_synth::noise(3 << 20, seed);
        let file = tmp.path().join(format!("{name}.bin"));
        std::fs::write(&file, &data).expect("write");
        let input = PushInput {
            path: Some(file),
            shown: format!("{name}.bin"),
            ref_name: Some(name.to_string()),
        };
        (data, input)
    };

    // One write fails, once: the push retries, the server recovers.
    let (one, input) = push_one("one", 31);
    fs.inject(Fault {
        kind: Some(OpKind::Write),
        nth: 1,
        sticky: false,
    });
    push(&c, &local, &[input], Arc::new(NoProgress))
        .await
        .expect("push through a failed write");
    assert_eq!(fs.failures(), 1, "the fault did not fire");
    assert!(c.retries() >= 1, "the push met no failure");
    let id = server_store.resolve("one").expect("ref");
    assert_eq!(
        server_store
            .read(&id)
            .expect("open")
            .read_all()
            .expect("read"),
        one
    );

    // Every write fails for a while (the disk stays full).
    fs.kill();
    let put_ref = || {
        curl(vec![
            s("-X"),
            s("PUT"),
            s("-H"),
            s("content-type: application/json"),
            s("--data"),
            format!(r#"{{"file_id":"{base_id}"}}"#),
            format!("{}/v1/refs/later", srv.url),
        ])
    };
    let mut refused = None;
    for _ in 0..50 {
        let r = put_ref().await;
        assert!(
            r.status >= 500,
            "a write while every write fails: {}",
            r.status
        );
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = refused.expect("never answered 503 while poisoned");
    assert_eq!(r.header("retry-after"), Some("5"), "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("\"unavailable\"") && text.contains("resumes on its own"),
        "{text}"
    );
    assert!(!text.contains("reopen"), "{text}");
    // Reads go on.
    assert_eq!(
        server_store
            .read(&base_id)
            .expect("open")
            .read_all()
            .expect("read"),
        base
    );
    let r = curl(vec![format!("{}/v1/files/base", srv.url)]).await;
    assert_eq!((r.status, r.body == base), (200, true));

    // The cause goes: writes resume without a restart (requests start the
    // recovery; it backs off while writes still fail).
    fs.revive();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    loop {
        let r = curl(vec![format!("{}/healthz", srv.url)]).await;
        assert_eq!(r.status, 200);
        if !server_store.is_poisoned() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still poisoned");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = put_ref().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (two, input) = push_one("two", 32);
    push(&c, &local, &[input], Arc::new(NoProgress))
        .await
        .expect("push after recovery");
    let id = server_store.resolve("two").expect("ref");
    assert_eq!(
        server_store
            .read(&id)
            .expect("open")
            .read_all()
            .expect("read"),
        two
    );
    assert_eq!(server_store.resolve("later").expect("ref"), base_id);
    let v = server_store
        .verify(VerifyOptions::default())
        .expect("verify");
    assert!(v.is_clean(), "{v:?}");
    srv.stop().await;
}
