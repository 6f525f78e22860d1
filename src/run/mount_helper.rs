//! `mount.fuse.uploadfs`: the helper mount(8) runs for `-t fuse.uploadfs` and for
//! `/etc/fstab` lines of that type. It is the `uploadfs` binary itself, installed (or
//! symlinked) under that name; `main` dispatches on `argv[0]`.
//!
//! mount(8) calls `mount.fuse.uploadfs SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`. This
//! module only translates that into the ordinary command line
//! `uploadfs [--log-file F] mount SPEC DIR [--config F] ... [-o fuse-opts]`, which then runs
//! as usual: it returns once the kernel has accepted the mount (the daemon keeps running),
//! exactly what mount(8) expects of a helper.
//!
//! Options: uploadfs's own (`config=`, `cache_dir=`, `state_dir=`, `cache_size=`,
//! `write_back`, `keep_remote`, `insecure`, `log_file=`) become flags; FUSE/VFS options
//! uploadfs understands (`allow_other`, `ro`, ...) are passed through with `-o`; options
//! that only mean something to mount(8), systemd or the fstab reader (`noauto`, `user`,
//! `_netdev`, `x-systemd.*`, ...) and the ones uploadfs always applies (`nosuid`, `nodev`)
//! are dropped. Anything else is refused with a message naming it (or, with `-s`, mount's
//! "sloppy" flag, ignored with a warning), so a typo in fstab is not silently lost.

use std::ffi::{OsStr, OsString};

/// Names under which the binary acts as the mount helper. `mount.fuse3.uploadfs` is not
/// looked up by util-linux, but is accepted so a packager's choice of name still works.
const HELPER_NAMES: &[&str] = &["mount.fuse.uploadfs", "mount.fuse3.uploadfs"];

/// FUSE/VFS options passed through to `uploadfs mount -o` (see `mount_config`).
const PASS_THROUGH: &[&str] = &[
    "allow_other",
    "allow_root",
    "default_permissions",
    "auto_unmount",
    "ro",
    "rw",
    "noatime",
    "nonempty",
    "noexec",
    "exec",
];

/// Options that only concern mount(8), the fstab reader or systemd, or that uploadfs
/// always applies (`nosuid`, `nodev`) or cannot change (atime flavours, sync): dropped.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "nosuid",
    "nodev",
    "suid",
    "dev",
    "async",
    "sync",
    "atime",
    "relatime",
    "strictatime",
    "lazytime",
    "nodiratime",
    "diratime",
    "nouser_xattr",
    "user_xattr",
];

/// Prefixes of dropped `key=value` / namespaced options.
const IGNORED_PREFIXES: &[&str] = &["x-", "comment=", "user=", "helper="];

/// Why the helper's command line cannot be translated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelperError {
    #[error("usage: mount.fuse.uploadfs TARGET MOUNTPOINT [-o OPTIONS] (called by mount(8) for type fuse.uploadfs)")]
    Usage,
    #[error("mount option {0}: {1}")]
    BadValue(String, String),
    #[error("unknown mount option {0:?} (uploadfs options: config=, cache_dir=, state_dir=, cache_size=, log_file=, write_back, keep_remote, insecure; FUSE options: {pass}); use mount -s to ignore unknown options", pass = PASS_THROUGH.join(", "))]
    Unknown(String),
    #[error("mount helper flag {0} is not supported")]
    Flag(String),
}

/// The translated invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// `uploadfs ...` arguments, `argv[0]` included.
    pub argv: Vec<OsString>,
    /// `-f` (fake): mount(8) asks to do everything but the mount itself.
    pub fake: bool,
    /// `-v`: say what is run.
    pub verbose: bool,
    /// Options ignored because of `-s`, to warn about.
    pub ignored: Vec<String>,
}

/// True when `argv0` names the mount helper.
pub fn is_helper(argv0: &OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_NAMES.contains(&n))
}

