"""Rule loading, validation and matching, and the `tracekit rules check|explain` commands."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tk

from tracekit.enrich.rules import (
    KernelContext,
    RegexError,
    RuleError,
    RuleSet,
    ShapeOp,
    compile_regex,
    m_from_dims,
)
from tracekit.outputs.cli import main

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ROOT / "fixtures" / "rules" / "broken"
NVJET_DECODE = "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT"
NVJET_PREFILL = "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT"


@pytest.fixture(autouse=True)
def no_user_rules(monkeypatch, tmp_path):
    # The machine's ~/.config/tracekit/rules must not leak into tests.
    monkeypatch.setenv("TRACEKIT_RULES", str(tmp_path / "no-user-rules"))


def write_pack(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- regexes: RE2 ------------------------------------------------------------------------------

# Each of these backtracks catastrophically in Python's re (the first is issue 17's bypass of the
# old checker); RE2 accepts them and matches in time linear in the name.
@pytest.mark.parametrize("pattern", [r"(\w|\w\w)*Q", r"(a|aa)*b", r"^(\w+_)+kernel$", r"(a*)*b",
                                     r"(?:x{1,20}){1,20}y", r"^\w+_\w+_\w+z", r"a.*b.*c"])
def test_backtracking_patterns_match_in_linear_time(pattern):
    compiled = compile_regex(pattern)
    name = "a" * 200_000  # no match anywhere: the worst case of a backtracking engine
    started = time.perf_counter()
    assert compiled.search(name) is None
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("pattern", [r"gemm(?=_kernel)", r"(?<!cutlass)gemm", r"(?!x)y", r"(a)\1", r"a++",
                                     r"(?>ab)c", "gemm(_kernel"])
def test_patterns_outside_re2_are_refused_with_one_line(pattern):
    with pytest.raises(RegexError) as err:
        compile_regex(pattern)
    assert "RE2" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("pattern", [r"^nvjet_", r"\bsplitKreduce_kernel\b", r"^triton_\w*?_fused_\w*?rsqrt",
                                     r"\breduce_kernel<.*\bMeanOps<float", r"^(?:void )?(?:internal::)?gemv"])
def test_ordinary_patterns_are_accepted(pattern):
    assert compile_regex(pattern).search("x") is None


def test_a_backtracking_rule_does_not_stall_classification(tmp_path, shared_db_copy):
    """Issue 17: one rule `(\\w|\\w\\w)*Q` made classify never finish on the bundled fixtures."""
    write_pack(tmp_path / "r", "slow.toml", """
        [[rule]]
        id = "slow.q"
        regex = '(\\w|\\w\\w)*Q'
        category = "OTHER"
        explain = "exponential in a backtracking engine"
        examples = ['xQ']
    """)
    started = time.perf_counter()
    result = run_cli("classify", "--db", str(shared_db_copy), "--rules", str(tmp_path / "r"))
    assert result.exit_code == 0, result.stdout
    assert time.perf_counter() - started < 60


# -- M from op shapes --------------------------------------------------------------------------

@pytest.mark.parametrize(("op", "dims", "expected"), [
    ("aten::mm", "[[1, 4096], [4096, 11008]]", 1),
    ("aten::mm", [[1024, 4096], [4096, 4096]], 1024),
    ("aten::addmm", "[[4096], [8, 4096], [4096, 4096], [], []]", 8),
    ("aten::linear", "[[4, 64, 4096], [4096, 4096], []]", 256),
    ("aten::matmul", "[[4, 1, 4096], [4096, 4096]]", 4),
    ("aten::matmul", "[[1, 32, 1, 128], [1, 32, 128, 70]]", 1),
    ("aten::bmm", "[[32, 1, 128], [32, 128, 70]]", 1),
    ("aten::mm", "not json", None),
    ("aten::mm", "[]", None),
])
def test_m_from_dims(op, dims, expected):
    rules = RuleSet.load(include_user=False)
    assert m_from_dims(dims, rules.shape_ops[op]) == expected


def test_m_uses_the_configured_argument():
    assert m_from_dims("[[7], [3, 5]]", ShapeOp(arg=1)) == 3


# -- matching ----------------------------------------------------------------------------------

def test_shapes_decide_gemv_vs_gemm_over_the_name():
    rules = RuleSet.load(include_user=False)
    by_name = rules.decide(KernelContext(NVJET_DECODE))
    assert (by_name.category, by_name.evidence) == ("GEMV", "name")
    wide = rules.decide(KernelContext(NVJET_DECODE, op="aten::mm", m=512))
    assert (wide.category, wide.evidence) == ("GEMM", "shape:M=512")
    skinny = rules.decide(KernelContext(NVJET_PREFILL, op="aten::mm", m=8))
    assert (skinny.category, skinny.evidence) == ("GEMV", "shape:M=8")
    assert rules.decide(KernelContext(NVJET_PREFILL, op="aten::mm", m=9)).category == "GEMM"
    assert rules.with_gemv_max_m(16).decide(KernelContext(NVJET_PREFILL, m=9)).category == "GEMV"


def test_op_condition_gives_op_evidence():
    rules = RuleSet.load(include_user=False)
    name = "void at::native::vectorized_elementwise_kernel<(int)4, at::native::<lambda>, std::array<char *, 2>>(int, T2, T3)"
    assert rules.decide(KernelContext(name)).category == "ELEMWISE"
    with_op = rules.decide(KernelContext(name, op="aten::gelu"))
    assert (with_op.category, with_op.evidence) == ("ACT", "op:aten::gelu")


def test_long_names_are_matched_whole_in_linear_time():
    """RE2 needs no cut: text past 4 KiB is seen (it was not, with the old truncation)."""
    rules = RuleSet.load(include_user=False)
    long_name = "void at::native::foo<" + "x" * 5000 + ">(FillFunctor)"
    started = time.perf_counter()
    assert rules.decide(KernelContext(long_name)).category == "MEMSET"
    assert rules.decide(KernelContext("nvjet_" + "y" * 1_000_000)).category == "GEMM"
    assert time.perf_counter() - started < 5


# -- layering ----------------------------------------------------------------------------------

SWAP_CAT = """
    [pack]
    name = "mine"

    [[rule]]
    id = "mine.cat"
    regex = 'CatArrayBatchedCopy'
    category = "ATTN"
    explain = "KV-cache append counted as attention"
    examples = ['CatArrayBatchedCopy_vectorized']
