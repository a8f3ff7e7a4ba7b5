//! Files built to slip an executable pickle past the scanner. The rule they
//! test (spec §7.2): whatever the analyser cannot account for in a file
//! that is, or may be, a pickle container makes the verdict unsafe.

mod common;

use std::io::Write;

use common::*;
use tessera_model::{Format, ModelInfo, Verdict};

/// A protocol-0 pickle that calls `os.system` (header-less, as Python 2
/// and `protocol=0` write them).
const EVIL0: &[u8] = b"cposix\nsystem\n(Vecho pwned\ntR.";
/// The same with a PROTO 2 header.
const EVIL2: &[u8] = b"\x80\x02cposix\nsystem\n(Vecho pwned\ntR.";
/// `pickle.dumps({'w': 1}, 2)`.
const BENIGN: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01K\x01s.";

fn reason(info: &ModelInfo) -> String {
    info.reason.clone().unwrap_or_default()
}

fn assert_unsafe(info: &ModelInfo, why: &str) {
    assert_eq!(info.verdict, Verdict::UnsafePickle, "{info:#?}");
    let all = format!(
        "{} {:?}",
        reason(info),
        info.pickles.iter().map(|p| &p.reason).collect::<Vec<_>>()
    );
    assert!(all.contains(why), "expected {why:?} in {all}");
}

// ---- raw zip pieces, every field under the test's control ---------------

