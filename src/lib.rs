//! uploadfs: mount remote upload targets (Box, Cloudreve, Fluxer, Virola, Dyson Drive) as
//! a FUSE filesystem.
//!
//! Data flows one way: kernel → [`fuse`] adapter → [`fs`] core → [`write`]/[`read`]
//! pipelines → [`remote`] clients → HTTP. The [`catalog`] remembers what exists; the
//! [`server`] is the other end of the wire for tests and for the `local` target.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod fs;
pub mod fuse;
pub mod mime;
pub mod open;
pub mod put;
pub mod read;
pub mod remote;
pub mod run;
pub mod server;
pub mod write;
