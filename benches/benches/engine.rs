//! Criterion micro-benchmarks of the engine's hot paths: chunking (serial
//! against parallel segments), hashing, the chunk codec (with and without
//! the dtype hint the model header gives), ingest (new data, a duplicate
//! from a stream and from a file, a fine-tune), whole-file reads and random
//! range reads.
//!
//! `cargo bench -p tessera-benches --bench engine [-- FILTER]`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::{BufRead, Read};
use tessera::testing::Chunker;
use tessera::{ChunkId, ChunkParams, Store, StoreOptions};
use tessera_codec::{Decoder, DtypeHint, Encoder, EncoderOptions, Hint};
use tessera_synth::{DType, ModelSpec};

const MIB: usize = 1 << 20;

fn generate(spec: &ModelSpec) -> Vec<u8> {
    let mut v = Vec::new();
    spec.reader().read_to_end(&mut v).expect("generate");
    v
}

fn model(bytes: u64) -> Vec<u8> {
    generate(&ModelSpec::base(3, bytes, DType::BF16))
}

/// A reader that returns at most `.1` bytes per `read`, like a pipe.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.1).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Chunks `src` in batches of `batch` bytes, cutting each batch in
/// segments of `segment` bytes (`usize::MAX`: serially); returns the
/// number of chunks.
fn chunk_count(src: impl Read, batch: usize, segment: usize) -> usize {
    let mut ch = Chunker::new(src, ChunkParams::default(), batch).expect("params");
    ch.set_segment(segment);
    let mut n = 0;
    while let Some(batch) = ch.next_batch().expect("read") {
        n += batch.chunks.len();
    }
    n
}

fn chunking(c: &mut Criterion) {
    let data = model(32 << 20);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc_whole_buffer_serial_32MiB", |b| {
        b.iter(|| ChunkParams::default().boundaries(&data).len())
    });
    g.bench_function("stream_8MiB_batches_serial", |b| {
        b.iter(|| chunk_count(&data[..], 8 * MIB, usize::MAX))
    });
    for seg in [MIB, 2 * MIB, 4 * MIB] {
        g.bench_with_input(
            BenchmarkId::new("stream_8MiB_batches_parallel_segment", seg),
            &seg,
            |b, &seg| b.iter(|| chunk_count(&data[..], 8 * MIB, seg)),
        );
    }
    g.bench_function("stream_8MiB_batches_parallel_64KiB_reads", |b| {
        b.iter(|| chunk_count(Trickle(&data[..], 64 << 10), 8 * MIB, MIB))
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    use rayon::prelude::*;
    use sha2::Digest;
    let data = model(32 << 20);
    let bounds = ChunkParams::default().boundaries(&data);
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("blake3_chunk_ids_1_thread", |b| {
        b.iter(|| {
            bounds
                .iter()
                .map(|r| ChunkId::of(&data[r.clone()]).0[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    g.bench_function("blake3_chunk_ids_pool", |b| {
        b.iter(|| {
            bounds
                .par_iter()
                .map(|r| ChunkId::of(&data[r.clone()]).0[0])
                .reduce(|| 0u8, |a, x| a ^ x)
        })
    });
    g.bench_function("sha256_whole", |b| {
        b.iter(|| sha2::Sha256::digest(&data)[0])
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let data = model(16 << 20);
    let bounds = ChunkParams::default().boundaries(&data);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    let mut enc = Encoder::new(EncoderOptions::default()).expect("encoder");
    for (name, hint) in [
        ("encode_no_hint", Hint::new(DtypeHint::Unknown)),
        // The synthetic model's tensors start 2-byte aligned: phase from
        // each chunk's offset.
        ("encode_bf16_hint", Hint::new(DtypeHint::Bf16)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                bounds
                    .iter()
                    .map(|r| {
                        let h = match hint.dtype {
                            DtypeHint::Bf16 => Hint::at_offset(DtypeHint::Bf16, r.start as u64),
                            _ => hint,
                        };
                        enc.encode(&data[r.clone()], h).expect("encode").bytes.len()
                    })
                    .sum::<usize>()
            })
        });
    }
    let encoded: Vec<(u8, Vec<u8>, usize)> = bounds
        .iter()
        .map(|r| {
            let e = enc
                .encode(&data[r.clone()], Hint::new(DtypeHint::Unknown))
                .expect("encode");
            (e.method.code(), e.bytes.to_vec(), r.len())
        })
        .collect();
    let mut dec = Decoder::new().expect("decoder");
    g.bench_function("decode", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            encoded
                .iter()
                .map(|(m, s, len)| {
                    dec.decode(*m, s, *len, &mut out).expect("decode");
                    out.len()
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

fn fresh(dir: &std::path::Path, level: i32) -> Store {
    Store::open(
        dir,
        StoreOptions {
            create: true,
            zstd_level: level,
            ..Default::default()
        },
    )
    .expect("open")
}

fn ingest(c: &mut Criterion) {
    let base = ModelSpec::base(3, 64 << 20, DType::BF16);
    let data = generate(&base);
    let tuned = generate(&base.finetune(4, 0.10).0);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for level in [0, 3] {
        g.bench_with_input(BenchmarkId::new("put_new_zstd", level), &level, |b, &l| {
            b.iter_with_setup(
                || tempfile::tempdir().expect("tempdir"),
                |dir| {
                    fresh(dir.path(), l)
                        .put_bytes(&data, &[])
                        .expect("put")
                        .new_bytes
                },
            )
        });
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = fresh(&dir.path().join("s"), 3);
    s.put_bytes(&data, &[]).expect("put");
    let input = dir.path().join("model.safetensors");
    std::fs::write(&input, &data).expect("write input");
    g.bench_function("put_duplicate_stream", |b| {
        b.iter(|| s.put_bytes(&data, &[]).expect("put").new_bytes)
    });
    g.bench_function("put_duplicate_file", |b| {
        b.iter(|| s.put_file(&input, &[]).expect("put").new_bytes)
    });
    g.bench_function("put_finetune_then_drop", |b| {
        b.iter_with_setup(
            || {
                let d = tempfile::tempdir().expect("tempdir");
                let st = fresh(d.path(), 3);
                st.put_bytes(&data, &[]).expect("put base");
                (d, st)
            },
            |(_d, st)| st.put_bytes(&tuned, &[]).expect("put").new_bytes,
        )
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let data = model(64 << 20);
    let dir = tempfile::tempdir().expect("tempdir");
    let s = fresh(dir.path(), 3);
    let id = s.put_bytes(&data, &[]).expect("put").file_id;
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("read_whole_read_all", |b| {
        b.iter(|| s.read(&id).expect("open").read_all().expect("read").len())
    });
    g.bench_function("read_whole_bufread_chunks", |b| {
        b.iter(|| {
            let mut r = s.read(&id).expect("open");
            let mut n = 0;
            loop {
                let k = r.fill_buf().expect("read").len();
                if k == 0 {
                    break n;
                }
                n += k;
                r.consume(k);
            }
        })
    });
    g.bench_function("read_range_whole", |b| {
        b.iter(|| {
            s.read_range(&id, 0, data.len() as u64)
                .expect("range")
                .len()
        })
    });
    g.throughput(Throughput::Bytes(MIB as u64));
    let mut rng = tessera_synth::SplitMix64::new(7);
    g.bench_function("read_range_random_1MiB", |b| {
        b.iter(|| {
            let off = rng.below((data.len() - MIB) as u64);
            s.read_range(&id, off, MIB as u64).expect("range").len()
        })
    });
    g.finish();
}

criterion_group!(benches, chunking, hashing, codec, ingest, reads);
criterion_main!(benches);
