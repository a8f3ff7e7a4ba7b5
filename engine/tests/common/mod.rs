//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::Path;

use tessera::{Store, StoreOptions};

/// Deterministic pseudo-random bytes (xorshift64*), incompressible.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Options for a fresh test store.
pub fn opts() -> StoreOptions {
    StoreOptions {
        create: true,
        ..Default::default()
    }
}

/// Opens (creating) a store in `dir`.
pub fn open(dir: &Path) -> Store {
    Store::open(dir, opts()).expect("open store")
}

/// Total bytes of all pack files under the store.
pub fn pack_bytes(dir: &Path) -> u64 {
    dir_bytes(&dir.join("packs"))
}

/// Total bytes of regular files under `dir`, recursively.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let md = e.metadata().expect("metadata");
            if md.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// Paths of all pack files.
pub fn pack_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("packs"))
        .expect("packs dir")
        .flatten()
    {
        for f in std::fs::read_dir(sub.path()).expect("fanout dir").flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}
