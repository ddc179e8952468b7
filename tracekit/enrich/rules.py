"""Kernel classification rules: the rule model, loading TOML rule packs, validation, matching.

A rule pack is a TOML file (data only, read with tomllib) holding an ordered list of `[[rule]]`
tables; packs are layered (`--rules` dirs, then the user dir, then the built-in `rules/`) and
the first rule that matches a kernel decides its category. `rules/README.md` documents the
format; this module is its executable definition.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import re2

from tracekit.errors import TracekitError

Regex = re2._Regexp  # a compiled RE2 pattern

CATEGORIES = (
    "GEMM", "GEMV", "ATTN", "NORM", "ACT", "ELEMWISE", "REDUCE", "EMBED", "SAMPLING", "COMM",
    "MEMCPY", "MEMSET", "OTHER",
)
GEMM_FAMILY = frozenset({"GEMM", "GEMV"})
# tracekit/rules links to the repository's rules/ (copied into wheels), so both layouts find the packs.
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "rules"
USER_DIR_ENV = "TRACEKIT_RULES"
DEFAULT_USER_DIR = Path("~/.config/tracekit/rules")
DEFAULT_GEMV_MAX_M = 8

# ---------------------------------------------------------------------------------------------
# Regexes. Rule files come from anyone and demangled names run to thousands of characters, so rule
# patterns (and `when.op`) use RE2 (google-re2): matching is linear in the name's length whatever
# the pattern, so no pattern can stall classification. RE2 has no lookarounds, backreferences,
# possessive or atomic groups, and refuses them at load time. Stage markers go through DuckDB's
# regexp functions, which are RE2 too: one dialect everywhere (rules/README.md, "Regex dialect").


class RegexError(ValueError):
    """A pattern that RE2 does not accept; str() is one line."""


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors come back as exceptions; RE2's own log would go to stderr
    return options


_OPTIONS = _re2_options()
_NOT_IN_RE2 = "RE2 syntax has no lookarounds, backreferences, possessive or atomic groups"


def compile_regex(pattern: str) -> Regex:
    """Compile a rule pattern with RE2; raise RegexError with a one-line reason."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"not a valid RE2 pattern: {reason} ({_NOT_IN_RE2})") from None


class _PatternIndex:
    """Which of many patterns are found in a text, in one pass per chunk (RE2::Set): with
    thousands of rules, checking and classifying stay linear in the number of rules instead of
    trying every rule on every name.

    RE2::Set answers "nothing", not an error, when its DFA runs out of memory. Each set therefore
    ends with an empty pattern, which matches every text: a result without it is such a failure,
    and that chunk's patterns are then tried one by one (each still linear-time). A chunk that
    does not compile as a set (too large a DFA) is split, down to single patterns tried alone."""

    CHUNK = 1000

    def __init__(self, patterns: Sequence[tuple[str, Regex]]) -> None:
        self.regexes = [compiled for _text, compiled in patterns]
        self.sets: list[tuple[list[int], re2.Set]] = []
        self.alone: list[int] = []
        indices = list(range(len(patterns)))
        for lo in range(0, len(indices), self.CHUNK):
            self._build([patterns[i][0] for i in indices[lo:lo + self.CHUNK]], indices[lo:lo + self.CHUNK])

    def _build(self, texts: list[str], members: list[int]) -> None:
        if len(members) == 1:
            self.alone.append(members[0])
            return
        options = _re2_options()
        options.max_mem = 64 << 20
        pset = re2.Set.SearchSet(options)
        try:
            for text in texts:
                pset.Add(text)
            pset.Add("")  # the sentinel: present in every successful result
            pset.Compile()
        except re2.error:
            half = len(members) // 2
            self._build(texts[:half], members[:half])
            self._build(texts[half:], members[half:])
            return
        self.sets.append((members, pset))

    def search(self, text: str) -> list[int]:
        """Indices (ascending) of the patterns found in text."""
        hits: list[int] = []
        for members, pset in self.sets:
            found = pset.Match(text) or []
            if len(members) in found:
                hits.extend(members[i] for i in found if i < len(members))
            else:  # DFA out of memory: this chunk pattern by pattern
                hits.extend(i for i in members if self.regexes[i].search(text) is not None)
        hits.extend(i for i in self.alone if self.regexes[i].search(text) is not None)
        return sorted(hits)


# ---------------------------------------------------------------------------------------------
# What a rule can look at for one kernel.


