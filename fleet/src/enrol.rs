//! The host side of enrolment (docs/fleet.md): over the node's serial
//! console with the line protocol of [`palisade_update::fleet`] (`Hello`
//! with a nonce, the node's `Identity` with its proof of possession,
//! `Enrol` with the bundle, `Enrolled` or `Refused`), or as a bundle file for
//! a config drive (`palisade/enrol.json`).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use palisade_update::fleet::{
    decode_line, encode_line, enrol_proof_message, node_id, valid_name, valid_node_id,
    EnrolmentBundle, HostMsg, NodeMsg,
};
use serde_json::json;

use crate::trust::parse_key32;
use crate::{repo_err, write_atomic, Fleet, FleetError, Report};

/// How often `Hello` is repeated until the node answers.
pub const HELLO_EVERY: Duration = Duration::from_secs(2);
/// The longest protocol line accepted (a line longer than this is dropped).
pub const MAX_LINE: usize = 64 * 1024;

/// What the operator gives for a node.
#[derive(Debug, Clone)]
pub struct EnrolRequest {
    pub name: String,
    pub region: String,
    pub repositories: Vec<String>,
    pub ca_pem: Option<String>,
    pub mesh: Vec<String>,
}

fn input(what: impl std::fmt::Display) -> FleetError {
    FleetError::Input(what.to_string())
}

/// The bundle for `node_id`, checked: names, URLs, mesh prefixes, and the
/// repository's `1.root.json` as the trust anchor.
pub fn build_bundle(
    f: &Fleet,
    req: &EnrolRequest,
    node_id: &str,
) -> Result<EnrolmentBundle, FleetError> {
    if !valid_node_id(node_id) {
        return Err(input(format!(
            "node id {node_id:?}: 16 lowercase hex digits"
        )));
    }
    for (v, what) in [(&req.name, "--node-name"), (&req.region, "--region")] {
        if !valid_name(v) {
            return Err(input(format!(
                "{what} {v:?}: 1..=64 of a-z, 0-9, '-', not starting with '-'"
            )));
        }
    }
    if req.repositories.is_empty() {
        return Err(input("give at least one --repository URL"));
    }
    for r in &req.repositories {
        let u = url::Url::parse(r).map_err(|e| input(format!("--repository {r:?}: {e}")))?;
        if !matches!(u.scheme(), "http" | "https" | "file") {
            return Err(input(format!(
                "--repository {r:?}: http, https or file URL"
            )));
        }
    }
    for m in &req.mesh {
        m.parse::<ipnet::IpNet>()
            .map_err(|e| input(format!("--mesh {m:?}: {e} (use CIDR)")))?;
    }
    if let Some(p) = &req.ca_pem {
        if !p.contains("-----BEGIN CERTIFICATE-----") {
            return Err(input("--ca: no PEM certificate in the file"));
        }
    }
    let root_path = f.repo.join("metadata").join("1.root.json");
    let root: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&root_path)
            .map_err(|e| repo_err(format!("{}: {e} (run `repo init`)", root_path.display())))?,
    )
    .map_err(|e| repo_err(format!("{}: {e}", root_path.display())))?;
    Ok(EnrolmentBundle {
        version: 1,
        node_id: node_id.to_string(),
        fleet_root: root,
        repositories: req.repositories.clone(),
        ca_pem: req.ca_pem.clone(),
        name: req.name.clone(),
        region: req.region.clone(),
        mesh: req.mesh.clone(),
    })
}

/// `enrol --bundle-out`: write the bundle JSON; with the node's public key
/// the node is added to the inventory as well.
pub fn write_bundle(
    f: &Fleet,
    req: &EnrolRequest,
    node: &str,
    public_key: Option<&str>,
    out: &Path,
) -> Result<Report, FleetError> {
    let b = build_bundle(f, req, node)?;
    if let Some(pk) = public_key {
        let k = parse_key32(pk, "--public-key")?;
        if node_id(&k) != node {
            return Err(input(format!(
                "--node-id {node} does not belong to --public-key (its id is {})",
                node_id(&k)
            )));
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&b).map_err(|e| FleetError::Other(e.to_string()))?;
    bytes.push(b'\n');
    write_atomic(out, &bytes)?;
    if let Some(pk) = public_key {
        f.node_add(node, pk, &req.name, &req.region)?;
    }
    Ok(Report {
        text: format!("wrote the enrolment bundle for {node} to {} (copy it to palisade/enrol.json on the config drive)", out.display()),
        json: json!({"ok": true, "result": "written", "node_id": node, "file": out}),
    })
}

/// Open a serial port at 115200 8N1.
pub fn open_serial(path: &Path) -> Result<Box<dyn serialport::SerialPort>, FleetError> {
    serialport::new(path.to_string_lossy(), 115_200)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::One)
        .flow_control(serialport::FlowControl::None)
        .timeout(Duration::from_millis(100))
        .open()
        .map_err(|e| input(format!("--serial {}: {e}", path.display())))
}

