//! `push`: files into the local store, then to a server, uploading only the
//! chunks the server lacks (as packs of the locally stored records), then
//! registering each file with its refs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tessera::{ChunkId, FileId, PutReport, Sha256, Store};

use super::{Client, ClientError, ClientResult, Progress, StatusCode};
use crate::protocol::RegisterRequest;

/// One file to push.
#[derive(Clone, Debug)]
pub struct PushInput {
    /// The file (`None`: standard input).
    pub path: Option<PathBuf>,
    /// How it is shown in reports.
    pub shown: String,
    /// The ref to point at it on the server.
    pub ref_name: Option<String>,
}

/// What a push did for one file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushFile {
    /// The input as shown.
    pub path: String,
    /// The ref set on the server.
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    /// The file id.
    pub file_id: FileId,
    /// Its SHA-256 (computed by the server, equal to the local one).
    pub sha256: Sha256,
    /// Its size.
    pub size: u64,
    /// Its chunks.
    pub chunks: u64,
    /// Whether the server did not hold the file before.
    pub new_file: bool,
}

/// What a push did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushReport {
    /// The files, in input order.
    pub files: Vec<PushFile>,
    /// Pack bytes uploaded.
    pub bytes_uploaded: u64,
    /// Packs uploaded.
    pub packs_uploaded: u64,
    /// Chunks uploaded (those the server lacked).
    pub chunks_uploaded: u64,
    /// Distinct chunks of all the files.
    pub chunks_total: u64,
    /// HTTP requests sent.
    pub requests: u64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tessera::Result<T> + Send + 'static,
) -> ClientResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Usage(format!("a worker failed: {e}")))?
        .map_err(ClientError::Engine)
}

