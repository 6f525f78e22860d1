//! Recycled stage files, and whether the stage directory needs a sync.
//!
//! Every file written through the mount gets a stage file, which used to be created at
//! `create` and deleted once the upload was done. Creating a file costs an inode
//! allocation, and on ext4 without a journal that allocation skips every inode freed in
//! the last minute (more while its block is dirty) one by one: after a thousand small
//! files it was a quarter of the daemon's CPU, and it slowed the server's own file
//! creations in the same block group as much. So a stage that is no longer needed is
//! truncated to zero and kept here under its name, and the next new stage takes it:
//! no inode is allocated or freed while files keep coming. At most [`POOL_MAX`] empty
//! files are kept; they are removed when the mount ends (a killed daemon leaves them:
//! empty files no catalog row names, harmless). A stage goes back to the pool only after
//! the catalog stopped naming it, so after a crash no two rows can share a stage file.
//!
//! The pool also counts stage files created new, so a write-back `close` syncs the
//! stage directory (making the new name durable) only when a file was created since
//! the last sync; a recycled file's name is already on disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::write::Stage;

/// Empty stage files kept for reuse (an empty file costs an inode and no data).
const POOL_MAX: usize = 64;

#[derive(Debug, Default)]
pub struct StagePool {
    free: Mutex<Vec<PathBuf>>,
    /// Stage files created new so far.
    created: AtomicU64,
    /// `created` as it was when the last successful sync of the stage directory began.
    dir_synced: AtomicU64,
}

impl StagePool {
    /// A recycled (empty) stage file's path, if one is free.
    pub fn take(&self) -> Option<PathBuf> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Count a stage file created new (call once the file exists).
    pub fn note_created(&self) {
        self.created.fetch_add(1, Ordering::SeqCst);
    }

    /// Give back a stage nobody uses any more: kept for reuse (emptied) when the pool has
    /// room, else removed. Only for a stage no handle can reach again: whoever still held
    /// it could write into the next file's data.
    pub fn recycle(&self, stage: &Arc<Stage>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        // Another holder (an upload's reader that has not let go yet) keeps the file out.
        if free.len() < POOL_MAX && Arc::strong_count(stage) == 1 && stage.truncate(0).is_ok() {
            free.push(stage.path().to_path_buf());
            return;
        }
        drop(free);
        stage.remove_file();
    }

    /// Whether a stage file may have been created since the stage directory was last
    /// synced; returns the creation count to hand to [`StagePool::dir_synced`].
    pub fn dir_sync_needed(&self) -> Option<u64> {
        // Read before the sync starts: every creation counted here has completed.
        let created = self.created.load(Ordering::SeqCst);
        (created > self.dir_synced.load(Ordering::SeqCst)).then_some(created)
    }

    /// The stage directory was synced after `created` creations.
    pub fn dir_synced(&self, created: u64) {
        self.dir_synced.fetch_max(created, Ordering::SeqCst);
    }

    /// Remove every pooled file (the mount ends).
    pub fn clear(&self) {
        let free = std::mem::take(&mut *self.free.lock().unwrap_or_else(|p| p.into_inner()));
        for p in free {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove a pooled stage file");
                }
            }
        }
    }
}

impl Drop for StagePool {
    fn drop(&mut self) {
        self.clear();
    }
}
