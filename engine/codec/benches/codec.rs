//! Criterion benchmarks of the chunk codec: encode and decode throughput
//! (one thread) on FastCDC chunks of synthetic bf16 / f16 / f32 / int8 models from
//! `tessera_synth`, against zstd -3 (what the engine stores today).
//!
//! `cargo bench -p tessera-codec --bench codec`

use std::ops::Range;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tessera_codec::{Decoder, DtypeHint, Encoder, EncoderOptions, Method};
use tessera_synth::{DType, ModelSpec};

const MODEL_BYTES: u64 = 8 << 20;

fn chunks(data: &[u8]) -> Vec<Range<usize>> {
    fastcdc::v2020::FastCDC::new(data, 16 << 10, 64 << 10, 256 << 10)
        .map(|c| c.offset..c.offset + c.length)
        .collect()
}

fn hint(dtype: DType) -> DtypeHint {
    match dtype {
        DType::BF16 => DtypeHint::Bf16,
        DType::F16 => DtypeHint::F16,
        DType::F32 => DtypeHint::F32,
        DType::I8 => DtypeHint::I8,
    }
}

fn codec(c: &mut Criterion) {
    for dtype in [DType::BF16, DType::F16, DType::F32, DType::I8] {
        let data = ModelSpec::base(1, MODEL_BYTES, dtype).to_bytes();
        let ranges = chunks(&data);
        let mut g = c.benchmark_group(format!("codec/{}", dtype.name()));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.sample_size(10);
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));

        let mut enc = Encoder::new(EncoderOptions::default()).unwrap();
        for (name, h) in [("hint", hint(dtype)), ("auto", DtypeHint::Unknown)] {
            g.bench_function(BenchmarkId::new("encode", name), |b| {
                b.iter(|| {
                    ranges
                        .iter()
                        .map(|r| enc.encode(&data[r.clone()], h).unwrap().bytes.len())
                        .sum::<usize>()
                })
            });
        }
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        g.bench_function(BenchmarkId::new("encode", "zstd-3"), |b| {
            b.iter(|| {
                ranges
                    .iter()
                    .map(|r| z.compress(&data[r.clone()]).unwrap().len())
                    .sum::<usize>()
            })
        });

        let stored_codec: Vec<(u8, Vec<u8>)> = ranges
            .iter()
            .map(|r| {
                let e = enc.encode(&data[r.clone()], hint(dtype)).unwrap();
                (e.method.code(), e.bytes.to_vec())
            })
            .collect();
        let stored_zstd: Vec<(u8, Vec<u8>)> = ranges
            .iter()
            .map(|r| (Method::Zstd.code(), z.compress(&data[r.clone()]).unwrap()))
            .collect();
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        for (name, stored) in [("planes", &stored_codec), ("zstd-3", &stored_zstd)] {
            g.bench_function(BenchmarkId::new("decode", name), |b| {
                b.iter(|| {
                    for ((m, s), r) in stored.iter().zip(&ranges) {
                        dec.decode(*m, s, r.len(), &mut out).unwrap();
                    }
                    out.len()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
