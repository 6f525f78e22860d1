//! Per-handle reads of a committed remote file through the block cache.
//!
//! A read that does not continue the previous one fetches only the blocks it needs (one
//! 128 KiB block for a small read: a random 4 KiB read or a file manager sniffing the first
//! KiB costs one small GET). While reads stay sequential the read-ahead window doubles,
//! from [`MIN_WINDOW`] up to [`MAX_WINDOW`], and the blocks ahead are fetched in the
//! background by ranged GETs that grow with the window (half of it, up to 4 MiB), so
//! several large requests are in flight as with `uploadfs get`; a jump resets the window.
//! The kernel sends a sequential reader's requests from several threads, so they may
//! arrive slightly out of order: a read near the previous one still counts as sequential.
//!
//! A read is split in steps so the handle's lock is not held while waiting for the
//! network or the hashing: [`ReadAhead::start`] (under the lock: sequential state,
//! fetches, read-ahead), [`Pending::wait`], then [`VerifyStep::run`] (under the
//! verification's own lock).
//!
//! When the remote reports a SHA-1, the blocks the reader went through are hashed in
//! order by a thread of the handle, fed through a queue (chunks of consecutive blocks as
//! one slice, no copy), so hashing runs beside the reads. One read feeds at a time, under
//! the verification's own lock; a read that finds another one feeding leaves its blocks
//! (in the cache) to it or to a later read. Only when the thread is a whole queue behind
//! (a busy machine) does the feeding read wait for room: any further behind, blocks not
//! yet hashed would be evicted first. The read that reaches the end feeds the rest
//! (fetching again any block of its sequential run that the cache dropped before it was
//! hashed) and waits for the verdict; a mismatch fails it and every later read of the
//! handle with EIO, and drops the file's blocks from the cache. A file fetched whole by
//! one GET was checked by the target already and is not hashed again.

use std::sync::Arc;

use bytes::Bytes;
use sha1::Digest as _;
use tokio::sync::{mpsc, oneshot};

use super::cache::{
    file_tag, join, Block, BlockCache, BlockKey, Fetch, Want, BLOCK_SIZE, MAX_SPAN,
};
use crate::remote::{ErrorKind, RemoteFile, Target, TargetError};

/// Read-ahead window after the first sequential read: 2 MiB (two 1 MiB GETs).
pub const MIN_WINDOW: u64 = 2 << 20;

/// Largest read-ahead window: 32 MiB (as much in flight as `uploadfs get` has).
pub const MAX_WINDOW: u64 = 32 << 20;

/// How far from the previous read's end a read still counts as sequential: the kernel's
/// read-ahead requests (1 MiB each, several in flight) are served by several threads and
/// reach the handle out of order by a few MiB.
const NEAR: u64 = 4 << 20;

/// Chunks queued for the hashing thread (up to 1 MiB each, references to blocks the cache
/// holds anyway). A reader that gets this far ahead of SHA-1 (a busy machine) waits for
/// room: further behind, the blocks not yet hashed would be evicted before the thread got
/// to them (the cache keeps about its budget minus the read-ahead window behind a reader).
const VERIFY_QUEUE: usize = 16;

/// Blocks per queued chunk: 1 MiB.
const VERIFY_CHUNK_BLOCKS: usize = ((1 << 20) / BLOCK_SIZE) as usize;

/// A failed read of a committed file (the filesystem maps it to an errno).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Target(TargetError),
    /// The whole file was read and its SHA-1 differs from the remote's.
    #[error("SHA-1 mismatch: the remote reports {expected}, the data read hashes to {actual}")]
    Corrupt { expected: String, actual: String },
}

/// The running SHA-1 of one handle's in-order blocks.
struct Verify {
    expected: String,
    /// Next block to feed, in order.
    next_block: u64,
    /// To the hashing thread (started with the first block).
    tx: Option<mpsc::Sender<Bytes>>,
    done: Option<oneshot::Receiver<String>>,
    /// Time reads spent waiting for room in the queue.
    waited: std::time::Duration,
    /// Verified (or given up on): nothing more to feed.
    finished: bool,
}

impl Verify {
    /// Start the hashing thread.
    fn start(&mut self) -> Result<(), TargetError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(VERIFY_QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("uploadfs-verify".into())
            .spawn(move || {
                let mut h = sha1::Sha1::new();
                let mut busy = std::time::Duration::ZERO;
                while let Some(b) = rx.blocking_recv() {
                    let t0 = std::time::Instant::now();
                    h.update(&b);
                    busy += t0.elapsed();
                }
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: a valid timespec for the calling thread's CPU clock.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                tracing::debug!(
                    hash_ms = busy.as_millis() as u64,
                    cpu_ms = ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000,
                    "hashing thread done"
                );
                let _ = done_tx.send(hex::encode(h.finalize()));
            })
            .map_err(|e| {
                TargetError::new(
                    ErrorKind::LocalIo,
                    format!("verifying the read: cannot start the hashing thread: {e}"),
                )
            })?;
        self.tx = Some(tx);
        self.done = Some(done_rx);
        Ok(())
    }

    /// The SHA-1 of everything fed.
    async fn verdict(&mut self) -> Result<String, TargetError> {
        self.tx = None;
        match self.done.take() {
            Some(rx) => rx.await.map_err(|_| {
                TargetError::new(
                    ErrorKind::LocalIo,
                    "verifying the read: the hashing thread failed",
                )
            }),
            None => Ok(hex::encode(sha1::Sha1::new().finalize())),
        }
    }
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
    first: u64,
    blocks: Vec<Block>,
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
    /// Its own lock: feeding may wait for the hashing thread, and the handle's other
    /// reads must not wait with it.
    verify: Option<Arc<tokio::sync::Mutex<Verify>>>,
}

