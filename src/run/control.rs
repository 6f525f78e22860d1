//! The daemon's control socket and what `uploadfs status` / `unmount` show from it.
//!
//! A running daemon listens on a Unix socket in its state directory (`control.sock`,
//! owner-only: created under a temporary name, set to mode 0600, then renamed into place).
//! A client sends one JSON line (`{"cmd":"status"}` or `{"cmd":"abandon"}`) and reads one
//! JSON line back. `status` answers a [`MountStatus`]; `abandon` (from `unmount --force`)
//! tells the daemon to exit without finishing its background uploads, which stay journaled
//! for the next mount.
//!
//! Rendering: one line per file with a progress bar (bytes done / total, rate, ETA, parts,
//! last error, the next try) and totals; above them, when there is something to say, the
//! target's health (degraded or down, since when, why), a view answered from the catalog
//! during an outage, a refused listing, or a dead mount (its daemon gone, the mountpoint
//! answering ENOTCONN). On a terminal `--watch` and `unmount` redraw in place with
//! indicatif; elsewhere they print plain snapshots.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget};
use serde::{Deserialize, Serialize};

use crate::fs::Fs;
use crate::fs::{FileStatus, MountStatus};
use crate::remote::health::{HealthView, Phase};

/// File name of the socket in the state directory.
pub const SOCKET_NAME: &str = "control.sock";
/// Longest path a Unix socket address holds (sun_path, minus the NUL).
const SUN_PATH_MAX: usize = 107;
/// How long a client waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    cmd: String,
}

/// Start serving the control socket at `path`; `None` when it cannot be created (status
/// then falls back to the catalog).
pub fn serve(fs: Arc<Fs>, path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if path.as_os_str().len() > SUN_PATH_MAX {
        tracing::warn!(path = %path.display(), "control socket path too long; status will read the catalog");
        return None;
    }
    let tmp = path.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(path);
    let bound = std::os::unix::net::UnixListener::bind(&tmp).and_then(|l| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    });
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot create the control socket");
            return None;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let fs = fs.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(&fs, conn).await {
                    tracing::debug!(error = %e, "control connection failed");
                }
            });
        }
    });
    Some(path.to_path_buf())
}

async fn answer(fs: &Fs, conn: tokio::net::UnixStream) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(r).read_line(&mut line).await?;
    let req: Request = serde_json::from_str(line.trim())?;
    let reply = match req.cmd.as_str() {
        "status" => serde_json::to_value(fs.status())?,
        "abandon" => {
            fs.uploads().set_abandon();
            serde_json::json!({ "ok": true })
        }
        other => serde_json::json!({ "error": format!("unknown command {other}") }),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

fn call(socket: &Path, cmd: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the daemon at {}", socket.display()))?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut req = serde_json::to_vec(&Request {
        cmd: cmd.to_string(),
    })?;
    req.push(b'\n');
    s.write_all(&req)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(line.trim())?)
}

/// The running daemon's status.
pub fn query_status(socket: &Path) -> anyhow::Result<MountStatus> {
    Ok(serde_json::from_value(call(socket, "status")?)?)
}

/// Tell the daemon to exit without finishing its background uploads.
pub fn abandon(socket: &Path) -> anyhow::Result<()> {
    call(socket, "abandon").map(|_| ())
}

/// One mount as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub mountpoint: PathBuf,
    pub target: String,
    pub pid: u32,
    /// `daemon` (live, with progress) or `catalog` (the daemon's socket was unreachable).
    pub source: &'static str,
    /// `running`, or `dead`: the daemon is gone and the mountpoint answers ENOTCONN.
    pub mount: &'static str,
    pub write_back: bool,
    /// The target's health, as the daemon sees it.
    pub health: Option<HealthView>,
    /// Uploads waiting for the target to answer again.
    pub waiting: usize,
    /// Some directory is shown from the catalog because the target was unreachable.
    pub stale: bool,
    /// The target refused a listing (token, missing folder): what `ls` answers.
    pub listing_error: Option<String>,
    /// What to do about the mount, when something is wrong with it.
    pub note: Option<String>,
    pub pending: Vec<FileStatus>,
    pub totals: Totals,
    /// Conflict copies this mount made (live from the daemon only).
    pub conflicts: Vec<crate::fs::ConflictStatus>,
}

