//! Enrolment: how a node joins a fleet (DESIGN.md "Fleet trust").
//!
//! A host (over the serial console, or a config drive) gives the node an
//! [`EnrolmentBundle`]: the fleet's root metadata, repository URLs, the
//! node's name, region and mesh prefixes. [`accept`] checks it completely
//! and saves it ([`Key::Enrolment`]); nothing is written for a bundle that
//! is refused. A node already enrolled refuses another bundle until
//! [`factory_reset_enrolment`].
//!
//! The serial line protocol ([`fleet::HostMsg`], [`fleet::NodeMsg`], one
//! `PALISADE-ENROL <json>` line each) is answered by [`Responder`]: `hello`
//! gets the node's identity with a proof of possession of its key over the
//! host's nonce, `enrol` gets `enrolled` or `refused` with a stable kind.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ipnet::IpNet;

use crate::fleet::{self, EnrolmentBundle, HostMsg, NodeMsg};
use crate::identity::Identity;
use crate::store::{Key, Store, StoreError};

/// Nonce sizes accepted in `hello` (bytes, after base64).
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;
/// At most this many repository URLs (mirrors) in a bundle.
pub const MAX_REPOSITORIES: usize = 16;
/// At most this many mesh prefixes.
pub const MAX_MESH: usize = 64;

/// Why a bundle was refused. `kind` is stable: `already-enrolled`,
/// `wrong-node`, `invalid`, `io`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("enrolment refused ({kind}): {reason}")]
pub struct EnrolRefusal {
    pub kind: &'static str,
    pub reason: String,
}

impl EnrolRefusal {
    fn invalid(reason: impl Into<String>) -> EnrolRefusal {
        EnrolRefusal {
            kind: "invalid",
            reason: reason.into(),
        }
    }

    fn io(e: StoreError) -> EnrolRefusal {
        EnrolRefusal {
            kind: "io",
            reason: e.to_string(),
        }
    }
}

/// The bundle the node accepted, `None` if it is not enrolled. A stored
/// value that does not parse is an error naming the key.
pub fn enrolment(store: &dyn Store) -> Result<Option<EnrolmentBundle>, StoreError> {
    crate::store::get_json(store, Key::Enrolment)
}

/// Checks `bundle` for this node, without the store: everything
/// [`accept`] refuses as `wrong-node` or `invalid`.
pub fn validate(identity: &Identity, bundle: &EnrolmentBundle) -> Result<(), EnrolRefusal> {
    if bundle.node_id != identity.node_id() {
        return Err(EnrolRefusal {
            kind: "wrong-node",
            reason: format!(
                "the bundle is for node {}, this is node {}",
                bundle.node_id,
                identity.node_id()
            ),
        });
    }
    let bad = EnrolRefusal::invalid;
    if bundle.version != 1 {
        return Err(bad(format!(
            "version {} (this node reads version 1)",
            bundle.version
        )));
    }
    if bundle.repositories.is_empty() || bundle.repositories.len() > MAX_REPOSITORIES {
        return Err(bad(format!(
            "1..={MAX_REPOSITORIES} repository URLs required, got {}",
            bundle.repositories.len()
        )));
    }
    for r in &bundle.repositories {
        let u = url::Url::parse(r).map_err(|e| bad(format!("repository URL {r:?}: {e}")))?;
        if !matches!(u.scheme(), "http" | "https" | "file") {
            return Err(bad(format!(
                "repository URL {r:?}: scheme {} (http, https or file)",
                u.scheme()
            )));
        }
    }
    if let Some(pem) = &bundle.ca_pem {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad("ca_pem holds no PEM certificate".into()));
        }
    }
    if !fleet::valid_name(&bundle.name) {
        return Err(bad(format!(
            "name {:?}: 1..=64 of a-z, 0-9, '-', not starting with '-'",
            bundle.name
        )));
    }
    if !fleet::valid_name(&bundle.region) {
        return Err(bad(format!(
            "region {:?}: 1..=64 of a-z, 0-9, '-', not starting with '-'",
            bundle.region
        )));
    }
    if bundle.mesh.len() > MAX_MESH {
        return Err(bad(format!("at most {MAX_MESH} mesh prefixes")));
    }
    for m in &bundle.mesh {
        m.parse::<IpNet>()
            .map_err(|_| bad(format!("mesh {m:?} is not a CIDR prefix")))?;
    }
    verify_root(&bundle.fleet_root).map_err(|e| bad(format!("fleet_root: {e}")))
}

