//! The wave scheduler: given the signed [`RolloutPolicy`], this node's identity,
//! its installed version and the versions that failed on it before, decide
//! whether to install and when to reboot. Pure: the caller passes `now`; all
//! arithmetic is on UTC timestamps (no time zones, no DST).
//!
//! Waves: a node listed in `policy.regions[region]` at index `i` is in wave
//! `i % waves`; any other node is in wave `sha256(id) mod waves` (the first 8
//! bytes of the digest, big-endian). Wave `w` opens at `start + w * soak`.
//! A node running a version below `min_version` is urgent: it is treated as
//! wave 0 (it still reboots only inside the window).
//!
//! Reboot minutes. Time is cut into minute slots; the node reboots during the
//! first of its allowed slots that is not over at `max(now, wave_opens)`:
//!
//! - Listed node at index `i` of a region of `n` nodes, with a window of `L`
//!   minutes: minute `i % L` of the window, on the windows whose day number,
//!   counted from the first window at/after the rollout start, is
//!   `i / L` modulo `ceil(n / L)`. When the region fits in one window
//!   (`n <= L`) that is minute `i` of the first window not yet past its minute.
//!   Anchoring the day count at the rollout start (not at each wave's opening)
//!   is what makes the guarantee hold across waves and for late nodes: two
//!   listed nodes of one region never reboot in the same minute, whatever `now`
//!   each of them plans at.
//! - Listed node, no window: the minutes `start + i + k * n` (k = 0, 1, ...):
//!   staggered by one minute per index, in a cycle of `n` minutes anchored at
//!   the rollout start.
//! - Unlisted node, window: minute `h % L` of each window, `h` taken from bytes
//!   8..16 of `sha256(id)`. Unlisted nodes get no guarantee: two of them (or one
//!   and a listed node) may share a minute.
//! - Unlisted node, no window: as soon as its wave is open.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use semver::Version;
use sha2::{Digest, Sha256};

use crate::refusal::{Refusal, RefusalKind};
use crate::rollout::{RolloutPolicy, Window};

/// Largest number of waves a policy may have.
pub const MAX_WAVES: u32 = 100;
/// Longest window: a whole day.
pub const MAX_WINDOW_MINUTES: u32 = 1440;

const DAY_MINUTES: i64 = 1440;

/// Errors of [`validate`]: each names the policy field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A field of the rollout policy has an unusable value.
    #[error("rollout policy: field `{field}`: {message}")]
    Invalid {
        /// The field, e.g. `window.start` or `regions.eu`.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Who this node is, for the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node id (as listed in `regions`).
    pub id: String,
    /// The node's region (a key of `regions`, or any other name).
    pub region: String,
}

/// What the node should do about the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The policy's version is installed.
    UpToDate,
    /// The policy's version must not be installed here.
    Refused(Refusal),
    /// Install `version` now (the wave is open or about to be) and reboot into it
    /// at `reboot_at`.
    Install {
        version: Version,
        /// The node's wave (0 for an urgent node).
        wave: u32,
        /// When that wave opens.
        wave_opens: DateTime<Utc>,
        /// When to reboot: `>= max(now, wave_opens)`, inside the window if any.
        reboot_at: DateTime<Utc>,
    },
}

