//! `tessera-gcscale`: GC and repack at scale (issue 10's "a GC of a store
//! with 1 M chunks finishes in bounded memory").
//!
//! `build DIR [--chunks N] [--files F]` creates a store in DIR with small
//! chunks (FastCDC min 256, avg 1024, max 4096 bytes, so a million chunks
//! is about 1 GiB) holding F files of unique data, each named by a ref, and
//! deletes every other ref. `gc DIR` and `repack DIR` then run in a fresh
//! process and print one JSON object: the report, the seconds taken, and
//! the process's peak RSS (VmHWM) before and after; `--index-cache-mib N`
//! sets the index's cache (default 256, the store default), which is most of
//! that peak.
//!
//! Usage:
//! `cargo run --release -p tessera-benches --bin tessera-gcscale -- build /tmp/gc1m`
//! then `... -- gc /tmp/gc1m` (or `repack`).

use std::io::Read;
use std::time::{Duration, Instant};

use tessera::{ChunkParams, GcOptions, RepackOptions, Store, StoreOptions};
use tessera_synth::SplitMix64;

fn fail(msg: &str) -> ! {
    eprintln!("tessera-gcscale: {msg}");
    std::process::exit(2);
}

/// Peak resident set size of this process, in bytes (Linux).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kib| kib * 1024)
}

/// Unique pseudo-random bytes (7 random bits per byte), so chunks are all
/// distinct.
struct Data {
    rng: SplitMix64,
    left: u64,
}

impl Read for Data {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            *b = (self.rng.next_u64() as u8) & 0x7f;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

const PARAMS: ChunkParams = ChunkParams {
    min: 256,
    avg: 1024,
    max: 4096,
    normalization: 1,
};

fn build(dir: &str, chunks: u64, files: u64) {
    let store = Store::open(
        dir,
        StoreOptions {
            create: true,
            chunking: Some(PARAMS),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| fail(&format!("open {dir}: {e}")));
    let t = Instant::now();
    let per_file = chunks * u64::from(PARAMS.avg) / files;
    for i in 0..files {
        let data = Data {
            rng: SplitMix64::new(1000 + i),
            left: per_file,
        };
        store
            .put(&format!("file {i}"), data, &[&format!("f/{i}")])
            .unwrap_or_else(|e| fail(&format!("put: {e}")));
        if i % 2 == 1 {
            store
                .delete_ref(&format!("f/{i}"))
                .unwrap_or_else(|e| fail(&format!("delete ref: {e}")));
        }
    }
    let s = store
        .stats()
        .unwrap_or_else(|e| fail(&format!("stats: {e}")));
    store
        .close()
        .unwrap_or_else(|e| fail(&format!("close: {e}")));
    println!(
        "{}",
        serde_json::json!({
            "built": dir,
            "files": s.files,
            "chunks": s.chunks,
            "packs": s.packs,
            "stored_bytes": s.stored_bytes,
            "seconds": t.elapsed().as_secs_f64(),
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| {
                v.parse().unwrap_or_else(|_| fail(&format!("{name} {v}")))
            })
    };
    let (Some(mode), Some(dir)) = (args.first(), args.get(1)) else {
        fail("usage: tessera-gcscale build|gc|repack DIR [--chunks N] [--files F] [--index-cache-mib N]");
    };
    if mode == "build" {
        build(dir, flag("--chunks", 1_000_000), flag("--files", 64));
        return;
    }
    let rss_before_open = peak_rss();
    let store = Store::open(
        dir,
        StoreOptions {
            index_cache_bytes: flag("--index-cache-mib", 256) << 20,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| fail(&format!("open {dir}: {e}")));
    let rss_open = peak_rss();
    let gc = GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    let t = Instant::now();
    let report = match mode.as_str() {
        "gc" => serde_json::to_value(store.gc(&gc).unwrap_or_else(|e| fail(&format!("gc: {e}")))),
        "repack" => serde_json::to_value(
            store
                .repack(&RepackOptions {
                    gc,
                    ..Default::default()
                })
                .unwrap_or_else(|e| fail(&format!("repack: {e}"))),
        ),
        m => fail(&format!("unknown mode {m}")),
    }
    .unwrap_or_else(|e| fail(&e.to_string()));
    let secs = t.elapsed().as_secs_f64();
    store
        .close()
        .unwrap_or_else(|e| fail(&format!("close: {e}")));
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "seconds": secs,
            "peak_rss_before_open": rss_before_open,
            "peak_rss_after_open": rss_open,
            "peak_rss": peak_rss(),
            "report": report,
        })
    );
}
