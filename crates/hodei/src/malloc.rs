//! glibc's allocator, tuned for buffers of a few hundred KiB.
//!
//! A job's output moves in buffers of up to 1 MiB: the agent reads its
//! pipes into them, and the orchestrator decodes each HWP message into one
//! and reads log pages back into others for followers. By default glibc
//! serves an allocation of 128 KiB or more with a fresh `mmap` (it raises
//! that threshold by itself only to the size of such a block once one is
//! freed) and gives it back with `munmap`, so such a buffer costs a page
//! fault and a zeroed page per 4 KiB it touches, and its release a TLB
//! flush on every core the process ran on. A profile of the logs benchmark
//! showed those faults in the copies into the HWP decoder's buffer and
//! into the pipe reads; with the settings below it stored 346 MB/s
//! against 295 MB/s without (medians of ten runs each, alternating;
//! `docs/performance.md`).
//!
//! Allocations below [`MMAP_THRESHOLD`] therefore come from the heap, which
//! keeps up to [`TRIM_THRESHOLD`] of free memory at its top for reuse
//! instead of giving it back at once. Users who set glibc's malloc tunables
//! themselves (`GLIBC_TUNABLES=glibc.malloc.…`) keep theirs.

/// Allocations of at least this many bytes get their own mapping.
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory kept at the top of the heap before it is returned.
const TRIM_THRESHOLD: i32 = 32 << 20;

/// Applies the settings, unless the environment sets malloc tunables. Call
/// it first thing in `main`, before any thread exists.
pub fn tune() {
    let tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.to_string_lossy().contains("glibc.malloc.") {
        return;
    }
    set();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set() {
    use nix::libc::{M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt};
    // SAFETY: `mallopt` only changes the allocator's parameters; it is
    // called before any other thread exists, so no allocation races it.
    let ok = unsafe {
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    };
    if !ok {
        // Nothing depends on it: the defaults are only slower.
        eprintln!("hodei: warning: cannot tune the allocator (mallopt failed)");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set() {}
