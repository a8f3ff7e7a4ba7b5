//! `pull`: a file from a server into a local store and an output file,
//! fetching only the chunks the store lacks, verifying every one, and
//! resuming an interrupted pull where it stopped.
//!
//! Resume: each range request writes the bytes it receives to a part file
//! `<pack>-<start>.part` in a download directory beside the output
//! (`.<output name>.tessera-pull/`), flushed as they arrive and fsync'd
//! every few MiB. A range that completes is verified, admitted into the
//! local store and its part file deleted, so the next plan skips its
//! chunks; a range that was interrupted is requested again from where its
//! part file ends (`Range: bytes=start+have-end`). Part files hold pack
//! bytes, which never change (packs are named by their content), so they
//! stay valid across runs, URLs and server restarts; what they hold is
//! verified like everything else before it is kept.
//!
//! The output is assembled as the ranges complete ([`Store::assemble`]):
//! each verified chunk is admitted into the store and written to a temp
//! file in the download directory at its offsets, while the file's SHA-256
//! is computed in file order; once the last range is in, the file is
//! registered locally (only if its SHA-256 is the one the server named) as
//! the temp file is fsync'd, and the temp file is renamed over the output.
//! No chunk is read back.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use reqwest::{Method, StatusCode};
use tessera::{verify_fetched, Assembly, Fetch, FileId, PackId, Reconstruction, Sha256, Store};
use tokio::io::AsyncReadExt;

use super::{Client, ClientError, ClientResult, Progress};

/// Bytes received are written to the part file in pieces of this size
/// (what a kill can lose of a range: the rest is in the page cache, which
/// outlives the process).
const WRITE_EVERY: usize = 256 << 10;
/// A part file is fsync'd when this long has passed since its last sync,
/// and whenever its request fails: what a power loss can lose of a range is
/// about a second of its data. A range that completes sooner is never
/// synced (it is verified and admitted, durably, into the store at once,
/// and its part file deleted), so fast pulls do not write their bytes
/// twice.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullReport {
    /// The file.
    pub file_id: FileId,
    /// Its SHA-256 (computed locally from the verified chunks).
    pub sha256: Sha256,
    /// Its size.
    pub size: u64,
    /// Pack bytes this run received from the server.
    pub bytes_downloaded: u64,
    /// Bytes of interrupted ranges kept from an earlier run (not fetched
    /// again).
    pub bytes_resumed: u64,
    /// Raw bytes of the file's distinct chunks the local store already
    /// held.
    pub bytes_reused: u64,
    /// Distinct chunks fetched.
    pub chunks_downloaded: u64,
    /// Distinct chunks the local store already held.
    pub chunks_reused: u64,
    /// HTTP requests this run sent.
    pub requests: u64,
    /// Requests retried after a transient failure (ranges, and the
    /// reconstruction).
    pub retries: u64,
    /// Where the file was written.
    pub output: String,
    /// Seconds spent fetching, verifying and admitting chunks, and writing
    /// them to the output as they arrive (its SHA-256 computed meanwhile).
    pub download_secs: f64,
    /// Seconds spent after the last range came in: the SHA-256 catching
    /// up, then registering the file locally while the output is fsync'd.
    pub register_secs: f64,
    /// Seconds spent putting the output in place (rename); for a file the
    /// store held already, writing it from the store and fsync'ing it.
    pub write_secs: f64,
}

struct Shared {
    client: Client,
    name: String,
    file: FileId,
    dir: PathBuf,
    /// Pack URLs and a generation number bumped by each refresh.
    urls: tokio::sync::Mutex<(BTreeMap<PackId, String>, u64)>,
    downloaded: AtomicU64,
    retries: AtomicU64,
    progress: Arc<dyn Progress>,
}

/// Why one attempt at a range failed.
enum RangeFail {
    /// The pack URL was refused (expired, or signed by a server that has
    /// restarted since) or the pack is not found (repacked away): fetch
    /// the reconstruction again. Carries the URL generation and the answer.
    Refresh(u64, ClientError),
    /// Anything else.
    Error(ClientError),
}

impl From<ClientError> for RangeFail {
    fn from(e: ClientError) -> Self {
        RangeFail::Error(e)
    }
}

/// The download directory of `output`.
pub(crate) fn download_dir(output: &Path) -> ClientResult<PathBuf> {
    let name = output.file_name().ok_or_else(|| {
        ClientError::Usage(format!("output {}: not a file name", output.display()))
    })?;
    Ok(parent_of(output).join(format!(".{}.tessera-pull", name.to_string_lossy())))
}

