"""Planning touches no model: `status` and a no-op `extract` must not import torch, transformers,
scipy or librosa (0.4 s instead of 2.2 s on the 2-core VM; seconds more where those packages
have no bytecode, as on the lent GPU machines)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.corpora import tone_corpus

# torch itself must be absent: features.base.torch enters sys.modules only when first used
HEAVY = ("torch", "torch._C", "transformers.modeling_utils", "scipy.signal", "librosa.core", "resemblyzer.audio")


def test_status_imports_no_model_library(tmp_path):
    work = tone_corpus(tmp_path, n=3, seconds=(0.3, 0.4))
    code = ("import json, sys\n"
            "from pipeline.extract import status\n"
            f"rows = status({str(work)!r})\n"
            f"print(json.dumps([len(rows)] + [m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    n_stages, *heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert n_stages >= 5 and heavy == []


def test_lazy_torch_is_a_plain_import_on_first_use():
    """Nothing half-made sits in sys.modules for other libraries to probe (scipy's array API
    check reads sys.modules["torch"].Tensor; with lazy_loader that failed on Python 3.12 + torch
    2.11), and the first attribute imports the real module."""
    code = ("import sys\n"
            "from features.base import torch\n"
            "assert 'torch' not in sys.modules, 'imported too early'\n"
            "import scipy.signal  # probes sys.modules for array libraries\n"
            "assert 'torch' not in sys.modules\n"
            "x = torch.zeros(2)\n"
            "import torch as real\n"
            "assert sys.modules['torch'] is real and isinstance(x, real.Tensor) and torch.Tensor is real.Tensor\n"
            "print('ok', repr(torch))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok") and "(imported)" in out.stdout
