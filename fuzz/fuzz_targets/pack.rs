//! Parse arbitrary bytes as a sealed pack and read every chunk it lists:
//! must return errors, never panic or allocate by unverified lengths.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tessera::pack::PackReader;
use tessera::storage::ReadHandle;
use tessera::PackId;

struct Mem(Bytes);

impl ReadHandle for Mem {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| std::io::Error::other("overflow"))?;
        if end > self.0.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        Ok(self.0.slice(start..end))
    }
}

fuzz_target!(|data: &[u8]| {
    let handle = Arc::new(Mem(Bytes::copy_from_slice(data)));
    if let Ok(p) = PackReader::from_handle(PackId([0; 32]), handle, std::path::Path::new("fuzz")) {
        for i in 0..p.chunk_count().min(4096) {
            if let Ok(e) = p.entry(i) {
                let _ = p.read_chunk(i, &e.id);
            }
        }
    }
});
