//! Shared fixture: the test authority on loopback as the real upstream, the
//! resolver on loopback, clients on distinct 127.0.0.x sources (so the
//! per-tier policy keyed on the source address is exercised for real).
#![allow(dead_code)]

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
pub use palisade_core::config::DnsUpstreamProtocol as Proto;
use palisade_core::config::{DnsListSection, DnsSection, DnsTierSection, DnsUpstreamSection};
use palisade_dns::{Engine, EngineConfig, Server};
use palisade_dns_testauth::TestAuthority;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

pub const BASIC: &str = "127.0.0.2";
pub const FAMILY: &str = "127.0.0.3";
pub const NO_TIER: &str = "127.0.0.4";

pub struct Bed {
    pub auth: TestAuthority,
    pub server: Server,
    pub engine: Arc<Engine>,
    pub addr: SocketAddr,
    pub cfg: EngineConfig,
    pub dir: tempfile::TempDir,
}

pub fn upstream(addr: SocketAddr, protocol: Proto) -> DnsUpstreamSection {
    DnsUpstreamSection {
        address: addr,
        protocol,
        tls_name: None,
        ca_file: None,
        path: None,
    }
}

pub fn config(dir: &std::path::Path, auth: &TestAuthority) -> EngineConfig {
    config_with(dir, vec![upstream(auth.udp, Proto::Udp)])
}

/// The shared lists and tiers (see [`config`]) with these upstreams.
pub fn config_with(dir: &std::path::Path, upstreams: Vec<DnsUpstreamSection>) -> EngineConfig {
    std::fs::write(
        dir.join("ads.txt"),
        "||ads.test^\n0.0.0.0 tracker.cdn.test\n@@||ok.ads.test^\n",
    )
    .unwrap();
    std::fs::write(dir.join("family.txt"), "adult.test\n*.wild.test\n").unwrap();
    std::fs::write(dir.join("allow.txt"), "allowed.ads.test\n").unwrap();
    let mut dns = DnsSection::default();
    for (n, allow) in [("ads", false), ("family", false), ("allow", true)] {
        dns.lists.insert(
            n.into(),
            DnsListSection {
                path: dir.join(format!("{n}.txt")),
                allow,
            },
        );
    }
    dns.tiers.insert(
        "basic".into(),
        DnsTierSection {
            lists: vec!["ads".into(), "allow".into()],
        },
    );
    dns.tiers.insert(
        "family".into(),
        DnsTierSection {
            lists: vec!["ads".into(), "family".into()],
        },
    );
    dns.upstreams = upstreams;
    dns.rate_limit_qps = 0;
    let mut cfg = EngineConfig::new(dns, vec!["127.0.0.0/8".parse().unwrap()]);
    cfg.clients = vec![
        (BASIC.parse().unwrap(), Some("basic".into())),
        (FAMILY.parse().unwrap(), Some("family".into())),
        (NO_TIER.parse().unwrap(), None),
    ];
    cfg.upstream_timeout = Duration::from_millis(400);
    cfg
}

pub async fn bed_with(mutate: impl FnOnce(&mut EngineConfig, &TestAuthority)) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuthority::start("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let mut cfg = config(dir.path(), &auth);
    mutate(&mut cfg, &auth);
    let engine = Arc::new(Engine::new(&cfg).unwrap());
    let server = Server::start(engine.clone(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = server.local_addrs()[0];
    Bed {
        auth,
        server,
        engine,
        addr,
        cfg,
        dir,
    }
}

pub async fn bed() -> Bed {
    bed_with(|_, _| {}).await
}

pub fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(1000);
    N.fetch_add(7, Ordering::Relaxed)
}

/// Send raw bytes from `from` and wait for one datagram (None on timeout).
pub async fn raw(server: SocketAddr, from: &str, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let from: IpAddr = from.parse().unwrap();
    let s = UdpSocket::bind(SocketAddr::new(from, 0)).await.unwrap();
    s.send_to(msg, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn ask(server: SocketAddr, from: &str, name: &str, qtype: RecordType) -> Message {
    let q = query(name, qtype, true);
    let r = raw(server, from, &q, Duration::from_secs(5))
        .await
        .expect("an answer");
    let m = Message::from_vec(&r).expect("a valid DNS message");
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]));
    m
}

pub async fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let q = query(name, qtype, true);
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&q);
    s.write_all(&out).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

pub fn rcode(m: &Message) -> u16 {
    u16::from(m.metadata.response_code)
}

pub fn addrs(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

/// The Extended DNS Error info code, if any.
pub fn ede(m: &Message) -> Option<u16> {
    use hickory_proto::rr::rdata::opt::EdnsOption;
    let e = m.edns.as_ref()?;
    e.options().options.iter().find_map(|(_, o)| match o {
        EdnsOption::Unknown(15, data) if data.len() >= 2 => {
            Some(u16::from_be_bytes([data[0], data[1]]))
        }
        _ => None,
    })
}

/// A throwaway CA and a certificate for a name, signed by it (PEM).
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

/// A throwaway CA and a certificate for `name` signed by it.
pub fn pki(name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// A rustls server config (ring) serving `pki`'s certificate.
pub fn server_config(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert_der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
        )
        .unwrap();
    Arc::new(server)
}
