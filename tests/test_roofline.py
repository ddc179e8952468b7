"""Work per kernel, GPU peaks and the roofline views on real H100/H200 traces.

Expected values are computed here from the model configs (capture/models.py, or the config a
capture manifest recorded) and each trace's batch / input / output lengths, never from
tracekit's own output: the FLOPs and bytes of the linear layers, the weights a decode pass reads.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import (
    FIXTURES,
    KINETO_L2,
    KINETO_L3,
    NSYS_L2,
    NSYS_L3_SHAPES,
    ROOT,
    SHARED_META,
    shared_trace,
    tk,
)

import tracekit
from tracekit.capture.models import BUILTIN

H100 = FIXTURES / "h100"
# H100 traces with op shapes: (trace, metadata a user would give). The fixtures/h100 ones carry
# their manifest; the shared ones get SHARED_META (and the nsys export, whose emit_nvtx ranges
# record sizes but no dtypes, the run's dtype).
SHAPED = [
    *(p for p in sorted(H100.glob("*.pt.trace.json.gz"))),
    H100 / "gemma-2b-2L_b8_i64_o8.sqlite",
    KINETO_L2, KINETO_L3, NSYS_L3_SHAPES,
]


def _meta_of(trace: Path) -> dict[str, str]:
    if trace.name in SHARED_META:
        meta = dict(SHARED_META[trace.name])
        if trace.suffix == ".sqlite":
            meta["dtype"] = "bfloat16"
        return meta
    stem = trace.name.split(".")[0]
    m = json.loads((trace.parent / f"{stem}.manifest.json").read_text())
    return {k: str(m[k]) for k in ("model", "layers", "batch", "input_len", "output_len", "dtype")}


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("roofline") / "r.duckdb"
    db = tracekit.open(path)
    for trace in SHAPED:
        res = db.import_paths([trace], meta=_meta_of(trace))
        assert res[0].status == "imported", res[0].error
    res = db.import_paths([NSYS_L2], meta=SHARED_META[NSYS_L2.name])  # no op shapes at all
    assert res[0].status == "imported"
    db.close()
    return path


def _run(con, trace: Path) -> int:
    return con.execute("SELECT run_id FROM runs WHERE source_name = ?", [trace.name]).fetchall()[0][0]


def _linears(cfg: dict, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of one decoder layer's linear layers for `tokens` rows, from the config."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or h // nh
    return [(tokens, h, nh * hd), (tokens, h, nkv * hd), (tokens, h, nkv * hd), (tokens, nh * hd, h),
            (tokens, h, inter), (tokens, h, inter), (tokens, inter, h)]


def _expected(cfg: dict, layers: int, batch: int, input_len: int, output_len: int, stage: str,
              logits_all: bool = False):
    """FLOPs and bytes (bf16) of every linear layer in a stage: 2*M*N*K and A + B + C."""
    def pass_mats(tokens: int) -> list[tuple[int, int, int]]:
        # The vocabulary projection: capture/hf_pytorch.py asks for the last position's logits only
        # (logits_to_keep=1); ../shared/traces/how-recorded.py calls model(ids), every position.
        rows = tokens if logits_all else batch
        return _linears(cfg, tokens) * layers + [(rows, cfg["hidden_size"], cfg["vocab_size"])]
    if stage == "summarization":
        mats = pass_mats(batch * input_len)
    else:
        mats = pass_mats(batch) * (output_len - 1)
    flops = sum(2 * m * k * n for m, k, n in mats)
    nbytes = sum(2 * (m * k + k * n + m * n) for m, k, n in mats)
    return flops, nbytes


@pytest.mark.parametrize("trace", SHAPED, ids=lambda p: p.name)
@pytest.mark.parametrize("stage", ["summarization", "generation"])
def test_linear_layers_match_the_model_config(db_path, trace, stage):
    meta = _meta_of(trace)
    cfg = BUILTIN[meta["model"]]
    flops, nbytes = _expected(cfg, int(meta["layers"]), int(meta["batch"]), int(meta["input_len"]),
                              int(meta["output_len"]), stage, logits_all=trace.name in SHARED_META)
    db = tracekit.open(db_path, read_only=True)
    rid = _run(db.con, trace)
    got = db.con.execute(
        "SELECT sum(flops), sum(bytes), sum(weight_bytes), count(*) FROM kernel_work "
        "WHERE run_id = ? AND stage = ? AND kind = 'matmul' AND weight_bytes > 0", [rid, stage]).fetchall()[0]
    assert got[0] == pytest.approx(flops, rel=1e-9)
    assert got[1] == pytest.approx(nbytes, rel=1e-9)
    # No matmul kernel of the stage is left without a count.
    missing = db.con.execute(
        "SELECT count(*) FROM kernel_work WHERE run_id = ? AND stage = ? AND category IN ('GEMM', 'GEMV') "
        "AND bytes IS NULL", [rid, stage]).fetchall()[0][0]
    assert missing == 0


def test_split_k_op_counted_once(db_path):
    """The nsys shapes trace runs decode GEMVs as split-K GEMM + reduce: two kernels, one op."""
    db = tracekit.open(db_path, read_only=True)
    rid = _run(db.con, NSYS_L3_SHAPES)
    rows = db.con.execute(
        "SELECT op_id, count(*), sum(share), sum(flops), any_value(op_name) FROM kernel_work "
        "WHERE run_id = ? AND op_id IS NOT NULL AND flops IS NOT NULL GROUP BY op_id HAVING count(*) > 1",
        [rid]).fetchall()
    assert rows, "the trace has ops with several kernels"
    assert {r[4] for r in rows} >= {"aten::mm"}
    for _op, n, share, _flops, _name in rows:
        assert share == pytest.approx(1.0, rel=1e-12), n


def _max_roof(con) -> tuple:
    return con.execute("SELECT max(roof_share), arg_max(short_name, roof_share), arg_max(evidence, roof_share), "
                       "count(roof_share) FROM kernel_work").fetchall()[0]


def test_no_kernel_above_its_roof(db_path):
    db = tracekit.open(db_path, read_only=True)
    top, name, evidence, n = _max_roof(db.con)
    assert n > 10000
    assert top <= 1.0, (name, evidence)


@pytest.mark.parametrize("rel", ["h200/llama3-8b-4L_tp2_rank0_b8_i64_o8.pt.trace.json.gz",
                                 "h200/llama3-8b-4L_tp2_rank1_b8_i64_o8.pt.trace.json.gz",
                                 "h200/mixtral-8x7b-2L_b8_i64_o8.pt.trace.json.gz",
                                 "h200/llama3-8b-2L-cudagraph_marked_b1_i64_o16.pt.trace.json.gz"])
def test_no_kernel_above_its_roof_h200(tmp_path, rel):
    db = tracekit.open(tmp_path / "h.duckdb")
    assert db.import_paths([shared_trace(rel)])[0].status == "imported"
    top, name, evidence, n = _max_roof(db.con)
    assert n > 100  # the CUDA-graph trace: only its eager prefill has op shapes
    assert top <= 1.0, (name, evidence)
    assert db.con.execute("SELECT peak_gpu FROM run_peaks").fetchall() == [("NVIDIA H200 SXM",)]


def _h200_copy_tbps() -> float:
    data = json.loads((ROOT / "results" / "roofline" / "h200_measured_peaks.json").read_text())
    return (data["copy"]["tbps_median"] + data["copy_again"]["tbps_median"]) / 2


# What a device-to-device copy reaches (bytes read + written): the H100's from
# results/REPRODUCTION.md, the H200's from this project's own measurement.
H100_COPY_TBPS = 3.0


@pytest.mark.parametrize("trace", [p for p in SHAPED if "_b1_" in p.name], ids=lambda p: p.name)
def test_gen_gemv_bandwidth_is_in_the_device_copy_range(db_path, trace):
    db = tracekit.open(db_path, read_only=True)
    bw = db.con.execute("SELECT achieved_bytes_per_s FROM roofline WHERE run_id = ? AND stage = 'generation' "
                        "AND category = 'GEMV'", [_run(db.con, trace)]).fetchall()[0][0]
    assert 0.6 * H100_COPY_TBPS * 1e12 < bw < 1.05 * H100_COPY_TBPS * 1e12


def test_gen_gemv_bandwidth_h200(tmp_path):
    db = tracekit.open(tmp_path / "h.duckdb")
    db.import_paths([shared_trace("h200/llama3-8b-4L_tp2_rank0_b8_i64_o8.pt.trace.json.gz")])
    bw = db.con.execute("SELECT achieved_bytes_per_s FROM roofline WHERE stage = 'generation' "
                        "AND category = 'GEMV'").fetchall()[0][0]
    copy = _h200_copy_tbps() * 1e12
    assert 0.6 * copy < bw < 1.05 * copy


def test_decode_ideal_reads_the_weights_once_and_a_growing_kv_cache(db_path):
    trace = H100 / "llama3-8b-2L_b1_i64_o8.pt.trace.json.gz"
    meta = _meta_of(trace)
    cfg, layers, batch = BUILTIN["llama3-8b"], int(meta["layers"]), int(meta["batch"])
    weights = 2 * (layers * sum(k * n for _m, k, n in _linears(cfg, 1)) + cfg["hidden_size"] * cfg["vocab_size"])
    nkv = cfg["num_key_value_heads"]
    hd = cfg["head_dim"]
    db = tracekit.open(db_path, read_only=True)
    rows = db.con.execute("SELECT step, weight_bytes, kv_bytes, ideal_ns, peak_bytes_per_s, time_ns, kernel_hbm_share "
                          "FROM decode_ideal WHERE run_id = ? ORDER BY step", [_run(db.con, trace)]).fetchall()
    assert [r[0] for r in rows] == list(range(1, int(meta["output_len"])))
    for step, w, kv, ideal, bw, time_ns, share in rows:
        assert w == pytest.approx(weights, rel=1e-12)
        # Step k attends to input_len + k positions: keys and values of every layer, bf16.
        kv_len = int(meta["input_len"]) + step
        assert kv == pytest.approx(layers * 2 * batch * nkv * kv_len * hd * 2, rel=1e-12)
        assert ideal == pytest.approx((w + kv) / bw * 1e9)
        assert 0.3 < share < 1.0 and share == pytest.approx(ideal / time_ns)


def test_grouped_matmul_work_mixtral(tmp_path):
    """Mixtral's experts run as one grouped GEMM per projection: FLOPs of the routed tokens."""
    trace = shared_trace("h200/mixtral-8x7b-2L_b8_i64_o8.pt.trace.json.gz")
    manifest = json.loads(trace.with_name("mixtral-8x7b-2L_b8_i64_o8.manifest.json").read_text())
    cfg = json.loads(manifest["config"])
    db = tracekit.open(tmp_path / "m.duckdb")
    db.import_paths([trace])
    got = db.con.execute("SELECT sum(flops) FROM kernel_work WHERE stage = 'summarization' "
                         "AND op_name = 'aten::_grouped_mm'").fetchall()[0][0]
    tokens = manifest["batch"] * manifest["input_len"] * cfg["num_experts_per_tok"]
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    expected = manifest["layers"] * (2 * tokens * h * 2 * inter + 2 * tokens * inter * h)
    assert got == pytest.approx(expected, rel=1e-9)


