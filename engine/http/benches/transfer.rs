//! Transfer figures over a real loopback server (a bench, not a test):
//!
//! 1. pull of v2 with v1 local: bytes downloaded vs the stored size of the
//!    chunks v2 adds (target ≤ 1.05×) and vs what rsync sends for the same
//!    update (`rsync --no-whole-file --stats`, between two directories);
//! 2. a pull interrupted at a random point (the task dropped mid-transfer,
//!    as a kill drops it) and resumed: extra bytes;
//! 3. push of a fork: bytes uploaded (target 0);
//! 4. pull of a new 1 GiB file: MB/s with every chunk verified, requests.
//!
//! `cargo bench -p tessera-http --bench transfer` (env: TESSERA_BENCH_MIB
//! for the model size of 1–3, default 256; TESSERA_BENCH_BIG_MIB for 4,
//! default 1024; TESSERA_BENCH_SEED).

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::{Store, StoreOptions};
use tessera_http::client::{pull, push, Client, ClientOptions, NoProgress, PushInput};
use tessera_http::{Policy, Server, ServerConfig, ServerStats};
use tessera_synth::{DType, ModelSpec, SplitMix64};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user, system) this process has used, from /proc (Linux);
/// zero elsewhere.
fn cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let tick = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    (tick(11), tick(12))
}

fn open(dir: &Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )
    .expect("open store")
}

fn model(spec: &ModelSpec) -> Vec<u8> {
    let mut v = Vec::with_capacity(spec.total_len() as usize);
    spec.reader().read_to_end(&mut v).expect("generate");
    v
}

