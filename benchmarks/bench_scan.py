"""Benchmark the CPU selective scan against mambapy and Hugging Face (see memmamba.bench.scan).

Example: ``python benchmarks/bench_scan.py --quick --out-dir bench_out``
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from memmamba.bench.scan import main
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from memmamba.bench.scan import main

if __name__ == "__main__":
    main()
