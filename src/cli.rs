//! The command line (a stable contract, DESIGN.md §2): clap definitions only.

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
    Completions { shell: clap_complete::Shell },
    /// The man page (roff), e.g. `uploadfs generate man > uploadfs.1`.
    Man,
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// `local` or the name of a `[targets.NAME]` table.
    pub target: String,
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
    /// Byte budget of the read block cache.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub cache_size: u64,
    /// Never delete remote files (unlink only forgets them).
    #[arg(long)]
    pub keep_remote: bool,
    /// Mount options (`allow_other`, `ro`, ...), comma separated.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Accept self-signed TLS certificates.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
    /// Do not wait for pending uploads (they stay journaled for the next mount).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    pub mountpoint: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// Local file to upload (a directory with --recursive).
    pub file: PathBuf,
    /// `TARGET` or `TARGET:PATH` (PATH is a file name, or dir/name on targets with folders).
    pub dest: String,
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
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub insecure: bool,
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
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        probe: bool,
    },
}
