//! Whole-file SHA-1 verification of one handle's reads, where the remote reports a SHA-1.
//!
//! The blocks a reader goes through are hashed in order by a thread of the handle, beside
//! the reads. Each read hands its own blocks over (references to the GET buffers, no
//! copy): blocks that arrive before their turn (the kernel's parallel read-ahead requests
//! come slightly out of order) are held until the ones before them come, and every run of
//! consecutive blocks goes to the thread at once. So hashing never depends on the block
//! cache still holding a block (the cache may evict it, the verifier's reference keeps it)
//! and never needs a second download of what a reader already read.
//!
//! Reads do not wait for the hashing thread: the verifier holds blocks up to [`WINDOW`]
//! past what the thread has hashed (held or queued). Only a sequential reader that gets
//! further ahead than that (a busy machine) waits for the thread to catch up; a reader that
//! jumped past the blocks not hashed yet (random reads) does not wait and has nothing
//! held: the file is then not read whole in order, and gets no verdict unless a later
//! sequential pass reaches its end.
//!
//! The read that reaches the end feeds the rest — taking a block no read handed over from
//! the cache, from a fetch in flight, or fetching it again (a read in that run skipped it)
//! — and waits for the verdict; so do other reads that reach the end at the same time. A
//! mismatch fails them (the filesystem then fails every later read of the handle with EIO)
//! and drops the file's blocks from the cache. A file fetched whole by one GET was checked
//! by the target already and is not hashed again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha1::Digest as _;
use tokio::sync::{oneshot, Notify, OnceCell};

use super::cache::{join, Block, BlockCache, BlockKey, Want, BLOCK_SIZE, MAX_SPAN};
use super::fetcher::{Done, ReadError};
use crate::remote::{ErrorKind, RemoteFile, Target, TargetError};

/// Blocks the verifier may hold past the hashing thread's progress (held out of order or
/// queued for the thread): 64 MiB. Further behind, a sequential reader waits. 16 MiB made
/// the reader wait for the hashing thread on a loaded machine (0.2–1.2 s per GiB), and a
/// bound that depended on the cache keeping unhashed blocks made the last read fetch
/// evicted ones again.
const WINDOW: u64 = (64 << 20) / BLOCK_SIZE;

/// Blocks per chunk sent to the thread at most: 1 MiB (one slice when they come from one
/// GET).
const CHUNK_BLOCKS: usize = ((1 << 20) / BLOCK_SIZE) as usize;

/// What the thread and the reads share.
struct Progress {
    /// Blocks hashed so far (all below this index).
    hashed: AtomicU64,
    /// Woken each time the thread finishes a chunk.
    advanced: Notify,
}

/// The feeding side, under a plain lock (nothing waits while holding it).
struct Feed {
    /// Next block to send to the thread.
    next_block: u64,
    /// Blocks past `next_block`, waiting for the ones before them.
    held: BTreeMap<u64, Block>,
    tx: Option<std::sync::mpsc::Sender<Bytes>>,
    done: Option<oneshot::Receiver<String>>,
}

/// The outcome of the whole-file hash: `Err((expected, actual))` on a mismatch.
type Verdict = Result<(), (String, String)>;

/// The running SHA-1 of one handle's in-order blocks.
pub struct Verifier {
    expected: String,
    /// Blocks of the file.
    total: u64,
    progress: Arc<Progress>,
    feed: Mutex<Feed>,
    verdict: OnceCell<Verdict>,
    /// Time sequential reads spent waiting for the thread.
    waited_us: AtomicU64,
}

impl Verifier {
    pub fn new(expected: String, file_size: u64) -> Verifier {
        Verifier {
            expected,
            total: file_size.div_ceil(BLOCK_SIZE),
            progress: Arc::new(Progress {
                hashed: AtomicU64::new(0),
                advanced: Notify::new(),
            }),
            feed: Mutex::new(Feed {
                next_block: 0,
                held: BTreeMap::new(),
                tx: None,
                done: None,
            }),
            verdict: OnceCell::new(),
            waited_us: AtomicU64::new(0),
        }
    }