@dataclass(frozen=True)
class KernelContext:
    name: str
    short_name: str | None = None
    op: str | None = None       # name of the linked CPU operator (kernels.op_id -> ops.name)
    m: int | None = None        # activation rows of the linked GEMM op, when its shapes are known
    grid: tuple[int | None, int | None, int | None] = (None, None, None)
    block: tuple[int | None, int | None, int | None] = (None, None, None)
    last_dim: int | None = None  # last dim of the op's first input (a softmax's row length)
    experts: int | None = None  # groups of a grouped (MoE expert) GEMM op, from its shapes

    def value(self, key: str) -> int | None:
        if key == "m":
            return self.m
        if key == "last_dim":
            return self.last_dim
        dims = self.grid if key.startswith("grid") else self.block
        return dims["xyz".index(key[-1])]


@dataclass(frozen=True)
class ShapeOp:
    """How to read M (activation rows) from an operator's input shapes."""

    arg: int                    # index of the activation input in input_dims
    batched: bool | None = False  # rows per matrix (bmm); None: batched when the other operand is >= 3-D
    groups: int | None = None   # grouped GEMM (MoE experts): the input whose first dim is the group count


DEFAULT_SHAPE_OPS: dict[str, ShapeOp] = {
    "aten::mm": ShapeOp(0),
    "aten::addmm": ShapeOp(1),
    "aten::_addmm_activation": ShapeOp(1),
    "aten::linear": ShapeOp(0),
    "aten::matmul": ShapeOp(0, None),
    "aten::bmm": ShapeOp(0, True),
    "aten::baddbmm": ShapeOp(1, True),
    "aten::mv": ShapeOp(1),
    "aten::addmv": ShapeOp(2),
    "aten::_scaled_mm": ShapeOp(0),
    # torch._grouped_mm(tokens [T, K], weights [E, K, N], offs [E]): T routed tokens over E experts.
    "aten::_grouped_mm": ShapeOp(0, groups=1),
    "aten::_scaled_grouped_mm": ShapeOp(0, groups=1),
}


def _dims(input_dims: str | Sequence | None) -> list | None:
    if input_dims is None:
        return None
    try:
        dims = json.loads(input_dims) if isinstance(input_dims, str) else input_dims
    except (ValueError, TypeError):
        return None
    return dims if isinstance(dims, list) else None


def groups_from_dims(input_dims: str | Sequence | None, spec: ShapeOp) -> int | None:
    """Number of groups (experts) of a grouped GEMM op: dim 0 of its 3-D weight input, else the
    length of the offsets that follow it (2-D weights)."""
    dims = _dims(input_dims)
    if spec.groups is None or dims is None:
        return None
    for index in (spec.groups, spec.groups + 1):
        shape = dims[index] if index < len(dims) else None
        if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
            if index == spec.groups and len(shape) < 3:
                continue
            return shape[0] if shape[0] > 0 else None
    return None


def last_dim_from_dims(input_dims: str | Sequence | None) -> int | None:
    """Last dim of an op's first input: the row length of a softmax (vocabulary or keys)."""
    dims = _dims(input_dims)
    first = dims[0] if dims else None
    if isinstance(first, list) and first and isinstance(first[-1], int):
        return first[-1]
    return None


def m_from_dims(input_dims: str | Sequence | None, spec: ShapeOp) -> int | None:
    """Rows of the activation operand: batch x new tokens for a linear layer.

    For a linear layer the weight is shared by every row, so all leading dims multiply into M.
    The matrices of a batched matmul share nothing, so there M is the rows of one matrix.
    """
    if input_dims is None:
        return None
    try:
        dims = json.loads(input_dims) if isinstance(input_dims, str) else input_dims
        act = dims[spec.arg]
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    if not isinstance(act, list) or not act or not all(isinstance(d, int) for d in act):
        return None
    if len(act) == 1:
        return 1
    batched = spec.batched
    if batched is None:
        other = dims[spec.arg + 1] if spec.arg + 1 < len(dims) else None
        batched = isinstance(other, list) and len(other) >= 3 and len(act) >= 3
    return act[-2] if batched else math.prod(act[:-1])


# ---------------------------------------------------------------------------------------------
# Rules.

