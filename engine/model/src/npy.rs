//! NumPy `.npy`: magic, version, header length, a Python dict literal
//! (`{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`), data.
//!
//! The dict is read by a small bounded tokenizer, never evaluated.
//! `descr` values that are not a plain type string (structured dtypes) are
//! kept as their source text; any `O` type code means the data is a pickle.

pub(crate) const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The fixed part before the dict: magic, version and header length.
pub(crate) enum Preamble {
    NeedMore,
    Invalid(String),
    /// (version text, dict length, offset of the dict)
    Ok(String, u64, u64),
}

pub(crate) fn preamble(b: &[u8]) -> Preamble {
    if b.len() < 10 {
        return Preamble::NeedMore;
    }
    if &b[..6] != MAGIC {
        return Preamble::Invalid("not npy".into());
    }
    let (major, minor) = (b[6], b[7]);
    match major {
        1 => Preamble::Ok(
            format!("{major}.{minor}"),
            u64::from(u16::from_le_bytes([b[8], b[9]])),
            10,
        ),
        2 | 3 => match b.get(8..12) {
            Some(n) => Preamble::Ok(
                format!("{major}.{minor}"),
                u64::from(u32::from_le_bytes([n[0], n[1], n[2], n[3]])),
                12,
            ),
            None => Preamble::NeedMore,
        },
        _ => Preamble::Invalid(format!("unsupported npy version {major}.{minor}")),
    }
}

/// The parsed header dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
    /// Bytes per element, when the dtype has a fixed known size.
    pub itemsize: Option<u64>,
    /// The dtype holds Python objects (data is a pickle).
    pub object: bool,
}

impl Header {
    /// Data length in bytes, when computable.
    pub fn data_len(&self) -> Option<u64> {
        let n = self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        n.checked_mul(self.itemsize?)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Punct(u8),
    Str(&'a str),
    Int(u64),
    Word(&'a str),
}

fn tokenize(s: &str) -> Result<Vec<Tok<'_>>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'{' | b'}' | b'(' | b')' | b'[' | b']' | b':' | b',' => {
                out.push(Tok::Punct(c));
                i += 1;
            }
            b'\'' | b'"' => {
                let end = s[i + 1..]
                    .find(c as char)
                    .ok_or("unterminated string in npy header")?;
                let inner = &s[i + 1..i + 1 + end];
                if inner.contains('\\') {
                    return Err("escaped string in npy header".into());
                }
                out.push(Tok::Str(inner));
                i += end + 2;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                // Python 2 longs: `3L`.
                let digits = &s[start..i];
                if i < b.len() && b[i] == b'L' {
                    i += 1;
                }
                let v = digits
                    .parse::<u64>()
                    .map_err(|_| "integer too large in npy header")?;
                out.push(Tok::Int(v));
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < b.len() && b[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                out.push(Tok::Word(&s[start..i]));
            }
            _ => return Err(format!("unexpected byte 0x{c:02x} in npy header")),
        }
    }
    Ok(out)
}

