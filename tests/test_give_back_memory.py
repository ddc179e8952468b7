"""readers.common.give_back_memory finds glibc's malloc_trim among the symbols the process has
loaded, without running a program: ctypes.util.find_library would run `ldconfig -p` (~10 ms of
every import)."""

from __future__ import annotations

import platform
import subprocess

import pytest

from tracekit.readers import common


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_trim_found_without_a_subprocess(monkeypatch):
    def no_programs(*a, **kw):
        raise AssertionError("give_back_memory started a program")

    monkeypatch.setattr(subprocess, "Popen", no_programs)
    monkeypatch.setattr(common, "_malloc_trim", None)
    common.give_back_memory()
    assert common._malloc_trim  # found: freed heap memory goes back to the OS