/// `fleet_root` must be TUF root metadata signed by a threshold of its own
/// root keys.
fn verify_root(v: &serde_json::Value) -> Result<(), String> {
    use tough::schema::{Root, Signed};
    let root: Signed<Root> =
        serde_json::from_value(v.clone()).map_err(|e| format!("not TUF root metadata: {e}"))?;
    root.signed
        .verify_role(&root)
        .map_err(|e| format!("not signed by its own root keys: {e}"))
}

/// Accepts `bundle`: checks it ([`validate`]), refuses it if the node is
/// enrolled already, then saves it and clears [`Key::Revoked`] (enrolling
/// again is how a revoked node comes back).
pub fn accept(
    store: &dyn Store,
    identity: &Identity,
    bundle: &EnrolmentBundle,
) -> Result<(), EnrolRefusal> {
    if store
        .get(Key::Enrolment)
        .map_err(EnrolRefusal::io)?
        .is_some()
    {
        return Err(EnrolRefusal {
            kind: "already-enrolled",
            reason: format!(
                "node {} is enrolled already; factory-reset its enrolment first",
                identity.node_id()
            ),
        });
    }
    validate(identity, bundle)?;
    crate::store::put_json(store, Key::Enrolment, bundle).map_err(EnrolRefusal::io)?;
    store.remove(Key::Revoked).map_err(EnrolRefusal::io)?;
    Ok(())
}

/// Forgets the fleet: removes the enrolment and the last fleet state. The
/// identity stays (see `Identity::wipe`).
pub fn factory_reset_enrolment(store: &dyn Store) -> Result<(), StoreError> {
    store.remove(Key::Enrolment)?;
    store.remove(Key::FleetState)
}

/// Serve a serial line: split what arrives into lines (`\n` or `\r`; an
/// endless line is dropped at 1 MiB) and write back what `on_line` answers.
/// Returns at end of file or on a read or write error; read time-outs are
/// waited out.
pub fn serve_lines<P: std::io::Read + std::io::Write>(
    port: &mut P,
    mut on_line: impl FnMut(&str) -> Option<String>,
) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match port.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted) => continue,
            Err(e) => return Err(e),
        };
        for &b in &chunk[..n] {
            if b == b'\n' || b == b'\r' {
                if !buf.is_empty() {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    if let Some(reply) = on_line(&line) {
                        port.write_all(reply.as_bytes())?;
                        port.flush()?;
                    }
                }
            } else if buf.len() < 1 << 20 {
                buf.push(b);
            } else {
                // An endless line is not a protocol line: drop it.
                buf.clear();
            }
        }
    }
}

/// The node's side of the serial enrolment protocol. It remembers the
/// bundle it accepted in this session, so that a host resending the same
/// `enrol` (its reply lost on the line) gets `enrolled` again rather than
/// `already-enrolled`.
#[derive(Debug, Default)]
pub struct Responder {
    accepted: Option<EnrolmentBundle>,
}

impl Responder {
    /// A responder with nothing accepted yet.
    pub fn new() -> Responder {
        Responder::default()
    }

