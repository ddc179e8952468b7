"""Classification of the real shared traces, checked against independent readings of the op
shapes and run metadata (not against the classifier's own output)."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import KINETO_L2, KINETO_L3, NSYS_L2, NSYS_L3_SHAPES, SHARED_META
from conftest import run_id_of as run_id

from tracekit.enrich.classify import classify
from tracekit.enrich.rules import CATEGORIES, RuleSet
from tracekit.outputs.cli import main
from tracekit.readers.common import KERNEL_SCHEMA, to_table
from tracekit.store import insert_kernels

ROOT = Path(__file__).resolve().parents[1]
RULES_FIXTURES = ROOT / "fixtures" / "rules"
GEMV_MAX_M = 8


@pytest.fixture(autouse=True)
def no_user_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACEKIT_RULES", str(tmp_path / "no-user-rules"))


@pytest.fixture()
def db(shared_db_copy):
    """The shared traces, re-classified with the built-in packs only."""
    con = duckdb.connect(str(shared_db_copy))
    classify(con, None, RuleSet.load(include_user=False))
    yield con, shared_db_copy
    con.close()



def activation_rows(input_dims: str) -> int:
    """M of an aten::mm: rows of the first operand (all its dims but the last)."""
    return math.prod(json.loads(input_dims)[0][:-1])


def nvjet_kernels(con, trace: Path, stage: str):
    return con.execute(
        "SELECT k.category, k.evidence, o.name, o.input_dims FROM kernels k "
        "LEFT JOIN ops o ON o.run_id = k.run_id AND o.op_id = k.op_id "
        "WHERE k.run_id = ? AND k.stage = ? AND k.name LIKE 'nvjet%'",
        [run_id(con, trace), stage],
    ).fetchall()


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_kernel_is_classified_or_counted_unclassified_and_coverage_is_99(db):
    con, _ = db
    rows = con.execute(
        "SELECT run_id, count(*), count(evidence), count(*) FILTER (WHERE category IS NULL), "
        "count(*) FILTER (WHERE evidence = 'unclassified'), sum(dur_ns), "
        "coalesce(sum(dur_ns) FILTER (WHERE category IS NOT NULL), 0) FROM kernels GROUP BY ALL"
    ).fetchall()
    assert len(rows) == 4
    for run, n, with_evidence, n_null, n_unclassified, total, classified in rows:
        assert with_evidence == n, f"run {run}: kernels left untouched"
        assert n_null == n_unclassified
        assert classified / total >= 0.99, f"run {run}: coverage {classified / total:.2%}"
    cats = {c for (c,) in con.execute("SELECT DISTINCT category FROM kernels WHERE category IS NOT NULL").fetchall()}
    assert cats <= set(CATEGORIES)


@pytest.mark.parametrize("trace", [KINETO_L2, NSYS_L3_SHAPES])
def test_decode_linear_layers_are_gemv_by_shape(db, trace):
    con, _ = db
    batch = int(SHARED_META[trace.name]["batch"])
    kernels = nvjet_kernels(con, trace, "generation")
    assert kernels
    for category, evidence, op, dims in kernels:
        assert op == "aten::mm"
        m = activation_rows(dims)
        assert m == batch * 1  # one new token per sequence
        assert category == "GEMV"
        assert evidence == f"shape:M={m}"


@pytest.mark.parametrize("trace", [KINETO_L3, NSYS_L3_SHAPES])
def test_prefill_linear_layers_are_gemm_by_shape(db, trace):
    con, _ = db
    meta = SHARED_META[trace.name]
    kernels = nvjet_kernels(con, trace, "summarization")
    assert kernels
    prompt_rows = int(meta["batch"]) * int(meta["input_len"])
    assert any(activation_rows(d) == prompt_rows for *_, d in kernels)
    for category, evidence, op, dims in kernels:
        m = activation_rows(dims)
        assert op == "aten::mm" and m > GEMV_MAX_M and category == "GEMM" and evidence == f"shape:M={m}"


def test_batch8_decode_at_the_threshold_is_gemv(db):
    con, _ = db
    kernels = nvjet_kernels(con, KINETO_L3, "generation")
    assert {activation_rows(d) for *_, d in kernels} == {8}
    assert {c for c, *_ in kernels} == {"GEMV"}


def test_decode_without_shapes_is_gemv_by_name_and_agrees_with_the_shaped_twin(db):
    """The nsys llama2 trace has no op shapes; the Kineto trace of the same model and batch has."""
    con, _ = db
    unshaped = con.execute(
        "SELECT DISTINCT name, category, evidence FROM kernels WHERE run_id = ? AND stage = 'generation' "
        "AND name LIKE 'nvjet%'", [run_id(con, NSYS_L2)]).fetchall()
    assert unshaped
    twin_m = {}
    for name, dims in con.execute(
            "SELECT k.name, o.input_dims FROM kernels k JOIN ops o ON o.run_id = k.run_id AND o.op_id = k.op_id "
            "WHERE k.run_id = ? AND k.name LIKE 'nvjet%'", [run_id(con, KINETO_L2)]).fetchall():
        twin_m.setdefault(name, set()).add(activation_rows(dims))
    batch = SHARED_META[NSYS_L2.name]["batch"]
    for name, category, evidence in unshaped:
        # The run's metadata gives the batch, so the decode pass decides (issue 12 item 5).
        assert evidence == f"pass:decode,batch={batch}"
        assert category == "GEMV"
        assert max(twin_m[name]) <= GEMV_MAX_M, name
    prefill = con.execute(
        "SELECT DISTINCT name, category FROM kernels WHERE run_id = ? AND stage = 'summarization' "
        "AND name LIKE 'nvjet%'", [run_id(con, NSYS_L2)]).fetchall()
    for name, category in prefill:
        assert category == ("GEMV" if max(twin_m[name]) <= GEMV_MAX_M else "GEMM"), name


def test_split_k_reduce_takes_the_class_of_its_gemm(db):
    con, _ = db
    rows = con.execute(
        "SELECT run_id, stream, start_ns, name, category, op_id FROM kernels ORDER BY run_id, stream, start_ns"
    ).fetchall()
    gemm = re.compile(r"^nvjet_|gemm")
    checked = 0
    last = {}
    for run, stream, _start, name, category, op_id in rows:
        if "splitKreduce_kernel" in name:
            prev_category, prev_op = last[(run, stream)]
            assert category == prev_category
            if op_id is not None:
                assert op_id == prev_op
            checked += 1
        elif gemm.search(name):
            last[(run, stream)] = (category, op_id)
    assert checked > 500
    no_shapes = con.execute("SELECT count(*) FROM kernels WHERE evidence LIKE 'prev_gemm:%'").fetchone()[0]
    assert no_shapes > 0


def test_classify_leaves_the_transaction_to_the_caller(db):
    con, _ = db
    before = con.execute("SELECT count(*) FROM kernels WHERE category = 'MEMCPY'").fetchone()[0]
    con.execute("BEGIN TRANSACTION")
    classify(con, None, RuleSet.load([RULES_FIXTURES / "extra"], include_user=False))
    assert con.execute("SELECT count(*) FROM kernels WHERE rule_id = 'user.kv-cat-attn'").fetchone()[0] > 0
    con.execute("ROLLBACK")
    assert con.execute("SELECT count(*) FROM kernels WHERE category = 'MEMCPY'").fetchone()[0] == before
    assert con.execute("SELECT count(*) FROM kernels WHERE rule_id = 'user.kv-cat-attn'").fetchone()[0] == 0


def test_a_rules_dir_changes_classification_without_code_changes(db):
    con, path = db
    n_cat = con.execute("SELECT count(*) FROM kernels WHERE name LIKE '%CatArrayBatchedCopy%'").fetchone()[0]
    assert n_cat > 0
    con.close()
    result = cli("classify", "--db", str(path), "--rules", str(RULES_FIXTURES / "extra"))
    assert result.exit_code == 0 and "classified" in result.stdout
    with duckdb.connect(str(path)) as con2:
        changed = con2.execute(
            "SELECT category, rule_id, count(*) FROM kernels WHERE name LIKE '%CatArrayBatchedCopy%' GROUP BY ALL"
        ).fetchall()
    assert changed == [("ATTN", "user.kv-cat-attn", n_cat)]
    assert cli("classify", "--db", str(path)).exit_code == 0
    with duckdb.connect(str(path)) as con2:
        back = con2.execute("SELECT DISTINCT category, rule_id FROM kernels WHERE name LIKE '%CatArrayBatchedCopy%'")
        assert back.fetchall() == [("MEMCPY", "pt.cat")]


def test_gemv_threshold_is_configurable(db):
    con, path = db
    con.close()
    assert cli("classify", "--db", str(path), "--gemv-max-m", "0").exit_code == 0
    with duckdb.connect(str(path)) as con2:
        kernels = nvjet_kernels(con2, KINETO_L2, "generation")
    assert kernels and {c for c, *_ in kernels} == {"GEMM"}


def test_coverage_reports_unclassified_time_without_changing_the_db(db):
    con, path = db
    run = run_id(con, KINETO_L2)
    cat_time, total = con.execute(
        "SELECT sum(dur_ns) FILTER (WHERE name LIKE '%CatArrayBatchedCopy%'), sum(dur_ns) FROM kernels WHERE run_id = ?",
        [run]).fetchone()
    con.close()
    result = cli("rules", "coverage", "--db", str(path), "--run", str(run), "--rules", str(RULES_FIXTURES / "no_cat"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"run {run} {KINETO_L2.name}: {1 - cat_time / total:.2%} of GPU time classified")
    assert any(line.split()[:2] == ["unclassified", f"{cat_time / total:.2%}"] for line in lines)
    assert any("CatArrayBatchedCopy" in line for line in lines[lines.index(next(x for x in lines if x.startswith("top"))):])
    with duckdb.connect(str(path)) as con2:
        assert con2.execute("SELECT count(*) FROM kernels WHERE category IS NULL").fetchone()[0] == 0


def test_suggest_drafts_rules_that_classify_the_missing_kernels(db, tmp_path):
    con, path = db
    con.close()
    assert cli("classify", "--db", str(path), "--rules", str(RULES_FIXTURES / "no_cat")).exit_code == 0
    result = cli("rules", "suggest", "--db", str(path))
    assert result.exit_code == 0
    drafts = tomllib.loads(result.stdout)["rule"]
    assert {d["category"] for d in drafts} == {"MEMCPY"}
    draft_dir = tmp_path / "drafts"
    draft_dir.mkdir()
    (draft_dir / "drafts.toml").write_text(result.stdout)
    assert cli("rules", "check", str(draft_dir)).exit_code == 0
    assert cli("classify", "--db", str(path), "--rules", str(draft_dir), "--rules", str(RULES_FIXTURES / "no_cat")).exit_code == 0
    with duckdb.connect(str(path)) as con2:
        assert con2.execute("SELECT count(*) FROM kernels WHERE category IS NULL").fetchone()[0] == 0
        assert con2.execute("SELECT count(*) FROM kernels WHERE rule_id LIKE 'user.%'").fetchone()[0] > 0


SPLITK = "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>(cublasLt::cublasSplitKParams<float>)"


def test_split_k_reduce_edge_cases_and_reclassification():
    """A reduce with no GEMM before it keeps its rule's class; resolved reduces follow their
    GEMM when a later classification changes that GEMM's class."""
    from importlib import resources

    con = duckdb.connect()
    con.execute(resources.files("tracekit").joinpath("schema.sql").read_text())
    con.execute("INSERT INTO runs (run_id, source_path, source_name, format, content_hash, importer_version, "
                "imported_at) VALUES (1, 'x', 'x', 'nsys-sqlite', 'h', 't', now())")
    kernels = [  # (kernel_id, name, stream, start)
        (0, SPLITK, 7, 0),                                            # no GEMM before it on stream 7
        (1, "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT", 7, 10),
        (2, "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT", 8, 15),  # another stream
        (3, SPLITK, 7, 20),
        (4, SPLITK, 8, 25),
    ]
    rows = to_table({
        "kernel_id": [i for i, *_ in kernels], "name": [n for _, n, *_ in kernels],
        "short_name": [n[:20] for _, n, *_ in kernels], "start_ns": [s for *_, s in kernels],
        "end_ns": [s + 1 for *_, s in kernels], "dur_ns": [1] * len(kernels),
        "stream": [st for _, _, st, _ in kernels],
    }, KERNEL_SCHEMA).append_column("op_id", pa.nulls(len(kernels), pa.int64()))
    con.register("_rows", rows)
    insert_kernels(con, 1, "_rows")
    rules = RuleSet.load(include_user=False)

    def verdicts():
        return con.execute("SELECT kernel_id, category, evidence FROM kernels ORDER BY 1").fetchall()

    classify(con, [1], rules)
    first = verdicts()
    assert first == [(0, "GEMM", "name"), (1, "GEMV", "name"), (2, "GEMM", "name"),
                     (3, "GEMV", "prev_gemm:name"), (4, "GEMM", "prev_gemm:name")]
    classify(con, [1], rules)
    assert verdicts() == first
    classify(con, [1], rules.with_gemv_max_m(0))  # no shapes: names decide, the threshold is moot
    assert verdicts() == first
    # Without the skinny-nvjet rule the GEMM becomes GEMM, and its already-resolved reduce follows.
    disabled = RuleSet.load([RULES_FIXTURES / "extra"], include_user=False)
    disabled.rules = [r for r in disabled.rules if r.id != "cublas.nvjet-skinny"]
    classify(con, [1], disabled)
    assert verdicts()[1] == (1, "GEMM", "name") and verdicts()[3] == (3, "GEMM", "prev_gemm:name")


