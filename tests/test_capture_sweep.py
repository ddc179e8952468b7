"""Sweeps: grid expansion, skip-done, and resuming after a crash midway.

The GPU runner is replaced by a small script written here that follows the same protocol as
tracekit/capture/hf_pytorch.py (trace first, manifest last, through capture.manifest) and can crash on
purpose in the middle of a run; the sweep itself runs for real, in subprocesses.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tracekit/capture/ is a top-level folder of the source tree, not part of the installed package
sys.path.insert(0, str(ROOT))

from tracekit.capture import sweep  # noqa: E402

FAKE_RUNNER = textwrap.dedent('''
    import argparse, json, os, sys
    sys.path.insert(0, {root!r})
    from tracekit.capture.manifest import write_manifest
    p = argparse.ArgumentParser()
    p.add_argument("--model"); p.add_argument("--out-dir"); p.add_argument("--cells")
    p.add_argument("--layers", type=int)
    a, _ = p.parse_known_args()
    crash_after = int(os.environ.get("CRASH_AFTER", "-1"))
    for k, cell in enumerate(json.load(open(a.cells))):
        stem = "{{}}{{}}_b{{batch}}_i{{input_len}}_o{{output_len}}".format(
            a.model, f"-{{a.layers}}L" if a.layers else "", **cell)
        with open(os.path.join(a.out_dir, "ran.log"), "a") as log:
            log.write(stem + "\\n")
        trace = os.path.join(a.out_dir, stem + ".pt.trace.json.gz")
        if k == crash_after:   # die mid-run: a partial trace and a temp file, no manifest
            open(trace, "wb").write(b"partial")
            open(os.path.join(a.out_dir, "." + stem + ".pt.trace.json.gz.123.tmp"), "wb").write(b"x")
            os._exit(1)
        open(trace, "wb").write(b"trace")
        write_manifest(trace, dict(model=a.model, **cell))
''')

SPEC = textwrap.dedent('''
    name = "t"
    backend = "hf"
    [options]
    profiler = "torch"
    [[grid]]
    name = "a"
    models = ["m1", "m2"]
    batch = [1, 8]
    input_len = [16]
    output_len = [4, 32]
    [[grid]]
    name = "b"
    models = ["m1"]
    batch = [8]
    input_len = [16, 64]
    output_len = [32]
''')


@pytest.fixture()
def setup(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "runner.py").write_text(FAKE_RUNNER.format(root=str(ROOT)))
    return tmp_path


def run_sweep(tmp: Path, monkeypatch, *extra: str, crash_after: int | None = None) -> int:
    if crash_after is None:
        monkeypatch.delenv("CRASH_AFTER", raising=False)
    else:
        monkeypatch.setenv("CRASH_AFTER", str(crash_after))
    return sweep.main([str(tmp / "spec.toml"), "--out-dir", str(tmp / "out"), "--runner", str(tmp / "runner.py"),
                       *extra])


def ran(tmp: Path) -> list[str]:
    return (tmp / "out" / "ran.log").read_text().split()


def test_study_spec_expands_to_the_papers_grids():
    spec = sweep.load_spec(ROOT / "tracekit" / "capture" / "sweeps" / "study.toml")
    # Figure 6: 2 batches x 9 inputs x 9 outputs; Figure 7: 2 batches x 3 outputs at input 64, of
    # which batch 1 with outputs 8/64/512 is already a Figure 6 cell.
    per_model = 2 * 9 * 9 + (2 * 3 - 3)
    assert len(spec.runs) == 4 * per_model
    shared = [r for r in spec.runs if r.grids == ("fig6", "fig7")]
    assert sorted({(r.batch, r.input_len, r.output_len) for r in shared}) == [(1, 64, 8), (1, 64, 64), (1, 64, 512)]
    assert {r.model for r in spec.runs} == {"llama2-7b", "llama3-8b", "gemma-2b", "gemma-7b"}
    steps = sum(r.output_len - 1 for r in spec.runs if r.model == "gemma-2b" and "fig7" in r.grids)
    assert steps == 2 * (7 + 63 + 511)


@pytest.mark.parametrize("spec_file", sorted((ROOT / "tracekit" / "capture" / "sweeps").glob("*.toml")))
def test_every_shipped_spec_loads(spec_file):
    assert sweep.load_spec(spec_file).runs


@pytest.mark.parametrize("text, problem", [
    ("[[grid]]\nmodels = ['m']\nbatch = [1]\ninput_len = [0]\noutput_len = [4]", "positive integers"),
    ("[[grid]]\nmodels = ['m']\nbatch = [1]\ninput_len = [1]\noutput_len = [4]\nspeed = 3", "unknown key"),
    ("[options]\nturbo = true\n[[grid]]\nmodels = ['m']\nbatch = [1]\ninput_len = [1]\noutput_len = [4]",
     "unknown option"),
    ("backend = 'vllm'\n[[grid]]\nmodels = ['m']\nbatch = [1]\ninput_len = [1]\noutput_len = [4]", "backend"),
    ("name = 'x'", r"no \[\[grid\]\] tables"),
    ("[[grid]\n", "not valid TOML"),
    ("[[grid]]\nmodels = ['m']\nbatch = [1]\ninput_len = [1]\noutput_len = [4]\n"
     "[[grid]]\nmodels = ['m']\nbatch = [1]\ninput_len = [1]\noutput_len = [4]\n[grid.options]\nprofiler = 'nsys'",
     "different options"),
])
def test_bad_specs_name_file_and_problem(tmp_path, text, problem):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(sweep.SpecError, match=problem) as err:
        sweep.load_spec(f)
    assert str(f) in str(err.value)


def test_runs_everything_once_then_skips_what_is_done(setup, monkeypatch, capsys):
    assert run_sweep(setup, monkeypatch) == 0
    first = ran(setup)
    # grid a: 2 models x 2 batches x 2 outputs; grid b adds m1 b8 i64 o32 (b8 i16 o32 is in a)
    assert len(first) == len(set(first)) == 9
    assert run_sweep(setup, monkeypatch) == 0
    assert ran(setup) == first  # nothing ran again
    assert "9 done, 0 to run" in capsys.readouterr().out
    state = json.loads((setup / "out" / "sweep-state.json").read_text())
    assert {r["status"] for r in state["runs"].values()} == {"done"}


def test_resume_after_a_crash_midway(setup, monkeypatch):
    # each model's runner process dies in its second run; the sweep goes on to the next model
    assert run_sweep(setup, monkeypatch, crash_after=1) == 1
    out = setup / "out"
    attempted = ran(setup)
    complete = sorted(p.name.split(".")[0] for p in out.glob("*.manifest.json"))
    assert complete == ["m1_b1_i16_o4", "m2_b1_i16_o4"]
    crashed = [n for n in attempted if n not in complete]
    assert len(crashed) == 2
    assert any(p.name.startswith(".") for p in out.iterdir())  # debris of the crashed runs
    state = json.loads((out / "sweep-state.json").read_text())
    assert all(state["runs"][n]["status"] == "failed" for n in crashed)

    assert run_sweep(setup, monkeypatch) == 0
    again = ran(setup)[len(attempted):]
    assert not set(complete) & set(again)  # a finished run is never redone
    assert set(crashed) <= set(again)  # the crashed ones are
    assert len(set(attempted) | set(again)) == 9
    assert not any(p.name.startswith(".") for p in out.iterdir())  # debris cleaned
    for m in out.glob("*.manifest.json"):
        trace = out / json.loads(m.read_text())["trace_file"]
        assert trace.read_bytes() == b"trace"  # no partial trace survives as done
    state = json.loads((out / "sweep-state.json").read_text())
    assert {r["status"] for r in state["runs"].values()} == {"done"}


def test_a_killed_sweep_does_not_count_against_its_runs(setup, monkeypatch):
    out = setup / "out"
    out.mkdir()
    spec = sweep.load_spec(setup / "spec.toml", str(out))
    st = sweep.State(out, spec.name)
    st.mark([r.name for r in spec.runs], "running")  # what a sweep killed mid-group leaves behind
    plan = sweep.plan(spec, max_attempts=1)
    assert len(plan.pending) == 9 and not plan.skipped_failed


def test_gives_up_after_max_attempts(setup, monkeypatch, capsys):
    run_sweep(setup, monkeypatch, "--max-attempts", "1", crash_after=0)
    capsys.readouterr()
    run_sweep(setup, monkeypatch, "--max-attempts", "1", crash_after=0)
    assert "given up after 1 attempts" in capsys.readouterr().out
    state = json.loads((setup / "out" / "sweep-state.json").read_text())
    failed = [n for n, r in state["runs"].items() if r.get("failures")]
    assert all(state["runs"][n]["failures"] == 1 for n in failed)


def test_dry_run_writes_nothing_and_shows_the_commands(setup, monkeypatch, capsys):
    assert run_sweep(setup, monkeypatch, "--dry-run", "--models", "m2", "--set", "warmup=3") == 0
    out = capsys.readouterr().out
    assert not (setup / "out").exists()
    lines = [ln for ln in out.splitlines() if "--model" in ln]
    assert len(lines) == 1 and "--model m2" in lines[0] and "--warmup 3" in lines[0]
    cells = json.loads(out.split("CELLS.json = ", 1)[1].splitlines()[0])
    assert sorted((c["batch"], c["output_len"]) for c in cells) == [(1, 4), (1, 32), (8, 4), (8, 32)]


def test_filters_and_overrides(setup, monkeypatch, capsys):
    assert run_sweep(setup, monkeypatch, "--grid", "b", "--outputs", "32") == 0
    assert sorted(ran(setup)) == ["m1_b8_i16_o32", "m1_b8_i64_o32"]
    assert run_sweep(setup, monkeypatch, "--set", "nonsense=1") == 2


def test_nsys_runs_get_a_process_each():
    spec = sweep.load_spec(ROOT / "tracekit" / "capture" / "sweeps" / "h100-fixtures.toml")
    groups = sweep.batches(spec, spec.runs)
    nsys = [g for g in groups if g[0].profiler == "nsys"]
    assert nsys and all(len(g) == 1 for g in nsys)
    torch_groups = [g for g in groups if g[0].profiler == "torch"]
    assert all(len({(r.model, r.options) for r in g}) == 1 for g in torch_groups)
