//! The block cache: fixed-size blocks of remote files in an LRU with a byte budget
//! (`--cache-size`), plus the set of fetches in flight so two readers of one block share a
//! single ranged GET.
//!
//! Blocks are small ([`BLOCK_SIZE`], 32 KiB) so that a read that is not sequential costs
//! one small GET; sequential read-ahead fetches runs of up to [`MAX_SPAN`] consecutive
//! missing blocks (4 MiB) with one ranged GET (one request per block would pay a round
//! trip and the server's per-request work every block).
//!
//! The answer of one GET (a "span") is not copied into per-block buffers: each [`Block`]
//! is a range of the span's buffer, and a read covering several blocks of one span is
//! answered with one slice of it. The budget counts what is really held: a span's whole
//! buffer from the moment its first block enters the cache until its last block leaves,
//! so eviction goes on until whole spans are freed.
//!
//! Blocks are keyed by a file tag that includes the remote id, size and digest/mtime, so a
//! new version of a file can never be served stale blocks of the old one.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::remote::{RemoteFile, Target, TargetError};

/// Size of one cached block: 32 KiB, the unit a read that is not sequential fetches (a
/// 4 KiB random read then waits for a 32 KiB GET, not for a MiB). Measured with 4 random
/// readers on a cold 1 GiB file: 1.3–1.6× the IOPS of 128 KiB blocks (each miss moved
/// 128 KiB through the server's disk read, its send, our receive and a copy), with cold
/// sequential reads unchanged (their GETs are spans of many blocks either way).
pub const BLOCK_SIZE: u64 = 32 * 1024;

/// Most blocks one ranged GET fetches: 4 MiB. The HTTP client holds an answer twice
/// while joining its pieces, and a reader gets none of a GET's blocks before all of it has
/// arrived; 8 MiB GETs (the direct client's size) raised the daemon's peak RSS past
/// 200 MiB during a cold read without making it faster; 4 MiB is still a quarter of the
/// requests of one GET per 1 MiB kernel read.
pub const MAX_SPAN: u64 = (4 << 20) / BLOCK_SIZE;

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

/// The data of one block: a range of the buffer of the GET that fetched it.
#[derive(Debug, Clone)]
pub struct Block {
    span: Bytes,
    start: usize,
    len: usize,
    /// The span was the whole file, read by [`Target::read_range`], which checks a
    /// whole-file read against the remote's digest: the content is verified already.
    pub whole_verified: bool,
}