_NUMERIC_KEYS = ("m", "last_dim", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z")
_CMP = re.compile(r"^\s*(<=|>=|==|!=|<|>)?\s*(\d+)\s*$")
_OPS = {
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
}
_RULE_KEYS = {"id", "on", "regex", "category", "explain", "when", "shape", "follows_gemm", "moe", "after_last_gemm", "by_pass",
              "examples", "not_examples"}
_EXAMPLE_KEYS = {"name", "short_name", "op", "m", "last_dim", "grid", "block"}


@dataclass(frozen=True)
class Condition:
    key: str            # 'op' or one of _NUMERIC_KEYS
    text: str           # as written, for messages
    op_pattern: Regex | None = None
    cmp: str = "=="
    value: int = 0

    def why_not(self, ctx: KernelContext) -> str | None:
        if self.key == "op":
            if ctx.op is None:
                return "no linked op"
            return None if self.op_pattern.fullmatch(ctx.op) else f"op {ctx.op} is not {self.text}"
        actual = ctx.value(self.key)
        if actual is None:
            return f"{self.key} unknown"
        return None if _OPS[self.cmp](actual, self.value) else f"{self.key}={actual} fails {self.cmp} {self.value}"


@dataclass
class Rule:
    id: str
    pack: str
    path: Path
    line: int
    regex: str
    pattern: Regex
    category: str
    explain: str
    on: str = "name"
    conditions: tuple[Condition, ...] = ()
    shape: bool = True          # GEMM/GEMV rules: op shapes (M) override the name's class
    follows_gemm: bool = False  # takes the class of the GEMM it completes (splitK reduce)
    moe: bool = False           # an expert GEMM of a mixture of experts: tokens per expert decide
    by_pass: bool = True        # GEMM-family without shapes: a decode pass's batch gives its M
    after_last_gemm: str | None = None  # without shapes: this category when no GEMM follows in its pass
    examples: tuple[KernelContext, ...] = ()
    not_examples: tuple[KernelContext, ...] = ()
    lines: dict[str, int] = field(default_factory=dict)
    text_lines: tuple[str, ...] = ()

    def subject(self, ctx: KernelContext) -> str:
        return ctx.short_name if self.on == "short_name" and ctx.short_name is not None else ctx.name

    def regex_matches(self, ctx: KernelContext) -> bool:
        return self.pattern.search(self.subject(ctx)) is not None

    def why_not(self, ctx: KernelContext) -> str | None:
        """None when the rule matches, else the first reason it does not."""
        if not self.regex_matches(ctx):
            return f"{self.on} does not match /{self.regex}/"
        for cond in self.conditions:
            reason = cond.why_not(ctx)
            if reason:
                return reason
        return None

    def matches(self, ctx: KernelContext) -> bool:
        return self.why_not(ctx) is None

    @property
    def uses_op(self) -> bool:
        return any(c.key == "op" for c in self.conditions)

    def where(self, key: str | None = None) -> str:
        return f"{display_path(self.path)}:{self.lines.get(key, self.line) if key else self.line}"

    def example_line(self, ex: KernelContext, key: str) -> int:
        needle = ex.name[:60]
        start = self.lines.get(key, self.line)
        for offset, text in enumerate(self.text_lines):
            if self.line + offset >= start and needle in text:
                return self.line + offset
        return start


@dataclass(frozen=True)
class Decision:
    category: str | None
    rule_id: str | None
    evidence: str
    follows_gemm: bool = False
    # What classification settles per kernel, where the name alone cannot say: 'pass' (a GEMM
    # without shapes: the pass it runs in gives M), 'moe' (an expert GEMM without shapes: the
    # pass and the run's MoE metadata give tokens per expert), 'place' (a softmax without shapes:
    # where it runs in its pass). None: decided here.
    pending: str | None = None


def moe_evidence(tokens_per_expert: float) -> str:
    return f"moe:tokens/expert={tokens_per_expert:g}"


@dataclass(frozen=True)
class Issue:
    path: Path
    line: int
    kind: str       # toml, schema, regex, unsafe-regex, duplicate-id, example, not-example, shadowed, ...
    message: str
    rule_id: str | None = None

    def __str__(self) -> str:
        who = f"rule {self.rule_id}: " if self.rule_id else ""
        return f"{display_path(self.path)}:{self.line}: {who}{self.message}"


class RuleError(TracekitError):
    """A rule file cannot be used; str() is one line naming the file and problem."""


def real_path(path: Path) -> Path:
    """The resolved path, or the absolute one where it cannot be resolved (a symlink loop)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(path).absolute()


def display_path(path: Path) -> str:
    """Relative to the working directory when under it (short, no machine paths in output)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):  # elsewhere, or a symlink loop
        return str(path)


# ---------------------------------------------------------------------------------------------
# Parsing one file.


@dataclass
class Pack:
    name: str
    path: Path
    layer: int
    priority: int = 0
    description: str = ""
    overrides: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    gemv_max_m: int | None = None
    shape_ops: dict[str, ShapeOp] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)


_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
_SUBTABLE = re.compile(r"^\s*\[\s*rule\.(\w+)\s*\]")
_TABLE = re.compile(r"^\s*\[")
_KEY = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=")
_TOML_LINE = re.compile(r"at line (\d+)")


