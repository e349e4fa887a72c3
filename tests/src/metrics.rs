//! Metrics endpoint test support (docs/metrics.md): the bed's node with a
//! management-mesh address on its uplink and the endpoint on it, scrapes
//! with `palisade-fleet metrics` from the mesh host (the bed's internet
//! namespace, mesh source 100.100.0.5), scraper certificates from the
//! fleet tool.

use crate::palisade::{render_node_toml, NodeOptions, Palisade};
use crate::update::{fleet_bin, Fleet};
use crate::{addr, TestBed};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The node's address in the management mesh (a second address on eth0).
pub const MESH_NODE: Ipv4Addr = Ipv4Addr::new(100, 100, 0, 10);
pub const PORT: u16 = 9100;
pub fn metrics_addr() -> SocketAddr {
    SocketAddr::new(MESH_NODE.into(), PORT)
}

/// The bed's node config with the mesh address on the uplink and the
/// metrics endpoint on it (certificates may live 1 h at most).
pub fn node_toml(bed: &TestBed, opts: &NodeOptions) -> String {
    let t = render_node_toml(bed, opts);
    let up = format!(
        "addresses = [\"{}/24\", \"{}/64\"]",
        addr::NODE_UP_V4,
        addr::NODE_UP_V6
    );
    assert!(t.contains(&up), "the bed's uplink line changed: {t}");
    let t = t.replace(
        &up,
        &format!(
            "addresses = [\"{}/24\", \"{}/64\", \"{MESH_NODE}/16\"]",
            addr::NODE_UP_V4,
            addr::NODE_UP_V6
        ),
    );
    t.replace(
        "[management]\n",
        &format!(
            "[management]\nmetrics_listen = \"{}\"\nmetrics_max_cert_lifetime = \"1h\"\n",
            metrics_addr()
        ),
    )
}

/// `palisade-fleet metrics` from the mesh host; the samples or the error.
pub fn scrape(
    bed: &TestBed,
    fleet: &Fleet,
    node: &str,
    cert: &Path,
    key: &Path,
) -> Result<(Value, String), String> {
    let bin = fleet_bin().unwrap();
    let run = |json: bool| {
        let mut c = bed.inet.command(&bin);
        c.args([
            "metrics",
            "--node",
            node,
            "--addr",
            &metrics_addr().to_string(),
        ]);
        c.arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--repo")
            .arg(&fleet.repo);
        if json {
            c.arg("--json");
        }
        c.output().expect("run palisade-fleet metrics")
    };
    let o = run(true);
    if !o.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())?;
    let text = run(false);
    Ok((v, String::from_utf8_lossy(&text.stdout).into_owned()))
}

/// The value of sample `name` (with `label` = value, if given).
pub fn sample(v: &Value, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    v["samples"].as_array()?.iter().find_map(|s| {
        let ok = s["name"] == name && label.is_none_or(|(k, want)| s["labels"][k] == want);
        ok.then(|| s["value"].as_f64()).flatten()
    })
}

/// The aggregates a scrape shows once `peers` clients have passed traffic
/// and at least two DNS queries: peers configured and with a recent
/// handshake, bytes received, DNS queries, WireGuard healthy.
pub fn assert_traffic_aggregates(v: &Value, text: &str, peers: f64) {
    assert_eq!(sample(v, "palisade_peers_configured", None), Some(peers), "{text}");
    assert_eq!(sample(v, "palisade_peers_recent_handshake", None), Some(peers), "{text}");
    assert!(sample(v, "palisade_wireguard_rx_bytes_total", None).unwrap_or(0.0) > 0.0, "{text}");
    assert!(sample(v, "palisade_dns_queries_total", None).unwrap_or(0.0) >= 2.0, "{text}");
    assert_eq!(sample(v, "palisade_health", Some(("check", "wireguard"))), Some(1.0), "{text}");
}

