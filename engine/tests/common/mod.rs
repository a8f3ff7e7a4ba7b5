//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::Path;

use tessera::{Store, StoreOptions};

#[allow(unused_imports)]
pub use tessera_synth::noise;

/// Options for a fresh test store.
pub fn opts() -> StoreOptions {
    StoreOptions {
        create: true,
        ..Default::default()
    }
}

/// Options for a fresh test store whose packs seal at 1 MiB, so a few MiB
/// of data span several packs.
pub fn small_packs() -> StoreOptions {
    StoreOptions {
        pack_target_bytes: 1 << 20,
        ..opts()
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

/// Copies a directory tree, keeping every directory's modification time (as
/// `cp -a` does): a store copied so opens as the store it copies. (One
/// copied without them catches up once: the stamp of its ref tree in the
/// clean-close record differs, spec §8.1.)
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
    let modified = std::fs::metadata(from)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::File::open(to)
        .and_then(|d| d.set_modified(modified))
        .expect("set mtime");
}
