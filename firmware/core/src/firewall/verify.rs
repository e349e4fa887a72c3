//! Read-back check: the live table (`nft -j list table`) against the
//! [`Ruleset`] that was rendered. Every set must hold exactly the rendered
//! addresses (compared as merged intervals, since the kernel merges
//! adjacent and overlapping prefixes), every chain must exist with its hook
//! policy and exactly the rendered number of rules, and nothing else may be
//! in the table.

use super::{FirewallError, Ruleset, Stale};
use ipnet::IpNet;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Inclusive address intervals, IPv4 mapped into the low 2^32 of u128.
type Intervals = Vec<(u128, u128)>;

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn merge(mut v: Intervals) -> Intervals {
    v.sort_unstable();
    let mut out: Intervals = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn net_interval(n: &IpNet) -> (u128, u128) {
    (to_u128(n.network()), to_u128(n.broadcast()))
}

fn parse_ip(v: &Value) -> Option<u128> {
    v.as_str()?.parse::<IpAddr>().ok().map(to_u128)
}

/// One element of a set as nft prints it: an address, a prefix, a range, or
/// any of those wrapped in `{"elem": {"val": ...}}`.
fn elem_interval(v: &Value) -> Option<(u128, u128)> {
    if let Some(a) = parse_ip(v) {
        return Some((a, a));
    }
    if let Some(inner) = v.get("elem").and_then(|e| e.get("val")) {
        return elem_interval(inner);
    }
    if let Some(p) = v.get("prefix") {
        let addr: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
        let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
        return IpNet::new(addr, len).ok().map(|n| net_interval(&n.trunc()));
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        return Some((parse_ip(r.first()?)?, parse_ip(r.get(1)?)?));
    }
    None
}

/// Chains and sets of the live table that `want` does not have, or base
/// chains hooked elsewhere than rendered: the next apply deletes them
/// (after flushing every rule, so no jump still points at them).
pub fn stale(live: &Value, want: &Ruleset) -> Stale {
    let mut out = Stale::default();
    for o in live.get("nftables").and_then(Value::as_array).into_iter().flatten() {
        if let Some(c) = o.get("chain") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let hook = c.get("hook").and_then(Value::as_str);
            match want.chains.iter().find(|w| w.name == name) {
                Some(w) if hook == want_hook(w) => {}
                _ => out.chains.push(name.to_string()),
            }
        } else if let Some(set) = o.get("set") {
            let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
            let ty = set.get("type").and_then(Value::as_str);
            match want.sets.iter().find(|w| w.name == name) {
                Some(w) if ty == Some(if w.v6 { "ipv6_addr" } else { "ipv4_addr" }) => {}
                _ => out.sets.push(name.to_string()),
            }
        }
    }
    out
}

fn want_hook(c: &super::ChainDef) -> Option<&'static str> {
    c.hook.and_then(|h| h.split_whitespace().skip_while(|w| *w != "hook").nth(1))
}

