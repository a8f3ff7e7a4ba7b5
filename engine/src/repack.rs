//! Repack (spec §10.5): rewrites packs that are mostly garbage, or small,
//! into new packs holding only their live chunks in the order files read
//! them, switches recipes and the chunk index to the copies, and deletes the
//! old packs through the deletion journal.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use crate::cache::lock;
use crate::codec::encode_chunk;
use crate::core::{Core, Exclusive};
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Recipe, Term, PACK_HEADER_LEN, TRAILER_LEN};
use crate::gc::{self, Collection, GcOptions, GcReport, Journal};
use crate::ids::{ChunkId, FileId, PackId};
use crate::index::PackInfo;
use crate::layout::Layout;
use crate::pack::{PackBuilder, SealedPack};
use crate::paths::recipe_key;
use crate::storage::PutMode;

/// How to repack.
#[derive(Clone, Debug)]
pub struct RepackOptions {
    /// Packs whose live bytes are less than this fraction of their size are
    /// rewritten.
    pub threshold: f64,
    /// Then rewrite more packs, least live first, until the garbage left in
    /// packs is at most this fraction of the stored bytes.
    pub max_garbage: f64,
    /// Also rewrite packs smaller than a quarter of the pack target size,
    /// when there are at least two (uploads seal one pack per request).
    pub combine_small: bool,
    /// Re-encode every copied chunk with the store's codec instead of
    /// copying its stored bytes.
    pub recompress: bool,
    /// The GC run first (its grace period also protects young packs from
    /// being rewritten); `gc.dry_run` makes the whole repack a dry run.
    pub gc: GcOptions,
}

impl Default for RepackOptions {
    fn default() -> Self {
        RepackOptions {
            threshold: 0.5,
            max_garbage: 0.05,
            combine_small: true,
            recompress: false,
            gc: GcOptions::default(),
        }
    }
}

/// What a repack found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepackReport {
    /// The GC that ran first.
    pub gc: GcReport,
    /// Packs chosen for rewriting.
    pub candidates: u64,
    /// Old packs rewritten and deleted.
    pub packs_rewritten: u64,
    /// New packs written (0 on a dry run, which copies nothing).
    pub packs_written: u64,
    /// Chunks copied into new packs (0 on a dry run).
    pub chunks_copied: u64,
    /// Bytes of the old packs rewritten (on a dry run, of the candidates).
    pub bytes_rewritten: u64,
    /// Bytes of the new packs (0 on a dry run).
    pub bytes_written: u64,
    /// Recipes switched to the new packs (0 on a dry run).
    pub recipes_rewritten: u64,
    /// Pack bytes after GC, before repack.
    pub stored_bytes_before: u64,
    /// Pack bytes after.
    pub stored_bytes_after: u64,
    /// Packs left as they are because a chunk in them failed verification
    /// (run `tessera verify` / `tessera repair`): "pack: why".
    pub skipped: Vec<String>,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Seconds taken (GC included).
    pub seconds: f64,
}

/// Where a copied chunk is now.
#[derive(Clone, Copy)]
enum Target {
    /// In a pack that is not rewritten (the index's copy).
    Kept(PackId, u32),
    /// In new pack number `n` of this repack, at `index`.
    New(usize, u32),
}

struct Copier<'a> {
    core: &'a Core,
    rewrite: HashSet<PackId>,
    placed: HashMap<ChunkId, Target>,
    open: Option<PackBuilder>,
    sealed: Vec<SealedPack>,
    recompress: bool,
    rep: &'a mut RepackReport,
}

