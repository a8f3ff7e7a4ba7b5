//! codec-report: stored/raw ratio and one-core encode/decode speed of each
//! chunk method on model files, chunked as the engine chunks them (FastCDC
//! 2020, min 16 KiB, avg 64 KiB, max 256 KiB).
//!
//! ```text
//! cargo run --release -p tessera-codec --example codec-report -- \
//!     [--synth-mib N] [--no-synth] [--max-mib N] [--reps N] [--levels 1,3,9,19] \
//!     [FILE[:HINT]]...
//! ```
//!
//! HINT (per file): `bf16`, `f16`, `f32`, `i8`, `quantized`; without one,
//! safetensors and GGUF headers give per-tensor hints and anything else is
//! measured unhinted only. The synthetic models (`tessera_synth`, 64 MiB
//! by default) are safetensors files of one dtype each.
//!
//! Every method stores a chunk raw unless it saves at least 5 % (the
//! engine's rule), so "stored/raw" counts raw-stored chunks at full size.
//! Speeds are raw bytes per second of one thread, the median of `--reps`
//! passes (one pass for zstd levels above 9), timed in the thread's on-CPU
//! time (`/proc/thread-self/schedstat`) where available, so that other
//! jobs on a shared machine do not count.

use std::ops::Range;
use std::time::Instant;

use tessera_codec::{Decoder, DtypeHint, Encoder, EncoderOptions, Hint, Method};
use tessera_synth::{DType, ModelSpec};

struct Args {
    synth_mib: u64,
    max_mib: u64,
    reps: usize,
    levels: Vec<i32>,
    probes: bool,
    /// Path, whole-file hint, and whether to convert F32 tensors to BF16.
    files: Vec<(String, Option<DtypeHint>, bool)>,
}

fn parse_args() -> Args {
    let mut a = Args {
        synth_mib: 64,
        max_mib: 64,
        reps: 3,
        levels: vec![1, 3, 9, 19],
        probes: false,
        files: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match x.as_str() {
            "--synth-mib" => a.synth_mib = num("--synth-mib"),
            "--no-synth" => a.synth_mib = 0,
            "--probes" => a.probes = true,
            "--max-mib" => a.max_mib = num("--max-mib"),
            "--reps" => a.reps = num("--reps").max(1) as usize,
            "--levels" => {
                a.levels = it
                    .next()
                    .expect("--levels needs a list")
                    .split(',')
                    .map(|l| l.parse().expect("level"))
                    .collect()
            }
            "-h" | "--help" => {
                eprintln!(
                    "usage: codec-report [--synth-mib N] [--no-synth] [--probes] [--max-mib N] [--reps N] \
                     [--levels 1,3,9,19] [FILE[:bf16|f16|f32|i8|quantized|as-bf16]]..."
                );
                std::process::exit(0);
            }
            _ => {
                let (path, hint, bf16) = match x.rsplit_once(':') {
                    Some((p, "as-bf16")) => (p.to_string(), None, true),
                    Some((p, h)) if parse_hint(h).is_some() => {
                        (p.to_string(), parse_hint(h), false)
                    }
                    _ => (x.clone(), None, false),
                };
                a.files.push((path, hint, bf16));
            }
        }
    }
    a
}

fn parse_hint(s: &str) -> Option<DtypeHint> {
    Some(match s.to_ascii_lowercase().as_str() {
        // Not a hint: convert the file's F32 tensors to BF16 first.
        "as-bf16" => DtypeHint::Unknown,
        "bf16" => DtypeHint::Bf16,
        "f16" => DtypeHint::F16,
        "f32" => DtypeHint::F32,
        "i8" => DtypeHint::I8,
        "quantized" | "q" => DtypeHint::Quantized,
        _ => return None,
    })
}

/// Byte ranges of tensors and their hints.
type HintMap = Vec<(Range<u64>, DtypeHint)>;

fn safetensors_hints(data: &[u8]) -> Option<HintMap> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(data.get(8..8 + n)?).ok()?;
    let base = 8 + n as u64;
    let mut v = Vec::new();
    for (name, t) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = DtypeHint::from_safetensors(t.get("dtype")?.as_str()?);
        let off = t.get("data_offsets")?.as_array()?;
        let (a, b) = (off.first()?.as_u64()?, off.get(1)?.as_u64()?);
        v.push((base + a..base + b, dtype));
    }
    v.sort_by_key(|(r, _)| r.start);
    Some(v)
}