/// Lines from a port whose reads time out (the port's own read timeout is
/// the polling step).
struct Lines<'a, P> {
    port: &'a mut P,
    buf: Vec<u8>,
}

impl<P: Read> Lines<'_, P> {
    /// The next complete line, or `None` if none arrived in one read.
    fn next(&mut self) -> Result<Option<String>, FleetError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                self.buf.clear(); // an overlong line is noise, not protocol
            }
            let mut b = [0u8; 4096];
            match self.port.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(FleetError::Other(format!("serial read: {e}"))),
            }
        }
    }
}

fn send<P: Write>(port: &mut P, msg: &HostMsg) -> Result<(), FleetError> {
    port.write_all(encode_line(msg).as_bytes())
        .and_then(|_| port.flush())
        .map_err(|e| FleetError::Other(format!("serial write: {e}")))
}

/// Check an `Identity` answer to `nonce`: the id is the key's, the proof
/// verifies, the node is not enrolled. Returns the public key (base64).
pub fn check_identity(nonce: &[u8], msg: &NodeMsg) -> Result<(String, String), FleetError> {
    let NodeMsg::Identity {
        node_id: id,
        public_key,
        proof,
        enrolled,
    } = msg
    else {
        return Err(FleetError::Other("not an identity message".into()));
    };
    let pk =
        parse_key32(public_key, "the node's public key").map_err(|e| repo_err(e.to_string()))?;
    if node_id(&pk) != *id {
        return Err(repo_err(format!(
            "the node says its id is {id} but its key's id is {}: refused",
            node_id(&pk)
        )));
    }
    let sig = STANDARD
        .decode(proof)
        .map_err(|e| repo_err(format!("node {id}: proof is not base64 ({e}): refused")))?;
    UnparsedPublicKey::new(&ED25519, pk)
        .verify(&enrol_proof_message(nonce, &pk), &sig)
        .map_err(|_| {
            repo_err(format!(
                "node {id}: the proof of possession does not verify: refused"
            ))
        })?;
    if *enrolled {
        return Err(repo_err(format!(
            "node {id} is already enrolled; factory-reset it first"
        )));
    }
    Ok((id.clone(), STANDARD.encode(pk)))
}

/// `enrol --serial`: the whole exchange on `port` (reads must time out,
/// e.g. after 100 ms), then the node goes into the inventory.
pub fn enrol_serial<P: Read + Write>(
    f: &Fleet,
    req: &EnrolRequest,
    port: &mut P,
    timeout: Duration,
) -> Result<Report, FleetError> {
    // Check what we can before talking to the node.
    build_bundle(f, req, "0000000000000000")?;
    let deadline = Instant::now() + timeout;
    let mut nonce = [0u8; 32];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| FleetError::Other("random number generator failed".into()))?;
    let hello = HostMsg::Hello {
        nonce: STANDARD.encode(nonce),
    };
    let mut last_hello: Option<Instant> = None;
    let mut lines = Lines {
        port,
        buf: Vec::new(),
    };
    let (id, pk) = loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(FleetError::Other(format!(
                "no identity from the node within {} s",
                timeout.as_secs()
            )));
        }
        if last_hello.is_none_or(|t| now.duration_since(t) >= HELLO_EVERY) {
            send(lines.port, &hello)?;
            last_hello = Some(now);
        }
        let Some(line) = lines.next()? else { continue };
        match decode_line::<NodeMsg>(&line) {
            Some(Ok(m @ NodeMsg::Identity { .. })) => break check_identity(&nonce, &m)?,
            Some(Ok(NodeMsg::Refused { kind, reason })) => {
                return Err(repo_err(format!("the node refused ({kind}): {reason}")))
            }
            _ => {} // log output, our own echo, stale answers
        }
    };
    let bundle = build_bundle(f, req, &id)?;
    send(lines.port, &HostMsg::Enrol { bundle })?;
    loop {
        if Instant::now() >= deadline {
            return Err(FleetError::Other(format!(
                "node {id} did not confirm enrolment within {} s",
                timeout.as_secs()
            )));
        }
        let Some(line) = lines.next()? else { continue };
        match decode_line::<NodeMsg>(&line) {
            Some(Ok(NodeMsg::Enrolled { node_id })) if node_id == id => break,
            Some(Ok(NodeMsg::Enrolled { node_id })) => {
                return Err(repo_err(format!(
                    "expected node {id} to confirm, got {node_id}"
                )))
            }
            Some(Ok(NodeMsg::Refused { kind, reason })) => {
                let hint = if kind == "already-enrolled" {
                    "; factory-reset it first"
                } else {
                    ""
                };
                return Err(repo_err(format!(
                    "node {id} refused the enrolment ({kind}): {reason}{hint}"
                )));
            }
            _ => {}
        }
    }
    f.node_add(&id, &pk, &req.name, &req.region)?;
    Ok(Report {
        text: format!("enrolled node {id} ({}, {})", req.name, req.region),
        json: json!({"ok": true, "result": "enrolled", "node_id": id, "public_key": pk,
            "name": req.name, "region": req.region}),
    })
}
