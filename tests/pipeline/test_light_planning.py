"""Planning touches no model: `status` and a no-op `extract` must not import torch, transformers,
scipy or librosa (0.4 s instead of 2.2 s on the 2-core VM; seconds more where those packages
have no bytecode, as on the lent GPU machines)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.corpora import tone_corpus

# modules that only a real import loads (a lazily imported ``torch`` sits in sys.modules unloaded)
HEAVY = ("torch._C", "transformers.modeling_utils", "scipy.signal", "librosa.core", "resemblyzer.audio")


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
