//! A streaming pickle opcode walker that lists the globals a pickle imports.
//!
//! It never unpickles: it walks the opcode stream of protocols 0–5 and keeps
//! an abstract stack (strings it may need for `STACK_GLOBAL`, references to
//! imports, everything else as an opaque value) with the exact stack effect
//! of every opcode, so `STACK_GLOBAL` operands pushed as literals — directly
//! or through the memo — are resolved as Python would resolve them. When an
//! operand is not a literal string the import is recorded as `<unresolved>`,
//! which is unsafe.
//!
//! Memory is bounded: large payloads (`BINBYTES8`, long strings, ...) are
//! skipped as they stream past without being buffered, and the memo, stack,
//! retained strings, line arguments and number of distinct imports are all
//! capped. Hitting a cap ends the scan as incomplete (which makes the verdict
//! unsafe) rather than guessing.
//!
//! Where this model and CPython could disagree, it errs towards stopping:
//! an opcode CPython would reject ends the scan (CPython would fail there
//! too, so nothing after it runs), and anything this walker cannot follow
//! exactly marks the pickle incomplete.

use std::collections::HashMap;
use std::sync::Arc;

use crate::allowlist;
use crate::info::{ImportCall, ImportVia, PickleImport, PickleReport, Risk};

/// Caps for one pickle stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickleLimits {
    /// Opcode and argument bytes walked (payloads skipped over do not
    /// count: skipping them costs nothing).
    pub max_walk_bytes: u64,
    /// Longest string kept as a possible `STACK_GLOBAL` operand.
    pub max_string: usize,
    /// Longest text-line argument (`GLOBAL`, `INST`, `INT`, `PUT`, ...).
    pub max_line: usize,
    /// Memo entries.
    pub max_memo: usize,
    /// Stack depth (values plus marks).
    pub max_stack: usize,
    /// Distinct imports.
    pub max_imports: usize,
    /// Total bytes of strings kept over the whole stream.
    pub max_retained: usize,
}

impl Default for PickleLimits {
    fn default() -> Self {
        PickleLimits {
            max_walk_bytes: 256 << 20,
            max_string: 1024,
            max_line: 64 << 10,
            max_memo: 1 << 20,
            max_stack: 1 << 18,
            max_imports: 4096,
            max_retained: 32 << 20,
        }
    }
}

/// An abstract stack value.
#[derive(Clone, Debug)]
enum Val {
    /// A literal `str`.
    Str(Arc<str>),
    /// The object an import resolved to.
    Global(u32),
    /// The result of calling (or instantiating) an import.
    Obj(u32),
    /// Anything else.
    Other,
}

