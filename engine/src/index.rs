//! The sled index: a cache of what the packs, recipe files and ref files hold,
//! for fast lookups. Nothing here is the only copy of anything.
//!
//! Trees and value encodings (all integers little-endian) are specified in
//! `format-spec/SPEC.md` ("Index").

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Compression, Cursor};
use crate::hash::{ChunkId, FileId, PackId, Sha256};

/// Where a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The sealed pack.
    pub pack: PackId,
    /// Index in the pack's chunk table.
    pub index: u32,
    /// Record offset, lengths and compression.
    pub entry: ChunkEntry,
}

/// sled log segment size. Fixed per store: sled refuses to reopen with another.
pub const SLED_SEGMENT_BYTES: usize = 128 * 1024;

const CHUNK_VALUE_LEN: usize = 32 + 4 + 8 + 4 + 4 + 1;

impl ChunkLocation {
    fn encode(&self) -> [u8; CHUNK_VALUE_LEN] {
        let mut v = [0u8; CHUNK_VALUE_LEN];
        v[0..32].copy_from_slice(&self.pack.0);
        v[32..36].copy_from_slice(&self.index.to_le_bytes());
        v[36..44].copy_from_slice(&self.entry.offset.to_le_bytes());
        v[44..48].copy_from_slice(&self.entry.stored_len.to_le_bytes());
        v[48..52].copy_from_slice(&self.entry.raw_len.to_le_bytes());
        v[52] = self.entry.compression as u8;
        v
    }

    pub(crate) fn decode(id: ChunkId, v: &[u8]) -> Option<Self> {
        if v.len() != CHUNK_VALUE_LEN {
            return None;
        }
        let mut c = Cursor::new(v);
        let pack = PackId(c.array()?);
        let index = c.u32()?;
        let offset = c.u64()?;
        let stored_len = c.u32()?;
        let raw_len = c.u32()?;
        let compression = Compression::from_code(c.u8()?)?;
        Some(ChunkLocation {
            pack,
            index,
            entry: ChunkEntry {
                id,
                offset,
                stored_len,
                raw_len,
                compression,
            },
        })
    }
}

/// What the index records about a sealed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    /// Pack file length.
    pub size: u64,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Sum of the raw lengths of its chunks.
    pub raw_bytes: u64,
}

impl PackInfo {
    fn encode(&self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[0..8].copy_from_slice(&self.size.to_le_bytes());
        v[8..12].copy_from_slice(&self.chunk_count.to_le_bytes());
        v[12..20].copy_from_slice(&self.raw_bytes.to_le_bytes());
        v
    }
    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        let mut c = Cursor::new(v);
        let info = PackInfo {
            size: c.u64()?,
            chunk_count: c.u32()?,
            raw_bytes: c.u64()?,
        };
        (v.len() == 20).then_some(info)
    }
}

/// Counters kept in the `meta` tree, updated in the same transactions as the
/// entries they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Distinct files.
    pub files: u64,
    /// Refs.
    pub refs: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Sealed packs.
    pub packs: u64,
    /// Sum of distinct files' sizes.
    pub logical_bytes: u64,
    /// Sum of pack file sizes.
    pub stored_bytes: u64,
    /// Sum of distinct chunks' raw sizes.
    pub chunk_bytes: u64,
}

const COUNTER_NAMES: [&str; 7] = [
    "files",
    "refs",
    "chunks",
    "packs",
    "logical_bytes",
    "stored_bytes",
    "chunk_bytes",
];

impl Counters {
    /// The counters in the order of the clean-close record (spec §8.1).
    pub fn to_array(&self) -> [u64; 7] {
        [
            self.files,
            self.refs,
            self.chunks,
            self.packs,
            self.logical_bytes,
            self.stored_bytes,
            self.chunk_bytes,
        ]
    }
}

/// `meta` key of the write generation: incremented by every write
/// transaction, so an index that lost any write, even one that changed no
/// other counter (a ref pointed elsewhere), is told from an intact one.
const GENERATION: &str = "generation";

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

/// A key of `tree` that is not a 32-byte id.
fn bad_key(tree: &'static str, k: &[u8]) -> Error {
    Error::IndexCorrupt {
        tree,
        key: hex::encode(k),
        detail: "key is not 32 bytes".into(),
    }
}

fn decode_counter(name: &str, v: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_le_bytes)
        .map_err(|_| Error::IndexCorrupt {
            tree: "meta",
            key: name.to_string(),
            detail: "counter is not 8 bytes".into(),
        })
}

