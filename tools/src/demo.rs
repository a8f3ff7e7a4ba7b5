//! `tessera demo`: a synthetic model repository in five versions, stored,
//! tabulated and read back; then its model description, a pull over HTTP
//! that downloads only what the client lacks, and GC + repack.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use std::sync::Arc;

use tessera::{GcOptions, RepackOptions, Store, StoreOptions};
use tessera_http::client::{open_local_store, pull, Client, ClientOptions, Progress};
use tessera_http::{Policy, Server, ServerConfig};
use tessera_synth::{demo_repo, ModelSpec, RepoVersion, DEMO_MODEL_FILE};

use crate::remote::runtime;
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
    // The demo deletes the refs it made and collects with no grace period:
    // in a store holding anything else, that would delete files stored
    // moments ago that no ref names yet.
    let held = store.stats()?;
    if held.files > 0 || held.refs > 0 || held.packs > 0 {
        return Err(CliError::Usage(format!(
            "demo: the store {} already holds {} files and {} refs; the demo deletes refs and collects \
             garbage with no grace period, so it runs only in a new or empty store (or, without \
             --store, in a temporary one)",
            dir.display(),
            held.files,
            held.refs
        )));
    }
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
    describe(&mut out, &store, &versions[0])?;
    pull_over_http(&mut out, &store, &versions)?;
    collect(&mut out, &store, &versions)?;
    store.close()?;
    Ok(())
}

fn name(v: &RepoVersion, path: &str) -> String {
    format!("{}@{}:{}", v.repo, v.rev, path)
}

/// The model description ingest recorded for v1's weights.
fn describe(out: &mut impl Write, store: &Store, v: &RepoVersion) -> CliResult {
    let ref_name = name(v, DEMO_MODEL_FILE);
    let info = store.model_info(&store.resolve(&ref_name)?)?;
    let mut dtypes: Vec<&str> = info.tensors.iter().map(|t| t.dtype.as_str()).collect();
    dtypes.sort_unstable();
    dtypes.dedup();
    writeln!(
        out,
        "model: {ref_name} is {}, {} tensors ({}), described at ingest (`tessera info`, `cat --tensor`)",
        info.format,
        info.tensors.len(),
        dtypes.join(", ")
    )
    .map_err(crate::out_err)
}

