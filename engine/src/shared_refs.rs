//! Refs on a shared store (spec §8.3): written only with conditional writes
//! (create-only, or `If-Match` the version read), so no node silently
//! overwrites a change it did not see, and read from the bucket whenever
//! they are resolved (they are the only objects other nodes change in
//! place). Nothing here runs for a store that is not shared, except
//! [`write_ref`], which works on any store.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::condemned::WriterCheck;
use crate::core::Core;
use crate::error::{clip, Error, Result};
use crate::format::{encode_ref, is_tombstone, ref_target, DELETED_REF};
use crate::ids::FileId;
use crate::paths::ref_key;
use crate::remote::{has_file, io_err};
use crate::storage::{Cas, Version};

/// Conditional ref writes that lose a race are retried this many times.
const REF_ATTEMPTS: u32 = 8;
/// What a conditional ref write expects the ref to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Anything: the write is retried on whatever the ref became.
    Any,
    /// Exactly this (`None`: no ref); otherwise [`Error::RefConflict`].
    Is(Option<FileId>),
}

/// A ref write that went out: what it replaced and the version it wrote,
/// so that a publication found to name a collected file (spec §10.6) can
/// be put back.
#[derive(Debug)]
pub(crate) struct RefWrite {
    name: String,
    /// The ref object it replaced, byte for byte (`None`: there was none).
    before: Option<Vec<u8>>,
    /// The version written; `None` when the ref already named the file
    /// (nothing was written — or a retried request of this node's own
    /// landed first, which looks the same).
    version: Option<Version>,
}

impl RefWrite {
    /// The ref written.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Called when the file this write named turned out collected (the ref
    /// now names nothing that exists, whoever else wrote the same value):
    /// puts the ref back as it was, if no other writer changed it since
    /// (`If-Match` the version written). The old object is restored byte
    /// for byte when it named a file that is still stored and not condemned
    /// (or was damage, which stays reported); otherwise, and where there
    /// was none, a tombstone is written (a ref object naming no file, spec
    /// §8: a plain delete cannot be made conditional). Says what happened,
    /// for the caller's error.
    pub(crate) fn undo_collected(&self, core: &Core) -> String {
        let name = clip(&self.name);
        let Some(version) = &self.version else {
            return format!(
                "ref {name} named that file before this write (or a retried request made it \
                 look so), so it was not put back: it names the collected file, set it again \
                 or `tessera ref rm` it"
            );
        };
        let objects = core.objects.as_ref();
        let key = ref_key(&self.name);
        let old = self
            .before
            .as_ref()
            .map(|b| (b, ref_target(&self.name, b).ok().flatten()));
        let restore = match old {
            // The file the ref named before: only while it can be named.
            Some((b, Some(f))) => match WriterCheck::new(core).and_then(|c| c.file(core, &f)) {
                Ok(()) => Some((b.clone(), Some(f))),
                Err(_) => None,
            },
            // Damage (or another name's object) stays as it was.
            Some((b, None)) if !is_tombstone(&self.name, b) => Some((b.clone(), None)),
            _ => None,
        };
        let (bytes, named) =
            restore.unwrap_or_else(|| (encode_ref(&self.name, &DELETED_REF), None));
        match objects.put_if_version(&key, &bytes, Some(version)) {
            Ok(Cas::Written(_)) => {
                let r = match named {
                    Some(f) => core.index.set_ref(&self.name, f),
                    None => core.index.delete_ref(&self.name).map(|_| ()),
                };
                if let Err(e) = r.and_then(|()| core.index.flush()) {
                    tracing::warn!(ref_name = %name, "index: {e}");
                }
                match (named, &self.before) {
                    (Some(f), _) => format!("ref {name} was put back: it names file {f} again"),
                    (None, Some(b)) if bytes == *b && !is_tombstone(&self.name, b) => {
                        format!("ref {name} was put back as it was (damaged: see `tessera verify`)")
                    }
                    (None, Some(b)) if !is_tombstone(&self.name, b) => format!(
                        "ref {name} was deleted: the file it named before is gone or condemned too"
                    ),
                    (None, _) => format!("ref {name} was put back: there is no such ref again"),
                }
            }
            Ok(Cas::Conflict) => {
                format!("ref {name} was not put back: another writer changed it since")
            }
            Err(e) => format!(
                "ref {name} could not be put back ({}): it names the collected file, set it \
                 again or `tessera ref rm` it",
                io_err(objects, "write ref", &key, e)
            ),
        }
    }
}

/// Points ref `name` at `file` in the store with conditional writes: the
/// write names the version it replaces (or that there is none), so a
/// concurrent change by another node makes it fail instead of being
/// overwritten unseen. With [`Expect::Any`] a lost race is retried on the
/// new state (up to 8 times, with growing jittered pauses); with
/// [`Expect::Is`] a ref that is not what the caller expects fails with
/// [`Error::RefConflict`]. Returns what the ref named before and the version
/// written. Works on any store (a non-shared one serializes within the
/// process).
/// How a failed ref write is named: one the bucket refused was not made;
/// after a timeout or a lost connection the request may still be applied
/// later (a found-by-probe case: a write that timed out landed 90 s later),
/// so the caller is told its outcome is unknown.
fn write_failed(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied | K::InvalidInput | K::NotFound | K::Unsupported => "write ref",
        _ => "write ref (outcome unknown: the request may still be applied; check the ref before relying on it)",
    }
}

