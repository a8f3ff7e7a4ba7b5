//! The condemned set of a shared store's garbage collector, and the check
//! every writer makes against it (spec §10.6).
//!
//! A collector on a shared store publishes what it is about to delete —
//! the recipes and packs dead by its first mark — waits the writer window,
//! marks again and deletes only what is still dead. A writer that is about
//! to publish an object naming objects it did not create (a recipe naming
//! packs it deduplicated against, a ref naming a stored file) reads the set
//! first and confirms that every one of them still exists and is not
//! condemned. Together that closes the window in which a writer names an
//! old object after the collector's mark found it dead.
//!
//! The writer's side costs one GET per commit and a HEAD per distinct pack
//! a recipe names; dedup skips chunks of condemned or deleted packs (they
//! are stored again), so a commit fails only when a collection starts in
//! the middle of it, or when the chunks stored again make up a pack byte
//! for byte the same as a condemned one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache::lock;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{FileId, PackId};
use crate::index::now_millis;
use crate::lease::{Lease, LeaseOptions, GC_LEASE};
use crate::paths::{pack_key, recipe_key};
use crate::remote::parallel;
use crate::storage::{Cas, ObjectStore, Version};

/// The key of the condemned set.
pub(crate) const CONDEMNED: &str = "gc/condemned";

/// Format version of the condemned set.
const CONDEMNED_VERSION: u32 = 1;

/// How long an ingest's copy of the set (used to skip condemned chunks
/// when deduplicating) is reused before it is read again.
const DEDUP_COPY_AGE: Duration = Duration::from_secs(5);

/// The condemned set as published (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CondemnedRecord {
    /// Format version (1).
    pub(crate) version: u32,
    /// The fencing token of the lease the collector held.
    pub(crate) token: u64,
    /// Who published it.
    pub(crate) holder: String,
    /// When it was published (Unix ms, the collector's clock).
    pub(crate) published_ms: u64,
    /// How long the collector waits before it marks again and deletes.
    pub(crate) window_ms: u64,
    /// Files (recipes) condemned, hex.
    pub(crate) files: Vec<String>,
    /// Packs condemned, hex.
    pub(crate) packs: Vec<String>,
}

/// A condemned set, parsed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Condemned {
    pub(crate) token: u64,
    /// When its collector's writer window ends (Unix ms, its clock): it
    /// then marks again, deletes and releases the lease.
    pub(crate) window_ends_ms: u64,
    pub(crate) files: HashSet<FileId>,
    pub(crate) packs: HashSet<PackId>,
}

impl Condemned {
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.packs.is_empty()
    }
}

fn io(objects: &dyn ObjectStore, op: &'static str, e: std::io::Error) -> Error {
    Error::io(op, objects.describe(CONDEMNED), e)
}

/// Reads the condemned set and its version; `None` when there is none.
pub(crate) fn read(objects: &dyn ObjectStore) -> Result<Option<(Condemned, Version)>> {
    let Some((bytes, version)) = objects
        .get_versioned(CONDEMNED)
        .map_err(|e| io(objects, "read", e))?
    else {
        return Ok(None);
    };
    let damaged = |detail: String| Error::ConfigCorrupt {
        object: objects.describe(CONDEMNED),
        detail,
    };
    // A set that does not parse cannot be obeyed: a writer refuses to name
    // anything until a collector replaces it (published whole, it was
    // damaged afterwards).
    let r: CondemnedRecord = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("the GC's condemned set does not parse: {e}")))?;
    if r.version != CONDEMNED_VERSION {
        return Err(Error::UnsupportedVersion {
            object: objects.describe(CONDEMNED),
            found: r.version,
            supported: CONDEMNED_VERSION,
        });
    }
    let mut c = Condemned {
        token: r.token,
        window_ends_ms: r.published_ms.saturating_add(r.window_ms),
        ..Default::default()
    };
    for f in &r.files {
        c.files
            .insert(FileId::from_hex(f).ok_or_else(|| damaged(format!("bad file id {f:?}")))?);
    }
    for p in &r.packs {
        c.packs
            .insert(PackId::from_hex(p).ok_or_else(|| damaged(format!("bad pack id {p:?}")))?);
    }
    Ok(Some((c, version)))
}

