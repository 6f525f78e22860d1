//! Config files for the tests that run the `uploadfs` binary: a [`TargetToml`] builder
//! for one `[targets.NAME]` table pointing at a test server (kind, server address, token
//! form, retry budget, extra keys) or at an S3 bucket ([`TargetToml::s3`]), and one writer
//! that puts tables in a file with mode 600, as a config holding a token must have.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use uploadfs::config::{TargetConfig, TargetKind};

use super::server::{TestServer, TOKEN};

/// Retry budget of a target unless a test sets another: long enough to ride out injected
/// faults, short enough that a test expecting a failure does not wait minutes for it.
pub const RETRY_SECONDS: u64 = 20;

/// Where a target's token comes from.
#[derive(Clone, Debug)]
pub enum Token {
    /// `token = "..."` in the file.
    Inline(String),
    /// `token_env = "VAR"`.
    Env(String),
    /// `token_file = "PATH"`.
    File(PathBuf),
}

/// One `[targets.NAME]` table.
#[derive(Clone, Debug)]
pub struct TargetToml {
    name: String,
    kind: TargetKind,
    base: String,
    token: Token,
    retry_seconds: u64,
    extra: String,
    /// An S3 target: endpoint, bucket and key prefix (the keys are the test cluster's).
    s3: Option<(String, String, String)>,
}

impl TargetToml {
    /// Target `t` of `kind` at server `s`, with the server's token inline and a
    /// [`RETRY_SECONDS`] retry budget.
    pub fn new(s: &TestServer, kind: TargetKind) -> TargetToml {
        TargetToml::at(&s.base, kind)
    }

    /// Like [`TargetToml::new`], for a server at `base` (`http://host:port`).
    pub fn at(base: &str, kind: TargetKind) -> TargetToml {
        TargetToml {
            name: "t".to_string(),
            kind,
            base: base.to_string(),
            token: Token::Inline(TOKEN.to_string()),
            retry_seconds: RETRY_SECONDS,
            extra: String::new(),
            s3: None,
        }
    }

    /// An S3 target on `bucket` (below `prefix`) of the S3 gateway at `endpoint`, path
    /// style, with the test cluster's keys ([`super::s3`]).
    pub fn s3(endpoint: &str, bucket: &str, prefix: &str) -> TargetToml {
        let mut t = TargetToml::at(endpoint, TargetKind::S3);
        t.s3 = Some((endpoint.to_string(), bucket.to_string(), prefix.to_string()));
        t
    }

    /// The table's name (`[targets.NAME]`, what `uploadfs mount NAME` names).
    pub fn name(mut self, name: &str) -> TargetToml {
        self.name = name.to_string();
        self
    }

    pub fn token(mut self, token: Token) -> TargetToml {
        self.token = token;
        self
    }

    pub fn retry_seconds(mut self, seconds: u64) -> TargetToml {
        self.retry_seconds = seconds;
        self
    }

    /// More `key = value` lines, each ending in a newline.
    pub fn extra(mut self, lines: &str) -> TargetToml {
        self.extra.push_str(lines);
        self
    }

    /// The table as TOML: the protocol's addresses and fixed ids as the server serves them.
    pub fn toml(&self) -> String {
        if let Some((endpoint, bucket, prefix)) = &self.s3 {
            use super::s3::{ACCESS_KEY, REGION, SECRET_KEY};
            return format!(
                "[targets.{}]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nregion = \"{REGION}\"\n\
                 bucket = \"{bucket}\"\nprefix = \"{prefix}\"\npath_style = true\n\
                 access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\
                 retry_seconds = {}\n{}",
                self.name, self.retry_seconds, self.extra
            );
        }
        let c = TargetConfig::for_local_server(self.kind, &self.base, TOKEN);
        let token = match &self.token {
            Token::Inline(t) => format!("token = \"{t}\""),
            Token::Env(var) => format!("token_env = \"{var}\""),
            Token::File(p) => format!("token_file = \"{}\"", p.display()),
        };
        let mut text = format!(
            "[targets.{}]\nkind = \"{}\"\nurl = \"{}\"\n{token}\nretry_seconds = {}\n",
            self.name,
            self.kind.as_str(),
            c.url,
            self.retry_seconds
        );
        if let Some(u) = &c.upload_url {
            text.push_str(&format!("upload_url = \"{u}\"\n"));
        }
        match self.kind {
            TargetKind::Fluxer => text.push_str(&format!(
                "channel_id = \"{}\"\n",
                c.channel_id.as_deref().unwrap_or_default()
            )),
            TargetKind::Virola => text.push_str(&format!(
                "room_id = {}\nmessage_id = {}\n",
                c.room_id.unwrap_or_default(),
                c.message_id.unwrap_or_default()
            )),
            _ => {}
        }
        text.push_str(&self.extra);
        text
    }

    /// This table alone, as `config.toml` in the server's directory.
    pub fn write(&self, s: &TestServer) -> PathBuf {
        self.write_as(s, "config.toml")
    }

    /// This table alone, as `file` in the server's directory.
    pub fn write_as(&self, s: &TestServer, file: &str) -> PathBuf {
        write_config_file(&s.dir.path().join(file), std::slice::from_ref(self))
    }
}

/// Write `targets` to `path` (mode 600); returns the path.
pub fn write_config_file(path: &Path, targets: &[TargetToml]) -> PathBuf {
    let text: Vec<String> = targets.iter().map(TargetToml::toml).collect();
    std::fs::write(path, text.join("\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

/// The usual config: target `t` of `kind` at `s` with `extra` lines, as `config.toml`.
pub fn write_config(s: &TestServer, kind: TargetKind, extra: &str) -> PathBuf {
    TargetToml::new(s, kind).extra(extra).write(s)
}
