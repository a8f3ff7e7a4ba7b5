//! The store config file `tessera.store` (spec §5).

use super::{Cursor, FORMAT_VERSION};

/// The store version new stores are created with. Version 2 is version 1
/// plus chunk encoding 2 (float byte planes, spec §6.2): objects keep their
/// own version 1; only the config says the store may hold encoding 2, so an
/// engine that predates it refuses the store instead of meeting chunks it
/// cannot decode.
pub const STORE_VERSION: u32 = 2;
use crate::chunking::ChunkParams;
use crate::ids::checksum;

/// Magic of the store config file `tessera.store`.
pub const CONFIG_MAGIC: [u8; 8] = *b"TSRSTORE";
/// Size of the config file.
pub const CONFIG_LEN: usize = 64;
/// Chunker algorithm code for FastCDC v2020.
pub const CHUNKER_FASTCDC_2020: u32 = 1;

/// The decoded store config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The format version the store was written with.
    pub version: u32,
    /// The chunking parameters, fixed for the store's life.
    pub chunking: ChunkParams,
}

/// Why a config could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Structurally damaged.
    Corrupt(String),
    /// Intact, but from a version this build does not read.
    Version(u32),
}

impl StoreConfig {
    /// Encodes the 64-byte config file.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CONFIG_LEN);
        b.extend_from_slice(&CONFIG_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&CHUNKER_FASTCDC_2020.to_le_bytes());
        b.extend_from_slice(&self.chunking.min.to_le_bytes());
        b.extend_from_slice(&self.chunking.avg.to_le_bytes());
        b.extend_from_slice(&self.chunking.max.to_le_bytes());
        b.extend_from_slice(&self.chunking.normalization.to_le_bytes());
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        b
    }

    /// Decodes and checks a config file.
    pub fn decode(b: &[u8]) -> Result<Self, ConfigError> {
        let bad = |s: &str| ConfigError::Corrupt(s.to_string());
        if b.len() != CONFIG_LEN {
            return Err(ConfigError::Corrupt(format!(
                "length {} (expected {CONFIG_LEN})",
                b.len()
            )));
        }
        let mut c = Cursor::new(b);
        if c.array::<8>() != Some(CONFIG_MAGIC) {
            return Err(bad("bad magic (not a tessera store config)"));
        }
        let body = b.get(..32).ok_or_else(|| bad("short"))?;
        let sum = b.get(32..).ok_or_else(|| bad("short"))?;
        if checksum(body) != sum {
            return Err(bad("checksum mismatch"));
        }
        let version = c.u32().ok_or_else(|| bad("short"))?;
        if !(FORMAT_VERSION..=STORE_VERSION).contains(&version) {
            return Err(ConfigError::Version(version));
        }
        let algo = c.u32().ok_or_else(|| bad("short"))?;
        if algo != CHUNKER_FASTCDC_2020 {
            return Err(ConfigError::Corrupt(format!("unknown chunker code {algo}")));
        }
        let chunking = ChunkParams {
            min: c.u32().ok_or_else(|| bad("short"))?,
            avg: c.u32().ok_or_else(|| bad("short"))?,
            max: c.u32().ok_or_else(|| bad("short"))?,
            normalization: c.u32().ok_or_else(|| bad("short"))?,
        };
        chunking
            .validate()
            .map_err(|e| ConfigError::Corrupt(e.to_string()))?;
        Ok(StoreConfig { version, chunking })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_version_check() {
        let cfg = StoreConfig {
            version: FORMAT_VERSION,
            chunking: ChunkParams::default(),
        };
        let b = cfg.encode();
        assert_eq!(b.len(), CONFIG_LEN);
        assert_eq!(StoreConfig::decode(&b), Ok(cfg));
        let future = StoreConfig { version: 99, ..cfg };
        assert_eq!(
            StoreConfig::decode(&future.encode()),
            Err(ConfigError::Version(99))
        );
        let mut flipped = b.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            StoreConfig::decode(&flipped),
            Err(ConfigError::Corrupt(_))
        ));
    }
}
