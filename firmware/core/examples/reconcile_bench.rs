//! Reconcile benchmark: palisade's diff-and-apply against
//! `wg syncconf` doing the same work on the same interface, at N peers.
//!
//! Run by bench/wg/run.sh inside a private network namespace, as root:
//!   reconcile_bench --iface pwgbench --backend userspace --peers 10000
//! Prints one table of wall-clock figures (milliseconds).

use palisade_core::config::{NodeConfig, NodeSpec, PeerSpec, PrivateKey, PublicKey, WgBackend};
use palisade_core::firewall::{self, Firewall, NftCli};
use palisade_core::wg::{self, KernelWg, WgControl};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.into())
}

fn peer(i: u32, host: u32) -> PeerSpec {
    let mut b = [9u8; 32];
    b[1..5].copy_from_slice(&i.to_le_bytes());
    let pk = PublicKey(curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(b).to_bytes());
    PeerSpec {
        name: format!("p{i}"),
        public_key: pk,
        v4: Some(Ipv4Addr::from(0x0a40_0000 + host)),
        v6: Some(Ipv6Addr::from((0xfd66u128 << 112) | host as u128)),
        tier: None,
        preshared_key: None,
    }
}

fn wg_conf(key: &PrivateKey, port: u16, peers: &[PeerSpec]) -> String {
    let mut s = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {port}\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.to_wg().0)
    );
    for p in peers {
        let ips: Vec<String> = p.allowed_ips().iter().map(|n| n.to_string()).collect();
        s += &format!("\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n", p.public_key, ips.join(", "));
    }
    s
}

fn syncconf(iface: &str, conf: &str) -> f64 {
    let path = std::env::temp_dir().join(format!("palisade-bench-{}.conf", std::process::id()));
    std::fs::File::create(&path).and_then(|mut f| f.write_all(conf.as_bytes())).expect("write conf");
    let t = Instant::now();
    let st = Command::new("wg").args(["syncconf", iface]).arg(&path).status().expect("run wg");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_file(&path);
    assert!(st.success(), "wg syncconf failed");
    ms
}

fn set(s: &mut NodeSpec, peers: &[PeerSpec]) {
    s.peers = peers.iter().map(|p| (p.public_key, p.clone())).collect();
}

fn main() {
    let iface = arg("--iface", "pwgbench");
    let n: u32 = arg("--peers", "10000").parse().expect("--peers N");
    let backend = match arg("--backend", "kernel").as_str() {
        "userspace" => WgBackend::Userspace,
        _ => WgBackend::Kernel,
    };
    let change = (n / 100).max(1);
    let emit = arg("--emit-peers", "");
    if !emit.is_empty() {
        // A peers file for palisaded (bench/wg/run.sh measures its RSS with it).
        let mut out = String::new();
        for i in 0..n {
            let p = peer(i, i + 2);
            out += &format!(
                "[[peer]]\nname = \"{}\"\npublic_key = \"{}\"\naddresses = [\"{}/32\", \"{}/128\"]\n\n",
                p.name,
                p.public_key,
                p.v4.unwrap(),
                p.v6.unwrap()
            );
        }
        std::fs::write(&emit, out).expect("write peers file");
        return;
    }
    let text = include_str!("../../../configs/node.toml");
    let p = Path::new("node.toml");
    let mut spec = NodeConfig::from_str(text, p).unwrap().validate(p, text).unwrap();
    spec.wg.interface = iface.clone();
    spec.wg.address_v4 = "10.64.0.1/10".parse().unwrap();
    let key = PrivateKey::generate();
    let wgc = KernelWg::new(backend);
    let all: Vec<PeerSpec> = (0..n).map(|i| peer(i, i + 2)).collect();
    // 1 %: half the changed peers are replaced by new ones, half get a new address.
    let mut changed = all.clone();
    for (i, slot) in changed.iter_mut().enumerate().take(change as usize) {
        if i % 2 == 0 {
            *slot = peer(n + i as u32, 2 * n + 10 + i as u32);
        } else {
            slot.v4 = Some(Ipv4Addr::from(0x0a40_0000 + 3 * n + i as u32));
        }
    }

    // Create the interface with no peers.
    set(&mut spec, &[]);
    let p0 = wg::plan(&wgc.observe(&iface).unwrap(), &spec, &key.public_key());
    wgc.apply(&iface, &p0, &key).unwrap();

    let reconcile = |spec: &NodeSpec| -> (f64, usize) {
        let t = Instant::now();
        let p = wg::plan(&wgc.observe(&iface).unwrap(), spec, &key.public_key());
        let ops = p.peers.len();
        if !p.is_empty() {
            wgc.apply(&iface, &p, &key).unwrap();
        }
        (t.elapsed().as_secs_f64() * 1e3, ops)
    };

    set(&mut spec, &all);
    let (pal_full, ops_full) = reconcile(&spec);
    let (pal_same, ops_same) = reconcile(&spec);
    set(&mut spec, &changed);
    let (pal_pct, ops_pct) = reconcile(&spec);
    assert!(wg::plan(&wgc.observe(&iface).unwrap(), &spec, &key.public_key()).peers.is_empty(), "converged");
    set(&mut spec, &all);
    let _ = reconcile(&spec);
    assert_eq!(wgc.observe(&iface).unwrap().peers.len(), n as usize);

    // wg syncconf on the same interface, same transitions.
    let port = spec.wg.listen_port;
    syncconf(&iface, &wg_conf(&key, port, &[]));
    assert_eq!(wgc.observe(&iface).unwrap().peers.len(), 0);
    let sc_full = syncconf(&iface, &wg_conf(&key, port, &all));
    let sc_same = syncconf(&iface, &wg_conf(&key, port, &all));
    let sc_pct = syncconf(&iface, &wg_conf(&key, port, &changed));
    assert_eq!(wgc.observe(&iface).unwrap().peers.len(), n as usize);

    // Firewall apply with N peers and with 100: the ruleset does not depend
    // on peers, so these should match.
    let nft = NftCli::default();
    let t = Instant::now();
    nft.apply(&firewall::render(&spec, &Default::default())).expect("nft apply");
    let fw_n = t.elapsed().as_secs_f64() * 1e3;
    set(&mut spec, &all[..100.min(all.len())]);
    let t = Instant::now();
    nft.apply(&firewall::render(&spec, &Default::default())).expect("nft apply");
    let fw_100 = t.elapsed().as_secs_f64() * 1e3;

    println!("backend: {backend}, interface {iface}, {n} peers, 1% = {change} peers");
    println!("{:<28} {:>12} {:>14} {:>8}", "case", "palisade ms", "syncconf ms", "ratio");
    for (case, a, b, ops) in [
        ("from empty", pal_full, sc_full, ops_full),
        ("no change", pal_same, sc_same, ops_same),
        ("1% change", pal_pct, sc_pct, ops_pct),
    ] {
        println!("{:<28} {:>12.1} {:>14.1} {:>7.1}x   ({ops} peer ops)", case, a, b, b / a);
    }
    println!("{:<28} {:>12.1}", format!("firewall apply, {n} peers"), fw_n);
    println!("{:<28} {:>12.1}", "firewall apply, 100 peers", fw_100);
}
