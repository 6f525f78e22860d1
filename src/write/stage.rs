//! A stage: the spool file that holds one inode's pending data until it is committed.
//!
//! Writes go straight to the file at their offset (`pwrite`), so any order works and memory
//! stays flat whatever the file size. A version counter moves on every change, which is
//! how the filesystem tells "new data since the last commit" from a flush with nothing new
//! (shell redirection, `dup`, `fork`).
//!
//! Digests are not computed on the writing thread: once [`HASH_LAG`] bytes are written
//! ahead of the hashed prefix, a background hasher (a blocking-pool thread) reads the stage
//! behind the writer and feeds SHA-1/MD5 until it catches up, then ends. A commit waits
//! for it, hashes the short tail itself, and recomputes everything from the file only when
//! a write went below the hashed prefix (see [`super::digests`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use super::digests::{Hashers, Progress};
use crate::remote::{Digests, PartSource, Seal};

/// Read size when hashing a stage (background hasher, tail, and full passes): small
/// enough that sixteen concurrent hashers hold little memory, large enough that the
/// per-read cost vanishes next to SHA-1's.
const HASH_CHUNK: usize = 256 << 10;

/// Unhashed bytes before a background hasher starts. Small files never start one: their
/// commit hashes them in well under a millisecond.
const HASH_LAG: u64 = 4 << 20;

struct StageState {
    size: u64,
    version: u64,
    progress: Progress,
    /// A hasher (background, or a commit hashing the tail) owns `Inner::hash`.
    hashing: bool,
    /// An upload reading this stage while it is still written (a size hint).
    early: Option<EarlyWatch>,
}

/// What an upload started before the file was complete needs to know about the writes:
/// how far the data is written without gaps (parts up to there can be read), how far
/// the upload has read (a later write below that spoils what was sent), and whether the
/// writer is done.
#[derive(Debug)]
struct EarlyWatch {
    /// End of the data written contiguously from offset 0.
    written: u64,
    /// End of the furthest range the upload has read.
    read_mark: u64,
    /// A write or truncate went below `read_mark`: the bytes sent are stale.
    spoiled: bool,
    end: EarlyEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyEnd {
    /// The writer may still write.
    Open,
    /// The writer closed the file (writes are kept out until the upload ends).
    Sealed,
    /// The upload is given up: every wait ends with an error.
    Cancelled,
}

/// The hashers and the epoch of the data they have seen.
struct HashState {
    epoch: u64,
    hashers: Hashers,
}

struct Inner {
    path: PathBuf,
    file: File,
    with_md5: bool,
    state: Mutex<StageState>,
    /// Signalled when a hasher stops.
    hasher_done: Condvar,
    /// Signalled when data arrives or the writer is done, for an early upload's reads.
    grown: Condvar,
    hash: Mutex<HashState>,
}

/// One inode's spool file.
pub struct Stage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Read exactly `buf.len()` bytes at `offset`; bytes past the physical end read as zeros.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, StageState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hash_state(&self) -> MutexGuard<'_, HashState> {
        self.hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feed the hashers until the hashed prefix reaches the write frontier (background) or
    /// the size (`to_size`, a commit). The caller set `hashing`; it is cleared here.
    fn hash_ahead(&self, to_size: bool) {
        let mut buf = vec![0u8; HASH_CHUNK];
        loop {
            let (start, len, epoch) = {
                let mut st = self.lock();
                let next = if to_size && !st.progress.broken {
                    let h = st.progress.hashed;
                    (st.size > h).then(|| (h, (st.size - h).min(HASH_CHUNK as u64)))
                } else {
                    st.progress.next_background(HASH_CHUNK as u64)
                };
                let Some((start, len)) = next else {
                    st.hashing = false;
                    self.hasher_done.notify_all();
                    return;
                };
                // Claim the range first: a write into it from now on breaks the digest, so
                // reading it outside the lock cannot hash a torn mix unnoticed.
                st.progress.hashed = start + len;
                (start, len as usize, st.progress.epoch)
            };
            if let Err(e) = read_full(&self.file, &mut buf[..len], start) {
                tracing::debug!(path = %self.path.display(), error = %e, "stage hasher: read failed");
                self.lock().progress.broken = true;
                continue;
            }
            let mut h = self.hash_state();
            if h.epoch != epoch {
                // Truncated to zero since: start over.
                h.epoch = epoch;
                h.hashers = Hashers::new(self.with_md5);
            }
            h.hashers.update(&buf[..len]);
        }
    }
}

