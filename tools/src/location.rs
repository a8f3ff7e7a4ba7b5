//! Where a store is: `--store DIR` (or `file://DIR`), or `--store
//! s3://bucket/prefix` with its local cache (`--cache DIR`, else a per-user
//! default), and how each is opened.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera::storage::ObjectStore;
use tessera::{RepairReport, Store, StoreOptions};
use tessera_s3::{RetryOptions, S3Options, S3Store};

use crate::{CliError, CliResult};

/// Retries of a failed S3 request (backoff from 100 ms doubling to 5 s:
/// about 20 s of an unreachable server before a command gives up);
/// `TESSERA_S3_RETRIES` overrides it.
const S3_RETRIES: usize = 8;
/// Bound of the on-disk cache of pack ranges in an s3:// store's cache
/// directory, in MiB; `TESSERA_S3_DISK_CACHE_MIB` overrides it (0: none).
const DISK_CACHE_MIB: u64 = 1024;

/// A store location given on the command line.
#[derive(Clone, Debug)]
pub(crate) enum Location {
    /// A directory store.
    Dir(PathBuf),
    /// A store in an S3-compatible bucket; its index, lock and staging
    /// area live in `cache`.
    S3 { url: String, cache: PathBuf },
}

/// The endpoint the S3 client will use (as object_store reads it), for the
/// default cache path: two servers' buckets of one name get two caches.
fn endpoint() -> String {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "aws".into())
}

/// `$XDG_CACHE_HOME/tessera/<bucket>/<16 hex of the endpoint and URL>`
/// (`~/.cache` without XDG_CACHE_HOME).
fn default_cache(url: &str) -> CliResult<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no cache directory for {url}: pass --cache DIR (or set TESSERA_CACHE, XDG_CACHE_HOME or HOME)"
            ))
        })?;
    let bucket = url
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap_or_default();
    let h = blake3::hash(format!("{}\n{url}", endpoint()).as_bytes()).to_hex();
    Ok(base.join("tessera").join(bucket).join(&h.as_str()[..16]))
}

impl Location {
    /// `--store` (DIR, `file://DIR` or `s3://bucket/prefix`) and `--cache`.
    pub(crate) fn parse(store: Option<&str>, cache: Option<&Path>) -> CliResult<Location> {
        let store = store.ok_or_else(|| {
            CliError::Usage(
                "no store given: pass --store DIR|s3://BUCKET/PREFIX or set TESSERA_STORE".into(),
            )
        })?;
        if store.starts_with("s3://") {
            let url = store.trim_end_matches('/').to_string();
            let cache = match cache {
                Some(c) => c.to_path_buf(),
                None => default_cache(&url)?,
            };
            return Ok(Location::S3 { url, cache });
        }
        if let Some(path) = store.strip_prefix("file://") {
            return Ok(Location::Dir(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = store.split_once("://") {
            return Err(CliError::Usage(format!(
                "--store {store}: unsupported scheme {scheme}:// (want a directory, file://DIR or s3://BUCKET/PREFIX)"
            )));
        }
        Ok(Location::Dir(PathBuf::from(store)))
    }

    /// For messages.
    pub(crate) fn display(&self) -> String {
        match self {
            Location::Dir(d) => d.display().to_string(),
            Location::S3 { url, cache } => format!("{url} (cache {})", cache.display()),
        }
    }

    /// The directory of a directory store, else a usage error naming `what`.
    pub(crate) fn dir(&self, what: &str) -> CliResult<&Path> {
        match self {
            Location::Dir(d) => Ok(d),
            Location::S3 { url, .. } => Err(CliError::Usage(format!(
                "{what} works on a directory store only, not on {url}"
            ))),
        }
    }

    /// The backend and the local directory of the store.
    fn backend(&self) -> CliResult<(Option<Arc<dyn ObjectStore>>, PathBuf)> {
        match self {
            Location::Dir(d) => Ok((None, d.clone())),
            Location::S3 { url, cache } => {
                let d = S3Options::default();
                let disk_mib: u64 = match std::env::var("TESSERA_S3_DISK_CACHE_MIB") {
                    Ok(v) => v.trim().parse().map_err(|_| {
                        CliError::Usage(format!(
                            "TESSERA_S3_DISK_CACHE_MIB={v}: expected a number of MiB"
                        ))
                    })?,
                    Err(_) => DISK_CACHE_MIB,
                };
                let opts = S3Options {
                    staging_dir: Some(cache.join("staging")),
                    // Pack ranges this node fetched, kept for later
                    // commands (TESSERA_S3_DISK_CACHE_MIB, 0: none).
                    disk_cache_dir: (disk_mib > 0).then(|| cache.join("ranges")),
                    disk_cache_bytes: disk_mib << 20,
                    // Ride out a server restart of several seconds (a put
                    // that fails is not acknowledged; it is run again).
                    retry: RetryOptions {
                        max_retries: std::env::var("TESSERA_S3_RETRIES")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(S3_RETRIES),
                        ..d.retry.clone()
                    },
                    ..d
                };
                let s3 = S3Store::from_url(url, opts)
                    .map_err(|e| CliError::Usage(format!("--store {url}: {e}")))?;
                Ok((Some(Arc::new(s3)), cache.clone()))
            }
        }
    }

    /// Opens the store.
    pub(crate) fn open(&self, opts: StoreOptions) -> CliResult<Store> {
        Ok(match self.backend()? {
            (None, dir) => Store::open(dir, opts)?,
            (Some(objects), dir) => Store::open_with(objects, dir, opts)?,
        })
    }

    /// `repair config`.
    pub(crate) fn repair_config(
        &self,
        chunking: tessera::ChunkParams,
        opts: &StoreOptions,
    ) -> CliResult<tessera::ConfigRepair> {
        Ok(match self.backend()? {
            (None, dir) => Store::repair_config(dir, chunking, opts)?,
            (Some(objects), dir) => Store::repair_config_with(objects, dir, chunking, opts)?,
        })
    }

    /// `repair index`.
    pub(crate) fn repair_index(&self, opts: StoreOptions) -> CliResult<RepairReport> {
        Ok(match self.backend()? {
            (None, dir) => Store::repair_index(dir, opts)?,
            (Some(objects), dir) => Store::repair_index_with(objects, dir, opts)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert!(matches!(
            Location::parse(Some("/tmp/x"), None),
            Ok(Location::Dir(d)) if d == Path::new("/tmp/x")
        ));
        assert!(matches!(
            Location::parse(Some("file:///tmp/x"), None),
            Ok(Location::Dir(d)) if d == Path::new("/tmp/x")
        ));
        match Location::parse(Some("s3://b/p/"), Some(Path::new("/c"))) {
            Ok(Location::S3 { url, cache }) => {
                assert_eq!(url, "s3://b/p");
                assert_eq!(cache, Path::new("/c"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Location::parse(Some("gs://b/p"), None),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            Location::parse(None, None),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn default_caches_differ_by_prefix() {
        let a = default_cache("s3://b/one");
        let b = default_cache("s3://b/two");
        if let (Ok(a), Ok(b)) = (a, b) {
            assert_ne!(a, b);
            assert!(
                a.to_string_lossy().contains("/tessera/b/"),
                "{}",
                a.display()
            );
        }
    }
}
