//! The message book: every Fluxer message as a small JSON record
//! (`fluxer-messages/<id>.json`, written to a temp name, fsynced and renamed), loaded into
//! memory on first use.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One stored message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageRec {
    pub(super) id: u64,
    pub(super) channel_id: String,
    pub(super) content: String,
    pub(super) created_ms: i64,
    /// Attachment ids, in the order they were posted.
    pub(super) attachments: Vec<String>,
}

/// All messages, by id (snowflakes sort by time), mirrored on disk.
pub(crate) struct Book {
    dir: PathBuf,
    pub(super) map: BTreeMap<u64, MessageRec>,
}

impl Book {
    pub(super) fn load(dir: PathBuf) -> std::io::Result<Book> {
        std::fs::create_dir_all(&dir)?;
        let mut map = BTreeMap::new();
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                // A record that was being written when the server stopped.
                let _ = std::fs::remove_file(&p);
                continue;
            }
            match serde_json::from_slice::<MessageRec>(&std::fs::read(&p)?) {
                Ok(m) => {
                    map.insert(m.id, m);
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "fluxer: bad message record")
                }
            }
        }
        Ok(Book { dir, map })
    }

    pub(super) fn max_id(&self) -> u64 {
        self.map.keys().next_back().copied().unwrap_or(0)
    }

    pub(super) fn save(&mut self, m: MessageRec) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{}.tmp", m.id));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&m).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(format!("{}.json", m.id)))?;
        self.map.insert(m.id, m);
        Ok(())
    }

    pub(super) fn remove(&mut self, id: u64) -> std::io::Result<Option<MessageRec>> {
        let m = self.map.remove(&id);
        if m.is_some() {
            std::fs::remove_file(self.dir.join(format!("{id}.json")))?;
        }
        Ok(m)
    }
}
