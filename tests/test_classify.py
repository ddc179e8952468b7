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
from conftest import KINETO_L2, KINETO_L3, NSYS_L2, NSYS_L3_SHAPES, SHARED_META, shared_trace
from conftest import run_id_of as run_id

import tracekit
from tracekit.enrich.classify import classify
from tracekit.enrich.rules import CATEGORIES, KernelContext, RuleSet
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
    kernels = [  # (kernel_id, name, stream, start)
        (0, SPLITK, 7, 0),                                            # no GEMM before it on stream 7
        (1, "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT", 7, 10),
        (2, "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT", 8, 15),  # another stream
        (3, SPLITK, 7, 20),
        (4, SPLITK, 8, 25),
    ]
    con = _generated_run(kernels)
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


SOFTMAX = ("void at::native::<unnamed>::cunn_SoftMaxForward<(int)4, float, float, float, "
           "at::native::<unnamed>::SoftMaxForwardEpilogue>(T4 *, const T2 *, int)")
NVJET = "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT"
EMBED = ("void at::native::<unnamed>::indexSelectSmallIndex<c10::BFloat16, long, unsigned int, (int)2, (int)2, "
         "(int)-2>(at::cuda::detail::TensorInfo<T1, T3>, at::cuda::detail::TensorInfo<const T1, T3>, "
         "at::cuda::detail::TensorInfo<const T2, T3>, int, int, T3, long)")


@pytest.mark.parametrize(("last_dim", "category"), [(128256, "SAMPLING"), (32000, "SAMPLING"), (5185, "ATTN"),
                                                     (77, "ATTN")])
def test_softmax_is_sampling_only_over_a_vocabulary(last_dim, category):
    """Issue 12: cunn_SoftMaxForward was always SAMPLING; on a vision trace it is the attention
    softmax over 5185 keys (the shape the issue reports)."""
    rules = RuleSet.load(include_user=False)
    d = rules.decide(KernelContext(SOFTMAX, op="aten::_softmax", last_dim=last_dim))
    assert d.category == category and d.evidence == f"shape:last_dim={last_dim}"


def _generated_run(kernels: list[tuple[int, str, int, int]], con=None, run: int = 1):
    """A database holding one run of the given (kernel_id, name, stream, start) rows, no ops (or
    that run added to `con`)."""
    from importlib import resources

    if con is None:
        con = duckdb.connect()
        con.execute(resources.files("tracekit").joinpath("schema.sql").read_text())
    con.execute("INSERT INTO runs (run_id, source_path, source_name, format, content_hash, importer_version, "
                "imported_at) VALUES (?, 'x', 'x', 'nsys-sqlite', ?, 't', now())", [run, f"h{run}"])
    rows = to_table({
        "kernel_id": [i for i, *_ in kernels], "name": [n for _, n, *_ in kernels],
        "short_name": [n[:20] for _, n, *_ in kernels], "start_ns": [s for *_, s in kernels],
        "end_ns": [s + 1 for *_, s in kernels], "dur_ns": [1] * len(kernels),
        "stream": [st for _, _, st, _ in kernels],
    }, KERNEL_SCHEMA).append_column("op_id", pa.nulls(len(kernels), pa.int64()))
    con.register("_rows", rows)
    insert_kernels(con, run, "_rows")
    con.unregister("_rows")
    return con


def test_softmax_without_shapes_is_decided_by_its_place():
    """No shapes: a softmax followed by a matrix product (attention's P x V) is attention; one after
    the pass's last matrix product (the next GEMM comes after the next pass's embedding lookup, or
    never) is the sampling softmax over the vocabulary."""
    con = _generated_run([
        (0, NVJET, 7, 0), (1, SOFTMAX, 7, 10), (2, NVJET, 7, 20),      # Q K^T, softmax, P V
        (3, NVJET, 7, 30), (4, SOFTMAX, 7, 40), (5, EMBED, 7, 50),     # LM head, softmax, next pass
        (6, NVJET, 7, 60), (7, SOFTMAX, 8, 65),                        # other stream: nothing after it
        (8, NVJET, 7, 70), (9, SOFTMAX, 7, 80),                        # the trace ends
    ])
    classify(con, [1], RuleSet.load(include_user=False))
    got = dict(((k, (c, e)) for k, c, e in con.execute(
        "SELECT kernel_id, category, evidence FROM kernels WHERE kernel_id IN (1, 4, 7, 9)").fetchall()))
    assert got == {1: ("ATTN", "place:before-gemm"), 4: ("SAMPLING", "place:after-last-gemm"),
                   7: ("SAMPLING", "place:last"), 9: ("SAMPLING", "place:last")}


