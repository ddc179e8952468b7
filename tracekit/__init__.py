"""tracekit: where does the GPU time of LLM inference go?"""

from __future__ import annotations

__version__ = "0.1.0"

from tracekit.api import Database, open  # noqa: E402,A004

__all__ = ["Database", "open", "__version__"]
