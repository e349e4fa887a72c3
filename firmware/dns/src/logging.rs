//! Log filtering for production: hickory's own targets log every request at
//! INFO/DEBUG with the client address and the name, so they are pinned to
//! WARN whatever the operator's filter says.
//!
//! [`production_filter`] is the one way to get there: palisaded installs it
//! on its log layer (`firmware/daemon/src/main.rs`, `log_layer`) around the
//! EnvFilter it builds from `PALISADE_LOG`, and `tests/zero_log.rs` tests it.

use tracing::Metadata;
use tracing_subscriber::filter::{EnvFilter, FilterExt};
use tracing_subscriber::layer::Filter;

/// True for targets of the hickory crates (`hickory_proto`, `hickory_server`,
/// `hickory_resolver`, `hickory_net`, ... and their modules).
fn is_hickory(target: &str) -> bool {
    target.starts_with("hickory")
}

fn hickory_at_warn(m: &Metadata<'_>) -> bool {
    !is_hickory(m.target()) || *m.level() <= tracing::Level::WARN
}

/// The production filter: `env` (the operator's EnvFilter, with whatever
/// directives the binary adds) and a per-layer pin that lets hickory events
/// through only at WARN or above. An EnvFilter directive alone can be
/// overridden by a more specific one (`hickory_proto::udp=trace`); the pin
/// cannot. Use as `fmt::layer().with_filter(production_filter(env))`.
pub fn production_filter<S>(env: EnvFilter) -> impl Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    env.and(tracing_subscriber::filter::filter_fn(hickory_at_warn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hickory_crate_is_pinned() {
        for t in [
            "hickory_proto::udp::udp_stream",
            "hickory_server",
            "hickory_resolver::lookup",
            "hickory_net::tcp",
        ] {
            assert!(is_hickory(t), "{t}");
        }
        assert!(!is_hickory("palisade_dns::engine"));
    }
}