def test_roofline_view_with_run_filter_matches_unfiltered(db_path):
    """DuckDB 2.0.1 can mis-sum views with LEFT JOINs under a run_id filter (stop 9)."""
    db = tracekit.open(db_path, read_only=True)
    cols = "stage, category, n_kernels, time_ns, n_with_work, flops, bytes, bound_ns"
    every = db.con.execute(f"SELECT run_id, {cols} FROM roofline ORDER BY ALL").fetchall()
    for rid in sorted({r[0] for r in every}):
        one = db.con.execute(f"SELECT run_id, {cols} FROM roofline WHERE run_id = ? ORDER BY ALL", [rid]).fetchall()
        want = [r for r in every if r[0] == rid]
        assert [r[:6] for r in one] == [r[:6] for r in want]
        for got, exp in zip(one, want, strict=True):
            for g, e in zip(got[6:], exp[6:], strict=True):
                assert g == (None if e is None else pytest.approx(e, rel=1e-9))
    # Kernel time in the roofline view is all the run's kernel time, with or without work.
    for rid, total in db.con.execute("SELECT run_id, kernel_time_ns FROM runs").fetchall():
        assert db.con.execute("SELECT sum(time_ns) FROM roofline WHERE run_id = ?", [rid]).fetchall()[0][0] == total