/// `O_NOFOLLOW`: files in the download directory are opened only as what
/// they are, never through a symbolic link.
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// Where a pull puts the file.
#[derive(Clone, Debug)]
enum Destination {
    /// A regular file, new or replaced: a temp file beside it, renamed over
    /// it. For an output that is a symbolic link, the file it leads to (the
    /// link stays and names the new file).
    File(PathBuf),
    /// Standard output (`-o -`): written through once the file is
    /// verified and registered.
    Stdout,
    /// A device, FIFO or socket that exists (`/dev/null`): written
    /// through, never replaced.
    Stream(PathBuf),
}

impl Destination {
    fn of(output: &Path) -> ClientResult<Destination> {
        if output.as_os_str() == "-" {
            return Ok(Destination::Stdout);
        }
        let meta = match std::fs::symlink_metadata(output) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A new file, in a directory that must exist.
                let parent = parent_of(output);
                return match std::fs::metadata(&parent) {
                    Ok(m) if m.is_dir() => Ok(Destination::File(output.to_path_buf())),
                    Ok(_) => Err(ClientError::Usage(format!(
                        "output {}: {} is not a directory",
                        output.display(),
                        parent.display()
                    ))),
                    Err(e) => Err(ClientError::io(&parent, e)),
                };
            }
            Err(e) => return Err(ClientError::io(output, e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            return match std::fs::canonicalize(output) {
                // Resolved: no link left in the path.
                Ok(real) => Destination::of(&real),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(ClientError::Usage(format!(
                        "output {}: a symbolic link to a path that does not exist; give the \
                         path itself",
                        output.display()
                    )))
                }
                Err(e) => Err(ClientError::io(output, e)),
            };
        }
        if kind.is_file() {
            Ok(Destination::File(output.to_path_buf()))
        } else if kind.is_dir() {
            Err(ClientError::Usage(format!(
                "output {}: a directory; give a file name",
                output.display()
            )))
        } else {
            Ok(Destination::Stream(output.to_path_buf()))
        }
    }

    /// The path it names (`-` for standard output).
    fn path(&self) -> &Path {
        match self {
            Destination::File(p) | Destination::Stream(p) => p,
            Destination::Stdout => Path::new("-"),
        }
    }

    /// The download directory: beside a file; for a stream, in the system
    /// temp directory, one per user and file (so a pull to standard output
    /// resumes too).
    fn download_dir(&self, file: &FileId) -> ClientResult<PathBuf> {
        match self {
            Destination::File(p) => download_dir(p),
            _ => Ok(std::env::temp_dir().join(format!(
                "tessera-pull-{}-{file}",
                rustix::process::getuid().as_raw()
            ))),
        }
    }

    /// A stream's writer (a device or FIFO is opened as it is: no create,
    /// no truncate).
    fn open(&self) -> ClientResult<Box<dyn Write + Send>> {
        match self {
            Destination::Stdout => Ok(Box::new(std::io::stdout())),
            Destination::Stream(p) | Destination::File(p) => std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(|f| Box::new(f) as Box<dyn Write + Send>)
                .map_err(|e| ClientError::io(p, e)),
        }
    }
}

/// Creates the download directory `dir` (mode 0700), or checks that the
/// one there is this user's own: a directory, owned by this user, not
/// writable by group or others. Anyone else who can write in it could put
/// links there that lead the pull's writes elsewhere.
fn private_dir(dir: &Path) -> ClientResult<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let io = |e| ClientError::io(dir, e);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(io)?;
    let me = rustix::process::getuid().as_raw();
    if m.file_type().is_dir() && m.uid() == me && m.mode() & 0o022 == 0 {
        return Ok(());
    }
    let what = if m.file_type().is_symlink() {
        "a symbolic link".to_string()
    } else if !m.file_type().is_dir() {
        "not a directory".to_string()
    } else {
        format!("owner uid {}, mode {:o}", m.uid(), m.mode() & 0o7777)
    };
    Err(io(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "the download directory is not private to this user ({what}; this is uid {me}): \
             anyone else who can write in it could lead the pull's writes elsewhere; \
             remove it and run the pull again"
        ),
    )))
}

