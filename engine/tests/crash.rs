//! Model-based crash tests over [`tessera::testing::FaultStorage`].
//!
//! Each seed runs a random sequence of puts (single and grouped), abandoned
//! ingests, ref updates, ref deletions, GCs and repacks (no grace period:
//! every unnamed file goes) and reads against an in-memory model of
//! what the store has acknowledged, fails the N-th storage operation (usually
//! "sticky": every later operation fails too, i.e. the process died there),
//! takes the crash image (power loss, power loss with part of the unsynced
//! state written back, or kill -9), sometimes rolls the real sled index back
//! to its copy taken right after the last acknowledged operation (sled losing
//! unflushed writes), reopens, sometimes crashes again during recovery, and
//! checks:
//!
//! * every acknowledged file reads back byte-identical, by id and through its
//!   refs, and its recipe file (the durable copy) is there and names packs
//!   that are there;
//! * a file of the operation in flight is wholly readable and identical, or
//!   "not found" — never other bytes or another error;
//! * acknowledged refs are there (a ref of the operation in flight may have
//!   either value), no ref appears from nowhere, and every ref file agrees
//!   with the index (reopening after a crash reconciles them), as does every
//!   recipe file with the index copy of its recipe;
//! * `verify` is clean;
//! * `tmp/` is empty after reopening, and the index counters match the model.
//!
//! Environment:
//! * `TESSERA_CRASH_SEED=<n>` runs only that seed (failures print theirs);
//! * `TESSERA_CRASH_ITERS=<n>` runs seeds 1..=n plus one random seed
//!   (default: a CI-sized run);
//! * `TESSERA_CRASH_VERBOSE=1` prints every operation.
//!
//! Long run: `TESSERA_CRASH_ITERS=10000 cargo test -p tessera --release
//! --test crash -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tessera::storage::Fs;
use tessera::testing::pack_key;
use tessera::testing::Recipe;
use tessera::testing::{recipe_key, ref_key};
use tessera::testing::{CrashMode, Fault, FaultStorage, OpKind};
use tessera::FileIdHasher;
use tessera::{ChunkId, ChunkParams, Error, FileId, Store, StoreOptions};
use tessera_synth::SplitMix64;

mod common;

// ---------------------------------------------------------------- helpers

const PARAMS: ChunkParams = ChunkParams {
    min: 4096,
    avg: 16384,
    max: 65536,
    normalization: 1,
};

fn opts() -> StoreOptions {
    StoreOptions {
        pack_target_bytes: 256 << 10,
        chunking: Some(PARAMS),
        create: true,
        index_cache_bytes: 16 << 20,
        ..Default::default()
    }
}

const REF_NAMES: [&str; 8] = [
    "acme/llm@v1:model.safetensors",
    "acme/llm@v2:model.safetensors",
    "acme/llm@main:config.json",
    "r/a",
    "r/b",
    "base",
    "x:y z",
    "ünïcødé/ref",
];

/// splitmix64.
#[derive(Clone, Debug)]
/// The project's SplitMix64 with the helpers the model needs.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.0.fill_bytes(&mut v);
        v
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// The file id the store must assign to `data` (the in-memory chunker is the
/// reference the streaming one agrees with).
fn expected_id(data: &[u8]) -> FileId {
    let mut h = FileIdHasher::new();
    for r in PARAMS.boundaries(data) {
        h.push(&ChunkId::of(&data[r.clone()]), r.len() as u64);
    }
    h.finish()
}

/// A pool of blocks files are made of, so that files share chunks.
struct Pool {
    blocks: Vec<Vec<u8>>,
}

impl Pool {
    fn new(rng: &mut Rng) -> Pool {
        let blocks = (0..24)
            .map(|_| {
                let n = rng.range(1024, 96 * 1024) as usize;
                match rng.below(10) {
                    0 => vec![0u8; n],
                    1 | 2 => {
                        // Compressible: a small alphabet with some noise.
                        (0..n)
                            .map(|_| {
                                if rng.chance(1, 16) {
                                    rng.next() as u8
                                } else {
                                    b"abcdefgh \n"[rng.below(10) as usize]
                                }
                            })
                            .collect()
                    }
                    _ => rng.bytes(n),
                }
            })
            .collect();
        Pool { blocks }
    }

    fn fresh(&self, rng: &mut Rng, target: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(target + 96 * 1024);
        while out.len() < target {
            let b = rng.pick(&self.blocks);
            let start = rng.below(b.len() as u64 / 2) as usize;
            let end = rng.range(start as u64 + 1, b.len() as u64) as usize;
            out.extend_from_slice(&b[start..end]);
            if rng.chance(1, 8) {
                let n = rng.range(1, 300) as usize;
                out.extend(rng.bytes(n));
            }
        }
        out.truncate(target);
        out
    }

    /// New content: fresh from the pool, a copy or an edit of a known file,
    /// empty, or tiny.
    fn file(&self, rng: &mut Rng, known: &[Arc<Vec<u8>>]) -> Vec<u8> {
        match rng.below(20) {
            0 => Vec::new(),
            1 => {
                let n = rng.range(1, 200) as usize;
                rng.bytes(n)
            }
            2..=4 if !known.is_empty() => rng.pick(known).as_ref().clone(),
            5..=8 if !known.is_empty() => {
                let mut v = rng.pick(known).as_ref().clone();
                for _ in 0..rng.range(1, 3) {
                    let at = rng.below(v.len() as u64 + 1) as usize;
                    let n = rng.range(1, 4096) as usize;
                    match rng.below(3) {
                        0 => {
                            let end = (at + n).min(v.len());
                            let patch = rng.bytes(end - at);
                            v[at..end].copy_from_slice(&patch);
                        }
                        1 => {
                            let ins = rng.bytes(n);
                            v.splice(at..at, ins);
                        }
                        _ => {
                            let end = (at + n).min(v.len());
                            v.drain(at..end);
                        }
                    }
                }
                v.truncate(600 << 10);
                v
            }
            _ => {
                let target = rng.below((600 << 10) + 1) as usize;
                self.fresh(rng, target)
            }
        }
    }
}

/// Whether an error is what an injected storage failure may surface as.
fn is_injected(e: &Error) -> bool {
    match e {
        Error::Poisoned { .. } => true,
        Error::Io { .. } => {
            let mut cur: Option<&dyn std::error::Error> = Some(e);
            while let Some(c) = cur {
                if c.to_string().contains("injected fault") {
                    return true;
                }
                cur = c.source();
            }
            false
        }
        _ => false,
    }
}

fn read_all(store: &Store, id: &FileId) -> tessera::Result<Vec<u8>> {
    let mut r = store.read(id)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| Error::Io {
        op: "read file",
        object: format!("file {id}"),
        source: e,
    })?;
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

fn replace_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    copy_dir(from, to)
}

/// Opens a store over `fs`. (A reopen in the same process may find sled's
/// lock still held by the previous instance's threads for a moment;
/// `Index::open` waits for it.)
fn open_store(root: &Path, fs: &FaultStorage) -> tessera::Result<Store> {
    tessera::testing::open_on(fs, root, opts())
}

/// `verify` (structure and every chunk) finds no problem.
fn verify_clean(store: &Store) -> Result<bool, String> {
    let r = store
        .verify(tessera::VerifyOptions::default())
        .map_err(|e| e.to_string())?;
    for p in &r.problems {
        eprintln!("verify: {}: {}", p.object, p.detail);
    }
    Ok(r.is_clean())
}

