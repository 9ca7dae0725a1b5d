"""torch.compile on CPU: dynamo captures the forward with a bounded set of graph breaks;
inductor's compiled forward equals eager (opt-in: MEMMAMBA_TEST_COMPILE=1, about a minute)."""

from __future__ import annotations

import os

import pytest
import torch

from memmamba.integrations.compile import compile_model, graph_breaks

from .conftest import tiny_model

#: Where breaks are expected today (see docs/api.md, "torch.compile").
KNOWN_BREAK_SITES = ("models/", "layers/", "ops/")


@pytest.mark.slow
def test_dynamo_captures_forward_and_reports_breaks():
    model = tiny_model()
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        model(input_ids=ids)  # numba's JIT runs outside dynamo
    report = graph_breaks(model, ids, use_cache=False)
    assert report.graph_count >= 1 and report.op_count > 0
    assert report.break_count == report.graph_count - 1
    for reason, where in report.breaks:
        assert where.startswith(KNOWN_BREAK_SITES), (reason, where)
    print("graph breaks:", report.break_count, report.summary())


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MEMMAMBA_TEST_COMPILE") != "1",
    reason="inductor compile: MEMMAMBA_TEST_COMPILE=1",
)
@pytest.mark.parametrize("scan_backend", [None, "chunked"])
def test_inductor_forward_matches_eager(scan_backend):
    torch._dynamo.reset()
    model = tiny_model(scan_backend=scan_backend)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    compiled = compile_model(model, ids)
    with torch.no_grad():
        got = compiled(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
