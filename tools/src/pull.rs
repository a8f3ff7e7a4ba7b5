//! `tessera pull`: a file from a server, through the local store.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tessera_http::client::pull;

use crate::location::Location;
use crate::remote::{open_local, runtime, Bar, RemoteArgs};
use crate::{human, out_err, write_json, CliResult};

/// `pull`'s options.
#[derive(clap::Args, Debug)]
pub(crate) struct PullArgs {
    /// The server (http://HOST:PORT).
    url: String,
    /// A file id, `sha256:HEX`, or a ref.
    name: String,
    /// Where to write the file. A regular file (or a new one) is replaced
    /// atomically once the file is verified: a temp file beside it, renamed
    /// over it (through a symbolic link, the file the link leads to). `-`
    /// writes to standard output (the report then goes to standard error),
    /// and a device or FIFO (`/dev/null`) is written through, never
    /// replaced; their download directory is in the system temp directory.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Print a JSON report: file_id, sha256, size, bytes_downloaded,
    /// bytes_resumed, bytes_reused, chunks_downloaded, chunks_reused,
    /// requests, retries, output, download_secs, register_secs, write_secs.
    #[arg(long)]
    json: bool,
    /// Files with pickles (code that runs when loaded): `deny-unsafe` refuses
    /// those importing anything but what ordinary checkpoints use, `deny`
    /// any pickle, `allow` none (exit status 5 on a refusal). A file the
    /// local store holds already (stored under another policy) is judged
    /// by its stored description, and refused the same way.
    #[arg(long, value_name = "POLICY", default_value = "deny-unsafe")]
    pickle: tessera::PicklePolicy,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(crate) fn run(loc: &Location, args: PullArgs, wait: bool) -> CliResult {
    let client = args.remote.client(&args.url)?;
    let rt = runtime()?;
    let bar = Arc::new(Bar::new());
    let (store, report) = rt.block_on(async {
        let info = client.server_info().await?;
        let store = open_local(loc, &info, wait, args.pickle)?;
        let report = pull(&client, &store, &args.name, &args.output, bar.clone()).await?;
        Ok::<_, crate::CliError>((store, report))
    })?;
    drop(rt);
    store.close()?;
    // With `-o -` the file went to standard output: the report goes to
    // standard error.
    let mut out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(io::stderr().lock())
    } else {
        Box::new(io::stdout().lock())
    };
    if args.json {
        let mut v =
            serde_json::to_value(&report).map_err(|e| crate::CliError::Check(e.to_string()))?;
        // The /v1 request made before the pull.
        v["requests"] = (report.requests + 1).into();
        write_json(&mut out, &v)
    } else {
        writeln!(
            out,
            "{}  {}  ({}; downloaded {}, resumed {}, reused {} from the local store, {} requests)",
            report.file_id,
            report.output,
            human(report.size),
            human(report.bytes_downloaded),
            human(report.bytes_resumed),
            human(report.bytes_reused),
            report.requests + 1
        )
        .map_err(out_err)
    }
}
