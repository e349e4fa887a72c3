//! Benchmark hook (`palisade.bench_reconcile=N[,N...]` on the kernel command
//! line, optional `palisade.bench_reconcile_rounds=R`, default 5;
//! bench/reconcile/run.sh only): palisaded's peer reconcile against
//! `wg syncconf` on the guest's kernel WireGuard, like for like, on a
//! separate interface (`pbench0`, port 51999) so the node's own tunnel is
//! untouched.
//!
//! For each N: palisaded's whole path as a reload runs it — read node.toml
//! and a peers.toml of N peers, parse and validate what changed since the
//! last load (`config::Loader`, kept from step to step as the supervisor
//! keeps it), observe the interface, plan, apply —
//! against `wg syncconf pbench0 FILE` with a wg-quick style file of the same
//! key, port and peers; from empty, no change, and a 1 % change (half of the
//! changed peers replaced by new keys, half moved to a new address). Writing
//! the input files is not timed for either. Rounds alternate which tool goes
//! first. Above 20,000 peers "from empty" runs in the first round only (the
//! rounds go all -> changed -> all, each step a 1 % change). Every result is
//! checked (peer count after each step, an empty plan after palisade's
//! 1 % change). Also timed each round: `wg show pbench0 dump` (the kernel's
//! dump of all peers, which both paths read). Results are WARN lines on the console starting `bench:
//! reconcile`. Needs `wg` (wireguard-tools), which only the bench image
//! variant has (bench/reconcile/run.sh builds it).

use palisade_core::config::{self, PrivateKey, PublicKey};
use palisade_core::wg::{self, KernelWg, WgControl};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

const IFACE: &str = "pbench0";
const PORT: u16 = 51999;
/// Above this many peers "from empty" is measured once, not every round.
const FULL_EVERY_ROUND_MAX: usize = 20_000;

