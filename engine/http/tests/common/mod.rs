//! A real server on a loopback port, for the tests.
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tessera::{Store, StoreOptions};
use tessera_http::{Policy, Server, ServerConfig, ServerStats, TokenFile};
use tessera_synth::ModelSpec;

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub server: Server,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(store: Store, policy: Policy, config: ServerConfig) -> TestServer {
        Self::start_on("127.0.0.1:0", store, policy, config).await
    }

    pub async fn start_on(
        addr: &str,
        store: Store,
        policy: Policy,
        config: ServerConfig,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Server::new(store, policy, config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        TestServer {
            addr,
            url: format!("http://{addr}"),
            server,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.server.stats()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

pub fn opts() -> StoreOptions {
    StoreOptions {
        create: true,
        ..Default::default()
    }
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir, opts()).expect("open store")
}

pub fn model(spec: &ModelSpec) -> Vec<u8> {
    let mut v = Vec::new();
    spec.reader().read_to_end(&mut v).expect("generate");
    v
}

/// A policy with tokens: alice reads and writes `alice/`, reads
/// `shared/`; bob reads and writes `bob/`; root is admin; `public/` is
/// public. Pack URLs are signed with a fixed key.
pub fn policy() -> Policy {
    let file: TokenFile = serde_json::from_str(&format!(
        r#"{{"tokens": [
            {{"name": "alice", "token": "{ALICE}", "read": ["shared/"], "write": ["alice/"]}},
            {{"name": "bob", "token": "{BOB}", "write": ["bob/"]}},
            {{"name": "reader", "token": "{READER}", "read": ["alice/"]}},
            {{"name": "root", "token": "{ROOT}", "admin": true}}
        ], "public": ["public/"], "signing_key": "{KEY}"}}"#
    ))
    .expect("token file");
    Policy::from_file(file).expect("policy")
}

pub const ALICE: &str = "alice-0123456789abcdef";
pub const BOB: &str = "bob-0123456789abcdef";
pub const READER: &str = "reader-0123456789abcdef";
pub const ROOT: &str = "root-0123456789abcdef";
pub const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// Output of a curl run: status, headers (lower-cased names), body.
pub struct Curl {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Curl {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs the real `curl` with `args` (plus -s -D for headers), on the
/// blocking pool.
pub async fn curl(args: Vec<String>) -> Curl {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let hdr = dir.path().join("headers");
        let body = dir.path().join("body");
        let out = Command::new("curl")
            .arg("-s")
            .arg("-D")
            .arg(&hdr)
            .arg("-o")
            .arg(&body)
            .args(&args)
            .output()
            .expect("run curl (apt-get install curl)");
        assert!(out.status.success(), "curl {args:?} failed: {out:?}");
        let text = std::fs::read_to_string(&hdr).expect("headers");
        let mut lines = text.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Curl {
            status,
            headers,
            body: std::fs::read(&body).unwrap_or_default(),
        }
    })
    .await
    .expect("curl task")
}

pub fn s(x: &str) -> String {
    x.to_string()
}
