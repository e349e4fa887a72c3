//! Uplink failover, the pure part: per-uplink health from carrier, address,
//! gateway and probe rounds ([`Health`]), the choice of the active uplink
//! with a hold-down ([`Selector`]), and the default routes that follow from
//! it ([`wanted_routes`], [`route_changes`]). The daemon's uplink task
//! (`firmware/daemon/src/uplink.rs`) observes, probes and applies.
//!
//! Routes: every uplink with a gateway keeps a standby default route at
//! [`STANDBY_METRIC`] + its rank (probes bound to that uplink use it), and
//! the active uplink also holds the route at [`ACTIVE_METRIC`], the one
//! traffic takes. A switch is one `route replace` of that route. Masquerade
//! follows by itself: it takes the address of the interface a packet
//! leaves by.

use crate::config::UplinkSection;
use crate::netlink::Change;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Metric of the default route traffic takes (the active uplink's).
pub const ACTIVE_METRIC: u32 = 0;
/// Metric of rank 0's standby route; rank `i` has `STANDBY_METRIC + i`.
pub const STANDBY_METRIC: u32 = 1000;
/// Standby metrics above `STANDBY_METRIC + MAX_UPLINKS` are not ours.
pub const MAX_UPLINKS: u32 = 64;

/// Uplinks in preference order: lower `priority` first, then config order.
pub fn ranked(uplinks: &[UplinkSection]) -> Vec<&UplinkSection> {
    let mut v: Vec<&UplinkSection> = uplinks.iter().collect();
    v.sort_by_key(|u| u.priority); // stable: ties keep config order
    v
}

/// One uplink's health, fed once per probe round and on every link event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    /// When `healthy` last changed (or the tracker started).
    pub since: Instant,
    /// Failed rounds in a row.
    pub fails: u32,
    /// Answered rounds in a row.
    pub oks: u32,
}

impl Health {
    /// A new tracker: healthy until shown otherwise, so a booting node does
    /// not wait `rise` rounds before it routes.
    pub fn new(now: Instant) -> Health {
        Health {
            healthy: true,
            since: now,
            fails: 0,
            oks: 0,
        }
    }

    fn set(&mut self, healthy: bool, now: Instant) {
        if self.healthy != healthy {
            self.healthy = healthy;
            self.since = now;
        }
    }

    /// The link cannot carry traffic (no carrier, down, no address, no
    /// gateway): unhealthy at once, without waiting for probes.
    pub fn unusable(&mut self, now: Instant) {
        self.oks = 0;
        self.fails = self.fails.saturating_add(1);
        self.set(false, now);
    }

    /// A usable link with no probe targets: healthy.
    pub fn usable_unprobed(&mut self, now: Instant) {
        self.fails = 0;
        self.oks = self.oks.saturating_add(1);
        self.set(true, now);
    }

    /// A probe round on a usable link: `answered` if any target replied.
    /// `fall` failed rounds in a row make it unhealthy, `rise` answered
    /// rounds in a row healthy again.
    pub fn round(&mut self, answered: bool, fall: u32, rise: u32, now: Instant) {
        if answered {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
            if self.oks >= rise {
                self.set(true, now);
            }
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
            if self.fails >= fall {
                self.set(false, now);
            }
        }
    }
}

/// Why the active uplink changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No uplink was active yet.
    Initial,
    /// The active uplink became unhealthy: moved at once.
    Failed,
    /// A preferred uplink has been healthy for the hold-down: moved back.
    Recovered,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Initial => "initial",
            Reason::Failed => "failed",
            Reason::Recovered => "recovered",
        })
    }
}

/// The choice of the active uplink (by rank). Explicit state: the active
/// rank and when it last changed; time is passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub active: Option<usize>,
    pub last_switch: Option<Instant>,
    pub hold_down: Duration,
}

impl Selector {
    pub fn new(hold_down: Duration) -> Selector {
        Selector {
            active: None,
            last_switch: None,
            hold_down,
        }
    }

