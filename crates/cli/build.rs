//! `hangar-agent` is linked as a position-dependent executable (`-no-pie`).
//!
//! There is one agent per sandbox, so what each keeps privately is what an idle sandbox costs. Loaded at a
//! random address, a position-independent agent has every page of its read-only data that holds a pointer
//! (vtables, panic locations, the GOT: 68 KiB) written by the dynamic loader at start, a private copy in every
//! agent; at its link address those pages stay the binary's, shared by all agents. That is 56 KiB less per
//! idle sandbox (`hangar bench --density`). The price is the randomization of the agent's own image: the C
//! library, heap, stack and mappings are still placed at random. The agent is Rust, and what a workload can
//! send it is its output (journaled, not parsed) and, in a sandbox with a network, DNS queries to the
//! resolver (`hangar-agent netd`, the same binary, parsed by `simple-dns`). The `hangar` binary and the Pods'
//! static agent (scripts/agent-image) keep the default.

fn main() {
    println!("cargo:rustc-link-arg-bin=hangar-agent=-no-pie");
}
