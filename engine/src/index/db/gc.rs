//! What GC and repack ask of the index (spec §10.5): when packs were
//! sealed and how much of them is live, when files were stored, and the
//! removal of dead files and packs in bounded transactions.

use super::*;

impl Index {
    /// When a pack was sealed (or indexed by a catch-up) and its live bytes
    /// as the last GC measured them (`None`: not measured).
    pub(crate) fn pack_gc(&self, pack: &PackId) -> Result<(u64, Option<u64>)> {
        self.run(|| match self.pack_gc.get(pack.0)? {
            Some(v) if v.len() == 16 => {
                let sealed = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
                let live = u64::from_le_bytes(v[8..].try_into().unwrap_or_default());
                Ok((sealed, (live != u64::MAX).then_some(live)))
            }
            // No record (an index from before GC): as old as can be.
            _ => Ok((0, None)),
        })
    }

    /// Records the live bytes GC measured for packs.
    pub(crate) fn set_live_bytes(&self, live: &[(PackId, u64)]) -> Result<()> {
        self.write(|| {
            for (pack, bytes) in live {
                let sealed = match self.pack_gc.get(pack.0)? {
                    Some(v) if v.len() == 16 => {
                        u64::from_le_bytes(v[..8].try_into().unwrap_or_default())
                    }
                    _ => 0,
                };
                self.pack_gc
                    .insert(pack.0, &pack_gc_value(sealed, *bytes)[..])?;
            }
            Ok(())
        })
    }

    /// When a file was stored (or indexed by a catch-up); 0 when unknown.
    pub(crate) fn stored_at(&self, file: &FileId) -> Result<u64> {
        self.run(|| {
            Ok(self
                .stored
                .get(file.0)?
                .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                .map_or(0, u64::from_le_bytes))
        })
    }

    /// Removes files (GC): their recipes, sha256 aliases naming them and
    /// times; counters follow. Refs are not touched (a file GC removes has
    /// none).
    pub(crate) fn remove_files(&self, files: &[(FileId, Option<Sha256>)]) -> Result<()> {
        self.write(|| {
            (&self.files, &self.sha256, &self.meta, &self.stored).transaction(
                |(ft, st, mt, tt)| {
                    add_counter(mt, GENERATION, 1)?;
                    for (file, sha) in files {
                        if let Some(v) = ft.remove(&file.0)? {
                            add_counter(mt, "files", -1)?;
                            let size = v
                                .get(16..24)
                                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                                .map_or(0, u64::from_le_bytes);
                            add_counter(mt, "logical_bytes", -(size as i64))?;
                        }
                        if let Some(sha) = sha {
                            if st.get(sha.0)?.as_deref() == Some(&file.0[..]) {
                                st.remove(&sha.0)?;
                            }
                        }
                        tt.remove(&file.0)?;
                    }
                    Ok(())
                },
            )?;
            Ok(())
        })
    }

    /// Removes packs (GC, repack) and every chunk entry in `chunks` that
    /// points into one of them; counters follow. The miss filter keeps the
    /// removed ids (a lookup of one reads the database and finds nothing);
    /// an entry put back was indexed, so the filter has it.
    pub(crate) fn remove_packs(&self, packs: &[PackId], chunks: &mut [ChunkId]) -> Result<()> {
        let dead: std::collections::HashSet<[u8; 32]> = packs.iter().map(|p| p.0).collect();
        // In key order, so each page of the tree is visited once, and in
        // slices (sled's transactions slow down with their size).
        chunks.sort_unstable_by_key(|c| c.0);
        let into_dead = |v: &[u8]| {
            v.get(..32)
                .and_then(|p| <[u8; 32]>::try_from(p).ok())
                .is_some_and(|p| dead.contains(&p))
        };
        let raw_len = |v: &[u8]| {
            v.get(48..52)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, |b| i64::from(u32::from_le_bytes(b)))
        };
        let _layer = read(&self.layering);
        let run = self.chunk_run();
        for slice in chunks.chunks(4096) {
            self.write(|| {
                (&self.chunks, &self.meta).transaction(|(ct, mt)| {
                    add_counter(mt, GENERATION, 1)?;
                    let (mut removed, mut raw_bytes) = (0i64, 0i64);
                    for id in slice {
                        // The live entry: the tree's, else the run's. One
                        // that the run holds is removed by a tombstone.
                        let v = match ct.get(id.0)? {
                            Some(v) if v.is_empty() => continue,
                            Some(v) => v.to_vec(),
                            None => match run.get(id) {
                                Some(v) => v.to_vec(),
                                None => continue,
                            },
                        };
                        if !into_dead(&v) {
                            continue;
                        }
                        if run.get(id).is_some() {
                            ct.insert(&id.0, &[][..])?;
                        } else {
                            ct.remove(&id.0)?;
                        }
                        removed += 1;
                        raw_bytes += raw_len(&v);
                    }
                    add_counter(mt, "chunks", -removed)?;
                    add_counter(mt, "chunk_bytes", -raw_bytes)?;
                    Ok(())
                })?;
                Ok(())
            })?;
            self.written
                .fetch_add(slice.len() as u64, Ordering::Relaxed);
        }
        self.write(|| {
            (&self.packs, &self.meta, &self.pack_gc).transaction(|(pt, mt, gt)| {
                add_counter(mt, GENERATION, 1)?;
                for pack in packs {
                    if let Some(v) = pt.remove(&pack.0)? {
                        add_counter(mt, "packs", -1)?;
                        let size = PackInfo::decode(&v).map_or(0, |i| i.size);
                        add_counter(mt, "stored_bytes", -(size as i64))?;
                    }
                    gt.remove(&pack.0)?;
                }
                Ok(())
            })?;
            Ok(())
        })
    }

    /// The chunk ids whose entries point into `pack` (a full scan: for a pack
    /// whose own table cannot be read).
    pub(crate) fn chunks_in_pack(&self, pack: &PackId) -> Result<Vec<ChunkId>> {
        self.run(|| {
            let mut out = Vec::new();
            for e in self.entries() {
                let (k, v) = e?;
                if v[..32] == pack.0[..] {
                    out.push(ChunkId(k));
                }
            }
            Ok(out)
        })
    }
}
