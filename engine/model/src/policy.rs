//! The engine's `--pickle allow|deny-unsafe|deny` policy.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::info::{ModelInfo, Verdict};

/// What to do with files that contain pickles.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PicklePolicy {
    /// Store anything (the verdict is still recorded).
    #[default]
    Allow,
    /// Refuse files whose verdict is `unsafe_pickle`.
    DenyUnsafe,
    /// Refuse every file that contains a pickle.
    Deny,
}

impl PicklePolicy {
    /// The policy's command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PicklePolicy::Allow => "allow",
            PicklePolicy::DenyUnsafe => "deny-unsafe",
            PicklePolicy::Deny => "deny",
        }
    }

    /// Whether a file with this verdict is acceptable.
    pub fn allows(self, verdict: Verdict) -> bool {
        match self {
            PicklePolicy::Allow => true,
            PicklePolicy::DenyUnsafe => verdict != Verdict::UnsafePickle,
            PicklePolicy::Deny => verdict == Verdict::NoPickle,
        }
    }

    /// `Ok` if the file may be stored, else the violation to report.
    pub fn check(self, info: &ModelInfo) -> Result<(), PolicyViolation> {
        if self.allows(info.verdict) {
            Ok(())
        } else {
            Err(PolicyViolation {
                policy: self,
                verdict: info.verdict,
                unsafe_imports: info.unsafe_imports.clone(),
                reason: info
                    .pickles
                    .iter()
                    .find(|p| !p.complete)
                    .and_then(|p| p.reason.clone())
                    .or_else(|| info.reason.clone()),
            })
        }
    }
}

impl FromStr for PicklePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(PicklePolicy::Allow),
            "deny-unsafe" => Ok(PicklePolicy::DenyUnsafe),
            "deny" => Ok(PicklePolicy::Deny),
            _ => Err(format!(
                "unknown pickle policy {s:?} (expected allow, deny-unsafe or deny)"
            )),
        }
    }
}

impl fmt::Display for PicklePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyViolation {
    pub policy: PicklePolicy,
    pub verdict: Verdict,
    pub unsafe_imports: Vec<String>,
    /// Why a pickle could not be fully scanned, if that is the cause.
    pub reason: Option<String>,
}

impl fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verdict {
            // Says why, not which policy: the caller names the policy once.
            Verdict::UnsafePickle => {
                write!(f, "unsafe pickle")?;
                if !self.unsafe_imports.is_empty() {
                    write!(f, " importing {}", self.unsafe_imports.join(", "))?;
                }
                if let Some(r) = &self.reason {
                    write!(f, " ({r})")?;
                }
                Ok(())
            }
            _ => write!(f, "file contains a pickle"),
        }
    }
}

impl std::error::Error for PolicyViolation {}