/// A safetensors file with every F32 tensor rounded to BF16 (to nearest,
/// ties to even, as `torch.Tensor.to(torch.bfloat16)` does).
fn safetensors_to_bf16(data: &[u8]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(data.get(8..8 + n)?).ok()?;
    let base = 8 + n;
    let mut tensors: Vec<(String, serde_json::Value)> =
        header.as_object()?.clone().into_iter().collect();
    tensors.sort_by_key(|(_, t)| {
        t.get("data_offsets")
            .and_then(|o| o[0].as_u64())
            .unwrap_or(0)
    });
    let mut body = Vec::new();
    let mut out_header = serde_json::Map::new();
    for (name, t) in tensors {
        if name == "__metadata__" {
            out_header.insert(name, t);
            continue;
        }
        let off = t.get("data_offsets")?.as_array()?;
        let (a, b) = (off[0].as_u64()? as usize, off[1].as_u64()? as usize);
        let bytes = data.get(base + a..base + b)?;
        let mut t = t.clone();
        let start = body.len();
        if t.get("dtype")?.as_str()? == "F32" {
            for c in bytes.chunks_exact(4) {
                let x = f32::from_le_bytes(c.try_into().ok()?);
                body.extend_from_slice(&tessera_codec::testvec::f32_to_bf16(x).to_le_bytes());
            }
            t["dtype"] = "BF16".into();
        } else {
            body.extend_from_slice(bytes);
        }
        t["data_offsets"] = serde_json::json!([start, body.len()]);
        out_header.insert(name, t);
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(out_header)).ok()?;
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&body);
    Some(out)
}

/// Minimal GGUF (v2/v3) reader: tensor types and data ranges.
fn gguf_hints(data: &[u8], file_len: u64) -> Option<HintMap> {
    struct R<'a>(&'a [u8], usize);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let s = self.0.get(self.1..self.1.checked_add(n)?)?;
            self.1 += n;
            Some(s)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn string(&mut self) -> Option<&[u8]> {
            let n = self.u64()? as usize;
            self.take(n)
        }
        fn skip_value(&mut self, t: u32) -> Option<()> {
            match t {
                0 | 1 | 7 => {
                    self.take(1)?;
                }
                2 | 3 => {
                    self.take(2)?;
                }
                4..=6 => {
                    self.take(4)?;
                }
                10..=12 => {
                    self.take(8)?;
                }
                8 => {
                    self.string()?;
                }
                9 => {
                    let et = self.u32()?;
                    let n = self.u64()?;
                    for _ in 0..n {
                        self.skip_value(et)?;
                    }
                }
                _ => return None,
            }
            Some(())
        }
    }
    if data.get(..4)? != b"GGUF" {
        return None;
    }
    let mut r = R(data, 4);
    let _version = r.u32()?;
    let tensors = r.u64()?;
    let kvs = r.u64()?;
    let mut alignment = 32u64;
    for _ in 0..kvs {
        let key = r.string()?.to_vec();
        let t = r.u32()?;
        if key == b"general.alignment" && t == 4 {
            alignment = r.u32()? as u64;
        } else {
            r.skip_value(t)?;
        }
    }
    let mut infos = Vec::new();
    for _ in 0..tensors {
        r.string()?;
        let dims = r.u32()?;
        for _ in 0..dims {
            r.u64()?;
        }
        let t = r.u32()?;
        let off = r.u64()?;
        infos.push((off, t));
    }
    let start = (r.1 as u64).div_ceil(alignment) * alignment;
    infos.sort();
    let mut v = Vec::new();
    for (i, &(off, t)) in infos.iter().enumerate() {
        let end = infos.get(i + 1).map_or(file_len - start, |n| n.0);
        v.push((start + off..start + end, DtypeHint::from_gguf_type(t)));
    }
    Some(v)
}