// ---------------------------------------------------------------- model

#[derive(Default)]
struct Model {
    files: HashMap<FileId, Arc<Vec<u8>>>,
    /// Acknowledged ids in acknowledgement order (deterministic picking).
    order: Vec<FileId>,
    refs: BTreeMap<String, FileId>,
    /// Refs whose ref file disagrees with the index since a crash hit the
    /// ref in flight (see `Report::ref_divergences`).
    diverged: BTreeSet<String>,
    /// Contents staged by ingests that were dropped without a commit.
    abandoned: Vec<(FileId, Arc<Vec<u8>>)>,
    /// Contents whose put a crash interrupted and lost: clients retry them.
    lost: Vec<Arc<Vec<u8>>>,
}

impl Model {
    fn ack_file(&mut self, id: FileId, data: &Arc<Vec<u8>>) {
        if self.files.insert(id, data.clone()).is_none() {
            self.order.push(id);
        }
    }
    fn known(&self) -> Vec<Arc<Vec<u8>>> {
        self.order.iter().map(|id| self.files[id].clone()).collect()
    }
    fn pick_file(&self, rng: &mut Rng) -> Option<FileId> {
        (!self.order.is_empty()).then(|| *rng.pick(&self.order))
    }
}

/// What the operation in flight at a crash may or may not have done.
#[derive(Default, Debug)]
struct InFlight {
    desc: String,
    files: Vec<(FileId, Arc<Vec<u8>>)>,
    /// Allowed values of each ref it touches (the old one included).
    refs: BTreeMap<String, BTreeSet<Option<FileId>>>,
}

impl InFlight {
    fn new(desc: String) -> Self {
        InFlight {
            desc,
            ..Default::default()
        }
    }
    fn file(&mut self, id: FileId, data: &Arc<Vec<u8>>) {
        self.files.push((id, data.clone()));
    }
    fn ref_may_be(&mut self, model: &Model, name: &str, v: Option<FileId>) {
        self.refs
            .entry(name.to_string())
            .or_insert_with(|| [model.refs.get(name).copied()].into_iter().collect())
            .insert(v);
    }
}

/// Figures of a run.
#[derive(Default, Debug)]
struct Report {
    seeds: u64,
    ops: u64,
    crashes: u64,
    crashes_by_mode: BTreeMap<&'static str, u64>,
    recovery_crashes: u64,
    /// Faults armed before a reopen that carried over, unfired, into the
    /// first operations after it.
    recovery_faults_after_reopen: u64,
    fired_by_kind: BTreeMap<String, u64>,
    quiescent_crashes: u64,
    sled_rollbacks: u64,
    /// Recipe or ref files damaged or deleted at a crash (then healed by
    /// the open's catch-up from the index's copies).
    files_damaged: u64,
    poisoned_checks: u64,
    inflight_present: u64,
    inflight_absent: u64,
    gcs: u64,
    repacks: u64,
}

// ---------------------------------------------------------------- world

enum Outcome {
    Mutated,
    ReadOnly,
}

struct World<'r> {
    seed: u64,
    rng: Rng,
    root: tempfile::TempDir,
    snaps: tempfile::TempDir,
    fs: FaultStorage,
    store: Option<Store>,
    model: Model,
    pool: Pool,
    /// Roll the index back to its last acknowledged copy at some crashes.
    sled_mode: bool,
    /// A fault set before reopening that has not fired yet: it belongs to
    /// the next cycle's first operations.
    carried_fault: bool,
    trace: Vec<String>,
    verbose: bool,
    report: &'r mut Report,
}

/// A failed operation and what it may have done.
type StepErr = Box<(Error, InFlight)>;