/// Takes the download directory of a pull to `dest`: the `fixed` one
/// (beside the output, or the per-user one of a stream) made private and
/// locked for this run. Another pull writing the same file output holds
/// it: that is refused, since both would write the one output. A stream
/// whose shared directory is busy (another pull of the file to standard
/// output) or refused (made by someone else) gets one of its own for this
/// run instead, without resume.
fn take_download_dir(dest: &Destination, fixed: PathBuf) -> ClientResult<HeldDir> {
    let taken = private_dir(&fixed).and_then(|()| lock_dir(&fixed));
    match (dest, taken) {
        (_, Ok(Some(lock))) => Ok(HeldDir {
            dir: fixed,
            _lock: lock,
        }),
        (Destination::File(out), Ok(None)) => Err(ClientError::io(
            &fixed,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "another pull is writing {} (it holds this download directory); \
                     wait for it to finish",
                    out.display()
                ),
            ),
        )),
        (Destination::File(_), Err(e)) => Err(e),
        (_, _) => {
            use std::os::unix::fs::DirBuilderExt;
            for n in 0..1000u32 {
                let dir = PathBuf::from(format!("{}-{}-{n}", fixed.display(), std::process::id()));
                match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                    Ok(()) => {
                        let lock = lock_dir(&dir)?.ok_or_else(|| {
                            ClientError::io(
                                &dir,
                                std::io::Error::new(
                                    std::io::ErrorKind::WouldBlock,
                                    "a download directory just made is locked by another",
                                ),
                            )
                        })?;
                        return Ok(HeldDir { dir, _lock: lock });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(ClientError::io(&dir, e)),
                }
            }
            Err(ClientError::io(
                &fixed,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "no free name for a download directory of this run",
                ),
            ))
        }
    }
}

/// A download directory this run holds (locked). Dropped with nothing in
/// it but its lock file (a pull that failed before receiving anything),
/// it is removed; what a failed pull received stays for the next run.
struct HeldDir {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Drop for HeldDir {
    fn drop(&mut self) {
        let only_lock = std::fs::read_dir(&self.dir).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .all(|e| e.file_name() == std::ffi::OsStr::new("lock"))
        });
        if only_lock {
            let _ = std::fs::remove_file(self.dir.join("lock"));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Locks download directory `dir` for this run: an exclusive `flock` on
/// its `lock` file, released when the returned file is dropped (or the
/// process ends, however). `None` when another pull holds it.
fn lock_dir(dir: &Path) -> ClientResult<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(&path)
        .map_err(|e| ClientError::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(ClientError::io(&path, e)),
    }
}

/// Opens a file of the download directory for reading, never through a link.
fn open_nofollow(path: &Path) -> ClientResult<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(path)
        .map_err(|e| ClientError::io(path, e))
}