def test_per_kernel_steps_over_many_runs_each_with_its_own_kind():
    """One call over runs of which only one has split-K reduces and another only shapeless
    softmaxes (each step reads only the runs with its kernels), selected by a list longer than
    64 ids (the store's run filter then selects through a temp table): each run's kernels are
    decided from its own queue, as the schedules below say."""
    con = _generated_run([(0, "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT", 7, 10), (1, SPLITK, 7, 20)])
    _generated_run([(0, NVJET, 7, 0), (1, SOFTMAX, 7, 15), (2, NVJET, 7, 30)], con, run=2)
    _generated_run([(0, NVJET, 7, 0), (1, EMBED, 7, 25)], con, run=3)
    classify(con, [1, 2, 3, *range(100, 170)], RuleSet.load(include_user=False))
    got = con.execute("SELECT run_id, kernel_id, category, evidence FROM kernels "
                      "WHERE kernel_id = 1 ORDER BY run_id").fetchall()
    assert got == [(1, 1, "GEMV", "prev_gemm:name"), (2, 1, "ATTN", "place:before-gemm"), (3, 1, "EMBED", "name")]


# -- MoE (issue 12 item 4) --------------------------------------------------------------------------

def _grouped_mm_tokens_per_expert(trace: Path) -> dict[str, set[float]]:
    """Independent reading: tokens per expert of every aten::_grouped_mm in the trace, from its own
    input dims (routed tokens [T, K] x expert weights [E, K, N]), keyed by the pass it runs in as
    its T shows (prefill T = batch x input x top-k)."""
    import gzip
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    out: dict[str, set[float]] = {}
    for e in events:
        if e.get("cat") == "cpu_op" and e.get("name") == "aten::_grouped_mm":
            tokens, weights = e["args"]["Input Dims"][:2]
            out.setdefault("all", set()).add(tokens[0] / weights[0])
    return out


def test_moe_expert_gemms_are_gemv_or_gemm_by_tokens_per_expert(tmp_path):
    """Mixtral (8 experts, top-2) at batch 8: in decode each expert sees 8 x 2 / 8 = 2 tokens (the
    GEMV regime) though its kernel is a CUTLASS grouped GEMM; in prefill 128. Read from the
    trace's own op shapes."""
    from conftest import shared_trace

    import tracekit

    trace = shared_trace("h200/mixtral-8x7b-2L_b8_i64_o8.pt.trace.json.gz")
    per_expert = _grouped_mm_tokens_per_expert(trace)["all"]
    assert min(per_expert) <= GEMV_MAX_M < max(per_expert)
    with tracekit.open(tmp_path / "moe.duckdb") as db:
        [r] = db.import_paths([trace])
        assert r.status == "imported", r.error
        rows = db.con.execute(
            "SELECT k.category, k.evidence, k.stage, count(*) FROM kernels k "
            "WHERE k.evidence LIKE 'moe:%' GROUP BY ALL").fetchall()
    assert rows
    seen = set()
    for category, evidence, _stage, _n in rows:
        tpe = float(evidence.split("tokens/expert=")[1])
        assert tpe in per_expert
        assert category == ("GEMV" if tpe <= GEMV_MAX_M else "GEMM")
        seen.add(category)
    assert seen == {"GEMV", "GEMM"}
    # decode passes are the GEMV ones
    assert {c for c, _e, s, _n in rows if s == "generation"} == {"GEMV"}


