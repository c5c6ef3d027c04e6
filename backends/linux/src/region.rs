//! Shared-memory regions: creation (memfd or file), mapping, and cleanup on drop.
//!
//! A created region is fully backed at creation (`fallocate`), so exhausting tmpfs or a memory
//! cgroup shows up as [`RegionError::NoSpace`] here rather than as SIGBUS when a page is first
//! touched. memfds are sealed against shrinking and growing, so nobody can truncate a region
//! that is still mapped. This module never interprets the bytes; `shmlink-core` does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use shmlink_core::region::Region;

/// Where a peer's file-mode region may be, for [`SharedRegion::open_peer_file`].
#[derive(Clone, Copy, Debug)]
pub struct PeerFilePolicy<'a> {
    /// Directories the file must sit in (directly or in a subdirectory), after resolving
    /// symbolic links.
    pub dirs: &'a [PathBuf],
    /// The uid that must own the file (the peer's, from `SO_PEERCRED`), if known.
    pub owner: Option<u32>,
    /// The name of the setting that would allow a refused path, for the error.
    pub setting: &'static str,
}

/// Errors creating, opening or mapping a region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// Not enough memory (tmpfs space, memory cgroup) to back the region.
    #[error(
        "not enough memory to back {len} bytes of shared memory for {name:?}: {source}; \
         lower the buffer capacity or free space in /dev/shm"
    )]
    NoSpace {
        /// The region's name or path.
        name: String,
        /// Bytes requested.
        len: usize,
        /// The OS error (ENOSPC, ENOMEM).
        source: io::Error,
    },
    /// A file region's path already exists; shared-memory paths are never reused.
    #[error("shared-memory path {path:?} already exists; refusing to reuse it")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// Any other OS failure, with the call that failed.
    #[error("{call} failed for shared memory {name:?}: {source}")]
    Os {
        /// The system call.
        call: &'static str,
        /// The region's name or path.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// A region from the peer is not a regular file (memfd or tmpfs file).
    #[error("shared memory {name:?} from the peer is not a regular file")]
    NotRegular {
        /// The region's name or path.
        name: String,
    },
    /// A file path the peer announced is not one we map: outside the allowed directories,
    /// a symbolic link, not a regular file, or owned by another user.
    #[error(
        "refusing the peer's shared-memory path {path:?}: {reason}; \
         allow it with the `{setting}` setting"
    )]
    Refused {
        /// The path as announced.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The setting that would allow it.
        setting: &'static str,
    },
    /// A region from the peer has a size no shmipc region can have.
    #[error("shared memory {name:?} from the peer has size {len}, which cannot be mapped")]
    BadSize {
        /// The region's name or path.
        name: String,
        /// Its size.
        len: u64,
    },
}

fn os<'n>(call: &'static str, name: &'n str) -> impl FnOnce(rustix::io::Errno) -> RegionError + 'n {
    move |e| RegionError::Os {
        call,
        name: name.to_owned(),
        source: e.into(),
    }
}

/// One mapped shared-memory region. Unmapped on drop; a file region may also be removed.
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    name: String,
    path: Option<PathBuf>,
    remove_on_drop: AtomicBool,
}

// SAFETY: the mapping is shared memory that other processes write concurrently anyway; it is
// only accessed through `Region` (atomics and explicit raw-pointer code), never through
// references that assume exclusivity, so moving or sharing the handle across threads is sound.
unsafe impl Send for SharedRegion {}
// SAFETY: as above.
unsafe impl Sync for SharedRegion {}

/// The largest region we map: offsets in shmipc are u32.
const MAX_REGION: u64 = u32::MAX as u64;

