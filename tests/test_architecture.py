"""Architecture checks: two rules of the workspace's shape that no ordinary test would notice
breaking.

1. No tokio in the preload library or the command. The engine (crates/engine) has no async
   dependency so that libs3dlio_direct.so, which is loaded into every program it runs under,
   stays small and fork-safe: an async runtime's threads and global state do not survive
   fork() and have no place in a library that runs inside someone else's process. The store
   API (crates/s3dlio) is the one crate allowed to bring tokio, and nothing the library or the
   command is built from may depend on it. Checked with `cargo tree` (normal and build edges;
   dev-dependencies do not ship), which names the path to tokio when it fails.

2. No import cycle between the modules of any crate. Two sibling modules that use each other
   cannot be read, tested or moved out of the crate one without the other, which is what made
   the engine hard to read and to split. The check is a small Rust reader written here (no
   parser dependency): each crate's src/ tree gives the module tree; `use crate::...`,
   `use super::...`, `use self::...` (grouped and nested braces too), `crate::x::y` paths in
   code and names brought in by a `use` give each module's references. A reference from a file
   of module M to module N is an edge between the two children of their nearest common
   ancestor that contain M and N: `engine::rw` using `crate::io` is the edge engine -> io,
   `engine::streams::cookie` using `crate::engine::fdops` is streams -> fdops. A module using
   its own ancestors (a child reaching its parent's shared state through `super::`) or its
   descendants is no edge. Comments, string literals and `#[cfg(test)]` items are removed
   before reading (tests may use anything; doc comments name paths in backticks). Not
   followed: re-exports (`pub use`) and glob imports (`use x::*`) -- a reference through
   either counts as a reference to the module written, not to where the item lives.

A failure lists each cycle with the file:line of every reference that makes up each of its
edges: those are the lines to change.
"""

from __future__ import annotations

import bisect
import re
import shutil
import subprocess
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

Module = tuple  # a module path: () is the crate root, ("engine", "rw") is engine::rw


def mod_name(m: Module) -> str:
    return "::".join(m) if m else "crate"


# =========================================================================== reading Rust

_CHAR_LIT = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F_]*\}|.)|[^\\'\n])'")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_RAW_OPEN = re.compile(r'(#*)"')


def _blank(s: str) -> str:
    """s with every character but newlines replaced by a space (offsets and lines are kept)."""
    return re.sub(r"[^\n]", " ", s)


def _end_of_quoted(src: str, i: int) -> int:
    """Index just past the closing quote of a "..." literal whose body starts at i."""
    while i < len(src):
        if src[i] == "\\":
            i += 2
        elif src[i] == '"':
            return i + 1
        else:
            i += 1
    return len(src)


def strip_comments_and_strings(src: str) -> str:
    """Comments (line, nested block, doc) and string/char literals (plain, byte, C, raw with
    any number of #) blanked out. Lifetimes and labels ('a) stay."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(_blank(src[i:j]))
            i = j
        elif c == '"':
            j = _end_of_quoted(src, i + 1)
            out.append(_blank(src[i:j]))
            i = j
        elif c == "'":
            m = _CHAR_LIT.match(src, i)
            j = m.end() if m else i + 1
            out.append(_blank(src[i:j]) if m else c)
            i = j
        elif c.isascii() and (c.isalpha() or c == "_"):
            word_end = _IDENT.match(src, i).end()
            word = src[i:word_end]
            end = None
            raw = _RAW_OPEN.match(src, word_end) if word in ("r", "br", "cr") else None
            if raw:  # r"..." r#"..."#: no escapes, ends at the quote followed by as many #
                close = '"' + raw.group(1)
                k = src.find(close, raw.end())
                end = n if k < 0 else k + len(close)
            elif word in ("b", "c") and src.startswith('"', word_end):
                end = _end_of_quoted(src, word_end + 1)
            elif word == "b" and _CHAR_LIT.match(src, word_end):
                end = _CHAR_LIT.match(src, word_end).end()
            if end is None:
                out.append(word)
                i = word_end
            else:
                out.append(_blank(src[i:end]))
                i = end
        else:
            out.append(c)
            i += 1
    return "".join(out)


_CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")
_MORE_ATTR = re.compile(r"\s*#\s*\[")
_VIS = r"(?:pub\s*(?:\([^)]*\))?\s*)?"
_USE_ITEM = re.compile(r"\s*" + _VIS + r"use\b")
_MOD_DECL = re.compile(r"\s*" + _VIS + r"mod\s+([A-Za-z_]\w*)\s*;")
_ITEM_KEYWORD = re.compile(
    r"\s*" + _VIS + r"(?:fn|mod|impl|struct|enum|union|trait|const|static|type|extern|unsafe|async|macro_rules)\b"
)
_OPEN = "([{"
_CLOSE = ")]}"


def _matching(text: str, i: int) -> int:
    """Index just past the bracket that closes the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] in _OPEN:
            depth += 1
        elif text[j] in _CLOSE:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def _item_end(text: str, i: int) -> int:
    """Index just past what an attribute at i applies to: an item ends at its `;` (`use a::{b};`,
    `mod x;`) or at the `}` that closes its body (`mod tests { }`, `fn f() { }`); anything else
    (a statement, a field, a match arm) also at a `,` of its own level. Never past the bracket
    that closes the block the attribute is in."""
    is_use = bool(_USE_ITEM.match(text, i))
    is_item = is_use or bool(_ITEM_KEYWORD.match(text, i))
    depth = 0
    for j in range(i, len(text)):
        ch = text[j]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                return j
            if depth == 0 and ch == "}" and not is_use:
                return j + 1
        elif depth == 0 and (ch == ";" or (ch == "," and not is_item)):
            return j + 1
    return len(text)


