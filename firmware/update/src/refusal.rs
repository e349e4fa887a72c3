//! Refusals: why a node did not install (or stopped installing) an update.
//!
//! One vocabulary for every step that can say no — the repository client
//! (signatures, expiry, sizes, hashes), the scheduler (downgrades, minimum
//! version, versions that failed before) and the installer (write failures,
//! an update already under way) — so the journal, the control socket and the
//! fleet report carry one stable kind string ([`RefusalKind::as_str`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of a refusal. The serde form is [`RefusalKind::as_str`]: stable
/// kebab-case strings that the journal and the fleet report store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// The repository could not be reached.
    Unreachable,
    /// Metadata whose signatures do not meet the threshold.
    BadSignature,
    /// Metadata past its expiry.
    Expired,
    /// Metadata older than what the node has already seen (a rollback attack).
    Rollback,
    /// Metadata of different repository states mixed together.
    MixAndMatch,
    /// A target or metadata file larger than allowed (or than the slot).
    TooLarge,
    /// A download that ended before its announced length.
    Truncated,
    /// Bytes whose SHA-256 differs from the signed one.
    HashMismatch,
    /// A name the signed targets do not list.
    NotATarget,
    /// A target signed by a role that may not sign its path.
    WrongRole,
    /// The version failed to boot (or to pass the health gate) on this node.
    FailedBefore,
    /// The target is older than the installed version and downgrades are off.
    Downgrade,
    /// The target is below the policy's minimum version.
    BelowMinimum,
    /// Writing the slot or the boot entry failed.
    WriteFailed,
    /// An update is already under way.
    Busy,
    /// The rollout policy does not validate (see `schedule::validate`).
    InvalidPolicy,
    /// A signed target that does not parse (e.g. a malformed rollout.json).
    Invalid,
    /// The node's own update settings are unusable (trusted root, CA file, URL).
    Config,
    /// The system clock is earlier than a time the node already recorded.
    Clock,
    /// A local file (metadata store, staging file) could not be read or written.
    Io,
}

impl RefusalKind {
    /// Every kind, in declaration order.
    pub const ALL: [RefusalKind; 20] = [
        RefusalKind::Unreachable,
        RefusalKind::BadSignature,
        RefusalKind::Expired,
        RefusalKind::Rollback,
        RefusalKind::MixAndMatch,
        RefusalKind::TooLarge,
        RefusalKind::Truncated,
        RefusalKind::HashMismatch,
        RefusalKind::NotATarget,
        RefusalKind::WrongRole,
        RefusalKind::FailedBefore,
        RefusalKind::Downgrade,
        RefusalKind::BelowMinimum,
        RefusalKind::WriteFailed,
        RefusalKind::Busy,
        RefusalKind::InvalidPolicy,
        RefusalKind::Invalid,
        RefusalKind::Config,
        RefusalKind::Clock,
        RefusalKind::Io,
    ];

    /// The stable kebab-case name (`"bad-signature"`), equal to the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Unreachable => "unreachable",
            RefusalKind::BadSignature => "bad-signature",
            RefusalKind::Expired => "expired",
            RefusalKind::Rollback => "rollback",
            RefusalKind::MixAndMatch => "mix-and-match",
            RefusalKind::TooLarge => "too-large",
            RefusalKind::Truncated => "truncated",
            RefusalKind::HashMismatch => "hash-mismatch",
            RefusalKind::NotATarget => "not-a-target",
            RefusalKind::WrongRole => "wrong-role",
            RefusalKind::FailedBefore => "failed-before",
            RefusalKind::Downgrade => "downgrade",
            RefusalKind::BelowMinimum => "below-minimum",
            RefusalKind::WriteFailed => "write-failed",
            RefusalKind::Busy => "busy",
            RefusalKind::InvalidPolicy => "invalid-policy",
            RefusalKind::Invalid => "invalid",
            RefusalKind::Config => "config",
            RefusalKind::Clock => "clock",
            RefusalKind::Io => "io",
        }
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: its kind and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    /// A refusal of `kind` with `message`.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_form_is_as_str() {
        for k in RefusalKind::ALL {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
            let back: RefusalKind = serde_json::from_str(&format!("\"{k}\"")).unwrap();
            assert_eq!(back, k);
        }
        assert_eq!(RefusalKind::NotATarget.as_str(), "not-a-target");
        assert_eq!(RefusalKind::MixAndMatch.as_str(), "mix-and-match");
        assert_eq!(RefusalKind::WrongRole.as_str(), "wrong-role");
    }

    #[test]
    fn display() {
        let r = Refusal::new(RefusalKind::Downgrade, "0.1.0 < 0.2.0");
        assert_eq!(r.to_string(), "downgrade: 0.1.0 < 0.2.0");
    }
}
