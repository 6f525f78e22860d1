//! The write path: every written inode gets a stage (one spool file under the cache
//! directory, written at any offset, so memory never grows with file size), digests are
//! computed behind the writer by a background hasher while writes arrive in order (else
//! recomputed from the stage at commit), and
//! the uploader turns a stage into one [`crate::remote::UploadRequest`] whose progress is
//! journaled in the catalog.

pub mod digests;
pub mod stage;
pub mod uploader;

pub use digests::{Hashers, Progress};
pub use stage::{Stage, StageSource};
pub use uploader::JournalObserver;
