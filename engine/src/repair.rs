//! `repair index` and `repair config`: the offline repairs a user runs.

use std::sync::Arc;

use crate::chunking::ChunkParams;
use crate::error::{Error, Result};
use crate::format::{Recipe, StoreConfig, STORE_VERSION};
use crate::inventory;
use crate::layout::Layout;
use crate::local::Local;
use crate::open;
use crate::options::StoreOptions;
use crate::pack::PackReader;
use crate::paths::CONFIG;
use crate::recover;
use crate::report::RepairReport;
use crate::salvage;
use crate::storage::{Cas, ObjectStore, PutMode};

/// Rebuilds the whole index from the packs, recipes and refs. First, while
/// the current index still opens, recipe and ref objects that are missing or
/// damaged are healed from its verified copies (never lose what the store
/// still holds); then the index is deleted and rebuilt; then packs that
/// cannot be opened are salvaged (their verified records re-packed) and
/// recipes naming packs that are gone are rebuilt from where their chunks
/// are; last, model descriptions that do not check are recomputed from
/// their files. Damaged packs, recipes and refs are reported by name;
/// everything else is recovered. Chunks are indexed only after they re-hash
/// to their id.
pub(crate) fn repair_index(
    objects: Arc<dyn ObjectStore>,
    local: Local,
    opts: StoreOptions,
) -> Result<RepairReport> {
    match objects.exists(CONFIG) {
        Ok(true) => {}
        // A store that lost its config (or whose objects are gone) is
        // not "no store": say what is there and what to do.
        Ok(false) => {
            return Err(match open::holds_a_store(objects.as_ref(), &local)? {
                Some(found) => found.into_error(objects.location(), objects.shared(), &local),
                None => Error::StoreNotFound {
                    location: objects.location(),
                },
            })
        }
        Err(e) => return Err(Error::io("read config", objects.describe(CONFIG), e)),
    }
    let mut healed = RepairReport::default();
    let shared = objects.shared();
    // On a shared store only objects that are present but damaged are
    // rewritten from this node's copies (conditionally on the damaged
    // version); a missing one may be another node's deletion (spec §4.3).
    if local.index_dir().exists() {
        let current = open::open(
            objects.clone(),
            local.clone(),
            StoreOptions {
                create: false,
                rebuild_damaged_index: false,
                ..opts.clone()
            },
        );
        match current {
            Ok(core) => {
                if let Some(r) = core.recovery.get() {
                    healed.healed.extend(r.report.healed.iter().cloned());
                }
                if shared {
                    recover::heal_shared(&core, &mut healed)?;
                } else {
                    recover::heal(&core, &mut healed)?;
                }
                core.close()?;
            }
            // Nothing to salvage from an index that does not open.
            Err(e @ (Error::IndexDamaged { .. } | Error::Index { .. })) => {
                tracing::warn!(error = %e, "the current index does not open; rebuilding without it");
            }
            Err(e) => return Err(e),
        }
    }
    {
        // Holds the store's lock while the old index is deleted.
        let _lock = local.lock(opts.lock_wait)?;
        local.remove_index()?;
    }
    let core = open::open(
        objects,
        local,
        StoreOptions {
            create: false,
            allow_missing_index: true,
            ..opts
        },
    )?;
    let mut rep = core
        .recovery
        .get()
        .map(|r| r.report.clone())
        .unwrap_or_default();
    rep.healed.splice(0..0, healed.healed);
    // (A directory store's rebuild reports again what its heal could not.)
    if shared {
        rep.problems.splice(0..0, healed.problems);
    }
    salvage::salvage(&core, &mut rep)?;
    crate::models::recompute_unchecked(&core, &mut rep)?;
    core.close()?;
    Ok(rep)
}

/// What `repair config` checked before writing a config.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConfigRepair {
    /// Stored files whose leading chunks were re-chunked with the parameters.
    pub files_checked: u64,
    /// Chunk boundaries compared.
    pub boundaries_checked: u64,
}

