//! Sanitizer runtimes (ASan, TSan, UBSan, HWASan, LSan) and `LD_PRELOAD`: `run` keeps them in
//! front of the library, whether the user preloads them or CMD links them (its ELF
//! `DT_NEEDED`), since ASan aborts ("ASan runtime does not come first") when another object
//! is loaded before its runtime.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// True if `name` (a path or a bare library name) is a sanitizer runtime: GCC's
/// `libasan.so.8` and the like, clang's `libclang_rt.asan-x86_64.so` and the like.
pub fn is_runtime(name: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 10] = [
        b"libasan.",
        b"libtsan.",
        b"libubsan.",
        b"libhwasan.",
        b"liblsan.",
        b"libclang_rt.asan",
        b"libclang_rt.tsan",
        b"libclang_rt.ubsan",
        b"libclang_rt.hwasan",
        b"libclang_rt.lsan",
    ];
    let base = base_name(name);
    PREFIXES.iter().any(|p| base.starts_with(p)) && base.windows(3).any(|w| w == b".so")
}

fn base_name(name: &[u8]) -> &[u8] {
    name.rsplit(|&b| b == b'/').next().unwrap_or(name)
}

/// The file exec would run for `cmd`, as `execvp` finds it: a name with a slash as it is,
/// otherwise the first executable regular file of that name in `path` (the default search
/// path of glibc when `PATH` is unset).
pub fn resolve(cmd: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    if cmd.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(cmd));
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
    path.split(|&b| b == b':').find_map(|dir| {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) };
        let cand = dir.join(cmd);
        let meta = std::fs::metadata(&cand).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(cand)
    })
}

/// The `DT_NEEDED` entries of an ELF file (either class and byte order): empty for anything
/// else (a script, a static program, a file that cannot be read). Reads the headers, the
/// dynamic segment and its string table, not the whole file.
pub fn needed(path: &Path) -> Vec<Vec<u8>> {
    File::open(path).ok().and_then(|f| dynamic_needed(&f)).unwrap_or_default()
}

struct Elf<'a> {
    f: &'a File,
    wide: bool,
    big: bool,
}

impl Elf<'_> {
    fn read(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        let mut b = vec![0; len];
        self.f.read_exact_at(&mut b, off).ok()?;
        Some(b)
    }

    fn uint(&self, b: &[u8], at: usize, len: usize) -> Option<u64> {
        let s = b.get(at..at + len)?;
        Some(s.iter().enumerate().fold(0u64, |v, (i, &x)| {
            let shift = if self.big { 8 * (len - 1 - i) } else { 8 * i };
            v | (u64::from(x) << shift)
        }))
    }

    /// A word of the class: 8 bytes in a 64-bit file, 4 in a 32-bit one.
    fn word(&self, b: &[u8], at: usize) -> Option<u64> {
        self.uint(b, at, if self.wide { 8 } else { 4 })
    }
}

fn dynamic_needed(f: &File) -> Option<Vec<Vec<u8>>> {
    let mut ident = [0u8; 16];
    f.read_exact_at(&mut ident, 0).ok()?;
    if &ident[..4] != b"\x7fELF" {
        return None;
    }
    let e = Elf { f, wide: ident[4] == 2, big: ident[5] == 2 };
    let hdr = e.read(0, if e.wide { 64 } else { 52 })?;
    let (phoff, phentsize, phnum) = if e.wide {
        (e.uint(&hdr, 32, 8)?, e.uint(&hdr, 54, 2)?, e.uint(&hdr, 56, 2)?)
    } else {
        (e.uint(&hdr, 28, 4)?, e.uint(&hdr, 42, 2)?, e.uint(&hdr, 44, 2)?)
    };
    let phdrs = e.read(phoff, usize::try_from(phentsize * phnum).ok()?)?;
    // (p_type, p_offset, p_vaddr, p_filesz) of each program header
    let segments: Vec<(u64, u64, u64, u64)> = (0..phnum as usize)
        .filter_map(|i| {
            let at = i * phentsize as usize;
            if e.wide {
                Some((
                    e.uint(&phdrs, at, 4)?,
                    e.word(&phdrs, at + 8)?,
                    e.word(&phdrs, at + 16)?,
                    e.word(&phdrs, at + 32)?,
                ))
            } else {
                Some((
                    e.uint(&phdrs, at, 4)?,
                    e.word(&phdrs, at + 4)?,
                    e.word(&phdrs, at + 8)?,
                    e.word(&phdrs, at + 16)?,
                ))
            }
        })
        .collect();
    const PT_LOAD: u64 = 1;
    const PT_DYNAMIC: u64 = 2;
    let &(_, dyn_off, _, dyn_size) = segments.iter().find(|s| s.0 == PT_DYNAMIC)?;
    let dynamic = e.read(dyn_off, usize::try_from(dyn_size.min(1 << 20)).ok()?)?;
    let entry = if e.wide { 16 } else { 8 };
    let (mut names, mut strtab, mut strsz) = (Vec::new(), None, None);
    for at in (0..dynamic.len() / entry).map(|i| i * entry) {
        let (tag, val) = (e.word(&dynamic, at)?, e.word(&dynamic, at + entry / 2)?);
        match tag {
            0 => break,
            1 => names.push(val),
            5 => strtab = Some(val),
            10 => strsz = Some(val),
            _ => {}
        }
    }
    let (strtab, strsz) = (strtab?, strsz?.min(1 << 20));
    // DT_STRTAB is an address: the loadable segment that holds it says where it is in the file
    let &(_, off, vaddr, _) = segments.iter().find(|s| s.0 == PT_LOAD && s.2 <= strtab && strtab < s.2 + s.3.max(1))?;
    let table = e.read(strtab - vaddr + off, usize::try_from(strsz).ok()?)?;
    Some(
        names
            .into_iter()
            .filter_map(|at| {
                let s = table.get(usize::try_from(at).ok()?..)?;
                Some(s[..s.iter().position(|&b| b == 0)?].to_vec())
            })
            .collect(),
    )
}

