//! Per-handle reads of a committed remote file through the block cache.
//!
//! The first read fetches only the blocks it needs (one 1 MiB block for the usual small
//! first read, so a file manager sniffing the first KiB of every file costs one small GET
//! each). While reads stay sequential the read-ahead window doubles, from one block up to
//! [`MAX_WINDOW`], and the blocks ahead are fetched in the background; a jump resets it.
//!
//! When the remote reports a SHA-1, the blocks are hashed in order as they become
//! available; once the last one is hashed the digest is compared and a mismatch fails
//! the read with EIO (and drops the file's blocks from the cache).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha1::Digest as _;

use super::cache::{file_tag, BlockCache, BlockKey, BLOCK_SIZE};
use crate::target::{RemoteFile, Target, TargetError};

/// Largest read-ahead window: 16 MiB (16 blocks in flight at most per reader).
pub const MAX_WINDOW: u64 = 16 * BLOCK_SIZE;

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
    hasher: sha1::Sha1,
    next_block: u64,
}

/// Read state of one open handle.
pub struct ReadAhead {
    file: RemoteFile,
    tag: Arc<str>,
    /// Offset just past the previous read.
    next: u64,
    window: u64,
    verify: Option<Verify>,
}

impl ReadAhead {
    pub fn new(file: RemoteFile) -> Self {
        let verify = file.sha1.clone().map(|expected| Verify {
            expected,
            hasher: sha1::Sha1::new(),
            next_block: 0,
        });
        Self {
            tag: file_tag(&file),
            file,
            next: 0,
            window: 0,
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
        if offset == self.next && offset != 0 {
            self.window = (self.window * 2).clamp(BLOCK_SIZE, MAX_WINDOW);
        } else if offset != self.next {
            self.window = 0;
        }
        self.next = end;
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        // Read-ahead in the background: the fetches are tasks of their own.
        if self.window > 0 {
            let ahead_end = (end + self.window).min(file_size);
            if ahead_end > 0 {
                for i in (last + 1)..=((ahead_end - 1) / BLOCK_SIZE) {
                    let key = self.key(i);
                    if !cache.contains(&key) {
                        drop(cache.block(target, &self.file, key));
                    }
                }
            }
        }
        let fetches: Vec<_> = (first..=last)
            .map(|i| cache.block(target, &self.file, self.key(i)))
            .collect();
        let blocks = futures_util::future::join_all(fetches).await;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, b) in (first..=last).zip(blocks) {
            let b = b.map_err(ReadError::Target)?;
            let bstart = i * BLOCK_SIZE;
            let from = offset.saturating_sub(bstart) as usize;
            let to = ((end - bstart) as usize).min(b.len());
            if from < to {
                out.extend_from_slice(&b[from..to]);
            }
            self.feed_verify(i, &b);
        }
        self.advance_verify(cache);
        if let Some(v) = &self.verify {
            if v.next_block * BLOCK_SIZE >= file_size {
                let actual = hex::encode(v.hasher.clone().finalize());
                let expected = v.expected.clone();
                self.verify = None;
                if !actual.eq_ignore_ascii_case(&expected) {
                    cache.forget_file(&self.tag);
                    return Err(ReadError::Corrupt { expected, actual });
                }
            }
        }
        Ok(out.freeze())
    }

    fn feed_verify(&mut self, index: u64, block: &Bytes) {
        if let Some(v) = &mut self.verify {
            if v.next_block == index {
                v.hasher.update(block);
                v.next_block += 1;
            }
        }
    }

    /// Hash further blocks that are already cached (read out of order earlier).
    fn advance_verify(&mut self, cache: &BlockCache) {
        let total = self.file.size.div_ceil(BLOCK_SIZE);
        loop {
            let Some(v) = &self.verify else { return };
            if v.next_block >= total {
                return;
            }
            match cache.get(&self.key(v.next_block)) {
                Some(b) => self.feed_verify(v.next_block, &b),
                None => return,
            }
        }
    }
}
