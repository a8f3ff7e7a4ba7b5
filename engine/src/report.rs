//! What recovery and repair report: the types the open, `repair index` and
//! `verify` share.

/// One damaged, inconsistent or healed object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The object: `pack <id>`, `chunk <id>`, `file <id>`, `ref <name>`,
    /// `index`, or a key such as `refs/ab/….ref`.
    pub object: String,
    /// What is wrong (or what was done about it).
    pub detail: String,
}

/// The outcome of catching the index up, or of `repair index`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    /// Packs whose chunks were indexed.
    pub packs: u64,
    /// Chunks indexed.
    pub chunks: u64,
    /// Files restored from recipe files.
    pub files: u64,
    /// Refs restored from ref files.
    pub refs: u64,
    /// Recipe and ref files that were missing or damaged and were rewritten
    /// from the index's verified copies.
    pub healed: Vec<Problem>,
    /// What could not be recovered, by name.
    pub problems: Vec<Problem>,
}

impl RepairReport {
    pub(crate) fn problem(&mut self, object: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            object: object.into(),
            detail: detail.into(),
        });
    }

    pub(crate) fn healed(&mut self, object: impl Into<String>, detail: impl Into<String>) {
        let p = Problem {
            object: object.into(),
            detail: detail.into(),
        };
        tracing::warn!(object = %p.object, "healed: {}", p.detail);
        self.healed.push(p);
    }
}

/// Why the store re-indexed its objects when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpReason {
    /// The index was new (after `repair index`, or lost).
    NewIndex,
    /// The index reported its files damaged; it was deleted and rebuilt.
    DamagedIndex,
    /// The last process to open the store did not close it cleanly.
    UncleanShutdown,
    /// The index's counters differ from the clean-close record: it lost or
    /// garbled writes without reporting an error.
    CountersDiffer,
    /// The clean-close record is missing or unreadable.
    NoCleanRecord,
    /// Ref files were added, replaced or removed since the last clean close
    /// (the index and the record restored from an older copy), or the store
    /// was copied without its directories' modification times.
    RefsChanged,
    /// A write failed while the store was open, and the store was brought
    /// back without closing it ([`crate::Store::recover_poisoned`]).
    FailedWrite,
}

impl std::fmt::Display for CatchUpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CatchUpReason::NewIndex => "the index is new",
            CatchUpReason::DamagedIndex => "the index reported itself damaged; it was rebuilt",
            CatchUpReason::UncleanShutdown => "the store was not closed cleanly",
            CatchUpReason::CountersDiffer => {
                "the index disagrees with the record of the last clean close"
            }
            CatchUpReason::NoCleanRecord => "there is no record of a clean close",
            CatchUpReason::RefsChanged => {
                "ref files changed since the last clean close (the index restored from an older copy, or the store copied without modification times)"
            }
            CatchUpReason::FailedWrite => "a write failed while the store was open",
        })
    }
}

/// What opening the store did to bring its index up to date.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Recovery {
    /// Why it was needed.
    pub reason: CatchUpReason,
    /// What was re-indexed and healed, and what could not be.
    pub report: RepairReport,
}
