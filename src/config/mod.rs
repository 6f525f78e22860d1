//! The configuration file (`~/.config/uploadfs/config.toml`): `[targets.NAME]` tables,
//! validated into [`TargetConfig`]s, and the [`Secret`] type that keeps tokens out of logs.
//!
//! Validation is strict: unknown keys and missing fields are errors that name the key and
//! the fix, and a file that holds a token (or an S3 secret key) must not be readable by
//! group or others.
//!
//! S3 targets (`kind = "s3"`) take `endpoint`, `region`, `bucket`, `prefix` and
//! `path_style` instead of `url`/`token`, and their keys from the table or, failing that,
//! from the standard chain (see [`s3_credentials`]), resolved once at validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod s3;

#[cfg(test)]
use s3::ini_section;
use s3::validate_s3;

pub use s3::{s3_credentials, S3Config, S3Keys, DEFAULT_S3_REGION};

/// A token or password. `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The raw value, for building an `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Box,
    Cloudreve,
    Fluxer,
    Virola,
    Dyson,
    /// S3-compatible object storage (AWS, MinIO, SeaweedFS, Ceph RGW, R2, ...).
    S3,
    /// Accepts uploads and drops the bytes (measures the filesystem's own ceiling).
    Null,
}

impl TargetKind {
    /// The five protocols the project's own server speaks (not `null`, not `s3`).
    pub const ALL: [TargetKind; 5] = [
        TargetKind::Box,
        TargetKind::Cloudreve,
        TargetKind::Fluxer,
        TargetKind::Virola,
        TargetKind::Dyson,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Box => "box",
            TargetKind::Cloudreve => "cloudreve",
            TargetKind::Fluxer => "fluxer",
            TargetKind::Virola => "virola",
            TargetKind::Dyson => "dyson",
            TargetKind::S3 => "s3",
            TargetKind::Null => "null",
        }
    }
}

/// One `[targets.NAME]` table as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub kind: TargetKind,
    pub url: Option<String>,
    pub upload_url: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub folder_id: Option<String>,
    pub root: Option<String>,
    pub channel_id: Option<String>,
    pub room_id: Option<u64>,
    pub message_id: Option<u64>,
    pub pool_id: Option<String>,
    /// Accept self-signed TLS certificates (Virola servers often use them).
    #[serde(default)]
    pub insecure: bool,
    /// Largest file the account may upload (Fluxer accounts differ: 25 MiB / 500 MiB).
    pub max_file_size: Option<u64>,
    /// Cap on the total time one request may spend in retries, seconds.
    pub retry_seconds: Option<u64>,
    /// How long an operation waits for an unreachable target before it fails, seconds.
    pub outage_seconds: Option<u64>,
    /// How long a listing or a file's metadata is trusted before it is asked for again,
    /// milliseconds (other writers' changes show within this time).
    pub list_ttl_ms: Option<u64>,
    /// S3: the service's base URL; omitted means AWS for `region`.
    pub endpoint: Option<String>,
    /// S3: the signing region.
    pub region: Option<String>,
    /// S3: the bucket.
    pub bucket: Option<String>,
    /// S3: the key prefix that is the mount's root (`team/`).
    pub prefix: Option<String>,
    /// S3: path-style addressing (`host/bucket/key`); virtual-hosted otherwise.
    pub path_style: Option<bool>,
    /// S3: the access key id (with `secret_access_key`; else the standard chain).
    pub access_key_id: Option<String>,
    /// S3: the secret access key.
    pub secret_access_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
}

/// A validated target configuration. `Debug` is derived: the token is a [`Secret`], whose
/// `Debug` never shows it.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub kind: TargetKind,
    /// Where the token comes from, for messages that say what to renew (`$BOX_TOKEN`,
    /// `token_file PATH`, ...). Never the token itself.
    pub token_source: String,
    pub url: String,
    pub upload_url: Option<String>,
    pub token: Secret,
    pub folder_id: Option<String>,
    pub root: Option<String>,
    pub channel_id: Option<String>,
    pub room_id: Option<u64>,
    pub message_id: Option<u64>,
    pub pool_id: Option<String>,
    pub insecure: bool,
    pub max_file_size: Option<u64>,
    pub retry_seconds: u64,
    /// How long an operation waits for an unreachable target before it fails (EIO).
    pub outage_seconds: u64,
    /// `list_ttl_ms` as given (the mount's default when absent).
    pub list_ttl_ms: Option<u64>,
    /// The S3 settings (`kind = "s3"` only).
    pub s3: Option<S3Config>,
}