/// Parses `HH:MM` (two digits each, 00:00..23:59) into minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
        return None;
    }
    let h = u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0');
    let m = u32::from(b[3] - b'0') * 10 + u32::from(b[4] - b'0');
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Checks a rollout policy: 1..=100 waves, a window starting at a valid `HH:MM`
/// and 1..=1440 minutes long, `min_version <= version`, and region lists in
/// which no node appears twice (in one region or across regions).
pub fn validate(policy: &RolloutPolicy) -> Result<(), PolicyError> {
    if !(1..=MAX_WAVES).contains(&policy.waves) {
        return Err(invalid(
            "waves",
            format!("{} is out of range (1..={MAX_WAVES})", policy.waves),
        ));
    }
    if let Some(w) = &policy.window {
        if parse_hhmm(&w.start).is_none() {
            return Err(invalid(
                "window.start",
                format!("`{}` is not a UTC time HH:MM (00:00..23:59)", w.start),
            ));
        }
        if !(1..=MAX_WINDOW_MINUTES).contains(&w.minutes) {
            return Err(invalid(
                "window.minutes",
                format!("{} is out of range (1..={MAX_WINDOW_MINUTES})", w.minutes),
            ));
        }
    }
    if let Some(min) = &policy.min_version {
        if min > &policy.version {
            return Err(invalid(
                "min_version",
                format!("{min} is above the rollout version {}", policy.version),
            ));
        }
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (region, nodes) in &policy.regions {
        for id in nodes {
            if id.is_empty() {
                return Err(invalid(format!("regions.{region}"), "empty node id"));
            }
            if let Some(first) = seen.insert(id, region) {
                return Err(invalid(
                    format!("regions.{region}"),
                    if first == region {
                        format!("node `{id}` is listed twice")
                    } else {
                        format!("node `{id}` is also listed in region `{first}`")
                    },
                ));
            }
        }
    }
    Ok(())
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn hash_u64(id: &str, at: usize) -> u64 {
    let d = digest(id);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b)
}

/// The node's index in its region's list, and the list's length.
fn listed(policy: &RolloutPolicy, node: &NodeIdentity) -> Option<(u64, u64)> {
    let nodes = policy.regions.get(&node.region)?;
    let i = nodes.iter().position(|n| *n == node.id)?;
    Some((i as u64, nodes.len() as u64))
}

/// The node's wave: its region index mod `waves` if listed, else
/// `sha256(id) mod waves`. A policy with 0 waves counts as 1.
pub fn wave_of(policy: &RolloutPolicy, node: &NodeIdentity) -> u32 {
    let waves = u64::from(policy.waves.max(1));
    let w = match listed(policy, node) {
        Some((i, _)) => i % waves,
        None => hash_u64(&node.id, 0) % waves,
    };
    // w < waves <= u32::MAX
    u32::try_from(w).unwrap_or(0)
}

/// When wave `wave` opens: `start + wave * soak_minutes`; `None` past chrono's range.
pub fn wave_opens(policy: &RolloutPolicy, wave: u32) -> Option<DateTime<Utc>> {
    let minutes = i64::from(wave).checked_mul(i64::from(policy.soak_minutes))?;
    policy
        .start
        .checked_add_signed(Duration::try_minutes(minutes)?)
}

/// Minute number (since the Unix epoch) of `t`, rounded down.
fn minute_floor(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

fn at_minute(m: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(m.checked_mul(60)?, 0)
}

/// The reboot instant: the first instant `>= base` inside one of the node's
/// allowed minute slots. `slot(k)` gives the minute number of the node's k-th
/// allowed slot, increasing in k; `k0` is a lower bound of the first one to try.
fn first_slot(
    base: DateTime<Utc>,
    k0: i64,
    step: i64,
    slot: impl Fn(i64) -> Option<i64>,
) -> Option<DateTime<Utc>> {
    let base_min = minute_floor(base);
    let mut k = k0;
    // k0 is at most a couple of steps early; bounded for safety.
    for _ in 0..8 {
        let m = slot(k)?;
        if m >= base_min {
            let t = at_minute(m)?;
            return Some(t.max(base));
        }
        k = k.checked_add(step)?;
    }
    None
}

/// Reboot instant for a windowed schedule; `minute` within the window, on days
/// `k` (window starting on day `k` since the epoch) with
/// `(k - anchor_day) mod period == phase`.
fn windowed(
    base: DateTime<Utc>,
    start_of_day: i64,
    minute: i64,
    anchor_day: i64,
    period: i64,
    phase: i64,
) -> Option<DateTime<Utc>> {
    let base_min = minute_floor(base);
    let offset = start_of_day + minute;
    // The last day whose slot is at or before base, then align to the phase.
    let mut k = (base_min - offset).div_euclid(DAY_MINUTES);
    k += (phase - (k - anchor_day)).rem_euclid(period);
    first_slot(base, k, period, |k| {
        k.checked_mul(DAY_MINUTES)?.checked_add(offset)
    })
}

/// Day number of the first window starting at/after `t`.
fn first_window_day(t: DateTime<Utc>, start_of_day: i64) -> i64 {
    let on_minute = t.timestamp().rem_euclid(60) == 0 && t.timestamp_subsec_nanos() == 0;
    let ceil_min = minute_floor(t) + i64::from(!on_minute);
    (ceil_min - start_of_day + DAY_MINUTES - 1).div_euclid(DAY_MINUTES)
}

/// When a node reboots, given the earliest instant `base` (`max(now, wave_opens)`).
fn reboot_at(
    policy: &RolloutPolicy,
    node: &NodeIdentity,
    window: Option<(i64, i64)>,
    base: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match (listed(policy, node), window) {
        (Some((i, n)), Some((sod, len))) => {
            let (i, n) = (i as i64, n as i64);
            let period = (n + len - 1) / len;
            let anchor = first_window_day(policy.start, sod);
            windowed(base, sod, i % len, anchor, period, (i / len) % period)
        }
        (None, Some((sod, len))) => {
            let m = (hash_u64(&node.id, 8) % len as u64) as i64;
            windowed(base, sod, m, 0, 1, 0)
        }
        (Some((i, n)), None) => {
            let (i, n) = (i as i64, n as i64);
            let anchor = minute_floor(policy.start) + i;
            let base_min = minute_floor(base);
            let k0 = (base_min - anchor).div_euclid(n).max(0);
            first_slot(base, k0, 1, |k| k.checked_mul(n)?.checked_add(anchor))
        }
        (None, None) => Some(base),
    }
}

fn window_bounds(w: &Window) -> Option<(i64, i64)> {
    let s = parse_hhmm(&w.start)?;
    (1..=MAX_WINDOW_MINUTES)
        .contains(&w.minutes)
        .then_some((i64::from(s), i64::from(w.minutes)))
}

/// Decides what the node does about `policy` at `now`.
///
/// In order: the installed version is the policy's -> [`Plan::UpToDate`]; the
/// version failed here before -> refused `failed-before`; it is older than the
/// installed one and downgrades are off -> `downgrade`; it is below
/// `min_version` -> `below-minimum`; the policy does not [`validate`] ->
/// `invalid-policy`. Otherwise [`Plan::Install`] with the node's wave (0 when
/// the installed version is below `min_version`), the wave's opening and the
/// reboot instant (see the module doc). The caller installs once `now >=
/// wave_opens` and reboots at `reboot_at`.
pub fn plan(
    policy: &RolloutPolicy,
    node: &NodeIdentity,
    installed: &Version,
    failed: &BTreeSet<Version>,
    now: DateTime<Utc>,
) -> Plan {
    let v = &policy.version;
    if v == installed {
        return Plan::UpToDate;
    }
    if failed.contains(v) {
        return Plan::Refused(Refusal::new(
            RefusalKind::FailedBefore,
            format!("version {v} failed on this node before"),
        ));
    }
    if v < installed && !policy.allow_downgrade {
        return Plan::Refused(Refusal::new(
            RefusalKind::Downgrade,
            format!("version {v} is older than the installed {installed} and the policy does not allow downgrades"),
        ));
    }
    if let Some(min) = &policy.min_version {
        if v < min {
            return Plan::Refused(Refusal::new(
                RefusalKind::BelowMinimum,
                format!("version {v} is below the policy's minimum {min}"),
            ));
        }
    }
    if let Err(e) = validate(policy) {
        return Plan::Refused(Refusal::new(RefusalKind::InvalidPolicy, e.to_string()));
    }
    let urgent = policy
        .min_version
        .as_ref()
        .is_some_and(|min| installed < min);
    let wave = if urgent { 0 } else { wave_of(policy, node) };
    let window = match &policy.window {
        Some(w) => match window_bounds(w) {
            Some(b) => Some(b),
            None => {
                return Plan::Refused(Refusal::new(
                    RefusalKind::InvalidPolicy,
                    "window out of range",
                ))
            }
        },
        None => None,
    };
    let out_of_range = || {
        Plan::Refused(Refusal::new(
            RefusalKind::InvalidPolicy,
            "rollout schedule out of the representable time range",
        ))
    };
    let Some(opens) = wave_opens(policy, wave) else {
        return out_of_range();
    };
    let Some(reboot) = reboot_at(policy, node, window, now.max(opens)) else {
        return out_of_range();
    };
    Plan::Install {
        version: v.clone(),
        wave,
        wave_opens: opens,
        reboot_at: reboot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn ver(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn policy() -> RolloutPolicy {
        RolloutPolicy {
            version: ver("1.2.0"),
            start: t(2025, 3, 1, 0, 0),
            waves: 1,
            soak_minutes: 0,
            window: None,
            min_version: None,
            allow_downgrade: false,
            regions: BTreeMap::new(),
        }
    }

    fn node(id: &str, region: &str) -> NodeIdentity {
        NodeIdentity {
            id: id.into(),
            region: region.into(),
        }
    }

    fn region(p: &mut RolloutPolicy, name: &str, n: usize) {
        p.regions
            .insert(name.into(), (0..n).map(|i| format!("{name}-{i}")).collect());
    }

    fn install(p: &Plan) -> (u32, DateTime<Utc>, DateTime<Utc>) {
        match p {
            Plan::Install {
                wave,
                wave_opens,
                reboot_at,
                ..
            } => (*wave, *wave_opens, *reboot_at),
            other => panic!("expected Install, got {other:?}"),
        }
    }

    fn go(p: &RolloutPolicy, n: &NodeIdentity, now: DateTime<Utc>) -> Plan {
        plan(p, n, &ver("1.1.0"), &BTreeSet::new(), now)
    }

    fn field(p: &RolloutPolicy) -> String {
        match validate(p) {
            Err(PolicyError::Invalid { field, .. }) => field,
            Ok(()) => "ok".into(),
        }
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("00:00"), Some(0));
        assert_eq!(parse_hhmm("23:59"), Some(1439));
        assert_eq!(parse_hhmm("02:30"), Some(150));
        for bad in [
            "24:00", "12:60", "2:30", "02:3", "0230", "02-30", "", "+2:30", "02:30 ",
        ] {
            assert_eq!(parse_hhmm(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(field(&policy()), "ok");
        let mut p = policy();
        p.waves = 0;
        assert_eq!(field(&p), "waves");
        p.waves = 101;
        assert_eq!(field(&p), "waves");
        p.waves = 100;
        assert_eq!(field(&p), "ok");
        p.window = Some(Window {
            start: "25:00".into(),
            minutes: 60,
        });
        assert_eq!(field(&p), "window.start");
        p.window = Some(Window {
            start: "23:30".into(),
            minutes: 0,
        });
        assert_eq!(field(&p), "window.minutes");
        p.window.as_mut().unwrap().minutes = 1441;
        assert_eq!(field(&p), "window.minutes");
        p.window.as_mut().unwrap().minutes = 1440;
        assert_eq!(field(&p), "ok");
        p.min_version = Some(ver("1.3.0"));
        assert_eq!(field(&p), "min_version");
        p.min_version = Some(ver("1.2.0"));
        assert_eq!(field(&p), "ok");
        p.regions
            .insert("eu".into(), vec!["a".into(), "b".into(), "a".into()]);
        assert_eq!(field(&p), "regions.eu");
        p.regions.insert("eu".into(), vec!["a".into(), "b".into()]);
        p.regions.insert("us".into(), vec!["c".into(), "b".into()]);
        let e = validate(&p).unwrap_err().to_string();
        assert!(
            e.contains("regions.us") && e.contains("`b`") && e.contains("`eu`"),
            "{e}"
        );
    }

    #[test]
    fn refusals() {
        let p = policy();
        let n = node("x", "eu");
        let none = BTreeSet::new();
        let kind = |pl: Plan| match pl {
            Plan::Refused(r) => r.kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(plan(&p, &n, &ver("1.2.0"), &none, p.start), Plan::UpToDate);
        let failed: BTreeSet<_> = [ver("1.2.0")].into();
        assert_eq!(
            kind(plan(&p, &n, &ver("1.1.0"), &failed, p.start)),
            RefusalKind::FailedBefore
        );
        // A newer version than the failed one is fine: only exact matches are refused.
        let failed_old: BTreeSet<_> = [ver("1.1.5")].into();
        install(&plan(&p, &n, &ver("1.1.0"), &failed_old, p.start));
        assert_eq!(
            kind(plan(&p, &n, &ver("1.3.0"), &none, p.start)),
            RefusalKind::Downgrade
        );
        let mut d = p.clone();
        d.allow_downgrade = true;
        install(&plan(&d, &n, &ver("1.3.0"), &none, p.start));
        let mut m = p.clone();
        m.min_version = Some(ver("1.5.0"));
        assert_eq!(
            kind(plan(&m, &n, &ver("1.1.0"), &none, p.start)),
            RefusalKind::BelowMinimum
        );
        let mut bad = p.clone();
        bad.waves = 0;
        assert_eq!(
            kind(plan(&bad, &n, &ver("1.1.0"), &none, p.start)),
            RefusalKind::InvalidPolicy
        );
    }

    #[test]
    fn no_window_unlisted_reboots_when_wave_opens() {
        let mut p = policy();
        p.waves = 4;
        p.soak_minutes = 90;
        let n = node("node-17", "eu");
        let w = wave_of(&p, &n);
        let opens = p.start + Duration::minutes(90 * i64::from(w));
        assert_eq!(install(&go(&p, &n, p.start)), (w, opens, opens));
        // Later than the opening: as soon as possible.
        let later = opens + Duration::seconds(3601);
        assert_eq!(install(&go(&p, &n, later)).2, later);
    }

    #[test]
    fn soak_between_waves() {
        let mut p = policy();
        p.waves = 3;
        p.soak_minutes = 24 * 60;
        region(&mut p, "eu", 6);
        for i in 0..6 {
            let (w, opens, reboot) = install(&go(&p, &node(&format!("eu-{i}"), "eu"), p.start));
            assert_eq!(w, (i % 3) as u32);
            assert_eq!(opens, p.start + Duration::days(i64::from(w)));
            assert!(reboot >= opens);
        }
    }

    #[test]
    fn hash_wave_is_deterministic_and_spread() {
        let mut p = policy();
        p.waves = 10;
        let mut counts = [0u32; 10];
        for i in 0..1000 {
            let n = node(&format!("node-{i}"), "nowhere");
            let w = wave_of(&p, &n);
            assert_eq!(w, wave_of(&p, &n));
            counts[w as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
        // Known value, so a change of the hash reduction is noticed.
        let d = Sha256::digest(b"node-1");
        let h = u64::from_be_bytes(d[..8].try_into().unwrap());
        assert_eq!(u64::from(wave_of(&p, &node("node-1", "x"))), h % 10);
        p.waves = 1;
        assert_eq!(wave_of(&p, &node("node-1", "x")), 0);
    }

    #[test]
    fn urgent_node_is_wave_zero() {
        let mut p = policy();
        p.waves = 5;
        p.soak_minutes = 600;
        p.min_version = Some(ver("1.1.0"));
        p.window = Some(Window {
            start: "02:00".into(),
            minutes: 60,
        });
        region(&mut p, "eu", 5);
        let n = node("eu-4", "eu");
        assert_eq!(install(&go(&p, &n, p.start)).0, 4);
        let (w, opens, reboot) = install(&plan(&p, &n, &ver("1.0.0"), &BTreeSet::new(), p.start));
        assert_eq!((w, opens), (0, p.start));
        // Still inside the window: minute 4 of 02:00.
        assert_eq!(reboot, t(2025, 3, 1, 2, 4));
    }

    fn windowed_policy(start: &str, minutes: u32) -> RolloutPolicy {
        let mut p = policy();
        p.window = Some(Window {
            start: start.into(),
            minutes,
        });
        p
    }

    #[test]
    fn window_edges_listed() {
        let mut p = windowed_policy("02:00", 60);
        region(&mut p, "eu", 60);
        let first = node("eu-0", "eu");
        let last = node("eu-59", "eu");
        // Exactly at start.
        assert_eq!(
            install(&go(&p, &first, t(2025, 3, 1, 2, 0))).2,
            t(2025, 3, 1, 2, 0)
        );
        // One minute before start: waits for the start.
        assert_eq!(
            install(&go(&p, &first, t(2025, 3, 1, 1, 59))).2,
            t(2025, 3, 1, 2, 0)
        );
        // Its minute is over: next day.
        assert_eq!(
            install(&go(&p, &first, t(2025, 3, 1, 2, 1))).2,
            t(2025, 3, 2, 2, 0)
        );
        // Last minute of the window.
        assert_eq!(
            install(&go(&p, &last, t(2025, 3, 1, 1, 0))).2,
            t(2025, 3, 1, 2, 59)
        );
        // Within the last minute: now.
        let within = t(2025, 3, 1, 2, 59) + Duration::seconds(30);
        assert_eq!(install(&go(&p, &last, within)).2, within);
        // The window is over: next day's last minute.
        assert_eq!(
            install(&go(&p, &last, t(2025, 3, 1, 3, 0))).2,
            t(2025, 3, 2, 2, 59)
        );
    }

    #[test]
    fn window_edges_unlisted() {
        let p = windowed_policy("02:00", 60);
        let n = node("loner", "nowhere");
        let m = (hash_u64("loner", 8) % 60) as i64;
        let slot = t(2025, 3, 1, 2, 0) + Duration::minutes(m);
        assert_eq!(install(&go(&p, &n, t(2025, 3, 1, 1, 59))).2, slot);
        assert_eq!(install(&go(&p, &n, slot)).2, slot);
        assert_eq!(
            install(&go(&p, &n, slot + Duration::minutes(1))).2,
            slot + Duration::days(1)
        );
    }

    #[test]
    fn window_across_midnight() {
        let mut p = windowed_policy("23:30", 60);
        region(&mut p, "eu", 60);
        let at = |i: usize, now| install(&go(&p, &node(&format!("eu-{i}"), "eu"), now)).2;
        let now = t(2025, 3, 1, 12, 0);
        assert_eq!(at(0, now), t(2025, 3, 1, 23, 30));
        assert_eq!(at(29, now), t(2025, 3, 1, 23, 59));
        assert_eq!(at(30, now), t(2025, 3, 2, 0, 0));
        assert_eq!(at(59, now), t(2025, 3, 2, 0, 29));
        // Planned just after midnight, inside the window that started yesterday.
        assert_eq!(at(45, t(2025, 3, 2, 0, 10)), t(2025, 3, 2, 0, 15));
        assert_eq!(at(5, t(2025, 3, 2, 0, 10)), t(2025, 3, 2, 23, 35));
    }

    #[test]
    fn day_rollover_for_large_regions() {
        // 25 nodes, a 10-minute window: three days of 10, 10, 5.
        let mut p = windowed_policy("03:00", 10);
        region(&mut p, "eu", 25);
        let at = |i: usize, now| install(&go(&p, &node(&format!("eu-{i}"), "eu"), now)).2;
        let now = p.start;
        assert_eq!(at(0, now), t(2025, 3, 1, 3, 0));
        assert_eq!(at(9, now), t(2025, 3, 1, 3, 9));
        assert_eq!(at(10, now), t(2025, 3, 2, 3, 0));
        assert_eq!(at(24, now), t(2025, 3, 3, 3, 4));
        // A node that missed its day waits a whole cycle (3 days).
        assert_eq!(at(0, t(2025, 3, 1, 3, 1)), t(2025, 3, 4, 3, 0));
        assert_eq!(at(10, t(2025, 3, 2, 4, 0)), t(2025, 3, 5, 3, 0));
    }

    #[test]
    fn listed_without_window_staggers_by_minute() {
        let mut p = policy();
        region(&mut p, "eu", 5);
        let at = |i: usize, now| install(&go(&p, &node(&format!("eu-{i}"), "eu"), now)).2;
        for i in 0..5 {
            assert_eq!(at(i, p.start), p.start + Duration::minutes(i as i64));
        }
        // Late: the next minute of its 5-minute cycle.
        assert_eq!(
            at(2, p.start + Duration::minutes(3)),
            p.start + Duration::minutes(7)
        );
    }

    #[test]
    fn out_of_range_is_refused_not_panicking() {
        let mut p = policy();
        p.waves = 100;
        p.soak_minutes = u32::MAX;
        p.start = DateTime::<Utc>::MAX_UTC - Duration::days(1);
        region(&mut p, "eu", 100);
        let r = go(&p, &node("eu-99", "eu"), p.start);
        assert!(
            matches!(r, Plan::Refused(ref x) if x.kind == RefusalKind::InvalidPolicy),
            "{r:?}"
        );
    }

    proptest! {
        #[test]
        fn listed_nodes_of_a_region_never_share_a_minute(
            n in 1usize..120,
            waves in 1u32..8,
            soak in 0u32..3000,
            start_min in 0u32..1440,
            len in 1u32..=1440,
            windowed in any::<bool>(),
            offsets in proptest::collection::vec(0i64..20_000, 120),
        ) {
            let mut p = policy();
            p.waves = waves;
            p.soak_minutes = soak;
            if windowed {
                p.window = Some(Window { start: format!("{:02}:{:02}", start_min / 60, start_min % 60), minutes: len });
            }
            region(&mut p, "eu", n);
            let mut minutes = BTreeMap::new();
            for (i, off) in offsets.iter().take(n).enumerate() {
                // Each node plans at its own (possibly late) time.
                let now = p.start + Duration::minutes(*off);
                let (_, opens, reboot) = install(&go(&p, &node(&format!("eu-{i}"), "eu"), now));
                prop_assert!(reboot >= now.max(opens));
                if let Some(w) = &p.window {
                    let s = i64::from(parse_hhmm(&w.start).unwrap());
                    let mod_day = minute_floor(reboot).rem_euclid(DAY_MINUTES);
                    prop_assert!((mod_day - s).rem_euclid(DAY_MINUTES) < i64::from(w.minutes));
                }
                if let Some(j) = minutes.insert(minute_floor(reboot), i) {
                    prop_assert!(false, "nodes {} and {} both reboot at {}", j, i, reboot);
                }
            }
        }
    }
}