def test_trace_without_shapes_says_what_is_missing(db_path):
    db = tracekit.open(db_path, read_only=True)
    rid = _run(db.con, NSYS_L2)
    rows = db.con.execute("SELECT count(*), count(flops), any_value(evidence) FROM kernel_work WHERE run_id = ?",
                          [rid]).fetchall()[0]
    assert rows[0] > 0 and rows[1] == 0 and "no linked CPU op" in rows[2]


def test_views_on_a_database_without_ops(tmp_path):
    db = tracekit.open(tmp_path / "n.duckdb")
    db.import_paths([NSYS_L2])
    assert db.con.execute("SELECT count(*) FROM ops").fetchall()[0][0] == 0
    n = db.con.execute("SELECT count(*), count(bytes) FROM kernel_work WHERE run_id = 1").fetchall()[0]
    assert n[0] == db.con.execute("SELECT n_kernels FROM runs").fetchall()[0][0] and n[1] == 0
    assert db.con.execute("SELECT count(*) FROM decode_ideal WHERE ideal_bytes IS NOT NULL").fetchall()[0][0] == 0


# ---- the peaks table ---------------------------------------------------------------------------

def _gpu_name_of(trace: Path) -> str:
    with gzip.open(trace, "rt") as f:
        return json.load(f)["deviceProperties"][0]["name"]