/// Pulls file `name` (a file id, `sha256:…`, or a ref) from the server into
/// `store` and writes it to `output`: a regular file atomically (a temp
/// file, fsync'd, renamed over it; through a symbolic link, the file it
/// leads to); `-` (standard output), a device or a FIFO written through
/// once the file is verified and registered, never replaced.
pub async fn pull(
    client: &Client,
    store: &Store,
    name: &str,
    output: &Path,
    progress: Arc<dyn Progress>,
) -> ClientResult<PullReport> {
    let requests_before = client.requests();
    let retries_before = client.retries();
    if name.is_empty() {
        return Err(ClientError::Usage(
            "no file named: give a file id, sha256:HEX or a ref".into(),
        ));
    }
    let dest = Destination::of(output)?;
    let resp = client.reconstruction(name).await?;
    let rec = resp.reconstruction;
    let rec_url = client.url(&format!(
        "/v1/reconstructions/{}",
        crate::protocol::encode_segment(name)
    ));
    check_reconstruction(&rec, name, &rec_url)?;
    let (st, r) = (store.clone(), rec.clone());
    let have_file = blocking(move || st.contains(&r.file_id)).await?;
    if have_file {
        // Stored already, perhaps under another policy: the local store's
        // policy applies to what this pull writes out, as to a download.
        let (st, f) = (store.clone(), rec.file_id);
        blocking(move || st.check_policy(&f)).await?;
    }
    // The download directory, held (locked) for this run: part files and
    // the output being assembled. None is needed for a file stored already.
    let fixed = dest.download_dir(&rec.file_id)?;
    let (dir, held) = if have_file {
        (fixed, None)
    } else {
        let d = dest.clone();
        let held = worker(move || take_download_dir(&d, fixed)).await??;
        (held.dir.clone(), Some(held))
    };
    let shared = Arc::new(Shared {
        client: client.clone(),
        name: name.to_string(),
        file: rec.file_id,
        dir: dir.clone(),
        urls: tokio::sync::Mutex::new((resp.pack_urls, 0)),
        downloaded: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        progress: progress.clone(),
    });

    let mut report = PullReport {
        file_id: rec.file_id,
        sha256: rec.sha256,
        size: rec.size,
        bytes_downloaded: 0,
        bytes_resumed: 0,
        bytes_reused: rec.size,
        chunks_downloaded: 0,
        chunks_reused: rec
            .chunks()
            .map(|(_, c)| c.id)
            .collect::<HashSet<_>>()
            .len() as u64,
        requests: 0,
        retries: 0,
        output: output.display().to_string(),
        download_secs: 0.0,
        register_secs: 0.0,
        write_secs: 0.0,
    };
    let assembled = if have_file {
        None
    } else {
        let t0 = Instant::now();
        let mut rec = rec.clone();
        let mut round = 0u32;
        let assembly = loop {
            let c = client.options();
            let (st, r, gap, max) = (store.clone(), rec.clone(), c.gap, c.max_request);
            let plan = blocking(move || st.plan_download(&r, gap, max)).await?;
            if round == 0 {
                report.bytes_reused = plan.reused_bytes;
                report.chunks_reused = plan.reused_chunks;
                report.chunks_downloaded = plan.fetch_chunks;
                progress.start("download", plan.fetch_bytes);
            }
            let out = TempOutput::in_dir(dest.path(), &dir);
            let file = out.file()?;
            let parts = existing_parts(&dir).await?;
            let (st, r, p) = (store.clone(), rec.clone(), plan.clone());
            let assembly = Arc::new(blocking(move || st.assemble(&r, &p, file)).await?);
            let fetches = split_at_parts(plan.fetches, &parts);
            let resumed = Arc::new(AtomicU64::new(0));
            let gone = Arc::new(AtomicBool::new(false));
            futures_util::stream::iter(fetches.into_iter().map(Ok::<_, ClientError>))
                .try_for_each_concurrent(c.parallel.max(1), |f| {
                    let (sh, resumed, a) = (shared.clone(), resumed.clone(), assembly.clone());
                    let gone = gone.clone();
                    async move {
                        if gone.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        if fetch_one(&sh, &a, f, &resumed).await? == Fetched::PackGone {
                            gone.store(true, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                })
                .await?;
            report.bytes_resumed += resumed.load(Ordering::Relaxed);
            if !gone.load(Ordering::Relaxed) {
                break (assembly, out);
            }
            // A pack this plan reads was repacked away: what was fetched
            // is in the local store; plan the rest from a fresh
            // reconstruction (its packs, its URLs).
            round += 1;
            if round > 3 {
                return Err(ClientError::Protocol {
                    url: rec_url,
                    detail: "the file's packs were repacked away three times during the pull"
                        .into(),
                });
            }
            drop(assembly);
            drop(out);
            let resp = client.reconstruction(name).await?;
            check_reconstruction(&resp.reconstruction, name, &rec_url)?;
            if resp.reconstruction.file_id != rec.file_id {
                return Err(ClientError::Protocol {
                    url: rec_url,
                    detail: format!(
                        "{name} now names file {}, not {} (it changed during the pull; run it again)",
                        resp.reconstruction.file_id, rec.file_id
                    ),
                });
            }
            rec = resp.reconstruction;
            shared.replace_urls(resp.pack_urls).await;
        };
        let (assembly, out) = assembly;
        progress.finish();
        report.download_secs = t0.elapsed().as_secs_f64();
        // Every range is in: the SHA-256 must be the one the server named
        // before the file is registered and the output fsync'd.
        let t0 = Instant::now();
        let assembly = Arc::into_inner(assembly)
            .ok_or_else(|| ClientError::Usage("the assembly is still in use".into()))?;
        let registered = worker(move || assembly.finish(&[])).await?;
        let put = registered.map_err(|e| match e {
            e @ tessera::Error::Rejected { .. } => ClientError::Protocol {
                url: rec_url.clone(),
                detail: format!("the server's reconstruction does not hold up: {e}"),
            },
            e => ClientError::Engine(e),
        })?;
        report.register_secs = t0.elapsed().as_secs_f64();
        Some((put.sha256, out))
    };
    let t0 = Instant::now();
    let sha = match &assembled {
        Some((sha, _)) => *sha,
        None => {
            let (st, id) = (store.clone(), rec.file_id);
            blocking(move || Ok(st.info(&id)?.sha256)).await?
        }
    };
    if let Some(want) = asked_sha256(name) {
        if want != sha {
            return Err(ClientError::Protocol {
                url: rec_url,
                detail: format!(
                    "asked for sha256 {want}, the server sent a file whose sha256 is {sha}"
                ),
            });
        }
    }
    report.sha256 = sha;
    let (st, id, p) = (store.clone(), rec.file_id, progress.clone());
    tokio::task::spawn_blocking(move || match (assembled, dest) {
        // Assembled, fsync'd: put in place.
        (Some((_, out)), Destination::File(_)) => out.finish_synced(),
        // Assembled: written through (the temp file goes when `out` does).
        (Some((_, out)), dest) => {
            let mut tmp = open_nofollow(&out.tmp)?;
            let mut w = dest.open()?;
            std::io::copy(&mut tmp, &mut w).map_err(|e| ClientError::io(dest.path(), e))?;
            w.flush().map_err(|e| ClientError::io(dest.path(), e))
        }
        (None, Destination::File(path)) => {
            let out = TempOutput::create(&path);
            let mut file = out.file()?;
            p.start("write", rec.size);
            copy_from_store(&st, &id, &mut file, &out.tmp, p.as_ref())?;
            p.finish();
            out.finish(file)
        }
        (None, dest) => {
            let mut w = dest.open()?;
            p.start("write", rec.size);
            copy_from_store(&st, &id, &mut w, dest.path(), p.as_ref())?;
            p.finish();
            w.flush().map_err(|e| ClientError::io(dest.path(), e))
        }
    })
    .await
    .map_err(|e| ClientError::Usage(format!("writing the output failed: {e}")))??;
    report.write_secs = t0.elapsed().as_secs_f64();
    // Only a directory this run holds: another pull may be using the one
    // beside the output of a file stored already.
    if held.is_some() {
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| ClientError::io(&dir, e))?;
    }
    report.bytes_downloaded = shared.downloaded.load(Ordering::Relaxed);
    report.retries = shared.retries.load(Ordering::Relaxed) + client.retries() - retries_before;
    report.requests = client.requests() - requests_before;
    Ok(report)
}

/// Runs `f` on the blocking pool; a worker that panicked is an error.
async fn worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ClientResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Usage(format!("a worker failed: {e}")))
}

