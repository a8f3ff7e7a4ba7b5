//! The `tessera` binary on an `s3://` store (a loopback S3 server: moto,
//! started by `engine/s3/tests/s3server.sh` or by the test itself; skipped
//! loudly without one, a failure with `TESSERA_S3_REQUIRED=1`).
//!
//! Each "node" is a process with its own `--cache`. Checked: put / cat /
//! ranges / dedup / info / stat / refs / ref / verify / repair index on a
//! bucket; two writer processes at once (same and different files); a
//! reader with an empty cache finding files by ref, id and sha256; the S3
//! server going away and coming back mid-ingest (every acknowledged file
//! survives; the put completes or fails naming the object); a writer
//! SIGKILLed mid-put (readers see whole files or nothing, verify stays
//! clean); compare-and-set ref updates from two processes (none lost);
//! damage in the bucket found by verify; `tessera serve --store s3://…`
//! answering a pull.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::storage::{ObjectStore, PutMode};
use tessera_s3::testing::{s3_target, S3Target};
use tessera_s3::S3Store;
use tessera_synth::SplitMix64;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const MIB: usize = 1 << 20;

/// A bucket prefix and a scratch directory; nodes are caches under it.
struct Env {
    t: &'static S3Target,
    url: String,
    tmp: tempfile::TempDir,
    /// Replaces the endpoint (a proxy), when set.
    endpoint: Option<String>,
}

impl Env {
    fn new(t: &'static S3Target, name: &str) -> Env {
        Env {
            url: t.url(name),
            t,
            tmp: tempfile::tempdir().expect("tempdir"),
            endpoint: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, data).expect("write");
        p
    }

    /// `tessera --store URL --cache <tmp>/<node>`.
    fn cmd(&self, node: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--store")
            .arg(&self.url)
            .arg("--cache")
            .arg(self.path(&format!("cache-{node}")))
            .env_remove("TESSERA_STORE")
            .env_remove("TESSERA_CACHE")
            .env("TESSERA_LOG", "warn")
            // Small packs: many objects per put.
            .env("TESSERA_PACK_TARGET_BYTES", (1 << 20).to_string());
        let env = match &self.endpoint {
            Some(e) => self.t.child_env_at(e),
            None => self.t.child_env(),
        };
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, node: &str, args: &[&str]) -> Output {
        self.cmd(node).args(args).output().expect("run tessera")
    }