fn crc(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A local file header: name, method, crc, stored and uncompressed size.
fn local(name: &str, method: u16, crc: u32, csize: usize, usize_: usize) -> Vec<u8> {
    let mut h = b"PK\x03\x04".to_vec();
    h.extend_from_slice(&20u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // flags
    h.extend_from_slice(&method.to_le_bytes());
    h.extend_from_slice(&[0; 4]); // time, date
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&(csize as u32).to_le_bytes());
    h.extend_from_slice(&(usize_ as u32).to_le_bytes());
    h.extend_from_slice(&(name.len() as u16).to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // extra
    h.extend_from_slice(name.as_bytes());
    h
}

/// A central directory entry pointing at the local header at `offset`.
fn central(
    name: &str,
    method: u16,
    crc: u32,
    csize: usize,
    usize_: usize,
    offset: usize,
) -> Vec<u8> {
    let mut h = b"PK\x01\x02".to_vec();
    h.extend_from_slice(&20u16.to_le_bytes());
    h.extend_from_slice(&20u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // flags
    h.extend_from_slice(&method.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&(csize as u32).to_le_bytes());
    h.extend_from_slice(&(usize_ as u32).to_le_bytes());
    h.extend_from_slice(&(name.len() as u16).to_le_bytes());
    h.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
    h.extend_from_slice(&(offset as u32).to_le_bytes());
    h.extend_from_slice(name.as_bytes());
    h
}

/// An end of central directory record.
fn eocd(entries: usize, cd_size: usize, cd_offset: usize, comment: &[u8]) -> Vec<u8> {
    let mut h = b"PK\x05\x06".to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&(entries as u16).to_le_bytes());
    h.extend_from_slice(&(entries as u16).to_le_bytes());
    h.extend_from_slice(&(cd_size as u32).to_le_bytes());
    h.extend_from_slice(&(cd_offset as u32).to_le_bytes());
    h.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    h.extend_from_slice(comment);
    h
}

/// Appends a stored member to `out`, returning its central entry.
fn stored(out: &mut Vec<u8>, name: &str, data: &[u8]) -> Vec<u8> {
    let at = out.len();
    out.extend_from_slice(&local(name, 0, crc(data), data.len(), data.len()));
    out.extend_from_slice(data);
    central(name, 0, crc(data), data.len(), data.len(), at)
}

/// Appends the central directory and end record for `entries`.
fn close(out: &mut Vec<u8>, entries: &[Vec<u8>], comment: &[u8]) {
    let at = out.len();
    let cd = entries.concat();
    out.extend_from_slice(&cd);
    out.extend_from_slice(&eocd(entries.len(), cd.len(), at, comment));
}

// ---- 1. local and central records that disagree -------------------------

#[test]
fn zip_local_deflate_central_stored_is_unsafe() {
    // The walk inflates the member (local header: deflate) and finds a
    // benign pickle; loaders take the central directory's word (stored)
    // and unpickle the raw bytes.
    let raw = deflate(BENIGN);
    let mut f = Vec::new();
    f.extend_from_slice(&local(
        "archive/data.pkl",
        8,
        crc(BENIGN),
        raw.len(),
        BENIGN.len(),
    ));
    f.extend_from_slice(&raw);
    let entry = central("archive/data.pkl", 0, crc(&raw), raw.len(), raw.len(), 0);
    close(&mut f, &[entry], b"");
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::PytorchZip);
    assert_unsafe(&info, "disagrees with its local header");
}

#[test]
fn zip_central_sizes_that_differ_from_the_local_ones_are_unsafe() {
    let mut f = Vec::new();
    f.extend_from_slice(&local(
        "archive/data.pkl",
        0,
        crc(BENIGN),
        BENIGN.len(),
        BENIGN.len(),
    ));
    f.extend_from_slice(BENIGN);
    let n = BENIGN.len() - 3;
    let entry = central("archive/data.pkl", 0, crc(BENIGN), n, n, 0);
    close(&mut f, &[entry], b"");
    assert_unsafe(&sniff_all(&f), "disagrees with its local header");
}

// ---- 2. bytes the walk cannot place --------------------------------------

#[test]
fn zip_junk_between_members_is_unsafe() {
    let mut f = Vec::new();
    let a = stored(&mut f, "archive/version", b"3\n");
    f.extend_from_slice(b"JUNKJUNK");
    let b = stored(&mut f, "archive/data.pkl", EVIL2);
    close(&mut f, &[a, b], b"");
    assert_unsafe(&sniff_all(&f), "cannot place");
}

#[test]
fn zip_fake_end_record_mid_stream_is_unsafe() {
    let mut f = Vec::new();
    let a = stored(&mut f, "archive/version", b"3\n");
    f.extend_from_slice(&eocd(0, 0, 0, b""));
    let b = stored(&mut f, "archive/data.pkl", EVIL2);
    close(&mut f, &[a, b], b"");
    assert_unsafe(&sniff_all(&f), "end of central directory");
}

#[test]
fn zip_archive_hidden_in_the_end_record_comment_is_unsafe() {
    // Loaders use the last end record: the one inside the comment, whose
    // directory lists a data.pkl the walk never saw as a member.
    let mut f = Vec::new();
    let a = stored(&mut f, "archive/version", b"3\n");
    let cd = a.clone();
    let cd_at = f.len();
    f.extend_from_slice(&cd);
    let inner_at = f.len() + 22;
    let mut inner = local("archive/data.pkl", 0, crc(EVIL2), EVIL2.len(), EVIL2.len());
    inner.extend_from_slice(EVIL2);
    let entry = central(
        "archive/data.pkl",
        0,
        crc(EVIL2),
        EVIL2.len(),
        EVIL2.len(),
        inner_at,
    );
    let inner_cd_at = inner_at + inner.len();
    inner.extend_from_slice(&entry);
    inner.extend_from_slice(&eocd(1, entry.len(), inner_cd_at, b""));
    f.extend_from_slice(&eocd(1, cd.len(), cd_at, &inner));
    assert_unsafe(
        &sniff_all(&f),
        "comment holds another end of central directory",
    );
}

#[test]
fn empty_zip_with_a_hidden_archive_is_unsafe() {
    // numpy opens a file starting with an end record as an npz, and
    // zipfile finds the last end record: here one after the first.
    let obj = npy("|O", &[1], EVIL2);
    let mut f = eocd(0, 0, 0, b"");
    let entry = stored(&mut f, "arr_0.npy", &obj);
    close(&mut f, &[entry], b"");
    assert_unsafe(&sniff_all(&f), "does not end the file");
    // The same hidden in the first record's comment.
    let mut inner = Vec::new();
    let entry = stored(&mut inner, "arr_0.npy", &obj);
    close(&mut inner, &[entry], b"");
    let f = eocd(0, 0, 0, &inner);
    assert_unsafe(
        &sniff_all(&f),
        "comment holds another end of central directory",
    );
}

#[test]
fn plain_zips_still_pass() {
    let (f, _) = zip(&[
        ZMember::stored("archive/data.pkl", torch_state_dict_pickle()),
        ZMember::stored("archive/data/0", vec![0; 24]),
        ZMember::deflated("archive/version", b"3\n".to_vec()),
    ]);
    let info = sniff_all(&f);
    assert_eq!(info.verdict, Verdict::SafePickle, "{info:#?}");
    assert!(info.reason.is_none(), "{info:#?}");
    let mut described = ZMember::deflated("archive/data.pkl", torch_state_dict_pickle());
    described.descriptor = true;
    let (f, _) = zip(&[described]);
    assert_eq!(sniff_all(&f).verdict, Verdict::SafePickle);
}

// ---- 3. npy dtypes and headers that are not plain ------------------------

#[test]
fn npy_object_dtypes_in_other_spellings_are_pickles() {
    for descr in [
        "'object'",
        "'O8'",
        "[('a', 'object')]",
        "[('a', '<i4'), ('b', '|O', (2,))]",
    ] {
        let f = npy_raw(
            &format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"),
            EVIL2,
        );
        let info = sniff_all(&f);
        assert_eq!(info.format, Format::Npy, "{descr}");
        assert!(info.npy.as_ref().unwrap().object, "{descr}");
        assert_eq!(
            info.tensors[0].offset, None,
            "{descr}: pickle bytes served as a tensor"
        );
        assert_eq!(info.unsafe_imports, vec!["posix.system"], "{descr}");
    }
}

#[test]
fn npy_headers_that_cannot_be_analysed_are_unsafe() {
    for (what, dict) in [
        ("escape", r"{'descr': '|\x4f', 'fortran_order': False, 'shape': (1,), }"),
        ("underscore", "{'descr': '|O', 'fortran_order': False, 'shape': (1_0,), }"),
        ("dtype spec", "{'descr': 'i4,O', 'fortran_order': False, 'shape': (1,), }"),
        ("dict dtype", "{'descr': {'names': ['a'], 'formats': ['O']}, 'fortran_order': False, 'shape': (1,), }"),
        ("key twice", "{'descr': '<f4', 'descr': '|O', 'fortran_order': False, 'shape': (1,), }"),
    ] {
        let info = sniff_all(&npy_raw(dict, EVIL2));
        assert_unsafe(&info, "npy header cannot be analysed");
        assert!(info.tensors.is_empty(), "{what}");
    }
    // numpy reads headers of any size when pickles are allowed.
    let mut big = b"\x93NUMPY\x02\x00".to_vec();
    big.extend_from_slice(&(2u32 << 20).to_le_bytes());
    big.extend_from_slice(b"{'descr': '|O', ");
    let info = sniff_all(&big);
    assert_unsafe(&info, "exceeds the limit");
}

#[test]
fn plain_npy_dtypes_still_pass() {
    for descr in [
        "'<f4'",
        "'|b1'",
        "'<U3'",
        "'<M8[ns]'",
        "[('x', '<f8'), ('y', '<i4', (2,))]",
    ] {
        let f = npy_raw(
            &format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"),
            &[0; 40],
        );
        let info = sniff_all(&f);
        assert_eq!(info.format, Format::Npy, "{descr}: {info:#?}");
        assert_eq!(info.verdict, Verdict::NoPickle, "{descr}");
    }
}

#[test]
fn npz_member_without_npy_suffix_is_read_as_an_array() {
    // np.load(f)['arr_0'] opens member `arr_0` and reads it as an array.
    let obj = npy("|O", &[1], EVIL2);
    let (f, _) = zip(&[ZMember::stored("arr_0", obj.clone())]);
    let info = sniff_all(&f);
    assert_eq!(info.unsafe_imports, vec!["posix.system"], "{info:#?}");
    let (f, _) = zip(&[ZMember::deflated("arr_0", obj)]);
    assert_eq!(sniff_all(&f).unsafe_imports, vec!["posix.system"]);
    // A member that merely has another name stays unscanned.
    let (f, _) = zip(&[ZMember::stored("notes.txt", b"hello".to_vec())]);
    assert_eq!(sniff_all(&f).verdict, Verdict::NoPickle);
}

#[test]
fn npz_member_with_a_bad_npy_header_is_unsafe() {
    let bad = npy_raw(
        "{'descr': 'object_x', 'fortran_order': False, 'shape': (1,), }",
        EVIL2,
    );
    let (f, _) = zip(&[ZMember::stored("arr_0.npy", bad)]);
    assert_unsafe(&sniff_all(&f), "npy header cannot be analysed");
}

#[test]
fn npz_duplicate_member_names_list_the_one_numpy_reads() {
    // Python's zipfile keeps the last directory entry of a name.
    let first = npy("<f4", &[1], &1f32.to_le_bytes());
    let last = npy("<f4", &[1], &2f32.to_le_bytes());
    let (f, pos) = zip(&[
        ZMember::stored("w.npy", first),
        ZMember::stored("w.npy", last),
    ]);
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Npz);
    assert_eq!(info.tensors.len(), 1, "{info:#?}");
    let t = &info.tensors[0];
    assert_eq!(t.offset, Some(pos[1].0 + 128), "{info:#?}");
    assert_eq!(&f[t.offset.unwrap() as usize..][..4], &2f32.to_le_bytes());
    assert!(info
        .warnings
        .iter()
        .any(|w| w.contains("not the member numpy reads")));
    // A member named `w` shadows `w.npy` for np.load(f)['w'].
    let (f, _) = zip(&[
        ZMember::stored("w.npy", npy("<f4", &[1], &[0; 4])),
        ZMember::stored("w", npy("<f4", &[1], &[1; 4])),
    ]);
    let info = sniff_all(&f);
    let w: Vec<_> = info.tensors.iter().filter(|t| t.name == "w").collect();
    assert!(w.len() <= 1, "{info:#?}");
}

