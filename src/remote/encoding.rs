//! Name encoding: any name a local disk accepts can be stored on any target. Characters or
//! forms a service refuses are replaced, on the way out, by look-alike stand-ins, and the
//! stand-ins are turned back on the way in, so a name round-trips through the server (and
//! through a fresh mount). The stand-ins are the ones rclone's `--encoding` uses, so names
//! written by either tool read the same in both:
//!
//! | local | remote | rule | kinds |
//! |---|---|---|---|
//! | `\` | `＼` (U+FF3C) | backslash | every kind but `null` |
//! | `:` `*` `?` `"` `<` `>` `\|` | `：` `＊` `？` `＂` `＜` `＞` `｜` (fullwidth) | windows | Cloudreve |
//! | control U+0001–U+001F | `␁`–`␟` (U+2401–U+241F) | control | Box, Fluxer, Virola |
//! | DEL U+007F | `␡` (U+2421) | control | Box, Fluxer, Virola |
//! | leading or trailing space | `␠` (U+2420) | edge spaces | Box |
//!
//! A name that already holds a stand-in where it would be read back as one gets the quote
//! `‛` (U+201B) in front of it (`a＼b` is stored as `a‛＼b`); so does a `‛` that would
//! otherwise be read as a quote. A `‛` anywhere else is stored as it is, so names written by
//! other programs that contain it read back unchanged.
//!
//! [`Encoded`] applies the rules at one boundary: it wraps a client, encodes every name
//! going out (uploads, renames, folders, name checks, the names of the files it is handed)
//! and decodes every name coming back (listings and the files operations return). The
//! clients below it keep their own strict name checks, so a name that still breaks a rule
//! after encoding (one grown past 255 bytes by its stand-ins, or with a C1 control
//! character, U+0080–U+009F, which has no stand-in) is refused before anything is sent.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Capabilities, DirRef, RemoteFile, Result, Target, UploadRequest};

/// Put in front of a character that must be read literally.
const QUOTE: char = '\u{201B}';
/// Stands for a leading or trailing space.
const SPACE_SYMBOL: char = '\u{2420}';
/// `SYMBOL FOR NULL`: control character `c` (1..=0x1F) stands as `CONTROL_SYMBOLS + c`.
const CONTROL_SYMBOLS: u32 = 0x2400;
/// Stands for DEL (U+007F).
const DEL_SYMBOL: char = '\u{2421}';
/// Stands for `\`.
const FULLWIDTH_BACKSLASH: char = '\u{FF3C}';
/// Adding this to a printable ASCII character gives its fullwidth form (`:` → `：`).
const FULLWIDTH_OFFSET: u32 = 0xFEE0;
/// The characters Windows refuses in names (besides `/` and `\`), and Cloudreve with it.
const WINDOWS_RESERVED: &str = ":*?\"<>|";

/// Which characters a target's names need encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// `\` → `＼`.
    pub backslash: bool,
    /// Control characters (U+0001–U+001F, U+007F) → the Control Pictures block.
    pub control: bool,
    /// A leading or trailing space → `␠`.
    pub edge_spaces: bool,
    /// `:*?"<>|` → their fullwidth forms.
    pub windows: bool,
}

impl Rules {
    /// The rules of a target kind (`Capabilities::kind`). Every service refuses `\`;
    /// Cloudreve refuses what Windows does (`:*?"<>|`);
    /// Box and Fluxer refuse control characters, and Virola's names travel in a multipart
    /// header and a URL path, where they cannot; Box refuses leading and trailing spaces.
    pub fn for_kind(kind: &str) -> Rules {
        match kind {
            "null" => Rules::default(),
            "box" => Rules {
                backslash: true,
                control: true,
                edge_spaces: true,
                windows: false,
            },
            "fluxer" | "virola" => Rules {
                backslash: true,
                control: true,
                ..Rules::default()
            },
            "cloudreve" => Rules {
                backslash: true,
                windows: true,
                ..Rules::default()
            },
            _ => Rules {
                backslash: true,
                ..Rules::default()
            },
        }
    }

    fn is_identity(self) -> bool {
        self == Rules::default()
    }

