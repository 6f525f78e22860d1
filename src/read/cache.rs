//! The block cache: fixed-size blocks of remote files in an LRU with a byte budget
//! (`--cache-size`), plus the set of fetches in flight so two readers of one block share a
//! single ranged GET.
//!
//! A fetch covers a run of up to [`MAX_SPAN`] consecutive missing blocks with one ranged
//! GET (read-ahead asks for several blocks at once; one request per block would pay a
//! round trip and the server's per-request work for every MiB). The answer is cut into
//! blocks, each copied into its own buffer so that evicting one block really frees its
//! memory.
//!
//! Blocks are keyed by a file tag that includes the remote id, size and digest/mtime, so a
//! new version of a file can never be served stale blocks of the old one.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::target::{RemoteFile, Target, TargetError};

/// Size of one cached block: 1 MiB, the largest read the kernel sends a FUSE daemon.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Most blocks one ranged GET fetches (8 MiB, the direct client's request size).
pub const MAX_SPAN: u64 = 8;

/// Read-ahead bytes in flight for all readers together; read-ahead beyond it waits for
/// a later read (the blocks a reader waits for are always fetched). Twice one reader's
/// largest window, so two sequential readers both run at full speed and sixteen do not
/// hold sixteen windows in memory.
pub const PREFETCH_BUDGET: u64 = 64 * 1024 * 1024;

static PREFETCH: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new((PREFETCH_BUDGET / BLOCK_SIZE) as usize)));

/// One block of one version of a remote file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub file: Arc<str>,
    pub index: u64,
}

/// The cache tag of a remote file version.
pub fn file_tag(f: &RemoteFile) -> Arc<str> {
    let version = f
        .sha1
        .as_deref()
        .or(f.md5.as_deref())
        .map(str::to_string)
        .unwrap_or_else(|| f.mtime_ms.to_string());
    Arc::from(format!("{}#{}#{}", f.id, f.size, version))
}

pub type Fetch = Shared<BoxFuture<'static, Result<Bytes, TargetError>>>;
type SpanFetch = Shared<BoxFuture<'static, Result<Arc<Vec<Bytes>>, TargetError>>>;

struct Lru {
    blocks: LruCache<BlockKey, Bytes>,
    bytes: u64,
}

/// The shared block cache of a mount.
pub struct BlockCache {
    lru: Mutex<Lru>,
    budget: u64,
    inflight: Mutex<HashMap<BlockKey, Fetch>>,
}

/// Whether a run of blocks is wanted now or read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A reader waits for these blocks.
    Now,
    /// Read-ahead: fetched only within [`PREFETCH_BUDGET`].
    Ahead,
}

