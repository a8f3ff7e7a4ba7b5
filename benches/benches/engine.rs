//! Criterion micro-benchmarks of the engine's hot paths.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::Read;
use tessera::testing::Chunker;
use tessera::{ChunkId, ChunkParams, Store, StoreOptions};
use tessera_synth::{DType, ModelSpec};

fn model(bytes: u64) -> Vec<u8> {
    let mut v = Vec::new();
    ModelSpec::base(3, bytes, DType::BF16)
        .reader()
        .read_to_end(&mut v)
        .expect("generate");
    v
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

fn chunking(c: &mut Criterion) {
    let data = model(32 << 20);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc_stream_32MiB", |b| {
        b.iter(|| {
            let mut ch = Chunker::new(&data[..], ChunkParams::default(), 16 << 20).expect("params");
            let mut n = 0;
            while let Some(batch) = ch.next_batch().expect("read") {
                n += batch.chunks.len();
            }
            n
        })
    });
    g.bench_function("fastcdc_stream_32MiB_64KiB_reads", |b| {
        b.iter(|| {
            let src = Trickle(&data[..], 64 << 10);
            let mut ch = Chunker::new(src, ChunkParams::default(), 16 << 20).expect("params");
            let mut n = 0;
            while let Some(batch) = ch.next_batch().expect("read") {
                n += batch.chunks.len();
            }
            n
        })
    });
    g.bench_function("blake3_chunks_32MiB", |b| {
        let bounds = ChunkParams::default().boundaries(&data);
        b.iter(|| {
            bounds
                .iter()
                .map(|r| ChunkId::of(&data[r.clone()]).0[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    g.finish();
}

fn store_paths(c: &mut Criterion) {
    let data = model(32 << 20);
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for level in [0, 1, 3] {
        g.bench_with_input(
            BenchmarkId::new("put_new_zstd", level),
            &level,
            |b, &level| {
                b.iter_with_setup(
                    || tempfile::tempdir().expect("tempdir"),
                    |dir| {
                        let s = Store::open(
                            dir.path(),
                            StoreOptions {
                                create: true,
                                zstd_level: level,
                                ..Default::default()
                            },
                        )
                        .expect("open");
                        s.put_bytes(&data, &[]).expect("put").new_bytes
                    },
                )
            },
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(
        dir.path(),
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )
    .expect("open");
    let id = s.put_bytes(&data, &[]).expect("put").file_id;
    g.bench_function("put_duplicate", |b| {
        b.iter(|| s.put_bytes(&data, &[]).expect("put").new_bytes)
    });
    g.bench_function("read_whole", |b| {
        b.iter(|| s.read(&id).expect("open").read_all().expect("read").len())
    });
    g.finish();
}

criterion_group!(benches, chunking, store_paths);
criterion_main!(benches);
