"""Capture manifests: naming, flat content, atomic writes, and what `tracekit import` makes of them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

# tracekit/capture/ is a top-level folder of the source tree, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.capture.manifest import manifest_path, trace_stem, write_json_atomic, write_manifest

H100 = Path(__file__).resolve().parents[1] / "fixtures" / "h100"


@pytest.mark.parametrize("trace, manifest", [
    ("llama2-7b_b1_i64_o8.pt.trace.json.gz", "llama2-7b_b1_i64_o8.manifest.json"),
    ("run.pt.trace.json", "run.manifest.json"),
    ("run.json.gz", "run.manifest.json"),
    ("gemma-2b-2L_b8_i64_o8.sqlite", "gemma-2b-2L_b8_i64_o8.manifest.json"),
    ("gemma-2b-2L_b8_i64_o8.nsys-rep", "gemma-2b-2L_b8_i64_o8.manifest.json"),
    ("gemma-2b-2L_b8_i64_o8.qdstrm", "gemma-2b-2L_b8_i64_o8.manifest.json"),
    ("a.b_c.trace", "a.b_c.manifest.json"),
    ("x.manifest.json", "x.manifest.json"),  # a timing-only run is its own manifest
])
def test_manifest_names(trace, manifest):
    assert manifest_path(Path("d") / trace) == Path("d") / manifest


@pytest.mark.parametrize("name", [
    "llama2-7b_b1_i64_o8.pt.trace.json.gz", "x.sqlite", "x.nsys-rep", "x.qdstrm", "y.json", "z.trace.json.gz",
])
def test_same_convention_as_the_importer(name):
    from tracekit.manifest import manifest_path as importer_manifest_path

    assert manifest_path(Path(name)) == importer_manifest_path(Path(name))


def test_stem_never_becomes_empty():
    assert trace_stem(".gz") == ".gz"
    assert trace_stem("json.gz") == "json"


def test_manifest_is_flat_and_names_its_trace(tmp_path):
    trace = tmp_path / "m_b1_i2_o3.pt.trace.json.gz"
    trace.write_bytes(b"x")
    out = write_manifest(trace, {"model": "m", "batch": 1, "config": {"hidden_size": 8}, "steps": [1.5, 2]})
    body = json.loads(out.read_text())
    assert out.name == "m_b1_i2_o3.manifest.json"
    assert body["trace_file"] == trace.name
    assert all(not isinstance(v, (dict, list)) for v in body.values())
    assert json.loads(body["config"]) == {"hidden_size": 8} and body["batch"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert out.stat().st_mode & 0o044 == 0o044  # readable by others, like any trace


def test_atomic_write_keeps_old_content_when_serialising_fails(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_recorded_fixtures_have_manifests_that_match_their_names():
    traces = [p for p in H100.iterdir() if not p.name.endswith(".manifest.json") and p.suffix != ".md"]
    assert len(traces) >= 8
    for t in traces:
        m = json.loads(manifest_path(t).read_text())
        # the cell in the name is the cell in the manifest
        stem = trace_stem(t.name)
        model_part, b, i, o = stem.rsplit("_", 3)
        assert (int(b[1:]), int(i[1:]), int(o[1:])) == (m["batch"], m["input_len"], m["output_len"]), t.name
        assert model_part.split("-")[-1] == f"{m['layers']}L" and m["gpu"].startswith("NVIDIA H100")
        assert "/" not in m["command"].split("--out-dir")[0]  # no machine paths recorded


def test_import_attaches_the_manifest(tmp_path):
    import tracekit

    trace = tmp_path / "llama2-7b-2L_b1_i64_o8.pt.trace.json.gz"
    shutil.copy(H100 / trace.name, trace)
    shutil.copy(H100 / "llama2-7b-2L_b1_i64_o8.manifest.json", tmp_path)
    db = tracekit.open(tmp_path / "t.duckdb")
    res = db.import_paths([trace])
    assert res[0].status == "imported", res[0].error
    meta = dict(db.con.execute("select key, value from run_meta where source = 'manifest'").fetchall())
    assert meta["model"] == "llama2-7b" and meta["batch"] == "1" and meta["output_len"] == "8"
    # 1 summarization + 7 generation passes, as the manifest's output_len says
    steps = db.con.execute("select count(distinct step) from kernels where stage = 'generation'").fetchone()[0]
    assert steps == 7
    db.close()
