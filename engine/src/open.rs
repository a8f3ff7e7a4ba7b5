//! Opening (and creating) a store: spec §4 and §10.3.

use std::sync::Arc;

use crate::core::{check_clean_record, Core};
use crate::error::{Error, Result};
use crate::format::{ConfigError, StoreConfig, STORE_VERSION};
use crate::index::Index;
use crate::inventory;
use crate::local::Local;
use crate::options::StoreOptions;
use crate::paths::{CLEAN, CONFIG, DIRTY, GC_JOURNAL};
use crate::recover;
use crate::report::{CatchUpReason, Recovery};
use crate::storage::{ObjectStore, PutMode};

/// Opens the store whose objects are in `objects` and whose local state
/// (index, lock) is in `local`, creating it if `opts.create` and the
/// location holds nothing else; catches the index up when it cannot be
/// trusted (spec §10.3).
pub(crate) fn open(
    objects: Arc<dyn ObjectStore>,
    local: Local,
    opts: StoreOptions,
) -> Result<Arc<Core>> {
    opts.check()?;
    // A shared store keeps its markers beside its index (spec §4.3).
    let objects = crate::remote::wrap(objects, local.dir())?;
    let location = objects.location();
    let index_dir = local.index_dir();
    let (config, lock, created) = match objects.get(CONFIG) {
        Ok(bytes) => {
            let config = check_config(objects.as_ref(), &bytes, &opts)?;
            let lock = local.lock(opts.lock_wait)?;
            // An existing store without its index would look empty:
            // refuse, and say how to rebuild it. (A shared store's index is
            // a cache that fills on demand: a node may start without one.)
            if objects.shared() && !index_dir.exists() {
                local.create_index_dir()?;
            } else if !opts.allow_missing_index && !index_dir.exists() {
                return Err(Error::IndexMissing { path: index_dir });
            }
            (config, lock, false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No config: an empty location, the remains of a creation that
            // crashed, a store that lost its config, or something else
            // entirely. Only the first two may become a store.
            if let Some(found) = holds_a_store(objects.as_ref(), &local)? {
                return Err(found.into_error(location, objects.shared(), &local));
            }
            let foreign = objects
                .foreign()
                .map_err(|e| Error::io("list", location.clone(), e))?;
            match foreign {
                Some(detail) if opts.create => return Err(Error::NotAStore { location, detail }),
                Some(_) => return Err(Error::StoreNotFound { location }),
                None if !opts.create => return Err(Error::StoreNotFound { location }),
                None => {}
            }
            let lock = local.lock(opts.lock_wait)?;
            // What a creation that crashed staged is garbage (we hold the
            // lock: nobody else is staging).
            objects
                .discard_staged()
                .map_err(|e| Error::io("discard staged objects", location.clone(), e))?;
            // Another process may have created the store meanwhile.
            match objects.get(CONFIG) {
                Ok(bytes) => (check_config(objects.as_ref(), &bytes, &opts)?, lock, false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (create(objects.as_ref(), &local, &opts)?, lock, true)
                }
                Err(e) => return Err(Error::io("read config", objects.describe(CONFIG), e)),
            }
        }
        Err(e) => return Err(Error::io("read config", objects.describe(CONFIG), e)),
    };
    if let Some(p) = opts.chunking {
        p.validate()?;
    }
    // We hold the store lock, so no other process is staging objects: what
    // is staged is left over from a crash and was never acknowledged.
    objects
        .discard_staged()
        .map_err(|e| Error::io("discard staged objects", location.clone(), e))?;
    // Mark the session open before touching the index: a crash from here on
    // (in a rebuild or catch-up too) makes the next open catch up. A clean
    // close removes the marker.
    let unclean = objects
        .exists(DIRTY)
        .map_err(|e| Error::io("stat", objects.describe(DIRTY), e))?;
    objects
        .put(
            DIRTY,
            std::process::id().to_string().as_bytes(),
            PutMode::Replace,
        )
        .map_err(|e| Error::io("write", objects.describe(DIRTY), e))?;
    let index_is_new = !local.has_index();
    let (index, rebuilt) = open_index(&local, &opts, objects.clone())?;
    let reason = if rebuilt {
        Some(CatchUpReason::DamagedIndex)
    } else if index_is_new && !created {
        Some(CatchUpReason::NewIndex)
    } else if unclean {
        Some(CatchUpReason::UncleanShutdown)
    } else if created {
        None
    } else {
        check_clean_record(objects.as_ref(), &index)?
    };
    let core = Arc::new(Core::new(
        objects,
        opts,
        config,
        index,
        lock,
        local.dir().to_path_buf(),
    ));
    // A deletion a crash interrupted is finished before anything else looks
    // at the objects: a catch-up would otherwise index (or heal) what it was
    // deleting (spec §10.5).
    // On a shared store no node finishes one at open (spec §10.6): a
    // journal left by a single-process GC over the same bucket stays, named
    // in the log, until a collector (which marks everything again) removes
    // it.
    if core.objects.shared() {
        let objects = core.objects.as_ref();
        if objects.exists(GC_JOURNAL).unwrap_or(false) {
            tracing::warn!(
                journal = %objects.describe(GC_JOURNAL),
                "an unfinished GC journal is in the shared store; it is left for a GC that holds the lease"
            );
        }
    } else if let Err(e) = crate::gc::finish_journal(&core) {
        core.poison(&Error::Bug(format!("finishing a GC failed: {e}")));
        return Err(e);
    }
    if let Some(reason) = reason {
        let caught_up = catch_up(&core, reason);
        if core.objects.shared()
            && reason == CatchUpReason::NewIndex
            && !core.opts.allow_missing_index
        {
            return Ok(core);
        }
        let report = match caught_up {
            Ok(r) => r,
            Err(e) => {
                // Keep `dirty` (a poisoned store does not close cleanly): the
                // next open must catch up again.
                core.poison(&Error::Bug(format!("catching up the index failed: {e}")));
                return Err(e);
            }
        };
        let changed = report.packs + report.files + report.refs > 0;
        if changed
            || !report.problems.is_empty()
            || !report.healed.is_empty()
            || reason != CatchUpReason::NewIndex
        {
            log_catch_up(&core, reason, &report);
        }
        let _ = core.recovery.set(Recovery { reason, report });
    }
    Ok(core)
}

/// Brings the index up to date with the objects: a shared store's index is
/// a cache of a bucket others write too, brought up to date from a listing,
/// never by rewriting objects from it (spec §4.3; `repair index` rebuilds it
/// whole).
fn catch_up(core: &Core, reason: CatchUpReason) -> Result<crate::report::RepairReport> {
    if core.objects.shared() {
        crate::refresh::catch_up(core, reason)
    } else {
        recover::catch_up(core, reason)
    }
}

/// Brings a store that a failed write poisoned (spec §10.1 rule 8) back
/// without closing it, doing what an open after an unclean shutdown does:
/// once no writer, GC or repack runs (waiting up to `wait`), the open pack
/// is dropped (nothing in it was acknowledged), the index flushed, an
/// interrupted GC finished, and the index caught up with the objects. Only
/// then are writes let in again; if a step fails the store stays poisoned.
/// `Ok(None)` when the store was not poisoned.
pub(crate) fn recover_poisoned(
    core: &Core,
    wait: std::time::Duration,
) -> Result<Option<crate::report::RepairReport>> {
    if !core.is_poisoned() {
        return Ok(None);
    }
    let _maintenance = crate::cache::lock(&core.maintenance);
    let _gate = core.gate.exclusive(wait)?;
    if !core.is_poisoned() {
        return Ok(None);
    }
    core.writer.reset();
    core.index.flush()?;
    if !core.objects.shared() {
        crate::gc::finish_journal(core)?;
    }
    let report = catch_up(core, CatchUpReason::FailedWrite)?;
    core.clear_poison();
    log_catch_up(core, CatchUpReason::FailedWrite, &report);
    tracing::warn!(store = %core.location(), "writes resumed after a failed write");
    Ok(Some(report))
}

/// Logs what a catch-up did, and each problem it found.
fn log_catch_up(core: &Core, reason: CatchUpReason, report: &crate::report::RepairReport) {
    tracing::warn!(
        store = %core.location(),
        packs = report.packs,
        files = report.files,
        refs = report.refs,
        healed = report.healed.len(),
        problems = report.problems.len(),
        "index caught up with the store's objects ({reason})"
    );
    for p in &report.problems {
        tracing::warn!(object = %p.object, "{}", p.detail);
    }
}

/// Checks a config's bytes and the requested chunking against it.
fn check_config(
    objects: &dyn ObjectStore,
    bytes: &[u8],
    opts: &StoreOptions,
) -> Result<StoreConfig> {
    let cfg = StoreConfig::decode(bytes).map_err(|e| match e {
        ConfigError::Version(v) => Error::UnsupportedVersion {
            object: format!("store {}", objects.location()),
            found: v,
            supported: STORE_VERSION,
        },
        ConfigError::Corrupt(detail) => Error::ConfigCorrupt {
            object: objects.describe(CONFIG),
            detail,
        },
    })?;
    if let Some(p) = opts.chunking {
        if p != cfg.chunking {
            return Err(Error::ChunkParamsMismatch {
                location: objects.location(),
                stored: cfg.chunking.to_string(),
                requested: p.to_string(),
            });
        }
    }
    Ok(cfg)
}

/// What [`holds_a_store`] found.
pub(crate) enum Found {
    /// Packs, recipes or refs: the store lost its config.
    Objects(String),
    /// Only local state (markers, an index). On a shared store these are
    /// the node's own cache: the store's objects are gone.
    Local(String),
}

impl Found {
    /// The error for a location without a config that holds this.
    pub(crate) fn into_error(self, location: String, shared: bool, local: &Local) -> Error {
        match self {
            Found::Local(detail) if shared => Error::StoreGone {
                location,
                cache: local.dir().display().to_string(),
                detail,
            },
            Found::Objects(detail) | Found::Local(detail) => {
                Error::ConfigMissing { location, detail }
            }
        }
    }
}

/// Whether a location without a config holds a store's objects or local
/// state (then it lost its config): what was found.
pub(crate) fn holds_a_store(objects: &dyn ObjectStore, local: &Local) -> Result<Option<Found>> {
    // Only objects named like packs, recipes and refs count: a stray file
    // under packs/ says nothing.
    let mut strays = Vec::new();
    let found = [
        ("packs", inventory::packs(objects, &mut strays)?.len()),
        ("recipes", inventory::recipes(objects, &mut strays)?.len()),
        ("refs", inventory::refs(objects, &mut strays)?.len()),
    ];
    for (what, n) in found {
        if n > 0 {
            return Ok(Some(Found::Objects(format!("{n} {what}"))));
        }
    }
    for marker in [DIRTY, CLEAN] {
        let there = objects
            .exists(marker)
            .map_err(|e| Error::io("stat", objects.describe(marker), e))?;
        if there {
            return Ok(Some(Found::Local(format!("the `{marker}` marker"))));
        }
    }
    if local.has_index() {
        return Ok(Some(Found::Local(format!(
            "an index in {}",
            local.index_dir().display()
        ))));
    }
    Ok(None)
}

/// Creates a store: its index directory (durably: a store with a config and
/// no index directory is refused at open), then the config, written last —
/// its presence means the store exists.
fn create(objects: &dyn ObjectStore, local: &Local, opts: &StoreOptions) -> Result<StoreConfig> {
    let chunking = opts.chunking.unwrap_or_default();
    chunking.validate()?;
    local.create_index_dir()?;
    let config = StoreConfig {
        version: STORE_VERSION,
        chunking,
    };
    match objects.put(CONFIG, &config.encode(), PutMode::Create) {
        Ok(()) => Ok(config),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = objects
                .get(CONFIG)
                .map_err(|e| Error::io("read config", objects.describe(CONFIG), e))?;
            check_config(objects, &bytes, opts)
        }
        Err(e) => Err(Error::io("write config", objects.describe(CONFIG), e)),
    }
}

/// Opens the index; if it reports its files damaged and
/// `opts.rebuild_damaged_index` is set, deletes the index's contents and
/// opens a fresh one. Returns whether it did. (The directory itself stays,
/// so a crash in between leaves an index that is damaged or empty, never a
/// missing one.)
fn open_index(
    local: &Local,
    opts: &StoreOptions,
    objects: Arc<dyn ObjectStore>,
) -> Result<(Index, bool)> {
    let dir = local.index_dir();
    let guard: crate::index::WriteGuard = Arc::new(move || objects.check_index_write());
    match Index::open(&dir, opts.index_cache_bytes, Some(guard.clone())) {
        Ok(index) => Ok((index, false)),
        Err(e @ Error::IndexDamaged { .. }) if opts.rebuild_damaged_index => {
            tracing::warn!(index = %dir.display(), error = %e,
                "the index reports itself damaged; deleting it and rebuilding it from the packs, recipes and refs");
            local.clear_index()?;
            Ok((
                Index::open(&dir, opts.index_cache_bytes, Some(guard))?,
                true,
            ))
        }
        Err(e) => Err(e),
    }
}