def strip_cfg_test(text: str) -> tuple[str, list[str]]:
    """text (already without comments and strings) with every #[cfg(test)] item blanked, and
    the names of the `#[cfg(test)] mod x;` declarations (their files are test-only)."""
    test_mods = []
    pos = 0
    while m := _CFG_TEST.search(text, pos):
        i = m.end()
        while a := _MORE_ATTR.match(text, i):  # further attributes of the same item
            i = _matching(text, a.end() - 1)
        if d := _MOD_DECL.match(text, i):
            test_mods.append(d.group(1))
        end = _item_end(text, i)
        text = text[: m.start()] + _blank(text[m.start() : end]) + text[end:]
        pos = end
    return text, test_mods


# =========================================================================== the module tree


@dataclass
class SourceFile:
    path: Path  # as given, for messages
    module: Module  # the module the file is
    lines: list[str]  # original text, for evidence
    code: str  # comments, strings and cfg(test) items blanked
    line_starts: list[int] = field(default_factory=list)
    # inline `mod x { ... }` blocks: (start, end, module), innermost last among overlapping
    scopes: list[tuple[int, int, Module]] = field(default_factory=list)

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.line_starts, offset)

    def module_at(self, offset: int) -> Module:
        best = self.module
        for start, end, mod in self.scopes:
            if start <= offset < end and len(mod) > len(best):
                best = mod
        return best


def file_module(src_dir: Path, path: Path) -> Module | None:
    """lib.rs/main.rs: the crate root; a.rs and a/mod.rs: a; a/b.rs: a::b."""
    parts = path.relative_to(src_dir).with_suffix("").parts
    if len(parts) == 1 and parts[0] in ("lib", "main"):
        return ()
    if parts[0] == "bin":  # src/bin/*: crates of their own
        return None
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


_INLINE_MOD = re.compile(r"(?<![\w$])mod\s+([A-Za-z_]\w*)\s*\{")


