//! `tessera serve`, `pull` and `push` as real processes: a pull SIGKILLed
//! mid-transfer and run again fetches at most one request's worth of bytes
//! more than needed; a pull whose server is killed and restarted finishes
//! (resuming, with fresh pack URLs); the CLI's JSON reports; a server
//! without tokens refuses a non-loopback address; a local store with other
//! chunking parameters is refused.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::{Store, StoreOptions};
use tessera_http::{Policy, Server, ServerConfig, ServerStats};
use tessera_synth::{DType, ModelSpec, SplitMix64};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
/// The client's default largest range request (ClientOptions::max_request).
const MAX_REQUEST: u64 = 8 << 20;

fn model(spec: &ModelSpec) -> Vec<u8> {
    let mut v = Vec::new();
    spec.reader().read_to_end(&mut v).expect("generate");
    v
}

fn tessera(store: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store")
        .arg(store)
        .env_remove("TESSERA_STORE")
        .env_remove("TESSERA_TOKEN")
        .env("TESSERA_LOG", "warn");
    c
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "tessera failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// Bytes a pull of `file` into an empty store transfers (the plan the
/// client makes, with its default gap and request size).
fn needed_bytes(server: &Store, file: &tessera::FileId, tmp: &Path) -> u64 {
    let empty = Store::open(
        tmp.join("empty"),
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )
    .expect("store");
    let rec = server.reconstruction(file, None).expect("rec");
    empty
        .plan_download(&rec, 32 << 10, MAX_REQUEST)
        .expect("plan")
        .fetch_bytes
}

fn seed() -> u64 {
    let s = std::env::var("TESSERA_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("TESSERA_KILL_SEED={s}");
    s
}

#[test]
fn a_killed_pull_resumes_without_refetching() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server_store = Store::open(
        tmp.path().join("srv"),
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )
    .expect("store");
    let data = model(&ModelSpec::base(31, 24 << 20, DType::F32));
    let id = server_store
        .put_bytes(&data, &["acme/big@v1:model.bin"])
        .expect("put")
        .file_id;
    let needed = needed_bytes(&server_store, &id, tmp.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // 3 MB/s per response, 4 in flight: about two seconds for the file.
    let server = Server::new(
        server_store.clone(),
        Policy::open(),
        ServerConfig {
            max_rate: Some(3_000_000),
            ..Default::default()
        },
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = server.clone();
    let task = rt.spawn(async move {
        s.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });

    let local = tmp.path().join("local");
    let out = tmp.path().join("model.bin");
    let mut rng = SplitMix64::new(seed());
    let delay = Duration::from_millis(400 + rng.below(1200));
    let mut child = tessera(&local)
        .args(["pull", &url, "acme/big@v1:model.bin", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pull");
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    let sent_at_kill = ServerStats::get(&server.stats().pack_bytes_sent);
    eprintln!("killed after {delay:?} ({status}), {sent_at_kill} of {needed} bytes sent");
    assert!(!out.exists(), "a killed pull left an output behind");

    let report = json_of(
        &tessera(&local)
            .args(["pull", &url, "acme/big@v1:model.bin", "--json", "-o"])
            .arg(&out)
            .output()
            .expect("run pull"),
    );
    let total = ServerStats::get(&server.stats().pack_bytes_sent);
    eprintln!("resumed: {report}; {total} bytes sent in all, {needed} needed");
    assert!(
        std::fs::read(&out).expect("output") == data,
        "resumed pull wrote other bytes"
    );
    assert_eq!(report["file_id"], id.to_hex());
    assert!(
        total <= needed + MAX_REQUEST,
        "a killed and resumed pull fetched {total} bytes, {needed} needed (allowed one request more: {MAX_REQUEST})"
    );
    if sent_at_kill > 0 && sent_at_kill < needed {
        let kept = report["bytes_resumed"].as_u64().expect("bytes_resumed")
            + (needed
                - report["bytes_downloaded"]
                    .as_u64()
                    .expect("bytes_downloaded")
                - report["bytes_resumed"].as_u64().expect("bytes_resumed"));
        assert!(kept > 0, "nothing of the killed pull was kept");
    }
    assert!(!tmp.path().join(".model.bin.tessera-pull").exists());
    let _ = stop.send(());
    rt.block_on(task).expect("task").expect("serve");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn spawn_server(store: &Path, port: u16, tokens: &Path) -> Child {
    let tokens = tokens.to_str().expect("a UTF-8 temp path");
    spawn_on(store, port, &["--max-rate", "3000000", "--tokens", tokens])
}

/// `tessera serve` of `store` on loopback `port` (with `extra` options),
/// once it accepts connections.
fn spawn_on(store: &Path, port: u16, extra: &[&str]) -> Child {
    let child = tessera(store)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn a_pull_survives_a_server_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = tmp.path().join("srv");
    let data = model(&ModelSpec::base(41, 24 << 20, DType::F32));
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, &data).expect("write");
    let put = tessera(&srv)
        .args(["put", "--ref", "team/m@v1:model.bin"])
        .arg(&src)
        .output()
        .expect("put");
    assert!(put.status.success());
    // No signing key: a restarted server signs with a new key, so the
    // client must fetch fresh pack URLs.
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(
        &tokens,
        r#"{"tokens": [{"name": "t", "token": "team-token-0123456789", "read": ["team/"]}]}"#,
    )
    .expect("tokens");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(&srv, port, &tokens);
    let out = tmp.path().join("out.bin");
    let client = tessera(&tmp.path().join("local"))
        .args([
            "pull",
            &url,
            "team/m@v1:model.bin",
            "--json",
            "--retries",
            "10",
            "-o",
        ])
        .arg(&out)
        .env("TESSERA_TOKEN", "team-token-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pull");
    let mut rng = SplitMix64::new(seed());
    std::thread::sleep(Duration::from_millis(500 + rng.below(800)));
    server.kill().expect("kill server");
    server.wait().expect("wait");
    std::thread::sleep(Duration::from_millis(500));
    let mut server = spawn_server(&srv, port, &tokens);
    let out_run = client.wait_with_output().expect("pull");
    let report = json_of(&out_run);
    server.kill().expect("kill server");
    let _ = server.wait();
    eprintln!("{report}");
    assert!(std::fs::read(&out).expect("output") == data);
    let srv_store = Store::open(&srv, StoreOptions::default()).expect("reopen");
    let id = srv_store.resolve("team/m@v1:model.bin").expect("ref");
    let needed = needed_bytes(&srv_store, &id, tmp.path());
    let got = report["bytes_downloaded"]
        .as_u64()
        .expect("bytes_downloaded");
    assert!(
        got <= needed + MAX_REQUEST,
        "pulled {got} bytes across a server restart, {needed} needed"
    );
    assert!(
        report["retries"].as_u64().expect("retries") > 0,
        "no retry: the restart missed the transfer"
    );
}

#[test]
fn cli_push_and_pull_reports_and_refusals() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = tmp.path().join("srv");
    let base = ModelSpec::base(51, 4 << 20, DType::BF16);
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("sub")).expect("mkdir");
    std::fs::write(repo.join("model.bin"), model(&base)).expect("write");
    std::fs::write(repo.join("sub/config.json"), b"{\"layers\": 2}").expect("write");
    // Create the server's store, then serve it.
    let put = tessera(&srv)
        .args(["put", "-"])
        .stdin(Stdio::null())
        .output()
        .expect("put");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_on(&srv, port, &[]);
    let pusher = tmp.path().join("pusher");
    let rep = json_of(
        &tessera(&pusher)
            .args(["push", &url, "--ref-prefix", "acme/m@v1:", "--json"])
            .arg(&repo)
            .output()
            .expect("push"),
    );
    assert!(rep["bytes_uploaded"].as_u64().expect("bytes") > 0);
    assert!(rep["requests"].as_u64().expect("requests") >= 4);
    let files = rep["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["ref"], "acme/m@v1:model.bin");
    assert_eq!(files[1]["ref"], "acme/m@v1:sub/config.json");
    // The same again under another prefix: a fork, no chunk data.
    let fork = json_of(
        &tessera(&pusher)
            .args(["push", &url, "--ref-prefix", "fork/m@v1:", "--json"])
            .arg(&repo)
            .output()
            .expect("push"),
    );
    assert_eq!(fork["bytes_uploaded"], 0);
    // Pull it into a new local store.
    let puller = tmp.path().join("puller");
    let out = tmp.path().join("pulled.json");
    let pulled = json_of(
        &tessera(&puller)
            .args(["pull", &url, "fork/m@v1:sub/config.json", "--json", "-o"])
            .arg(&out)
            .output()
            .expect("pull"),
    );
    assert_eq!(pulled["file_id"], files[1]["file_id"]);
    for k in ["bytes_downloaded", "bytes_reused", "requests"] {
        assert!(pulled[k].is_u64(), "{k} missing from {pulled}");
    }
    assert_eq!(std::fs::read(&out).expect("out"), b"{\"layers\": 2}");
    // Unknown name: exit 3, message naming it.
    let miss = tessera(&puller)
        .args(["pull", &url, "fork/m@v1:nope", "-o"])
        .arg(tmp.path().join("x"))
        .output()
        .expect("pull");
    assert_eq!(miss.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&miss.stderr).contains("fork/m@v1:nope"));
    // A local store with other chunking parameters is refused.
    let other = tmp.path().join("other");
    Store::open(
        &other,
        StoreOptions {
            create: true,
            chunking: Some(tessera::ChunkParams {
                min: 8192,
                avg: 32768,
                max: 131072,
                normalization: 1,
            }),
            ..Default::default()
        },
    )
    .expect("other store")
    .close()
    .expect("close");
    let refused = tessera(&other)
        .args(["pull", &url, "fork/m@v1:sub/config.json", "-o"])
        .arg(tmp.path().join("y"))
        .output()
        .expect("pull");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("chunking"));
    // A pickle that calls os.system: refused by the pusher's own policy
    // (exit 5, nothing sent); pushed with `--pickle allow`, refused by the
    // server's default policy with a 422 naming the import (exit 5), and
    // nothing registered.
    let evil = tmp.path().join("evil.pkl");
    std::fs::write(
        &evil,
        b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.",
    )
    .expect("write");
    let local = tessera(&pusher)
        .args(["push", &url, "--ref", "acme/m@v1:evil.pkl"])
        .arg(&evil)
        .output()
        .expect("push");
    assert_eq!(
        local.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let remote = tessera(&pusher)
        .args([
            "push",
            &url,
            "--pickle",
            "allow",
            "--ref",
            "acme/m@v1:evil.pkl",
        ])
        .arg(&evil)
        .output()
        .expect("push");
    let err = String::from_utf8_lossy(&remote.stderr);
    assert_eq!(remote.status.code(), Some(5), "{err}");
    assert!(err.contains("422") && err.contains("posix.system"), "{err}");
    // A policy refusal is final: not re-planned and registered again
    // (each attempt made the server hash the file again).
    assert!(!err.contains("asking again"), "{err}");
    let gone = tessera(&puller)
        .args(["pull", &url, "acme/m@v1:evil.pkl", "-o"])
        .arg(tmp.path().join("z"))
        .output()
        .expect("pull");
    assert_eq!(gone.status.code(), Some(3));
    server.kill().expect("kill");
    let _ = server.wait();
    // No tokens: loopback only.
    let open = tessera(&srv)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .expect("serve");
    assert_eq!(open.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&open.stderr).contains("loopback"));
}

/// Found by a hostile probe: `pull -o /dev/null` (as root) replaced the
/// device with a regular file, a FIFO became a file, and `-o -` wrote a
/// file named `-`. Now `-` is standard output (the report on standard
/// error) and a device or FIFO is written through, never replaced.
#[test]
fn pull_writes_through_to_stdout_a_fifo_or_a_device() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = tmp.path().join("srv");
    let data = model(&ModelSpec::base(52, 3 << 20, DType::BF16));
    let src = tmp.path().join("m.bin");
    std::fs::write(&src, &data).expect("write");
    let put_w = tessera(&srv)
        .args(["put", "--ref", "m@v1:w"])
        .arg(&src)
        .output()
        .expect("put");
    assert!(
        put_w.status.success(),
        "{}",
        String::from_utf8_lossy(&put_w.stderr)
    );
    // A second file in a pack of its own, lost from the server's disk below.
    let before = pack_files(&srv);
    let lost_src = tmp.path().join("lost.bin");
    std::fs::write(&lost_src, tessera_synth::noise(1 << 20, 53)).expect("write");
    let put = tessera(&srv)
        .args(["put", "--ref", "m@v1:lost"])
        .arg(&lost_src)
        .output()
        .expect("put");
    assert!(put.status.success());
    let lost: Vec<_> = pack_files(&srv)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_on(&srv, port, &[]);
    // Standard output: the file, and the report on standard error. The
    // per-user download directory of a stream (in TMPDIR) was made by
    // someone else (here: open to all): the pull uses one of its own.
    let file_id = String::from_utf8_lossy(&put_w.stdout)
        .split_whitespace()
        .next()
        .expect("file id")
        .to_string();
    let tmpdir = tmp.path().join("tmpdir");
    std::fs::create_dir(&tmpdir).expect("mkdir");
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&tmpdir).expect("meta").uid()
    };
    let planted = tmpdir.join(format!("tessera-pull-{uid}-{file_id}"));
    std::fs::create_dir(&planted).expect("plant");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let out = tessera(&tmp.path().join("c1"))
        .current_dir(tmp.path())
        .env("TMPDIR", &tmpdir)
        .args(["pull", &url, "m@v1:w", "-o", "-", "--json"])
        .output()
        .expect("pull -o -");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data, "standard output holds the file");
    let rep: Value = serde_json::from_slice(&out.stderr).expect("report on stderr");
    assert_eq!(rep["size"].as_u64(), Some(data.len() as u64));
    assert!(!tmp.path().join("-").exists(), "no file named -");
    let left: Vec<_> = std::fs::read_dir(&tmpdir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(
        left,
        vec![planted.clone()],
        "the planted directory untouched, no other left"
    );
    assert_eq!(std::fs::read_dir(&planted).expect("ls").count(), 0);
    // Stored locally now: a second pull to standard output reads the store.
    let again = tessera(&tmp.path().join("c1"))
        .args(["pull", &url, "m@v1:w", "-o", "-"])
        .output()
        .expect("pull -o - again");
    assert!(again.status.success() && again.stdout == data);

    // A FIFO stays a FIFO and its reader gets the file.
    let fifo = tmp.path().join("fifo");
    let mk = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(mk.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).expect("read fifo"))
    };
    let st = tessera(&tmp.path().join("c2"))
        .args(["pull", &url, "m@v1:w", "-o"])
        .arg(&fifo)
        .stdout(Stdio::null())
        .status()
        .expect("pull -o fifo");
    assert!(st.success());
    assert!(reader.join().expect("reader") == data);
    assert!(std::fs::symlink_metadata(&fifo)
        .expect("fifo")
        .file_type()
        .is_fifo());

    // /dev/null stays the device.
    let st = tessera(&tmp.path().join("c3"))
        .args(["pull", &url, "m@v1:w", "-o", "/dev/null"])
        .stdout(Stdio::null())
        .status()
        .expect("pull -o /dev/null");
    assert!(st.success());
    let null = std::fs::symlink_metadata("/dev/null").expect("/dev/null");
    assert!(
        null.file_type().is_char_device(),
        "/dev/null is still a device"
    );

    // A directory is a usage error.
    let out = tessera(&tmp.path().join("c4"))
        .args(["pull", &url, "m@v1:w", "-o"])
        .arg(tmp.path())
        .output()
        .expect("pull -o dir");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Mistakes are not "not found" (exit 3): an empty name and a URL with
    // the API's path in it are usage errors; a missing output directory is
    // named.
    let empty = tessera(&tmp.path().join("c5"))
        .args(["pull", &url, "", "-o"])
        .arg(tmp.path().join("e.bin"))
        .output()
        .expect("pull ''");
    assert_eq!(
        empty.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    let wrong = tessera(&tmp.path().join("c5"))
        .args(["pull", &format!("{url}/api"), "m@v1:w", "-o"])
        .arg(tmp.path().join("w.bin"))
        .output()
        .expect("pull URL/api");
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{err}");
    assert!(err.contains("no endpoint") && err.contains("base"), "{err}");
    // An endpoint's URL as the base is refused before any request.
    for endpoint in ["/v1", "/v1/files", "/v1/files/"] {
        let out = tessera(&tmp.path().join("c5"))
            .args(["pull", &format!("{url}{endpoint}"), "m@v1:w", "-o"])
            .arg(tmp.path().join("w.bin"))
            .output()
            .expect("pull URL/v1/files");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {err}");
        assert!(err.contains("is its base"), "{endpoint}: {err}");
    }
    let with_password = url.replacen("http://", "http://user:secret@", 1);
    for bad in ["http://[::1", &format!("{url}/?x=1"), &with_password] {
        let out = tessera(&tmp.path().join("c5"))
            .args(["pull", bad, "m@v1:w", "-o"])
            .arg(tmp.path().join("w.bin"))
            .output()
            .expect("pull BAD-URL");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(!err.contains("retrying"), "{bad}: {err}");
        assert!(!err.contains("secret"), "{bad}: {err}");
    }
    let missing = tmp.path().join("no-such-dir");
    let out = tessera(&tmp.path().join("c6"))
        .args(["pull", &url, "m@v1:w", "-o"])
        .arg(missing.join("x.bin"))
        .output()
        .expect("pull -o missing/x");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no-such-dir:"), "{err}");
    assert!(!missing.exists(), "no directory made");

    // A pack the server lost: damage on the server (exit 4), said once,
    // not retried as if the server were busy.
    std::fs::remove_file(&lost[0]).expect("lose the pack");
    let out = tessera(&tmp.path().join("c7"))
        .args(["pull", &url, "m@v1:lost", "-o"])
        .arg(tmp.path().join("lost-out.bin"))
        .output()
        .expect("pull of a lost pack");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("damaged") && !err.contains("retrying"),
        "{err}"
    );
    // The object is named, not where the server keeps its store.
    let srv_path = srv.display().to_string();
    assert!(
        err.contains("<store>/packs/") && !err.contains(&srv_path),
        "{err}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The pack files of a directory store.
fn pack_files(store: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(store.join("packs")).expect("packs") {
        for f in std::fs::read_dir(d.expect("entry").path()).expect("pack dir") {
            out.push(f.expect("entry").path());
        }
    }
    out
}
