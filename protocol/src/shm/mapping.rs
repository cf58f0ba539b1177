//! Named POSIX shared-memory objects mapped as slices of `AtomicU64`.
//!
//! The coordinator creates a segment (`O_CREAT|O_EXCL`, mode 0600) and maps it
//! read-write; workers open it `O_RDONLY` and map it `PROT_READ`, so a stray
//! store from a worker faults instead of corrupting the candles. The file
//! descriptor is closed right after `mmap`: the mapping outlives it, and no
//! descriptor is left to leak into spawned children.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use nix::errno::Errno;
use nix::fcntl::{OFlag, posix_fallocate};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::ftruncate;

/// Whether a mapping may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    ReadOnly,
    ReadWrite,
}

/// A live `MAP_SHARED` mapping of a whole shared-memory object.
///
/// Invariants: `ptr` is page-aligned (so 8-byte aligned), `len` is a non-zero
/// multiple of 8, and the range stays mapped until `Drop`.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
    access: Access,
}

// SAFETY: the mapping is plain shared memory that every access goes through
// `AtomicU64`, which is `Sync`; no thread-affine state is attached to it.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access is through atomics only.
unsafe impl Sync for Mapping {}

/// The outcome of opening an existing object, before any validation.
pub(crate) enum Opened {
    /// The object exists but has not been sized yet (a creator is between
    /// `shm_open` and `ftruncate`).
    Empty,
    /// Mapped, with the object's size in bytes as `fstat` reports it.
    Mapped(Mapping, usize),
}

impl Mapping {
    /// Creates `name` exclusively with mode 0600, sizes it to `len` bytes,
    /// reserves its memory and maps it read-write. On failure after creation
    /// the object is unlinked.
    ///
    /// The reservation (`posix_fallocate`) is what makes a too small
    /// `/dev/shm` an error here: without it the object is sparse, and the
    /// first store into a page the filesystem cannot supply kills the writer
    /// with SIGBUS, mid-run.
    pub(crate) fn create(name: &str, len: usize) -> Result<Mapping, (&'static str, Errno)> {
        let fd = shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| ("shm_open", e))?;
        let result = i64::try_from(len)
            .map_err(|_| ("ftruncate", Errno::EFBIG))
            .and_then(|l| {
                ftruncate(&fd, l).map_err(|e| ("ftruncate", e))?;
                posix_fallocate(&fd, 0, l).map_err(|e| ("posix_fallocate", e))
            })
            .and_then(|()| Self::map(&fd, len, Access::ReadWrite).map_err(|e| ("mmap", e)));
        if result.is_err() {
            let _ = shm_unlink(name);
        }
        result
    }

    /// Opens an existing object and maps all of it with `access`.
    pub(crate) fn open(name: &str, access: Access) -> Result<Opened, (&'static str, Errno)> {
        let flags = match access {
            Access::ReadOnly => OFlag::O_RDONLY,
            Access::ReadWrite => OFlag::O_RDWR,
        };
        let fd = shm_open(name, flags, Mode::empty()).map_err(|e| ("shm_open", e))?;
        let size = fstat(&fd).map_err(|e| ("fstat", e))?.st_size;
        let size = usize::try_from(size).map_err(|_| ("fstat", Errno::EOVERFLOW))?;
        if size == 0 {
            return Ok(Opened::Empty);
        }
        Self::map(&fd, size, access)
            .map(|m| Opened::Mapped(m, size))
            .map_err(|e| ("mmap", e))
    }

    fn map(fd: &OwnedFd, len: usize, access: Access) -> Result<Mapping, Errno> {
        // Round down: a trailing partial word is never addressed. A size that is
        // not a multiple of 8 is reported by the store's size check.
        let words_len = len & !7;
        let length = NonZeroUsize::new(words_len).ok_or(Errno::EINVAL)?;
        let prot = match access {
            Access::ReadOnly => ProtFlags::PROT_READ,
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        };
        // SAFETY: we ask the kernel for a fresh mapping at an address of its
        // choosing (`None`), so no existing Rust object is aliased or replaced.
        // The descriptor is valid for the duration of the call.
        let ptr = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, 0)? };
        Ok(Mapping {
            ptr,
            len: words_len,
            access,
        })
    }

    /// The whole mapping as words.
    ///
    /// On a read-only mapping callers must only *load* (Relaxed or Acquire):
    /// std documents such loads of a lock-free, at-most-pointer-sized atomic
    /// as permitted on read-only memory; a store would fault. Crate code that
    /// holds a read-only mapping never calls a store method, and no public
    /// type hands this slice out.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is page-aligned and valid for `len` bytes until `self`
        // is dropped (see the type's invariants); `AtomicU64` has the size and
        // alignment of `u64` and no invalid bit patterns; every access to the
        // memory, in this process or another, is atomic, so handing out shared
        // references to atomics cannot create a data race.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Size of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How the mapping may be accessed.
    pub(crate) fn access(&self) -> Access {
        self.access
    }

    /// The first byte of the mapping, for the fault-injection test only.
    #[cfg(feature = "testing")]
    pub(crate) fn base_ptr(&self) -> NonNull<c_void> {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `map`, and
        // every reference derived from `words()` borrows `self`, so none outlives
        // this call.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// Bytes free for unprivileged use on the filesystem behind POSIX shared
/// memory (`/dev/shm`), if it can be asked.
pub(crate) fn shm_free_bytes() -> Option<u64> {
    let st = nix::sys::statvfs::statvfs("/dev/shm").ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Removes the name `name`; mappings that are open stay valid until unmapped.
pub(crate) fn unlink(name: &str) -> Result<(), Errno> {
    shm_unlink(name)
}