impl World<'_> {
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(40).collect();
        let mut t = String::new();
        for l in tail.into_iter().rev() {
            t.push_str("    ");
            t.push_str(l);
            t.push('\n');
        }
        let log: Vec<String> = self
            .fs
            .log()
            .iter()
            .rev()
            .take(12)
            .map(|r| {
                format!(
                    "    #{} {:?} {}{}",
                    r.seq,
                    r.kind,
                    r.what,
                    if r.failed { " FAILED" } else { "" }
                )
            })
            .collect();
        panic!(
            "crash test seed {seed} failed: {msg}\n  reproduce: TESSERA_CRASH_SEED={seed} cargo test -p tessera --test crash -- --nocapture\n  trace (last ops):\n{t}  storage ops (latest first):\n{}",
            log.join("\n"),
            seed = self.seed
        );
    }

    fn note(&mut self, s: String) {
        if self.verbose {
            eprintln!("[{}] {s}", self.seed);
        }
        self.trace.push(s);
    }

    fn store(&self) -> Store {
        match &self.store {
            Some(s) => s.clone(),
            None => self.fail("no open store"),
        }
    }

    fn open(&self) -> tessera::Result<Store> {
        open_store(self.root.path(), &self.fs)
    }

    fn snapshot_index(&self) {
        if self.sled_mode {
            let from = self.root.path().join("index");
            let to = self.snaps.path().join("index");
            if let Err(e) = replace_dir(&from, &to) {
                self.fail(format!("copying the index: {e}"));
            }
        }
    }

    fn pick_refs(&mut self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for _ in 0..self.rng.below(3) {
            let n = *self.rng.pick(&REF_NAMES);
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    fn new_content(&mut self) -> (FileId, Arc<Vec<u8>>) {
        if !self.model.lost.is_empty() && self.rng.chance(1, 3) {
            // Retry an upload a crash interrupted.
            let i = self.rng.below(self.model.lost.len() as u64) as usize;
            let data = self.model.lost.swap_remove(i);
            return (expected_id(&data), data);
        }
        let known = self.model.known();
        let data = self.pool.file(&mut self.rng, &known);
        (expected_id(&data), Arc::new(data))
    }

    /// Records contents staged by an ingest that is never committed.
    fn abandon(&mut self, added: Vec<(FileId, Arc<Vec<u8>>)>) {
        for (id, data) in added {
            if !self.model.files.contains_key(&id) {
                self.model.abandoned.push((id, data));
            }
        }
    }

    /// Runs one random operation. `Err` carries the failed operation's
    /// possible effects.
    fn step(&mut self) -> Result<Outcome, StepErr> {
        let store = self.store();
        match self.rng.below(100) {
            0..=29 => {
                let (id, data) = self.new_content();
                let refs = self.pick_refs();
                self.note(format!("put {} ({} bytes) refs {refs:?}", id, data.len()));
                let mut inf = InFlight::new(format!("put {id}"));
                inf.file(id, &data);
                for r in &refs {
                    inf.ref_may_be(&self.model, r, Some(id));
                }
                let was_known = self.model.files.contains_key(&id);
                let rep = store
                    .put("input", &data[..], &refs)
                    .map_err(|e| Box::new((e, inf)))?;
                if rep.file_id != id || rep.size != data.len() as u64 {
                    self.fail(format!("put reported {rep:?} for {id}"));
                }
                if rep.new_file == was_known {
                    self.fail(format!(
                        "put of {id}: new_file={} but the model {} it",
                        rep.new_file,
                        if was_known { "has" } else { "lacks" }
                    ));
                }
                self.model.ack_file(id, &data);
                for r in refs {
                    self.model.refs.insert(r.to_string(), id);
                    self.model.diverged.remove(r);
                }
                Ok(Outcome::Mutated)
            }
            30..=44 => {
                let n = self.rng.range(2, 3);
                let mut staged = Vec::new();
                let mut inf = InFlight::new("group ingest".into());
                for _ in 0..n {
                    let (id, data) = self.new_content();
                    let refs = self.pick_refs();
                    inf.file(id, &data);
                    for r in &refs {
                        inf.ref_may_be(&self.model, r, Some(id));
                    }
                    staged.push((id, data, refs));
                }
                let desc: Vec<String> = staged
                    .iter()
                    .map(|(id, d, r)| format!("{id} ({} bytes) refs {r:?}", d.len()))
                    .collect();
                self.note(format!("ingest+commit [{}]", desc.join(", ")));
                let mut ing = store.ingest();
                for (id, data, refs) in &staged {
                    match ing.add("input", &data[..], refs, &mut |_| {}) {
                        Ok(got) if got == *id => {}
                        Ok(got) => self.fail(format!("ingest of {id} returned {got}")),
                        Err(e) => return Err(Box::new((e, inf))),
                    }
                }
                let reports = ing.commit().map_err(|e| Box::new((e, inf)))?;
                let ids: Vec<FileId> = reports.iter().map(|r| r.file_id).collect();
                let want: Vec<FileId> = staged.iter().map(|s| s.0).collect();
                if ids != want {
                    self.fail(format!("commit reported {ids:?}, staged {want:?}"));
                }
                for (id, data, refs) in staged {
                    self.model.ack_file(id, &data);
                    for r in refs {
                        self.model.refs.insert(r.to_string(), id);
                        self.model.diverged.remove(r);
                    }
                }
                Ok(Outcome::Mutated)
            }
            45..=49 => {
                // An ingest dropped without a commit: nothing is acknowledged.
                let n = self.rng.range(1, 2);
                let mut ing = store.ingest();
                let mut added = Vec::new();
                for _ in 0..n {
                    let (id, data) = self.new_content();
                    self.note(format!("abandoned ingest of {id} ({} bytes)", data.len()));
                    let refs = self.pick_refs();
                    let r = ing.add("input", &data[..], &refs, &mut |_| {});
                    added.push((id, data));
                    if let Err(e) = r {
                        self.abandon(added);
                        let inf = InFlight::new("abandoned ingest".into());
                        return Err(Box::new((e, inf)));
                    }
                }
                drop(ing);
                self.abandon(added);
                Ok(Outcome::Mutated)
            }
            50..=64 => {
                let name = *self.rng.pick(&REF_NAMES);
                match self.model.pick_file(&mut self.rng) {
                    Some(id) if !self.rng.chance(1, 10) => {
                        self.note(format!("set_ref {name:?} -> {id}"));
                        let mut inf = InFlight::new(format!("set_ref {name:?}"));
                        inf.ref_may_be(&self.model, name, Some(id));
                        store.set_ref(name, id).map_err(|e| Box::new((e, inf)))?;
                        self.model.refs.insert(name.to_string(), id);
                        self.model.diverged.remove(name);
                        Ok(Outcome::Mutated)
                    }
                    _ => {
                        let bogus = FileId(ChunkId::of(&self.rng.next().to_le_bytes()).0);
                        self.note(format!("set_ref {name:?} -> unknown {bogus}"));
                        match store.set_ref(name, bogus) {
                            Err(e) if e.is_not_found() => Ok(Outcome::ReadOnly),
                            Err(e) => {
                                Err(Box::new((e, InFlight::new("set_ref to unknown".into()))))
                            }
                            Ok(()) => self.fail("set_ref to an unknown file succeeded"),
                        }
                    }
                }
            }
            65..=74 => {
                let name = *self.rng.pick(&REF_NAMES);
                let had = self.model.refs.contains_key(name);
                self.note(format!("delete_ref {name:?} (in model: {had})"));
                let mut inf = InFlight::new(format!("delete_ref {name:?}"));
                inf.ref_may_be(&self.model, name, None);
                match store.delete_ref(name) {
                    Ok(()) if had => {
                        self.model.refs.remove(name);
                        // The ref file is gone durably too, unless the
                        // index lacked the ref (then it was not called).
                        self.model.diverged.remove(name);
                        Ok(Outcome::Mutated)
                    }
                    Ok(()) => self.fail(format!("deleting missing ref {name:?} succeeded")),
                    Err(e) if e.is_not_found() && !had => Ok(Outcome::ReadOnly),
                    Err(e) => Err(Box::new((e, inf))),
                }
            }
            75..=79 => self.collect(&store),
            _ => {
                self.read_some(&store, None);
                Ok(Outcome::ReadOnly)
            }
        }
    }

    /// GC or repack with no grace period: every acknowledged file no ref
    /// names goes (it is the operation in flight until it returns), every
    /// named one stays.
    fn collect(&mut self, store: &Store) -> Result<Outcome, StepErr> {
        let repack = self.rng.chance(1, 2);
        let named: BTreeSet<FileId> = self.model.refs.values().copied().collect();
        let doomed: Vec<FileId> = self
            .model
            .order
            .iter()
            .filter(|id| !named.contains(id))
            .copied()
            .collect();
        let what = if repack { "repack" } else { "gc" };
        self.note(format!("{what}: {} unnamed files go", doomed.len()));
        let mut inf = InFlight::new(what.into());
        for id in &doomed {
            if let Some(data) = self.model.files.remove(id) {
                inf.file(*id, &data);
            }
        }
        self.model.order.retain(|id| named.contains(id));
        let gc = tessera::GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        };
        let dead = if repack {
            self.report.repacks += 1;
            let opts = tessera::RepackOptions {
                threshold: [0.3, 0.6, 0.95][self.rng.below(3) as usize],
                max_garbage: [0.0, 0.05, 1.0][self.rng.below(3) as usize],
                combine_small: self.rng.chance(1, 2),
                recompress: self.rng.chance(1, 4),
                gc,
            };
            let rep = store.repack(&opts).map_err(|e| Box::new((e, inf)))?;
            if !rep.skipped.is_empty() {
                self.fail(format!("repack skipped packs: {:?}", rep.skipped));
            }
            rep.gc.dead_files
        } else {
            self.report.gcs += 1;
            store.gc(&gc).map_err(|e| Box::new((e, inf)))?.dead_files
        };
        if dead != doomed.len() as u64 {
            self.fail(format!(
                "{what} deleted {dead} files, {} were unnamed",
                doomed.len()
            ));
        }
        for id in &doomed {
            match store.contains(id) {
                Ok(false) => {}
                r => self.fail(format!("{what} kept unnamed {id}: {r:?}")),
            }
        }
        Ok(Outcome::Mutated)
    }

    /// Reads of acknowledged data, which must work at any time (also when
    /// the store is poisoned or every write fails).
    /// `inflight`: an operation that failed in this process (the store is
    /// poisoned); reads may see some of its effects.
    fn read_some(&mut self, store: &Store, inflight: Option<&InFlight>) {
        let Some(id) = self.model.pick_file(&mut self.rng) else {
            return;
        };
        let data = self.model.files[&id].clone();
        match self.rng.below(3) {
            0 => {
                self.note(format!("read {id}"));
                match read_all(store, &id) {
                    Ok(got) if got == *data => {}
                    Ok(got) => self.fail(format!(
                        "read of {id}: {} bytes differ from the model's {}",
                        got.len(),
                        data.len()
                    )),
                    Err(e) => self.fail(format!("read of acknowledged {id}: {e}")),
                }
            }
            1 => {
                let off = self.rng.below(data.len() as u64 + 1);
                let len = self.rng.below(data.len() as u64 - off + 1);
                self.note(format!("read_range {id} {off}+{len}"));
                match store.read_range(&id, off, len) {
                    Ok(got) if got[..] == data[off as usize..(off + len) as usize] => {}
                    Ok(_) => self.fail(format!("read_range of {id} returned other bytes")),
                    Err(e) => self.fail(format!("read_range of acknowledged {id}: {e}")),
                }
            }
            _ => {
                let refs: Vec<(String, FileId)> = self
                    .model
                    .refs
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                if refs.is_empty() {
                    return;
                }
                let (name, want) = self.rng.pick(&refs).clone();
                self.note(format!("resolve+read {name:?}"));
                // A failed commit may have updated refs of the files it
                // committed before failing.
                let allowed: BTreeSet<Option<FileId>> = inflight
                    .and_then(|i| i.refs.get(&name))
                    .cloned()
                    .unwrap_or_else(|| [Some(want)].into_iter().collect());
                let target = match store.resolve_ref(&name) {
                    Ok(got) if allowed.contains(&Some(got)) => got,
                    Err(e) if e.is_not_found() && allowed.contains(&None) => return,
                    r => self.fail(format!(
                        "ref {name:?} resolves to {r:?}, model allows {allowed:?}"
                    )),
                };
                let expect = self.model.files.get(&target).cloned().or_else(|| {
                    inflight
                        .and_then(|i| i.files.iter().find(|f| f.0 == target).map(|f| f.1.clone()))
                });
                match (expect, read_all(store, &target)) {
                    (Some(w), Ok(got)) if got == *w => {}
                    (_, Ok(_)) => self.fail(format!("read via ref {name:?} returned other bytes")),
                    (_, Err(e)) => self.fail(format!("read via ref {name:?}: {e}")),
                }
            }
        }
    }

    fn pick_fault(&mut self) -> Fault {
        let sticky = !self.rng.chance(1, 4);
        if self.rng.chance(1, 2) {
            let nth = if self.rng.chance(1, 3) {
                self.rng.range(1, 10)
            } else {
                self.rng.range(1, 400)
            };
            Fault {
                kind: None,
                nth,
                sticky,
            }
        } else {
            // Every kind but CreateDir (directories exist from creation on).
            let kinds: Vec<OpKind> = OpKind::ALL
                .into_iter()
                .filter(|k| *k != OpKind::CreateDir)
                .collect();
            let kind = *self.rng.pick(&kinds);
            let nth = match kind {
                OpKind::Write => self.rng.range(1, 120),
                OpKind::Remove => self.rng.range(1, 3),
                _ => self.rng.range(1, 12),
            };
            Fault {
                kind: Some(kind),
                nth,
                sticky,
            }
        }
    }

    fn pick_mode(&mut self) -> CrashMode {
        match self.rng.below(4) {
            0 | 1 => CrashMode::PowerLoss,
            2 => CrashMode::PowerLossPartial(self.rng.next()),
            _ => CrashMode::ProcessKill,
        }
    }

    /// A failed operation is indexed in one transaction (a group commit
    /// too), so readers in this process see all of its effects or none:
    /// every new file of it is present or every one absent, and every ref it
    /// changes has its new value or every one its old value.
    fn check_all_or_nothing(&mut self, store: &Store, inflight: &InFlight) {
        let mut seen: BTreeMap<bool, String> = BTreeMap::new();
        for (id, _) in &inflight.files {
            if self.model.files.contains_key(id) {
                continue;
            }
            match store.contains(id) {
                Ok(v) => {
                    seen.entry(v).or_insert_with(|| format!("file {id}"));
                }
                Err(e) => self.fail(format!("contains({id}) on the poisoned store: {e}")),
            }
        }
        for (name, allowed) in &inflight.refs {
            let old = self.model.refs.get(name).copied();
            let mut new = allowed.iter().filter(|v| **v != old);
            let (Some(&new), None) = (new.next(), new.next()) else {
                continue;
            };
            let now = match store.resolve_ref(name) {
                Ok(f) => Some(f),
                Err(e) if e.is_not_found() => None,
                Err(e) => self.fail(format!("resolving {name:?} on the poisoned store: {e}")),
            };
            if now == new {
                seen.entry(true).or_insert_with(|| format!("ref {name:?}"));
            } else if now == old {
                seen.entry(false).or_insert_with(|| format!("ref {name:?}"));
            }
        }
        if let (Some(done), Some(not)) = (seen.get(&true), seen.get(&false)) {
            self.fail(format!(
                "failed {} is partly visible: {done} is there, {not} is not",
                inflight.desc
            ));
        }
    }

    /// After a non-sticky failure: writes are refused with `Poisoned`,
    /// reads still work.
    fn check_poisoned(&mut self, inflight: &InFlight) {
        let store = self.store();
        self.check_all_or_nothing(&store, inflight);
        let ops = self.fs.ops();
        for _ in 0..self.rng.range(1, 4) {
            self.report.poisoned_checks += 1;
            let r = match self.rng.below(5) {
                0 => {
                    let (id, data) = self.new_content();
                    self.note(format!("put {id} on poisoned store"));
                    store.put("input", &data[..], &["r/a"]).map(|_| ())
                }
                1 => {
                    // Content already stored: no I/O needed, still refused.
                    let Some(id) = self.model.pick_file(&mut self.rng) else {
                        continue;
                    };
                    let data = self.model.files[&id].clone();
                    self.note(format!("re-put {id} on poisoned store"));
                    store.put("input", &data[..], &[]).map(|_| ())
                }
                2 => {
                    let Some(id) = self.model.pick_file(&mut self.rng) else {
                        continue;
                    };
                    self.note(format!("set_ref on poisoned store -> {id}"));
                    store.set_ref("r/b", id)
                }
                3 => {
                    let name = self
                        .model
                        .refs
                        .keys()
                        .next()
                        .cloned()
                        .unwrap_or_else(|| "base".into());
                    self.note(format!("delete_ref {name:?} on poisoned store"));
                    store.delete_ref(&name)
                }
                _ => {
                    self.read_some(&store, Some(inflight));
                    continue;
                }
            };
            match r {
                Err(Error::Poisoned { .. }) => {}
                Err(e) => self.fail(format!(
                    "write on a poisoned store failed with {e} instead of Poisoned"
                )),
                Ok(()) => self.fail("write on a poisoned store succeeded"),
            }
        }
        if self.fs.ops() != ops {
            self.fail("the poisoned store kept writing to storage");
        }
    }

    /// One cycle: operations with a fault armed, then a crash and recovery.
    fn cycle(&mut self) {
        let fault = if self.carried_fault {
            self.carried_fault = false;
            self.report.recovery_faults_after_reopen += 1;
            None
        } else {
            let f = self.pick_fault();
            self.fs.inject(f);
            Some(f)
        };
        self.note(format!("arm {fault:?}"));
        self.fs.start_log();
        let failures_before = self.fs.failures();
        let max_ops = self.rng.range(1, 25);
        let mut inflight = InFlight::default();
        let mut failed = false;
        for _ in 0..max_ops {
            self.report.ops += 1;
            match self.step() {
                Ok(Outcome::Mutated) => self.snapshot_index(),
                Ok(Outcome::ReadOnly) => {}
                Err(err) => {
                    let (e, inf) = *err;
                    if !is_injected(&e) || self.fs.failures() == failures_before {
                        self.fail(format!(
                            "{} failed with an error no fault explains: {e}",
                            inf.desc
                        ));
                    }
                    self.note(format!("  -> failed: {e}"));
                    inflight = inf;
                    failed = true;
                    break;
                }
            }
        }
        let fired = self.fs.failures() > failures_before;
        if fired && !failed {
            self.fail("an injected storage failure was not reported by any operation");
        }
        if let Some(r) = self.fs.log().iter().find(|r| r.failed) {
            *self
                .report
                .fired_by_kind
                .entry(format!("{:?}", r.kind))
                .or_default() += 1;
        }
        if failed && !self.fs.is_dead() {
            // The fault fired once and later operations succeed: the store
            // must refuse writes by itself.
            self.check_poisoned(&inflight);
        }
        if !fired {
            self.report.quiescent_crashes += 1;
        }
        self.fs.clear_fault();
        self.crash_and_recover(inflight);
    }

    fn crash_and_recover(&mut self, inflight: InFlight) {
        self.store = None;
        let mode = self.pick_mode();
        self.report.crashes += 1;
        *self
            .report
            .crashes_by_mode
            .entry(mode_name(mode))
            .or_default() += 1;
        self.note(format!("crash: {mode:?} (in flight: {})", inflight.desc));
        self.fs = self.fs.crash_with(mode);
        // GC and repack flush the index before they delete anything (spec
        // §10.5): rolling it back past that flush is not a loss sled has.
        let flushes_midway = matches!(inflight.desc.as_str(), "gc" | "repack");
        if self.sled_mode && !flushes_midway && self.rng.chance(1, 2) {
            self.report.sled_rollbacks += 1;
            self.note("index rolled back to its copy at the last acknowledgement".into());
            if let Err(e) = replace_dir(
                &self.snaps.path().join("index"),
                &self.root.path().join("index"),
            ) {
                self.fail(format!("restoring the index copy: {e}"));
            }
        }
        if self.rng.chance(1, 6) {
            self.damage_a_file();
        }
        let mut attempts = 0;
        loop {
            let rec_fault = attempts < 2 && self.rng.chance(1, 4);
            if rec_fault {
                let f = Fault {
                    kind: None,
                    nth: self.rng.range(1, 6),
                    sticky: true,
                };
                self.note(format!("arm recovery {f:?}"));
                self.fs.inject(f);
            }
            self.fs.start_log();
            match self.open() {
                Ok(s) => {
                    self.store = Some(s);
                    break;
                }
                Err(e) if rec_fault && is_injected(&e) && self.fs.failures() > 0 => {
                    let mode = self.pick_mode();
                    self.note(format!("reopen failed ({e}); crash again: {mode:?}"));
                    self.report.recovery_crashes += 1;
                    self.report.crashes += 1;
                    *self
                        .report
                        .crashes_by_mode
                        .entry(mode_name(mode))
                        .or_default() += 1;
                    self.fs = self.fs.crash_with(mode);
                    attempts += 1;
                }
                Err(e) => self.fail(format!("reopen after crash failed: {e}")),
            }
        }
        self.carried_fault = self.fs.fault_pending();
        self.check_recovered(&inflight);
        self.resolve(inflight);
        // (A catch-up flushes the index itself; a fault still pending
        // belongs to the next cycle's operations, so no flush here.)
        self.snapshot_index();
    }

    /// Damages the recipe file of an acknowledged file (a flipped byte, or
    /// deleted) or the ref file of an acknowledged ref (a flipped byte: a
    /// deleted ref file means a deleted ref), as bit rot during the session
    /// that crashed. The index holds a verified copy of each, so the
    /// reopen's catch-up must heal it: the checks after recovery read every
    /// recipe and ref file.
    fn damage_a_file(&mut self) {
        let rel = if !self.model.refs.is_empty() && self.rng.chance(1, 2) {
            let names: Vec<String> = self.model.refs.keys().cloned().collect();
            let name: &String = self.rng.pick(&names);
            ref_key(name)
        } else if let Some(id) = self.model.pick_file(&mut self.rng) {
            recipe_key(&id)
        } else {
            return;
        };
        let Ok(mut bytes) = self.fs.read(&rel) else {
            return; // a ref deleted by the operation in flight
        };
        let delete = rel.starts_with("recipes/") && self.rng.chance(1, 3);
        self.report.files_damaged += 1;
        self.note(format!(
            "damage {rel} ({})",
            if delete { "deleted" } else { "flipped" }
        ));
        let dir = rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let r = if delete {
            self.fs.remove_file(&rel)
        } else {
            let i = self.rng.below(bytes.len() as u64) as usize;
            bytes[i] ^= 1 << self.rng.below(8);
            let tmp = "tmp/damage";
            self.fs.create_new(tmp).and_then(|mut h| {
                h.write_all(&bytes)?;
                h.sync()?;
                drop(h);
                self.fs.rename(tmp, &rel)
            })
        };
        if let Err(e) = r.and_then(|()| self.fs.sync_dir(&dir)) {
            self.fail(format!("damaging {rel}: {e}"));
        }
        // Damage found by a catch-up: as if it happened while the store was
        // open (a clean close before this crash removed the marker).
        if !self.fs.exists("dirty").unwrap_or(true) {
            let marked = self.fs.create_new("dirty").and_then(|mut h| h.sync());
            if let Err(e) = marked.and_then(|()| self.fs.sync_dir("")) {
                self.fail(format!("marking the store dirty: {e}"));
            }
        }
    }

    fn check_recipe_file(&mut self, store: &Store, id: &FileId) {
        let rel = recipe_key(id);
        let bytes = match self.fs.read(&rel) {
            Ok(b) => b,
            Err(e) => self.fail(format!("recipe file of {id} ({rel}): {e}")),
        };
        let on_disk = match Recipe::decode(*id, &bytes) {
            Ok(r) => r,
            Err(e) => self.fail(format!("recipe file of {id} does not decode: {e:?}")),
        };
        for t in &on_disk.terms {
            if !self.fs.exists(&pack_key(&t.pack)).unwrap_or(false) {
                self.fail(format!(
                    "recipe file of {id} names pack {} which is not on disk",
                    t.pack
                ));
            }
        }
        match store.layout(id) {
            Ok(l) if l.recipe == on_disk => {}
            Ok(l) if l.recipe.chunks == on_disk.chunks => {
                self.fail(format!(
                    "recipe file of {id} names packs {:?}, the index copy {:?}",
                    on_disk.terms.iter().map(|t| t.pack).collect::<Vec<_>>(),
                    l.recipe.terms.iter().map(|t| t.pack).collect::<Vec<_>>()
                ));
            }
            Ok(_) => self.fail(format!(
                "recipe file of {id} lists other chunks than the index"
            )),
            Err(e) => self.fail(format!("layout of {id}: {e}")),
        }
    }

    fn check_recovered(&mut self, inflight: &InFlight) {
        let store = self.store();
        match self.fs.list_dir("tmp") {
            Ok(l) if l.is_empty() => {}
            Ok(l) => self.fail(format!("tmp/ not empty after reopen: {l:?}")),
            Err(e) => self.fail(format!("listing tmp/: {e}")),
        }
        // Acknowledged files.
        for id in self.model.order.clone() {
            let data = self.model.files[&id].clone();
            match read_all(&store, &id) {
                Ok(got) if got == *data => {}
                Ok(got) => self.fail(format!(
                    "acknowledged {id} reads back {} bytes that differ from its {}",
                    got.len(),
                    data.len()
                )),
                Err(e) => self.fail(format!("acknowledged {id} unreadable after crash: {e}")),
            }
            if !data.is_empty() {
                let off = self.rng.below(data.len() as u64);
                let len = self.rng.range(1, data.len() as u64 - off);
                match store.read_range(&id, off, len) {
                    Ok(got) if got[..] == data[off as usize..(off + len) as usize] => {}
                    Ok(_) => self.fail(format!("read_range of acknowledged {id} differs")),
                    Err(e) => self.fail(format!("read_range of acknowledged {id}: {e}")),
                }
            }
            self.check_recipe_file(&store, &id);
        }
        // Files of the operation in flight: all or nothing.
        for (id, data) in &inflight.files {
            match read_all(&store, id) {
                Ok(got) if got == **data => {
                    self.report.inflight_present += 1;
                    self.check_recipe_file(&store, id);
                }
                Ok(got) => self.fail(format!(
                    "in-flight {id} reads back {} other bytes (want {})",
                    got.len(),
                    data.len()
                )),
                Err(e) if e.is_not_found() && !self.model.files.contains_key(id) => {
                    self.report.inflight_absent += 1
                }
                Err(e) => self.fail(format!(
                    "in-flight {id}: {e} (must be readable or not found)"
                )),
            }
        }
        // Never-committed files stay unknown.
        for (id, _) in &self.model.abandoned {
            if self.model.files.contains_key(id) || inflight.files.iter().any(|f| f.0 == *id) {
                continue;
            }
            match store.contains(id) {
                Ok(false) => {}
                Ok(true) => self.fail(format!("{id} was never committed but the store has it")),
                Err(e) => self.fail(format!("contains({id}): {e}")),
            }
        }
        // Refs.
        let listed: BTreeMap<String, FileId> = match store.list_refs("") {
            Ok(l) => l.into_iter().collect(),
            Err(e) => self.fail(format!("list_refs: {e}")),
        };
        for name in listed.keys() {
            if !REF_NAMES.contains(&name.as_str()) {
                self.fail(format!("unknown ref {name:?} appeared"));
            }
        }
        for name in REF_NAMES {
            let idx = listed.get(name).copied();
            let allowed: BTreeSet<Option<FileId>> = match inflight.refs.get(name) {
                Some(a) => a.clone(),
                None => [self.model.refs.get(name).copied()].into_iter().collect(),
            };
            if !allowed.contains(&idx) {
                self.fail(format!(
                    "ref {name:?} is {idx:?} after the crash; allowed: {allowed:?}"
                ));
            }
            match (store.resolve_ref(name), idx) {
                (Ok(got), Some(want)) if got == want => {}
                (Err(e), None) if e.is_not_found() => {}
                (r, _) => self.fail(format!(
                    "resolve_ref({name:?}) = {r:?}, list_refs says {idx:?}"
                )),
            }
            if let Some(target) = idx {
                let want = self.model.files.get(&target).cloned().or_else(|| {
                    inflight
                        .files
                        .iter()
                        .find(|f| f.0 == target)
                        .map(|f| f.1.clone())
                });
                match (want, read_all(&store, &target)) {
                    (Some(w), Ok(got)) if got == *w => {}
                    (w, r) => self.fail(format!(
                        "ref {name:?} names {target}, which is not readable as expected (known: {}, read: {:?})",
                        w.is_some(),
                        r.map(|g| g.len())
                    )),
                }
            }
            let file = match store.read_ref_file(name) {
                Ok(f) => f,
                Err(e) => self.fail(format!(
                    "reading ref file of {name:?} ({}): {e}",
                    ref_key(name)
                )),
            };
            if file != idx {
                if inflight.refs.contains_key(name) || self.model.diverged.contains(name) {
                    // Reopening after an unclean shutdown reconciles refs.
                    self.fail(format!(
                        "ref file of in-flight ref {name:?} says {file:?}, the index {idx:?}"
                    ));
                } else {
                    self.fail(format!(
                        "ref file of acknowledged ref {name:?} says {file:?}, the index {idx:?}"
                    ));
                }
            }
        }
        match verify_clean(&store) {
            Ok(true) => {}
            Ok(false) => self.fail("verify reports problems after recovery"),
            Err(e) => self.fail(format!("verify failed: {e}")),
        }
    }

    /// Folds what the crash kept of the operation in flight into the model.
    fn resolve(&mut self, inflight: InFlight) {
        let store = self.store();
        for (id, data) in &inflight.files {
            if store.contains(id).unwrap_or(false) {
                self.model.ack_file(*id, data);
            } else {
                self.model.lost.push(data.clone());
            }
        }
        for name in inflight
            .refs
            .keys()
            .chain(self.model.diverged.clone().iter())
        {
            match store.resolve_ref(name) {
                Ok(id) => {
                    self.model.refs.insert(name.clone(), id);
                }
                Err(_) => {
                    self.model.refs.remove(name);
                }
            }
            let idx = self.model.refs.get(name).copied();
            if store.read_ref_file(name).ok().flatten() == idx {
                self.model.diverged.remove(name);
            } else {
                self.model.diverged.insert(name.clone());
            }
        }
        let files = &self.model.files;
        self.model
            .abandoned
            .retain(|(id, _)| !files.contains_key(id));
        match store.stats() {
            Ok(s)
                if s.files == self.model.files.len() as u64
                    && s.refs == self.model.refs.len() as u64 => {}
            Ok(s) => self.fail(format!(
                "index counters say {} files and {} refs, the model {} and {}",
                s.files,
                s.refs,
                self.model.files.len(),
                self.model.refs.len()
            )),
            Err(e) => self.fail(format!("stats: {e}")),
        }
    }
}

