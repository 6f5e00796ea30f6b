//! The `S3DLIO_DIRECT_PATHS`/`S3DLIO_DIRECT_EXCLUDE` glob language and lexical path normalisation; matching never allocates.
//!
//! # The language
//!
//! A spec is a list of entries separated by `:`. Empty entries (`::`, a leading or trailing
//! `:`) are ignored silently. Every entry must be absolute (its first byte is `/`).
//!
//! Inside an entry:
//! - `*` matches any run of characters within one path component (possibly none);
//! - `?` matches exactly one character within a component;
//! - `[...]` matches one character from a set: single characters and ranges `a-z`, negated
//!   with a leading `!` or `^`; a `]` right after the `[` (or after the negation) is a member
//!   (`[]a]`, `[!]]`), a `-` first or last is a member; `\` escapes a member;
//! - `**` as a whole component matches zero or more whole components;
//! - `\c` is the literal character `c`; in particular `\:` is a literal colon and does not
//!   separate entries (a `:` is a separator everywhere else, even inside `[...]`: write
//!   `[\:]`); `\/` is the same as `/` (a component can never contain a slash).
//!
//! None of the wildcards treat a leading `.` specially: `/data/*` matches `/data/.hidden`.
//! Matching is case-sensitive. A "character" for `?` and `[...]` is one UTF-8 encoded code
//! point, or a single byte where the name is not valid UTF-8, so `?` matches `é` as well as
//! a lone byte `0xE9`.
//!
//! `*` glued to other characters, including `**` that is not a whole component (`a**`, `***`),
//! is an ordinary within-component star: runs of `*` collapse to one.
//!
//! # Prefix semantics
//!
//! Every entry, glob or not, matches the path itself **or any path below something it
//! matches**, by whole components. So `/data` matches `/data` and `/data/x` but never
//! `/database`, `/data/run*` matches `/data/run7/shard0`, and `/data/*.bin` also matches
//! `/data/d.bin/f`. (Internally every entry ends with an implicit `/**`.) `/data/*` does not
//! match `/data` itself: the `*` needs a component.
//!
//! # Normalisation
//!
//! Entries are normalised lexically like paths: `//` collapses, trailing slashes go, `.` is
//! dropped and `..` removes the component before it (whatever it is, a glob included;
//! at the root it stays at the root). `/data/./x/../y` is `/data/y`.
//!
//! # Skipped entries
//!
//! A relative entry, or a malformed one (a `[` without its `]` in the same component, a
//! lone `\` at the end, a reversed range such as `[z-a]`), is skipped with one warning
//! naming the variable, the entry and the reason; the other entries still apply.
//!
//! # Cost
//!
//! Matching uses iterative backtracking with one resume point per level (components for
//! `**`, characters for `*`), so a match costs at most O(components x pattern components x
//! component length x pattern length): polynomial for any pattern, no recursion, no
//! allocation.

use std::fmt;

/// One element of a component pattern; each consumes exactly one character except `Star`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    /// A literal byte (multi-byte characters are a run of `Lit`s).
    Lit(u8),
    /// `?`: one character.
    Any,
    /// `*`: any run of characters within the component.
    Star,
    /// `[...]`: one character in (or, negated, not in) the inclusive code point ranges.
    Class { negated: bool, ranges: Box<[(u32, u32)]> },
}

/// One component of a compiled entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Comp {
    /// A component without wildcards, compared byte for byte.
    Lit(Box<[u8]>),
    /// A component with wildcards.
    Glob(Box<[Tok]>),
    /// `**`: zero or more whole components.
    Globstar,
}

impl Comp {
    fn matches(&self, name: &[u8]) -> bool {
        match self {
            Comp::Lit(l) => **l == *name,
            Comp::Glob(toks) => glob_component(toks, name),
            Comp::Globstar => true,
        }
    }
}

/// A compiled entry and the text it came from.
#[derive(Clone)]
struct Entry {
    text: String,
    comps: Box<[Comp]>,
}

/// A compiled PATHS or EXCLUDE list.
///
/// Built once at start-up (allocation is fine there); [`PatternSet::matches`] and
/// [`PatternSet::first_match`] then run inside `open()` without allocating.
#[derive(Clone, Default)]
pub struct PatternSet {
    entries: Vec<Entry>,
}

impl fmt::Debug for PatternSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| &e.text)).finish()
    }
}

impl PatternSet {
    /// Parse a colon-separated spec. Returns the set and one warning message per skipped
    /// entry (the message names the variable, the entry and why, e.g.
    /// "S3DLIO_DIRECT_PATHS entry 'data/x' is not absolute; skipped"). `var_name` is only
    /// used in those messages.
    pub fn parse(var_name: &str, spec: &str) -> (PatternSet, Vec<String>) {
        Self::parse_bytes(var_name, spec.as_bytes())
    }

