//! Resolving a `TARGET` argument: `local` (the built-in default: the project's own server
//! started in-process on loopback, data under the user's data directory) or a configured
//! `[targets.NAME]` table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, TargetConfig, TargetKind};
use crate::remote::{self, Target};
use crate::server::{RunningServer, ServeOptions};

/// The protocol the `local` target speaks (native folders, rename, versions).
pub const LOCAL_KIND: TargetKind = TargetKind::Box;

/// An opened target, with the in-process server that backs it for `local`.
pub struct OpenTarget {
    pub name: String,
    pub config: TargetConfig,
    pub target: Arc<dyn Target>,
    pub server: Option<RunningServer>,
}

/// Data directory of the `local` target (`~/.local/share/uploadfs/local`).
pub fn local_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("uploadfs")
        .join("local")
}

/// Open `name` from the config file (or start the local server for `local`).
pub async fn open_target(
    name: &str,
    config_path: Option<&Path>,
    insecure: bool,
) -> anyhow::Result<OpenTarget> {
    if name == "local" {
        let config = Config::load(config_path)?;
        if !config.targets.contains_key("local") {
            let data = local_data_dir();
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            let token = uuid::Uuid::new_v4().simple().to_string();
            let server = crate::server::start(ServeOptions::ephemeral(data, &token)).await?;
            let cfg = TargetConfig::for_local_server(LOCAL_KIND, &server.base_url(), &token);
            let target = remote::build_encoded("local", &cfg)?;
            return Ok(OpenTarget {
                name: name.to_string(),
                config: cfg,
                target,
                server: Some(server),
            });
        }
    }
    let config = Config::load(config_path)?;
    let mut cfg = config.target(name)?;
    cfg.insecure |= insecure;
    let target = remote::build_encoded(name, &cfg)?;
    Ok(OpenTarget {
        name: name.to_string(),
        config: cfg,
        target,
        server: None,
    })
}

/// `uploadfs config check`: validate every target; with `probe`, try each token once.
pub async fn check_config(config_path: Option<&Path>, probe: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    if config.targets.is_empty() {
        println!(
            "{}: no targets configured (the built-in `local` target needs none)",
            config.path.display()
        );
        return Ok(());
    }
    let mut bad = 0;
    for name in config.targets.keys() {
        match crate::config::validate(name, &config.targets[name]) {
            Err(e) => {
                bad += 1;
                println!("{name}: error: {e}");
            }
            Ok(cfg) if probe => {
                let t = remote::build(name, &cfg)?;
                match t.check().await {
                    Ok(()) => println!(
                        "{name}: ok ({} at {}, {} accepted)",
                        cfg.kind.as_str(),
                        cfg.url,
                        if cfg.kind == TargetKind::S3 {
                            "keys"
                        } else {
                            "token"
                        }
                    ),
                    Err(e) => {
                        bad += 1;
                        println!("{name}: error: {e}");
                    }
                }
            }
            Ok(cfg) => println!("{name}: ok ({} at {})", cfg.kind.as_str(), cfg.url),
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} target(s) have errors");
    }
    Ok(())
}
