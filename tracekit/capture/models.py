"""Model configurations: the study's four architectures, an HF config.json, or a local checkpoint.

Everything here is plain data, so the config a run will use can be built and checked without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The real configs (STUDY.md: the paper's Table 1 misprints some shapes).
BUILTIN: dict[str, dict[str, Any]] = {
    "llama2-7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "intermediate_size": 11008,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "head_dim": 128,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
    },
    "llama3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "silu",
    },
    "gemma-2b": {
        "model_type": "gemma",
        "hidden_size": 2048,
        "num_hidden_layers": 18,
        "intermediate_size": 16384,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
    },
    "gemma-7b": {
        "model_type": "gemma",
        "hidden_size": 3072,
        "num_hidden_layers": 28,
        "intermediate_size": 24576,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
    },
}


class ModelSpecError(ValueError):
    """The model argument names nothing usable; the message says what and where."""


class CaptureError(RuntimeError):
    """A capture could not be made; the message is the one line the user sees. (Here, not in
    hf_pytorch: run as a script that module is __main__, and capture.tp must raise the same class.)"""


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a config (always) and, for a checkpoint, where its weights are."""

    name: str                 # short name used in run names and manifests
    source: str               # 'builtin' | 'config' | 'checkpoint'
    config: dict[str, Any]    # HF config fields, model_type included, layers override applied
    checkpoint: str | None = None

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def full_layers(self) -> int:
        return int(self.config.get("_full_layers", self.config["num_hidden_layers"]))

    def hf_config(self) -> dict[str, Any]:
        """The config without tracekit's private keys, for transformers."""
        return {k: v for k, v in self.config.items() if not k.startswith("_")}


def attribute_map(model_type: str) -> dict[str, str] | None:
    """transformers' own aliases of a model type's config fields (canonical name -> the name its
    config.json uses: GPT-2's `hidden_size` is `n_embd`), from the config class's `attribute_map`.
    None when transformers is not installed (it imports without torch); {} for an unknown type."""
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        return None
    try:
        return dict(CONFIG_MAPPING[model_type].attribute_map)
    except KeyError:
        return {}


def canonical_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config with transformers' canonical names added for fields it names by an alias
    (`n_embd` -> also `hidden_size`), so that tracekit reads one set of names. The config's own
    keys stay: transformers maps both to the same attribute."""
    out = dict(cfg)
    for canonical, alias in (attribute_map(str(cfg.get("model_type"))) or {}).items():
        if alias in out and canonical not in out:
            out[canonical] = out[alias]
    return out


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except OSError as exc:
        raise ModelSpecError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelSpecError(f"{path}: not an HF config.json (no model_type)")
    cfg = canonical_config(cfg)
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if key not in cfg:
            hint = (" (install transformers to read configs that name it by an alias)"
                    if attribute_map(str(cfg["model_type"])) is None else "")
            raise ModelSpecError(f"{path}: HF config lacks {key}{hint}")
    return cfg


def resolve_model(model: str, layers: int | None = None) -> ModelSpec:
    """Turn a built-in name, a config.json path or a checkpoint directory into a ModelSpec."""
    if model in BUILTIN:
        name, source, cfg, ckpt = model, "builtin", dict(BUILTIN[model]), None
    else:
        path = Path(model)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelSpecError(f"{model}: directory has no config.json (not an HF checkpoint)")
            cfg = _read_config(path / "config.json")
            name, source, ckpt = path.name, "checkpoint", str(path)
        elif path.is_file():
            cfg = _read_config(path)
            stem = path.stem if path.name != "config.json" else (path.parent.name or "model")
            name, source, ckpt = stem, "config", None
        else:
            known = ", ".join(sorted(BUILTIN))
            raise ModelSpecError(f"{model}: not a built-in model ({known}), config.json or checkpoint directory")
    if layers is not None:
        if layers < 1:
            raise ModelSpecError(f"{model}: --layers must be >= 1, got {layers}")
        cfg["_full_layers"] = cfg["num_hidden_layers"]
        cfg["num_hidden_layers"] = layers
        alias = (attribute_map(str(cfg.get("model_type"))) or {}).get("num_hidden_layers")
        if alias in cfg:  # the config's own name for it (GPT-2: n_layer) must say the same
            cfg[alias] = layers
    return ModelSpec(name=name, source=source, config=cfg, checkpoint=ckpt)


def run_name(model: str, batch: int, input_len: int, output_len: int, layers: int | None = None,
             tag: str = "", tp: int = 1, rank: int | None = None) -> str:
    """`llama2-7b_b1_i64_o8`, or `llama2-7b-4L_b1_i64_o8` with a layers override (as the fixtures).
    Tensor parallel: `llama3-8b-4L_tp2_b8_i64_o8` names the job (and its one manifest),
    `llama3-8b-4L_tp2_rank0_b8_i64_o8` the trace of rank 0."""
    stem = f"{model}-{layers}L" if layers else model
    if tp > 1:
        stem += f"_tp{tp}" + (f"_rank{rank}" if rank is not None else "")
    name = f"{stem}_b{batch}_i{input_len}_o{output_len}"
    return f"{name}_{tag}" if tag else name


def param_count(cfg: dict[str, Any]) -> int:
    """Weights of a decoder-only transformer (embedding + layers + head), for sizing runs."""
    e = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads", heads))
    a = int(cfg.get("head_dim") or e // heads)
    f = int(cfg["intermediate_size"])
    v = int(cfg["vocab_size"])
    n = int(cfg["num_hidden_layers"])
    per_layer = e * heads * a + 2 * e * kv * a + heads * a * e + 3 * e * f + 2 * e
    tied = cfg.get("tie_word_embeddings", cfg.get("model_type") == "gemma")
    return v * e * (1 if tied else 2) + n * per_layer + e