/// How an opcode's argument is encoded.
#[derive(Clone, Copy)]
enum Arg {
    None,
    /// A fixed number of bytes.
    Fixed(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    Len(usize),
    /// One newline-terminated line.
    Line,
    /// Two newline-terminated lines (`GLOBAL`, `INST`).
    TwoLines,
}

// Opcodes, by protocol.
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const FLOAT: u8 = b'F';
const INT: u8 = b'I';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const LONG: u8 = b'L';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const PERSID: u8 = b'P';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const STRING: u8 = b'S';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const UNICODE: u8 = b'V';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const GET: u8 = b'g';
const BINGET: u8 = b'h';
const INST: u8 = b'i';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const OBJ: u8 = b'o';
const PUT: u8 = b'p';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
// protocol 2
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const EXT1: u8 = 0x82;
const EXT2: u8 = 0x83;
const EXT4: u8 = 0x84;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
// protocol 3
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
// protocol 4
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const NEWOBJ_EX: u8 = 0x92;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;
// protocol 5
const BYTEARRAY8: u8 = 0x96;
const NEXT_BUFFER: u8 = 0x97;
const READONLY_BUFFER: u8 = 0x98;

/// Whether `b` is a pickle opcode (of any protocol).
pub(crate) fn is_opcode(b: u8) -> bool {
    arg_of(b).is_some()
}

/// The argument encoding of `op`, or `None` for a byte that is no opcode.
fn arg_of(op: u8) -> Option<Arg> {
    Some(match op {
        MARK | STOP | POP | POP_MARK | DUP | NONE | BINPERSID | REDUCE | APPEND | BUILD | DICT
        | EMPTY_DICT | APPENDS | LIST | EMPTY_LIST | OBJ | SETITEM | TUPLE | EMPTY_TUPLE
        | SETITEMS | NEWOBJ | TUPLE1 | TUPLE2 | TUPLE3 | NEWTRUE | NEWFALSE | EMPTY_SET
        | ADDITEMS | FROZENSET | NEWOBJ_EX | STACK_GLOBAL | MEMOIZE | NEXT_BUFFER
        | READONLY_BUFFER => Arg::None,
        BININT1 | BINGET | BINPUT | PROTO | EXT1 => Arg::Fixed(1),
        BININT2 | EXT2 => Arg::Fixed(2),
        BININT | LONG_BINGET | LONG_BINPUT | EXT4 => Arg::Fixed(4),
        BINFLOAT | FRAME => Arg::Fixed(8),
        SHORT_BINSTRING | SHORT_BINBYTES | SHORT_BINUNICODE | LONG1 => Arg::Len(1),
        BINSTRING | BINUNICODE | BINBYTES | LONG4 => Arg::Len(4),
        BINUNICODE8 | BINBYTES8 | BYTEARRAY8 => Arg::Len(8),
        FLOAT | INT | LONG | PERSID | STRING | UNICODE | GET | PUT => Arg::Line,
        GLOBAL | INST => Arg::TwoLines,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug)]
enum St {
    /// Expecting an opcode.
    Op,
    /// Collecting a fixed argument into `buf`.
    Fixed { op: u8, need: usize },
    /// Collecting a length prefix into `buf`.
    Len { op: u8, need: usize },
    /// Inside a length-prefixed payload; kept in `buf` when `keep`.
    Payload { op: u8, remaining: u64, keep: bool },
    /// Collecting a text line into `buf`; `first` of two for GLOBAL/INST.
    Line { op: u8, first: bool },
    /// `STOP` seen.
    Done,
    /// The scan ended early; `failure` says why.
    Dead,
}

/// Per-import bookkeeping.
struct ImportRec {
    module: String,
    name: String,
    via: Vec<ImportVia>,
    calls: Vec<ImportCall>,
    count: u64,
}

/// Streaming scanner for one pickle. Feed it bytes; it stops consuming right
/// after `STOP`.
pub struct PickleScanner {
    limits: PickleLimits,
    location: String,
    offset: Option<u64>,
    st: St,
    buf: Vec<u8>,
    first_line: String,
    stack: Vec<Val>,
    /// Stack lengths at each `MARK` (CPython's metastack).
    marks: Vec<usize>,
    memo: HashMap<u64, Val>,
    imports: Vec<ImportRec>,
    import_ids: HashMap<(String, String), u32>,
    protocol: Option<u8>,
    consumed: u64,
    walked: u64,
    opcodes: u64,
    retained: usize,
    failure: Option<String>,
    limit_hit: bool,
}

impl PickleScanner {
    /// A scanner for a pickle found at `location` (see
    /// [`PickleReport::location`]), starting at absolute `offset` if known.
    pub fn new(limits: PickleLimits, location: impl Into<String>, offset: Option<u64>) -> Self {
        PickleScanner {
            limits,
            location: location.into(),
            offset,
            st: St::Op,
            buf: Vec::new(),
            first_line: String::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            imports: Vec::new(),
            import_ids: HashMap::new(),
            protocol: None,
            consumed: 0,
            walked: 0,
            opcodes: 0,
            retained: 0,
            failure: None,
            limit_hit: false,
        }
    }

    /// True once `STOP` was seen or the scan ended early: further bytes are
    /// not consumed.
    pub fn is_finished(&self) -> bool {
        matches!(self.st, St::Done | St::Dead)
    }

    /// True when `STOP` was reached with no limit hit and no error.
    pub fn is_complete(&self) -> bool {
        matches!(self.st, St::Done)
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Number of opcodes walked so far.
    pub fn opcodes(&self) -> u64 {
        self.opcodes
    }

    /// Whether any import was seen.
    pub fn has_imports(&self) -> bool {
        !self.imports.is_empty()
    }

    /// Whether a loader would call an import (REDUCE, BUILD, NEWOBJ, INST,
    /// OBJ on it) within the valid opcodes seen so far.
    pub fn has_called_imports(&self) -> bool {
        self.imports.iter().any(|r| !r.calls.is_empty())
    }

    /// Whether an import was seen that a loader could act on: names that
    /// are (dotted) identifiers, or operands it could not resolve. Text that
    /// merely starts with `c` yields "imports" no loader can perform.
    pub fn has_plausible_imports(&self) -> bool {
        self.imports
            .iter()
            .any(|r| plausible_import(&r.module, &r.name))
    }

    /// Whether the scan stopped at a limit (rather than at malformed data).
    pub fn hit_limit(&self) -> bool {
        self.limit_hit
    }

    /// Ends the scan from outside (e.g. the container ran out of budget).
    pub fn abort(&mut self, why: String) {
        if !self.is_finished() {
            self.fail_limit(why);
        }
    }

    /// Why the scan ended early, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Whether exactly one value was left for `STOP` (used to judge whether
    /// a protocol 0/1 prefix really was a pickle).
    pub(crate) fn stack_is_clean(&self) -> bool {
        self.marks.is_empty()
    }

    /// Feeds bytes; returns how many were consumed (fewer than `data.len()`
    /// only when the pickle ended or the scan stopped within `data`).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                St::Done | St::Dead => break,
                St::Op => {
                    let op = data[i];
                    i += 1;
                    self.opcodes += 1;
                    self.walked += 1;
                    if self.walked > self.limits.max_walk_bytes {
                        self.fail_limit(format!(
                            "pickle exceeds the scan limit of {} bytes",
                            self.limits.max_walk_bytes
                        ));
                        break;
                    }
                    match arg_of(op) {
                        None => {
                            self.fail(format!("unknown opcode 0x{op:02x}"));
                            break;
                        }
                        Some(Arg::None) => self.exec(op),
                        Some(Arg::Fixed(n)) => {
                            if let Some(arg) = data.get(i..i + n) {
                                i += n;
                                self.walked += n as u64;
                                self.exec_fixed(op, arg);
                            } else {
                                self.buf.clear();
                                self.st = St::Fixed { op, need: n };
                            }
                        }
                        Some(Arg::Len(n)) => {
                            if let Some(arg) = data.get(i..i + n) {
                                i += n;
                                self.walked += n as u64;
                                let len = le_u64(arg);
                                self.start_payload(op, n, len);
                            } else {
                                self.buf.clear();
                                self.st = St::Len { op, need: n };
                            }
                        }
                        Some(Arg::Line) => {
                            self.buf.clear();
                            self.st = St::Line { op, first: false };
                        }
                        Some(Arg::TwoLines) => {
                            self.buf.clear();
                            self.st = St::Line { op, first: true };
                        }
                    }
                }
                St::Fixed { op, need } | St::Len { op, need } => {
                    let take = (need - self.buf.len()).min(data.len() - i);
                    self.buf.extend_from_slice(&data[i..i + take]);
                    i += take;
                    self.walked += take as u64;
                    if self.buf.len() == need {
                        let arg = std::mem::take(&mut self.buf);
                        if matches!(self.st, St::Fixed { .. }) {
                            self.st = St::Op;
                            self.exec_fixed(op, &arg);
                        } else {
                            self.st = St::Op;
                            self.start_payload(op, need, le_u64(&arg));
                        }
                        self.buf = arg;
                        self.buf.clear();
                    }
                }
                St::Payload {
                    op,
                    remaining,
                    keep,
                } => {
                    let avail = (data.len() - i) as u64;
                    let take = remaining.min(avail) as usize;
                    if keep {
                        self.buf.extend_from_slice(&data[i..i + take]);
                    }
                    i += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.st = St::Op;
                        let payload = std::mem::take(&mut self.buf);
                        self.end_payload(op, keep.then_some(&payload[..]));
                        self.buf = payload;
                        self.buf.clear();
                    } else {
                        self.st = St::Payload {
                            op,
                            remaining,
                            keep,
                        };
                    }
                }
                St::Line { op, first } => {
                    let rest = &data[i..];
                    let (part, found) = match memchr::memchr(b'\n', rest) {
                        Some(n) => (&rest[..n], true),
                        None => (rest, false),
                    };
                    let room = self.limits.max_line - self.buf.len().min(self.limits.max_line);
                    if part.len() > room {
                        // Consume exactly up to the limit, whatever the
                        // batch boundaries, then stop.
                        self.buf.extend_from_slice(&part[..room]);
                        i += room;
                        self.walked += room as u64;
                        self.fail_limit(format!(
                            "text argument longer than {} bytes",
                            self.limits.max_line
                        ));
                        break;
                    }
                    self.buf.extend_from_slice(part);
                    let used = part.len() + usize::from(found);
                    i += used;
                    self.walked += used as u64;
                    if found {
                        let line = std::mem::take(&mut self.buf);
                        if first {
                            self.first_line = String::from_utf8_lossy(&line).into_owned();
                            self.st = St::Line { op, first: false };
                        } else {
                            self.st = St::Op;
                            self.exec_line(op, &line);
                        }
                        self.buf = line;
                        self.buf.clear();
                    }
                }
            }
        }
        self.consumed += i as u64;
        i
    }

    /// Ends the scan (the stream ended) and reports.
    pub fn finish(mut self) -> PickleReport {
        let reason = match self.st {
            St::Done => None,
            St::Dead => self.failure.take(),
            _ if self.consumed == 0 => Some("empty pickle".to_string()),
            _ => Some(format!(
                "truncated pickle: stream ended after {} bytes without STOP",
                self.consumed
            )),
        };
        let complete = matches!(self.st, St::Done);
        let imports = self
            .imports
            .into_iter()
            .map(|r| PickleImport {
                risk: if r.calls.contains(&ImportCall::Modify) {
                    Risk::Dangerous
                } else {
                    allowlist::classify(&r.module, &r.name)
                },
                module: r.module,
                name: r.name,
                via: r.via,
                calls: r.calls,
                count: r.count,
            })
            .collect();
        PickleReport {
            location: self.location,
            offset: self.offset,
            protocol: self.protocol,
            bytes: self.consumed,
            opcodes: self.opcodes,
            complete,
            reason,
            imports,
        }
    }

    fn fail_limit(&mut self, why: String) {
        self.limit_hit = true;
        self.fail(why);
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
        self.st = St::Dead;
    }

    // ---- stack model -------------------------------------------------

    fn push(&mut self, v: Val) {
        if self.stack.len() + self.marks.len() >= self.limits.max_stack {
            self.fail_limit(format!(
                "pickle stack deeper than {} entries",
                self.limits.max_stack
            ));
            return;
        }
        self.stack.push(v);
    }

    /// Start of the current mark frame.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Option<Val> {
        if self.stack.len() > self.base() {
            self.stack.pop()
        } else {
            self.fail(format!("stack underflow at opcode {}", self.opcodes));
            None
        }
    }

    /// Requires a value on top (within the current frame).
    fn top(&mut self) -> Option<Val> {
        if self.stack.len() > self.base() {
            self.stack.last().cloned()
        } else {
            self.fail(format!("stack underflow at opcode {}", self.opcodes));
            None
        }
    }

    /// Pops to the last mark; returns the index where the popped items
    /// began (they stay in `stack` until the caller truncates).
    fn pop_mark(&mut self) -> Option<usize> {
        match self.marks.pop() {
            Some(b) => Some(b),
            None => {
                self.fail(format!("MARK expected at opcode {}", self.opcodes));
                None
            }
        }
    }

    fn memo_put(&mut self, key: u64, v: Val) {
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            self.fail_limit(format!(
                "pickle memo larger than {} entries",
                self.limits.max_memo
            ));
            return;
        }
        self.memo.insert(key, v);
    }

    fn memo_get(&mut self, key: u64) {
        match self.memo.get(&key) {
            Some(v) => {
                let v = v.clone();
                self.push(v);
            }
            None => self.fail(format!("memo key {key} not defined")),
        }
    }

    fn put_top(&mut self, key: u64) {
        if let Some(v) = self.top() {
            self.memo_put(key, v);
        }
    }

    /// A literal string, kept if short and the retention budget allows.
    fn push_str(&mut self, s: Option<String>) {
        match s {
            Some(s)
                if s.len() <= self.limits.max_string
                    && self.retained + s.len() <= self.limits.max_retained =>
            {
                self.retained += s.len();
                self.push(Val::Str(Arc::from(s)));
            }
            _ => self.push(Val::Other),
        }
    }

    fn import(&mut self, module: String, name: String, via: ImportVia) -> Option<u32> {
        let key = (module, name);
        let id = match self.import_ids.get(&key) {
            Some(&id) => id,
            None => {
                if self.imports.len() >= self.limits.max_imports {
                    self.fail_limit(format!(
                        "more than {} distinct imports",
                        self.limits.max_imports
                    ));
                    return None;
                }
                let id = self.imports.len() as u32;
                self.imports.push(ImportRec {
                    module: key.0.clone(),
                    name: key.1.clone(),
                    via: Vec::new(),
                    calls: Vec::new(),
                    count: 0,
                });
                self.import_ids.insert(key, id);
                id
            }
        };
        let rec = &mut self.imports[id as usize];
        rec.count += 1;
        if !rec.via.contains(&via) {
            rec.via.push(via);
            rec.via.sort();
        }
        Some(id)
    }

    fn note_call(&mut self, v: &Val, call: ImportCall) {
        if let Val::Global(id) | Val::Obj(id) = *v {
            if let Some(rec) = self.imports.get_mut(id as usize) {
                if !rec.calls.contains(&call) {
                    rec.calls.push(call);
                    rec.calls.sort();
                }
            }
        }
    }

    /// A container opcode (`SETITEM`, `APPENDS`, `BUILD`, ...) applied to
    /// `target`: an instance made from an import is being filled in, which
    /// is how objects are pickled; the imported object itself being changed
    /// is not, and is recorded as [`ImportCall::Modify`].
    fn note_target(&mut self, target: Option<Val>, on_instance: Option<ImportCall>) {
        match target {
            Some(v @ Val::Global(_)) => self.note_call(&v, ImportCall::Modify),
            Some(v) => {
                if let Some(call) = on_instance {
                    self.note_call(&v, call);
                }
            }
            None => {}
        }
    }

    /// The value a call through `callee` produces.
    fn result_of(callee: &Val) -> Val {
        match *callee {
            Val::Global(id) | Val::Obj(id) => Val::Obj(id),
            _ => Val::Other,
        }
    }

    // ---- opcode semantics -------------------------------------------

    fn exec(&mut self, op: u8) {
        match op {
            MARK => {
                if self.stack.len() + self.marks.len() >= self.limits.max_stack {
                    self.fail_limit(format!(
                        "pickle stack deeper than {} entries",
                        self.limits.max_stack
                    ));
                } else {
                    self.marks.push(self.stack.len());
                }
            }
            STOP => {
                if self.pop().is_some() {
                    self.st = St::Done;
                }
            }
            POP => {
                // CPython pops the mark when the current frame is empty.
                if self.stack.len() > self.base() {
                    self.stack.pop();
                } else {
                    self.pop_mark();
                }
            }
            POP_MARK => {
                if let Some(b) = self.pop_mark() {
                    self.stack.truncate(b);
                }
            }
            DUP => {
                if let Some(v) = self.top() {
                    self.push(v);
                }
            }
            NONE | NEWTRUE | NEWFALSE | EMPTY_DICT | EMPTY_LIST | EMPTY_TUPLE | EMPTY_SET
            | NEXT_BUFFER => self.push(Val::Other),
            READONLY_BUFFER => {
                self.top();
            }
            BINPERSID => {
                if self.pop().is_some() {
                    self.push(Val::Other);
                }
            }
            REDUCE => {
                let Some(_args) = self.pop() else { return };
                let Some(callee) = self.pop() else { return };
                self.note_call(&callee, ImportCall::Reduce);
                self.push(Self::result_of(&callee));
            }
            BUILD => {
                let Some(_state) = self.pop() else { return };
                let target = self.top();
                self.note_target(target, Some(ImportCall::Build));
            }
            NEWOBJ => {
                let Some(_args) = self.pop() else { return };
                let Some(cls) = self.pop() else { return };
                self.note_call(&cls, ImportCall::Newobj);
                self.push(Self::result_of(&cls));
            }
            NEWOBJ_EX => {
                let Some(_kwargs) = self.pop() else { return };
                let Some(_args) = self.pop() else { return };
                let Some(cls) = self.pop() else { return };
                self.note_call(&cls, ImportCall::NewobjEx);
                self.push(Self::result_of(&cls));
            }
            APPEND => {
                if self.pop().is_some() {
                    let target = self.top();
                    self.note_target(target, None);
                }
            }
            SETITEM => {
                if self.pop().is_some() && self.pop().is_some() {
                    let target = self.top();
                    self.note_target(target, None);
                }
            }
            APPENDS | SETITEMS | ADDITEMS => {
                if let Some(b) = self.pop_mark() {
                    self.stack.truncate(b);
                    let target = self.top();
                    self.note_target(target, None);
                }
            }
            DICT | LIST | TUPLE | FROZENSET => {
                if let Some(b) = self.pop_mark() {
                    self.stack.truncate(b);
                    self.push(Val::Other);
                }
            }
            OBJ => {
                if let Some(b) = self.pop_mark() {
                    let cls = self.stack.get(b).cloned();
                    self.stack.truncate(b);
                    match cls {
                        Some(cls) => {
                            self.note_call(&cls, ImportCall::Obj);
                            self.push(Self::result_of(&cls));
                        }
                        None => self.fail("OBJ without a class".to_string()),
                    }
                }
            }
            TUPLE1 => {
                if self.pop().is_some() {
                    self.push(Val::Other);
                }
            }
            TUPLE2 => {
                if self.pop().is_some() && self.pop().is_some() {
                    self.push(Val::Other);
                }
            }
            TUPLE3 => {
                if self.pop().is_some() && self.pop().is_some() && self.pop().is_some() {
                    self.push(Val::Other);
                }
            }
            STACK_GLOBAL => {
                let Some(name) = self.pop() else { return };
                let Some(module) = self.pop() else { return };
                let text = |v: &Val| match v {
                    Val::Str(s) => s.to_string(),
                    _ => "<unresolved>".to_string(),
                };
                if let Some(id) = self.import(text(&module), text(&name), ImportVia::StackGlobal) {
                    self.push(Val::Global(id));
                }
            }
            MEMOIZE => {
                let key = self.memo.len() as u64;
                self.put_top(key);
            }
            _ => self.fail(format!("unhandled opcode 0x{op:02x}")),
        }
    }

    fn exec_fixed(&mut self, op: u8, arg: &[u8]) {
        let n = le_u64(arg);
        match op {
            BININT1 | BININT2 | BININT | BINFLOAT => self.push(Val::Other),
            BINGET | LONG_BINGET => self.memo_get(n),
            BINPUT | LONG_BINPUT => self.put_top(n),
            PROTO => {
                let p = arg.first().copied().unwrap_or(0);
                if p > 5 {
                    self.fail(format!("unsupported pickle protocol {p}"));
                } else {
                    self.protocol = Some(self.protocol.map_or(p, |q| q.max(p)));
                }
            }
            FRAME => {}
            EXT1 | EXT2 | EXT4 => {
                if let Some(id) =
                    self.import("<extension>".to_string(), n.to_string(), ImportVia::Ext)
                {
                    self.push(Val::Global(id));
                }
            }
            _ => self.fail(format!("unhandled opcode 0x{op:02x}")),
        }
    }

    fn start_payload(&mut self, op: u8, prefix: usize, len: u64) {
        // 4-byte lengths of BINSTRING and LONG4 are signed.
        if prefix == 4 && matches!(op, BINSTRING | LONG4) && len > i32::MAX as u64 {
            self.fail("negative length".to_string());
            return;
        }
        let is_text = matches!(
            op,
            SHORT_BINUNICODE | BINUNICODE | BINUNICODE8 | SHORT_BINSTRING | BINSTRING
        );
        let keep = is_text && len <= self.limits.max_string as u64;
        self.buf.clear();
        if len == 0 {
            self.end_payload(op, keep.then_some(&[][..]));
        } else {
            self.st = St::Payload {
                op,
                remaining: len,
                keep,
            };
        }
    }

    fn end_payload(&mut self, op: u8, payload: Option<&[u8]>) {
        match op {
            SHORT_BINUNICODE | BINUNICODE | BINUNICODE8 => {
                let s = payload.and_then(|p| std::str::from_utf8(p).ok().map(str::to_string));
                self.push_str(s);
            }
            SHORT_BINSTRING | BINSTRING => {
                // Decoded with the unpickler's encoding, ASCII by default.
                let s = payload
                    .filter(|p| p.is_ascii())
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                self.push_str(s);
            }
            _ => self.push(Val::Other),
        }
    }

    fn exec_line(&mut self, op: u8, line: &[u8]) {
        match op {
            FLOAT | INT | LONG | PERSID => self.push(Val::Other),
            STRING => self.push_str(decode_string_literal(line)),
            UNICODE => self.push_str(Some(decode_raw_unicode_escape(line))),
            GET | PUT => match parse_decimal(line) {
                Some(key) if op == GET => self.memo_get(key),
                Some(key) => self.put_top(key),
                None => self.fail("bad memo key".to_string()),
            },
            GLOBAL => {
                let module = std::mem::take(&mut self.first_line);
                let name = String::from_utf8_lossy(line).into_owned();
                if let Some(id) = self.import(module, name, ImportVia::Global) {
                    self.push(Val::Global(id));
                }
            }
            INST => {
                let module = std::mem::take(&mut self.first_line);
                let name = String::from_utf8_lossy(line).into_owned();
                let Some(b) = self.pop_mark() else { return };
                self.stack.truncate(b);
                if let Some(id) = self.import(module, name, ImportVia::Inst) {
                    let v = Val::Global(id);
                    self.note_call(&v, ImportCall::Inst);
                    self.push(Val::Obj(id));
                }
            }
            _ => self.fail(format!("unhandled opcode 0x{op:02x}")),
        }
    }
}

