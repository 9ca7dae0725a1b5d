"""Draw docs/figures/architecture.png: the data flow of one MemMamba layer.

Run from anywhere: ``python docs/make_figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "figures" / "architecture.png"
BOX_STYLE = "round,pad=0.02,rounding_size=0.08"
COLORS = {"ssm": "#cfe2f3", "memory": "#fce5cd", "pool": "#d9ead3", "io": "#eeeeee"}

# name: (x, y, width, height, label, color)
BOXES = {
    "in": (0.5, 0.2, 2.6, 0.6, "residual stream $r^{l}_t$", "io"),
    "norm": (0.5, 1.3, 2.6, 0.6, "RMSNorm  $\\to x_t$", "ssm"),
    "note": (4.2, 1.3, 3.2, 0.6, "note: $W_n x_t$, score $\\sigma(w^\\top x_t)$", "memory"),
    "window": (
        4.2,
        2.3,
        3.2,
        0.7,
        "max over window of $w$ tokens\n(exists after its last token)",
        "memory",
    ),
    "pool": (4.2, 3.5, 3.2, 0.7, "pool $S^l$ ($k$ notes)\nFIFO / priority replacement", "pool"),
    "ctok": (
        0.5,
        3.5,
        2.6,
        0.7,
        "cross-token attn\n$Q=W_q x_t$, pool as of window start",
        "memory",
    ),
    "clay": (
        0.5,
        4.6,
        2.6,
        0.7,
        "cross-layer attn ((l+1) % p = 0)\npools of layers $l-g..l-1$",
        "memory",
    ),
    "prev": (4.2, 4.6, 3.2, 0.7, "snapshots of the previous\n$g$ layers' pools", "pool"),
    "fuse": (0.5, 5.8, 2.6, 0.7, "fusion  $\\bar x = x + F(g\\,c_{tok}) + F(c_{lay})$", "memory"),
    "mixer": (0.5, 6.9, 2.6, 0.7, "Mamba mixer\nconv + selective scan", "ssm"),
    "out": (0.5, 8.0, 2.6, 0.6, "$r^{l+1}_t = r^l_t + $ mixer($\\bar x_t$)", "io"),
}
ARROWS = [
    ("in", "norm"),
    ("norm", "note"),
    ("note", "window"),
    ("window", "pool"),
    ("pool", "ctok"),
    ("norm", "ctok"),
    ("ctok", "clay"),
    ("prev", "clay"),
    ("clay", "fuse"),
    ("fuse", "mixer"),
    ("mixer", "out"),
]


def _anchor(box: tuple, side: str) -> tuple[float, float]:
    x, y, w, h = box[:4]
    return {
        "top": (x + w / 2, y + h),
        "bottom": (x + w / 2, y),
        "left": (x, y + h / 2),
        "right": (x + w, y + h / 2),
    }[side]


def _sides(a: tuple, b: tuple) -> tuple[str, str]:
    if abs(a[0] - b[0]) < 1e-6:
        return ("top", "bottom") if b[1] > a[1] else ("bottom", "top")
    if abs(a[1] - b[1]) < 1e-6:
        return ("right", "left") if b[0] > a[0] else ("left", "right")
    return ("right", "left") if b[0] > a[0] else ("left", "right")


def main() -> None:
    fig, ax = plt.subplots(figsize=(8, 9))
    for x, y, w, h, label, color in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=BOX_STYLE, fc=COLORS[color], ec="k"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=8.5)
    for src, dst in ARROWS:
        a, b = BOXES[src], BOXES[dst]
        s_side, d_side = _sides(a, b)
        ax.add_patch(
            FancyArrowPatch(
                _anchor(a, s_side),
                _anchor(b, d_side),
                arrowstyle="-|>",
                mutation_scale=12,
                lw=1.0,
                color="k",
            )
        )
    ax.text(
        4.2,
        7.0,
        "Causal: tokens of window c read pools as\nthey were at c's start; a window's note\n"
        "is committed after its last token has\npassed through every layer.",
        fontsize=8.5,
        va="bottom",
    )
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 8.9)
    ax.axis("off")
    ax.set_title("One MemMamba layer (l)", fontsize=11)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=130, bbox_inches="tight")


if __name__ == "__main__":
    main()