/// Default bound on the time spent retrying one request.
pub const DEFAULT_RETRY_SECONDS: u64 = 120;
/// Default bound on an operation's wait for a target it cannot reach (the time a `cp`
/// in the default mode may take to fail with EIO during an outage).
pub const DEFAULT_OUTAGE_SECONDS: u64 = 15;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} holds a token or secret key but is readable by group or others (mode {mode:o}); fix with: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("target '{name}': {message}")]
    Invalid { name: String, message: String },
    #[error("no target named '{name}' in {path} (known: {known})")]
    UnknownTarget {
        name: String,
        path: PathBuf,
        known: String,
    },
}

/// The parsed config file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub path: PathBuf,
    pub targets: BTreeMap<String, RawTarget>,
}

/// `~/.config/uploadfs/config.toml` (honours `XDG_CONFIG_HOME`).
pub fn default_config_path() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("uploadfs")
        .join("config.toml")
}

impl Config {
    /// Load a config file. A missing default file is an empty config.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let explicit = path.is_some();
        let path = path
            .map(Path::to_path_buf)
            .unwrap_or_else(default_config_path);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config {
                    path,
                    targets: BTreeMap::new(),
                })
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let raw: RawFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.message().to_string(),
        })?;
        if raw
            .targets
            .values()
            .any(|t| t.token.is_some() || t.secret_access_key.is_some())
        {
            check_private(&path)?;
        }
        Ok(Config {
            path,
            targets: raw.targets,
        })
    }

    /// The validated config of target `name`.
    pub fn target(&self, name: &str) -> Result<TargetConfig, ConfigError> {
        let raw = self
            .targets
            .get(name)
            .ok_or_else(|| ConfigError::UnknownTarget {
                name: name.to_string(),
                path: self.path.clone(),
                known: if self.targets.is_empty() {
                    "none".to_string()
                } else {
                    self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })?;
        validate(name, raw)
    }
}

/// `~/x` → `$HOME/x`.
fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), dirs::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p.to_path_buf(),
    }
}