/// Skips one value starting at `toks[i]`, returning the index after it.
/// Nesting is bounded by `depth`.
fn skip_value(toks: &[Tok<'_>], mut i: usize, depth: u32) -> Result<usize, String> {
    if depth > 32 {
        return Err("npy header nested too deeply".into());
    }
    match toks.get(i) {
        Some(Tok::Punct(open @ (b'(' | b'['))) => {
            let close = if *open == b'(' { b')' } else { b']' };
            i += 1;
            loop {
                match toks.get(i) {
                    Some(Tok::Punct(c)) if *c == close => return Ok(i + 1),
                    Some(Tok::Punct(b',')) => i += 1,
                    Some(_) => i = skip_value(toks, i, depth + 1)?,
                    None => return Err("unterminated list in npy header".into()),
                }
            }
        }
        Some(Tok::Str(_) | Tok::Int(_) | Tok::Word(_)) => Ok(i + 1),
        _ => Err("bad value in npy header".into()),
    }
}

/// Parses the header dict text.
pub(crate) fn parse_dict(bytes: &[u8]) -> Result<Header, String> {
    // v1/v2 headers are Latin-1, v3 UTF-8; the keys and type codes are ASCII
    // either way, so anything else is rejected.
    let s = std::str::from_utf8(bytes).map_err(|_| "npy header is not text")?;
    let toks = tokenize(s)?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    if toks.first() != Some(&Tok::Punct(b'{')) {
        return Err("npy header is not a dict".into());
    }
    let mut i = 1;
    loop {
        match toks.get(i) {
            Some(Tok::Punct(b'}')) => break,
            Some(Tok::Punct(b',')) => i += 1,
            Some(Tok::Str(key)) => {
                if toks.get(i + 1) != Some(&Tok::Punct(b':')) {
                    return Err("expected ':' in npy header".into());
                }
                let vstart = i + 2;
                let vend = skip_value(&toks, vstart, 0)?;
                let val = &toks[vstart..vend];
                match *key {
                    "descr" => descr = Some(descr_text(val)),
                    "fortran_order" => {
                        fortran = Some(match val {
                            [Tok::Word("True")] => true,
                            [Tok::Word("False")] => false,
                            _ => return Err("bad fortran_order in npy header".into()),
                        })
                    }
                    "shape" => {
                        let mut dims = Vec::new();
                        for t in val {
                            match t {
                                Tok::Int(d) => dims.push(*d),
                                Tok::Punct(b'(' | b')' | b',') => {}
                                _ => return Err("bad shape in npy header".into()),
                            }
                        }
                        if !matches!(val.first(), Some(Tok::Punct(b'('))) {
                            return Err("bad shape in npy header".into());
                        }
                        shape = Some(dims);
                    }
                    _ => return Err(format!("unexpected key {key:?} in npy header")),
                }
                i = vend;
            }
            _ => return Err("malformed npy header dict".into()),
        }
    }
    let descr = descr.ok_or("npy header lacks descr")?;
    let (itemsize, object) = match &descr {
        Descr::Simple(d) => (simple_itemsize(d), d.contains('O')),
        Descr::Structured(text, has_object) => (None, *has_object || text.contains("'O")),
    };
    Ok(Header {
        descr: match descr {
            Descr::Simple(d) => d,
            Descr::Structured(t, _) => t,
        },
        fortran_order: fortran.ok_or("npy header lacks fortran_order")?,
        shape: shape.ok_or("npy header lacks shape")?,
        itemsize,
        object,
    })
}

enum Descr {
    Simple(String),
    /// Source text of a structured dtype, and whether any field is `O`.
    Structured(String, bool),
}

fn descr_text(val: &[Tok<'_>]) -> Descr {
    if let [Tok::Str(s)] = val {
        return Descr::Simple((*s).to_string());
    }
    let mut text = String::new();
    let mut object = false;
    for t in val {
        match t {
            Tok::Punct(c) => text.push(*c as char),
            Tok::Str(s) => {
                object |= s.trim_start_matches(['<', '>', '|', '=']).starts_with('O');
                text.push('\'');
                text.push_str(s);
                text.push('\'');
            }
            Tok::Int(n) => text.push_str(&n.to_string()),
            Tok::Word(w) => text.push_str(w),
        }
        if text.len() > 4096 {
            text.push('…');
            break;
        }
    }
    Descr::Structured(text, object)
}

/// Item size of a simple type string such as `<f4`, `|b1`, `<U10`,
/// `<M8[ns]`.
fn simple_itemsize(d: &str) -> Option<u64> {
    let d = d.trim_start_matches(['<', '>', '|', '=']);
    let mut chars = d.chars();
    let kind = chars.next()?;
    let rest = chars.as_str();
    let digits: &str = rest.split('[').next().unwrap_or("");
    let n: u64 = if digits.is_empty() {
        match kind {
            '?' | 'b' | 'B' => 1,
            _ => return None,
        }
    } else {
        digits.parse().ok()?
    };
    match kind {
        'b' | 'i' | 'u' | 'f' | 'c' | 'm' | 'M' | 'S' | 'a' | 'V' | '?' | 'B' => Some(n),
        'U' => n.checked_mul(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_header() {
        let h = parse_dict(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }   \n")
            .unwrap();
        assert_eq!(h.descr, "<f4");
        assert_eq!(h.shape, vec![3, 4]);
        assert_eq!(h.data_len(), Some(48));
        assert!(!h.object);
    }

    #[test]
    fn scalar_and_object_and_structured() {
        let h = parse_dict(b"{'descr': '|O', 'fortran_order': True, 'shape': (), }").unwrap();
        assert!(h.object);
        assert!(h.fortran_order);
        assert!(h.shape.is_empty());
        let h = parse_dict(
            b"{'descr': [('a', '<i4'), ('b', '|O')], 'fortran_order': False, 'shape': (2,), }",
        )
        .unwrap();
        assert!(h.object);
        assert_eq!(h.itemsize, None);
        assert_eq!(simple_itemsize("<U10"), Some(40));
        assert_eq!(simple_itemsize("<M8[ns]"), Some(8));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_dict(b"{'descr': __import__('os')}").is_err());
        assert!(parse_dict(&[b'['; 100]).is_err());
        let deep = format!("{{'descr': {}", "[".repeat(1000));
        assert!(parse_dict(deep.as_bytes()).is_err());
    }
}
