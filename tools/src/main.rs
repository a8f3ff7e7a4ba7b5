//! `tessera`: the command line of the Tessera chunk store.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use location::Location;
use tessera::{Error, Store, StoreOptions};
use tessera_http::client::ClientError;

/// `eprintln!` for messages to people that ignores a closed or failing
/// stderr (`tessera ... 2>&1 | head`): `eprintln!` would panic there, and a
/// panic skips closing the store.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod demo;
mod inspect;
mod location;
mod maintain;
mod pull;
mod push;
mod put;
mod remote;
mod serve;

/// Tessera: a content-addressed chunk store for ML model files.
///
/// Files are split into content-defined chunks, deduplicated across every
/// file, version and repo in the store, compressed when it pays, and packed
/// into immutable pack files. Any file or byte range is rebuilt and verified
/// chunk by chunk.
///
/// Names: a file is named by its file id, by the SHA-256 of its content, or
/// by a ref (`org/model@rev:path`); `file:ID`, `sha256:HEX` and `ref:NAME`
/// say which explicitly. Ref names cannot be 64 hex digits or start with
/// those prefixes, so a name never changes meaning.
///
/// Stores: a directory (`--store DIR` or `file://DIR`), or an S3-compatible
/// bucket (`--store s3://BUCKET/PREFIX`; credentials, region and endpoint
/// from the AWS_* environment variables, e.g. AWS_ENDPOINT_URL and
/// AWS_ALLOW_HTTP=true for a local server). Several processes, on one
/// machine or many, may use one bucket at once, each with its own local
/// cache (--cache): what another wrote is found when asked for, and
/// `refresh` lists the bucket.
///
/// Concurrency: one process at a time opens a store directory or cache (an
/// embedding server reads and writes from many threads at once). A second
/// `tessera` command on the same one fails at once naming the pid that
/// holds it, or waits for it with --wait.
///
/// Exit status: 0 on success, 1 on any error (one line on stderr naming the
/// object), 2 on a usage error, 3 when a named file, sha256 or ref does not
/// exist, 4 when stored data is damaged, 5 when a file is refused by policy
/// (a pickle that imports code: see `put --pickle`), 6 when a conditional
/// ref update (`ref set --expect`) found the ref changed.
#[derive(Parser, Debug)]
#[command(name = "tessera", version, about, long_about)]
struct Cli {
    /// The store: a directory (created by the first `put`, in a new or empty
    /// directory only), file://DIR, or s3://BUCKET/PREFIX.
    #[arg(long, env = "TESSERA_STORE", global = true, value_name = "DIR|URL")]
    store: Option<String>,

    /// Local cache of an s3:// store: its index, lock and staging area
    /// (default: $XDG_CACHE_HOME/tessera/BUCKET/HASH, or ~/.cache/...).
    /// One process at a time uses a cache; give each concurrent process its
    /// own (or use --wait).
    #[arg(long, env = "TESSERA_CACHE", global = true, value_name = "DIR")]
    cache: Option<PathBuf>,

