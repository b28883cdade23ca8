//! The sandbox's root filesystem, built by the agent inside its own mount namespace: nothing here is ever
//! visible on the host, and all of it disappears with the namespace.

use crate::{Error, MountSpec, OverlaySpec, Result, RootfsSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Files in /proc that leak host information or allow host-wide actions: hidden (as in runc's defaults).
const MASKED_PATHS: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Kernel tunables that must not be written from a sandbox: remounted read-only.
const READONLY_PATHS: &[&str] = &["proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger"];

/// Host device nodes bind-mounted into the sandbox's tmpfs /dev (bind, not mknod, so this also works
/// without CAP_MKNOD in a user namespace later). Keep in step with `devices::ALLOWED_DEVICES`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

pub(crate) fn unshare_cgroup_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| Error::sys("unshare", "cgroup namespace", e))
}

/// Mounts the root overlay and everything over it at `spec.mountpoint`, then makes it the process's root.
pub(crate) fn build_and_pivot(spec: &RootfsSpec) -> Result<()> {
    // Stop mount events from propagating back to the host's namespace.
    mnt(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    let root = &spec.mountpoint;
    // Overlay options are shown in the sandbox's /proc/*/mountinfo as given: given relative to the directory
    // that holds both the image layers and the sandbox's own (the state directory), they show no host path.
    let base = common_ancestor(&spec.root.upper, spec.root.lower.first().unwrap_or(&spec.root.upper));
    nix::unistd::chdir(&base).map_err(|e| Error::sys("chdir", base.display(), e))?;
    mount_overlay(&spec.root, root, &base)?;
    for m in &spec.mounts {
        match m {
            MountSpec::Overlay { target, overlay } => mount_overlay(overlay, &inside(root, target)?, &base)?,
        }
    }
    mount_dev(root)?;
    mount_proc_and_sys(root)?;
    for dir in ["tmp", "root", "run"] {
        mkdir_p(&root.join(dir))?;
    }
    // Only when the image says otherwise: any chmod copies the directory up into the sandbox's writable layer.
    let tmp = root.join("tmp");
    if fs::metadata(&tmp).is_ok_and(|m| m.permissions().mode() & 0o7777 != 0o1777) {
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777));
    }
    pivot(root)
}

/// Overlays are `nodev` (a device node in an image layer or made in the sandbox opens nothing) and `nosuid`
/// (no_new_privs already makes setuid bits inert inside; this says so to the kernel too).
///
/// They are also `volatile` (Linux 5.10 and later): the overlay never syncs its upper layer. Without it, the
/// unmount that ends every sandbox runs `syncfs` on the host filesystem below (`ovl_sync_fs`), which waits
/// for every dirty page of every tenant on that disk: one sandbox's teardown took 0.6–1.9 s when another
/// process had written a GiB. A sandbox's writes are disposable, so there is nothing a sync would protect
/// (after a host crash its upper layer is deleted like any ended sandbox's). Older kernels get a plain overlay.
fn mount_overlay(o: &OverlaySpec, target: &Path, base: &Path) -> Result<()> {
    let rel = |p: &Path| match p.strip_prefix(base) {
        Ok(r) if !r.as_os_str().is_empty() && base != Path::new("/") => r.display().to_string(),
        _ => p.display().to_string(),
    };
    let lower = o.lower.iter().map(|p| rel(p)).collect::<Vec<_>>().join(":");
    let data = format!("lowerdir={lower},upperdir={},workdir={}", rel(&o.upper), rel(&o.work));
    mkdir_p(target)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match mount(Some("overlay"), target, Some("overlay"), flags, Some(format!("{data},volatile").as_str())) {
        Err(nix::errno::Errno::EINVAL) => mnt(Some("overlay"), target, Some("overlay"), flags, Some(&data)),
        r => r.map_err(|e| Error::sys("mount", format!("overlay on {}", target.display()), e)),
    }
}

fn mount_proc_and_sys(root: &Path) -> Result<()> {
    let proc_ = root.join("proc");
    mkdir_p(&proc_)?;
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt(Some("proc"), &proc_, Some("proc"), quiet, None)?;
    let sys = root.join("sys");
    mkdir_p(&sys)?;
    mnt(Some("sysfs"), &sys, Some("sysfs"), quiet | MsFlags::MS_RDONLY, None)?;
    // Masked directories are read-only binds of one empty directory, made in the sandbox's /dev and removed
    // from it at once (a removed directory stays empty: nothing can be created in it), rather than a tmpfs:
    // every filesystem instance costs each idle sandbox kernel memory (see `cgroups`).
    let empty = root.join("dev/.masked");
    fs::create_dir(&empty).map_err(|e| Error::io("mkdir", &empty, e))?;
    for p in MASKED_PATHS {
        let path = root.join(p);
        match fs::metadata(&path) {
            Ok(md) if md.is_dir() => {
                mnt(Some(empty.to_str().unwrap_or_default()), &path, None, MsFlags::MS_BIND, None)?;
                mnt(None, &path, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | quiet, None)?;
            }
            Ok(_) => mnt(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None)?,
            Err(_) => {}
        }
    }
    fs::remove_dir(&empty).map_err(|e| Error::io("rmdir", &empty, e))?;
    for p in READONLY_PATHS {
        let path = root.join(p);
        if path.exists() {
            mnt(Some(path.to_str().unwrap_or_default()), &path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            mnt(None, &path, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | quiet, None)?;
        }
    }
    Ok(())
}

fn mount_dev(root: &Path) -> Result<()> {
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    mnt(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        // nodev: the devices below are bind mounts, which keep their own flags; a node made here opens nothing.
        // noexec: nothing here is a program (and /dev/shm, a directory of this filesystem, was always noexec).
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for d in DEVICES {
        let target = dev.join(d);
        fs::File::create(&target).map_err(|e| Error::io("create", &target, e))?;
        mnt(Some(&format!("/dev/{d}")), &target, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    // /dev/shm is a directory of /dev's tmpfs, sharing its 64 MiB, not a tmpfs of its own: every filesystem
    // instance costs each idle sandbox kernel memory (see `cgroups`).
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777)).map_err(|e| Error::io("chmod", &shm, e))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let l = dev.join(link);
        symlink(to, &l).map_err(|e| Error::io("symlink", &l, e))?;
    }
    Ok(())
}

fn pivot(root: &Path) -> Result<()> {
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only the sandbox.
    nix::unistd::chdir(root).map_err(|e| Error::sys("chdir", root.display(), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| Error::sys("pivot_root", root.display(), e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Error::sys("umount", "old root", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir", "/", e))
}

/// Brings up `lo` in the sandbox's (otherwise empty) network namespace.
pub(crate) fn loopback_up() -> Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket", "loopback", e))?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own, on a socket we own.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Error::sys("SIOCGIFFLAGS", "lo", nix::Error::last()));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Error::sys("SIOCSIFFLAGS", "lo", nix::Error::last()));
        }
    }
    Ok(())
}

/// The deepest directory both paths are under.
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components().zip(b.components()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect()
}

/// `root/rel`, refusing relative paths that would climb out of `root`.
fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(Error::Unsupported(format!("mount target {} is not a plain relative path", rel.display())));
    }
    Ok(root.join(rel))
}

fn mkdir_p(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| Error::io("mkdir", p, e))
}

fn mnt(src: Option<&str>, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<()> {
    mount(src, target, fstype, flags, data)
        .map_err(|e| Error::sys("mount", format!("{} on {}", fstype.or(src).unwrap_or("remount"), target.display()), e))
}
