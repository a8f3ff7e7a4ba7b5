//! The pickle import scanner: protocols 0-5, STACK_GLOBAL resolution,
//! calls, limits, legacy torch files.

mod common;

use common::*;
use tessera_model::{
    scan_pickle, Format, ImportCall, ImportVia, Limits, PickleLimits, PicklePolicy, Risk, Verdict,
};

/// Plain containers in every protocol: `{'a': [1, 2.5, 'x', (True, None)], 'b': b'yz'}`
/// as CPython writes them.
const PLAIN: &[&[u8]] = &[
    // protocol 0
    b"(dp0\nVa\np1\n(lp2\nI1\naF2.5\naVx\np3\na(I01\nNtp4\nasVb\np5\nc_codecs\nencode\np6\n(Vyz\np7\nVlatin1\np8\ntp9\nRp10\ns.",
    // protocol 1
    b"}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03I01\nN\x86q\x04eX\x01\x00\x00\x00bq\x05c_codecs\nencode\nq\x06(X\x02\x00\x00\x00yzq\x07X\x06\x00\x00\x00latin1q\x08tq\tRq\nu.",
    // protocol 2
    b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03\x88N\x86q\x04eX\x01\x00\x00\x00bq\x05c_codecs\nencode\nq\x06X\x02\x00\x00\x00yzq\x07X\x06\x00\x00\x00latin1q\x08\x86q\tRq\nu.",
    // protocol 3
    b"\x80\x03}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03\x88N\x86q\x04eX\x01\x00\x00\x00bq\x05C\x02yzq\x06u.",
    // protocol 4
    b"\x80\x04\x95'\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00\x8c\x01x\x94\x88N\x86\x94e\x8c\x01b\x94C\x02yz\x94u.",
    // protocol 5
    b"\x80\x05\x95'\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00\x8c\x01x\x94\x88N\x86\x94e\x8c\x01b\x94C\x02yz\x94u.",
];

#[test]
fn plain_containers_are_safe_in_every_protocol() {
    for (proto, p) in PLAIN.iter().enumerate() {
        let info = sniff_all(p);
        assert_eq!(
            info.format,
            Format::Pickle,
            "protocol {proto}: {:?}",
            info.reason
        );
        assert_eq!(
            info.verdict,
            Verdict::SafePickle,
            "protocol {proto}: {:?}",
            info.pickles
        );
        let r = &info.pickles[0];
        assert!(r.complete, "protocol {proto}");
        assert_eq!(r.bytes, p.len() as u64);
        assert_eq!(r.protocol, (proto >= 2).then_some(proto as u8));
        if proto <= 2 {
            assert_eq!(
                info.pickle_imports,
                vec!["_codecs.encode"],
                "protocol {proto}"
            );
        } else {
            assert!(info.pickle_imports.is_empty(), "protocol {proto}");
        }
    }
}

#[test]
fn global_reduce_os_system_is_unsafe() {
    // protocol 0 and 2 spellings of os.system('id')
    for p in [
        &b"cos\nsystem\n(S'id'\ntR."[..],
        b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.",
        b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.",
    ] {
        let info = sniff_all(p);
        assert_eq!(info.format, Format::Pickle);
        assert_eq!(info.verdict, Verdict::UnsafePickle);
        assert_eq!(info.unsafe_imports.len(), 1);
        assert!(info.unsafe_imports[0].ends_with(".system"));
        let imp = &info.pickles[0].imports[0];
        assert_eq!(imp.risk, Risk::Dangerous);
        assert_eq!(imp.via, vec![ImportVia::Global]);
        assert_eq!(imp.calls, vec![ImportCall::Reduce]);
        assert!(PicklePolicy::DenyUnsafe.check(&info).is_err());
        assert!(PicklePolicy::Allow.check(&info).is_ok());
    }
}

