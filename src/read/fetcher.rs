//! Per-handle reads of a committed remote file through the block cache.
//!
//! A read that does not continue the previous one fetches only the blocks it needs (one
//! 32 KiB block for a small read: a random 4 KiB read or a file manager sniffing the first
//! KiB costs one small GET). While reads stay sequential the read-ahead window doubles,
//! from [`MIN_WINDOW`] up to [`MAX_WINDOW`], and the blocks ahead are fetched in the
//! background by ranged GETs that grow with the window (half of it, up to 4 MiB), so
//! several large requests are in flight as with `uploadfs get`; a jump resets the window.
//! The kernel sends a sequential reader's requests from several threads, so they may
//! arrive slightly out of order: a read near the previous one still counts as sequential.
//!
//! A read is split in steps so the handle's lock is not held while waiting for the
//! network or the hashing: [`ReadAhead::start`] (under the lock: sequential state,
//! fetches, read-ahead), [`Pending::wait`], then [`VerifyStep::run`] (the verifier's own
//! short lock; a read waits there only far ahead of the hashing, or at the end).
//!
//! When the remote reports a SHA-1, each read then hands its blocks to the handle's
//! [`Verifier`] (`verify.rs`), which hashes the whole file in order beside the reads.

use std::sync::Arc;

use bytes::Bytes;

use super::cache::{file_tag, join, Block, BlockCache, Fetch, Want, BLOCK_SIZE, MAX_SPAN};
use super::verify::{Verifier, VerifyStep};
use crate::remote::{RemoteFile, Target, TargetError};

/// Read-ahead window after the first sequential read: 2 MiB (two 1 MiB GETs).
pub const MIN_WINDOW: u64 = 2 << 20;

/// Largest read-ahead window: 32 MiB (as much in flight as `uploadfs get` has).
pub const MAX_WINDOW: u64 = 32 << 20;

/// How far from the previous read's end a read still counts as sequential: the kernel's
/// read-ahead requests (1 MiB each, several in flight) are served by several threads and
/// reach the handle out of order by a few MiB.
const NEAR: u64 = 4 << 20;

/// A failed read of a committed file (the filesystem maps it to an errno).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Target(TargetError),
    /// The whole file was read and its SHA-1 differs from the remote's.
    #[error("SHA-1 mismatch: the remote reports {expected}, the data read hashes to {actual}")]
    Corrupt { expected: String, actual: String },
}

/// The blocks one read waits for, fetched without the handle's lock.
pub struct Pending {
    first: u64,
    offset: u64,
    end: u64,
    fetches: Vec<Fetch>,
}

/// A read's data, and its blocks for [`VerifyStep::run`].
pub struct Done {
    pub data: Bytes,
    pub(super) first: u64,
    pub(super) blocks: Vec<Block>,
}

impl Pending {
    /// Wait for the blocks and cut the reply from them (one slice when they come from
    /// one GET).
    pub async fn wait(self) -> Result<Done, ReadError> {
        let mut blocks = Vec::with_capacity(self.fetches.len());
        for r in futures_util::future::join_all(self.fetches).await {
            blocks.push(r.map_err(ReadError::Target)?);
        }
        let bstart = self.first * BLOCK_SIZE;
        let last_start = (self.first + blocks.len().saturating_sub(1) as u64) * BLOCK_SIZE;
        let data = join(
            &blocks,
            (self.offset - bstart) as usize,
            (self.end - last_start) as usize,
        );
        Ok(Done {
            data,
            first: self.first,
            blocks,
        })
    }
}

/// Read state of one open handle.
pub struct ReadAhead {
    file: RemoteFile,
    tag: Arc<str>,
    /// Offset just past the furthest read so far (since the last jump).
    next: u64,
    /// Where the current sequential run started (the offset of the last jump).
    run_start: u64,
    window: u64,
    /// Blocks below this index were already asked for by read-ahead.
    issued: u64,
    /// The whole-file SHA-1 check, where the remote reports a SHA-1 (shared with the
    /// reads in flight, outside the handle's lock).
    verify: Option<Arc<Verifier>>,
}

impl ReadAhead {
    pub fn new(file: RemoteFile) -> Self {
        let verify = file
            .sha1
            .clone()
            .map(|expected| Arc::new(Verifier::new(expected, file.size)));
        Self {
            tag: file_tag(&file),
            file,
            next: 0,
            run_start: 0,
            window: 0,
            issued: 0,
            verify,
        }
    }

    pub fn file(&self) -> &RemoteFile {
        &self.file
    }

    /// Note a read of `size` bytes at `offset`, start fetching its blocks and the
    /// read-ahead; `None` for a read at or past the end.
    pub fn start(
        &mut self,
        cache: &Arc<BlockCache>,
        target: &Arc<dyn Target>,
        offset: u64,
        size: u32,
    ) -> Option<Pending> {
        let file_size = self.file.size;
        if offset >= file_size || size == 0 {
            return None;
        }
        let end = (offset + size as u64).min(file_size);
        let near = offset + NEAR >= self.next && offset <= self.next + NEAR;
        if self.next != 0 && near {
            if offset >= self.next {
                self.window = (self.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
            }
            self.next = self.next.max(end);
        } else {
            if offset != self.next {
                tracing::trace!(name = %self.file.name, offset, from = self.next, "jump");
                self.window = 0;
                self.issued = 0;
                self.run_start = offset;
            }
            self.next = end;
        }
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let fetches = cache.blocks(
            target,
            &self.file,
            &self.tag,
            first,
            last - first + 1,
            Want::Now,
        );
        self.read_ahead(cache, target, end);
        Some(Pending {
            first,
            offset,
            end,
            fetches,
        })
    }

    /// Ask for the blocks of the window past `end` that nobody asked for yet.
    fn read_ahead(&mut self, cache: &Arc<BlockCache>, target: &Arc<dyn Target>, end: u64) {
        if self.window == 0 {
            return;
        }
        let total = self.file.size.div_ceil(BLOCK_SIZE);
        let from = self.issued.max(end.div_ceil(BLOCK_SIZE));
        let until = (end + self.window).div_ceil(BLOCK_SIZE).min(total);
        if from >= until {
            return;
        }
        // Two GETs per window at least, so the next is in flight while one arrives.
        let span = (self.window / 2 / BLOCK_SIZE).clamp(1, MAX_SPAN);
        let mut i = from;
        while i < until {
            let n = span.min(until - i);
            if n < span && until < total {
                // Only part of a GET is due: wait until a whole one is (the window keeps
                // the rest ahead of the reader). Else every read would move the window's
                // edge by its own size and ask for just that, one small GET per read.
                break;
            }
            let got = cache.blocks(target, &self.file, &self.tag, i, n, Want::Ahead);
            // Dropped: the fetches are tasks of their own and fill the cache.
            let got = got.len() as u64;
            i += got;
            if got < n {
                // Out of read-ahead budget: a later read asks again.
                break;
            }
        }
        self.issued = i;
    }

    /// The verification step after a read (None when the remote gave no SHA-1): what
    /// the reader has gone through, for [`VerifyStep::run`] without the handle's lock.
    pub fn verify_step(&self) -> Option<VerifyStep> {
        let total = self.file.size.div_ceil(BLOCK_SIZE);
        Some(VerifyStep {
            verifier: self.verify.clone()?,
            file: self.file.clone(),
            tag: self.tag.clone(),
            reached: self.next.div_ceil(BLOCK_SIZE).min(total),
            run_start: self.run_start / BLOCK_SIZE,
        })
    }
}
