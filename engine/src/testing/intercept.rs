//! An object store that forwards every call to another, letting a test see
//! and delay or fail chosen calls: a slow or refused request, a write held
//! on the way. Every method of [`ObjectStore`] is forwarded, those with
//! default bodies too, so a wrapper never silently drops what the store
//! underneath does differently (a deadline on a deletion, conditional
//! writes).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::storage::{Cas, Listed, ObjectStore, PutMode, ReadHandle, StagedObject, Version};

/// The calls an [`Interceptor`] is told of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// [`ObjectStore::put`].
    Put,
    /// [`ObjectStore::get`].
    Get,
    /// [`ObjectStore::open`].
    Open,
    /// [`ObjectStore::exists`].
    Exists,
    /// [`ObjectStore::delete`] or [`ObjectStore::delete_by`].
    Delete,
    /// [`ObjectStore::get_versioned`].
    GetVersioned,
    /// [`ObjectStore::put_if_version`].
    PutIfVersion,
}

/// What a test does around the calls of an [`Intercepted`] store.
pub trait Interceptor: Send + Sync + std::fmt::Debug {
    /// Before `call` on `key` is forwarded (it may wait); an error is
    /// returned instead of forwarding.
    fn before(&self, _call: Call, _key: &str) -> io::Result<()> {
        Ok(())
    }
    /// After a forwarded call: when it was sent and whether it succeeded
    /// (for a conditional write, whether it wrote).
    fn after(&self, _call: Call, _key: &str, _sent: Instant, _ok: bool) {}
}

/// `inner`, with `hooks` told of (and able to hold or fail) its calls.
#[derive(Debug)]
pub struct Intercepted<H> {
    inner: Arc<dyn ObjectStore>,
    hooks: H,
}

impl<H: Interceptor> Intercepted<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, hooks: H) -> Self {
        Intercepted { inner, hooks }
    }

    /// The hooks (a test's record of what it saw).
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The store underneath, reached without the hooks.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn around<T>(
        &self,
        call: Call,
        key: &str,
        ok: impl FnOnce(&T) -> bool,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        self.hooks.before(call, key)?;
        let sent = Instant::now();
        let r = f();
        self.hooks
            .after(call, key, sent, r.as_ref().map(ok).unwrap_or(false));
        r
    }
}

impl<H: Interceptor> ObjectStore for Intercepted<H> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
    fn stage(&self) -> io::Result<Box<dyn StagedObject>> {
        self.inner.stage()
    }
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> io::Result<()> {
        self.around(Call::Put, key, |_| true, || self.inner.put(key, data, mode))
    }
    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        self.around(Call::Get, key, |_| true, || self.inner.get(key))
    }
    fn open(&self, key: &str) -> io::Result<Arc<dyn ReadHandle>> {
        self.around(Call::Open, key, |_| true, || self.inner.open(key))
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn exists(&self, key: &str) -> io::Result<bool> {
        self.around(Call::Exists, key, |_| true, || self.inner.exists(key))
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.around(Call::Delete, key, |_| true, || self.inner.delete(key))
    }
    fn delete_by(&self, key: &str, deadline: Instant) -> io::Result<()> {
        self.around(
            Call::Delete,
            key,
            |_| true,
            || self.inner.delete_by(key, deadline),
        )
    }
    fn discard_staged(&self) -> io::Result<()> {
        self.inner.discard_staged()
    }
    fn foreign(&self) -> io::Result<Option<String>> {
        self.inner.foreign()
    }
    fn check_index_write(&self) -> io::Result<()> {
        self.inner.check_index_write()
    }
    fn tree_stamp(&self, prefix: &str) -> io::Result<Option<[u8; 32]>> {
        self.inner.tree_stamp(prefix)
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn get_versioned(&self, key: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        self.around(
            Call::GetVersioned,
            key,
            |_| true,
            || self.inner.get_versioned(key),
        )
    }
    fn put_if_version(&self, key: &str, data: &[u8], expect: Option<&Version>) -> io::Result<Cas> {
        self.around(
            Call::PutIfVersion,
            key,
            |c| matches!(c, Cas::Written(_)),
            || self.inner.put_if_version(key, data, expect),
        )
    }
    fn list_versioned(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        self.inner.list_versioned(prefix)
    }
}