impl SharedRegion {
    /// Creates a memfd of `len` bytes named `shmipc{name}` (Go's convention), backs it with
    /// `fallocate`, seals its size and maps it.
    pub fn create_memfd(name: &str, len: usize) -> Result<Self, RegionError> {
        let memfd_name = format!("shmipc{name}");
        let fd = rustix::fs::memfd_create(
            memfd_name.as_str(),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(os("memfd_create", name))?;
        allocate(&fd, name, len)?;
        // Seal the size: a region that can no longer shrink cannot SIGBUS its mappers.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(os("fcntl(F_ADD_SEALS)", name))?;
        Self::map(fd, name.to_owned(), len, None)
    }

    /// Creates the file `path` (exclusively, mode 0600), backs it with `fallocate` and maps
    /// it. The file is removed when the region is dropped.
    pub fn create_file(path: &Path, len: usize) -> Result<Self, RegionError> {
        let name = path.display().to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| RegionError::Os {
                call: "mkdir",
                name: name.clone(),
                source,
            })?;
        }
        let fd = rustix::fs::open(
            path,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => RegionError::Exists {
                path: path.to_owned(),
            },
            e => RegionError::Os {
                call: "open",
                name: name.clone(),
                source: e.into(),
            },
        })?;
        if let Err(e) = allocate(&fd, &name, len) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Self::map(fd, name, len, Some(path.to_owned())).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
    }

    /// Opens and maps a file region the peer created. Its size comes from `fstat`; the caller
    /// validates the headers against it. The file is kept on drop until the caller, having
    /// validated it, asks for removal with [`set_remove_on_drop`](Self::set_remove_on_drop)
    /// (Go removes it on close, whichever side closes first).
    pub fn open_file(path: &Path) -> Result<Self, RegionError> {
        let name = path.display().to_string();
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(os("open", &name))?;
        let len = peer_size(&fd, &name)?;
        let region = Self::map(fd, name, len, Some(path.to_owned()))?;
        region.set_remove_on_drop(false);
        Ok(region)
    }

    /// Opens and maps a file region the peer created, confined by `policy`: the file is opened
    /// without following a final symbolic link (`O_NOFOLLOW`, and `O_NONBLOCK` so a FIFO
    /// cannot stall us), then checked through the opened descriptor, so a swap of the path
    /// after the check cannot matter: it must be a regular file (`fstat`), owned by
    /// `policy.owner` when given, and its resolved path (`/proc/self/fd`) must lie inside one
    /// of `policy.dirs`. Otherwise [`RegionError::Refused`] names the path and
    /// `policy.setting`. Like [`open_file`](Self::open_file), the file is kept on drop until
    /// the caller asks for removal.
    pub fn open_peer_file(path: &Path, policy: &PeerFilePolicy<'_>) -> Result<Self, RegionError> {
        let name = path.display().to_string();
        let refuse = |reason: String| RegionError::Refused {
            path: path.to_owned(),
            reason,
            setting: policy.setting,
        };
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => refuse("it is a symbolic link".into()),
            e => os("open", &name)(e),
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(os("fstat", &name))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(refuse("it is not a regular file".into()));
        }
        if let Some(owner) = policy.owner {
            if stat.st_uid != owner {
                return Err(refuse(format!(
                    "it is owned by uid {}, the peer runs as uid {owner}",
                    stat.st_uid
                )));
            }
        }
        let resolved =
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| {
                RegionError::Os {
                    call: "readlink /proc/self/fd",
                    name: name.clone(),
                    source: e,
                }
            })?;
        let inside = policy
            .dirs
            .iter()
            .any(|dir| std::fs::canonicalize(dir).is_ok_and(|dir| resolved.starts_with(dir)));
        if !inside {
            return Err(refuse(format!(
                "it resolves to {} outside the allowed directories {:?}",
                resolved.display(),
                policy.dirs
            )));
        }
        let len = peer_size(&fd, &name)?;
        let region = Self::map(fd, name, len, Some(path.to_owned()))?;
        region.set_remove_on_drop(false);
        Ok(region)
    }

    /// Whether `fd` is a memfd sealed against shrinking: then no process can truncate it
    /// under our mapping (which would turn our next access into SIGBUS). Go never seals;
    /// files cannot be sealed.
    pub fn is_sealed_against_shrinking(fd: &OwnedFd) -> bool {
        rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK))
    }

    /// Maps a region received from the peer as an fd (memfd mode), its whole size (checked).
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Self, RegionError> {
        let len = peer_size(&fd, name)?;
        Self::map(fd, name.to_owned(), len, None)
    }

    fn map(
        fd: OwnedFd,
        name: String,
        len: usize,
        remove_on_drop: Option<PathBuf>,
    ) -> Result<Self, RegionError> {
        // SAFETY: a fresh MAP_SHARED mapping chosen by the kernel (null hint) of `len` bytes of a
        // regular shared-memory fd; it aliases nothing in this process. `len > 0` (checked by
        // the callers), and the pointer is owned by the returned value, which unmaps it once.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(os("mmap", &name))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| RegionError::BadSize {
            name: name.clone(),
            len: 0,
        })?;
        let remove = remove_on_drop.is_some();
        Ok(Self {
            ptr,
            len,
            fd,
            name,
            path: remove_on_drop,
            remove_on_drop: AtomicBool::new(remove),
        })
    }

    /// The mapping as a core [`Region`].
    pub fn region(&self) -> Region<'_> {
        // SAFETY: the mapping is live, readable and writable for as long as `self` is borrowed
        // (it is unmapped only in Drop), and page aligned.
        unsafe { Region::from_raw(self.ptr, self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes (never true for a mapped region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fd backing the region (to pass to the peer in memfd mode).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The name or path the region was created or opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether dropping the region removes its file (file regions only; default: yes).
    pub fn set_remove_on_drop(&self, remove: bool) {
        // SYNC: Relaxed; read in Drop, which the owner runs after this call (same thread or after a join).
        self.remove_on_drop.store(remove, Ordering::Relaxed);
    }

    /// The file backing the region, for file regions.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping created in `map`, unmapped only here. Every
        // `Region` borrowed from `self` has ended (they borrow `&self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        if let Some(path) = self.path.take().filter(|_| *self.remove_on_drop.get_mut()) {
            // The peer may have removed it first; that is fine.
            let _ = std::fs::remove_file(path);
        }
    }
}