impl Stage {
    fn with_file(path: &Path, file: File, with_md5: bool, size: u64, progress: Progress) -> Stage {
        let epoch = progress.epoch;
        Stage {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                file,
                with_md5,
                state: Mutex::new(StageState {
                    size,
                    version: 0,
                    progress,
                    hashing: false,
                    early: None,
                }),
                hasher_done: Condvar::new(),
                grown: Condvar::new(),
                hash: Mutex::new(HashState {
                    epoch,
                    hashers: Hashers::new(with_md5),
                }),
            }),
        }
    }

    /// Create an empty stage at `path` (replacing any leftover file).
    pub fn create(path: &Path, with_md5: bool) -> std::io::Result<Stage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Self::with_file(path, file, with_md5, 0, Progress::new()))
    }

    /// Reopen a stage left by an earlier run; its digests are recomputed when needed.
    pub fn open_existing(path: &Path, with_md5: bool) -> std::io::Result<Stage> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self::with_file(
            path,
            file,
            with_md5,
            size,
            Progress::broken(),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn lock(&self) -> MutexGuard<'_, StageState> {
        self.inner.lock()
    }

    pub fn size(&self) -> u64 {
        self.lock().size
    }

    /// Changes so far; compare with the version of the last commit.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Start the background hasher if enough is written ahead of it. Called with the state
    /// locked, so at most one hasher runs.
    fn maybe_hash_behind(&self, st: &mut StageState) {
        if st.hashing || st.progress.lag() < HASH_LAG {
            return;
        }
        st.hashing = true;
        let inner = self.inner.clone();
        let run = move || inner.hash_ahead(false);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(run);
            }
            Err(_) => {
                if let Err(e) = std::thread::Builder::new()
                    .name("stage-hasher".into())
                    .spawn(run)
                {
                    // Not fatal: the commit hashes whatever is left.
                    tracing::debug!(error = %e, "cannot start a stage hasher");
                    st.hashing = false;
                }
            }
        }
    }

    /// Write `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        // The lock keeps size, version and the digest progress consistent with the file.
        let mut st = self.lock();
        self.inner.file.write_all_at(data, offset)?;
        st.size = st.size.max(offset + data.len() as u64);
        st.version += 1;
        st.progress.write(offset, data.len() as u64);
        if let Some(w) = &mut st.early {
            let end = offset + data.len() as u64;
            if offset < w.read_mark {
                w.spoiled = true;
            }
            if offset <= w.written {
                w.written = w.written.max(end);
            }
            self.inner.grown.notify_all();
        }
        self.maybe_hash_behind(&mut st);
        Ok(())
    }

    /// Whether this stage's digests include MD5.
    pub fn with_md5(&self) -> bool {
        self.inner.with_md5
    }

    /// Read up to `len` bytes at `offset` (short at the end).
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let size = self.size();
        if offset >= size {
            return Ok(Bytes::new());
        }
        let len = len.min((size - offset) as usize);
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self
                .inner
                .file
                .read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                // A hole past the physical end reads as zeros.
                break;
            }
            done += n;
        }
        Ok(Bytes::from(buf))
    }

    /// Set the size (shrink or extend with zeros).
    pub fn truncate(&self, size: u64) -> std::io::Result<()> {
        let mut st = self.lock();
        self.inner.file.set_len(size)?;
        st.size = size;
        st.version += 1;
        st.progress.truncate(size);
        if let Some(w) = &mut st.early {
            if size < w.read_mark {
                w.spoiled = true;
            }
            w.written = w.written.min(size);
            self.inner.grown.notify_all();
        }
        Ok(())
    }

    /// An upload starts reading this stage while it is still written: from now on its
    /// reads wait for the data ([`GrowingSource`]) and later writes are checked against
    /// what it read. Only for a stage nothing was written to yet.
    pub fn early_begin(&self) -> bool {
        let mut st = self.lock();
        if st.early.is_some() || st.progress.frontier != 0 {
            return false;
        }
        st.early = Some(EarlyWatch {
            written: 0,
            read_mark: 0,
            spoiled: false,
            end: EarlyEnd::Open,
        });
        true
    }

    /// The writer is done (writes are kept out by the caller from now on): true when
    /// everything the early upload read is still what the stage holds, so it may
    /// complete. Otherwise its reads fail from now on.
    pub fn early_seal(&self) -> bool {
        let mut st = self.lock();
        let Some(w) = &mut st.early else { return false };
        let intact = w.end == EarlyEnd::Open && !w.spoiled;
        w.end = if intact {
            EarlyEnd::Sealed
        } else {
            EarlyEnd::Cancelled
        };
        self.inner.grown.notify_all();
        intact
    }

    /// Give the early upload up: its waiting and later reads fail.
    pub fn early_cancel(&self) {
        let mut st = self.lock();
        if let Some(w) = &mut st.early {
            w.end = EarlyEnd::Cancelled;
            self.inner.grown.notify_all();
        }
    }

    /// The early upload is over: the stage is an ordinary one again.
    pub fn early_end(&self) {
        let mut st = self.lock();
        if st.early.take().is_some() {
            self.inner.grown.notify_all();
        }
    }

    /// Wait until everything below `end` is written (or the writer is done), then count it as
    /// read by the early upload. Fails once the upload is given up.
    fn early_claim(&self, end: u64) -> std::io::Result<()> {
        // Waits wake on every write anyway; the timeout only bounds a missed wake-up.
        const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
        let mut st = self.lock();
        loop {
            let Some(w) = &mut st.early else {
                return Err(std::io::Error::other(
                    "the upload started before the file was complete was given up",
                ));
            };
            match w.end {
                EarlyEnd::Cancelled => {
                    return Err(std::io::Error::other(
                        "the upload started before the file was complete was given up",
                    ))
                }
                EarlyEnd::Sealed => break,
                EarlyEnd::Open if w.written >= end => break,
                EarlyEnd::Open => {}
            }
            st = self
                .inner
                .grown
                .wait_timeout(st, RECHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if let Some(w) = &mut st.early {
            w.read_mark = w.read_mark.max(end);
        }
        Ok(())
    }

    /// Force the data to disk (fsync).
    pub fn sync(&self) -> std::io::Result<()> {
        self.inner.file.sync_data()
    }

    /// SHA-1 (and MD5 when asked for) of the whole stage: the background hasher's work
    /// plus the tail, or a full pass over the file when the writes were not in order.
    /// Blocking; call from a blocking thread.
    pub fn digests(&self) -> std::io::Result<Digests> {
        let inner = &self.inner;
        let (version, size) = {
            let mut st = self.lock();
            while st.hashing {
                st = inner
                    .hasher_done
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if !st.progress.broken {
                st.hashing = true;
                drop(st);
                inner.hash_ahead(true);
                let st = self.lock();
                if !st.progress.broken && st.progress.hashed == st.size {
                    let mut h = inner.hash_state();
                    if h.epoch != st.progress.epoch {
                        // Truncated to zero and nothing hashed since.
                        h.epoch = st.progress.epoch;
                        h.hashers = Hashers::new(inner.with_md5);
                    }
                    return Ok(h.hashers.finish());
                }
                (st.version, st.size)
            } else {
                (st.version, st.size)
            }
        };
        // A full pass; its hashers become the progress when nothing changed meanwhile, so
        // later appends continue from there.
        let mut hashers = Hashers::new(inner.with_md5);
        let mut buf = vec![0u8; HASH_CHUNK];
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(HASH_CHUNK as u64) as usize;
            read_full(&inner.file, &mut buf[..n], off)?;
            hashers.update(&buf[..n]);
            off += n as u64;
        }
        let digests = hashers.finish();
        let mut st = self.lock();
        if st.version == version && !st.hashing {
            st.progress = Progress {
                hashed: size,
                frontier: size,
                broken: false,
                epoch: st.progress.epoch,
            };
            *inner.hash_state() = HashState {
                epoch: st.progress.epoch,
                hashers,
            };
        }
        Ok(digests)
    }

    /// Delete the spool file (the open descriptor stays valid until dropped).
    pub fn remove_file(&self) {
        // Nobody needs the digests of a removed stage: stop a background hasher.
        self.lock().progress.broken = true;
        if let Err(e) = std::fs::remove_file(&self.inner.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.inner.path.display(), error = %e, "cannot remove stage file");
            }
        }
    }
}