"""
CAT = "void at::native::<unnamed>::CatArrayBatchedCopy<int>(T1 *)"


def test_extra_dir_is_tried_before_builtin_packs(tmp_path):
    write_pack(tmp_path / "r", "mine.toml", SWAP_CAT)
    assert RuleSet.load(include_user=False).decide(KernelContext(CAT)).category == "MEMCPY"
    assert RuleSet.load([tmp_path / "r"], include_user=False).decide(KernelContext(CAT)).rule_id == "mine.cat"


def test_user_dir_from_environment(tmp_path, monkeypatch):
    write_pack(tmp_path / "u", "mine.toml", SWAP_CAT)
    monkeypatch.setenv("TRACEKIT_RULES", str(tmp_path / "u"))
    assert RuleSet.load().decide(KernelContext(CAT)).rule_id == "mine.cat"
    assert RuleSet.load(include_user=False).decide(KernelContext(CAT)).rule_id == "pt.cat"


def test_negative_priority_puts_a_pack_after_builtins(tmp_path):
    write_pack(tmp_path, "late.toml", SWAP_CAT.replace('name = "mine"', 'name = "mine"\npriority = -1'))
    rules = RuleSet.load([tmp_path], include_user=False, strict=False)
    assert rules.decide(KernelContext(CAT)).rule_id == "pt.cat"
    assert [i.kind for i in rules.check({(tmp_path / "late.toml").resolve()})] == ["shadowed"]


def test_overrides_replace_a_builtin_rule_by_id_and_disable_removes_one(tmp_path):
    body = SWAP_CAT.replace('name = "mine"', 'name = "mine"\noverrides = ["pytorch"]\ndisable = ["pt.fill"]')
    write_pack(tmp_path, "o.toml", body.replace('"mine.cat"', '"pt.cat"'))
    rules = RuleSet.load([tmp_path], include_user=False)
    assert [r.path.name for r in rules.rules if r.id == "pt.cat"] == ["o.toml"]
    fill = "void at::native::vectorized_elementwise_kernel<(int)4, at::native::FillFunctor<float>>(int, T2, T3)"
    assert rules.decide(KernelContext(fill)).rule_id == "pt.elementwise"


def test_same_id_without_overrides_is_an_error(tmp_path):
    write_pack(tmp_path, "d.toml", SWAP_CAT.replace('"mine.cat"', '"pt.cat"'))
    with pytest.raises(RuleError, match=r"d\.toml:\d+: rule pt\.cat: duplicate id"):
        RuleSet.load([tmp_path], include_user=False)


def test_a_pack_with_a_builtin_name_replaces_it(tmp_path):
    write_pack(tmp_path, "cublas.toml", SWAP_CAT.replace('name = "mine"', 'name = "cublas"'))
    rules = RuleSet.load([tmp_path], include_user=False)
    assert "cublas.nvjet" not in rules.by_id and "mine.cat" in rules.by_id
    assert rules.decide(KernelContext(NVJET_DECODE)).rule_id is None  # no "gemm" in its name


def test_settings_set_the_gemv_threshold(tmp_path):
    write_pack(tmp_path, "s.toml", "[settings]\ngemv_max_m = 32\n")
    assert RuleSet.load([tmp_path], include_user=False).gemv_max_m == 32
    assert RuleSet.load(include_user=False).gemv_max_m == 8


# -- rules check on broken files ---------------------------------------------------------------

def marked_lines(path: Path) -> list[int]:
    return [no for no, line in enumerate(path.read_text().splitlines(), 1) if "# <-" in line]


@pytest.mark.parametrize(("case", "kind"), [
    ("bad_regex", "invalid regex"),
    ("not_re2", "not a valid RE2 pattern"),
    ("duplicate_id", "duplicate id"),
    ("failing_example", "example"),
    ("shadowed", "shadowed"),
    ("bad_category", "is not one of"),
    ("bad_toml", "invalid TOML"),
])
def test_check_reports_each_kind_of_broken_rule_with_file_and_line(case, kind):
    pack = BROKEN / case / "pack.toml"
    result = run_cli("rules", "check", str(BROKEN / case))
    assert result.exit_code == 1
    reported = [line for line in result.stdout.splitlines() if line.strip()]
    assert reported and all(kind in line for line in reported), result.stdout
    found = sorted(int(re.match(r"(.+?):(\d+): ", line).group(2)) for line in reported)
    assert found == marked_lines(pack)
    assert all(line.startswith(str(pack.relative_to(ROOT)) + ":") or str(pack) in line for line in reported)


def test_check_passes_builtin_and_extra_packs():
    result = run_cli("rules", "check")
    assert result.exit_code == 0, result.stdout
    result = run_cli("rules", "check", str(ROOT / "fixtures" / "rules" / "extra"))
    assert result.exit_code == 0 and "ok: 1 rules" in result.stdout


def test_broken_rules_stop_classification_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["classify", "--db", str(tmp_path / "x.duckdb"),
                                       "--rules", str(BROKEN / "bad_regex")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: ") and "bad_regex/pack.toml:10" in lines[0]


# -- rules explain -----------------------------------------------------------------------------

def test_explain_names_the_winner_and_the_other_matches():
    result = run_cli("rules", "explain", NVJET_DECODE)
    assert result.exit_code == 0
    first, *rest = result.stdout.splitlines()
    assert first.startswith("GEMV by rule cublas.nvjet-skinny (rules/40-cublas.toml:") and first.endswith("evidence name")
    assert any(line.strip().startswith("cublas.nvjet -> GEMM") and "would match" in line for line in rest)
    shaped = run_cli("rules", "explain", NVJET_DECODE, "--op", "aten::mm", "--m", "64")
    assert shaped.stdout.startswith("GEMM by rule cublas.nvjet-skinny") and "shape:M=64" in shaped.stdout.splitlines()[0]
    assert run_cli("rules", "explain", "mystery_kernel").stdout.startswith("unclassified")


# -- odd rule files: one line naming the file, never a traceback or a hang ------------------------

def _odd_files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    cases = {
        "settings-int": "settings = 5\n",
        "rule-not-table": "rule = [1, 2]\n",
        "rule-string": 'rule = "x"\n',
        "shape-ops-int": "shape_ops = 3\n",
        "pack-int": "pack = 4\n",
        "deep-nesting": "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "deep-inline-tables": "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
    }
    out = {}
    for name, text in cases.items():
        d = root / name
        d.mkdir()
        (d / "pack.toml").write_text(text)
        out[name] = d
    loop = root / "symlink-loop"
    loop.mkdir()
    (loop / "self.toml").symlink_to("self.toml")
    out["symlink-loop"] = loop
    fifo = root / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "pipe.toml")
    out["fifo"] = fifo
    dev = root / "dev-zero"
    dev.mkdir()
    (dev / "zero.toml").symlink_to("/dev/zero")
    out["dev-zero"] = dev
    return out


def test_odd_rule_files_give_one_line_naming_the_file(tmp_path):
    for case, d in _odd_files(tmp_path / "odd").items():
        proc = tk("rules", "check", str(d), timeout=60)
        assert proc.returncode == 1, (case, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, (case, proc.stderr)
        problems = [line for line in proc.stdout.splitlines() if line.strip()]
        assert problems and all(str(d.relative_to(tmp_path)) in line or d.name in line for line in problems), (
            case, proc.stdout)
        # classify (strict load) stops with one line too.
        proc = tk("classify", "--db", str(tmp_path / f"{case}.duckdb"), "--rules", str(d), timeout=60)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (case, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("tracekit: error:") and d.name in lines[0], (case, lines)


def test_check_recurses_into_a_tree_of_packs(tmp_path):
    """Issue 11: `rules check DIR` looked only at DIR/*.toml and passed vacuously on a tree."""
    tree = tmp_path / "packs"
    shutil.copytree(BROKEN / "failing_example", tree / "team-a" / "gemm")
    (tree / "team-a" / "gemm" / "up").symlink_to("../..")  # a directory loop ends
    result = run_cli("rules", "check", str(tree))
    assert result.exit_code == 1 and "example" in result.stdout, result.stdout
    # ... and the same tree loads for classification.
    loaded = RuleSet.load([tree], include_user=False, strict=False)
    assert any(r.path.name == "pack.toml" and "team-a" in str(r.path) for r in loaded.rules)


def test_check_fails_on_a_directory_without_rule_files(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no rules here")
    result = run_cli("rules", "check", str(tmp_path / "empty"))
    assert result.exit_code == 1 and "no rule files" in result.stdout, result.stdout


def test_check_is_near_linear_in_the_number_of_rules(tmp_path):
    """Issue 17: 20k rules took 275 s (every example tried against every rule)."""
    def pack(n: int) -> Path:
        lines = ["[pack]", f'name = "big{n}"']
        for i in range(n):
            lines += ["[[rule]]", f'id = "big{n}.r{i}"', f"regex = '^kern{i}_[a-z]+_x$'", 'category = "GEMM"',
                      'explain = "generated"', f"examples = ['kern{i}_abc_x']", f"not_examples = ['kern{i}_abc_y']"]
        d = tmp_path / f"big{n}"
        d.mkdir()
        (d / "big.toml").write_text("\n".join(lines))
        return d

    times = {}
    for n in (2000, 8000):
        d = pack(n)
        started = time.perf_counter()
        result = run_cli("rules", "check", str(d))
        times[n] = time.perf_counter() - started
        assert result.exit_code == 0 and f"ok: {n} rules" in result.stdout, result.stdout
    # 4x the rules: quadratic would be 16x; allow generous noise on a shared machine.
    assert times[8000] < 8 * times[2000] + 1.0, times


def test_a_fifo_or_device_named_on_the_command_line_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        proc = tk("rules", "check", path, timeout=60)
        assert proc.returncode == 1 and "not a regular file" in proc.stdout, (path, proc.stdout, proc.stderr)
        proc = tk("classify", "--db", str(tmp_path / "x.duckdb"), "--rules", path, timeout=60)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr


def _itanium_nested_last(mangled: str) -> str:
    """Independent reading of `_ZN<len><id>...<len><id>I...` (or `_ZL<len><id>`): the last
    length-prefixed identifier of the nested name, i.e. the function's own name."""
    rest = mangled[3:] if mangled.startswith(("_ZN", "_ZL")) else mangled[2:]
    last = None
    while rest and rest[0].isdigit():
        digits = len(rest) - len(rest.lstrip("0123456789"))
        n = int(rest[:digits])
        last, rest = rest[digits:digits + n], rest[digits + n:]
    return last


def test_mangled_kernel_names_get_a_demangled_short_name():
    """Issue 12: mangled (`_Z...`) names were shown unshortened. Real names from the traces in
    ../shared/traces (aiter and SGLang on MI300X, Mixtral's CUTLASS grouped GEMM on H200)."""
    from tracekit.readers.common import demangle, short_name

    names = [
        "_ZN5aiter24add_rmsnorm_quant_kernelIDF16bDF16bLi256ELi16ELb1ELb0ELb1ELi1EEEvPT0_PT_PfS4_S4_S4_diiiiiiib",
        "_ZN7sgl_hip10activation18act_and_mul_kernelI14__hip_bfloat16TnPFT_RKS3_EXadL_Z4siluIS2_ES3_S5_EEEEvPS3_PS4_i",
        "_ZL23rocblas_gemvt_sn_reduceILi256ELi8EfPKf16rocblas_bfloat16Evi",
    ]
    for name in names:
        assert short_name(name) == _itanium_nested_last(name), name
        assert demangle(name) != name and "(" in demangle(name)
    assert short_name("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_TNT") == "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_TNT"
    assert demangle("_Zgarbage") == "_Zgarbage"  # not a valid mangled name: kept as it is
    # Rules see the demangled name: the aiter norm is NORM by a rule written on demangled text.
    rules = RuleSet.load(include_user=False)
    assert rules.decide(KernelContext(demangle(names[0]), short_name(names[0]))).category == "NORM"
