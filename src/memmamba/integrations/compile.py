"""``torch.compile`` and MemMamba: graph-break reports and a warmed-up compile helper.

The forward compiles with ``fullgraph=False``. Dynamo breaks the graph where the model leaves
PyTorch: the input-id range check (``Tensor.item``), the numba CPU selective scan (each call of
the fused kernel) and data-dependent Python branches; inductor compiles the pieces in between.
Call the model once eagerly before compiling (``compile_model`` does) so that numba's JIT has run:
dynamo otherwise traces into numba's compiler. ``docs/api.md`` lists the current breaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class GraphBreakReport:
    """What ``torch._dynamo.explain`` found in one forward.

    graph_count: captured graphs; break_count: graph breaks; op_count: captured ops;
    breaks: (reason, "file:line" of the innermost memmamba frame) per break.
    """

    graph_count: int
    break_count: int
    op_count: int
    breaks: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Breaks counted by (first line of the reason, location)."""
        counts: dict[str, int] = {}
        for reason, where in self.breaks:
            key = f"{reason} @ {where}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def _location(stack: list[Any]) -> str:
    frames = [f for f in stack if "memmamba" in f.filename] or list(stack)
    if not frames:
        return "?"
    frame = frames[-1]
    path = frame.filename.replace("\\", "/")
    path = path.split("/memmamba/", 1)[-1] if "/memmamba/" in path else path.rsplit("/", 1)[-1]
    return f"{path}:{frame.lineno}"


def graph_breaks(
    model: nn.Module, input_ids: torch.Tensor, **forward_kwargs: Any
) -> GraphBreakReport:
    """Run ``torch._dynamo.explain`` on ``model(input_ids=..., **forward_kwargs)`` (no grad).

    Warm the model up first (one eager call) when it uses the numba scan.
    """
    import torch._dynamo

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, **forward_kwargs).logits

    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(forward)(input_ids)
    breaks = [
        ((b.reason.strip().splitlines() or ["?"])[0], _location(list(b.user_stack or [])))
        for b in explained.break_reasons
    ]
    return GraphBreakReport(
        graph_count=explained.graph_count,
        break_count=explained.graph_break_count,
        op_count=explained.op_count,
        breaks=breaks,
    )


def compile_model(
    model: nn.Module, example_ids: torch.Tensor | None = None, **compile_kwargs: Any
) -> nn.Module:
    """``torch.compile(model, **compile_kwargs)`` (``fullgraph=False``) after one eager warm-up
    forward on ``example_ids`` (default: 8 zero ids), which runs numba's JIT outside dynamo."""
    compile_kwargs.setdefault("fullgraph", False)
    if example_ids is None:
        device = next(model.parameters()).device
        example_ids = torch.zeros(1, 8, dtype=torch.long, device=device)
    with torch.no_grad():
        model(input_ids=example_ids)
    return torch.compile(model, **compile_kwargs)


__all__ = ["GraphBreakReport", "compile_model", "graph_breaks"]
