//! Per-handle reads of a committed remote file through the block cache.
//!
//! The first read fetches only the blocks it needs (one 1 MiB block for the usual small
//! first read, so a file manager sniffing the first KiB of every file costs one small GET
//! each). While reads stay sequential the read-ahead window doubles, from one block up to
//! [`MAX_WINDOW`], and the blocks ahead are fetched in the background by ranged GETs that
//! grow with the window (a quarter of it, up to [`MAX_SPAN`] blocks), so several large
//! requests are in flight as with `uploadfs get`; a jump resets the window. The kernel
//! sends a sequential reader's requests from several threads, so they may arrive slightly
//! out of order: a read near the previous one still counts as sequential.
//!
//! When the remote reports a SHA-1, the blocks are hashed in order as they become
//! available, by a task of the handle on the blocking pool (hashing on the reading thread
//! would halve the read speed); the read that completes the file waits for the verdict, and
//! a mismatch fails it with EIO (and drops the file's blocks from the cache).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha1::Digest as _;
use tokio::sync::mpsc;

use super::cache::{file_tag, BlockCache, BlockKey, Want, BLOCK_SIZE, MAX_SPAN};
use crate::target::{RemoteFile, Target, TargetError};

/// Largest read-ahead window: 32 MiB (four 8 MiB GETs in flight, like `uploadfs get`).
pub const MAX_WINDOW: u64 = 32 * BLOCK_SIZE;

/// Blocks queued for the verifying task; a reader faster than SHA-1 waits here rather
/// than letting the queue grow with the file.
const VERIFY_QUEUE: usize = 16;

/// Outcome of a read that the caller turns into an errno.
#[derive(Debug)]
pub enum ReadError {
    Target(TargetError),
    /// The whole file was read and its SHA-1 differs from the remote's.
    Corrupt {
        expected: String,
        actual: String,
    },
}

struct Verify {
    expected: String,
    /// Next block to feed, in order.
    next_block: u64,
    /// To the hashing task (started with the first block).
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<tokio::task::JoinHandle<Option<String>>>,
}

impl Verify {
    /// Queue one block for hashing, starting the hashing task on the first one.
    async fn feed(&mut self, block: Bytes) {
        if self.tx.is_none() {
            let (tx, rx) = mpsc::channel(VERIFY_QUEUE);
            self.tx = Some(tx);
            self.task = Some(tokio::spawn(hash_blocks(rx)));
        }
        if let Some(tx) = &self.tx {
            // The task only ends after the sender is dropped; a send error cannot happen
            // while it runs, and a panicked task shows in `verdict`.
            let _ = tx.send(block).await;
        }
        self.next_block += 1;
    }

    /// The SHA-1 of everything fed, once the task is done.
    async fn verdict(&mut self) -> Result<String, TargetError> {
        self.tx = None;
        match self.task.take() {
            Some(t) => match t.await {
                Ok(Some(h)) => Ok(h),
                Ok(None) => Err(TargetError::new(
                    crate::target::ErrorKind::LocalIo,
                    "verifying the read: the hashing task failed",
                )),
                Err(e) => Err(TargetError::new(
                    crate::target::ErrorKind::LocalIo,
                    format!("verifying the read: {e}"),
                )),
            },
            None => Ok(hex::encode(sha1::Sha1::new().finalize())),
        }
    }
}

/// Hash blocks as they arrive, each batch on the blocking pool.
async fn hash_blocks(mut rx: mpsc::Receiver<Bytes>) -> Option<String> {
    let mut hasher = sha1::Sha1::new();
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, VERIFY_QUEUE).await > 0 {
        let blocks = std::mem::take(&mut batch);
        let h = hasher.clone();
        match tokio::task::spawn_blocking(move || {
            let mut h = h;
            for b in &blocks {
                h.update(b);
            }
            h
        })
        .await
        {
            Ok(h) => hasher = h,
            // Only a panic (or shutdown) gets here: no verdict.
            Err(_) => return None,
        }
    }
    Some(hex::encode(hasher.finalize()))
}