fn allocate(fd: &OwnedFd, name: &str, len: usize) -> Result<(), RegionError> {
    if len == 0 || len as u64 > MAX_REGION {
        return Err(RegionError::BadSize {
            name: name.to_owned(),
            len: len as u64,
        });
    }
    rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, len as u64).map_err(|e| match e {
        rustix::io::Errno::NOSPC | rustix::io::Errno::NOMEM => RegionError::NoSpace {
            name: name.to_owned(),
            len,
            source: e.into(),
        },
        e => RegionError::Os {
            call: "fallocate",
            name: name.to_owned(),
            source: e.into(),
        },
    })
}

fn peer_size(fd: &OwnedFd, name: &str) -> Result<usize, RegionError> {
    let stat = rustix::fs::fstat(fd).map_err(os("fstat", name))?;
    // memfds and tmpfs files are regular files; never map a device, FIFO or directory a
    // peer names.
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(RegionError::NotRegular {
            name: name.to_owned(),
        });
    }
    let len = stat.st_size as u64;
    if len == 0 || len > MAX_REGION {
        return Err(RegionError::BadSize {
            name: name.to_owned(),
            len,
        });
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_region_is_zeroed_sealed_and_the_size_we_asked_for() {
        let r = SharedRegion::create_memfd("/test/memfd", 1 << 20).unwrap();
        assert_eq!(r.len(), 1 << 20);
        let seals = rustix::fs::fcntl_get_seals(r.fd()).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW));
        assert_eq!(
            rustix::fs::ftruncate(r.fd(), 4096),
            Err(rustix::io::Errno::PERM)
        );
        // A second mapping of the same fd (what the peer does) sees the same bytes.
        let dup = rustix::io::fcntl_dupfd_cloexec(r.fd(), 0).unwrap();
        let peer = SharedRegion::from_fd(dup, "/test/memfd").unwrap();
        assert_eq!(peer.len(), r.len());
        let p = r.region().bytes_ptr(100, 1).unwrap();
        // SAFETY: in bounds of a live mapping; single-threaded test.
        unsafe { p.as_ptr().write(42) };
        let q = peer.region().bytes_ptr(100, 1).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { q.as_ptr().read() }, 42);
    }

    #[test]
    fn file_region_is_exclusive_private_and_removed_on_drop() {
        let path = std::env::temp_dir().join(crate::name::unique_prefix("shmlink_region_test"));
        let r = SharedRegion::create_file(&path, 8192).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8192);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(matches!(
            SharedRegion::create_file(&path, 8192),
            Err(RegionError::Exists { .. })
        ));
        let peer = SharedRegion::open_file(&path).unwrap();
        assert_eq!(peer.len(), 8192);
        drop(r);
        assert!(!path.exists());
        drop(peer); // removing an already-removed file is fine
    }

    #[test]
    fn peer_paths_are_confined_to_the_allowed_directories_regular_files_and_the_peers_uid() {
        let dir = std::env::temp_dir().join(format!("shmlink-confine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("region");
        std::fs::write(&file, vec![0u8; 4096]).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let dirs = [dir.clone()];
        let policy = PeerFilePolicy {
            dirs: &dirs,
            owner: Some(me),
            setting: "Config::shm_dirs",
        };
        let refused = |path: &Path, policy: &PeerFilePolicy<'_>| match SharedRegion::open_peer_file(
            path, policy,
        ) {
            Err(RegionError::Refused { reason, .. }) => reason,
            Err(other) => panic!("wrong error for {}: {other}", path.display()),
            Ok(_) => panic!("{} was accepted", path.display()),
        };
        assert_eq!(
            SharedRegion::open_peer_file(&file, &policy).unwrap().len(),
            4096
        );
        // A symbolic link, even to an allowed file.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(refused(&link, &policy).contains("symbolic link"));
        // A FIFO: refused without blocking.
        let fifo = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(refused(&fifo, &policy).contains("not a regular file"));
        // Another owner than the peer's uid.
        let other = PeerFilePolicy {
            owner: Some(me.wrapping_add(1)),
            ..policy
        };
        assert!(refused(&file, &other).contains("owned by uid"));
        // Outside the allowed directories, also through `..`.
        let outside = [std::env::temp_dir().join("shmlink-nowhere")];
        let elsewhere = PeerFilePolicy {
            dirs: &outside,
            ..policy
        };
        assert!(refused(&file, &elsewhere).contains("outside the allowed directories"));
        let sneaky = dir.join("..").join("..").join("etc").join("hostname");
        if sneaky.exists() {
            let err = SharedRegion::open_peer_file(&sneaky, &policy).unwrap_err();
            assert!(
                matches!(err, RegionError::Refused { .. } | RegionError::Os { .. }),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_peer_path_that_is_not_a_regular_file_is_refused() {
        let err = SharedRegion::open_file(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, RegionError::NotRegular { .. }), "{err}");
        assert!(Path::new("/dev/null").exists(), "and never removed");
    }

    #[test]
    fn impossible_sizes_are_refused_before_any_allocation() {
        assert!(matches!(
            SharedRegion::create_memfd("/test/zero", 0),
            Err(RegionError::BadSize { .. })
        ));
        let too_big = u32::MAX as usize + 1;
        assert!(matches!(
            SharedRegion::create_memfd("/test/big", too_big),
            Err(RegionError::BadSize { .. })
        ));
    }
}