/// Serves the store on loopback; a client store that holds v1 pulls the
/// fine-tune v2 and downloads only what it lacks.
fn pull_over_http(out: &mut impl Write, store: &Store, versions: &[RepoVersion]) -> CliResult {
    let (Some(held), Some(last)) = (versions.first(), versions.get(1)) else {
        return Ok(());
    };
    let tmp = tempfile::tempdir().map_err(|e| CliError::File("<tempdir>".into(), e))?;
    let output = tmp.path().join(DEMO_MODEL_FILE);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::Check(format!("listening on loopback: {e}")))?;
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(|e| CliError::Check(format!("listening on loopback: {e}")))?
        );
        let server = Server::new(store.clone(), Policy::open(), ServerConfig::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        let result = async {
            let client = Client::new(&url, ClientOptions::default())?;
            let info = client.server_info().await?;
            let local =
                open_local_store(&tmp.path().join("client"), &info, false, Default::default())?;
            let mut ingest = local.ingest();
            for (path, spec) in &held.files {
                ingest.add(path, spec.reader(), &[], &mut |_| {})?;
            }
            ingest.commit()?;
            let quiet: Arc<dyn Progress> = Arc::new(Quiet);
            let report = pull(
                &client,
                &local,
                &name(last, DEMO_MODEL_FILE),
                &output,
                quiet,
            )
            .await?;
            local.close()?;
            // One tensor of v2 by name, as any HTTP client would ask for it.
            let info = store.model_info(&store.resolve(&name(last, DEMO_MODEL_FILE))?)?;
            let tensor = info
                .tensors
                .iter()
                .filter_map(|t| t.offset.map(|o| (t.name.clone(), o, t.length)))
                .max_by_key(|t| t.2)
                .ok_or_else(|| CliError::Check("v2 has no tensors stored as plain bytes".into()))?;
            let bytes = client
                .get_tensor(&name(last, DEMO_MODEL_FILE), &tensor.0)
                .await?;
            Ok::<_, CliError>((report, tensor, bytes))
        }
        .await;
        let _ = stop.send(());
        let _ = serving.await;
        result
    })?;
    let (report, (tensor, offset, length), tensor_bytes) = report;
    let spec = last
        .files
        .iter()
        .find(|(p, _)| p == DEMO_MODEL_FILE)
        .map(|(_, s)| s);
    let file = std::fs::File::open(&output).map_err(|e| CliError::File(output.clone(), e))?;
    if let Some(spec) = spec {
        if !same_stream(std::io::BufReader::new(file), spec.reader()).map_err(crate::out_err)? {
            return Err(CliError::Check(format!(
                "{} pulled other bytes",
                name(last, DEMO_MODEL_FILE)
            )));
        }
    }
    writeln!(
        out,
        "pull: a client holding {}@{} pulls {} over HTTP (loopback): downloaded {} of {} ({:.1}%) in {} requests, verified",
        held.repo,
        held.rev,
        name(last, DEMO_MODEL_FILE),
        human(report.bytes_downloaded),
        human(report.size),
        100.0 * report.bytes_downloaded as f64 / report.size.max(1) as f64,
        report.requests + 1
    )
    .map_err(crate::out_err)?;
    // The tensor served by name is exactly its bytes in the pulled file.
    let mut f = std::fs::File::open(&output).map_err(|e| CliError::File(output.clone(), e))?;
    let mut want = vec![
        0u8;
        usize::try_from(length).map_err(|_| CliError::Check(format!(
            "tensor {tensor} is too large to check"
        )))?
    ];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))
        .and_then(|_| std::io::Read::read_exact(&mut f, &mut want))
        .map_err(|e| CliError::File(output.clone(), e))?;
    if tensor_bytes[..] != want[..] {
        return Err(CliError::Check(format!(
            "GET ?tensor={tensor} returned other bytes than the file holds at {offset}"
        )));
    }
    writeln!(
        out,
        "tensor: GET /v1/files/{}?tensor={tensor} returns its {} (bytes {offset}..{} of the file), checked",
        name(last, DEMO_MODEL_FILE),
        human(length),
        offset + length
    )
    .map_err(crate::out_err)
}

struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Deletes the refs of the first three versions, then GC and repack
/// reclaim what only they used; the rest reads back byte-identical.
fn collect(out: &mut impl Write, store: &Store, versions: &[RepoVersion]) -> CliResult {
    let gone = &versions[..versions.len().min(3)];
    for v in gone {
        for (path, _) in &v.files {
            store.delete_ref(&name(v, path))?;
        }
        for (path, _) in &v.small_files {
            store.delete_ref(&name(v, path))?;
        }
    }
    let before = store.stats()?;
    let rep = store.repack(&RepackOptions {
        gc: GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        },
        ..Default::default()
    })?;
    let after = store.stats()?;
    for v in &versions[gone.len()..] {
        for (path, spec) in &v.files {
            let id = store.resolve(&name(v, path))?;
            if !same_stream(store.read(&id)?, spec.reader()).map_err(crate::out_err)? {
                return Err(CliError::Check(format!(
                    "{} differs after repack",
                    name(v, path)
                )));
            }
        }
    }
    writeln!(
        out,
        "gc: refs of {} versions deleted; gc + repack deleted {} files and {} packs, rewrote {}: stored {} -> {} (live {}) in {:.2} s; the other versions read back byte-identical",
        gone.len(),
        rep.gc.dead_files,
        rep.gc.dead_packs + rep.packs_rewritten,
        rep.packs_rewritten,
        human(before.stored_bytes),
        human(after.stored_bytes),
        human(rep.gc.live_bytes),
        rep.seconds
    )
    .map_err(crate::out_err)
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
