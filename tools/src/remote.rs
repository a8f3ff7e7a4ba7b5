//! What `serve`, `pull` and `push` share: the async runtime, client
//! options from the command line, and the progress bar.

use std::time::Duration;

use indicatif::ProgressBar;
use tessera_http::client::{Client, ClientOptions, Progress};

use crate::location::Location;
use crate::{progress_bar, CliError, CliResult};

/// Options of commands that talk to a server.
#[derive(clap::Args, Debug)]
pub(crate) struct RemoteArgs {
    /// Bearer token (or set TESSERA_TOKEN).
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) parallel: usize,
    /// Seconds without data before a request is abandoned and retried.
    #[arg(long, default_value_t = 30, value_parser = crate::maintain::parse_secs)]
    pub(crate) timeout: u64,
    /// Retries of a request that failed for a reason that may pass.
    #[arg(long, default_value_t = 6)]
    pub(crate) retries: u32,
}

impl RemoteArgs {
    pub(crate) fn client(&self, url: &str) -> CliResult<Client> {
        if self.parallel == 0 || self.parallel > 64 {
            return Err(CliError::Usage("--parallel: want 1..=64".into()));
        }
        let opts = ClientOptions {
            token: self.token.clone().filter(|t| !t.is_empty()),
            parallel: self.parallel,
            stall_timeout: Duration::from_secs(self.timeout.max(1)),
            retries: self.retries,
            ..Default::default()
        };
        Ok(Client::new(url, opts)?)
    }
}

/// A multi-threaded runtime for one command.
pub(crate) fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Check(format!("starting the async runtime: {e}")))
}

/// The progress bar (hidden unless stderr is a terminal).
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Bar {
    pub(crate) fn new() -> Bar {
        Bar(progress_bar(0))
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// The local store of `pull` and `push` (created if new, with the server's
/// chunking parameters; one with others is refused).
pub(crate) fn open_local(
    loc: &Location,
    server: &tessera_http::protocol::ServerInfo,
    wait: bool,
    pickle: tessera::PicklePolicy,
) -> CliResult<tessera::Store> {
    let params: tessera::ChunkParams = server.chunking.into();
    let opts = tessera::StoreOptions {
        chunking: Some(params),
        pickle_policy: pickle,
        ..crate::store_options(true)
    };
    match crate::open_store_with(loc, opts, wait) {
        Err(CliError::Engine(tessera::Error::ChunkParamsMismatch { stored, .. })) => {
            Err(CliError::Usage(format!(
                "local store {} uses chunking {stored}, the server {params}: use another --store for this server",
                loc.display()
            )))
        }
        r => r,
    }
}
