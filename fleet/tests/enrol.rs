//! Serial console enrolment against a fake node on a pty pair.

use std::io::{Read, Write};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use palisade_fleet::enrol::{enrol_serial, EnrolRequest};
use palisade_fleet::{Expiries, Fleet};
use palisade_update::fleet::{
    decode_line, encode_line, enrol_proof_message, node_id, EnrolmentBundle, HostMsg, NodeMsg,
};
use serialport::{SerialPort, TTYPort};

#[derive(Clone, Copy, PartialEq)]
enum Node {
    /// Ignores the first Hello (the host must repeat it).
    Slow,
    BadProof,
    WrongId,
    AlreadyEnrolled,
    RefusesBundle,
    Silent,
}

/// Plays the node until it has answered an Enrol (or 15 s); returns the
/// bundle it got.
fn fake_node(mut port: TTYPort, how: Node) -> Option<EnrolmentBundle> {
    port.set_timeout(Duration::from_millis(50)).unwrap();
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let pk = key.public_key().as_ref().to_vec();
    let id = node_id(&pk);
    let mut buf = Vec::new();
    let mut hellos = 0;
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let say = |port: &mut TTYPort, m: &NodeMsg| {
        // Log noise before, around and glued to the protocol line.
        let line = format!(
            "[    3.1] kernel: eth0 up\r\npalisaded: waiting for enrolment {}[    3.2] more noise\r\n",
            encode_line(m).replace('\n', "\r\n")
        );
        port.write_all(line.as_bytes()).unwrap();
    };
    while std::time::Instant::now() < end {
        let mut b = [0u8; 1024];
        match port.read(&mut b) {
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return None, // the host closed its end
        }
        while let Some(i) = buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line).to_string();
            match decode_line::<HostMsg>(&line) {
                Some(Ok(HostMsg::Hello { nonce })) => {
                    hellos += 1;
                    if how == Node::Silent || (how == Node::Slow && hellos == 1) {
                        continue;
                    }
                    let nonce = STANDARD.decode(nonce).unwrap();
                    let signed_nonce = if how == Node::BadProof {
                        vec![0u8; 32]
                    } else {
                        nonce
                    };
                    let proof = key.sign(&enrol_proof_message(&signed_nonce, &pk));
                    let claimed = if how == Node::WrongId {
                        node_id(&[1u8; 32])
                    } else {
                        id.clone()
                    };
                    say(
                        &mut port,
                        &NodeMsg::Identity {
                            node_id: claimed,
                            public_key: STANDARD.encode(&pk),
                            proof: STANDARD.encode(proof.as_ref()),
                            enrolled: how == Node::AlreadyEnrolled,
                        },
                    );
                }
                Some(Ok(HostMsg::Enrol { bundle })) => {
                    let m = if how == Node::RefusesBundle {
                        NodeMsg::Refused {
                            kind: "invalid".into(),
                            reason: "no".into(),
                        }
                    } else {
                        NodeMsg::Enrolled {
                            node_id: bundle.node_id.clone(),
                        }
                    };
                    say(&mut port, &m);
                    // Keep the pty open while the host reads the answer.
                    std::thread::sleep(Duration::from_millis(500));
                    return Some(bundle);
                }
                _ => {}
            }
        }
    }
    None
}

fn setup() -> (tempfile::TempDir, Fleet, EnrolRequest) {
    let t = tempfile::tempdir().unwrap();
    let f = Fleet {
        repo: t.path().join("repo"),
        keys: t.path().join("keys"),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f.init(365, Expiries::default()))
        .unwrap();
    let req = EnrolRequest {
        name: "edge-7".into(),
        region: "eu".into(),
        repositories: vec!["https://updates.example.org/repo/".into()],
        ca_pem: None,
        mesh: vec!["100.100.0.0/16".into()],
    };
    (t, f, req)
}

fn run(
    how: Node,
    timeout: Duration,
) -> (
    Fleet,
    Result<palisade_fleet::Report, palisade_fleet::FleetError>,
    Option<EnrolmentBundle>,
    tempfile::TempDir,
) {
    let (t, f, req) = setup();
    let (mut host, node) = TTYPort::pair().unwrap();
    host.set_timeout(Duration::from_millis(100)).unwrap();
    let th = std::thread::spawn(move || fake_node(node, how));
    let r = enrol_serial(&f, &req, &mut host, timeout);
    drop(host);
    let bundle = th.join().unwrap();
    (f, r, bundle, t)
}

#[test]
fn good_node_is_enrolled_and_inventoried() {
    let (f, r, bundle, _t) = run(Node::Slow, Duration::from_secs(10));
    let r = r.unwrap();
    let id = r.json["node_id"].as_str().unwrap().to_string();
    let b = bundle.unwrap();
    assert_eq!(b.node_id, id);
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.repo.join("metadata/1.root.json")).unwrap())
            .unwrap();
    assert_eq!(b.fleet_root, root);
    assert_eq!(
        (b.name.as_str(), b.region.as_str(), b.mesh.clone()),
        ("edge-7", "eu", vec!["100.100.0.0/16".to_string()])
    );
    let inv = f.inventory().unwrap();
    assert_eq!(inv.nodes.len(), 1);
    assert_eq!(
        (inv.nodes[0].id.as_str(), inv.nodes[0].name.as_str()),
        (id.as_str(), "edge-7")
    );
}

#[test]
fn bad_nodes_are_refused_and_not_inventoried() {
    for (how, want) in [
        (Node::BadProof, "proof"),
        (Node::WrongId, "refused"),
        (Node::AlreadyEnrolled, "factory-reset"),
        (Node::RefusesBundle, "refused the enrolment"),
    ] {
        let (f, r, bundle, _t) = run(how, Duration::from_secs(10));
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(e.to_string().contains(want), "{e}");
        if how != Node::RefusesBundle {
            assert!(bundle.is_none(), "no bundle is sent to a refused node");
        }
        assert!(f.inventory().unwrap().nodes.is_empty());
    }
}

#[test]
fn silent_node_times_out() {
    let start = std::time::Instant::now();
    let (f, r, _, _t) = run(Node::Silent, Duration::from_secs(3));
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("no identity"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(8));
    assert!(f.inventory().unwrap().nodes.is_empty());
}
