//! Shared test support, one home per concern (include with `mod common;`):
//! - [`server`]: the test server (`uploadfs serve` in-process), its fault knobs, counters
//!   and stored files;
//! - [`config`]: config files naming targets at a test server;
//! - [`mount`]: real FUSE mounts of the `uploadfs` binary and bounded tool runs;
//! - [`s3`]: a real S3 server (SeaweedFS) and its buckets;
//! - [`remote`]: the remote end of a mount scenario, the test server or an S3 bucket;
//!
//! and, below, the binary under test, the [`per_kind!`] test generator, deterministic test
//! data and the digests the targets use.
#![allow(dead_code)]

pub mod config;
pub mod fault_proxy;
pub mod mount;
pub mod remote;
pub mod s3;
pub mod server;

/// The `uploadfs` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_uploadfs");

// Not every test binary uses both.
#[allow(unused_imports)]
pub use server::{TestServer, TOKEN};

/// One `#[test]` per listed kind, each running `scenario(TargetKind::KIND)`:
/// `common::per_kind!(scenario; box_x => Box, fluxer_x => Fluxer);`
#[allow(unused_macros)]
macro_rules! per_kind {
    ($scenario:ident; $($name:ident => $kind:ident),+ $(,)?) => {$(
        #[test]
        fn $name() {
            $scenario(uploadfs::config::TargetKind::$kind);
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use per_kind;

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}
