use super::*;
use std::path::Path;

const GOOD: &str = include_str!("../../../../configs/node.toml");

fn parse(text: &str) -> Result<NodeSpec, ConfigError> {
    let p = Path::new("node.toml");
    NodeConfig::from_str(text, p)?.validate(p, text)
}

fn err(text: &str) -> String {
    parse(text).expect_err("config should be rejected").to_string()
}

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") && !path.to_string_lossy().contains("peers") {
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.contains("[wireguard]") {
                continue; // other kinds of config (boards, fleet) are tested by their owners
            }
            let spec = NodeConfig::from_str(&text, &path)
                .and_then(|c| c.validate(&path, &text))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!spec.node.name.is_empty());
            n += 1;
        }
    }
    assert!(n >= 1, "no node configs found in {}", dir.display());
}

#[test]
fn good_config_gives_spec() {
    let s = parse(GOOD).unwrap();
    assert_eq!(s.peers.len(), 2);
    assert_eq!(s.wg.listen_port, 51820);
    assert!(s.egress.blocked.contains(&"169.254.0.0/16".parse().unwrap()));
    assert!(s.egress.blocked.contains(&"fc00::/7".parse().unwrap()));
}

#[test]
fn unknown_field_is_rejected_with_line() {
    let t = GOOD.replace("listen_port = 51820", "listen_port = 51820\nlisten_prot = 1");
    let e = err(&t);
    assert!(e.contains("node.toml:"), "{e}");
    assert!(e.contains("listen_prot"), "{e}");
}

fn with_peer(extra: &str) -> String {
    format!("{GOOD}\n[[peer]]\n{extra}\n")
}

#[test]
fn peer_errors_name_file_line_and_field() {
    let t = with_peer("name = \"x\"\npublic_key = \"AAAA\"\naddresses = [\"10.66.0.9/32\"]");
    let e = err(&t);
    assert!(e.contains("peer[2].public_key"), "{e}");
    assert!(e.contains("bytes"), "{e}");
    let line = t.lines().position(|l| l == "public_key = \"AAAA\"").unwrap() + 1;
    assert!(e.contains(&format!("node.toml:{line}:")), "{e} (expected line {line})");
}

#[test]
fn rejects_zero_and_low_order_keys() {
    let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert!(err(&with_peer(&format!("name=\"z\"\npublic_key=\"{zero}\"\naddresses=[\"10.66.0.9/32\"]"))).contains("all-zero"));
    let one = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert!(err(&with_peer(&format!("name=\"z\"\npublic_key=\"{one}\"\naddresses=[\"10.66.0.9/32\"]"))).contains("low-order"));
}

#[test]
fn rejects_duplicate_keys_and_overlaps() {
    let dup = with_peer("name=\"dup\"\npublic_key=\"+bKY+LXHtnI3GMLCN+BJECJs8mZH3bi2fcXIrLgIIB8=\"\naddresses=[\"10.66.0.9/32\"]");
    assert!(err(&dup).contains("duplicate public key"));
    let k = crate::config::PrivateKey::generate().public_key();
    let ov = with_peer(&format!("name=\"ov\"\npublic_key=\"{k}\"\naddresses=[\"10.66.0.2/32\"]"));
    let e = err(&ov);
    assert!(e.contains("overlaps the AllowedIPs of peer 'laptop-1'"), "{e}");
}

#[test]
fn rejects_bad_addresses() {
    let k = crate::config::PrivateKey::generate().public_key();
    let cases = [
        ("0.0.0.0/0", "route all traffic"),
        ("::/0", "route all traffic"),
        ("10.77.0.2/32", "outside the tunnel prefix"),
        ("10.66.0.5/24", "not canonical"),
        ("10.66.0.0/24", "exactly one /32"),
        ("10.66.0.1/32", "node's own"),
        ("fd67::2/128", "outside the tunnel prefix"),
    ];
    for (addr, want) in cases {
        let e = err(&with_peer(&format!("name=\"p\"\npublic_key=\"{k}\"\naddresses=[\"{addr}\"]")));
        assert!(e.contains(want), "{addr}: {e}");
    }
}

