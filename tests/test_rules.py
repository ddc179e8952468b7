"""Rule loading, validation and matching, and the `tracekit rules check|explain` commands."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracekit.enrich.rules import (
    KernelContext,
    RuleError,
    RuleSet,
    ShapeOp,
    UnsafeRegex,
    compile_safe,
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


# -- regex safety ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", [r"^(\w+_)+kernel$", r"(a*)*b", r"(?:x+y?)+z", r"^\w+_\w+_\w+z", r"a.*b.*c", r"(a)\1"])
def test_unsafe_patterns_are_refused(pattern):
    with pytest.raises(UnsafeRegex):
        compile_safe(pattern)


@pytest.mark.parametrize("pattern", [r"^nvjet_", r"\bsplitKreduce_kernel\b", r"^triton_\w*?_fused_\w*?rsqrt",
                                     r"\breduce_kernel<.*\bMeanOps<float", r"^(?:void )?(?:internal::)?gemv"])
def test_ordinary_patterns_are_accepted(pattern):
    assert compile_safe(pattern).search is not None


def test_invalid_regex_raises_re_error():
    with pytest.raises(re.error):
        compile_safe("gemm(_kernel")


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


def test_names_are_truncated_before_matching():
    rules = RuleSet.load(include_user=False)
    long_name = "void at::native::foo<" + "x" * 5000 + ">(FillFunctor)"
    assert rules.decide(KernelContext(long_name)).category is None
    assert rules.decide(KernelContext("nvjet_" + "y" * 10000)).category == "GEMM"


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
    ("unsafe_regex", "nested unbounded quantifiers"),
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
