"""What every fitting process pays before its first batch: deterministic kernels without importing the compiler."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_deterministic_torch_turns_determinism_on_without_importing_inductor():
    code = (
        "import sys, torch\n"
        "from mlops.fit.loop import deterministic_torch\n"
        "deterministic_torch(1)\n"
        "print(torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(),"
        " 'torch._inductor' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, check=True)
    assert out.stdout.split() == ["True", "1", "False"]