impl StatusView {
    /// The view of a running daemon's answer.
    pub fn live(r: &crate::run::MountRecord, st: MountStatus) -> StatusView {
        StatusView {
            mountpoint: r.mountpoint.clone(),
            target: r.target.clone(),
            pid: r.pid,
            source: "daemon",
            mount: "running",
            write_back: st.write_back,
            health: st.health,
            waiting: st.waiting,
            stale: st.stale,
            listing_error: st.listing_error,
            note: None,
            totals: Totals::of(&st.pending),
            pending: st.pending,
            conflicts: st.conflicts,
        }
    }
}

/// A time of day (local) from ms since the epoch, for people.
fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// One line on the target's health, unless it is up.
pub fn health_text(target: &str, h: &HealthView) -> Option<String> {
    if h.state == Phase::Up {
        return None;
    }
    let secs = (crate::catalog::now_ms() - h.since_ms).max(0) / 1000;
    Some(format!(
        "target {target} is {} since {} ({secs} s){}",
        h.state.as_str(),
        clock(h.since_ms),
        h.last_error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    ))
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub files: usize,
    pub bytes: u64,
    pub bytes_done: u64,
    pub queued: usize,
    pub uploading: usize,
    pub failed: usize,
    /// Sum of the rates of running uploads, bytes per second.
    pub rate: f64,
}

impl Totals {
    pub fn of(files: &[FileStatus]) -> Totals {
        let mut t = Totals {
            files: files.len(),
            ..Totals::default()
        };
        for f in files {
            t.bytes += f.size;
            t.bytes_done += f.bytes_done.min(f.size);
            match f.state.as_str() {
                "queued" => t.queued += 1,
                "uploading" => t.uploading += 1,
                "failed" => t.failed += 1,
                _ => {}
            }
            t.rate += f.rate.unwrap_or(0.0);
        }
        t
    }
}

fn bar_text(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as u128 * width as u128) / total as u128) as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Rate, ETA, parts and error of one file, as shown after its bar.
fn details(f: &FileStatus) -> String {
    let mut s = String::new();
    if let Some(r) = f.rate {
        s.push_str(&format!("  {}/s", HumanBytes(r as u64)));
    }
    if let Some(e) = f.eta_seconds {
        s.push_str(&format!(
            "  ETA {}",
            HumanDuration(Duration::from_secs_f64(e))
        ));
    }
    if f.parts_done > 0 {
        s.push_str(&format!("  parts {}", f.parts_done));
    }
    if let Some(r) = f.retry_in_seconds {
        s.push_str(&format!(
            "  retry {} in {}",
            f.attempts + 1,
            HumanDuration(Duration::from_secs_f64(r))
        ));
    } else if f.waiting_for_target {
        s.push_str(&format!(
            "  retry {} when the target answers",
            f.attempts + 1
        ));
    }
    if let Some(e) = &f.error {
        s.push_str(&format!("  ({e})"));
    }
    s
}

fn totals_text(t: &Totals) -> String {
    format!(
        "total: {} file(s), {} / {}; {} uploading, {} queued, {} failed{}",
        t.files,
        HumanBytes(t.bytes_done),
        HumanBytes(t.bytes),
        t.uploading,
        t.queued,
        t.failed,
        if t.rate > 0.0 {
            format!(", {}/s", HumanBytes(t.rate as u64))
        } else {
            String::new()
        }
    )
}