/// Pushes `inputs`: stores them in `store` (the local chunk cache), asks
/// the server which chunks it lacks, uploads those in packs of at most
/// [`super::ClientOptions::max_pack_bytes`], and registers every file with
/// its ref.
pub async fn push(
    client: &Client,
    store: &Store,
    inputs: &[PushInput],
    progress: Arc<dyn Progress>,
) -> ClientResult<PushReport> {
    let requests_before = client.requests();
    // 1. Into the local store.
    let mut local = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (st, path) = (store.clone(), input.path.clone());
        let rep = blocking(move || match path {
            Some(p) => st.put_file(&p, &[]),
            None => st.put("stdin", std::io::stdin(), &[]),
        })
        .await?;
        let (st, id) = (store.clone(), rep.file_id);
        let list = blocking(move || st.chunk_list(&id)).await?;
        local.push((rep, list));
    }
    // 2–4, in rounds: a registration the server refuses because chunks it
    // named as held are gone meanwhile (another node's GC deleted their
    // pack: 503 busy, or 422 "not stored" on the retry) is planned again
    // from a fresh "missing" answer, at most REPLAN_ROUNDS times.
    let mut pending: Vec<Local> = local
        .into_iter()
        .zip(inputs.iter().cloned())
        .map(|((rep, list), input)| (rep, list, input))
        .collect();
    let mut files: Vec<Option<PushFile>> = vec![None; pending.len()];
    let mut order: Vec<usize> = (0..pending.len()).collect();
    let (mut bytes_uploaded, mut packs_uploaded, mut chunks_uploaded) = (0u64, 0u64, 0u64);
    let mut chunks_total = 0u64;
    for round in 0..REPLAN_ROUNDS {
        let up = upload_missing(client, store, &pending, &progress).await?;
        bytes_uploaded += up.bytes;
        packs_uploaded += up.packs;
        chunks_uploaded += up.chunks;
        if round == 0 {
            chunks_total = up.total;
        }
        let results = register_all(client, &pending).await;
        let mut again = Vec::new();
        let mut again_order = Vec::new();
        let mut last_err = None;
        for ((r, item), at) in results.into_iter().zip(pending).zip(order) {
            match r {
                Ok(f) => files[at] = Some(f),
                Err(e) if replannable(&e) && round + 1 < REPLAN_ROUNDS => {
                    tracing::warn!(error = %e, "the server refused a registration; asking again which chunks it lacks");
                    again.push(item);
                    again_order.push(at);
                }
                Err(e) => {
                    last_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        pending = again;
        order = again_order;
        if pending.is_empty() {
            break;
        }
    }
    let files = files
        .into_iter()
        .map(|f| f.ok_or_else(|| ClientError::Usage("a file was never registered".into())))
        .collect::<ClientResult<Vec<_>>>()?;
    Ok(PushReport {
        files,
        bytes_uploaded,
        packs_uploaded,
        chunks_uploaded,
        chunks_total,
        requests: client.requests() - requests_before,
    })
}

/// A file stored locally: what `put` reported, its chunk list, and where
/// it goes.
type Local = (PutReport, Vec<(ChunkId, u32)>, PushInput);

/// Rounds of asking, uploading and registering before a push gives up.
const REPLAN_ROUNDS: usize = 3;

/// A refusal a new plan can cure: the server no longer holds chunks it
/// said it held (503 busy while it forgets a deleted pack, 422
/// `chunks_missing` after). Other refusals (a pickle policy, a list that
/// does not hash to its id) would only be repeated.
fn replannable(e: &ClientError) -> bool {
    matches!(e, ClientError::Http { status, code, .. }
        if *status == StatusCode::SERVICE_UNAVAILABLE
            || (*status == StatusCode::UNPROCESSABLE_ENTITY && code == "chunks_missing"))
}

/// What one upload round sent.
struct Uploaded {
    bytes: u64,
    packs: u64,
    chunks: u64,
    /// Distinct chunks of the files.
    total: u64,
}

/// Asks the server which chunks of `files` it lacks and uploads those in
/// packs, in file order.
async fn upload_missing(
    client: &Client,
    store: &Store,
    files: &[Local],
    progress: &Arc<dyn Progress>,
) -> ClientResult<Uploaded> {
    let mut seen = HashSet::new();
    let mut ids: Vec<(ChunkId, u32)> = Vec::new();
    for (_, list, _) in files {
        for c in list {
            if seen.insert(c.0) {
                ids.push(*c);
            }
        }
    }
    let just_ids: Vec<ChunkId> = ids.iter().map(|c| c.0).collect();
    let refs: Vec<String> = files
        .iter()
        .filter_map(|(_, _, input)| input.ref_name.clone())
        .collect();
    let (missing, _) = client.missing_chunks(&just_ids, &refs).await?;
    let missing: HashSet<ChunkId> = missing.into_iter().collect();
    let max = client.options().max_pack_bytes.max(1);
    let mut groups: Vec<Vec<ChunkId>> = Vec::new();
    let mut cur: Vec<ChunkId> = Vec::new();
    let (mut cur_bytes, mut total_raw) = (0u64, 0u64);
    for (id, len) in ids.iter().filter(|c| missing.contains(&c.0)) {
        if !cur.is_empty() && cur_bytes + u64::from(*len) > max {
            groups.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.push(*id);
        cur_bytes += u64::from(*len);
        total_raw += u64::from(*len);
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    progress.start("upload", total_raw);
    let uploaded = Arc::new(AtomicU64::new(0));
    let packs = groups.len() as u64;
    futures_util::stream::iter(groups.into_iter().map(Ok))
        .try_for_each_concurrent(client.options().parallel.clamp(1, 2), |group| {
            let (st, uploaded, progress) = (store.clone(), uploaded.clone(), progress.clone());
            let client = client.clone();
            async move {
                let (pack, bytes) = blocking(move || st.export_pack(&group)).await?;
                let n = bytes.len() as u64;
                let rep = client.put_pack(pack, Bytes::from(bytes)).await?;
                if rep.pack != pack {
                    return Err(ClientError::Protocol {
                        url: client.url(&format!("/v1/packs/{pack}")),
                        detail: format!("the server admitted pack {} instead", rep.pack),
                    });
                }
                uploaded.fetch_add(n, Ordering::Relaxed);
                progress.advance(n);
                Ok::<_, ClientError>(())
            }
        })
        .await?;
    progress.finish();
    Ok(Uploaded {
        bytes: uploaded.load(Ordering::Relaxed),
        packs,
        chunks: missing.len() as u64,
        total: ids.len() as u64,
    })
}

/// Registers every file with its ref; one result per file, in order.
async fn register_all(client: &Client, files: &[Local]) -> Vec<ClientResult<PushFile>> {
    let registrations: Vec<_> = files
        .iter()
        .map(|(rep, list, input)| {
            let client = client.clone();
            let chunks = list.len() as u64;
            let req = RegisterRequest {
                file_id: rep.file_id,
                size: rep.size,
                chunks: list.clone(),
                sha256: Some(rep.sha256),
                refs: input.ref_name.iter().cloned().collect(),
            };
            let input = input.clone();
            async move {
                let r = client.register(&req).await?;
                Ok::<_, ClientError>(PushFile {
                    path: input.shown,
                    ref_name: input.ref_name,
                    file_id: r.file_id,
                    sha256: r.sha256,
                    size: r.size,
                    chunks,
                    new_file: r.new_file,
                })
            }
        })
        .collect();
    futures_util::stream::iter(registrations)
        .buffered(client.options().parallel.max(1))
        .collect()
        .await
}