def test_peaks_chosen_from_the_trace_gpu_name(db_path):
    db = tracekit.open(db_path, read_only=True)
    assert _gpu_name_of(KINETO_L2) == "NVIDIA H100 80GB HBM3"
    rows = db.con.execute("SELECT DISTINCT gpu_name, peak_gpu, bf16_flops_per_s, bytes_per_s, source "
                          "FROM run_peaks").fetchall()
    assert len(rows) == 1
    gpu, peak, bf16, bw, source = rows[0]
    assert (gpu, peak, bf16, bw) == ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM", 989.4e12, 3.35e12)
    assert "datasheet" in source


@pytest.mark.parametrize("name, part", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"), ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
    ("NVIDIA H100 NVL", "NVIDIA H100 NVL"), ("NVIDIA H200", "NVIDIA H200 SXM"),
    ("NVIDIA A100-SXM4-40GB", "NVIDIA A100 40GB"), ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB SXM"),
    ("NVIDIA A100 80GB PCIe", "NVIDIA A100 80GB PCIe"), ("NVIDIA L40S", "NVIDIA L40S"),
    ("NVIDIA RTX 6000 Ada Generation", "NVIDIA RTX 6000 Ada Generation"), ("NVIDIA B200", "NVIDIA B200"),
    ("AMD Instinct MI300X", "AMD Instinct MI300X"), ("Tesla T4", None),
])
def test_peak_entry_per_gpu_name(tmp_path, name, part):
    import duckdb

    from tracekit import peaks
    con = duckdb.connect()
    peaks.install(con)
    got = con.execute("SELECT name, bytes_per_s, source FROM gpu_peaks WHERE regexp_matches(?, pattern) "
                      "ORDER BY ord LIMIT 1", [name]).fetchall()[0]
    assert got[0] == part
    if part is None:
        assert got[1] is None and "--peak-tflops" in got[2]
    else:
        assert got[1] > 0 and got[2]