    /// [`PatternSet::parse`] over raw bytes, for environment values that are not UTF-8
    /// (file names need not be). Entry texts reported by [`PatternSet::first_match`] and in
    /// warnings are converted lossily; the matching itself uses the exact bytes.
    pub fn parse_bytes(var_name: &str, spec: &[u8]) -> (PatternSet, Vec<String>) {
        let mut entries = Vec::new();
        let mut warnings = Vec::new();
        for raw in split_list(spec) {
            if raw.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(raw).into_owned();
            match compile_entry(raw) {
                Ok(comps) => entries.push(Entry { text, comps: comps.into_boxed_slice() }),
                Err(why) => warnings.push(format!("{var_name} entry '{text}' {why}; skipped")),
            }
        }
        (PatternSet { entries }, warnings)
    }

    /// True when no usable entry was parsed (the spec was unset, empty, or all skipped).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any entry matches `path`. `path` must be absolute and already normalised
    /// (see [`normalize_into`]); a relative path never matches. Does not allocate: it runs
    /// inside `open()`.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.first_match(path).is_some()
    }

    /// The original text of the first entry that matches `path`, for diagnostics (`probe`,
    /// debug logs). Same contract as [`PatternSet::matches`].
    pub fn first_match(&self, path: &[u8]) -> Option<&str> {
        self.entries.iter().find(|e| match_entry(&e.comps, path)).map(|e| e.text.as_str())
    }

    /// Where each entry's matches can be, in order, for a caller that looks for files an
    /// entry matches (the command warns about entries that match nothing that exists).
    pub fn roots(&self) -> Vec<EntryRoot> {
        self.entries
            .iter()
            .map(|e| {
                let lits = e.comps.iter().take_while(|c| matches!(c, Comp::Lit(_)));
                let mut root = Vec::new();
                for c in lits.clone() {
                    if let Comp::Lit(l) = c {
                        root.push(b'/');
                        root.extend_from_slice(l);
                    }
                }
                if root.is_empty() {
                    root.push(b'/');
                }
                // Every entry ends with the implicit `**` (it matches a whole subtree): only
                // an earlier one makes the depth unbounded.
                let rest = &e.comps[lits.count()..e.comps.len() - 1];
                let depth = (!rest.contains(&Comp::Globstar)).then_some(rest.len());
                EntryRoot { text: e.text.clone(), root, depth }
            })
            .collect()
    }

    /// Whether entry `index` (as [`PatternSet::roots`] numbers them) matches `path`. Same
    /// contract as [`PatternSet::matches`].
    pub fn entry_matches(&self, index: usize, path: &[u8]) -> bool {
        self.entries.get(index).is_some_and(|e| match_entry(&e.comps, path))
    }
}

/// Where the matches of one entry can be: `root` (its leading components without wildcards,
/// normalised) or below it, at most `depth` components down; `None`: any depth (an inner
/// `**`). A literal entry has depth 0: `root` itself, and so everything under it, matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRoot {
    /// The entry as written.
    pub text: String,
    /// The directory (or file) every match is, or lies under.
    pub root: Vec<u8>,
    /// How many components below `root` the wildcards reach.
    pub depth: Option<usize>,
}

/// Split a spec at unescaped colons. The backslash stays in the entry (the compiler
/// interprets it); a `\` right before `:` keeps that colon inside the entry.
pub fn split_list(spec: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut i = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < spec.len() {
            match spec[i] {
                b'\\' => i += 2,
                b':' => {
                    let e = &spec[start..i];
                    i += 1;
                    start = i;
                    return Some(e);
                }
                _ => i += 1,
            }
        }
        done = true;
        Some(&spec[start.min(spec.len())..])
    })
}

