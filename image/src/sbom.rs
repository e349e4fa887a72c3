//! manifest.json (what went in, what came out) and an SPDX 2.3 SBOM.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use crate::stages::fetch::Deb;
use palisade_board::BoardDef;

/// Everything the manifest and SBOM record about a build.
pub struct BuildRecord {
    pub board: BoardDef,
    pub version: String,
    pub epoch: u64,
    pub debs: Vec<Deb>,
    pub binaries: Vec<(String, String, u64)>, // (path in image, sha256, size)
    pub modules: Vec<String>,
    pub libs: Vec<String>,
    pub outputs: Vec<(String, String, u64)>, // (file, sha256, size)
    /// The slot image (update payload): (file, sha256, size).
    pub update: Option<(String, String, u64)>,
    pub slot_sizes: Vec<(String, u64)>, // (partition, bytes used)
    pub layout: Layout,
}

pub fn manifest(r: &BuildRecord) -> Value {
    json!({
        "format": "palisade-image-manifest/1",
        "board": r.board.name,
        "version": r.version,
        "source_date_epoch": r.epoch,
        "kernel": { "package": r.board.kernel.package, "version": r.board.kernel.version, "release": r.board.kernel.release },
        "packages": r.debs.iter().map(|d| json!({
            "name": d.name, "version": d.version, "sha256": d.sha256, "size": d.size,
            "file": d.path.file_name().map(|f| f.to_string_lossy().into_owned()),
        })).collect::<Vec<_>>(),
        "binaries": r.binaries.iter().map(|(p, h, s)| json!({"path": p, "sha256": h, "size": s})).collect::<Vec<_>>(),
        "shared_libraries": r.libs,
        "kernel_modules": r.modules,
        "components": r.slot_sizes.iter().map(|(n, s)| json!({"name": n, "size": s})).collect::<Vec<_>>(),
        "partitions": r.layout.parts.iter().map(|p| json!({
            "name": p.name, "type": p.type_guid, "uuid": p.uuid, "offset": p.offset, "size": p.size,
        })).collect::<Vec<_>>(),
        "disk_guid": r.layout.disk_guid,
        "outputs": r.outputs.iter().map(|(f, h, s)| json!({"file": f, "sha256": h, "size": s})).collect::<Vec<_>>(),
        "update": r.update.as_ref().map(|(f, h, s)| json!({"file": f, "sha256": h, "size": s})),
    })
}

/// Crates linked into palisaded and palisade (`cargo tree`, normal edges only).
fn rust_crates(ws: &Path, target: &str) -> BTreeSet<(String, String)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--quiet",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--target",
            target,
            "-p",
            "palisaded",
            "-p",
            "palisade-cli",
            "-f",
            "{p}",
        ])
        .current_dir(ws)
        .output();
    let mut set = BTreeSet::new();
    if let Ok(o) = out {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let mut it = l.split_whitespace();
            if let (Some(n), Some(v)) = (it.next(), it.next()) {
                if let Some(v) = v.strip_prefix('v') {
                    set.insert((n.to_string(), v.to_string()));
                }
            }
        }
    }
    set
}

fn spdx_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn iso8601(epoch: u64) -> String {
    // Civil-from-days (Howard Hinnant), UTC.
    let days = i64::try_from(epoch / 86400).unwrap_or(0);
    let secs = epoch % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn spdx(r: &BuildRecord, ws: &Path) -> Value {
    let mut packages = Vec::new();
    let mut rels = Vec::new();
    let image_id = "SPDXRef-image";
    let raw = r.outputs.first();
    packages.push(json!({
        "SPDXID": image_id,
        "name": format!("palisade-{}", r.board.name),
        "versionInfo": r.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": raw.map(|(_, h, _)| vec![json!({"algorithm": "SHA256", "checksumValue": h})]).unwrap_or_default(),
    }));
    rels.push(json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id}));
    for d in &r.debs {
        let id = format!("SPDXRef-deb-{}", spdx_id(&d.name));
        packages.push(json!({
            "SPDXID": id,
            "name": d.name,
            "versionInfo": d.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": d.sha256}],
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                "referenceLocator": format!("pkg:deb/debian/{}@{}?arch={}&distro=bookworm", d.name, d.version.replace(':', "%3A"), r.board.arch),
            }],
        }));
        rels.push(json!({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    for (n, v) in rust_crates(ws, &r.board.rust_target) {
        let id = format!("SPDXRef-crate-{}-{}", spdx_id(&n), spdx_id(&v));
        packages.push(json!({
            "SPDXID": id, "name": n, "versionInfo": v, "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": format!("pkg:cargo/{n}@{v}")}],
        }));
        rels.push(json!({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&packages).unwrap_or_default());
    let ns: String = h
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("palisade-{}-{}", r.board.name, r.version),
        "documentNamespace": format!("https://palisade.invalid/spdx/{}-{}-{ns}", r.board.name, r.version),
        "creationInfo": { "created": iso8601(r.epoch), "creators": ["Tool: palisade-image"] },
        "packages": packages,
        "relationships": rels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(update: Option<(String, String, u64)>) -> BuildRecord {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let board = BoardDef::load(&ws.join("board/boards"), "qemu-x86_64").unwrap();
        BuildRecord {
            layout: Layout::new(board.partitions, &[7; 32]),
            board,
            version: "1.2.3".into(),
            epoch: 1_700_000_000,
            debs: Vec::new(),
            binaries: Vec::new(),
            modules: Vec::new(),
            libs: Vec::new(),
            outputs: vec![(
                "palisade-qemu-x86_64-1.2.3.raw".into(),
                "aa".repeat(32),
                1 << 20,
            )],
            update,
            slot_sizes: Vec::new(),
        }
    }

    #[test]
    fn manifest_records_the_update_payload() {
        let m = manifest(&record(Some((
            "palisade-qemu-x86_64-1.2.3.img".into(),
            "bb".repeat(32),
            4096,
        ))));
        assert_eq!(m["version"], "1.2.3");
        assert_eq!(
            m["update"],
            json!({"file": "palisade-qemu-x86_64-1.2.3.img", "sha256": "bb".repeat(32), "size": 4096})
        );
        // Not one of the disk outputs: those stay the raw (and qcow2).
        assert_eq!(m["outputs"].as_array().unwrap().len(), 1);
        assert!(manifest(&record(None))["update"].is_null());
    }

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }
}