impl BlockCache {
    pub fn new(budget: u64) -> Arc<Self> {
        Arc::new(Self {
            lru: Mutex::new(Lru {
                blocks: LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<BlockKey, Fetch>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.lru().blocks.get(key).cloned()
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.lru().blocks.contains(key)
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lru().bytes
    }

    pub fn insert(&self, key: BlockKey, data: Bytes) {
        let mut l = self.lru();
        let len = data.len() as u64;
        if len > self.budget {
            return;
        }
        if let Some(old) = l.blocks.put(key, data) {
            l.bytes -= old.len() as u64;
        }
        l.bytes += len;
        while l.bytes > self.budget {
            match l.blocks.pop_lru() {
                Some((_, b)) => l.bytes -= b.len() as u64,
                None => break,
            }
        }
    }

    /// Drop every block of one file version (after a failed verification).
    pub fn forget_file(&self, file: &str) {
        let mut l = self.lru();
        let keys: Vec<BlockKey> = l
            .blocks
            .iter()
            .filter(|(k, _)| &*k.file == file)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(b) = l.blocks.pop(&k) {
                l.bytes -= b.len() as u64;
            }
        }
    }

    /// The block, from the cache or fetched (sharing a fetch already in flight). The fetch
    /// runs as its own task, so a prefetch continues when nobody waits for it yet.
    pub fn block(
        self: &Arc<Self>,
        target: &Arc<dyn Target>,
        file: &RemoteFile,
        key: BlockKey,
    ) -> Fetch {
        let index = key.index;
        self.blocks(target, file, &key.file, index, 1, Want::Now)
            .pop()
            .unwrap_or_else(|| {
                futures_util::future::ready(Err(TargetError::protocol(format!(
                    "reading {}: block {index} is past the end",
                    file.name
                ))))
                .boxed()
                .shared()
            })
    }

    /// Blocks `first .. first + count` of `file` (tagged `tag`), each from the cache, a
    /// fetch in flight, or a new fetch; runs of missing blocks share one ranged GET of at
    /// most [`MAX_SPAN`] blocks. With [`Want::Ahead`], fetching stops where the read-ahead
    /// budget runs out: the result is then shorter than `count`.
    pub fn blocks(
        self: &Arc<Self>,
        target: &Arc<dyn Target>,
        file: &RemoteFile,
        tag: &Arc<str>,
        first: u64,
        count: u64,
        want: Want,
    ) -> Vec<Fetch> {
        let total = file.size.div_ceil(BLOCK_SIZE);
        let end = (first + count).min(total);
        let mut out = Vec::with_capacity(end.saturating_sub(first) as usize);
        let mut i = first;
        while i < end {
            let key = BlockKey {
                file: tag.clone(),
                index: i,
            };
            if let Some(b) = self.get(&key) {
                out.push(futures_util::future::ready(Ok(b)).boxed().shared());
                i += 1;
                continue;
            }
            let mut inflight = self.inflight();
            if let Some(f) = inflight.get(&key) {
                out.push(f.clone());
                i += 1;
                continue;
            }
            // A run of blocks that are neither cached nor in flight, starting at i.
            let mut n = 1;
            while i + n < end && n < MAX_SPAN {
                let k = BlockKey {
                    file: tag.clone(),
                    index: i + n,
                };
                if inflight.contains_key(&k) || self.contains(&k) {
                    break;
                }
                n += 1;
            }
            let permit = match want {
                Want::Now => None,
                Want::Ahead => match PREFETCH.clone().try_acquire_many_owned(n as u32) {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
            };
            let span = self.spawn_span(target, file, tag, i, n, permit);
            for k in 0..n {
                let f: Fetch = span
                    .clone()
                    .map(move |r| r.map(|v| v[k as usize].clone()))
                    .boxed()
                    .shared();
                inflight.insert(
                    BlockKey {
                        file: tag.clone(),
                        index: i + k,
                    },
                    f.clone(),
                );
                out.push(f);
            }
            i += n;
        }
        out
    }

    /// One ranged GET for blocks `first .. first + n`, as a task of its own that fills the
    /// cache and clears the in-flight entries when done.
    fn spawn_span(
        self: &Arc<Self>,
        target: &Arc<dyn Target>,
        file: &RemoteFile,
        tag: &Arc<str>,
        first: u64,
        n: u64,
        permit: Option<OwnedSemaphorePermit>,
    ) -> SpanFetch {
        let offset = first * BLOCK_SIZE;
        let len = (n * BLOCK_SIZE).min(file.size.saturating_sub(offset));
        let (target, file, tag, cache) = (target.clone(), file.clone(), tag.clone(), self.clone());
        let task = tokio::spawn(async move {
            let _permit = permit;
            let r = match target.read_range(&file, offset, len).await {
                Ok(b) if b.len() as u64 == len => Ok(Arc::new(split_blocks(b))),
                Ok(b) => Err(TargetError::protocol(format!(
                    "reading {}: the server sent {} bytes at offset {offset}, expected {len}",
                    file.name,
                    b.len()
                ))),
                Err(e) => Err(e),
            };
            let mut inflight = cache.inflight();
            for k in 0..n {
                let key = BlockKey {
                    file: tag.clone(),
                    index: first + k,
                };
                if let Ok(blocks) = &r {
                    cache.insert(key.clone(), blocks[k as usize].clone());
                }
                inflight.remove(&key);
            }
            r
        });
        async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(TargetError::new(
                    crate::target::ErrorKind::LocalIo,
                    format!("block fetch task failed: {e}"),
                )),
            }
        }
        .boxed()
        .shared()
    }
}

/// Cut a span into blocks; with more than one block each gets its own buffer, so the
/// cache's byte count is what the blocks really hold.
fn split_blocks(b: Bytes) -> Vec<Bytes> {
    if b.len() as u64 <= BLOCK_SIZE {
        return vec![b];
    }
    b.chunks(BLOCK_SIZE as usize)
        .map(Bytes::copy_from_slice)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BlockKey {
        BlockKey {
            file: Arc::from("f#1#x"),
            index: i,
        }
    }

    #[test]
    fn budget_evicts_least_recent() {
        let c = BlockCache::new(10);
        c.insert(key(0), Bytes::from_static(b"aaaa"));
        c.insert(key(1), Bytes::from_static(b"bbbb"));
        assert!(c.get(&key(0)).is_some()); // 0 is now the most recent
        c.insert(key(2), Bytes::from_static(b"cccc"));
        assert!(c.contains(&key(0)));
        assert!(!c.contains(&key(1)), "least recently used block must go");
        assert!(c.used() <= 10);
        c.forget_file("f#1#x");
        assert_eq!(c.used(), 0);
    }
}