/// `LD_PRELOAD` for CMD: the sanitizer runtimes first (those the user preloads, in their
/// order, then those CMD links that the user does not preload, by the name CMD asks for,
/// which the loader looks up as it would for CMD), then the library, then the rest of what
/// the user preloads (jemalloc, a profiler: kept, in their order).
pub fn preload_value(lib: &OsStr, existing: Option<&OsStr>, linked: &[Vec<u8>]) -> OsString {
    let user: Vec<&[u8]> =
        existing.map_or(&b""[..], |e| e.as_bytes()).split(|b| b" :".contains(b)).filter(|e| !e.is_empty()).collect();
    let (runtimes, rest): (Vec<&[u8]>, Vec<&[u8]>) = user.into_iter().partition(|e| is_runtime(e));
    let mut order: Vec<&[u8]> = runtimes.clone();
    for l in linked.iter().filter(|l| is_runtime(l)) {
        if !runtimes.iter().any(|r| base_name(r) == base_name(l)) && !order.contains(&l.as_slice()) {
            order.push(l);
        }
    }
    order.push(lib.as_bytes());
    order.extend(rest);
    OsString::from_vec(order.join(&b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: &str = "/opt/lib/libs3dlio_direct.so";

    fn pre(existing: Option<&str>, linked: &[&str]) -> String {
        let linked: Vec<Vec<u8>> = linked.iter().map(|l| l.as_bytes().to_vec()).collect();
        preload_value(OsStr::new(LIB), existing.map(OsStr::new), &linked).into_string().unwrap()
    }

    #[test]
    fn runtimes_are_recognised() {
        for n in [
            "libasan.so.8",
            "/usr/lib/x86_64-linux-gnu/libtsan.so.2",
            "libubsan.so.1",
            "libhwasan.so.0",
            "liblsan.so.0",
            "libclang_rt.asan-x86_64.so",
            "/x/libclang_rt.ubsan_standalone-x86_64.so",
        ] {
            assert!(is_runtime(n.as_bytes()), "{n}");
        }
        for n in ["libc.so.6", "libasanx.so", "/x/libasan.a", "libjemalloc.so.2", "/libasan.so.8/libfoo.so"] {
            assert!(!is_runtime(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn the_library_goes_after_every_runtime_and_before_the_rest() {
        assert_eq!(pre(None, &[]), LIB);
        assert_eq!(pre(Some("  "), &[]), LIB);
        assert_eq!(pre(Some("/x/libjemalloc.so libfoo.so"), &[]), format!("{LIB}:/x/libjemalloc.so:libfoo.so"));
        assert_eq!(
            pre(Some("/x/libjemalloc.so:/usr/lib/libasan.so.8"), &[]),
            format!("/usr/lib/libasan.so.8:{LIB}:/x/libjemalloc.so")
        );
        assert_eq!(pre(None, &["libm.so.6", "libasan.so.8", "libc.so.6"]), format!("libasan.so.8:{LIB}"));
        // preloaded already (by path): not twice
        assert_eq!(pre(Some("/usr/lib/libasan.so.8"), &["libasan.so.8"]), format!("/usr/lib/libasan.so.8:{LIB}"));
        assert_eq!(
            pre(Some("libfoo.so libubsan.so.1"), &["libasan.so.8"]),
            format!("libubsan.so.1:libasan.so.8:{LIB}:libfoo.so")
        );
    }

    #[test]
    fn needed_of_this_test_program() {
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let n = needed(&me);
        assert!(n.iter().any(|l| l.starts_with(b"libc.so")), "{:?}", n);
        let script = std::env::temp_dir().join(format!("s3dlio-needed-{}", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(needed(&script).is_empty());
        std::fs::remove_file(&script).unwrap();
    }

    #[test]
    fn resolved_as_exec_would() {
        let dir = std::env::temp_dir().join(format!("s3dlio-resolve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("a/prog"), "").unwrap(); // not executable: skipped
        std::fs::write(dir.join("b/prog"), "").unwrap();
        std::fs::set_permissions(dir.join("b/prog"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = OsString::from(format!("{0}/a:{0}/b", dir.display()));
        assert_eq!(resolve(OsStr::new("prog"), Some(&path)), Some(dir.join("b/prog")));
        assert_eq!(resolve(OsStr::new("./x/prog"), Some(&path)), Some(PathBuf::from("./x/prog")));
        assert_eq!(resolve(OsStr::new("nothing"), Some(&path)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
