//! The test vectors of FORMAT.md, read from the document itself so the
//! specification and the code cannot drift apart.

use std::collections::HashMap;
use tessera_codec::testvec::normal_bf16;
use tessera_codec::{Decoder, DtypeHint, Encoder, EncoderOptions, Hint, Method};

const SPEC: &str = include_str!("../FORMAT.md");

/// The ```testvector blocks: `key: value` lines; indented lines continue
/// the previous value; `#` starts a comment.
fn vectors() -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: Option<HashMap<String, String>> = None;
    let mut last_key = String::new();
    for line in SPEC.lines() {
        if line.trim() == "```testvector" {
            cur = Some(HashMap::new());
            continue;
        }
        let Some(map) = cur.as_mut() else { continue };
        if line.trim() == "```" {
            out.push(cur.take().unwrap());
            continue;
        }
        let text = line.split('#').next().unwrap_or("");
        if line.starts_with(char::is_whitespace) {
            map.get_mut(&last_key)
                .expect("continuation after a key")
                .push_str(text.trim());
        } else if let Some((k, v)) = text.split_once(':') {
            last_key = k.trim().to_string();
            map.insert(last_key.clone(), v.trim().to_string());
        }
    }
    assert!(cur.is_none(), "unterminated testvector block");
    out
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `normal_bf16(n, seed)[a..b]`.
fn generate(spec: &str) -> Vec<u8> {
    let inner = spec
        .strip_prefix("normal_bf16(")
        .unwrap_or_else(|| panic!("unknown generator {spec}"));
    let (args, range) = inner.split_once(")[").expect("a range");
    let (n, seed) = args.split_once(',').expect("two arguments");
    let (a, b) = range.trim_end_matches(']').split_once("..").expect("a..b");
    let data = normal_bf16(n.trim().parse().unwrap(), seed.trim().parse().unwrap());
    data[a.parse::<usize>().unwrap()..b.parse::<usize>().unwrap()].to_vec()
}

fn hint(spec: &str) -> Hint {
    let mut words = spec.split_whitespace();
    let dtype = match words.next() {
        Some("Bf16") => DtypeHint::Bf16,
        Some("F16") => DtypeHint::F16,
        Some("F32") => DtypeHint::F32,
        Some("Unknown") => DtypeHint::Unknown,
        other => panic!("unknown hint {other:?}"),
    };
    let phase = match (words.next(), words.next()) {
        (Some("phase"), Some(p)) => Some(p.parse().unwrap()),
        _ => None,
    };
    Hint { dtype, phase }
}

#[test]
fn spec_has_the_vectors() {
    let names: Vec<String> = vectors().iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, ["annotated", "bf16-small", "bf16-4096"]);
}

#[test]
fn spec_vectors_match_the_code() {
    let mut enc = Encoder::new(EncoderOptions::default()).unwrap();
    let mut dec = Decoder::new().unwrap();
    for v in vectors() {
        let name = &v["name"];
        let raw = match (v.get("raw"), v.get("input")) {
            (Some(h), _) => unhex(h),
            (None, Some(g)) => generate(g),
            _ => panic!("{name}: no input"),
        };
        if let Some(h) = v.get("input-blake3") {
            assert_eq!(&blake3::hash(&raw).to_hex().to_string(), h, "{name}: input");
        }
        let method = v.get("method").map_or(2, |m| m.parse::<u8>().unwrap());
        let stored = match v.get("hint") {
            Some(h) => {
                // Produced by the reference encoder: check what it writes.
                let e = enc.encode(&raw, hint(h)).unwrap();
                assert_eq!(e.method.code(), method, "{name}: method");
                let got = e.bytes.to_vec();
                if let Some(s) = v.get("stored") {
                    assert_eq!(hex(&got), hex(&unhex(s)), "{name}: stored bytes");
                }
                if let Some(l) = v.get("stored-len") {
                    assert_eq!(got.len().to_string(), *l, "{name}: stored length");
                }
                if let Some(b) = v.get("stored-blake3") {
                    assert_eq!(
                        blake3::hash(&got).to_hex().to_string(),
                        *b,
                        "{name}: stored hash"
                    );
                }
                got
            }
            None => unhex(&v["stored"]),
        };
        let mut out = Vec::new();
        dec.decode(method, &stored, raw.len(), &mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out, raw, "{name}: decoded bytes");
        assert_eq!(Method::from_code(method), Some(Method::FloatPlanes));
    }
}
