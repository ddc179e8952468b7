"""The capture scripts' model configs and run names (no torch needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# tracekit/capture/ is a top-level folder of the source tree, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.capture.models import BUILTIN, ModelSpecError, param_count, resolve_model, run_name

# The study's real configs, copied from the reference STUDY.md table (not from tracekit/capture/models.py):
# hidden, layers, FFN, heads, KV heads, head dim, vocab.
STUDY_TABLE = {
    "llama2-7b": (4096, 32, 11008, 32, 32, 128, 32000),
    "llama3-8b": (4096, 32, 14336, 32, 8, 128, 128256),
    "gemma-2b": (2048, 18, 16384, 8, 1, 256, 256000),
    "gemma-7b": (3072, 28, 24576, 16, 16, 256, 256000),
}
# Published parameter counts of the four models (billions), an independent check of the shapes.
PUBLISHED_PARAMS_B = {"llama2-7b": 6.74, "llama3-8b": 8.03, "gemma-2b": 2.51, "gemma-7b": 8.54}


@pytest.mark.parametrize("name", sorted(STUDY_TABLE))
def test_builtin_configs_match_the_study(name):
    c = BUILTIN[name]
    got = (c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["num_attention_heads"],
           c["num_key_value_heads"], c["head_dim"], c["vocab_size"])
    assert got == STUDY_TABLE[name]


@pytest.mark.parametrize("name", sorted(STUDY_TABLE))
def test_builtin_shapes_give_the_published_sizes(name):
    assert param_count(BUILTIN[name]) / 1e9 == pytest.approx(PUBLISHED_PARAMS_B[name], rel=0.01)


def test_layers_override_keeps_the_full_depth():
    spec = resolve_model("gemma-7b", layers=2)
    assert spec.layers == 2 and spec.full_layers == 28
    assert "_full_layers" not in spec.hf_config()
    assert BUILTIN["gemma-7b"]["num_hidden_layers"] == 28  # the table itself is untouched


def test_config_json_and_checkpoint_dir(tmp_path):
    cfg = {"model_type": "mistral", "hidden_size": 1024, "num_hidden_layers": 4, "vocab_size": 1000,
           "intermediate_size": 2048, "num_attention_heads": 8}
    (tmp_path / "tiny.json").write_text(json.dumps(cfg))
    spec = resolve_model(str(tmp_path / "tiny.json"))
    assert (spec.name, spec.source, spec.checkpoint) == ("tiny", "config", None)
    ckpt = tmp_path / "my-ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(cfg))
    spec = resolve_model(str(ckpt), layers=1)
    assert (spec.name, spec.source, spec.layers) == ("my-ckpt", "checkpoint", 1)
    assert spec.checkpoint == str(ckpt)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"hidden_size": 1}', "no model_type"),
    ('{"model_type": "llama", "hidden_size": 1, "vocab_size": 2}', "lacks num_hidden_layers"),
])
def test_bad_config_json_names_file_and_problem(tmp_path, content, problem):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(ModelSpecError, match=problem) as err:
        resolve_model(str(f))
    assert str(f) in str(err.value)


def test_unknown_model_and_bad_layers():
    with pytest.raises(ModelSpecError, match="not a built-in model"):
        resolve_model("llama9-1t")
    with pytest.raises(ModelSpecError, match="--layers"):
        resolve_model("gemma-2b", layers=0)


def test_run_names_follow_the_fixture_convention():
    assert run_name("llama2-7b", 1, 64, 8) == "llama2-7b_b1_i64_o8"
    assert run_name("llama2-7b", 1, 64, 8, layers=4) == "llama2-7b-4L_b1_i64_o8"
    assert run_name("gemma-2b", 8, 1, 1024, tag="x") == "gemma-2b_b8_i1_o1024_x"
