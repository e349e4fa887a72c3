//! The live `inet palisade` table as the mutation check sees it: rules with
//! their chain, position and handle (`nft -a list`), an atomic restore of a
//! saved listing, deleting one rule, and which destinations the table drops.

use crate::ns::Netns;
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::Path;

pub const TABLE: &str = "palisade";

/// One rule of the live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// Position in its chain (0-based): stable across restores, unlike handles.
    pub index: usize,
    pub handle: u64,
    /// The rule as `nft list` prints it (without the handle comment).
    pub text: String,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.chain, self.text)
    }
}

/// `nft list table inet palisade` (the listing a restore loads back).
pub fn listing(ns: &Netns) -> Result<String> {
    ns.run(&["nft", "list", "table", "inet", TABLE])
}

/// Parse `nft -a list table ...` output into rules, in order.
pub fn parse_rules(text: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut chain: Option<String> = None;
    let mut index = 0;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().map(str::to_string);
            index = 0;
            continue;
        }
        if l.starts_with("set ") || l.starts_with("map ") || l.starts_with("table ") {
            chain = None;
            continue;
        }
        let Some(c) = &chain else { continue };
        let Some((body, handle)) = l.rsplit_once(" # handle ") else {
            continue;
        };
        let Ok(handle) = handle.trim().parse() else {
            continue;
        };
        out.push(Rule {
            chain: c.clone(),
            index,
            handle,
            text: body.trim().to_string(),
        });
        index += 1;
    }
    out
}

/// The live rules with their current handles.
pub fn rules(ns: &Netns) -> Result<Vec<Rule>> {
    Ok(parse_rules(
        &ns.run(&["nft", "-a", "list", "table", "inet", TABLE])?,
    ))
}

/// Replace the live table by `saved` (a [`listing`]) in one transaction: no
/// moment without the table (add, delete and re-create are one `nft -f`).
pub fn restore(ns: &Netns, saved: &str, scratch: &Path) -> Result<()> {
    let f = scratch.join("mutation-restore.nft");
    std::fs::write(
        &f,
        format!("add table inet {TABLE}\ndelete table inet {TABLE}\n{saved}"),
    )?;
    ns.run(&["nft", "-f", &f.to_string_lossy()])
        .context("restore the saved table")?;
    Ok(())
}

/// Delete the live rule at `rule`'s chain and position (handles change with
/// every restore), after checking it is the same rule.
pub fn delete(ns: &Netns, rule: &Rule) -> Result<()> {
    let live = rules(ns)?;
    let Some(r) = live
        .iter()
        .find(|r| r.chain == rule.chain && r.index == rule.index)
    else {
        bail!("no rule {} in chain {}", rule.index, rule.chain);
    };
    if r.text != rule.text {
        bail!(
            "rule {} of {} is now {:?}, not {:?}",
            rule.index,
            rule.chain,
            r.text,
            rule.text
        );
    }
    ns.run(&[
        "nft",
        "delete",
        "rule",
        "inet",
        TABLE,
        &r.chain,
        "handle",
        &r.handle.to_string(),
    ])?;
    Ok(())
}

/// An address prefix or range from the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    lo: u128,
    hi: u128,
    v6: bool,
    pub text: String,
}

impl Span {
    fn key(ip: IpAddr) -> (u128, bool) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), false),
            IpAddr::V6(a) => (u128::from(a), true),
        }
    }

    fn prefix(addr: IpAddr, len: u32) -> Span {
        let (k, v6) = Span::key(addr);
        let bits = if v6 { 128 } else { 32 };
        let host = bits - len.min(bits);
        let mask: u128 = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        Span {
            lo: k & !mask,
            hi: k | mask,
            v6,
            text: format!("{addr}/{len}"),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (k, v6) = Span::key(ip);
        v6 == self.v6 && self.lo <= k && k <= self.hi
    }
}