/// Read state of one open handle.
pub struct ReadAhead {
    file: RemoteFile,
    tag: Arc<str>,
    /// Offset just past the furthest read so far.
    next: u64,
    window: u64,
    /// Blocks below this index were already asked for by read-ahead.
    issued: u64,
    verify: Option<Verify>,
}

impl ReadAhead {
    pub fn new(file: RemoteFile) -> Self {
        let verify = file.sha1.clone().map(|expected| Verify {
            expected,
            next_block: 0,
            tx: None,
            task: None,
        });
        Self {
            tag: file_tag(&file),
            file,
            next: 0,
            window: 0,
            issued: 0,
            verify,
        }
    }

    pub fn file(&self) -> &RemoteFile {
        &self.file
    }

    fn key(&self, index: u64) -> BlockKey {
        BlockKey {
            file: self.tag.clone(),
            index,
        }
    }

    /// Read `size` bytes at `offset` (short at EOF).
    pub async fn read(
        &mut self,
        cache: &Arc<BlockCache>,
        target: &Arc<dyn Target>,
        offset: u64,
        size: u32,
    ) -> Result<Bytes, ReadError> {
        let file_size = self.file.size;
        if offset >= file_size || size == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + size as u64).min(file_size);
        // Sequential: at the previous end, or within a block of it (reordered requests).
        let near = offset + BLOCK_SIZE >= self.next && offset <= self.next + BLOCK_SIZE;
        if self.next != 0 && near {
            if offset >= self.next {
                self.window = (self.window * 2).clamp(BLOCK_SIZE, MAX_WINDOW);
            }
        } else if offset != self.next {
            self.window = 0;
            self.issued = 0;
        }
        self.next = self.next.max(end);
        if !near {
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
        let blocks = futures_util::future::join_all(fetches).await;
        let mut parts = Vec::with_capacity(blocks.len());
        for (i, b) in (first..=last).zip(blocks) {
            let b = b.map_err(ReadError::Target)?;
            let bstart = i * BLOCK_SIZE;
            let from = offset.saturating_sub(bstart) as usize;
            let to = ((end - bstart) as usize).min(b.len());
            parts.push(b.slice(from.min(to)..to));
            self.feed_verify(i, &b).await;
        }
        self.advance_verify(cache).await;
        self.check_verify(cache).await?;
        // One block (the usual case): its slice, without a copy.
        if parts.len() == 1 {
            return Ok(parts.pop().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
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
        let span = (self.window / BLOCK_SIZE / 4).clamp(1, MAX_SPAN);
        let mut i = from;
        while i < until {
            let n = span.min(until - i);
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

    async fn feed_verify(&mut self, index: u64, block: &Bytes) {
        if let Some(v) = &mut self.verify {
            if v.next_block == index {
                v.feed(block.clone()).await;
            }
        }
    }

    /// Hash further blocks the reader has reached that are cached (read out of order
    /// earlier). Blocks only read ahead wait until the reader gets there.
    async fn advance_verify(&mut self, cache: &BlockCache) {
        let total = self.next.div_ceil(BLOCK_SIZE);
        loop {
            let Some(v) = &self.verify else { return };
            if v.next_block >= total {
                return;
            }
            let key = self.key(v.next_block);
            match cache.get(&key) {
                Some(b) => self.feed_verify(key.index, &b).await,
                None => return,
            }
        }
    }

    /// Once every block is hashed: compare with the remote's SHA-1.
    async fn check_verify(&mut self, cache: &BlockCache) -> Result<(), ReadError> {
        let done = self
            .verify
            .as_ref()
            .is_some_and(|v| v.next_block * BLOCK_SIZE >= self.file.size);
        if !done {
            return Ok(());
        }
        let Some(mut v) = self.verify.take() else {
            return Ok(());
        };
        let actual = v.verdict().await.map_err(ReadError::Target)?;
        if !actual.eq_ignore_ascii_case(&v.expected) {
            cache.forget_file(&self.tag);
            return Err(ReadError::Corrupt {
                expected: v.expected,
                actual,
            });
        }
        Ok(())
    }
}
