//! The chunk index at scale: fill it with N chunk entries (10 million by
//! default) the way seals do (one transaction per pack of 1,500 chunks),
//! then measure lookups of indexed chunks (hits) and of absent ones
//! (misses, what every chunk of new data costs), before and after the miss
//! filter is ready, on one thread and on all; then the disk size against
//! the raw entries, the memory (RSS), and a reopen.
//!
//! `cargo bench -p tessera-benches --bench index -- [--entries N] [--lookups N] [--dir DIR] [--json]`
//!
//! `--index PATH` measures an index an earlier run filled with the same
//! `--entries` (kept, not filled again; its insert figures are not shown).

use std::time::{Duration, Instant};

use tessera::testing::{ChunkEntry, ChunkIndex, Compression};
use tessera::{ChunkId, PackId};

/// Key (32-byte id) plus value (pack id, index, offset, lengths,
/// compression) of one chunk entry.
const RAW_ENTRY_BYTES: u64 = 32 + 53;
const CHUNKS_PER_PACK: u64 = 1500;

fn id(n: u64) -> ChunkId {
    ChunkId::of(&n.to_le_bytes())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// Lookups per second of `count` ids drawn by `pick`, on `threads` threads;
/// returns (rate, how many were found).
fn lookups(
    index: &ChunkIndex,
    count: u64,
    threads: u64,
    seed: u64,
    pick: impl Fn(&mut Rng) -> u64 + Sync,
) -> (f64, u64) {
    let t = Instant::now();
    let found: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let pick = &pick;
                s.spawn(move || {
                    let mut rng = Rng(seed * 1000 + k);
                    let mut found = 0;
                    for _ in 0..count / threads {
                        if index.contains(&id(pick(&mut rng))).expect("lookup") {
                            found += 1;
                        }
                    }
                    found
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    (count as f64 / t.elapsed().as_secs_f64(), found)
}

fn main() {
    let mut entries: u64 = 10_000_000;
    let mut count: u64 = 1_000_000;
    let mut dir: Option<std::path::PathBuf> = None;
    let mut json = false;
    let mut existing: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--entries" => {
                entries = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--entries N")
            }
            "--lookups" => {
                count = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--lookups N")
            }
            "--dir" => dir = args.next().map(Into::into),
            "--json" => json = true,
            "--index" => existing = args.next().map(Into::into),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let base = tempfile::tempdir_in(dir.unwrap_or_else(std::env::temp_dir)).expect("tempdir");
    let fill = existing.is_none();
    let path = existing.unwrap_or_else(|| base.path().join("index"));
    let cache = tessera::StoreOptions::default().index_cache_bytes;
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        if !json {
            eprintln!("  {k:<28} {v}");
        }
        out.insert(k.into(), v);
    };
    put("entries", entries.into());
    put("rss_start_MiB", (status_kib("VmRSS") / 1024).into());

    let index = ChunkIndex::open(&path, cache).expect("open");
    let t = Instant::now();
    let mut n = 0u64;
    let mut pack = 0u64;
    let mut last = Instant::now();
    while fill && n < entries {
        let k = CHUNKS_PER_PACK.min(entries - n);
        let es: Vec<ChunkEntry> = (0..k)
            .map(|i| ChunkEntry {
                id: id(n + i),
                offset: 16 + i * 45_000,
                stored_len: 44_900,
                raw_len: 65_536,
                compression: Compression::FloatPlanes,
            })
            .collect();
        index
            .add_pack(PackId(*ChunkId::of(&pack.to_be_bytes()).as_bytes()), &es)
            .expect("add_pack");
        n += k;
        pack += 1;
        // A flush per ~64 k entries, as commits make them (the index merges
        // its tree into its sorted run at flushes).
        if pack.is_multiple_of(64) {
            index.flush().expect("flush");
        }
        if !json && last.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "    {n} entries, {:.0}/s, RSS {} MiB",
                n as f64 / t.elapsed().as_secs_f64(),
                status_kib("VmRSS") / 1024
            );
            last = Instant::now();
        }
    }
    let ins = t.elapsed();
    let t = Instant::now();
    index.flush().expect("flush");
    if fill {
        put(
            "insert_per_s",
            (entries as f64 / ins.as_secs_f64()).round().into(),
        );
        put("flush_s", t.elapsed().as_secs_f64().into());
        put("rss_after_insert_MiB", (status_kib("VmRSS") / 1024).into());
    }

    // Before the filter: every lookup reads the database.
    let (hit1, found) = lookups(&index, count / 4, 1, 1, |r| r.below(entries));
    assert_eq!(found, count / 4, "every inserted chunk is found");
    put("hits_per_s_1_thread", hit1.round().into());
    let (hitn, _) = lookups(&index, count / 4, threads, 2, |r| r.below(entries));
    put(
        &format!("hits_per_s_{threads}_threads"),
        hitn.round().into(),
    );
    // The first lookup started the filter's scan; misses meanwhile go to
    // the database.
    let t = Instant::now();
    let (miss_db, found) = lookups(&index, count / 4, 1, 3, |r| entries + r.below(u64::MAX / 2));
    assert_eq!(found, 0);
    put("misses_per_s_db_1_thread", miss_db.round().into());
    while !index.filter_state().1 {
        std::thread::sleep(Duration::from_millis(20));
    }
    put("filter_ready_s", t.elapsed().as_secs_f64().into());
    put(
        "filter_MiB",
        (index.filter_state().0 as f64 / (1 << 20) as f64).into(),
    );
    // Absent ids found (must be 0; the filter's false positives only cost a
    // database read each, inside the rate).
    let (miss1, found) = lookups(&index, count, 1, 4, |r| entries + r.below(u64::MAX / 2));
    put("misses_per_s_1_thread", miss1.round().into());
    put(
        "absent_found_per_M",
        (found as f64 * 1e6 / count as f64).round().into(),
    );
    let (missn, _) = lookups(&index, count, threads, 5, |r| {
        entries + r.below(u64::MAX / 2)
    });
    put(
        &format!("misses_per_s_{threads}_threads"),
        missn.round().into(),
    );
    let (hit1f, _) = lookups(&index, count / 4, 1, 6, |r| r.below(entries));
    put("hits_per_s_1_thread_filter", hit1f.round().into());

    let disk = dir_bytes(&path);
    let raw = entries * RAW_ENTRY_BYTES;
    put("disk_MB", (disk as f64 / 1e6).into());
    put(
        "sled_size_on_disk_MB",
        (index.size_on_disk().expect("size") as f64 / 1e6).into(),
    );
    put("raw_entries_MB", (raw as f64 / 1e6).into());
    put("disk_over_raw", (disk as f64 / raw as f64).into());
    put("rss_MiB", (status_kib("VmRSS") / 1024).into());
    put("rss_peak_MiB", (status_kib("VmHWM") / 1024).into());

    drop(index);
    let t = Instant::now();
    let index = ChunkIndex::open(&path, cache).expect("reopen");
    put("reopen_s", t.elapsed().as_secs_f64().into());
    let (hit_re, _) = lookups(&index, count / 4, 1, 7, |r| r.below(entries));
    put("hits_per_s_after_reopen", hit_re.round().into());
    put(
        "disk_MB_after_reopen",
        (dir_bytes(&path) as f64 / 1e6).into(),
    );
    put("rss_peak_MiB_end", (status_kib("VmHWM") / 1024).into());
    drop(index);
    if json {
        println!("{}", serde_json::Value::Object(out));
    }
}
