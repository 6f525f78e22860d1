//! Whole-file digests of a stage, computed while the file is written.
//!
//! SHA-1 (always) and MD5 (when the target needs it) cost more CPU than the rest of the
//! write path together, so they are not computed on the thread that answers the kernel's
//! write: a stage remembers how far the data is hashed ([`Progress`]) and a background
//! hasher reads the stage file behind the writer. Writes usually arrive in order (`cp`,
//! `rsync`, shell redirection), so the hasher only ever reads bytes that will not change
//! again. A write or truncate that touches bytes already hashed gives up; the stage is then
//! hashed again in one pass at commit time.
//!
//! When both digests are needed (Dyson), each chunk of at least [`PARALLEL_MIN`] bytes is
//! hashed by SHA-1 on the calling thread and by MD5 on a second, scoped thread at the same
//! time: the two run at similar speeds, so a pass takes about as long as the slower one
//! alone instead of their sum.

use md5::Digest as _;

/// Smallest chunk whose MD5 goes to a second thread. Starting and joining a thread costs
/// some tens of microseconds; MD5 of 64 KiB takes about a hundred, so below this size the
/// second thread would save less than it costs.
const PARALLEL_MIN: usize = 64 << 10;

use crate::target::Digests;

/// Incremental SHA-1 and optional MD5 over a byte stream.
#[derive(Clone)]
pub struct Hashers {
    sha1: sha1::Sha1,
    md5: Option<md5::Md5>,
}

impl Hashers {
    pub fn new(with_md5: bool) -> Self {
        Self {
            sha1: sha1::Sha1::new(),
            md5: with_md5.then(md5::Md5::new),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.md5 {
            Some(md5) if data.len() >= PARALLEL_MIN => {
                let sha1 = &mut self.sha1;
                std::thread::scope(|s| {
                    s.spawn(|| md5.update(data));
                    sha1.update(data);
                });
            }
            Some(md5) => {
                self.sha1.update(data);
                md5.update(data);
            }
            None => self.sha1.update(data),
        }
    }

    /// The digests of everything fed so far (the hashers keep going).
    pub fn finish(&self) -> Digests {
        Digests {
            sha1: Some(hex::encode(self.sha1.clone().finalize())),
            md5: self.md5.clone().map(|m| hex::encode(m.finalize())),
        }
    }
}

/// How far a stage's bytes went through its hashers, and whether that still counts.
///
/// `hashed` is the length of the prefix claimed by the hasher; `frontier` the end of the
/// furthest write (the background hasher stops there, so a file extended by `truncate` or
/// `fallocate` and then written in order is not hashed ahead of its writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub hashed: u64,
    pub frontier: u64,
    /// Bytes below `hashed` changed: the digests need a full pass over the stage.
    pub broken: bool,
    /// Moves when the stage is truncated to zero: hashers of an older epoch start over.
    pub epoch: u64,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            hashed: 0,
            frontier: 0,
            broken: false,
            epoch: 0,
        }
    }

    /// A stage whose history is unknown (reopened after a restart).
    pub fn broken() -> Self {
        Self {
            broken: true,
            ..Self::new()
        }
    }

    /// Account for `len` bytes written at `offset`.
    pub fn write(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        if offset < self.hashed {
            self.broken = true;
        }
        self.frontier = self.frontier.max(offset + len);
    }

    /// Account for a truncate to `size`.
    pub fn truncate(&mut self, size: u64) {
        if size == 0 {
            *self = Self {
                epoch: self.epoch + 1,
                ..Self::new()
            };
            return;
        }
        if size < self.hashed {
            self.broken = true;
        }
        self.frontier = self.frontier.min(size);
    }

    /// The next range for the background hasher, at most `max` bytes, if any.
    pub fn next_background(&self, max: u64) -> Option<(u64, u64)> {
        (!self.broken && self.frontier > self.hashed)
            .then(|| (self.hashed, (self.frontier - self.hashed).min(max)))
    }

    /// Bytes written but not hashed yet (what a background hasher would catch up on).
    pub fn lag(&self) -> u64 {
        if self.broken {
            0
        } else {
            self.frontier.saturating_sub(self.hashed)
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha1_hex(d: &[u8]) -> String {
        hex::encode(sha1::Sha1::digest(d))
    }

    #[test]
    fn hashers_continue_after_finish() {
        let mut h = Hashers::new(true);
        h.update(b"hello ");
        assert_eq!(h.finish().sha1.unwrap(), sha1_hex(b"hello "));
        h.update(b"world");
        let g = h.finish();
        assert_eq!(g.sha1.unwrap(), sha1_hex(b"hello world"));
        assert_eq!(
            g.md5.unwrap(),
            hex::encode(md5::Md5::digest(b"hello world"))
        );
        assert!(Hashers::new(false).finish().md5.is_none());
    }

    #[test]
    fn parallel_chunks_hash_like_one_pass() {
        // Chunks below and above the size that goes to a second thread, mixed.
        let data: Vec<u8> = (0..(3 * PARALLEL_MIN + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut h = Hashers::new(true);
        let mut at = 0;
        for len in [10, PARALLEL_MIN, PARALLEL_MIN - 1, 2 * PARALLEL_MIN] {
            let end = (at + len).min(data.len());
            h.update(&data[at..end]);
            at = end;
        }
        h.update(&data[at..]);
        let d = h.finish();
        assert_eq!(d.sha1.unwrap(), sha1_hex(&data));
        assert_eq!(d.md5.unwrap(), hex::encode(md5::Md5::digest(&data)));
        let mut only_sha1 = Hashers::new(false);
        only_sha1.update(&data);
        assert_eq!(only_sha1.finish().sha1.unwrap(), sha1_hex(&data));
    }

    #[test]
    fn progress_breaks_only_below_the_hashed_prefix() {
        let mut p = Progress::new();
        p.write(0, 10);
        p.write(20, 5); // a hole ahead of the hasher is fine: it reads zeros there
        assert_eq!(p.next_background(100), Some((0, 25)));
        p.hashed = 25;
        assert_eq!(p.next_background(100), None);
        p.write(25, 5);
        assert_eq!(p.lag(), 5);
        p.truncate(40); // extending leaves the frontier where the writes are
        assert_eq!(p.next_background(100), Some((25, 5)));
        p.write(3, 1);
        assert!(p.broken);
        assert_eq!(p.next_background(100), None);
        p.truncate(0);
        assert!(!p.broken);
        assert_eq!(p.epoch, 1);
        assert_eq!(p.hashed, 0);
        p.write(0, 4);
        p.hashed = 4;
        p.truncate(2);
        assert!(p.broken, "shrinking below the hashed prefix must give up");
    }
}
