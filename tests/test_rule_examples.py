"""Every built-in rule's examples, run as tests (semgrep style): each example must be decided by
its own rule (it matches, and no earlier rule takes it), and each not_example must not match."""

from __future__ import annotations

import pytest

from tracekit.enrich.rules import RuleSet

RULESET = RuleSet.load(include_user=False)
CASES = [
    pytest.param(rule, ex, kind, id=f"{rule.id}:{kind}{i}")
    for rule in RULESET.rules
    for kind, examples in (("must", rule.examples), ("must_not", rule.not_examples))
    for i, ex in enumerate(examples)
]


@pytest.mark.parametrize(("rule", "example", "kind"), CASES)
def test_rule_example(rule, example, kind):
    if kind == "must":
        assert rule.why_not(example) is None, f"{rule.where()}: {rule.why_not(example)}"
        decision = RULESET.decide(example)
        assert decision.rule_id == rule.id, f"{rule.where()}: taken first by {decision.rule_id}"
    else:
        assert not rule.matches(example), f"{rule.where()}: must not match {example.name[:80]}"


@pytest.mark.parametrize("rule", RULESET.rules, ids=lambda r: r.id)
def test_builtin_rule_has_both_kinds_of_examples(rule):
    assert rule.examples and rule.not_examples, f"{rule.where()}: needs examples and not_examples"


def test_builtin_packs_load_without_problems():
    assert RULESET.issues == []
    assert RULESET.check() == []
