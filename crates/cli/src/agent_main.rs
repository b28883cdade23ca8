//! `hangar-agent`: PID 1 of every sandbox. Started by the engine, never by hand.

fn main() {
    hangar_agent::run()
}
