//! Hostile requests get a 4xx with a JSON error and change nothing: bad
//! ids, path-like names, oversized and stalled bodies, packs with wrong
//! hashes or truncated, registrations naming missing chunks, missing or
//! unknown tokens, expired or forged pack signatures, reading another
//! user's private file, pointing a ref at a file the token cannot read.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{open, policy, TestServer, ALICE, BOB, READER, ROOT};
use reqwest::{Method, StatusCode};
use tessera::{ChunkId, Stats, Store};
use tessera_http::protocol::{encode_segment, ErrorBody, ReconstructionResponse, RegisterRequest};
use tessera_http::ServerConfig;
use tessera_synth::noise;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every object of the store (packs, recipes, refs) with its size.
fn objects(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for top in ["packs", "recipes", "refs"] {
        let mut stack = vec![root.join(top)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    out.insert(
                        p.strip_prefix(root).expect("in root").display().to_string(),
                        len,
                    );
                }
            }
        }
    }
    out
}

fn snapshot(store: &Store, root: &Path) -> (Stats, BTreeMap<String, u64>) {
    (store.stats().expect("stats"), objects(root))
}

/// Sends `head` on a new connection and returns the start of the answer.
async fn raw_status(addr: std::net::SocketAddr, head: &str) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    sock.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

struct H {
    http: reqwest::Client,
    url: String,
}

impl H {
    /// Sends a request; returns the status and the body, and checks that an
    /// error status comes with the JSON error body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Vec<u8>) {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let resp = rb.send().await.expect("send");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body").to_vec();
        if status.is_client_error() && method != Method::HEAD {
            let e: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{method} {path}: {status} without a JSON error: {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(!e.error.message.is_empty());
        }
        (status, bytes)
    }