/// The stage as an upload's [`PartSource`]: the bytes as they are at upload time (the
/// filesystem keeps writers out while an upload runs).
pub struct StageSource {
    stage: Arc<Stage>,
    size: u64,
}

impl StageSource {
    pub fn new(stage: Arc<Stage>, size: u64) -> Self {
        Self { stage, size }
    }
}

impl PartSource for StageSource {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let len = len.min((self.size - offset) as usize);
        let b = self.stage.read_at(offset, len)?;
        if b.len() < len {
            // A sparse tail (truncate past the written end) reads as zeros.
            let mut v = b.to_vec();
            v.resize(len, 0);
            return Ok(Bytes::from(v));
        }
        Ok(b)
    }
    fn path(&self) -> Option<&Path> {
        Some(self.stage.path())
    }
}

/// The stage of a file still being written as an upload's [`PartSource`]: a read waits
/// until its bytes are written (or the writer is done), and the writer's later changes to
/// bytes already read spoil the upload (see [`Stage::early_seal`]). Reads go through the
/// stage, never through its path, so nothing streams a half-written file directly.
pub struct GrowingSource {
    inner: StageSource,
    seal: Arc<Seal>,
}

impl GrowingSource {
    pub fn new(stage: Arc<Stage>, size: u64, seal: Arc<Seal>) -> Self {
        Self {
            inner: StageSource::new(stage, size),
            seal,
        }
    }
}

