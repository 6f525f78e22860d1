//! The client side's name rules: which file and folder names each service refuses, so the
//! filesystem can refuse them (`EINVAL`, naming the rule) before anything is staged or
//! sent. Every service shares the plain rules; Box, Fluxer and Cloudreve add their own.
//! Names reach these checks encoded (`encoding.rs`), so they are the last line: what is
//! still refused is a name its encoding cannot fit. The emulator
//! in `server/` keeps its own copy on purpose: a test server must not share the code it
//! tests.

use super::{ErrorKind, Result, TargetError};

/// The longest name any target takes, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Which rules beyond the plain ones a service applies.
#[derive(Debug, Clone, Copy, Default)]
struct Rules {
    /// No control (non-printable) characters at all, not only NUL (Box, Fluxer: the name
    /// becomes a URL path segment or a header value).
    no_control: bool,
    /// No leading or trailing spaces (Box).
    no_edge_spaces: bool,
    /// None of the characters Windows refuses, `:*?"<>|` (Cloudreve).
    no_windows: bool,
}

/// Why `name` breaks `rules`, if it does.
fn problem(name: &str, rules: Rules) -> Option<&'static str> {
    if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("the name is longer than 255 bytes")
    } else if name.contains(['/', '\\', '\0']) {
        Some("the name contains '/', '\\' or NUL")
    } else if rules.no_control && name.chars().any(char::is_control) {
        Some("the name contains non-printable characters")
    } else if name == "." || name == ".." {
        Some("the name is '.' or '..'")
    } else if rules.no_edge_spaces && (name.starts_with(' ') || name.ends_with(' ')) {
        Some("the name has leading or trailing spaces")
    } else if rules.no_windows && name.contains([':', '*', '?', '"', '<', '>', '|']) {
        Some("the name contains one of : * ? \" < > |")
    } else {
        None
    }
}

fn check(name: &str, what: &str, rules: Rules) -> Result<()> {
    match problem(name, rules) {
        None => Ok(()),
        Some(why) => Err(TargetError::new(
            ErrorKind::InvalidName,
            format!("{name:?}: {what}: {why}"),
        )),
    }
}

/// The name rules every target shares: not empty, at most 255 bytes, no `/`, `\` or NUL,
/// not `.` or `..`. `what` says who refuses, e.g. "Virola refuses this attachment name".
pub fn check_plain_name(name: &str, what: &str) -> Result<()> {
    check(name, what, Rules::default())
}

/// Box's rules: the plain ones, nothing non-printable, no leading or trailing spaces
/// (else 400 `item_name_invalid`).
pub fn check_box_name(name: &str) -> Result<()> {
    let rules = Rules {
        no_control: true,
        no_edge_spaces: true,
        no_windows: false,
    };
    check(name, "Box refuses this name", rules)
}

/// Fluxer's rules: the plain ones and no control characters (the name becomes a CDN URL
/// path segment).
pub fn check_fluxer_name(name: &str) -> Result<()> {
    let rules = Rules {
        no_control: true,
        ..Rules::default()
    };
    check(name, "Fluxer refuses this file name", rules)
}

/// Cloudreve's rules: the plain ones and none of `:*?"<>|` (else code 40052, illegal
/// name).
pub fn check_cloudreve_name(name: &str) -> Result<()> {
    let rules = Rules {
        no_windows: true,
        ..Rules::default()
    };
    check(name, "Cloudreve refuses this name", rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_per_service() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", &"x".repeat(256)] {
            assert!(check_plain_name(bad, "t").is_err(), "{bad:?}");
            assert!(check_box_name(bad).is_err(), "{bad:?}");
            assert!(check_fluxer_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_plain_name("a\tb", "t").is_ok());
        assert!(check_fluxer_name("a\tb").is_err());
        assert!(check_fluxer_name(" a ").is_ok());
        assert!(check_cloudreve_name("12:30").is_err());
        assert!(check_cloudreve_name("12：30 a\tb").is_ok());
        let e = check_box_name(" a").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidName);
        assert!(e.message.contains("leading or trailing spaces"), "{e}");
    }
}
