//! What is in a store: its packs, recipes and refs as listed from storage,
//! with anything in their places that is not named like one of them.

use crate::error::{Error, Result};
use crate::ids::{FileId, PackId};
use crate::paths::{file_of_key, is_ref_key, pack_of_key, PACKS, RECIPES, REFS};
use crate::report::Problem;
use crate::storage::ObjectStore;

/// Every object under `prefix`.
fn list(objects: &dyn ObjectStore, prefix: &str) -> Result<Vec<String>> {
    objects
        .list(prefix)
        .map_err(|e| Error::io("list", objects.describe(prefix), e))
}

fn stray(key: String, what: &str) -> Problem {
    Problem {
        object: key,
        detail: format!("unexpected object (not named like {what})"),
    }
}

/// Every pack on storage, and problems for what is misnamed.
pub(crate) fn packs(objects: &dyn ObjectStore, problems: &mut Vec<Problem>) -> Result<Vec<PackId>> {
    let mut out = Vec::new();
    for key in list(objects, PACKS)? {
        match pack_of_key(&key) {
            Some(id) => out.push(id),
            None => problems.push(stray(key, "packs/xx/<pack id>.pack")),
        }
    }
    Ok(out)
}

/// Every recipe on storage (file id and key), and problems for what is
/// misnamed.
pub(crate) fn recipes(
    objects: &dyn ObjectStore,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(FileId, String)>> {
    let mut out = Vec::new();
    for key in list(objects, RECIPES)? {
        match file_of_key(&key) {
            Some(id) => out.push((id, key)),
            None => problems.push(stray(key, "recipes/xx/<file id>.recipe")),
        }
    }
    Ok(out)
}

/// The key of every ref file on storage, and problems for what is misnamed.
pub(crate) fn refs(objects: &dyn ObjectStore, problems: &mut Vec<Problem>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for key in list(objects, REFS)? {
        if is_ref_key(&key) {
            out.push(key);
        } else {
            problems.push(stray(key, "refs/xx/<hash of the name>.ref"));
        }
    }
    Ok(out)
}
