//! The in-memory inode table: every catalog row plus the runtime state of open files, with
//! a per-directory name index (case-folded on targets that compare names
//! case-insensitively) and an index from remote id to the nodes that use it.
//!
//! The table lives behind one mutex that is never held across an await; every change is
//! written through to the catalog by the caller.
//!
//! It also counts each directory's subdirectories (a directory's link count is 2 plus
//! that number) and keeps *orphans*: files unlinked while a descriptor still has them open.
//! An orphan has no name and no catalog row, only its inode number, so `fstat` and the
//! open descriptor keep working until the last close drops it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::catalog::{NodeKind, NodeRow, NodeState};
use crate::remote::RemoteFile;

use super::handle::OpenFile;

/// One file or directory.
pub struct Node {
    pub row: NodeRow,
    /// The stage and write state while the file has local data.
    pub open: Option<Arc<OpenFile>>,
    /// When the remote state was last set from this mount (a listing that started earlier
    /// must not undo it).
    pub synced: Instant,
    /// The remote version whose pages the kernel may still cache from an earlier
    /// read-only open (so the next one can keep them).
    pub page_cache: Option<Arc<str>>,
    /// Created by rsync with O_EXCL (see `names::is_tool_temp`): a name like its temporary
    /// files' is taken for one even without a capital letter. Not kept in the catalog: a
    /// file found there at mount is judged by its name alone.
    pub by_rsync: bool,
}

impl Node {
    pub fn new(row: NodeRow) -> Self {
        Self {
            row,
            open: None,
            synced: Instant::now(),
            page_cache: None,
            by_rsync: false,
        }
    }
    pub fn is_dir(&self) -> bool {
        self.row.kind == NodeKind::Dir
    }
    /// Local data that the remote does not have (or may not have) yet.
    pub fn is_pending(&self) -> bool {
        self.row.state != NodeState::Committed || self.open.as_ref().is_some_and(|o| o.dirty())
    }
    /// Size as the user sees it: the stage's while there is one.
    pub fn size(&self) -> u64 {
        match &self.open {
            Some(o) => o.size(),
            None => self.row.size,
        }
    }
}

/// The inode table.
pub struct Tree {
    nodes: HashMap<u64, Node>,
    children: HashMap<u64, BTreeMap<String, u64>>,
    by_remote: HashMap<String, Vec<u64>>,
    /// Subdirectories per directory (only non-zero counts are kept).
    subdirs: HashMap<u64, u32>,
    /// Files unlinked while open: out of the namespace, alive until their last close.
    orphans: HashMap<u64, Node>,
    case_insensitive: bool,
}

impl Tree {
    pub fn new(case_insensitive: bool) -> Self {
        Self {
            nodes: HashMap::new(),
            children: HashMap::new(),
            by_remote: HashMap::new(),
            subdirs: HashMap::new(),
            orphans: HashMap::new(),
            case_insensitive,
        }
    }

