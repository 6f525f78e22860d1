//! `cloudreve://my/<path>` uris: parsing (path-escaped segments, an optional `?query`
//! ignored), the name rules (40052), and canonical re-escaping for answers.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::super::names::NameRules;
use super::{code, ApiError};

/// The only filesystem this server hosts: the user's own files.
pub const ROOT_URI: &str = "cloudreve://my";

/// What Go's `url.PathEscape` leaves alone: unreserved characters and the sub-delimiters
/// allowed in a path segment.
pub const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// A decoded path under `cloudreve://my`; no segments is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrPath {
    pub segs: Vec<String>,
}

impl CrPath {
    pub fn root() -> CrPath {
        CrPath { segs: Vec::new() }
    }

    /// Parse a uri; unknown filesystems and bad escapes are 40001, bad names 40052.
    pub fn parse(uri: &str) -> Result<CrPath, ApiError> {
        let uri = uri.split_once('?').map(|(a, _)| a).unwrap_or(uri);
        let rest = uri
            .strip_prefix(ROOT_URI)
            .ok_or_else(|| ApiError::param("unknown uri"))?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(ApiError::param("unknown uri"));
        }
        let mut segs = Vec::new();
        for raw in rest.split('/').filter(|s| !s.is_empty()) {
            let seg = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| ApiError::param("unknown uri"))?
                .into_owned();
            check_name(&seg)?;
            segs.push(seg);
        }
        Ok(CrPath { segs })
    }

    /// The canonical uri, each segment path-escaped.
    pub fn uri(&self) -> String {
        let mut s = ROOT_URI.to_string();
        for seg in &self.segs {
            s.push('/');
            s.push_str(&escape(seg));
        }
        s
    }

    pub fn name(&self) -> Option<&str> {
        self.segs.last().map(String::as_str)
    }

    pub fn parent(&self) -> Option<CrPath> {
        if self.segs.is_empty() {
            None
        } else {
            Some(CrPath {
                segs: self.segs[..self.segs.len() - 1].to_vec(),
            })
        }
    }

    pub fn child(&self, name: &str) -> CrPath {
        let mut segs = self.segs.clone();
        segs.push(name.to_string());
        CrPath { segs }
    }

    /// `self` is `other` or lies below it.
    pub fn is_within(&self, other: &CrPath) -> bool {
        self.segs.len() >= other.segs.len() && self.segs[..other.segs.len()] == other.segs[..]
    }
}

/// Path-escape one name.
pub fn escape(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// The characters Cloudreve refuses besides the separators, as Windows does
/// (`validateFileName` in Cloudreve v4's `dbfs/validator.go`).
const RESERVED_CHARS: [char; 7] = [':', '*', '?', '"', '<', '>', '|'];

/// The name rules: not empty, at most 255 bytes, no `/`, `\` or NUL, none of `:*?"<>|`,
/// not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let illegal = || ApiError::new(code::ILLEGAL_NAME, "Illegal file name");
    NameRules::default().check(name).map_err(|_| illegal())?;
    if name.contains(RESERVED_CHARS) {
        return Err(illegal());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_escape_round_trip() {
        let p = CrPath::parse("cloudreve://my/Inspirations/archive%20(3).zip").unwrap();
        assert_eq!(p.segs, vec!["Inspirations", "archive (3).zip"]);
        assert_eq!(p.uri(), "cloudreve://my/Inspirations/archive%20(3).zip");
        assert_eq!(CrPath::parse("cloudreve://my").unwrap(), CrPath::root());
        assert_eq!(CrPath::parse("cloudreve://my/").unwrap(), CrPath::root());
        assert_eq!(
            CrPath::parse("cloudreve://my/a?x=1").unwrap().segs,
            vec!["a"]
        );
        assert_eq!(escape("a%b#c?d"), "a%25b%23c%3Fd");
    }

    #[test]
    fn refuses_bad_names_and_uris() {
        for bad in [
            "cloudreve://my/..",
            "cloudreve://my/a/.",
            "cloudreve://my/a%2Fb",
            "cloudreve://my/a%5Cb",
            "cloudreve://my/a%00b",
            "cloudreve://my/12%3A30",
            "cloudreve://my/why%3F",
        ] {
            assert_eq!(
                CrPath::parse(bad).unwrap_err().code,
                code::ILLEGAL_NAME,
                "{bad}"
            );
        }
        let long = format!("cloudreve://my/{}", "x".repeat(256));
        assert_eq!(CrPath::parse(&long).unwrap_err().code, code::ILLEGAL_NAME);
        for bad in ["cloudreve://trash/a", "http://x/a", "cloudreve://myx"] {
            assert_eq!(CrPath::parse(bad).unwrap_err().code, code::PARAM, "{bad}");
        }
    }
}
