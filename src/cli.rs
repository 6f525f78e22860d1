//! The command line (a stable contract, DESIGN.md §2): clap definitions, and the value
//! parsers they use.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::server::ServeOptions;

#[derive(Debug, Parser)]
#[command(
    name = "uploadfs",
    version,
    about = "Mount remote upload targets as a filesystem"
)]
pub struct Cli {
    /// Write logs to this file instead of standard error.
    #[arg(long, global = true)]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a target at a directory.
    Mount(MountArgs),
    /// Unmount, waiting for pending uploads.
    Unmount(UnmountArgs),
    /// Show pending, active and failed uploads of a running mount.
    Status(StatusArgs),
    /// Run the local server hosting all five protocols.
    Serve(ServeOptions),
    /// Upload one file without FUSE.
    Put(PutArgs),
    /// Download one file without FUSE (to a file, or standard output).
    Get(GetArgs),
    /// Check the configuration.
    Config(ConfigArgs),
    /// Print shell completions or the man page, generated from these definitions.
    Generate(GenerateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Generate {
    /// Shell completions, e.g. `uploadfs generate completions bash > /etc/bash_completion.d/uploadfs`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// The man pages (roff): the top-level page on standard output, e.g.
    /// `uploadfs generate man > uploadfs.1`; with --dir, that page and one per subcommand
    /// (uploadfs-mount.1, uploadfs-config-check.1, ...) written into DIR.
    Man {
        /// Write uploadfs.1 and every subcommand's page into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// `local` or the name of a `[targets.NAME]` table.
    pub target: String,
    /// An existing, empty directory to mount on (`-o nonempty` allows a non-empty one,
    /// whose files the mount hides until it is unmounted).
    pub mountpoint: PathBuf,
    /// Config file (default ~/.config/uploadfs/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stay attached to the terminal.
    #[arg(long)]
    pub foreground: bool,
    /// close() returns once the data is durable locally; uploads run in the background.
    #[arg(long)]
    pub write_back: bool,
    /// Where staged files and cached blocks live.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Where the catalog lives.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Byte budget of the read block cache: bytes, or with a binary suffix (`512M`, `2G`).
    #[arg(long, default_value = "64M", value_parser = parse_byte_size, value_name = "BYTES")]
    pub cache_size: u64,
    /// Never delete remote files (unlink only forgets them).
    #[arg(long)]
    pub keep_remote: bool,
    /// Mount options (`allow_other`, `ro`, `nonempty`, ...), comma separated.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Accept self-signed TLS certificates.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UnmountArgs {
    /// The directory the target is mounted at.
    pub mountpoint: PathBuf,
    /// Do not wait for pending uploads (they stay journaled for the next mount).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The mount to show (default: every running mount).
    pub mountpoint: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Refresh the display until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// Local file to upload (a directory with --recursive).
    pub file: PathBuf,
    /// `TARGET` or `TARGET:PATH` (PATH is a file name, or dir/name on targets with folders).
    pub dest: String,
    /// Config file (default ~/.config/uploadfs/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Accept self-signed TLS certificates.
    #[arg(long)]
    pub insecure: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Upload the contents of the directory FILE into PATH (folders are created where the
    /// target has them; flat targets get every file in their root).
    #[arg(long, short)]
    pub recursive: bool,
    /// Files uploaded at once with --recursive.
    #[arg(long, short, default_value_t = 8)]
    pub jobs: usize,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// `TARGET:PATH` of the remote file.
    pub src: String,
    /// Local destination (default: standard output).
    pub out: Option<PathBuf>,
    /// Config file (default ~/.config/uploadfs/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Accept self-signed TLS certificates.
    #[arg(long)]
    pub insecure: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Validate every target; with --probe, send one harmless request with each token.
    Check {
        /// Config file (default ~/.config/uploadfs/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also send one harmless authenticated request per target, to check its token.
        #[arg(long)]
        probe: bool,
    },
}

/// A byte count with an optional binary suffix (`K`, `M`, `G`, `T`, either case): `512M`,
/// `2G`, `1048576`. The one parser of sizes given on the command line or as mount options.
pub fn parse_byte_size(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        Some((i, 't' | 'T')) => (&t[..i], 40),
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{v:?}: expected bytes, e.g. 536870912 or 512M"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("512M"), Ok(512 << 20));
        assert_eq!(parse_byte_size("2g"), Ok(2 << 30));
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        assert!(parse_byte_size("lots").is_err());
        assert!(parse_byte_size("M").is_err());
        assert!(parse_byte_size("99999999999T").is_err());
    }
}