    /// The index key of a name.
    pub fn key(&self, name: &str) -> String {
        if self.case_insensitive {
            name.to_lowercase()
        } else {
            name.to_string()
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children
            .get(&parent)
            .and_then(|c| c.get(&self.key(name)))
            .copied()
    }

    /// Children of a directory, in name order.
    pub fn children(&self, parent: u64) -> Vec<u64> {
        self.children
            .get(&parent)
            .map(|c| c.values().copied().collect())
            .unwrap_or_default()
    }

    pub fn has_children(&self, parent: u64) -> bool {
        self.children.get(&parent).is_some_and(|c| !c.is_empty())
    }

    /// The link count of a node: 2 plus its subdirectories for a directory, 1 for a file
    /// with a name, 0 for an orphan.
    pub fn nlink(&self, ino: u64) -> u32 {
        match self.nodes.get(&ino) {
            Some(n) if n.is_dir() => 2 + self.subdirs.get(&ino).copied().unwrap_or(0),
            Some(_) => 1,
            None => 0,
        }
    }

    fn count_subdir(&mut self, parent: u64, up: bool) {
        let c = self.subdirs.entry(parent).or_default();
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.subdirs.remove(&parent);
            }
        }
    }

    /// A node in the namespace, or an orphan (unlinked, still open).
    pub fn get_or_orphan(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino).or_else(|| self.orphans.get(&ino))
    }

    pub fn get_or_orphan_mut(&mut self, ino: u64) -> Option<&mut Node> {
        match self.nodes.get_mut(&ino) {
            Some(n) => Some(n),
            None => self.orphans.get_mut(&ino),
        }
    }

    /// Keep a removed node as an orphan until [`Tree::drop_orphan`] (its last close).
    pub fn keep_orphan(&mut self, node: Node) {
        self.orphans.insert(node.row.ino, node);
    }

    pub fn drop_orphan(&mut self, ino: u64) -> Option<Node> {
        self.orphans.remove(&ino)
    }

    /// Nodes that use a remote id.
    pub fn by_remote(&self, id: &str) -> Vec<u64> {
        self.by_remote.get(id).cloned().unwrap_or_default()
    }

    /// Every node (for flat-target listings, which cover the whole tree).
    pub fn all(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Add a node (its row must carry its final inode number).
    pub fn insert(&mut self, node: Node) {
        let ino = node.row.ino;
        if ino != node.row.parent {
            let key = self.key(&node.row.name);
            self.children
                .entry(node.row.parent)
                .or_default()
                .insert(key, ino);
            if node.is_dir() {
                self.count_subdir(node.row.parent, true);
            }
        }
        if let Some(r) = &node.row.remote {
            self.by_remote.entry(r.id.clone()).or_default().push(ino);
        }
        self.nodes.insert(ino, node);
    }

    /// Remove a node (not its children).
    pub fn remove(&mut self, ino: u64) -> Option<Node> {
        let node = self.nodes.remove(&ino)?;
        let key = self.key(&node.row.name);
        if let Some(c) = self.children.get_mut(&node.row.parent) {
            if c.get(&key) == Some(&ino) {
                c.remove(&key);
            }
        }
        if node.is_dir() && node.row.parent != ino {
            self.count_subdir(node.row.parent, false);
        }
        if let Some(r) = &node.row.remote {
            self.unindex_remote(&r.id, ino);
        }
        self.children.remove(&ino);
        self.subdirs.remove(&ino);
        Some(node)
    }

    fn unindex_remote(&mut self, id: &str, ino: u64) {
        if let Some(v) = self.by_remote.get_mut(id) {
            v.retain(|i| *i != ino);
            if v.is_empty() {
                self.by_remote.remove(id);
            }
        }
    }

    /// Move and/or rename a node (the destination name must be free).
    pub fn relink(&mut self, ino: u64, new_parent: u64, new_name: &str) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        let (old_parent, old_key, is_dir) =
            (node.row.parent, self.key(&node.row.name), node.is_dir());
        if let Some(c) = self.children.get_mut(&old_parent) {
            if c.get(&old_key) == Some(&ino) {
                c.remove(&old_key);
            }
        }
        if is_dir && old_parent != new_parent {
            self.count_subdir(old_parent, false);
            self.count_subdir(new_parent, true);
        }
        let key = self.key(new_name);
        self.children
            .entry(new_parent)
            .or_default()
            .insert(key, ino);
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.row.parent = new_parent;
            node.row.name = new_name.to_string();
        }
    }

    /// Set a node's remote file, keeping the remote index right.
    pub fn set_remote(&mut self, ino: u64, remote: Option<RemoteFile>) {
        let old = self.nodes.get(&ino).and_then(|n| n.row.remote.clone());
        if let Some(o) = &old {
            self.unindex_remote(&o.id, ino);
        }
        if let Some(r) = &remote {
            self.by_remote.entry(r.id.clone()).or_default().push(ino);
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.row.remote = remote;
            n.synced = Instant::now();
        }
    }

    /// Is `ino` (or anything below it) holding local data?
    pub fn subtree_pending(&self, ino: u64) -> bool {
        let mut stack = vec![ino];
        while let Some(i) = stack.pop() {
            if let Some(n) = self.nodes.get(&i) {
                if n.is_pending() || n.open.is_some() {
                    return true;
                }
            }
            stack.extend(self.children(i));
        }
        false
    }

    /// `ino` and everything below it, parents first.
    pub fn subtree(&self, ino: u64) -> Vec<u64> {
        let mut out = vec![];
        let mut stack = vec![ino];
        while let Some(i) = stack.pop() {
            out.push(i);
            stack.extend(self.children(i));
        }
        out
    }

    /// Is `a` equal to `b` or one of its ancestors?
    pub fn is_ancestor(&self, a: u64, mut b: u64) -> bool {
        loop {
            if a == b {
                return true;
            }
            match self.nodes.get(&b) {
                Some(n) if n.row.parent != b => b = n.row.parent,
                _ => return false,
            }
        }
    }

    /// The path of a node below the mount root (for messages).
    pub fn path(&self, mut ino: u64) -> String {
        let mut parts = vec![];
        while let Some(n) = self.nodes.get(&ino) {
            if n.row.parent == ino {
                break;
            }
            parts.push(n.row.name.clone());
            ino = n.row.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ROOT_INO;

    fn node(ino: u64, parent: u64, name: &str, kind: NodeKind) -> Node {
        Node::new(NodeRow {
            ino,
            parent,
            name: name.to_string(),
            kind,
            size: 0,
            mtime_ms: 0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            remote: None,
            state: NodeState::Committed,
            sha1: None,
            md5: None,
            last_error: None,
            stage: None,
            replaces: None,
        })
    }

    #[test]
    fn directory_links_follow_mkdir_rename_and_rmdir() {
        let mut t = Tree::new(false);
        t.insert(node(ROOT_INO, ROOT_INO, "", NodeKind::Dir));
        t.insert(node(2, ROOT_INO, "a", NodeKind::Dir));
        t.insert(node(3, 2, "b", NodeKind::Dir));
        t.insert(node(4, 2, "c", NodeKind::Dir));
        t.insert(node(5, 2, "f", NodeKind::File));
        assert_eq!(t.nlink(ROOT_INO), 3, "the root: 2 + a");
        assert_eq!(t.nlink(2), 4, "a: 2 + b and c; files do not count");
        assert_eq!(t.nlink(5), 1);
        t.relink(4, ROOT_INO, "c");
        assert_eq!((t.nlink(ROOT_INO), t.nlink(2)), (4, 3));
        t.relink(3, 2, "b2");
        assert_eq!(
            t.nlink(2),
            3,
            "a rename within the directory changes nothing"
        );
        t.remove(3);
        assert_eq!(t.nlink(2), 2);
    }

    #[test]
    fn an_orphan_has_no_name_and_no_links_until_dropped() {
        let mut t = Tree::new(false);
        t.insert(node(ROOT_INO, ROOT_INO, "", NodeKind::Dir));
        t.insert(node(7, ROOT_INO, "f", NodeKind::File));
        let n = t.remove(7).unwrap();
        t.keep_orphan(n);
        assert!(t.get(7).is_none() && t.child(ROOT_INO, "f").is_none());
        assert_eq!(t.get_or_orphan(7).map(|n| n.row.name.as_str()), Some("f"));
        assert_eq!(t.nlink(7), 0);
        // The name is free for a new file.
        t.insert(node(8, ROOT_INO, "f", NodeKind::File));
        assert_eq!(t.child(ROOT_INO, "f"), Some(8));
        assert!(t.drop_orphan(7).is_some());
        assert!(t.get_or_orphan(7).is_none());
    }
}
