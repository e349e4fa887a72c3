//! Replays the fuzz corpus (fuzz/corpus/request, minimised from cargo-fuzz
//! runs) through the request path on stable Rust, with the fuzz target's
//! invariants: no panic, every reply parses, is a response, echoes the ID,
//! fits the UDP limit, and the strict parser never accepts what hickory
//! rejects.

use palisade_dns::{Engine, EngineConfig, Outcome};
use std::net::IpAddr;

#[tokio::test(flavor = "current_thread")]
async fn corpus_replays_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        "||ads.test^\n*.wild.test\n0.0.0.0 a.b\n@@||ok.ads.test^\n",
    )
    .unwrap();
    let mut dns = palisade_core::config::DnsSection::default();
    dns.lists.insert(
        "l".into(),
        palisade_core::config::DnsListSection {
            path: list,
            allow: false,
        },
    );
    dns.tiers.insert(
        "default".into(),
        palisade_core::config::DnsTierSection {
            lists: vec!["l".into()],
        },
    );
    let cfg = EngineConfig::new(
        dns,
        vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
    );
    let engine = Engine::new(&cfg).unwrap();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/request");
    let mut n = 0;
    let mut replies = 0;
    for e in std::fs::read_dir(&corpus).expect("fuzz corpus present") {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        if data.is_empty() {
            continue;
        }
        n += 1;
        let (sel, msg) = (data[0], &data[1..]);
        let tcp = sel & 1 == 1;
        let src: IpAddr = if sel & 2 == 0 {
            IpAddr::from([10, 0, 0, sel >> 2])
        } else {
            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(sel)])
        };
        let accepted = palisade_dns::wire::parse_query(msg);
        if accepted.is_ok() {
            hickory_proto::op::Message::from_vec(msg)
                .expect("accepted queries are valid DNS messages");
        }
        let limit = match &accepted {
            Ok(q) if !tcp => Some(q.udp_limit()),
            _ => None,
        };
        let reply = match engine.handle(msg, src, tcp) {
            Outcome::Drop => continue,
            Outcome::Reply(r) => r,
            Outcome::Resolve(p) => {
                let r = engine.resolve(p).await;
                assert_eq!(r[3] & 0xf, 2, "no upstream: SERVFAIL");
                r
            }
        };
        replies += 1;
        let m = hickory_proto::op::Message::from_vec(&reply).expect("reply parses");
        assert_eq!(
            m.metadata.message_type,
            hickory_proto::op::MessageType::Response
        );
        assert_eq!(&reply[..2], &msg[..2]);
        if let Some(l) = limit {
            assert!(reply.len() <= l);
        }
    }
    assert!(n >= 8, "corpus has the seeds at least ({n})");
    assert!(replies > 0);
}
