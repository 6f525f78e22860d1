//! The read path for committed files: a block cache with a byte budget, filled by ranged
//! reads from the target, and a per-handle read-ahead that grows while the reader stays
//! sequential, and the whole-file SHA-1 check of what a handle read in order. Files with
//! local data (pending or being written) are read from their stage
//! by the filesystem instead.

pub mod cache;
pub mod fetcher;
pub mod verify;

pub use cache::{BlockCache, BlockKey, BLOCK_SIZE};
pub use fetcher::ReadAhead;