    fn feed(&self) -> std::sync::MutexGuard<'_, Feed> {
        self.feed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start the hashing thread.
    fn start(&self, f: &mut Feed) -> Result<(), TargetError> {
        let (tx, rx) = std::sync::mpsc::channel::<Bytes>();
        let (done_tx, done_rx) = oneshot::channel();
        let progress = self.progress.clone();
        std::thread::Builder::new()
            .name("uploadfs-verify".into())
            .spawn(move || {
                let mut h = sha1::Sha1::new();
                let mut busy = std::time::Duration::ZERO;
                while let Ok(b) = rx.recv() {
                    let t0 = std::time::Instant::now();
                    h.update(&b);
                    busy += t0.elapsed();
                    progress
                        .hashed
                        .fetch_add((b.len() as u64).div_ceil(BLOCK_SIZE), Ordering::AcqRel);
                    progress.advanced.notify_waiters();
                }
                tracing::debug!(hash_ms = busy.as_millis() as u64, "hashing thread done");
                let _ = done_tx.send(hex::encode(h.finalize()));
            })
            .map_err(|e| {
                TargetError::new(
                    ErrorKind::LocalIo,
                    format!("verifying the read: cannot start the hashing thread: {e}"),
                )
            })?;
        f.tx = Some(tx);
        f.done = Some(done_rx);
        Ok(())
    }

    /// The furthest block that may be held or queued now.
    fn limit(&self) -> u64 {
        self.progress.hashed.load(Ordering::Acquire) + WINDOW
    }

    /// Hold the blocks `first ..` that are due and within the window; the count of them
    /// past the window (not held).
    fn hold(&self, f: &mut Feed, first: u64, blocks: &[Block]) -> usize {
        let limit = self.limit();
        let mut over = 0;
        for (k, b) in blocks.iter().enumerate() {
            let i = first + k as u64;
            if i < f.next_block || f.held.contains_key(&i) {
                continue;
            }
            if i >= limit {
                over += 1;
                continue;
            }
            f.held.insert(i, b.clone());
        }
        over
    }

    /// Send every run of consecutive blocks from `next_block` on (held, or in the cache)
    /// to the thread. Returns true when the whole file is fed, or needs no hashing.
    fn drain(&self, f: &mut Feed, cache: &BlockCache, tag: &Arc<str>) -> Result<bool, ReadError> {
        let limit = self.limit();
        while f.next_block < self.total && f.next_block < limit {
            let mut run: Vec<Block> = Vec::new();
            let mut i = f.next_block;
            while i < self.total && i < limit && run.len() < CHUNK_BLOCKS {
                let b = match f.held.get(&i) {
                    Some(b) => Some(b.clone()),
                    None => cache.get(&BlockKey {
                        file: tag.clone(),
                        index: i,
                    }),
                };
                match b {
                    Some(b) if run.last().is_none_or(|l| l.continued_by(&b)) => run.push(b),
                    // Another buffer (the next chunk), or not available yet.
                    _ => break,
                }
                i += 1;
            }
            if run.is_empty() {
                return Ok(false);
            }
            if f.next_block == 0 && run[0].whole_verified {
                // One GET fetched the whole file, checked against the digest by the target.
                f.next_block = self.total;
                f.held.clear();
                return Ok(true);
            }
            if f.tx.is_none() {
                self.start(f).map_err(ReadError::Target)?;
            }
            let n = run.len() as u64;
            let chunk = join(&run, 0, run[run.len() - 1].len());
            let sent = f.tx.as_ref().is_some_and(|tx| tx.send(chunk).is_ok());
            if !sent {
                return Err(ReadError::Target(TargetError::new(
                    ErrorKind::LocalIo,
                    "verifying the read: the hashing thread failed",
                )));
            }
            let next = f.next_block + n;
            f.held = f.held.split_off(&next);
            f.next_block = next;
        }
        Ok(f.next_block >= self.total)
    }

    /// The SHA-1 of everything fed, compared (once: every caller gets the same verdict).
    async fn verdict(&self, name: &str) -> Result<&Verdict, ReadError> {
        self.verdict
            .get_or_try_init(|| async {
                let t0 = std::time::Instant::now();
                let rx = {
                    let mut f = self.feed();
                    f.tx = None;
                    f.done.take()
                };
                let Some(rx) = rx else {
                    // Nothing was hashed: the target checked a whole-file answer.
                    return Ok(Ok(()));
                };
                let actual = rx.await.map_err(|_| {
                    ReadError::Target(TargetError::new(
                        ErrorKind::LocalIo,
                        "verifying the read: the hashing thread failed",
                    ))
                })?;
                if !actual.eq_ignore_ascii_case(&self.expected) {
                    return Ok(Err((self.expected.clone(), actual)));
                }
                tracing::debug!(
                    name,
                    queue_wait_ms = self.waited_us.load(Ordering::Relaxed) / 1000,
                    verdict_wait_ms = t0.elapsed().as_millis() as u64,
                    "whole-file read verified"
                );
                Ok(Ok(()))
            })
            .await
    }
}

/// Feeding one handle's verifier after a read.
pub struct VerifyStep {
    pub(super) verifier: Arc<Verifier>,
    pub(super) file: RemoteFile,
    pub(super) tag: Arc<str>,
    /// Blocks below this the reader has gone through.
    pub(super) reached: u64,
    /// First block of the reader's current sequential run.
    pub(super) run_start: u64,
}

