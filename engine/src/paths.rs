//! Object names: where each kind of object lives in a store (spec §4).
//!
//! Keys are `/`-separated and relative to the store: a directory backend
//! maps them to files under its root, an object-store backend to keys under
//! its prefix. Content-addressed objects fan out by the first two hex
//! digits of their name so no directory grows past a few thousand entries.

use crate::ids::{FileId, PackId};

/// The store config (spec §5).
pub const CONFIG: &str = "tessera.store";
/// Present while a process has the store open; left behind by a crash.
pub const DIRTY: &str = "dirty";
/// The clean-close record (spec §8.1).
pub const CLEAN: &str = "clean";
/// Prefix of every pack key.
pub const PACKS: &str = "packs/";
/// Prefix of every recipe key.
pub const RECIPES: &str = "recipes/";
/// Prefix of every ref key.
pub const REFS: &str = "refs/";
/// Prefix of every model description (spec §7.2).
pub const MODELS: &str = "models/";
/// What a GC or repack in progress deletes (spec §10.5).
pub const GC_JOURNAL: &str = "gc/journal";
/// Prefix under which repair keeps damaged objects it took out of service.
pub const DAMAGED: &str = "damaged/";

/// `dir/<hex[0..2]>/<hex>.ext`.
fn fanout(dir: &str, hex: &str, ext: &str) -> String {
    format!("{dir}{}/{hex}.{ext}", &hex[..2])
}

/// Key of a sealed pack.
pub fn pack_key(id: &PackId) -> String {
    fanout(PACKS, &id.to_hex(), "pack")
}

/// Key of a recipe.
pub fn recipe_key(file: &FileId) -> String {
    fanout(RECIPES, &file.to_hex(), "recipe")
}

/// Key of a file's model description (spec §7.2).
pub fn model_key(file: &FileId) -> String {
    fanout(MODELS, &file.to_hex(), "json")
}

/// Key of a ref (named by the BLAKE3 of the ref name).
pub fn ref_key(name: &str) -> String {
    fanout(REFS, &blake3::hash(name.as_bytes()).to_hex(), "ref")
}

/// Where repair keeps the damaged object that was at `key`.
pub fn damaged_key(key: &str) -> String {
    format!("{DAMAGED}{key}")
}

/// The pack a key names, if it is exactly a pack key.
pub fn pack_of_key(key: &str) -> Option<PackId> {
    let id = key.rsplit('/').next()?.strip_suffix(".pack")?;
    PackId::from_hex(id).filter(|id| pack_key(id) == key)
}

/// The file a key names, if it is exactly a recipe key.
pub fn file_of_key(key: &str) -> Option<FileId> {
    let id = key.rsplit('/').next()?.strip_suffix(".recipe")?;
    FileId::from_hex(id).filter(|id| recipe_key(id) == key)
}

/// The file a model description key names (`None` for a key of another
/// shape).
pub fn file_of_model_key(key: &str) -> Option<FileId> {
    let id = key.rsplit('/').next()?.strip_suffix(".json")?;
    FileId::from_hex(id).filter(|id| model_key(id) == key)
}

/// Whether a key has the shape of a ref key (the name inside decides
/// whether it is the right one).
pub fn is_ref_key(key: &str) -> bool {
    key.strip_prefix(REFS)
        .and_then(|k| k.split_once('/'))
        .and_then(|(fan, rest)| Some((fan, rest.strip_suffix(".ref")?)))
        .is_some_and(|(fan, h)| {
            h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) && h.starts_with(fan)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strays_are_rejected() {
        let p = PackId([0xab; 32]);
        assert_eq!(pack_of_key(&pack_key(&p)), Some(p));
        assert!(pack_key(&p).starts_with("packs/ab/abab"));
        let f = FileId([0x01; 32]);
        assert_eq!(file_of_key(&recipe_key(&f)), Some(f));
        assert_eq!(pack_of_key("packs/00/abab.pack"), None);
        assert_eq!(
            file_of_key(&recipe_key(&f).replace("recipes/01", "recipes/02")),
            None
        );
        assert!(is_ref_key(&ref_key("org/m@v1:x")));
        assert!(!is_ref_key("refs/00/stray"));
    }
}
