//! Uplink failover on the node (docs/failover.md), with real packets: palisaded
//! (userspace backend) with two uplinks to the bed's internet, a wireguard-go
//! client streaming UDP through the tunnel to the web host, whose echo names
//! the uplink address each datagram was masqueraded to.
//!
//! (a) wan1 loses carrier: the default route moves to wan2, the stream comes
//!     back through wan2, the client's session is the same (no new
//!     handshake) and its endpoint has roamed to wan2's address;
//! (b) a silent black hole on wan1 (both ends up, the internet drops its
//!     packets): the same, found by the probes alone;
//! (c) wan1 flapping faster than the hold-down: one switch away, none back
//!     until wan1 has been stable for the hold-down.
//! Short probe settings keep it quick; bench/uplink/run.sh measures the
//! product defaults over many rounds.

use palisade_tests::uplink::{HealthOpts, Stream, UplinkBed, WAN1, WAN2};
use palisade_tests::Bins;
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

const HOLD: u64 = 4;

/// Probing fast enough that a switch takes well under a second (the
/// product defaults are measured by bench/uplink).
fn fast_health() -> HealthOpts {
    HealthOpts { interval_ms: 200, timeout_ms: 150, fall: 2, rise: 2, hold_down_secs: HOLD }
}

/// The client's session survived a failover: the same handshake (or a
/// scheduled rekey, 120 s after the one before, which no failover causes),
/// and, when `wan` is given, its endpoint is now that address.
fn assert_same_session(ub: &UplinkBed, before: u64, wan: Option<std::net::Ipv4Addr>) {
    let (after, endpoint) = ub.client_session().unwrap();
    assert!(
        after == before || after >= before + 120,
        "client handshake changed from {before} to {after}: a new session, not a roam"
    );
    if let Some(wan) = wan {
        assert_eq!(
            endpoint.as_deref(),
            Some(format!("{wan}:51820").as_str()),
            "client endpoint did not roam to {wan}"
        );
    }
}

