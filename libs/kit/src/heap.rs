//! Memory given back after a peak.
//!
//! glibc keeps freed memory in its arenas for reuse, so a service that
//! held many runs or large requests at once stays at its peak resident size
//! long after. Every `server.heap_trim_interval` (10 s by default) the
//! trimmer reads the heap's figures and, when much of what is resident holds
//! nothing — more than a quarter of what is in use, and [`MIN_FREE_BYTES`]
//! more than right after its last trim — asks glibc to return the free pages
//! ([`agentmesh_heap::trim`]). Under steady load the free part stays small
//! and nothing is trimmed: trimming walks every arena under its lock, so it
//! is kept for when it pays. What is resident and not in use is the measure,
//! not glibc's free figure: glibc still counts the pages it gave back as
//! free, so by that figure a heap looks worth trimming forever after its
//! first trim; and the resident size alone does not move when the runs of
//! a peak end (their memory turns free where it is).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Free heap below this is left for reuse.
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether a heap in this state is worth trimming: `resident` is the
/// process's resident size now, `unused_after_last_trim` what was resident
/// and not in use right after the last trim (0 before any).
pub fn worth_trimming(
    stats: &agentmesh_heap::HeapStats,
    resident: u64,
    unused_after_last_trim: u64,
) -> bool {
    let unused = resident.saturating_sub(stats.in_use_bytes);
    stats.free_bytes > MIN_FREE_BYTES
        && unused > stats.in_use_bytes / 4
        && unused > unused_after_last_trim.saturating_add(MIN_FREE_BYTES)
}

/// Checks the heap every `interval` until `stop` is cancelled (`interval`
/// zero: never), trimming when [`worth_trimming`].
pub fn spawn_trimmer(interval: Duration, stop: CancellationToken) {
    if interval.is_zero() || agentmesh_heap::stats().is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        // What was resident and not in use right after the last trim.
        let mut unused_after_last_trim = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let trimmed = tokio::task::spawn_blocking(move || {
                let before = agentmesh_heap::stats()?;
                let (resident, _) = crate::profiling::resident_bytes()?;
                if !worth_trimming(&before, resident, unused_after_last_trim) {
                    return None;
                }
                agentmesh_heap::trim();
                let (resident_after, _) = crate::profiling::resident_bytes()?;
                let after = agentmesh_heap::stats()?;
                Some((
                    before,
                    resident_after.saturating_sub(after.in_use_bytes),
                    after,
                ))
            })
            .await;
            if let Ok(Some((before, unused_after, after))) = trimmed {
                unused_after_last_trim = unused_after;
                tracing::debug!(
                    free_before = before.free_bytes,
                    free_after = after.free_bytes,
                    in_use = after.in_use_bytes,
                    "gave free heap memory back to the system"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(in_use_mib: u64, free_mib: u64) -> agentmesh_heap::HeapStats {
        agentmesh_heap::HeapStats {
            arena_bytes: (in_use_mib + free_mib) << 20,
            mapped_bytes: 0,
            in_use_bytes: in_use_mib << 20,
            free_bytes: free_mib << 20,
            releasable_bytes: 0,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn only_a_heap_that_is_mostly_free_is_trimmed() {
        // After 10,000 runs ended: most of the heap is free.
        assert!(worth_trimming(&heap(80, 1_200), 1_300 * MIB, 0));
        // Small free lists are reused, not trimmed.
        assert!(!worth_trimming(&heap(10, 40), 60 * MIB, 0));
        // A big busy heap with the churn of its load free.
        assert!(!worth_trimming(&heap(2_000, 300), 2_300 * MIB, 0));
        assert!(worth_trimming(&heap(2_000, 600), 2_600 * MIB, 0));
    }

    #[test]
    fn a_trimmed_heap_is_not_trimmed_again_for_nothing() {
        // Right after a trim glibc still counts the pages it gave back as
        // free, but they are no longer resident.
        assert!(!worth_trimming(&heap(80, 1_200), 150 * MIB, 70 * MIB));
        // Some pages could not be given back: that much unused stays put.
        assert!(!worth_trimming(&heap(80, 1_200), 250 * MIB, 170 * MIB));
    }

    #[test]
    fn a_heap_trimmed_at_its_peak_is_trimmed_again_when_the_runs_end() {
        // Trimmed while 600 MiB were in use; then the runs ended and their
        // memory turned free where it was, the resident size unchanged.
        assert!(worth_trimming(&heap(30, 620), 650 * MIB, 50 * MIB));
    }
}