def test_every_peak_entry_names_its_source():
    from tracekit.peaks import builtin_entries
    entries = builtin_entries()
    assert len(entries) >= 11
    for e in entries:
        assert e["source"] and e["hbm_tbps"] > 0 and e["bf16_tflops"] > 0, e["name"]
        assert e.get("fp8_tflops", 2 * e["bf16_tflops"]) == pytest.approx(2 * e["bf16_tflops"], rel=0.02)


def test_measured_h200_peaks_are_below_the_datasheet():
    data = json.loads((ROOT / "results" / "roofline" / "h200_measured_peaks.json").read_text())
    from tracekit.peaks import builtin_entries
    h200 = next(e for e in builtin_entries() if e["name"] == "NVIDIA H200 SXM")
    mm = {r["dtype"]: r for r in data["matmul"]}
    assert data["gpu"] == "NVIDIA H200"
    assert 0.5 * h200["bf16_tflops"] < mm["bf16"]["tflops_median"] < h200["bf16_tflops"]
    assert 0.5 * h200["hbm_tbps"] < data["copy"]["tbps_median"] < h200["hbm_tbps"]
    assert mm["bf16"]["rel_err"] < 1e-2
    assert f"{mm['bf16']['tflops_median']:.0f} TFLOP/s" in h200["measured"]


def test_override_from_flags_and_file(db_path, tmp_path):
    from tracekit import peaks
    db = tracekit.open(db_path, read_only=True)
    peaks.override(db.con, tensor_tflops=500, hbm_tbps=2.5)
    assert db.con.execute("SELECT DISTINCT bf16_flops_per_s, fp8_flops_per_s, bytes_per_s FROM run_peaks").fetchall() \
        == [(500e12, 500e12, 2.5e12)]
    user = tmp_path / "p.toml"
    user.write_text('[[gpu]]\nname = "my H100"\nmatch = "H100"\nbf16_tflops = 700\nhbm_tbps = 3.0\nl2_mb = 50\n'
                    'source = "measured in my lab"\n')
    peaks.override(db.con, peaks_file=str(user))
    assert db.con.execute("SELECT DISTINCT peak_gpu, bf16_flops_per_s, bytes_per_s, source FROM run_peaks").fetchall() \
        == [("my H100", 700e12, 3.0e12, "measured in my lab")]
    # The bound follows the roof: a kernel's bound_ns under 3.0 TB/s is 3.35/3.0 times the datasheet one.
    bound = db.con.execute("SELECT sum(bound_ns) FROM kernel_work WHERE category = 'GEMV'").fetchall()[0][0]
    peaks.override(db.con)
    datasheet = db.con.execute("SELECT sum(bound_ns) FROM kernel_work WHERE category = 'GEMV'").fetchall()[0][0]
    assert bound == pytest.approx(datasheet * 3.35 / 3.0, rel=1e-3)


# ---- the op work model, on ops as the traces record them -------------------------------------

def _attention_flops(q, k, v) -> int:
    """SDPA layout [B, H, L, D]; a query longer than one token under the causal mask."""
    b, hq, lq, d = q
    lk = k[2]
    pairs = lq * (lk - lq) + lq * (lq + 1) // 2 if 1 < lq <= lk else lq * lk
    return 2 * b * hq * pairs * (d + v[3])


