//! `Sniffer::feed` throughput on bulk data it skips: a 256 MiB
//! safetensors-like file, a 256 MiB PyTorch zip of stored storages, and a
//! 64 MiB pickle-free binary, each fed in 64 KiB and 16 MiB batches (the
//! engine's chunker hands out batches of up to 16 MiB).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tessera_model::{Format, Limits, Sniffer};

/// Deterministic filler (cheap, not all zeros).
fn fill(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// 256 tensors of 1 MiB (BF16, 512×1024) behind a safetensors header.
fn safetensors_file() -> Vec<u8> {
    let n = 256;
    let each = 1usize << 20;
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    for i in 0..n {
        header.push_str(&format!(
            ",\"layers.{i}.weight\":{{\"dtype\":\"BF16\",\"shape\":[512,1024],\"data_offsets\":[{},{}]}}",
            i * each,
            (i + 1) * each
        ));
    }
    header.push('}');
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(&fill(n * each, 7));
    f
}

/// A PyTorch zip: a tiny data.pkl and 256 stored storages of 1 MiB.
fn torch_zip_file() -> Vec<u8> {
    let mut f = Vec::new();
    let mut member = |name: &str, data: &[u8]| {
        f.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(name.len() as u16).to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(name.as_bytes());
        f.extend_from_slice(data);
    };
    member(
        "archive/data.pkl",
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01.",
    );
    let storage = fill(1 << 20, 11);
    for i in 0..256 {
        member(&format!("archive/data/{i}"), &storage);
    }
    f
}

/// A zip written to a pipe: 64 stored members of 1 MiB whose sizes come
/// in data descriptors, so their ends must be searched for.
fn descriptor_zip_file() -> Vec<u8> {
    let mut f = Vec::new();
    let storage = fill(1 << 20, 13);
    for i in 0..64 {
        let name = format!("archive/data/{i}");
        f.extend_from_slice(b"PK\x03\x04\x14\x00\x08\x00\x00\x00\x00\x00\x00\x00");
        f.extend_from_slice(&[0; 12]);
        f.extend_from_slice(&(name.len() as u16).to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(name.as_bytes());
        f.extend_from_slice(&storage);
        f.extend_from_slice(b"PK\x07\x08\x00\x00\x00\x00");
        f.extend_from_slice(&(storage.len() as u32).to_le_bytes());
        f.extend_from_slice(&(storage.len() as u32).to_le_bytes());
    }
    f.extend_from_slice(b"PK\x05\x06");
    f.extend_from_slice(&[0; 18]);
    f
}

/// An opcode-dense 16 MiB pickle: a list of small ints appended in
/// batches, the worst case for the walker (every byte is an opcode or an
/// argument).
fn dense_pickle() -> Vec<u8> {
    let mut p = b"\x80\x04]\x94".to_vec();
    while p.len() < 16 << 20 {
        p.push(b'(');
        for i in 0..1000u32 {
            p.push(b'K');
            p.push(i as u8);
        }
        p.push(b'e');
    }
    p.push(b'.');
    p
}

fn feed_all(data: &[u8], batch: usize) -> Format {
    let mut s = Sniffer::new(Limits::default());
    for piece in data.chunks(batch) {
        s.feed(piece);
    }
    s.finish(data.len() as u64).format
}

fn bench(c: &mut Criterion) {
    let files = [
        (
            "safetensors_256MiB",
            safetensors_file(),
            Format::Safetensors,
        ),
        ("pytorch_zip_256MiB", torch_zip_file(), Format::PytorchZip),
        ("binary_64MiB", fill(64 << 20, 3), Format::Other),
        ("descriptor_zip_64MiB", descriptor_zip_file(), Format::Other),
        ("dense_pickle_16MiB", dense_pickle(), Format::Pickle),
    ];
    let mut g = c.benchmark_group("feed");
    g.sample_size(10);
    for (name, data, _) in &files {
        g.throughput(Throughput::Bytes(data.len() as u64));
        for batch in [64usize << 10, 16 << 20] {
            g.bench_with_input(
                BenchmarkId::new(*name, format!("{}KiB", batch >> 10)),
                &batch,
                |b, &batch| b.iter(|| feed_all(data, batch)),
            );
        }
    }
    g.finish();
    // sanity: the files are detected as what they are
    for (name, data, format) in &files {
        assert_eq!(feed_all(data, 1 << 20), *format, "{name}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
