//! GC and repack on a store several processes share (spec §10.6).
//!
//! The collector holds the GC lease for the whole run and deletes in two
//! phases: it marks from the bucket (every recipe and ref object a listing
//! shows, aged by the listing's `Last-Modified`), publishes the dead objects
//! as the condemned set, waits the writer window, marks again, and deletes
//! only what is condemned and still dead — checking its lease before every
//! batch of deletions. Writers check the condemned set before they name
//! stored objects (`condemned`), so nothing a writer names is deleted.
//!
//! A repack on a shared store rewrites its chosen packs between the two
//! phases and condemns the packs it replaced with the dead ones, so the old
//! packs go through the same window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::cache::lock;
use crate::condemned::{self, Condemned, CondemnedRecord};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::Recipe;
use crate::gc::{self, Ages, Collection, GcOptions, GcReport};
use crate::ids::{FileId, PackId};
use crate::lease::{Lease, GC_LEASE};
use crate::options::millis;
use crate::paths::{file_of_key, pack_of_key, recipe_key, PACKS, RECIPES};
use crate::refresh;
use crate::remote::{parallel, reload_file};
use crate::repack::{self, RepackOptions, RepackReport};

/// Garbage collection on a shared store.
pub(crate) fn gc(
    core: &Core,
    opts: &GcOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<GcReport> {
    let started = Instant::now();
    let mut report = run(core, opts, progress, &mut |_, _, _| Ok(Vec::new()))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Repack on a shared store: GC's first mark, the rewrite, and the
/// replaced packs condemned with the dead objects.
pub(crate) fn repack(
    core: &Core,
    opts: &RepackOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<RepackReport> {
    let started = Instant::now();
    repack::check_options(opts)?;
    let mut rep = RepackReport {
        dry_run: opts.gc.dry_run,
        ..Default::default()
    };
    let gc_report = run(core, &opts.gc, progress, &mut |core, first, progress| {
        rep.gc = first.report.clone();
        // As on a directory store: what the rewrite starts from, once the
        // GC deleted the dead packs (a dry run's estimate included them).
        rep.stored_bytes_before = first.report.stored_bytes_after;
        let chosen = repack::choose(first, opts, core.opts.pack_target_bytes);
        let dead = first.journal.files.iter().map(|(f, _)| *f).collect();
        match repack::rewrite(core, &chosen, &dead, opts, &mut rep, progress)? {
            // Other nodes may still name the old packs: they are condemned
            // and deleted after the window, if still dead then.
            Some((old, _gate)) => Ok(old),
            None => Ok(Vec::new()),
        }
    })?;
    if !opts.gc.dry_run {
        // The deletions are the second mark's; the duplicates the rewrite
        // reclaimed were found by the first.
        let found = rep.gc.duplicate_bytes;
        rep.gc = gc_report;
        rep.gc.duplicate_bytes = found;
        rep.stored_bytes_after = core.index.counters()?.stored_bytes;
    }
    rep.seconds = started.elapsed().as_secs_f64();
    Ok(rep)
}

/// What runs between the two marks (a repack's rewrite): given the first
/// collection, returns more packs to condemn.
type Between<'a> =
    dyn FnMut(&Core, &Collection, &mut dyn FnMut(&str, u64, u64)) -> Result<Vec<PackId>> + 'a;

fn run(
    core: &Core,
    opts: &GcOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
    between: &mut Between<'_>,
) -> Result<GcReport> {
    core.check_poison()?;
    opts.check()?;
    let _one = lock(&core.maintenance);
    if opts.dry_run {
        // Nothing is deleted: no lease, one mark.
        let ages = survey(core, progress)?;
        let first = {
            let _gate = core.gate.exclusive(opts.wait)?;
            gc::collect(core, opts, &ages, None, progress)?
        };
        between(core, &first, progress)?;
        return Ok(first.report);
    }
    let window = opts.writer_window;
    if window < core.opts.gc_check_valid.saturating_mul(2) {
        return Err(Error::InvalidArgument(format!(
            "a writer window of {} ms is shorter than twice this node's writer check ({} ms; spec §10.6)",
            window.as_millis(),
            core.opts.gc_check_valid.as_millis()
        )));
    }
    let objects = core.objects.clone();
    let lease = Lease::acquire(
        objects.clone(),
        GC_LEASE,
        &Lease::default_holder(),
        opts.lease,
    )?;
    let held = Held {
        lease: Mutex::new(lease),
        lost: AtomicBool::new(false),
        margin: opts.lease.ttl / 3,
    };
    // The lease is renewed every quarter of its time to live for the whole
    // run, whatever step is slow (a survey of many recipes, a wait for the
    // gate, a repack's copy); a renewal that fails, or comes after the
    // lease lapsed, ends the run before its next destructive step.
    let r = with_heartbeat(&held, opts.lease.ttl / 4, || {
        two_phases(core, opts, &held, progress, between)
    });
    let lease = held.lease.into_inner().unwrap_or_else(|p| p.into_inner());
    match (r, lease.release()) {
        (Ok(rep), Ok(())) => Ok(rep),
        (Ok(rep), Err(e)) => {
            // It expires by itself.
            tracing::warn!(error = %e, "releasing the GC lease failed");
            Ok(rep)
        }
        (Err(e), _) => Err(e),
    }
}

/// Runs `f` while a heartbeat thread renews `held`'s lease every `every`.
/// The heartbeat stops however `f` ends: after a panic in `f` it would
/// otherwise keep the scope (and the process) waiting while it renews the
/// lease, and so keeps the condemned set in force, forever.
fn with_heartbeat<R>(held: &Held, every: Duration, f: impl FnOnce() -> R) -> R {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let beat = s.spawn(|| held.heartbeat(&stop, every));
        let _stop = StopOnDrop(&stop);
        let r = f();
        stop.store(true, Ordering::SeqCst);
        let _ = beat.join();
        r
    })
}

/// Sets its flag when dropped, on every way out of a scope (an unwinding
/// panic too).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The GC lease, kept renewed by a heartbeat thread.
struct Held {
    lease: Mutex<Lease>,
    /// A renewal failed or came too late: the run must stop.
    lost: AtomicBool,
    /// The longest one step (a batch of deletions, a publication) may take
    /// while the lease is counted on.
    margin: Duration,
}

impl Held {
    fn heartbeat(&self, stop: &AtomicBool, every: Duration) {
        let mut last = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            if let Err(e) = lock(&self.lease).renew() {
                tracing::error!(error = %e, "the GC lease could not be renewed; the collection stops");
                self.lost.store(true, Ordering::SeqCst);
                return;
            }
        }
    }

    /// Ok while the lease is certainly held for the next step.
    fn check(&self) -> Result<()> {
        self.deadline().map(|_| ())
    }

    /// When the lease certainly ends, while it is held for the next step
    /// (an error once a renewal failed: the run stops, whatever is left).
    fn deadline(&self) -> Result<Instant> {
        // After a renewal in flight (the heartbeat holds the lease while it
        // renews): its outcome is known then.
        let lease = lock(&self.lease);
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::LeaseLost {
                object: GC_LEASE.into(),
                detail: "a renewal failed or came after the lease lapsed; nothing more is deleted"
                    .into(),
            });
        }
        lease.check(self.margin)?;
        Ok(Instant::now() + lease.remaining())
    }
}

