"""Numbers printed in the MemMamba paper, for side-by-side reports.

Source: Y. Wang, Y. Chen, J. Yan, J. Lu, X. Sun, *MemMamba: Rethinking Memory Patterns in State
Space Model*, arXiv 2510.03279 (v1), Tables 1-3 and Fig. 3 (section 5). ">100" was printed as
INF (stored here as ``math.inf``), "NA" as None. Table 2's 400K column used a subset of samples.
"""

from __future__ import annotations

import math

CITATION = (
    "Wang et al., MemMamba: Rethinking Memory Patterns in State Space Model, arXiv 2510.03279"
)
INF = math.inf

#: Table 1 - PG19 perplexity vs context length (tokens). model -> (params, {length: ppl}).
TABLE1_LENGTHS = (1000, 2000, 4000, 10000, 20000, 30000, 40000, 50000, 60000)
TABLE1_PPL: dict[str, tuple[str, dict[int, float | None]]] = {
    "Mamba": (
        "130M",
        dict(zip(TABLE1_LENGTHS, (21.00, 19.60, 18.77, 19.29, 31.63, INF, INF, INF, INF))),
    ),
    "DeciMamba": (
        "150M",
        dict(zip(TABLE1_LENGTHS, (21.90, 20.06, 18.55, 21.98, 23.15, 27.05, 40.48, INF, INF))),
    ),
    "Com-Transformer": (
        "400M",
        dict(zip(TABLE1_LENGTHS, (33.09, None, None, None, None, None, None, None, None))),
    ),
    "Megalodon": (
        "200M",
        dict(zip(TABLE1_LENGTHS, (66.14, 66.55, 66.43, 65.02, 64.81, 64.3, 64.21, 64.02, 63.92))),
    ),
    "MemMamba": (
        "200M",
        dict(zip(TABLE1_LENGTHS, (19.35, 18.23, 17.52, 17.71, 18.25, 17.33, 17.54, 17.97, 17.35))),
    ),
}

#: Table 2 - passkey accuracy vs context length (K = 1024 tokens, as in DeciMamba's grid).
TABLE2_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 409600)
TABLE2_PASSKEY: dict[str, dict[int, float]] = {
    "Pythia-160M": dict(zip(TABLE2_LENGTHS, (1.0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0))),
    "Mamba-130M": dict(zip(TABLE2_LENGTHS, (1.0, 1.0, 1.0, 1.0, 0.8, 0, 0, 0, 0, 0))),
    "DeciMamba-130M": dict(zip(TABLE2_LENGTHS, (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6))),
    "MemMamba": dict(zip(TABLE2_LENGTHS, (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.9))),
}

#: Table 3 - document-retrieval accuracy vs number of noise documents.
TABLE3_NOISE = (10, 20, 120, 160, 200)
TABLE3_DOCRET: dict[str, dict[int, float]] = {
    "Mamba": dict(zip(TABLE3_NOISE, (0.68, 0.71, 0.01, 0, 0))),
    "DeciMamba": dict(zip(TABLE3_NOISE, (0.72, 0.74, 0.48, 0.19, 0.12))),
    "MemMamba": dict(zip(TABLE3_NOISE, (0.80, 0.66, 0.52, 0.44, 0.24))),
}

#: Section 5.2 / Fig. 3 (right) - end-to-end latency (ms), one bar per model, GPU unstated.
LATENCY_MS: dict[str, float] = {"Transformer": 2600.0, "DeciMamba": 1269.0, "MemMamba": 1280.0}

#: Fig. 4 - ETMF / ECLMF read off the plot (+-0.02), flat over 1K-60K unless a range is given.
FIG4_FIDELITY: dict[str, dict[str, str]] = {
    "MemMamba": {"etmf": "0.40-0.47", "eclmf": "~0.27"},
    "Mamba": {"etmf": "0.23-0.28", "eclmf": "~0.10"},
    "DeciMamba": {"etmf": "0.11-0.14", "eclmf": "0.04 -> 0.48 (rising)"},
}