def _rule_blocks(text: str) -> list[tuple[int, dict[str, int], tuple[str, ...]]]:
    """(header line, first line of each key, the block's lines) for each [[rule]], in order."""
    lines = text.splitlines()
    blocks: list[tuple[int, dict[str, int], list[str]]] = []
    current: tuple[int, dict[str, int], list[str]] | None = None
    prefix = ""
    for no, line in enumerate(lines, 1):
        if _RULE_HEADER.match(line):
            current = (no, {}, [line])
            blocks.append(current)
            prefix = ""
            continue
        if current is not None:
            sub = _SUBTABLE.match(line)
            if sub:
                prefix = sub.group(1) + "."
            elif _TABLE.match(line):
                current = None
                continue
            current[2].append(line)
            key = _KEY.match(line)
            if key:
                current[1].setdefault(prefix + key.group(1), no)
    return [(no, keys, tuple(block)) for no, keys, block in blocks]


def _parse_dims(value: object) -> tuple[int | None, int | None, int | None]:
    if not (isinstance(value, list) and 1 <= len(value) <= 3 and all(isinstance(v, int) for v in value)):
        raise ValueError("grid/block must be a list of 1 to 3 integers")
    return tuple(value + [1] * (3 - len(value)))  # type: ignore[return-value]


def _example(raw: object, on: str) -> KernelContext:
    # Examples are kernel names as traces give them; rules see them as classification does
    # (mangled `_Z...` names demangled, with the short name derived from them).
    from tracekit.readers.common import demangle, short_name  # pyarrow: not at CLI start-up

    if isinstance(raw, str):
        if raw.startswith("_Z"):
            return KernelContext(name=demangle(raw), short_name=short_name(raw))
        return KernelContext(name=raw, short_name=raw)
    if not isinstance(raw, dict):
        raise ValueError("an example is a string or a table {name = ..., op = ..., m = ...}")
    unknown = set(raw) - _EXAMPLE_KEYS
    if unknown:
        raise ValueError(f"unknown example key(s) {sorted(unknown)}; allowed: {sorted(_EXAMPLE_KEYS)}")
    name = raw.get("name", raw.get("short_name"))
    if not isinstance(name, str):
        raise ValueError("an example table needs name = \"...\"")
    short = raw.get("short_name", name if on == "short_name" else None)
    m = raw.get("m")
    if m is not None and not isinstance(m, int):
        raise ValueError("example m must be an integer")
    last_dim = raw.get("last_dim")
    if last_dim is not None and not isinstance(last_dim, int):
        raise ValueError("example last_dim must be an integer")
    return KernelContext(
        name=demangle(name), short_name=short, op=raw.get("op"), m=m, last_dim=last_dim,
        grid=_parse_dims(raw["grid"]) if "grid" in raw else (None, None, None),
        block=_parse_dims(raw["block"]) if "block" in raw else (None, None, None),
    )


def _conditions(when: object) -> tuple[Condition, ...]:
    if not isinstance(when, dict):
        raise ValueError("when must be a table")
    out = []
    for key, raw in when.items():
        if key == "op":
            if not isinstance(raw, str):
                raise ValueError("when.op must be a regex string (matched in full against the op name)")
            try:
                out.append(Condition("op", raw, op_pattern=compile_regex(raw)))
            except RegexError as exc:
                raise ValueError(f"invalid regex in when.op: {exc}") from None
        elif key in _NUMERIC_KEYS:
            cmp = _CMP.match(str(raw)) if isinstance(raw, (int, str)) and not isinstance(raw, bool) else None
            if not cmp:
                raise ValueError(f"when.{key} must be a number or a comparison like \"<= 8\"")
            out.append(Condition(key, str(raw), cmp=cmp.group(1) or "==", value=int(cmp.group(2))))
        else:
            raise ValueError(f"unknown condition when.{key}; allowed: op, {', '.join(_NUMERIC_KEYS)}")
    return tuple(out)