/// Check `live` (the JSON of `nft -j list table inet palisade`) against
/// `want`. Returns a description of every difference.
pub(crate) fn check(live: &Value, want: &Ruleset) -> Result<(), FirewallError> {
    let objects = live.get("nftables").and_then(Value::as_array).ok_or_else(|| FirewallError::Verify("no nftables array in nft -j output".into()))?;
    let mut sets: BTreeMap<String, Intervals> = BTreeMap::new();
    let mut chains: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    let mut rules: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for o in objects {
        if let Some(s) = o.get("set") {
            let name = s.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let mut iv = Vec::new();
            for e in s.get("elem").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                match elem_interval(e) {
                    Some(x) => iv.push(x),
                    None => problems.push(format!("set {name}: unreadable element {e}")),
                }
            }
            sets.insert(name, merge(iv));
        } else if let Some(c) = o.get("chain") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let hook = c.get("hook").and_then(Value::as_str).map(str::to_string);
            let policy = c.get("policy").and_then(Value::as_str).map(str::to_string);
            chains.insert(name, (hook, policy));
        } else if let Some(r) = o.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default().to_string();
            *rules.entry(chain).or_default() += 1;
        }
    }
    for s in &want.sets {
        let expect = merge(s.elems.iter().map(net_interval).collect());
        match sets.remove(s.name) {
            None => problems.push(format!("set {} is missing", s.name)),
            Some(got) if got != expect => problems.push(format!(
                "set {} holds {} interval(s), the render {} (elements differ)",
                s.name,
                got.len(),
                expect.len()
            )),
            Some(_) => {}
        }
    }
    for name in sets.keys() {
        problems.push(format!("unexpected set {name}"));
    }
    for c in &want.chains {
        match chains.remove(c.name) {
            None => problems.push(format!("chain {} is missing", c.name)),
            Some((hook, policy)) => {
                let want_hook = want_hook(c);
                if hook.as_deref() != want_hook {
                    problems.push(format!("chain {}: hook {hook:?}, rendered {want_hook:?}", c.name));
                }
                if c.hook.is_some() {
                    let want_policy = if c.policy_drop { "drop" } else { "accept" };
                    if policy.as_deref() != Some(want_policy) {
                        problems.push(format!("chain {}: policy {policy:?}, rendered {want_policy}", c.name));
                    }
                }
            }
        }
        let got = rules.remove(c.name).unwrap_or(0);
        if got != c.rules.len() {
            problems.push(format!("chain {}: {got} rule(s), rendered {}", c.name, c.rules.len()));
        }
    }
    for name in chains.keys() {
        problems.push(format!("unexpected chain {name}"));
    }
    for (chain, n) in rules {
        problems.push(format!("{n} rule(s) in unknown chain {chain}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FirewallError::Verify(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{ChainDef, SetDef};

    fn want() -> Ruleset {
        Ruleset {
            sets: vec![SetDef { name: "b4", v6: false, elems: vec!["10.0.0.0/8".parse().unwrap(), "11.0.0.0/8".parse().unwrap()] }],
            chains: vec![ChainDef { name: "input", hook: Some("type filter hook input priority 0"), policy_drop: true, rules: vec!["accept".into()] }],
        }
    }

    fn live(elems: Value, rules: usize) -> Value {
        let mut objs = vec![
            serde_json::json!({"metainfo": {}}),
            serde_json::json!({"table": {"family": "inet", "name": "palisade"}}),
            serde_json::json!({"set": {"name": "b4", "elem": elems}}),
            serde_json::json!({"chain": {"name": "input", "hook": "input", "policy": "drop"}}),
        ];
        for _ in 0..rules {
            objs.push(serde_json::json!({"rule": {"chain": "input", "expr": []}}));
        }
        serde_json::json!({ "nftables": objs })
    }

    #[test]
    fn merged_prefixes_match_and_a_lingering_element_does_not() {
        // The kernel merges 10/8 and 11/8 into one range.
        check(&live(serde_json::json!([{"range": ["10.0.0.0", "11.255.255.255"]}]), 1), &want()).unwrap();
        check(&live(serde_json::json!([{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "11.0.0.0", "len": 8}}]), 1), &want()).unwrap();
        let err = check(
            &live(serde_json::json!([{"range": ["10.0.0.0", "11.255.255.255"]}, {"elem": {"val": "192.0.2.1"}}]), 1),
            &want(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("set b4"), "{err}");
    }

    #[test]
    fn missing_rule_and_foreign_chain_are_reported() {
        let err = check(&live(serde_json::json!([{"range": ["10.0.0.0", "11.255.255.255"]}]), 0), &want()).unwrap_err();
        assert!(err.to_string().contains("chain input: 0 rule(s), rendered 1"), "{err}");
        let mut l = live(serde_json::json!([{"range": ["10.0.0.0", "11.255.255.255"]}]), 1);
        l["nftables"].as_array_mut().unwrap().push(serde_json::json!({"chain": {"name": "sneaky"}}));
        assert!(check(&l, &want()).unwrap_err().to_string().contains("unexpected chain sneaky"));
    }
}