/// The hint for the chunk `c`: the tensor covering most of it, with the
/// phase of its elements.
fn chunk_hint(map: &HintMap, c: &Range<u64>) -> Hint {
    let i = map.partition_point(|(r, _)| r.end <= c.start);
    let mut best: Option<(u64, &(Range<u64>, DtypeHint))> = None;
    for t in map[i..].iter().take_while(|(r, _)| r.start < c.end) {
        let overlap = t.0.end.min(c.end) - t.0.start.max(c.start);
        if best.is_none_or(|(o, _)| overlap > o) {
            best = Some((overlap, t));
        }
    }
    match best {
        Some((_, (r, dtype))) => {
            let phase = dtype
                .float_width()
                .map(|w| (r.start as i64 - c.start as i64).rem_euclid(w as i64) as u8);
            Hint {
                dtype: *dtype,
                phase,
            }
        }
        None => Hint::new(DtypeHint::Unknown),
    }
}

/// A clock for one thread's work: the thread's on-CPU time from
/// `/proc/thread-self/schedstat` (nanoseconds, excluding time spent waiting
/// for a CPU, so figures hold up on a shared machine), or wall time where
/// that file does not exist.
struct Clock {
    wall: Instant,
    cpu_ns: Option<u64>,
}

fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Clock {
    fn start() -> Clock {
        Clock {
            cpu_ns: thread_cpu_ns(),
            wall: Instant::now(),
        }
    }
    fn seconds(&self) -> f64 {
        match (self.cpu_ns, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 * 1e-9,
            _ => self.wall.elapsed().as_secs_f64(),
        }
    }
}

/// Shortest timed interval, seconds.
const MIN_TIMED: f64 = 0.3;