def read_crate(src_dir: Path, shown_as: Path | None = None) -> tuple[list[SourceFile], set[Module]]:
    """Every source file of the crate whose root is src_dir/lib.rs or main.rs, and the set of
    its modules (files plus inline `mod x { }` blocks), test-only ones left out."""
    roots = [p for p in ("lib.rs", "main.rs") if (src_dir / p).exists()]
    assert len(roots) == 1, f"{src_dir}: expected exactly one of lib.rs and main.rs, found {roots}"
    files, test_only = [], set()
    for path in sorted(src_dir.rglob("*.rs")):
        module = file_module(src_dir, path)
        if module is None:
            continue
        original = path.read_text()
        if re.search(r"#!\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", strip_comments_and_strings(original)):
            test_only.add(module)
            continue
        code, test_mods = strip_cfg_test(strip_comments_and_strings(original))
        test_only.update(module + (name,) for name in test_mods)
        f = SourceFile((shown_as or src_dir) / path.relative_to(src_dir), module, original.splitlines(), code)
        f.line_starts = [0] + [m.end() for m in re.finditer("\n", code)]
        # inline modules, outermost first, so nested ones extend their parent's path
        for m in _INLINE_MOD.finditer(code):
            body_end = _matching(code, m.end() - 1)
            f.scopes.append((m.end(), body_end, f.module_at(m.start()) + (m.group(1),)))
        files.append(f)
    files = [f for f in files if not any(f.module[: len(t)] == t for t in test_only)]
    modules = {f.module for f in files} | {s[2] for f in files for s in f.scopes}
    # a file a/b/c.rs with no a/b.rs still has the modules a and a::b on its way
    modules |= {m[:k] for m in list(modules) for k in range(len(m))}
    return files, modules


# =========================================================================== references


@dataclass(frozen=True)
class Reference:
    source: Module  # the module the reference is written in
    target: Module  # the deepest module the path names
    file: Path
    line: int
    text: str  # the source line, stripped

    def __str__(self):
        return f"{self.file}:{self.line}: {self.text}"


_USE = re.compile(r"(?<![\w$])use\b")
_USE_TOKEN = re.compile(r"\s*(::|[{},;*]|\$?[A-Za-z_]\w*|\S)")
_PATH = re.compile(r"(?<![\w$:])(\$?[A-Za-z_]\w*)((?:\s*::\s*\$?[A-Za-z_]\w*)+)")
_SEGMENT = re.compile(r"\$?[A-Za-z_]\w*")


class _Malformed(Exception):
    pass


def _use_tokens(code: str, start: int) -> tuple[list[tuple[str, int]], int]:
    """The tokens of the use tree after `use` at start, and the offset just past its `;`."""
    toks, i = [], start
    while m := _USE_TOKEN.match(code, i):
        i = m.end()
        if m.group(1) == ";":
            return toks, i
        toks.append((m.group(1), m.start(1)))
    raise _Malformed


def _use_leaves(toks, k=0, prefix=()):
    """Parses a use tree: returns ([(segments, alias, glob)], next index). segments is a tuple
    of (name, offset); `a::{self, b::c as d}` gives (a, self) and (a, b, c) aliased d."""
    segs = list(prefix)
    leaves = []
    while k < len(toks):
        tok = toks[k][0]
        if tok == "{":
            k += 1
            while toks[k][0] != "}":
                sub, k = _use_leaves(toks, k, segs)
                leaves += sub
                if toks[k][0] == ",":
                    k += 1
                elif toks[k][0] != "}":
                    raise _Malformed
            return leaves, k + 1
        if tok == "*":
            return [(tuple(segs), None, True)], k + 1
        if tok == "::":  # leading :: (an external crate) or between segments
            k += 1
            continue
        if not _SEGMENT.fullmatch(tok):
            raise _Malformed
        segs.append(toks[k])
        k += 1
        if k < len(toks) and toks[k][0] == "::":
            continue
        alias = None
        if k < len(toks) and toks[k][0] == "as":
            alias, k = toks[k + 1][0], k + 2
        return [(tuple(segs), alias, False)], k
    raise _Malformed


def _resolve(names, here: Module, modules: set[Module], aliases: dict[str, Module]):
    """The deepest module a path names, or None when it is not a path into this crate.
    Returns (module, whole): whole is True when every segment named a module."""
    first, rest = names[0], names[1:]
    if first in ("crate", "$crate"):
        cur = ()
    elif first == "self":
        cur = here
    elif first == "super":
        cur = here[:-1]
    elif here + (first,) in modules:  # a child module, named from its parent
        cur = here + (first,)
    elif first in aliases:  # a name a `use` brought in
        cur = aliases[first]
    else:
        return None, False
    for name in rest:
        if name == "super":
            cur = cur[:-1]
        elif name == "self":
            pass
        elif cur + (name,) in modules:
            cur = cur + (name,)
        else:
            return cur, False
    return cur, True


