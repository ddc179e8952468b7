"""Issue 17: one control character in a kernel name or a run's metadata made vl-convert abort the
whole process (SIGABRT, exit 134) while drawing the PNG/SVG, so `tracekit report` wrote no
index.html. Labels are now shown escaped, and images are drawn in a child process so that an
abort costs one chart. Inputs: a real nsys export whose most launched kernel is renamed here."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import NSYS_L3_SHAPES, SHARED_META, tk

import tracekit
from tracekit.outputs import charts

# ESC (an ANSI colour sequence), 0x01 and a Unicode noncharacter in the kernel name; NUL and ESC in
# the model name. Each of \x00, \x01, \x1b and \ufffe alone aborts vl-convert 1.9 (checked by hand).
KERNEL = "evil\x1b[31mkernel\x01\ufffe"
MODEL = "llama\x00x\x1b[2J"


@pytest.fixture(scope="module")
def control_db(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("ctrl")
    trace = work / "ctrl.sqlite"
    shutil.copy(NSYS_L3_SHAPES, trace)
    con = sqlite3.connect(trace)
    short_id = con.execute(
        "SELECT shortName FROM CUPTI_ACTIVITY_KIND_KERNEL GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchall()[0][0]
    con.execute("UPDATE StringIds SET value = ? WHERE id = ?", [KERNEL, short_id])
    con.commit()
    con.close()
    db_path = work / "ctrl.duckdb"
    db = tracekit.open(db_path)
    meta = {**SHARED_META[NSYS_L3_SHAPES.name], "model": MODEL}
    assert db.import_paths([trace], meta=meta)[0].status == "imported"
    # The names reached the database unchanged: tracekit stores what the trace says.
    assert db.con.execute("SELECT count(*) FROM kernels WHERE short_name = ?", [KERNEL]).fetchall()[0][0] > 0
    db.close()
    return db_path, work


def test_report_with_control_characters_is_written_whole(control_db):
    db_path, work = control_db
    out = work / "report"
    res = tk("report", "--db", str(db_path), "--out", str(out), timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    html_text = (out / "index.html").read_text()
    for name in ("heatmap", "stages", "composition", "steps", "passes", "top"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert "<svg" in (out / f"{name}.svg").read_text()[:2000]
    # Shown escaped, never raw: no control character reaches the page or an image.
    assert not any(ch in html_text for ch in "\x00\x01\x1b\ufffe")
    assert "evil\\x1b[31mkernel\\x01\\ufffe" in html_text  # the table cell
    assert "llama\\x00x\\x1b[2J" in html_text
    top_svg = (out / "top.svg").read_text()
    assert "evil\\x1b[31mkernel" in top_svg and "\x1b" not in top_svg
    # The data files keep the name as the trace has it.
    assert KERNEL in (out / "top_kernels.csv").read_text()


def test_an_aborting_chart_costs_only_that_chart(tmp_path):
    """A spec that still holds a control character (as an older or foreign spec might) really
    aborts vl-convert: the child dies, the other charts are drawn, the failure is named."""
    good = {"data": {"values": [{"a": "ok", "b": 1}]}, "mark": "bar",
            "encoding": {"y": {"field": "a", "type": "nominal"}, "x": {"field": "b", "type": "quantitative"}}}
    bad = json.loads(json.dumps(good).replace('"ok"', '"a\\u001bb"'))
    jobs = [(good, [tmp_path / "a.svg"]), (bad, [tmp_path / "b.svg", tmp_path / "b.png"]),
            (good, [tmp_path / "c.png"])]
    failed = charts.render_images(jobs)
    assert list(failed) == [1] and "SIGABRT" in failed[1]
    assert (tmp_path / "a.svg").exists() and (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "b.svg").exists() and not list(tmp_path.glob("*.part"))
    # The same spec made printable renders.
    assert charts.render_images([(charts.printable_spec(bad), [tmp_path / "b.svg"])]) == {}
    assert "a\\x1bb" in (tmp_path / "b.svg").read_text()


def test_chart_command_names_a_failed_render_in_one_line(control_db, tmp_path):
    db_path, _ = control_db
    res = tk("chart", "top", "--db", str(db_path), "--out", str(tmp_path / "top.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "top.png").read_bytes().startswith(b"\x89PNG")


def test_printable_escapes_exactly_the_unrenderable_characters():
    assert charts.printable("a\tb\nc\x7f\x85é\u2028\U0001f600") == "a\\x09b\\x0ac\\x7f\\x85é\u2028\U0001f600"
    assert charts.printable("\ud800\ufdd0\U0010ffff") == "\\ud800\\ufdd0\\U0010ffff"
    spec = charts.printable_spec({"title": "x\x1b", "data": [{"k\x01": ["\x00"]}], "n": 3})
    assert spec == {"title": "x\\x1b", "data": [{"k\\x01": ["\\x00"]}], "n": 3}
