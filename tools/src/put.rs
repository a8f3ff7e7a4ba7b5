//! `tessera put`: files, directory trees and stdin into the store.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tessera::Store;

use crate::{out_err, progress_bar, CliError, CliResult};

/// Commit after this many staged bytes so small files share a commit but a
/// large batch does not hold acknowledgements back for long.
const COMMIT_EVERY_BYTES: u64 = 64 << 20;

/// One thing to store.
#[derive(Debug)]
pub(crate) struct Input {
    /// The file, or `None` for stdin.
    pub(crate) path: Option<PathBuf>,
    /// How it is shown in the output.
    pub(crate) shown: String,
    /// The ref to set, if any.
    pub(crate) ref_name: Option<String>,
}

/// Expands the command line's paths into inputs: `-` is stdin, a directory
/// is every regular file under it (name order, `.git` skipped), anything
/// else a file. Refs: `--ref` names the one input; `--ref-prefix` names each
/// PREFIX + its path as given, or + its path inside a directory.
pub(crate) fn inputs(
    paths: &[PathBuf],
    ref_name: Option<String>,
    ref_prefix: Option<String>,
) -> CliResult<Vec<Input>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(Input {
                path: None,
                shown: "-".into(),
                ref_name: ref_prefix.as_ref().map(|pre| format!("{pre}-")),
            });
            continue;
        }
        let meta = std::fs::metadata(p).map_err(|e| CliError::File(p.clone(), e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(p, Path::new(""), &mut files)?;
            if files.is_empty() {
                return Err(CliError::File(
                    p.clone(),
                    io::Error::new(io::ErrorKind::InvalidInput, "no files under this directory"),
                ));
            }
            for rel in files {
                let full = p.join(&rel);
                out.push(Input {
                    shown: full.display().to_string(),
                    ref_name: ref_prefix
                        .as_ref()
                        .map(|pre| format!("{pre}{}", rel.display())),
                    path: Some(full),
                });
            }
        } else {
            out.push(Input {
                shown: p.display().to_string(),
                ref_name: ref_prefix
                    .as_ref()
                    .map(|pre| format!("{pre}{}", p.display())),
                path: Some(p.clone()),
            });
        }
    }
    if let Some(name) = ref_name {
        match out.as_mut_slice() {
            [one] => one.ref_name = Some(name),
            _ => {
                return Err(CliError::Usage(format!(
                    "--ref names one file, and {} were given; use --ref-prefix for several",
                    out.len()
                )))
            }
        }
    }
    if stdin_count(&out) > 1 {
        return Err(CliError::Usage("`-` (stdin) can be given once".into()));
    }
    Ok(out)
}

fn stdin_count(inputs: &[Input]) -> usize {
    inputs.iter().filter(|i| i.path.is_none()).count()
}