def references(files: list[SourceFile], modules: set[Module]) -> list[Reference]:
    """Every reference to a module of the crate, from `use` trees and from paths in code."""
    refs = []
    for f in files:
        uses = []  # (start, end, module, leaves)
        code = f.code
        for m in _USE.finditer(code):
            try:
                toks, end = _use_tokens(code, m.end())
                leaves, k = _use_leaves(toks)
                if k != len(toks):
                    raise _Malformed
            except (_Malformed, IndexError):
                continue  # not a use item we can read (a macro fragment): scanned as code below
            uses.append((m.start(), end, f.module_at(m.start()), leaves))

        # names that `use` lines bring in and that are modules, per module scope
        aliases = defaultdict(dict)
        for _, _, here, leaves in uses:
            for segs, alias, glob in leaves:
                names = [s[0] for s in segs]
                if glob or not names:
                    continue
                target, whole = _resolve(names, here, modules, {})
                if target is not None and whole:
                    name = alias or (names[-2] if names[-1] == "self" and len(names) > 1 else names[-1])
                    if name != "_":
                        aliases[here][name] = target

        def add(here, names, offset):
            target, _ = _resolve(names, here, modules, aliases[here])
            if target is not None:
                line = f.line_of(offset)
                refs.append(Reference(here, target, f.path, line, f.lines[line - 1].strip()))

        for start, end, here, leaves in uses:
            for segs, _alias, _glob in leaves:
                if segs:
                    add(here, [s[0] for s in segs], segs[-1][1])
            code = code[:start] + _blank(code[start:end]) + code[end:]
        for m in _PATH.finditer(code):
            names = [m.group(1)] + _SEGMENT.findall(m.group(2))
            add(f.module_at(m.start()), names, m.start())
    return refs


# =========================================================================== edges and cycles


def sibling_edges(refs: list[Reference]) -> dict[Module, dict[tuple[str, str], list[Reference]]]:
    """{parent: {(child a, child b): evidence}}: a file under parent::a refers to parent::b or
    to something under it. References to one's own ancestors or descendants are no edge."""
    edges = defaultdict(lambda: defaultdict(list))
    for r in refs:
        k = 0
        while k < min(len(r.source), len(r.target)) and r.source[k] == r.target[k]:
            k += 1
        if k == len(r.source) or k == len(r.target):
            continue
        edges[r.source[:k]][(r.source[k], r.target[k])].append(r)
    return edges


def strongly_connected(nodes, succ) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of the graph."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def _one_cycle(members: list[str], succ) -> list[str]:
    """A shortest cycle through the first member, inside the component (breadth-first)."""
    start = members[0]
    prev = {start: None}
    queue = [start]
    for v in queue:
        for w in sorted(succ.get(v, ())):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")


@dataclass
class Cycle:
    parent: Module
    members: list[str]  # the sibling modules of the strongly connected component
    path: list[str]  # one cycle through them, first == last
    edges: dict[tuple[str, str], list[Reference]]  # every edge inside the component, with evidence

    def report(self) -> str:
        p = (mod_name(self.parent) + "::") if self.parent else ""
        lines = [
            f"cycle among the children of {mod_name(self.parent)}: "
            + " -> ".join(p + m for m in self.path)
            + (f"  (component: {', '.join(self.members)})" if len(self.members) > len(self.path) - 1 else "")
        ]
        for (a, b), evidence in sorted(self.edges.items()):
            lines.append(f"  {p}{a} -> {p}{b}:")
            lines += [f"    {r}" for r in sorted(set(evidence), key=lambda r: (str(r.file), r.line))]
        return "\n".join(lines)


def find_cycles(refs: list[Reference]) -> list[Cycle]:
    cycles = []
    for parent, edges in sorted(sibling_edges(refs).items()):
        succ = defaultdict(set)
        for a, b in edges:
            succ[a].add(b)
        nodes = {n for e in edges for n in e}
        for comp in strongly_connected(nodes, succ):
            if len(comp) > 1:
                inside = {e: ev for e, ev in edges.items() if e[0] in comp and e[1] in comp}
                cycles.append(Cycle(parent, comp, _one_cycle(comp, succ), inside))
    return cycles


