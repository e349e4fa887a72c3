//! Fuzz the request path: any bytes from any client address, over UDP or
//! TCP semantics, through the whole engine (source check, strict parser,
//! rate limiter, tiers, filter, cache, ANY, errors; misses resolve against no
//! upstream and must come back as SERVFAIL).
//!
//! Invariants checked on every input:
//! - no panic, no hang;
//! - every reply is a well-formed DNS message (hickory parses it), a
//!   response (QR=1), with the query's ID;
//! - a packet the strict parser accepts is also a valid message for hickory
//!   (the parser is never more lenient than a general one);
//! - UDP replies never exceed the client's limit (512 without EDNS, else
//!   at most 1232).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_dns::{Engine, EngineConfig, Outcome};
use std::net::IpAddr;
use std::sync::OnceLock;

struct Ctx {
    engine: Engine,
    rt: tokio::runtime::Runtime,
}

fn ctx() -> &'static Ctx {
    static C: OnceLock<Ctx> = OnceLock::new();
    C.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("palisade-dns-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("list.txt");
        std::fs::write(
            &list,
            "||ads.test^\n*.wild.test\n0.0.0.0 a.b\n@@||ok.ads.test^\n",
        )
        .unwrap();
        let toml = format!(
            "rate_limit_qps = 1000\n[list.l]\npath = {:?}\n[tier.default]\nlists = [\"l\"]\n",
            list.display().to_string()
        );
        let dns: palisade_core::config::DnsSection = toml_from(&toml);
        let cfg = EngineConfig::new(
            dns,
            vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        );
        let engine = Engine::new(&cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        Ctx { engine, rt }
    })
}

fn toml_from(s: &str) -> palisade_core::config::DnsSection {
    // palisade-core re-exports serde types only; parse through NodeConfig's dns section shape.
    let full = format!(
        "[node]\nname = \"f\"\n[wireguard]\naddress_v4 = \"10.0.0.1/24\"\naddress_v6 = \"fd00::1/64\"\n[dns]\n{}",
        s.replace("[list.", "[dns.list.").replace("[tier.", "[dns.tier.")
    );
    palisade_core::config::NodeConfig::from_str(&full, std::path::Path::new("fuzz.toml"))
        .unwrap()
        .dns
}

fn check_reply(input: &[u8], reply: &[u8], limit: Option<usize>) {
    let m = hickory_proto::op::Message::from_vec(reply).expect("reply parses");
    assert_eq!(
        m.metadata.message_type,
        hickory_proto::op::MessageType::Response
    );
    assert_eq!(&reply[..2], &input[..2], "ID echoed");
    if let Some(l) = limit {
        assert!(reply.len() <= l, "UDP reply {} > limit {}", reply.len(), l);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let c = ctx();
    // First byte picks the transport and the source; the rest is the packet.
    let (sel, msg) = (data[0], &data[1..]);
    let tcp = sel & 1 == 1;
    let src: IpAddr = if sel & 2 == 0 {
        IpAddr::from([10, 0, 0, sel >> 2])
    } else {
        IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(sel)])
    };
    if let Ok(q) = palisade_dns::wire::parse_query(msg) {
        hickory_proto::op::Message::from_vec(msg).expect("accepted queries are valid DNS messages");
        let _ = q.name();
    }
    let limit = match palisade_dns::wire::parse_query(msg) {
        Ok(q) if !tcp => Some(q.udp_limit()),
        _ => None,
    };
    match c.engine.handle(msg, src, tcp) {
        Outcome::Drop => {}
        Outcome::Reply(r) => check_reply(msg, &r, limit),
        Outcome::Resolve(p) => {
            let r = c.rt.block_on(c.engine.resolve(p));
            check_reply(msg, &r, limit);
            assert_eq!(r[3] & 0xf, 2, "no upstream: SERVFAIL");
        }
    }
});