/// The zero-log scan of a scrape (text and parsed samples): no client key,
/// tunnel or endpoint address, peer name, nor any of `names` (the names
/// the clients queried).
pub fn assert_nothing_per_client(bed: &TestBed, names: &[String], v: &Value, text: &str) {
    let mut secrets: Vec<String> = names.to_vec();
    for c in &bed.clients {
        secrets.extend([
            c.keys.public_key.clone(),
            c.tun_v4.to_string(),
            c.tun_v6.to_string(),
            c.up_v4.to_string(),
            c.up_v6.to_string(),
            format!("client-{}", c.index),
        ]);
    }
    let parsed = v.to_string();
    for s in &secrets {
        assert!(!text.contains(s.as_str()) && !parsed.contains(s.as_str()), "metrics output names {s}:\n{text}");
    }
}

/// A certificate: `mesh cert issue` from `fleet`'s anchor; (cert, key).
pub fn issue(
    fleet: &Fleet,
    anchor: &str,
    name: &str,
    extra: &[&str],
    out: &Path,
) -> (PathBuf, PathBuf) {
    let o = out.to_string_lossy();
    let mut args = vec![
        "mesh", "cert", "issue", "--anchor", anchor, "--name", name, "--out", &o,
    ];
    args.extend_from_slice(extra);
    fleet
        .fleet(&args)
        .unwrap_or_else(|e| panic!("issue {name}: {e}"));
    (
        out.join(format!("{name}.crt.pem")),
        out.join(format!("{name}.key.pem")),
    )
}

/// The node id of an ed25519 public key (base64): the first 16 hex digits
/// of its SHA-256.
pub fn node_id_of(key_b64: &str) -> String {
    use sha2::Digest;
    let k = base64_decode(key_b64);
    sha2::Sha256::digest(&k)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,sys; sys.stdout.buffer.write(base64.b64decode(sys.argv[1]))",
            s,
        ])
        .output()
        .expect("python3");
    o.stdout
}

/// A namespace bed with `clients` clients whose node also holds the mesh
/// address [`MESH_NODE`] on its uplink, and the directories for the fleet
/// repository and the scraper certificates: (bed, fleet dir, certs dir).
pub fn mesh_bed(clients: usize, bins: crate::Bins) -> (TestBed, PathBuf, PathBuf) {
    let bed = TestBed::new(clients, bins).expect("test bed");
    bed.node
        .ip(&["addr", "add", &format!("{MESH_NODE}/16"), "dev", "eth0"])
        .unwrap();
    let dir = bed.dir.path().join("fleet");
    let certs = bed.dir.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    (bed, dir, certs)
}

/// The node `id` with its identity `public_key` in the fleet's inventory
/// (region `test`): what a scraper pins.
pub fn add_node(fleet: &Fleet, id: &str, public_key: &str, name: &str) {
    fleet
        .fleet(&["node", "add", "--id", id, "--public-key", public_key, "--name", name, "--region", "test"])
        .unwrap();
}

/// The fleet's first anchor `a1` in a repository under `dir`, the node in
/// its inventory, the anchor bundle copied to the node's anchors file, and
/// a scraper certificate (30 min) in `certs`: (fleet, node id, cert, key).
pub fn fleet_with_anchor(
    p: &Palisade,
    bed: &TestBed,
    dir: &Path,
    certs: &Path,
) -> (Fleet, String, PathBuf, PathBuf) {
    let fleet = Fleet::init(dir).expect("repo init");
    fleet.fleet(&["mesh", "anchor", "init", "a1"]).unwrap();
    let id: Value = serde_json::from_str(&p.cli_ok(bed, &["identity", "--json"]).unwrap()).unwrap();
    let node = id["node_id"].as_str().unwrap().to_string();
    add_node(&fleet, &node, id["public_key"].as_str().unwrap(), "n1");
    let list: Value = serde_json::from_slice(
        &std::fs::read(fleet.repo.join("inventory/mesh-anchors.json")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        p.state_dir.join("mesh-anchors.pem"),
        list["anchors"][0]["cert_pem"].as_str().unwrap(),
    )
    .unwrap();
    let (c, k) = issue(&fleet, "a1", "prom", &["--expires", "30m"], certs);
    (fleet, node, c, k)
}