pub(crate) fn write_ref(
    core: &Core,
    name: &str,
    file: &FileId,
    expect: Expect,
) -> Result<RefWrite> {
    let objects = core.objects.as_ref();
    let key = ref_key(name);
    let data = encode_ref(name, file);
    // What is there: `None` no object; else its target (`None` when it is
    // damaged or another name's) and version. New refs are the common
    // case, so the first attempt assumes there is none (a create-only
    // write: one request) unless the caller expects a file.
    let mut state: Option<(Vec<u8>, Option<FileId>, Version)> = None;
    let mut assumed = matches!(expect, Expect::Any | Expect::Is(None));
    for attempt in 0..REF_ATTEMPTS {
        if !assumed {
            state = objects
                .get_versioned(&key)
                .map_err(|e| io_err(objects, "read ref", &key, e))?
                .map(|(b, v)| {
                    let f = ref_target(name, &b).ok().flatten();
                    (b, f, v)
                });
        }
        assumed = false;
        let before = state.as_ref().and_then(|(_, f, _)| *f);
        if let Expect::Is(want) = expect {
            if before != want {
                return Err(Error::RefConflict {
                    name: clip(name),
                    detail: format!(
                        "expected it to name {}, but it names {}; nothing was written",
                        show(want),
                        show(before)
                    ),
                });
            }
        }
        let written = |version| RefWrite {
            name: name.to_string(),
            before: state.as_ref().map(|(b, _, _)| b.clone()),
            version,
        };
        if before == Some(*file) {
            return Ok(written(None));
        }
        let version = state.as_ref().map(|(_, _, v)| v);
        match objects
            .put_if_version(&key, &data, version)
            .map_err(|e| io_err(objects, write_failed(&e), &key, e))?
        {
            Cas::Written(v) => return Ok(written(Some(v))),
            // Another writer got in between: read what it wrote and go
            // again (at once the first time: usually a create that found
            // the ref existing).
            Cas::Conflict if attempt > 0 => backoff(attempt - 1),
            Cas::Conflict => {}
        }
    }
    Err(Error::RefConflict {
        name: clip(name),
        detail: format!(
            "other writers changed it {REF_ATTEMPTS} times while this update was retried; nothing was written"
        ),
    })
}

fn show(f: Option<FileId>) -> String {
    f.map_or("nothing (no such ref)".to_string(), |f| format!("file {f}"))
}

/// A pause before retrying a lost race: 10 ms doubling per attempt (to
/// 1.3 s), times a jitter factor in [0.5, 1.5) so racing nodes drift apart.
fn backoff(attempt: u32) {
    let base = 10u64 << attempt.min(7);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 500 + (u64::from(nanos) ^ u64::from(std::process::id())) % 1000;
    std::thread::sleep(Duration::from_millis(base * jitter / 1000));
}

/// Reads the ref object (a directory store's ref file) of `name`: the file
/// it names, `None` when there is none, it is a tombstone (the ref was
/// deleted) or it is another name's. One that does not decode is damage
/// ([`Error::RefCorrupt`]).
pub(crate) fn read_ref(core: &Core, name: &str) -> Result<Option<FileId>> {
    let objects = core.objects.as_ref();
    let key = ref_key(name);
    match objects.get(&key) {
        Ok(b) => ref_target(name, &b).map_err(|detail| Error::RefCorrupt {
            name: clip(name),
            object: objects.describe(&key),
            detail,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(objects, "read ref", &key, e)),
    }
}

/// Resolves a ref on a shared store: the ref object is read every time (a
/// ref is the one kind of object another node may change), the file it
/// names is found (on a miss, in the bucket), and the index is brought in
/// line. A ref object naming a file whose recipe is missing or damaged is
/// [`Error::RefDangling`].
pub(crate) fn resolve_ref(core: &Core, name: &str) -> Result<FileId> {
    let Some(file) = read_ref(core, name)? else {
        if core.index.get_ref(name)?.is_some() {
            core.index.delete_ref(name)?;
        }
        return Err(Error::not_found("ref", name));
    };
    let found = match has_file(core, &file) {
        Ok(f) => f,
        Err(e) if e.is_corruption() => false,
        Err(e) => return Err(e),
    };
    if !found {
        return Err(Error::RefDangling {
            name: clip(name),
            file,
        });
    }
    if core.index.get_ref(name)? != Some(file) {
        core.index.set_ref(name, file)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ref_write_that_may_still_land_says_so() {
        use std::io::{Error as E, ErrorKind as K};
        assert_eq!(write_failed(&E::from(K::PermissionDenied)), "write ref");
        for kind in [K::TimedOut, K::Other, K::ConnectionReset] {
            assert!(
                write_failed(&E::from(kind)).contains("outcome unknown"),
                "{kind:?}"
            );
        }
    }
}