    /// Given each rank's health, the new active rank if it changes.
    ///
    /// - Nothing active yet: the best healthy rank (none while none is: the
    ///   routes stay as they are).
    /// - The active rank is unhealthy and another is healthy: the best
    ///   healthy one, at once (no hold-down on a failure).
    /// - A better rank than the active one is healthy: only once it has
    ///   been healthy for the hold-down *and* the last switch is a hold-down
    ///   old, so a flapping link moves traffic at most once per period.
    /// - No rank healthy: stay (a route that may work beats none).
    pub fn decide(
        &mut self,
        health: &[Health],
        now: Instant,
    ) -> Option<(Option<usize>, usize, Reason)> {
        let best = health.iter().position(|h| h.healthy);
        let (to, reason) = match (self.active, best) {
            (_, _) if health.is_empty() => return None,
            (None, Some(b)) => (b, Reason::Initial),
            (_, None) => return None,
            (Some(a), Some(b)) if a >= health.len() || !health[a].healthy => (b, Reason::Failed),
            (Some(a), Some(b)) if b < a => {
                let stable = now.saturating_duration_since(health[b].since) >= self.hold_down;
                let spaced = self
                    .last_switch
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.hold_down);
                if !(stable && spaced) {
                    return None;
                }
                (b, Reason::Recovered)
            }
            _ => return None,
        };
        let from = self.active;
        self.active = Some(to);
        if from.is_some() {
            self.last_switch = Some(now);
        }
        Some((from, to, reason))
    }
}

/// A default route: device, gateway, metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dev: String,
    pub gateway: IpAddr,
    pub metric: u32,
}

/// The default routes for these ranked uplinks (`gateways[i]`: rank i's
/// device and its gateways now, static or from the DHCP lease) with
/// `active` holding the active route. The active route comes first.
pub fn wanted_routes(gateways: &[(String, Vec<IpAddr>)], active: Option<usize>) -> Vec<Route> {
    let mut out = Vec::new();
    if let Some((dev, gws)) = active.and_then(|a| gateways.get(a)) {
        for g in gws {
            out.push(Route {
                dev: dev.clone(),
                gateway: *g,
                metric: ACTIVE_METRIC,
            });
        }
    }
    for (i, (dev, gws)) in gateways.iter().enumerate() {
        let metric = STANDBY_METRIC + u32::try_from(i).unwrap_or(MAX_UPLINKS).min(MAX_UPLINKS);
        for g in gws {
            out.push(Route {
                dev: dev.clone(),
                gateway: *g,
                metric,
            });
        }
    }
    out
}

/// Whether a route at `metric` is one this module manages.
pub fn managed_metric(metric: u32) -> bool {
    metric == ACTIVE_METRIC || (STANDBY_METRIC..=STANDBY_METRIC + MAX_UPLINKS).contains(&metric)
}

/// The changes that turn the `observed` default routes (on the uplinks'
/// devices) into `wanted`: replaces first (in `wanted`'s order, the active
/// route first), then deletes of managed routes nobody wants (an active
/// route of a family the new uplink does not have, a lease's old router).
pub fn route_changes(wanted: &[Route], observed: &[Route]) -> Vec<Change> {
    let mut out = Vec::new();
    for w in wanted {
        if !observed.contains(w) {
            out.push(Change::ReplaceDefaultRoute {
                dev: w.dev.clone(),
                gateway: w.gateway,
                metric: w.metric,
            });
        }
    }
    for o in observed {
        if !managed_metric(o.metric) || wanted.contains(o) {
            continue;
        }
        // Replaced in place (same family and metric): nothing left to delete.
        let replaced = wanted
            .iter()
            .any(|w| w.metric == o.metric && w.gateway.is_ipv4() == o.gateway.is_ipv4());
        if !replaced {
            out.push(Change::DeleteDefaultRoute {
                dev: o.dev.clone(),
                gateway: o.gateway,
                metric: o.metric,
            });
        }
    }
    out
}