#[test]
fn rejects_non_canonical_egress_and_bad_allow_rule() {
    let t = GOOD.replace("extra_blocked = []", "extra_blocked = [\"192.0.2.1/24\"]");
    assert!(err(&t).contains("not canonical"));
    let t = GOOD.replace("protocol = \"tcp\"\nports = [443]", "ports = [443]");
    assert!(err(&t).contains("ports need protocol"));
}

#[test]
fn rejects_unknown_tier_and_list() {
    let t = GOOD.replace("tier = \"family\"", "tier = \"gold\"");
    assert!(err(&t).contains("tier 'gold' is not defined"));
    let t = GOOD.replace("lists = [\"ads\", \"allow\"]", "lists = [\"nope\"]");
    assert!(err(&t).contains("list 'nope' is not defined"));
}

#[test]
fn several_errors_are_all_reported() {
    let t = GOOD.replace("listen_port = 51820", "listen_port = 0").replace("name = \"edge-1\"", "name = \"bad name\"");
    let e = err(&t);
    assert!(e.contains("2 errors"), "{e}");
}

#[test]
fn peers_file_merges_and_errors_point_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, GOOD).unwrap();
    let peers = dir.path().join("peers.toml");
    let k = crate::config::PrivateKey::generate().public_key();
    std::fs::write(&peers, format!("[[peer]]\nname = \"p3\"\npublic_key = \"{k}\"\naddresses = [\"10.66.0.4/32\"]\n")).unwrap();
    let spec = load(&cfg, Some(&peers)).unwrap();
    assert_eq!(spec.peers.len(), 3);
    std::fs::write(&peers, "[[peer]]\nname = \"p3\"\npublic_key = \"bad\"\naddresses = [\"10.66.0.4/32\"]\n").unwrap();
    let e = load(&cfg, Some(&peers)).unwrap_err().to_string();
    assert!(e.contains("peers.toml:3: peer[0].public_key"), "{e}");
}

#[test]
fn rejects_uplink_named_like_the_wireguard_interface() {
    let t = GOOD.replacen("interface = \"eth0\"", "interface = \"wg0\"", 1);
    let e = err(&t);
    assert!(e.contains("uplink[0].interface") && e.contains("is the WireGuard interface"), "{e}");
}

#[test]
fn rejects_peer_v6_outside_the_routed_prefix() {
    let t = GOOD.replace("backend = \"kernel\"", "backend = \"kernel\"\nrouted_prefix_v6 = \"2001:db8:66::/64\"");
    let e = err(&t);
    assert!(e.contains("fd66::2 is outside routed_prefix_v6 2001:db8:66::/64") && e.contains("peer[0].addresses"), "{e}");
    // Inside: accepted (the tunnel prefix is the routed one).
    let ok = GOOD.replace("backend = \"kernel\"", "backend = \"kernel\"\nrouted_prefix_v6 = \"fd66::/64\"");
    parse(&ok).unwrap();
}

#[test]
fn error_lines_come_from_the_parser_even_after_a_commented_header() {
    // A trailing comment after a table header broke the hand-written search.
    let t = GOOD.replace("[wireguard]", "[wireguard] # the tunnel").replace("listen_port = 51820", "listen_port = 0");
    let e = err(&t);
    let line = t.lines().position(|l| l.starts_with("listen_port = 0")).unwrap() + 1;
    assert!(e.contains(&format!("node.toml:{line}")) && e.contains("wireguard.listen_port"), "{e}");
    let t = with_peer("name = \"x\" # the laptop\npublic_key = \"AAAA\"\naddresses = [\"10.66.0.9/32\"]");
    let e = err(&t);
    let line = t.lines().position(|l| l.starts_with("public_key = \"AAAA\"")).unwrap() + 1;
    assert!(e.contains(&format!("node.toml:{line}")), "{e}");
}

#[test]
fn unknown_dns_upstream_protocol_is_refused_by_the_parser_with_line_and_field() {
    let t = GOOD.replace("protocol = \"udp\"", "protocol = \"quic\"");
    assert_ne!(t, GOOD, "the example has a udp upstream");
    let e = err(&t);
    let line = t.lines().position(|l| l == "protocol = \"quic\"").unwrap() + 1;
    assert!(e.contains(&format!("node.toml:{line}: dns.upstream.protocol:")), "{e} (expected line {line})");
    assert!(e.contains("unknown variant `quic`") && e.contains("`https`"), "{e}");
    // Upper case is not a protocol either (serde: lowercase only).
    assert!(err(&GOOD.replace("protocol = \"udp\"", "protocol = \"UDP\"")).contains("dns.upstream.protocol"));
}

