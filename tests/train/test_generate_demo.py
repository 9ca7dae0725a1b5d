"""`memmamba generate` streams text from a checkpoint; `memmamba demo --smoke` writes its files."""

from __future__ import annotations

import io
import json

import pytest

from memmamba.demo import add_demo_parser
from memmamba.generate import TextStreamer, add_generate_parser, generate_text, load_for_generation
from memmamba.train.cli import standalone
from memmamba.train.loop import train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen-run")
    train(tiny_config(corpus_dir, out, steps=2, save_every=2))
    return out


@pytest.mark.parametrize(
    "flags",
    [
        ["--greedy"],
        ["--temperature", "0.7", "--top-k", "10", "--top-p", "0.9", "--seed", "1"],
        ["--beams", "2"],
    ],
)
def test_generate_cli(run_dir, flags, capsys):
    code = standalone(
        add_generate_parser,
        "generate",
        [str(run_dir), "The water", "--max-new-tokens", "12", *flags],
    )
    assert code == 0
    assert capsys.readouterr().out.strip()


def test_generate_is_seeded_and_streams(run_dir):
    model, tok = load_for_generation(run_dir / "checkpoints" / "step-00000002")
    stream = io.StringIO()
    a = generate_text(model, tok, "It was", 16, temperature=1.0, seed=5, stream=stream)
    b = generate_text(model, tok, "It was", 16, temperature=1.0, seed=5)
    assert a == b and stream.getvalue() == a + "\n"
    assert generate_text(model, tok, "It was", 8, greedy=True) == generate_text(
        model, tok, "It was", 8, greedy=True
    )


def test_streamer_holds_back_partial_utf8():
    from memmamba.data import ByteTokenizer

    out = io.StringIO()
    streamer = TextStreamer(ByteTokenizer(), out, skip_prompt=False)
    import torch

    for byte in "é!".encode():
        streamer.put(torch.tensor([byte]))
    streamer.end()
    assert out.getvalue() == "é!\n"


def test_generate_errors(run_dir, tmp_path, capsys):
    assert standalone(add_generate_parser, "generate", [str(tmp_path), "x"]) == 2
    assert (
        standalone(add_generate_parser, "generate", [str(run_dir), "x", "--temperature", "0"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("memmamba generate: error") for line in err)


def test_demo_smoke_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert standalone(add_demo_parser, "demo", ["--smoke", "--quiet", "--out", str(out)]) == 0
    for name in (
        "results.json",
        "summary.md",
        "ppl_vs_length.png",
        "passkey.png",
        "training_loss.png",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["memmamba"]["train"]["steps"] == results["mamba"]["train"]["steps"] == 3
    assert set(results["mamba"]["perplexity"]) == {"64", "128"}
    assert str(out.resolve()) in capsys.readouterr().err
