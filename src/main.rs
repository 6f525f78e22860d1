//! The `uploadfs` binary: parse the command line, set up logging, build the tokio runtime
//! (after any daemonizing fork), and hand over to the library. Installed as
//! `mount.fuse.uploadfs` it is mount(8)'s helper: see `uploadfs::run::mount_helper`.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use uploadfs::cli::{Cli, Command, ConfigCommand, Generate};

fn init_tracing(log_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("UPLOADFS_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount(args) => {
            // Only the daemon logs; the parent that starts it reports through its exit.
            if args.foreground {
                init_tracing(cli.log_file.as_deref())?;
            }
            uploadfs::run::run(args, cli.log_file)
        }
        Command::Unmount(args) => uploadfs::run::unmount(args),
        Command::Status(args) => uploadfs::run::status(args),
        Command::Serve(opts) => {
            init_tracing(cli.log_file.as_deref())?;
            runtime()?.block_on(uploadfs::server::run(opts))
        }
        Command::Put(args) => {
            init_tracing(cli.log_file.as_deref())?;
            let remote = runtime()?.block_on(uploadfs::put::put(&args))?;
            if !args.quiet {
                eprintln!(
                    "uploaded {} ({} bytes, id {})",
                    remote.name, remote.size, remote.id
                );
            }
            Ok(())
        }
        Command::Get(args) => {
            init_tracing(cli.log_file.as_deref())?;
            runtime()?.block_on(uploadfs::put::get(&args)).map(|_| ())
        }
        Command::Generate(g) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            match g.what {
                Generate::Completions { shell } => {
                    clap_complete::generate(shell, &mut cmd, "uploadfs", &mut std::io::stdout());
                }
                Generate::Man { dir: None } => {
                    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?
                }
                // The pages the top-level one refers to: uploadfs-mount(1) and the others.
                Generate::Man { dir: Some(dir) } => {
                    std::fs::create_dir_all(&dir)?;
                    clap_mangen::generate_to(cmd, &dir)?;
                }
            }
            Ok(())
        }
        Command::Config(c) => match c.command {
            ConfigCommand::Check { config, probe } => {
                init_tracing(cli.log_file.as_deref())?;
                runtime()?.block_on(uploadfs::open::check_config(config.as_deref(), probe))
            }
        },
    }
}

/// mount(8)'s helper: translate its arguments and run the ordinary `mount`.
fn mount_helper(args: &[std::ffi::OsString]) -> ExitCode {
    let t = match uploadfs::run::mount_helper::translate(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mount.fuse.uploadfs: {e}");
            // mount(8)'s "incorrect invocation or permissions" status.
            return ExitCode::from(1);
        }
    };
    for o in &t.ignored {
        eprintln!("mount.fuse.uploadfs: ignoring unknown option {o:?} (sloppy mode)");
    }
    if t.verbose || t.fake {
        let line: Vec<_> = t.argv.iter().map(|a| a.to_string_lossy()).collect();
        eprintln!("mount.fuse.uploadfs: {}", line.join(" "));
    }
    if t.fake {
        return ExitCode::SUCCESS;
    }
    match Cli::try_parse_from(&t.argv) {
        Ok(cli) => match run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mount.fuse.uploadfs: {e:#}");
                // mount(8)'s "mount failure" status.
                ExitCode::from(32)
            }
        },
        Err(e) => {
            eprintln!("mount.fuse.uploadfs: {e}");
            ExitCode::from(1)
        }
    }
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uploadfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Few malloc arenas. glibc gives each thread that allocates concurrently an arena of its
/// own (up to 8 per core) and keeps what was freed in it, so part buffers and blocks freed
/// by one thread and allocated again by another grow the resident size far past what is in
/// use (a daemon with sixteen uploads peaked at 320 MiB for 130 MiB live). Two arenas keep
/// the peak near the live size on the two-core machines this is measured on, and cost
/// little contention: the hot allocations are few and large.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .is_some_and(|a| uploadfs::run::mount_helper::is_helper(a))
    {
        return mount_helper(&args[1..]);
    }
    let cli = Cli::parse();
    finish(run(cli))
}
