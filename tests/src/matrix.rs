//! Probe matrices: many real-packet probes run in parallel, each with what it
//! must see, checked together so one failure report shows the whole picture.

use crate::ns::Netns;
use crate::probe::{self, Outcome};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What to send.
#[derive(Debug, Clone)]
pub enum Kind {
    /// HTTP GET; a reached probe answers with the source address the host saw.
    Http,
    /// TCP connect only.
    Tcp,
    /// One UDP datagram to an echo port, waiting for the echo.
    Udp,
    /// One ICMP echo request (the port of `dst` is ignored).
    Ping,
}

/// What must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Dropped: nothing comes back before the timeout (not a reject, not an answer).
    Dropped,
    /// Reached (any answer or an established connection).
    Reached,
    /// Reached, and the answer is exactly this (HTTP body: the source address seen).
    Answer(String),
}

/// One probe.
#[derive(Debug, Clone)]
pub struct Case<'a> {
    pub label: String,
    pub from: &'a Netns,
    pub src: Option<IpAddr>,
    pub kind: Kind,
    pub dst: SocketAddr,
    pub expect: Expect,
}

impl<'a> Case<'a> {
    pub fn new(
        label: impl Into<String>,
        from: &'a Netns,
        kind: Kind,
        dst: SocketAddr,
        expect: Expect,
    ) -> Self {
        Case {
            label: label.into(),
            from,
            src: None,
            kind,
            dst,
            expect,
        }
    }

    /// Send from a given source address (spoofing probes).
    pub fn src(mut self, ip: impl Into<IpAddr>) -> Self {
        self.src = Some(ip.into());
        self
    }
}

/// Result of one probe.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub dst: SocketAddr,
    pub expect: Expect,
    pub got: Outcome,
    pub ok: bool,
}

/// Run every case in parallel (one thread each, in its namespace) with
/// `timeout` per probe; returns one row per case, in order.
pub fn run(cases: &[Case<'_>], timeout: Duration) -> Vec<Row> {
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let got = c
                        .from
                        .enter(|| match c.kind {
                            Kind::Http => probe::http_get(c.src, c.dst, timeout),
                            Kind::Tcp => probe::tcp_connect(c.src, c.dst, timeout),
                            Kind::Udp => {
                                probe::udp_exchange(c.src, c.dst, c.label.as_bytes(), timeout)
                            }
                            Kind::Ping => probe::ping(c.dst.ip(), timeout),
                        })
                        .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")));
                    let ok = match &c.expect {
                        Expect::Dropped => got == Outcome::Timeout,
                        Expect::Reached => got.reached(),
                        Expect::Answer(a) => match &got {
                            Outcome::Answered(b) => b == a || b.starts_with(&format!("{a} ")),
                            _ => false,
                        },
                    };
                    Row {
                        label: c.label.clone(),
                        dst: c.dst,
                        expect: c.expect.clone(),
                        got,
                        ok,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    })
}

/// Render rows as a table (for failure messages and --nocapture runs).
pub fn table(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{} {:<48} {:<28} expect {:<22} got {:?}",
                if r.ok { "ok  " } else { "FAIL" },
                r.label,
                r.dst.to_string(),
                format!("{:?}", r.expect),
                r.got
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Dropped pings that have no positive control: a ping expected to reach,
/// from the same namespace and in the same address family, in the same matrix.
/// (ping is an external program: only a ping shown to work in the same run
/// makes its silence mean "dropped".)
pub fn pings_without_control(cases: &[Case<'_>]) -> Vec<String> {
    let is_ping = |c: &Case<'_>| matches!(c.kind, Kind::Ping);
    cases
        .iter()
        .filter(|c| is_ping(c) && c.expect == Expect::Dropped)
        .filter(|d| {
            !cases.iter().any(|c| {
                is_ping(c)
                    && c.expect != Expect::Dropped
                    && c.from.name() == d.from.name()
                    && c.dst.is_ipv4() == d.dst.is_ipv4()
            })
        })
        .map(|d| d.label.clone())
        .collect()
}

/// Run and panic with the whole table unless every case met its expectation.
/// A dropped ping without a positive control (see [`pings_without_control`])
/// is refused before anything is sent.
#[track_caller]
pub fn assert_all(cases: &[Case<'_>], timeout: Duration) {
    let lone = pings_without_control(cases);
    assert!(
        lone.is_empty(),
        "dropped pings without a reached ping from the same namespace and family: {lone:?}"
    );
    let rows = run(cases, timeout);
    let t = table(&rows);
    println!("{t}");
    assert!(rows.iter().all(|r| r.ok), "probe matrix failed:\n{t}");
}