/// The condemned set writers must obey: the published one, unless its
/// collector can no longer delete anything — the GC lease was released,
/// taken by a later collector (which publishes its own set before it
/// deletes), or expired more than the default clock skew ago by this
/// process's clock (a collector renews before its lease lapses and stops
/// when it cannot). A set a dead collector left thus stops holding writers
/// off once its lease runs out. The lease is read first: while no collector
/// holds it, a set is not even parsed (a damaged one blocks nobody).
pub(crate) fn in_force(objects: &dyn ObjectStore) -> Result<Option<Condemned>> {
    let skew = LeaseOptions::default().max_clock_skew.as_millis() as u64;
    let lease = match Lease::read(objects, GC_LEASE) {
        Ok(Some(l)) if !l.released && now_millis() <= l.expires_ms.saturating_add(skew) => Some(l),
        Ok(_) => return Ok(None),
        // A lease object that does not parse: someone may hold it.
        Err(e @ Error::Io { .. }) => return Err(e),
        Err(_) => None,
    };
    let Some((set, _)) = read(objects)? else {
        return Ok(None);
    };
    match lease {
        Some(l) if l.token != set.token => {
            tracing::debug!(
                token = set.token,
                "the condemned set's collector no longer holds the lease; ignoring it"
            );
            Ok(None)
        }
        _ => Ok(Some(set)),
    }
}

/// The version of the condemned set, whether or not it parses (a collector
/// replaces it).
pub(crate) fn version(objects: &dyn ObjectStore) -> Result<Option<Version>> {
    Ok(objects
        .get_versioned(CONDEMNED)
        .map_err(|e| io(objects, "read", e))?
        .map(|(_, v)| v))
}

/// Publishes a collector's condemned set, replacing one a dead collector
/// left (whose version `previous` is); the caller holds the GC lease.
pub(crate) fn publish(
    objects: &dyn ObjectStore,
    record: &CondemnedRecord,
    previous: Option<&Version>,
) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(|e| Error::Bug(format!("condemned: {e}")))?;
    match objects
        .put_if_version(CONDEMNED, &bytes, previous)
        .map_err(|e| io(objects, "write", e))?
    {
        Cas::Written(_) => Ok(()),
        Cas::Conflict => Err(Error::LeaseLost {
            object: objects.describe(CONDEMNED),
            detail: "the condemned set changed while this collector held the lease".into(),
        }),
    }
}

/// Removes the condemned set (the collection is over).
pub(crate) fn remove(objects: &dyn ObjectStore) -> Result<()> {
    match objects.delete(CONDEMNED) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(objects, "remove", e)),
    }
}

/// Which stored packs one ingest may deduplicate against: not one that is
/// gone (asked once per pack per ingest; a gone pack is dropped from the
/// index, so its chunks are stored again and indexed in their new packs) —
/// on a shared store deleted by another node's GC, on a directory store
/// lost (damage `repair index` reports); and on a shared store not a
/// condemned one (the node's copy of the set is read at most every few
/// seconds). A stale answer costs at worst a refused commit, never a wrong
/// one: the writer check decides.
pub(crate) struct DedupFilter {
    shared: bool,
    condemned: Arc<HashSet<PackId>>,
    present: std::sync::Mutex<std::collections::HashMap<PackId, bool>>,
}

impl DedupFilter {
    pub(crate) fn new(core: &Core) -> Result<DedupFilter> {
        let shared = core.objects.shared();
        let condemned = if shared {
            let mut copy = lock(&core.condemned);
            match copy.as_ref() {
                Some((at, set)) if at.elapsed() < DEDUP_COPY_AGE => set.clone(),
                _ => {
                    let set = Arc::new(
                        in_force(core.objects.as_ref())?.map_or_else(HashSet::new, |c| c.packs),
                    );
                    *copy = Some((Instant::now(), set.clone()));
                    set
                }
            }
        } else {
            Arc::default()
        };
        Ok(DedupFilter {
            shared,
            condemned,
            present: Default::default(),
        })
    }