def test_split_k_reduce_follows_a_gemm_of_its_own_gpu(tmp_path):
    """Issue 11: the follow join ignored the device, so a reduce could take the class (and
    evidence) of a GEMM on another GPU. In this export two processes on GPUs 0 and 1 both use
    stream 7; the predecessor of each reduce is read here from the SQLite file itself."""
    import sqlite3

    import tracekit

    src = ROOT / "fixtures" / "variants" / "nsys_two_processes_two_gpus.sqlite"
    lite = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    rows = lite.execute(
        "SELECT k.deviceId, k.streamId, k.start, s.value FROM CUPTI_ACTIVITY_KIND_KERNEL k "
        "JOIN StringIds s ON s.id = k.shortName ORDER BY k.deviceId, k.streamId, k.start").fetchall()
    # For each reduce: the (device, ordinal among that queue's kernels) of the latest cuBLAS GEMM before it.
    want: list[tuple[int, int, int]] = []  # (device, reduce ordinal, gemm ordinal)
    queue: tuple | None = None
    for device, stream, _start, name in rows:
        if (device, stream) != queue:
            queue, ordinal, last_gemm = (device, stream), -1, None
        ordinal += 1
        if name.startswith("nvjet_"):
            last_gemm = ordinal
        elif name == "splitKreduce_kernel" and last_gemm is not None:
            want.append((device, ordinal, last_gemm))
    assert {d for d, _, _ in want} == {0, 1}

    with tracekit.open(tmp_path / "two.duckdb") as db:
        [result] = db.import_paths([src])
        assert result.status == "imported", result.error
        got = db.con.execute(
            "SELECT device, category, evidence FROM kernels ORDER BY device, stream, start_ns, kernel_id").fetchall()
    by_device: dict[int, list] = {}
    for device, category, evidence in got:
        by_device.setdefault(device, []).append((category, evidence))
    for device, reduce_at, gemm_at in want:
        category, evidence = by_device[device][reduce_at]
        gemm_category, gemm_evidence = by_device[device][gemm_at]
        if evidence.startswith("prev_gemm:"):
            assert (category, evidence) == (gemm_category, "prev_gemm:" + gemm_evidence), (device, reduce_at)