// ---- 4. legacy torch.save with a non-canonical magic ----------------------

/// `LONG1` of the legacy magic number 0x1950a86a20f9469cfc6c, then STOP.
const MAGIC_LONG1: &[u8] = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

#[test]
fn legacy_magic_in_any_protocol_is_followed() {
    let proto = |p: u8| [&[0x80, p][..], MAGIC_LONG1].concat();
    let frame4 = [
        &b"\x80\x04\x95\x0d\x00\x00\x00\x00\x00\x00\x00"[..],
        MAGIC_LONG1,
    ]
    .concat();
    for (what, magic) in [
        ("protocol 0", b"L119547037146038801333356L\n.".to_vec()),
        ("protocol 3", proto(3)),
        ("protocol 4", frame4),
    ] {
        let f = [&magic[..], EVIL0].concat();
        let info = sniff_all(&f);
        assert_eq!(info.format, Format::Pickle, "{what}");
        assert_eq!(
            info.unsafe_imports,
            vec!["posix.system"],
            "{what}: {info:#?}"
        );
    }
}

#[test]
fn trailing_bytes_that_start_no_pickle_stay_trailing() {
    let f = [BENIGN, b"\n\n"].concat();
    let info = sniff_all(&f);
    assert_eq!(info.verdict, Verdict::SafePickle, "{info:#?}");
    let f = [BENIGN, b"not a pickle: text"].concat();
    assert_eq!(sniff_all(&f).verdict, Verdict::SafePickle);
}