/// Little-endian unsigned value of up to 8 bytes.
fn le_u64(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// A memo key of `PUT`/`GET` as CPython reads it (`PyLong_FromString`,
/// base 10): surrounding ASCII whitespace, a sign, and single underscores
/// between digits are accepted (`p1_0` is key 10, `p-0` key 0); a negative
/// key or one beyond `Py_ssize_t` fails there too.
fn parse_decimal(line: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let well_formed = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__")
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return None;
    }
    let v = digits
        .bytes()
        .filter(|&b| b != b'_')
        .try_fold(0u64, |a, b| {
            a.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })?;
    (v <= i64::MAX as u64 && (!negative || v == 0)).then_some(v)
}

/// The `STRING` opcode's argument: a quoted Python 2 `repr` of a byte
/// string. Returns the text when it decodes to ASCII (the unpickler's
/// default encoding); `None` otherwise.
fn decode_string_literal(line: &[u8]) -> Option<String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = match line {
        [b'\'', inner @ .., b'\''] | [b'"', inner @ .., b'"'] if line.len() >= 2 => inner,
        _ => return None,
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter().copied().peekable();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'\'') => out.push(b'\''),
            Some(b'"') => out.push(b'"'),
            Some(b'x') => {
                let hi = it.next().and_then(hex_val)?;
                let lo = it.next().and_then(hex_val)?;
                out.push(hi * 16 + lo);
            }
            // Anything else is not something a module name would contain;
            // give up rather than guess.
            _ => return None,
        }
    }
    if out.is_ascii() {
        String::from_utf8(out).ok()
    } else {
        None
    }
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Python's `raw-unicode-escape` decoding: bytes are Latin-1 except
/// `\uXXXX` and `\UXXXXXXXX` escapes.
fn decode_raw_unicode_escape(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if c == b'\\' {
            let digits = match line.get(i + 1) {
                Some(b'u') => 4,
                Some(b'U') => 8,
                _ => 0,
            };
            if digits > 0 {
                if let Some(hex) = line.get(i + 2..i + 2 + digits) {
                    let v = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32);
                    if let Some(ch) = v {
                        out.push(ch);
                        i += 2 + digits;
                        continue;
                    }
                }
            }
        }
        out.push(char::from(c));
        i += 1;
    }
    out
}

