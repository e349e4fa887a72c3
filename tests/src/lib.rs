//! Test bed library: namespaces, test hosts, WireGuard clients, probes.
//!
//! Every address used here belongs to a host created in a network namespace on
//! this machine (see [`bed`] for the map). Root tests build a [`TestBed`], start a
//! node (a plain wireguard-go server for the harness self-test, or palisaded via
//! [`palisade::Palisade`]) and probe with real packets. Dropping the bed kills
//! every process it started (by pid) and deletes its namespaces, on panic too.

pub mod bed;
pub mod capture;
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
pub mod wg;

pub use bed::{addr, sa, Bins, Client, TestBed};
pub use matrix::{Case, Expect, Kind};
pub use ns::{wait_until, Netns, Proc};
pub use probe::Outcome;
