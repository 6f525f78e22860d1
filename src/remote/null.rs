//! The `null` target: accepts uploads and drops the bytes. It exists to measure the
//! filesystem's own ceiling (FUSE + stage + uploader reading every part) without any
//! network or server cost, as `scripts/bench.sh` does. Uploaded names and sizes are kept in
//! memory so listings work; reads return zeros.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Capabilities, DirRef, RemoteFile, Result, Target, TargetError, UploadRequest};

/// Bytes read from the stage per part, like a real client's part size.
const PART: u64 = 8 * 1024 * 1024;

#[derive(Default)]
pub struct NullTarget {
    files: Mutex<BTreeMap<String, RemoteFile>>,
}

impl NullTarget {
    pub fn new() -> Self {
        Self::default()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RemoteFile>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Target for NullTarget {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "null",
            part_size: PART,
            max_parallel_parts: 1,
            max_file_size: None,
            range_reads: true,
            folders: false,
            rename: true,
            delete: true,
            needs_md5: false,
            wants_sha1: false,
            case_insensitive_names: false,
            replaces_in_place: true,
            early_start: true,
            size_later: false,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        let req = req.with_final_size().await?;
        // Read every part as a real client would, so the stage's read cost is measured.
        let mut off = 0;
        while off < req.size {
            let len = PART.min(req.size - off);
            super::wait_ready(&req.source, off, len).await?;
            let source = req.source.clone();
            let got = tokio::task::spawn_blocking(move || source.read_at(off, len as usize))
                .await
                .map_err(|e| TargetError::protocol(format!("reader task: {e}")))??;
            if got.len() as u64 != len {
                return Err(TargetError::protocol(format!(
                    "{}: stage holds {} bytes at {off}, expected {len}",
                    req.name,
                    got.len()
                )));
            }
            req.observer.part_done(off / PART, len);
            off += len;
        }
        // Like a real target, nothing "lands" before the writer closed the file.
        let digests = req.final_digests().await?;
        let f = RemoteFile {
            id: req.name.clone(),
            name: req.name.clone(),
            size: req.size,
            mtime_ms: req.mtime_ms,
            is_dir: false,
            sha1: digests.sha1,
            md5: digests.md5,
            url: None,
            extra: None,
        };
        self.files().insert(f.id.clone(), f.clone());
        Ok(f)
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let n = len.min(file.size.saturating_sub(offset));
        Ok(Bytes::from(vec![0u8; n as usize]))
    }

    async fn list(&self, _dir: &DirRef) -> Result<Vec<RemoteFile>> {
        Ok(self.files().values().cloned().collect())
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        self.files().remove(&file.id);
        Ok(())
    }

    async fn rename(&self, file: &RemoteFile, _p: &DirRef, new_name: &str) -> Result<RemoteFile> {
        let mut files = self.files();
        let mut f = files.remove(&file.id).unwrap_or_else(|| file.clone());
        f.id = new_name.to_string();
        f.name = new_name.to_string();
        files.insert(f.id.clone(), f.clone());
        Ok(f)
    }

    async fn mkdir(&self, _parent: &DirRef, _name: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("mkdir"))
    }
}
