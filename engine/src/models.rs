//! Model descriptions (spec §7.2): what a stored file is — safetensors,
//! GGUF, ONNX, a PyTorch checkpoint, a pickle… — its tensors and where
//! their bytes are, and every import of every pickle in it, as the
//! `tessera-model` sniffer saw it at ingest. Kept as one object per file
//! beside its recipe; derived from the content, so a missing or damaged
//! one is recomputed by reading the file.

use std::io::Read;

use serde::{Deserialize, Serialize};
use tessera_model::{Limits, ModelInfo, Sniffer};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::FileId;
use crate::paths::model_key;
use crate::read::FileReader;
use crate::storage::PutMode;

/// Version of the model description object.
const MODEL_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    info: ModelInfo,
}

/// Writes a file's model description (replacing one that exists).
pub(crate) fn write(core: &Core, file: &FileId, info: &ModelInfo) -> Result<()> {
    let key = model_key(file);
    let bytes = serde_json::to_vec(&Stored {
        version: MODEL_VERSION,
        info: info.clone(),
    })
    .map_err(|e| Error::Bug(format!("model description of {file}: {e}")))?;
    core.objects
        .put(&key, &bytes, PutMode::Replace)
        .map_err(|e| Error::io("write model description", core.objects.describe(&key), e))
}

/// The description in a stored object, if it parses and is of this version.
pub(crate) fn parse(bytes: &[u8]) -> Option<ModelInfo> {
    serde_json::from_slice::<Stored>(bytes)
        .ok()
        .filter(|s| s.version == MODEL_VERSION)
        .map(|s| s.info)
}

/// A file's model description: the stored one, or, when it is missing or
/// does not parse (a file stored before descriptions, or damage), computed
/// by reading the file (verified) and written back.
pub(crate) fn read(core: &std::sync::Arc<Core>, file: &FileId) -> Result<ModelInfo> {
    let key = model_key(file);
    if let Ok(bytes) = core.objects.get(&key) {
        match parse(&bytes) {
            Some(info) => return Ok(info),
            None => {
                tracing::warn!(file = %file, "model description does not parse; recomputing it")
            }
        }
    }
    let mut reader = FileReader::new(core, file)?;
    let size = reader.size();
    let mut sniffer = Sniffer::new(Limits::default());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(crate::read::unwrap_io)?;
        if n == 0 {
            break;
        }
        sniffer.feed(&buf[..n]);
    }
    let info = sniffer.finish(size);
    if core.check_poison().is_ok() {
        if let Err(e) = write(core, file, &info) {
            tracing::warn!(file = %file, error = %e, "could not store the recomputed model description");
        }
    }
    Ok(info)
}
