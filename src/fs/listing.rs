//! Directory listings: the target's own listing of a directory (trusted for `list_ttl`)
//! merged into the tree, and the snapshots `opendir`/`readdir` hand out.
//!
//! A merge never touches a node this mount changed after the listing started, a pending
//! node or an open one; remote entries are matched to nodes by remote id first, then by
//! name. Local namespace changes win over the remote's listings until the remote confirms
//! them: an id deleted from this mount stays hidden from every listing until one that
//! started after the delete no longer shows it (a target whose listings lag behind its
//! deletes cannot bring a removed name back, which made `mkdir` of the name answer EEXIST
//! and the next `rmdir` ENOENT), or for at most [`TOMBSTONE_TTL`]; an id that lands again
//! through this mount (a deduplicating target) is no longer hidden. Only a flat target's
//! listing (which covers every file) can confirm a delete; a folder target's ids are never
//! reused, so hiding one for the whole TTL costs nothing. Ids removed locally but kept
//! remotely never come back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{NodeKind, NodeRow, ROOT_INO};
use crate::remote::RemoteFile;

use super::inode::Node;
use super::names::landed_ahead;
use super::{Attr, DirEntry, Error, Fs, FsResult};

/// How long at most a local delete hides the deleted remote id from listings that still
/// show it: longer than any target's listing lag, short enough that a file made again
/// elsewhere with the same id (content-addressed targets) shows up.
const TOMBSTONE_TTL: Duration = Duration::from_secs(120);

impl Fs {
    pub(super) fn tombstone(&self, id: &str) {
        let mut t = self.tombstones.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        t.insert(id.to_string(), Instant::now());
    }

    /// `id` landed again through this mount: listings may show it.
    pub(super) fn untombstone(&self, id: &str) {
        self.tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Drop the tombstones a flat target's listing that started at `started` confirms:
    /// ids deleted before it started that it does not show.
    fn confirm_tombstones(&self, started: Instant, shown: &HashSet<String>) {
        self.tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, at| {
                at.elapsed() < TOMBSTONE_TTL && (*at >= started || shown.contains(id))
            });
    }