#[test]
fn dns_upstream_protocols_parse_and_tls_needs_a_name() {
    use crate::config::DnsUpstreamProtocol as P;
    for (text, want) in [("udp", P::Udp), ("tcp", P::Tcp), ("tls", P::Tls), ("https", P::Https)] {
        let t = GOOD.replace("protocol = \"udp\"", &format!("protocol = \"{text}\"\ntls_name = \"dns.example\""));
        let s = parse(&t).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(s.dns.upstreams[0].protocol, want);
        assert_eq!(want.to_string(), text);
    }
    // Absent: udp.
    let s = parse(&GOOD.replace("protocol = \"udp\"\n", "")).unwrap();
    assert_eq!(s.dns.upstreams[0].protocol, P::Udp);
    let e = err(&GOOD.replace("protocol = \"udp\"", "protocol = \"https\""));
    assert!(e.contains("dns.upstream[0]") && e.contains("tls_name"), "{e}");
}

#[test]
fn syntax_errors_name_the_field_when_the_line_shows_it() {
    use super::field_at;
    let t = "a = 1\n[wireguard]\nlisten_prot = 1 # c\n[[dns.upstream]]\naddress = [\n  \"x\",\n]\n[broken\n";
    let at = |needle: &str| field_at(t, t.find(needle).unwrap());
    assert_eq!(at("a = 1"), "a");
    assert_eq!(at("1 # c"), "wireguard.listen_prot");
    assert_eq!(at("[[dns"), "dns.upstream");
    assert_eq!(at("\"x\""), "");
    assert_eq!(at("[broken"), "");
}

/// A peers file of 5k peers that all share one key: every duplicate is
/// reported with its own line, and locating them parses the file once (it
/// used to parse it per error: quadratic).
#[test]
fn many_errors_in_a_big_peers_file_are_located_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, GOOD).unwrap();
    let k = crate::config::PrivateKey::generate().public_key();
    let mut text = String::new();
    for i in 0..5_000u32 {
        let h = 10 + i;
        text += &format!("[[peer]]\nname = \"p{i}\"\npublic_key = \"{k}\"\naddresses = [\"10.66.{}.{}/32\"]\n\n", h >> 8, h & 0xff);
    }
    let t = std::time::Instant::now();
    let e = load_with_peers(&cfg, Some((Path::new("peers.toml"), &text))).unwrap_err();
    eprintln!("5k-peer file with 4999 errors refused in {:?}", t.elapsed());
    let ConfigError::Many(all) = &e else { panic!("{e}") };
    assert_eq!(all.len(), 4_999);
    // Peer i's public_key is on line 5 * i + 3.
    let last = all.last().unwrap().to_string();
    assert!(last.starts_with("peers.toml:24998: peer[4999].public_key: duplicate public key"), "{last}");
    load_from_text(Path::new("fleet:x"), GOOD, &[], Path::new("fleet:grants")).expect("text entry point accepts the example");
}

fn with_metrics(listen: &str, extra: &str) -> String {
    GOOD.replace("addresses = [\"203.0.113.10/24\"]", "addresses = [\"203.0.113.10/24\", \"100.100.0.10/16\"]")
        .replace("ports = [22, 9100]", &format!("ports = [22, 9100]\nmetrics_listen = \"{listen}\"\n{extra}"))
}

#[test]
fn metrics_listen_on_an_uplink_mesh_address_is_taken() {
    let s = parse(&with_metrics("100.100.0.10:9100", "metrics_max_cert_lifetime = \"1h\"")).unwrap();
    assert_eq!(s.management.metrics_listen, Some("100.100.0.10:9100".parse().unwrap()));
    assert_eq!(s.management.max_cert_lifetime(), Some(std::time::Duration::from_secs(3600)));
    assert_eq!(s.management.metrics_anchors_file, Path::new("mesh-anchors.pem"));
    // Absent: no endpoint.
    assert_eq!(parse(GOOD).unwrap().management.metrics_listen, None);
}

