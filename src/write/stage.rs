//! A stage: the spool file that holds one inode's pending data until it is committed.
//!
//! Writes go straight to the file at their offset (`pwrite`), so any order works and memory
//! stays flat whatever the file size. A version counter moves on every change, which is
//! how the filesystem tells "new data since the last commit" from a flush with nothing new
//! (shell redirection, `dup`, `fork`). The digest of in-order writes rides along; a
//! commit recomputes it from the file when the writes were not in order.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use md5::Digest as _;

use super::digests::SeqDigest;
use crate::target::{Digests, PartSource};

/// Read size when hashing a stage again.
const REHASH_CHUNK: usize = 1 << 20;

struct StageState {
    size: u64,
    version: u64,
    digest: SeqDigest,
}

/// One inode's spool file.
pub struct Stage {
    path: PathBuf,
    file: File,
    with_md5: bool,
    state: Mutex<StageState>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("path", &self.path).finish()
    }
}

impl Stage {
    /// Create an empty stage at `path` (replacing any leftover file).
    pub fn create(path: &Path, with_md5: bool) -> std::io::Result<Stage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Stage {
            path: path.to_path_buf(),
            file,
            with_md5,
            state: Mutex::new(StageState {
                size: 0,
                version: 0,
                digest: SeqDigest::new(with_md5),
            }),
        })
    }

    /// Reopen a stage left by an earlier run; its digests are recomputed when needed.
    pub fn open_existing(path: &Path, with_md5: bool) -> std::io::Result<Stage> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Stage {
            path: path.to_path_buf(),
            file,
            with_md5,
            state: Mutex::new(StageState {
                size,
                version: 0,
                digest: SeqDigest::broken(with_md5),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StageState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn size(&self) -> u64 {
        self.lock().size
    }

    /// Changes so far; compare with the version of the last commit.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Write `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        // The lock keeps size, version and the in-order digest consistent with the file.
        let mut st = self.lock();
        self.file.write_all_at(data, offset)?;
        st.size = st.size.max(offset + data.len() as u64);
        st.version += 1;
        st.digest.write(offset, data);
        Ok(())
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
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
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
        self.file.set_len(size)?;
        st.size = size;
        st.version += 1;
        st.digest.truncate(size);
        Ok(())
    }

    /// Force the data to disk (fsync).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// SHA-1 (and MD5 when asked for) of the whole stage: from the in-order digest when
    /// possible, else by reading the file again. Blocking; call from a blocking thread.
    pub fn digests(&self) -> std::io::Result<Digests> {
        let size = {
            let st = self.lock();
            if let Some(d) = st.digest.finish(st.size) {
                return Ok(d);
            }
            st.size
        };
        let mut sha1 = sha1::Sha1::new();
        let mut md5 = self.with_md5.then(md5::Md5::new);
        let mut off = 0u64;
        while off < size {
            let chunk = self.read_at(off, REHASH_CHUNK)?;
            if chunk.is_empty() {
                break;
            }
            sha1.update(&chunk);
            if let Some(m) = &mut md5 {
                m.update(&chunk);
            }
            off += chunk.len() as u64;
        }
        Ok(Digests {
            sha1: Some(hex::encode(sha1.finalize())),
            md5: md5.map(|m| hex::encode(m.finalize())),
        })
    }

    /// Delete the spool file (the open descriptor stays valid until dropped).
    pub fn remove_file(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove stage file");
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

#[cfg(test)]
mod tests {
    use super::*;

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
