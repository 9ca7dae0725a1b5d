"""Benchmark the whole CPU language model against mambapy and Hugging Face Mamba.

See ``memmamba.bench.model``.
Example: ``python benchmarks/bench_model.py --quick --out-dir bench_out``
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from memmamba.bench.model import main
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from memmamba.bench.model import main

if __name__ == "__main__":
    main()