def _parse_rule(raw: dict, pack: Pack, line: int, keys: dict[str, int], text: tuple[str, ...]) -> Rule:
    """Build one rule; raise _RuleProblem(key, kind, message) on the first problem."""
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise _RuleProblem("id", "schema", "rule needs an id")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise _RuleProblem(sorted(unknown)[0], "schema", f"unknown key(s) {sorted(unknown)}")
    on = raw.get("on", "name")
    if on not in ("name", "short_name"):
        raise _RuleProblem("on", "schema", "on must be \"name\" (demangled) or \"short_name\"")
    regex = raw.get("regex")
    if not isinstance(regex, str) or not regex:
        raise _RuleProblem("regex", "schema", "rule needs a regex")
    try:
        pattern = compile_regex(regex)
    except RegexError as exc:
        raise _RuleProblem("regex", "regex", f"invalid regex /{regex}/: {exc}") from None
    category = raw.get("category")
    if category not in CATEGORIES:
        raise _RuleProblem("category", "schema", f"category {category!r} is not one of {', '.join(CATEGORIES)}")
    explain = raw.get("explain")
    if not isinstance(explain, str) or not explain.strip():
        raise _RuleProblem("explain", "schema", "rule needs an explain text saying why")
    try:
        conditions = _conditions(raw.get("when", {}))
    except ValueError as exc:
        raise _RuleProblem("when", "schema", str(exc)) from None
    for flag in ("shape", "follows_gemm", "moe", "by_pass"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise _RuleProblem(flag, "schema", f"{flag} must be true or false")
    after_last_gemm = raw.get("after_last_gemm")
    if after_last_gemm is not None and after_last_gemm not in CATEGORIES:
        raise _RuleProblem("after_last_gemm", "schema",
                           f"after_last_gemm {after_last_gemm!r} is not one of {', '.join(CATEGORIES)}")
    examples = []
    for key in ("examples", "not_examples"):
        values = raw.get(key, [])
        if not isinstance(values, list):
            raise _RuleProblem(key, "schema", f"{key} must be a list")
        try:
            examples.append(tuple(_example(v, on) for v in values))
        except ValueError as exc:
            raise _RuleProblem(key, "schema", str(exc)) from None
    if not examples[0]:
        raise _RuleProblem("examples", "no-examples", "rule needs at least one example that must match")
    return Rule(
        id=rid, pack=pack.name, path=pack.path, line=line, regex=regex, pattern=pattern,
        category=category, explain=explain.strip(), on=on, conditions=conditions,
        shape=raw.get("shape", True), follows_gemm=raw.get("follows_gemm", False),
        moe=raw.get("moe", False), after_last_gemm=after_last_gemm, by_pass=raw.get("by_pass", True),
        examples=examples[0], not_examples=examples[1], lines=keys, text_lines=text,
    )


class _RuleProblem(Exception):
    def __init__(self, key: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.key, self.kind, self.message = key, kind, message


MAX_RULE_FILE_BYTES = 16 << 20  # a rule pack is text a person wrote; /dev/zero is not


def _read_rule_file(path: Path) -> str:
    """The file's text; OSError/ValueError with a one-line reason. Only regular files are opened:
    a FIFO would block and a device (/dev/zero, /dev/urandom) never ends."""
    info = os.stat(path)  # follows symlinks; a symlink loop is an OSError (ELOOP)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file (a FIFO, device or directory); rule packs are .toml files")
    if info.st_size > MAX_RULE_FILE_BYTES:
        raise ValueError(f"{info.st_size} bytes: larger than the {MAX_RULE_FILE_BYTES >> 20} MiB a rule pack may have")
    with open(path, "rb") as f:
        data = f.read(MAX_RULE_FILE_BYTES + 1)
    if len(data) > MAX_RULE_FILE_BYTES:
        raise ValueError(f"larger than the {MAX_RULE_FILE_BYTES >> 20} MiB a rule pack may have")
    return data.decode("utf-8")


def _parse_file(path: Path, layer: int, issues: list[Issue]) -> Pack | None:
    try:
        text = _read_rule_file(path)
        data = tomllib.loads(text)
    except OSError as exc:
        issues.append(Issue(path, 0, "io", f"cannot read: {exc.strerror or exc}"))
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        found = _TOML_LINE.search(str(exc))
        issues.append(Issue(path, int(found.group(1)) if found else 1, "toml", f"invalid TOML: {exc}"))
        return None
    except RecursionError:
        issues.append(Issue(path, 1, "toml", "invalid TOML: nested too deeply"))
        return None
    except ValueError as exc:
        issues.append(Issue(path, 0, "io", f"cannot read: {exc}"))
        return None
    try:
        return _parse_data(path, layer, text, data, issues)
    except RecursionError:
        issues.append(Issue(path, 1, "schema", "nested too deeply"))
        return None


def _parse_data(path: Path, layer: int, text: str, data: dict, issues: list[Issue]) -> Pack:

    def file_issue(kind: str, message: str, key: str | None = None) -> None:
        line = 1
        for no, text_line in enumerate(text.splitlines(), 1):
            found = _KEY.match(text_line)
            if key and ((found and found.group(1) == key) or text_line.strip() == f"[{key}]"):
                line = no
                break
        issues.append(Issue(path, line, kind, message))

    unknown = set(data) - {"pack", "rule", "settings", "shape_ops"}
    if unknown:
        file_issue("schema", f"unknown top-level key(s) {sorted(unknown)}; allowed: pack, settings, shape_ops, rule")
    meta = data.get("pack", {})
    if not isinstance(meta, dict):
        file_issue("schema", "[pack] must be a table", "pack")
        meta = {}
    pack = Pack(name=str(meta.get("name", path.stem)), path=path, layer=layer,
                description=str(meta.get("description", "")))
    priority = meta.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        file_issue("schema", "pack.priority must be an integer", "priority")
    else:
        pack.priority = priority
    for key in ("overrides", "disable"):
        value = meta.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            file_issue("schema", f"pack.{key} must be a list of strings", key)
        else:
            setattr(pack, key, tuple(value))
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        file_issue("schema", "[settings] must be a table", "settings")
        settings = {}
    if "gemv_max_m" in settings:
        value = settings["gemv_max_m"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            file_issue("schema", "settings.gemv_max_m must be a non-negative integer", "gemv_max_m")
        else:
            pack.gemv_max_m = value
    for key in set(settings) - {"gemv_max_m"}:
        file_issue("schema", f"unknown setting {key!r}; allowed: gemv_max_m", key)
    shape_ops = data.get("shape_ops", {})
    if not isinstance(shape_ops, dict):
        file_issue("schema", "[shape_ops] must be a table of tables", "shape_ops")
        shape_ops = {}
    for op, spec in shape_ops.items():
        batched = spec.get("batched", False) if isinstance(spec, dict) else None
        arg = spec.get("arg") if isinstance(spec, dict) else None
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0 or batched not in (True, False, "auto"):
            file_issue("schema", f"shape_ops.{op!r} needs arg = <input index> and batched = true|false|\"auto\"")
            continue
        pack.shape_ops[op] = ShapeOp(arg, None if batched == "auto" else batched)

    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        file_issue("schema", "rule must be an array of tables: [[rule]]")
        raw_rules = []
    blocks = _rule_blocks(text)
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        line, keys, block = blocks[i] if i < len(blocks) else (1, {}, ())
        rid = raw.get("id") if isinstance(raw, dict) else None
        try:
            if not isinstance(raw, dict):
                raise _RuleProblem("rule", "schema", "each rule must be a table: [[rule]]")
            rule = _parse_rule(raw, pack, line, keys, block)
        except _RuleProblem as problem:
            issues.append(Issue(path, keys.get(problem.key, line), problem.kind, problem.message,
                                rid if isinstance(rid, str) else None))
            continue
        if rule.id in seen:
            issues.append(Issue(path, line, "duplicate-id",
                                f"duplicate id: also defined at line {seen[rule.id]} of this file", rule.id))
            continue
        seen[rule.id] = line
        pack.rules.append(rule)
    return pack


# ---------------------------------------------------------------------------------------------
# The layered rule set.


def user_rule_dirs() -> list[Path]:
    """`$TRACEKIT_RULES` (os.pathsep-separated) or ~/.config/tracekit/rules if it exists."""
    env = os.environ.get(USER_DIR_ENV)
    if env is not None:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    default = DEFAULT_USER_DIR.expanduser()
    return [default] if default.is_dir() else []


def rule_files(where: Path) -> list[Path]:
    """The rule files a path stands for: itself, or every *.toml in a directory tree (a tree of
    packs), in path order. Each directory is entered once, so a symlink loop ends."""
    try:
        if not where.is_dir():
            return [where]
    except OSError:
        return [where]
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def walk(directory: Path) -> None:
        try:
            info = directory.stat()
            entries = sorted(directory.iterdir())
        except OSError:
            return
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:  # a symlink loop: is_dir() cannot tell, reading it will say why
                is_dir = False
            if is_dir:
                walk(entry)
            elif entry.name.endswith(".toml"):
                found.append(entry)

    walk(where)
    return found


def _toml_files(where: Path, issues: list[Issue], required: bool) -> list[Path]:
    if not os.path.lexists(where):
        issues.append(Issue(where, 0, "io", "no such rules directory or file"))
        return []
    files = rule_files(where)
    if not files and required:
        issues.append(Issue(where, 0, "io", "no rule files (*.toml) in this directory or below it"))
    return files


class RuleSet:
    """The rules of all layers in the order they are tried."""

    def __init__(self, packs: list[Pack], issues: list[Issue] | None = None) -> None:
        self.issues: list[Issue] = list(issues or [])
        # Lower sort key is tried first: higher priority, then earlier layer, then file name.
        self.packs = sorted(packs, key=lambda p: (-p.priority, p.layer, p.path.name))
        self._dedupe_packs()
        self.gemv_max_m = DEFAULT_GEMV_MAX_M
        self.shape_ops = dict(DEFAULT_SHAPE_OPS)
        for pack in reversed(self.packs):  # later (lower-precedence) first, so earlier packs win
            if pack.gemv_max_m is not None:
                self.gemv_max_m = pack.gemv_max_m
            self.shape_ops.update(pack.shape_ops)
        self.rules = self._assemble()

    @property
    def rules(self) -> list[Rule]:
        """The rules in the order they are tried (assigning a new list re-indexes them)."""
        return self._rules

    @rules.setter
    def rules(self, rules: list[Rule]) -> None:
        self._rules = list(rules)
        self.by_id = {r.id: r for r in self._rules}
        self._index_rules()

    def _index_rules(self) -> None:
        # One pattern index per subject (name, short_name); positions map back to self.rules.
        self._indexes: dict[str, tuple[list[int], _PatternIndex]] = {}
        for on in ("name", "short_name"):
            positions = [i for i, r in enumerate(self.rules) if r.on == on]
            self._indexes[on] = (positions, _PatternIndex([(self.rules[i].regex, self.rules[i].pattern)
                                                            for i in positions]))

    def candidates(self, ctx: KernelContext) -> list[Rule]:
        """The rules whose regex is found in the kernel's name, in the order they are tried."""
        found: list[int] = []
        for on, (positions, index) in self._indexes.items():
            subject = ctx.short_name if on == "short_name" and ctx.short_name is not None else ctx.name
            found.extend(positions[i] for i in index.search(subject))
        return [self.rules[i] for i in sorted(found)]

    def _dedupe_packs(self) -> None:
        # A pack named like one in a later layer replaces it whole (copy a built-in pack to your
        # rules dir and edit it); the same name twice in one layer is a mistake.
        pack_by_name: dict[str, Pack] = {}
        kept = []
        for pack in sorted(self.packs, key=lambda p: (p.layer, p.path.name)):
            prior = pack_by_name.get(pack.name)
            if prior is None:
                pack_by_name[pack.name] = pack
                kept.append(pack)
            elif prior.layer == pack.layer:
                self.issues.append(Issue(pack.path, 1, "duplicate-pack",
                                         f"pack name {pack.name!r} is also used by {display_path(prior.path)}"))
        self.packs = [p for p in self.packs if any(p is k for k in kept)]

    def _assemble(self) -> list[Rule]:
        pack_by_name = {p.name: p for p in self.packs}
        names = set(pack_by_name)
        disabled: set[str] = set()
        for pack in self.packs:
            for target in pack.overrides:
                if target not in names:
                    self.issues.append(Issue(pack.path, 1, "schema", f"overrides unknown pack {target!r}"))
            disabled.update(pack.disable)
        owner: dict[str, Rule] = {}
        for pack in self.packs:
            for rule in pack.rules:
                prior = owner.get(rule.id)
                if prior is None:
                    owner[rule.id] = rule
                    continue
                # Same id twice: allowed only when one pack declares that it overrides the
                # other; the overriding rule replaces the other, at its own pack's position.
                first, second = (prior, rule)
                if second.pack in pack_by_name[first.pack].overrides:
                    continue
                if first.pack in pack_by_name[second.pack].overrides:
                    owner[rule.id] = rule
                    continue
                # Report it where the user can act: in the higher layer (their rules dir).
                here, there = ((first, second) if pack_by_name[first.pack].layer < pack_by_name[second.pack].layer
                               else (second, first))
                self.issues.append(Issue(here.path, here.line, "duplicate-id",
                                         f"duplicate id: also defined at {there.where()} (to replace that rule, "
                                         f"add overrides = [\"{second.pack}\"] to the [pack] of {display_path(first.path)})",
                                         rule.id))
        out = []
        for pack in self.packs:
            for rule in pack.rules:
                if owner.get(rule.id) is not rule:
                    continue
                if rule.id in disabled:
                    continue
                out.append(rule)
        known = {r.id for p in self.packs for r in p.rules}
        for pack in self.packs:
            for rid in pack.disable:
                if rid not in known:
                    self.issues.append(Issue(pack.path, 1, "schema", f"disable names unknown rule {rid!r}"))
        return out

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def load(cls, extra_dirs: Sequence[Path | str] = (), *, include_user: bool = True,
             include_builtin: bool = True, strict: bool = True) -> RuleSet:
        """Built-in packs + user dir + `extra_dirs` (the first given takes precedence).

        strict: raise RuleError on the first problem (classification must not run on a half-read
        rule set); otherwise keep the usable rules and record problems in `.issues`.
        """
        layers: list[Path] = [Path(d).expanduser() for d in extra_dirs]
        if include_user:
            # A user dir that does not exist (yet) is simply empty; a --rules dir must exist.
            layers += [d for d in user_rule_dirs() if d.exists()]
        if include_builtin:
            layers.append(BUILTIN_DIR)
        issues: list[Issue] = []
        packs = []
        seen: set[Path] = set()
        for layer, where in enumerate(layers):
            for path in _toml_files(where, issues, required=layer < len(extra_dirs)):
                real = real_path(path)  # a symlink loop stays as given: reading it reports the problem
                if real in seen:  # the same file reached twice (e.g. --rules rules/)
                    continue
                seen.add(real)
                pack = _parse_file(path, layer, issues)
                if pack is not None:
                    packs.append(pack)
        ruleset = cls(packs, issues)
        if strict and ruleset.issues:
            raise RuleError(str(ruleset.issues[0]))
        return ruleset

    # -- matching -------------------------------------------------------------------------

    def decide(self, ctx: KernelContext, candidates: Iterable[Rule] | None = None) -> Decision:
        """The first matching rule's verdict; `candidates` (in order) narrows the rules tried."""
        for rule in self.candidates(ctx) if candidates is None else candidates:
            if rule.matches(ctx):
                return self.verdict(rule, ctx)
        return Decision(None, None, "unclassified")

    def verdict(self, rule: Rule, ctx: KernelContext) -> Decision:
        gemm = rule.category in GEMM_FAMILY and rule.shape
        moe = gemm and (rule.moe or ctx.experts is not None)
        if moe and ctx.m is not None and ctx.experts:
            # A grouped GEMM's M is the tokens routed to all experts: each expert's matrix
            # product sees its share, and that share decides GEMV (memory-bound) vs GEMM.
            per_expert = ctx.m / ctx.experts
            category = "GEMV" if per_expert <= self.gemv_max_m else "GEMM"
            return Decision(category, rule.id, moe_evidence(per_expert))
        if gemm and not moe and ctx.m is not None:
            category = "GEMV" if ctx.m <= self.gemv_max_m else "GEMM"
            return Decision(category, rule.id, f"shape:M={ctx.m}")
        evidence = f"op:{ctx.op}" if rule.uses_op else "name"
        if any(c.key == "m" for c in rule.conditions):
            evidence = f"shape:M={ctx.m}"
        if any(c.key == "last_dim" for c in rule.conditions):
            evidence = f"shape:last_dim={ctx.last_dim}"
        follows = rule.follows_gemm and rule.category in GEMM_FAMILY
        pending = None
        if moe:
            evidence, pending = "moe:name", "moe"
        elif gemm and not follows and ctx.m is None and rule.by_pass:
            pending = "pass"
        elif rule.after_last_gemm and ctx.last_dim is None:
            pending = "place"
        return Decision(rule.category, rule.id, evidence, follows_gemm=follows, pending=pending)

    def explain(self, ctx: KernelContext) -> list[tuple[Rule, str | None]]:
        """Every rule whose regex matches, in order, with why its conditions fail (None: matches)."""
        return [(r, r.why_not(ctx)) for r in self.candidates(ctx)]

    def with_gemv_max_m(self, value: int) -> RuleSet:
        clone = object.__new__(RuleSet)
        clone.__dict__.update(self.__dict__)
        clone.gemv_max_m = value
        return clone

    @property
    def uses_op(self) -> bool:
        return any(r.uses_op for r in self.rules)

    @property
    def numeric_keys(self) -> set[str]:
        return {c.key for r in self.rules for c in r.conditions if c.key != "op"}

    # -- checking -------------------------------------------------------------------------

    def check(self, only: set[Path] | None = None) -> list[Issue]:
        """Load problems plus failing examples and shadowed rules, for rules in `only` files."""
        def wanted(path: Path) -> bool:
            return only is None or real_path(path) in only

        issues = [i for i in self.issues if wanted(i.path)]
        for rule in self.rules:
            if not wanted(rule.path):
                continue
            taken_by: list[Rule] = []
            for ex in rule.examples:
                reason = rule.why_not(ex)
                if reason:
                    issues.append(Issue(rule.path, rule.example_line(ex, "examples"), "example",
                                        f"example does not match: {reason}: {_short(ex.name)}", rule.id))
                    continue
                first = next(r for r in self.candidates(ex) if r.matches(ex))
                if first is not rule:
                    taken_by.append(first)
            for ex in rule.not_examples:
                if rule.matches(ex):
                    issues.append(Issue(rule.path, rule.example_line(ex, "not_examples"), "not-example",
                                        f"must-not-match example matches: {_short(ex.name)}", rule.id))
            if taken_by and len(taken_by) == len(rule.examples):
                winner = taken_by[0]
                issues.append(Issue(rule.path, rule.line, "shadowed",
                                    f"shadowed: every example is matched first by rule {winner.id} "
                                    f"({winner.where()}), so this rule never decides", rule.id))
            elif taken_by:
                winner = taken_by[0]
                issues.append(Issue(rule.path, rule.lines.get("examples", rule.line), "example-taken",
                                    f"{len(taken_by)} of {len(rule.examples)} examples are matched first by "
                                    f"rule {winner.id} ({winner.where()})", rule.id))
        return issues


def _short(name: str, width: int = 100) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."

