//! Signed A/B updates for Palisade nodes.
//!
//! Everything a node installs arrives as a target of one TUF repository (see
//! DESIGN.md "Fleet trust"): `images/<board>/<version>.img` (a slot's root
//! filesystem, carrying its own kernel and initramfs) and `rollout.json` (the
//! signed [`rollout::RolloutPolicy`]). The modules:
//!
//! - [`rollout`]: the rollout policy format (shared with `palisade-fleet`).
//! - [`repo`]: the repository client (load and verify metadata, list images,
//!   read the rollout policy, download a target verified); [`transport`]: how
//!   it fetches (`file://`, `http://`, `https://`).
pub mod repo;
pub mod rollout;
pub mod transport;
