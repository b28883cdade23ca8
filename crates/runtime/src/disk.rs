//! Disk budgets for sandboxes: one btrfs volume with quota groups holds every sandbox's host-side directory,
//! each sandbox's writable layers (its `disk/` directory) are a subvolume of their own, and its quota group
//! limits what they may keep. A workload that fills its budget gets `EDQUOT` inside; the host's
//! disk and the other sandboxes are untouched. Files count by the space they take, so a flood of empty files
//! hits the same budget (btrfs allocates inodes as metadata, so there is no inode table to exhaust).
//!
//! Why btrfs: ext4 and XFS project quotas need the kernel's generic quota support, which hosts like this
//! project's do not build in ("The kernel was not built with CONFIG_QUOTA"); btrfs quota groups are btrfs's
//! own. A filesystem per sandbox would cost a mkfs and a loop mount on every create (~125 ms measured here);
//! a subvolume and a limit cost two ioctls.
//!
//! The volume is a sparse image file made once by `mkfs.btrfs` and mounted by `mount -o loop` (which detaches
//! the loop device on unmount) over the directory that holds the sandboxes; it stays mounted for every later
//! engine, and is mounted again after a reboot by the first engine that opens the state directory.

use crate::{Error, Result};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA`: squotas account extents to their owner once, far cheaper than
/// full quota groups on a write-heavy volume; `BTRFS_QUOTA_CTL_ENABLE` where a kernel lacks them.
const QUOTA_CTL_ENABLE_SIMPLE: u64 = 4;
const QUOTA_CTL_ENABLE: u64 = 1;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: limit what the subvolume refers to.
const QGROUP_LIMIT_MAX_RFER: u64 = 1;

/// `struct btrfs_ioctl_vol_args` of `include/uapi/linux/btrfs.h`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` (with `struct btrfs_qgroup_limit` inline).
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_readwrite!(quota_ctl, BTRFS_IOCTL_MAGIC, 40, QuotaCtlArgs);
nix::ioctl_read!(qgroup_limit, BTRFS_IOCTL_MAGIC, 43, QgroupLimitArgs);

/// The mounted volume that holds sandbox directories.
#[derive(Debug, Clone)]
pub struct DiskVolume {
    dir: PathBuf,
}

impl DiskVolume {
    /// Makes `dir` (empty, or already the volume) a mount of the volume in `image`, creating a sparse image of
    /// `size` bytes with `mkfs.btrfs` when there is none, with quotas on. Serialised across processes by a
    /// lock next to the image. Refuses a `dir` that holds anything (sandboxes made before budgets were on).
    pub fn ensure(dir: &Path, image: &Path, size: u64) -> Result<Self> {
        let lock_path = image.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::sys("flock", lock_path.display(), e))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))?;
        if !is_mounted_volume(dir)? {
            if std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?.next().is_some() {
                return Err(Error::Unsupported(format!(
                    "{} holds sandboxes made without disk budgets; budgets apply once it is empty",
                    dir.display()
                )));
            }
            if !image.exists() {
                let tmp = image.with_extension("new");
                let f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
                f.set_len(size).map_err(|e| Error::io("size", &tmp, e))?;
                drop(f);
                run(std::process::Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&tmp))?;
                std::fs::rename(&tmp, image).map_err(|e| Error::io("rename", image, e))?;
            }
            run(std::process::Command::new("mount")
                .args(["-t", "btrfs", "-o", "loop,nosuid,nodev,noatime"])
                .arg(image)
                .arg(dir))?;
        }
        let volume = Self { dir: dir.to_path_buf() };
        volume.enable_quotas()?;
        Ok(volume)
    }

    /// The directory the volume is mounted on.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn enable_quotas(&self) -> Result<()> {
        let d = std::fs::File::open(&self.dir).map_err(|e| Error::io("open", &self.dir, e))?;
        let mut last = nix::Error::EINVAL;
        for cmd in [QUOTA_CTL_ENABLE_SIMPLE, QUOTA_CTL_ENABLE] {
            let mut args = QuotaCtlArgs { cmd, status: 0 };
            // SAFETY: the ioctl reads and writes the argument struct we own, on a descriptor we hold.
            match unsafe { quota_ctl(d.as_raw_fd(), &mut args) } {
                Ok(_) => return Ok(()),
                // Already on (in the other mode): fine.
                Err(nix::Error::EEXIST) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(Error::sys("enable btrfs quotas on", self.dir.display(), last))
    }

    /// Creates `sandbox_dir` (a new entry of a directory on the volume) as a subvolume limited to `bytes`:
    /// everything created below it counts.
    pub fn create_with_budget(&self, sandbox_dir: &Path, bytes: u64) -> Result<()> {
        let parent = sandbox_dir.parent().unwrap_or(&self.dir);
        let name =
            sandbox_dir.file_name().ok_or_else(|| Error::Unsupported(format!("{}: no name", sandbox_dir.display())))?;
        let mut args = VolArgs { fd: 0, name: [0; 4088] };
        let bytes_name = name.as_bytes();
        if bytes_name.len() >= args.name.len() || CString::new(bytes_name).is_err() {
            return Err(Error::Unsupported(format!("{}: bad subvolume name", sandbox_dir.display())));
        }
        args.name[..bytes_name.len()].copy_from_slice(bytes_name);
        let p = std::fs::File::open(parent).map_err(|e| Error::io("open", parent, e))?;
        // SAFETY: the ioctl reads the argument struct we own (a NUL-terminated name), on a descriptor we hold.
        unsafe { subvol_create(p.as_raw_fd(), &args) }
            .map_err(|e| Error::sys("create subvolume", sandbox_dir.display(), e))?;
        let sub = std::fs::File::open(sandbox_dir).map_err(|e| Error::io("open", sandbox_dir, e))?;
        // qgroupid 0: the subvolume the descriptor is in.
        let mut limit = QgroupLimitArgs {
            qgroupid: 0,
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        };
        // SAFETY: the ioctl reads the argument struct we own, on a descriptor we hold.
        unsafe { qgroup_limit(sub.as_raw_fd(), &mut limit) }
            .map_err(|e| Error::sys("limit subvolume", sandbox_dir.display(), e))?;
        Ok(())
    }
}

/// Whether `dir` is the root of a btrfs mount other than its parent's filesystem.
fn is_mounted_volume(dir: &Path) -> Result<bool> {
    let st = nix::sys::statfs::statfs(dir).map_err(|e| Error::sys("statfs", dir.display(), e))?;
    if st.filesystem_type().0 as i64 != BTRFS_SUPER_MAGIC {
        return Ok(false);
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    Ok(matches!((std::fs::metadata(dir), std::fs::metadata(parent)), (Ok(a), Ok(b)) if a.dev() != b.dev()))
}

fn run(cmd: &mut std::process::Command) -> Result<()> {
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Unsupported(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Unsupported(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}
