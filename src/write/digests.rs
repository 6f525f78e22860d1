//! Whole-file digests computed while a file is written.
//!
//! Writes usually arrive in order (`cp`, `rsync`, shell redirection), so SHA-1 and MD5 are
//! fed as the data passes. The first write that is not exactly at the hashed end (a seek,
//! a hole, an overwrite, a shrinking truncate) gives up; the stage is then hashed again in
//! one pass at commit time.

use md5::Digest as _;

use crate::target::Digests;

/// Incremental SHA-1 (always) and MD5 (when the target needs it) over bytes written in order.
#[derive(Clone)]
pub struct SeqDigest {
    sha1: sha1::Sha1,
    md5: Option<md5::Md5>,
    /// Bytes hashed so far, i.e. the offset the next in-order write must start at.
    hashed: u64,
    /// The writes stopped being in order; digests must be recomputed from the data.
    broken: bool,
}

impl SeqDigest {
    pub fn new(with_md5: bool) -> Self {
        Self {
            sha1: sha1::Sha1::new(),
            md5: with_md5.then(md5::Md5::new),
            hashed: 0,
            broken: false,
        }
    }

    /// A digest that is already known to be unusable (stage reopened after a restart).
    pub fn broken(with_md5: bool) -> Self {
        Self {
            broken: true,
            ..Self::new(with_md5)
        }
    }

    /// Account for `data` written at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if self.broken {
            return;
        }
        if offset != self.hashed {
            self.broken = true;
            return;
        }
        self.sha1.update(data);
        if let Some(m) = &mut self.md5 {
            m.update(data);
        }
        self.hashed += data.len() as u64;
    }

    /// Account for a truncate to `size`.
    pub fn truncate(&mut self, size: u64) {
        if size == 0 {
            *self = Self::new(self.md5.is_some());
        } else if size != self.hashed {
            self.broken = true;
        }
    }

    /// The digests, if every byte of a `size`-byte file went through in order.
    pub fn finish(&self, size: u64) -> Option<Digests> {
        if self.broken || self.hashed != size {
            return None;
        }
        Some(Digests {
            sha1: Some(hex::encode(self.sha1.clone().finalize())),
            md5: self.md5.clone().map(|m| hex::encode(m.finalize())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha1_hex(d: &[u8]) -> String {
        hex::encode(sha1::Sha1::digest(d))
    }

    #[test]
    fn in_order_writes_give_digests() {
        let mut d = SeqDigest::new(true);
        d.write(0, b"hello ");
        d.write(6, b"world");
        let g = d.finish(11).unwrap();
        assert_eq!(g.sha1.unwrap(), sha1_hex(b"hello world"));
        assert_eq!(
            g.md5.unwrap(),
            hex::encode(md5::Md5::digest(b"hello world"))
        );
        assert!(
            d.finish(12).is_none(),
            "size mismatch must not give digests"
        );
    }

    #[test]
    fn seeks_and_truncates_break_or_reset() {
        let mut d = SeqDigest::new(false);
        d.write(0, b"abc");
        d.write(10, b"x");
        assert!(d.finish(11).is_none());
        d.truncate(0);
        d.write(0, b"abc");
        assert_eq!(d.finish(3).unwrap().sha1.unwrap(), sha1_hex(b"abc"));
        assert!(d.finish(3).unwrap().md5.is_none());
        d.truncate(2);
        assert!(d.finish(2).is_none());
    }
}