/// Scans a whole in-memory pickle with default limits.
pub fn scan_pickle(data: &[u8]) -> PickleReport {
    let mut s = PickleScanner::new(PickleLimits::default(), "", Some(0));
    s.feed(data);
    s.finish()
}

/// Whether `module.name` is an import a loader could act on: (dotted)
/// identifiers, or an operand the scanner could not resolve (`<…>`). Text
/// that merely starts with `c` yields "imports" no loader can perform.
pub(crate) fn plausible_import(module: &str, name: &str) -> bool {
    fn dotted_ident(s: &str) -> bool {
        s.starts_with('<')
            || (!s.is_empty()
                && s.split('.').all(|part| {
                    part.chars().next().is_some_and(|c| !c.is_ascii_digit())
                        && part
                            .chars()
                            .all(|c| c == '_' || c.is_alphanumeric() || !c.is_ascii())
                }))
    }
    dotted_ident(module) && dotted_ident(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::Risk;

    #[test]
    fn le_and_decimal() {
        assert_eq!(le_u64(&[1, 2]), 0x0201);
        assert_eq!(le_u64(&[0xff; 8]), u64::MAX);
        assert_eq!(parse_decimal(b"17"), Some(17));
        assert_eq!(parse_decimal(b"-1"), None);
        // CPython's int parsing, as the unpickler uses it.
        assert_eq!(parse_decimal(b"1_0"), Some(10));
        assert_eq!(parse_decimal(b"-0"), Some(0));
        assert_eq!(parse_decimal(b" +7 "), Some(7));
        assert_eq!(parse_decimal(b"007"), Some(7));
        for bad in [
            &b"1__0"[..],
            b"_1",
            b"1_",
            b"",
            b"-",
            b"0x1",
            b"9223372036854775808",
        ] {
            assert_eq!(
                parse_decimal(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn string_literals() {
        assert_eq!(decode_string_literal(b"'os'"), Some("os".into()));
        assert_eq!(decode_string_literal(b"\"a\\x41\""), Some("aA".into()));
        assert_eq!(decode_string_literal(b"'\\xff'"), None);
        assert_eq!(decode_string_literal(b"os"), None);
        assert_eq!(decode_raw_unicode_escape(b"sy\\u0073tem"), "system");
        assert_eq!(decode_raw_unicode_escape(b"\xe9"), "\u{e9}");
    }

    #[test]
    fn protocol0_global_reduce() {
        let r = scan_pickle(b"cos\nsystem\n(S'echo hi'\ntR.");
        assert!(r.complete, "{r:?}");
        assert_eq!(r.imports.len(), 1);
        assert_eq!(r.imports[0].full_name(), "os.system");
        assert_eq!(r.imports[0].risk, Risk::Dangerous);
        assert_eq!(r.imports[0].calls, vec![ImportCall::Reduce]);
    }

    #[test]
    fn unknown_opcode_is_incomplete() {
        let r = scan_pickle(b"\x80\x02\xff.");
        assert!(!r.complete);
        assert!(r.reason.unwrap().contains("unknown opcode"));
    }

    #[test]
    fn stack_underflow_is_incomplete() {
        let r = scan_pickle(b"R.");
        assert!(!r.complete);
        assert!(r.reason.unwrap().contains("underflow"));
    }
}