# =========================================================================== the workspace


def workspace_crates() -> list[tuple[str, Path]]:
    """(package name, member directory) of every workspace member, from the root Cargo.toml."""
    root = tomllib.loads((REPO / "Cargo.toml").read_text())
    out = []
    for member in root["workspace"]["members"]:
        d = (REPO / member).resolve()
        out.append((tomllib.loads((d / "Cargo.toml").read_text())["package"]["name"], d))
    return out


CRATES = workspace_crates()


def test_workspace_crates_are_all_found():
    """Guards the parametrization below: the four crates, each with its sources in src/."""
    names = {name for name, _ in CRATES}
    assert {"s3dlio-direct-preload", "s3dlio-engine", "s3dlio", "s3dlio-direct"} <= names, names
    for name, d in CRATES:
        assert any((d / "src" / root).exists() for root in ("lib.rs", "main.rs")), f"{name}: no src/lib.rs or src/main.rs"


@pytest.mark.parametrize("crate_dir", [d for _, d in CRATES], ids=[n for n, _ in CRATES])
def test_no_module_cycles(crate_dir: Path):
    src = crate_dir / "src"
    files, modules = read_crate(src, src.relative_to(REPO))
    assert files, f"{src}: no source files read"
    cycles = find_cycles(references(files, modules))
    assert not cycles, (
        f"{len(cycles)} import cycle(s) between sibling modules of {src.relative_to(REPO)}; "
        "break each by moving what both sides need down into a module of its own, or by "
        "changing the references listed under one of its edges:\n\n" + "\n\n".join(c.report() for c in cycles)
    )


# --------------------------------------------------------------------------- self-test

FAKE_CRATE = {
    "lib.rs": """
        //! The root names `crate::b::Thing` in a doc comment: not a reference.
        pub mod a;
        pub mod b;
        pub mod p;
        pub mod q;
        pub mod r;
        pub mod s;
        #[cfg(test)]
        mod only_tests;
        pub static ROOT: u8 = 0;
    """,
    # the planted cycle: a -> b through a grouped, nested use; b -> a through super:: in code
    "a.rs": """
        use crate::{ROOT, b::{self as bee, Thing}};
        /// See [`crate::q::Q`]: not a reference.
        pub fn f() -> u8 { let _s = "crate::q::Q"; let _r = r#"super::q"#; let _c = '"'; ROOT }
    """,
    "b.rs": """
        pub struct Thing;
        pub fn g() -> u8 {
            super::a::f()
        }
    """,
    # parent and child using each other: no edge; the child c's `p::d` reference is c -> d
    "p/mod.rs": """
        mod c;
        mod d;
        pub static SHARED: u8 = 1;
        pub fn h() -> u8 { c::k() + self::d::D }
    """,
    "p/c.rs": """
        use super::SHARED;
        pub fn k() -> u8 { SHARED + super::super::p::SHARED + crate::p::d::D }
    """,
    "p/d.rs": """
        pub const D: u8 = 2;
        pub fn e() -> u8 { super::h() }
    """,
    # q -> a only: the references back (a's doc comment and strings) are not code
    "q.rs": """
        pub struct Q;
        pub fn m() -> u8 { crate::a::f() }
    """,
    # r -> s in code, s -> r only in cfg(test) items: no cycle
    "r.rs": """
        use crate::s;
        pub fn n() -> u8 { s::sub::S }
    """,
    "s/mod.rs": """
        pub mod sub;
        #[cfg(test)]
        use crate::r::n;
        #[cfg(test)]
        mod tests {
            use crate::r;
            #[test]
            fn t() { assert_eq!(r::n(), super::n()); }
        }
    """,
    "s/sub.rs": """
        pub const S: u8 = 3;
    """,
    # a test-only file module: may use anything
    "only_tests.rs": """
        use crate::{a, b, p, q, r, s};
    """,
}


def _write_fake_crate(root: Path) -> Path:
    import textwrap

    for name, text in FAKE_CRATE.items():
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root / "src"


