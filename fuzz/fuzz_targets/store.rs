//! A store made of fuzzed files: config, pack, recipe and ref file; opened,
//! repaired, verified and read. Stores live on tmpfs when there is one
//! (fsync there is free, so the target runs far more inputs per second).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    if let Ok(dir) = dir {
        tessera::testing::fuzz::store_files(dir.path(), data);
    }
});