/// The hook's settings from the kernel command line, if it is there.
pub fn from_cmdline(text: &str) -> Option<(Vec<usize>, usize)> {
    let cmd = crate::init::Cmdline::parse(text);
    let sizes: Vec<usize> = cmd
        .get("palisade.bench_reconcile")?
        .split(',')
        .filter_map(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let rounds = cmd
        .get("palisade.bench_reconcile_rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    (!sizes.is_empty()).then_some((sizes, rounds))
}

#[derive(Clone)]
struct Peer {
    key: PublicKey,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// A deterministic, well-spread 32-byte key for peer `i` (no scalar
/// multiplication: generating 100k real keys would dominate under TCG).
fn key(i: u64) -> PublicKey {
    let mut k = [0u8; 32];
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    for c in k.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        c.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    PublicKey(k)
}

fn peer(i: u64, host: u32) -> Peer {
    Peer {
        key: key(i),
        v4: Ipv4Addr::from(0x0a40_0000 + host),
        v6: Ipv6Addr::from((0xfd66u128 << 112) | u128::from(host)),
    }
}

fn peers_toml(peers: &[Peer]) -> String {
    let mut s = String::with_capacity(peers.len() * 120);
    for (i, p) in peers.iter().enumerate() {
        let _ = write!(s, "[[peer]]\nname = \"p{i}\"\npublic_key = \"{}\"\naddresses = [\"{}/32\", \"{}/128\"]\n\n", p.key, p.v4, p.v6);
    }
    s
}

fn wg_conf(key: &PrivateKey, peers: &[Peer]) -> String {
    let mut s = String::with_capacity(peers.len() * 110);
    let _ = write!(
        s,
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n",
        key.to_wg().to_base64()
    );
    for p in peers {
        let _ = write!(
            s,
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32, {}/128\n",
            p.key, p.v4, p.v6
        );
    }
    s
}

/// The node config for the bench interface: the example config's
/// `[wireguard]` on `pbench0`, a /10 for up to millions of peers, no peers.
fn node_toml() -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in include_str!("../../../configs/node.toml").lines() {
        if line.starts_with("[[peer]]") {
            skip = true;
        } else if line.starts_with('[') {
            skip = false;
        }
        if skip {
            continue;
        }
        let l = match line {
            l if l.starts_with("interface = \"wg0\"") => format!("interface = \"{IFACE}\""),
            l if l.starts_with("listen_port =") => format!("listen_port = {PORT}"),
            l if l.starts_with("address_v4 = \"10.66") => "address_v4 = \"10.64.0.1/10\"".into(),
            l => l.to_string(),
        };
        out.push_str(&l);
        out.push('\n');
    }
    out
}

struct Bench {
    dir: PathBuf,
    key: PrivateKey,
    wgc: KernelWg,
    /// palisaded's loader and the spec it runs, kept from step to step as
    /// the supervisor keeps them from reload to reload.
    loader: config::Loader,
    spec: Option<config::NodeSpec>,
}

impl Bench {
    fn node(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    fn peers(&self) -> PathBuf {
        self.dir.join("peers.toml")
    }

    /// palisaded's path over the files, as a reload runs it: load (read
    /// both files; parse and check the blocks of the peers file that are
    /// new; nothing if the texts are those of the running spec), observe,
    /// plan, apply. Returns the total, the peer operations and the phases
    /// (ms: load, observe, plan, apply).
    fn palisade(&mut self, peers: &[Peer]) -> anyhow::Result<(f64, usize, [f64; 4])> {
        std::fs::write(self.peers(), peers_toml(peers))?;
        let t = Instant::now();
        if let config::Loaded::Changed(spec) = self.loader.load(&self.node(), Some(&self.peers()))? {
            self.spec = Some(*spec);
        }
        let spec = self.spec.as_ref().expect("a first load changes");
        let t1 = t.elapsed();
        let observed = self.wgc.observe(IFACE)?;
        let t2 = t.elapsed();
        let plan = wg::plan(&observed, spec, &self.key.public_key());
        let t3 = t.elapsed();
        let ops = plan.peers.len();
        if !plan.is_empty() {
            self.wgc.apply(IFACE, &plan, &self.key)?;
        }
        let t4 = t.elapsed();
        self.loader.commit();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        self.expect(peers.len())?;
        Ok((ms(t4), ops, [ms(t1), ms(t2 - t1), ms(t3 - t2), ms(t4 - t3)]))
    }

    /// `wg show IFACE dump` to /dev/null: the kernel's dump of every peer
    /// and its printing, which any tool that checks the device pays.
    fn dump(&self) -> anyhow::Result<f64> {
        let t = Instant::now();
        let st = std::process::Command::new("wg")
            .args(["show", IFACE, "dump"])
            .stdout(std::process::Stdio::null())
            .status()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(st.success(), "wg show dump: {st}");
        Ok(ms)
    }

    fn syncconf(&self, peers: &[Peer]) -> anyhow::Result<f64> {
        let f = self.dir.join("wg.conf");
        std::fs::write(&f, wg_conf(&self.key, peers))?;
        let t = Instant::now();
        let st = std::process::Command::new("wg")
            .arg("syncconf")
            .arg(IFACE)
            .arg(&f)
            .status()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(st.success(), "wg syncconf: {st}");
        self.expect(peers.len())?;
        Ok(ms)
    }

    fn expect(&self, n: usize) -> anyhow::Result<()> {
        let got = self.wgc.observe(IFACE)?.peers.len();
        anyhow::ensure!(got == n, "{got} peers on {IFACE}, expected {n}");
        Ok(())
    }
}

fn stat(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:.1} ms ({:.1}-{:.1}, n={})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        v.len()
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run the benchmark for each size; WARN lines with the figures.
pub fn run(sizes: &[usize], rounds: usize, run_dir: &Path) -> anyhow::Result<()> {
    let dir = run_dir.join("bench-reconcile");
    std::fs::create_dir_all(&dir)?;
    let mut b = Bench {
        dir,
        key: PrivateKey::generate(),
        wgc: KernelWg::new(config::WgBackend::Kernel),
        loader: config::Loader::default(),
        spec: None,
    };
    std::fs::write(b.node(), node_toml())?;
    for &n in sizes {
        tracing::warn!(
            "bench: reconcile: {n} peers, {rounds} rounds, interface {IFACE} (kernel WireGuard)"
        );
        let all: Vec<Peer> = (0..n as u64).map(|i| peer(i, i as u32 + 2)).collect();
        let change = (n / 100).max(1);
        let mut changed = all.clone();
        for (i, p) in changed.iter_mut().enumerate().take(change) {
            if i % 2 == 0 {
                *p = peer(n as u64 + i as u64, 2 * n as u32 + 10 + i as u32);
            } else {
                p.v4 = Ipv4Addr::from(0x0a40_0000 + 3 * n as u32 + i as u32);
            }
        }
        let (mut pf, mut ps, mut pp) = (Vec::new(), Vec::new(), Vec::new());
        let (mut sf, mut ss, mut sp) = (Vec::new(), Vec::new(), Vec::new());
        let mut ops = 0;
        let mut parsed = 0;
        let mut dumps = Vec::new();
        let mut phases: [Vec<[f64; 4]>; 3] = Default::default();
        for r in 0..rounds {
            let full = r == 0 || n <= FULL_EVERY_ROUND_MAX;
            for tool in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
                if tool == 0 {
                    if full {
                        b.palisade(&[])?;
                        let (ms, _, ph) = b.palisade(&all)?;
                        pf.push(ms);
                        phases[0].push(ph);
                    }
                    let (ms, _, ph) = b.palisade(&all)?;
                    ps.push(ms);
                    phases[1].push(ph);
                    dumps.push(b.dump()?);
                    let (ms, o, ph) = b.palisade(&changed)?;
                    pp.push(ms);
                    phases[2].push(ph);
                    ops = o;
                    parsed = b.loader.stats.parsed;
                    let spec = config::load(&b.node(), Some(&b.peers()))?;
                    anyhow::ensure!(
                        wg::plan(&b.wgc.observe(IFACE)?, &spec, &b.key.public_key()).is_empty(),
                        "palisade did not converge"
                    );
                    b.palisade(&all)?;
                } else {
                    if full {
                        b.syncconf(&[])?;
                        sf.push(b.syncconf(&all)?);
                    }
                    ss.push(b.syncconf(&all)?);
                    sp.push(b.syncconf(&changed)?);
                    b.syncconf(&all)?;
                }
            }
        }
        for (i, (case, p, s)) in [
            ("from empty", &mut pf, &mut sf),
            ("no change", &mut ps, &mut ss),
            ("1% change", &mut pp, &mut sp),
        ]
        .into_iter()
        .enumerate()
        {
            let ratio = median(s) / median(p);
            tracing::warn!(
                "bench: reconcile {n} peers, {case}: palisade {} vs wg syncconf {} = {ratio:.1}x",
                stat(p),
                stat(s)
            );
            let ph: Vec<f64> = (0..4)
                .map(|k| median(&phases[i].iter().map(|x| x[k]).collect::<Vec<_>>()))
                .collect();
            tracing::warn!(
                "bench: reconcile {n} peers, {case}: palisade phases (median ms): load {:.1}, observe {:.1}, plan {:.1}, apply {:.1}",
                ph[0],
                ph[1],
                ph[2],
                ph[3]
            );
        }
        tracing::warn!("bench: reconcile {n} peers: 1% change = {ops} peer operations, {parsed} blocks of the peers file parsed");
        tracing::warn!("bench: reconcile {n} peers: wg show dump (the kernel's dump, printed) {}", stat(&mut dumps));
    }
    // Done before the cleanup: deleting an interface with 100k peers takes
    // minutes under TCG, and the figures are in.
    tracing::warn!("bench: reconcile done");
    let _ = std::process::Command::new("busybox")
        .args(["ip", "link", "del", IFACE])
        .status();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_and_inputs() {
        assert_eq!(
            from_cmdline("ro palisade.bench_reconcile=10000,100000"),
            Some((vec![10000, 100000], 5))
        );
        assert_eq!(
            from_cmdline("palisade.bench_reconcile=10 palisade.bench_reconcile_rounds=3"),
            Some((vec![10], 3))
        );
        assert_eq!(from_cmdline("ro quiet"), None);
        let text = node_toml();
        assert!(
            text.contains("interface = \"pbench0\"")
                && text.contains("listen_port = 51999")
                && !text.contains("[[peer]]"),
            "{text}"
        );
        let peers: Vec<Peer> = (0..50).map(|i| peer(i, i as u32 + 2)).collect();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("node.toml"), &text).unwrap();
        std::fs::write(d.path().join("peers.toml"), peers_toml(&peers)).unwrap();
        let spec = config::load(
            &d.path().join("node.toml"),
            Some(&d.path().join("peers.toml")),
        )
        .unwrap();
        assert_eq!(spec.peers.len(), 50);
        assert_eq!(spec.wg.interface, IFACE);
        let conf = wg_conf(&PrivateKey::generate(), &peers);
        assert_eq!(conf.matches("[Peer]").count(), 50);
    }
}