fn spans_of(
    v: &serde_json::Value,
    sets: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<Span>,
) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(name) = s.strip_prefix('@') {
                if let Some(elems) = sets.get(name) {
                    spans_of(elems, sets, out);
                }
            } else if let Ok(ip) = s.parse::<IpAddr>() {
                out.push(Span::prefix(ip, 128));
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|e| spans_of(e, sets, out)),
        serde_json::Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                if let (Some(a), Some(l)) = (
                    p.get("addr")
                        .and_then(|a| a.as_str())
                        .and_then(|a| a.parse::<IpAddr>().ok()),
                    p.get("len").and_then(|l| l.as_u64()),
                ) {
                    out.push(Span::prefix(a, l as u32));
                }
            } else if let Some(serde_json::Value::Array(r)) = o.get("range") {
                let ends: Vec<IpAddr> = r.iter().filter_map(|e| e.as_str()?.parse().ok()).collect();
                if let [a, b] = ends[..] {
                    let ((lo, v6), (hi, _)) = (Span::key(a), Span::key(b));
                    out.push(Span {
                        lo,
                        hi,
                        v6,
                        text: format!("{a}-{b}"),
                    });
                }
            } else if let Some(s) = o.get("set") {
                spans_of(s, sets, out);
            } else if let Some(e) = o.get("elem") {
                // Set elements with flags or comments: {"elem": {"val": ...}}.
                spans_of(e.get("val").unwrap_or(e), sets, out);
            }
        }
        _ => {}
    }
}

/// Destinations the table drops for forwarded traffic: every `daddr` match
/// (literal, anonymous set or named set) of a rule that ends in `drop`, in a
/// chain whose name starts with `forward`. Read from `nft -j list`.
pub fn dropped_destinations(ns: &Netns) -> Result<Vec<Span>> {
    let j: serde_json::Value =
        serde_json::from_str(&ns.run(&["nft", "-j", "list", "table", "inet", TABLE])?)
            .context("parse nft -j")?;
    let items = j["nftables"].as_array().cloned().unwrap_or_default();
    let mut sets = serde_json::Map::new();
    for it in &items {
        if let Some(s) = it.get("set") {
            if let Some(name) = s["name"].as_str() {
                sets.insert(name.to_string(), s.get("elem").cloned().unwrap_or_default());
            }
        }
    }
    let mut out = Vec::new();
    for it in &items {
        let Some(r) = it.get("rule") else { continue };
        if !r["chain"]
            .as_str()
            .unwrap_or_default()
            .starts_with("forward")
        {
            continue;
        }
        let expr = r["expr"].as_array().cloned().unwrap_or_default();
        if expr.last().is_none_or(|e| e.get("drop").is_none()) {
            continue;
        }
        for e in &expr {
            let m = &e["match"];
            if m["left"]["payload"]["field"].as_str() == Some("daddr")
                && matches!(m["op"].as_str(), Some("==") | Some("in"))
            {
                spans_of(&m["right"], &sets, &mut out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_with_handles() {
        let t = "table inet palisade { # handle 2\n\tset blocked_v4 { # handle 7\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.0/8 }\n\t}\n\tchain input { # handle 1\n\t\ttype filter hook input priority filter - 10; policy drop;\n\t\tiif \"lo\" accept # handle 11\n\t\tct state invalid drop # handle 12\n\t}\n\tchain input_tunnel { # handle 2\n\t\tip daddr 10.66.0.1 udp dport 53 accept # handle 16\n\t}\n}\n";
        let r = parse_rules(t);
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].chain.as_str(), r[0].index, r[0].handle),
            ("input", 0, 11)
        );
        assert_eq!(r[1].text, "ct state invalid drop");
        assert_eq!((r[2].chain.as_str(), r[2].index), ("input_tunnel", 0));
    }

    #[test]
    fn spans_cover_prefixes_and_ranges() {
        let p = Span::prefix("64:ff9b::".parse().unwrap(), 96);
        assert!(p.contains("64:ff9b::a9fe:a9fe".parse().unwrap()));
        assert!(!p.contains("64:ff9b:1::1".parse().unwrap()));
        assert!(!p.contains("10.0.0.1".parse().unwrap()));
        let q = Span::prefix("10.0.0.0".parse().unwrap(), 8);
        assert!(q.contains("10.99.0.80".parse().unwrap()));
        let all = Span::prefix("::".parse().unwrap(), 0);
        assert!(all.contains("2002::1".parse().unwrap()));
        let sets = serde_json::Map::new();
        let mut out = Vec::new();
        spans_of(
            &serde_json::json!({"set": [{"range": ["10.0.0.1", "10.0.0.9"]}, "168.63.129.16"]}),
            &sets,
            &mut out,
        );
        assert!(out[0].contains("10.0.0.5".parse().unwrap()));
        assert!(out[1].contains("168.63.129.16".parse().unwrap()));
    }
}