    /// GETs bytes `start..=end` of `path` without a token.
    async fn get_range(&self, path: &str, start: u64, end: u64) -> (StatusCode, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .header(reqwest::header::RANGE, format!("bytes={start}-{end}"))
            .send()
            .await
            .expect("send");
        let status = resp.status();
        (status, resp.bytes().await.expect("body").to_vec())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("srv");
    let store = open(&root);
    let alice_data = noise(600_000, 1);
    let bob_data = noise(500_000, 2);
    let public_data = noise(200_000, 3);
    let alice_file = store
        .put_bytes(&alice_data, &["alice/m@v1:w.bin"])
        .expect("put")
        .file_id;
    let bob_file = store
        .put_bytes(&bob_data, &["bob/secret@v1:w.bin"])
        .expect("put")
        .file_id;
    let public_file = store
        .put_bytes(&public_data, &["public/m@v1:w.bin"])
        .expect("put")
        .file_id;
    let config = ServerConfig {
        max_json_body: 1 << 20,
        max_pack_body: 4 << 20,
        body_idle_timeout: Duration::from_millis(700),
        header_timeout: Duration::from_millis(700),
        ..Default::default()
    };
    let srv = TestServer::start(store.clone(), policy(), config).await;
    let h = H {
        http: reqwest::Client::new(),
        url: srv.url.clone(),
    };
    // A client store holding a file the server lacks, for uploads.
    let client_store = open(&tmp.path().join("client"));
    let new_data = noise(900_000, 4);
    let new_file = client_store.put_bytes(&new_data, &[]).expect("put").file_id;
    let list = client_store.chunk_list(&new_file).expect("chunks");
    let ids: Vec<ChunkId> = list.iter().map(|c| c.0).collect();
    let (pack, good_pack) = client_store.export_pack(&ids).expect("export");

    let before = snapshot(&store, &root);
    use Method as M;
    let g = |p: &str| format!("/v1/files/{}", encode_segment(p));

    // Bad ids and path-like names: ids are parsed, no name is a path.
    for (m, path) in [
        (M::GET, "/v1/packs/zzzz".to_string()),
        (M::GET, format!("/v1/packs/{}", "a".repeat(65))),
        (M::PUT, "/v1/packs/..%2F..%2Fetc%2Fpasswd".to_string()),
        (M::GET, "/v1/files/..%2F..%2Ftessera.store".to_string()),
        (M::GET, "/v1/files/%2E%2E/%2E%2E/etc/passwd".to_string()),
        (M::GET, format!("/v1/files/file:{}", "g".repeat(64))),
        (M::GET, "/v1/files/sha256:1234".to_string()),
        (M::GET, "/v1/files/%FF%FE".to_string()),
        (M::GET, "/v1/reconstructions/..%2Fpacks".to_string()),
        (M::GET, "/v1/refs/%00".to_string()),
        (M::GET, "/nope".to_string()),
        (M::PATCH, "/v1/refs/x".to_string()),
    ] {
        let (st, body) = h.send(m.clone(), &path, Some(ROOT), None).await;
        assert!(
            st.is_client_error(),
            "{m} {path}: {st} {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    // A pack that does not exist, with a valid signature: 404.
    let ghost = tessera::PackId([9; 32]);
    let q = srv.server.policy().sign_pack(&ghost, &alice_file, 60);
    let (st, _) = h
        .send(M::GET, &format!("/v1/packs/{ghost}?{q}"), None, None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Even to a conditional request that any version would satisfy.
    let st = h
        .http
        .get(format!("{}/v1/packs/{ghost}?{q}", h.url))
        .header(reqwest::header::IF_NONE_MATCH, "*")
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "If-None-Match: * on a missing pack"
    );

    // Tokens: missing or unknown → 401; out of scope → 403 (writes) or
    // 404 (reads, not revealing the file).
    let missing_body = serde_json::to_vec(&serde_json::json!({"chunks": [ids[0]]})).expect("json");
    let (st, _) = h
        .send(
            M::POST,
            "/v1/chunks/missing",
            None,
            Some(missing_body.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = h
        .send(
            M::POST,
            "/v1/chunks/missing",
            Some("wrong-token-0123456789"),
            Some(missing_body.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = h
        .send(
            M::POST,
            "/v1/chunks/missing",
            Some(READER),
            Some(missing_body.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = h
        .send(M::GET, &g("alice/m@v1:w.bin"), Some("Bearer-less"), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = h.send(M::GET, &g("alice/m@v1:w.bin"), None, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Another user's private file: not through their ref, its id, its
    // sha256 or a reconstruction.
    for name in [
        "bob/secret@v1:w.bin".to_string(),
        bob_file.to_hex(),
        format!("file:{bob_file}"),
        format!("sha256:{}", store.info(&bob_file).expect("info").sha256),
    ] {
        let (st, body) = h.send(M::GET, &g(&name), Some(ALICE), None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "alice read bob's {name}");
        assert!(!body
            .windows(100)
            .any(|w| bob_data.windows(100).next() == Some(w)));
        let (st, _) = h
            .send(
                M::GET,
                &format!("/v1/reconstructions/{}", encode_segment(&name)),
                Some(ALICE),
                None,
            )
            .await;
        assert_eq!(
            st,
            StatusCode::NOT_FOUND,
            "alice reconstructed bob's {name}"
        );
        let (st, _) = h.send(M::GET, &g(&name), None, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    let (st, _) = h
        .send(
            M::GET,
            &format!("/v1/refs/{}", encode_segment("bob/secret@v1:w.bin")),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, body) = h.send(M::GET, "/v1/refs?prefix=", Some(ALICE), None).await;
    assert_eq!(st, StatusCode::OK);
    let listed = String::from_utf8_lossy(&body);
    assert!(
        !listed.contains("bob/"),
        "alice listed bob's refs: {listed}"
    );
    assert!(listed.contains("alice/") && listed.contains("public/"));
    // Pointing a ref at a file the token cannot read, or writing out of scope.
    let set =
        |f: tessera::FileId| serde_json::to_vec(&serde_json::json!({"file_id": f})).expect("json");
    let (st, _) = h
        .send(
            M::PUT,
            &format!("/v1/refs/{}", encode_segment("alice/stolen")),
            Some(ALICE),
            Some(set(bob_file)),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = h
        .send(
            M::PUT,
            &format!("/v1/refs/{}", encode_segment("bob/x")),
            Some(ALICE),
            Some(set(alice_file)),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = h
        .send(
            M::DELETE,
            &format!("/v1/refs/{}", encode_segment("bob/secret@v1:w.bin")),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = h
        .send(
            M::DELETE,
            &format!("/v1/refs/{}", encode_segment("public/m@v1:w.bin")),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = h
        .send(
            M::PUT,
            &format!("/v1/refs/{}", encode_segment("alice/bad\nname")),
            Some(ALICE),
            Some(set(alice_file)),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = h
        .send(
            M::PUT,
            &format!("/v1/refs/{}", encode_segment("alice/x")),
            Some(ALICE),
            Some(b"{\"file_id\": 5}".to_vec()),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Pack signatures: missing, forged, for another pack, expired.
    let resp: ReconstructionResponse = serde_json::from_slice(
        &h.send(
            M::GET,
            &format!("/v1/reconstructions/{alice_file}"),
            Some(ALICE),
            None,
        )
        .await
        .1,
    )
    .expect("reconstruction");
    let (p, url) = resp.pack_urls.iter().next().expect("a pack");
    let term = resp
        .reconstruction
        .terms
        .iter()
        .find(|t| t.pack == *p)
        .expect("a term in that pack");
    let (a, b) = (term.pack_start, term.pack_end - 1);
    let (st, _) = h.get_range(url, a, b).await;
    assert_eq!(
        st,
        StatusCode::PARTIAL_CONTENT,
        "a signed URL works without a token"
    );
    // Only the file's records: not the whole pack, not a byte before them.
    let (st, _) = h.send(M::GET, url, None, None).await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a whole pack through a file's URL"
    );
    if a > 0 {
        assert_eq!(h.get_range(url, a - 1, b).await.0, StatusCode::FORBIDDEN);
    }
    let file_of_bob = url.replace(&alice_file.to_hex(), &bob_file.to_hex());
    assert_eq!(
        h.get_range(&file_of_bob, a, b).await.0,
        StatusCode::FORBIDDEN
    );
    let (st, _) = h
        .send(M::GET, &format!("/v1/packs/{p}"), Some(ROOT), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let forged = format!("/v1/packs/{p}?exp=99999999999&sig={}", "0".repeat(64));
    assert_eq!(
        h.send(M::GET, &forged, None, None).await.0,
        StatusCode::FORBIDDEN
    );
    let other_pack = format!(
        "/v1/packs/{}?{}",
        ghost,
        url.split_once('?').expect("query").1
    );
    assert_eq!(
        h.send(M::GET, &other_pack, None, None).await.0,
        StatusCode::FORBIDDEN
    );
    let expired = srv
        .server
        .policy()
        .sign_pack_until(p, &alice_file, 1_000_000);
    assert_eq!(
        h.send(M::GET, &format!("/v1/packs/{p}?{expired}"), None, None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let stretched = url.replace("exp=", "exp=1");
    assert_eq!(
        h.send(M::GET, &stretched, None, None).await.0,
        StatusCode::FORBIDDEN
    );
    // Only the canonical query the server wrote: exp in plain decimal,
    // ids and signature in lower-case hex (one URL per signature).
    let param = |name: &str| {
        url.split_once('?')
            .expect("query")
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(name))
            .expect("param")
            .to_string()
    };
    let (exp, sig, file) = (param("exp="), param("sig="), param("file="));
    assert!(sig.bytes().any(|c| c.is_ascii_alphabetic()), "{sig}");
    for bad in [
        url.replace(&format!("exp={exp}"), &format!("exp=%2B{exp}")),
        url.replace(&format!("exp={exp}"), &format!("exp=0{exp}")),
        url.replace(&sig, &sig.to_ascii_uppercase()),
        url.replace(&file, &file.to_ascii_uppercase()),
    ] {
        assert_eq!(
            h.get_range(&bad, a, b).await.0,
            StatusCode::FORBIDDEN,
            "{bad}"
        );
    }
    // HEAD is held to the GET's checks: a range inside the records only.
    let head = |range: Option<(u64, u64)>| {
        let mut rb = h.http.head(format!("{}{url}", h.url));
        if let Some((a, b)) = range {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={a}-{b}"));
        }
        async move { rb.send().await.expect("send").status() }
    };
    assert_eq!(head(Some((a, b))).await, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        head(None).await,
        StatusCode::FORBIDDEN,
        "HEAD of a whole pack"
    );
    assert_eq!(head(Some((b, b + 1_000_000))).await, StatusCode::FORBIDDEN);
    assert_eq!(
        head(Some((1u64 << 40, (1u64 << 40) + 1))).await,
        StatusCode::FORBIDDEN
    );
    // A refusal does not tell the pack's size.
    let pack_size = store.pack_bytes(p).expect("pack").len();
    for (range, what) in [(None, "no range"), (Some((a, 1u64 << 40)), "past the end")] {
        let mut rb = h.http.get(format!("{}{url}", h.url));
        if let Some((x, y)) = range {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={x}-{y}"));
        }
        let resp = rb.send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        let text = resp.text().await.expect("body");
        assert!(
            !text.contains(&pack_size.to_string()) && !text.contains(&(pack_size - 1).to_string()),
            "{what}: {text}"
        );
    }

    // Uploads that must be refused whole.
    let put_pack = |id: tessera::PackId, b: Vec<u8>| {
        let h = &h;
        async move {
            h.send(M::PUT, &format!("/v1/packs/{id}"), Some(ALICE), Some(b))
                .await
                .0
        }
    };
    let mut flipped = good_pack.clone();
    flipped[100] ^= 1;
    assert_eq!(
        put_pack(pack, flipped.clone()).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let flipped_id = tessera::testing::pack_id_of(&flipped);
    assert_eq!(
        put_pack(flipped_id, flipped).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let cut = good_pack[..good_pack.len() - 77].to_vec();
    assert_eq!(
        put_pack(tessera::testing::pack_id_of(&cut), cut).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        put_pack(pack, Vec::new()).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // A pack under the body limit whose chunks decode to more than it (a
    // "zip bomb") is refused from its chunk table, before any decoding.
    let text: Vec<u8> = (0..220_000u32)
        .flat_map(|i| format!("row {i:08} value {}\n", i % 977).into_bytes())
        .collect();
    assert!(text.len() > 4 << 20);
    let text_file = client_store.put_bytes(&text, &[]).expect("put").file_id;
    let text_ids: Vec<ChunkId> = client_store
        .chunk_list(&text_file)
        .expect("chunks")
        .iter()
        .map(|c| c.0)
        .collect();
    let (bomb, bomb_bytes) = client_store.export_pack(&text_ids).expect("export");
    assert!(bomb_bytes.len() < 4 << 20, "{} bytes", bomb_bytes.len());
    let (st, body) = h
        .send(
            M::PUT,
            &format!("/v1/packs/{bomb}"),
            Some(ALICE),
            Some(bomb_bytes),
        )
        .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("decode to more than"), "{body}");
    // A declared length over the limit is refused before the body is read
    // (raw, because a client still sending when the answer comes may see
    // the connection reset instead of the answer).
    let head = format!(
        "PUT /v1/packs/{pack} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: {}\r\n\r\n",
        (4 << 20) + 1
    );
    assert!(raw_status(srv.addr, &head)
        .await
        .starts_with("HTTP/1.1 413"));
    // Out of scope / anonymous uploads.
    let (st, _) = h
        .send(
            M::PUT,
            &format!("/v1/packs/{pack}"),
            Some(READER),
            Some(good_pack.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = h
        .send(
            M::PUT,
            &format!("/v1/packs/{pack}"),
            None,
            Some(good_pack.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // A registration naming chunks the server does not hold, one that does
    // not hash to its id, and one for a ref out of scope.
    let reg = |refs: Vec<&str>, chunks: Vec<(ChunkId, u32)>, size: u64| {
        serde_json::to_vec(&RegisterRequest {
            file_id: new_file,
            size,
            chunks,
            sha256: None,
            refs: refs.into_iter().map(String::from).collect(),
        })
        .expect("json")
    };
    let size = new_data.len() as u64;
    let (st, body) = h
        .send(
            M::POST,
            "/v1/files",
            Some(ALICE),
            Some(reg(vec!["alice/new"], list.clone(), size)),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(String::from_utf8_lossy(&body).contains("not stored"));
    // Its own code: the one refusal a client cures by asking again which
    // chunks are missing.
    assert!(String::from_utf8_lossy(&body).contains("\"chunks_missing\""));
    let mut swapped = list.clone();
    swapped.swap(0, 1);
    let (st, _) = h
        .send(
            M::POST,
            "/v1/files",
            Some(ALICE),
            Some(reg(vec![], swapped, size)),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    let (st, _) = h
        .send(
            M::POST,
            "/v1/files",
            Some(ALICE),
            Some(reg(vec!["bob/new"], list.clone(), size)),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Registering an existing file of someone else's under one's own ref
    // needs its chunk list, that is, its content: allowed only for chunks
    // one could upload anyway. A list of another file's chunks with the
    // wrong size is refused.
    let bob_list = store.chunk_list(&bob_file).expect("list");
    let bad = serde_json::to_vec(&RegisterRequest {
        file_id: bob_file,
        size: 5,
        chunks: bob_list,
        sha256: None,
        refs: vec!["alice/steal".into()],
    })
    .expect("json");
    assert_eq!(
        h.send(M::POST, "/v1/files", Some(ALICE), Some(bad)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Malformed and oversized JSON.
    for body in [
        b"{".to_vec(),
        b"[]".to_vec(),
        b"{\"chunks\": [\"xyz\"]}".to_vec(),
    ] {
        assert_eq!(
            h.send(M::POST, "/v1/chunks/missing", Some(ALICE), Some(body))
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
    }
    let head = format!(
        "POST /v1/chunks/missing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: {}\r\n\r\n{{\"chunks\": [",
        (1 << 20) + 10
    );
    assert!(raw_status(srv.addr, &head)
        .await
        .starts_with("HTTP/1.1 413"));
    // The same, streamed without a Content-Length (chunked).
    let mut sock = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/chunks/missing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.expect("write");
    let piece = format!("10000\r\n{}\r\n", " ".repeat(64 << 10));
    for _ in 0..40 {
        if sock.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "chunked oversized body: {answer}"
    );

    // A body that stalls: 408. Headers that never end: the connection is closed.
    let mut sock = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let req = format!(
        "PUT /v1/packs/{pack} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "stalled body: {answer}");
    let mut sock = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    sock.write_all(b"GET /v1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "a connection with unfinished headers was kept open"
    );

    let after = snapshot(&store, &root);
    assert_eq!(before, after, "a refused request changed the store");

    // The same token does what it may: read public files anonymously,
    // upload, register under its own prefix.
    let (st, body) = h.send(M::GET, &g("public/m@v1:w.bin"), None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == public_data);
    assert_eq!(put_pack(pack, good_pack).await, StatusCode::CREATED);
    let (st, _) = h
        .send(
            M::POST,
            "/v1/files",
            Some(ALICE),
            Some(reg(vec!["alice/new"], list, size)),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, body) = h.send(M::GET, &g("alice/new"), Some(ALICE), None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == new_data);
    // Bob cannot read it; the reader token (alice/ prefix) can.
    assert_eq!(
        h.send(M::GET, &g(&new_file.to_hex()), Some(BOB), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.send(M::GET, &g(&new_file.to_hex()), Some(READER), None)
            .await
            .0,
        StatusCode::OK
    );
    let _ = public_file;
    srv.stop().await;
}

/// A pack can hold chunks of several files (one commit, or a repack that
/// combined packs): the URL a reader gets for one file reads that file's
/// records and nothing else of the pack (a private file's bytes beside a
/// public one's stay private), and a client's pull through such URLs works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_url_reads_only_its_files_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let secret = noise(700_000, 41);
    let public = noise(300_000, 42);
    let mut ing = store.ingest();
    ing.add("secret", &secret[..], &["bob/secret@v1:w.bin"], &mut |_| {})
        .expect("stage");
    let public_file = ing
        .add("public", &public[..], &["public/m@v1:w.bin"], &mut |_| {})
        .expect("stage");
    ing.commit().expect("commit");
    let secret_file = store.resolve_ref("bob/secret@v1:w.bin").expect("ref");
    let shared: Vec<_> = store
        .info(&public_file)
        .expect("info")
        .packs
        .into_iter()
        .filter(|p| store.info(&secret_file).expect("info").packs.contains(p))
        .collect();
    assert!(!shared.is_empty(), "the two files share no pack");
    let srv = TestServer::start(store.clone(), policy(), ServerConfig::default()).await;
    let h = H {
        http: reqwest::Client::new(),
        url: srv.url.clone(),
    };
    let resp: ReconstructionResponse = serde_json::from_slice(
        &h.send(
            Method::GET,
            "/v1/reconstructions/public/m@v1:w.bin",
            None,
            None,
        )
        .await
        .1,
    )
    .expect("reconstruction");
    let pack = shared[0];
    let url = resp
        .pack_urls
        .get(&pack)
        .expect("a URL for the shared pack");
    let secret_spans = store.pack_spans(&secret_file, &pack).expect("spans");
    assert!(!secret_spans.is_empty());
    for (a, b) in secret_spans {
        let (st, body) = h.get_range(url, a, b - 1).await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "secret records {a}..{b} readable"
        );
        assert!(body.len() < 1000, "an error, not bytes");
    }
    for t in resp.reconstruction.terms.iter().filter(|t| t.pack == pack) {
        let (st, body) = h.get_range(url, t.pack_start, t.pack_end - 1).await;
        assert_eq!(st, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body.len() as u64, t.pack_end - t.pack_start);
    }
    // Whether the secret is stored is not revealed either: by sha256 or by
    // file id, it answers exactly as content that is not stored.
    let zeros = "0".repeat(64);
    let secret_sha = store.info(&secret_file).expect("info").sha256.to_hex();
    for (held, absent) in [
        (format!("sha256:{secret_sha}"), format!("sha256:{zeros}")),
        (secret_file.to_hex(), zeros.clone()),
        (secret_sha.clone(), zeros.clone()),
    ] {
        let answer = |name: String| {
            let h = &h;
            async move {
                let (st, body) = h
                    .send(Method::GET, &format!("/v1/files/{name}"), None, None)
                    .await;
                (st, String::from_utf8_lossy(&body).replace(&name, "NAME"))
            }
        };
        assert_eq!(answer(held).await, answer(absent).await);
    }
    // A client pulls the public file through those URLs.
    let local = open(&tmp.path().join("client"));
    let remote = tessera_http::client::Client::new(&srv.url, Default::default()).expect("client");
    let out = tmp.path().join("public.bin");
    let got = tessera_http::client::pull(
        &remote,
        &local,
        "public/m@v1:w.bin",
        &out,
        std::sync::Arc::new(tessera_http::client::NoProgress),
    )
    .await
    .expect("pull");
    assert_eq!(got.file_id, public_file);
    assert!(
        std::fs::read(&out).expect("pulled") == public,
        "pulled bytes differ"
    );
}

/// A client that stops reading a response loses its connection once the
/// server's writes have stalled for `write_stall_timeout`: it cannot hold a
/// connection slot and the response's buffer for as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let size = 48usize << 20;
    store
        .put_bytes(&noise(size, 51), &["public/big@v1:w.bin"])
        .expect("put");
    let config = ServerConfig {
        write_stall_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let srv = TestServer::start(store, tessera_http::Policy::open(), config).await;
    let mut sock = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    sock.write_all(b"GET /v1/files/public%2Fbig%40v1%3Aw.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    // Read nothing for a while: the socket buffers fill, the server stalls.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(
        got < size,
        "the whole response came: the stall did not end it"
    );
}
