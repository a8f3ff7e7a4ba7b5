//! Refs: names for files (`org/model@rev:path`), and how a user-supplied
//! name is resolved to a file (spec §8, §8.2).

use std::collections::HashSet;

use crate::condemned::WriterCheck;
use crate::core::Core;
use crate::error::{clip, Error, Result};
use crate::format::{decode_ref, encode_ref, Recipe, DELETED_REF, MAX_REF_LEN};
use crate::ids::{FileId, Sha256};
use crate::paths::{recipe_key, ref_key};
use crate::refresh::{self, RefreshReport};
use crate::remote;
use crate::shared_refs::{self, Expect, RefWrite};
use crate::storage::PutMode;

/// Prefixes that make a name explicit in [`resolve`]; no ref name may
/// start with one (spec §8).
pub const NAME_PREFIXES: [&str; 3] = ["file:", "sha256:", "ref:"];

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a new ref name (spec §8): 1..=4096 bytes of UTF-8 without control
/// characters, not 64 hex digits (the form of file ids and sha256 aliases)
/// and not starting with `file:`, `sha256:` or `ref:`, so that every name
/// [`resolve`] is given means one thing forever.
pub fn validate(name: &str) -> Result<()> {
    let why = if name.is_empty() || name.len() > MAX_REF_LEN {
        Some(format!("must be 1..={MAX_REF_LEN} bytes"))
    } else if name.chars().any(|c| c.is_control()) {
        Some("must not contain control characters".to_string())
    } else if let Some(c) = name.chars().find(|&c| is_invisible(c)) {
        Some(format!(
            "must not contain invisible or direction-changing characters (U+{:04X}): \
             the name shown would not be the name stored",
            c as u32
        ))
    } else if let Some(plain) = compatibility_form(name) {
        Some(format!(
            "must be in Unicode normalization form NFKC, as {:?}: a name whose \
             characters have another (composed or plain) form reads as that name",
            clip(&plain)
        ))
    } else if name.trim() != name {
        Some("must not begin or end with white space".to_string())
    } else if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        Some(
            "must not have an empty, `.` or `..` path segment (a leading, trailing or \
             doubled `/`): such names read as another path"
                .to_string(),
        )
    } else if is_hex64(name) {
        Some("64 hex digits name a file id or a sha256, not a ref".to_string())
    } else {
        NAME_PREFIXES
            .iter()
            .find(|p| name.starts_with(*p))
            .map(|p| format!("{p:?} is reserved for explicit names"))
    };
    match why {
        Some(why) => Err(Error::InvalidArgument(format!(
            "bad ref name {:?}: {why}",
            clip(name)
        ))),
        None => Ok(()),
    }
}

/// The NFKC form of `name` when it differs: a character decomposed (`A`
/// and a combining ring for `Å`) or a compatibility character (`／` for
/// `/`, `ﬁ`, fullwidth letters) reads as another name.
fn compatibility_form(name: &str) -> Option<String> {
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    (!nfkc.is_normalized(name)).then(|| nfkc.normalize(name).into_owned())
}

/// Characters that change how a name is shown without being seen: the
/// Unicode format characters (bidirectional controls, which can make a
/// name read as another; zero-width characters; the byte-order mark; tag
/// characters), characters that render as blank (Hangul fillers, the
/// combining grapheme joiner), variation selectors, and the line and
/// paragraph separators.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}'
            | '\u{070F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}')
}

/// Writes the ref file of `name` durably (the ref's durable copy). On a
/// shared store, with conditional writes (spec §8.3), returning what
/// [`confirm`] needs to put the ref back.
pub(crate) fn write_file(core: &Core, name: &str, file: &FileId) -> Result<Option<RefWrite>> {
    if core.objects.shared() {
        return shared_refs::write_ref(core, name, file, Expect::Any).map(Some);
    }
    let key = ref_key(name);
    core.objects
        .put(&key, &encode_ref(name, file), PutMode::Replace)
        .map(|()| None)
        .map_err(|e| Error::io("write ref", core.objects.describe(&key), e))
}

