//! `tessera demo`: a synthetic model repository in five versions, stored,
//! tabulated and read back.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use tessera::{Store, StoreOptions};
use tessera_synth::{demo_repo, ModelSpec};

use crate::{human, CliError, CliResult};

/// Bytes of tensors in `spec` whose content is not in any earlier version.
fn changed_tensor_bytes(spec: &ModelSpec, seen: &HashSet<(String, u64, u64)>) -> u64 {
    spec.tensors
        .iter()
        .filter(|t| !seen.contains(&(t.name.clone(), t.seed, t.byte_len())))
        .map(|t| t.byte_len())
        .sum()
}

/// Compares a reader against the expected bytes from another reader, streaming.
fn same_stream(mut a: impl Read, mut b: impl Read) -> std::io::Result<bool> {
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut a, &mut ba)?;
        let m = read_full(&mut b, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub fn run(store_dir: Option<&Path>, size_mib: u64, seed: u64) -> CliResult {
    let tmp;
    let dir = match store_dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| CliError::File("<tempdir>".into(), e))?;
            tmp.path().join("store")
        }
    };
    let mut out = std::io::stdout().lock();
    let store = Store::open(
        &dir,
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )?;
    writeln!(
        out,
        "tessera demo: synthetic model repository, {size_mib} MiB weights, seed {seed}"
    )
    .map_err(crate::out_err)?;
    writeln!(
        out,
        "store: {}{}",
        dir.display(),
        if store_dir.is_none() {
            " (temporary)"
        } else {
            ""
        }
    )
    .map_err(crate::out_err)?;
    writeln!(out).map_err(crate::out_err)?;
    let versions = demo_repo(seed, size_mib << 20);
    writeln!(
        out,
        "{:<24} {:>5} {:>11} {:>11} {:>7} {:>11} {:>8}  what changed",
        "version", "files", "logical", "new bytes", "new %", "changed", "new/chg"
    )
    .map_err(crate::out_err)?;
    let mut seen: HashSet<(String, u64, u64)> = HashSet::new();
    let (mut put_bytes, mut put_secs) = (0u64, 0f64);
    for v in &versions {
        let t = Instant::now();
        let mut ingest = store.ingest();
        let mut logical = 0u64;
        let mut changed = 0u64;
        for (path, spec) in &v.files {
            changed += changed_tensor_bytes(spec, &seen);
            let name = format!("{}@{}:{}", v.repo, v.rev, path);
            ingest.add(&name, spec.reader(), &[&name], &mut |_| {})?;
            logical += spec.total_len();
        }
        for (path, bytes) in &v.small_files {
            let name = format!("{}@{}:{}", v.repo, v.rev, path);
            ingest.add(&name, &bytes[..], &[&name], &mut |_| {})?;
            logical += bytes.len() as u64;
        }
        let reports = ingest.commit()?;
        put_secs += t.elapsed().as_secs_f64();
        put_bytes += logical;
        for (_, spec) in &v.files {
            for t in &spec.tensors {
                seen.insert((t.name.clone(), t.seed, t.byte_len()));
            }
        }
        let new: u64 = reports.iter().map(|r| r.new_bytes).sum();
        let ratio = if changed == 0 {
            "-".to_string()
        } else {
            format!("{:.2}x", new as f64 / changed as f64)
        };
        writeln!(
            out,
            "{:<24} {:>5} {:>11} {:>11} {:>6.1}% {:>11} {:>8}  {}",
            format!("{}@{}", v.repo, v.rev),
            reports.len(),
            human(logical),
            human(new),
            100.0 * new as f64 / logical.max(1) as f64,
            human(changed),
            ratio,
            v.note
        )
        .map_err(crate::out_err)?;
    }
    let s = store.stats()?;
    writeln!(out).map_err(crate::out_err)?;
    writeln!(out,
        "store: {} files, {} refs, {} chunks in {} packs; logical {}, stored {} (dedup ratio {:.2}x)",
        s.files,
        s.refs,
        s.chunks,
        s.packs,
        human(s.logical_bytes),
        human(s.stored_bytes),
        s.dedup_ratio
    ).map_err(crate::out_err)?;
    writeln!(
        out,
        "put: {} in {:.2} s ({:.0} MB/s, generation included)",
        human(put_bytes),
        put_secs,
        put_bytes as f64 / 1e6 / put_secs.max(1e-9)
    )
    .map_err(crate::out_err)?;

    // Read every file back through its ref and compare with the generator.
    let t = Instant::now();
    let (mut files, mut bytes) = (0u64, 0u64);
    for v in &versions {
        for (path, spec) in &v.files {
            let id = store.resolve(&format!("{}@{}:{}", v.repo, v.rev, path))?;
            let ok = same_stream(store.read(&id)?, spec.reader()).map_err(crate::out_err)?;
            if !ok {
                return Err(CliError::Check(format!(
                    "{}@{}:{path} read back different bytes",
                    v.repo, v.rev
                )));
            }
            files += 1;
            bytes += spec.total_len();
        }
        for (path, data) in &v.small_files {
            let id = store.resolve(&format!("{}@{}:{}", v.repo, v.rev, path))?;
            if store.read(&id)?.read_all()? != *data {
                return Err(CliError::Check(format!(
                    "{}@{}:{path} read back different bytes",
                    v.repo, v.rev
                )));
            }
            files += 1;
            bytes += data.len() as u64;
        }
    }
    writeln!(
        out,
        "verify: {files} files, {} read back byte-identical in {:.2} s (generation included)",
        human(bytes),
        t.elapsed().as_secs_f64()
    )
    .map_err(crate::out_err)?;
    Ok(())
}

/// Writes the demo repository as files under `dir`.
pub fn write_repo(dir: &Path, size_mib: u64, seed: u64) -> CliResult {
    let mut out = std::io::stdout().lock();
    for v in demo_repo(seed, size_mib << 20) {
        let vdir = dir.join(&v.repo).join(&v.rev);
        std::fs::create_dir_all(&vdir).map_err(|e| CliError::File(vdir.clone(), e))?;
        for (path, spec) in &v.files {
            let p = vdir.join(path);
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&p).map_err(|e| CliError::File(p.clone(), e))?,
            );
            spec.write_to(&mut f)
                .and_then(|_| std::io::Write::flush(&mut f))
                .map_err(|e| CliError::File(p.clone(), e))?;
        }
        for (path, bytes) in &v.small_files {
            let p = vdir.join(path);
            std::fs::write(&p, bytes).map_err(|e| CliError::File(p.clone(), e))?;
        }
        writeln!(out, "{}  {}", vdir.display(), v.note).map_err(crate::out_err)?;
    }
    Ok(())
}
