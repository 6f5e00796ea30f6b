//! stdio mode strings, parsed as glibc's `fopen` and `fdopen` parse them.

/// What a mode string asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// open(2) flags, as `fopen` would pass them.
    pub flags: i32,
    /// `a`: every write appends.
    pub append: bool,
    /// `+`: both directions.
    pub plus: bool,
    /// `m` on a read-only stream: glibc reads the file through a mapping of it.
    pub mapped: bool,
}

impl Mode {
    /// Parses a mode string the way glibc's `fopen` (`fdopen == false`) or `fdopen` does.
    /// `None` when glibc must answer itself: an invalid first letter (EINVAL) or a
    /// `,ccs=` wide-character stream.
    pub fn parse(mode: &[u8], fdopen: bool) -> Option<Mode> {
        let (mut flags, append) = match mode.first()? {
            b'r' => (libc::O_RDONLY, false),
            b'w' => (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, false),
            b'a' => (libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, true),
            _ => return None,
        };
        if !fdopen && mode.windows(5).any(|w| w == b",ccs=") {
            return None;
        }
        let mut plus = false;
        let mut m = false;
        // glibc looks at six more characters in fopen, four in fdopen (which stops at '+').
        for &c in mode.iter().skip(1).take(if fdopen { 4 } else { 6 }) {
            match c {
                0 => break,
                b'+' => {
                    plus = true;
                    flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
                    if fdopen {
                        break;
                    }
                }
                b'm' => m = true,
                b'x' if !fdopen => flags |= libc::O_EXCL,
                b'e' if !fdopen => flags |= libc::O_CLOEXEC,
                _ => {}
            }
        }
        let mapped = m && flags & libc::O_ACCMODE == libc::O_RDONLY;
        Some(Mode { flags, append, plus, mapped })
    }

    pub(super) fn reads(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_WRONLY
    }

    pub(super) fn writes(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    pub(super) fn cookie_mode(&self) -> &'static std::ffi::CStr {
        // fopencookie only tells directions and appending apart ("r+" and "w+" are alike).
        match (self.reads(), self.writes(), self.append) {
            (true, false, _) => c"r",
            (_, _, false) if !self.reads() => c"w",
            (_, _, true) if !self.reads() => c"a",
            (_, _, false) => c"r+",
            (_, _, true) => c"a+",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Option<Mode> {
        Mode::parse(s.as_bytes(), false)
    }

    #[test]
    fn fopen_modes_match_glibc() {
        let cases: &[(&str, i32, bool, bool)] = &[
            ("r", libc::O_RDONLY, false, false),
            ("rb", libc::O_RDONLY, false, false),
            ("r+", libc::O_RDWR, false, true),
            ("rb+", libc::O_RDWR, false, true),
            ("w", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, false, false),
            ("wx", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL, false, false),
            ("w+e", libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, false, true),
            ("a", libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, true, false),
            ("a+b", libc::O_RDWR | libc::O_CREAT | libc::O_APPEND, true, true),
            ("rbbbbbb+", libc::O_RDONLY, false, false), // beyond the six characters glibc reads
        ];
        for &(s, flags, append, plus) in cases {
            assert_eq!(m(s), Some(Mode { flags, append, plus, mapped: false }), "{s}");
        }
        // glibc maps read-only streams opened with m, in fopen and fdopen alike
        assert!(m("rm").unwrap().mapped && m("rbme").unwrap().mapped);
        assert!(!m("r+m").unwrap().mapped && !m("wm").unwrap().mapped);
        assert!(Mode::parse(b"rm", true).unwrap().mapped);
        assert_eq!(m("q"), None);
        assert_eq!(m(""), None);
        assert_eq!(m("r,ccs=UTF-8"), None);
        // fdopen ignores x and e, and stops at '+'
        let f = Mode::parse(b"wx+e", true).unwrap();
        assert_eq!(f.flags, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC);
        assert!(f.plus);
    }

    #[test]
    fn cookie_modes() {
        for (s, c) in [("r", "r"), ("rb+", "r+"), ("wx", "w"), ("w+", "r+"), ("ab", "a"), ("a+", "a+")] {
            assert_eq!(m(s).unwrap().cookie_mode().to_str().unwrap(), c, "{s}");
        }
    }
}
