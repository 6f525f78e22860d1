//! The box client (not implemented yet).

use async_trait::async_trait;
use bytes::Bytes;

use super::http::HttpClient;
use super::{Capabilities, DirRef, RemoteFile, Result, Target, TargetError, UploadRequest};
use crate::config::TargetConfig;

pub struct BoxTarget {
    #[allow(dead_code)]
    http: HttpClient,
}

impl BoxTarget {
    pub fn new(http: HttpClient, _cfg: &TargetConfig) -> anyhow::Result<Self> {
        Ok(Self { http })
    }
}

#[async_trait]
impl Target for BoxTarget {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "box",
            part_size: 8 * 1024 * 1024,
            max_parallel_parts: 1,
            max_file_size: None,
            range_reads: true,
            folders: false,
            rename: false,
            delete: false,
            needs_md5: false,
            wants_sha1: false,
            case_insensitive_names: false,
            replaces_in_place: false,
        }
    }
    async fn upload(&self, _req: UploadRequest) -> Result<RemoteFile> {
        Err(TargetError::unsupported("upload"))
    }
    async fn read_range(&self, _file: &RemoteFile, _offset: u64, _len: u64) -> Result<Bytes> {
        Err(TargetError::unsupported("read"))
    }
    async fn list(&self, _dir: &DirRef) -> Result<Vec<RemoteFile>> {
        Err(TargetError::unsupported("list"))
    }
    async fn delete(&self, _file: &RemoteFile) -> Result<()> {
        Err(TargetError::unsupported("delete"))
    }
    async fn rename(&self, _file: &RemoteFile, _p: &DirRef, _n: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("rename"))
    }
    async fn mkdir(&self, _parent: &DirRef, _name: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("mkdir"))
    }
}
