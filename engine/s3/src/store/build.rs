//! Building an [`S3Store`] from its URL and [`S3Options`]: the object_store
//! client (environment, explicit settings, timeouts, retries, the counting
//! connector), the runtime bridge, the staging directory and the caches.

#[allow(clippy::wildcard_imports)]
use super::*;

impl S3Store {
    /// The store at `s3://bucket/prefix` (the prefix may be empty), with
    /// the connection from the `AWS_*` environment variables and/or
    /// `options.config`. Nothing is sent until the first operation.
    pub fn from_url(url: &str, options: S3Options) -> io::Result<S3Store> {
        let (bucket, prefix) = parse_url(url)?;
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let mut b = if options.from_env {
            AmazonS3Builder::from_env()
        } else {
            AmazonS3Builder::new()
        };
        for (k, v) in &options.config {
            let key: AmazonS3ConfigKey = k
                .parse()
                .map_err(|e| invalid(format!("{url}: S3 setting {k:?}: {e}")))?;
            b = b.with_config(key, v);
        }
        b = b.with_bucket_name(&bucket);
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let timeout_key = AmazonS3ConfigKey::Client(ClientConfigKey::Timeout);
        let request_timeout = options.request_timeout.unwrap_or(Duration::from_secs(60));
        if options.request_timeout.is_some() || b.get_config_value(&timeout_key).is_none() {
            b = b.with_config(timeout_key, ms(request_timeout));
        }
        let connect_key = AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout);
        let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(5));
        if options.connect_timeout.is_some() || b.get_config_value(&connect_key).is_none() {
            b = b.with_config(connect_key, ms(connect_timeout));
        }
        let r = &options.retry;
        b = b.with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: r.init_backoff,
                max_backoff: r.max_backoff,
                base: 2.0,
            },
            max_retries: r.max_retries,
            retry_timeout: r.retry_timeout,
        });
        let counters = Arc::new(Counters::default());
        b = b.with_http_connector(CountingConnector {
            counters: counters.clone(),
        });
        let client = b
            .build()
            .map_err(|e| invalid(format!("{url}: configure the S3 client: {e}")))?;
        // A last-resort bound on any one call: retries stop starting after
        // `retry_timeout`, each attempt is bounded by the request timeout.
        let deadline = r.retry_timeout
            + r.max_backoff
            + request_timeout * (CREATE_ATTEMPTS + 1)
            + Duration::from_secs(30);
        let bridge = Bridge::new(options.runtime_threads, deadline)?;
        let staging = options.staging_dir.clone().unwrap_or_else(|| {
            let h = blake3::hash(url.as_bytes()).to_hex();
            std::env::temp_dir()
                .join("tessera-s3")
                .join(&h.as_str()[..16])
        });
        let disk = match &options.disk_cache_dir {
            Some(d) => Some(DiskCache::open(d, options.disk_cache_bytes)?),
            None => None,
        };
        Ok(S3Store {
            inner: Arc::new(Inner {
                reads: Arc::new(Reads::new(
                    url,
                    Arc::new(client),
                    bridge,
                    counters.clone(),
                    BlockCache::new(options.cache_bytes, disk, counters.clone()),
                    options.block_size,
                    options.readahead_blocks,
                )),
                prefix,
                staging,
                opening: Mutex::new(OpenState::default()),
                shared: options.shared,
                create_retry: options.retry.clone(),
            }),
        })
    }
}
