//! `palisade-dns-testauth --listen ADDR`: the test zone's authoritative
//! server (see the library of this crate), for the benchmark
//! (bench/dns/run.sh). Loopback only.

fn main() -> anyhow::Result<()> {
    let mut listen: std::net::SocketAddr = "127.0.0.1:5399".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs ADDR"))?
                    .parse()?
            }
            _ => anyhow::bail!("usage: palisade-dns-testauth [--listen ADDR]"),
        }
    }
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the test authority listens on loopback only"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let auth = palisade_dns_testauth::TestAuthority::start(listen, None).await?;
        eprintln!("testauth: udp+tcp on {}", auth.udp);
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}