/// [`worker`] for an engine call.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tessera::Result<T> + Send + 'static,
) -> ClientResult<T> {
    worker(f).await?.map_err(ClientError::Engine)
}

/// The SHA-256 a name asks for, when it is `sha256:HEX`.
fn asked_sha256(name: &str) -> Option<Sha256> {
    name.strip_prefix("sha256:").and_then(Sha256::from_hex)
}

/// A reconstruction must describe the whole file, hold together, and be of
/// the file asked for when the name is an id.
fn check_reconstruction(rec: &Reconstruction, name: &str, url: &str) -> ClientResult<()> {
    let bad = |detail: String| ClientError::Protocol {
        url: url.to_string(),
        detail,
    };
    rec.check().map_err(|e| bad(e.to_string()))?;
    if !rec.is_whole_file() {
        return Err(bad("the reconstruction is not of the whole file".into()));
    }
    let id = name.strip_prefix("file:").unwrap_or(name);
    if let Some(want) = FileId::from_hex(id) {
        // A bare 64-hex name is a file id or a sha256 (checked once the
        // content is verified).
        let bare_sha = !name.starts_with("file:") && Sha256(want.0) == rec.sha256;
        if want != rec.file_id && !bare_sha {
            return Err(bad(format!(
                "asked for file {want}, got the reconstruction of {}",
                rec.file_id
            )));
        }
    }
    Ok(())
}

/// Part files in the download directory: (pack, start) → length.
async fn existing_parts(dir: &Path) -> ClientResult<HashSet<(PackId, u64)>> {
    let mut out = HashSet::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(ClientError::io(dir, e)),
    };
    while let Some(e) = rd.next_entry().await.map_err(|e| ClientError::io(dir, e))? {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".part")) else {
            continue;
        };
        let Some((pack, start)) = stem.split_once('-') else {
            continue;
        };
        if let (Some(p), Ok(s)) = (PackId::from_hex(pack), start.parse::<u64>()) {
            out.insert((p, s));
        }
    }
    Ok(out)
}

/// Splits planned requests where an earlier run's part file starts, so that
/// each part file is the prefix of a request and only its remainder is
/// fetched.
fn split_at_parts(fetches: Vec<Fetch>, parts: &HashSet<(PackId, u64)>) -> Vec<Fetch> {
    let mut out = Vec::with_capacity(fetches.len());
    for f in fetches {
        let mut cur: Option<Fetch> = None;
        for c in f.chunks {
            let split = cur.is_some() && parts.contains(&(f.pack, c.offset));
            if split {
                out.extend(cur.take());
            }
            let end = c.offset + c.record_len;
            match &mut cur {
                Some(x) => {
                    x.end = x.end.max(end);
                    x.chunks.push(c);
                }
                None => {
                    cur = Some(Fetch {
                        pack: f.pack,
                        start: c.offset,
                        end,
                        chunks: vec![c],
                    })
                }
            }
        }
        out.extend(cur);
    }
    out
}

