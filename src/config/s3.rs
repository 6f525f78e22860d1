//! S3 targets (`kind = "s3"`): the validated addressing ([`S3Config`]) and the keys, from
//! the table or, failing that, the standard chain (`AWS_ACCESS_KEY_ID`/
//! `AWS_SECRET_ACCESS_KEY`, then `AWS_PROFILE` in `~/.aws/credentials` and `~/.aws/config`).

use super::*;

/// A validated S3 target: where the bucket is and the keys that sign for it.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// Base URL of the service, without a trailing `/`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// The key prefix that is the root: empty, or ending in `/`.
    pub prefix: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Temporary credentials' session token.
    pub session_token: Option<Secret>,
}

/// Validate a `kind = "s3"` table: addressing, then the keys (table, else the standard
/// chain).
pub(super) fn validate_s3(name: &str, raw: &RawTarget) -> Result<TargetConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: name.to_string(),
        message,
    };
    let other = [
        ("url", raw.url.is_some()),
        ("upload_url", raw.upload_url.is_some()),
        ("token", raw.token.is_some()),
        ("token_env", raw.token_env.is_some()),
        ("token_file", raw.token_file.is_some()),
    ];
    if let Some((key, _)) = other.iter().find(|(_, set)| *set) {
        return Err(invalid(format!(
            "kind = \"s3\" takes no `{key}`: use `endpoint` for the address and \
             access_key_id/secret_access_key (or the AWS_* variables or ~/.aws/credentials) \
             for the keys"
        )));
    }
    let bucket = raw
        .bucket
        .clone()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid("kind = \"s3\" needs `bucket`".to_string()))?;
    let (endpoint, region) = match (&raw.endpoint, &raw.region) {
        (Some(e), r) => (
            e.trim_end_matches('/').to_string(),
            r.clone().unwrap_or_else(|| DEFAULT_S3_REGION.to_string()),
        ),
        (None, Some(r)) => (format!("https://s3.{r}.amazonaws.com"), r.clone()),
        (None, None) => {
            return Err(invalid(
                "kind = \"s3\" needs `region` (or an `endpoint` for a non-AWS service)".to_string(),
            ))
        }
    };
    match url::Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => {
            return Err(invalid(format!(
                "endpoint = \"{endpoint}\" is not an http(s) URL (expected e.g. \
                 http://127.0.0.1:9000)"
            )))
        }
    }
    let prefix = raw.prefix.as_deref().unwrap_or("").trim_start_matches('/');
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    let keys = s3_credentials(name, raw)?;
    Ok(TargetConfig {
        kind: TargetKind::S3,
        token_source: keys.source,
        url: endpoint.clone(),
        upload_url: None,
        token: Secret::default(),
        folder_id: None,
        root: None,
        channel_id: None,
        room_id: None,
        message_id: None,
        pool_id: None,
        insecure: raw.insecure,
        max_file_size: raw.max_file_size,
        retry_seconds: raw.retry_seconds.unwrap_or(DEFAULT_RETRY_SECONDS),
        outage_seconds: raw.outage_seconds.unwrap_or(DEFAULT_OUTAGE_SECONDS),
        list_ttl_ms: raw.list_ttl_ms,
        s3: Some(S3Config {
            endpoint,
            region,
            bucket,
            prefix,
            path_style: raw.path_style.unwrap_or(false),
            access_key_id: keys.access_key_id,
            secret_access_key: keys.secret_access_key,
            session_token: keys.session_token,
        }),
    })
}

/// The signing region when an `endpoint` is given without one (what MinIO, SeaweedFS and
/// most other servers expect).
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// S3 keys and where they came from (for messages; never the keys themselves).
pub struct S3Keys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub source: String,
}

/// The S3 keys of a target, first found wins: `access_key_id`/`secret_access_key` in the
/// table; `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`); the
/// profile `AWS_PROFILE` (default `default`) in `~/.aws/credentials`, then in
/// `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE` move them).
pub fn s3_credentials(name: &str, raw: &RawTarget) -> Result<S3Keys, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: name.to_string(),
        message,
    };
    match (&raw.access_key_id, &raw.secret_access_key) {
        (Some(id), Some(secret)) => {
            return Ok(S3Keys {
                access_key_id: id.clone(),
                secret_access_key: Secret::new(secret.clone()),
                session_token: None,
                source: format!("`secret_access_key` of [targets.{name}] in the config file"),
            })
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(invalid(
                "set both access_key_id and secret_access_key, or neither (then the \
                 AWS_* variables or ~/.aws/credentials are used)"
                    .to_string(),
            ))
        }
        (None, None) => {}
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(S3Keys {
            access_key_id: id,
            secret_access_key: Secret::new(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
            source: "$AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY".to_string(),
        });
    }
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("."));
    let credentials = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws").join("credentials"));
    let config = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws").join("config"));
    // The credentials file names sections after the profile; the config file writes
    // `[profile NAME]`, except for `[default]`.
    let sections = [
        (credentials, profile.clone()),
        (config, format!("profile {profile}")),
    ];
    for (file, section) in &sections {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let mut found = ini_section(&text, section);
        if found.is_empty() && profile == "default" {
            found = ini_section(&text, "default");
        }
        let get = |k: &str| {
            found
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        if let (Some(id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
            return Ok(S3Keys {
                access_key_id: id,
                secret_access_key: Secret::new(secret),
                session_token: get("aws_session_token").map(Secret::new),
                source: format!("profile {profile} in {}", file.display()),
            });
        }
    }
    Err(invalid(format!(
        "no S3 keys: set access_key_id and secret_access_key in [targets.{name}], or \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile {profile} in \
         ~/.aws/credentials"
    )))
}

/// The `key = value` lines of `[section]` in an AWS shared config or credentials file.
pub(super) fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    out
}
