//! The only code that runs `nft`: check (`nft -c`), apply (`nft -f`, one
//! transaction) and read back (`nft -j list table`) to verify against the
//! render. The drift check of every pass reads the table over netlink
//! (`nfnl.rs`) unless [`TableReader::NftJson`] is chosen.

use super::{Ruleset, TABLE};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {cmd}: {source} (is nftables installed?)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("nft rejected the ruleset ({stage}): {stderr}")]
    Rejected { stage: &'static str, stderr: String },
    #[error("the loaded table does not match what was applied: {0}")]
    Verify(String),
    #[error("cannot read the nftables ruleset over netlink: {0}")]
    Read(String),
}

/// How [`NftCli`] reads the live table for its fingerprint (the drift check
/// of every reconcile pass and of `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableReader {
    /// Dumps over `NETLINK_NETFILTER`, hashed; no process is spawned.
    #[default]
    Netlink,
    /// `nft -j list table`, normalised (the reader before netlink; kept for
    /// bench/nft/run.sh's side-by-side figures).
    NftJson,
}

/// Side effects on the firewall. [`NftCli`] is real; [`RecordingFirewall`]
/// records scripts for unit tests of callers.
pub trait Firewall: Send + Sync {
    /// Dry-run, apply atomically, read the live table back, check it against
    /// `rules`, and return its fingerprint.
    fn apply(&self, rules: &Ruleset) -> Result<String, FirewallError>;
    /// Fingerprint of the live table, `None` if it does not exist.
    fn fingerprint(&self) -> Result<Option<String>, FirewallError>;
}

/// Runs the `nft` binary (found on PATH, or the given path).
pub struct NftCli {
    pub nft: String,
    pub reader: TableReader,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli { nft: std::env::var("PALISADE_NFT").unwrap_or_else(|_| "nft".into()), reader: TableReader::default() }
    }
}

impl NftCli {
    fn run(&self, args: &[&str], stdin: Option<&str>, stage: &'static str) -> Result<String, FirewallError> {
        let cmd = format!("{} {}", self.nft, args.join(" "));
        let mut child = Command::new(&self.nft)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
        if let Some(text) = stdin {
            let mut si = child.stdin.take().expect("piped");
            si.write_all(text.as_bytes()).map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
        }
        let out = child.wait_with_output().map_err(|source| FirewallError::Spawn { cmd, source })?;
        if !out.status.success() {
            return Err(FirewallError::Rejected {
                stage,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Normalise `nft -j list table` output: drop handles and the metainfo
/// object (they change on every load), keep everything else in order.
pub(crate) fn normalise(json: &str) -> Result<(serde_json::Value, String), FirewallError> {
    let mut v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| FirewallError::Verify(format!("unparsable nft -j output: {e}")))?;
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("handle");
                m.remove("metainfo");
                for (_, x) in m.iter_mut() {
                    strip(x);
                }
            }
            serde_json::Value::Array(a) => {
                a.retain(|x| x.get("metainfo").is_none());
                for x in a.iter_mut() {
                    strip(x);
                }
            }
            _ => {}
        }
    }
    strip(&mut v);
    let fp = v.to_string();
    Ok((v, fp))
}

impl NftCli {
    fn live(&self) -> Result<Option<(serde_json::Value, String)>, FirewallError> {
        match self.run(&["-j", "list", "table", "inet", TABLE], None, "list") {
            Ok(json) => Ok(Some(normalise(&json)?)),
            Err(e @ FirewallError::Rejected { .. }) => {
                // Missing, or a real failure? Ask for the list of tables (no
                // locale-dependent error text involved).
                let tables = self.run(&["-j", "list", "tables"], None, "list tables")?;
                let v: serde_json::Value = serde_json::from_str(&tables)
                    .map_err(|err| FirewallError::Verify(format!("unparsable nft -j list tables output: {err}")))?;
                let ours = v["nftables"].as_array().into_iter().flatten().any(|o| {
                    o["table"]["name"] == TABLE && o["table"]["family"] == "inet"
                });
                if ours {
                    Err(e)
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl Firewall for NftCli {
    fn apply(&self, rules: &Ruleset) -> Result<String, FirewallError> {
        // Whatever is live that the render lacks goes in the same transaction.
        let stale = match self.live()? {
            Some((v, _)) => super::verify::stale(&v, rules),
            None => super::Stale::default(),
        };
        let script = rules.script_over(&stale);
        self.run(&["-c", "-f", "-"], Some(&script), "check")?;
        self.run(&["-f", "-"], Some(&script), "apply")?;
        let missing = || FirewallError::Verify(format!("table inet {TABLE} missing right after apply"));
        let before = match self.reader {
            TableReader::Netlink => Some(super::nfnl::fingerprint(TABLE)?.ok_or_else(missing)?),
            TableReader::NftJson => None,
        };
        let (v, json_fp) = self.live()?.ok_or_else(missing)?;
        super::verify::check(&v, rules)?;
        match before {
            None => Ok(json_fp),
            Some(before) => {
                // The fingerprint must be of the table that was checked.
                if super::nfnl::fingerprint(TABLE)?.as_ref() != Some(&before) {
                    return Err(FirewallError::Verify(format!("table inet {TABLE} changed during its read-back")));
                }
                Ok(before)
            }
        }
    }

    fn fingerprint(&self) -> Result<Option<String>, FirewallError> {
        match self.reader {
            TableReader::Netlink => super::nfnl::fingerprint(TABLE),
            TableReader::NftJson => Ok(self.live()?.map(|(_, fp)| fp)),
        }
    }
}

/// Records applied scripts; the fingerprint is the last script. While
/// `refuse` is set, every apply fails as nft would (for fail-closed tests
/// of callers).
#[derive(Default)]
pub struct RecordingFirewall {
    pub applied: Mutex<Vec<String>>,
    pub live: Mutex<Option<String>>,
    pub refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Firewall for RecordingFirewall {
    fn apply(&self, rules: &Ruleset) -> Result<String, FirewallError> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(FirewallError::Rejected { stage: "apply", stderr: "refused by the test".into() });
        }
        let script = rules.script();
        self.applied.lock().expect("poisoned").push(script.clone());
        *self.live.lock().expect("poisoned") = Some(script.clone());
        Ok(script)
    }
    fn fingerprint(&self) -> Result<Option<String>, FirewallError> {
        Ok(self.live.lock().expect("poisoned").clone())
    }
}