fn mode_name(m: CrashMode) -> &'static str {
    match m {
        CrashMode::PowerLoss => "power loss",
        CrashMode::PowerLossPartial(_) => "partial power loss",
        CrashMode::ProcessKill => "kill -9",
    }
}

fn run_seed(seed: u64, report: &mut Report) {
    let mut rng = Rng(SplitMix64::new(seed));
    let root = tempfile::tempdir().expect("tempdir");
    let snaps = tempfile::tempdir().expect("tempdir");
    let fs = FaultStorage::new(root.path());
    let pool = Pool::new(&mut rng);
    let sled_mode = rng.chance(1, 3);
    let mut w = World {
        seed,
        rng,
        root,
        snaps,
        fs,
        store: None,
        model: Model::default(),
        pool,
        sled_mode,
        carried_fault: false,
        trace: Vec::new(),
        verbose: std::env::var_os("TESSERA_CRASH_VERBOSE").is_some(),
        report,
    };
    match w.open() {
        Ok(s) => w.store = Some(s),
        Err(e) => w.fail(format!("creating the store: {e}")),
    }
    w.snapshot_index();
    // A few acknowledged operations before the first fault.
    for _ in 0..w.rng.below(4) {
        match w.step() {
            Ok(_) => w.snapshot_index(),
            Err(failed) => w.fail(format!("operation without a fault failed: {}", failed.0)),
        }
    }
    let cycles = w.rng.range(1, 3);
    for _ in 0..cycles {
        w.cycle();
    }
    w.report.seeds += 1;
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

/// CI-sized by default; see the module docs for the environment variables.
#[test]
fn random_crashes_lose_nothing_acknowledged() {
    let start = Instant::now();
    let mut report = Report::default();
    if let Some(seed) = env_u64("TESSERA_CRASH_SEED") {
        run_seed(seed, &mut report);
    } else {
        let iters = env_u64("TESSERA_CRASH_ITERS").unwrap_or(200);
        for seed in 1..=iters {
            run_seed(seed, &mut report);
        }
        let random = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            | (1 << 63);
        run_seed(random, &mut report);
    }
    eprintln!(
        "crash test: {} seeds, {} operations, {} crash points ({} during recovery, {} with nothing in flight) in {:.1?}\n  {report:#?}",
        report.seeds,
        report.ops,
        report.crashes,
        report.recovery_crashes,
        report.quiescent_crashes,
        start.elapsed(),
    );
}

// ---------------------------------------------------------------- creation

/// A crash at any storage operation of store creation leaves a directory
/// that `open` with `create: true` turns into a working store.
#[test]
fn crash_during_store_creation_is_recoverable() {
    // The operations creation performs.
    let probe = tempfile::tempdir().expect("tempdir");
    let fs = FaultStorage::new(probe.path());
    fs.start_log();
    let created = open_store(probe.path(), &fs).expect("create");
    // Only the operations of `open`: failures while closing (removing the
    // `dirty` marker) are deliberately not reported; the next open recovers.
    let log = fs.log();
    drop(created);
    let dirs = log.iter().filter(|r| r.kind == OpKind::CreateDir).count();
    // Every operation except the bulk of the fan-out mkdirs.
    let points: Vec<u64> = log
        .iter()
        .filter(|r| r.kind != OpKind::CreateDir || r.seq <= 3 || r.seq + 3 >= dirs as u64)
        .map(|r| r.seq)
        .collect();
    let mut failures = Vec::new();
    let mut runs = 0;
    for &nth in &points {
        // Partial write-back picks at random which unsynced entries survive:
        // try many images around the syncs and renames that order creation.
        let kind = log[nth as usize - 1].kind;
        let partial = if matches!(kind, OpKind::Sync | OpKind::Rename | OpKind::SyncDir) {
            24
        } else {
            3
        };
        let modes = [CrashMode::PowerLoss, CrashMode::ProcessKill]
            .into_iter()
            .chain((0..partial).map(|i| CrashMode::PowerLossPartial(nth + 1000 * i)));
        for mode in modes {
            runs += 1;
            let what = format!(
                "{:?} #{nth} ({}), {mode:?}",
                log[nth as usize - 1].kind,
                log[nth as usize - 1].what
            );
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().to_path_buf();
            let fs = FaultStorage::new(&root);
            fs.inject(Fault {
                kind: None,
                nth,
                sticky: true,
            });
            match open_store(&root, &fs) {
                Err(e) if is_injected(&e) => {}
                Err(e) => {
                    failures.push(format!("{what}: creation failed with {e}"));
                    continue;
                }
                Ok(_) => {
                    failures.push(format!("{what}: creation succeeded despite the failure"));
                    continue;
                }
            }
            let image = fs.crash_with(mode);
            let store = match open_store(&root, &image) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{what}: reopening with create=true failed: {e}"));
                    continue;
                }
            };
            let data = common::noise(100_000, nth);
            let id = match store.put("input", &data[..], &["r"]) {
                Ok(r) => r.file_id,
                Err(e) => {
                    failures.push(format!("{what}: put after recovery failed: {e}"));
                    continue;
                }
            };
            drop(store);
            let image = image.crash();
            match open_store(&root, &image) {
                Ok(s) => match (s.resolve_ref("r"), read_all(&s, &id)) {
                    (Ok(got), Ok(bytes)) if got == id && bytes == data => {}
                    (r, b) => failures.push(format!(
                        "{what}: after a second crash, ref {r:?}, read {:?}",
                        b.map(|b| b.len())
                    )),
                },
                Err(e) => failures.push(format!(
                    "{what}: reopening after a second crash failed: {e}"
                )),
            }
        }
    }
    eprintln!("store creation: {runs} crash points");
    assert!(
        failures.is_empty(),
        "{} of {runs} crash points during store creation fail:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------- poisoning

const POISON_REFS: [&str; 3] = ["keep/a", "keep/b", "gone"];

/// A store with three acknowledged files and refs, on a storage that has
/// not failed yet.
fn poison_fixture() -> (
    tempfile::TempDir,
    FaultStorage,
    Store,
    Vec<(FileId, Vec<u8>)>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultStorage::new(dir.path());
    let store = open_store(dir.path(), &fs).expect("create");
    let mut files = Vec::new();
    for (i, r) in POISON_REFS.iter().enumerate() {
        let data = common::noise(50_000 + 30_000 * i, 100 + i as u64);
        let id = store.put("input", &data[..], &[r]).expect("put").file_id;
        files.push((id, data));
    }
    (dir, fs, store, files)
}

/// The write operations the poisoning test fails in the middle of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Put,
    PutKnownWithRef,
    GroupCommit,
    SetRef,
    DeleteRef,
}

