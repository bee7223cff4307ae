#!/usr/bin/env python3
"""Structure checks that rustc and clippy do not make, run by `make lint`.

1. No module cycle inside a crate: the top-level modules of each crate (the
   children of lib.rs / main.rs) must form an acyclic graph, counting every
   `crate::x` and `super::x` path outside test code.
2. No source file over MAX_FILE_LINES lines of non-test code (inline
   `#[cfg(test)]` modules and files declared as test modules do not count).
3. No function over MAX_FN_LINES lines unless a comment right above it says
   why it is "kept whole".

It reads the sources as text (no Rust parser): good enough for code that
rustfmt has formatted, which `make lint` checks first.

Usage: tools/check_structure.py [--report]   (--report: list, never fail)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MAX_FILE_LINES = 600
MAX_FN_LINES = 80
ROOTS = ("libs", "services", "tests", "bench")

CFG_TEST = re.compile(r"^\s*#\[cfg\(test\)\]")
MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;")
MOD_BLOCK = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*\{")
PATH_ATTR = re.compile(r'^\s*#\[path\s*=\s*"([^"]+)"\]')
FN_START = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)"
)
CRATE_REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
SUPER_REF = re.compile(r"\b((?:super::)+)([a-z_][a-z0-9_]*)")


def strip_strings_and_comments(line: str) -> str:
    """Drops string literals and // comments so braces inside them don't count."""
    line = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(?:\\.|[^'\\])'", "' '", line)
    cut = line.find("//")
    return line if cut < 0 else line[:cut]


def block_end(lines: list[str], start: int) -> int:
    """Index of the line closing the brace block opened at or after `start`."""
    depth = 0
    opened = False
    for i in range(start, len(lines)):
        code = strip_strings_and_comments(lines[i])
        for ch in code:
            if ch == "{":
                depth += 1
                opened = True
            elif ch == "}":
                depth -= 1
                if opened and depth == 0:
                    return i
        if not opened and code.rstrip().endswith(";"):
            return i  # a declaration without a body
    return len(lines) - 1


class SourceFile:
    def __init__(self, path: Path, module: tuple[str, ...]):
        self.path = path
        self.module = module  # () for the crate root
        self.lines = path.read_text(encoding="utf-8").splitlines()
        self.test_mask = [False] * len(self.lines)
        self.test_children: set[str] = set()
        self.children: dict[str, Path | None] = {}
        self._scan()

    def _scan(self) -> None:
        pending_cfg_test = False
        pending_path = None
        i = 0
        while i < len(self.lines):
            line = self.lines[i]
            if CFG_TEST.match(line):
                pending_cfg_test = True
                i += 1
                continue
            m = PATH_ATTR.match(line)
            if m:
                pending_path = m.group(1)
                i += 1
                continue
            decl = MOD_DECL.match(line)
            if decl:
                name = decl.group(1)
                if pending_cfg_test:
                    self.test_children.add(name)
                self.children[name] = Path(pending_path) if pending_path else None
            elif pending_cfg_test and line.strip() and not line.strip().startswith("#"):
                # `#[cfg(test)]` on an item with a body: mask the whole item.
                end = block_end(self.lines, i)
                for j in range(i - 1, end + 1):
                    self.test_mask[j] = True
                i = end
            if line.strip() and not line.strip().startswith("#"):
                pending_cfg_test = False
                pending_path = None
            i += 1

    def code_lines(self) -> int:
        """Non-blank lines outside test code."""
        return sum(
            1 for line, test in zip(self.lines, self.test_mask) if not test and line.strip()
        )

    def child_path(self, name: str) -> Path | None:
        explicit = self.children.get(name)
        base = self.path.parent
        if explicit is not None:
            return base / explicit
        if self.path.name not in ("lib.rs", "main.rs", "mod.rs"):
            base = base / self.path.stem
        for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
            if candidate.exists():
                return candidate
        return None


def crate_files(root_file: Path) -> list[SourceFile]:
    """Every non-test file of the crate rooted at `root_file`, with its module path."""
    out: list[SourceFile] = []
    stack = [(root_file, ())]
    while stack:
        path, module = stack.pop()
        src = SourceFile(path, module)
        out.append(src)
        for name in src.children:
            if name in src.test_children:
                continue
            child = src.child_path(name)
            if child is not None:
                stack.append((child, module + (name,)))
    return out


def crate_roots() -> list[Path]:
    roots = []
    for top in ROOTS:
        for manifest in sorted(Path(top).glob("**/Cargo.toml")):
            if "target" in manifest.parts:
                continue
            src = manifest.parent / "src"
            for name in ("lib.rs", "main.rs"):
                if (src / name).exists():
                    roots.append(src / name)
    return roots


def module_edges(files: list[SourceFile]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for src in files:
        if not src.module:
            continue
        top = src.module[0]
        for line, test in zip(src.lines, src.test_mask):
            if test:
                continue
            code = strip_strings_and_comments(line)
            targets = [m.group(1) for m in CRATE_REF.finditer(code)]
            for m in SUPER_REF.finditer(code):
                ups = m.group(1).count("super::")
                # A file's own module path; `super` from `a/b.rs` is `a`.
                base = src.module[:-ups] if ups <= len(src.module) else ()
                resolved = base + (m.group(2),)
                targets.append(resolved[0])
            for target in targets:
                if target != top:
                    edges.setdefault(top, set()).add(target)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def long_functions(src: SourceFile) -> list[tuple[str, int, int]]:
    found = []
    i = 0
    while i < len(src.lines):
        m = FN_START.match(src.lines[i])
        if not m or src.test_mask[i]:
            i += 1
            continue
        end = block_end(src.lines, i)
        length = end - i + 1
        if length > MAX_FN_LINES and not kept_whole(src.lines, i):
            found.append((m.group(1), i + 1, length))
        i += 1  # nested fns are checked too
    return found


def kept_whole(lines: list[str], fn_line: int) -> bool:
    """True when the comments and attributes right above say why it is whole."""
    j = fn_line - 1
    while j >= 0:
        text = lines[j].strip()
        if not (text.startswith("//") or text.startswith("#[")):
            break
        if "kept whole" in text.lower():
            return True
        j -= 1
    return False


def main() -> int:
    report_only = "--report" in sys.argv
    problems: list[str] = []
    for root in crate_roots():
        files = crate_files(root)
        for cycle in find_cycles(module_edges(files)):
            crate = root.parent.parent
            problems.append(f"{crate}: module cycle between {', '.join(cycle)}")
        for src in files:
            lines = src.code_lines()
            if lines > MAX_FILE_LINES:
                problems.append(
                    f"{src.path}: {lines} lines of non-test code (at most {MAX_FILE_LINES})"
                )
            for name, line, length in long_functions(src):
                problems.append(
                    f"{src.path}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES}, "
                    "or a comment above it saying why it is kept whole)"
                )
    for problem in problems:
        print(problem)
    if problems and not report_only:
        print(f"{len(problems)} structure problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
