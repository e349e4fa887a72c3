//! Signed A/B updates and fleet trust for Palisade nodes.
//!
//! Everything a node receives from outside arrives as a target of one TUF
//! repository (see DESIGN.md "Fleet trust"), each signed by the delegated
//! role that owns its path ([`fleet::ROLES`]): `images/<board>/<version>.img`
//! (a slot's root filesystem, carrying its own kernel and initramfs) and
//! `rollout.json` (the signed [`rollout::RolloutPolicy`]) from `images`; the
//! node's config and client grants, the grant issuer's keys, revocations and
//! DNS lists from their roles. The modules:
//!
//! - [`rollout`]: the rollout policy format (shared with `palisade-fleet`).
//! - [`repo`]: the repository client (load and verify metadata, read a
//!   target from the one role that owns it, list images, read the rollout
//!   policy, download a target verified); [`transport`]: how it fetches
//!   (`file://`, `http://`, `https://`).
//! - [`refusal`]: why an update was not installed, as stable kinds.
//! - [`esp`]: boot entries on the mounted ESP (remove before writing a slot,
//!   install a boot-counted entry after), kernel directories and their cleanup.
//! - [`journal`]: the update journal, an explicit state machine saved after every step.
//! - [`slot`]: writing a staged image into the inactive slot (head last, hash
//!   of the bytes written, read-back).
//! - [`store`]: the allowlisted state store (one atomically replaced file per key on the state partition) and
//!   loading/saving the journal.
//! - [`fleet`]: fleet trust formats (delegated roles and their paths, grants,
//!   revocations, the enrolment bundle and serial protocol).
//! - [`schedule`]: the wave scheduler (pure): install or not, which wave, when to reboot.
//! - [`identity`]: the node's ed25519 identity key (made on the node, kept in
//!   the store), its node id and enrolment proof.
//! - [`enrol`]: accepting an enrolment bundle, factory reset, and the serial
//!   console protocol's node side ([`enrol::Responder`]).
//! - [`grant`]: client grants (ES384 JWTs): verification against the
//!   issuer's keys, and the issuing side used by `palisade-fleet` and tests.
//! - [`mesh`]: the management mesh's trust anchors (metrics mTLS).
//! - [`sync`]: fetching the fleet state (config, grants, keys, revocations,
//!   lists) and evaluating it into the peers to serve.
pub mod enrol;
pub mod esp;
pub mod fleet;
pub mod grant;
pub mod identity;
pub mod journal;
pub mod mesh;
pub mod refusal;
pub mod repo;
pub mod rollout;
pub mod schedule;
pub mod slot;
pub mod store;
pub mod sync;
pub mod transport;