// ---- 5. header-less pickles CPython reads further than a strict parser ----

#[test]
fn headerless_memo_keys_as_cpython_reads_them() {
    for f in [
        &b"cposix\nsystem\np1_0\n(Vid\ntR."[..],
        b"cposix\nsystem\np-0\n(Vid\ntR.",
        b"cposix\nsystem\np1\n0g0_1\n(Vid\ntR.",
    ] {
        let info = sniff_all(f);
        assert_eq!(
            info.format,
            Format::Pickle,
            "{:?}",
            String::from_utf8_lossy(f)
        );
        assert_eq!(info.unsafe_imports, vec!["posix.system"]);
    }
}

#[test]
fn headerless_pickle_modifying_a_global_is_unsafe() {
    // os.environ[...] = ... (putenv) and sys.path.extend(...), then junk.
    let f = b"cos\nenviron\n(VK\nVv\nu0csys\npath\n(V/tmp/x\ne.trailing junk";
    let info = sniff_all(f);
    assert_eq!(info.format, Format::Pickle, "{info:#?}");
    assert_eq!(info.unsafe_imports, vec!["os.environ", "sys.path"]);
    assert!(info.pickles[0]
        .imports
        .iter()
        .all(|i| i.calls == vec![tessera_model::ImportCall::Modify]));
}

