"""tracekit: where does the GPU time of LLM inference go?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Database", "open", "__version__"]

if TYPE_CHECKING:
    from tracekit.api import Database, open  # noqa: A004


def __getattr__(name: str) -> Any:
    # `tracekit.api` pulls in duckdb and pyarrow (~0.2 s); importing any submodule imports this
    # package first, so an eager import here would make `tracekit --help` and the readers pay it.
    if name in ("Database", "open"):
        from tracekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'tracekit' has no attribute {name!r}")
