//! NumPy `.npy`: magic, version, header length, a Python dict literal
//! (`{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`), data.
//!
//! The dict is read by a small bounded tokenizer, never evaluated.
//! `descr` values that are not a plain type string (structured dtypes) are
//! kept as their source text. numpy unpickles the data of any dtype that
//! holds objects, so the dtype must be accounted for exactly: a plain type
//! string (`<f4`, `|b1`, `<U10`, `<M8[ns]`, ...), an object one (`|O`,
//! `object`), or a list of fields made of those. Anything else (a dtype
//! string in another spelling, a comma-separated or sub-array spec, a dict,
//! a header the tokenizer cannot read) is an error, which callers treat as
//! "may be a pickle".

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
    let mut object = false;
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
                let seen = match *key {
                    "descr" => descr.is_some(),
                    "fortran_order" => fortran.is_some(),
                    "shape" => shape.is_some(),
                    _ => false,
                };
                if seen {
                    return Err(format!("key {key:?} twice in npy header"));
                }
                match *key {
                    "descr" => {
                        let text = descr_text(val);
                        match dtype(val, 0, 0) {
                            Ok((end, obj)) if end == val.len() => object = obj,
                            _ => {
                                return Err(format!(
                                    "dtype {} is not a plain numpy type",
                                    crate::clip(&descr_text_str(&text), 256)
                                ))
                            }
                        }
                        descr = Some(text);
                    }
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
    let itemsize = match &descr {
        Descr::Simple(d) if !object => simple_itemsize(d),
        _ => None,
    };
    Ok(Header {
        descr: descr_text_str(&descr),
        fortran_order: fortran.ok_or("npy header lacks fortran_order")?,
        shape: shape.ok_or("npy header lacks shape")?,
        itemsize,
        object,
    })
}

enum Descr {
    Simple(String),
    /// Source text of a structured dtype.
    Structured(String),
}

fn descr_text_str(d: &Descr) -> String {
    match d {
        Descr::Simple(s) | Descr::Structured(s) => s.clone(),
    }
}

/// What a dtype string is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// Fixed-size plain data in numpy's canonical spelling.
    Plain,
    /// Python objects: the data is a pickle.
    Object,
    /// Anything else: not accounted for.
    Other,
}

fn classify(d: &str) -> Kind {
    let t = d.strip_prefix(['<', '>', '|', '=']).unwrap_or(d);
    if matches!(t, "O" | "O4" | "O8" | "object" | "object_" | "object0") {
        return Kind::Object;
    }
    let mut chars = t.chars();
    let Some(kind) = chars.next() else {
        return Kind::Other;
    };
    let rest = chars.as_str();
    let (digits, unit) = match rest.split_once('[') {
        Some((d, u)) => (d, Some(u)),
        None => (rest, None),
    };
    let digits_ok =
        !digits.is_empty() && digits.len() <= 10 && digits.bytes().all(|b| b.is_ascii_digit());
    let unit_ok = match unit {
        None => true,
        Some(u) => {
            matches!(kind, 'm' | 'M')
                && u.strip_suffix(']')
                    .is_some_and(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphanumeric()))
        }
    };
    if digits_ok && unit_ok && "biufcmMSaUV".contains(kind) {
        Kind::Plain
    } else {
        Kind::Other
    }
}

/// Parses the dtype value at `toks[i]` (a type string, or a list of
/// `(name, dtype[, shape])` fields); returns the index after it and
/// whether it holds objects. Errors on anything not accounted for.
fn dtype(toks: &[Tok<'_>], i: usize, depth: u32) -> Result<(usize, bool), ()> {
    if depth > 32 {
        return Err(());
    }
    match toks.get(i) {
        Some(Tok::Str(s)) => match classify(s) {
            Kind::Plain => Ok((i + 1, false)),
            Kind::Object => Ok((i + 1, true)),
            Kind::Other => Err(()),
        },
        Some(Tok::Punct(b'[')) => {
            let mut i = i + 1;
            let mut object = false;
            loop {
                match toks.get(i) {
                    Some(Tok::Punct(b']')) => return Ok((i + 1, object)),
                    Some(Tok::Punct(b',')) => i += 1,
                    Some(Tok::Punct(b'(')) => {
                        let (end, obj) = field(toks, i, depth + 1)?;
                        object |= obj;
                        i = end;
                    }
                    _ => return Err(()),
                }
            }
        }
        _ => Err(()),
    }
}

/// One field `(name, dtype[, shape])` of a structured dtype, `name` being
/// a string or a `(title, name)` pair, `shape` an integer or a tuple.
fn field(toks: &[Tok<'_>], i: usize, depth: u32) -> Result<(usize, bool), ()> {
    let p = |i: usize, c: u8| toks.get(i) == Some(&Tok::Punct(c));
    let is_str = |i: usize| matches!(toks.get(i), Some(Tok::Str(_)));
    let mut i = i + 1;
    if is_str(i) {
        i += 1;
    } else if p(i, b'(') && is_str(i + 1) && p(i + 2, b',') && is_str(i + 3) && p(i + 4, b')') {
        i += 5;
    } else {
        return Err(());
    }
    if !p(i, b',') {
        return Err(());
    }
    let (mut i, object) = dtype(toks, i + 1, depth)?;
    if p(i, b',') && !p(i + 1, b')') {
        i += 1;
        match toks.get(i) {
            Some(Tok::Int(_)) => i += 1,
            Some(Tok::Punct(b'(')) => {
                i += 1;
                while let Some(Tok::Int(_) | Tok::Punct(b',')) = toks.get(i) {
                    i += 1;
                }
                if !p(i, b')') {
                    return Err(());
                }
                i += 1;
            }
            _ => return Err(()),
        }
    }
    if p(i, b',') {
        i += 1;
    }
    if !p(i, b')') {
        return Err(());
    }
    Ok((i + 1, object))
}

fn descr_text(val: &[Tok<'_>]) -> Descr {
    if let [Tok::Str(s)] = val {
        return Descr::Simple((*s).to_string());
    }
    let mut text = String::new();
    for t in val {
        match t {
            Tok::Punct(c) => text.push(*c as char),
            Tok::Str(s) => {
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
    Descr::Structured(text)
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