/// Whether a file is stored (on a shared store, looking in the bucket on a
/// miss).
pub(crate) fn has_file(core: &Core, file: &FileId) -> Result<bool> {
    if core.objects.shared() {
        remote::has_file(core, file)
    } else {
        core.index.has_file(file)
    }
}

/// Points ref `name` at `file`, durably: the ref file, then the index.
pub(crate) fn set(core: &Core, name: &str, file: FileId) -> Result<()> {
    validate(name)?;
    core.check_poison()?;
    // GC must not delete the file between the check and the ref.
    let _gate = core.gate.shared();
    if !has_file(core, &file)? {
        return Err(Error::not_found("file", &file.to_hex()));
    }
    // On a shared store: not condemned by a GC, still there (spec §10.6).
    let check = WriterCheck::new(core)?;
    check.file(core, &file)?;
    let written = core.poison_on(write_file(core, name, &file))?;
    confirm(core, check, &file, written.as_slice())?;
    core.poison_on(core.index.set_ref(name, file))?;
    core.poison_on(core.index.flush())
}

/// Points ref `name` at `file` only if it now names `expected` (`None`: only
/// if there is no such ref); otherwise [`Error::RefConflict`] and nothing is
/// written. On a shared store this is a conditional write, atomic against
/// every other writer (spec §8.3); on a directory store, against other
/// compare-and-sets of the process.
pub(crate) fn compare_and_set(
    core: &Core,
    name: &str,
    expected: Option<FileId>,
    file: FileId,
) -> Result<()> {
    validate(name)?;
    core.check_poison()?;
    let _gate = core.gate.shared();
    if !has_file(core, &file)? {
        return Err(Error::not_found("file", &file.to_hex()));
    }
    // On a shared store: not condemned by a GC, still there (spec §10.6).
    let check = WriterCheck::new(core)?;
    check.file(core, &file)?;
    let written = core.poison_on(shared_refs::write_ref(
        core,
        name,
        &file,
        Expect::Is(expected),
    ))?;
    confirm(core, check, &file, &[written])?;
    core.poison_on(core.index.set_ref(name, file))?;
    core.poison_on(core.index.flush())
}

/// Confirms refs written to `file` once they landed (spec §10.6,
/// [`WriterCheck::confirm_published`]). When the file turns out collected,
/// every ref naming it is broken, so each ref written is put back as it was
/// (unless another writer changed it since), and the error says so. (When
/// the file is only condemned, a ref that landed before the collector's
/// second mark keeps it: the refs stay, and the error says to check.)
pub(crate) fn confirm(
    core: &Core,
    check: WriterCheck,
    file: &FileId,
    written: &[RefWrite],
) -> Result<()> {
    let names: Vec<&str> = written.iter().map(RefWrite::name).collect();
    let what = format!("ref {}", clip(&names.join(", ")));
    let undo = || {
        let done: Vec<String> = written.iter().map(|w| w.undo_collected(core)).collect();
        done.join("; ")
    };
    check
        .confirm_published(core, &what, &[*file], &HashSet::new(), Some(&undo))
        .map(|_| ())
}

/// Deletes a ref, durably: the ref file, then the index entry. On a
/// directory store the ref file is replaced by a tombstone (spec §8), so
/// that recovery tells a deleted ref from a ref file that went missing; on
/// a shared store the object is deleted (§8.3). Deleting a missing ref is
/// "not found". A ref file the index does not know (damaged, or naming a
/// file that is not stored) is deleted too: that is how a user acknowledges
/// its loss.
pub(crate) fn delete(core: &Core, name: &str) -> Result<()> {
    core.check_poison()?;
    let _gate = core.gate.shared();
    let key = ref_key(name);
    let objects = core.objects.as_ref();
    let on_disk = match objects.get(&key) {
        Ok(b) => !matches!(decode_ref(&b), Ok((_, f)) if f == DELETED_REF),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("read ref", objects.describe(&key), e)),
    };
    if core.index.get_ref(name)?.is_none() && !on_disk {
        return Err(Error::not_found("ref", name));
    }
    let r = if objects.shared() {
        match objects.delete(&key) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove ref", objects.describe(&key), e)),
        }
    } else {
        objects
            .put(&key, &encode_ref(name, &DELETED_REF), PutMode::Replace)
            .map_err(|e| Error::io("write ref tombstone", objects.describe(&key), e))
    };
    core.poison_on(r)?;
    core.poison_on(core.index.delete_ref(name))?;
    core.poison_on(core.index.flush())
}

