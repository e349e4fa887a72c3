//! The pure part of failover: is the current node alive, and which node
//! comes next. Time is passed in; nothing here touches the network.

use std::time::{Duration, Instant};

/// How quickly a node is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between probes through the tunnel.
    pub probe_interval: Duration,
    /// How long a probe waits for its answer.
    pub probe_timeout: Duration,
    /// A node with no probe answer for this long (since it was selected or
    /// since its last answer) is dead.
    pub dead_after: Duration,
    /// A handshake older than this while probing is a dead session
    /// (WireGuard's reject-after-time: 180 s).
    pub handshake_stale: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(400),
            dead_after: Duration::from_millis(2500),
            handshake_stale: Duration::from_secs(180),
        }
    }
}

impl Timing {
    /// The bounds that keep the decision meaningful, each named.
    pub fn validate(&self) -> Result<(), String> {
        if self.probe_interval.is_zero() {
            return Err("probe interval must be more than 0 ms".into());
        }
        if self.probe_timeout.is_zero() || self.probe_timeout > self.probe_interval {
            return Err(format!(
                "probe timeout ({} ms) must be more than 0 and at most the probe interval ({} ms)",
                self.probe_timeout.as_millis(),
                self.probe_interval.as_millis()
            ));
        }
        if self.dead_after < self.probe_interval * 2 {
            return Err(format!(
                "dead-after ({} ms) must be at least two probe intervals ({} ms)",
                self.dead_after.as_millis(),
                (self.probe_interval * 2).as_millis()
            ));
        }
        Ok(())
    }
}

/// What is known about the current node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// When the node was selected (the peer was set).
    pub selected_at: Instant,
    /// The latest probe answer since then.
    pub last_answer: Option<Instant>,
    /// Age of the session's latest handshake (`None`: none yet).
    pub handshake_age: Option<Duration>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answered recently.
    Alive,
    /// Selected recently, no answer yet.
    Connecting,
    /// Move on; the reason is for the log.
    Dead(String),
}

/// Decide on the current node at `now`.
pub fn decide(now: Instant, t: &Timing, o: &Observed) -> Verdict {
    let evidence = o
        .last_answer
        .map_or(o.selected_at, |a| a.max(o.selected_at));
    let silent = now.saturating_duration_since(evidence);
    if silent >= t.dead_after {
        return Verdict::Dead(match o.last_answer {
            Some(_) => format!("no probe answer for {} ms", silent.as_millis()),
            None => format!(
                "no probe answer in the {} ms since it was selected",
                silent.as_millis()
            ),
        });
    }
    if let Some(age) = o.handshake_age {
        if age >= t.handshake_stale {
            return Verdict::Dead(format!("latest handshake {} s old", age.as_secs()));
        }
    }
    if o.last_answer.is_some() {
        Verdict::Alive
    } else {
        Verdict::Connecting
    }
}

/// The node after `current` in list order, wrapping (a one-node list stays
/// on its node and keeps retrying it).
pub fn next_node(len: usize, current: usize) -> usize {
    if len == 0 {
        0
    } else {
        (current + 1) % len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn health_follows_probe_answers() {
        let t = Timing::default();
        let t0 = Instant::now();
        let mut o = Observed {
            selected_at: t0,
            last_answer: None,
            handshake_age: None,
        };
        assert_eq!(decide(t0 + ms(100), &t, &o), Verdict::Connecting);
        assert!(
            matches!(decide(t0 + t.dead_after, &t, &o), Verdict::Dead(r) if r.contains("since it was selected"))
        );
        o.last_answer = Some(t0 + ms(1000));
        assert_eq!(decide(t0 + ms(3000), &t, &o), Verdict::Alive);
        assert!(
            matches!(decide(t0 + ms(1000) + t.dead_after, &t, &o), Verdict::Dead(r) if r.contains("no probe answer for 2500 ms"))
        );
        // An answer from before the node was selected (the previous node's
        // late reply) is no evidence for this one.
        let o2 = Observed {
            selected_at: t0 + ms(5000),
            last_answer: Some(t0),
            handshake_age: None,
        };
        assert_eq!(decide(t0 + ms(5100), &t, &o2), Verdict::Alive);
        assert!(matches!(
            decide(t0 + ms(5000) + t.dead_after, &t, &o2),
            Verdict::Dead(_)
        ));
    }

    #[test]
    fn a_stale_handshake_is_dead_even_with_answers() {
        let t = Timing::default();
        let t0 = Instant::now();
        let o = Observed {
            selected_at: t0,
            last_answer: Some(t0),
            handshake_age: Some(Duration::from_secs(181)),
        };
        assert!(matches!(decide(t0, &t, &o), Verdict::Dead(r) if r.contains("handshake 181 s")));
        let o = Observed {
            handshake_age: Some(Duration::from_secs(30)),
            ..o
        };
        assert_eq!(decide(t0, &t, &o), Verdict::Alive);
    }

    #[test]
    fn next_node_goes_in_list_order_and_wraps() {
        assert_eq!(next_node(3, 0), 1);
        assert_eq!(next_node(3, 1), 2);
        assert_eq!(next_node(3, 2), 0);
        assert_eq!(next_node(1, 0), 0);
        assert_eq!(next_node(0, 0), 0);
        // Every node is visited once per round.
        let mut seen = vec![];
        let mut i = 0;
        for _ in 0..4 {
            i = next_node(4, i);
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3]);
    }

    #[test]
    fn timing_bounds_are_checked() {
        assert!(Timing::default().validate().is_ok());
        let t = Timing {
            dead_after: ms(600),
            ..Timing::default()
        };
        assert!(t.validate().unwrap_err().contains("dead-after"));
        let t = Timing {
            probe_timeout: ms(900),
            ..Timing::default()
        };
        assert!(t.validate().unwrap_err().contains("probe timeout"));
    }
}
