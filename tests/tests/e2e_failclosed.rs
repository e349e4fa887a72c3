//! Fail-closed in the real image (docs/security.md S11): the image booted
//! with its nft NAT module unable to load (`module_blacklist=nft_masq` on
//! the kernel command line, as on a kernel built without it). The firewall
//! cannot be applied, so the node keeps the drop-everything table init
//! loaded before the uplink came up, forwarding stays off, the tunnel stays
//! down, clients reach nothing, the console says why, and the boot entry is
//! not blessed.

use palisade_tests::guest::{image_path, Guest, GuestOptions};
use palisade_tests::matrix::{assert_all, Case, Expect, Kind};
use palisade_tests::{addr, sa, Bins, TestBed};
use std::time::Duration;

#[test]
#[ignore = "root: run by tests/run.sh"]
fn image_without_nft_masq_fails_closed() {
    let image = image_path().expect("image to test");
    let bed = TestBed::new_for_guest(2, Bins { testhost: env!("CARGO_BIN_EXE_pal-testhost").into() }).expect("bed");
    let opts = GuestOptions { extra_cmdline: Some("module_blacklist=nft_masq".into()), ..Default::default() };
    let mut guest = Guest::boot(&bed, &image, &opts).expect("boot the image");
    guest
        .wait_console("fail-closed: no verified firewall table", Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let console = guest.console_text();
    assert!(console.contains("nft rejected the ruleset"), "the console must say why:\n{console}");
    // The tunnel takes no traffic: no handshake completes.
    let hs = bed.wait_handshake(1, Duration::from_secs(10));
    assert!(hs.is_err(), "a client completed a handshake with a node that failed closed\n{console}");
    let (c1, c2) = (&bed.clients[0], &bed.clients[1]);
    let t = Duration::from_millis(1500);
    assert_all(
        &[
            Case::new("c1 -> web", &c1.ns, Kind::Http, sa(addr::WEB_V4, 80), Expect::Dropped),
            Case::new("c1 -> metadata", &c1.ns, Kind::Http, sa(addr::METADATA_V4, 80), Expect::Dropped),
            Case::new("c1 -> 10.99.0.81", &c1.ns, Kind::Http, sa(addr::PRIV_OTHER_V4, 80), Expect::Dropped),
            Case::new("c1 -> c2", &c1.ns, Kind::Tcp, sa(c2.tun_v4, addr::CLIENT_TCP), Expect::Dropped),
            // The fallback table drops what reaches the node itself, too.
            Case::new("internet -> node :22", &bed.inet, Kind::Tcp, sa(addr::NODE_UP_V4, 22), Expect::Dropped),
        ],
        t,
    );
    let console = guest.console_text();
    assert!(!console.contains("boot entry blessed"), "a node without a verified firewall must not bless its slot:\n{console}");
    guest.power_off(Duration::from_secs(30)).expect("power off");
}