#[test]
fn metrics_listen_is_refused_off_the_mesh_side() {
    for (listen, why) in [
        ("0.0.0.0:9100", "listens everywhere"),
        ("[::]:9100", "listens everywhere"),
        ("10.66.0.1:9100", "tunnel prefixes"),
        ("[fd66::1]:9100", "tunnel prefixes"),
        ("100.100.0.11:9100", "not an address of any [[uplink]]"),
        ("100.100.0.10:9200", "not in management.ports"),
    ] {
        let e = err(&with_metrics(listen, ""));
        assert!(e.contains("management.metrics_listen"), "{listen}: {e}");
        assert!(e.contains(why), "{listen}: {e}");
    }
    let e = err(&with_metrics("100.100.0.10:9100", "").replace("mesh = [\"100.100.0.0/16\"]", "mesh = []"));
    assert!(e.contains("management.mesh is empty"), "{e}");
}

#[test]
fn metrics_cert_lifetime_must_be_a_short_duration() {
    for (v, why) in [("24", "not a duration"), ("0h", "not a duration"), ("1w", "not a duration"), ("31d", "at most 30d")] {
        let e = err(&with_metrics("100.100.0.10:9100", &format!("metrics_max_cert_lifetime = \"{v}\"")));
        assert!(e.contains("management.metrics_max_cert_lifetime"), "{v}: {e}");
        assert!(e.contains(why), "{v}: {e}");
    }
    assert_eq!(parse_duration("90s"), Some(std::time::Duration::from_secs(90)));
    assert_eq!(parse_duration("7d"), Some(std::time::Duration::from_secs(7 * 86_400)));
}

#[test]
fn several_uplinks_with_probes_and_health_settings_are_validated() {
    let two = GOOD.replace(
        "gateway_v4 = \"203.0.113.1\"\n",
        "gateway_v4 = \"203.0.113.1\"\nprobe_targets = [\"198.51.100.53\"]\n\n[[uplink]]\ninterface = \"eth1\"\ndhcp = true\npriority = 10\nprobe_targets = [\"198.51.100.53\"]\n",
    );
    let s = parse(&format!("{two}\n[uplink_health]\ninterval_ms = 250\ntimeout_ms = 200\nhold_down_secs = 5\n")).unwrap();
    assert_eq!(s.uplinks.len(), 2);
    assert_eq!((s.uplink_health.interval_ms, s.uplink_health.fall, s.uplink_health.hold_down_secs), (250, 3, 5));
    // Defaults: 500 ms rounds, 400 ms timeout, 3 to fall, 3 to rise, 30 s hold-down.
    assert_eq!(parse(GOOD).unwrap().uplink_health, UplinkHealthSection::default());

    let e = err(&format!("{two}\n[uplink_health]\ninterval_ms = 200\ntimeout_ms = 300\n"));
    assert!(e.contains("uplink_health.timeout_ms") && e.contains("50..=interval_ms (200)"), "{e}");
    let e = err(&format!("{two}\n[uplink_health]\nfall = 0\n"));
    assert!(e.contains("uplink_health.fall"), "{e}");
    let e = err(&format!("{two}\n[uplink_health]\nprobe_every = 1\n"));
    assert!(e.contains("unknown field") && e.contains("probe_every"), "{e}");
    // An IPv6 target on an uplink without an IPv6 gateway cannot be reached.
    let e = err(&two.replace("probe_targets = [\"198.51.100.53\"]\n\n", "probe_targets = [\"2001:db8::53\"]\n\n"));
    assert!(e.contains("uplink.0.probe_targets") || e.contains("uplink[0].probe_targets") || e.contains("probe_targets"), "{e}");
    assert!(e.contains("no gateway of that family"), "{e}");
    let e = err(&two.replace("probe_targets = [\"198.51.100.53\"]\n\n", "probe_targets = [\"127.0.0.1\"]\n\n"));
    assert!(e.contains("cannot be probed"), "{e}");
    // Interfaces once each.
    let e = err(&two.replace("interface = \"eth1\"", "interface = \"eth0\""));
    assert!(e.contains("named by an earlier [[uplink]]"), "{e}");
}