def test_attention_work_from_the_raw_trace(db_path):
    """GQA prefill and decode of the Llama-3-8B trace: every attention op's shapes, read from the
    trace file itself, and the FLOPs the view gives for them."""
    with gzip.open(KINETO_L3, "rt") as f:
        events = json.load(f)["traceEvents"]
    in_trace = {json.dumps(e["args"]["Input Dims"][:3]) for e in events
                if e.get("cat") == "cpu_op" and e.get("name") == "aten::_cudnn_attention_forward"}
    assert len(in_trace) > 10
    db = tracekit.open(db_path, read_only=True)
    rows = db.con.execute("SELECT DISTINCT w.input_dims, w.flops, w.bytes, w.kv_bytes, w.evidence FROM op_work w "
                          "JOIN ops o ON o.name = w.name AND o.input_dims = w.input_dims "
                          "WHERE o.run_id = ? AND w.name = 'aten::_cudnn_attention_forward'",
                          [_run(db.con, KINETO_L3)]).fetchall()
    assert {json.dumps(json.loads(r[0])[:3]) for r in rows} == in_trace
    for dims, flops, nbytes, kv, evidence in rows:
        q, k, v = json.loads(dims)[:3]
        assert q[1] == 32 and k[1] == 8  # GQA: 32 query heads over 8 KV heads
        assert flops == _attention_flops(q, k, v)
        assert kv == 2 * (math.prod(k) + math.prod(v))
        assert nbytes == 2 * (2 * math.prod(q) + math.prod(k) + math.prod(v))
        assert ("causal:assumed" in evidence) == (q[2] > 1)


def test_work_is_null_with_a_reason(tmp_path):
    db = tracekit.open(tmp_path / "n.duckdb")
    db.import_paths([NSYS_L3_SHAPES])  # emit_nvtx sizes, no dtypes, no --meta dtype
    rows = db.con.execute("SELECT op_name, flops, bytes, evidence FROM kernel_work WHERE op_name = 'aten::mm' "
                          "AND evidence LIKE '%M=4,%' OR (op_name = 'aten::mm' AND bytes IS NULL) LIMIT 5").fetchall()
    assert rows and all(r[1] > 0 and r[2] is None and "set --meta dtype" in r[3] for r in rows)
    db.con.execute("INSERT INTO run_meta VALUES (1, 'dtype', 'bfloat16', 'cli')")
    assert db.con.execute("SELECT count(*) FROM kernel_work WHERE op_name = 'aten::mm' AND bytes IS NULL"
                          ).fetchall()[0][0] == 0
    t = db.con.execute("SELECT evidence FROM op_work WHERE name = 'aten::topk' OR name = 'aten::t' LIMIT 1").fetchall()
    assert not t or "no work model" in t[0][0]


def test_cli_roofline_every_format(db_path, tmp_path):
    copy = tmp_path / "c.duckdb"
    shutil.copy(db_path, copy)
    for fmt in ("table", "csv", "json", "markdown"):
        r = tk("roofline", "--db", str(copy), "--format", fmt)
        assert r.returncode == 0, r.stderr
        assert "GEMV" in r.stdout
    r = tk("roofline", "--db", str(copy), "--format", "json", "--stage", "generation")
    rows = json.loads(r.stdout)
    assert rows and all(x["stage"] == "generation" for x in rows)
    gemv = [x for x in rows if x["category"] == "GEMV" and x["source_name"] == KINETO_L2.name][0]
    assert 0 < gemv["hbm_share"] < 1


def test_cli_roofline_says_what_is_missing(tmp_path):
    db = tracekit.open(tmp_path / "n.duckdb")
    db.import_paths([NSYS_L2])
    db.close()
    r = tk("roofline", "--db", str(tmp_path / "n.duckdb"))
    assert r.returncode == 0, r.stderr
    assert "no linked CPU op" in r.stderr and "emit_nvtx" in r.stderr


def test_cli_roofline_peak_flags_and_bad_file(db_path, tmp_path):
    copy = tmp_path / "c.duckdb"
    shutil.copy(db_path, copy)
    r = tk("roofline", "--db", str(copy), "--format", "json", "--peak-tbps", "2", "--peak-tflops", "400")
    assert r.returncode == 0, r.stderr
    assert {x["peak_tbps"] for x in json.loads(r.stdout) if x["peak_tbps"] is not None} == {2.0}
    bad = tmp_path / "bad.toml"
    bad.write_text("[[gpu]\n")
    r = tk("roofline", "--db", str(copy), "--peaks", str(bad))
    assert r.returncode == 1 and r.stderr.startswith("tracekit: error: ") and "bad.toml" in r.stderr
    r = tk("roofline", "--db", str(copy), "--peak-tbps", "-1")
    assert r.returncode == 1 and "--peak-tbps" in r.stderr