/// Resolves a ref. The index is the commit point on a directory store (a
/// group commit's refs become visible together, in one index transaction),
/// so it answers when it holds the ref. A ref the index lacks whose ref
/// file does not decode, or holds another ref, is damage, not absence
/// ([`Error::RefCorrupt`]), and so is one whose ref file names a file whose
/// recipe is missing or damaged ([`Error::RefDangling`]). (A ref file
/// naming a file with an intact recipe belongs to a commit in flight, or
/// one that failed: not found until it is indexed.)
pub(crate) fn resolve_ref(core: &Core, name: &str) -> Result<FileId> {
    if core.objects.shared() {
        return shared_refs::resolve_ref(core, name);
    }
    if let Some(id) = core.index.get_ref(name)? {
        return Ok(id);
    }
    match shared_refs::read_ref(core, name) {
        Ok(Some(file)) => {
            let recipe = core.objects.get(&recipe_key(&file));
            if !recipe.is_ok_and(|b| Recipe::decode(file, &b).is_ok()) {
                return Err(Error::RefDangling {
                    name: clip(name),
                    file,
                });
            }
        }
        Err(e @ Error::RefCorrupt { .. }) => return Err(e),
        _ => {}
    }
    Err(Error::not_found("ref", name))
}

/// The file whose content has this SHA-256.
pub(crate) fn by_sha256(core: &Core, sha: &Sha256) -> Result<FileId> {
    if let Some(f) = core.index.by_sha256(sha)? {
        return Ok(f);
    }
    // A shared store names files by id only: a sha256 this node has not
    // seen costs a listing of the recipes it lacks (spec §4.3).
    if core.objects.shared() {
        refresh::refresh_files(core, &mut RefreshReport::default())?;
        if let Some(f) = core.index.by_sha256(sha)? {
            return Ok(f);
        }
    }
    Err(Error::not_found("sha256", &sha.to_hex()))
}

/// Resolves a user-supplied name (spec §8.2): `file:ID`, `sha256:HEX` or
/// `ref:NAME` explicitly; a bare 64-hex string is a file id, else the sha256
/// of a stored file's content; anything else is a ref.
pub(crate) fn resolve(core: &Core, name: &str) -> Result<FileId> {
    let hex_id = |s: &str, kind: &'static str| {
        FileId::from_hex(s).ok_or_else(|| {
            Error::InvalidArgument(format!("{kind} {:?} is not 64 hex digits", clip(s)))
        })
    };
    if let Some(rest) = name.strip_prefix("file:") {
        let id = hex_id(rest, "file id")?;
        return match has_file(core, &id)? {
            true => Ok(id),
            false => Err(Error::not_found("file", rest)),
        };
    }
    if let Some(rest) = name.strip_prefix("sha256:") {
        return by_sha256(core, &Sha256(hex_id(rest, "sha256")?.0));
    }
    if let Some(rest) = name.strip_prefix("ref:") {
        return resolve_ref(core, rest);
    }
    if is_hex64(name) {
        let id = hex_id(name, "file id")?;
        if has_file(core, &id)? {
            return Ok(id);
        }
        return match by_sha256(core, &Sha256(id.0)) {
            Err(e) if e.is_not_found() => Err(Error::not_found("file id or sha256", name)),
            r => r,
        };
    }
    resolve_ref(core, name)
}