// ---- 6. compressed pickles -------------------------------------------------

#[test]
fn compressed_pickles_are_unsafe() {
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(BENIGN).unwrap();
        e.finish().unwrap()
    };
    let zl = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(3));
        e.write_all(EVIL2).unwrap();
        e.finish().unwrap()
    };
    let zs = zstd::encode_all(EVIL0, 3).unwrap();
    for (what, f) in [("gzip", gz), ("zlib", zl), ("zstd", zs)] {
        let info = sniff_all(&f);
        assert_eq!(info.format, Format::Pickle, "{what}");
        assert_eq!(info.variant.as_deref(), Some(what));
        assert_unsafe(&info, "compressed pickle");
    }
    // Compressed text is no pickle.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b"hello, world\n").unwrap();
    let info = sniff_all(&e.finish().unwrap());
    assert_eq!(info.format, Format::Other);
    assert_eq!(info.verdict, Verdict::NoPickle);
}

/// `n` empty, non-final stored deflate blocks (5 bytes each).
fn empty_stored_blocks(n: usize) -> Vec<u8> {
    [0u8, 0, 0, 0xff, 0xff].repeat(n)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_with_an_empty_first_member_is_read_on() {
    let f = [gzip(b""), gzip(EVIL2)].concat();
    assert_unsafe(&sniff_all(&f), "compressed pickle (gzip)");
    // Zero padding between members, as Python skips it.
    let f = [gzip(b""), vec![0; 8], gzip(EVIL2)].concat();
    assert_unsafe(&sniff_all(&f), "compressed pickle (gzip)");
}

#[test]
fn gzip_with_a_long_name_field_is_read_past_it() {
    let mut e = flate2::GzBuilder::new()
        .filename(vec![b'a'; 100_000])
        .comment(vec![b'c'; 70_000])
        .extra(vec![7u8; 60_000])
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(EVIL2).unwrap();
    let f = e.finish().unwrap();
    assert_unsafe(&sniff_all(&f), "compressed pickle (gzip)");
}

#[test]
fn empty_deflate_blocks_before_the_data_are_decoded_through() {
    let pad = empty_stored_blocks(15_000); // 75 KB
    let body = deflate(EVIL2);
    let zl = [&b"\x78\x9c"[..], &pad, &body, &[0, 0, 0, 0]].concat();
    let info = sniff_all(&zl);
    assert_eq!(info.variant.as_deref(), Some("zlib"), "{info:#?}");
    assert_unsafe(&info, "compressed pickle (zlib)");
    let gz = [
        &b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"[..],
        &pad,
        &body,
        &crc(EVIL2).to_le_bytes(),
        &(EVIL2.len() as u32).to_le_bytes(),
    ]
    .concat();
    assert_unsafe(&sniff_all(&gz), "compressed pickle (gzip)");
}

#[test]
fn bzip2_xz_and_lzma_alone_pickles_are_unsafe() {
    let bz = |d: &[u8]| {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    };
    // Two bzip2 streams, the first empty (Python's bz2 reads both).
    let f = [bz(b""), bz(EVIL2)].concat();
    let info = sniff_all(&f);
    assert_eq!(info.variant.as_deref(), Some("bzip2"), "{info:#?}");
    assert_unsafe(&info, "compressed pickle (bzip2)");
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &EVIL0[..], &mut xz).unwrap();
    assert_unsafe(&sniff_all(&xz), "compressed pickle (xz)");
    let mut lz = Vec::new();
    lzma_rs::lzma_compress(&mut &EVIL2[..], &mut lz).unwrap();
    let info = sniff_all(&lz);
    assert_eq!(info.variant.as_deref(), Some("lzma"), "{info:#?}");
    assert_unsafe(&info, "compressed pickle (lzma)");
    // Compressed text is no pickle.
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &b"hello, world\n"[..], &mut xz).unwrap();
    assert_eq!(sniff_all(&xz).verdict, Verdict::NoPickle);
    assert_eq!(sniff_all(&bz(b"hello, world\n")).verdict, Verdict::NoPickle);
    // An xz stream whose filter chain is not decoded here is not analysed,
    // which is unsafe: a block header with the x86 BCJ filter, then LZMA2.
    let mut f = b"\xfd7zXZ\x00\x00\x01".to_vec();
    f.extend_from_slice(&crc(&f[6..8]).to_le_bytes());
    f.extend_from_slice(&[0x02, 0x01, 0x04, 0x00, 0x21, 0x01, 0x16, 0x00]);
    f.extend_from_slice(&[0u8; 64]);
    assert_unsafe(&sniff_all(&f), "compressed stream (xz) not analysed");
}