def test_checker_finds_exactly_the_planted_cycle(tmp_path):
    src = _write_fake_crate(tmp_path)
    files, modules = read_crate(src)
    refs = references(files, modules)
    edges = {(mod_name(parent), a, b) for parent, es in sibling_edges(refs).items() for a, b in es}
    assert edges == {
        ("crate", "a", "b"),
        ("crate", "b", "a"),
        ("crate", "q", "a"),
        ("crate", "r", "s"),
        ("p", "c", "d"),
    }, sorted(edges)

    cycles = find_cycles(refs)
    assert [(c.parent, c.members, c.path) for c in cycles] == [((), ["a", "b"], ["a", "b", "a"])]
    report = cycles[0].report()
    a_line, b_line = 1, 3  # after dedent: the grouped use in a.rs, super::a::f() in b.rs
    assert f"a.rs:{a_line}: use crate::{{ROOT, b::{{self as bee, Thing}}}};" in report, report
    assert f"b.rs:{b_line}: super::a::f()" in report, report
    assert "q.rs" not in report and "only_tests" not in report, report


def test_checker_reads_inline_modules_and_use_aliases(tmp_path):
    """An inline `mod x { }` is a module of its own; a module brought in by `use` and named
    later (`use crate::x; x::y::z`) is a reference to what the later path names."""
    (tmp_path / "src" / "x").mkdir(parents=True)
    (tmp_path / "src" / "lib.rs").write_text(
        "mod x;\nmod inner {\n    use crate::x;\n    pub fn f() { x::y::g() }\n    pub fn h() {}\n}\n"
    )
    (tmp_path / "src" / "x" / "mod.rs").write_text("pub mod y;\npub mod z;\n")
    (tmp_path / "src" / "x" / "y.rs").write_text("pub fn g() { crate::inner::h() }\n")
    (tmp_path / "src" / "x" / "z.rs").write_text("use super::y as why;\npub fn k() { why::g() }\n")
    files, modules = read_crate(tmp_path / "src")
    assert ("inner",) in modules
    refs = references(files, modules)
    edges = {(mod_name(parent), a, b) for parent, es in sibling_edges(refs).items() for a, b in es}
    assert edges == {("crate", "inner", "x"), ("crate", "x", "inner"), ("x", "z", "y")}, sorted(edges)
    assert [(c.parent, c.members) for c in find_cycles(refs)] == [((), ["inner", "x"])]


# =========================================================================== no tokio

# what the preload library and the command are built from, and the engine both stand on
TOKIO_FREE = ["s3dlio-direct-preload", "s3dlio-direct", "s3dlio-engine"]


def _cargo(*args: str) -> subprocess.CompletedProcess:
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo is not on PATH: the dependency check needs it (`make test` runs cargo first)")
    return subprocess.run([cargo, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def dependency_names(package: str) -> list[str]:
    """The crates in package's normal and build dependency tree (dev-dependencies do not ship)."""
    r = _cargo("tree", "--locked", "-e", "normal,build", "-p", package, "--prefix", "none")
    assert r.returncode == 0, f"cargo tree -p {package} failed ({r.returncode}):\n{r.stderr}"
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip() and not line.startswith("[")]
    assert names and names[0] == package, f"unexpected cargo tree output for {package}:\n{r.stdout}"
    return names


def tokio_crates(package: str) -> list[str]:
    return sorted({n for n in dependency_names(package) if n.startswith("tokio")})


@pytest.mark.parametrize("package", TOKIO_FREE)
def test_no_tokio_in_the_preload_library_or_the_command(package):
    found = tokio_crates(package)
    paths = []
    for name in found:
        r = _cargo("tree", "--locked", "-e", "normal,build", "-p", package, "-i", name)
        paths.append(f"$ cargo tree -e normal,build -p {package} -i {name}\n{r.stdout}{r.stderr}")
    assert not found, (
        f"{package} depends on {', '.join(found)}: the engine and what is built on it must stay free of "
        "async runtimes (the preload library runs inside other programs and must stay small and "
        "fork-safe). How it gets there:\n\n" + "\n".join(paths)
    )


def test_the_store_crate_does_have_tokio():
    """The check above sees a real tree: the store API's crate is where tokio is."""
    assert "tokio" in tokio_crates("s3dlio")
