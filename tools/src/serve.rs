//! `tessera serve`: the registry server over the store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use tessera_http::{Policy, Server, ServerConfig};

use crate::location::Location;
use crate::remote::runtime;
use crate::{CliError, CliResult};

/// `serve`'s options.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Without --tokens, loopback only.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
    /// Token file (JSON: tokens with read/write prefixes and admin, public
    /// prefixes, optional signing_key); see the README.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Seconds a signed pack URL stays valid.
    #[arg(long, default_value_t = 3600, value_parser = crate::maintain::parse_secs)]
    url_ttl: u64,
    /// Send at most this many bytes per second per file or pack response.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    max_rate: Option<u64>,
    /// Uploaded files with pickles (code that runs when loaded):
    /// `deny-unsafe` refuses those importing anything but what ordinary
    /// checkpoints use, `deny` any pickle, `allow` none (a refusal is a 422
    /// naming the file and the imports). It applies as well to a push that
    /// names a file the store holds already (stored earlier under another
    /// policy): no new ref to a file it forbids.
    #[arg(long, value_name = "POLICY", default_value = "deny-unsafe")]
    pickle: tessera::PicklePolicy,
    /// Request-body memory, in MiB, over all uploads at once (pack
    /// uploads and JSON bodies are buffered whole before they are checked).
    /// An upload takes its Content-Length from this budget before its
    /// first byte is read and gives it back when its request ends; one
    /// that finds no budget within 10 s is answered 503 "overloaded" with
    /// Retry-After (clients retry it). At least the largest pack (80 MiB)
    /// for pushes to work.
    #[arg(long, default_value_t = tessera_http::server::DEFAULT_BODY_BUDGET >> 20, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    body_budget_mib: u64,
    /// Response memory, in MiB, over all downloads at once. A file, pack or
    /// reconstruction response takes the most it holds before it is built
    /// (a file 1.5 MiB at most, a pack read 1 MiB, a reconstruction about
    /// 256 bytes per chunk listed; a ref list about 100 bytes a ref) and
    /// gives it back once sent or dropped,
    /// so clients that stop reading hold at most this; one that finds no
    /// budget within 10 s is answered 503 "overloaded" with Retry-After.
    #[arg(long, default_value_t = tessera_http::server::DEFAULT_RESPONSE_BUDGET >> 20, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    response_budget_mib: u64,
    /// For an s3:// store shared with other writers: list the bucket every
    /// SECS seconds, so refs and files other nodes wrote show in listings
    /// and access checks (lookups by name find them at once anyway); 0: never.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = crate::maintain::parse_secs)]
    refresh: u64,
}

pub(crate) fn run(loc: &Location, args: ServeArgs, wait: bool) -> CliResult {
    let addr: SocketAddr = args.listen.parse().map_err(|_| {
        CliError::Usage(format!(
            "--listen {:?}: want IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)",
            args.listen
        ))
    })?;
    let policy = match &args.tokens {
        Some(p) => Policy::load(p).map_err(|e| CliError::Usage(e.to_string()))?,
        None => Policy::open(),
    };
    if !policy.is_enforced() && !addr.ip().is_loopback() {
        return Err(CliError::Usage(format!(
            "refusing to listen on {addr} without --tokens: a server without a token file lets anyone read and write, so it listens on loopback only (127.0.0.1 or [::1]); give --tokens FILE to listen elsewhere"
        )));
    }
    let opts = tessera::StoreOptions {
        pickle_policy: args.pickle,
        ..crate::store_options(true)
    };
    let store = crate::open_store_with(loc, opts, wait)?;
    // A shared store: what other nodes wrote, listed now and then.
    let (stop, stopped) = mpsc::channel::<()>();
    let refresher = (store.is_shared() && args.refresh > 0).then(|| {
        let store = store.clone();
        let every = Duration::from_secs(args.refresh);
        std::thread::spawn(move || loop {
            match store.refresh() {
                Err(e) => {
                    tracing::warn!(store = %store.location(), error = %e, "refresh failed; retrying later")
                }
                // Damage is told every time it is seen, until mended.
                Ok(rep) => {
                    for p in &rep.problems {
                        tracing::warn!(object = %p.object, problem = %p.detail, "refresh found damage; `tessera verify` tells which node's copy can repair it");
                    }
                }
            }
            match stopped.recv_timeout(every) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        })
    });
    let config = ServerConfig {
        url_ttl: Duration::from_secs(args.url_ttl.max(1)),
        max_rate: args.max_rate.filter(|&r| r > 0),
        body_budget: args.body_budget_mib << 20,
        response_budget: args.response_budget_mib << 20,
        ..Default::default()
    };
    let server = Server::new(store.clone(), policy, config);
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::Check(format!("listening on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| CliError::Check(format!("listening on {addr}: {e}")))?;
        let auth = match &args.tokens {
            Some(p) => format!("tokens from {}", p.display()),
            None => "no token file: every request allowed, loopback only".to_string(),
        };
        say!(
            "tessera: serving store {} on http://{local} ({auth})",
            loc.display()
        );
        server
            .serve(listener, tessera_http::server::shutdown_signal())
            .await
            .map_err(|e| CliError::Check(e.to_string()))
    })?;
    drop(rt);
    drop(stop);
    if let Some(t) = refresher {
        let _ = t.join();
    }
    store.close()?;
    say!("tessera: server stopped");
    Ok(())
}