    /// The stand-in for `c` anywhere in a name, if `c` is encoded.
    fn stand_in(self, c: char) -> Option<char> {
        match c {
            '\\' if self.backslash => Some(FULLWIDTH_BACKSLASH),
            '\u{1}'..='\u{1f}' if self.control => char::from_u32(CONTROL_SYMBOLS + c as u32),
            '\u{7f}' if self.control => Some(DEL_SYMBOL),
            c if self.windows && WINDOWS_RESERVED.contains(c) => {
                char::from_u32(c as u32 + FULLWIDTH_OFFSET)
            }
            _ => None,
        }
    }

    /// The character stand-in `c` stands for, if `c` is one (edge spaces aside).
    fn original(self, c: char) -> Option<char> {
        match c {
            FULLWIDTH_BACKSLASH if self.backslash => Some('\\'),
            DEL_SYMBOL if self.control => Some('\u{7f}'),
            c if self.control
                && (CONTROL_SYMBOLS + 1..=CONTROL_SYMBOLS + 0x1f).contains(&(c as u32)) =>
            {
                char::from_u32(c as u32 - CONTROL_SYMBOLS)
            }
            c if self.windows
                && (c as u32)
                    .checked_sub(FULLWIDTH_OFFSET)
                    .and_then(char::from_u32)
                    .is_some_and(|o| WINDOWS_RESERVED.contains(o)) =>
            {
                char::from_u32(c as u32 - FULLWIDTH_OFFSET)
            }
            _ => None,
        }
    }

    /// Position `i` of a name of `len` characters is its first or last, where edge spaces
    /// are encoded.
    fn at_edge(self, i: usize, len: usize) -> bool {
        self.edge_spaces && (i == 0 || i + 1 == len)
    }

    /// The one rule of the decoder for quotes: a `‛` at `i` of a remote name of `len`
    /// characters, followed by `next`, quotes `next` (else it is a plain character).
    fn quotes(self, i: usize, next: char, len: usize) -> bool {
        next == QUOTE
            || self.original(next).is_some()
            || (next == SPACE_SYMBOL && (self.at_edge(i, len) || self.at_edge(i + 1, len)))
    }

    /// The remote form of local name `name`.
    pub fn encode(self, name: &str) -> Cow<'_, str> {
        if self.is_identity() || !name.chars().any(|c| self.needs_care(c)) {
            return Cow::Borrowed(name);
        }
        let chars: Vec<char> = name.chars().collect();
        let m = chars.len();
        // One token (the characters written) per local character; a literal quote is
        // written single and doubled below, from the end, once what follows it is known.
        let mut tokens: Vec<Vec<char>> = chars
            .iter()
            .enumerate()
            .map(|(j, &c)| {
                if c == ' ' && self.at_edge(j, m) {
                    vec![SPACE_SYMBOL]
                } else if let Some(s) = self.stand_in(c) {
                    vec![s]
                } else if self.original(c).is_some() || (c == SPACE_SYMBOL && self.at_edge(j, m)) {
                    vec![QUOTE, c]
                } else {
                    vec![c]
                }
            })
            .collect();
        let n = tokens.len();
        for k in (0..n).rev() {
            if chars[k] != QUOTE || k + 1 == n {
                continue;
            }
            let next = tokens[k + 1][0];
            // Whether the decoder would read this quote and `next` as a pair: `next`'s
            // position decides for `␠` — first or last character of the remote name.
            let next_is_last = k + 2 == n && tokens[k + 1].len() == 1;
            let pairs = next == QUOTE
                || self.original(next).is_some()
                || (next == SPACE_SYMBOL && self.edge_spaces && (k == 0 || next_is_last));
            if pairs {
                tokens[k] = vec![QUOTE, QUOTE];
            }
        }
        Cow::Owned(tokens.into_iter().flatten().collect())
    }

    /// The local form of remote name `name`.
    pub fn decode(self, name: &str) -> Cow<'_, str> {
        if self.is_identity() || !name.chars().any(|c| self.may_decode(c)) {
            return Cow::Borrowed(name);
        }
        let chars: Vec<char> = name.chars().collect();
        let n = chars.len();
        let mut out = String::with_capacity(name.len());
        let mut i = 0;
        while i < n {
            let c = chars[i];
            if c == QUOTE && i + 1 < n && self.quotes(i, chars[i + 1], n) {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == SPACE_SYMBOL && self.at_edge(i, n) {
                out.push(' ');
            } else {
                out.push(self.original(c).unwrap_or(c));
            }
            i += 1;
        }
        Cow::Owned(out)
    }

    /// A local character the encoder may change or quote.
    fn needs_care(self, c: char) -> bool {
        c == ' ' || c == QUOTE || self.may_decode(c) || self.stand_in(c).is_some()
    }

    /// A remote character the decoder may change.
    fn may_decode(self, c: char) -> bool {
        c == QUOTE || c == SPACE_SYMBOL || self.original(c).is_some()
    }

    fn encode_file(self, f: &RemoteFile) -> Cow<'_, RemoteFile> {
        match self.encode(&f.name) {
            Cow::Borrowed(_) => Cow::Borrowed(f),
            Cow::Owned(name) => Cow::Owned(RemoteFile { name, ..f.clone() }),
        }
    }

    fn decode_file(self, mut f: RemoteFile) -> RemoteFile {
        if let Cow::Owned(name) = self.decode(&f.name) {
            f.name = name;
        }
        f
    }
}