impl PartSource for GrowingSource {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        self.wait_ready(offset, len as u64)?;
        if self.seal.is_open_ended() {
            // The wait returned, so these bytes are written or the writer is done (and kept
            // out): either way the stage's size now bounds what can be read, and a read past
            // it comes back short, which is how the upload learns where the file ends.
            let size = self.inner.stage.size();
            return StageSource::new(self.inner.stage.clone(), size).read_at(offset, len);
        }
        self.inner.read_at(offset, len)
    }
    fn wait_ready(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = offset.saturating_add(len);
        // An announced size bounds the wait; an open-ended upload waits for the bytes or
        // for the writer to close the file.
        let end = if self.seal.is_open_ended() {
            end
        } else {
            end.min(self.inner.size)
        };
        self.inner.stage.early_claim(end)
    }
    fn seal(&self) -> Option<Arc<Seal>> {
        Some(self.seal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest as _;

    #[test]
    fn random_writes_and_rehash() {
        let dir = tempfile::tempdir().unwrap();
        let s = Stage::create(&dir.path().join("s"), true).unwrap();
        s.write_at(5, b"world").unwrap();
        s.write_at(0, b"hello").unwrap();
        assert_eq!(s.size(), 10);
        assert_eq!(s.version(), 2);
        assert_eq!(&s.read_at(0, 100).unwrap()[..], b"helloworld");
        let d = s.digests().unwrap();
        assert_eq!(
            d.sha1.unwrap(),
            hex::encode(sha1::Sha1::digest(b"helloworld"))
        );
        assert_eq!(d.md5.unwrap(), hex::encode(md5::Md5::digest(b"helloworld")));
        s.truncate(3).unwrap();
        assert_eq!(&s.read_at(0, 100).unwrap()[..], b"hel");
        s.truncate(6).unwrap();
        assert_eq!(&s.read_at(0, 100).unwrap()[..], b"hel\0\0\0");
        let src = StageSource::new(Arc::new(s), 6);
        assert_eq!(&src.read_at(2, 10).unwrap()[..], b"l\0\0\0");
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn background_hasher_follows_in_order_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Stage::create(&dir.path().join("s"), true).unwrap();
        let data = pattern(11 << 20, 7);
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            s.write_at((i << 20) as u64, chunk).unwrap();
        }
        let d = s.digests().unwrap();
        assert_eq!(d.sha1.unwrap(), hex::encode(sha1::Sha1::digest(&data)));
        assert_eq!(d.md5.unwrap(), hex::encode(md5::Md5::digest(&data)));
        // Appending after a commit continues from the hashed prefix.
        let more = pattern(5 << 20, 9);
        s.write_at(data.len() as u64, &more).unwrap();
        let all = [data.as_slice(), more.as_slice()].concat();
        assert_eq!(
            s.digests().unwrap().sha1.unwrap(),
            hex::encode(sha1::Sha1::digest(&all))
        );
    }

    #[test]
    fn overwrite_of_hashed_bytes_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Stage::create(&dir.path().join("s"), false).unwrap();
        let mut data = pattern(9 << 20, 3);
        s.write_at(0, &data).unwrap();
        assert!(s.digests().is_ok()); // everything hashed now
        s.write_at(100, b"changed").unwrap();
        data[100..107].copy_from_slice(b"changed");
        assert_eq!(
            s.digests().unwrap().sha1.unwrap(),
            hex::encode(sha1::Sha1::digest(&data))
        );
        // Truncated to zero: a new file as far as digests go.
        s.truncate(0).unwrap();
        assert_eq!(
            s.digests().unwrap().sha1.unwrap(),
            hex::encode(sha1::Sha1::digest(b""))
        );
        let fresh = pattern(6 << 20, 1);
        s.write_at(0, &fresh).unwrap();
        s.truncate(7 << 20).unwrap(); // extended with zeros after the writes
        let mut want = fresh.clone();
        want.resize(7 << 20, 0);
        assert_eq!(
            s.digests().unwrap().sha1.unwrap(),
            hex::encode(sha1::Sha1::digest(&want))
        );
    }

    #[test]
    fn growing_source_waits_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Stage::create(&dir.path().join("s"), false).unwrap());
        assert!(s.early_begin());
        assert!(!s.early_begin(), "one early upload per stage");
        let src = Arc::new(GrowingSource::new(s.clone(), 10, Seal::new()));
        let r = {
            let src = src.clone();
            std::thread::spawn(move || src.read_at(0, 4))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!r.is_finished(), "read before the data was written");
        s.write_at(0, b"ab").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!r.is_finished(), "read of a half-written range");
        s.write_at(2, b"cd").unwrap();
        assert_eq!(&r.join().unwrap().unwrap()[..], b"abcd");
        // A write ahead of a gap counts only once the writer is done (the data in between
        // is not known to be final before that).
        s.write_at(8, b"ij").unwrap();
        s.write_at(4, b"efgh").unwrap();
        assert_eq!(&src.read_at(4, 4).unwrap()[..], b"efgh");
        let r = {
            let src = src.clone();
            std::thread::spawn(move || src.read_at(8, 2))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!r.is_finished(), "read past a gap before the seal");
        assert!(s.early_seal(), "nothing read was rewritten");
        assert_eq!(&r.join().unwrap().unwrap()[..], b"ij");
        s.early_end();
        assert!(src.read_at(0, 1).is_err(), "reads after the end fail");
    }

    #[test]
    fn growing_source_notices_rewrites_and_cancels() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Stage::create(&dir.path().join("s"), false).unwrap());
        assert!(s.early_begin());
        let src = GrowingSource::new(s.clone(), 8, Seal::new());
        s.write_at(0, b"abcdefgh").unwrap();
        assert_eq!(&src.read_at(0, 4).unwrap()[..], b"abcd");
        s.write_at(6, b"X").unwrap(); // not read yet: fine
        assert_eq!(&src.read_at(4, 4).unwrap()[..], b"efXh");
        s.write_at(1, b"Y").unwrap(); // already read: the upload is stale
        assert!(!s.early_seal());
        assert!(src.read_at(0, 1).is_err());
        s.early_end();

        // A shrinking truncate below what was read spoils it too; a cancel wakes a reader.
        let s = Arc::new(Stage::create(&dir.path().join("t"), false).unwrap());
        assert!(s.early_begin());
        let src = Arc::new(GrowingSource::new(s.clone(), 8, Seal::new()));
        s.write_at(0, b"abcd").unwrap();
        assert_eq!(&src.read_at(0, 4).unwrap()[..], b"abcd");
        let r = {
            let src = src.clone();
            std::thread::spawn(move || src.read_at(4, 4))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!r.is_finished());
        s.early_cancel();
        assert!(r.join().unwrap().is_err(), "a cancel ends a waiting read");
        assert!(!s.early_seal());
    }

    #[test]
    fn sealed_growing_source_reads_the_rest_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Stage::create(&dir.path().join("s"), false).unwrap());
        assert!(s.early_begin());
        s.truncate(6).unwrap(); // the size hint
        let src = GrowingSource::new(s.clone(), 6, Seal::new());
        s.write_at(0, b"ab").unwrap();
        assert!(s.early_seal());
        // The writer stopped early: the rest of the announced size reads as zeros.
        assert_eq!(&src.read_at(0, 6).unwrap()[..], b"ab\0\0\0\0");
    }

    #[test]
    fn open_ended_growing_source_ends_where_the_writer_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Stage::create(&dir.path().join("s"), false).unwrap());
        assert!(s.early_begin());
        // No size announced: reads wait for their bytes, however far they reach.
        let src = Arc::new(GrowingSource::new(s.clone(), 0, Seal::open_ended()));
        s.write_at(0, b"abcd").unwrap();
        assert_eq!(&src.read_at(0, 4).unwrap()[..], b"abcd");
        let r = {
            let src = src.clone();
            std::thread::spawn(move || src.read_at(4, 4))
        };
        s.write_at(4, b"ef").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !r.is_finished(),
            "a part is read only once full or once the writer is done"
        );
        assert!(s.early_seal());
        // Done at 6 bytes: the last part comes back short, and past the end comes nothing.
        assert_eq!(&r.join().unwrap().unwrap()[..], b"ef");
        assert!(src.read_at(6, 4).unwrap().is_empty());
        // A sparse tail the writer made with ftruncate is data, read as zeros.
        s.early_end();
        let t = Arc::new(Stage::create(&dir.path().join("t"), false).unwrap());
        assert!(t.early_begin());
        let src = GrowingSource::new(t.clone(), 0, Seal::open_ended());
        t.write_at(0, b"ab").unwrap();
        t.truncate(5).unwrap();
        assert!(t.early_seal());
        assert_eq!(&src.read_at(0, 8).unwrap()[..], b"ab\0\0\0");
    }

    #[test]
    fn reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        {
            let s = Stage::create(&p, false).unwrap();
            s.write_at(0, b"abc").unwrap();
        }
        let s = Stage::open_existing(&p, false).unwrap();
        assert_eq!(s.size(), 3);
        assert_eq!(
            s.digests().unwrap().sha1.unwrap(),
            hex::encode(sha1::Sha1::digest(b"abc"))
        );
    }
}
