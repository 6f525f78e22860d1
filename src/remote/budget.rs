//! The process-wide budget of part buffers.
//!
//! Box, Fluxer and Dyson send each part as one buffered body (Box needs the part's SHA-1
//! before its body; the others take a fixed-length body), and each upload sends up to four
//! parts at once. Without a common bound, sixteen files closed together would hold
//! 16 × 4 × 8 MiB in memory. Every buffered part first reserves its size here and keeps
//! the reservation until its request is over, so all uploads of a daemon (or of one
//! `uploadfs put -r`) together never hold more than [`PART_BUDGET`] of part data.
//!
//! A part larger than the whole budget reserves all of it, so it still goes, alone. A
//! part future reserves once and never waits for a second reservation while holding one,
//! so the budget cannot deadlock.

use std::sync::LazyLock;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of part buffers all uploads together may hold: eight 8 MiB parts, enough for two
/// uploads at full parallelism (loopback and LAN throughput are flat beyond that).
pub const PART_BUDGET: u64 = 64 * 1024 * 1024;

/// Accounting unit (keeps the permit count well inside the semaphore's range).
const UNIT: u64 = 64 * 1024;

static BUDGET: LazyLock<std::sync::Arc<Semaphore>> =
    LazyLock::new(|| std::sync::Arc::new(Semaphore::new((PART_BUDGET / UNIT) as usize)));

/// A reservation of part memory, released when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Reserve `len` bytes of part memory, waiting while other parts hold the budget.
pub async fn reserve(len: u64) -> Reservation {
    let units = len.div_ceil(UNIT).clamp(1, PART_BUDGET / UNIT) as u32;
    // The semaphore is never closed, so acquiring only fails in theory; going on without
    // a reservation is then the harmless choice.
    let permit = BUDGET.clone().acquire_many_owned(units).await.ok();
    Reservation { _permit: permit }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_the_budget() {
        let big = reserve(PART_BUDGET * 4).await; // larger than the budget: takes all of it
        let waiting = tokio::spawn(async { reserve(UNIT).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the budget is exhausted");
        drop(big);
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(
            r.is_ok(),
            "the reservation must go through once the budget is free"
        );
    }
}