#[test]
fn stack_global_with_memoized_strings_is_resolved() {
    // protocol 4: 'posix' and 'system' memoized, fetched back with BINGET,
    // then STACK_GLOBAL; called with REDUCE.
    let mut p = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    p_str(&mut p, "posix");
    p.push(0x94); // MEMOIZE -> 0
    p_str(&mut p, "system");
    p.push(0x94); // MEMOIZE -> 1
    p.push(b'0'); // POP
    p.push(b'0'); // POP
    p.extend_from_slice(b"h\x00h\x01"); // BINGET 0, BINGET 1
    p.push(0x93); // STACK_GLOBAL
    p_str(&mut p, "echo pwned");
    p.push(0x85); // TUPLE1
    p.push(b'R');
    p.push(b'.');
    let info = sniff_all(&p);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert_eq!(info.unsafe_imports, vec!["posix.system"]);
    let imp = &info.pickles[0].imports[0];
    assert_eq!(imp.via, vec![ImportVia::StackGlobal]);
    assert_eq!(imp.calls, vec![ImportCall::Reduce]);

    // BINPUT/LONG_BINGET spelling
    let mut q = b"\x80\x04".to_vec();
    p_str(&mut q, "os");
    q.extend_from_slice(b"q\x07");
    p_str(&mut q, "system");
    q.extend_from_slice(b"r\x08\x01\x00\x00");
    q.extend_from_slice(b"00j\x07\x00\x00\x00j\x08\x01\x00\x00\x93");
    p_str(&mut q, "id");
    q.extend_from_slice(b"\x85R.");
    let r = scan_pickle(&q);
    assert!(r.complete, "{:?}", r.reason);
    assert_eq!(r.imports[0].full_name(), "os.system");
}

#[test]
fn memo_overwrites_are_followed() {
    // 'collections'/'OrderedDict' memoized at 0/1, then slot 1 overwritten
    // with 'system' and slot 0 with 'os': resolution must see the latest.
    let mut p = b"\x80\x04".to_vec();
    p_str(&mut p, "collections");
    p.extend_from_slice(b"q\x00");
    p_str(&mut p, "OrderedDict");
    p.extend_from_slice(b"q\x01");
    p_str(&mut p, "os");
    p.extend_from_slice(b"q\x00");
    p_str(&mut p, "system");
    p.extend_from_slice(b"q\x01");
    p.extend_from_slice(b"0000h\x00h\x01\x93)R.");
    let r = scan_pickle(&p);
    assert!(r.complete, "{:?}", r.reason);
    assert_eq!(r.imports.len(), 1);
    assert_eq!(r.imports[0].full_name(), "os.system");
}

#[test]
fn unresolved_stack_global_is_unsafe() {
    // The module name is built by a call, not a literal.
    let mut p = b"\x80\x04".to_vec();
    p_str(&mut p, "builtins");
    p_str(&mut p, "str");
    p.push(0x93);
    p_str(&mut p, "o");
    p.extend_from_slice(b"\x85R"); // str('o') -> not a literal
    p_str(&mut p, "system");
    p.extend_from_slice(b"\x93)R.");
    let info = sniff_all(&p);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert!(
        info.unsafe_imports
            .contains(&"<unresolved>.system".to_string()),
        "{:?}",
        info.unsafe_imports
    );
    assert!(info.pickle_imports.contains(&"builtins.str".to_string()));
}

#[test]
fn inst_and_obj_are_calls() {
    let r = scan_pickle(b"(S'id'\nios\nsystem\n.");
    assert!(r.complete, "{:?}", r.reason);
    assert_eq!(r.imports[0].full_name(), "os.system");
    assert_eq!(r.imports[0].via, vec![ImportVia::Inst]);
    assert_eq!(r.imports[0].calls, vec![ImportCall::Inst]);

    let r = scan_pickle(b"(csubprocess\nPopen\nS'id'\no.");
    assert!(r.complete, "{:?}", r.reason);
    assert_eq!(r.imports[0].full_name(), "subprocess.Popen");
    assert_eq!(r.imports[0].calls, vec![ImportCall::Obj]);

    let r = scan_pickle(b"\x80\x04\x8c\x08argparse\x8c\tNamespace\x93)\x81}b.");
    assert!(r.complete, "{:?}", r.reason);
    assert_eq!(
        r.imports[0].calls,
        vec![ImportCall::Build, ImportCall::Newobj]
    );
    assert!(r.is_safe());
}

#[test]
fn torch_rebuild_with_ordered_dict_is_safe() {
    let info = sniff_all(&torch_state_dict_pickle());
    assert_eq!(info.format, Format::Pickle);
    assert_eq!(info.verdict, Verdict::SafePickle, "{:?}", info.pickles);
    assert!(PicklePolicy::DenyUnsafe.check(&info).is_ok());
    let e = PicklePolicy::Deny.check(&info).unwrap_err();
    assert!(e.to_string().contains("contains a pickle"));
}