struct Running {
    url: String,
    stats: Arc<ServerStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(store: &Store, config: ServerConfig) -> Running {
    let server = Server::new(store.clone(), Policy::open(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let stats = server.stats();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
    });
    Running {
        url,
        stats,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// rsync's "Total bytes sent" for updating `old` to `new` (no whole-file
/// shortcut), with and without -z.
fn rsync_bytes(dir: &Path, old: &[u8], new: &[u8], compress: bool) -> Option<u64> {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&src).ok()?;
    std::fs::create_dir_all(&dst).ok()?;
    std::fs::write(src.join("model.bin"), new).ok()?;
    std::fs::write(dst.join("model.bin"), old).ok()?;
    let mut c = Command::new("rsync");
    c.args(["--no-whole-file", "--ignore-times", "--stats", "-r"]);
    if compress {
        c.arg("-z");
    }
    let out = c
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("Total bytes sent:"))?;
    line.split(':').nth(1)?.trim().replace(',', "").parse().ok()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib = env_u64("TESSERA_BENCH_MIB", 256);
    let big_mib = env_u64("TESSERA_BENCH_BIG_MIB", 1024);
    let seed = env_u64("TESSERA_BENCH_SEED", 7);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    println!("model {mib} MiB (bf16, fine-tune of 10% of tensors), seed {seed}");

    let base = ModelSpec::base(seed, mib << 20, DType::BF16);
    let (tuned, _) = base.finetune(seed + 1, 0.10);
    let (v1, v2) = (model(&base), model(&tuned));
    let srv = open(&root.join("srv"));
    let id1 = srv
        .put_bytes(&v1, &["acme/llm@v1:model.bin"])
        .expect("v1")
        .file_id;
    let id2 = srv
        .put_bytes(&v2, &["acme/llm@v2:model.bin"])
        .expect("v2")
        .file_id;
    rt.block_on(async {
        let s = serve(&srv, ServerConfig::default()).await;
        let c = Client::new(&s.url, ClientOptions::default()).expect("client");
        let local = open(&root.join("local"));
        let out = root.join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        pull(&c, &local, &id1.to_hex(), &out.join("v1.bin"), Arc::new(NoProgress))
            .await
            .expect("pull v1");

        // 1. v2 with v1 local.
        let rec = srv.reconstruction(&id2, None).expect("rec");
        let needed: u64 = local
            .plan_download(&rec, 0, u64::MAX)
            .expect("plan")
            .fetches
            .iter()
            .flat_map(|f| &f.chunks)
            .map(|c| c.record_len)
            .sum();
        let t = Instant::now();
        let r = pull(&c, &local, &id2.to_hex(), &out.join("v2.bin"), Arc::new(NoProgress))
            .await
            .expect("pull v2");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "1. pull v2 with v1 local: {} bytes downloaded in {} requests ({secs:.2} s); the chunks v2 adds are {needed} bytes stored: {:.4}x; v2 is {} bytes",
            r.bytes_downloaded,
            r.requests,
            r.bytes_downloaded as f64 / needed as f64,
            v2.len()
        );
        let rs_dir = root.join("rsync");
        match (
            rsync_bytes(&rs_dir, &v1, &v2, false),
            rsync_bytes(&rs_dir, &v1, &v2, true),
        ) {
            (Some(plain), Some(z)) => println!(
                "   rsync --no-whole-file: {plain} bytes sent ({:.3}x tessera), with -z: {z} bytes ({:.3}x tessera)",
                plain as f64 / r.bytes_downloaded as f64,
                z as f64 / r.bytes_downloaded as f64
            ),
            _ => println!("   rsync: not available (apt-get install rsync)"),
        }
        let _ = std::fs::remove_dir_all(&rs_dir);

        // 3. push of a fork: the v2 file under another name.
        let pushed = push(
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
        println!(
            "3. push of a fork: {} bytes uploaded, {} packs, {} requests",
            pushed.bytes_uploaded, pushed.packs_uploaded, pushed.requests
        );
        s.stop().await;
        local.close().expect("close");
    });

    // 2. Interrupted at a random point and resumed (v1 into an empty store,
    // the server paced so the interruption lands mid-transfer).
    rt.block_on(async {
        let mut rng = SplitMix64::new(seed ^ 0x5eed);
        let s = serve(
            &srv,
            ServerConfig {
                max_rate: Some(25_000_000),
                ..Default::default()
            },
        )
        .await;
        let c = Client::new(&s.url, ClientOptions::default()).expect("client");
        let local = open(&root.join("resume"));
        let rec = srv.reconstruction(&id1, None).expect("rec");
        let needed = local
            .plan_download(&rec, c.options().gap, c.options().max_request)
            .expect("plan")
            .fetch_bytes;
        let expected_secs = needed as f64 / 4.0 / 25e6;
        let at = Duration::from_secs_f64(expected_secs * (0.1 + 0.8 * rng.next_f64()));
        let out = root.join("resume.bin");
        let task = {
            let (c, local, out) = (c.clone(), local.clone(), out.clone());
            tokio::spawn(async move {
                pull(&c, &local, &id1.to_hex(), &out, Arc::new(NoProgress)).await
            })
        };
        tokio::time::sleep(at).await;
        task.abort();
        let _ = task.await;
        let at_kill = ServerStats::get(&s.stats.pack_bytes_sent);
        let r = pull(&c, &local, &id1.to_hex(), &out, Arc::new(NoProgress))
            .await
            .expect("resumed pull");
        let total = ServerStats::get(&s.stats.pack_bytes_sent);
        println!(
            "2. pull interrupted after {:.2} s ({at_kill} of {needed} bytes sent) and resumed: {} bytes sent in all, {} extra ({:.2} MiB; one request is at most {} MiB); the resumed run kept {} bytes of part files",
            at.as_secs_f64(),
            total,
            total.saturating_sub(needed),
            total.saturating_sub(needed) as f64 / (1 << 20) as f64,
            c.options().max_request >> 20,
            r.bytes_resumed
        );
        s.stop().await;
    });
    drop(v1);
    drop(v2);

    // 4. A new 1 GiB file over loopback.
    let big = ModelSpec::base(seed + 100, big_mib << 20, DType::BF16);
    let data = model(&big);
    let idb = srv
        .put_bytes(&data, &["acme/big@v1:model.bin"])
        .expect("put big")
        .file_id;
    let size = data.len() as u64;
    drop(data);
    rt.block_on(async {
        let s = serve(&srv, ServerConfig::default()).await;
        let c = Client::new(&s.url, ClientOptions::default()).expect("client");
        let local = open(&root.join("big"));
        let out = root.join("big.bin");
        let (t, cpu0) = (Instant::now(), cpu_secs());
        let r = pull(&c, &local, &idb.to_hex(), &out, Arc::new(NoProgress))
            .await
            .expect("pull big");
        let secs = t.elapsed().as_secs_f64();
        let cpu1 = cpu_secs();
        println!(
            "4. pull of a new {} MiB file: {secs:.2} s, {:.0} MB/s end to end (every chunk verified, admitted durably into the local store, registered, output written and fsync'd), {} bytes downloaded in {} requests",
            size >> 20,
            size as f64 / 1e6 / secs,
            r.bytes_downloaded,
            r.requests
        );
        println!(
            "   phases: fetch+verify+admit+write (SHA-256 and model sniff in order alongside) {:.2} s ({:.0} MB/s of file bytes), SHA-256 tail + register with the output's fsync {:.2} s, rename {:.2} s",
            r.download_secs,
            size as f64 / 1e6 / r.download_secs,
            r.register_secs,
            r.write_secs
        );
        println!(
            "   CPU (client and server, one process): {:.2} s user, {:.2} s system",
            cpu1.0 - cpu0.0,
            cpu1.1 - cpu0.1
        );
        s.stop().await;
    });
}