impl Block {
    /// A block that is its own buffer.
    pub fn new(data: Bytes) -> Block {
        Block {
            start: 0,
            len: data.len(),
            span: data,
            whole_verified: false,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block's bytes (no copy).
    pub fn data(&self) -> Bytes {
        self.span.slice(self.start..self.start + self.len)
    }

    /// `from .. to` within the block (no copy).
    pub fn slice(&self, from: usize, to: usize) -> Bytes {
        let to = to.min(self.len);
        self.span.slice(self.start + from.min(to)..self.start + to)
    }

    /// Identity of the span buffer (its address, unique while the buffer lives; the
    /// cache holds a reference for as long as it counts the span).
    fn span_id(&self) -> usize {
        self.span.as_ptr() as usize
    }

    /// Whether `next` continues this block in the same buffer.
    pub fn continued_by(&self, next: &Block) -> bool {
        self.span_id() == next.span_id() && self.start + self.len == next.start
    }
}

/// Bytes `from ..` of `first` through `.. to` of the last block, as one slice when the
/// blocks are consecutive ranges of one buffer (the usual case: one GET), else copied.
pub fn join(blocks: &[Block], from: usize, to: usize) -> Bytes {
    match blocks {
        [] => Bytes::new(),
        [b] => b.slice(from, to),
        [first, .., last] => {
            if blocks.windows(2).all(|w| w[0].continued_by(&w[1])) {
                let start = first.start + from.min(first.len);
                let end = last.start + to.min(last.len);
                return first.span.slice(start..end.max(start));
            }
            let n = blocks.len();
            let mut out = bytes::BytesMut::new();
            for (i, b) in blocks.iter().enumerate() {
                let f = if i == 0 { from } else { 0 };
                let t = if i == n - 1 { to } else { b.len };
                out.extend_from_slice(&b.slice(f, t));
            }
            out.freeze()
        }
    }
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

pub type Fetch = Shared<BoxFuture<'static, Result<Block, TargetError>>>;
type SpanFetch = Shared<BoxFuture<'static, Result<Arc<Vec<Block>>, TargetError>>>;

struct Lru {
    blocks: LruCache<BlockKey, Block>,
    /// Bytes of the span buffers that cached blocks hold.
    bytes: u64,
    /// Per span buffer: how many of its blocks are cached.
    spans: HashMap<usize, u32>,
}

impl Lru {
    fn hold(&mut self, b: &Block) {
        let n = self.spans.entry(b.span_id()).or_insert(0);
        if *n == 0 {
            self.bytes += b.span.len() as u64;
        }
        *n += 1;
    }

    fn release(&mut self, b: &Block) {
        let id = b.span_id();
        if let Some(n) = self.spans.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.spans.remove(&id);
                self.bytes -= b.span.len() as u64;
            }
        }
    }
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
                spans: HashMap::new(),
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

    pub fn get(&self, key: &BlockKey) -> Option<Block> {
        self.lru().blocks.get(key).cloned()
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.lru().blocks.contains(key)
    }

    /// Most blocks per GET: [`MAX_SPAN`], or less under a small budget (a span is held
    /// whole, so one larger than a quarter of the budget would crowd out the rest).
    fn max_span(&self) -> u64 {
        (self.budget / 4 / BLOCK_SIZE).clamp(1, MAX_SPAN)
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lru().bytes
    }

    pub fn insert(&self, key: BlockKey, block: Block) {
        let mut l = self.lru();
        if block.span.len() as u64 > self.budget {
            return;
        }
        l.hold(&block);
        if let Some(old) = l.blocks.put(key, block) {
            l.release(&old);
        }
        while l.bytes > self.budget {
            match l.blocks.pop_lru() {
                Some((_, b)) => l.release(&b),
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
                l.release(&b);
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
            while i + n < end && n < self.max_span() {
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
            tracing::debug!(name = %file.name, offset, len, "ranged read");
            // `read_range` checks a whole-file answer against the remote's digest.
            let whole =
                offset == 0 && len == file.size && (file.sha1.is_some() || file.md5.is_some());
            let r = match target.read_range(&file, offset, len).await {
                Ok(b) if b.len() as u64 == len => Ok(Arc::new(split_blocks(b, whole))),
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
                    crate::remote::ErrorKind::LocalIo,
                    format!("block fetch task failed: {e}"),
                )),
            }
        }
        .boxed()
        .shared()
    }
}

/// Spans up to this size are copied into a buffer of their own: the HTTP client may hand
/// back a small body as a slice of its read buffer (up to ~400 KiB), and a cached small
/// block would then keep all of it alive, past what the budget counts. Larger bodies
/// arrive in several pieces that the client joins into an exact buffer.
const COPY_SPAN_MAX: usize = 512 * 1024;

/// Cut a span into blocks: ranges of its one buffer.
fn split_blocks(span: Bytes, whole_verified: bool) -> Vec<Block> {
    let span = if span.len() <= COPY_SPAN_MAX {
        Bytes::copy_from_slice(&span)
    } else {
        span
    };
    let size = span.len();
    (0..size.div_ceil(BLOCK_SIZE as usize).max(1))
        .map(|i| {
            let start = i * BLOCK_SIZE as usize;
            Block {
                span: span.clone(),
                start,
                len: (size - start).min(BLOCK_SIZE as usize),
                whole_verified,
            }
        })
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

    fn own(b: &'static [u8]) -> Block {
        Block::new(Bytes::from_static(b))
    }

    #[test]
    fn budget_evicts_least_recent() {
        let c = BlockCache::new(10);
        c.insert(key(0), own(b"aaaa"));
        c.insert(key(1), own(b"bbbb"));
        assert!(c.get(&key(0)).is_some()); // 0 is now the most recent
        c.insert(key(2), own(b"cccc"));
        assert!(c.contains(&key(0)));
        assert!(!c.contains(&key(1)), "least recently used block must go");
        assert!(c.used() <= 10);
        c.forget_file("f#1#x");
        assert_eq!(c.used(), 0);
    }

    /// Blocks of one span count the whole span once, until the last of them leaves.
    #[test]
    fn spans_are_counted_whole() {
        let span = Bytes::from(vec![7u8; 3 * BLOCK_SIZE as usize + 10]);
        let blocks = split_blocks(span, false);
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks[3].len(), 10);
        let span_len = 3 * BLOCK_SIZE + 10;
        let c = BlockCache::new(span_len + 4);
        for (i, b) in blocks.iter().enumerate() {
            c.insert(key(i as u64), b.clone());
        }
        assert_eq!(c.used(), span_len);
        // A small block over the budget evicts from the span's blocks until the whole
        // span is gone: keeping any of them would keep its whole buffer.
        c.insert(key(9), own(b"0123456789"));
        assert_eq!(c.used(), 10);
        assert!((0..4).all(|i| !c.contains(&key(i))));
        assert!(c.contains(&key(9)));
    }

    #[test]
    fn join_slices_one_span_without_copy() {
        // Large enough to be kept as received (not copied by split_blocks).
        let span = Bytes::from(
            (0..(COPY_SPAN_MAX + 2 * BLOCK_SIZE as usize))
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        let blocks = split_blocks(span.clone(), false);
        assert_eq!(
            blocks[0].data().as_ptr(),
            span.as_ptr(),
            "blocks share the span"
        );
        let j = join(&blocks[..2], 5, 7);
        assert_eq!(j.len(), BLOCK_SIZE as usize + 2);
        assert_eq!(&j[..], &span[5..BLOCK_SIZE as usize + 7]);
        assert_eq!(
            j.as_ptr(),
            span[5..].as_ptr(),
            "one span: a slice, not a copy"
        );
        // A small span gets a buffer of its own.
        let small = Bytes::from(vec![1u8; 1000]);
        let b = split_blocks(small.clone(), false);
        assert_ne!(b[0].data().as_ptr(), small.as_ptr());
        assert_eq!(b[0].data(), small);
        // Blocks of different buffers are copied together.
        let other = [blocks[0].clone(), own(b"xyz")];
        let j = join(&other, BLOCK_SIZE as usize - 2, 2);
        assert_eq!(
            &j[..],
            &[
                span[BLOCK_SIZE as usize - 2],
                span[BLOCK_SIZE as usize - 1],
                b'x',
                b'y'
            ]
        );
    }
}