/// Split a mount option string at commas, keeping commas inside double quotes (libmount
/// quotes values that contain commas) and removing the quotes.
fn split_options(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

/// A byte count with an optional binary suffix (see [`crate::cli::parse_byte_size`]).
fn parse_size(v: &str) -> Option<u64> {
    crate::cli::parse_byte_size(v).ok()
}

/// Translate the helper's arguments (without `argv[0]`) into an `uploadfs` command line.
pub fn translate(args: &[OsString]) -> Result<Translated, HelperError> {
    let mut positional: Vec<OsString> = vec![];
    let mut opts: Vec<String> = vec![];
    let (mut fake, mut verbose, mut sloppy) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => {
                let v = it.next().ok_or(HelperError::Usage)?;
                opts.extend(split_options(&v.to_string_lossy()));
            }
            // The type (`fuse.uploadfs`) is known; a namespace switch is not supported.
            "-t" => {
                it.next().ok_or(HelperError::Usage)?;
            }
            "-N" => return Err(HelperError::Flag("-N".into())),
            _ if s.starts_with("-o") && s.len() > 2 => opts.extend(split_options(&s[2..])),
            _ if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
                for f in s[1..].chars() {
                    match f {
                        'f' => fake = true,
                        'v' => verbose = true,
                        's' => sloppy = true,
                        // mtab is not written by helpers any more: nothing to skip.
                        'n' => {}
                        _ => return Err(HelperError::Flag(format!("-{f}"))),
                    }
                }
            }
            _ => positional.push(a.clone()),
        }
    }
    let [spec, mountpoint] =
        <[OsString; 2]>::try_from(positional).map_err(|_| HelperError::Usage)?;
    // The old `fuse` type's `uploadfs#TARGET` spelling of the source.
    let spec = match spec.to_str().and_then(|s| s.strip_prefix("uploadfs#")) {
        Some(t) => OsString::from(t),
        None => spec,
    };
    let mut global: Vec<OsString> = vec![];
    let mut flags: Vec<OsString> = vec![];
    let mut fuse_opts: Vec<String> = vec![];
    let mut ignored = vec![];
    for o in opts {
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        let need = |v: Option<&str>| -> Result<String, HelperError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(HelperError::BadValue(o.clone(), "needs a value".into())),
            }
        };
        match key {
            "config" => {
                flags.push("--config".into());
                flags.push(need(value)?.into());
            }
            "cache_dir" => {
                flags.push("--cache-dir".into());
                flags.push(need(value)?.into());
            }
            "state_dir" => {
                flags.push("--state-dir".into());
                flags.push(need(value)?.into());
            }
            "cache_size" => {
                let v = need(value)?;
                let n = parse_size(&v).ok_or_else(|| {
                    HelperError::BadValue(
                        o.clone(),
                        "expected bytes, e.g. 536870912 or 512M".into(),
                    )
                })?;
                flags.push("--cache-size".into());
                flags.push(n.to_string().into());
            }
            "log_file" => {
                global.push("--log-file".into());
                global.push(need(value)?.into());
            }
            "write_back" | "keep_remote" | "insecure" if value.is_none() => {
                flags.push(format!("--{}", key.replace('_', "-")).into());
            }
            k if value.is_none() && PASS_THROUGH.contains(&k) => fuse_opts.push(o.clone()),
            k if value.is_none() && IGNORED.contains(&k) => {}
            _ if IGNORED_PREFIXES.iter().any(|p| o.starts_with(p)) => {}
            _ if sloppy => ignored.push(o.clone()),
            _ => return Err(HelperError::Unknown(o.clone())),
        }
    }
    let mut argv: Vec<OsString> = vec!["uploadfs".into()];
    argv.extend(global);
    argv.push("mount".into());
    argv.push(spec);
    argv.push(mountpoint);
    argv.extend(flags);
    if !fuse_opts.is_empty() {
        argv.push("-o".into());
        argv.push(fuse_opts.join(",").into());
    }
    Ok(Translated {
        argv,
        fake,
        verbose,
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn argv(t: &Translated) -> Vec<String> {
        t.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn names() {
        assert!(is_helper(OsStr::new("/sbin/mount.fuse.uploadfs")));
        assert!(is_helper(OsStr::new("mount.fuse.uploadfs")));
        assert!(!is_helper(OsStr::new("/usr/bin/uploadfs")));
        assert!(!is_helper(OsStr::new("mount.fuse")));
    }

    #[test]
    fn fstab_options_translate_and_parse() {
        let t = translate(&os(&[
            "work",
            "/mnt/work",
            "-o",
            "rw,nosuid,nodev,noauto,user,_netdev,x-systemd.automount,x-systemd.idle-timeout=60,config=/etc/uploadfs.toml,cache_dir=/var/cache/u,state_dir=/var/lib/u,cache_size=512M,write_back,allow_other,keep_remote,insecure,log_file=/var/log/u.log",
            "-t",
            "fuse.uploadfs",
        ]))
        .unwrap();
        assert_eq!(
            argv(&t),
            [
                "uploadfs",
                "--log-file",
                "/var/log/u.log",
                "mount",
                "work",
                "/mnt/work",
                "--config",
                "/etc/uploadfs.toml",
                "--cache-dir",
                "/var/cache/u",
                "--state-dir",
                "/var/lib/u",
                "--cache-size",
                "536870912",
                "--write-back",
                "--keep-remote",
                "--insecure",
                "-o",
                "rw,allow_other",
            ]
        );
        assert!(!t.fake && !t.verbose);
        // The translation is a valid uploadfs command line.
        let cli = uploadfs_cli(&t);
        match cli.command {
            crate::cli::Command::Mount(m) => {
                assert_eq!(m.target, "work");
                assert_eq!(m.cache_size, 512 << 20);
                assert!(m.write_back && m.keep_remote && m.insecure);
                assert_eq!(m.options, ["rw", "allow_other"]);
            }
            other => panic!("not a mount: {other:?}"),
        }
    }

    fn uploadfs_cli(t: &Translated) -> crate::cli::Cli {
        crate::cli::Cli::try_parse_from(&t.argv).expect("translated argv parses")
    }

    #[test]
    fn flags_quotes_and_old_spelling() {
        let t = translate(&os(&[
            "uploadfs#box",
            "/m",
            "-nsv",
            "-o",
            "config=\"/a,b/c.toml\",bogus",
        ]))
        .unwrap();
        assert_eq!(argv(&t)[2..4], ["box", "/m"]);
        assert_eq!(argv(&t)[5], "/a,b/c.toml");
        assert!(t.verbose);
        assert_eq!(t.ignored, ["bogus"]);
        let t = translate(&os(&["t", "/m", "-f"])).unwrap();
        assert!(t.fake);
        assert_eq!(argv(&t), ["uploadfs", "mount", "t", "/m"]);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            translate(&os(&["t", "/m", "-o", "bogus"])),
            Err(HelperError::Unknown("bogus".into()))
        );
        assert!(translate(&os(&["t", "/m", "-o", "cache_size=lots"]))
            .unwrap_err()
            .to_string()
            .contains("cache_size=lots"));
        assert!(matches!(
            translate(&os(&["t", "/m", "-o", "config="])),
            Err(HelperError::BadValue(..))
        ));
        assert_eq!(translate(&os(&["t"])), Err(HelperError::Usage));
        assert_eq!(translate(&os(&["t", "/m", "x"])), Err(HelperError::Usage));
        assert_eq!(
            translate(&os(&["t", "/m", "-N", "/proc/1/ns/mnt"])),
            Err(HelperError::Flag("-N".into()))
        );
        // `write_back=1` is not a flag spelling uploadfs accepts.
        assert!(translate(&os(&["t", "/m", "-o", "write_back=1"])).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