@pytest.mark.parametrize(("name", "op", "dims", "category"), [
    # Real names: nvjet from the shared H100 traces; FBGEMM's from its own source (fbgemm_gpu),
    # which name "gemm" but are no matrix product.
    ("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT", "aten::mm", "[[8, 4096], [4096, 4096]]", "GEMV"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT", "aten::mm", "[[1024, 4096], [4096, 4096]]", "GEMM"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
     "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(float*, float const*, int)",
     "aten::_softmax", "[[8, 128256], [], []]", "SAMPLING"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
     "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(float*, float const*, int)",
     "aten::_softmax", "[[16, 12, 5185, 5185], [], []]", "ATTN"),
    ("void fbgemm_gpu::split_embedding_codegen_forward_unweighted_kernel<float, float>(...)", None, None, "EMBED"),
    ("void fbgemm_gpu::_float_to_FP8rowwise_cuda_kernel<float>(float const*, int, int, unsigned char*, bool)",
     None, None, "MEMCPY"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", None, None, "COMM"),
])
def test_suggest_proposes_a_category_from_the_evidence(name, op, dims, category):
    """Issue 16: every draft was `category = "OTHER"  # TODO`."""
    from tracekit.outputs.cli_rules import suggest_category, suggest_rule

    rules = RuleSet.load(include_user=False)
    got, reason = suggest_category(name, name, op, dims, rules.gemv_max_m, rules.shape_ops)
    assert got == category, reason
    draft = tomllib.loads(suggest_rule(name, name, 0.1, 3, op, dims, rules))["rule"][0]
    assert draft["category"] == category
    assert reason and reason.split()[0] in ("op", "name", "no")


def test_suggest_drafts_gemv_and_gemm_from_op_shapes(db, tmp_path):
    """With the cuBLAS rules disabled, the drafts for the nvjet kernels say GEMV or GEMM as the
    aten::mm shapes recorded in the trace say (read here with plain json)."""
    con, path = db
    con.close()
    pack = tmp_path / "nocublas"
    pack.mkdir()
    (pack / "off.toml").write_text('[pack]\nname = "off"\ndisable = ["cublas.nvjet", "cublas.nvjet-skinny", '
                                   '"cublas.splitk-reduce", "gemm.generic"]\n')
    assert cli("classify", "--db", str(path), "--rules", str(pack)).exit_code == 0
    with duckdb.connect(str(path), read_only=True) as con2:
        run = run_id(con2, KINETO_L3)
    result = cli("rules", "suggest", "--db", str(path), "--run", str(run), "--top", "40")
    assert result.exit_code == 0, result.output
    # Independent reading: every M of an aten::mm / aten::addmm activation in the trace.
    import gzip
    events = json.loads(gzip.decompress(KINETO_L3.read_bytes()))["traceEvents"]
    ms = set()
    for e in events:
        if e.get("cat") == "cpu_op" and e.get("name") in ("aten::mm", "aten::addmm"):
            dims = e["args"].get("Input Dims") or []
            act = dims[1] if e["name"] == "aten::addmm" else dims[0]
            if act:
                ms.add(math.prod(act[:-1]))
    drafted = re.findall(r'^category = "(\w+)"  # from the evidence: op aten::(?:mm|addmm) with M=(\d+)',
                         result.stdout, re.M)
    assert len(drafted) >= 2 and {c for c, _ in drafted} == {"GEMV", "GEMM"}, result.stdout
    for category, m in drafted:
        assert int(m) in ms
        assert category == ("GEMV" if int(m) <= GEMV_MAX_M else "GEMM")
