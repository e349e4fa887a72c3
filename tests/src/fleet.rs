//! Fleet-trust test support: `palisade-fleet`'s fleet commands (issuer,
//! node configs, grants, revocations, lists, key rotation, enrolment
//! bundles) on a test repository, and what the node reports about them.

use anyhow::{anyhow, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::update::Fleet;

impl Fleet {
    /// `issuer init`: the grant issuer's key and `jwks.json`.
    pub fn issuer_init(&self) -> Result<()> {
        self.fleet(&["issuer", "init"]).map(|_| ())
    }

    /// `enrol --bundle-out`: the enrolment bundle for node `node_id` (a
    /// config drive's `palisade/enrol.json`).
    pub fn enrol_bundle(&self, node_id: &str, repository: &str, name: &str, region: &str, out: &Path) -> Result<()> {
        let o = out.to_string_lossy();
        self.fleet(&[
            "enrol",
            "--bundle-out",
            &o,
            "--node-id",
            node_id,
            "--repository",
            repository,
            "--node-name",
            name,
            "--region",
            region,
        ])
        .map(|_| ())
    }

    /// `config set --node ID FILE`.
    pub fn config_set(&self, node_id: &str, text: &str, dir: &Path) -> Result<()> {
        let f = dir.join(format!("config-{node_id}.toml"));
        std::fs::write(&f, text)?;
        let fs = f.to_string_lossy();
        self.fleet(&["config", "set", "--node", node_id, &fs, "--force"]).map(|_| ())
    }

    /// `grant issue`; returns the grant id.
    pub fn grant_issue(&self, node_id: &str, peer: &str, addresses: &[String], expires: &str) -> Result<String> {
        let mut args: Vec<&str> = vec!["grant", "issue", "--node", node_id, "--peer", peer, "--expires", expires];
        for a in addresses {
            args.extend(["--address", a.as_str()]);
        }
        let v = self.fleet(&args)?;
        jti_of(&v).ok_or_else(|| anyhow!("grant issue printed no grant id: {v}"))
    }

    /// `revoke ARGS` (`--grant JTI`, `--client KEY`, `--node ID`).
    pub fn revoke(&self, args: &[&str]) -> Result<()> {
        let mut a = vec!["revoke"];
        a.extend_from_slice(args);
        self.fleet(&a).map(|_| ())
    }

    /// `sign-as ROLE TARGET FILE` (test hook: a role signing outside its paths).
    pub fn sign_as(&self, role: &str, target: &str, file: &Path) -> Result<()> {
        let f = file.to_string_lossy();
        self.fleet(&["sign-as", role, target, &f]).map(|_| ())
    }

    /// `keys rotate ROLE`.
    pub fn rotate(&self, role: &str) -> Result<()> {
        self.fleet(&["keys", "rotate", role]).map(|_| ())
    }

    /// `list set NAME FILE`.
    pub fn list_set(&self, name: &str, file: &Path) -> Result<()> {
        let f = file.to_string_lossy();
        self.fleet(&["list", "set", name, &f]).map(|_| ())
    }

    /// Publish with `publish` on a staging copy of the repository, change
    /// one byte of `target`'s file there (same length: only the hash can
    /// tell), then swap the copy in: a node polling meanwhile sees the
    /// repository before, then the tampered one, never the good publish.
    /// Returns the tampered file and its signed bytes (to repair it).
    pub fn publish_tampered(&self, target: &str, publish: impl FnOnce(&Fleet) -> Result<()>) -> Result<(PathBuf, Vec<u8>)> {
        let stage = self.repo.with_extension("staging");
        let old = self.repo.with_extension("old");
        let _ = std::fs::remove_dir_all(&stage);
        let _ = std::fs::remove_dir_all(&old);
        self.snapshot(&stage)?;
        let staged = Fleet { bin: self.bin.clone(), repo: stage.clone(), keys: self.keys.clone() };
        publish(&staged)?;
        let f = staged.target_file(target)?;
        let signed = std::fs::read(&f)?;
        let mut bytes = signed.clone();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x01;
        std::fs::write(&f, &bytes)?;
        std::fs::rename(&self.repo, &old)?;
        std::fs::rename(&stage, &self.repo)?;
        std::fs::remove_dir_all(&old)?;
        Ok((self.target_file(target)?, signed))
    }

    /// The content-addressed file of `target` in the repository,
    /// `targets/<sha256>.<target>` (a target name with `/` makes the first
    /// component a directory); of several versions, the newest.
    pub fn target_file(&self, target: &str) -> Result<PathBuf> {
        let (first, rest) = target.split_once('/').unwrap_or((target, ""));
        let dir = self.repo.join("targets");
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (hash, tail) = name.split_once('.')?;
                if hash.len() != 64 || tail != first {
                    return None;
                }
                let p = if rest.is_empty() { e.path() } else { e.path().join(rest) };
                Some((p.metadata().ok()?.modified().ok()?, p))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, p)| p).ok_or_else(|| anyhow!("no file for target {target} under {}", dir.display()))
    }
}

/// The grant id in `grant issue`'s JSON output.
fn jti_of(v: &Value) -> Option<String> {
    ["jti", "id", "grant_id"]
        .iter()
        .find_map(|k| v[*k].as_str().or_else(|| v["grant"][*k].as_str()))
        .map(str::to_string)
}