impl Copier<'_> {
    /// Copies (or finds a kept copy of) chunk `id`, which a recipe names at
    /// `pack`/`at`. A chunk that fails verification takes its pack out of
    /// the rewrite.
    fn place(&mut self, id: ChunkId, pack: PackId, at: u32) -> Result<()> {
        if !self.rewrite.contains(&pack) || self.placed.contains_key(&id) {
            return Ok(());
        }
        let core = self.core;
        if let Some(loc) = core.index.chunk(&id)? {
            if !self.rewrite.contains(&loc.pack) {
                self.placed.insert(id, Target::Kept(loc.pack, loc.index));
                return Ok(());
            }
        }
        let record = core.packs.get(&pack).and_then(|r| r.read_record(at, &id));
        let (entry, stored, raw) = match record {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%pack, error = %e, "repack leaves a pack alone: a chunk in it does not verify");
                self.rewrite.remove(&pack);
                self.rep.skipped.push(format!("pack {pack}: {e}"));
                return Ok(());
            }
        };
        let (compression, stored) = if self.recompress {
            let opts = &core.opts;
            encode_chunk(
                &raw,
                &id,
                opts.zstd_level,
                opts.min_compression_savings,
                core.config.version >= 2,
                // No model header here: the encoder samples the chunk.
                tessera_codec::Hint::default(),
            )?
        } else {
            (entry.compression, stored)
        };
        let objects = core.objects.as_ref();
        if let Some(open) = &self.open {
            if !open.is_empty() && open.sealed_len_with(stored.len()) > core.opts.pack_target_bytes
            {
                self.seal()?;
            }
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => self.open.insert(PackBuilder::create(objects)?),
        };
        let index = open.append(objects, id, entry.raw_len, compression, &stored)?;
        self.placed
            .insert(id, Target::New(self.sealed.len(), index));
        self.rep.chunks_copied += 1;
        Ok(())
    }

    /// Seals the pack being written and indexes it beside the old copies
    /// (entries that exist keep pointing at them until the switch).
    fn seal(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let core = self.core;
        let sealed = open.seal(core.objects.as_ref())?;
        let chunks: Vec<(u32, ChunkEntry)> = (0u32..).zip(sealed.entries.iter().copied()).collect();
        core.poison_on(core.index.add_pack(sealed.id, info(&sealed), &chunks))?;
        self.rep.packs_written += 1;
        self.rep.bytes_written += sealed.size;
        self.sealed.push(sealed);
        Ok(())
    }

    /// Places every chunk of `file`'s recipe that lies in a pack being
    /// rewritten.
    fn place_file(&mut self, layout: &Layout) -> Result<()> {
        for i in 0..layout.chunk_count() {
            let Some(c) = layout.chunk(i) else { break };
            self.place(c.id, c.pack, c.pack_index)?;
        }
        Ok(())
    }

    fn target(&self, id: &ChunkId) -> Option<(PackId, u32)> {
        match *self.placed.get(id)? {
            Target::Kept(p, i) => Some((p, i)),
            Target::New(n, i) => self.sealed.get(n).map(|s| (s.id, i)),
        }
    }

    /// The recipe of `layout` with every chunk in a rewritten pack moved to
    /// its copy, or `None` if it names none.
    fn rebuilt(&self, layout: &Layout) -> Result<Option<Recipe>> {
        if !layout
            .recipe
            .terms
            .iter()
            .any(|t| self.rewrite.contains(&t.pack))
        {
            return Ok(None);
        }
        let file = layout.recipe.file;
        let mut terms: Vec<Term> = Vec::new();
        for i in 0..layout.chunk_count() {
            let c = layout
                .chunk(i)
                .ok_or_else(|| Error::Bug(format!("recipe of {file} has no chunk {i}")))?;
            let (pack, at) = if self.rewrite.contains(&c.pack) {
                self.target(&c.id).ok_or_else(|| {
                    Error::Bug(format!(
                        "repack did not place chunk {} of file {file}",
                        c.id
                    ))
                })?
            } else {
                (c.pack, c.pack_index)
            };
            match terms.last_mut() {
                Some(t)
                    if t.pack == pack && t.first_chunk.checked_add(t.chunk_count) == Some(at) =>
                {
                    t.chunk_count += 1;
                    t.unpacked_len += u64::from(c.len);
                }
                _ => terms.push(Term {
                    pack,
                    first_chunk: at,
                    chunk_count: 1,
                    unpacked_len: u64::from(c.len),
                }),
            }
        }
        Ok(Some(Recipe {
            terms,
            ..layout.recipe.clone()
        }))
    }
}

fn info(sealed: &SealedPack) -> PackInfo {
    PackInfo {
        size: sealed.size,
        chunk_count: sealed.entries.len() as u32,
        raw_bytes: sealed.raw_bytes,
    }
}

/// Every file's recipe in the index, decoded.
/// The recipes of the index's files, but those of `dead`.
fn layouts<'a>(
    core: &'a Core,
    dead: &'a HashSet<FileId>,
) -> impl Iterator<Item = Result<Layout>> + 'a {
    core.index.files().filter_map(move |item| match item {
        Ok((file, _)) if dead.contains(&file) => None,
        Ok((file, bytes)) => Some(
            Recipe::decode(file, &bytes)
                .map(Layout::new)
                .map_err(|e| e.into_error(file)),
        ),
        Err(e) => Some(Err(e)),
    })
}

