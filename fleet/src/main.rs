//! `palisade-fleet`: publishes the signed update repository (see docs/updates.md).

fn main() {
    eprintln!("palisade-fleet: not built yet");
    std::process::exit(1);
}