    fn ok(&self, node: &str, args: &[&str]) -> Vec<u8> {
        let out = self.run(node, args);
        assert!(
            out.status.success(),
            "tessera {args:?} on node {node} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn text(&self, node: &str, args: &[&str]) -> String {
        String::from_utf8(self.ok(node, args)).expect("utf-8")
    }

    /// An S3 client of the test's own (to look at or damage the bucket).
    fn s3(&self) -> S3Store {
        S3Store::from_url(&self.url, self.t.options()).expect("s3 store")
    }

    /// Flips a bit of the ref object of `name` in the bucket; its key.
    fn damage_ref(&self, name: &str) -> String {
        let key = tessera::testing::ref_key(name);
        let s3 = self.s3();
        let mut bad = s3.get(&key).expect("ref object").to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        s3.put(&key, &bad, PutMode::Replace)
            .expect("damage the ref");
        key
    }
}

/// The files under `dir`, recursively, with their sizes (none if missing).
fn walk(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if let Ok(m) = e.metadata() {
            out.push((p, m.len()));
        }
    }
    out
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn cli_round_trip_ranges_dedup_and_every_command_on_s3() {
    let Some(t) = s3_target("cli_round_trip_ranges_dedup_and_every_command_on_s3") else {
        return;
    };
    let env = Env::new(t, "cli");
    let data = tessera_synth::noise(3 * MIB + 1234, 1);
    let src = env.file("w.bin", &data);
    let put = json_lines(&env.text(
        "a",
        &[
            "put",
            "--ref",
            "acme/m@v1:w.bin",
            "--json",
            src.to_str().expect("path"),
        ],
    ));
    let id = put[0]["file_id"].as_str().expect("id").to_string();
    let sha = put[0]["sha256"].as_str().expect("sha").to_string();
    assert_eq!(put[0]["new_file"], true);
    assert!(env.ok("a", &["cat", "acme/m@v1:w.bin"]) == data);
    assert!(
        env.ok(
            "a",
            &["cat", &id, "--offset", "1000000", "--length", "5000"]
        )[..]
            == data[1_000_000..1_005_000]
    );
    // Dedup: the same bytes under another name add no pack.
    let packs = env.s3().list("packs/").expect("list").len();
    let again = json_lines(&env.text(
        "a",
        &[
            "put",
            "--ref",
            "acme/m@v2:w.bin",
            "--json",
            src.to_str().expect("path"),
        ],
    ));
    assert_eq!(again[0]["file_id"].as_str(), Some(id.as_str()));
    assert_eq!(again[0]["new_chunks"], 0);
    assert_eq!(env.s3().list("packs/").expect("list").len(), packs);
    // info, stat, refs, ref set / rm.
    let info: Value =
        serde_json::from_slice(&env.ok("a", &["info", "acme/m@v1:w.bin", "--json"])).expect("json");
    assert_eq!(info["size"], data.len() as u64);
    let stat: Value = serde_json::from_slice(&env.ok("a", &["stat", "--json"])).expect("json");
    assert_eq!(stat["files"], 1);
    assert_eq!(stat["refs"], 2);
    env.ok("a", &["ref", "set", "acme/m@latest", "acme/m@v2:w.bin"]);
    assert!(env
        .text("a", &["refs", "acme/m@"])
        .contains("acme/m@latest"));
    env.ok("a", &["ref", "rm", "acme/m@v1:w.bin"]);
    assert_eq!(code(&env.run("a", &["cat", "acme/m@v1:w.bin"])), 3);
    // Another node sees all of it: by ref, by id, by sha256.
    assert!(env.ok("b", &["cat", "acme/m@latest"]) == data);
    // The pack ranges node b fetched stay in its cache for later commands
    // (bounded; TESSERA_S3_DISK_CACHE_MIB=0 keeps none).
    let cached: u64 = walk(&env.path("cache-b/ranges"))
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert!(
        cached >= data.len() as u64,
        "{cached} bytes of ranges cached"
    );
    let r = env
        .cmd("b2")
        .env("TESSERA_S3_DISK_CACHE_MIB", "0")
        .args(["cat", "acme/m@latest"])
        .output()
        .expect("cat");
    assert!(r.status.success() && r.stdout == data);
    assert!(!env.path("cache-b2/ranges").exists());
    assert!(env.ok("c", &["cat", &id]) == data);
    assert!(env.ok("d", &["cat", &format!("sha256:{sha}")]) == data);
    assert!(!env.text("e", &["refs"]).contains("acme/m@v1:w.bin"));
    let verify = env.text("e", &["verify"]);
    assert!(verify.starts_with("clean:"), "{verify}");
    // repair index: a cache rebuilt from the bucket listing alone.
    let rep: Value =
        serde_json::from_slice(&env.ok("f", &["repair", "index", "--json"])).expect("json");
    assert_eq!(rep["files"], 1);
    assert_eq!(rep["refs"], 2);
    assert_eq!(rep["packs"], packs as u64);
    assert!(rep["problems"].as_array().expect("problems").is_empty());
    let stat: Value = serde_json::from_slice(&env.ok("f", &["stat", "--json"])).expect("json");
    assert_eq!(stat["files"], 1);
    // repair config refuses an intact config (a request that does not
    // apply: exit 2, like every argument the engine refuses).
    let rc = env.run("f", &["repair", "config"]);
    assert_eq!(code(&rc), 2, "{}", String::from_utf8_lossy(&rc.stderr));
    assert!(String::from_utf8_lossy(&rc.stderr).contains("intact"));
    // refresh says what it found.
    let r: Value = serde_json::from_slice(&env.ok("g", &["refresh", "--json"])).expect("json");
    assert_eq!(r["refs_updated"], 2);
    assert_eq!(r["files"], 1);
    // A cache belongs to one store.
    let other = Command::new(BIN)
        .args(["--store", &format!("{}-other", env.url), "--cache"])
        .arg(env.path("cache-a"))
        .args(["stat"])
        .envs(env.t.child_env())
        .output()
        .expect("run");
    assert_ne!(code(&other), 0);
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("cache of"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}

#[test]
fn two_writer_processes_at_once_and_a_reader_with_an_empty_cache() {
    let Some(t) = s3_target("two_writer_processes_at_once_and_a_reader_with_an_empty_cache") else {
        return;
    };
    let env = Env::new(t, "writers");
    let shared = tessera_synth::noise(5 * MIB + 77, 2);
    let mine = [
        tessera_synth::noise(3 * MIB, 3),
        tessera_synth::noise(3 * MIB + 5, 4),
    ];
    // Create the store first (two creators at once is a different race).
    env.ok("a", &["put", "-"]);
    let mut dirs = Vec::new();
    for (i, own) in mine.iter().enumerate() {
        let d = env.path(&format!("repo{i}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("shared.bin"), &shared).expect("write");
        std::fs::write(d.join("own.bin"), own).expect("write");
        dirs.push(d);
    }
    let children: Vec<Child> = ["a", "b"]
        .iter()
        .zip(&dirs)
        .enumerate()
        .map(|(i, (node, d))| {
            env.cmd(node)
                .args(["put", "--json", "--ref-prefix", &format!("w{i}:")])
                .arg(d)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut ids = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "a writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push(json_lines(&String::from_utf8(out.stdout).expect("utf-8")));
    }
    let shared_id = |v: &Vec<Value>| {
        v.iter()
            .find(|f| {
                f["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("shared.bin"))
            })
            .map(|f| f["file_id"].as_str().expect("id").to_string())
            .expect("shared.bin stored")
    };
    assert_eq!(shared_id(&ids[0]), shared_id(&ids[1]), "one file id");
    // A node with an empty cache reads everything, by ref and by id.
    for (i, own) in mine.iter().enumerate() {
        assert!(env.ok("reader", &["cat", &format!("w{i}:shared.bin")]) == shared);
        assert!(env.ok("reader", &["cat", &format!("w{i}:own.bin")]) == *own);
    }
    for f in ids.iter().flatten() {
        let id = f["file_id"].as_str().expect("id");
        let want = if f["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("shared.bin"))
        {
            &shared
        } else {
            &mine[usize::from(f["ref"].as_str().is_some_and(|r| r.starts_with("w1:")))]
        };
        assert!(env.ok("reader2", &["cat", id]) == *want, "file {id}");
    }
    let verify = env.text("reader", &["verify"]);
    assert!(verify.starts_with("clean:"), "{verify}");
    let stat: Value = serde_json::from_slice(&env.ok("reader", &["stat", "--json"])).expect("json");
    // The empty file, shared.bin and two own.bin.
    assert_eq!(stat["files"], 4);
    assert_eq!(stat["refs"], 4);
}

/// A TCP proxy in front of the S3 server that can be "restarted": every
/// connection is cut and new ones are refused for a while.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let p = Proxy {
            port,
            down: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (down, stop, conns) = (p.down.clone(), p.stop.clone(), p.conns.clone());
        std::thread::spawn(move || {
            let mut listener = Some(l);
            while !stop.load(Ordering::SeqCst) {
                if down.load(Ordering::SeqCst) {
                    listener = None; // connections are refused
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let Some(l) = listener.as_ref() else {
                    match TcpListener::bind(("127.0.0.1", port)) {
                        Ok(l) => {
                            l.set_nonblocking(true).expect("nonblocking");
                            listener = Some(l);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                    continue;
                };
                l.set_nonblocking(true).expect("nonblocking");
                match l.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        client.set_nonblocking(false).expect("blocking");
                        let mut cs = conns.lock().expect("lock");
                        for s in [&client, &server] {
                            cs.push(s.try_clone().expect("clone"));
                        }
                        drop(cs);
                        pipe(
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        );
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        p
    }

    /// Cuts every connection and refuses new ones for `for_`.
    fn restart(&self, for_: Duration) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.conns.lock().expect("lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        std::thread::sleep(for_);
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

fn upstream_of(t: &S3Target) -> Option<SocketAddr> {
    let e = t.endpoint_url()?;
    let hostport = e.strip_prefix("http://")?.trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .ok()?
        .next()
}

/// Acknowledged files (`<id>  <path>` lines) of a put's stdout.
fn acknowledged(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(id, p)| (id.to_string(), p.to_string()))
        .collect()
}

#[test]
fn the_s3_server_going_away_mid_ingest_loses_no_acknowledged_file() {
    let Some(t) = s3_target("the_s3_server_going_away_mid_ingest_loses_no_acknowledged_file")
    else {
        return;
    };
    let Some(upstream) = upstream_of(t) else {
        eprintln!("SKIPPED the S3 restart test: the server has no http:// endpoint to proxy");
        return;
    };
    let mut env = Env::new(t, "restart");
    let proxy = Proxy::start(upstream);
    env.endpoint = Some(format!("http://127.0.0.1:{}", proxy.port));
    let mut rng = SplitMix64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    env.ok("w", &["put", "-"]);
    let (mut failed, mut completed, mut hit) = (0, 0, 0);
    let mut sources: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let make = |name: &str, seed: u64, sources: &mut Vec<(PathBuf, Vec<u8>)>| -> PathBuf {
        let dir = env.path(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for i in 0..6 {
            let data = tessera_synth::noise(4 * MIB + i, seed * 100 + i as u64);
            let p = dir.join(format!("f{i}.bin"));
            std::fs::write(&p, &data).expect("write");
            sources.push((p, data));
        }
        dir
    };
    // How long an undisturbed put of a round takes: outages start inside it.
    let t0 = Instant::now();
    let dir = make("calibrate", 99, &mut sources);
    env.ok("w", &["put", dir.to_str().expect("path")]);
    let put_ms = (t0.elapsed().as_millis() as u64).max(200);
    for round in 0..4 {
        let dir = make(&format!("round{round}"), round as u64, &mut sources);
        let started = Instant::now();
        // The last round gives up quickly (one retry), so that a put that
        // fails is seen too.
        let retries = if round == 3 { "1" } else { "8" };
        let child = env
            .cmd("w")
            .env("TESSERA_S3_RETRIES", retries)
            .arg("put")
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn put");
        std::thread::sleep(Duration::from_millis(
            put_ms / 10 + rng.below(put_ms * 7 / 10),
        ));
        let cut_at = started.elapsed();
        let outage = if round == 3 {
            4000
        } else {
            500 + rng.below(5000)
        };
        proxy.restart(Duration::from_millis(outage));
        let mut child = child;
        let running = child.try_wait().expect("try_wait").is_none();
        let out = child.wait_with_output().expect("wait");
        let was_hit = running || started.elapsed() > cut_at + Duration::from_millis(100);
        hit += usize::from(was_hit);
        if round == 3 && was_hit {
            assert!(
                !out.status.success(),
                "with one retry, a put cannot outlast a 4 s outage"
            );
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            completed += 1;
        } else {
            failed += 1;
            assert!(
                err.contains("s3://") && err.contains("tessera: error:"),
                "a failed put names the object: {err}"
            );
        }
        // Every acknowledged file reads back, through the server directly,
        // on a node that never saw the outage.
        let acked = acknowledged(&out.stdout);
        eprintln!(
            "round {round}: put {} ({} files acknowledged){}",
            if out.status.success() {
                "completed"
            } else {
                "failed"
            },
            acked.len(),
            if out.status.success() {
                String::new()
            } else {
                format!(": {}", err.trim())
            }
        );
        let direct = Env {
            t: env.t,
            url: env.url.clone(),
            tmp: tempfile::tempdir().expect("tempdir"),
            endpoint: None,
        };
        for (id, path) in &acked {
            let want = &sources
                .iter()
                .find(|(p, _)| p.to_str() == Some(path))
                .expect("source")
                .1;
            assert!(
                direct.ok("r", &["cat", id]) == *want,
                "acknowledged file {path} ({id}) reads back"
            );
        }
        // The writer goes on after the outage: the same put completes.
        let again = env.run("w", &["put", dir.to_str().expect("path")]);
        assert!(
            again.status.success(),
            "the put after the outage: {}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
    eprintln!(
        "S3 outage mid-ingest (an undisturbed put: {put_ms} ms): {hit} of 4 outages hit a running put; {completed} puts completed, {failed} failed cleanly"
    );
    assert!(hit > 0, "no outage hit a running put");
    let v = env.text("check", &["verify"]);
    assert!(v.starts_with("clean:"), "{v}");
}

#[test]
fn a_writer_killed_mid_put_leaves_nothing_a_reader_trusts() {
    let Some(t) = s3_target("a_writer_killed_mid_put_leaves_nothing_a_reader_trusts") else {
        return;
    };
    let env = Env::new(t, "kill");
    env.ok("w", &["put", "-"]);
    let mut rng = SplitMix64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64),
    );
    let rounds: usize = std::env::var("TESSERA_S3_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    // How long an undisturbed put takes: kills land inside it.
    let size = 12 * MIB;
    let cal = env.file("calibrate.bin", &tessera_synth::noise(size, 499));
    let t0 = Instant::now();
    env.ok("w", &["put", cal.to_str().expect("path")]);
    let put_ms = (t0.elapsed().as_millis() as u64).max(100);
    let mut whole = 0;
    for round in 0..rounds {
        let data = tessera_synth::noise(size + round, 500 + round as u64);
        let src = env.file(&format!("k{round}.bin"), &data);
        let name = format!("kill/r{round}");
        let child = env
            .cmd("w")
            .args(["put", "--ref", &name])
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut child = child;
        std::thread::sleep(Duration::from_millis(rng.below(put_ms * 9 / 10)));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        // A reader with an empty cache: the whole file, or "not found".
        let out = env.run(&format!("r{round}"), &["cat", &name]);
        match code(&out) {
            0 => {
                assert!(
                    out.stdout == data,
                    "round {round}: a partial file was served"
                );
                whole += 1;
            }
            3 => assert!(out.stdout.is_empty()),
            c => panic!(
                "round {round}: reading the ref of a killed put exited {c}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        // The killed writer's cache reopens (its staged leftovers go).
        env.ok("w", &["stat"]);
        let staging = env.path("cache-w/staging");
        let left = std::fs::read_dir(&staging).map_or(0, |d| d.count());
        assert_eq!(left, 0, "staged files left in {}", staging.display());
    }
    eprintln!(
        "SIGKILL mid-put (an undisturbed put: {put_ms} ms): {whole} of {rounds} files were complete when killed"
    );
    assert!(whole < rounds, "no kill landed inside a put");
    // Every object in the bucket is whole: verify reads all of it.
    let v = env.text("verify", &["verify"]);
    assert!(v.starts_with("clean:"), "{v}");
}

#[test]
fn compare_and_set_from_two_processes_loses_no_update() {
    let Some(t) = s3_target("compare_and_set_from_two_processes_loses_no_update") else {
        return;
    };
    let env = Env::new(t, "cas");
    const STEPS: usize = 4;
    let ids: Vec<String> = (0..=2 * STEPS)
        .map(|k| {
            let p = env.file(&format!("v{k}"), format!("version {k}").as_bytes());
            let line = env.text("a", &["put", p.to_str().expect("path")]);
            line.split_whitespace().next().expect("id").to_string()
        })
        .collect();
    env.ok(
        "a",
        &["ref", "set", "c/counter", &ids[0], "--expect", "none"],
    );
    let again = env.run(
        "a",
        &["ref", "set", "c/counter", &ids[1], "--expect", "none"],
    );
    assert_eq!(
        code(&again),
        6,
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let conflicts: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|node| {
                let (env, ids) = (&env, &ids);
                s.spawn(move || {
                    let (mut done, mut lost) = (0, 0);
                    while done < STEPS {
                        let cur = env.text(node, &["info", "c/counter", "--json"]);
                        let cur: Value = serde_json::from_str(&cur).expect("json");
                        let cur = cur["file_id"].as_str().expect("id").to_string();
                        let k = ids.iter().position(|i| *i == cur).expect("chain");
                        let out = env.run(
                            node,
                            &["ref", "set", "c/counter", &ids[k + 1], "--expect", &cur],
                        );
                        match code(&out) {
                            0 => done += 1,
                            6 => lost += 1,
                            c => panic!(
                                "ref set exited {c}: {}",
                                String::from_utf8_lossy(&out.stderr)
                            ),
                        }
                    }
                    lost
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let end: Value =
        serde_json::from_slice(&env.ok("c", &["info", "c/counter", "--json"])).expect("json");
    assert_eq!(
        end["file_id"].as_str(),
        Some(ids[2 * STEPS].as_str()),
        "{} compare-and-sets from two processes moved the ref {} steps",
        2 * STEPS,
        2 * STEPS
    );
    eprintln!("ref compare-and-set, two processes: conflicts {conflicts:?}");
}

#[test]
fn verify_over_the_bucket_finds_damage() {
    let Some(t) = s3_target("verify_over_the_bucket_finds_damage") else {
        return;
    };
    let env = Env::new(t, "damage");
    let data = tessera_synth::noise(2 * MIB + 5, 9);
    let src = env.file("d.bin", &data);
    env.ok("a", &["put", "--ref", "d/x", src.to_str().expect("path")]);
    assert!(env.text("b", &["verify"]).starts_with("clean:"));
    // Flip a byte in the middle of one pack, in the bucket.
    let s3 = env.s3();
    let key = s3.list("packs/").expect("list")[0].clone();
    let mut bytes = s3.get(&key).expect("get");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    s3.put(&key, &bytes, PutMode::Replace).expect("damage");
    let out = env.run("c", &["verify"]);
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    let id = key
        .rsplit('/')
        .next()
        .expect("name")
        .trim_end_matches(".pack");
    assert!(
        text.contains(id),
        "verify names the damaged pack {id}: {text}"
    );
    // A reader never returns the damaged bytes: exit 4.
    let cat = env.run("d", &["cat", "d/x"]);
    assert_eq!(code(&cat), 4);
}

#[test]
fn serve_on_an_s3_store_answers_a_pull() {
    let Some(t) = s3_target("serve_on_an_s3_store_answers_a_pull") else {
        return;
    };
    let env = Env::new(t, "serve");
    let data = tessera_synth::noise(4 * MIB + 3, 13);
    let src = env.file("m.bin", &data);
    env.ok(
        "writer",
        &[
            "put",
            "--ref",
            "acme/m@v1:m.bin",
            src.to_str().expect("path"),
        ],
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut server = env
        .cmd("server")
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--refresh",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("http://127.0.0.1:{port}");
    let pull = |name: &str, out: &Path| -> Output {
        Command::new(BIN)
            .arg("--store")
            .arg(env.path("client-store"))
            .args(["pull", &url, name, "--json", "-o"])
            .arg(out)
            .env_remove("TESSERA_STORE")
            .output()
            .expect("pull")
    };
    let out1 = env.path("out1.bin");
    let r = pull("acme/m@v1:m.bin", &out1);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&out1).expect("out") == data);
    // A file another node stores while the server runs: found by name.
    let data2 = tessera_synth::noise(MIB + 9, 14);
    let src2 = env.file("m2.bin", &data2);
    env.ok(
        "writer",
        &[
            "put",
            "--ref",
            "acme/m@v2:m.bin",
            src2.to_str().expect("path"),
        ],
    );
    let out2 = env.path("out2.bin");
    let r = pull("acme/m@v2:m.bin", &out2);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&out2).expect("out") == data2);
    // A pull whose local store is itself on S3 (another prefix).
    let mirror = Env::new(env.t, "mirror");
    let out3 = env.path("out3.bin");
    let r = mirror
        .cmd("puller")
        .args(["pull", &url, "acme/m@v1:m.bin", "--json", "-o"])
        .arg(&out3)
        .output()
        .expect("pull");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&out3).expect("out") == data);
    let pulled: Value = serde_json::from_slice(&r.stdout).expect("json");
    let id = pulled["file_id"].as_str().expect("file_id");
    assert!(
        mirror.ok("other", &["cat", id]) == data,
        "the mirror holds it"
    );
    // A ref nobody asks the server for shows in its listing after its
    // periodic refresh (every second here).
    env.ok(
        "writer",
        &["ref", "set", "acme/m@v3:m.bin", "acme/m@v2:m.bin"],
    );
    // The server's ref listing, after its next refresh (every second).
    let refs_now = || {
        std::thread::sleep(Duration::from_millis(2500));
        let mut body = String::new();
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            s,
            "GET /v1/refs?prefix=acme/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        s.read_to_string(&mut body).expect("response");
        body
    };
    let body = refs_now();
    assert!(body.contains("acme/m@v3:m.bin"), "{body}");
    assert!(!body.contains("unreadable"), "{body}");
    // A ref object damaged in the bucket: its name is unknown, so the
    // listing says the list may lack a ref, naming the object, until the
    // ref is set again.
    let key = env.damage_ref("acme/m@v3:m.bin");
    let body = refs_now();
    assert!(
        body.contains("\"unreadable\"") && body.contains(&key),
        "{body}"
    );
    env.ok(
        "writer",
        &["ref", "set", "acme/m@v3:m.bin", "acme/m@v2:m.bin"],
    );
    let body = refs_now();
    assert!(
        body.contains("acme/m@v3:m.bin") && !body.contains("unreadable"),
        "{body}"
    );
    server.kill().expect("kill");
    let _ = server.wait();
}

#[test]
fn gc_from_one_process_while_another_writes() {
    let Some(t) = s3_target("gc_from_one_process_while_another_writes") else {
        return;
    };
    let env = Env::new(t, "cli-gc");
    let keep = tessera_synth::noise(2 * MIB, 31);
    let dead = tessera_synth::noise(2 * MIB + 77, 32);
    let (kp, dp) = (env.file("keep.bin", &keep), env.file("dead.bin", &dead));
    let path = |p: &PathBuf| p.to_str().expect("path").to_string();
    env.ok("a", &["put", "--ref", "m/keep", &path(&kp)]);
    let put = json_lines(&env.text("a", &["put", "--ref", "m/dead", "--json", &path(&dp)]));
    let dead_id = put[0]["file_id"].as_str().expect("id").to_string();
    env.ok("a", &["ref", "rm", "m/dead"]);
    // A writer window shorter than twice the writers' 30 s check is refused.
    let short = env.run("c", &["gc", "--grace", "0s", "--writer-window", "10s"]);
    assert_eq!(code(&short), 2, "a refused argument is a usage error");
    assert!(String::from_utf8_lossy(&short.stderr).contains("writer window"));

    // The collector (node c) runs its window; meanwhile node b may not name
    // the condemned file, and a second collector is refused the lease.
    let gc = env
        .cmd("c")
        .args(["gc", "--grace", "0s", "--writer-window", "60s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gc");
    let s3 = env.s3();
    let t0 = Instant::now();
    while !s3.exists("gc/condemned").expect("exists") {
        assert!(t0.elapsed() < Duration::from_secs(60), "no condemned set");
        std::thread::sleep(Duration::from_millis(50));
    }
    let revive = env.run("b", &["ref", "set", "m/revived", &dead_id]);
    assert_eq!(code(&revive), 1);
    assert!(String::from_utf8_lossy(&revive.stderr).contains("condemned"));
    let second = env.run("d", &["gc", "--grace", "0s", "--writer-window", "60s"]);
    assert_ne!(code(&second), 0);
    assert!(String::from_utf8_lossy(&second.stderr).contains("lease"));
    // Writing something new is not held up.
    let other = env.file("other.bin", &tessera_synth::noise(MIB, 33));
    env.ok("b", &["put", "--ref", "m/other", &path(&other)]);

    let out = gc.wait_with_output().expect("gc");
    assert!(
        out.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).expect("gc json");
    assert_eq!(rep["dead_files"], 1, "{rep}");
    assert!(
        rep["dead_packs"].as_u64().expect("dead_packs") >= 1,
        "{rep}"
    );
    assert!(!s3.exists("gc/condemned").expect("exists"));
    // What is named reads whole from a fresh node; verify is clean.
    assert!(env.ok("e", &["cat", "m/keep"]) == keep);
    assert!(env.ok("e", &["cat", "m/other"]) == tessera_synth::noise(MIB, 33));
    env.ok("e", &["verify"]);
    assert_eq!(code(&env.run("e", &["cat", &dead_id])), 3);
}

/// The ref object of `name` in the bucket (its name is in the object in
/// plain text).
fn ref_object_of(s3: &S3Store, name: &str) -> String {
    let needle = name.as_bytes();
    s3.list("refs/")
        .expect("list")
        .into_iter()
        .find(|k| {
            let b = s3.get(k).expect("get");
            b.windows(needle.len()).any(|w| w == needle)
        })
        .unwrap_or_else(|| panic!("no ref object of {name}"))
}

fn flip(s3: &S3Store, key: &str, at: impl Fn(usize) -> usize) {
    let mut b = s3.get(key).expect("get");
    let i = at(b.len());
    b[i] ^= 1;
    s3.put(key, &b, PutMode::Replace).expect("damage");
}

#[test]
fn repair_index_heals_damaged_recipe_and_ref_objects_from_a_nodes_verified_copy() {
    let Some(t) =
        s3_target("repair_index_heals_damaged_recipe_and_ref_objects_from_a_nodes_verified_copy")
    else {
        return;
    };
    let env = Env::new(t, "heal");
    let data = tessera_synth::noise(2 * MIB + 11, 41);
    let src = env.file("h.bin", &data);
    let src = src.to_str().expect("path");
    let put = json_lines(&env.text("a", &["put", "--ref", "heal/keep", "--json", src]));
    let id = put[0]["file_id"].as_str().expect("id").to_string();
    env.ok("a", &["ref", "set", "heal/sum", &id]);
    env.ok("a", &["ref", "set", "heal/field", &id]);
    let s3 = env.s3();
    // One bit of the recipe; the checksum of one ref; the file-id field of
    // another (bytes 16..48 of a ref file).
    let recipe = s3.list("recipes/").expect("list")[0].clone();
    flip(&s3, &recipe, |n| n / 2);
    flip(&s3, &ref_object_of(&s3, "heal/sum"), |n| n - 1);
    let field = ref_object_of(&s3, "heal/field");
    flip(&s3, &field, |_| 20);
    // Node a still reads it from its verified copy; verify says what
    // repair does on this kind of store.
    assert!(env.ok("a", &["cat", "heal/keep"]) == data);
    let v = env.run("a", &["verify"]);
    assert_eq!(code(&v), 4);
    let text = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(
        text.contains("`tessera repair index` rewrites it from the index's verified copy"),
        "{text}"
    );
    assert!(
        text.contains(&format!("`tessera ref set heal/field {id}`")),
        "{text}"
    );
    // Following that advice heals the recipe and the ref whose file-id
    // field still agrees, and reports the other with the file it named.
    let r = env.run("a", &["repair", "index", "--json"]);
    let rep: Value = serde_json::from_slice(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.stderr)));
    let healed = rep["healed"].to_string();
    assert!(healed.contains(&format!("file {id}")), "{rep}");
    assert!(healed.contains("ref heal/sum"), "{rep}");
    assert!(!healed.contains("heal/field"), "{rep}");
    let problems = rep["problems"].to_string();
    assert!(
        problems.contains("heal/field") && problems.contains(&id),
        "{rep}"
    );
    // Every node reads the file again, by the healed ref too.
    for node in ["a", "b"] {
        assert!(env.ok(node, &["cat", "heal/keep"]) == data);
        assert!(env.ok(node, &["cat", "heal/sum"]) == data);
    }
    assert_ne!(code(&env.run("b", &["cat", "heal/field"])), 0);
    // Setting it as verify said makes the store clean.
    env.ok("a", &["ref", "set", "heal/field", &id]);
    let v = env.text("c", &["verify"]);
    assert!(v.starts_with("clean:"), "{v}");
}

#[test]
fn a_stale_node_forgets_what_another_node_collected_and_reports_only_live_damage() {
    let Some(t) =
        s3_target("a_stale_node_forgets_what_another_node_collected_and_reports_only_live_damage")
    else {
        return;
    };
    let env = Env::new(t, "stale");
    let (v1, v2) = (
        tessera_synth::noise(3 * MIB, 51),
        tessera_synth::noise(3 * MIB + 9, 52),
    );
    let (p1, p2) = (env.file("v1.bin", &v1), env.file("v2.bin", &v2));
    let s3 = env.s3();
    let put = json_lines(&env.text(
        "a",
        &["put", "--ref", "m/v1", "--json", p1.to_str().expect("path")],
    ));
    let id1 = put[0]["file_id"].as_str().expect("id").to_string();
    let packs1 = s3.list("packs/").expect("list");
    let recipes1 = s3.list("recipes/").expect("list");
    env.ok("a", &["put", "--ref", "m/v2", p2.to_str().expect("path")]);
    let packs2: Vec<String> = s3
        .list("packs/")
        .expect("list")
        .into_iter()
        .filter(|k| !packs1.contains(k))
        .collect();
    env.ok("a", &["ref", "rm", "m/v1"]);
    // Another node's GC collects unnamed v1: its recipe and packs go.
    for k in recipes1.iter().chain(&packs1) {
        s3.delete(k).expect("delete");
    }
    for k in s3.list("models/").expect("list") {
        if k.contains(&id1) {
            s3.delete(&k).expect("delete");
        }
    }
    // Node a's cache still holds v1: its verify is clean anyway, every time,
    // and it forgot v1.
    for _ in 0..2 {
        let v = env.run("a", &["verify"]);
        assert_eq!(
            code(&v),
            0,
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let stat: Value = serde_json::from_slice(&env.ok("a", &["stat", "--json"])).expect("json");
    assert_eq!(stat["files"], 1, "{stat}");
    assert!(env.ok("a", &["cat", "m/v2"]) == v2);
    // A pack and the recipe a live file needs are damage, named as such.
    s3.delete(&packs2[0]).expect("delete");
    let recipe2 = s3
        .list("recipes/")
        .expect("list")
        .into_iter()
        .next()
        .expect("v2's recipe");
    s3.delete(&recipe2).expect("delete");
    let v = env.run("a", &["verify"]);
    assert_eq!(code(&v), 4);
    let text = String::from_utf8_lossy(&v.stdout).to_string();
    let pack = packs2[0]
        .rsplit('/')
        .next()
        .expect("name")
        .trim_end_matches(".pack");
    assert!(text.contains(pack), "{text}");
    assert!(text.contains("a ref names this file"), "{text}");
    assert!(
        !text.contains("<?xml") && !text.contains("RequestID"),
        "{text}"
    );
}

#[test]
fn a_lost_config_and_an_emptied_prefix_name_the_fix_that_works_on_s3() {
    let Some(t) = s3_target("a_lost_config_and_an_emptied_prefix_name_the_fix_that_works_on_s3")
    else {
        return;
    };
    let env = Env::new(t, "lost");
    let data = tessera_synth::noise(2 * MIB + 3, 61);
    let src = env.file("l.bin", &data);
    let src = src.to_str().expect("path");
    env.ok("a", &["put", "--ref", "l/x", src]);
    let s3 = env.s3();
    let config = s3.get("tessera.store").expect("config");
    s3.delete("tessera.store").expect("delete");
    // Every node is told about `repair config`, which works here.
    let cat = env.run("a", &["cat", "l/x"]);
    assert_eq!(code(&cat), 4);
    assert!(String::from_utf8_lossy(&cat.stderr).contains("tessera repair config"));
    let ri = env.run("b", &["repair", "index"]);
    let err = String::from_utf8_lossy(&ri.stderr).to_string();
    assert!(
        err.contains("tessera repair config") && !err.contains("tessera put"),
        "{err}"
    );
    assert_ne!(code(&env.run("b", &["put", "--ref", "l/y", src])), 0);
    let rc = env.run("b", &["repair", "config"]);
    assert!(
        rc.status.success(),
        "{}",
        String::from_utf8_lossy(&rc.stderr)
    );
    assert_eq!(s3.get("tessera.store").expect("config"), config);
    assert!(env.ok("a", &["cat", "l/x"]) == data);
    assert!(env.ok("c", &["cat", "l/x"]) == data);
    // The whole prefix emptied: node a's message names its own cache.
    for k in s3.list("").expect("list") {
        s3.delete(&k).expect("delete");
    }
    let cat = env.run("a", &["cat", "l/x"]);
    assert_ne!(code(&cat), 0);
    let err = String::from_utf8_lossy(&cat.stderr).to_string();
    let cache = env.path("cache-a").display().to_string();
    assert!(
        err.contains("delete the cache") && err.contains(&cache),
        "{err}"
    );
    // Which is right: without it node a creates a new store there.
    std::fs::remove_dir_all(env.path("cache-a")).expect("rm cache");
    env.ok("a", &["put", "--ref", "l/x", src]);
    assert!(env.ok("d", &["cat", "l/x"]) == data);
}

/// Found by a hostile probe: on a node that had not seen it, a damaged ref
/// object made `refs` print nothing with exit 0 (the ref silently gone),
/// and `cat` of it advised `repair index`, which cannot mend a ref object
/// on a node without a copy. Now `refs` lists the rest and exits 4 naming
/// the object; `cat` says the ref object is damaged and how to set or
/// delete it; setting it again mends it.
#[test]
fn a_damaged_ref_object_is_reported_not_hidden() {
    let Some(t) = s3_target("a_damaged_ref_object_is_reported_not_hidden") else {
        return;
    };
    let env = Env::new(t, "cli-damaged-ref");
    let data = tessera_synth::noise(MIB, 41);
    let src = env.file("w.bin", &data);
    let src = src.to_str().expect("path");
    env.ok("a", &["put", "--ref", "m@v1:w", src]);
    env.ok("a", &["ref", "set", "m@v2:w", "m@v1:w"]);
    let key = env.damage_ref("m@v2:w");

    let refs = env.run("b", &["refs"]);
    assert_eq!(code(&refs), 4, "a listing that may lack a ref is damage");
    let listed = String::from_utf8_lossy(&refs.stdout).to_string();
    assert!(
        listed.contains("m@v1:w") && !listed.contains("m@v2:w"),
        "{listed}"
    );
    let err = String::from_utf8_lossy(&refs.stderr).to_string();
    assert!(err.contains(&key), "{err}");

    let cat = env.run("b", &["cat", "m@v2:w"]);
    assert_eq!(code(&cat), 4);
    let err = String::from_utf8_lossy(&cat.stderr).to_string();
    assert!(
        err.contains("ref file") && err.contains("ref set") && err.contains("ref rm"),
        "{err}"
    );
    assert!(!err.contains("rebuilds the index"), "{err}");

    env.ok("b", &["ref", "set", "m@v2:w", "m@v1:w"]);
    assert!(env.ok("c", &["cat", "m@v2:w"]) == data);
    assert_eq!(code(&env.run("c", &["refs"])), 0);
}
