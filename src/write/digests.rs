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
//! When both digests are needed (Dyson), MD5 runs on a helper thread of its own, started
//! at the first chunk of [`HELPER_MIN`] bytes or more: each chunk is copied to it and
//! hashed there while the caller goes on with SHA-1 and its next read, so a pass takes
//! about as long as MD5 alone (the slower of the two) instead of the sum of both. Small
//! files never start a helper.

use std::sync::mpsc;

use md5::Digest as _;

use crate::remote::Digests;

/// Smallest chunk that starts the MD5 helper. Below it, copying the chunk and waking the
/// helper would cost more than hashing it in place.
const HELPER_MIN: usize = 64 << 10;

/// Chunks queued to the MD5 helper before `update` waits for it: bounds the memory a
/// helper holds (with the stage's 256 KiB reads, 1 MiB) while keeping it busy.
const HELPER_QUEUE: usize = 4;

/// Work for the MD5 helper, done in order.
enum Job {
    Data(Vec<u8>),
    /// Send back a copy of the state (everything queued before is hashed).
    Snapshot(mpsc::SyncSender<md5::Md5>),
}

/// The MD5 helper thread: owns the MD5 state; ends when its queue is dropped.
struct Helper {
    jobs: mpsc::SyncSender<Job>,
    /// Buffers the helper is done with, for reuse.
    spare: mpsc::Receiver<Vec<u8>>,
}

enum Md5State {
    None,
    Here(md5::Md5),
    Helper(Helper),
    /// The helper stopped (it cannot on its own; a panic would): no MD5 is reported, and
    /// the upload computes it from the stage instead. Never a wrong one.
    Lost,
}

/// Incremental SHA-1 and optional MD5 over a byte stream.
pub struct Hashers {
    sha1: sha1::Sha1,
    md5: Md5State,
}

impl Hashers {
    pub fn new(with_md5: bool) -> Self {
        Self {
            sha1: sha1::Sha1::new(),
            md5: if with_md5 {
                Md5State::Here(md5::Md5::new())
            } else {
                Md5State::None
            },
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if data.len() >= HELPER_MIN {
            if let Md5State::Here(m) = &self.md5 {
                if let Some(h) = Helper::start(m.clone()) {
                    self.md5 = Md5State::Helper(h);
                }
            }
        }
        match &mut self.md5 {
            Md5State::None | Md5State::Lost => {}
            Md5State::Here(m) => m.update(data),
            Md5State::Helper(h) => {
                if !h.send(data) {
                    tracing::warn!("the MD5 thread stopped; the upload computes MD5 itself");
                    self.md5 = Md5State::Lost;
                }
            }
        }
        self.sha1.update(data);
    }

    /// The digests of a whole small body, hashed here at once (no MD5 helper).
    pub fn of(data: &[u8], with_md5: bool) -> Digests {
        Digests {
            sha1: Some(hex::encode(sha1::Sha1::digest(data))),
            md5: with_md5.then(|| hex::encode(md5::Md5::digest(data))),
        }
    }

    /// The digests of everything fed so far (the hashers keep going).
    pub fn finish(&self) -> Digests {
        let md5 = match &self.md5 {
            Md5State::None | Md5State::Lost => None,
            Md5State::Here(m) => Some(m.clone()),
            Md5State::Helper(h) => h.snapshot(),
        };
        Digests {
            sha1: Some(hex::encode(self.sha1.clone().finalize())),
            md5: md5.map(|m| hex::encode(m.finalize())),
        }
    }
}

impl Helper {
    /// A helper continuing from `state`; None if no thread can be started.
    fn start(state: md5::Md5) -> Option<Helper> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(HELPER_QUEUE);
        let (spare_tx, spare) = mpsc::channel::<Vec<u8>>();
        let spawned = std::thread::Builder::new()
            .name("md5".into())
            .spawn(move || {
                let mut m = state;
                for job in rx {
                    match job {
                        Job::Data(buf) => {
                            m.update(&buf);
                            let _ = spare_tx.send(buf);
                        }
                        Job::Snapshot(reply) => {
                            let _ = reply.send(m.clone());
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Helper { jobs, spare }),
            Err(e) => {
                tracing::debug!(error = %e, "cannot start an MD5 thread; hashing in place");
                None
            }
        }
    }

    /// Queue a copy of `data`; false if the helper is gone.
    fn send(&self, data: &[u8]) -> bool {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.jobs.send(Job::Data(buf)).is_ok()
    }

    /// The MD5 state after every chunk queued so far (None if the helper stopped).
    fn snapshot(&self) -> Option<md5::Md5> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs.send(Job::Snapshot(tx)).ok()?;
        rx.recv().ok()
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
    fn of_a_whole_body_matches_the_incremental_hashers() {
        for len in [0, 1, HELPER_MIN - 1, HELPER_MIN, HELPER_MIN + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for with_md5 in [false, true] {
                let mut h = Hashers::new(with_md5);
                h.update(&data);
                assert_eq!(Hashers::of(&data, with_md5), h.finish(), "{len} {with_md5}");
            }
        }
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
        let data: Vec<u8> = (0..(5 * HELPER_MIN + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut h = Hashers::new(true);
        let mut at = 0;
        for len in [10, HELPER_MIN - 1, HELPER_MIN, 7, 2 * HELPER_MIN] {
            let end = (at + len).min(data.len());
            h.update(&data[at..end]);
            at = end;
        }
        h.update(&data[at..]);
        // A finish in the middle does not disturb the running digests.
        let _ = h.finish();
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