    /// Handles one line from the console. `None`: not a protocol line
    /// (ignored). Otherwise the reply line ([`fleet::encode_line`]) and, when
    /// this line enrolled the node, the bundle it accepted.
    pub fn handle_line(
        &mut self,
        line: &str,
        store: &dyn Store,
        identity: &Identity,
    ) -> Option<(String, Option<EnrolmentBundle>)> {
        let msg = fleet::decode_line::<HostMsg>(line)?;
        let refused = |kind: &str, reason: String| NodeMsg::Refused {
            kind: kind.into(),
            reason,
        };
        let (reply, accepted) = match msg {
            Err(e) => (refused("invalid", format!("not a host message: {e}")), None),
            Ok(HostMsg::Hello { nonce }) => match B64.decode(&nonce) {
                Ok(n) if NONCE_LEN.contains(&n.len()) => match store.get(Key::Enrolment) {
                    Ok(e) => (
                        NodeMsg::Identity {
                            node_id: identity.node_id(),
                            public_key: identity.public_key_b64(),
                            proof: identity.enrol_proof(&n),
                            enrolled: e.is_some(),
                        },
                        None,
                    ),
                    Err(e) => (refused("io", e.to_string()), None),
                },
                _ => (
                    refused(
                        "invalid",
                        format!(
                            "nonce must be base64 of {}..={} bytes",
                            NONCE_LEN.start(),
                            NONCE_LEN.end()
                        ),
                    ),
                    None,
                ),
            },
            Ok(HostMsg::Enrol { bundle }) => {
                if self.accepted.as_ref() == Some(&bundle) {
                    (
                        NodeMsg::Enrolled {
                            node_id: identity.node_id(),
                        },
                        None,
                    )
                } else {
                    match accept(store, identity, &bundle) {
                        Ok(()) => {
                            self.accepted = Some(bundle.clone());
                            (
                                NodeMsg::Enrolled {
                                    node_id: identity.node_id(),
                                },
                                Some(bundle),
                            )
                        }
                        Err(r) => (refused(r.kind, r.reason), None),
                    }
                }
            }
        };
        Some((fleet::encode_line(&reply), accepted))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::MemStore;
    use std::collections::HashMap;
    use std::num::NonZeroU64;
    use tough::schema::{KeyHolder, RoleKeys, RoleType, Root};

    /// A serial line in memory: reads `input`, collects what is written.
    struct Line {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl std::io::Read for Line {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }

    impl std::io::Write for Line {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serve_lines_splits_on_cr_and_lf_and_drops_endless_lines() {
        let mut input = b"one\r\ntwo\rthree\n\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', (1 << 20) + 10));
        input.extend_from_slice(b"\nfour\n");
        let mut line = Line { input: std::io::Cursor::new(input), output: Vec::new() };
        let mut seen = Vec::new();
        serve_lines(&mut line, |l| {
            seen.push(l.len());
            (l != "two").then(|| format!("<{}>", &l[..l.len().min(5)]))
        })
        .unwrap();
        // The endless line is dropped at 1 MiB (with the byte that overflows
        // it); the 9 bytes after arrive as a line of their own.
        assert_eq!(seen, [3, 3, 5, 9, 4]);
        assert_eq!(String::from_utf8(line.output).unwrap(), "<one><three><xxxxx><four>");
    }
    use tough::sign::Sign as _;

    /// A root signed by one ed25519 key for every role (`signers`: how many
    /// of its keys sign it; 0 gives an unsigned root).
    pub(crate) fn root_signed_by(signers: usize) -> serde_json::Value {
        use tough::editor::signed::SignedRole;
        use tough::key_source::{KeySource, LocalKeySource};
        let rng = ring::rand::SystemRandom::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.pk8");
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        std::fs::write(&path, doc.as_ref()).unwrap();
        let key = tough::sign::parse_keypair(doc.as_ref()).unwrap();
        let tuf = key.tuf_key();
        let id = tuf.key_id().unwrap();
        let mut root = Root {
            spec_version: "1.0.0".into(),
            consistent_snapshot: true,
            version: NonZeroU64::new(1).unwrap(),
            expires: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24),
            keys: HashMap::from([(id.clone(), tuf)]),
            roles: HashMap::new(),
            _extra: HashMap::new(),
        };
        for rt in [
            RoleType::Root,
            RoleType::Targets,
            RoleType::Snapshot,
            RoleType::Timestamp,
        ] {
            root.roles.insert(
                rt,
                RoleKeys {
                    keyids: vec![id.clone()],
                    threshold: NonZeroU64::new(1).unwrap(),
                    _extra: HashMap::new(),
                },
            );
        }
        let keys: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource { path })];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let signed = rt
            .block_on(SignedRole::new(
                root.clone(),
                &KeyHolder::Root(root),
                &keys,
                &aws_lc_rs::rand::SystemRandom::new(),
            ))
            .unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(signed.buffer()).unwrap();
        if signers == 0 {
            v["signatures"] = serde_json::json!([]);
        }
        v
    }

