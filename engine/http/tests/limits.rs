//! Server-wide limits under hostile load: the budget for buffered request
//! bodies (stalled uploads cannot pile up memory), and connection slots
//! held by idle connections.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{open, TestServer};
use tessera::ChunkId;
use tessera_http::client::{push, Client, ClientOptions, NoProgress, PushInput};
use tessera_http::protocol::ErrorBody;
use tessera_http::{Policy, ServerConfig, ServerStats};
use tessera_synth::noise;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection and sends `head` and `body`, then leaves it open
/// (stalled).
async fn stalled(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(head.as_bytes()).await.expect("write head");
    sock.write_all(body).await.expect("write body");
    sock
}

/// Reads an HTTP answer from `sock` (until its headers and some body have
/// arrived, or the connection ends), within `within`.
async fn answer(sock: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            Err(_) => panic!(
                "no complete answer within {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Waits until the server buffers at least `at_least` body bytes.
async fn wait_buffered(srv: &TestServer, at_least: u64) {
    let t = Instant::now();
    while srv.server.body_bytes_buffered() < at_least {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the server buffers {} body bytes, expected at least {at_least}",
            srv.server.body_bytes_buffered()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server buffers no body bytes.
async fn wait_unbuffered(srv: &TestServer) {
    let t = Instant::now();
    while srv.server.body_bytes_buffered() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the budget was not given back: {} bytes still held",
            srv.server.body_bytes_buffered()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that `raw` is a `503 overloaded` answer with `Retry-After` and
/// the JSON error body.
fn assert_overloaded(raw: &str, what: &str) {
    assert!(
        raw.starts_with("HTTP/1.1 503"),
        "{what}: want 503, got {raw:?}"
    );
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    assert!(
        head.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("retry-after:")),
        "{what}: no Retry-After in {head:?}"
    );
    let e: ErrorBody = serde_json::from_str(body).expect("JSON error body");
    assert_eq!(e.error.code, "overloaded", "{what}: {body}");
}

fn budget_config() -> ServerConfig {
    ServerConfig {
        max_pack_body: 4 << 20,
        max_json_body: 4 << 20,
        body_budget: 1 << 20,
        budget_wait: Duration::from_millis(300),
        // Long enough that a stalled body holds its budget for the test.
        body_idle_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

/// A pack of fresh noise of about `bytes`, from a scratch store.
fn pack_of(dir: &std::path::Path, bytes: usize, seed: u64) -> (tessera::PackId, Vec<u8>) {
    let st = open(dir);
    let f = st.put_bytes(&noise(bytes, seed), &[]).expect("put").file_id;
    let ids: Vec<ChunkId> = st
        .chunk_list(&f)
        .expect("chunks")
        .iter()
        .map(|c| c.0)
        .collect();
    st.export_pack(&ids).expect("export")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_cannot_buffer_more_than_the_budget() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let srv = TestServer::start(store.clone(), Policy::open(), budget_config()).await;
    let addr = srv.addr;
    let ghost = "ab".repeat(32);

    // A JSON body that declares 700 000 bytes and stalls: it holds that
    // much budget before its first byte is buffered.
    let mut json_stall = stalled(
        addr,
        "POST /v1/chunks/missing HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 700000\r\n\r\n",
        b"{\"chunks\": [",
    )
    .await;
    wait_buffered(&srv, 700_000).await;

    // A pack upload that declares 700 000 more: refused once the bounded
    // wait is over, typed and retryable.
    let t = Instant::now();
    let mut pack_over = stalled(
        addr,
        &format!("PUT /v1/packs/{ghost} HTTP/1.1\r\nHost: t\r\nContent-Length: 700000\r\n\r\n"),
        &[0u8; 1000],
    )
    .await;
    let raw = answer(&mut pack_over, Duration::from_secs(5)).await;
    assert_overloaded(&raw, "a declared pack over the budget");
    assert!(t.elapsed() >= Duration::from_millis(250), "it waited first");

    // A chunked upload (no Content-Length) takes budget as bytes arrive:
    // 400 000 bytes do not fit beside the stalled 700 000.
    let mut chunk = format!("{:x}\r\n", 400_000).into_bytes();
    chunk.extend(std::iter::repeat_n(7u8, 400_000));
    chunk.extend_from_slice(b"\r\n");
    let mut chunked_over = stalled(
        addr,
        &format!("PUT /v1/packs/{ghost} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"),
        &chunk,
    )
    .await;
    let raw = answer(&mut chunked_over, Duration::from_secs(5)).await;
    assert_overloaded(&raw, "a chunked pack over the budget");

    // A JSON body over the budget's remainder is refused the same way.
    let mut json_over = stalled(
        addr,
        "POST /v1/files HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n",
        b"{",
    )
    .await;
    let raw = answer(&mut json_over, Duration::from_secs(5)).await;
    assert_overloaded(&raw, "a JSON body over the budget");
    assert_eq!(
        ServerStats::get(&srv.stats().body_budget_refusals),
        3,
        "three refusals"
    );

    // A body larger than the whole budget can never fit: 413, not 503.
    let mut too_big = stalled(
        addr,
        &format!("PUT /v1/packs/{ghost} HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n"),
        b"",
    )
    .await;
    let raw = answer(&mut too_big, Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw:?}");

    // An upload within what is left proceeds meanwhile.
    let http = reqwest::Client::new();
    let (small, small_bytes) = pack_of(&tmp.path().join("c1"), 200_000, 1);
    assert!(small_bytes.len() < 300_000);
    let resp = http
        .put(format!("{}/v1/packs/{small}", srv.url))
        .body(small_bytes)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    assert!(srv.server.body_bytes_buffered() >= 700_000);

    // The stalled body ends (the client goes away): its budget is back,
    // and the upload refused before now fits.
    drop(json_stall.shutdown().await);
    drop(json_stall);
    drop((pack_over, chunked_over, json_over, too_big));
    wait_unbuffered(&srv).await;
    let (big, big_bytes) = pack_of(&tmp.path().join("c2"), 700_000, 2);
    assert!(big_bytes.len() > 600_000);
    let resp = http
        .put(format!("{}/v1/packs/{big}", srv.url))
        .body(big_bytes)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    wait_unbuffered(&srv).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_retries_an_overloaded_answer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let srv = TestServer::start(store.clone(), Policy::open(), budget_config()).await;
    // Another upload holds most of the budget...
    let ghost = "cd".repeat(32);
    let mut stall = stalled(
        srv.addr,
        &format!("PUT /v1/packs/{ghost} HTTP/1.1\r\nHost: t\r\nContent-Length: 900000\r\n\r\n"),
        b"x",
    )
    .await;
    wait_buffered(&srv, 900_000).await;
    // ... and goes away a second into the push.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = stall.shutdown().await;
    });
    let data = noise(600_000, 3);
    let path = tmp.path().join("w.bin");
    std::fs::write(&path, &data).expect("write");
    let local = open(&tmp.path().join("client"));
    let c = Client::new(&srv.url, ClientOptions::default()).expect("client");
    let rep = push(
        &c,
        &local,
        &[PushInput {
            path: Some(path),
            shown: "w.bin".into(),
            ref_name: Some("pushed/w.bin".into()),
        }],
        Arc::new(NoProgress),
    )
    .await
    .expect("the push waits out the overload");
    release.await.expect("release");
    assert!(ServerStats::get(&srv.stats().body_budget_refusals) >= 1);
    assert!(rep.bytes_uploaded > 500_000);
    let id = store.resolve("pushed/w.bin").expect("ref");
    assert_eq!(
        store.read(&id).expect("open").read_all().expect("read"),
        data
    );
    wait_unbuffered(&srv).await;
    srv.stop().await;
}

/// Whether a GET of `/healthz` on a new connection is answered 200
/// within `within`.
async fn served(url: &str, within: Duration) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(within, http.get(format!("{url}/healthz")).send()).await {
        Err(_) => Err(format!("no answer within {within:?}")),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => Err(format!("status {}", r.status())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_out_new_clients() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let config = ServerConfig {
        max_connections: 4,
        // Long, so that only reaping can free a slot within the test.
        header_timeout: Duration::from_secs(60),
        body_idle_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let srv = TestServer::start(store.clone(), Policy::open(), config).await;
    // An upload in flight holds its slot: it is not idle.
    let (pack, bytes) = pack_of(&tmp.path().join("c"), 100_000, 4);
    let (first, rest) = bytes.split_at(1000);
    let mut upload = stalled(
        srv.addr,
        &format!(
            "PUT /v1/packs/{pack} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        ),
        first,
    )
    .await;
    // Every other slot, and more, taken by connections that send nothing
    // (or half a request line).
    let mut idle = Vec::new();
    for i in 0..10 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        if i % 2 == 1 {
            s.write_all(b"GET /hea").await.expect("write");
        }
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New clients are still served, promptly, one after another.
    for _ in 0..6 {
        let t = Instant::now();
        served(&srv.url, Duration::from_secs(3))
            .await
            .expect("a new client is served with the limit reached by idle connections");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // The upload in flight was not closed: it completes.
    upload
        .write_all(rest)
        .await
        .expect("the upload's connection is open");
    let raw = answer(&mut upload, Duration::from_secs(10)).await;
    assert!(raw.starts_with("HTTP/1.1 201"), "{raw:?}");
    drop(idle);
    srv.stop().await;
}

/// Found by a hostile probe: a registration whose short chunk list repeats
/// one stored chunk makes the server read gigabytes, and any number of
/// them ran at once. With `max_registrations` 1, a second registration
/// waits for the first to finish: when it returns, the first file is
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_take_turns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let seed = store
        .put_bytes(&noise(300_000, 81), &["seed"])
        .expect("put")
        .file_id;
    let (chunk, len) = store.chunk_list(&seed).expect("chunks")[0];
    // About 2 GB of reading, from a list of a few MB.
    let n = (2u64 << 30) / u64::from(len);
    let chunks: Vec<(ChunkId, u32)> = (0..n).map(|_| (chunk, len)).collect();
    let mut h = tessera::FileIdHasher::new();
    for (id, l) in &chunks {
        h.push(id, u64::from(*l));
    }
    let big = h.finish();
    let srv = TestServer::start(
        store.clone(),
        Policy::open(),
        ServerConfig {
            max_registrations: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    let c = Client::new(&srv.url, ClientOptions::default()).expect("client");
    let first = {
        let c = c.clone();
        let req = tessera_http::protocol::RegisterRequest {
            file_id: big,
            size: n * u64::from(len),
            chunks,
            sha256: None,
            refs: vec!["big".into()],
        };
        tokio::spawn(async move { c.register(&req).await })
    };
    // The first is reading by now; a fork of the seed file (no reading at
    // all) waits its turn.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!store.contains(&big).expect("contains"), "still reading");
    let fork = tessera_http::protocol::RegisterRequest {
        file_id: seed,
        size: 300_000,
        chunks: store.chunk_list(&seed).expect("chunks"),
        sha256: None,
        refs: vec!["fork".into()],
    };
    c.register(&fork).await.expect("fork");
    assert!(
        store.contains(&big).expect("contains"),
        "the second registration ran while the first was reading"
    );
    first.await.expect("task").expect("first registration");
    srv.stop().await;
}

/// A GET sent on a connection with a small receive buffer that is then
/// never read: the response stalls once the socket buffers are full.
async fn stalled_get(addr: SocketAddr, path: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut sock = sock.connect(addr).await.expect("connect");
    sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .expect("write");
    sock
}

/// Found by a hostile probe: downloads that are never read each held a
/// decode window and a slice (about 2.3 MB), so 600 of them took the
/// server's memory from 17 MB to 1.4 GB. Responses now take their most
/// from a response budget before they are built and give it back once
/// sent or dropped: stalled downloads hold at most the budget, the next
/// is answered `503 overloaded` with Retry-After, and the budget is back
/// once the stalled clients go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_cannot_hold_more_than_the_response_budget() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let data = noise(24 << 20, 5);
    store.put_bytes(&data, &["big"]).expect("put");
    const BUDGET: u64 = 4 << 20;
    let config = ServerConfig {
        response_budget: BUDGET,
        budget_wait: Duration::from_millis(300),
        write_stall_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let srv = TestServer::start(store.clone(), Policy::open(), config).await;
    let held = || srv.server.response_bytes_held();
    let mut stalled_socks = Vec::new();
    let refused = loop {
        assert!(
            stalled_socks.len() < 16,
            "16 stalled downloads were all admitted: nothing bounds what they hold"
        );
        let mut sock = stalled_get(srv.addr, "/v1/files/big").await;
        // Admitted responses send their head; a refused one its 503.
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut head))
            .await
            .expect("an answer's status line within 5 s")
            .expect("read");
        let status = String::from_utf8_lossy(&head).to_string();
        assert!(held() <= BUDGET, "{} bytes held", held());
        if status.starts_with("HTTP/1.1 503") {
            let mut rest = answer(&mut sock, Duration::from_secs(5)).await;
            rest.insert_str(0, &status);
            break rest;
        }
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        stalled_socks.push(sock);
    };
    assert_overloaded(&refused, "a download beyond the response budget");
    assert!(!stalled_socks.is_empty(), "no download fit at all");
    assert!(
        held() > BUDGET / 2,
        "stalled downloads hold {} bytes",
        held()
    );
    assert_eq!(ServerStats::get(&srv.stats().response_budget_refusals), 1);
    // The stalled clients go: their budget comes back, and a download is
    // served whole.
    drop(stalled_socks);
    let t = Instant::now();
    while held() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} response bytes still held after the clients went",
            held()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = reqwest::get(format!("{}/v1/files/big", srv.url))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(got == data);
    // A reconstruction larger than the whole budget takes all of it rather
    // than never being served.
    let tiny = TestServer::start(
        store.clone(),
        Policy::open(),
        ServerConfig {
            response_budget: 8 << 10,
            budget_wait: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    let r = reqwest::get(format!("{}/v1/reconstructions/big", tiny.url))
        .await
        .expect("get");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(r.bytes().await.expect("body").len() > 8 << 10);
    // While one never-read download holds that budget, a pull is refused
    // its reconstruction (503 overloaded) and retries it; it completes once
    // the download's client goes, and reports its retries (it said 0: only
    // range retries were counted).
    let mut stall = stalled_get(tiny.addr, "/v1/files/big").await;
    let mut head = [0u8; 12];
    stall.read_exact(&mut head).await.expect("status line");
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let puller = {
        let c = Client::new(
            &tiny.url,
            ClientOptions {
                backoff: Duration::from_millis(100),
                ..Default::default()
            },
        )
        .expect("client");
        let local = open(&tmp.path().join("puller"));
        let out = tmp.path().join("pulled.bin");
        tokio::spawn(async move {
            tessera_http::client::pull(&c, &local, "big", &out, Arc::new(NoProgress)).await
        })
    };
    let t = Instant::now();
    while ServerStats::get(&tiny.stats().response_budget_refusals) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the pull was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stall);
    let pulled = puller
        .await
        .expect("join")
        .expect("pull once the budget is back");
    assert!(pulled.retries >= 1, "{pulled:?}");
    assert!(std::fs::read(tmp.path().join("pulled.bin")).expect("read") == data);
    tiny.stop().await;
    srv.stop().await;
}