/// A plain-text snapshot (one-shot `status`, and output that is not a terminal).
pub fn render_text(views: &[StatusView]) -> String {
    let mut out = String::new();
    if views.is_empty() {
        out.push_str("no uploadfs mounts running\n");
    }
    for v in views {
        out.push_str(&format!(
            "{} ({}, pid {}{}{}): {} file(s) not in sync\n",
            v.mountpoint.display(),
            v.target,
            v.pid,
            if v.write_back { ", write-back" } else { "" },
            if v.mount == "dead" { ", DEAD" } else { "" },
            v.pending.len()
        ));
        for line in about(v) {
            out.push_str(&format!("  {line}\n"));
        }
        for f in &v.pending {
            out.push_str(&format!(
                "  {:<10} {} {:>10} / {:<10} {}{}\n",
                f.state,
                bar_text(f.bytes_done, f.size, 20),
                HumanBytes(f.bytes_done).to_string(),
                HumanBytes(f.size).to_string(),
                f.path,
                details(f)
            ));
        }
        if !v.pending.is_empty() {
            out.push_str(&format!("  {}\n", totals_text(&v.totals)));
        }
        for c in &v.conflicts {
            out.push_str(&format!(
                "  conflict   {} changed remotely while open here; this mount's version is {}\n",
                c.path, c.copy
            ));
        }
    }
    out
}

/// What is wrong with a mount, one line each: a dead daemon, the target's health, a view
/// from the catalog, a refused listing.
pub fn about(v: &StatusView) -> Vec<String> {
    let mut lines = vec![];
    if let Some(n) = &v.note {
        lines.push(n.clone());
    }
    if let Some(h) = v.health.as_ref().and_then(|h| health_text(&v.target, h)) {
        lines.push(h);
    }
    if v.waiting > 0 {
        lines.push(format!(
            "{} upload(s) wait for the target and are retried when it answers",
            v.waiting
        ));
    }
    if v.stale {
        lines
            .push("listings are answered from the catalog (stale) until the target answers".into());
    }
    if let Some(e) = &v.listing_error {
        lines.push(e.clone());
    }
    lines
}

/// Live progress bars, redrawn in place on a terminal.
pub struct LiveView {
    multi: MultiProgress,
    bars: std::collections::BTreeMap<String, ProgressBar>,
    totals: ProgressBar,
    tty: bool,
    to_stderr: bool,
}

impl LiveView {
    pub fn new(to_stderr: bool) -> LiveView {
        use std::io::IsTerminal;
        let tty = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let target = if to_stderr {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::stdout()
        };
        let multi = MultiProgress::with_draw_target(target);
        let totals = multi.add(ProgressBar::new_spinner());
        totals.set_style(
            indicatif::ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        LiveView {
            multi,
            bars: Default::default(),
            totals,
            tty,
            to_stderr,
        }
    }

    /// Show the current state (plain text when not on a terminal).
    pub fn update(&mut self, views: &[StatusView]) {
        if !self.tty {
            let text = render_text(views);
            if self.to_stderr {
                eprint!("{text}");
            } else {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            return;
        }
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:<10} [{bar:24}] {bytes:>10} / {total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("#>-");
        let mut seen = std::collections::BTreeSet::new();
        for v in views {
            for f in &v.pending {
                let key = format!("{}{}", v.mountpoint.display(), f.path);
                seen.insert(key.clone());
                let bar = self.bars.entry(key).or_insert_with(|| {
                    let b = self
                        .multi
                        .insert_before(&self.totals, ProgressBar::new(f.size));
                    b.set_style(style.clone());
                    b
                });
                bar.set_length(f.size);
                bar.set_position(f.bytes_done.min(f.size));
                bar.set_prefix(f.state.clone());
                bar.set_message(format!("{}{}", f.path, details(f)));
            }
        }
        let gone: Vec<String> = self
            .bars
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(b) = self.bars.remove(&k) {
                b.finish_and_clear();
                self.multi.remove(&b);
            }
        }
        let all: Vec<FileStatus> = views.iter().flat_map(|v| v.pending.clone()).collect();
        self.totals.set_message(if views.is_empty() {
            "no uploadfs mounts running".to_string()
        } else {
            // What is wrong with a mount (a down target, a dead daemon) above the totals.
            let mut lines: Vec<String> = views
                .iter()
                .flat_map(|v| {
                    about(v)
                        .into_iter()
                        .map(move |l| format!("{}: {l}", v.mountpoint.display()))
                })
                .collect();
            lines.push(totals_text(&Totals::of(&all)));
            lines.join("\n")
        });
    }

    pub fn finish(self) {
        for b in self.bars.values() {
            b.abandon();
        }
        self.totals.abandon();
    }
}