fn two_phases(
    core: &Core,
    opts: &GcOptions,
    held: &Held,
    progress: &mut dyn FnMut(&str, u64, u64),
    between: &mut Between<'_>,
) -> Result<GcReport> {
    let objects = core.objects.as_ref();
    // 1. Mark from the bucket.
    let ages = survey(core, progress)?;
    let first = {
        let _gate = core.gate.exclusive(opts.wait)?;
        gc::collect(core, opts, &ages, None, progress)?
    };
    let before = first.report.stored_bytes_before;
    let mut extra = between(core, &first, progress)?;
    let token = lock(&held.lease).token();
    let mut condemned = Condemned {
        token,
        // Set in the record (`record`), from the publication time.
        window_ends_ms: 0,
        files: first.journal.files.iter().map(|(f, _)| *f).collect(),
        packs: first.journal.packs.iter().copied().collect(),
    };
    condemned.packs.extend(extra.drain(..));
    if condemned.is_empty() {
        let mut rep = first.report;
        rep.dead_files = 0;
        rep.dead_packs = 0;
        return Ok(rep);
    }
    // 2. Publish what is condemned (replacing a set a dead collector left).
    held.check()?;
    let previous = condemned::version(objects)?;
    let rec = record(&lock(&held.lease), opts, &condemned);
    condemned::publish(objects, &rec, previous.as_ref())?;
    tracing::info!(
        files = condemned.files.len(),
        packs = condemned.packs.len(),
        window_ms = millis(opts.writer_window),
        "published the condemned set; waiting the writer window"
    );
    // 3. The writer window (the heartbeat renews the lease).
    progress("writer window", 0, 1);
    let end = Instant::now()
        .checked_add(opts.writer_window)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a writer window of {} s is too long for this system's clock",
                opts.writer_window.as_secs()
            ))
        })?;
    while Instant::now() < end {
        std::thread::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
        );
        held.check()?;
    }
    // 4. Mark again; delete only what is condemned and still dead.
    let ages = survey(core, progress)?;
    let second = {
        let _gate = core.gate.exclusive(opts.wait)?;
        let second = gc::collect(core, opts, &ages, Some(&condemned), progress)?;
        held.check()?;
        let live: Vec<(PackId, u64)> = second.live.iter().map(|p| (p.id, p.live_bytes)).collect();
        core.poison_on(core.index.set_live_bytes(&live))?;
        // No journal object: a deletion cut short leaves objects the next
        // collection condemns again, and the condemned set, left in place,
        // keeps writers off them until then.
        gc::apply_to_index(core, &second.journal)?;
        second
    };
    progress("delete", 0, 1);
    gc::delete_objects(core, &second.journal, &mut || held.deadline().map(Some))?;
    // 5. Done: writers may name anything again.
    held.check()?;
    condemned::remove(objects)?;
    let mut rep = second.report;
    rep.stored_bytes_before = before;
    Ok(rep)
}