fn check_private(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Turn a raw table into a [`TargetConfig`], resolving the token and checking the fields
/// each kind needs.
pub fn validate(name: &str, raw: &RawTarget) -> Result<TargetConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: name.to_string(),
        message,
    };
    if raw.kind == TargetKind::Null {
        return Ok(TargetConfig::null());
    }
    if raw.kind == TargetKind::S3 {
        return validate_s3(name, raw);
    }
    let s3_only = [
        ("endpoint", raw.endpoint.is_some()),
        ("region", raw.region.is_some()),
        ("bucket", raw.bucket.is_some()),
        ("prefix", raw.prefix.is_some()),
        ("path_style", raw.path_style.is_some()),
        ("access_key_id", raw.access_key_id.is_some()),
        ("secret_access_key", raw.secret_access_key.is_some()),
    ];
    if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set) {
        return Err(invalid(format!(
            "`{key}` is for kind = \"s3\" only (this target is kind = \"{}\")",
            raw.kind.as_str()
        )));
    }
    let url = raw
        .url
        .clone()
        .ok_or_else(|| invalid("missing `url` (the API base URL)".to_string()))?;
    let token_source = match (&raw.token_env, &raw.token_file) {
        (Some(var), _) => format!("${var}"),
        (_, Some(file)) => format!("token_file {}", file.display()),
        _ => format!("`token` of [targets.{name}] in the config file"),
    };
    let token = match (&raw.token, &raw.token_env, &raw.token_file) {
        (Some(t), None, None) => Secret::new(t.clone()),
        (None, Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Secret::new(v),
            _ => {
                return Err(invalid(format!(
                    "token_env = \"{var}\" but ${var} is not set; export it or use token_file"
                )))
            }
        },
        (None, None, Some(file)) => {
            let file = expand_home(file);
            let v = std::fs::read_to_string(&file)
                .map_err(|e| invalid(format!("cannot read token_file {}: {e}", file.display())))?;
            Secret::new(v.trim().to_string())
        }
        (None, None, None) => {
            return Err(invalid(
                "missing token: set one of token, token_env or token_file".to_string(),
            ))
        }
        _ => {
            return Err(invalid(
                "set only one of token, token_env and token_file".to_string(),
            ))
        }
    };
    if url::Url::parse(&url).is_err() {
        return Err(invalid(format!(
            "url = \"{url}\" is not a URL (expected e.g. https://host/api)"
        )));
    }
    let need = |field: &str, present: bool| {
        if present {
            Ok(())
        } else {
            Err(invalid(format!(
                "kind = \"{}\" needs `{field}`",
                raw.kind.as_str()
            )))
        }
    };
    match raw.kind {
        TargetKind::Box => {}
        TargetKind::Cloudreve => {}
        TargetKind::Fluxer => need("channel_id", raw.channel_id.is_some())?,
        TargetKind::Virola => {
            need("room_id", raw.room_id.is_some())?;
            need("message_id", raw.message_id.is_some())?;
        }
        TargetKind::Dyson | TargetKind::S3 | TargetKind::Null => {}
    }
    Ok(TargetConfig {
        kind: raw.kind,
        token_source,
        url: url.trim_end_matches('/').to_string(),
        upload_url: raw
            .upload_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        token,
        folder_id: raw.folder_id.clone(),
        root: raw.root.clone(),
        channel_id: raw.channel_id.clone(),
        room_id: raw.room_id,
        message_id: raw.message_id,
        pool_id: raw.pool_id.clone(),
        insecure: raw.insecure,
        max_file_size: raw.max_file_size,
        retry_seconds: raw.retry_seconds.unwrap_or(DEFAULT_RETRY_SECONDS),
        outage_seconds: raw.outage_seconds.unwrap_or(DEFAULT_OUTAGE_SECONDS),
        list_ttl_ms: raw.list_ttl_ms,
        s3: None,
    })
}

impl TargetConfig {
    /// The `null` target's config: nothing to configure.
    pub fn null() -> TargetConfig {
        TargetConfig {
            kind: TargetKind::Null,
            token_source: String::new(),
            url: String::new(),
            upload_url: None,
            token: Secret::default(),
            folder_id: None,
            root: None,
            channel_id: None,
            room_id: None,
            message_id: None,
            pool_id: None,
            insecure: false,
            max_file_size: None,
            retry_seconds: DEFAULT_RETRY_SECONDS,
            outage_seconds: DEFAULT_OUTAGE_SECONDS,
            list_ttl_ms: None,
            s3: None,
        }
    }

