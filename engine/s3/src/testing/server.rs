//! Where the S3 tests find a server.
//!
//! 1. `TESSERA_S3_BUCKET` set (by `engine/s3/tests/s3server.sh`, CI, or by
//!    hand against MinIO or AWS): that bucket, with the connection from the
//!    `AWS_*` environment variables, each test under its own prefix.
//! 2. Otherwise `moto_server` on `PATH` (`pip install 'moto[server]'`): the
//!    first test of the process starts it on a free loopback port and
//!    creates a bucket; a watchdog shell stops it when the test process
//!    exits.
//! 3. Otherwise the tests are skipped, each printing why on stderr (past
//!    the test harness's capture) — unless `TESSERA_S3_REQUIRED=1`, which
//!    makes a missing server a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{S3Options, S3Store};

/// The bucket the spawned moto server gets.
const MOTO_BUCKET: &str = "tessera-test";

/// A server and bucket the S3 tests may use.
#[derive(Debug)]
pub struct S3Target {
    /// The bucket.
    pub bucket: String,
    /// Where this process's tests live in the bucket.
    pub run_prefix: String,
    /// What the target is, for messages.
    pub source: String,
    /// The endpoint URL, when known (a spawned server).
    pub endpoint: Option<String>,
    options: S3Options,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl S3Target {
    /// A URL no other test uses: `s3://bucket/<run prefix>/<name>-<n>`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "s3://{}/{}/{name}-{}",
            self.bucket,
            self.run_prefix,
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Options that reach the server (staging in a fresh temp directory is
    /// up to the caller).
    pub fn options(&self) -> S3Options {
        self.options.clone()
    }

    /// The S3 endpoint URL: the spawned server's, else `AWS_ENDPOINT_URL`
    /// (or `AWS_ENDPOINT`); `None` for AWS itself.
    pub fn endpoint_url(&self) -> Option<String> {
        self.endpoint.clone().or_else(|| {
            std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok()
        })
    }

    /// Environment variables a child process (a `tessera` binary) needs to
    /// reach the server: the connection of a spawned server; nothing for a
    /// target from the environment (the child inherits it).
    pub fn child_env(&self) -> Vec<(String, String)> {
        match &self.endpoint {
            Some(e) => self.child_env_at(e),
            None => Vec::new(),
        }
    }

    /// [`S3Target::child_env`] with the endpoint replaced by `endpoint` (a
    /// proxy in front of the server).
    pub fn child_env_at(&self, endpoint: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = match &self.endpoint {
            Some(_) => [
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            None => Vec::new(),
        };
        env.push(("AWS_ENDPOINT_URL".into(), endpoint.to_string()));
        env.push(("AWS_ALLOW_HTTP".into(), "true".into()));
        env
    }

    /// A store at a fresh [`S3Target::url`].
    pub fn store(&self, name: &str, mut options: S3Options) -> S3Store {
        options.from_env = self.options.from_env;
        let mut config = self.options.config.clone();
        config.append(&mut options.config);
        options.config = config;
        match S3Store::from_url(&self.url(name), options) {
            Ok(s) => s,
            Err(e) => panic!("{}: build a store: {e}", self.source),
        }
    }
}

/// Whether `TESSERA_S3_REQUIRED=1`.
pub fn required() -> bool {
    std::env::var("TESSERA_S3_REQUIRED").is_ok_and(|v| v == "1")
}

/// The S3 target for test `test`, or `None` after printing why it is
/// skipped (panics instead when `TESSERA_S3_REQUIRED=1`).
pub fn s3_target(test: &str) -> Option<&'static S3Target> {
    static TARGET: OnceLock<Result<S3Target, String>> = OnceLock::new();
    match TARGET.get_or_init(find) {
        Ok(t) => Some(t),
        Err(why) if required() => {
            panic!("{test}: an S3 server is required (TESSERA_S3_REQUIRED=1) but {why}")
        }
        Err(why) => {
            // Straight to the stream: the harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no S3-compatible server: {why}. Run \
                 `engine/s3/tests/s3server.sh run cargo test -p tessera-s3` (installs moto \
                 from PyPI), or set TESSERA_S3_REQUIRED=1 to make this a failure."
            );
            None
        }
    }
}

fn find() -> Result<S3Target, String> {
    let run = format!(
        "run-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    if let Ok(bucket) = std::env::var("TESSERA_S3_BUCKET") {
        let base = std::env::var("TESSERA_S3_PREFIX").unwrap_or_else(|_| "tessera-test".into());
        return Ok(S3Target {
            source: format!(
                "bucket {bucket} from TESSERA_S3_BUCKET at {}",
                std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .unwrap_or_else(|_| "the default AWS endpoint".into())
            ),
            endpoint: None,
            bucket,
            run_prefix: format!("{base}/{run}"),
            options: S3Options::default(),
        });
    }
    let moto = which("moto_server")
        .ok_or_else(|| "TESSERA_S3_BUCKET is not set and moto_server is not on PATH".to_string())?;
    let mut last = String::new();
    for _ in 0..3 {
        match spawn_moto(&moto) {
            Ok(endpoint) => {
                return Ok(S3Target {
                    source: format!("moto_server at {endpoint}"),
                    options: S3Options::endpoint(&endpoint, "testing", "testing", "us-east-1"),
                    endpoint: Some(endpoint),
                    bucket: MOTO_BUCKET.into(),
                    run_prefix: run,
                })
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind a loopback port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("bind a loopback port: {e}"))
}

/// Starts moto under a watchdog that stops it when this process exits, and
/// creates the bucket. Returns the endpoint URL.
fn spawn_moto(moto: &std::path::Path) -> Result<String, String> {
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("tessera-moto-{}-{port}.log", std::process::id()));
    let script = r#"
        "$1" -H 127.0.0.1 -p "$2" >"$3" 2>&1 &
        m=$!
        trap 'kill $m 2>/dev/null; rm -f "$3"' EXIT
        while kill -0 "$4" 2>/dev/null && kill -0 "$m" 2>/dev/null; do sleep 0.5; done
    "#;
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("moto-watchdog")
        .arg(moto)
        .arg(port.to_string())
        .arg(&log)
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", moto.display()))?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http_put(&addr, &format!("/{MOTO_BUCKET}")) {
            Ok(status) if status == 200 || status == 409 => return Ok(format!("http://{addr}")),
            Ok(status) => {
                return Err(format!(
                    "moto at {addr}: creating the bucket answered {status}"
                ))
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(format!(
                    "moto_server did not answer on {addr} within 30 s ({e}); its log: {tail}"
                ));
            }
        }
    }
}

/// A bare HTTP/1.1 PUT with an empty body; returns the status code.
fn http_put(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}
