//! The kill-switch: one nftables table, `inet palisade_client`, that drops
//! every outgoing packet except on loopback and the tunnel interface, the
//! tunnel's own UDP (marked with the client's fwmark) to the listed node
//! endpoints, IPv6 neighbour discovery and DHCP on the LAN. Installed before
//! the tunnel comes up, replaced in one transaction (after `nft -c`), removed
//! on a clean exit; a crashed client leaves it in place (fail closed).

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// The table's name (family inet).
pub const TABLE: &str = "palisade_client";

/// The ruleset (pure): tunnel interface, fwmark, node endpoints.
pub fn render(tunnel: &str, fwmark: u32, endpoints: &[SocketAddr]) -> String {
    let (v4, v6): (Vec<_>, Vec<_>) = endpoints.iter().partition(|e| e.is_ipv4());
    let elems = |v: &[&SocketAddr]| {
        v.iter()
            .map(|e| format!("{} . {}", e.ip(), e.port()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "table inet {TABLE} {{\n\tchain output {{\n\t\ttype filter hook output priority filter - 10; policy drop;\n\t\toifname \"lo\" accept\n\t\toifname \"{tunnel}\" accept\n"
    );
    if !v4.is_empty() {
        s += &format!(
            "\t\tmeta mark {fwmark:#x} ip daddr . udp dport {{ {} }} accept\n",
            elems(&v4)
        );
    }
    if !v6.is_empty() {
        s += &format!(
            "\t\tmeta mark {fwmark:#x} ip6 daddr . udp dport {{ {} }} accept\n",
            elems(&v6)
        );
    }
    s += "\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept\n";
    s += "\t\tudp sport 68 udp dport 67 accept\n\t\tudp sport 546 udp dport 547 accept\n";
    s += "\t}\n}\n";
    s
}

fn nft(args: &[&str], stdin: &str) -> Result<()> {
    let mut c = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft (install the nftables package)")?;
    c.stdin
        .take()
        .context("nft stdin")?
        .write_all(stdin.as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Install or replace the table in one transaction, checked first.
pub fn apply(tunnel: &str, fwmark: u32, endpoints: &[SocketAddr]) -> Result<()> {
    let script = format!(
        "table inet {TABLE}\nflush table inet {TABLE}\n{}",
        render(tunnel, fwmark, endpoints)
    );
    nft(&["-c", "-f", "-"], &script).context("kill-switch ruleset refused by nft -c")?;
    nft(&["-f", "-"], &script).context("install the kill-switch")?;
    let out = Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .output()?;
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("policy drop") {
        bail!("kill-switch table inet {TABLE} not found after install");
    }
    Ok(())
}

/// Remove the table (clean exit).
pub fn remove() -> Result<()> {
    nft(
        &["-f", "-"],
        &format!("table inet {TABLE}\ndelete table inet {TABLE}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_allows_only_the_tunnel_and_its_udp() {
        let eps: Vec<SocketAddr> = [
            "203.0.113.10:51820",
            "203.0.113.11:51820",
            "[2001:db8::11]:4500",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let r = render("pc0", 51820, &eps);
        assert_eq!(
            r,
            "table inet palisade_client {\n\tchain output {\n\t\ttype filter hook output priority filter - 10; policy drop;\n\t\toifname \"lo\" accept\n\t\toifname \"pc0\" accept\n\t\tmeta mark 0xca6c ip daddr . udp dport { 203.0.113.10 . 51820, 203.0.113.11 . 51820 } accept\n\t\tmeta mark 0xca6c ip6 daddr . udp dport { 2001:db8::11 . 4500 } accept\n\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept\n\t\tudp sport 68 udp dport 67 accept\n\t\tudp sport 546 udp dport 547 accept\n\t}\n}\n"
        );
        assert!(!r.contains(" log"), "no log statements");
        let only_v4 = render("pc0", 1, &eps[..1]);
        assert!(!only_v4.contains("ip6 daddr"));
    }
}
