//! The format-aware boundary experiment (issue: "Knows model formats"):
//! does forcing chunk cuts at tensor boundaries dedup a second version of a
//! model against the first better than plain FastCDC?
//!
//! For each pair (first, second) it chunks both files twice with the
//! store's default parameters: once over the whole file (plain FastCDC, what
//! the engine does) and once separately over each segment between the
//! tensor boundaries `tessera_model::tensor_boundaries` reports. It prints
//! the share of the second version's bytes that sit in chunks the first
//! already has, and the chunk counts.
//!
//! Pairs: the synthetic five-version model (fine-tune, inserted tensor,
//! int8 variant), and for every real model file given on the command line
//! derived second versions built from its own tensors: a re-export
//! whose header grew by 32 bytes (all data shifted), a fine-tune that
//! rewrote every 4th tensor, a LoRA merged into the attention's query and
//! value projections (when the names show them), a 1 MiB tensor inserted
//! mid-file, and the tensors in reverse order.
//!
//! ```sh
//! cargo run --release -p tessera-benches --bin tessera-boundaries -- \
//!     --size-mib 128 [--json] FILE.safetensors FILE.gguf ...
//! ```

use std::collections::HashSet;
use std::ops::Range;

use tessera::ChunkParams;
use tessera_model::{sniff, tensor_boundaries};
use tessera_synth::{demo_repo, noise, SplitMix64};

/// A file and where its tensors start and end.
struct Version {
    bytes: Vec<u8>,
    cuts: Vec<u64>,
}

impl Version {
    /// Boundaries as the engine's model detection reports them.
    fn sniffed(bytes: Vec<u8>) -> Version {
        let cuts = tensor_boundaries(&sniff(&bytes));
        Version { bytes, cuts }
    }
}

/// Chunks of `v`: plain, or cut at its tensor boundaries as well.
fn chunks(p: &ChunkParams, v: &Version, at_tensors: bool) -> Vec<Range<usize>> {
    if !at_tensors {
        return p.boundaries(&v.bytes);
    }
    let mut out = Vec::new();
    let mut start = 0usize;
    let ends = v.cuts.iter().map(|&c| c as usize).chain([v.bytes.len()]);
    for end in ends {
        if end <= start || end > v.bytes.len() {
            continue;
        }
        out.extend(
            p.boundaries(&v.bytes[start..end])
                .into_iter()
                .map(|r| r.start + start..r.end + start),
        );
        start = end;
    }
    out
}

/// The share of `b`'s bytes in chunks `a` has, and the chunk count of `b`.
fn shared(p: &ChunkParams, a: &Version, b: &Version, at_tensors: bool) -> (f64, usize) {
    let have: HashSet<blake3::Hash> = chunks(p, a, at_tensors)
        .into_iter()
        .map(|r| blake3::hash(&a.bytes[r]))
        .collect();
    let cb = chunks(p, b, at_tensors);
    let found: usize = cb
        .iter()
        .filter(|r| have.contains(&blake3::hash(&b.bytes[(*r).clone()])))
        .map(|r| r.len())
        .sum();
    (found as f64 / b.bytes.len().max(1) as f64, cb.len())
}

/// A real file cut into pieces: the bytes before the first tensor, then
/// each tensor with the bytes after it up to the next one (padding).
#[derive(Clone)]
struct Pieces {
    prefix: Vec<u8>,
    tensors: Vec<(Vec<u8>, Vec<u8>)>,
    /// Tensor names, in the order of `tensors`.
    names: Vec<String>,
}

impl Pieces {
    fn of(bytes: &[u8]) -> Option<Pieces> {
        let info = sniff(bytes);
        let mut t: Vec<(u64, u64, String)> = info
            .tensors
            .iter()
            .filter_map(|t| t.offset.map(|o| (o, t.length, t.name.clone())))
            .filter(|(_, l, _)| *l > 0)
            .collect();
        t.sort_unstable();
        t.dedup_by_key(|x| x.0);
        let first = t.first()?.0 as usize;
        let mut tensors = Vec::new();
        for (i, &(o, l, _)) in t.iter().enumerate() {
            let next = t.get(i + 1).map_or(bytes.len() as u64, |n| n.0);
            let (o, e, n) = (o as usize, (o + l) as usize, next as usize);
            if e > n || n > bytes.len() {
                return None; // overlapping tensors: not a layout to rebuild
            }
            tensors.push((bytes[o..e].to_vec(), bytes[e..n].to_vec()));
        }
        Some(Pieces {
            prefix: bytes[..first].to_vec(),
            tensors,
            names: t.into_iter().map(|x| x.2).collect(),
        })
    }

    /// The file these pieces make, with tensor boundaries where they are.
    fn build(&self) -> Version {
        let mut bytes = self.prefix.clone();
        let mut cuts = Vec::new();
        for (t, pad) in &self.tensors {
            cuts.push(bytes.len() as u64);
            bytes.extend_from_slice(t);
            cuts.push(bytes.len() as u64);
            bytes.extend_from_slice(pad);
        }
        cuts.retain(|&c| c > 0 && c < bytes.len() as u64);
        cuts.dedup();
        Version { bytes, cuts }
    }
}

