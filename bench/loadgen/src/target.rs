//! The generator sends only to the test bed: every address it is given must be
//! inside a test or private range, checked before any socket is opened.

use std::net::IpAddr;

/// The ranges the test bed uses (docs/testing.md): documentation prefixes for
/// the bed's internet, private prefixes for the tunnel, loopback.
pub const ALLOWED: &[&str] = &[
    "203.0.113.0/24",
    "2001:db8::/32",
    "10.0.0.0/8",
    "fd00::/8",
    "127.0.0.0/8",
    "::1/128",
];

fn in_prefix(ip: IpAddr, prefix: &str) -> bool {
    let (net, len) = prefix.split_once('/').expect("prefix/len");
    let len: u32 = len.parse().expect("prefix length");
    match (ip, net.parse::<IpAddr>().expect("prefix address")) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            len == 0 || (u32::from(a) ^ u32::from(n)) >> (32 - len) == 0
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            len == 0 || (u128::from(a) ^ u128::from(n)) >> (128 - len) == 0
        }
        _ => false,
    }
}

/// `Ok` if `ip` is a test-bed address; else an error naming `what`.
pub fn check(what: &str, ip: IpAddr) -> anyhow::Result<()> {
    let ip = ip.to_canonical();
    if ALLOWED.iter().any(|p| in_prefix(ip, p)) {
        Ok(())
    } else {
        anyhow::bail!(
            "{what} {ip} is outside the test bed's ranges ({}): pal-loadgen targets only the test bed",
            ALLOWED.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_ranges_pass() {
        for ok in [
            "203.0.113.10",
            "203.0.113.80",
            "10.66.0.1",
            "127.0.0.1",
            "2001:db8:113::10",
            "fd66::1",
            "::1",
            "::ffff:203.0.113.10",
        ] {
            assert!(check("t", ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "203.0.114.1",
            "8.8.8.8",
            "192.168.1.1",
            "11.0.0.1",
            "2001:db9::1",
            "fe80::1",
            "2606:4700::1111",
            "0.0.0.0",
        ] {
            let e = check("endpoint", bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("endpoint"), "{e}");
        }
    }
}