impl VerifyStep {
    /// Hand this read's blocks to the verifier and feed what is due; a sequential reader
    /// too far ahead of the hashing thread waits for it. The read that reaches the end
    /// feeds the rest and waits for the verdict.
    pub async fn run(
        self,
        cache: &Arc<BlockCache>,
        target: &Arc<dyn Target>,
        done: &Done,
    ) -> Result<(), ReadError> {
        let v = &self.verifier;
        if v.verdict.initialized() {
            return self.outcome(cache).await;
        }
        let at_end = self.reached == v.total;
        loop {
            let next = {
                let mut f = v.feed();
                if f.next_block < self.run_start {
                    // The reader jumped past blocks not fed yet (random reads): nothing of
                    // it is held and it does not wait; what the cache still holds in order
                    // is fed. At the end there is no verdict then (the file was not read
                    // whole in order).
                    if v.drain(&mut f, cache, &self.tag)? {
                        break;
                    }
                    return Ok(());
                }
                let over = v.hold(&mut f, done.first, &done.blocks);
                if v.drain(&mut f, cache, &self.tag)? {
                    break;
                }
                if f.next_block >= v.limit() && (over > 0 || at_end) {
                    // A whole window ahead of the thread: wait for it (it has a window of
                    // blocks queued, so it moves).
                    None
                } else if at_end {
                    // A block no read handed over and the cache does not hold (or holds no
                    // more): take it from a fetch in flight or fetch it again.
                    Some(f.next_block)
                } else {
                    // Fed what is due; blocks past a gap are left to later reads.
                    return Ok(());
                }
            };
            match next {
                None => {
                    let notified = v.progress.advanced.notified();
                    let mut notified = std::pin::pin!(notified);
                    notified.as_mut().enable();
                    // The thread may have moved on between the check and `enable`.
                    if v.limit() <= v.feed().next_block {
                        let t0 = std::time::Instant::now();
                        notified.await;
                        v.waited_us
                            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }
                Some(first) => {
                    let n = (v.total - first).min(MAX_SPAN).min(v.limit() - first);
                    tracing::debug!(name = %self.file.name, block = first, n, "fetching blocks to verify them");
                    let fetches = cache.blocks(target, &self.file, &self.tag, first, n, Want::Now);
                    let mut blocks = Vec::with_capacity(fetches.len());
                    for r in futures_util::future::join_all(fetches).await {
                        blocks.push(r.map_err(ReadError::Target)?);
                    }
                    let mut f = v.feed();
                    v.hold(&mut f, first, &blocks);
                }
            }
        }
        self.outcome(cache).await
    }

    /// Wait for the verdict; a mismatch drops the file's blocks from the cache and fails
    /// the read.
    async fn outcome(&self, cache: &BlockCache) -> Result<(), ReadError> {
        match self.verifier.verdict(&self.file.name).await? {
            Ok(()) => Ok(()),
            Err((expected, actual)) => {
                cache.forget_file(&self.tag);
                Err(ReadError::Corrupt {
                    expected: expected.clone(),
                    actual: actual.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{Capabilities, DirRef, UploadRequest};

    /// A file in memory that counts its ranged reads.
    struct Mem {
        data: Bytes,
        reads: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Target for Mem {
        fn capabilities(&self) -> Capabilities {
            crate::remote::null::NullTarget::new().capabilities()
        }
        async fn upload(&self, _req: UploadRequest) -> crate::remote::Result<RemoteFile> {
            Err(TargetError::unsupported("upload"))
        }
        async fn read_range(
            &self,
            _file: &RemoteFile,
            offset: u64,
            len: u64,
        ) -> crate::remote::Result<Bytes> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.data.slice(offset as usize..(offset + len) as usize))
        }
        async fn list(&self, _dir: &DirRef) -> crate::remote::Result<Vec<RemoteFile>> {
            Ok(vec![])
        }
        async fn delete(&self, _file: &RemoteFile) -> crate::remote::Result<()> {
            Err(TargetError::unsupported("delete"))
        }
        async fn rename(
            &self,
            _file: &RemoteFile,
            _parent: &DirRef,
            _name: &str,
        ) -> crate::remote::Result<RemoteFile> {
            Err(TargetError::unsupported("rename"))
        }
        async fn mkdir(&self, _parent: &DirRef, _name: &str) -> crate::remote::Result<RemoteFile> {
            Err(TargetError::unsupported("mkdir"))
        }
    }

    /// 10 whole blocks and a short one, with the SHA-1 `expected` reported by the remote.
    fn setup(expected: Option<&str>) -> (Arc<Mem>, RemoteFile, Arc<Verifier>) {
        let data: Vec<u8> = (0..10 * BLOCK_SIZE as usize + 777)
            .map(|i| (i * 7 + i / 1000) as u8)
            .collect();
        let sha1 = hex::encode(sha1::Sha1::digest(&data));
        let expected = expected.map(str::to_string).unwrap_or(sha1);
        let file = RemoteFile {
            id: "f".into(),
            name: "f.bin".into(),
            size: data.len() as u64,
            mtime_ms: 1,
            is_dir: false,
            sha1: Some(expected.clone()),
            md5: None,
            url: None,
            extra: None,
        };
        let v = Arc::new(Verifier::new(expected, file.size));
        let mem = Arc::new(Mem {
            data: Bytes::from(data),
            reads: AtomicU64::new(0),
        });
        (mem, file, v)
    }

    /// Run the verification step of a read that got blocks `first .. end`.
    async fn step(
        v: &Arc<Verifier>,
        mem: &Arc<Mem>,
        file: &RemoteFile,
        cache: &Arc<BlockCache>,
        (first, end): (u64, u64),
        reached: u64,
        run_start: u64,
    ) -> Result<(), ReadError> {
        let blocks: Vec<Block> = (first..end)
            .map(|i| {
                let from = (i * BLOCK_SIZE) as usize;
                let to = (from + BLOCK_SIZE as usize).min(mem.data.len());
                Block::new(mem.data.slice(from..to))
            })
            .collect();
        let done = Done {
            data: Bytes::new(),
            first,
            blocks,
        };
        let target: Arc<dyn Target> = mem.clone();
        VerifyStep {
            verifier: v.clone(),
            file: file.clone(),
            tag: Arc::from("f#t"),
            reached,
            run_start,
        }
        .run(cache, &target, &done)
        .await
    }

    /// Reads that arrive out of order, with nothing in the cache (all evicted), are
    /// verified from the blocks they handed over: nothing is downloaded again.
    #[tokio::test]
    async fn out_of_order_reads_are_verified_from_their_own_blocks() {
        let (mem, file, v) = setup(None);
        let cache = BlockCache::new(0);
        step(&v, &mem, &file, &cache, (2, 4), 4, 0).await.unwrap();
        assert_eq!(v.feed().held.len(), 2, "blocks before their turn are held");
        step(&v, &mem, &file, &cache, (0, 2), 4, 0).await.unwrap();
        step(&v, &mem, &file, &cache, (4, 11), 11, 0).await.unwrap();
        assert!(
            v.verdict.initialized(),
            "the read reaching the end has the verdict"
        );
        assert_eq!(mem.reads.load(Ordering::SeqCst), 0, "no second download");
        assert!(v.feed().held.is_empty());
    }

    /// A mismatch fails the read that reaches the end, and the verdict stays.
    #[tokio::test]
    async fn a_mismatch_fails_the_last_read() {
        let (mem, file, v) = setup(Some("0000000000000000000000000000000000000000"));
        let cache = BlockCache::new(0);
        step(&v, &mem, &file, &cache, (0, 6), 6, 0).await.unwrap();
        let e = step(&v, &mem, &file, &cache, (6, 11), 11, 0).await;
        assert!(matches!(e, Err(ReadError::Corrupt { .. })), "{e:?}");
        let again = step(&v, &mem, &file, &cache, (10, 11), 11, 0).await;
        assert!(matches!(again, Err(ReadError::Corrupt { .. })));
    }

    /// The read that reaches the end fetches blocks no read handed over; a reader that
    /// jumped ahead has nothing held and gets no verdict.
    #[tokio::test]
    async fn the_end_fetches_what_is_missing_and_a_jump_holds_nothing() {
        let (mem, file, v) = setup(None);
        let cache = BlockCache::new(64 << 20);
        step(&v, &mem, &file, &cache, (0, 3), 3, 0).await.unwrap();
        step(&v, &mem, &file, &cache, (5, 11), 11, 0).await.unwrap();
        assert_eq!(
            mem.reads.load(Ordering::SeqCst),
            1,
            "blocks 3 and 4 in one GET"
        );
        assert!(v.verdict.initialized());

        let (mem, file, v) = setup(None);
        step(&v, &mem, &file, &cache, (6, 7), 7, 6).await.unwrap();
        assert!(v.feed().held.is_empty(), "a random read holds nothing");
        step(&v, &mem, &file, &cache, (10, 11), 11, 10)
            .await
            .unwrap();
        assert!(
            !v.verdict.initialized(),
            "not read whole in order: no verdict"
        );
        assert_eq!(mem.reads.load(Ordering::SeqCst), 0);
    }
}
