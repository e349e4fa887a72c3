//! The control socket protocol shared by palisaded and the `palisade` CLI:
//! one JSON request line, one JSON response line, per connection.
//!
//! Responses carry aggregates and operator-given data only: never a client's
//! endpoint address or anything about its traffic.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Requests are capped: nothing legitimate comes near this.
pub const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    PeersList,
    PeersAdd {
        name: String,
        public_key: String,
        #[serde(default)]
        addresses: Vec<String>,
        #[serde(default)]
        tier: Option<String>,
        #[serde(default)]
        preshared_key: Option<String>,
    },
    PeersRemove {
        peer: String,
    },
    Reload,
    Plan,
    ClientConfig {
        peer: String,
    },
    DnsStats,
    /// The update journal, progress and the last check (docs/updates.md).
    UpdateStatus,
    /// Poll the repository now instead of at the next interval.
    UpdateCheck,
    /// Install from `source`: a repository URL (`http://`, `https://`,
    /// `file:///`), a repository directory, or an image file that must be a
    /// signed target of the node's repository. Returns once the install has
    /// started; progress and the outcome are in `UpdateStatus`.
    UpdateApply {
        source: String,
        #[serde(default)]
        version: Option<String>,
        /// Reboot into the new slot as soon as it is written (default true).
        #[serde(default = "default_true")]
        reboot: bool,
    },
    /// The node's identity: `{"node_id", "public_key", "enrolled", "name",
    /// "region"}`. `node_id` is derived from the identity public key (the
    /// ed25519 key made on the node at first boot, which never leaves it);
    /// `name` and `region` are the fleet's (null before enrolment).
    Identity,
    /// Fleet trust state: `{"enrolled", "revoked", "repository",
    /// "last_check", "last_error": {"kind", "message"}, "config": {"sha256",
    /// "role_version", "applied_at"}, "grants": {"active", "rejected",
    /// "next_expiry"}, "lists": [names], "poll_secs"}`. Aggregates only:
    /// counts of grants, never a client's key or address.
    FleetStatus,
    /// Forget the enrolment and the identity and return to factory state
    /// (answered later; refused unless `confirm` is true).
    FactoryReset {
        #[serde(default)]
        confirm: bool,
    },
}

fn default_true() -> bool {
    true
}

/// What kind of failure a refused request met: stable on the wire, so
/// scripts can branch on it; the message says the details.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request itself is malformed (not JSON, an unknown command, a bad argument).
    BadRequest,
    /// The node config (or the peers file with a change applied) fails validation.
    InvalidConfig,
    /// The named peer does not exist (or lives where the request cannot change it).
    NotFound,
    /// No valid config has been loaded yet, or a subsystem is not running.
    Unavailable,
    /// A file or the kernel refused (I/O, netlink, nft).
    System,
    /// The node is fleet-managed: the change belongs in the fleet
    /// repository (e.g. peers are client grants), not on the node.
    FleetManaged,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response { ok: true, error: None, kind: None, data }
    }
    pub fn err(kind: ErrorKind, msg: impl Into<String>) -> Response {
        Response { ok: false, error: Some(msg.into()), kind: Some(kind), data: serde_json::Value::Null }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to {path}: {source} (is palisaded running? are you root?)")]
    Connect { path: String, source: std::io::Error },
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad response from palisaded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{message}")]
    Refused { kind: Option<ErrorKind>, message: String },
}

/// Send one request and wait for its response (the CLI side).
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<serde_json::Value, ControlError> {
    let mut s = UnixStream::connect(socket)
        .map_err(|source| ControlError::Connect { path: socket.display().to_string(), source })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut buf = String::new();
    BufReader::new(s.take(16 * 1024 * 1024)).read_line(&mut buf)?;
    let resp: Response = serde_json::from_str(&buf)?;
    if resp.ok {
        Ok(resp.data)
    } else {
        Err(ControlError::Refused { kind: resp.kind, message: resp.error.unwrap_or_else(|| "request failed".into()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r = Request::PeersAdd {
            name: "a".into(),
            public_key: "k".into(),
            addresses: vec![],
            tier: None,
            preshared_key: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"cmd":"peers-add","name":"a","public_key":"k","addresses":[],"tier":null,"preshared_key":null}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(), Request::Status);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        let e = Response::err(ErrorKind::InvalidConfig, "node.toml:3: bad");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ok":false,"error":"node.toml:3: bad","kind":"invalid-config","data":null}"#
        );
        assert_eq!(serde_json::to_string(&Response::ok(serde_json::json!(1))).unwrap(), r#"{"ok":true,"data":1}"#);
    }

    #[test]
    fn fleet_requests_have_stable_shapes() {
        let cases = [
            (Request::Identity, r#"{"cmd":"identity"}"#),
            (Request::FleetStatus, r#"{"cmd":"fleet-status"}"#),
            (Request::FactoryReset { confirm: true }, r#"{"cmd":"factory-reset","confirm":true}"#),
        ];
        for (req, wire) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Request>(wire).unwrap(), req);
        }
        // A reset is never confirmed by default, and unknown fields are refused.
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"factory-reset"}"#).unwrap(), Request::FactoryReset { confirm: false });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"fleet_status"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"factory-reset","confirm":"yes"}"#).is_err());
        let e = Response::err(ErrorKind::FleetManaged, "peers come from the fleet");
        assert!(serde_json::to_string(&e).unwrap().contains(r#""kind":"fleet-managed""#));
    }
}
