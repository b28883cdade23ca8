//! `hangar-agent` is linked statically, at a fixed address (`-static -no-pie`).
//!
//! There is one agent per sandbox, so what each keeps privately is what an idle sandbox costs. Loaded at a
//! random address, a position-independent agent has every page of its read-only data that holds a pointer
//! (vtables, panic locations, the GOT: 68 KiB) written by the dynamic loader at start, a private copy in every
//! agent; and each shared library brings its own written pages (the loader's, the C library's relocated data,
//! libm's, libgcc's). Static and at its link address, those pages stay the binary's, shared by all agents:
//! 128 KiB private per idle agent instead of 258 (`hangar bench --density`).
//!
//! The price is the randomization of the agent's own image (its heap, stack and mappings are still placed at
//! random). The agent is Rust, and what a workload can send it is its output (journaled, not parsed) and, in
//! a sandbox with a network, DNS queries to the resolver (`hangar-agent netd`, the same binary, parsed by
//! `simple-dns`). The `hangar` binary keeps the defaults.
//!
//! How: rustc links a binary of this crate against the shared C library (`-Bdynamic -lgcc_s … -lc`, as the
//! crate is built without `crt-static`, which cargo cannot set for one binary). The agent's link gets `-static`,
//! and a directory of its own first in the search path where each of those names is the static archive
//! (`libgcc_s.a` is libgcc's unwinder, `libgcc_eh.a`). Without the C library's archives (no `libc6-dev`) the
//! agent is linked dynamically, still at a fixed address.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rustc-link-arg-bin=hangar-agent=-no-pie");
    match static_archives() {
        Some(dir) => {
            println!("cargo:rustc-link-arg-bin=hangar-agent=-static");
            println!("cargo:rustc-link-arg-bin=hangar-agent=-L{}", dir.display());
        }
        None => println!("cargo:warning=no static C library (libc6-dev): hangar-agent is linked dynamically"),
    }
}

/// A directory where the libraries rustc names are their static archives, or `None` without them.
fn static_archives() -> Option<PathBuf> {
    let libc = gcc_file("libc.a")?;
    let libdir = libc.parent()?;
    let gcc_eh = gcc_file("libgcc_eh.a")?;
    let dir = PathBuf::from(std::env::var_os("OUT_DIR")?).join("static");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    std::os::unix::fs::symlink(&gcc_eh, dir.join("libgcc_s.a")).ok()?;
    for name in ["c", "m", "rt", "pthread", "dl", "util"] {
        let archive = libdir.join(format!("lib{name}.a"));
        if archive.exists() {
            std::os::unix::fs::symlink(&archive, dir.join(format!("lib{name}.a"))).ok()?;
        }
    }
    Some(dir)
}

/// Where the C compiler finds a library file (`cc -print-file-name`), if it does.
fn gcc_file(name: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(cc).arg(format!("-print-file-name={name}")).output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_absolute().then_some(path)
}