#[test]
fn lzma_alone_is_detected_conservatively() {
    // A dictionary size that is no power of two (nor 2^n + 2^(n-1)).
    let mut f = b"\x5d\x01\x10\x00\x00".to_vec();
    f.extend_from_slice(&[0xff; 8]);
    f.extend_from_slice(&[0x41; 64]);
    assert_ne!(sniff_all(&f).variant.as_deref(), Some("lzma"));
    // Properties byte out of range.
    let mut f = b"\xe1\x00\x00\x80\x00".to_vec();
    f.extend_from_slice(&[0xff; 8]);
    f.extend_from_slice(&[0x41; 64]);
    assert_ne!(sniff_all(&f).variant.as_deref(), Some("lzma"));
}

// ---- 7. BUILD on an allowlisted class --------------------------------------

#[test]
fn build_on_an_imported_class_is_unsafe() {
    // setattr(fractions.Fraction, '__eq__', complex): BUILD's target is the
    // class itself, not an instance.
    let f = b"\x80\x02cfractions\nFraction\nN}(V__eq__\ncbuiltins\ncomplex\nu\x86b.";
    let info = sniff_all(f);
    assert_eq!(info.verdict, Verdict::UnsafePickle, "{info:#?}");
    assert_eq!(info.unsafe_imports, vec!["fractions.Fraction"]);
    // BUILD on an instance made from it stays safe.
    let ok = b"\x80\x02cfractions\nFraction\n)\x81}b.";
    assert_eq!(sniff_all(ok).verdict, Verdict::SafePickle);
}

// ---- polyglots: a format's magic bytes in front of a pickle --------------

/// `os.system("echo")`, protocol 0 opcodes, then STOP.
const CALL: &[u8] = b"cos\nsystem\n(X\x04\x00\x00\x00echotR.";

#[test]
fn a_pickle_behind_another_formats_magic_is_judged_as_a_pickle() {
    let with = |head: &[u8]| [head, CALL].concat();
    for (what, file) in [
        // PROTO 2, SHORT_BINSTRING of 4 bytes holding "TFL3", POP.
        ("tflite", with(b"\x80\x02U\x04TFL30")),
        // BINFLOAT swallows "GUF" and five more bytes, POP.
        ("gguf", with(b"GGUF\x03\x00\x00\x00\x000")),
        // A safetensors-like length (over the header limit) made of opcodes.
        ("safetensors", with(b"J\x01\x02\x03\x04J\x00\x00{\x0000")),
    ] {
        for sizes in [&[file.len()][..], &[3, 5, 7, 1000]] {
            let info = sniff_split(&file, sizes, &Default::default());
            assert_eq!(info.format, Format::Pickle, "{what}: {info:#?}");
            assert_eq!(info.unsafe_imports, ["os.system"], "{what}");
            assert_eq!(info.verdict, Verdict::UnsafePickle, "{what}");
        }
    }
}

#[test]
fn a_header_whose_first_bytes_walk_as_opcodes_is_no_pickle() {
    // A safetensors header whose length's low byte is `c` (GLOBAL): the
    // walk reads the JSON as a module name; no loader acts on it.
    let mut json = String::from(r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#);
    while json.len() % 256 != 0x63 {
        json.push(' ');
    }
    let file = common::safetensors_raw(&json, 4);
    assert_eq!(file[0], b'c');
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Safetensors, "{info:#?}");
    assert_eq!(info.verdict, Verdict::NoPickle);
    assert!(info.pickles.is_empty());
}