    pub(super) fn list_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.list_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    pub(super) fn listing_fresh(&self, key: &str) -> bool {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|at| at.elapsed() < self.opts.list_ttl)
    }

    /// Merge the target's listing of directory `dir` into the tree when the cached one is
    /// older than the TTL (or `force`). Listing errors are logged; the local view stays.
    pub async fn refresh(&self, dir: u64, force: bool) {
        let dref = {
            let t = self.tree();
            match t.get(dir) {
                Some(n) if n.is_dir() => {}
                _ => return,
            }
            if self.caps.folders
                && dir != ROOT_INO
                && t.get(dir).is_some_and(|n| n.row.remote.is_none())
            {
                return;
            }
            self.dir_ref(&t, dir)
        };
        let key = dref.clone().unwrap_or_default();
        if !force && self.listing_fresh(&key) {
            return;
        }
        let lock = self.list_lock(&key);
        let _g = lock.lock().await;
        if !force && self.listing_fresh(&key) {
            return;
        }
        let started = Instant::now();
        if self.target_unreachable() {
            // An outage: the catalog answers at once (`outage`).
            self.listing_skipped(dir);
            return;
        }
        match crate::remote::health::quick(self.target.list(&dref)).await {
            Ok(entries) => {
                self.listing_answered(dir);
                let home = if self.caps.folders { dir } else { ROOT_INO };
                self.merge(home, entries, started);
            }
            Err(e) => {
                self.listing_failed(dir, &e);
                tracing::warn!(dir, error = %e, "listing the target failed; showing the local view")
            }
        }
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Instant::now());
    }

    pub(super) fn merge(&self, home: u64, entries: Vec<RemoteFile>, started: Instant) {
        let flat = !self.caps.folders;
        let tomb: HashMap<String, Instant> = self
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let hidden = self
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let ids: HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
        if flat {
            self.confirm_tombstones(started, &ids);
        }
        let mut t = self.tree();
        let mut dirty: Vec<u64> = vec![];
        let mut inserts: Vec<RemoteFile> = vec![];
        let untouchable = |n: &Node| n.synced > started || n.is_pending() || n.open.is_some();
        for e in &entries {
            if flat && e.is_dir {
                continue;
            }
            let known = t.by_remote(&e.id);
            if known.is_empty() && (tomb.contains_key(&e.id) || hidden.contains(&e.id)) {
                continue;
            }
            if !known.is_empty() {
                for ino in known {
                    let Some(n) = t.get(ino) else { continue };
                    if untouchable(n) || n.is_dir() != e.is_dir {
                        continue;
                    }
                    let before = n.row.clone();
                    // A file uploaded under its final name keeps its temporary one
                    // here until its own rename.
                    let relocate = !flat
                        && (n.row.parent != home || t.key(&n.row.name) != t.key(&e.name))
                        && (n.row.parent != home || !landed_ahead(&n.row.name, &e.name))
                        && t.child(home, &e.name).is_none();
                    if relocate {
                        t.relink(ino, home, &e.name);
                    }
                    if let Some(n) = t.get_mut(ino) {
                        apply_remote(&mut n.row, e);
                        if n.row != before {
                            dirty.push(ino);
                        }
                    }
                }
                continue;
            }
            match t.child(home, &e.name) {
                Some(c) => {
                    let Some(n) = t.get(c) else { continue };
                    if untouchable(n) || n.is_dir() != e.is_dir {
                        continue;
                    }
                    if n.row.remote.as_ref().is_some_and(|r| ids.contains(&r.id)) {
                        // Two remote entries with one name: the one we know wins.
                        continue;
                    }
                    t.set_remote(c, Some(e.clone()));
                    if let Some(n) = t.get_mut(c) {
                        apply_remote(&mut n.row, e);
                        n.row.size = e.size;
                        n.row.sha1 = e.sha1.clone();
                        n.row.md5 = e.md5.clone();
                    }
                    dirty.push(c);
                }
                None => inserts.push(e.clone()),
            }
        }
        // Entries that disappeared remotely (deleted elsewhere).
        let candidates: Vec<u64> = if flat {
            t.all()
                .filter(|n| !n.is_dir() && n.row.remote.is_some())
                .map(|n| n.row.ino)
                .collect()
        } else {
            t.children(home)
                .into_iter()
                .filter(|c| t.get(*c).is_some_and(|n| n.row.remote.is_some()))
                .collect()
        };
        let mut removes = vec![];
        for c in candidates {
            let Some(n) = t.get(c) else { continue };
            if untouchable(n) {
                continue;
            }
            if n.row.remote.as_ref().is_some_and(|r| !ids.contains(&r.id)) {
                if n.is_dir() && t.subtree_pending(c) {
                    continue;
                }
                removes.push(c);
            }
        }
        for c in removes {
            for ino in t.subtree(c) {
                t.remove(ino);
                if let Err(e) = self.catalog.delete_node(ino) {
                    tracing::error!(error = %e, "catalog delete failed");
                }
            }
        }
        for ino in dirty {
            if let Some(n) = t.get(ino) {
                let row = n.row.clone();
                self.persist_or_log(&row);
            }
        }
        for e in inserts {
            let (kind, mode) = if e.is_dir {
                (NodeKind::Dir, 0o755)
            } else {
                (NodeKind::File, 0o644)
            };
            let mut row = self.new_row(home, &e.name, kind, mode, self.opts.uid, self.opts.gid);
            row.size = if e.is_dir { 0 } else { e.size };
            if e.mtime_ms > 0 {
                row.mtime_ms = e.mtime_ms;
            }
            row.sha1 = e.sha1.clone();
            row.md5 = e.md5.clone();
            row.remote = Some(e);
            if let Err(e) = self.insert_row(&mut t, row) {
                tracing::error!(error = %e, "cannot record a listed entry");
            }
        }
    }

    /// Open a directory: refresh the listing if stale and snapshot the entries.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if !n.is_dir() {
                return Err(Error::new(libc::ENOTDIR));
            }
        }
        self.refresh(ino, false).await;
        self.listing_refused(ino)?;
        let entries = {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            let parent = t.get(n.row.parent).unwrap_or(n);
            let mut v = vec![
                DirEntry {
                    name: ".".into(),
                    attr: self.attr_of(&t, n),
                },
                DirEntry {
                    name: "..".into(),
                    attr: self.attr_of(&t, parent),
                },
            ];
            for c in t.children(ino) {
                if let Some(cn) = t.get(c) {
                    v.push(DirEntry {
                        name: cn.row.name.clone(),
                        attr: self.attr_of(&t, cn),
                    });
                }
            }
            v
        };
        let fh = self.new_fh();
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// Entries of an open directory from `offset` on.
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Error::new(libc::EBADF))
    }

    /// The attributes of `ino` if it is still called `name` in `dir`. A directory snapshot
    /// can be older than a rename or unlink; readdirplus hands the kernel name → inode
    /// pairs it caches as lookups, so stale pairs must not reach it.
    pub fn current_entry(&self, dir: u64, name: &str, ino: u64) -> Option<Attr> {
        let t = self.tree();
        if name != "." && name != ".." && t.child(dir, name) != Some(ino) {
            return None;
        }
        t.get(ino).map(|n| self.attr_of(&t, n))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}

/// Take a listed remote entry's facts into a node that already uses it. The local mtime
/// stays when the content did not change (`utimens` after upload is only local).
fn apply_remote(row: &mut NodeRow, e: &RemoteFile) {
    let changed = row.remote.as_ref().is_none_or(|r| {
        r.size != e.size || (r.sha1.is_some() && e.sha1.is_some() && r.sha1 != e.sha1)
    });
    if changed && !e.is_dir {
        row.size = e.size;
        if e.mtime_ms > 0 {
            row.mtime_ms = e.mtime_ms;
        }
        row.sha1 = e.sha1.clone();
        row.md5 = e.md5.clone();
    }
    row.remote = Some(e.clone());
}
