//! The rollout policy: the signed `rollout.json` target that says which version
//! the fleet moves to, in how many waves, with how long a soak between waves,
//! inside which daily maintenance window (UTC), and the lowest version allowed.
//! `palisade-fleet rollout set` writes it; nodes read it through the repository
//! client and hand it to the scheduler.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use semver::Version;
use serde::{Deserialize, Serialize};

/// Name of the rollout policy target in the repository.
pub const ROLLOUT_TARGET: &str = "rollout.json";

/// The target name of an image: `images/<board>/<version>.img`.
pub fn image_target(board: &str, version: &Version) -> String {
    format!("images/{board}/{version}.img")
}

/// The signed rollout policy (`rollout.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// The version the fleet moves to; `images/<board>/<version>.img` must exist
    /// for a node's board.
    pub version: Version,
    /// When wave 0 opens (UTC).
    pub start: DateTime<Utc>,
    /// Number of waves (1 = everyone at once). A node's wave derives from a hash
    /// of its identity unless `regions` lists it.
    pub waves: u32,
    /// Minimum soak between the opening of one wave and the next, in minutes.
    pub soak_minutes: u32,
    /// Daily maintenance window in UTC; reboots happen only inside it. `None`:
    /// any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The lowest version a node may run: a node below it installs `version`
    /// regardless of its wave; nothing below it is ever installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
    /// Whether a node running a newer version may install `version` (a signed
    /// downgrade). Default false: a lower target is refused.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Nodes per region, in order: a node listed here takes its wave and its
    /// reboot minute from its position, so nodes of one region never reboot in
    /// the same minute. Nodes not listed fall back to a hash of their id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub regions: BTreeMap<String, Vec<String>>,
}

/// A daily maintenance window in UTC (no time zones, no DST).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start, `HH:MM` in UTC.
    pub start: String,
    /// Length in minutes, 1..=1440.
    pub minutes: u32,
}
