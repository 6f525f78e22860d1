//! The file-name rules the emulated services share: not empty, at most 255 bytes, no
//! `/` or `\`, no NUL (or, where the service says so, no control character at all), not
//! `.` or `..`, and for some no leading or trailing space. Each protocol picks its rules
//! ([`NameRules`]) and words the refusal itself from the [`NameFault`].

/// Longest name accepted, bytes (the usual file-system limit, and every service's).
pub const MAX_NAME_BYTES: usize = 255;

/// What is wrong with a name, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameFault {
    Empty,
    TooLong,
    /// `/` or `\`.
    Separator,
    /// NUL, or any control character where the rules say so.
    Control,
    /// `.` or `..`.
    Reserved,
    /// A leading or trailing space.
    EdgeSpace,
}

/// Which of the optional rules a protocol applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameRules {
    /// Refuse every control character, not only NUL.
    pub no_control: bool,
    /// Refuse leading and trailing spaces.
    pub no_edge_spaces: bool,
}

impl NameRules {
    /// The fault of `name` under these rules, if any.
    pub fn check(self, name: &str) -> Result<(), NameFault> {
        let control = |c: char| {
            if self.no_control {
                c.is_control()
            } else {
                c == '\0'
            }
        };
        if name.is_empty() {
            Err(NameFault::Empty)
        } else if name.len() > MAX_NAME_BYTES {
            Err(NameFault::TooLong)
        } else if name.contains(['/', '\\']) {
            Err(NameFault::Separator)
        } else if name.chars().any(control) {
            Err(NameFault::Control)
        } else if name == "." || name == ".." {
            Err(NameFault::Reserved)
        } else if self.no_edge_spaces && (name.starts_with(' ') || name.ends_with(' ')) {
            Err(NameFault::EdgeSpace)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_in_order() {
        let plain = NameRules::default();
        let strict = NameRules {
            no_control: true,
            no_edge_spaces: true,
        };
        assert_eq!(plain.check(""), Err(NameFault::Empty));
        assert_eq!(plain.check(&"x".repeat(256)), Err(NameFault::TooLong));
        assert_eq!(plain.check(&"x".repeat(255)), Ok(()));
        assert_eq!(plain.check("a/b\0"), Err(NameFault::Separator));
        assert_eq!(plain.check("a\0"), Err(NameFault::Control));
        assert_eq!(plain.check("a\tb"), Ok(()));
        assert_eq!(strict.check("a\tb"), Err(NameFault::Control));
        assert_eq!(plain.check(".."), Err(NameFault::Reserved));
        assert_eq!(plain.check(" a "), Ok(()));
        assert_eq!(strict.check(" a"), Err(NameFault::EdgeSpace));
    }
}