/// The router of a DHCP lease, as the udhcpc hook writes it
/// (`<run_dir>/dhcp/<interface>.router`: one address). `None` when there is
/// no lease (no file, or not an address).
pub fn lease_router(run_dir: &std::path::Path, interface: &str) -> Option<IpAddr> {
    let text =
        std::fs::read_to_string(run_dir.join("dhcp").join(format!("{interface}.router"))).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The gateways of `u` now: its static ones, and for DHCP the lease's router.
pub fn gateways(u: &UplinkSection, run_dir: &std::path::Path) -> Vec<IpAddr> {
    let mut v = Vec::new();
    match (u.gateway_v4, u.dhcp) {
        (Some(g), _) => v.push(IpAddr::V4(g)),
        (None, true) => v.extend(lease_router(run_dir, &u.interface).filter(IpAddr::is_ipv4)),
        _ => {}
    }
    v.extend(u.gateway_v6.map(IpAddr::V6));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn health_falls_after_fall_rounds_and_rises_after_rise_rounds() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        h.round(false, 3, 2, t(t0, 500));
        h.round(false, 3, 2, t(t0, 1000));
        assert!(h.healthy);
        h.round(false, 3, 2, t(t0, 1500));
        assert!(!h.healthy);
        assert_eq!(h.since, t(t0, 1500));
        h.round(true, 3, 2, t(t0, 2000));
        assert!(!h.healthy);
        h.round(false, 3, 2, t(t0, 2500));
        h.round(true, 3, 2, t(t0, 3000));
        h.round(true, 3, 2, t(t0, 3500));
        assert!(h.healthy);
        assert_eq!(h.since, t(t0, 3500));
        // Carrier loss does not wait for probes.
        h.unusable(t(t0, 3600));
        assert!(!h.healthy);
    }

    fn healthy(v: &[(bool, u64)], t0: Instant) -> Vec<Health> {
        v.iter()
            .map(|&(ok, since)| Health {
                healthy: ok,
                since: t(t0, since),
                fails: 0,
                oks: 0,
            })
            .collect()
    }

    #[test]
    fn failure_moves_at_once_recovery_waits_for_the_hold_down() {
        let t0 = Instant::now();
        let mut s = Selector::new(Duration::from_secs(10));
        assert_eq!(
            s.decide(&healthy(&[(true, 0), (true, 0)], t0), t0),
            Some((None, 0, Reason::Initial))
        );
        assert_eq!(
            s.decide(&healthy(&[(true, 0), (true, 0)], t0), t(t0, 100)),
            None
        );
        // Rank 0 fails: to rank 1 at once.
        assert_eq!(
            s.decide(&healthy(&[(false, 1000), (true, 0)], t0), t(t0, 1000)),
            Some((Some(0), 1, Reason::Failed))
        );
        // Rank 0 back at 2 s: not before it has been healthy 10 s and the last switch is 10 s old.
        assert_eq!(
            s.decide(&healthy(&[(true, 2000), (true, 0)], t0), t(t0, 11_999)),
            None
        );
        assert_eq!(
            s.decide(&healthy(&[(true, 2000), (true, 0)], t0), t(t0, 12_000)),
            Some((Some(1), 0, Reason::Recovered))
        );
        // Nothing healthy: stay.
        assert_eq!(
            s.decide(
                &healthy(&[(false, 13_000), (false, 13_000)], t0),
                t(t0, 13_000)
            ),
            None
        );
        assert_eq!(s.active, Some(0));
    }

    #[test]
    fn nothing_healthy_at_start_picks_nothing_until_one_is() {
        let t0 = Instant::now();
        let mut s = Selector::new(Duration::from_secs(10));
        assert_eq!(s.decide(&healthy(&[(false, 0), (false, 0)], t0), t0), None);
        assert_eq!(s.decide(&healthy(&[], t0), t0), None);
        assert_eq!(
            s.decide(&healthy(&[(false, 0), (true, 500)], t0), t(t0, 500)),
            Some((None, 1, Reason::Initial))
        );
        assert_eq!(s.last_switch, None, "the first choice is not a switch");
    }

    proptest::proptest! {
        /// Whatever rank 0 does (rank 1 stays healthy), two switches back to
        /// rank 0 are never closer than the hold-down, and the active rank
        /// is never an unhealthy one while a healthy one exists.
        #[test]
        fn flapping_moves_at_most_once_per_hold_down(flaps in proptest::collection::vec(proptest::bool::ANY, 1..200)) {
            let t0 = Instant::now();
            let hold = Duration::from_secs(5);
            let mut s = Selector::new(hold);
            let mut h = [Health::new(t0), Health::new(t0)];
            let mut returns: Vec<Instant> = Vec::new();
            let mut switches: Vec<Instant> = Vec::new();
            for (i, up) in flaps.iter().enumerate() {
                let now = t(t0, 500 * i as u64);
                h[0].round(*up, 2, 2, now);
                h[1].round(true, 2, 2, now);
                if let Some((from, to, reason)) = s.decide(&h, now) {
                    if from.is_some() { switches.push(now); }
                    if reason == Reason::Recovered { returns.push(now); proptest::prop_assert_eq!(to, 0); }
                }
                let a = s.active.unwrap();
                proptest::prop_assert!(h[a].healthy);
            }
            for w in returns.windows(2) {
                proptest::prop_assert!(w[1] - w[0] >= hold);
            }
            // A return always follows a failure, so switches come in pairs
            // spaced by the hold-down too: at most 2 per period, 1 return.
            for (i, r) in returns.iter().enumerate() {
                let before = switches.iter().filter(|&&x| x < *r && *r - x < hold).count();
                proptest::prop_assert!(before <= 1, "return {i}: {before} switches in the hold-down before it");
            }
        }
    }

    #[test]
    fn routes_active_first_then_standbys_and_a_switch_is_one_replace() {
        let g1: IpAddr = "192.0.2.1".parse().unwrap();
        let g2: IpAddr = "198.51.100.1".parse().unwrap();
        let g6: IpAddr = "2001:db8:1::1".parse().unwrap();
        let gws = vec![
            ("eth0".to_string(), vec![g1, g6]),
            ("eth1".to_string(), vec![g2]),
        ];
        let on0 = wanted_routes(&gws, Some(0));
        let lines: Vec<String> = route_changes(&on0, &[])
            .iter()
            .map(Change::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "-4 route replace default via 192.0.2.1 dev eth0 metric 0",
                "-6 route replace default via 2001:db8:1::1 dev eth0 metric 0",
                "-4 route replace default via 192.0.2.1 dev eth0 metric 1000",
                "-6 route replace default via 2001:db8:1::1 dev eth0 metric 1000",
                "-4 route replace default via 198.51.100.1 dev eth1 metric 1001",
            ]
        );
        assert!(route_changes(&on0, &on0).is_empty());
        // To eth1: the IPv4 active route is replaced in place; eth1 has no
        // IPv6 gateway, so eth0's IPv6 active route goes.
        let on1 = wanted_routes(&gws, Some(1));
        let lines: Vec<String> = route_changes(&on1, &on0)
            .iter()
            .map(Change::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "-4 route replace default via 198.51.100.1 dev eth1 metric 0",
                "-6 route delete default via 2001:db8:1::1 dev eth0 metric 0",
            ]
        );
        // Routes that are not ours stay.
        let foreign = Route {
            dev: "eth0".into(),
            gateway: g1,
            metric: 50,
        };
        assert!(route_changes(&on0, &[on0.clone(), vec![foreign]].concat()).is_empty());
    }

    #[test]
    fn ranked_by_priority_then_config_order() {
        let u = |name: &str, prio: u32| -> UplinkSection {
            toml::from_str(&format!(
                "interface = \"{name}\"\ndhcp = true\npriority = {prio}\n"
            ))
            .unwrap()
        };
        let v = [u("a", 5), u("b", 1), u("c", 5)];
        let r: Vec<&str> = ranked(&v).iter().map(|u| u.interface.as_str()).collect();
        assert_eq!(r, ["b", "a", "c"]);
    }

    #[test]
    fn lease_router_reads_the_hook_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(lease_router(d.path(), "eth1"), None);
        std::fs::create_dir_all(d.path().join("dhcp")).unwrap();
        std::fs::write(d.path().join("dhcp/eth1.router"), "192.0.2.1 192.0.2.2\n").unwrap();
        assert_eq!(
            lease_router(d.path(), "eth1"),
            Some("192.0.2.1".parse().unwrap())
        );
        std::fs::write(d.path().join("dhcp/eth1.router"), "garbage").unwrap();
        assert_eq!(lease_router(d.path(), "eth1"), None);
    }
}