fn add_counter(
    meta: &sled::transaction::TransactionalTree,
    name: &str,
    delta: i64,
) -> TxResult<()> {
    let cur = match meta.get(name)? {
        Some(v) => decode_counter(name, &v).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    let new = cur.saturating_add_signed(delta);
    meta.insert(name, &new.to_le_bytes())?;
    Ok(())
}

fn tx_err(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::Index(e),
    }
}

/// A file to record with [`Index::add_files`].
#[derive(Clone, Copy, Debug)]
pub struct NewFile<'a> {
    /// The file id.
    pub file: FileId,
    /// sha256 of its content.
    pub sha: Sha256,
    /// Its size.
    pub size: u64,
    /// Its encoded recipe.
    pub recipe: &'a [u8],
    /// Refs to point at it.
    pub refs: &'a [String],
}

/// The sled database with its trees.
pub struct Index {
    db: sled::Db,
    chunks: sled::Tree,
    files: sled::Tree,
    sha256: sled::Tree,
    refs: sled::Tree,
    packs: sled::Tree,
    meta: sled::Tree,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").finish_non_exhaustive()
    }
}

impl Index {
    /// Opens (or creates) the index at `dir`.
    ///
    /// The caller holds the store's lock, so the only other holder of sled's
    /// own lock file can be an earlier `Index` of this process whose
    /// background threads are still ending (sled releases its lock only
    /// then): that one error is retried for a few seconds.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Self::open_once(dir, cache_bytes) {
                Err(Error::Index(sled::Error::Io(e)))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    fn open_once(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // sled pads its log to a whole segment when a store is reopened; a
            // small segment keeps that one-off growth small (see SPEC §9).
            .segment_size(SLED_SEGMENT_BYTES)
            .open()?;
        Ok(Index {
            chunks: db.open_tree("chunks")?,
            files: db.open_tree("files")?,
            sha256: db.open_tree("sha256")?,
            refs: db.open_tree("refs")?,
            packs: db.open_tree("packs")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Makes everything inserted so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Looks up a chunk.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        match self.chunks.get(id.0)? {
            None => Ok(None),
            Some(v) => {
                ChunkLocation::decode(*id, &v)
                    .map(Some)
                    .ok_or_else(|| Error::IndexCorrupt {
                        tree: "chunks",
                        key: id.to_hex(),
                        detail: format!("undecodable {}-byte value", v.len()),
                    })
            }
        }
    }

    /// Records a newly sealed pack and all its chunks, atomically.
    pub fn add_pack(&self, pack: PackId, info: PackInfo, chunks: &[ChunkEntry]) -> Result<()> {
        let indexed: Vec<(u32, ChunkEntry)> = chunks
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u32, *e))
            .collect();
        self.add_pack_chunks(pack, info, &indexed)
    }