/// Cut wan1 with `cut`, measure, check the session, undo with `restore`
/// and wait for the return to wan1 (after the hold-down).
fn failover_round(
    ub: &UplinkBed,
    stream: &Stream,
    what: &str,
    carrier: bool,
    cut: impl Fn(),
    restore: impl Fn(),
) {
    stream
        .first_via_after(Instant::now(), WAN1, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{what}: stream not flowing via wan1 before the cut: {e:#}"));
    let (hs0, _) = ub.client_session().unwrap();
    let (n0, _) = ub.switches().unwrap();
    let t_unix = UplinkBed::now_unix();
    let t = Instant::now();
    cut();
    let resumed = stream
        .first_via_after(t, WAN2, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{what}: stream did not resume via wan2: {e:#}"));
    let (n1, at) = ub.switches().unwrap();
    assert_eq!(n1, n0 + 1, "{what}: one switch");
    let switch = at.unwrap() - t_unix;
    println!(
        "{what}: node switched after {:.0} ms, the client's stream resumed via wan2 after {} ms",
        switch * 1000.0,
        resumed.as_millis()
    );
    // The goal is 3 s (issue 11); these settings detect in well under 1 s.
    assert!(switch < 3.0, "{what}: switch took {switch:.2} s");
    assert!(
        resumed < Duration::from_secs(3),
        "{what}: stream resumed after {resumed:?}"
    );
    assert_same_session(ub, hs0, Some(WAN2));
    let s = ub.status().unwrap();
    assert_eq!(s["active"], "wan2", "{s}");
    assert_eq!(s["uplinks"][0]["healthy"], false, "{s}");
    assert_eq!(
        s["uplinks"][0]["carrier"], carrier,
        "{what}: wan1 carrier as seen by the node: {s}"
    );

    let t_back = Instant::now();
    restore();
    let back = stream
        .first_via_after(t_back, WAN1, Duration::from_secs(HOLD + 15))
        .unwrap_or_else(|e| panic!("{what}: stream did not return to wan1: {e:#}"));
    assert!(
        back >= Duration::from_secs(HOLD),
        "{what}: returned after {back:?}, before the {HOLD} s hold-down"
    );
    println!(
        "{what}: back on wan1 {} ms after wan1 recovered (hold-down {HOLD} s)",
        back.as_millis()
    );
    // Back on wan1 the client may keep sending to wan2's address (still
    // healthy): wireguard-go answers from the address a peer sent to, the
    // kernel's WireGuard from the active route's. Either way, one session.
    assert_same_session(ub, hs0, None);
    ub.wait_active("wan1", Duration::from_secs(5)).unwrap();
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn uplink_failover_link_down_black_hole_and_flapping() {
    let ub = UplinkBed::start(
        bins(),
        fast_health(),
    )
    .unwrap();
    let text = ub.node.cli_ok(&ub.bed, &["status"]).unwrap();
    assert!(
        text.contains("uplink      wan1 ACTIVE healthy (probe rtt"),
        "{text}"
    );
    assert!(
        text.contains("uplink      wan2 healthy (probe rtt"),
        "{text}"
    );
    let stream = Stream::start(&ub.bed.clients[0].ns).unwrap();

    // (a) Link down: the node sees no carrier on wan1.
    failover_round(
        &ub,
        &stream,
        "link down",
        false,
        || ub.set_link(false).unwrap(),
        || ub.set_link(true).unwrap(),
    );

    // (b) Black hole: wan1 keeps its carrier; only the probes can tell.
    failover_round(
        &ub,
        &stream,
        "black hole",
        true,
        || {
            ub.set_black_hole(true).unwrap();
        },
        || ub.set_black_hole(false).unwrap(),
    );

    // (c) Flapping: wan1 down 0.5 s / up 1 s for 2 hold-downs. One switch
    // away; no return while it never stays up for the hold-down.
    let (n0, _) = ub.switches().unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2 * HOLD) {
        ub.set_link(false).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        ub.set_link(true).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
    }
    let (n1, first) = ub.switches().unwrap();
    println!(
        "flapping: {} switch(es) in {:.1} s of flapping (hold-down {HOLD} s)",
        n1 - n0,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        n1,
        n0 + 1,
        "flapping for two hold-down periods: exactly one switch (away from wan1)"
    );
    // Stable now: back to wan1 once, a hold-down after the first switch at the earliest.
    ub.wait_active("wan1", Duration::from_secs(HOLD + 10))
        .unwrap();
    let (n2, back) = ub.switches().unwrap();
    assert_eq!(n2, n0 + 2);
    let gap = back.unwrap() - first.unwrap();
    println!("flapping: returned to wan1 {gap:.1} s after the switch away");
    assert!(
        gap >= HOLD as f64,
        "two switches {gap:.2} s apart, less than the hold-down"
    );
    assert!(stream.count() > 0);

    // Status and logs name uplinks and reasons, never a client.
    let log = ub.bed.node_procs.palisaded.as_ref().unwrap().log_text();
    assert!(log.contains("uplink failover: wan1 -> wan2"), "{log}");
    let c = &ub.bed.clients[0];
    for secret in [
        c.up_v4.to_string(),
        c.tun_v4.to_string(),
        c.keys.public_key.clone(),
    ] {
        assert!(
            !log.contains(&secret),
            "palisaded log names a client ({secret})"
        );
    }
}

/// A DHCP uplink: its router comes from the lease (busybox udhcpd in the
/// internet namespace, busybox udhcpc with the node's hook script), a
/// renewal naming another router moves its routes, and the failover to it
/// carries the client's stream through the leased address.
#[test]
#[ignore = "root: run by tests/run.sh"]
fn dhcp_uplink_routes_follow_the_lease() {
    use palisade_tests::uplink::{WAN2_GW, WAN2_GW_ALT};
    use palisade_tests::wait_until;
    let mut ub = UplinkBed::start_with(
        bins(),
        fast_health(),
        true,
    )
    .unwrap();
    let standby = |gw| format!("default via {gw} dev wan2 metric 1001");
    let routes = |ub: &UplinkBed| ub.bed.node.ip(&["-4", "route", "show", "default"]).unwrap();
    assert!(routes(&ub).contains(&standby(WAN2_GW)), "{}", routes(&ub));
    let leased = ub.wan2_addr().unwrap();
    let s = ub.status().unwrap();
    assert_eq!(s["uplinks"][1]["gateways"][0], WAN2_GW.to_string(), "{s}");

    // A renewal that names another router.
    ub.renew_lease_with_router(WAN2_GW_ALT).unwrap();
    let mut last_renew: Option<Instant> = None;
    wait_until(
        Duration::from_secs(20),
        "wan2's routes follow the renewed lease",
        || {
            if last_renew.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                ub.renew().ok()?;
                last_renew = Some(Instant::now());
            }
            let r = routes(&ub);
            (r.contains(&standby(WAN2_GW_ALT)) && !r.contains(&format!("via {WAN2_GW} ")))
                .then_some(())
        },
    )
    .unwrap();
    assert_eq!(
        ub.wan2_addr().unwrap(),
        leased,
        "the renewal kept the address"
    );

    // Fail over to the DHCP uplink: the stream leaves through the new router.
    let stream = Stream::start(&ub.bed.clients[0].ns).unwrap();
    stream
        .first_via_after(Instant::now(), WAN1, Duration::from_secs(5))
        .unwrap();
    let (hs0, _) = ub.client_session().unwrap();
    let t = Instant::now();
    ub.set_link(false).unwrap();
    let resumed = stream
        .first_via_after(t, leased, Duration::from_secs(10))
        .unwrap();
    println!("dhcp: stream resumed via wan2's leased address {leased} (router {WAN2_GW_ALT}) {} ms after the cut", resumed.as_millis());
    let active = format!("default via {WAN2_GW_ALT} dev wan2");
    assert!(
        routes(&ub).lines().any(|l| l.trim() == active),
        "{}",
        routes(&ub)
    );
    assert_same_session(&ub, hs0, Some(leased));
}
