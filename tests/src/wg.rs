//! WireGuard helpers for the client side of the test bed: keys from `wg genkey`
//! (test clients only) and `wg show <if> dump` parsed into plain values.

use crate::ns::{run_cmd, Netns};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A client key pair written to `<dir>/<label>.key` (mode 0600).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private_key_file: std::path::PathBuf,
    pub public_key: String,
}

/// Generate a key pair with `wg genkey` / `wg pubkey` (client side of the tests only).
pub fn gen_keypair(dir: &Path, label: &str) -> Result<KeyPair> {
    let private = run_cmd(Command::new("wg").arg("genkey"))?
        .trim()
        .to_string();
    let public = pubkey_of(&private)?;
    let path = dir.join(format!("{label}.key"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(private.as_bytes())?;
        f.write_all(b"\n")?;
    }
    Ok(KeyPair {
        private_key_file: path,
        public_key: public,
    })
}

/// `wg pubkey` of a base64 private key.
pub fn pubkey_of(private: &str) -> Result<String> {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn wg pubkey")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("{private}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One peer line of `wg show <if> dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDump {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds of the latest handshake; 0 = never.
    pub latest_handshake: u64,
    pub rx: u64,
    pub tx: u64,
}

/// `wg show <if> dump`: the interface's public key, listen port and peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<PeerDump>,
}

impl WgDump {
    pub fn peer(&self, public_key: &str) -> Option<&PeerDump> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

/// Parse the text of `wg show <if> dump` (the private key column is dropped).
pub fn parse_dump(text: &str) -> Result<WgDump> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.next().context("empty wg dump")?.split('\t').collect();
    if head.len() < 4 {
        bail!(
            "unexpected interface line in wg dump ({} fields)",
            head.len()
        );
    }
    let mut d = WgDump {
        public_key: head[1].to_string(),
        listen_port: head[2].parse().unwrap_or(0),
        peers: vec![],
    };
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 8 {
            bail!("unexpected peer line in wg dump ({} fields)", f.len());
        }
        d.peers.push(PeerDump {
            public_key: f[0].to_string(),
            endpoint: (f[2] != "(none)").then(|| f[2].to_string()),
            allowed_ips: if f[3] == "(none)" {
                vec![]
            } else {
                f[3].split(',').map(str::to_string).collect()
            },
            latest_handshake: f[4].parse().context("latest-handshake")?,
            rx: f[5].parse().context("transfer-rx")?,
            tx: f[6].parse().context("transfer-tx")?,
        });
    }
    Ok(d)
}

/// `wg show <ifname> dump` run inside `ns`.
pub fn dump(ns: &Netns, ifname: &str) -> Result<WgDump> {
    parse_dump(&ns.run(&["wg", "show", ifname, "dump"])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dump() {
        let t = "PRIV\tPUB\t51820\toff\nPEER1\t(none)\t203.0.113.101:40000\t10.66.0.2/32,fd66::2/128\t1700000000\t1234\t5678\toff\nPEER2\t(none)\t(none)\t(none)\t0\t0\t0\t25\n";
        let d = parse_dump(t).unwrap();
        assert_eq!(d.public_key, "PUB");
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        let p = d.peer("PEER1").unwrap();
        assert_eq!(p.allowed_ips, vec!["10.66.0.2/32", "fd66::2/128"]);
        assert_eq!(
            (p.latest_handshake, p.rx, p.tx),
            (1_700_000_000, 1234, 5678)
        );
        assert_eq!(d.peer("PEER2").unwrap().endpoint, None);
        assert!(parse_dump("PRIV\tPUB\n").is_err());
    }
}

/// The parts of a wg-quick client config the tests use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuickConfig {
    pub private_key: String,
    pub addresses: Vec<String>,
    pub dns: Vec<String>,
    pub mtu: Option<u32>,
    pub peer_public_key: String,
    pub preshared_key: Option<String>,
    pub allowed_ips: Vec<String>,
    pub endpoint: String,
    pub persistent_keepalive: Option<u16>,
}

/// Parse a wg-quick config (one [Interface], one [Peer]); unknown keys are an error
/// so a format change is noticed.
pub fn parse_quick(text: &str) -> Result<QuickConfig> {
    let mut q = QuickConfig::default();
    let mut section = "";
    let list = |v: &str| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
    };
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            section = if line == "[Interface]" {
                "i"
            } else if line == "[Peer]" {
                "p"
            } else {
                bail!("unknown section {line}")
            };
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .with_context(|| format!("not key = value: {line}"))?;
        let (k, v) = (k.trim(), v.trim());
        match (section, k) {
            ("i", "PrivateKey") => q.private_key = v.to_string(),
            ("i", "Address") => q.addresses = list(v),
            ("i", "DNS") => q.dns = list(v),
            ("i", "MTU") => q.mtu = Some(v.parse().context("MTU")?),
            ("p", "PublicKey") => q.peer_public_key = v.to_string(),
            ("p", "PresharedKey") => q.preshared_key = Some(v.to_string()),
            ("p", "AllowedIPs") => q.allowed_ips = list(v),
            ("p", "Endpoint") => q.endpoint = v.to_string(),
            ("p", "PersistentKeepalive") => {
                q.persistent_keepalive = Some(v.parse().context("PersistentKeepalive")?)
            }
            _ => bail!("unexpected key {k} in the wg-quick config"),
        }
    }
    if q.private_key.is_empty() || q.peer_public_key.is_empty() || q.endpoint.is_empty() {
        bail!("incomplete wg-quick config (PrivateKey, PublicKey and Endpoint are required)");
    }
    Ok(q)
}
