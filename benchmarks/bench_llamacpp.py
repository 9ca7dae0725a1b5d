"""Benchmark our CPU Mamba / MemMamba side by side with llama.cpp (same weights, 2 threads).

See ``memmamba.bench.llamacpp``; llama.cpp is fetched from PyPI (the llama-cpp-python sdist)
and built once into a cache folder. Example:
``python benchmarks/bench_llamacpp.py --quick --out-dir bench_out``
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from memmamba.bench.llamacpp import main
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from memmamba.bench.llamacpp import main

if __name__ == "__main__":
    main()
