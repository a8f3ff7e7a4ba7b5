//! Model descriptions (spec §7.2): what a stored file is — safetensors,
//! GGUF, ONNX, a PyTorch checkpoint, a pickle… — its tensors and where
//! their bytes are, and every import of every pickle in it, as the
//! `tessera-model` sniffer saw it at ingest. Kept as one object per file
//! beside its recipe; derived from the content, so a missing or damaged
//! one is recomputed by reading the file.

use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tessera_model::{Limits, ModelInfo, Sniffer};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::FileId;
use crate::paths::model_key;
use crate::read::FileReader;
use crate::storage::PutMode;

/// Version of the model description object. Objects of other versions are
/// not trusted: they are recomputed like damaged ones. Version 1 had no
/// file id and no checksum; version 3 marks the sniffer that serves ONNX
/// tensors only from one plain field, lists subgraph weights, flags shared
/// tensor names and judges unaccountable pickle containers unsafe, so
/// descriptions an older sniffer wrote (which may place tensors it should
/// not serve, or call a pickle safe) are recomputed.
const MODEL_VERSION: u32 = 3;

/// The object as written: the description's JSON (`info`) is kept as the
/// exact bytes the checksum covers.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    version: u32,
    /// The file described (hex): a description copied to another file's
    /// name does not check.
    file: String,
    /// BLAKE3 (hex) of the bytes of `info`.
    checksum: String,
    #[serde(borrow)]
    info: &'a RawValue,
}

fn checksum(info: &RawValue) -> String {
    blake3::hash(info.get().as_bytes()).to_hex().to_string()
}

/// Writes a file's model description (replacing one that exists).
pub(crate) fn write(core: &Core, file: &FileId, info: &ModelInfo) -> Result<()> {
    let key = model_key(file);
    let bug = |e: serde_json::Error| Error::Bug(format!("model description of {file}: {e}"));
    let info = serde_json::value::to_raw_value(info).map_err(bug)?;
    let bytes = serde_json::to_vec(&Stored {
        version: MODEL_VERSION,
        file: file.to_hex(),
        checksum: checksum(&info),
        info: &info,
    })
    .map_err(bug)?;
    core.objects
        .put(&key, &bytes, PutMode::Replace)
        .map_err(|e| Error::io("write model description", core.objects.describe(&key), e))
}

/// The description in the stored object of `file`, or why it cannot be
/// trusted: it does not parse, is of another version, describes another
/// file, or fails its checksum.
pub(crate) fn parse(file: &FileId, bytes: &[u8]) -> std::result::Result<ModelInfo, String> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let parse_err = |e: serde_json::Error| format!("does not parse: {e}");
    let v: Version = serde_json::from_slice(bytes).map_err(parse_err)?;
    if v.version != MODEL_VERSION {
        return Err(format!(
            "is of version {} (this engine writes and trusts {MODEL_VERSION})",
            v.version
        ));
    }
    let s: Stored = serde_json::from_slice(bytes).map_err(parse_err)?;
    if s.file != file.to_hex() {
        return Err(format!(
            "describes another file ({})",
            crate::error::clip(&s.file)
        ));
    }
    if s.checksum != checksum(s.info) {
        return Err("fails its checksum".into());
    }
    serde_json::from_str(s.info.get()).map_err(parse_err)
}

/// Recomputes every stored description that does not check (damage, or
/// version 1 from an older engine) by reading its file: what `repair
/// index` does for them. Each is reported as healed, or as a problem when
/// its file cannot be read.
pub(crate) fn recompute_unchecked(
    core: &std::sync::Arc<Core>,
    rep: &mut crate::report::RepairReport,
) -> Result<()> {
    let objects = core.objects.as_ref();
    let keys = objects
        .list(crate::paths::MODELS)
        .map_err(|e| Error::io("list", objects.describe(crate::paths::MODELS), e))?;
    for key in keys {
        let Some(file) = crate::paths::file_of_model_key(&key) else {
            continue;
        };
        if !core.index.has_file(&file)? {
            continue;
        }
        let Ok(bytes) = objects.get(&key) else {
            continue;
        };
        let Err(why) = parse(&file, &bytes) else {
            continue;
        };
        match read(core, &file) {
            Ok(_) => rep.healed(
                format!("file {file}"),
                format!("model description {key} {why}; recomputed from the file"),
            ),
            Err(e) => rep.problem(
                format!("file {file}"),
                format!("model description {key} {why}, and the file cannot be read to recompute it: {e}"),
            ),
        }
    }
    Ok(())
}

/// The store's pickle policy applied to a file's description: `Refused`,
/// naming `source`, when the policy forbids the file. Every way a file
/// enters the store or a new name — a put, an upload, a ref a transfer sets
/// to a file stored already, a pull of one — passes here.
pub(crate) fn check_policy(core: &Core, source: &str, info: &ModelInfo) -> Result<()> {
    let policy = core.opts.pickle_policy;
    policy.check(info).map_err(|v| Error::Refused {
        source_name: source.to_string(),
        policy: policy.as_str().to_string(),
        reason: v.to_string(),
    })
}

/// A file's stored model description, if there is one that checks.
pub(crate) fn stored(core: &Core, file: &FileId) -> Option<ModelInfo> {
    let bytes = core.objects.get(&model_key(file)).ok()?;
    parse(file, &bytes).ok()
}

/// A file's model description: the stored one, or, when it is missing or
/// cannot be trusted (a file stored before descriptions, damage, an older
/// version), computed
/// by reading the file (verified) and written back.
pub(crate) fn read(core: &std::sync::Arc<Core>, file: &FileId) -> Result<ModelInfo> {
    let key = model_key(file);
    if let Ok(bytes) = core.objects.get(&key) {
        match parse(file, &bytes) {
            Ok(info) => return Ok(info),
            Err(why) => {
                tracing::warn!(file = %file, "model description {why}; recomputing it")
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
