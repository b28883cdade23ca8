//! The device allow-list of a sandbox, as data, and its cgroup v2 form: a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program attached to the sandbox's cgroup (cgroup v2 has no `devices` controller; runc and crun do the
//! same). On cgroup v1 the same list is written to `devices.allow` (see `cgroups`).

use crate::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A device a sandbox may open: character device `major:minor` (`None`: any minor), read and write, never
/// mknod. Keep in step with the nodes bind-mounted into its `/dev` (see `rootfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedDevice {
    /// What it is, for people.
    pub name: &'static str,
    /// Major number.
    pub major: u32,
    /// Minor number, or any.
    pub minor: Option<u32>,
}

/// runc's default list less the mknod wildcard: the nodes of the sandbox's `/dev` and its pseudo-terminals.
pub const ALLOWED_DEVICES: &[AllowedDevice] = &[
    AllowedDevice { name: "null", major: 1, minor: Some(3) },
    AllowedDevice { name: "zero", major: 1, minor: Some(5) },
    AllowedDevice { name: "full", major: 1, minor: Some(7) },
    AllowedDevice { name: "random", major: 1, minor: Some(8) },
    AllowedDevice { name: "urandom", major: 1, minor: Some(9) },
    AllowedDevice { name: "tty", major: 5, minor: Some(0) },
    AllowedDevice { name: "ptmx", major: 5, minor: Some(2) },
    AllowedDevice { name: "pts", major: 136, minor: None },
];

impl AllowedDevice {
    /// The cgroup v1 `devices.allow` line.
    pub fn v1_rule(&self) -> String {
        match self.minor {
            Some(m) => format!("c {}:{m} rw", self.major),
            None => format!("c {}:* rw", self.major),
        }
    }
}

// BPF instruction encoding (include/uapi/linux/bpf.h, bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;
const DEVCG_DEV_CHAR: i32 = 2;
const DEVCG_ACC_READ: i32 = 2;
const DEVCG_ACC_WRITE: i32 = 4;
const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const ATTACH_CGROUP_DEVICE: u32 = 6;
const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_ATTACH: i64 = 8;

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high one
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// The program: allow (return 1) a char device on the list opened for read and/or write, deny (0) anything
/// else, mknod included. Registers: r2 type, r3 access, r4 major, r5 minor (from `struct
/// bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` in r1).
fn program(allowed: &[AllowedDevice]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for d in allowed {
        let mut block = vec![insn(JMP_JNE_K, 2, 0, 0, DEVCG_DEV_CHAR), insn(JMP_JNE_K, 4, 0, 0, d.major as i32)];
        if let Some(minor) = d.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.extend([
            insn(ALU64_MOV_X, 6, 3, 0, 0),
            insn(ALU64_AND_K, 6, 0, 0, !(DEVCG_ACC_READ | DEVCG_ACC_WRITE)),
            insn(JMP_JNE_K, 6, 0, 0, 0),
            insn(ALU64_MOV_K, 0, 0, 0, 1),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ]);
        // Every jump in the block goes to the next block (the instruction after this block's exit).
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.extend([insn(ALU64_MOV_K, 0, 0, 0, 0), insn(JMP_EXIT, 0, 0, 0, 0)]);
    p
}

fn bpf(cmd: i64, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: bpf(2) reads (and for some commands writes) the attribute union we own, of the size given.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Loads the allow-list program and attaches it to the cgroup v2 directory `cgroup`: from then on every
/// process in it (and below) can open or make only the listed devices.
pub fn attach_v2_filter(cgroup: BorrowedFd<'_>, what: &str) -> Result<()> {
    let prog = program(ALLOWED_DEVICES);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    attr[0] = PROG_TYPE_CGROUP_DEVICE as u64 | ((prog.len() as u64) << 32);
    attr[1] = prog.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32); // log level 1, log size
    attr[4] = log.as_mut_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let verifier = String::from_utf8_lossy(&log).trim_end_matches('\0').trim().to_string();
        Error::Unsupported(format!("load the device filter for {what}: {e}: {verifier}"))
    })?;
    // SAFETY: bpf(BPF_PROG_LOAD) returned a new descriptor that only we own.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = [0u64; 16];
    attr[0] = cgroup.as_raw_fd() as u64 | ((prog_fd.as_raw_fd() as u64) << 32);
    attr[1] = ATTACH_CGROUP_DEVICE as u64; // attach_flags 0: the only program, not overridable below
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map_err(|e| Error::Unsupported(format!("attach the device filter to {what}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_rules_match_the_list() {
        let rules: Vec<String> = ALLOWED_DEVICES.iter().map(AllowedDevice::v1_rule).collect();
        assert_eq!(rules[0], "c 1:3 rw");
        assert_eq!(rules.last().unwrap(), "c 136:* rw");
    }

    #[test]
    fn every_jump_lands_on_the_next_block_or_the_final_deny() {
        let p = program(ALLOWED_DEVICES);
        let deny = p.len() - 2;
        assert_eq!((p[deny].code, p[deny].imm, p[deny + 1].code), (ALU64_MOV_K, 0, JMP_EXIT));
        for (i, ins) in p.iter().enumerate().filter(|(_, i)| i.code == JMP_JNE_K) {
            let target = i + 1 + ins.off as usize;
            // A block starts with the type check; the last block's jumps reach the deny.
            assert!(
                target == deny || (p[target].code == JMP_JNE_K && p[target].regs == 2),
                "jump at {i} lands on {target}"
            );
        }
    }

    /// The filter, attached to a real cgroup v2 directory (the unified hierarchy of a hybrid host, or the
    /// v2 root), keeps a process in it from opening a device not on the list while the listed ones work.
    /// Needs root and a cgroup2 mount; fails saying so otherwise.
    #[test]
    fn the_v2_filter_denies_unlisted_devices_to_a_process_in_the_cgroup() {
        assert!(nix::unistd::Uid::effective().is_root(), "this test attaches a BPF program and must run as root");
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|p| {
                nix::sys::statfs::statfs(*p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            })
            .expect("no cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup");
        let dir = std::path::Path::new(root).join(format!("hangar-devfilter-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        attach_v2_filter(std::os::fd::AsFd::as_fd(&fd), "the test cgroup").unwrap();
        // A child tries the devices outside the cgroup (the control), then joins it and tries them again.
        let procs = dir.join("cgroup.procs");
        let script = format!(
            r#"import os
def tries():
    out = []
    for dev in ["/dev/null", "/dev/urandom", "/dev/kmsg"]:
        try:
            os.close(os.open(dev, os.O_RDONLY | os.O_NONBLOCK)); out.append(dev + " ok")
        except OSError as e:
            out.append(dev + " " + os.strerror(e.errno))
    return ", ".join(out)
print("outside:", tries())
open("{}", "w").write(str(os.getpid()))
print("inside:", tries())"#,
            procs.display()
        );
        let out = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(
            text,
            "outside: /dev/null ok, /dev/urandom ok, /dev/kmsg ok\n\
             inside: /dev/null ok, /dev/urandom ok, /dev/kmsg Operation not permitted\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