fn run_trigger(t: Trigger, store: &Store, files: &[(FileId, Vec<u8>)]) -> tessera::Result<()> {
    match t {
        Trigger::Put => store
            .put("input", &common::noise(120_000, 7)[..], &["new"])
            .map(|_| ()),
        Trigger::PutKnownWithRef => store.put("input", &files[0].1[..], &["new"]).map(|_| ()),
        Trigger::GroupCommit => {
            let mut ing = store.ingest();
            ing.add(
                "input",
                &common::noise(70_000, 8)[..],
                &["new"],
                &mut |_| {},
            )?;
            ing.add(
                "input",
                &common::noise(90_000, 9)[..],
                &["keep/a"],
                &mut |_| {},
            )?;
            ing.commit().map(|_| ())
        }
        Trigger::SetRef => store.set_ref("keep/b", files[0].0),
        Trigger::DeleteRef => store.delete_ref("gone"),
    }
}

/// After one failed storage operation (later ones succeed again), the store
/// refuses every write with `Poisoned` until recovered (in place, or by a
/// reopen), keeps serving reads, and works again once recovered.
#[test]
fn a_failed_write_poisons_the_store_until_reopened() {
    let mut points = 0;
    for trigger in [
        Trigger::Put,
        Trigger::PutKnownWithRef,
        Trigger::GroupCommit,
        Trigger::SetRef,
        Trigger::DeleteRef,
    ] {
        // Which operations the trigger performs.
        let (_dir, fs, store, files) = poison_fixture();
        fs.start_log();
        let base = fs.ops();
        run_trigger(trigger, &store, &files).expect("trigger without a fault");
        let log = fs.log();
        assert!(!log.is_empty(), "{trigger:?} performs no storage operation");
        drop(store);
        for rec in &log {
            points += 1;
            let nth = rec.seq - base;
            let what = format!(
                "{trigger:?} with {:?} #{nth} ({}) failing",
                rec.kind, rec.what
            );
            let (dir, fs, store, files) = poison_fixture();
            fs.inject(Fault {
                kind: None,
                nth,
                sticky: false,
            });
            match run_trigger(trigger, &store, &files) {
                Err(e @ Error::Io { .. }) if is_injected(&e) => {}
                r => panic!("{what}: got {r:?}, want the injected I/O error"),
            }
            assert_eq!(fs.failures(), 1, "{what}");
            assert!(!fs.fault_pending() && !fs.is_dead(), "{what}");
            let ops = fs.ops();
            // Writes are refused, including ones that need no I/O at all.
            let poisoned = |r: tessera::Result<()>, op: &str| match r {
                Err(Error::Poisoned { .. }) => {}
                r => panic!("{what}: {op} on the poisoned store returned {r:?}"),
            };
            poisoned(
                store
                    .put("input", &common::noise(10_000, 1)[..], &[])
                    .map(|_| ()),
                "put",
            );
            poisoned(
                store.put("input", &files[1].1[..], &[]).map(|_| ()),
                "put of stored content",
            );
            poisoned(
                store
                    .ingest()
                    .add("input", &common::noise(10_000, 2)[..], &[], &mut |_| {})
                    .map(|_| ()),
                "ingest",
            );
            poisoned(store.set_ref("keep/a", files[2].0), "set_ref");
            poisoned(
                store.set_ref("brand-new", files[2].0),
                "set_ref of a new name",
            );
            poisoned(store.delete_ref("keep/a"), "delete_ref");
            // Reads still work.
            for (id, data) in &files {
                assert_eq!(&read_all(&store, id).expect("read"), data, "{what}");
            }
            // A ref the failed operation set may already be visible when
            // what failed was the index flush after its transaction (the
            // whole operation then is: all or nothing, see the random test).
            let keep_a = store.resolve_ref("keep/a").expect("ref");
            let group_a = expected_id(&common::noise(90_000, 9));
            assert!(
                keep_a == files[0].0
                    || (trigger == Trigger::GroupCommit
                        && rec.kind == OpKind::Index
                        && keep_a == group_a),
                "{what}: keep/a names {keep_a:?}"
            );
            assert_eq!(fs.ops(), ops, "{what}: the poisoned store kept writing");
            // Recovered in place (what a server does), it works.
            assert!(store.is_poisoned(), "{what}");
            let report = store
                .recover_poisoned(std::time::Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{what}: recover in place: {e}"))
                .unwrap_or_else(|| panic!("{what}: not poisoned"));
            assert!(report.problems.is_empty(), "{what}: {report:?}");
            assert!(!store.is_poisoned(), "{what}");
            // Only a failed removal of a staged file leaves one (the next
            // open discards it).
            let staged = fs.list_dir("tmp").expect("tmp");
            assert!(
                staged.is_empty() || (rec.kind == OpKind::Remove && rec.what.contains("tmp/")),
                "{what}: left {staged:?}"
            );
            works_again(&store, &files, &what, 0);
            drop(store);
            // Reopened (no crash: the storage kept everything), it works.
            let store =
                open_store(dir.path(), &fs).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
            assert_eq!(
                fs.list_dir("tmp").expect("tmp"),
                Vec::<String>::new(),
                "{what}"
            );
            works_again(&store, &files, &what, 1);
        }
    }
    eprintln!("poisoning: {points} failure points");
}

/// After recovering from a poisoning (round 0: in place; round 1: by a
/// reopen), every file reads back and writes work.
fn works_again(store: &Store, files: &[(FileId, Vec<u8>)], what: &str, round: u64) {
    assert!(!store.is_poisoned(), "{what}");
    for (id, data) in files {
        assert_eq!(&read_all(store, id).expect("read"), data, "{what}");
    }
    let data = common::noise(60_000, 3 + round);
    let id = store
        .put("input", &data[..], &["after"])
        .unwrap_or_else(|e| panic!("{what}: put after recovery {round}: {e}"))
        .file_id;
    store
        .set_ref("keep/a", id)
        .unwrap_or_else(|e| panic!("{what}: set_ref after recovery {round}: {e}"));
    if round == 0 {
        store
            .delete_ref("keep/b")
            .unwrap_or_else(|e| panic!("{what}: delete_ref after recovery: {e}"));
    }
    assert_eq!(read_all(store, &id).expect("read"), data, "{what}");
    assert_eq!(store.resolve_ref("keep/a").expect("ref"), id, "{what}");
    assert!(
        store.resolve_ref("keep/b").is_err_and(|e| e.is_not_found()),
        "{what}"
    );
    // The store's own check finds nothing wrong.
    let v = store
        .verify(tessera::VerifyOptions::default())
        .unwrap_or_else(|e| panic!("{what}: verify after recovery {round}: {e}"));
    assert!(v.is_clean(), "{what}: {v:?}");
}

// ---------------------------------------------------------------- index loss

/// ARCHITECTURE invariant 4: the index is a cache; losing it (sled's
/// `flush` uses `sync_file_range`, and sled has open reports of corruption
/// after unclean shutdown) must not lose acknowledged files, which are all
/// in packs, recipe files and ref files. The next open notices that the index
/// disagrees with the record of the last clean close and catches up; `repair
/// index` rebuilds it from nothing.
#[test]
fn acknowledged_files_survive_loss_of_flushed_index_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = tempfile::tempdir().expect("tempdir");
    let fs = FaultStorage::new(dir.path());
    let store = open_store(dir.path(), &fs).expect("create");
    let a = common::noise(100_000, 1);
    let a_id = store.put("input", &a[..], &["a"]).expect("put").file_id;
    replace_dir(&dir.path().join("index"), &snap.path().join("index")).expect("copy index");
    let b = common::noise(100_000, 2);
    let b_id = store.put("input", &b[..], &["b"]).expect("put").file_id;
    drop(store);
    // Power loss, and sled comes back without its last flushed writes.
    let fs = fs.crash();
    replace_dir(&snap.path().join("index"), &dir.path().join("index")).expect("restore index");
    // The stale index did not know b; opening catches up from the files.
    let store = open_store(dir.path(), &fs).expect("reopen");
    let rec = store.recovery().expect("the open caught up");
    assert_eq!(rec.reason, tessera::CatchUpReason::CountersDiffer);
    assert_eq!(
        (rec.report.files, rec.report.refs, rec.report.problems.len()),
        (1, 1, 0),
        "{rec:?}"
    );
    assert_eq!(store.resolve_ref("b").expect("ref b"), b_id);
    assert_eq!(read_all(&store, &b_id).expect("read b"), b);
    assert!(store.verify(Default::default()).expect("verify").is_clean());
    drop(store);
    // A clean reopen has nothing to catch up.
    let store = open_store(dir.path(), &fs).expect("reopen");
    assert!(store.recovery().is_none(), "{:?}", store.recovery());
    drop(store);
    // And `repair index` rebuilds all of it from nothing.
    let rep = tessera::testing::repair_on(&fs, dir.path(), opts()).expect("repair");
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!((rep.files, rep.refs), (2, 2), "{rep:?}");
    let store = open_store(dir.path(), &fs).expect("reopen");
    assert_eq!(read_all(&store, &a_id).expect("read a"), a);
    assert_eq!(store.resolve_ref("b").expect("ref b"), b_id);
    assert_eq!(read_all(&store, &b_id).expect("read b"), b);
}
