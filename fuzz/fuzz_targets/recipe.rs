//! Decode arbitrary bytes as a recipe (the file id is the first 32 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::format::Recipe;
use tessera::FileId;

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let (id, rest) = data.split_at(32);
    if let Some(id) = FileId::from_slice(id) {
        if let Ok(r) = Recipe::decode(id, rest) {
            // A recipe that decodes must re-encode to the same bytes.
            assert_eq!(r.encode(), rest);
        }
    }
});