fn record(lease: &Lease, opts: &GcOptions, c: &Condemned) -> CondemnedRecord {
    let mut files: Vec<String> = c.files.iter().map(|f| f.to_hex()).collect();
    let mut packs: Vec<String> = c.packs.iter().map(|p| p.to_hex()).collect();
    files.sort();
    packs.sort();
    CondemnedRecord {
        version: 1,
        token: lease.token(),
        holder: lease.holder().to_string(),
        published_ms: crate::index::now_millis(),
        window_ms: millis(opts.writer_window),
        files,
        packs,
    }
}

/// Brings this node's index to what the bucket holds, for marking: new
/// packs, recipes and refs indexed (a refresh), every recipe reread (another
/// node's repack may have replaced one), objects gone from the bucket
/// dropped; and the age of every listed pack and recipe.
fn survey(core: &Core, progress: &mut dyn FnMut(&str, u64, u64)) -> Result<Ages> {
    progress("survey", 0, 1);
    let objects = core.objects.as_ref();
    let list = |prefix: &str| {
        objects
            .list_versioned(prefix)
            .map_err(|e| Error::io("list", objects.describe(prefix), e))
    };
    let ms = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, millis)
    };
    let mut packs: HashMap<PackId, u64> = HashMap::new();
    for l in list(PACKS)? {
        if let Some(p) = pack_of_key(&l.key) {
            packs.insert(p, ms(l.modified));
        }
    }
    let mut files: HashMap<FileId, u64> = HashMap::new();
    for l in list(RECIPES)? {
        if let Some(f) = file_of_key(&l.key) {
            files.insert(f, ms(l.modified));
        }
    }
    // Every ref is read again (not only those whose version changed): the
    // mark must see the bucket's refs as they are.
    refresh::forget_seen_refs(core)?;
    let r = refresh::refresh(core)?;
    for p in &r.problems {
        tracing::warn!(object = %p.object, "survey: {}", p.detail);
    }
    // A ref object that cannot be read stops the collection like a recipe
    // that does not decode: the file it names is unknown, and this node's
    // index (a cache) may lack it, so marking without it could delete a
    // named file.
    if let Some(p) = r.unreadable_refs.first() {
        let more = r.unreadable_refs.len() - 1;
        return Err(Error::RefUnreadable {
            object: objects.describe(&p.object),
            detail: if more > 0 {
                format!("is damaged ({}; and {more} more ref objects)", p.detail)
            } else {
                format!("is damaged ({})", p.detail)
            },
        });
    }
    // Every recipe as the bucket holds it now. One that cannot be read
    // stops the collection (§10.5): marking without it could delete what it
    // names.
    let listed: Vec<FileId> = files.keys().copied().collect();
    let reread = parallel(&listed, |f| reload_file(core, f));
    for (f, r) in listed.iter().zip(reread) {
        r?;
        if !core.index.has_file(f)? {
            unindexed_recipe(core, f)?;
        }
    }
    // What the index holds that the bucket no longer does, needed or not
    // (confirmed one by one: a listing misses objects written while it runs).
    let listing = refresh::Listing {
        packs: packs.keys().copied().collect(),
        files: files.keys().copied().collect(),
    };
    refresh::forget_collected(
        core,
        &listing,
        refresh::Keep::Nothing,
        &mut Default::default(),
    )?;
    core.poison_on(core.index.flush())?;
    Ok(Ages::Listed { files, packs })
}