/// Passes per timed batch for a pass that took `one` seconds.
fn passes_per_batch(one: f64) -> usize {
    ((MIN_TIMED / one.max(1e-6)).ceil() as usize).clamp(1, 1000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    name: String,
    stored: u64,
    enc_mbs: Option<f64>,
    dec_mbs: f64,
    /// Raw bytes stored by method none / zstd / planes.
    by_method: [u64; 3],
}

/// Encodes every chunk with `f` (returning method code and stored bytes),
/// `reps` times; then decodes `reps` times and checks the result.
fn measure(
    name: &str,
    data: &[u8],
    chunks: &[Range<usize>],
    reps: usize,
    mut f: impl FnMut(&[u8], usize) -> (u8, Vec<u8>),
) -> Row {
    let total = data.len() as f64;
    let mut stored: Vec<(u8, Vec<u8>)> = Vec::new();
    // The on-CPU clock ticks in scheduler ticks (a few ms): time batches of
    // passes lasting at least MIN_TIMED seconds each.
    let wall = Instant::now();
    for (i, c) in chunks.iter().enumerate() {
        stored.push(f(&data[c.clone()], i));
    }
    let batch = passes_per_batch(wall.elapsed().as_secs_f64());
    let mut enc_times = Vec::new();
    for _ in 0..reps {
        let t = Clock::start();
        for _ in 0..batch {
            stored.clear();
            for (i, c) in chunks.iter().enumerate() {
                stored.push(f(&data[c.clone()], i));
            }
        }
        enc_times.push(t.seconds() / batch as f64);
    }
    let mut dec = Decoder::new().expect("decoder");
    let mut out = Vec::new();
    let wall = Instant::now();
    for ((m, s), c) in stored.iter().zip(chunks) {
        dec.decode(*m, s, c.len(), &mut out).expect("decode");
    }
    let batch = passes_per_batch(wall.elapsed().as_secs_f64());
    let mut dec_times = Vec::new();
    for _ in 0..reps.max(3) {
        let t = Clock::start();
        for _ in 0..batch {
            for ((m, s), c) in stored.iter().zip(chunks) {
                dec.decode(*m, s, c.len(), &mut out).expect("decode");
                std::hint::black_box(&out);
            }
        }
        dec_times.push(t.seconds() / batch as f64);
    }
    let mut by_method = [0u64; 3];
    for ((m, s), c) in stored.iter().zip(chunks) {
        dec.decode(*m, s, c.len(), &mut out).expect("decode");
        assert!(out == data[c.clone()], "{name}: round trip failed");
        by_method[*m as usize] += c.len() as u64;
    }
    Row {
        name: name.to_string(),
        stored: stored.iter().map(|(_, s)| s.len() as u64).sum(),
        enc_mbs: Some(total / median(enc_times) / 1e6),
        dec_mbs: total / median(dec_times) / 1e6,
        by_method,
    }
}

fn report(title: &str, data: &[u8], hints: Option<HintMap>, args: &Args) {
    let chunks: Vec<Range<usize>> =
        fastcdc::v2020::FastCDC::new(data, 16 << 10, 64 << 10, 256 << 10)
            .map(|c| c.offset..c.offset + c.length)
            .collect();
    println!(
        "\n### {title}\n\n{} bytes ({:.1} MiB), {} chunks (mean {:.0} KiB)\n",
        data.len(),
        data.len() as f64 / (1 << 20) as f64,
        chunks.len(),
        data.len() as f64 / chunks.len().max(1) as f64 / 1024.0
    );
    let mut rows = Vec::new();
    let mut none = measure("none", data, &chunks, 1, |c, _| (0, c.to_vec()));
    none.enc_mbs = None;
    rows.push(none);
    for &level in &args.levels {
        let mut z = zstd::bulk::Compressor::new(level).expect("zstd");
        let reps = if level > 9 { 1 } else { args.reps };
        rows.push(measure(
            &format!("zstd -{level}"),
            data,
            &chunks,
            reps,
            |c, _| {
                let s = z.compress(c).expect("zstd");
                if (s.len() as f64) <= c.len() as f64 * 0.95 {
                    (1, s)
                } else {
                    (0, c.to_vec())
                }
            },
        ));
    }
    let mut enc = Encoder::new(EncoderOptions::default()).expect("encoder");
    rows.push(measure(
        "codec, no hint",
        data,
        &chunks,
        args.reps,
        |c, _| {
            let e = enc.encode(c, DtypeHint::Unknown).expect("encode");
            (e.method.code(), e.bytes.to_vec())
        },
    ));
    if let Some(map) = &hints {
        let whole_file = map.len() == 1 && map[0].0.start == 0 && map[0].0.end >= data.len() as u64;
        let per_chunk: Vec<Hint> = chunks
            .iter()
            .map(|c| {
                let h = chunk_hint(map, &(c.start as u64..c.end as u64));
                if whole_file {
                    Hint::new(h.dtype)
                } else {
                    h
                }
            })
            .collect();
        rows.push(measure(
            "codec, dtype hint",
            data,
            &chunks,
            args.reps,
            |c, i| {
                let e = enc.encode(c, per_chunk[i]).expect("encode");
                (e.method.code(), e.bytes.to_vec())
            },
        ));
    }
    println!("| method | stored/raw | encode MB/s | decode MB/s | raw bytes stored as none / zstd / planes |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for r in rows {
        let pct = |x: u64| 100.0 * x as f64 / data.len().max(1) as f64;
        println!(
            "| {} | {:.3} | {} | {:.0} | {:.0} % / {:.0} % / {:.0} % |",
            r.name,
            r.stored as f64 / data.len().max(1) as f64,
            r.enc_mbs.map_or("–".to_string(), |m| format!("{m:.0}")),
            r.dec_mbs,
            pct(r.by_method[0]),
            pct(r.by_method[1]),
            pct(r.by_method[2]),
        );
    }
}

/// Cost of rejecting incompressible chunks, and Huffman speed by entropy.
fn probes(args: &Args) {
    let mut s = 5u64;
    let random: Vec<u8> = (0..32usize << 20)
        .map(|_| tessera_codec::testvec::splitmix64(&mut s) as u8)
        .collect();
    let chunks: Vec<Range<usize>> = (0..random.len())
        .step_by(64 << 10)
        .map(|a| a..a + (64 << 10))
        .collect();
    println!("\n### probes: 32 MiB of random bytes in 64 KiB chunks (encode only, no copy)\n");
    println!("| hint | method | encode MB/s |\n| --- | --- | ---: |");
    let mut enc = Encoder::new(EncoderOptions::default()).expect("encoder");
    for hint in [
        DtypeHint::Unknown,
        DtypeHint::Bf16,
        DtypeHint::F32,
        DtypeHint::Quantized,
        DtypeHint::I8,
    ] {
        let mut pass = || {
            let mut methods = 0u64;
            for c in &chunks {
                methods |= 1
                    << enc
                        .encode(&random[c.clone()], hint)
                        .expect("encode")
                        .method
                        .code();
            }
            methods
        };
        let wall = Instant::now();
        let methods = pass();
        let batch = passes_per_batch(wall.elapsed().as_secs_f64());
        let mut times = Vec::new();
        for _ in 0..args.reps {
            let t = Clock::start();
            for _ in 0..batch {
                std::hint::black_box(pass());
            }
            times.push(t.seconds() / batch as f64);
        }
        let names: Vec<&str> = Method::ALL
            .iter()
            .filter(|m| methods & (1 << m.code()) != 0)
            .map(|m| m.name())
            .collect();
        println!(
            "| {hint:?} | {} | {:.0} |",
            names.join(", "),
            random.len() as f64 / median(times) / 1e6
        );
    }
    println!("\n### probes: one Huffman plane (int8 values, normal with std s), 64 KiB chunks, hint I8\n");
    println!("| std s | stored/raw (bits a byte) | encode MB/s | decode MB/s |\n| --- | ---: | ---: | ---: |");
    for spread in [1.0, 8.0, 16.0, 40.0] {
        let data: Vec<u8> = tessera_codec::testvec::normal_f32_values(32 << 20, 3, spread)
            .into_iter()
            .map(|x| (x.round() as i32).clamp(-127, 127) as i8 as u8)
            .collect();
        let r = measure("int8", &data, &chunks, args.reps, |c, _| {
            let e = enc.encode(c, DtypeHint::I8).expect("encode");
            (e.method.code(), e.bytes.to_vec())
        });
        let ratio = r.stored as f64 / data.len() as f64;
        println!(
            "| {spread} | {ratio:.3} ({:.2}) | {:.0} | {:.0} |",
            ratio * 8.0,
            r.enc_mbs.unwrap_or(0.0),
            r.dec_mbs
        );
    }
}

fn main() {
    let args = parse_args();
    println!(
        "codec-report: FastCDC 2020 16/64/256 KiB chunks, one thread, min saving 5 %, \
         medians of {} passes, speeds per {} second",
        args.reps,
        if thread_cpu_ns().is_some() {
            "on-CPU (schedstat)"
        } else {
            "wall-clock"
        }
    );
    if args.probes {
        probes(&args);
    }
    if args.synth_mib > 0 {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let data = ModelSpec::base(1, args.synth_mib << 20, dtype).to_bytes();
            let hints = safetensors_hints(&data);
            report(
                &format!(
                    "synthetic {} (tessera_synth ModelSpec::base(1, {} MiB))",
                    dtype.name(),
                    args.synth_mib
                ),
                &data,
                hints,
                &args,
            );
        }
    }
    for (path, hint, to_bf16) in &args.files {
        let mut full = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        if *to_bf16 {
            full = safetensors_to_bf16(&full).unwrap_or_else(|| panic!("{path}: not safetensors"));
        }
        let file_len = full.len() as u64;
        let max = (args.max_mib << 20) as usize;
        let data = &full[..full.len().min(max)];
        let (hints, kind) = match hint {
            // No element alignment is known for a whole-file hint.
            Some(h) => (
                Some(vec![(0..file_len, *h)]),
                format!("hint {h:?} for the whole file"),
            ),
            None => match safetensors_hints(&full) {
                Some(m) => (Some(m), "safetensors header hints".to_string()),
                None => match gguf_hints(&full, file_len) {
                    Some(m) => (Some(m), "GGUF header hints".to_string()),
                    None => (None, "no hint".to_string()),
                },
            },
        };
        let mut name = std::path::Path::new(path)
            .file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        if *to_bf16 {
            name.push_str(", F32 tensors rounded to BF16");
        }
        let trunc = if data.len() < full.len() {
            format!(
                ", first {} MiB of {:.1} MiB",
                args.max_mib,
                file_len as f64 / (1 << 20) as f64
            )
        } else {
            String::new()
        };
        report(&format!("{name} ({kind}{trunc})"), data, hints, &args);
    }
}