    /// A config pointing at an `uploadfs serve` instance at `base` (e.g.
    /// `http://127.0.0.1:8080`) for protocol `kind`, as used by the `local` target and tests.
    pub fn for_local_server(kind: TargetKind, base: &str, token: &str) -> TargetConfig {
        if matches!(kind, TargetKind::Null | TargetKind::S3) {
            // The local server speaks no S3: `s3` has no local config, like `null`.
            return TargetConfig::null();
        }
        let base = base.trim_end_matches('/');
        let (url, upload_url) = match kind {
            TargetKind::Box => (
                format!("{base}/box/2.0"),
                Some(format!("{base}/box/upload/2.0")),
            ),
            TargetKind::Cloudreve => (format!("{base}/cloudreve/api/v4"), None),
            TargetKind::Fluxer => (format!("{base}/fluxer/v1"), None),
            TargetKind::Virola => (format!("{base}/virola/api/v1"), None),
            TargetKind::Dyson => (format!("{base}/dyson/api"), None),
            TargetKind::S3 | TargetKind::Null => (String::new(), None),
        };
        TargetConfig {
            kind,
            token_source: "the local server's token".to_string(),
            url,
            upload_url,
            token: Secret::new(token),
            folder_id: Some("0".to_string()),
            root: Some("cloudreve://my".to_string()),
            channel_id: Some(crate::server::FLUXER_CHANNEL_ID.to_string()),
            room_id: Some(crate::server::VIROLA_ROOM_ID),
            message_id: Some(crate::server::VIROLA_MESSAGE_ID),
            pool_id: None,
            insecure: false,
            max_file_size: None,
            retry_seconds: DEFAULT_RETRY_SECONDS,
            outage_seconds: DEFAULT_OUTAGE_SECONDS,
            list_ttl_ms: None,
            s3: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        let cfg = TargetConfig::for_local_server(TargetKind::Box, "http://127.0.0.1:1", "tok-xyz");
        assert!(!format!("{cfg:?}").contains("tok-xyz"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<RawFile>("[targets.a]\nkind='box'\nurl='http://x'\ntokn='x'\n")
            .unwrap_err();
        assert!(err.message().contains("tokn"), "{}", err.message());
    }

    #[test]
    fn group_readable_token_file_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[targets.a]\nkind='box'\nurl='http://x'\ntoken='t'\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Config::load(Some(&p)).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = Config::load(Some(&p)).unwrap();
        assert_eq!(cfg.target("a").unwrap().token.expose(), "t");
    }

    fn s3_raw(extra: &str) -> RawTarget {
        let text = format!("[targets.b]\nkind='s3'\nbucket='photos'\n{extra}");
        toml::from_str::<RawFile>(&text).unwrap().targets["b"].clone()
    }

    #[test]
    fn s3_table_keys_and_addressing() {
        let raw = s3_raw(
            "endpoint='http://127.0.0.1:9000/'\nprefix='team'\npath_style=true\n\
             access_key_id='AKID'\nsecret_access_key='s3-secret-xyz'\n",
        );
        let cfg = validate("b", &raw).unwrap();
        let s3 = cfg.s3.as_ref().unwrap();
        assert_eq!(s3.endpoint, "http://127.0.0.1:9000");
        assert_eq!(s3.region, DEFAULT_S3_REGION);
        assert_eq!(s3.prefix, "team/");
        assert!(s3.path_style);
        assert_eq!(s3.secret_access_key.expose(), "s3-secret-xyz");
        assert!(!format!("{cfg:?}").contains("s3-secret-xyz"));
        assert!(!cfg.token_source.contains("s3-secret-xyz"));
        // AWS: the endpoint follows the region.
        let raw = s3_raw("region='eu-west-3'\naccess_key_id='a'\nsecret_access_key='b'\n");
        let s3 = validate("b", &raw).unwrap().s3.unwrap();
        assert_eq!(s3.endpoint, "https://s3.eu-west-3.amazonaws.com");
        assert!(!s3.path_style);
    }

    #[test]
    fn s3_refuses_half_keys_and_foreign_fields() {
        let raw = s3_raw("region='x'\naccess_key_id='a'\n");
        let err = validate("b", &raw).unwrap_err().to_string();
        assert!(err.contains("both"), "{err}");
        let raw = s3_raw("region='x'\ntoken='t'\n");
        let err = validate("b", &raw).unwrap_err().to_string();
        assert!(err.contains("`token`"), "{err}");
        let raw: RawTarget = toml::from_str::<RawFile>(
            "[targets.b]\nkind='box'\nurl='http://x'\ntoken='t'\nbucket='q'\n",
        )
        .unwrap()
        .targets["b"]
            .clone();
        let err = validate("b", &raw).unwrap_err().to_string();
        assert!(err.contains("`bucket` is for kind"), "{err}");
    }

    #[test]
    fn ini_sections() {
        let text = "[default]\naws_access_key_id = A\n# c\n[profile other]\n\
                    aws_access_key_id=B\naws_secret_access_key = S\n";
        assert_eq!(
            ini_section(text, "profile other"),
            vec![
                ("aws_access_key_id".to_string(), "B".to_string()),
                ("aws_secret_access_key".to_string(), "S".to_string())
            ]
        );
        assert_eq!(ini_section(text, "default").len(), 1);
        assert!(ini_section(text, "none").is_empty());
    }

    #[test]
    fn s3_secret_in_file_needs_mode_600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[targets.a]\nkind='s3'\nendpoint='http://x'\nbucket='b'\n\
             access_key_id='k'\nsecret_access_key='s'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Config::load(Some(&p)).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
