//! Log filtering for production: hickory's own targets log every request at
//! INFO/DEBUG with the client address and the name, so they are pinned to
//! WARN whatever the operator's filter says.

use tracing::Metadata;
use tracing_subscriber::filter::{EnvFilter, FilterExt, FilterFn};
use tracing_subscriber::layer::Filter;

/// True for targets of the hickory crates (`hickory_proto`, `hickory_server`,
/// `hickory_resolver`, `hickory_net`, ... and their modules).
pub fn is_hickory(target: &str) -> bool {
    target.starts_with("hickory")
}

/// A per-layer filter that lets hickory events through only at WARN or above.
pub fn hickory_pin() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    FilterFn::new(|m: &Metadata<'_>| !is_hickory(m.target()) || *m.level() <= tracing::Level::WARN)
}

/// The production filter: `spec` (EnvFilter syntax, e.g. from PALISADE_LOG)
/// and the hickory pin. Use as `fmt::layer().with_filter(production_filter(spec))`.
pub fn production_filter<S>(spec: &str) -> impl Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let env = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    env.and(hickory_pin())
}
