//! The filesystem core: inode table, handles, semantics (being built).

pub mod mount;
