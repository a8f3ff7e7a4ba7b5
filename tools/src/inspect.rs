//! `tessera info` and `tessera cat`: what a stored file is, and its bytes
//! (all of them, a range, or one tensor).

use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;

use tessera::{Error, Store};

use crate::{out_err, CliError, CliResult};

/// `info NAME [--tensors | --json]`: the file's size, chunks, packs and
/// sha256, and what the model format sniffer saw at ingest (format,
/// tensors, pickle imports and verdict).
pub(crate) fn info(store: &Store, name: &str, json: bool, tensors: bool) -> CliResult {
    let id = store.resolve(name)?;
    let info = store.info(&id)?;
    let model = store.model_info(&id)?;
    let mut out = io::stdout().lock();
    if json {
        // One object: the model description's fields, then the store's
        // (`size` agrees), keys sorted. Merged as raw JSON text per field:
        // a description can list hundreds of thousands of tensors, and a
        // value tree of them would take ten times the text's memory.
        use serde_json::value::RawValue;
        let check = |e: serde_json::Error| CliError::Check(e.to_string());
        let model_text = serde_json::to_string(&model).map_err(check)?;
        let file_text = serde_json::to_string(&info).map_err(check)?;
        let mut merged: std::collections::BTreeMap<&str, &RawValue> =
            serde_json::from_str(&model_text).map_err(check)?;
        let file: std::collections::BTreeMap<&str, &RawValue> =
            serde_json::from_str(&file_text).map_err(check)?;
        merged.extend(file);
        let text = serde_json::to_string(&merged).map_err(check)?;
        writeln!(out, "{text}").map_err(out_err)?;
        return Ok(());
    }
    writeln!(out, "file_id  {}", info.file_id).map_err(out_err)?;
    writeln!(out, "sha256   {}", info.sha256).map_err(out_err)?;
    writeln!(out, "size     {}", info.size).map_err(out_err)?;
    writeln!(out, "format   {}", model.format.as_str()).map_err(out_err)?;
    if let Some(r) = &model.reason {
        writeln!(out, "         ({})", crate::printable(r, false)).map_err(out_err)?;
    }
    if let Some(v) = &model.variant {
        writeln!(out, "variant  {}", crate::printable(v, false)).map_err(out_err)?;
    }
    // What the sniffer noticed (a TorchScript archive's code that runs on
    // load, fields it did not read): said here as in --json.
    for w in &model.warnings {
        writeln!(out, "warning  {}", crate::printable(w, false)).map_err(out_err)?;
    }
    if !model.tensors.is_empty() {
        writeln!(out, "tensors  {}", model.tensors.len()).map_err(out_err)?;
        if tensors {
            for t in &model.tensors {
                let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
                let place = match t.offset {
                    Some(o) => format!("bytes {o}..{}", o.saturating_add(t.length)),
                    None => format!("{} bytes, not stored plainly in the file", t.length),
                };
                writeln!(
                    out,
                    "  {}  {}  [{}]  {place}",
                    crate::printable(&t.name, false),
                    crate::printable(&t.dtype, false),
                    shape.join(", ")
                )
                .map_err(out_err)?;
            }
        }
    }
    if !model.pickle_imports.is_empty() || model.verdict != tessera::Verdict::NoPickle {
        let verdict = match model.verdict {
            tessera::Verdict::NoPickle => "no_pickle",
            tessera::Verdict::SafePickle => "safe_pickle",
            tessera::Verdict::UnsafePickle => "unsafe_pickle",
        };
        writeln!(out, "pickle   {verdict}").map_err(out_err)?;
        for i in &model.unsafe_imports {
            writeln!(out, "  unsafe import {}", crate::printable(i, false)).map_err(out_err)?;
        }
    }
    writeln!(out, "chunks   {}", info.chunks).map_err(out_err)?;
    writeln!(out, "terms    {}", info.terms).map_err(out_err)?;
    writeln!(out, "packs    {}", info.packs.len()).map_err(out_err)?;
    for p in &info.packs {
        writeln!(out, "  {p}").map_err(out_err)?;
    }
    Ok(())
}

/// `cat NAME [--offset N] [--length N] [--tensor NAME]`: writes the file,
/// a byte range of it, or exactly one tensor's bytes (found in the model
/// description; only the chunks holding them are read).
pub(crate) fn cat(
    store: &Store,
    name: &str,
    offset: u64,
    length: Option<u64>,
    tensor: Option<&str>,
) -> CliResult {
    let id = store.resolve(name)?;
    let (offset, length) = match tensor {
        None => (offset, length),
        Some(t) => {
            let (o, l) = store.tensor_range(&id, t)?;
            (o, Some(l))
        }
    };
    let mut reader = store.read(&id)?;
    let size = reader.size();
    let len = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::RangeOutOfBounds {
            file: id,
            offset,
            len,
            size,
        }
        .into());
    }
    // A missing or truncated pack fails before any byte is written.
    store.open_packs(&id, offset, len)?;
    reader.seek(SeekFrom::Start(offset)).map_err(out_err)?;
    reader.limit_read_ahead(offset + len);
    // Whole verified chunks go straight to the output (no line buffering,
    // no copy through a small buffer); the stdout lock is held meanwhile.
    let lock = io::stdout().lock();
    let mut out = std::fs::File::from(lock.as_fd().try_clone_to_owned().map_err(out_err)?);
    let mut reader = reader.take(len);
    loop {
        let chunk = reader.fill_buf().map_err(out_err)?;
        if chunk.is_empty() {
            break;
        }
        out.write_all(chunk).map_err(out_err)?;
        let n = chunk.len();
        reader.consume(n);
    }
    out.flush().map_err(out_err)
}
