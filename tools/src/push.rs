//! `tessera push`: files to a server, uploading only the chunks it lacks.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tessera_http::client::{push, PushInput};

use crate::location::Location;
use crate::remote::{open_local, runtime, Bar, RemoteArgs};
use crate::{human, out_err, put, write_json, CliResult};

/// `push`'s options.
#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("naming")
        .required(true)
        .args(["ref_name", "ref_prefix"])
))]
pub(crate) struct PushArgs {
    /// The server (http://HOST:PORT).
    url: String,
    /// Files, directories (every file, named PREFIX + its path inside), or
    /// `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The ref to set on the server (one file only).
    #[arg(long = "ref", value_name = "NAME")]
    ref_name: Option<String>,
    /// Name each file PREFIX + its path (e.g. `org/model@v2:`).
    #[arg(long, value_name = "PREFIX", conflicts_with = "ref_name")]
    ref_prefix: Option<String>,
    /// Print a JSON report: bytes_uploaded, packs_uploaded,
    /// chunks_uploaded, chunks_total, requests, files (path, ref, file_id,
    /// sha256, size, chunks, new_file).
    #[arg(long)]
    json: bool,
    /// Files with pickles (code that runs when loaded): `deny-unsafe` refuses
    /// those importing anything but what ordinary checkpoints use, `deny`
    /// any pickle, `allow` none (exit status 5 on a refusal).
    #[arg(long, value_name = "POLICY", default_value = "deny-unsafe")]
    pickle: tessera::PicklePolicy,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(crate) fn run(loc: &Location, args: PushArgs, wait: bool) -> CliResult {
    let inputs: Vec<PushInput> = put::inputs(&args.paths, args.ref_name, args.ref_prefix)?
        .into_iter()
        .map(|i| PushInput {
            path: i.path,
            shown: i.shown,
            ref_name: i.ref_name,
        })
        .collect();
    let client = args.remote.client(&args.url)?;
    let rt = runtime()?;
    let bar = Arc::new(Bar::new());
    let (store, report) = rt.block_on(async {
        let info = client.server_info().await?;
        let store = open_local(loc, &info, wait, args.pickle)?;
        let report = push(&client, &store, &inputs, bar.clone()).await?;
        Ok::<_, crate::CliError>((store, report))
    })?;
    drop(rt);
    store.close()?;
    let mut out = io::stdout().lock();
    if args.json {
        let mut v =
            serde_json::to_value(&report).map_err(|e| crate::CliError::Check(e.to_string()))?;
        v["requests"] = (report.requests + 1).into();
        write_json(&mut out, &v)
    } else {
        for f in &report.files {
            writeln!(
                out,
                "{}  {}{}",
                f.file_id,
                f.path,
                f.ref_name
                    .as_deref()
                    .map(|r| format!("  -> {r}"))
                    .unwrap_or_default()
            )
            .map_err(out_err)?;
        }
        writeln!(
            out,
            "uploaded {} in {} packs ({} of {} chunks were missing on the server), {} requests",
            human(report.bytes_uploaded),
            report.packs_uploaded,
            report.chunks_uploaded,
            report.chunks_total,
            report.requests + 1
        )
        .map_err(out_err)
    }
}
