//! The engine's [`ObjectStore`] trait on [`S3Store`] (how each call maps
//! onto S3 requests: see the crate README), and staged objects.

#[allow(clippy::wildcard_imports)]
use super::*;

/// An object being written to a local temp file, uploaded by `publish`.
struct Staged {
    inner: Arc<Inner>,
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl Staged {
    fn err(&self, what: &str, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("{what} staged object {}: {e}", self.path.display()),
        )
    }
}

impl StagedObject for Staged {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let r = match self.file.as_mut() {
            Some(f) => f.write_all(buf),
            None => Err(io::Error::other("already published")),
        };
        r.map_err(|e| self.err("write", e))
    }

    fn publish(mut self: Box<Self>, key: &str, mode: PutMode) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().map_err(|e| self.err("flush", e))?;
        }
        let data = fs::read(&self.path).map_err(|e| self.err("read back", e))?;
        // The bytes are in memory now; the file goes whatever the upload does.
        let _ = fs::remove_file(&self.path);
        self.inner.put(key, Bytes::from(data), mode)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Never published (or published: then already gone).
        drop(self.file.take());
        let _ = fs::remove_file(&self.path);
    }
}

impl ObjectStore for S3Store {
    fn location(&self) -> String {
        self.inner.reads.url.clone()
    }

    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }

    fn stage(&self) -> io::Result<Box<dyn StagedObject>> {
        let dir = &self.inner.staging;
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "create staging directory {} for {}: {e}",
                    dir.display(),
                    self.inner.reads.url
                ),
            )
        })?;
        loop {
            let path = dir.join(format!(
                "{}-{}.tmp",
                std::process::id(),
                NEXT_STAGED.fetch_add(1, Ordering::Relaxed)
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => {
                    return Ok(Box::new(Staged {
                        inner: self.inner.clone(),
                        path,
                        file: Some(BufWriter::with_capacity(1 << 20, f)),
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("create staged object {}: {e}", path.display()),
                    ))
                }
            }
        }
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> io::Result<()> {
        // Small whole objects (refs, markers, config) need no staging file.
        self.inner.put(key, Bytes::copy_from_slice(data), mode)
    }

    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        let path = self.inner.path(key)?;
        let client = self.inner.reads.client.clone();
        let object = self.inner.describe(key);
        self.inner.run("GET", key, async move {
            let r = client
                .get(&path)
                .await
                .map_err(|e| os_error("GET", &object, e))?;
            let b = r.bytes().await.map_err(|e| os_error("GET", &object, e))?;
            Ok(b.to_vec())
        })
    }

    fn open(&self, key: &str) -> io::Result<Arc<dyn ReadHandle>> {
        Ok(Arc::new(self.inner.open(key)?))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self
            .list_metas(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn shared(&self) -> bool {
        self.inner.shared
    }

    fn get_versioned(&self, key: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        match self.get_with_etag(key) {
            Ok(v) => Ok(Some((v.data.to_vec(), Version(v.etag.0)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put_if_version(&self, key: &str, data: &[u8], expect: Option<&Version>) -> io::Result<Cas> {
        let r = match expect {
            None => self.put_if_absent(key, data)?,
            Some(v) => self.put_if_match(key, data, &ETag(v.0.clone()))?,
        };
        Ok(match r {
            CasOutcome::Written(t) => Cas::Written(Version(t.0)),
            CasOutcome::Conflict => Cas::Conflict,
        })
    }

    fn list_versioned(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        Ok(self
            .list_metas(prefix)?
            .into_iter()
            .map(|(key, m)| Listed {
                key,
                version: m.e_tag.map(Version),
                modified: Some(std::time::SystemTime::from(m.last_modified)),
            })
            .collect())
    }

    fn exists(&self, key: &str) -> io::Result<bool> {
        let path = self.inner.path(key)?;
        let client = self.inner.reads.client.clone();
        let object = self.inner.describe(key);
        self.inner.run("HEAD", key, async move {
            match client.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(os_error("HEAD", &object, e)),
            }
        })
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.inner.delete(key, None)
    }

    fn delete_by(&self, key: &str, deadline: std::time::Instant) -> io::Result<()> {
        self.inner.delete(key, Some(deadline))
    }

    fn discard_staged(&self) -> io::Result<()> {
        let dir = &self.inner.staging;
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("list staging directory {}: {e}", dir.display()),
                ))
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("list staging directory {}: {e}", dir.display()),
                )
            })?;
            let name = entry.file_name();
            if name.to_str().is_some_and(is_staging_name) {
                let p = entry.path();
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("remove staged object {}: {e}", p.display()),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn foreign(&self) -> io::Result<Option<String>> {
        // The same rule as the directory backend: the markers and config at
        // the top, and packs/, recipes/, refs/ holding only two-hex-digit
        // fan-out prefixes. Staging is local, so nothing else belongs here.
        let top = self.list_level("")?;
        for o in &top.objects {
            let name = Self::last_segment(&o.location);
            if !ROOT_OBJECTS.contains(&name.as_str()) {
                return Ok(Some(format!("it holds {name:?}")));
            }
        }
        for p in &top.common_prefixes {
            let name = Self::last_segment(p);
            if !FANNED.contains(&name.as_str()) {
                return Ok(Some(format!("it holds {name:?}")));
            }
            let level = self.list_level(&name)?;
            if let Some(o) = level.objects.first() {
                let fan = Self::last_segment(&o.location);
                return Ok(Some(format!("it holds {name}/{fan}")));
            }
            for f in &level.common_prefixes {
                let fan = Self::last_segment(f);
                if fan.len() != 2 || !fan.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(Some(format!("it holds {name}/{fan}")));
                }
            }
        }
        Ok(None)
    }
}

impl S3Store {
    /// Every object under `prefix` (keys relative to the store), sorted,
    /// with what the listing says of it.
    fn list_metas(&self, prefix: &str) -> io::Result<Vec<(String, ObjectMeta)>> {
        let full = self.inner.full(prefix);
        // object_store lists whole path segments: list the deepest complete
        // "directory" of the prefix, then keep the keys that start with it.
        let dir = full.rfind('/').map_or("", |i| &full[..i]);
        let dir = if dir.is_empty() {
            None
        } else {
            Some(Path::parse(dir).map_err(|e| {
                invalid(format!(
                    "list {}: bad prefix: {e}",
                    self.inner.describe(prefix)
                ))
            })?)
        };
        let client = self.inner.reads.client.clone();
        let object = format!("{}*", self.inner.describe(prefix));
        let metas: Vec<ObjectMeta> = self.inner.run("LIST", prefix, async move {
            client
                .list(dir.as_ref())
                .try_collect()
                .await
                .map_err(|e| os_error("LIST", &object, e))
        })?;
        let mut keys: Vec<(String, ObjectMeta)> = metas
            .into_iter()
            .filter_map(|m| {
                let k = self.inner.relative(&m.location)?.to_string();
                k.starts_with(prefix).then_some((k, m))
            })
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.dedup_by(|a, b| a.0 == b.0);
        Ok(keys)
    }
}
