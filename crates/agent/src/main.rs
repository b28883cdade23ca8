//! `hangar-agent` built from this crate alone (`--features standalone`): the same agent as the CLI crate's
//! binary, for the statically linked copy in Pods' agent image.

fn main() {
    hangar_agent::run()
}