/// Rewrites the tensors `pick` selects (every byte's low bits perturbed).
fn rewrite(p: &Pieces, pick: impl Fn(usize, &str) -> bool) -> Version {
    let mut q = p.clone();
    let mut rng = SplitMix64::new(7);
    for (i, (t, _)) in q.tensors.iter_mut().enumerate() {
        if pick(i, &p.names[i]) {
            for b in t.iter_mut() {
                *b ^= (rng.next_u64() & 3) as u8;
            }
        }
    }
    q.build()
}

/// The derived second versions of a real file.
fn derived(p: &Pieces) -> Vec<(&'static str, Version)> {
    let mut out = Vec::new();
    let mut shifted = p.clone();
    let at = shifted.prefix.len() / 2;
    shifted.prefix.splice(at..at, [b' '; 32]);
    out.push(("re-export, header 32 bytes longer", shifted.build()));
    out.push((
        "fine-tune, every 4th tensor rewritten",
        rewrite(p, |i, _| i % 4 == 1),
    ));
    // What merging a LoRA adapter on the attention's query and value
    // projections changes (names as in GGUF/llama and BERT/HF checkpoints).
    let qv = |_: usize, n: &str| {
        let n = n.to_ascii_lowercase();
        ["attn_q.", "attn_v.", "q_proj", "v_proj", "query.", "value."]
            .iter()
            .any(|k| n.contains(k))
    };
    if p.names.iter().enumerate().any(|(i, n)| qv(i, n)) {
        out.push(("LoRA merged into attention q and v", rewrite(p, qv)));
    }
    let mut inserted = p.clone();
    let mid = inserted.tensors.len() / 2;
    inserted
        .tensors
        .insert(mid, (noise(1 << 20, 9), Vec::new()));
    inserted.names.insert(mid, "inserted".into());
    out.push(("a 1 MiB tensor inserted mid-file", inserted.build()));
    let mut reversed = p.clone();
    reversed.tensors.reverse();
    out.push(("same tensors in reverse order", reversed.build()));
    out
}

struct Row {
    source: String,
    second: String,
    plain: (f64, usize),
    cut: (f64, usize),
}

fn measure(p: &ChunkParams, source: &str, second: &str, a: &Version, b: &Version) -> Row {
    Row {
        source: source.to_string(),
        second: second.to_string(),
        plain: shared(p, a, b, false),
        cut: shared(p, a, b, true),
    }
}

fn main() {
    let mut size_mib = 128u64;
    let mut json = false;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-mib" => {
                size_mib = match args.next().and_then(|v| v.parse().ok()) {
                    Some(v) => v,
                    None => fail("--size-mib takes a number of MiB"),
                }
            }
            "--json" => json = true,
            "-h" | "--help" => {
                println!(
                    "usage: tessera-boundaries [--size-mib N] [--json] [MODEL_FILE...]\n\n\
                     Share of a second model version's bytes found in the first's chunks,\n\
                     plain FastCDC against cuts forced at tensor boundaries: the synthetic\n\
                     five-version model of N MiB (default 128), and versions derived\n\
                     from each real safetensors/GGUF file given."
                );
                return;
            }
            _ => files.push(a),
        }
    }
    let p = ChunkParams::default();
    let mut rows = Vec::new();

    let repo = demo_repo(1, size_mib << 20);
    let model = |i: usize| Version::sniffed(repo[i].files[0].1.to_bytes());
    let v1 = model(0);
    let v2 = model(1);
    rows.push(measure(&p, "synthetic", "v2 fine-tune of v1", &v1, &v2));
    rows.push(measure(
        &p,
        "synthetic",
        "v3 (v2 + inserted tensor)",
        &v2,
        &model(2),
    ));
    rows.push(measure(&p, "synthetic", "v4 int8 of v1", &v1, &model(3)));
    drop((v1, v2));

    for f in &files {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => fail(&format!("{f}: {e}")),
        };
        let Some(pieces) = Pieces::of(&bytes) else {
            eprintln!("{f}: no tensors stored as plain bytes; skipped");
            continue;
        };
        let first = pieces.build();
        if first.bytes != bytes {
            eprintln!("{f}: does not rebuild from its tensors; skipped");
            continue;
        }
        let name = std::path::Path::new(f)
            .file_name()
            .map_or_else(|| f.clone(), |n| n.to_string_lossy().into_owned());
        for (what, second) in derived(&pieces) {
            rows.push(measure(&p, &name, what, &first, &second));
        }
    }

    if json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({"source": r.source, "second": r.second,
                    "plain_shared": r.plain.0, "plain_chunks": r.plain.1,
                    "cut_shared": r.cut.0, "cut_chunks": r.cut.1})
            );
        }
        return;
    }
    println!("| source | second version | plain FastCDC | cut at tensor boundaries | gain |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} % ({} chunks) | {:.2} % ({} chunks) | {:+.2} pts |",
            r.source,
            r.second,
            r.plain.0 * 100.0,
            r.plain.1,
            r.cut.0 * 100.0,
            r.cut.1,
            (r.cut.0 - r.plain.0) * 100.0
        );
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("tessera-boundaries: {msg}");
    std::process::exit(2)
}
