//! Legacy `torch.save` tar checkpoints (members `sys_info`, `pickle`,
//! `storages`, `tensors`) are refused; ordinary tarballs are not. The
//! archives are built here block by block, in the layouts Python's
//! `tarfile` and GNU tar write (ustar, GNU, pax, old v7).

mod common;

use common::*;
use tessera_model::{Format, ModelInfo, PicklePolicy, Verdict};

/// A protocol-0 pickle that calls `os.system`.
const EVIL0: &[u8] = b"cposix\nsystem\n(Vecho pwned\ntR.";
/// `pickle.dumps(0, 2)`.
const ZERO: &[u8] = b"\x80\x02K\x00.";

#[derive(Clone, Copy)]
enum Magic {
    /// POSIX ustar (`ustar\0` `00`), what `tarfile` writes.
    Ustar,
    /// GNU tar's old format (`ustar  \0`).
    Gnu,
    /// Version 7: no magic at all.
    V7,
}

/// One 512-byte header block with a correct checksum.
fn header(name: &[u8], size: u64, typeflag: u8, magic: Magic) -> Vec<u8> {
    header_with(name, &octal(size, 12), typeflag, magic, b"")
}

fn octal(n: u64, width: usize) -> Vec<u8> {
    let mut v = format!("{n:0w$o}", w = width - 1).into_bytes();
    v.push(0);
    v
}

fn header_with(name: &[u8], size: &[u8], typeflag: u8, magic: Magic, prefix: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..name.len()].copy_from_slice(name);
    b[100..108].copy_from_slice(b"0000644\0");
    b[108..116].copy_from_slice(b"0001750\0");
    b[116..124].copy_from_slice(b"0001750\0");
    b[124..124 + size.len()].copy_from_slice(size);
    b[136..148].copy_from_slice(b"14712345670\0");
    b[156] = typeflag;
    match magic {
        Magic::Ustar => b[257..265].copy_from_slice(b"ustar\x0000"),
        Magic::Gnu => b[257..265].copy_from_slice(b"ustar  \0"),
        Magic::V7 => {}
    }
    b[345..345 + prefix.len()].copy_from_slice(prefix);
    seal(&mut b);
    b
}

