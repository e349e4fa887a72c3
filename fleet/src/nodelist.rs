//! Signed node lists for client failover (docs/failover.md): `nodelist set`
//! publishes `regions/<region>.json` (nodelists role) in the repository, or
//! writes the same signed file standalone; `nodelist show` verifies and
//! prints one; `nodelist key` prints the public key clients pin.
//!
//! The file is signed with an ed25519 key: by default the repository's
//! `nodelists` role key (`<keys>/nodelists.pk8`), or `--key FILE` (any
//! ed25519 PKCS#8 key, the fleet key of a fleet without a repository).

use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;
use palisade_nodelist::{self as nl, NodeList, PublicKey, SigningKey};
use serde::Deserialize;
use serde_json::json;

use crate::trust::parse_expires;
use crate::{write_atomic, Expiries, Fleet, FleetError, Report};

fn input(what: impl std::fmt::Display) -> FleetError {
    FleetError::Input(what.to_string())
}

/// The nodes file `nodelist set` reads (TOML), in order of preference.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    pub node: Vec<NodeEntry>,
}

/// One `[[node]]` of the nodes file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    pub endpoint: SocketAddr,
    pub public_key: String,
    pub addresses: Vec<IpNet>,
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Build and validate a region's list from a nodes file.
pub fn build(region: &str, nodes_file: &Path, expires: &str) -> Result<NodeList, FleetError> {
    let now = now_unix();
    let text = std::fs::read_to_string(nodes_file)
        .map_err(|e| input(format!("nodes file {}: {e}", nodes_file.display())))?;
    let f: NodesFile = toml::from_str(&text)
        .map_err(|e| input(format!("nodes file {}: {e}", nodes_file.display())))?;
    let list = NodeList {
        version: nl::VERSION,
        region: region.into(),
        // Increases with every publication (one a second at most).
        serial: now as u64,
        expires: parse_expires(expires, now)?,
        nodes: f
            .node
            .into_iter()
            .map(|n| nl::Node {
                name: n.name,
                endpoint: n.endpoint,
                public_key: n.public_key,
                addresses: n.addresses,
            })
            .collect(),
    };
    list.validate()
        .map_err(|e| input(format!("nodes file {}: {e}", nodes_file.display())))?;
    Ok(list)
}

/// Read an ed25519 PKCS#8 key file.
pub fn signing_key(path: &Path) -> Result<SigningKey, FleetError> {
    let der = std::fs::read(path)
        .map_err(|e| FleetError::Repo(format!("key {}: {e}", path.display())))?;
    SigningKey::from_pkcs8(&der)
        .map_err(|e| FleetError::Repo(format!("key {}: {e}", path.display())))
}

fn summary(list: &NodeList) -> (String, serde_json::Value) {
    let mut text = format!(
        "region {} serial {} expires {} ({} node(s))",
        list.region,
        list.serial,
        jiff::Timestamp::from_second(list.expires)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        list.nodes.len()
    );
    for (i, n) in list.nodes.iter().enumerate() {
        let addrs: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
        text += &format!(
            "\n  {}. {} {} key {} tunnel {}",
            i + 1,
            n.name,
            n.endpoint,
            n.public_key,
            addrs.join(",")
        );
    }
    (text, serde_json::to_value(list).unwrap_or_default())
}

/// `nodelist set --out FILE --key KEY`: the standalone signed file.
pub fn set_standalone(
    region: &str,
    nodes_file: &Path,
    expires: &str,
    key: &Path,
    out: &Path,
) -> Result<Report, FleetError> {
    let list = build(region, nodes_file, expires)?;
    let k = signing_key(key)?;
    let bytes = nl::sign(&list, &k).map_err(|e| input(e.to_string()))?;
    write_atomic(out, &bytes)?;
    let (text, v) = summary(&list);
    Ok(Report {
        text: format!(
            "wrote {} signed by key {}: {text}",
            out.display(),
            k.public_key().key_id()
        ),
        json: json!({"ok": true, "result": "set", "file": out, "key_id": k.public_key().key_id(), "list": v}),
    })
}

/// `nodelist show FILE [--key BASE64]`: verified with the key, else checked
/// for everything but the signature (and says so).
pub fn show(file: &Path, keys: &[String]) -> Result<Report, FleetError> {
    let bytes =
        std::fs::read(file).map_err(|e| input(format!("node list {}: {e}", file.display())))?;
    let pks = keys
        .iter()
        .map(|k| PublicKey::from_base64(k).map_err(|e| input(format!("--key {k:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let list = if pks.is_empty() {
        nl::inspect(&bytes, now_unix())
    } else {
        nl::verify(&bytes, &pks, now_unix())
    }
    .map_err(|e| input(format!("node list {}: {e}", file.display())))?;
    let (mut text, v) = summary(&list);
    let verified = !pks.is_empty();
    if !verified {
        text += "\n(signature not checked: give --key to verify)";
    }
    Ok(Report {
        text,
        json: json!({"ok": true, "verified": verified, "list": v}),
    })
}

/// `nodelist key --key FILE`: the public key (base64) clients pin.
pub fn public_key(key: &Path) -> Result<Report, FleetError> {
    let pk = signing_key(key)?.public_key();
    Ok(Report {
        text: pk.to_base64(),
        json: json!({"ok": true, "public_key": pk.to_base64(), "key_id": pk.key_id()}),
    })
}

impl Fleet {
    /// `nodelist set --repo --keys`: publish `regions/<region>.json` (nodelists
    /// role), the envelope signed with `key` or the nodelists role key.
    pub async fn nodelist_set(
        &self,
        region: &str,
        nodes_file: &Path,
        expires: &str,
        key: Option<&Path>,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        let list = build(region, nodes_file, expires)?;
        let key_path = key
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.key_path(nl::ROLE));
        let k = signing_key(&key_path)?;
        let bytes = nl::sign(&list, &k).map_err(|e| input(e.to_string()))?;
        let t = nl::target(region);
        self.put_targets(nl::ROLE, vec![(t.clone(), bytes)], &[], exp)
            .await?;
        let (text, v) = summary(&list);
        Ok(Report {
            text: format!(
                "published {t} signed by key {}: {text}",
                k.public_key().key_id()
            ),
            json: json!({"ok": true, "result": "set", "target": t, "key_id": k.public_key().key_id(), "list": v}),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_file_errors_name_the_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("nodes.toml");
        std::fs::write(&f, "[[node]]\nname = \"edge-1\"\nendpoint = \"203.0.113.10:51820\"\npublic_key = \"AAAA\"\naddresses = [\"10.66.0.1/16\"]\n").unwrap();
        let e = build("eu", &f, "30d").unwrap_err().to_string();
        assert!(
            e.contains("nodes.toml") && e.contains("nodes[0].public_key"),
            "{e}"
        );
        std::fs::write(
            &f,
            "[[node]]\nname = \"edge-1\"\nendpoint = \"edge.example:51820\"\n",
        )
        .unwrap();
        let e = build("eu", &f, "30d").unwrap_err().to_string();
        assert!(e.contains("endpoint"), "{e}");
        let e = build("eu", &f, "soon").unwrap_err().to_string();
        assert!(e.contains("endpoint") || e.contains("expiry"), "{e}");
    }
}
