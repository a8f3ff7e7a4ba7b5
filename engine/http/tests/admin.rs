//! `POST /v1/admin/gc` and `/v1/admin/repack` over real `curl`: only admin
//! tokens run them, bad parameters are 400, and they reclaim what no ref
//! names while the server keeps serving what is named.

mod common;

use common::{curl, open, policy, s, TestServer, ALICE, ROOT};
use tessera_http::ServerConfig;
use tessera_synth::noise;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_run_gc_and_repack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("srv"));
    let keep = noise(1_200_000, 1);
    let gone = noise(1_200_000, 2);
    store.put_bytes(&keep, &["alice/keep"]).expect("put");
    let gone_id = store
        .put_bytes(&gone, &["alice/gone"])
        .expect("put")
        .file_id;
    store.delete_ref("alice/gone").expect("delete");
    let srv = TestServer::start(store.clone(), policy(), ServerConfig::default()).await;
    let u = |p: &str| format!("{}{p}", srv.url);
    let post = |token: Option<&str>, path: &str| {
        let mut a = vec![s("-X"), s("POST")];
        if let Some(t) = token {
            a.push(s("-H"));
            a.push(format!("Authorization: Bearer {t}"));
        }
        a.push(u(path));
        a
    };

    assert_eq!(curl(post(None, "/v1/admin/gc")).await.status, 401);
    assert_eq!(curl(post(Some(ALICE), "/v1/admin/gc")).await.status, 403);
    assert_eq!(
        curl(post(Some(ALICE), "/v1/admin/repack")).await.status,
        403
    );
    assert_eq!(
        curl(post(Some(ROOT), "/v1/admin/gc?grace=soon"))
            .await
            .status,
        400
    );
    assert_eq!(
        curl(post(Some(ROOT), "/v1/admin/repack?threshold=2"))
            .await
            .status,
        400
    );
    assert_eq!(curl(vec![u("/v1/admin/gc")]).await.status, 405);
    assert!(
        store.contains(&gone_id).expect("contains"),
        "a refused request collected"
    );

    // Default grace: the file just stored stays.
    let r = curl(post(Some(ROOT), "/v1/admin/gc")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["dead_files"], 0);
    // A dry run with no grace reports it and keeps it.
    let r = curl(post(Some(ROOT), "/v1/admin/gc?grace=0&dry_run=1")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        (v["dead_files"].as_u64(), v["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    assert!(store.contains(&gone_id).expect("contains"));

    let r = curl(post(Some(ROOT), "/v1/admin/repack?grace=0&threshold=0.9")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["gc"]["dead_files"], 1, "{v}");
    assert!(!store.contains(&gone_id).expect("contains"));
    let r = curl(vec![
        s("-H"),
        format!("Authorization: Bearer {ALICE}"),
        u("/v1/files/alice/keep"),
    ])
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body == keep,
        "the named file reads other bytes after repack"
    );
    let r = curl(vec![
        s("-H"),
        format!("Authorization: Bearer {ALICE}"),
        u(&format!("/v1/files/{gone_id}")),
    ])
    .await;
    assert_eq!(r.status, 404);
    srv.stop().await;
}
