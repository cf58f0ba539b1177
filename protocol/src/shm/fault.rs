//! Deliberate faults, for tests that prove a protection holds.

use crate::store::StoreReader;

/// Stores into the first word of a read-only store mapping. The mapping is
/// `PROT_READ`, so the kernel kills the process with SIGSEGV before the store
/// completes; this function exists so a test can assert exactly that (the
/// worker's `--test-fault write-segment` calls it). It is not a way to write
/// to the store: it never returns.
pub fn write_to_read_only_store(reader: &StoreReader) -> ! {
    let ptr = reader.mapping().base_ptr().cast::<u64>();
    // SAFETY: deliberately unsound-looking on purpose: the page is mapped
    // PROT_READ, so this store cannot take effect; the CPU faults and the kernel
    // delivers SIGSEGV, whose default action terminates the process. The
    // pointer itself is valid, aligned and mapped (it is the mapping's base).
    unsafe { std::ptr::write_volatile(ptr.as_ptr(), 0xdead_beef) };
    // Reached only if the mapping was writable, which would be a bug in `open`.
    std::process::abort()
}