    pub(crate) fn bundle(id: &Identity) -> EnrolmentBundle {
        EnrolmentBundle {
            version: 1,
            node_id: id.node_id(),
            fleet_root: root_signed_by(1),
            repositories: vec![
                "https://repo.example.test/fleet/".into(),
                "file:///media/usb/fleet".into(),
            ],
            ca_pem: None,
            name: "exit-1".into(),
            region: "eu-west".into(),
            mesh: vec!["fd10::/64".into(), "10.99.0.0/16".into()],
        }
    }

    fn ident() -> (MemStore, Identity) {
        let s = MemStore::new();
        let (id, _) = Identity::load_or_create(&s).unwrap();
        (s, id)
    }

    #[test]
    fn accept_saves_and_clears_revoked() {
        let (s, id) = ident();
        s.put(Key::Revoked, b"{}").unwrap();
        assert_eq!(enrolment(&s).unwrap(), None);
        let b = bundle(&id);
        accept(&s, &id, &b).unwrap();
        assert_eq!(enrolment(&s).unwrap(), Some(b.clone()));
        assert_eq!(s.get(Key::Revoked).unwrap(), None);
        // A second bundle is refused, the first kept.
        let mut other = b.clone();
        other.name = "exit-2".into();
        let e = accept(&s, &id, &other).unwrap_err();
        assert_eq!(e.kind, "already-enrolled", "{e}");
        assert_eq!(enrolment(&s).unwrap(), Some(b));
    }

    #[test]
    fn wrong_node_and_invalid_bundles_write_nothing() {
        let (s, id) = ident();
        let good = bundle(&id);
        type Edit = Box<dyn Fn(&mut EnrolmentBundle)>;
        let cases: Vec<(&str, &str, Edit)> = vec![
            (
                "wrong-node",
                "node",
                Box::new(|b| b.node_id = "0123456789abcdef".into()),
            ),
            ("invalid", "version", Box::new(|b| b.version = 2)),
            (
                "invalid",
                "repository",
                Box::new(|b| b.repositories.clear()),
            ),
            (
                "invalid",
                "repository URL",
                Box::new(|b| b.repositories = vec!["not a url".into()]),
            ),
            (
                "invalid",
                "scheme",
                Box::new(|b| b.repositories = vec!["ftp://x.test/".into()]),
            ),
            ("invalid", "name", Box::new(|b| b.name = "Exit_1".into())),
            ("invalid", "region", Box::new(|b| b.region = "".into())),
            (
                "invalid",
                "mesh",
                Box::new(|b| b.mesh = vec!["10.0.0.0".into()]),
            ),
            (
                "invalid",
                "ca_pem",
                Box::new(|b| b.ca_pem = Some("junk".into())),
            ),
            (
                "invalid",
                "fleet_root",
                Box::new(|b| b.fleet_root = serde_json::json!({"signed": {}})),
            ),
            (
                "invalid",
                "own root keys",
                Box::new(|b| b.fleet_root = root_signed_by(0)),
            ),
        ];
        for (kind, says, f) in cases {
            let mut b = good.clone();
            f(&mut b);
            let e = accept(&s, &id, &b).unwrap_err();
            assert_eq!(e.kind, kind, "{says}: {e}");
            assert!(e.reason.contains(says), "{says}: {e}");
            assert_eq!(s.get(Key::Enrolment).unwrap(), None, "{says}");
        }
        // A root signed by another key than the ones it names.
        let mut b = good.clone();
        let other = root_signed_by(1);
        b.fleet_root["signatures"] = other["signatures"].clone();
        assert_eq!(accept(&s, &id, &b).unwrap_err().kind, "invalid");
        accept(&s, &id, &good).unwrap();
    }

    #[test]
    fn factory_reset_keeps_identity() {
        let (s, id) = ident();
        accept(&s, &id, &bundle(&id)).unwrap();
        s.put(Key::FleetState, b"{}").unwrap();
        factory_reset_enrolment(&s).unwrap();
        assert_eq!(s.get(Key::Enrolment).unwrap(), None);
        assert_eq!(s.get(Key::FleetState).unwrap(), None);
        let (again, created) = Identity::load_or_create(&s).unwrap();
        assert!(!created);
        assert_eq!(again.node_id(), id.node_id());
        accept(&s, &id, &bundle(&id)).unwrap();
    }

