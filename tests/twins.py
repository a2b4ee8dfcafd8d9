"""Parameters for tests that run on both implementations of a compiled module: its pure-Python twin
and the extension (skipped, with the reason, when the extension is not built)."""
from __future__ import annotations

import pytest


def twin_params(python_mod, compiled_mod, compiled_name: str, compiled_id: str = "compiled") -> list:
    return [pytest.param(python_mod, id="python"),
            pytest.param(compiled_mod, id=compiled_id, marks=pytest.mark.skipif(
                compiled_mod is None, reason=f"compiled extension {compiled_name} not built "
                                             "(pip install . or python setup.py build_ext --inplace)"))]