def test_roofline_chart_and_report_pieces(db_path, tmp_path):
    from tracekit.outputs.charts_roofline import roofline_chart_data, roofline_figures, roofline_tables
    db = tracekit.open(db_path, read_only=True)
    data = roofline_chart_data(db)
    assert data.frame.height > 1000 and set(data.frame["stage"].unique()) <= {"summarization", "generation"}
    assert (data.frame["intensity"] > 0).all()
    from tracekit.outputs.charts import to_spec
    figs = roofline_figures(db)
    assert list(figs) == ["roofline_nvidia_h100_sxm"]
    spec = json.dumps(to_spec(figs["roofline_nvidia_h100_sxm"]))
    assert '"log"' in spec
    tables = roofline_tables(db)
    assert {"roofline", "decode_ideal"} <= set(tables)
    assert tables["roofline"].height > 0 and math.isfinite(tables["decode_ideal"]["hbm_share"].drop_nulls()[0])


def test_memop_work_device_copies_mixtral(tmp_path):
    """Mixtral's device-to-device copies: bytes from the trace's own memcpy events, read + written."""
    trace = shared_trace("h200/mixtral-8x7b-2L_b8_i64_o8.pt.trace.json.gz")
    with gzip.open(trace, "rt") as f:
        copies = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "gpu_memcpy" and "DtoD" in e["name"]]
    db = tracekit.open(tmp_path / "m.duckdb")
    db.import_paths([trace])
    rows = db.con.execute("SELECT count(*), sum(bytes), max(roof_share), count(*) FILTER (WHERE stage = 'other') "
                          "FROM memop_work WHERE copy_kind = 'DtoD'").fetchall()[0]
    assert rows[0] == len(copies) > 0
    assert rows[1] == 2 * sum(e["args"]["bytes"] for e in copies)
    assert 0 < rows[2] <= 1.0 and rows[3] == 0


def test_odd_op_shapes_never_break_the_views(db_path, tmp_path):
    """Shapes a trace should not hold (zero heads, negative or huge sizes, objects, non-JSON) give
    NULL work with a reason or a plain number; they never make the views fail (a division by zero
    in one op would fail every query over kernel_work)."""
    copy = tmp_path / "odd.duckdb"
    shutil.copy(db_path, copy)
    db = tracekit.open(copy)
    odd = [("aten::_cudnn_attention_forward", "[[1,0,1,8],[1,0,4,8],[1,0,4,8]]", None),
           ("aten::mm", "[[-1,4096],[4096,-5]]", '["c10::BFloat16","c10::BFloat16"]'),
           ("aten::mm", "[[99999999999,99999999999],[99999999999,99999999999]]", '["c10::BFloat16","c10::BFloat16"]'),
           ("aten::mm", '{"a":1}', None), ("aten::mm", "not json", None), ("aten::linear", "[[],[4,4]]", None),
           ("aten::add", '[["x"],[1,2]]', '["float","float"]'), ("aten::cat", "[5]", None)]
    for i, (name, dims, types) in enumerate(odd):
        db.con.execute("INSERT INTO ops (run_id, op_id, name, source, start_ns, end_ns, dur_ns, input_dims, input_types) "
                       "VALUES (1, ?, ?, 'kineto', 0, 1, 1, ?, ?)", [10**9 + i, name, dims, types])
    rows = {(r[0], r[1]): r[2:] for r in db.con.execute(
        "SELECT name, input_dims, flops, bytes, evidence FROM op_work").fetchall()}
    assert rows[odd[0][:2]][0] is None and "0 query heads" in rows[odd[0][:2]][2]
    assert rows[odd[1][:2]][0] is None
    assert rows[odd[2][:2]][0] == pytest.approx(2.0 * 99999999999 ** 3)
    assert "not readable" in rows[odd[3][:2]][2] and "not readable" in rows[odd[4][:2]][2]
    assert db.con.execute("SELECT count(*) FROM roofline").fetchall()[0][0] > 0