    #[test]
    fn corrupt_enrolment_is_an_error() {
        let s = MemStore::new();
        s.put(Key::Enrolment, b"{").unwrap();
        assert!(matches!(
            enrolment(&s),
            Err(StoreError::Corrupt {
                key: "enrolment",
                ..
            })
        ));
    }

    fn reply(r: Option<(String, Option<EnrolmentBundle>)>) -> (NodeMsg, Option<EnrolmentBundle>) {
        let (line, b) = r.expect("a protocol line gets a reply");
        assert!(
            line.starts_with(fleet::ENROL_PREFIX) && line.ends_with('\n'),
            "{line}"
        );
        (fleet::decode_line::<NodeMsg>(&line).unwrap().unwrap(), b)
    }

    #[test]
    fn responder_hello_enrol_and_retries() {
        let (s, id) = ident();
        let mut r = Responder::new();
        assert!(r
            .handle_line("[  3.1] random kernel output", &s, &id)
            .is_none());
        let nonce = [5u8; 32];
        let hello = fleet::encode_line(&HostMsg::Hello {
            nonce: B64.encode(nonce),
        });
        let (m, _) = reply(r.handle_line(&format!("noise {hello}"), &s, &id));
        let NodeMsg::Identity {
            node_id,
            public_key,
            proof,
            enrolled,
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!((node_id.as_str(), enrolled), (id.node_id().as_str(), false));
        assert!(crate::identity::verify_proof(&public_key, &nonce, &proof));
        assert_eq!(fleet::node_id(&B64.decode(&public_key).unwrap()), node_id);

        let b = bundle(&id);
        let enrol = fleet::encode_line(&HostMsg::Enrol { bundle: b.clone() });
        let (m, accepted) = reply(r.handle_line(&enrol, &s, &id));
        assert_eq!(
            m,
            NodeMsg::Enrolled {
                node_id: id.node_id()
            }
        );
        assert_eq!(accepted, Some(b.clone()));
        assert_eq!(enrolment(&s).unwrap(), Some(b.clone()));
        // The host did not see the reply and resends: enrolled again, nothing new.
        let (m, accepted) = reply(r.handle_line(&enrol, &s, &id));
        assert_eq!(
            (m, accepted),
            (
                NodeMsg::Enrolled {
                    node_id: id.node_id()
                },
                None
            )
        );
        // Another bundle (or a new session) is refused.
        let (m, _) = reply(Responder::new().handle_line(&enrol, &s, &id));
        assert!(
            matches!(m, NodeMsg::Refused { ref kind, .. } if kind == "already-enrolled"),
            "{m:?}"
        );
        let (m, _) = reply(r.handle_line(&hello, &s, &id));
        assert!(
            matches!(m, NodeMsg::Identity { enrolled: true, .. }),
            "{m:?}"
        );
    }

    #[test]
    fn responder_refuses_garbage() {
        let (s, id) = ident();
        let mut r = Responder::new();
        for line in [
            "PALISADE-ENROL {not json".to_string(),
            "PALISADE-ENROL {\"msg\":\"launch\"}".to_string(),
            fleet::encode_line(&HostMsg::Hello { nonce: "!!".into() }),
            fleet::encode_line(&HostMsg::Hello {
                nonce: B64.encode([1u8; 8]),
            }),
            fleet::encode_line(&HostMsg::Hello {
                nonce: B64.encode([1u8; 65]),
            }),
        ] {
            let (m, b) = reply(r.handle_line(&line, &s, &id));
            assert!(
                matches!(m, NodeMsg::Refused { ref kind, .. } if kind == "invalid"),
                "{line}: {m:?}"
            );
            assert!(b.is_none());
        }
        let mut wrong = bundle(&id);
        wrong.node_id = "0123456789abcdef".into();
        let (m, b) = reply(r.handle_line(
            &fleet::encode_line(&HostMsg::Enrol { bundle: wrong }),
            &s,
            &id,
        ));
        assert!(
            matches!(m, NodeMsg::Refused { ref kind, .. } if kind == "wrong-node"),
            "{m:?}"
        );
        assert!(b.is_none());
        assert_eq!(s.get(Key::Enrolment).unwrap(), None);
    }
}
