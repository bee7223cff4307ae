//! The process heap as agentmesh services see it.
//!
//! Services use glibc's malloc (measured against mimalloc and jemalloc in
//! `docs/performance.md`). glibc keeps memory it has handed out in its
//! arenas after it is freed, so a service that held 10,000 open runs keeps
//! their memory resident after they end unless it asks glibc to give the
//! free pages back. This crate is that one conversation with the
//! allocator:
//!
//! * [`stats`]: what the heap holds — in use, free inside the arenas,
//!   mapped directly — for the admin port's `/debug/heap` and the
//!   `heap_*` gauges.
//! * [`trim`]: gives free arena pages back to the system (`malloc_trim`),
//!   which the services call when much of the heap is free.
//!
//! On other C libraries both answer `None`: there is nothing to report or
//! trim through this interface.

use serde::Serialize;

/// The heap's figures, in bytes (glibc's `mallinfo2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeapStats {
    /// Bytes in the arenas' heaps (obtained by `brk`/`mmap` for arenas).
    pub arena_bytes: u64,
    /// Bytes in blocks allocated with their own `mmap` (large allocations).
    pub mapped_bytes: u64,
    /// Bytes handed out and not yet freed.
    pub in_use_bytes: u64,
    /// Bytes free inside the arenas: resident until trimmed or reused.
    pub free_bytes: u64,
    /// Bytes at the top of the main heap that a trim could release.
    pub releasable_bytes: u64,
}

/// The heap's figures now, or `None` where the allocator cannot say.
pub fn stats() -> Option<HeapStats> {
    imp::stats()
}

/// Gives free memory in the arenas back to the system. `Some(true)` when
/// some was released, `None` where the allocator cannot trim.
///
/// It walks every arena under its lock, so it costs milliseconds on a big
/// heap: call it when memory is worth getting back, not on a hot path.
pub fn trim() -> Option<bool> {
    imp::trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::HeapStats;

    #[expect(
        unsafe_code,
        reason = "mallinfo2 reads the allocator's counters; it takes no \
                  arguments, has no preconditions and returns a plain struct"
    )]
    pub(super) fn stats() -> Option<HeapStats> {
        // SAFETY: mallinfo2 has no preconditions (glibc ≥ 2.33, which every
        // supported distribution ships) and only reads allocator state
        // under the arenas' locks.
        let info = unsafe { libc::mallinfo2() };
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Some(HeapStats {
            arena_bytes: bytes(info.arena),
            mapped_bytes: bytes(info.hblkhd),
            in_use_bytes: bytes(info.uordblks),
            free_bytes: bytes(info.fordblks),
            releasable_bytes: bytes(info.keepcost),
        })
    }

    #[expect(
        unsafe_code,
        reason = "malloc_trim releases free pages; it takes a padding size \
                  and has no preconditions"
    )]
    pub(super) fn trim() -> Option<bool> {
        // SAFETY: malloc_trim has no preconditions; it only returns free
        // pages of every arena to the system (madvise), under their locks.
        Some(unsafe { libc::malloc_trim(0) } == 1)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::HeapStats;

    pub(super) fn stats() -> Option<HeapStats> {
        None
    }

    pub(super) fn trim() -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_shows_as_free_and_a_trim_gives_it_back() {
        // Many small blocks (not mmapped one by one), then all freed.
        let before = stats().unwrap();
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 2_000]).collect();
        let holding = stats().unwrap();
        assert!(
            holding.in_use_bytes >= before.in_use_bytes + 30_000_000,
            "{before:?} -> {holding:?}"
        );
        drop(blocks);
        let freed = stats().unwrap();
        assert!(
            freed.in_use_bytes + 30_000_000 <= holding.in_use_bytes,
            "{holding:?} -> {freed:?}"
        );
        // Test threads share the arenas with others, so only this much is
        // certain: trimming answers, and frees nothing that is in use.
        assert!(trim().is_some());
        let trimmed = stats().unwrap();
        assert!(
            trimmed.free_bytes <= freed.free_bytes + 1_000_000,
            "{freed:?} -> {trimmed:?}"
        );
    }
}
