//! The server's HTTP surface, with the real `curl` and with the client:
//! full and ranged GETs and their headers (206, Content-Range, 416, ETag,
//! 304, If-Range, HEAD), names (ids, sha256, percent-encoded refs),
//! reconstructions and pack URLs, refs.

mod common;

use bytes::Bytes;
use common::{curl, open, s, TestServer};
use tessera::verify_fetched;
use tessera_http::client::{Client, ClientOptions};
use tessera_http::protocol::{
    encode_segment, ReconstructionResponse, RefInfo, RefList, ServerInfo,
};
use tessera_http::{Policy, ServerConfig};
use tessera_synth::noise;

const REF: &str = "acme/llm@v1:model.bin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_ranges_etags_and_refs_over_curl_and_the_client() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let data = noise(1_500_000, 11);
    let rep = store.put_bytes(&data, &[REF]).expect("put");
    let (id, size) = (rep.file_id, data.len() as u64);
    let srv = TestServer::start(store.clone(), Policy::open(), ServerConfig::default()).await;
    let u = |p: &str| format!("{}{p}", srv.url);
    let by_ref = u(&format!("/v1/files/{}", encode_segment(REF)));
    let etag = format!("\"{id}\"");

    let r = curl(vec![u("/healthz")]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = curl(vec![u("/v1")]).await;
    let info: ServerInfo = serde_json::from_slice(&r.body).expect("info");
    assert_eq!(info.protocol, 1);
    assert_eq!(info.chunking.avg, store.chunk_params().avg);

    // The whole file, by every kind of name.
    let r = curl(vec![by_ref.clone()]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == data, "full GET returned other bytes");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r
        .header("cache-control")
        .expect("cache")
        .contains("immutable"));
    for name in [
        id.to_hex(),
        format!("file:{id}"),
        format!("sha256:{}", rep.sha256),
        rep.sha256.to_hex(),
        format!("ref:{REF}"),
    ] {
        let r = curl(vec![u(&format!("/v1/files/{}", encode_segment(&name)))]).await;
        assert_eq!(r.status, 200, "{name}");
        assert!(r.body == data, "{name}: other bytes");
    }
    // A ref given as the rest of the path, slashes unencoded.
    let r = curl(vec![u("/v1/files/acme/llm@v1:model.bin")]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == data);

    // Ranges.
    let r = curl(vec![s("-r"), s("0-99"), by_ref.clone()]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-99/{size}").as_str())
    );
    assert!(r.body == data[..100]);
    let r = curl(vec![s("-r"), s("1000000-"), by_ref.clone()]).await;
    assert_eq!(r.status, 206);
    assert!(r.body == data[1_000_000..]);
    let r = curl(vec![s("-H"), s("Range: bytes=-500"), by_ref.clone()]).await;
    assert_eq!(r.status, 206);
    assert!(r.body == data[data.len() - 500..]);
    let r = curl(vec![s("-r"), s("1499990-2000000"), by_ref.clone()]).await;
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1499990-1499999/{size}").as_str())
    );
    assert_eq!(r.body.len(), 10);
    let r = curl(vec![s("-r"), format!("{size}-"), by_ref.clone()]).await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    assert!(r.text().contains("\"code\":\"range\""), "{}", r.text());
    // Several ranges: the whole file.
    let r = curl(vec![s("-r"), s("0-1,5-6"), by_ref.clone()]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, size);

    // Conditional requests.
    let inm = format!("If-None-Match: {etag}");
    let r = curl(vec![s("-H"), inm, by_ref.clone()]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = curl(vec![s("-H"), s("If-None-Match: \"other\""), by_ref.clone()]).await;
    assert_eq!(r.status, 200);
    let ir = format!("If-Range: {etag}");
    let r = curl(vec![s("-H"), ir, s("-r"), s("10-19"), by_ref.clone()]).await;
    assert_eq!(r.status, 206);
    assert!(r.body == data[10..20]);
    let r = curl(vec![
        s("-H"),
        s("If-Range: \"stale\""),
        s("-r"),
        s("10-19"),
        by_ref.clone(),
    ])
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, size);
    // HEAD: headers only.
    let r = curl(vec![s("-I"), by_ref.clone()]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));

    // Unknown names: 404 with a JSON error naming the object.
    let r = curl(vec![u("/v1/files/acme%2Fnope")]).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("acme/nope"), "{}", r.text());

    // The client: whole and ranged.
    let client = Client::new(&srv.url, ClientOptions::default()).expect("client");
    let all = client.get_file(REF, None).await.expect("get");
    assert!(all == data);
    let part = client.get_file(REF, Some((5, 1004))).await.expect("range");
    assert!(part == data[5..1005]);
    assert!(client.get_file(REF, Some((size, size + 5))).await.is_err());

    // A reconstruction, and its pack URLs serve the records it names.
    let r = curl(vec![u(&format!(
        "/v1/reconstructions/{}",
        encode_segment(REF)
    ))])
    .await;
    assert_eq!(r.status, 200);
    let rec: ReconstructionResponse = serde_json::from_slice(&r.body).expect("rec");
    rec.reconstruction.check().expect("check");
    assert_eq!(rec.reconstruction.file_id, id);
    let local = open(&tmp.path().join("local"));
    let plan = local
        .plan_download(&rec.reconstruction, 0, 1 << 20)
        .expect("plan");
    let f = &plan.fetches[0];
    let url = u(&rec.pack_urls[&f.pack]);
    let r = curl(vec![
        s("-r"),
        format!("{}-{}", f.start, f.end - 1),
        url.clone(),
    ])
    .await;
    assert_eq!(r.status, 206);
    let chunks = verify_fetched(f, &Bytes::from(r.body)).expect("verified");
    assert_eq!(chunks.len(), f.chunks.len());
    let r = curl(vec![s("-H"), format!("If-None-Match: \"{}\"", f.pack), url]).await;
    assert_eq!(r.status, 304);
    // A ranged reconstruction.
    let r = curl(vec![
        s("-r"),
        s("700000-700999"),
        u(&format!("/v1/reconstructions/{id}")),
    ])
    .await;
    let rec: ReconstructionResponse = serde_json::from_slice(&r.body).expect("rec");
    assert_eq!(
        (rec.reconstruction.offset, rec.reconstruction.length),
        (700_000, 1000)
    );
    rec.reconstruction.check().expect("check");

    // Refs: read, set, list, delete; names with / @ : travel encoded.
    let r = curl(vec![u(&format!("/v1/refs/{}", encode_segment(REF)))]).await;
    let ri: RefInfo = serde_json::from_slice(&r.body).expect("ref");
    assert_eq!((ri.file_id, ri.size, ri.sha256), (id, size, rep.sha256));
    let other = "acme/llm@v2:model copy.bin";
    let r = curl(vec![
        s("-X"),
        s("PUT"),
        s("-d"),
        format!("{{\"file_id\": \"{id}\"}}"),
        u(&format!("/v1/refs/{}", encode_segment(other))),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(store.resolve_ref(other).expect("set"), id);
    let r = curl(vec![u("/v1/refs?prefix=acme%2Fllm%40v2")]).await;
    let list: RefList = serde_json::from_slice(&r.body).expect("list");
    assert_eq!(list.refs.len(), 1);
    assert_eq!(list.refs[0].name, other);
    let listed = client.list_refs("acme/").await.expect("list");
    assert_eq!(listed.refs.len(), 2);
    assert!(listed.unreadable.is_empty());
    let r = curl(vec![
        s("-X"),
        s("DELETE"),
        u(&format!("/v1/refs/{}", encode_segment(other))),
    ])
    .await;
    assert_eq!(r.status, 204);
    assert!(store.resolve_ref(other).is_err());
    let r = curl(vec![u(&format!("/v1/refs/{}", encode_segment(other)))]).await;
    assert_eq!(r.status, 404);
    srv.stop().await;
}

/// A safetensors file: an 8-byte little-endian header length, the JSON
/// header, then the tensors' bytes.
fn safetensors(tensors: &[(&str, &[u8])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "U8", "shape": [bytes.len()],
                "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// One tensor of a stored safetensors file over `curl`, by path
/// (`{id}/tensors/{name}`) and by query (`?tensor=` after a ref): exactly its
/// bytes, ranges relative to the tensor, an ETag of its own, 404 for a
/// tensor the file lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tensor_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let (w, b) = (noise(400_000, 21), noise(3_000, 22));
    let file = safetensors(&[("layer.0.weight", &w), ("layer.0.bias", &b)]);
    let name = "acme/m@v1:model.safetensors";
    let id = store.put_bytes(&file, &[name]).expect("put").file_id;
    let info = store.model_info(&id).expect("info");
    let bias = info
        .tensors
        .iter()
        .find(|t| t.name == "layer.0.bias")
        .expect("bias described");
    let off = bias.offset.expect("plain bytes") as usize;
    assert_eq!(&file[off..off + bias.length as usize], &b[..]);

    let srv = TestServer::start(store.clone(), Policy::open(), ServerConfig::default()).await;
    let u = |p: &str| format!("{}{p}", srv.url);
    let by_path = u(&format!("/v1/files/{id}/tensors/layer.0.weight"));
    let r = curl(vec![by_path.clone()]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == w, "tensor by path: other bytes");
    let etag = r.header("etag").expect("etag").to_string();
    assert_ne!(etag, format!("\"{id}\""), "a tensor has its own ETag");
    let r = curl(vec![u(&format!(
        "/v1/files/{}?tensor=layer.0.bias",
        encode_segment(name)
    ))])
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body == b, "tensor by query: other bytes");
    assert_eq!(r.header("content-length"), Some("3000"));
    // The client asks the same way.
    let client = Client::new(&srv.url, ClientOptions::default()).expect("client");
    let got = client
        .get_tensor(name, "layer.0.bias")
        .await
        .expect("tensor");
    assert!(got == b, "client: other bytes");
    let missing = client
        .get_tensor(name, "nope")
        .await
        .expect_err("no such tensor");
    assert_eq!(missing.status().map(|c| c.as_u16()), Some(404), "{missing}");
    // Ranges count from the tensor's first byte.
    let r = curl(vec![s("-r"), s("100-199"), by_path.clone()]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/400000"));
    assert!(r.body == w[100..200]);
    let r = curl(vec![s("-r"), s("400000-"), by_path.clone()]).await;
    assert_eq!(r.status, 416);
    let r = curl(vec![s("-H"), format!("If-None-Match: {etag}"), by_path]).await;
    assert_eq!(r.status, 304);
    // A tensor the file lacks, and a file that is not a model.
    let r = curl(vec![u(&format!("/v1/files/{id}/tensors/nope"))]).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("nope"), "{}", r.text());
    let plain = store
        .put_bytes(&noise(10_000, 23), &[])
        .expect("put")
        .file_id;
    let r = curl(vec![u(&format!("/v1/files/{plain}/tensors/x"))]).await;
    assert_eq!(r.status, 404);
    srv.stop().await;
}