impl Shared {
    async fn url_for(&self, pack: &PackId) -> ClientResult<(String, u64)> {
        let g = self.urls.lock().await;
        let path = g.0.get(pack).ok_or_else(|| ClientError::Protocol {
            url: self.client.url("/v1/reconstructions/…"),
            detail: format!("no URL for pack {pack} in the reconstruction"),
        })?;
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.clone()
        } else if path.starts_with('/') {
            self.client.url(path)
        } else {
            return Err(ClientError::Protocol {
                url: self.client.url("/v1/reconstructions/…"),
                detail: format!("pack URL {path:?} is neither absolute nor a path"),
            });
        };
        Ok((url, g.1))
    }

    /// Whether the current pack URLs name `pack`.
    async fn has_url(&self, pack: &PackId) -> bool {
        self.urls.lock().await.0.contains_key(pack)
    }

    /// Takes the pack URLs of a fresh reconstruction.
    async fn replace_urls(&self, urls: BTreeMap<PackId, String>) {
        let mut g = self.urls.lock().await;
        g.0 = urls;
        g.1 += 1;
    }

    /// Fetches the reconstruction again for fresh pack URLs, unless another
    /// task already did since generation `seen`.
    async fn refresh(&self, seen: u64) -> ClientResult<()> {
        let mut g = self.urls.lock().await;
        if g.1 != seen {
            return Ok(());
        }
        let resp = self.client.reconstruction(&self.name).await?;
        if resp.reconstruction.file_id != self.file {
            return Err(ClientError::Protocol {
                url: self.client.url("/v1/reconstructions/…"),
                detail: format!(
                    "{} now names file {}, not {} (it changed during the pull; run it again)",
                    self.name, resp.reconstruction.file_id, self.file
                ),
            });
        }
        g.0 = resp.pack_urls;
        g.1 += 1;
        Ok(())
    }
}

/// How a planned range ended.
#[derive(Debug, PartialEq, Eq)]
enum Fetched {
    /// Verified and added to the assembly.
    Done,
    /// Its pack is gone from the server (repacked away since the plan):
    /// the rest must be planned again.
    PackGone,
}

/// One planned range: download (resuming), verify, add to the assembly
/// (admitted into the store, written to the output); retried.
async fn fetch_one(
    sh: &Shared,
    assembly: &Arc<Assembly>,
    f: Fetch,
    resumed: &AtomicU64,
) -> ClientResult<Fetched> {
    let part = sh.dir.join(format!("{}-{}.part", f.pack, f.start));
    let opts = sh.client.options();
    let (mut attempt, mut refreshes, mut refetched) = (0u32, 0u32, false);
    // Bytes an earlier run left in the part file: shown as progress now,
    // counted as resumed once they verify (not when a damaged part is
    // thrown away).
    let mut kept = match tokio::fs::metadata(&part).await {
        Ok(m) => m.len().min(f.len()),
        Err(_) => 0,
    };
    sh.progress.advance(kept);
    loop {
        match download_range(sh, &f, &part).await {
            Ok(bytes) => {
                let (f2, a) = (f.clone(), assembly.clone());
                // Verified, then added (the outer result is the check's).
                let verified =
                    worker(move || verify_fetched(&f2, &bytes).map(|chunks| a.add(&chunks)))
                        .await?;
                match verified {
                    Ok(added) => {
                        added.map_err(ClientError::Engine)?;
                        remove_part(&part).await?;
                        resumed.fetch_add(kept, Ordering::Relaxed);
                        return Ok(Fetched::Done);
                    }
                    Err(e) if !refetched => {
                        // Damaged in transit or on disk: fetch it whole once more.
                        tracing::warn!(error = %e, "a fetched range failed verification; fetching it again");
                        remove_part(&part).await?;
                        refetched = true;
                        kept = 0;
                    }
                    Err(e) => {
                        remove_part(&part).await?;
                        let (url, _) = sh.url_for(&f.pack).await?;
                        return Err(ClientError::Protocol {
                            url,
                            detail: format!("twice, the bytes received failed verification: {e}"),
                        });
                    }
                }
            }
            Err(RangeFail::Refresh(seen, _)) if refreshes < 3 => {
                refreshes += 1;
                sh.refresh(seen).await?;
                if !sh.has_url(&f.pack).await {
                    return Ok(Fetched::PackGone);
                }
            }
            Err(RangeFail::Refresh(_, e)) => {
                let (url, _) = sh.url_for(&f.pack).await?;
                let detail = if e.status() == Some(StatusCode::NOT_FOUND) {
                    format!(
                        "the server's reconstruction names pack {} but the server does not \
                         find it, after three fresh reconstructions ({e}): the pack is lost or \
                         damaged on the server (`tessera verify` there)",
                        f.pack
                    )
                } else {
                    format!("the server refused fresh pack URLs three times ({e})")
                };
                return Err(ClientError::Protocol { url, detail });
            }
            Err(RangeFail::Error(e)) if e.is_transient() && attempt < opts.retries => {
                let wait = sh.client.backoff(attempt);
                tracing::warn!(error = %e, "retrying in {:.1} s (resuming)", wait.as_secs_f64());
                sh.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(RangeFail::Error(e)) => return Err(e),
        }
    }
}

async fn remove_part(part: &Path) -> ClientResult<()> {
    match tokio::fs::remove_file(part).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClientError::io(part, e)),
    }
}

