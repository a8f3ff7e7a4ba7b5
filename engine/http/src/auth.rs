//! Access control: bearer tokens with read and write scopes on ref-name
//! prefixes, public prefixes, and signed, expiring pack URLs
//! (`format-spec/PROTOCOL.md` §2).
//!
//! The token file is JSON:
//!
//! ```json
//! {
//!   "tokens": [
//!     {"name": "alice", "token": "…", "read": ["alice/", "shared/"], "write": ["alice/"]},
//!     {"name": "ops", "token": "…", "admin": true}
//!   ],
//!   "public": ["public/"],
//!   "signing_key": "<64 hex digits>"
//! }
//! ```
//!
//! Tokens are compared by their BLAKE3 hashes (no early-exit comparison on
//! the secret). Without a `signing_key`, a random key is drawn at start:
//! pack URLs then stop working when the server restarts (clients fetch the
//! reconstruction again).

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tessera::{FileId, PackId};

/// One token's grants, as the token file has it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// A label for logs.
    #[serde(default)]
    pub name: String,
    /// The secret the client sends as `Authorization: Bearer <token>`.
    pub token: String,
    /// Ref-name prefixes it may read ("" for all).
    #[serde(default)]
    pub read: Vec<String>,
    /// Ref-name prefixes it may write (and read).
    #[serde(default)]
    pub write: Vec<String>,
    /// Everything, everywhere.
    #[serde(default)]
    pub admin: bool,
}

/// The token file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<TokenSpec>,
    /// Ref-name prefixes anyone (no token) may read.
    #[serde(default)]
    pub public: Vec<String>,
    /// Key (64 hex digits) that signs pack URLs; random when absent.
    #[serde(default)]
    pub signing_key: Option<String>,
}

/// What a token may do.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Its label.
    pub name: String,
    read: Vec<String>,
    write: Vec<String>,
    admin: bool,
}

/// The server's access policy: `None` tokens means an open server (every
/// request allowed; loopback only).
#[derive(Clone, Debug)]
pub struct Policy {
    tokens: Option<HashMap<[u8; 32], Grant>>,
    public: Vec<String>,
    key: [u8; 32],
}

/// Who a request is.
#[derive(Clone, Debug)]
pub enum Access {
    /// An open server: everything is allowed.
    Open,
    /// No token on a server with tokens: public prefixes only.
    Anonymous,
    /// A known token.
    Token(Grant),
}

/// An `Authorization` header that names no known token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown token (want Authorization: Bearer <token>)")]
pub struct UnknownToken;

/// A token file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("token file {path}: {detail}")]
pub struct TokenFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub detail: String,
}

fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// A random 32-byte key.
pub fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    if getrandom::getrandom(&mut k).is_err() {
        // No OS randomness: fall back to something unpredictable enough for
        // URL signatures that only live until the server stops.
        let seed = format!(
            "{:?} {} {:p}",
            SystemTime::now(),
            std::process::id(),
            &k as *const _
        );
        k = *blake3::hash(seed.as_bytes()).as_bytes();
    }
    k
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Policy {
    /// An open server's policy: no tokens, every request allowed.
    pub fn open() -> Policy {
        Policy {
            tokens: None,
            public: Vec::new(),
            key: random_key(),
        }
    }

    /// A policy from a parsed token file.
    pub fn from_file(file: TokenFile) -> Result<Policy, String> {
        let key = match &file.signing_key {
            None => random_key(),
            Some(hex_key) => {
                let mut k = [0u8; 32];
                hex::decode_to_slice(hex_key, &mut k)
                    .map_err(|_| "signing_key: want 64 hex digits".to_string())?;
                k
            }
        };
        let mut tokens = HashMap::new();
        for (i, t) in file.tokens.into_iter().enumerate() {
            if t.token.len() < 16 {
                return Err(format!(
                    "token {i} ({:?}) is shorter than 16 characters",
                    t.name
                ));
            }
            let h = token_hash(&t.token);
            let grant = Grant {
                name: if t.name.is_empty() {
                    format!("token {i}")
                } else {
                    t.name
                },
                read: t.read,
                write: t.write,
                admin: t.admin,
            };
            if tokens.insert(h, grant).is_some() {
                return Err(format!("token {i} appears twice"));
            }
        }
        Ok(Policy {
            tokens: Some(tokens),
            public: file.public,
            key,
        })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Policy, TokenFileError> {
        let err = |detail: String| TokenFileError {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: TokenFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        Policy::from_file(file).map_err(err)
    }

    /// Whether requests need tokens (a server with a token file).
    pub fn is_enforced(&self) -> bool {
        self.tokens.is_some()
    }

    /// Who a request with this `Authorization` header value is; `Err` for
    /// a token the server does not know (401).
    pub fn identify(&self, authorization: Option<&str>) -> Result<Access, UnknownToken> {
        let Some(tokens) = &self.tokens else {
            return Ok(Access::Open);
        };
        let Some(value) = authorization else {
            return Ok(Access::Anonymous);
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(UnknownToken)?
            .trim();
        tokens
            .get(&token_hash(token))
            .cloned()
            .map(Access::Token)
            .ok_or(UnknownToken)
    }

    /// The public prefixes.
    pub fn public_prefixes(&self) -> Vec<String> {
        self.public.clone()
    }

    /// Whether `name` is under a public prefix.
    pub fn is_public(&self, name: &str) -> bool {
        self.public.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// The prefixes whose refs `access` may read (`None`: every ref).
    pub fn read_prefixes(&self, access: &Access) -> Option<Vec<String>> {
        match access {
            Access::Open => None,
            Access::Token(g) if g.admin => None,
            Access::Token(g) => Some(
                g.read
                    .iter()
                    .chain(&g.write)
                    .chain(&self.public)
                    .cloned()
                    .collect(),
            ),
            Access::Anonymous => Some(self.public.clone()),
        }
    }

    /// Whether `access` may read ref `name`.
    pub fn can_read(&self, access: &Access, name: &str) -> bool {
        match self.read_prefixes(access) {
            None => true,
            Some(p) => p.iter().any(|p| name.starts_with(p.as_str())),
        }
    }

    /// Whether `access` may write ref `name`.
    pub fn can_write(&self, access: &Access, name: &str) -> bool {
        match access {
            Access::Open => true,
            Access::Token(g) => g.admin || g.write.iter().any(|p| name.starts_with(p.as_str())),
            Access::Anonymous => false,
        }
    }

    /// Whether `access` may run store maintenance (GC, repack): an admin
    /// token, or anyone on a server without tokens (loopback only).
    pub fn is_admin(&self, access: &Access) -> bool {
        match access {
            Access::Open => true,
            Access::Token(g) => g.admin,
            Access::Anonymous => false,
        }
    }

    /// Whether `access` may upload at all (some write scope).
    pub fn is_writer(&self, access: &Access) -> bool {
        match access {
            Access::Open => true,
            Access::Token(g) => g.admin || !g.write.is_empty(),
            Access::Anonymous => false,
        }
    }

    fn signature(&self, pack: &PackId, file: &FileId, exp: u64) -> String {
        let msg = format!("tessera pack url v2\n{pack}\n{file}\n{exp}");
        blake3::keyed_hash(&self.key, msg.as_bytes())
            .to_hex()
            .to_string()
    }

    /// The query string (`file=…&exp=…&sig=…`) of a URL for the records of
    /// `file` in `pack`, valid for `ttl_secs`.
    pub fn sign_pack(&self, pack: &PackId, file: &FileId, ttl_secs: u64) -> String {
        self.sign_pack_until(pack, file, now_secs().saturating_add(ttl_secs))
    }

    /// The query string of a pack URL that expires at `exp` (Unix seconds).
    pub fn sign_pack_until(&self, pack: &PackId, file: &FileId, exp: u64) -> String {
        format!(
            "file={file}&exp={exp}&sig={}",
            self.signature(pack, file, exp)
        )
    }

    /// Checks a pack URL's `file`, `exp` and `sig`; returns the file whose
    /// records it may read, or why it is refused.
    pub fn check_pack(
        &self,
        pack: &PackId,
        file: Option<&str>,
        exp: Option<&str>,
        sig: Option<&str>,
    ) -> Result<FileId, &'static str> {
        let (Some(file), Some(exp), Some(sig)) = (file, exp, sig) else {
            return Err("a pack URL needs file, exp and sig (take it from a reconstruction)");
        };
        // Only the forms the server writes: one URL per signature.
        let file = is_lower_hex_id(file)
            .then(|| FileId::from_hex(file))
            .flatten()
            .ok_or("file is not a file id (64 lower-case hex digits)")?;
        let exp = canonical_decimal(exp).ok_or(
            "exp is not a number in canonical form (decimal digits, no sign, no leading zero)",
        )?;
        let want =
            blake3::Hash::from_hex(self.signature(pack, &file, exp)).map_err(|_| "bad key")?;
        let got = is_lower_hex_id(sig)
            .then(|| blake3::Hash::from_hex(sig).ok())
            .flatten()
            .ok_or("sig is not 64 lower-case hex digits")?;
        // blake3::Hash compares in constant time.
        if want != got {
            return Err("the signature does not match");
        }
        if exp < now_secs() {
            return Err("the URL has expired (fetch the reconstruction again)");
        }
        Ok(file)
    }
}

/// Whether `s` is 64 lower-case hex digits.
fn is_lower_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `s` as a number, if it is written as `u64`'s `Display` writes it:
/// decimal digits only, no sign, no leading zero (but `0` itself).
fn canonical_decimal(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if !digits || leading_zero {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let file: TokenFile = serde_json::from_str(
            r#"{"tokens": [
                {"name": "alice", "token": "alice-secret-0123456789", "read": ["shared/"], "write": ["alice/"]},
                {"name": "root", "token": "root-secret-0123456789", "admin": true}
            ], "public": ["public/"]}"#,
        )
        .expect("parse");
        Policy::from_file(file).expect("policy")
    }

    #[test]
    fn scopes() {
        let p = policy();
        let alice = p
            .identify(Some("Bearer alice-secret-0123456789"))
            .expect("known");
        assert!(p.can_read(&alice, "alice/m@v1:x"));
        assert!(p.can_read(&alice, "shared/m@v1:x"));
        assert!(p.can_read(&alice, "public/m@v1:x"));
        assert!(!p.can_read(&alice, "bob/m@v1:x"));
        assert!(p.can_write(&alice, "alice/m@v1:x"));
        assert!(!p.can_write(&alice, "shared/m@v1:x"));
        assert!(p.identify(Some("Bearer nope")).is_err());
        assert!(p.identify(Some("Basic abc")).is_err());
        let anon = p.identify(None).expect("anonymous");
        assert!(p.can_read(&anon, "public/x"));
        assert!(!p.can_read(&anon, "alice/x"));
        assert!(!p.is_writer(&anon));
        let root = p
            .identify(Some("Bearer root-secret-0123456789"))
            .expect("root");
        assert!(p.can_write(&root, "anything"));
        assert!(p.read_prefixes(&root).is_none());
    }

    #[test]
    fn signatures() {
        let p = policy();
        let pack = PackId([3; 32]);
        let file = FileId([0x5a; 32]);
        let q = p.sign_pack(&pack, &file, 60);
        let params: Vec<&str> = q.split('&').collect();
        let [f, exp, sig] = params[..] else {
            panic!("three params: {q}")
        };
        let f = f.strip_prefix("file=").expect("file");
        let exp = exp.strip_prefix("exp=").expect("exp");
        let sig = sig.strip_prefix("sig=").expect("sig");
        assert_eq!(p.check_pack(&pack, Some(f), Some(exp), Some(sig)), Ok(file));
        assert!(p
            .check_pack(&PackId([4; 32]), Some(f), Some(exp), Some(sig))
            .is_err());
        // Another file's records in the same pack.
        let other_file = FileId([6; 32]).to_hex();
        assert!(p
            .check_pack(&pack, Some(&other_file), Some(exp), Some(sig))
            .is_err());
        assert!(p.check_pack(&pack, None, Some(exp), Some(sig)).is_err());
        let later = (exp.parse::<u64>().expect("n") + 1).to_string();
        assert!(p
            .check_pack(&pack, Some(f), Some(&later), Some(sig))
            .is_err());
        assert!(p.check_pack(&pack, Some(f), Some(exp), None).is_err());
        // Expired, though correctly signed.
        let old = now_secs() - 10;
        let sig_old = p.signature(&pack, &file, old);
        assert!(p
            .check_pack(&pack, Some(f), Some(&old.to_string()), Some(&sig_old))
            .is_err());
        // Only the canonical forms: one URL per signature.
        let upper_sig = sig.to_ascii_uppercase();
        let upper_file = f.to_ascii_uppercase();
        for (f2, exp2, sig2) in [
            (f, format!("+{exp}"), sig),
            (f, format!("0{exp}"), sig),
            (f, format!(" {exp}"), sig),
            (f, exp.to_string(), upper_sig.as_str()),
            (upper_file.as_str(), exp.to_string(), sig),
        ] {
            assert!(
                p.check_pack(&pack, Some(f2), Some(&exp2), Some(sig2))
                    .is_err(),
                "file={f2}&exp={exp2}&sig={sig2}"
            );
        }
        assert_eq!(canonical_decimal("0"), Some(0));
        assert_eq!(canonical_decimal("1796000000"), Some(1_796_000_000));
        for bad in [
            "",
            "00",
            "01",
            "+1",
            "-1",
            "1 ",
            "1e3",
            "18446744073709551616",
        ] {
            assert_eq!(canonical_decimal(bad), None, "{bad:?}");
        }
        // Another server's key.
        let other = Policy::open();
        assert!(other
            .check_pack(&pack, Some(f), Some(exp), Some(sig))
            .is_err());
    }
}