    /// For an s3:// store: list the bucket at open when this node's last
    /// `refresh` is older than SECS (default: only when a command lists).
    #[arg(
        long,
        env = "TESSERA_REFRESH_AFTER",
        global = true,
        value_name = "SECS",
        value_parser = maintain::parse_secs
    )]
    refresh_after: Option<u64>,

    /// Wait for another process to release the store instead of failing
    /// (TESSERA_WAIT: 1, true, yes or on; 0, false, no or off).
    #[arg(
        long,
        env = "TESSERA_WAIT",
        global = true,
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    wait: bool,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Store files, directory trees, or stdin (`-`); prints `<file-id>  <path>`
    /// per file.
    ///
    /// Files are acknowledged (printed) only once their chunks, recipe and
    /// index entries are durable. Small files are grouped into one commit.
    /// A directory is stored file by file (in name order, `.git` skipped,
    /// symlinks to files followed, other special files refused), each named
    /// PREFIX + its path relative to the directory — the way a model
    /// repository is handed over. A file that changes while it is read (size
    /// or modification time differ before and after) is refused; files
    /// before it are still stored.
    Put {
        /// Files, directories, or `-` for stdin.
        #[arg(required = true, value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Name the file with this ref (e.g. `org/model@rev:path`); only with one file or `-`.
        #[arg(long = "ref", value_name = "NAME")]
        ref_name: Option<String>,
        /// Name each file PREFIX + its path as given, or, inside a directory,
        /// + its path relative to that directory (e.g. `org/model@v2:`).
        #[arg(long, value_name = "PREFIX", conflicts_with = "ref_name")]
        ref_prefix: Option<String>,
        /// One JSON object per line: file_id, sha256, path, ref, size,
        /// new_bytes, chunks, new_chunks, new_file.
        #[arg(long)]
        json: bool,
        /// Files containing pickles (code that runs when loaded): `deny-unsafe`
        /// refuses those importing anything but what ordinary checkpoints use
        /// (torch's tensor rebuilding, OrderedDict, numpy arrays…), `deny`
        /// refuses any pickle, `allow` stores them (the verdict is recorded).
        /// A refusal names the file and the imports, and exits with status 5;
        /// of several files, the others are stored, and the run exits 5.
        #[arg(long, value_name = "POLICY", default_value = "deny-unsafe")]
        pickle: tessera::PicklePolicy,
    },
    /// Write a file (or a byte range of it) to stdout.
    ///
    /// Every chunk is verified before any of its bytes are written; on damage
    /// the command stops with an error naming the pack, offset and chunk.
    Cat {
        /// A file id, the sha256 of the content, or a ref.
        name: String,
        /// Start at this byte offset.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Write this many bytes (default: to the end).
        #[arg(long)]
        length: Option<u64>,
        /// Write exactly this tensor's bytes (safetensors, GGUF, ONNX, npy:
        /// names as `info --json` lists them); reads only its chunks.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["offset", "length"])]
        tensor: Option<String>,
    },
    /// List refs (all, or those starting with PREFIX) as `<file-id>  <ref>`.
    /// On a bucket, a ref object that does not decode is reported and the
    /// exit status is 4 (its name is unknown: the list may lack it).
    Refs {
        /// Only refs starting with this.
        prefix: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Set or delete a ref.
    Ref {
        #[command(subcommand)]
        action: RefCmd,
    },
    /// Describe a stored file: size, chunks, packs touched, sha256, and its
    /// model format (safetensors, GGUF, ONNX, PyTorch, pickle, npy/npz,
    /// TFLite or other), tensors and pickle imports as seen at ingest.
    Info {
        /// A file id, the sha256 of the content, or a ref.
        name: String,
        /// Also list every tensor: name, dtype, shape and the bytes of the
        /// file holding it (what `cat --tensor NAME` writes).
        #[arg(long)]
        tensors: bool,
        /// Print JSON: everything, every tensor and every pickle import
        /// included.
        #[arg(long, conflicts_with = "tensors")]
        json: bool,
    },
    /// Store-wide figures: files, refs, chunks, packs, logical and stored bytes.
    Stat {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a synthetic model repository in five versions, store them, print
    /// a dedup table, and read every file back to check it.
    ///
    /// Uses a temporary store unless --store is given on the command line
    /// (TESSERA_STORE is ignored here); a store given must be new or empty,
    /// since the demo deletes refs and collects with no grace period.
    Demo {
        /// Size of the model weights file in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Seed of the synthetic model.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Check the store: structure always; with data reading (the default),
    /// hash every pack against its name and re-hash every chunk.
    ///
    /// Exit 0 only when clean; otherwise every damaged object is listed by
    /// name and the exit status is 4. A read that fails once is retried to
    /// tell a transient error from damage.
    Verify {
        /// Read only this share of packs' data (0-100; sampled by pack id).
        #[arg(long, value_name = "PERCENT", default_value_t = 100.0)]
        sample: f64,
        /// Check structure only; read no chunk data.
        #[arg(long)]
        no_data: bool,
        /// Also read every stored file back whole and check that its bytes
        /// hash to the SHA-256 its recipe records (what `sha256:` names
        /// find). Takes as long as restoring every file.
        #[arg(long, conflicts_with = "no_data")]
        files: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring this node's cache of an s3:// store up to date from a listing
    /// of the bucket: packs, files and refs other processes wrote, refs
    /// they changed or deleted. (Reads find what the cache lacks anyway;
    /// `refs`, `stat` and `verify` refresh first.) Nothing to do for a
    /// directory store.
    Refresh {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete what no ref names: files whose last ref is gone (older than
    /// --grace) and packs no remaining file needs; record each pack's live
    /// bytes for `repack`.
    ///
    /// Runs beside readers; writers wait while it marks. Deletion goes
    /// through a journal, so a crash never brings anything back or loses
    /// what is named. Reclaims whole dead packs only: run `repack` to
    /// reclaim the garbage inside packs that are still partly live.
    ///
    /// On an s3:// store several nodes share, it takes the GC lease (one
    /// collector at a time), marks from the bucket, publishes what it
    /// condemns, waits --writer-window while other nodes' writers learn of
    /// it, marks again and deletes only what is still dead (spec §10.6).
    Gc(maintain::GcArgs),
    /// Run `gc`, then rewrite packs that are mostly garbage (and combine
    /// small ones) into new packs holding only live chunks, ordered as files
    /// read them; then delete the old packs.
    ///
    /// Every copied chunk is decoded and re-hashed first; a pack with a
    /// chunk that does not verify is left alone (exit 4). Readers in flight
    /// keep working.
    Repack(maintain::RepackArgs),
    /// Repair the store.
    Repair {
        #[command(subcommand)]
        what: RepairCmd,
    },
    /// Serve the store over HTTP (the protocol of format-spec/PROTOCOL.md):
    /// files with Range, reconstructions with signed pack URLs, uploads, refs.
    ///
    /// Without --tokens every request is allowed, so only a loopback address
    /// is accepted. Stops cleanly on SIGINT or SIGTERM. Logs one line per
    /// request (TESSERA_LOG=warn to quiet it).
    Serve(serve::ServeArgs),
    /// Download a file from a server, fetching only the chunks the local
    /// store (--store, created if new, the server's chunking) lacks.
    ///
    /// Every chunk is verified before it is kept; the output is written
    /// atomically. An interrupted pull, run again, fetches only what it had
    /// not received (partial ranges are kept beside the output in
    /// .NAME.tessera-pull/).
    Pull(pull::PullArgs),
    /// Upload files or directories to a server, sending only the chunks it
    /// lacks, and point refs at them.
    ///
    /// The files are stored in the local store (--store) first; a directory
    /// pushes every file under it, each named PREFIX + its relative path.
    Push(push::PushArgs),
    /// Write the demo's synthetic repository to DIR as ordinary files
    /// (DIR/<repo>/<rev>/<file>), for benchmarks and experiments.
    Synth {
        /// Output directory (created).
        dir: PathBuf,
        /// Size of the model weights file in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Seed of the synthetic model.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[derive(Subcommand, Debug)]
enum RepairCmd {
    /// Rebuild the whole index from the packs, recipe files and ref files.
    ///
    /// First, recipe and ref files that are missing or damaged are rewritten
    /// from the current index's verified copies (HEALED lines); then the
    /// index is deleted and rebuilt; then the chunks that verify in packs
    /// that do not open are re-packed, and so are those of a pack found
    /// under another pack's name (it lands under its own), the files as
    /// found kept under damaged/; last, model descriptions that do not
    /// check (damaged, or written by an older version) are recomputed from
    /// their files. What cannot be recovered is listed (UNRECOVERED lines,
    /// exit 4); everything else is recovered.
    ///
    /// Rarely needed by hand: every open already catches the index up with
    /// the files after a crash, or when sled reports damage or comes back
    /// older than the last clean close (logged as a warning). Run it when
    /// `verify` reports damaged recipe, ref or pack files, or index errors.
    ///
    /// On an s3:// store it rebuilds this node's cache from a listing of the
    /// bucket alone (every pack's footer checked, every recipe and ref
    /// read); the bucket's objects are never rewritten from the cache.
    Index {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the config (`tessera.store`) of a store that lost it or whose
    /// config is corrupt (directory stores only).
    ///
    /// The chunking parameters are checked first: the leading chunks of
    /// several stored files are read back and re-chunked, and every boundary
    /// must fall where the store has it. Nothing is written otherwise.
    Config {
        /// Chunking parameters the store was created with: MIN,AVG,MAX[,NORMALIZATION]
        /// in bytes (the default store uses 16384,65536,262144,1).
        #[arg(
            long,
            value_name = "MIN,AVG,MAX[,N]",
            default_value = "16384,65536,262144,1"
        )]
        chunking: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RefCmd {
    /// Point NAME at a file (by id, sha256 or another ref).
    ///
    /// On an s3:// store the write is conditional on what the ref was just
    /// before (retried on the new state if another process got in between),
    /// so no update is overwritten unseen; with --expect it fails instead
    /// (exit 6) unless the ref still names the expected file.
    Set {
        /// The ref name.
        name: String,
        /// The file.
        target: String,
        /// Only if NAME names this file now (a file id, sha256 or ref), or
        /// `none`: only if NAME does not exist. Otherwise exit 6, nothing
        /// written.
        #[arg(long, value_name = "FILE|none")]
        expect: Option<String>,
    },
    /// Delete NAME (also a damaged ref the index no longer lists: that is
    /// how its loss is acknowledged).
    Rm {
        /// The ref name.
        name: String,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The demo deletes refs and collects with no grace period: it works on
    // a store named on its command line, never on the one the environment
    // names for everyday use.
    if matches!(cli.cmd, Cmd::Demo { .. })
        && matches.value_source("store") == Some(ValueSource::EnvVariable)
    {
        cli.store = None;
    }
    // A server logs its requests; other commands only warnings.
    let default_level = match cli.cmd {
        Cmd::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        // Its report of a failed write is an `eprintln!`, which panics on a
        // closed stderr: a log line that cannot be written is dropped.
        .log_internal_errors(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            say!("tessera: error: {}", printable(&e.to_string(), true));
            ExitCode::from(e.exit_code())
        }
    }
}

#[derive(Debug)]
pub(crate) enum CliError {
    Engine(Error),
    Usage(String),
    File(PathBuf, io::Error),
    Output(io::Error),
    BrokenPipe,
    Check(String),
    Damaged(String),
    /// Some of several inputs refused by a policy (exit 5).
    Refused(String),
    Remote(tessera_http::client::ClientError),
    /// An error, and what the command was doing (its exit status is the
    /// error's).
    While(String, Box<CliError>),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Engine(e) => write!(f, "{e}"),
            CliError::Usage(s) => write!(f, "{s}"),
            CliError::File(p, e) => write!(f, "{}: {e}", p.display()),
            CliError::Output(e) => write!(f, "writing output: {e}"),
            CliError::BrokenPipe => write!(f, "broken pipe"),
            CliError::Check(s) | CliError::Damaged(s) | CliError::Refused(s) => write!(f, "{s}"),
            CliError::Remote(e) => write!(f, "{e}"),
            CliError::While(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::While(_, e) => e.exit_code(),
            // A value the engine refused (a writer window too short for
            // the writer check, a bad id, ...) is a usage error too.
            CliError::Usage(_) | CliError::Engine(Error::InvalidArgument(_)) => 2,
            CliError::Damaged(_) => 4,
            CliError::Refused(_) => 5,
            CliError::Engine(Error::Refused { .. }) => 5,
            CliError::Engine(Error::RefConflict { .. }) => 6,
            CliError::Engine(e) if e.is_not_found() => 3,
            CliError::Engine(e) if e.is_corruption() => 4,
            CliError::Remote(ClientError::Engine(e)) if e.is_corruption() => 4,
            CliError::Remote(ClientError::Usage(_)) => 2,
            CliError::Remote(ClientError::Http { code, .. })
                if code == "bad_request" || code == "no_endpoint" =>
            {
                2
            }
            CliError::Remote(ClientError::Http { code, .. }) if code == "refused_by_policy" => 5,
            // The server's stored data is damaged.
            CliError::Remote(ClientError::Http { code, .. }) if code == "damaged" => 4,
            CliError::Remote(e)
                if e.status() == Some(tessera_http::client::StatusCode::NOT_FOUND) =>
            {
                3
            }
            _ => 1,
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Engine(e)
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Engine(e) => CliError::Engine(e),
            e => CliError::Remote(e),
        }
    }
}

/// `s` for a terminal: control characters (an escape sequence, a newline
/// in a file name or in a name read from a file) written as `\u{1b}`, so
/// what is printed cannot restyle the terminal or forge a line of output.
/// With `lines`, newlines are kept (messages of several lines).
pub(crate) fn printable(s: &str, lines: bool) -> std::borrow::Cow<'_, str> {
    let escape = |c: char| c.is_control() && !(lines && c == '\n');
    if !s.chars().any(escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

pub(crate) fn out_err(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return CliError::BrokenPipe;
    }
    // Errors raised by the engine inside a reader come back as engine errors.
    match tessera::unwrap_io(e) {
        Error::Io { source, .. } => CliError::Output(source),
        other => CliError::Engine(other),
    }
}

pub(crate) type CliResult<T = ()> = Result<T, CliError>;

/// `--refresh-after`, set once by `run`.
static REFRESH_AFTER: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// The options every command opens a store with. `TESSERA_PACK_TARGET_BYTES`
/// sets the size new packs are sealed at (default 64 MiB; tests use small
/// packs to get many). `TESSERA_READ_MODE=pread` reads packs with `pread`
/// instead of mapping them (a mapped pack's pages count in the process's
/// RSS while it stays in the pack cache).
pub(crate) fn store_options(create: bool) -> StoreOptions {
    let d = StoreOptions::default();
    let read_mode = match std::env::var("TESSERA_READ_MODE").as_deref() {
        Ok("pread") => tessera::ReadMode::Pread,
        Ok("mmap") | Ok("") | Err(_) => tessera::ReadMode::Mmap,
        Ok(other) => {
            say!("tessera: warning: TESSERA_READ_MODE={other:?} is not mmap or pread; using mmap");
            tessera::ReadMode::Mmap
        }
    };
    StoreOptions {
        create,
        read_mode,
        refresh_after: REFRESH_AFTER.get().copied(),
        pack_target_bytes: std::env::var("TESSERA_PACK_TARGET_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &u64| n >= 4096)
            .unwrap_or(d.pack_target_bytes),
        ..d
    }
}

/// Opens the store; with `wait`, waits for another process to release it.
/// Says on stderr what the open had to repair and what it could not.
pub(crate) fn open_store(loc: &Location, create: bool, wait: bool) -> CliResult<Store> {
    open_store_with(loc, store_options(create), wait)
}

pub(crate) fn open_store_with(loc: &Location, opts: StoreOptions, wait: bool) -> CliResult<Store> {
    let store = match loc.open(opts.clone()) {
        Err(CliError::Engine(Error::StoreLocked { pid, .. })) if wait => {
            say!(
                "tessera: waiting for pid {pid} to release the store {}",
                loc.display()
            );
            loc.open(StoreOptions {
                lock_wait: Some(std::time::Duration::MAX),
                ..opts
            })?
        }
        Err(CliError::Engine(e @ Error::StoreLocked { .. })) => {
            return Err(CliError::Check(format!("{e}; pass --wait to wait for it")))
        }
        r => r?,
    };
    if let Some(rec) = store.recovery() {
        let rep = &rec.report;
        if !rep.problems.is_empty() {
            say!(
                "tessera: warning: the index was caught up with the store's files ({}), but {} damaged objects could not be recovered (first: {}: {}); run `tessera verify` for the list",
                rec.reason,
                rep.problems.len(),
                rep.problems[0].object,
                rep.problems[0].detail
            );
        }
    }
    Ok(store)
}

fn run(cli: Cli) -> CliResult {
    if let Some(secs) = cli.refresh_after {
        let _ = REFRESH_AFTER.set(std::time::Duration::from_secs(secs));
    }
    let (store_arg, cache_arg) = (cli.store.clone(), cli.cache.clone());
    let loc = || Location::parse(store_arg.as_deref(), cache_arg.as_deref());
    match cli.cmd {
        Cmd::Put {
            files,
            ref_name,
            ref_prefix,
            json,
            pickle,
        } => {
            let inputs = put::inputs(&files, ref_name, ref_prefix)?;
            let opts = StoreOptions {
                pickle_policy: pickle,
                ..store_options(true)
            };
            let store = open_store_with(&loc()?, opts, cli.wait)?;
            put::put(&store, &inputs, json)
        }
        Cmd::Cat {
            name,
            offset,
            length,
            tensor,
        } => {
            let store = open_store(&loc()?, false, cli.wait)?;
            inspect::cat(&store, &name, offset, length, tensor.as_deref())
        }
        Cmd::Refs { prefix, json } => {
            let store = open_store(&loc()?, false, cli.wait)?;
            // A shared store: list what other nodes wrote too.
            let refreshed = store.refresh()?;
            let mut out = BufWriter::new(io::stdout().lock());
            for (name, id) in store.list_refs(prefix.as_deref().unwrap_or(""))? {
                if json {
                    let v = serde_json::json!({"ref": name, "file_id": id.to_hex()});
                    writeln!(out, "{v}").map_err(out_err)?;
                } else {
                    writeln!(out, "{id}  {}", printable(&name, false)).map_err(out_err)?;
                }
            }
            out.flush().map_err(out_err)?;
            // A ref object that does not decode hides its name (the key is
            // a hash of it): the list may lack it, which is damage.
            match refreshed.unreadable_refs.as_slice() {
                [] => Ok(()),
                [p, rest @ ..] => Err(CliError::Damaged(format!(
                    "{} ref object(s) could not be read, so the list may lack their refs: {}: {}{}; `tessera verify` tells which node's copy can repair them",
                    rest.len() + 1,
                    p.object,
                    p.detail,
                    if rest.is_empty() { "" } else { " (and more)" }
                ))),
            }
        }
        Cmd::Ref { action } => {
            let store = open_store(&loc()?, false, cli.wait)?;
            let mut out = io::stdout().lock();
            match action {
                RefCmd::Set {
                    name,
                    target,
                    expect,
                } => {
                    let id = store.resolve(&target)?;
                    match expect.as_deref() {
                        None => store.set_ref(&name, id)?,
                        Some("none") => store.compare_and_set_ref(&name, None, id)?,
                        Some(e) => {
                            let want = store.resolve(e)?;
                            store.compare_and_set_ref(&name, Some(want), id)?
                        }
                    }
                    writeln!(out, "{id}  {}", printable(&name, false)).map_err(out_err)?;
                }
                RefCmd::Rm { name } => {
                    store.delete_ref(name.strip_prefix("ref:").unwrap_or(&name))?
                }
            }
            Ok(())
        }
        Cmd::Info {
            name,
            tensors,
            json,
        } => {
            let store = open_store(&loc()?, false, cli.wait)?;
            inspect::info(&store, &name, json, tensors)
        }
        Cmd::Stat { json } => {
            let store = open_store(&loc()?, false, cli.wait)?;
            store.refresh()?;
            let mut out = io::stdout().lock();
            let s = store.stats()?;
            if json {
                let mut v = serde_json::to_value(&s).map_err(|e| CliError::Check(e.to_string()))?;
                v["chunking"] = serde_json::json!(s.chunking.to_string());
                writeln!(out, "{v}").map_err(out_err)?;
            } else {
                writeln!(out, "files          {}", s.files).map_err(out_err)?;
                writeln!(out, "refs           {}", s.refs).map_err(out_err)?;
                writeln!(out, "chunks         {}", s.chunks).map_err(out_err)?;
                writeln!(out, "packs          {}", s.packs).map_err(out_err)?;
                writeln!(
                    out,
                    "logical_bytes  {}  ({})",
                    s.logical_bytes,
                    human(s.logical_bytes)
                )
                .map_err(out_err)?;
                writeln!(
                    out,
                    "unique_bytes   {}  ({})",
                    s.unique_bytes,
                    human(s.unique_bytes)
                )
                .map_err(out_err)?;
                writeln!(
                    out,
                    "stored_bytes   {}  ({})",
                    s.stored_bytes,
                    human(s.stored_bytes)
                )
                .map_err(out_err)?;
                writeln!(out, "dedup_ratio    {:.3}", s.dedup_ratio).map_err(out_err)?;
                writeln!(out, "chunking       {}", s.chunking).map_err(out_err)?;
            }
            Ok(())
        }
        Cmd::Verify {
            sample,
            no_data,
            files,
            json,
        } => {
            if !(0.0..=100.0).contains(&sample) {
                return Err(CliError::Usage(format!("--sample {sample}: want 0..=100")));
            }
            let store = open_store(&loc()?, false, cli.wait)?;
            let pb = progress_bar(0);
            let rep = store.verify_with_progress(
                tessera::VerifyOptions {
                    sample_percent: sample,
                    read_data: !no_data,
                    read_files: files,
                },
                &mut |done, total| {
                    pb.set_length(total);
                    pb.set_position(done);
                },
            )?;
            pb.finish_and_clear();
            let mut out = io::stdout().lock();
            if json {
                write_json(&mut out, &rep)?;
            } else {
                for p in &rep.problems {
                    writeln!(out, "DAMAGED  {}: {}", p.object, p.detail).map_err(out_err)?;
                }
                for p in &rep.transient {
                    writeln!(out, "TRANSIENT  {}: {}", p.object, p.detail).map_err(out_err)?;
                }
                for p in &rep.orphan_packs {
                    writeln!(out, "orphan  pack {p} (unreferenced; reclaimable)")
                        .map_err(out_err)?;
                }
                writeln!(
                    out,
                    "{}: {} packs ({} read, {}), {} chunks ({} re-hashed), {} files, {} refs, {} problems",
                    // "clean" only when every pack's data was checked: a
                    // sampled or structure-only run says what it covered.
                    match (rep.is_clean(), rep.packs_read) {
                        (false, _) => "DAMAGED",
                        (true, n) if n == rep.packs => "clean",
                        (true, 0) => "structure clean, no pack data read",
                        (true, _) => "clean in what was read (a sample of the packs)",
                    },
                    rep.packs,
                    rep.packs_read,
                    human(rep.bytes_read),
                    rep.chunks,
                    rep.chunks_read,
                    rep.files,
                    rep.refs,
                    rep.problems.len()
                )
                .map_err(out_err)?;
                if files {
                    writeln!(
                        out,
                        "files read back: {} ({}), each hashing to its recorded SHA-256",
                        rep.files_read,
                        human(rep.file_bytes_read)
                    )
                    .map_err(out_err)?;
                }
            }
            damaged("verify found", &rep.problems)
        }
        Cmd::Refresh { json } => {
            let store = open_store(&loc()?, false, cli.wait)?;
            let t0 = std::time::Instant::now();
            let rep = store.refresh()?;
            let mut out = io::stdout().lock();
            if json {
                write_json(&mut out, &rep)?;
            } else {
                for p in &rep.problems {
                    writeln!(out, "DAMAGED  {}: {}", p.object, p.detail).map_err(out_err)?;
                }
                writeln!(
                    out,
                    "refreshed in {:.2} s: {} objects listed; indexed {} packs ({} chunks) and {} files; {} refs updated, {} removed; forgot {} files and {} packs other nodes collected; {} problems",
                    t0.elapsed().as_secs_f64(),
                    rep.listed,
                    rep.packs,
                    rep.chunks,
                    rep.files,
                    rep.refs_updated,
                    rep.refs_removed,
                    rep.files_forgotten,
                    rep.packs_forgotten,
                    rep.problems.len()
                )
                .map_err(out_err)?;
            }
            store.close()?;
            damaged("refresh found", &rep.problems)
        }
        Cmd::Repair {
            what: RepairCmd::Config { chunking, json },
        } => {
            let loc = loc()?;
            let params = parse_chunking(&chunking)?;
            let rep = loc.repair_config(params, &store_options(false))?;
            let mut out = io::stdout().lock();
            if json {
                write_json(&mut out, &rep)?;
            } else {
                writeln!(
                    out,
                    "config written: {params}, confirmed by {} boundaries of {} stored files",
                    rep.boundaries_checked, rep.files_checked
                )
                .map_err(out_err)?;
            }
            Ok(())
        }
        Cmd::Repair {
            what: RepairCmd::Index { json },
        } => {
            let opts = StoreOptions {
                lock_wait: cli.wait.then_some(std::time::Duration::MAX),
                refresh_after: None,
                ..store_options(false)
            };
            let rep = loc()?.repair_index(opts)?;
            let mut out = io::stdout().lock();
            if json {
                write_json(&mut out, &rep)?;
            } else {
                for p in &rep.healed {
                    writeln!(out, "HEALED  {}: {}", p.object, p.detail).map_err(out_err)?;
                }
                for p in &rep.problems {
                    writeln!(out, "UNRECOVERED  {}: {}", p.object, p.detail).map_err(out_err)?;
                }
                writeln!(
                    out,
                    "index rebuilt: {} packs, {} chunks, {} files, {} refs; {} healed, {} problems",
                    rep.packs,
                    rep.chunks,
                    rep.files,
                    rep.refs,
                    rep.healed.len(),
                    rep.problems.len()
                )
                .map_err(out_err)?;
            }
            damaged("repair could not recover", &rep.problems)
        }
        Cmd::Gc(args) => maintain::gc(&loc()?, args, cli.wait),
        Cmd::Repack(args) => maintain::repack(&loc()?, args, cli.wait),
        Cmd::Serve(args) => serve::run(&loc()?, args, cli.wait),
        Cmd::Pull(args) => pull::run(&loc()?, args, cli.wait),
        Cmd::Push(args) => push::run(&loc()?, args, cli.wait),
        Cmd::Demo { size_mib, seed } => {
            let dir = match store_arg.is_some() {
                true => Some(loc()?.dir("demo")?.to_path_buf()),
                false => None,
            };
            demo::run(dir.as_deref(), size_mib, seed)
        }
        Cmd::Synth {
            dir,
            size_mib,
            seed,
        } => demo::write_repo(&dir, size_mib, seed),
    }
}

/// `MIN,AVG,MAX[,NORMALIZATION]` chunking parameters.
fn parse_chunking(s: &str) -> CliResult<tessera::ChunkParams> {
    let bad = || {
        CliError::Usage(format!(
            "--chunking {s:?}: want MIN,AVG,MAX[,NORMALIZATION]"
        ))
    };
    let v: Vec<u32> = s
        .split(',')
        .map(|x| x.trim().parse().map_err(|_| bad()))
        .collect::<CliResult<_>>()?;
    let p = match v[..] {
        [min, avg, max] => tessera::ChunkParams {
            min,
            avg,
            max,
            ..Default::default()
        },
        [min, avg, max, normalization] => tessera::ChunkParams {
            min,
            avg,
            max,
            normalization,
        },
        _ => return Err(bad()),
    };
    p.validate()
        .map_err(|e| CliError::Usage(format!("--chunking: {e}")))?;
    Ok(p)
}

/// One JSON line on stdout.
pub(crate) fn write_json(out: &mut impl Write, v: &impl serde::Serialize) -> CliResult {
    let text = serde_json::to_string(v).map_err(|e| CliError::Check(e.to_string()))?;
    writeln!(out, "{text}").map_err(out_err)
}

/// Ok when `problems` is empty, else a "damaged" error (exit 4) naming the
/// first one.
fn damaged(what: &str, problems: &[tessera::Problem]) -> CliResult {
    match problems.first() {
        None => Ok(()),
        Some(p) => Err(CliError::Damaged(format!(
            "{what} {} damaged objects (first: {}: {})",
            problems.len(),
            p.object,
            p.detail
        ))),
    }
}

/// `1.5 MiB`-style sizes.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}
