//! Palisade node logic. Pure planners and parsers carry most of the logic;
//! the appliers in `wg::apply`, `firewall::apply` and `sysctl` are the only
//! code that touches the kernel. See ARCHITECTURE.md.

pub mod config;
pub mod wg;
pub mod firewall;
pub mod control;
pub mod link;
pub mod netlink;
pub(crate) mod nlraw;
pub mod reconcile;
pub mod sysctl;
pub mod uplink;
pub mod conntrack;