#[test]
fn legacy_torch_save_file() {
    // magic, protocol version, sys info, the object, storage keys, storages
    let mut f = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec();
    f.extend_from_slice(b"\x80\x02M\xe9\x03.");
    f.extend_from_slice(b"\x80\x02}q\x00X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03s.");
    f.extend_from_slice(&torch_state_dict_pickle());
    f.extend_from_slice(b"\x80\x02]q\x00X\x01\x00\x00\x000q\x01a.");
    f.extend_from_slice(&6u64.to_le_bytes());
    // raw storage data; starts with bytes that look like PROTO to make sure
    // scanning stopped after the 5th pickle
    f.extend_from_slice(b"\x80\x02\xff\xff");
    f.extend_from_slice(&[0u8; 20]);
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Pickle);
    assert_eq!(info.variant.as_deref(), Some("torch_legacy"));
    assert_eq!(info.pickles.len(), 5);
    assert_eq!(info.verdict, Verdict::SafePickle, "{:?}", info.pickles);
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
}

#[test]
fn concatenated_pickles_are_all_scanned() {
    let mut f = b"\x80\x04K\x01.".to_vec();
    f.extend_from_slice(b"\x80\x02cos\nsystem\n).");
    let info = sniff_all(&f);
    assert_eq!(info.pickles.len(), 2);
    assert_eq!(info.unsafe_imports, vec!["os.system"]);
    // trailing non-pickle bytes are noted, not scanned
    let mut g = b"\x80\x04K\x01.".to_vec();
    g.extend_from_slice(b"trailing junk");
    let info = sniff_all(&g);
    assert_eq!(info.pickles.len(), 1);
    assert_eq!(info.verdict, Verdict::SafePickle);
    assert!(
        info.warnings[0].contains("13 bytes after"),
        "{:?}",
        info.warnings
    );
}

#[test]
fn large_payloads_are_skipped_not_buffered() {
    // BINBYTES8 of 8 MiB inside a list, then an unsafe global after it.
    let n = 8 << 20;
    let mut p = b"\x80\x05]\x8e".to_vec();
    p.extend_from_slice(&(n as u64).to_le_bytes());
    p.extend(std::iter::repeat_n(b'c', n));
    p.extend_from_slice(b"acos\nsystem\n.");
    let limits = Limits {
        pickle: PickleLimits {
            max_walk_bytes: 4096,
            ..PickleLimits::default()
        },
        ..Limits::default()
    };
    // the payload does not count against the walk limit: it is skipped
    let info = sniff_split(&p, &[65536], &limits);
    assert!(info.pickles[0].complete, "{:?}", info.pickles[0].reason);
    assert_eq!(info.unsafe_imports, vec!["os.system"]);
    let long_str = {
        let mut q = b"\x80\x04\x8d".to_vec();
        q.extend_from_slice(&(100_000u64).to_le_bytes());
        q.extend(std::iter::repeat_n(b'a', 100_000));
        q.push(b'.');
        q
    };
    let r = scan_pickle(&long_str);
    assert!(r.complete && r.imports.is_empty());
}