/// The packs to rewrite, among those older than the grace period: those
/// below the live threshold, small ones (when there are two or more), then
/// more in order of increasing live fraction until the garbage left is at
/// most `max_garbage` of the stored bytes after the repack.
pub(crate) fn choose(c: &Collection, opts: &RepackOptions, target: u64) -> Chosen {
    // A pack whose every chunk is live has a live fraction of exactly 1.
    let fixed = (PACK_HEADER_LEN + TRAILER_LEN) as u64;
    let live = |p: &gc::LivePack| p.live_bytes + fixed;
    let fraction = |p: &gc::LivePack| live(p) as f64 / p.size.max(1) as f64;
    let garbage = |p: &gc::LivePack| p.size.saturating_sub(live(p));
    let old: Vec<&gc::LivePack> = c
        .live
        .iter()
        .filter(|p| p.sealed_at <= c.cutoff && !p.rescue)
        .collect();
    let small = |p: &gc::LivePack| opts.combine_small && p.size < target / 4;
    let n_small = old.iter().filter(|p| small(p)).count();
    let (mut chosen, mut rest): (Vec<&gc::LivePack>, Vec<&gc::LivePack>) = old
        .into_iter()
        .partition(|p| fraction(p) < opts.threshold || (n_small >= 2 && small(p)));
    // The garbage left is measured against what the packs will hold then.
    let live_total: u64 = c.live.iter().map(live).sum();
    let mut left: u64 =
        c.live.iter().map(garbage).sum::<u64>() - chosen.iter().map(|p| garbage(p)).sum::<u64>();
    rest.sort_by(|a, b| fraction(a).total_cmp(&fraction(b)));
    for p in rest {
        if left as f64 <= opts.max_garbage * (live_total + left) as f64 || garbage(p) == 0 {
            break;
        }
        left -= garbage(p);
        chosen.push(p);
    }
    chosen
        .into_iter()
        .map(|p| (p.id, p.size, p.live_bytes))
        .collect()
}

/// Refuses fractions outside 0..=1.
pub(crate) fn check_options(opts: &RepackOptions) -> Result<()> {
    opts.gc.check()?;
    for (what, v) in [
        ("threshold", opts.threshold),
        ("max_garbage", opts.max_garbage),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(Error::InvalidArgument(format!(
                "repack {what} {v} is not between 0 and 1"
            )));
        }
    }
    Ok(())
}