    /// Records a pack and the given (index in pack, entry) chunks of it,
    /// atomically. A chunk already indexed elsewhere keeps its entry.
    pub fn add_pack_chunks(
        &self,
        pack: PackId,
        info: PackInfo,
        chunks: &[(u32, ChunkEntry)],
    ) -> Result<()> {
        (&self.chunks, &self.packs, &self.meta)
            .transaction(|(ct, pt, mt)| {
                add_counter(mt, GENERATION, 1)?;
                let mut new_chunks = 0i64;
                let mut new_bytes = 0i64;
                for (i, e) in chunks {
                    let loc = ChunkLocation {
                        pack,
                        index: *i,
                        entry: *e,
                    };
                    if ct.get(e.id.0)?.is_some() {
                        continue;
                    }
                    ct.insert(&e.id.0, &loc.encode()[..])?;
                    new_chunks += 1;
                    new_bytes += i64::from(e.raw_len);
                }
                if pt.insert(&pack.0, &info.encode()[..])?.is_none() {
                    add_counter(mt, "packs", 1)?;
                    add_counter(mt, "stored_bytes", info.size as i64)?;
                }
                add_counter(mt, "chunks", new_chunks)?;
                add_counter(mt, "chunk_bytes", new_bytes)?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// The recipe bytes of a file.
    pub fn recipe_bytes(&self, file: &FileId) -> Result<Option<sled::IVec>> {
        Ok(self.files.get(file.0)?)
    }

    /// Whether a file is known.
    pub fn has_file(&self, file: &FileId) -> Result<bool> {
        Ok(self.files.contains_key(file.0)?)
    }

    /// Records a file (recipe, sha256 alias and optionally refs), atomically.
    /// Returns whether the file was new.
    pub fn add_file(
        &self,
        file: FileId,
        sha: Sha256,
        size: u64,
        recipe: &[u8],
        refs: &[String],
    ) -> Result<bool> {
        let new = self.add_files(&[NewFile {
            file,
            sha,
            size,
            recipe,
            refs,
        }])?;
        Ok(new.first().copied().unwrap_or(false))
    }

    /// Records several files in one transaction: readers see all of them or
    /// none. Returns, per file, whether it was new.
    pub fn add_files(&self, files: &[NewFile<'_>]) -> Result<Vec<bool>> {
        // Re-ingesting known files must not write to the index at all.
        let mut any = false;
        for f in files {
            let known = self.files.contains_key(f.file.0)?
                && self.sha256.contains_key(f.sha.0)?
                && f.refs.iter().try_fold(true, |all, r| {
                    Ok::<_, Error>(
                        all && self.refs.get(r.as_bytes())?.as_deref() == Some(&f.file.0[..]),
                    )
                })?;
            any |= !known;
        }
        if !any {
            return Ok(vec![false; files.len()]);
        }
        (&self.files, &self.sha256, &self.refs, &self.meta)
            .transaction(|(ft, st, rt, mt)| {
                add_counter(mt, GENERATION, 1)?;
                let mut out = Vec::with_capacity(files.len());
                for f in files {
                    let new = ft.get(f.file.0)?.is_none();
                    if new {
                        ft.insert(&f.file.0, f.recipe)?;
                        add_counter(mt, "files", 1)?;
                        add_counter(mt, "logical_bytes", f.size as i64)?;
                    }
                    if st.get(f.sha.0)?.is_none() {
                        st.insert(&f.sha.0, &f.file.0)?;
                    }
                    for r in f.refs {
                        if rt.insert(r.as_bytes(), &f.file.0)?.is_none() {
                            add_counter(mt, "refs", 1)?;
                        }
                    }
                    out.push(new);
                }
                Ok(out)
            })
            .map_err(tx_err)
    }

    /// Replaces the recipe copy of a file the index already holds (with
    /// another valid recipe of the same file: same chunks, same size).
    pub fn replace_recipe(&self, file: FileId, recipe: &[u8]) -> Result<()> {
        (&self.files, &self.meta)
            .transaction(|(ft, mt)| {
                add_counter(mt, GENERATION, 1)?;
                ft.insert(&file.0, recipe)?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// File id for a sha256 alias.
    pub fn by_sha256(&self, sha: &Sha256) -> Result<Option<FileId>> {
        self.id_value(&self.sha256, "sha256", &sha.0)
    }

    fn id_value(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<FileId>> {
        match tree.get(key)? {
            None => Ok(None),
            Some(v) => FileId::from_slice(&v)
                .map(Some)
                .ok_or_else(|| Error::IndexCorrupt {
                    tree: name,
                    key: String::from_utf8_lossy(key).into_owned(),
                    detail: format!("{}-byte value, expected 32", v.len()),
                }),
        }
    }

    /// Sets a ref.
    pub fn set_ref(&self, name: &str, file: FileId) -> Result<()> {
        (&self.refs, &self.meta)
            .transaction(|(rt, mt)| {
                add_counter(mt, GENERATION, 1)?;
                if rt.insert(name.as_bytes(), &file.0)?.is_none() {
                    add_counter(mt, "refs", 1)?;
                }
                Ok(())
            })
            .map_err(tx_err)
    }

    /// Deletes a ref; returns whether it existed.
    pub fn delete_ref(&self, name: &str) -> Result<bool> {
        (&self.refs, &self.meta)
            .transaction(|(rt, mt)| {
                add_counter(mt, GENERATION, 1)?;
                let existed = rt.remove(name.as_bytes())?.is_some();
                if existed {
                    add_counter(mt, "refs", -1)?;
                }
                Ok(existed)
            })
            .map_err(tx_err)
    }

    /// Resolves a ref.
    pub fn get_ref(&self, name: &str) -> Result<Option<FileId>> {
        self.id_value(&self.refs, "refs", name.as_bytes())
    }

    /// Refs whose names start with `prefix`, in name order.
    pub fn refs_with_prefix(&self, prefix: &str) -> Result<Vec<(String, FileId)>> {
        let mut out = Vec::new();
        for kv in self.refs.scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let id = FileId::from_slice(&v).ok_or_else(|| Error::IndexCorrupt {
                tree: "refs",
                key: name.clone(),
                detail: format!("{}-byte value, expected 32", v.len()),
            })?;
            out.push((name, id));
        }
        Ok(out)
    }

    /// What is recorded about a pack.
    pub fn pack(&self, pack: &PackId) -> Result<Option<PackInfo>> {
        match self.packs.get(pack.0)? {
            None => Ok(None),
            Some(v) => PackInfo::decode(&v)
                .map(Some)
                .ok_or_else(|| Error::IndexCorrupt {
                    tree: "packs",
                    key: pack.to_hex(),
                    detail: format!("undecodable {}-byte value", v.len()),
                }),
        }
    }

    /// The counters.
    pub fn counters(&self) -> Result<Counters> {
        let mut vals = [0u64; 7];
        for (slot, name) in vals.iter_mut().zip(COUNTER_NAMES) {
            *slot = self.meta_counter(name)?;
        }
        let [files, refs, chunks, packs, logical_bytes, stored_bytes, chunk_bytes] = vals;
        let counters = Counters {
            files,
            refs,
            chunks,
            packs,
            logical_bytes,
            stored_bytes,
            chunk_bytes,
        };
        Ok(counters)
    }

    /// The write generation (see [`GENERATION`]).
    pub fn generation(&self) -> Result<u64> {
        self.meta_counter(GENERATION)
    }

    fn meta_counter(&self, name: &str) -> Result<u64> {
        match self.meta.get(name)? {
            None => Ok(0),
            Some(v) => decode_counter(name, &v),
        }
    }

    /// Recomputes every counter from the trees it counts (a full scan) and
    /// bumps the generation. Entries that do not decode count with size 0.
    pub fn recount(&self) -> Result<Counters> {
        let mut c = Counters::default();
        for kv in self.files.iter() {
            let (_, v) = kv?;
            c.files += 1;
            c.logical_bytes += v
                .get(16..24)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes);
        }
        for kv in self.refs.iter() {
            kv?;
            c.refs += 1;
        }
        for kv in self.chunks.iter() {
            let (_, v) = kv?;
            c.chunks += 1;
            c.chunk_bytes += v
                .get(48..52)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, |b| u64::from(u32::from_le_bytes(b)));
        }
        for info in self.packs() {
            c.packs += 1;
            c.stored_bytes += info.map_or(0, |(_, i)| i.size);
        }
        let generation = self.generation().unwrap_or(0).saturating_add(1);
        for (name, value) in COUNTER_NAMES.iter().zip(c.to_array()) {
            self.meta.insert(name, &value.to_le_bytes())?;
        }
        self.meta.insert(GENERATION, &generation.to_le_bytes())?;
        Ok(c)
    }

    /// Every pack entry, in id order.
    pub fn packs(&self) -> impl Iterator<Item = Result<(PackId, PackInfo)>> + '_ {
        self.packs.iter().map(|kv| {
            let (k, v) = kv?;
            let id = PackId::from_slice(&k).ok_or_else(|| bad_key("packs", &k))?;
            let info = PackInfo::decode(&v).ok_or_else(|| Error::IndexCorrupt {
                tree: "packs",
                key: id.to_hex(),
                detail: format!("undecodable {}-byte value", v.len()),
            })?;
            Ok((id, info))
        })
    }

    /// Every chunk entry, in id order.
    pub fn chunks(&self) -> impl Iterator<Item = Result<ChunkLocation>> + '_ {
        self.chunks.iter().map(|kv| {
            let (k, v) = kv?;
            let id = ChunkId::from_slice(&k).ok_or_else(|| bad_key("chunks", &k))?;
            ChunkLocation::decode(id, &v).ok_or_else(|| Error::IndexCorrupt {
                tree: "chunks",
                key: id.to_hex(),
                detail: format!("undecodable {}-byte value", v.len()),
            })
        })
    }

    /// Every file id with its recipe bytes, in id order.
    pub fn files(&self) -> impl Iterator<Item = Result<(FileId, sled::IVec)>> + '_ {
        self.files.iter().map(|kv| {
            let (k, v) = kv?;
            let id = FileId::from_slice(&k).ok_or_else(|| bad_key("files", &k))?;
            Ok((id, v))
        })
    }

    /// On-disk size of the index directory as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}