#[test]
fn truncated_and_malformed_pickles_are_unsafe() {
    // what a loader would run before failing is what matters
    let info = sniff_all(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85R");
    assert_eq!(info.format, Format::Pickle);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert!(info.reason.as_deref().unwrap().contains("truncated"));

    let info = sniff_all(b"\x80\x02K\x01K\x02\xfe.");
    assert_eq!(info.verdict, Verdict::UnsafePickle, "incomplete scan");
    assert!(info.reason.unwrap().contains("unknown opcode"));

    // protocol 6 does not exist: no loader runs it
    let info = sniff_all(b"\x80\x06K\x01.");
    assert_eq!(info.format, Format::Other);
    // PROTO 6 after a valid start is refused by the scanner
    let info = sniff_all(b"\x80\x02\x80\x06K\x01.");
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert!(info.reason.unwrap().contains("protocol 6"));
}

#[test]
fn pickle_limits_end_the_scan_as_unsafe() {
    let limits = Limits {
        pickle: PickleLimits {
            max_memo: 4,
            max_stack: 8,
            max_line: 16,
            max_imports: 2,
            ..PickleLimits::default()
        },
        ..Limits::default()
    };
    // deep nesting: many MARKs
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b'(', 100));
    deep.push(b'.');
    // big memo
    let mut memo = b"\x80\x02".to_vec();
    for i in 0..10u8 {
        memo.extend_from_slice(&[b'K', i, b'q', i]);
    }
    memo.push(b'.');
    // long GLOBAL line
    let long = b"cos_with_a_very_long_module_name\nsystem\n.".to_vec();
    // many imports
    let many = b"\x80\x02ca\nb\n0cc\nd\n0ce\nf\n0N.".to_vec();
    for (what, p) in [
        ("stack", deep),
        ("memo", memo),
        ("line", long),
        ("imports", many),
    ] {
        let info = sniff_all_with(&p, &limits);
        assert_eq!(info.format, Format::Pickle, "{what}");
        assert_eq!(info.verdict, Verdict::UnsafePickle, "{what}");
        assert!(!info.pickles[0].complete, "{what}");
        assert!(info.reason.is_some(), "{what}");
    }
}

#[test]
fn protocol0_guess_rejects_text() {
    for t in [
        &b"(hello world"[..],
        b"Now is the time",
        b"I am a text file\n",
        b"later lines\n",
    ] {
        let info = sniff_all(t);
        assert_eq!(info.format, Format::Other, "{t:?}: {info:?}");
        assert_eq!(info.verdict, Verdict::NoPickle);
    }
    let info = sniff_all(b"(lp0\nI1\naI2\na.");
    assert_eq!(info.format, Format::Pickle);
    assert_eq!(info.verdict, Verdict::SafePickle);
    // ...but not when the file goes on after the STOP
    let info = sniff_all(b"(lp0\nI1\naI2\na.and more");
    assert_eq!(info.format, Format::Other);
}

#[test]
fn python2_module_names_are_normalized() {
    let r = scan_pickle(b"c__builtin__\nset\n(]tR.");
    assert!(r.is_safe(), "{r:?}");
    let r = scan_pickle(b"c__builtin__\neval\n(S'1'\ntR.");
    assert_eq!(r.imports[0].risk, Risk::Dangerous);
}

#[test]
fn pickles_without_a_protocol_2_header_are_still_found() {
    // PROTO 1 is legal; so are protocol 4 opcodes with no PROTO at all.
    for p in [
        &b"\x80\x01cos\nsystem\n(S'id'\ntR."[..],
        b"\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R.",
        b"\x89\x8c\x02os\x8c\x06system\x930\x8c\x02id\x85.",
        // malformed after the call: a loader has already run it
        b"\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R\xff",
    ] {
        let info = sniff_all(p);
        assert_eq!(info.format, Format::Pickle, "{p:?}");
        assert_eq!(info.verdict, Verdict::UnsafePickle, "{p:?}");
        assert_eq!(info.unsafe_imports, vec!["os.system"], "{p:?}");
    }
    // a first line longer than the limit cannot hide what follows
    let mut long = b"S'".to_vec();
    long.extend(std::iter::repeat_n(b'a', 100));
    long.extend_from_slice(b"'\n0cos\nsystem\n).");
    let limits = Limits {
        pickle: PickleLimits {
            max_line: 64,
            ..PickleLimits::default()
        },
        ..Limits::default()
    };
    let info = sniff_all_with(&long, &limits);
    assert_eq!(info.format, Format::Pickle);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
}

#[test]
fn text_and_binaries_starting_with_opcode_bytes_are_not_pickles() {
    for data in [
        &b"col1,col2\n1,2\n3,4\n"[..],
        b"cat and dog\nare friends\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\x28\xb5\x2f\xfd\x00\x58\x61\x00\x00",
        b"The quick brown fox",
        b"Lorem ipsum dolor\nsit amet",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00",
        // a valid opcode stream up to its first '.', then more text
        b"Git v2.31.7 Release Notes\n",
    ] {
        let info = sniff_all(data);
        assert_eq!(info.format, Format::Other, "{data:?}: {info:?}");
        assert_eq!(info.verdict, Verdict::NoPickle, "{data:?}");
    }
}