/// Runs GC, then repacks (spec §10.5). `progress` gets (phase, done, total).
pub(crate) fn repack(
    core: &Core,
    opts: &RepackOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<RepackReport> {
    let started = Instant::now();
    check_options(opts)?;
    let mut rep = RepackReport {
        dry_run: opts.gc.dry_run,
        ..Default::default()
    };
    core.check_poison()?;
    let _one = lock(&core.maintenance);
    // GC first, and choose from what it measured.
    let gate = core.gate.exclusive(opts.gc.wait)?;
    let collection = gc::collect(core, &opts.gc, &gc::Ages::Index, None, progress)?;
    if !opts.gc.dry_run {
        let live: Vec<(PackId, u64)> = collection
            .live
            .iter()
            .map(|p| (p.id, p.live_bytes))
            .collect();
        core.poison_on(core.index.set_live_bytes(&live))?;
        gc::remove_from_index(core, &collection.journal)?;
    }
    drop(gate);
    if !opts.gc.dry_run {
        gc::delete_objects(core, &collection.journal, &mut || Ok(None))?;
    }
    rep.gc = collection.report.clone();
    rep.gc.seconds = started.elapsed().as_secs_f64();
    rep.stored_bytes_before = rep.gc.stored_bytes_after;
    let chosen = choose(&collection, opts, core.opts.pack_target_bytes);
    let Some((old, gate)) = rewrite(core, &chosen, &HashSet::new(), opts, &mut rep, progress)?
    else {
        rep.seconds = started.elapsed().as_secs_f64();
        return Ok(rep);
    };
    let journal = Journal {
        files: Vec::new(),
        packs: old,
        relink: Vec::new(),
    };
    gc::remove_from_index(core, &journal)?;
    drop(gate);
    progress("delete", 0, 1);
    gc::delete_objects(core, &journal, &mut || Ok(None))?;
    rep.stored_bytes_after = core.index.counters()?.stored_bytes;
    rep.seconds = started.elapsed().as_secs_f64();
    Ok(rep)
}

/// The packs a repack chose: (id, size, live bytes).
pub(crate) type Chosen = Vec<(PackId, u64, u64)>;

/// Copies the live chunks of the `chosen` packs into new ones and switches
/// the index and the recipes to them (spec §10.5). Returns the old packs,
/// now named by no recipe this process knows and not yet deleted, with the
/// gate still held exclusively; `None` on a dry run or when nothing was
/// chosen (the report then says what a repack would rewrite). Files of
/// `dead` are left out (GC deletes them, with whatever only they name).
pub(crate) fn rewrite<'c>(
    core: &'c Core,
    chosen: &Chosen,
    dead: &HashSet<FileId>,
    opts: &RepackOptions,
    rep: &mut RepackReport,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Option<(Vec<PackId>, Exclusive<'c>)>> {
    rep.candidates = chosen.len() as u64;
    if opts.gc.dry_run || chosen.is_empty() {
        let live: u64 = chosen.iter().map(|(_, _, l)| l).sum();
        let size: u64 = chosen.iter().map(|(_, s, _)| s).sum();
        rep.bytes_rewritten = size;
        rep.stored_bytes_after = rep.stored_bytes_before - size + live;
        return Ok(None);
    }
    let total_live: u64 = chosen.iter().map(|(_, _, l)| l).sum();
    let mut copier = Copier {
        core,
        rewrite: chosen.iter().map(|(p, _, _)| *p).collect(),
        placed: HashMap::new(),
        open: None,
        sealed: Vec::new(),
        recompress: opts.recompress,
        rep,
    };
    // Copy, beside writers: file by file, so each file's chunks end up
    // together.
    // (A failed write poisons the store, as any failed write does.)
    for layout in layouts(core, dead) {
        core.poison_on(copier.place_file(&layout?))?;
        progress("copy", copier.rep.bytes_written, total_live);
    }
    // Switch, alone: chunks files stored meanwhile named in the old packs
    // are copied too, then the index and the recipes move to the copies.
    let gate = core.gate.exclusive(opts.gc.wait)?;
    progress("switch", 0, 1);
    for layout in layouts(core, dead) {
        core.poison_on(copier.place_file(&layout?))?;
    }
    core.poison_on(copier.seal())?;
    let index = &core.index;
    for sealed in &copier.sealed {
        let chunks: Vec<(u32, ChunkEntry)> = (0u32..).zip(sealed.entries.iter().copied()).collect();
        core.poison_on(index.relocate_chunks(sealed.id, info(sealed), &chunks))?;
    }
    let objects = core.objects.as_ref();
    let mut switched: Vec<FileId> = Vec::new();
    // (Nothing else writes while the gate is held: this pass sees the files
    // the pass above placed.)
    let stale: Vec<FileId> = layouts(core, dead)
        .filter_map(|l| match l {
            Ok(l)
                if l.recipe
                    .terms
                    .iter()
                    .any(|t| copier.rewrite.contains(&t.pack)) =>
            {
                Some(Ok(l.recipe.file))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    for file in stale {
        let bytes = core
            .index
            .recipe_bytes(&file)?
            .ok_or_else(|| Error::Bug(format!("file {file} left the index during a repack")))?;
        let layout = Layout::new(Recipe::decode(file, &bytes).map_err(|e| e.into_error(file))?);
        let Some(recipe) = copier.rebuilt(&layout)? else {
            continue;
        };
        let file = recipe.file;
        let bytes = recipe.encode();
        let key = recipe_key(&file);
        let r = objects
            .put(&key, &bytes, PutMode::Replace)
            .map_err(|e| Error::io("write", objects.describe(&key), e));
        core.poison_on(r)?;
        core.poison_on(index.replace_recipe(file, &bytes))?;
        lock(&core.recipes).remove(&file);
        switched.push(file);
    }
    core.poison_on(index.flush())?;
    // A copy can come out byte for byte the pack it copies (same chunks,
    // same order): that pack is not old.
    let new: HashSet<PackId> = copier.sealed.iter().map(|p| p.id).collect();
    let old: Vec<PackId> = copier
        .rewrite
        .iter()
        .filter(|p| !new.contains(p))
        .copied()
        .collect();
    rep.recipes_rewritten = switched.len() as u64;
    rep.packs_rewritten = old.len() as u64;
    rep.bytes_rewritten = chosen
        .iter()
        .filter(|(p, _, _)| old.contains(p))
        .map(|(_, s, _)| s)
        .sum();
    Ok(Some((old, gate)))
}