/// Compile one non-empty entry into normalised components ending with a `Globstar`.
/// The error is the reason, phrased to follow "entry '...' ".
fn compile_entry(e: &[u8]) -> Result<Vec<Comp>, String> {
    if e.first() != Some(&b'/') {
        return Err("is not absolute".to_string());
    }
    let mut comps: Vec<Comp> = Vec::new();
    let mut toks: Vec<Tok> = Vec::new();
    // Raw text of the current component, to recognise an unescaped `**`.
    let mut raw_start = 0;
    let mut i = 0;
    while i < e.len() {
        match e[i] {
            b'/' => {
                finish_component(&mut comps, &mut toks, &e[raw_start..i]);
                i += 1;
                raw_start = i;
            }
            b'\\' => {
                let Some(&c) = e.get(i + 1) else {
                    return Err("ends with a lone '\\'".to_string());
                };
                if c == b'/' {
                    finish_component(&mut comps, &mut toks, &e[raw_start..i]);
                    raw_start = i + 2;
                } else {
                    toks.push(Tok::Lit(c));
                }
                i += 2;
            }
            b'*' => {
                if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
                i += 1;
            }
            b'?' => {
                toks.push(Tok::Any);
                i += 1;
            }
            b'[' => {
                let (tok, next) = parse_class(e, i)?;
                toks.push(tok);
                i = next;
            }
            c => {
                toks.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    finish_component(&mut comps, &mut toks, &e[raw_start..]);
    // Adjacent globstars are equivalent to one; then the implicit trailing `/**`.
    comps.dedup_by(|a, b| *a == Comp::Globstar && *b == Comp::Globstar);
    if comps.last() != Some(&Comp::Globstar) {
        comps.push(Comp::Globstar);
    }
    Ok(comps)
}

/// End the current component: empty ones vanish, `.` is dropped, `..` pops, `**` (written
/// exactly so) is a globstar.
fn finish_component(comps: &mut Vec<Comp>, toks: &mut Vec<Tok>, raw: &[u8]) {
    let t = std::mem::take(toks);
    if raw.is_empty() || t.is_empty() {
        return;
    }
    if raw == b"**" {
        comps.push(Comp::Globstar);
        return;
    }
    if t.iter().all(|t| matches!(t, Tok::Lit(_))) {
        let lit: Vec<u8> = t.iter().map(|t| if let Tok::Lit(b) = t { *b } else { 0 }).collect();
        match lit.as_slice() {
            b"." => {}
            b".." => {
                comps.pop();
            }
            _ => comps.push(Comp::Lit(lit.into_boxed_slice())),
        }
        return;
    }
    comps.push(Comp::Glob(t.into_boxed_slice()));
}

/// Parse the bracket expression whose `[` is at `e[open]`. Returns the token and the index
/// just past its `]`.
fn parse_class(e: &[u8], open: usize) -> Result<(Tok, usize), String> {
    let unterminated = || "has a '[' without a closing ']' in the same component".to_string();
    let mut j = open + 1;
    let negated = matches!(e.get(j), Some(b'!' | b'^'));
    if negated {
        j += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        match e.get(j) {
            None | Some(b'/') => return Err(unterminated()),
            Some(b']') if !first => break,
            _ => {}
        }
        first = false;
        let lo_at = j;
        let (lo, n) = class_char(e, j).ok_or_else(unterminated)?;
        j += n;
        // A range needs a `-` followed by something other than the closing `]`.
        let is_range = e.get(j) == Some(&b'-') && !matches!(e.get(j + 1), None | Some(b']'));
        if is_range {
            let (hi, n) = class_char(e, j + 1).ok_or_else(unterminated)?;
            j += 1 + n;
            if hi < lo {
                return Err(format!("has a reversed range '{}' in '[...]'", String::from_utf8_lossy(&e[lo_at..j])));
            }
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
    Ok((Tok::Class { negated, ranges: ranges.into_boxed_slice() }, j + 1))
}

/// One member character of a class at `e[j]`: `\` escapes; an unescaped `/` ends the
/// component (so the class is unterminated). Returns the code point and bytes consumed.
fn class_char(e: &[u8], j: usize) -> Option<(u32, usize)> {
    match e.get(j)? {
        b'/' => None,
        b'\\' => {
            if j + 1 >= e.len() {
                return None;
            }
            let (c, n) = decode(e, j + 1);
            Some((c, n + 1))
        }
        _ => Some(decode(e, j)),
    }
}

/// Decode one character at `s[i]` (`i < s.len()`): a valid UTF-8 sequence gives its code
/// point; any other byte `b` stands alone as `0xDC00 | b` (a surrogate, so it can never equal
/// a real character). Returns the character and its length in bytes.
fn decode(s: &[u8], i: usize) -> (u32, usize) {
    let b0 = s[i];
    let n = match b0 {
        0x00..=0x7F => return (u32::from(b0), 1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    };
    if n > 0 && i + n <= s.len() {
        if let Ok(st) = std::str::from_utf8(&s[i..i + n]) {
            if let Some(c) = st.chars().next() {
                return (u32::from(c), n);
            }
        }
    }
    (0xDC00 | u32::from(b0), 1)
}

/// Match one component name against a component pattern. Classic wildcard matching with a
/// single resume point: on a mismatch, the most recent `*` takes one more character. This is
/// complete because each later `*` can absorb anything an earlier one would have.
fn glob_component(toks: &[Tok], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    // (token index after the last `*`, position in `s` that `*` currently stops at)
    let mut resume: Option<(usize, usize)> = None;
    loop {
        match toks.get(pi) {
            Some(Tok::Star) => {
                if pi + 1 == toks.len() {
                    return true;
                }
                resume = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some(Tok::Lit(b)) => {
                if s.get(si) == Some(b) {
                    pi += 1;
                    si += 1;
                    continue;
                }
            }
            Some(Tok::Any) => {
                if si < s.len() {
                    si += decode(s, si).1;
                    pi += 1;
                    continue;
                }
            }
            Some(Tok::Class { negated, ranges }) => {
                if si < s.len() {
                    let (c, n) = decode(s, si);
                    let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                    if inside != *negated {
                        si += n;
                        pi += 1;
                        continue;
                    }
                }
            }
            None => {
                if si == s.len() {
                    return true;
                }
            }
        }
        match resume {
            Some((rp, rs)) if rs < s.len() => {
                let next = rs + decode(s, rs).1;
                resume = Some((rp, next));
                pi = rp;
                si = next;
            }
            _ => return false,
        }
    }
}

/// The next non-empty component of `path` at or after byte `pos`, as `[start, end)`.
fn next_comp(path: &[u8], mut pos: usize) -> Option<(usize, usize)> {
    while pos < path.len() && path[pos] == b'/' {
        pos += 1;
    }
    if pos >= path.len() {
        return None;
    }
    let end = path[pos..].iter().position(|&b| b == b'/').map_or(path.len(), |k| pos + k);
    Some((pos, end))
}

/// Match an absolute path against compiled components. Same single-resume-point scheme as
/// [`glob_component`], one level up: `**` plays `*`, components play characters.
fn match_entry(comps: &[Comp], path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let (mut pi, mut pos) = (0usize, 0usize);
    // (pattern index after the last `**`, path position that `**` currently stops at)
    let mut resume: Option<(usize, usize)> = None;
    loop {
        let cur = next_comp(path, pos);
        match comps.get(pi) {
            Some(Comp::Globstar) => {
                if pi + 1 == comps.len() {
                    return true;
                }
                resume = Some((pi + 1, pos));
                pi += 1;
                continue;
            }
            Some(c) => {
                if let Some((s, e)) = cur {
                    if c.matches(&path[s..e]) {
                        pi += 1;
                        pos = e;
                        continue;
                    }
                }
            }
            None => {
                if cur.is_none() {
                    return true;
                }
            }
        }
        match resume {
            Some((rp, rpos)) => match next_comp(path, rpos) {
                Some((_, e)) => {
                    resume = Some((rp, e));
                    pi = rp;
                    pos = e;
                }
                None => return false,
            },
            None => return false,
        }
    }
}

/// Lexically normalise `path` into `out`: if `path` is relative, it is joined to `base`
/// (an absolute directory, typically the cwd or an `openat` dirfd's path); `.`, `..` and
/// `//` are resolved lexically (`..` at the root stays at the root; symlinks are not
/// consulted, matching what the program spelled); no trailing slash except for `/` itself.
///
/// Returns the length written, or `None` if `out` is too small, `path` is empty, or `path`
/// is relative and `base` is empty or not absolute. Does not allocate: callers pass a stack
/// buffer of 4096+ bytes.
pub fn normalize_into(base: &[u8], path: &[u8], out: &mut [u8]) -> Option<usize> {
    if path.is_empty() || out.is_empty() {
        return None;
    }
    out[0] = b'/';
    let mut len = 1;
    if path[0] != b'/' {
        if base.first() != Some(&b'/') {
            return None;
        }
        len = push_components(base, out, len)?;
    }
    push_components(path, out, len)
}

/// Append `src`'s components to the normalised absolute path `out[..len]`.
fn push_components(src: &[u8], out: &mut [u8], mut len: usize) -> Option<usize> {
    let mut pos = 0;
    while let Some((s, e)) = next_comp(src, pos) {
        pos = e;
        let c = &src[s..e];
        match c {
            b"." => {}
            b".." => {
                if len > 1 {
                    let k = out[..len].iter().rposition(|&b| b == b'/').unwrap_or(0);
                    len = k.max(1);
                }
            }
            _ => {
                let sep = usize::from(len > 1);
                let end = len.checked_add(sep)?.checked_add(c.len())?;
                if end > out.len() {
                    return None;
                }
                if sep == 1 {
                    out[len] = b'/';
                }
                out[len + sep..end].copy_from_slice(c);
                len = end;
            }
        }
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "S3DLIO_DIRECT_PATHS";

    /// Parse a spec that must produce no warnings.
    fn set(spec: &str) -> PatternSet {
        let (s, w) = PatternSet::parse(V, spec);
        assert!(w.is_empty(), "unexpected warnings for {spec:?}: {w:?}");
        s
    }

    fn m(spec: &str, path: &str) -> bool {
        set(spec).matches(path.as_bytes())
    }

    fn norm(base: &str, path: &str) -> Option<String> {
        let mut buf = [0u8; 4096];
        normalize_into(base.as_bytes(), path.as_bytes(), &mut buf)
            .map(|n| String::from_utf8(buf[..n].to_vec()).expect("utf8"))
    }

    #[test]
    fn empty_and_unset_specs_are_empty() {
        for spec in ["", ":", "::", ":::"] {
            let s = set(spec);
            assert!(s.is_empty(), "{spec:?}");
            assert!(!s.matches(b"/"));
            assert!(!s.matches(b"/data"));
            assert_eq!(s.first_match(b"/data"), None);
        }
        assert!(PatternSet::default().is_empty());
    }

    #[test]
    fn plain_entry_is_prefix_of_whole_components() {
        assert!(m("/data", "/data"));
        assert!(m("/data", "/data/x"));
        assert!(m("/data", "/data/x/y/z.bin"));
        assert!(!m("/data", "/database"));
        assert!(!m("/data", "/dat"));
        assert!(!m("/data", "/"));
        assert!(!m("/data", "/other/data"));
        assert!(m("/data/sub", "/data/sub/f"));
        assert!(!m("/data/sub", "/data/subway"));
        assert!(!m("/data/sub", "/data"));
        // Case-sensitive.
        assert!(!m("/data", "/Data"));
    }

    #[test]
    fn root_entry_matches_everything() {
        assert!(m("/", "/"));
        assert!(m("/", "/anything/at/all"));
        assert!(m("/**", "/"));
        assert!(m("/**", "/a/b/c"));
        assert!(m("//", "/x"));
    }

    #[test]
    fn trailing_slashes_and_duplicate_slashes_are_ignored() {
        assert!(m("/data/", "/data"));
        assert!(m("/data/", "/data/x"));
        assert!(!m("/data/", "/database"));
        assert!(m("/data///", "/data/x"));
        assert!(m("//data//sub/", "/data/sub/f"));
        assert!(!m("/data//", "/database"));
    }

    #[test]
    fn empty_entries_are_ignored_without_warning() {
        let s = set("::/a::/b:");
        assert!(s.matches(b"/a/x"));
        assert!(s.matches(b"/b"));
        assert!(!s.matches(b"/c"));
    }

    #[test]
    fn star_stays_within_one_component() {
        assert!(m("/data/*.bin", "/data/x.bin"));
        assert!(m("/data/*.bin", "/data/.bin"));
        assert!(!m("/data/*.bin", "/data/x.bim"));
        assert!(!m("/data/*.bin", "/data/sub/x.bin"));
        assert!(m("/data/*/x", "/data/a/x"));
        assert!(!m("/data/*/x", "/data/a/b/x"));
        assert!(!m("/data/*/x", "/data/x"));
        assert!(m("/*", "/etc"));
        assert!(m("/d*a", "/da"));
        assert!(m("/d*a", "/dxxxa"));
        assert!(!m("/d*a", "/dxxxb"));
        assert!(m("/*a*b*", "/xaybz"));
        assert!(!m("/*a*b*", "/xbya"));
    }

    #[test]
    fn star_needs_a_component() {
        assert!(!m("/data/*", "/data"));
        assert!(m("/data/*", "/data/x"));
        assert!(m("/data/*", "/data/x/y"));
    }

    #[test]
    fn wildcards_match_dotfiles() {
        assert!(m("/data/*", "/data/.hidden"));
        assert!(m("/data/?hidden", "/data/.hidden"));
        assert!(m("/data/[.]x", "/data/.x"));
        assert!(m("/data/[!a]x", "/data/.x"));
        assert!(m("/data/**/f", "/data/.git/f"));
        assert!(m("/data/*/f", "/data/.cache/f"));
        assert!(m("/.*", "/.profile"));
    }

    #[test]
    fn question_mark_is_one_character() {
        assert!(m("/f?", "/f1"));
        assert!(!m("/f?", "/f"));
        assert!(!m("/f?", "/f12"));
        assert!(m("/f??", "/f12"));
        assert!(!m("/a?b", "/a/b"));
    }

    #[test]
    fn classes() {
        assert!(m("/f[abc]", "/fa"));
        assert!(m("/f[abc]", "/fc"));
        assert!(!m("/f[abc]", "/fd"));
        assert!(!m("/f[abc]", "/f"));
        // Ranges.
        assert!(m("/f[0-9]", "/f5"));
        assert!(!m("/f[0-9]", "/fa"));
        assert!(m("/f[a-cx-z]", "/fy"));
        assert!(!m("/f[a-cx-z]", "/fm"));
        // Negation with ! and ^.
        assert!(m("/f[!a]", "/fb"));
        assert!(!m("/f[!a]", "/fa"));
        assert!(m("/f[^a]", "/fb"));
        assert!(!m("/f[^a]", "/fa"));
        assert!(!m("/f[!0-9]", "/f3"));
        assert!(m("/f[!0-9]", "/fx"));
        // `]` first is a member.
        assert!(m("/f[]a]", "/f]"));
        assert!(m("/f[]a]", "/fa"));
        assert!(!m("/f[]a]", "/fb"));
        assert!(m("/f[!]]", "/fa"));
        assert!(!m("/f[!]]", "/f]"));
        assert!(m("/f[^]a]", "/fb"));
        assert!(!m("/f[^]a]", "/f]"));
        // `-` first or last is a member.
        assert!(m("/f[-a]", "/f-"));
        assert!(m("/f[a-]", "/f-"));
        assert!(m("/f[a-]", "/fa"));
        assert!(!m("/f[a-]", "/fb"));
        // `!` not first is a member.
        assert!(m("/f[a!]", "/f!"));
        // Escapes inside a class.
        assert!(m("/f[\\]]", "/f]"));
        assert!(m("/f[\\-a]", "/f-"));
        assert!(m("/f[\\:]", "/f:"));
        // Glob chars are literal inside a class.
        assert!(m("/f[*?]", "/f*"));
        assert!(m("/f[*?]", "/f?"));
        assert!(!m("/f[*?]", "/fx"));
        // A class plus a star.
        assert!(m("/run[0-9]*", "/run1_final/x"));
    }

    #[test]
    fn escapes() {
        assert!(m("/a\\*b", "/a*b"));
        assert!(!m("/a\\*b", "/axb"));
        assert!(m("/a\\?b", "/a?b"));
        assert!(!m("/a\\?b", "/axb"));
        assert!(m("/a\\[b", "/a[b"));
        assert!(m("/a\\\\b", "/a\\b"));
        assert!(m("/\\a", "/a"));
        // Escaped `**` is literal.
        assert!(m("/x/\\*\\*/y", "/x/**/y"));
        assert!(!m("/x/\\*\\*/y", "/x/a/y"));
        // `\/` is a separator.
        assert!(m("/x\\/y", "/x/y"));
    }

    #[test]
    fn escaped_colon_is_literal_not_separator() {
        let s = set("/a\\:b:/c");
        assert!(s.matches(b"/a:b"));
        assert!(s.matches(b"/a:b/f"));
        assert!(!s.matches(b"/a"));
        assert!(!s.matches(b"/b"));
        assert!(s.matches(b"/c/x"));
        assert_eq!(s.first_match(b"/a:b"), Some("/a\\:b"));
    }

    #[test]
    fn globstar_at_start_middle_end() {
        // Start.
        assert!(m("/**/x.bin", "/x.bin"));
        assert!(m("/**/x.bin", "/a/b/x.bin"));
        assert!(!m("/**/x.bin", "/a/b/y.bin"));
        // Middle: zero or more components.
        assert!(m("/data/**/x", "/data/x"));
        assert!(m("/data/**/x", "/data/a/x"));
        assert!(m("/data/**/x", "/data/a/b/c/x"));
        assert!(!m("/data/**/x", "/data/a/b/c/y"));
        assert!(!m("/data/**/x", "/other/x"));
        assert!(m("/data/**/*.npy", "/data/train/shard/0001.npy"));
        assert!(!m("/data/**/*.npy", "/data/train/shard/0001.npz"));
        // End.
        assert!(m("/data/**", "/data"));
        assert!(m("/data/**", "/data/a/b"));
        assert!(!m("/data/**", "/database"));
        // Several.
        assert!(m("/**/a/**/b", "/x/a/y/z/b"));
        assert!(m("/**/a/**/b", "/a/b"));
        assert!(!m("/**/a/**/b", "/b/a"));
        assert!(m("/a/**/**/x", "/a/x"));
        assert!(m("/a/**/**/x", "/a/1/2/3/x"));
    }

    #[test]
    fn glued_double_star_is_a_plain_star() {
        // `a**` is `a*`: within one component.
        assert!(m("/d/a**", "/d/abc"));
        assert!(m("/d/a**/f", "/d/abc/f"));
        assert!(!m("/d/a**/f", "/d/abc/x/f"));
        assert!(m("/d/**a", "/d/xa"));
        assert!(!m("/d/**a/f", "/d/x/ya/f"));
        // `***` is not a globstar either.
        assert!(m("/d/***/f", "/d/x/f"));
        assert!(!m("/d/***/f", "/d/f"));
        assert!(!m("/d/***/f", "/d/x/y/f"));
    }

    #[test]
    fn globs_also_match_below_what_they_match() {
        assert!(m("/data/*.bin", "/data/d.bin/f"));
        assert!(m("/data/run*", "/data/run7"));
        assert!(m("/data/run*", "/data/run7/shard0/x"));
        assert!(!m("/data/run*", "/data/walk7/x"));
        assert!(m("/data/**/x", "/data/a/x/deeper"));
        assert!(m("/d/f?", "/d/f1/g"));
    }

    #[test]
    fn entries_are_normalised() {
        assert!(m("/data/./x/../y", "/data/y"));
        assert!(m("/data/./x/../y", "/data/y/z"));
        assert!(!m("/data/./x/../y", "/data/x/y"));
        assert!(!m("/data/./x/../y", "/data/x"));
        assert!(m("/../../data", "/data/f"));
        assert!(m("/data/*/..", "/data/f"));
        assert!(m("/a/./b/.", "/a/b"));
    }

    #[test]
    fn relative_entries_warn_once_each_and_others_apply() {
        let (s, w) = PatternSet::parse(V, "data/x:/ok:./rel:~/home");
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(w[0], "S3DLIO_DIRECT_PATHS entry 'data/x' is not absolute; skipped");
        assert!(w[1].contains("'./rel'") && w[1].contains("not absolute"));
        assert!(w[2].contains("'~/home'"));
        assert!(s.matches(b"/ok/f"));
        assert!(!s.matches(b"/data/x"));
        assert!(!s.is_empty());
    }

    #[test]
    fn malformed_entries_warn_once_each_and_others_apply() {
        let spec = "/a[b:/good:/c/d\\:/e[z-a]:/f[/g]:/h[!:/also/good";
        let (s, w) = PatternSet::parse("S3DLIO_DIRECT_EXCLUDE", spec);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w.iter().all(|x| x.starts_with("S3DLIO_DIRECT_EXCLUDE entry '")));
        assert!(w.iter().all(|x| x.ends_with("; skipped")));
        assert!(w[0].contains("'/a[b'") && w[0].contains("'['"));
        assert!(w[1].contains("'/c/d\\:/e[z-a]'"), "{}", w[1]);
        assert!(w[1].contains("'z-a'"), "{}", w[1]);
        assert!(w[2].contains("'/f[/g]'"));
        assert!(w[3].contains("'/h[!'"));
        assert!(s.matches(b"/good/x"));
        assert!(s.matches(b"/also/good"));
        assert!(!s.matches(b"/a[b"));
    }

    #[test]
    fn lone_trailing_backslash_is_malformed() {
        let (s, w) = PatternSet::parse(V, "/ok:/bad\\");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("'/bad\\'") && w[0].contains("lone"));
        assert!(s.matches(b"/ok"));
        let (s, w) = PatternSet::parse(V, "/bad\\");
        assert_eq!(w.len(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn unterminated_class_variants() {
        for bad in ["/x[", "/x[]", "/x[!]", "/x[a", "/x[a/b]", "/x[\\"] {
            let (s, w) = PatternSet::parse(V, bad);
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
            assert!(s.is_empty(), "{bad}");
        }
        // A `]` outside a class is literal.
        assert!(m("/x]", "/x]"));
    }

    #[test]
    fn first_match_reports_original_text_in_order() {
        let s = set("/data/**/*.bin:/data/:/x/./y");
        assert_eq!(s.first_match(b"/data/a.bin"), Some("/data/**/*.bin"));
        assert_eq!(s.first_match(b"/data/a.txt"), Some("/data/"));
        assert_eq!(s.first_match(b"/x/y/z"), Some("/x/./y"));
        assert_eq!(s.first_match(b"/z"), None);
    }

    #[test]
    fn relative_or_empty_paths_never_match() {
        let s = set("/");
        assert!(!s.matches(b""));
        assert!(!s.matches(b"data"));
    }

    #[test]
    fn non_utf8_bytes() {
        let (s, w) = PatternSet::parse_bytes(V, b"/d/\xff*:/e/a?b:/f/[\xe9\xfe]");
        assert!(w.is_empty(), "{w:?}");
        assert!(s.matches(b"/d/\xffabc"));
        assert!(!s.matches(b"/d/abc"));
        // `?` takes one lone invalid byte, or one whole UTF-8 character.
        assert!(s.matches(b"/e/a\x80b"));
        assert!(s.matches("/e/aéb".as_bytes()));
        assert!(s.matches("/e/a😀b".as_bytes()));
        assert!(!s.matches(b"/e/a\x80\x80b"));
        // Invalid bytes in a class match themselves only.
        assert!(s.matches(b"/f/\xe9"));
        assert!(s.matches(b"/f/\xfe"));
        assert!(!s.matches("/f/é".as_bytes()));
        assert!(s.first_match(b"/d/\xff").is_some_and(|t| t.starts_with("/d/")));
    }

    #[test]
    fn utf8_classes_and_stars() {
        assert!(m("/[éa]", "/é"));
        assert!(m("/[à-ï]", "/é"));
        assert!(!m("/[à-ï]", "/a"));
        assert!(!m("/*[!é]", "/é"));
        assert!(m("/*[!é]", "/éa"));
        assert!(m("/?", "/é"));
        assert!(!m("/??", "/é"));
    }

    #[test]
    fn pathological_globstars_stay_fast() {
        // A deep path (about 2000 components) against many globstars.
        let mut deep = Vec::new();
        for _ in 0..2000 {
            deep.extend_from_slice(b"/a");
        }
        let mut miss = deep.clone();
        miss.extend_from_slice(b"/y");
        let s = set("/a/**/**/**/**/x");
        assert!(!s.matches(&miss));
        let mut hit = deep.clone();
        hit.extend_from_slice(b"/x");
        assert!(s.matches(&hit));
        // Non-adjacent globstars cannot be collapsed.
        let s = set("/**/a/**/a/**/a/**/a/**/a/**/b/c");
        assert!(!s.matches(&miss));
        let mut hit = deep;
        hit.extend_from_slice(b"/b/c/d");
        assert!(s.matches(&hit));
    }

    #[test]
    fn pathological_stars_stay_fast() {
        let long = vec![b'a'; 4000];
        let mut path = b"/".to_vec();
        path.extend_from_slice(&long);
        let s = set("/*a*a*a*a*b");
        assert!(!s.matches(&path));
        path.push(b'b');
        assert!(s.matches(&path));
        let s = set("/*?*?*?*?*?*?*?*c");
        assert!(!s.matches(&path));
    }

    #[test]
    fn nonnormalised_path_components_are_skipped() {
        // Not part of the contract, but must not misbehave.
        assert!(m("/data/x", "//data//x/"));
    }

    #[test]
    fn normalize_absolute() {
        assert_eq!(norm("/cwd", "/").as_deref(), Some("/"));
        assert_eq!(norm("/cwd", "//").as_deref(), Some("/"));
        assert_eq!(norm("/cwd", "/data/").as_deref(), Some("/data"));
        assert_eq!(norm("/cwd", "/data/./x/../y").as_deref(), Some("/data/y"));
        assert_eq!(norm("/cwd", "//data///x//").as_deref(), Some("/data/x"));
        assert_eq!(norm("/cwd", "/..").as_deref(), Some("/"));
        assert_eq!(norm("/cwd", "/../../a/..").as_deref(), Some("/"));
        assert_eq!(norm("/cwd", "/a/b/../../c").as_deref(), Some("/c"));
        assert_eq!(norm("/cwd", "/a/...").as_deref(), Some("/a/..."));
        assert_eq!(norm("/cwd", "/a/.b/..c").as_deref(), Some("/a/.b/..c"));
        // base is ignored for absolute paths, even when empty or relative.
        assert_eq!(norm("", "/x").as_deref(), Some("/x"));
        assert_eq!(norm("rel", "/x").as_deref(), Some("/x"));
    }

    #[test]
    fn normalize_relative() {
        assert_eq!(norm("/cwd", "f").as_deref(), Some("/cwd/f"));
        assert_eq!(norm("/cwd/", "./f").as_deref(), Some("/cwd/f"));
        assert_eq!(norm("/cwd/sub", "../f").as_deref(), Some("/cwd/f"));
        assert_eq!(norm("/cwd", "../../../f").as_deref(), Some("/f"));
        assert_eq!(norm("/", "f").as_deref(), Some("/f"));
        assert_eq!(norm("/cwd", ".").as_deref(), Some("/cwd"));
        assert_eq!(norm("/cwd", "..").as_deref(), Some("/"));
        assert_eq!(norm("/a/./b/../c", "d//e/").as_deref(), Some("/a/c/d/e"));
    }

    #[test]
    fn normalize_errors() {
        assert_eq!(norm("/cwd", ""), None);
        assert_eq!(norm("", "f"), None);
        assert_eq!(norm("rel", "f"), None);
        let mut out = [0u8; 0];
        assert_eq!(normalize_into(b"/", b"/", &mut out), None);
    }

    #[test]
    fn normalize_buffer_limits() {
        let mut out = [0u8; 4];
        assert_eq!(normalize_into(b"/", b"/abc", &mut out), Some(4));
        assert_eq!(&out, b"/abc");
        assert_eq!(normalize_into(b"/", b"/abcd", &mut out), None);
        assert_eq!(normalize_into(b"/", b"/a/bc", &mut out), None);
        assert_eq!(normalize_into(b"/a", b"b", &mut out), Some(4));
        assert_eq!(&out, b"/a/b");
        // `..` can bring an intermediate result back under the limit only if it never
        // exceeded it: we stop at the first overflow.
        assert_eq!(normalize_into(b"/", b"/abcde/..", &mut out), None);
        let mut one = [0u8; 1];
        assert_eq!(normalize_into(b"/", b"/", &mut one), Some(1));
        assert_eq!(normalize_into(b"/", b"/..", &mut one), Some(1));
        // A full-size buffer and a long path.
        let long = format!("/{}", "x".repeat(4094));
        let mut big = [0u8; 4096];
        assert_eq!(normalize_into(b"/", long.as_bytes(), &mut big), Some(4095));
    }

    #[test]
    fn normalize_then_match_round_trip() {
        let s = set("/data");
        let mut buf = [0u8; 4096];
        let n = normalize_into(b"/data/sub", b"../x", &mut buf).expect("fits");
        assert!(s.matches(&buf[..n]));
        let n = normalize_into(b"/data", b"../database/x", &mut buf).expect("fits");
        assert!(!s.matches(&buf[..n]));
    }

    #[test]
    fn debug_lists_entry_texts() {
        let s = set("/a:/b/*");
        assert_eq!(format!("{s:?}"), r#"["/a", "/b/*"]"#);
    }

    #[test]
    fn entry_roots() {
        let (s, w) = PatternSet::parse("P", "/data:/a/./b/../c/*.npy:/x/**/y:/*:/lit\\*/z?:/");
        assert!(w.is_empty(), "{w:?}");
        let got: Vec<(String, Option<usize>)> =
            s.roots().into_iter().map(|r| (String::from_utf8(r.root).unwrap(), r.depth)).collect();
        let want =
            [("/data", Some(0)), ("/a/c", Some(1)), ("/x", None), ("/", Some(1)), ("/lit*", Some(1)), ("/", Some(0))];
        let want: Vec<(String, Option<usize>)> = want.iter().map(|(r, d)| (r.to_string(), *d)).collect();
        assert_eq!(got, want);
        assert_eq!(s.roots()[1].text, "/a/./b/../c/*.npy");
        assert!(s.entry_matches(1, b"/a/c/t.npy"));
        assert!(!s.entry_matches(0, b"/a/c/t.npy"));
        assert!(!s.entry_matches(9, b"/data"));
    }
}