    /// Whether a chunk stored in `pack` may be named rather than stored.
    pub(crate) fn usable(&self, core: &Core, pack: &PackId) -> Result<bool> {
        if self.condemned.contains(pack) {
            return Ok(false);
        }
        if let Some(p) = lock(&self.present).get(pack) {
            return Ok(*p);
        }
        let objects = core.objects.as_ref();
        let key = pack_key(pack);
        let present = objects
            .exists(&key)
            .map_err(|e| Error::io("stat", objects.describe(&key), e))?;
        if lock(&self.present).insert(*pack, present).is_none() && !present {
            if self.shared {
                tracing::info!(%pack, "a pack this node indexed was deleted by another node's GC; forgetting it");
            } else {
                tracing::warn!(%pack, "a pack the index names is missing: its chunks are stored again (`tessera verify` lists the files it held)");
            }
            forget_packs(core, &[*pack])?;
        }
        Ok(present)
    }
}

/// A writer's check (spec §10.6): made right before it publishes an object
/// naming objects it did not create, and good for
/// `StoreOptions::gc_check_valid`.
pub(crate) struct WriterCheck {
    condemned: Condemned,
    read_at: Instant,
}

impl WriterCheck {
    /// Reads the condemned set (a store that is not shared: nothing is).
    pub(crate) fn new(core: &Core) -> Result<WriterCheck> {
        let read_at = Instant::now();
        let condemned = if core.objects.shared() {
            in_force(core.objects.as_ref())?.unwrap_or_default()
        } else {
            Condemned::default()
        };
        Ok(WriterCheck { condemned, read_at })
    }

    /// Whether the file's recipe is condemned (a writer storing the file
    /// again then replaces the recipe object instead of adopting it).
    pub(crate) fn file_condemned(&self, file: &FileId) -> bool {
        self.condemned.files.contains(file)
    }

    /// Confirms that every pack of `packs` exists and is not condemned. A
    /// pack gone from the store (an earlier collection on another node
    /// deleted it) is forgotten by this node's index, so a retry stores its
    /// chunks again. Fails with [`Error::Busy`] naming the pack.
    pub(crate) fn packs(&self, core: &Core, packs: &HashSet<PackId>) -> Result<()> {
        if !core.objects.shared() || packs.is_empty() {
            return Ok(());
        }
        if let Some(p) = packs.iter().find(|p| self.condemned.packs.contains(p)) {
            return Err(self.refused(
                core,
                &pack_key(p),
                "is condemned by a GC running on another node",
            ));
        }
        let list: Vec<PackId> = packs.iter().copied().collect();
        let objects = core.objects.as_ref();
        let found = parallel(&list, |p| objects.exists(&pack_key(p)));
        let mut gone = Vec::new();
        for (p, r) in list.iter().zip(found) {
            match r {
                Ok(true) => {}
                Ok(false) => gone.push(*p),
                Err(e) => return Err(Error::io("stat", objects.describe(&pack_key(p)), e)),
            }
        }
        if let Some(p) = gone.first() {
            forget_packs(core, &gone)?;
            return Err(self.refused(
                core,
                &pack_key(p),
                "was deleted by a GC on another node (this node's index forgot it; a retry stores its chunks again)",
            ));
        }
        self.still_valid(core)
    }

    /// Confirms that a stored file a ref is about to name exists and is not
    /// condemned.
    pub(crate) fn file(&self, core: &Core, file: &FileId) -> Result<()> {
        if !core.objects.shared() {
            return Ok(());
        }
        let key = recipe_key(file);
        if self.file_condemned(file) {
            return Err(self.refused(core, &key, "is condemned by a GC running on another node"));
        }
        let objects = core.objects.as_ref();
        match objects.exists(&key) {
            Ok(true) => self.still_valid(core),
            Ok(false) => Err(Error::not_found("file", &file.to_hex())),
            Err(e) => Err(Error::io("stat", objects.describe(&key), e)),
        }
    }

    /// Fails once the check is too old to publish on.
    pub(crate) fn still_valid(&self, core: &Core) -> Result<()> {
        let valid = core.opts.gc_check_valid;
        if self.read_at.elapsed() <= valid {
            return Ok(());
        }
        Err(Error::Busy(format!(
            "the check of {} took longer than {} ms; nothing was published, retry",
            core.objects.describe(CONDEMNED),
            valid.as_millis()
        )))
    }