def test_moe_without_shapes_uses_batch_top_k_and_experts_from_the_metadata(tmp_path):
    """The same trace with its op shapes removed (as a CUDA-graph replay has none): tokens per
    expert come from the run's metadata (batch, and the HF config's top-k and experts)."""
    import gzip

    from conftest import shared_trace

    import tracekit

    trace = shared_trace("h200/mixtral-8x7b-2L_b8_i64_o8.pt.trace.json.gz")
    manifest = json.loads(trace.with_name("mixtral-8x7b-2L_b8_i64_o8.manifest.json").read_text())
    config = json.loads(manifest["config"])
    want = manifest["batch"] * config["num_experts_per_tok"] / config["num_local_experts"]
    obj = json.loads(gzip.decompress(trace.read_bytes()))
    for e in obj["traceEvents"]:
        if isinstance(e.get("args"), dict):
            for key in ("Input Dims", "Input type", "Input Strides", "Concrete Inputs"):
                e["args"].pop(key, None)
    copy = tmp_path / "mixtral-noshapes.pt.trace.json"
    copy.write_text(json.dumps(obj))
    with tracekit.open(tmp_path / "moe.duckdb") as db:
        [r] = db.import_paths([copy], meta={"batch": str(manifest["batch"]), "input_len": str(manifest["input_len"]),
                                            "moe_top_k": str(config["num_experts_per_tok"]),
                                            "moe_experts": str(config["num_local_experts"])})
        assert r.status == "imported", r.error
        rows = db.con.execute("SELECT DISTINCT category, evidence FROM kernels WHERE evidence LIKE 'moe:%' "
                              "AND stage = 'generation'").fetchall()
    assert rows == [("GEMV", f"moe:pass:decode,batch={manifest['batch']},tokens/expert={want:g}")]


# -- CUDA graphs (issue 12 item 5) ------------------------------------------------------------------

def test_cuda_graph_decode_gemms_are_decided_by_their_pass(tmp_path):
    """Replayed graph kernels carry no CPU op, so no shapes: with the batch known (1, as
    ../shared/traces/h200/README.md records), every linear of a decode pass has M = 1 and is GEMV,
    whatever its tile; the marked and unmarked traces of the same run give the same composition."""
    import gzip

    from conftest import shared_trace

    import tracekit

    marked = shared_trace("h200/llama3-8b-2L-cudagraph_marked_b1_i64_o16.pt.trace.json.gz")
    unmarked = shared_trace("h200/llama3-8b-2L-cudagraph_unmarked_b1_i64_o16.pt.trace.json.gz")
    # Independent reading: the kernels launched by cudaGraphLaunch (by correlation) include
    # cuBLAS GEMMs (the decode pass's linears).
    events = json.loads(gzip.decompress(marked.read_bytes()))["traceEvents"]
    graph_corr = {e["args"]["correlation"] for e in events
                  if e.get("cat") == "cuda_runtime" and e.get("name", "").startswith("cudaGraphLaunch")}
    replayed = [e["name"] for e in events if e.get("cat") == "kernel" and e["args"].get("correlation") in graph_corr]
    assert sum(n.startswith("nvjet_") for n in replayed) > 0

    shares = {}
    with tracekit.open(tmp_path / "cg.duckdb") as db:
        for trace in (marked, unmarked):
            [r] = db.import_paths([trace], meta={"batch": "1"})
            assert r.status == "imported", r.error
            run = r.run_id
            rows = db.con.execute(
                "SELECT DISTINCT category, evidence FROM kernels WHERE run_id = ? AND stage = 'generation' "
                "AND rule_id LIKE 'cublas.%' AND op_id IS NULL", [run]).fetchall()
            assert rows and {c for c, _ in rows} == {"GEMV"}, rows
            assert {e.removeprefix("prev_gemm:") for _, e in rows} == {"pass:decode,batch=1"}
            shares[trace.name] = dict(db.con.execute(
                "SELECT bucket, share FROM composition WHERE run_id = ?", [run]).fetchall())
    a, b = shares.values()
    for bucket in set(a) | set(b):
        assert abs(a.get(bucket, 0) - b.get(bucket, 0)) < 0.01, bucket


def test_composition_shows_moe_gemv_apart_from_dense(tmp_path):
    """Decode expert GEMMs land in 'Gen MoE GEMV', dense decode linears stay in 'Gen GEMV'; the
    bucket holds exactly the time of the grouped-GEMM kernels of decode (names read here with
    plain json; the run's stages from tracekit). Queried with a run_id filter (DuckDB 2.0.1)."""
    trace = shared_trace("h200/mixtral-8x7b-2L_b8_i64_o8.pt.trace.json.gz")
    with tracekit.open(tmp_path / "moe.duckdb") as db:
        [r] = db.import_paths([trace])
        shares = dict(db.con.execute("SELECT bucket, time_ns FROM composition WHERE run_id = ?",
                                     [r.run_id]).fetchall())
        grouped = db.con.execute(
            "SELECT sum(dur_ns) FROM kernels WHERE run_id = ? AND stage = 'generation' "
            "AND name LIKE '%GroupProblemShape%'", [r.run_id]).fetchone()[0]
    assert shares["Gen MoE GEMV"] == grouped > 0
    assert shares.get("Gen GEMV", 0) > 0  # the dense attention projections and the LM head