/// Regular files under `root/rel`, in name order, as paths relative to
/// `root`. `.git` directories are skipped; symlinks to files are followed,
/// symlinks to directories and special files are refused (a repository is
/// files).
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> CliResult {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| CliError::File(dir.clone(), e))?;
    let mut names = Vec::new();
    for e in entries {
        names.push(e.map_err(|e| CliError::File(dir.clone(), e))?.file_name());
    }
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let full = root.join(&child);
        let link = std::fs::symlink_metadata(&full).map_err(|e| CliError::File(full.clone(), e))?;
        let meta = std::fs::metadata(&full).map_err(|e| CliError::File(full.clone(), e))?;
        if meta.is_dir() {
            if link.file_type().is_symlink() {
                return Err(CliError::File(
                    full,
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a symlink to a directory (not followed: give the directory itself)",
                    ),
                ));
            }
            if name != ".git" {
                walk(root, &child, out)?;
            }
        } else if meta.is_file() {
            out.push(child);
        } else {
            return Err(CliError::File(
                full,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
    }
    Ok(())
}

/// Stores the inputs, committing in groups and printing each file once it is
/// durable (printing is acknowledging). A failure stops the command after
/// committing the files before it.
pub(crate) fn put(store: &Store, inputs: &[Input], json: bool) -> CliResult {
    let total: u64 = inputs
        .iter()
        .filter_map(|i| i.path.as_ref())
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let pb = progress_bar(total);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut ingest = store.ingest();
    let mut staged: Vec<&Input> = Vec::new();
    let mut staged_bytes = 0u64;
    let mut done = 0u64;
    let mut refused = 0usize;
    // Files stored and printed so far.
    let stored = std::cell::Cell::new(0usize);
    // Of several files, which failed (`what`) and how many are stored.
    let stopped = |what: String, e: CliError| -> CliError {
        if inputs.len() == 1 {
            return e;
        }
        CliError::While(
            format!(
                "{what} ({} of {} files stored and printed above; put the others again)",
                stored.get(),
                inputs.len()
            ),
            Box::new(e),
        )
    };
    let mut commit = |ingest: tessera::Ingest<'_>, group: &mut Vec<&Input>| -> CliResult {
        let reports = ingest.commit()?;
        stored.set(stored.get() + reports.len());
        for (rep, input) in reports.iter().zip(group.drain(..)) {
            if json {
                let v = serde_json::json!({
                    "file_id": rep.file_id.to_hex(),
                    "sha256": rep.sha256.to_hex(),
                    "path": input.shown,
                    "ref": input.ref_name,
                    "size": rep.size,
                    "new_bytes": rep.new_bytes,
                    "chunks": rep.chunks,
                    "new_chunks": rep.new_chunks,
                    "new_file": rep.new_file,
                });
                pb.suspend(|| writeln!(out, "{v}")).map_err(out_err)?;
            } else {
                pb.suspend(|| {
                    writeln!(
                        out,
                        "{}  {}",
                        rep.file_id,
                        crate::printable(&input.shown, false)
                    )
                })
                .map_err(out_err)?;
            }
        }
        out.flush().map_err(out_err)
    };
    for (i, input) in inputs.iter().enumerate() {
        let refs: Vec<&str> = input.ref_name.iter().map(String::as_str).collect();
        pb.set_message(input.shown.clone());
        let base = done;
        let mut last = 0;
        let mut progress = |n: u64| {
            pb.set_position(base + n);
            last = n;
        };
        let added = match &input.path {
            Some(p) => ingest.add_file(p, &refs, &mut progress),
            None => ingest.add("stdin", io::stdin(), &refs, &mut progress),
        };
        if let Err(e) = added {
            // The files before this one are stored and acknowledged (unless
            // what failed left the store refusing writes).
            let group = std::mem::replace(&mut ingest, store.ingest());
            let committed = if group.is_empty() {
                Ok(())
            } else {
                staged_bytes = 0;
                commit(group, &mut staged)
            };
            done += last;
            match e {
                // Of several files, one a policy refuses is named and the
                // others are stored; the run exits 5 at the end.
                tessera::Error::Refused { .. } if inputs.len() > 1 => {
                    committed?;
                    let line = crate::printable(&e.to_string(), true).into_owned();
                    pb.suspend(|| say!("tessera: refused: {line}"));
                    refused += 1;
                    continue;
                }
                e => {
                    pb.finish_and_clear();
                    let what = format!("storing {}", crate::printable(&input.shown, false));
                    return Err(stopped(what, e.into()));
                }
            }
        }
        done += last;
        staged_bytes += last;
        staged.push(input);
        if staged_bytes >= COMMIT_EVERY_BYTES || i + 1 == inputs.len() {
            let group = std::mem::replace(&mut ingest, store.ingest());
            let count = staged.len();
            if let Err(e) = commit(group, &mut staged) {
                pb.finish_and_clear();
                let what = format!(
                    "storing the {count} files up to {}",
                    crate::printable(&input.shown, false)
                );
                return Err(stopped(what, e));
            }
            staged_bytes = 0;
        }
    }
    pb.finish_and_clear();
    if refused > 0 {
        return Err(CliError::Refused(format!(
            "{refused} of {} files refused by policy (each named above); the other {} are stored",
            inputs.len(),
            inputs.len() - refused
        )));
    }
    Ok(())
}