/// Writes the checksum field (six octal digits, NUL, space).
fn seal(b: &mut [u8]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

/// A header of the given type followed by its data, padded.
fn entry(name: &str, data: &[u8], typeflag: u8, magic: Magic) -> Vec<u8> {
    let mut out = header(name.as_bytes(), data.len() as u64, typeflag, magic);
    out.extend_from_slice(data);
    pad(&mut out);
    out
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    entry(name, data, b'0', Magic::Ustar)
}

/// A pax extended (`x`) or global (`g`) header holding `records`.
fn pax(typeflag: u8, records: &[(&str, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        // The length counts its own digits.
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    entry("././@PaxHeader", &data, typeflag, Magic::Ustar)
}

/// A GNU long name (`L`) entry for the member that follows.
fn gnu_long_name(name: &str) -> Vec<u8> {
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    entry("././@LongLink", &data, b'L', Magic::Gnu)
}

fn end() -> Vec<u8> {
    vec![0u8; 1024]
}

fn tar(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// What `torch.save` wrote before 1.6 (`_legacy_save` with a tar), with an
/// `os.system` pickle in `storages`.
fn evil_legacy_tar(magic: Magic) -> Vec<u8> {
    tar(&[
        entry("sys_info", b"\x80\x02}q\x00.", b'0', magic),
        entry("pickle", b"\x80\x02}q\x00.", b'0', magic),
        entry("storages", EVIL0, b'0', magic),
        entry("tensors", ZERO, b'0', magic),
        end(),
    ])
}

fn assert_torch_tar(info: &ModelInfo) {
    assert_eq!(info.format, Format::Pickle, "{info:#?}");
    assert_eq!(info.variant.as_deref(), Some("torch_legacy_tar"));
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert!(info
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("legacy torch tar checkpoint")));
    let refused = PicklePolicy::DenyUnsafe.check(info);
    assert!(refused.is_err(), "deny-unsafe accepted {info:#?}");
}

fn assert_ordinary(info: &ModelInfo) {
    assert_eq!(info.format, Format::Other, "{info:#?}");
    assert_eq!(info.verdict, Verdict::NoPickle, "{info:#?}");
    assert_eq!(info.variant, None);
    assert!(PicklePolicy::DenyUnsafe.check(info).is_ok());
}

#[test]
fn evil_legacy_tar_is_refused_in_every_header_format() {
    for magic in [Magic::Ustar, Magic::Gnu, Magic::V7] {
        let info = sniff_all(&evil_legacy_tar(magic));
        assert_torch_tar(&info);
        let names: Vec<&str> = info.pickles.iter().map(|p| p.location.as_str()).collect();
        assert_eq!(names, ["sys_info", "pickle", "storages", "tensors"]);
        // `storages`' data starts after the first two members and its header.
        assert_eq!(info.pickles[2].offset, Some(3 * 1024 + 512 - 1024));
    }
}

#[test]
fn legacy_member_named_through_pax_path_is_refused() {
    // How `tarfile` with PAX_FORMAT writes names it must encode: the
    // ustar name says one thing, the pax `path` record another.
    let data = tar(&[
        pax(b'x', &[("path", "storages")]),
        file("harmless.txt", EVIL0),
        end(),
    ]);
    assert_torch_tar(&sniff_all(&data));
}

#[test]
fn legacy_member_named_through_gnu_long_name_is_refused() {
    let long = format!("{}/./storages", "d".repeat(150));
    let data = tar(&[
        file("README", b"hello\n"),
        gnu_long_name(&long),
        entry(&long[..100], EVIL0, b'0', Magic::Gnu),
        end(),
    ]);
    assert_torch_tar(&sniff_all(&data));
}

#[test]
fn legacy_member_with_dot_slash_prefix_or_ustar_prefix_is_refused() {
    let dotted = tar(&[file("./tensors", ZERO), end()]);
    assert_torch_tar(&sniff_all(&dotted));
    let mut h = header_with(b"pickle", &octal(5, 12), b'0', Magic::Ustar, b"ckpt");
    h.extend_from_slice(ZERO);
    pad(&mut h);
    assert_torch_tar(&sniff_all(&tar(&[h, end()])));
}

#[test]
fn global_pax_path_names_every_member() {
    let data = tar(&[
        pax(b'g', &[("path", "storages")]),
        file("weights.bin", EVIL0),
        end(),
    ]);
    assert_torch_tar(&sniff_all(&data));
}

#[test]
fn benign_tarball_is_accepted() {
    for magic in [Magic::Ustar, Magic::Gnu, Magic::V7] {
        let data = tar(&[
            entry("model/", b"", b'5', magic),
            entry("model/README.md", b"# tiny model\n", b'0', magic),
            entry("model/weights.bin", &[7u8; 3000], b'0', magic),
            entry("model/config.json", b"{\"a\": 1}", b'0', magic),
            entry("model/latest", b"", b'2', magic),
            end(),
        ]);
        let info = sniff_all(&data);
        assert_ordinary(&info);
        assert!(info.reason.as_deref().is_some_and(|r| r.contains("tar")));
    }
    // pax records and GNU long names that name ordinary files.
    let long = format!("{}/data.bin", "x".repeat(200));
    let data = tar(&[
        pax(b'g', &[("comment", "made by a test")]),
        pax(b'x', &[("path", "résumé.txt"), ("mtime", "1.5")]),
        file("r.txt", b"text"),
        gnu_long_name(&long),
        entry(&long[..100], &[1u8; 700], b'0', Magic::Gnu),
        end(),
    ]);
    assert_ordinary(&sniff_all(&data));
}

#[test]
fn files_that_are_not_tar_are_untouched() {
    // Starts like a tar member named `storages`, but no valid checksum.
    let mut fake = b"storages".to_vec();
    fake.resize(2048, 0);
    fake[600..610].copy_from_slice(b"0123456789");
    let info = sniff_all(&fake);
    assert_ordinary(&info);
    assert_eq!(info.reason, None);
    // The same header with its checksum one off.
    let mut h = header(b"storages", 31, b'0', Magic::Ustar);
    h[153] = h[153].wrapping_add(1);
    h.extend_from_slice(EVIL0);
    pad(&mut h);
    let info = sniff_all(&h);
    assert_ne!(info.variant.as_deref(), Some("torch_legacy_tar"));
    // Text, ELF, zip, safetensors, pickle: unchanged verdicts, no tar reason.
    let mut text = "storages tensors pickle sys_info\n".repeat(40).into_bytes();
    text.truncate(1200);
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(4096, 0);
    let (st, _) = safetensors(
        &[StTensor {
            name: "w",
            dtype: "F32",
            shape: vec![200],
            data: vec![0; 800],
        }],
        &[],
    );
    let (z, _) = zip(&[ZMember::stored("storages", vec![0u8; 600])]);
    let pickle = [
        b"\x80\x02".as_slice(),
        &[b'N'; 600],
        b"0".repeat(600).as_slice(),
        b"N.",
    ]
    .concat();
    for (what, data, format) in [
        ("text", text, Format::Other),
        ("elf", elf, Format::Other),
        ("safetensors", st, Format::Safetensors),
        ("zip", z, Format::Other),
        ("pickle", pickle, Format::Pickle),
    ] {
        let info = sniff_all(&data);
        assert_eq!(info.format, format, "{what}: {info:#?}");
        assert_ne!(info.variant.as_deref(), Some("torch_legacy_tar"), "{what}");
        assert!(
            !info.reason.as_deref().unwrap_or("").contains("tar archive"),
            "{what}: {info:#?}"
        );
    }
}

#[test]
fn truncated_legacy_tar_is_refused() {
    let full = evil_legacy_tar(Magic::Ustar);
    // Cut inside `storages`' data, and inside `pickle`'s header.
    for cut in [2 * 1024 + 512 + 10, 1024 + 100] {
        let info = sniff_all(&full[..cut]);
        assert_eq!(
            info.verdict,
            Verdict::UnsafePickle,
            "cut at {cut}: {info:#?}"
        );
    }
    // An ordinary tarball cut short stays ordinary.
    let plain = tar(&[file("a.txt", &[b'a'; 900]), file("b.txt", b"b"), end()]);
    assert_ordinary(&sniff_all(&plain[..700]));
}

#[test]
fn legacy_member_before_a_lost_walk_is_refused_and_after_it_is_unseen() {
    let mut bad = header(b"junk", 0, b'0', Magic::Ustar);
    bad[148] ^= 1;
    // `tarfile` stops at the bad header: what follows is not a member.
    let after = tar(&[
        file("a.txt", b"a"),
        bad.clone(),
        file("storages", EVIL0),
        end(),
    ]);
    assert_ordinary(&sniff_all(&after));
    let before = tar(&[file("storages", EVIL0), bad, file("a.txt", b"a"), end()]);
    assert_torch_tar(&sniff_all(&before));
}

#[test]
fn data_is_skipped_exactly_as_tarfile_does() {
    // `tarfile` skips data only for regular members and unknown types: a
    // symlink's size is ignored, so the header after it is a member.
    let mut link = header(b"link", 512, b'2', Magic::Ustar);
    link.extend(file("storages", EVIL0));
    assert_torch_tar(&sniff_all(&tar(&[link, end()])));
    // An unknown type's data is skipped: a header inside it is data.
    let hidden = tar(&[
        entry("blob", &file("storages", EVIL0), b'Z', Magic::Ustar),
        end(),
    ]);
    assert_ordinary(&sniff_all(&hidden));
    // A pax size replaces the header's: size 0 makes the "data" a member ...
    let mut claims = header(b"a.bin", 1024, b'0', Magic::Ustar);
    claims.extend(file("storages", EVIL0));
    let shown = tar(&[pax(b'x', &[("size", "0")]), claims, end()]);
    assert_torch_tar(&sniff_all(&shown));
    // ... and a pax size over a header size of 0 makes a member data.
    let mut zero = header(b"a.bin", 0, b'0', Magic::Ustar);
    zero.extend(file("storages", EVIL0));
    let covered = tar(&[pax(b'x', &[("size", "1024")]), zero, end()]);
    assert_ordinary(&sniff_all(&covered));
}

#[test]
fn base256_sizes_are_read() {
    let data = vec![9u8; 1000];
    let mut size = vec![0u8; 12];
    size[0] = 0x80;
    size[10..12].copy_from_slice(&1000u16.to_be_bytes());
    let mut big = header_with(b"weights.bin", &size, b'0', Magic::Gnu, b"");
    big.extend_from_slice(&data);
    pad(&mut big);
    assert_ordinary(&sniff_all(&tar(&[big.clone(), end()])));
    assert_torch_tar(&sniff_all(&tar(&[big, file("tensors", ZERO), end()])));
}

#[test]
fn what_the_walk_cannot_follow_is_unsafe() {
    // A pax header over the buffering limit: what follows is unseen.
    let huge = "p".repeat(70 << 10);
    let data = tar(&[pax(b'x', &[("comment", &huge)]), file("a.txt", b"a"), end()]);
    let info = sniff_all(&data);
    assert_eq!(info.verdict, Verdict::UnsafePickle, "{info:#?}");
    assert!(info
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("pax header")));
    // A negative (base-256) size sends `tarfile` backwards.
    let mut neg = header_with(b"a.bin", &[0xff; 12], b'0', Magic::Gnu, b"");
    neg.extend(end());
    let info = sniff_all(&neg);
    assert_eq!(info.verdict, Verdict::UnsafePickle, "{info:#?}");
}

#[test]
fn gnu_sparse_pax_records_are_followed_unless_a_pax_size_is_set() {
    // GNU tar's sparse pax member (format 0.1) without a pax `size`: the
    // header size places the next member, as in `tarfile`.
    let sparse = tar(&[
        pax(
            b'x',
            &[("GNU.sparse.map", "0,512"), ("GNU.sparse.name", "data.bin")],
        ),
        entry("GNUSparseFile.1/data.bin", &[3u8; 512], b'0', Magic::Ustar),
        file("notes.txt", b"n"),
        end(),
    ]);
    assert_ordinary(&sniff_all(&sparse));
    // With a pax `size` the data offset depends on record order: unsafe.
    let sized = tar(&[
        pax(b'x', &[("GNU.sparse.realsize", "4096"), ("size", "512")]),
        entry("GNUSparseFile.1/data.bin", &[3u8; 512], b'0', Magic::Ustar),
        end(),
    ]);
    let info = sniff_all(&sized);
    assert_eq!(info.verdict, Verdict::UnsafePickle, "{info:#?}");
    // The sparse member's real name counts.
    let named = tar(&[
        pax(b'x', &[("GNU.sparse.name", "storages")]),
        file("GNUSparseFile.1/storages.bin", EVIL0),
        end(),
    ]);
    assert_torch_tar(&sniff_all(&named));
}
