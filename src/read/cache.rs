//! The block cache: fixed-size blocks of remote files in an LRU with a byte budget
//! (`--cache-size`), plus the set of fetches in flight so two readers of one block share a
//! single ranged GET.
//!
//! Blocks are keyed by a file tag that includes the remote id, size and digest/mtime, so a
//! new version of a file can never be served stale blocks of the old one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;

use crate::target::{RemoteFile, Target, TargetError};

/// Size of one cached block: 1 MiB, the largest read the kernel sends a FUSE daemon.
pub const BLOCK_SIZE: u64 = 1 << 20;

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

type Fetch = Shared<BoxFuture<'static, Result<Bytes, TargetError>>>;

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
        if let Some(b) = self.get(&key) {
            return futures_util::future::ready(Ok(b)).boxed().shared();
        }
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = inflight.get(&key) {
            return f.clone();
        }
        let offset = key.index * BLOCK_SIZE;
        let len = BLOCK_SIZE.min(file.size.saturating_sub(offset));
        let task = {
            let (target, file, key, cache) =
                (target.clone(), file.clone(), key.clone(), self.clone());
            tokio::spawn(async move {
                let r = target.read_range(&file, offset, len).await;
                let r = match r {
                    Ok(b) if b.len() as u64 == len => Ok(b),
                    Ok(b) => Err(TargetError::protocol(format!(
                        "reading {}: the server sent {} bytes at offset {offset}, expected {len}",
                        file.name,
                        b.len()
                    ))),
                    Err(e) => Err(e),
                };
                if let Ok(b) = &r {
                    cache.insert(key.clone(), b.clone());
                }
                cache
                    .inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                r
            })
        };
        let fut: Fetch = async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(TargetError::new(
                    crate::target::ErrorKind::LocalIo,
                    format!("block fetch task failed: {e}"),
                )),
            }
        }
        .boxed()
        .shared();
        inflight.insert(key, fut.clone());
        fut
    }
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
