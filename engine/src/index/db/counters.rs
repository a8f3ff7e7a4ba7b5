//! The index's counters (files, chunks, packs, bytes) and its write
//! generation, kept in the `meta` tree by every write transaction and
//! recounted from the trees when they disagree.

use super::*;

impl Index {
    /// The counters.
    pub(crate) fn counters(&self) -> Result<Counters> {
        let mut vals = [0u64; 7];
        for (slot, name) in vals.iter_mut().zip(COUNTER_NAMES) {
            *slot = self.meta_counter(name)?;
        }
        let [files, refs, chunks, packs, logical_bytes, stored_bytes, chunk_bytes] = vals;
        Ok(Counters {
            files,
            refs,
            chunks,
            packs,
            logical_bytes,
            stored_bytes,
            chunk_bytes,
        })
    }

    /// The write generation (see [`GENERATION`]).
    pub(crate) fn generation(&self) -> Result<u64> {
        self.meta_counter(GENERATION)
    }

    pub(super) fn meta_counter(&self, name: &str) -> Result<u64> {
        self.run(|| match self.meta.get(name)? {
            None => Ok(0),
            Some(v) => Ok(decode_counter(name, &v)?),
        })
    }

    /// Recomputes every counter from the trees it counts (a full scan) and
    /// bumps the generation. Entries that do not decode count with size 0.
    pub(crate) fn recount(&self) -> Result<Counters> {
        let generation = self.generation().unwrap_or(0).saturating_add(1);
        self.write(|| {
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
            for e in self.entries() {
                let (_, v) = e?;
                c.chunks += 1;
                c.chunk_bytes += v
                    .get(48..52)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, |b| u64::from(u32::from_le_bytes(b)));
            }
            for kv in self.packs.iter() {
                let (_, v) = kv?;
                c.packs += 1;
                c.stored_bytes += PackInfo::decode(&v).map_or(0, |i| i.size);
            }
            for (name, value) in COUNTER_NAMES.iter().zip(c.to_array()) {
                self.meta.insert(name, &value.to_le_bytes())?;
            }
            self.meta.insert(GENERATION, &generation.to_le_bytes())?;
            Ok(c)
        })
    }
}