impl ReadAhead {
    pub fn new(file: RemoteFile) -> Self {
        let verify = file.sha1.clone().map(|expected| {
            Arc::new(tokio::sync::Mutex::new(Verify {
                expected,
                next_block: 0,
                tx: None,
                done: None,
                waited: std::time::Duration::ZERO,
                finished: false,
            }))
        });
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
        let reached = self.next.div_ceil(BLOCK_SIZE).min(total);
        Some(VerifyStep {
            verify: self.verify.clone()?,
            file: self.file.clone(),
            tag: self.tag.clone(),
            total,
            reached,
            run_start: self.run_start / BLOCK_SIZE,
        })
    }
}

/// Feeding one handle's hashing thread after a read.
pub struct VerifyStep {
    verify: Arc<tokio::sync::Mutex<Verify>>,
    file: RemoteFile,
    tag: Arc<str>,
    total: u64,
    /// Blocks below this the reader has gone through.
    reached: u64,
    /// First block of the reader's current sequential run.
    run_start: u64,
}

impl VerifyStep {
    /// Feed the blocks the reader has gone through to the hashing thread, and once the
    /// whole file is hashed compare with the remote's SHA-1.
    ///
    /// One read feeds at a time; a read that finds another feeding leaves its blocks to
    /// it or to a later read (they are in the cache), except the read that reaches the
    /// end, which waits its turn, feeds the rest (fetching again any block of its
    /// sequential run that the cache dropped before it was hashed) and waits for the
    /// verdict.
    pub async fn run(
        self,
        cache: &Arc<BlockCache>,
        target: &Arc<dyn Target>,
        done: &Done,
    ) -> Result<(), ReadError> {
        let (total, reached) = (self.total, self.reached);
        let at_end = reached == total;
        let mut v = if at_end {
            self.verify.lock().await
        } else {
            match self.verify.try_lock() {
                Ok(v) => v,
                Err(_) => return Ok(()),
            }
        };
        if v.finished {
            return Ok(());
        }
        while v.next_block < reached {
            // The next run of blocks, from this read or the cache, as one chunk when they
            // are consecutive ranges of one buffer.
            let mut run: Vec<Block> = Vec::new();
            let mut i = v.next_block;
            while i < reached && run.len() < VERIFY_CHUNK_BLOCKS {
                let b = if i >= done.first && i < done.first + done.blocks.len() as u64 {
                    Some(done.blocks[(i - done.first) as usize].clone())
                } else {
                    cache.get(&BlockKey {
                        file: self.tag.clone(),
                        index: i,
                    })
                };
                match b {
                    Some(b) if run.last().is_none_or(|l| l.continued_by(&b)) => run.push(b),
                    // Another buffer (the next chunk), or not available.
                    _ => break,
                }
                i += 1;
            }
            if run.is_empty() {
                if !at_end || v.next_block < self.run_start {
                    // Not cached: a later read feeds it, or the reader skipped it and the
                    // file is not read whole in order (no verdict then).
                    return Ok(());
                }
                let n = (reached - v.next_block).min(MAX_SPAN);
                tracing::debug!(name = %self.file.name, block = v.next_block, n, "fetching blocks again to verify them");
                let fetches =
                    cache.blocks(target, &self.file, &self.tag, v.next_block, n, Want::Now);
                for r in futures_util::future::join_all(fetches).await {
                    run.push(r.map_err(ReadError::Target)?);
                }
            }
            if v.next_block == 0 && run[0].whole_verified {
                // One GET fetched the whole file, checked against the digest by the target.
                v.finished = true;
                return Ok(());
            }
            if v.tx.is_none() {
                v.start().map_err(ReadError::Target)?;
            }
            let n = run.len() as u64;
            let last_len = run[run.len() - 1].len();
            let chunk = join(&run, 0, last_len);
            let Some(tx) = v.tx.clone() else {
                return Ok(());
            };
            if let Err(mpsc::error::TrySendError::Full(chunk)) = tx.try_send(chunk) {
                let t0 = std::time::Instant::now();
                if tx.send(chunk).await.is_err() {
                    return Ok(());
                }
                v.waited += t0.elapsed();
            }
            v.next_block += n;
        }
        if v.next_block < total {
            return Ok(());
        }
        v.finished = true;
        let t0 = std::time::Instant::now();
        let actual = v.verdict().await.map_err(ReadError::Target)?;
        let tail = t0.elapsed();
        if !actual.eq_ignore_ascii_case(&v.expected) {
            cache.forget_file(&self.tag);
            return Err(ReadError::Corrupt {
                expected: v.expected.clone(),
                actual,
            });
        }
        tracing::debug!(
            name = %self.file.name,
            queue_wait_ms = v.waited.as_millis() as u64,
            verdict_wait_ms = tail.as_millis() as u64,
            "whole-file read verified"
        );
        Ok(())
    }
}