/// Brings the part file of `f` to its full length (fetching what it lacks)
/// and returns its bytes.
async fn download_range(sh: &Shared, f: &Fetch, part: &Path) -> Result<Bytes, RangeFail> {
    let len = f.len();
    let io = |e| ClientError::io(part, e);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(NOFOLLOW)
        .open(part)
        .await
        .map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    {
        // A part file is this pull's own: one with other names (a hard
        // link planted to another file) would have that file written.
        use std::os::unix::fs::MetadataExt;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(RangeFail::Error(ClientError::io(
                part,
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "not a part file this pull made (not a plain file, or linked elsewhere); \
                     remove it",
                ),
            )));
        }
    }
    let on_disk = meta.len();
    let have = on_disk.min(len);
    let mut buf = BytesMut::with_capacity(len as usize);
    if have > 0 {
        buf.resize(have as usize, 0);
        file.read_exact(&mut buf).await.map_err(io)?;
    }
    if on_disk != have {
        file.set_len(have).await.map_err(io)?;
    }
    if have == len {
        return Ok(buf.freeze());
    }
    // Appended to from blocking tasks, the received pieces handed over as
    // they are (no copy into a tokio buffer).
    let file = Arc::new(file.into_std().await);
    let append = |pieces: Vec<Bytes>, sync: bool| {
        let (file, part) = (file.clone(), part.to_path_buf());
        async move {
            worker(move || {
                let mut f: &std::fs::File = &file;
                for p in &pieces {
                    f.write_all(p)?;
                }
                if sync {
                    f.sync_data()?;
                }
                Ok(())
            })
            .await?
            .map_err(|e| ClientError::io(&part, e))
        }
    };
    let (url, generation) = sh.url_for(&f.pack).await?;
    let (from, to) = (f.start + have, f.end - 1);
    let stall = sh.client.options().stall_timeout;
    let resp = sh
        .client
        .send_as(
            Method::GET,
            &url,
            |r| r.header(reqwest::header::RANGE, format!("bytes={from}-{to}")),
            stall,
            false,
        )
        .await;
    let mut resp = match resp {
        // An expired URL, or a pack the server repacked away since the
        // reconstruction: fetch it again (a file that is gone then says so).
        Err(e)
            if e.status() == Some(StatusCode::FORBIDDEN)
                || e.status() == Some(StatusCode::NOT_FOUND) =>
        {
            return Err(RangeFail::Refresh(generation, e))
        }
        r => r?,
    };
    let proto = |detail: String| {
        RangeFail::Error(ClientError::Protocol {
            url: url.clone(),
            detail,
        })
    };
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Err(proto(format!(
            "asked for bytes {from}-{to}, got {} instead of 206",
            resp.status()
        )));
    }
    let cr = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let want_prefix = format!("bytes {from}-{to}/");
    if !cr.starts_with(&want_prefix) {
        return Err(proto(format!(
            "asked for bytes {from}-{to}, the answer's Content-Range is {cr:?}"
        )));
    }
    let mut pending = 0usize;
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut last_sync = Instant::now();
    let result: Result<(), RangeFail> = async {
        loop {
            let next = tokio::time::timeout(stall, resp.chunk()).await;
            let chunk = match next {
                Err(_) => {
                    return Err(RangeFail::Error(ClientError::Network {
                        method: Method::GET,
                        url: url.clone(),
                        detail: format!(
                            "stalled: no data for {} s ({} of {} bytes of the range received)",
                            stall.as_secs(),
                            buf.len(),
                            len
                        ),
                    }))
                }
                Ok(Err(e)) => {
                    return Err(RangeFail::Error(ClientError::Network {
                        method: Method::GET,
                        url: url.clone(),
                        detail: format!(
                            "the answer broke off after {} of {} bytes: {}",
                            buf.len(),
                            len,
                            super::describe(&e)
                        ),
                    }))
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if buf.len() as u64 + chunk.len() as u64 > len {
                return Err(proto(format!(
                    "the answer is longer than the {len} bytes asked for"
                )));
            }
            buf.extend_from_slice(&chunk);
            pending += chunk.len();
            sh.downloaded
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            sh.progress.advance(chunk.len() as u64);
            pieces.push(chunk);
            if pending >= WRITE_EVERY {
                let sync = last_sync.elapsed() >= SYNC_EVERY;
                append(std::mem::take(&mut pieces), sync).await?;
                pending = 0;
                if sync {
                    last_sync = Instant::now();
                }
            }
        }
        Ok(())
    }
    .await;
    // Whatever arrived is kept for the next attempt, even on failure
    // (then made durable).
    if pending > 0 || result.is_err() {
        append(pieces, result.is_err()).await?;
    }
    result?;
    if buf.len() as u64 != len {
        return Err(RangeFail::Error(ClientError::Network {
            method: Method::GET,
            url,
            detail: format!("the answer ended after {} of {len} bytes", buf.len()),
        }));
    }
    Ok(buf.freeze())
}

/// An output written atomically: a temp file in the same directory,
/// fsync'd, renamed over the output, the directory fsync'd. Dropped
/// unfinished, the temp file is removed.
struct TempOutput {
    tmp: PathBuf,
    output: PathBuf,
    parent: PathBuf,
    done: bool,
}

impl TempOutput {
    fn create(output: &Path) -> TempOutput {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = parent_of(output);
        let tmp = parent.join(format!(".{name}.tessera-tmp-{}", std::process::id()));
        TempOutput::at(tmp, output)
    }

    /// A temp file in the download directory `dir` (beside the output):
    /// what a killed run leaves of it goes with that directory.
    fn in_dir(output: &Path, dir: &Path) -> TempOutput {
        TempOutput::at(dir.join("output.tmp"), output)
    }

    fn at(tmp: PathBuf, output: &Path) -> TempOutput {
        TempOutput {
            tmp,
            output: output.to_path_buf(),
            parent: parent_of(output),
            done: false,
        }
    }

    /// The temp file, created empty: whatever was at its path before
    /// (an earlier run's, or a link planted there) is removed, and the file
    /// is created new, so no write goes through a link.
    fn file(&self) -> ClientResult<std::fs::File> {
        let io = |e| ClientError::io(&self.tmp, e);
        match std::fs::remove_file(&self.tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.tmp)
            .map_err(io)
    }

    /// Makes `file` durable and puts it in place.
    fn finish(self, file: std::fs::File) -> ClientResult<()> {
        file.sync_all().map_err(|e| ClientError::io(&self.tmp, e))?;
        drop(file);
        self.finish_synced()
    }

    /// Puts the temp file, durable already, in place.
    fn finish_synced(mut self) -> ClientResult<()> {
        std::fs::rename(&self.tmp, &self.output).map_err(|e| ClientError::io(&self.output, e))?;
        self.done = true;
        if let Ok(d) = std::fs::File::open(&self.parent) {
            d.sync_all().map_err(|e| ClientError::io(&self.parent, e))?;
        }
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The directory of `path` (`.` for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes a file the store holds to `f` (`tmp` names it in errors).
fn copy_from_store(
    store: &Store,
    id: &FileId,
    f: &mut dyn Write,
    tmp: &Path,
    progress: &dyn Progress,
) -> ClientResult<()> {
    let mut reader = store.read(id)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf)
            .map_err(|e| ClientError::Engine(tessera::unwrap_io(e)))?;
        if n == 0 {
            return Ok(());
        }
        f.write_all(&buf[..n])
            .map_err(|e| ClientError::io(tmp, e))?;
        progress.advance(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera::{ChunkId, ReconChunk};

    fn chunk(offset: u64, len: u64) -> ReconChunk {
        ReconChunk {
            id: ChunkId::of(&offset.to_le_bytes()),
            len: 1,
            offset,
            record_len: len,
        }
    }

    #[test]
    fn parts_split_requests_at_record_starts() {
        let pack = PackId([1; 32]);
        let f = Fetch {
            pack,
            start: 16,
            end: 400,
            chunks: vec![chunk(16, 100), chunk(116, 100), chunk(300, 100)],
        };
        let parts: HashSet<_> = [(pack, 116u64), (PackId([2; 32]), 300)].into();
        let out = split_at_parts(vec![f], &parts);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].start, out[0].end, out[0].chunks.len()),
            (16, 116, 1)
        );
        assert_eq!(
            (out[1].start, out[1].end, out[1].chunks.len()),
            (116, 400, 2)
        );
        // A part at the first record splits nothing.
        let f = Fetch {
            pack,
            start: 116,
            end: 216,
            chunks: vec![chunk(116, 100)],
        };
        assert_eq!(split_at_parts(vec![f.clone()], &parts), vec![f]);
    }

    #[test]
    fn download_dir_is_beside_the_output() {
        assert_eq!(
            download_dir(Path::new("/x/y/model.bin")).expect("dir"),
            PathBuf::from("/x/y/.model.bin.tessera-pull")
        );
        assert_eq!(
            download_dir(Path::new("model.bin")).expect("dir"),
            PathBuf::from("./.model.bin.tessera-pull")
        );
        assert!(download_dir(Path::new("/")).is_err());
    }
}
