//! Test bed library: namespaces, test hosts, WireGuard clients, probes.
//!
//! Every address used here belongs to a host created in a network namespace on
//! this machine (see [`bed`] for the map). Root tests build a [`TestBed`], start a
//! node (a plain wireguard-go server for the harness self-test, or palisaded via
//! [`palisade::Palisade`]) and probe with real packets. Dropping the bed kills
//! every process it started (by pid) and deletes its namespaces, on panic too.

pub mod bed;
pub mod capture;
pub mod client;
pub mod fleet;
pub mod guest;
pub mod matrix;
pub mod metrics;
pub mod mutation;
pub mod ns;
pub mod palisade;
pub mod probe;
pub mod qr;
pub mod update;
pub mod uplink;
pub mod wg;

pub use bed::{addr, sa, Bins, Client, TestBed};
pub use matrix::{Case, Expect, Kind};
pub use ns::{wait_until, Netns, Proc};
pub use probe::Outcome;

/// The median, min and max of benchmark samples (`v` not empty): what the
/// benches print for each figure.
pub fn median_min_max<T: Copy + PartialOrd>(v: &[T]) -> (T, T, T) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_min_max_of_unsorted_samples() {
        assert_eq!(super::median_min_max(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(super::median_min_max(&[7u64, 5, 9, 8]), (8, 5, 9));
    }
}