/// Files whose leading chunks `repair config` re-chunks.
const CONFIG_CHECK_FILES: usize = 8;
/// Leading chunks of each file it reads (at most 16 MiB at the default max).
const CONFIG_CHECK_CHUNKS: usize = 64;

/// Writes the config of a store that lost it (or whose config is corrupt),
/// after checking `chunking` against the stored files: the leading chunks
/// of several stored files are read from their packs (verified), re-chunked
/// with `chunking`, and every boundary must fall where the recipe has it.
/// Refuses when no stored file has two chunks to compare (nothing would
/// confirm the parameters), when a boundary differs, or when the config is
/// intact.
pub(crate) fn repair_config(
    objects: &dyn ObjectStore,
    local: &Local,
    chunking: ChunkParams,
    opts: &StoreOptions,
) -> Result<ConfigRepair> {
    chunking.validate()?;
    let _lock = local.lock(opts.lock_wait)?;
    // The version replaced (`None`: there is no config): on a shared store
    // the config is written only if it is still that, so a node that
    // repairs it at the same time (or a store created meanwhile) is never
    // overwritten.
    let replaces = match objects.get_versioned(CONFIG) {
        Ok(Some((b, _))) if StoreConfig::decode(&b).is_ok() => {
            return Err(Error::InvalidArgument(format!(
                "the config of {} is intact; nothing to repair",
                objects.location()
            )))
        }
        Ok(Some((_, v))) => Some(v),
        Ok(None) => None,
        Err(e) => return Err(Error::io("read config", objects.describe(CONFIG), e)),
    };
    let mut rep = ConfigRepair::default();
    let mut strays = Vec::new();
    let mut recipes: Vec<Recipe> = Vec::new();
    for (file, key) in inventory::recipes(objects, &mut strays)? {
        let Ok(bytes) = objects.get(&key) else {
            continue;
        };
        if let Ok(r) = Recipe::decode(file, &bytes) {
            if r.chunks.len() >= 2 {
                recipes.push(r);
            }
        }
    }
    // The files with the most chunks say the most.
    recipes.sort_by_key(|r| std::cmp::Reverse(r.chunks.len()));
    for recipe in recipes.iter().take(CONFIG_CHECK_FILES) {
        let layout = Layout::new(recipe.clone());
        let n = layout.chunk_count().min(CONFIG_CHECK_CHUNKS);
        let mut data = Vec::new();
        for i in 0..n {
            let Some(c) = layout.chunk(i) else { break };
            let pack = PackReader::open(objects, c.pack)?;
            data.extend_from_slice(&pack.read_chunk(c.pack_index, &c.id)?);
        }
        // Every cut but the last of the prefix is a real boundary.
        let cuts = chunking.boundaries(&data);
        let compare = n.saturating_sub(1);
        for (i, (range, (_, len))) in cuts.iter().zip(&recipe.chunks).take(compare).enumerate() {
            if range.len() != *len as usize {
                return Err(Error::InvalidArgument(format!(
                    "file {} was not chunked with {chunking}: its chunk {i} is {len} bytes, these parameters cut {} (try other parameters)",
                    recipe.file,
                    range.len()
                )));
            }
        }
        rep.files_checked += 1;
        rep.boundaries_checked += compare as u64;
    }
    if rep.boundaries_checked == 0 {
        return Err(Error::InvalidArgument(
            "no stored file has two chunks to check the parameters against; restore tessera.store from a backup".into(),
        ));
    }
    let config = StoreConfig {
        version: STORE_VERSION,
        chunking,
    };
    if !objects.shared() {
        objects
            .put(CONFIG, &config.encode(), PutMode::Replace)
            .map_err(|e| Error::io("write config", objects.describe(CONFIG), e))?;
        return Ok(rep);
    }
    match objects
        .put_if_version(CONFIG, &config.encode(), replaces.as_ref())
        .map_err(|e| Error::io("write config", objects.describe(CONFIG), e))?
    {
        Cas::Written(_) => Ok(rep),
        Cas::Conflict => Err(Error::Busy(format!(
            "the config {} changed while it was being repaired (another node?); nothing was written: run `tessera verify`",
            objects.describe(CONFIG)
        ))),
    }
}
