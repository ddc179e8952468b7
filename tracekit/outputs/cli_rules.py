"""Rule commands: `tracekit rules check|explain|coverage|suggest|list` and `tracekit classify`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tracekit.outputs.cli_core import db_option, fail, open_db

# tracekit.enrich.rules (and re2) load in the commands that use them: every other command
# registers this module, and `stages` or `query` have no use for the rules (~15 ms).
if TYPE_CHECKING:
    from tracekit.enrich.rules import RuleSet

rules_option = click.option(
    "--rules", "rules_dirs", multiple=True, type=click.Path(path_type=Path, exists=True),
    help="Extra rule directory (or file) layered over the user and built-in packs; repeatable, first wins.",
)
run_option = click.option("--run", "run_ids", multiple=True, type=int, help="Only this run (repeatable).")


def _load(rules_dirs: tuple[Path, ...]) -> RuleSet:
    from tracekit.enrich.rules import RuleError, RuleSet

    try:
        return RuleSet.load(list(rules_dirs))
    except RuleError as exc:
        fail(f"{exc} (run `tracekit rules check` for every problem)")


def _dims(text: str | None, what: str) -> tuple[int | None, int | None, int | None]:
    if text is None:
        return (None, None, None)
    parts = [p for p in re.split(r"[,x ]+", text.strip()) if p]
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise click.BadParameter(f"expected up to three integers like 128,1,1, got {text!r}", param_hint=what)
    values = [int(p) for p in parts] + [1] * (3 - len(parts))
    return tuple(values)  # type: ignore[return-value]


@click.group("rules")
def rules_group() -> None:
    """Kernel classification rules: check, explain, coverage, suggest."""


@rules_group.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, exists=True))
def check_cmd(paths: tuple[Path, ...]) -> None:
    """Check rule files: TOML and schema, regexes that are not RE2, duplicate ids, failing
    examples, rules shadowed by earlier ones. PATHS (files, or directories searched with their
    subdirectories) are checked layered over the user and built-in packs; with no PATHS, every
    loaded pack is checked. A directory with no rule file below it is an error."""
    from tracekit.enrich.rules import RuleSet, real_path, rule_files

    ruleset = RuleSet.load(list(paths), strict=False)
    only = None
    if paths:
        only = set()
        for p in paths:
            # The path itself too: "no rule files here" is reported against the directory.
            only |= {real_path(f) for f in [p, *rule_files(p)]}
    issues = ruleset.check(only)
    checked = [r for r in ruleset.rules if only is None or r.path.resolve() in only]
    for issue in issues:
        click.echo(str(issue))
    files = len({r.path for r in checked} | {i.path for i in issues}) if only is not None else len(ruleset.packs)
    if issues:
        click.echo(f"{len(issues)} problem(s) in {len(checked)} rules from {files} file(s)", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {len(checked)} rules from {files} file(s), every example passes")


@rules_group.command("list")
@rules_option
def list_cmd(rules_dirs: tuple[Path, ...]) -> None:
    """Every rule in the order it is tried."""
    ruleset = _load(rules_dirs)
    for rule in ruleset.rules:
        click.echo(f"{rule.id:32} {rule.category:9} {rule.on:10} /{rule.regex}/  {rule.where()}")


@rules_group.command("explain")
@click.argument("name")
@click.option("--short-name", default=None, help="The kernel's short name, if rules should see one.")
@click.option("--op", default=None, help="Name of the linked CPU op, e.g. aten::mm.")
@click.option("--m", "m", type=int, default=None, help="Activation rows M of the linked GEMM op.")
@click.option("--grid", default=None, help="Grid dims, e.g. 128,1,1.")
@click.option("--block", default=None, help="Block dims, e.g. 256,1,1.")
@rules_option
def explain_cmd(name, short_name, op, m, grid, block, rules_dirs) -> None:
    """Which rule classifies kernel NAME and why, and which others would match."""
    from tracekit.enrich.rules import KernelContext
    from tracekit.readers.common import demangle

    ruleset = _load(rules_dirs)

    ctx = KernelContext(name=demangle(name), short_name=short_name, op=op, m=m,
                        grid=_dims(grid, "--grid"), block=_dims(block, "--block"))
    decision = ruleset.decide(ctx)
    matches = ruleset.explain(ctx)
    if decision.rule_id is None:
        click.echo("unclassified: no rule matches")
    else:
        rule = ruleset.by_id[decision.rule_id]
        extra = " (takes the class of the GEMM it completes when no shapes are known)" if decision.follows_gemm else ""
        click.echo(f"{decision.category} by rule {rule.id} ({rule.where()}), evidence {decision.evidence}{extra}")
        click.echo(f"  on {rule.on} /{rule.regex}/" + "".join(f", when {c.key} {c.text}" for c in rule.conditions))
        click.echo(f"  why: {rule.explain}")
        note = {
            "pass": "without op shapes: in a decode pass of a run whose batch is known, that batch decides GEMV/GEMM",
            "moe": "an expert GEMM: tokens per expert decide GEMV/GEMM (op shapes, else the pass and the "
                   "run's batch, top-k and experts)",
            "place": f"without shapes: {rule.after_last_gemm} when it runs after its pass's last GEMM",
        }.get(decision.pending or "")
        if note:
            click.echo(f"  in a trace: {note}")
    others = [(r, why) for r, why in matches if r.id != decision.rule_id]
    if others:
        click.echo("other rules whose pattern matches (tried in this order):")
        for rule, why in others:
            state = "would match" if why is None else f"conditions fail: {why}"
            click.echo(f"  {rule.id} -> {rule.category} ({rule.where()}): {state}")


def _coverage_rows(con, run_ids: tuple[int, ...]):
    where = f"WHERE run_id IN ({','.join(str(r) for r in run_ids)})" if run_ids else ""
    totals = con.execute(
        f"SELECT r.run_id, r.source_name, count(k.kernel_id), coalesce(sum(k.dur_ns), 0) FROM runs r "
        f"LEFT JOIN kernels k USING (run_id) {where.replace('run_id', 'r.run_id')} GROUP BY ALL ORDER BY 1"
    ).fetchall()
    cats = con.execute(
        f"SELECT run_id, category, count(*), sum(dur_ns) FROM kernels {where} GROUP BY ALL ORDER BY 1, 4 DESC"
    ).fetchall()
    return totals, cats


@rules_group.command("coverage")
@db_option
@run_option
@rules_option
@click.option("--top", default=10, show_default=True, help="How many unclassified names to list.")
def coverage_cmd(db_path, run_ids, rules_dirs, top) -> None:
    """Share of GPU time per category, share unclassified, and the top unclassified names.

    With --rules, kernels are re-classified in a transaction that is rolled back: the database
    is not changed."""
    from tracekit.enrich.classify import classify

    db = open_db(db_path, read_only=not rules_dirs)
    con = db.con
    if rules_dirs:
        ruleset = _load(rules_dirs)
        con.execute("BEGIN TRANSACTION")
        classify(con, list(run_ids) or None, ruleset)
    try:
        totals, cats = _coverage_rows(con, run_ids)
        where = f"AND run_id IN ({','.join(str(r) for r in run_ids)})" if run_ids else ""
        unclassified = con.execute(
            f"SELECT short_name, any_value(name), count(*), sum(dur_ns), "
            f"sum(dur_ns) / (SELECT sum(dur_ns) FROM kernels WHERE TRUE {where}) "
            f"FROM kernels WHERE category IS NULL {where} GROUP BY short_name ORDER BY 4 DESC LIMIT ?", [top]
        ).fetchall()
    finally:
        if rules_dirs:
            con.execute("ROLLBACK")
    if not totals:
        fail(f"{db_path}: no runs{' with those ids' if run_ids else ''}")
    for run_id, source, n, total in totals:
        rows = [c for c in cats if c[0] == run_id]
        done = sum(t for _, cat, _, t in rows if cat is not None)
        share = done / total if total else 1.0
        click.echo(f"run {run_id} {source}: {share:.2%} of GPU time classified ({n} kernels)")
        for _, cat, count, t in rows:
            label = cat if cat is not None else "unclassified"
            click.echo(f"  {label:13} {t / total if total else 0:7.2%} {count:8d} kernels")
    if unclassified:
        click.echo("top unclassified kernels (share of GPU time, all selected runs):")
        for short, name, count, _t, share in unclassified:
            click.echo(f"  {share:7.2%} {count:6d}x {short}" + (f"  [{name[:120]}]" if name != short else ""))
    else:
        click.echo("no unclassified kernels")


# What the evidence of one unclassified kernel suggests; only a draft for a human to review.
# The linked op is the strongest evidence (it says what the kernel computes), then the op's
# shapes (GEMV vs GEMM, vocabulary softmax), then words in the name.
_OP_HINTS = [
    (r"aten::(?:_?scaled_dot_product\w*|_flash_attention\w*|_efficient_attention\w*|_cudnn_attention\w*)|\w*attention\w*", "ATTN"),
    (r"aten::(?:mm|addmm|_addmm_activation|bmm|baddbmm|matmul|linear|_scaled_mm|_grouped_mm|_scaled_grouped_mm|mv|addmv)", "GEMM"),
    (r"aten::(?:silu|gelu|relu|sigmoid|tanh|mish|hardswish|softplus|elu|leaky_relu)_?", "ACT"),
    (r"aten::(?:native_layer_norm|layer_norm|rms_norm|_fused_rms_norm|native_group_norm|group_norm|native_batch_norm|batch_norm|rsqrt)_?", "NORM"),
    (r"aten::(?:embedding|embedding_bag|_embedding_bag|index_select)", "EMBED"),
    (r"aten::(?:argmax|argmin|topk|sort|argsort|multinomial|exponential_)", "SAMPLING"),
    (r"aten::(?:copy_|to|_to_copy|clone|contiguous|cat|stack|index_put_|index_copy_|gather|scatter_?)", "MEMCPY"),
    (r"aten::(?:fill_|zero_|zeros|ones|full|zeros_like|empty)", "MEMSET"),
    (r"aten::(?:sum|mean|amax|amin|max|min|cumsum|norm|all|any|prod)", "REDUCE"),
    (r"aten::(?:add|add_|mul|mul_|sub|div|neg|pow|exp|where|masked_fill_?|clamp\w*|abs|sin|cos)", "ELEMWISE"),
    (r"(?i)\w*(?:nccl|c10d|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast)\w*.*", "COMM"),
]
# Words in a kernel name that suggest a category, most telling first. Matrix products only by
# words that mean one: "gemm" alone also names libraries (FBGEMM's embedding and conversion
# kernels are no matrix product), so it is checked after the words that say otherwise.
_NAME_HINTS = [
    (r"nccl|rccl|allreduce|all_reduce|allgather|all_gather|reducescatter|reduce_scatter|alltoall|multimem", "COMM"),
    (r"attn|attention|fmha|mha\b|sdpa|flash", "ATTN"),
    (r"embed|index_?select|lookup", "EMBED"),
    (r"quantize|dequant|convert|cast|to_fp8|fp8_?to|copy|transpose|permute|gather|scatter", "MEMCPY"),
    (r"gemv", "GEMV"),
    (r"gemm|matmul|_mm_|xmma|nvjet|cijk_|cutlass|wgmma|hgmma", "GEMM"),
    (r"norm|rsqrt", "NORM"),
    (r"silu|gelu|relu|swiglu|geglu|activation|act_and_mul|sigmoid", "ACT"),
    (r"topk|top_k|topp|top_p|sampl|argmax|multinomial|sort", "SAMPLING"),
    (r"softmax", "ATTN"),
    (r"fill|zero|memset", "MEMSET"),
    (r"reduce|sum|mean|max|min|scan", "REDUCE"),
    (r"elementwise|add|mul|div|sub|pointwise|rope|rotary", "ELEMWISE"),
]
VOCAB_MIN = 30_000  # a softmax over this many classes is over a vocabulary (sampling), not keys


def _last_dim(input_dims: str | None) -> int | None:
    try:
        first = json.loads(input_dims)[0]
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return first[-1] if isinstance(first, list) and first and isinstance(first[-1], int) else None


def suggest_category(name: str, short_name: str, op: str | None = None, input_dims: str | None = None,
                     gemv_max_m: int = 8, shape_ops: dict | None = None) -> tuple[str | None, str]:
    """(category or None, the reason) from what is known of one kernel."""
    from tracekit.enrich.rules import m_from_dims

    if op and re.fullmatch(r"aten::_?softmax|aten::_softmax|aten::softmax|aten::log_softmax|aten::_log_softmax", op):
        last = _last_dim(input_dims)
        if last is not None and last >= VOCAB_MIN:
            return "SAMPLING", f"op {op} over a last dim of {last} (>= {VOCAB_MIN}: a vocabulary)"
        if last is not None:
            return "ATTN", f"op {op} over a last dim of {last} (< {VOCAB_MIN}: attention scores, not a vocabulary)"
        return "ATTN", f"op {op}, shapes unknown: SAMPLING instead if it runs over the vocabulary"
    if op:
        for pattern, category in _OP_HINTS:
            if re.fullmatch(pattern, op):
                if category == "GEMM":
                    spec = (shape_ops or {}).get(op)
                    m = m_from_dims(input_dims, spec) if spec is not None else None
                    if m is not None:
                        return ("GEMV" if m <= gemv_max_m else "GEMM"), f"op {op} with M={m} (GEMV when M <= {gemv_max_m})"
                return category, f"op {op}"
    key = (short_name or name).lower()
    for pattern, category in _NAME_HINTS:
        found = re.search(pattern, key)
        if found:
            return category, f"name contains {found.group(0)!r}" + (f" (op {op})" if op else " (no op linked)")
    return None, ("op " + op + " says nothing more" if op else "no op linked") + " and no telling word in the name"


def _toml_str(text: str) -> str:
    if "'" not in text and "\n" not in text:
        return f"'{text}'"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def suggest_rule(name: str, short_name: str, share: float, count: int, op: str | None = None,
                 input_dims: str | None = None, ruleset: RuleSet | None = None) -> str:
    """A draft [[rule]] for one unclassified kernel, its category proposed from the evidence."""
    import re2

    from tracekit.enrich.rules import CATEGORIES

    key = short_name or name
    lowered = key.lower()
    category, reason = suggest_category(name, short_name, op, input_dims,
                                        ruleset.gemv_max_m if ruleset else 8, ruleset.shape_ops if ruleset else None)
    rid = "user." + (re.sub(r"[^a-z0-9]+", "-", lowered).strip("-")[:40] or "kernel")
    on = "short_name" if short_name and short_name != name else "name"
    # Exact match of the short name; a long demangled name only by its (distinctive) start.
    regex = "^" + re2.escape(key[:100]) + ("$" if len(key) <= 100 else "")
    example = short_name if on == "short_name" else name
    reason = reason.replace("\n", " ")
    lines = [
        f"# {share:.2%} of GPU time, {count} launches" + (f", under op {op}" if op else ""),
        "[[rule]]",
        f"id = {_toml_str(rid)}",
        f"on = \"{on}\"",
        f"regex = {_toml_str(regex)}",
        (f"category = \"{category}\"  # from the evidence: {reason}; review" if category else
         f"category = \"OTHER\"  # TODO: {reason}; one of {', '.join(CATEGORIES)}"),
        f"explain = {_toml_str('TODO: what this kernel does and why it is ' + (category or 'OTHER') + ' (' + reason + ')')}",
        f"examples = [{_toml_str(example)}]",
        "not_examples = []  # TODO: a similar name this rule must not take",
    ]
    return "\n".join(lines)


@rules_group.command("suggest")
@db_option
@run_option
@click.option("--top", default=10, show_default=True, help="How many unclassified names to draft rules for.")
def suggest_cmd(db_path, run_ids, top) -> None:
    """Draft TOML rules for the top unclassified kernels (by GPU time), each with a category
    proposed from its op, op shapes and name (the reason in a comment); review, then save them
    in a rules directory and check with `tracekit rules check DIR`."""
    db = open_db(db_path, read_only=True)
    where = f"AND k.run_id IN ({','.join(str(r) for r in run_ids)})" if run_ids else ""
    rows = db.con.execute(
        f"SELECT any_value(k.name), k.short_name, count(*), sum(k.dur_ns) / "
        f"(SELECT sum(dur_ns) FROM kernels k WHERE TRUE {where}), "
        # The op most of its time runs under, with that op's shapes.
        f"arg_max(struct_pack(op := o.name, dims := o.input_dims), k.dur_ns) FILTER (WHERE o.name IS NOT NULL) "
        f"FROM kernels k LEFT JOIN ops o ON o.run_id = k.run_id AND o.op_id = k.op_id "
        f"WHERE k.category IS NULL {where} GROUP BY k.short_name ORDER BY 4 DESC LIMIT ?", [top]
    ).fetchall()
    if not rows:
        click.echo("# no unclassified kernels: nothing to suggest")
        return
    from tracekit.enrich.rules import RuleSet

    ruleset = RuleSet.load(strict=False)
    click.echo("# Draft rules for unclassified kernels. Review every category and TODO before use.\n")
    click.echo("\n\n".join(
        suggest_rule(name, short, share or 0.0, count, (op or {}).get("op"), (op or {}).get("dims"), ruleset)
        for name, short, count, share, op in rows))


@click.command("classify")
@db_option
@run_option
@rules_option
@click.option("--gemv-max-m", type=click.IntRange(0), default=None,
              help="GEMM-family kernels whose op has at most this many activation rows are GEMV "
                   "(default: settings.gemv_max_m of the rules, else 8).")
def classify_cmd(db_path, run_ids, rules_dirs, gemv_max_m) -> None:
    """Re-classify the kernels of every run (or --run) in place with the current rules."""
    from tracekit.enrich.classify import classify
    from tracekit.enrich.rules import display_path

    ruleset = _load(rules_dirs)
    if gemv_max_m is not None:
        ruleset = ruleset.with_gemv_max_m(gemv_max_m)
    db = open_db(db_path)
    con = db.con
    known = {r for (r,) in con.execute("SELECT run_id FROM runs").fetchall()}
    missing = sorted(set(run_ids) - known)
    if missing:
        fail(f"{db_path}: no run {', '.join(map(str, missing))}")
    con.execute("BEGIN TRANSACTION")
    try:
        classify(con, list(run_ids) or None, ruleset, refresh=True)
    except Exception:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    where = f"WHERE run_id IN ({','.join(str(r) for r in run_ids)})" if run_ids else ""
    n, total, done = con.execute(
        f"SELECT count(*), coalesce(sum(dur_ns), 0), coalesce(sum(dur_ns) FILTER (WHERE category IS NOT NULL), 0) "
        f"FROM kernels {where}"
    ).fetchall()[0]
    runs = len(run_ids) if run_ids else len(known)
    share = done / total if total else 1.0
    packs = ", ".join(display_path(p.path) for p in ruleset.packs)
    click.echo(f"classified {n} kernels in {runs} run(s): {share:.2%} of GPU time classified "
               f"({len(ruleset.rules)} rules from {packs})")