    /// Confirms a publication after it landed. [`still_valid`] is asked
    /// before a write is sent, but a request can take longer than the check
    /// is good for (a slow link, a throttled and retried PUT), and may land
    /// after a collector's second mark: then nothing guarantees the
    /// collector saw it. A write that completed within the check's validity
    /// is safe as it is (a collector waits at least twice that between
    /// publishing its set and marking again, spec §10.6); a later one is
    /// confirmed now: no collector in force condemns `files` or `packs`, and
    /// they still exist. That is enough, since the publication is in the
    /// bucket now: a collector that publishes later marks after it, and one
    /// that published before and has not finished still has its set in
    /// force. When the confirmation fails the publication may name
    /// something collected, and the caller reports that, not success. When
    /// a named object is gone (collected), `on_gone` runs first (a ref
    /// writer puts its refs back) and what it says ends the error.
    /// Returns the check to make further publications on: this one, or
    /// the newer one the confirmation made.
    ///
    /// [`still_valid`]: WriterCheck::still_valid
    pub(crate) fn confirm_published(
        self,
        core: &Core,
        what: &str,
        files: &[FileId],
        packs: &HashSet<PackId>,
        on_gone: Option<&dyn Fn() -> String>,
    ) -> Result<WriterCheck> {
        let took = self.read_at.elapsed();
        if !core.objects.shared() || took <= core.opts.gc_check_valid {
            return Ok(self);
        }
        let late = |object: String, fate: Fate| {
            let (why, advice, done) = match fate {
                Fate::Condemned => (
                    "is condemned by a GC running now",
                    "it may name a file a GC on another node collects (the GC may not have \
                     seen the write): when no GC runs, check the file, and store it again and \
                     set what names it again if it is gone",
                    String::new(),
                ),
                Fate::Gone => (
                    "is gone",
                    "it named what a GC on another node collected: store the file again \
                     (a put stores its chunks again)",
                    on_gone.map_or(String::new(), |undo| format!(". {}", undo())),
                ),
            };
            Error::Busy(format!(
                "{what} was written {} ms after the check of {} (good for {} ms), and {object} {why}; {advice}{done}",
                took.as_millis(),
                core.objects.describe(CONDEMNED),
                core.opts.gc_check_valid.as_millis(),
            ))
        };
        let now = WriterCheck::new(core)?;
        let objects = core.objects.as_ref();
        // Each named object: not condemned by the set in force, still there.
        let confirm = |key: String, condemned: bool| -> Result<()> {
            if condemned {
                return Err(late(objects.describe(&key), Fate::Condemned));
            }
            match objects.exists(&key) {
                Ok(true) => Ok(()),
                Ok(false) => Err(late(objects.describe(&key), Fate::Gone)),
                Err(e) => Err(Error::io("stat", objects.describe(&key), e)),
            }
        };
        for f in files {
            confirm(recipe_key(f), now.file_condemned(f))?;
        }
        for p in packs {
            confirm(pack_key(p), now.condemned.packs.contains(p))?;
        }
        Ok(now)
    }

    fn refused(&self, core: &Core, key: &str, why: &str) -> Error {
        // The collector deletes once its window is over, then lets go: a
        // retry works after that (give or take the deletion itself and the
        // clocks' skew).
        let when = match self.condemned.window_ends_ms {
            0 => "retry".to_string(),
            end => format!(
                "retry once that GC has finished (its writer window ends in about {} s by \
                 this node's clock)",
                end.saturating_sub(now_millis()).div_ceil(1000)
            ),
        };
        Error::Busy(format!(
            "{} {why} (condemned set token {}); nothing was published: {when}",
            core.objects.describe(key),
            self.condemned.token,
        ))
    }
}

/// What [`WriterCheck::confirm_published`] found of a named object that a
/// late publication may not rely on.
#[derive(Clone, Copy)]
enum Fate {
    /// A collector's set in force condemns it.
    Condemned,
    /// It no longer exists (collected).
    Gone,
}

/// Drops packs another node deleted from this node's index (their chunk
/// entries too), so dedup stops finding them.
pub(crate) fn forget_packs(core: &Core, packs: &[PackId]) -> Result<()> {
    let mut ids = Vec::new();
    for p in packs {
        ids.extend(core.index.chunks_in_pack(p)?);
    }
    core.index.remove_packs(packs, &mut ids)?;
    for p in packs {
        core.packs.forget(p);
    }
    core.index.flush()
}