/// A client whose names are encoded going out and decoded coming in (see the module
/// docs). Every [`Target`] method is forwarded, each with its names translated.
pub struct Encoded {
    inner: Arc<dyn Target>,
    rules: Rules,
}

impl Encoded {
    /// `inner` with its kind's rules; a kind with none is returned as it is.
    pub fn wrap(inner: Arc<dyn Target>) -> Arc<dyn Target> {
        let rules = Rules::for_kind(inner.capabilities().kind);
        if rules.is_identity() {
            return inner;
        }
        Arc::new(Encoded { inner, rules })
    }

    /// The request with its name, and the file it replaces, as the service stores them.
    fn encode_request(&self, mut req: UploadRequest) -> UploadRequest {
        req.name = self.rules.encode(&req.name).into_owned();
        if let Some(old) = req.replaces.take() {
            req.replaces = Some(self.rules.encode_file(&old).into_owned());
        }
        req
    }
}

// Every method is written out, none left to the trait's default: a default body here
// would bypass the client's own implementation. A method added to `Target` needs its
// forwarding line here too (names encoded going out, decoded coming back).
#[async_trait]
impl Target for Encoded {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        let req = self.encode_request(req);
        let landed = self.inner.upload(req).await?;
        Ok(self.rules.decode_file(landed))
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let file = self.rules.encode_file(file);
        self.inner.read_range(&file, offset, len).await
    }

    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>> {
        let entries = self.inner.list(dir).await?;
        Ok(entries
            .into_iter()
            .map(|f| self.rules.decode_file(f))
            .collect())
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        let file = self.rules.encode_file(file);
        self.inner.delete(&file).await
    }

    async fn rename(
        &self,
        file: &RemoteFile,
        new_parent: &DirRef,
        new_name: &str,
    ) -> Result<RemoteFile> {
        let file = self.rules.encode_file(file);
        let new_name = self.rules.encode(new_name);
        let moved = self.inner.rename(&file, new_parent, &new_name).await?;
        Ok(self.rules.decode_file(moved))
    }

    async fn mkdir(&self, parent: &DirRef, name: &str) -> Result<RemoteFile> {
        let made = self.inner.mkdir(parent, &self.rules.encode(name)).await?;
        Ok(self.rules.decode_file(made))
    }

    fn check_name(&self, name: &str) -> Result<()> {
        self.inner.check_name(&self.rules.encode(name))
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    fn health(&self) -> Option<&Arc<super::health::Health>> {
        self.inner.health()
    }

    async fn stat(&self, file: &RemoteFile) -> Result<Option<RemoteFile>> {
        let file = self.rules.encode_file(file);
        let now = self.inner.stat(&file).await?;
        Ok(now.map(|f| self.rules.decode_file(f)))
    }

    async fn upload_unless_changed(
        &self,
        req: UploadRequest,
        expected: &RemoteFile,
    ) -> Result<RemoteFile> {
        let req = self.encode_request(req);
        let expected = self.rules.encode_file(expected);
        let landed = self.inner.upload_unless_changed(req, &expected).await?;
        Ok(self.rules.decode_file(landed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOX: Rules = Rules {
        backslash: true,
        control: true,
        edge_spaces: true,
        windows: false,
    };

    #[test]
    fn known_mappings() {
        assert_eq!(BOX.encode("a\\b"), "a＼b");
        assert_eq!(BOX.encode("tab\there"), "tab␉here");
        assert_eq!(BOX.encode("new\nline"), "new␊line");
        assert_eq!(BOX.encode(" both "), "␠both␠");
        assert_eq!(BOX.encode("mid dle"), "mid dle");
        assert_eq!(BOX.encode("a＼b"), "a‛＼b");
        assert_eq!(BOX.encode("␠x␠"), "‛␠x‛␠");
        assert_eq!(BOX.encode("a␠b"), "a␠b");
        assert_eq!(BOX.encode("it‛s"), "it‛s");
        assert_eq!(BOX.encode("x‛ "), "x‛‛␠");
        assert_eq!(BOX.decode("␠both␠"), " both ");
        assert_eq!(BOX.decode("it‛s"), "it‛s");
        let cloudreve = Rules::for_kind("cloudreve");
        assert_eq!(cloudreve.encode(" a\tb "), " a\tb ");
        assert_eq!(cloudreve.encode("a\\b"), "a＼b");
        assert_eq!(cloudreve.encode("12:30 <why?>.txt"), "12：30 ＜why？＞.txt");
        assert_eq!(cloudreve.encode("a：b"), "a‛：b");
        assert_eq!(BOX.encode("12:30?"), "12:30?");
        assert_eq!(Rules::for_kind("null").encode("a\\b"), "a\\b");
    }

    /// Nothing in `name` is refused under `rules`.
    fn remote_ok(rules: Rules, name: &str) -> bool {
        name.chars().all(|c| rules.stand_in(c).is_none())
            && !(rules.edge_spaces && (name.starts_with(' ') || name.ends_with(' ')))
    }

    /// Every string up to 4 characters over an alphabet of the characters that matter:
    /// the local name comes back; and a remote name without quotes reads back to itself.
    #[test]
    fn round_trips_exhaustively() {
        let alphabet = [
            'a',
            ' ',
            '\\',
            '\t',
            '\u{7f}',
            QUOTE,
            SPACE_SYMBOL,
            FULLWIDTH_BACKSLASH,
            '\u{2409}',
            DEL_SYMBOL,
            ':',
            '\u{FF1A}',
        ];
        let all_rules = [
            BOX,
            Rules::for_kind("fluxer"),
            Rules::for_kind("dyson"),
            Rules::for_kind("cloudreve"),
            Rules {
                edge_spaces: true,
                ..Rules::default()
            },
        ];
        let mut names = vec![String::new()];
        let mut frontier = names.clone();
        for _ in 0..4 {
            let next: Vec<String> = frontier
                .iter()
                .flat_map(|s| {
                    alphabet.iter().map(move |c| {
                        let mut t = s.clone();
                        t.push(*c);
                        t
                    })
                })
                .collect();
            names.extend(next.iter().cloned());
            frontier = next;
        }
        for rules in all_rules {
            for name in &names {
                let remote = rules.encode(name);
                assert_eq!(
                    rules.decode(&remote),
                    *name,
                    "{rules:?}: {name:?} → {remote:?}"
                );
                // The encoded form holds nothing the rules refuse.
                assert!(
                    remote_ok(rules, &remote),
                    "{rules:?}: {name:?} → {remote:?}"
                );
                // A name as another program may have stored it (no quote, nothing the
                // service refuses): it reads back and is written back unchanged.
                let storable = remote_ok(rules, name) && !name.contains(QUOTE);
                if storable {
                    let local = rules.decode(name);
                    assert_eq!(rules.encode(&local), *name, "{rules:?}: {name:?}");
                }
            }
        }
    }
}
