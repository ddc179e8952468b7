"""The offline HTML report from real traces: files, tables checked against the kernels table,
escaping of hostile kernel names, and a real headless Chromium with no network."""

from __future__ import annotations

import csv
import os
import re
import shutil
import sqlite3
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser.cdp import file_url, find_chromium, load_page
from click.testing import CliRunner
from conftest import NSYS_L3_SHAPES, SHARED_META

import tracekit
from tracekit.outputs.cli import main
from tracekit.outputs.report import FIGURES, provided_sections, write_report

# Closes the JSON block, opens a script, an <img> whose error handler runs code, and an entity.
PAYLOAD = "</script><script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">&amp;"
CHART_NAMES = [name for name, _ in FIGURES]


def section_counts(db_path: Path) -> tuple[int, int]:
    """Tables and figures the later sections (SECTION_PROVIDERS: roofline, ...) add for this database."""
    sections = provided_sections(tracekit.open(db_path, read_only=True))
    return sum(len(s.tables) for s in sections), sum(len(s.figures) for s in sections)


class _Scripts(HTMLParser):
    """Script and img elements as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.imgs = 0
        self.csp: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs))
        elif tag == "img":
            self.imgs += 1
        elif tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy":
            self.csp = dict(attrs)["content"]


def parse(html_text: str) -> _Scripts:
    p = _Scripts()
    p.feed(html_text)
    return p


@pytest.fixture(scope="module")
def report_dir(shared_db_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(main, ["report", "--db", str(shared_db_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> tuple[Path, str]:
    """A real nsys export whose most launched kernel (an elementwise kernel of every forward pass,
    so it is among each run's top kernels) is renamed to HTML/JS, imported and reported.
    Returns the report directory and the kernel's original short name."""
    work = tmp_path_factory.mktemp("hostile")
    trace = work / "hostile.sqlite"
    shutil.copy(NSYS_L3_SHAPES, trace)
    con = sqlite3.connect(trace)
    short_id, original = con.execute(
        'SELECT k.shortName, s.value FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON s.id = k.shortName '
        "GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1").fetchone()
    con.execute("UPDATE StringIds SET value = ? WHERE id = ?", [PAYLOAD, short_id])
    con.commit()
    con.close()
    db_path = work / "hostile.duckdb"
    db = tracekit.open(db_path)
    meta = {**SHARED_META[NSYS_L3_SHAPES.name], "model": "<b>bold</b>model"}
    assert db.import_paths([trace], meta=meta)[0].status == "imported"
    db.close()
    out = work / "report"
    write_report(tracekit.open(db_path, read_only=True), out, images=False)  # images: tested above
    return out, original


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_writes_every_chart_and_table(report_dir):
    for name in CHART_NAMES:
        assert (report_dir / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert "<svg" in (report_dir / f"{name}.svg").read_text()[:2000]
    for name in ("runs", "runs_full", "stage_ratio", "composition", "top_kernels", "unclassified"):
        assert (report_dir / f"{name}.csv").stat().st_size > 0
    html_text = (report_dir / "index.html").read_text()
    for name in CHART_NAMES:
        assert f'data-chart="chart-{name}"' in html_text


def test_report_tables_match_the_kernels(report_dir, shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    times: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for run_id, stage, dur in db.con.execute("SELECT run_id, stage, dur_ns FROM kernels").fetchall():
        times[run_id][stage] += dur
    rows = read_csv(report_dir / "stage_ratio.csv")
    assert {int(r["run_id"]) for r in rows} == set(times)
    for r in rows:
        t = times[int(r["run_id"])]
        assert int(r["summarization_ns"]) == t["summarization"]
        assert int(r["generation_ns"]) == t["generation"]
        assert float(r["gen_ratio"]) == pytest.approx(t["generation"] / (t["generation"] + t["summarization"]))
    runs = read_csv(report_dir / "runs.csv")
    by_name = {r["source_name"]: r for r in runs}
    for name, meta in SHARED_META.items():
        assert by_name[name]["model"] == meta["model"] and by_name[name]["batch"] == meta["batch"]
    # Composition: shares per run add up to one.
    comp: dict[str, float] = defaultdict(float)
    for r in read_csv(report_dir / "composition.csv"):
        comp[r["run_id"]] += float(r["share"])
    assert comp and all(v == pytest.approx(1.0) for v in comp.values())


def test_report_is_self_contained(report_dir):
    html_text = (report_dir / "index.html").read_text()
    p = parse(html_text)
    assert not [s for s in p.scripts if "src" in s], "no external scripts"
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html_text, re.I), "no network URLs"
    assert p.csp is not None and "default-src 'none'" in p.csp and "http" not in p.csp
    assert "vegaEmbed" in html_text


def test_report_of_an_empty_database_says_there_is_nothing(tmp_path):
    db = tracekit.open(tmp_path / "empty.duckdb")
    index = write_report(db, tmp_path / "out", images=False)
    text = index.read_text()
    assert text.count("nothing to draw") == len(CHART_NAMES)
    extra_tables = sum(len(s.tables) for s in provided_sections(db))
    # runs, stages, composition, top, unclassified, and each later section's tables
    assert text.count('<p class="empty">(none)</p>') == 5 + extra_tables


def test_hostile_kernel_name_stays_text_in_the_html(hostile_report):
    out, _ = hostile_report
    html_text = (out / "index.html").read_text()
    p = parse(html_text)
    # Two code scripts (bundle, embedder) and one JSON block per chart; nothing injected.
    code = [s for s in p.scripts if s.get("type") != "application/json"]
    assert len(code) == 2 and not [s for s in code if s]
    n_charts = len(CHART_NAMES) + section_counts(out.parent / "hostile.duckdb")[1]
    assert len(p.scripts) == 2 + n_charts
    assert p.imgs == 0
    assert PAYLOAD not in html_text and "<b>bold</b>" not in html_text
    assert "&lt;/script&gt;&lt;script&gt;document.title=" in html_text
    # The name did reach the data (top kernels table and CSV), unchanged.
    assert any(r["short_name"] == PAYLOAD for r in read_csv(out / "top_kernels.csv"))
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', html_text, re.S)
    assert len(blocks) == n_charts and not any("<" in b for b in blocks)


def test_hostile_kernel_name_stays_text_in_svg(hostile_report, tmp_path):
    import xml.etree.ElementTree as ET

    from tracekit.outputs import charts

    out, _ = hostile_report
    db = tracekit.open(out.parent / "hostile.duckdb", read_only=True)
    chart, _ = charts.build(db, "top")
    svg = tmp_path / "top.svg"
    charts.write_image(charts.to_spec(chart), svg)
    root = ET.parse(svg).getroot()  # well-formed XML: the name was escaped
    assert not [el for el in root.iter() if el.tag.split("}")[-1] in ("script", "img", "foreignObject")]
    # The axis label is the name as text (cut with "…" at the label width limit).
    assert any((el.text or "").startswith("</script><script>document.title='pwned'</script>") for el in root.iter())


needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium not installed (apt-get install -y chromium, or set TRACEKIT_CHROMIUM)",
)
RENDERED = "document.body && document.body.getAttribute('data-charts-rendered') !== null"


@needs_chromium
def test_report_renders_in_chromium_offline(report_dir, shared_db_path):
    expr = (f"({RENDERED}) && [document.body.getAttribute('data-charts-rendered'), "
            "document.body.getAttribute('data-charts-failed'), "
            "document.querySelectorAll('.chart svg.marks').length]")
    page = load_page(file_url(report_dir / "index.html"), expr, timeout=60)
    n = len(CHART_NAMES) + section_counts(shared_db_path)[1]
    assert page.value == [str(n), "0", n], "every chart drawn as SVG"
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith("file:")] == []
    assert page.screenshot.startswith(b"\x89PNG") and len(page.screenshot) > 50_000
    shots = Path(os.environ.get("TRACEKIT_SCREENSHOT_DIR", report_dir))
    (shots / "report-screenshot.png").write_bytes(page.screenshot)


@needs_chromium
def test_hostile_names_render_as_text_in_chromium(hostile_report):
    out, _ = hostile_report
    expr = (f"({RENDERED}) && [document.title, document.querySelectorAll('img').length, "
            "Array.from(document.querySelectorAll('td')).some(td => td.textContent === "
            f"{PAYLOAD!r}), document.body.getAttribute('data-charts-failed'), "
            "document.querySelector('#chart-top').textContent.includes(\"document.title='pwned'\")]")
    page = load_page(file_url(out / "index.html"), expr, timeout=60)
    assert page.errors == []
    title, n_img, cell_has_text, failed, chart_has_text = page.value
    assert title == "tracekit report" and n_img == 0 and cell_has_text and failed == "0"
    assert chart_has_text  # the top-kernels chart labels the bar with the name, as text