/// Why a listed recipe the survey could not index stops the collection:
/// it does not decode (damage, with the decoder's reason), or it changed
/// while being read (busy). Nothing when it is gone (collected meanwhile).
fn unindexed_recipe(core: &Core, file: &FileId) -> Result<()> {
    let objects = core.objects.as_ref();
    let key = recipe_key(file);
    let bytes = match objects.get(&key) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read recipe", objects.describe(&key), e)),
    };
    match Recipe::decode(*file, &bytes) {
        Err(e) => Err(Error::RecipeUnreadable {
            object: objects.describe(&key),
            detail: format!("does not decode ({})", e.into_error(*file)),
        }),
        Ok(_) => Err(Error::Busy(format!(
            "{} changed while the GC's survey read it; retry",
            objects.describe(&key)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseOptions;
    use crate::storage::{DirStore, ObjectStore, ReadMode};
    use std::sync::Arc;

    /// Found by a hostile probe: a panic in the run (an `Instant` overflow
    /// on a huge writer window) left the heartbeat renewing the GC lease
    /// and the process hung, refusing writers as busy forever.
    #[test]
    fn a_panic_in_the_run_stops_the_heartbeat() {
        let d = tempfile::tempdir().expect("tempdir");
        let s: Arc<dyn ObjectStore> = Arc::new(DirStore::new(d.path(), ReadMode::Pread));
        let opts = LeaseOptions {
            ttl: Duration::from_secs(2),
            max_clock_skew: Duration::ZERO,
        };
        let lease = Lease::acquire(s.clone(), GC_LEASE, "t", opts).expect("lease");
        let held = Held {
            lease: Mutex::new(lease),
            lost: AtomicBool::new(false),
            margin: Duration::ZERO,
        };
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_heartbeat(&held, Duration::from_millis(30), || {
                    std::thread::sleep(Duration::from_millis(100));
                    panic!("the run fails");
                })
            }));
            let _ = done.send(r.is_err());
        });
        match ended.recv_timeout(Duration::from_secs(20)) {
            Ok(panicked) => assert!(panicked, "the panic goes on up"),
            Err(_) => panic!("the heartbeat outlived a panicking run: the scope never ended"),
        }
    }
}
