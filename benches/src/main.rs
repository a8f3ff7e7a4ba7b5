//! `tessera-bench`: end-to-end throughput of the engine on synthetic models.
//!
//! Measures, on a fresh store in a temp dir (or `--dir`):
//! - put of new data (a synthetic bf16 model) from memory, from a file, and
//!   from a stream returning 64 KiB per read,
//! - put of the same file again (duplicate path: hash + index lookups only),
//!   from memory (a stream: SHA-256 computed) and from the file on disk
//!   (SHA-256 taken from the stored recipe),
//! - put of a fine-tune (10% of tensors rewritten),
//! - sequential read (`cat`) of the whole file, and
//! - random 1 MiB range reads (rate, and p50/p99 latency in ms).
//!
//! Input is generated into memory first, so generation is not timed.
//! Usage: `cargo run --release -p tessera-benches --bin tessera-bench -- [--size-mib N] [--runs N] [--json] [--dir DIR]`

use std::io::Read;
use std::time::Instant;

use tessera::{Store, StoreOptions};
use tessera_synth::{DType, ModelSpec};

struct Args {
    size_mib: u64,
    runs: usize,
    json: bool,
    dir: Option<std::path::PathBuf>,
    zstd_level: i32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size_mib: 256,
        runs: 3,
        json: false,
        dir: None,
        zstd_level: StoreOptions::default().zstd_level,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--size-mib" => {
                a.size_mib = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--size-mib N")?
            }
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).ok_or("--runs N")?,
            "--dir" => a.dir = Some(it.next().ok_or("--dir DIR")?.into()),
            "--json" => a.json = true,
            "--zstd-level" => {
                a.zstd_level = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--zstd-level N")?
            }
            "-h" | "--help" => {
                println!(
                    "usage: tessera-bench [--size-mib N (256)] [--runs N (3)] [--dir DIR] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn generate(spec: &ModelSpec) -> Vec<u8> {
    let mut v = Vec::with_capacity(spec.total_len() as usize);
    spec.reader()
        .read_to_end(&mut v)
        .expect("generation cannot fail");
    v
}

/// A reader that returns at most `.1` bytes per `read`, like a pipe or a
/// socket.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.1).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tessera-bench: {e}");
            std::process::exit(2);
        }
    };
    let base = ModelSpec::base(1, args.size_mib << 20, DType::BF16);
    let (tuned, _) = base.finetune(2, 0.10);
    eprintln!("generating {} MiB model and its fine-tune…", args.size_mib);
    let v1 = generate(&base);
    let v2 = generate(&tuned);
    let mb = v1.len() as f64 / 1e6;

    let input_dir =
        tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir)).expect("tempdir");
    let v1_file = input_dir.path().join("v1.safetensors");
    std::fs::write(&v1_file, &v1).expect("write input file");
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("put_new_MBps", vec![]),
        ("put_new_file_MBps", vec![]),
        ("put_new_64KiB_reads_MBps", vec![]),
        ("put_dup_MBps", vec![]),
        ("put_dup_file_MBps", vec![]),
        ("put_finetune_MBps", vec![]),
        ("cat_MBps", vec![]),
        ("range_1MiB_per_s", vec![]),
        ("range_1MiB_p50_ms", vec![]),
        ("range_1MiB_p99_ms", vec![]),
    ];
    let mut stored_ratio = 0.0;
    for run in 0..args.runs {
        let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))
            .expect("tempdir");
        let store = Store::open(
            tmp.path(),
            StoreOptions {
                create: true,
                ..Default::default()
            },
        )
        .expect("open");
        let t = Instant::now();
        let r1 = store.put_bytes(&v1, &[]).expect("put new");
        results[0].1.push(mb / t.elapsed().as_secs_f64());
        // The same new data from a file, and from a stream that returns at
        // most 64 KiB per read (a pipe, a socket, an HTTP body), each into a
        // fresh store.
        for (slot, from_file) in [(1, true), (2, false)] {
            let t2 = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))
                .expect("tempdir");
            let s2 = Store::open(
                t2.path(),
                StoreOptions {
                    create: true,
                    ..Default::default()
                },
            )
            .expect("open");
            let t = Instant::now();
            let r = if from_file {
                s2.put_file(&v1_file, &[]).expect("put file")
            } else {
                s2.put("64 KiB reads", Trickle(&v1, 64 << 10), &[])
                    .expect("put stream")
            };
            results[slot].1.push(mb / t.elapsed().as_secs_f64());
            assert_eq!(r.file_id, r1.file_id);
        }
        let t = Instant::now();
        store.put_bytes(&v1, &[]).expect("put dup");
        results[3].1.push(mb / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let r = store.put_file(&v1_file, &[]).expect("put dup file");
        results[4].1.push(mb / t.elapsed().as_secs_f64());
        assert_eq!((r.file_id, r.sha256), (r1.file_id, r1.sha256));
        let t = Instant::now();
        store.put_bytes(&v2, &[]).expect("put finetune");
        results[5]
            .1
            .push(v2.len() as f64 / 1e6 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut reader = store.read(&r1.file_id).expect("read");
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = reader.read(&mut buf).expect("cat");
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        assert_eq!(n, v1.len() as u64);
        results[6].1.push(mb / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut rng = tessera_synth::SplitMix64::new(99 + run as u64);
        let reads = 200;
        let mut lat = Vec::with_capacity(reads);
        for _ in 0..reads {
            let off = rng.below(v1.len() as u64 - (1 << 20));
            let one = Instant::now();
            let got = store.read_range(&r1.file_id, off, 1 << 20).expect("range");
            lat.push(one.elapsed().as_secs_f64() * 1e3);
            assert_eq!(got.len(), 1 << 20);
        }
        results[7].1.push(reads as f64 / t.elapsed().as_secs_f64());
        lat.sort_by(|a, b| a.total_cmp(b));
        results[8].1.push(lat[reads / 2]);
        results[9].1.push(lat[reads * 99 / 100]);
        stored_ratio = r1.new_bytes as f64 / v1.len() as f64;
    }
    if args.json {
        let mut o = serde_json::Map::new();
        o.insert("size_mib".into(), args.size_mib.into());
        o.insert("runs".into(), args.runs.into());
        o.insert("stored_fraction_new".into(), stored_ratio.into());
        for (k, v) in &results {
            o.insert((*k).into(), median(v.clone()).into());
        }
        println!("{}", serde_json::Value::Object(o));
    } else {
        println!(
            "tessera-bench: {} MiB bf16 model, median of {} runs",
            args.size_mib, args.runs
        );
        for (k, v) in &results {
            let digits = if k.ends_with("_ms") { 2 } else { 0 };
            let shown: Vec<String> = v.iter().map(|x| format!("{x:.digits$}")).collect();
            println!(
                "  {k:<24} {:>8.digits$}   (runs: {})",
                median(v.clone()),
                shown.join(", ")
            );
        }
        println!("  stored/raw for new data: {stored_ratio:.3}");
    }
}
