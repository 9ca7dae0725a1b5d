"""lm-evaluation-harness: a local task (YAML + JSONL, no hub) scored through ``memmamba``'s model
class equals memmamba's own scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from memmamba.data.tokenizers import get_tokenizer  # noqa: E402
from memmamba.eval import Runner, load_model  # noqa: E402
from memmamba.eval.ppl import window_nll  # noqa: E402

CHOICE_DOCS = [
    {"question": "The sky is", "choices": [" blue", " green", " loud"], "label": 0},
    {"question": "Two and two make", "choices": [" four", " five"], "label": 0},
    {
        "question": "Question: what do cows drink?\nAnswer:",
        "choices": [" water", " milk"],
        "label": 0,
    },
]
TEXT_DOCS = [
    {
        "text": "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife."
    },
    {"text": "Call me Ishmael."},
]
GEN_DOCS = [{"prompt": "Say yes:", "answer": " yes"}, {"prompt": "abc", "answer": "def"}]


def _write_tasks(folder: Path) -> Path:
    """Three tasks (multiple choice, rolling perplexity, generation) over local JSONL files."""
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "hf-cache"
    specs = {
        "mm_choice": (
            CHOICE_DOCS,
            [
                "output_type: multiple_choice",
                'doc_to_text: "{{question}}"',
                'doc_to_choice: "{{choices}}"',
                'doc_to_target: "{{label}}"',
                "metric_list:",
                "  - metric: acc",
            ],
        ),
        "mm_rolling": (
            TEXT_DOCS,
            [
                "output_type: loglikelihood_rolling",
                'doc_to_text: ""',
                'doc_to_target: "{{text}}"',
                "metric_list:",
                "  - metric: word_perplexity",
                "  - metric: bits_per_byte",
            ],
        ),
        "mm_gen": (
            GEN_DOCS,
            [
                "output_type: generate_until",
                'doc_to_text: "{{prompt}}"',
                'doc_to_target: "{{answer}}"',
                "generation_kwargs:",
                "  until: ['\\n']",
                "  max_gen_toks: 6",
                "  do_sample: false",
                "metric_list:",
                "  - metric: exact_match",
            ],
        ),
    }
    for name, (docs, lines) in specs.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        header = [
            f"task: {name}",
            "dataset_path: json",
            "dataset_kwargs:",
            f"  data_files: {{test: {json.dumps(str(data))}}}",
            f"  cache_dir: {json.dumps(str(cache))}",
            "test_split: test",
        ]
        (folder / f"{name}.yaml").write_text("\n".join(header + lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def harness_run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from memmamba.integrations.lm_eval import evaluate

    tasks = _write_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))
    return evaluate(
        str(tiny_checkpoint),
        ["mm_choice", "mm_rolling", "mm_gen"],
        tokenizer="byte",
        include_path=tasks,
        include_defaults=False,
        log_samples=True,
    )


def _reference_loglik(model, ids: list[int], n_cont: int) -> float:
    """log p(last n_cont ids | the rest) from one plain forward (no chunking, no Runner)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logp = F.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logp[-n_cont:].sum())


@pytest.mark.slow
def test_loglikelihood_equals_memmamba_scorer(harness_run, tiny_checkpoint):
    tok = get_tokenizer("byte")
    model = load_model(str(tiny_checkpoint))
    runner = Runner(model, chunk_size=5)  # chunked on purpose: state carried across chunks
    samples = harness_run["samples"]["mm_choice"]
    assert len(samples) == len(CHOICE_DOCS)
    checked = 0
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            ll, greedy = resp[0]
            ctx, cont = tok.encode(context.rstrip()), tok.encode(continuation)
            trailing = context[len(context.rstrip()) :]
            cont = tok.encode(trailing) + cont
            nll, _ = window_nll(runner, ctx + cont, labels=len(cont))
            assert math.isclose(ll, -nll * len(cont), rel_tol=1e-5, abs_tol=1e-4)
            assert math.isclose(ll, _reference_loglik(model, ctx + cont, len(cont)), abs_tol=1e-3)
            assert isinstance(greedy, bool)
            checked += 1
    assert checked == sum(len(d["choices"]) for d in CHOICE_DOCS)
    acc = harness_run["results"]["mm_choice"]["acc,none"]
    assert 0.0 <= acc <= 1.0


@pytest.mark.slow
def test_rolling_loglikelihood_scores_every_token(harness_run, tiny_checkpoint):
    tok = get_tokenizer("byte")
    model = load_model(str(tiny_checkpoint))
    for sample in harness_run["samples"]["mm_rolling"]:
        (text,) = sample["arguments"][0]
        ll = sample["resps"][0][0]
        ll = ll[0] if isinstance(ll, (list, tuple)) else ll
        ids = [tok.eos_token_id, *tok.encode(text)]
        assert math.isclose(ll, _reference_loglik(model, ids, len(ids) - 1), abs_tol=1e-3)
    metrics = harness_run["results"]["mm_rolling"]
    assert math.isfinite(metrics["bits_per_byte,none"]) and metrics["bits_per_byte,none"] > 0


@pytest.mark.slow
def test_generate_until_is_greedy_and_stops(harness_run, tiny_checkpoint):
    tok = get_tokenizer("byte")
    model = load_model(str(tiny_checkpoint))
    runner = Runner(model)
    for sample, doc in zip(harness_run["samples"]["mm_gen"], GEN_DOCS):
        text = sample["resps"][0][0]
        assert "\n" not in text
        greedy = tok.decode(runner.generate(tok.encode(doc["prompt"]), max_new_tokens=6))
        assert greedy.startswith(text)
        assert len(tok.encode(text)) <= 6


def test_encode_pair_moves_trailing_space_and_empty_context(tiny_checkpoint):
    from memmamba.integrations.lm_eval import MemMambaLM

    lm = MemMambaLM(str(tiny_checkpoint), tokenizer="byte")
    assert lm.encode_pair("ab ", "c") == ([97, 98], [32, 99])
    assert lm.encode_pair("", "c") == ([256], [99])
    ll, greedy = lm.score_tokens([97, 98], [])
    assert ll == 0.0 and greedy


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    from memmamba.integrations.lm_eval import MemMambaLM

    assert get_model("memmamba") is MemMambaLM


@pytest.mark.slow
def test_cli_harness_writes_json(tiny_checkpoint, tmp_path, capsys):
    from memmamba.cli import _add_eval, _Parser
    from memmamba.integrations.harness_cli import attach_to_eval

    tasks = _write_tasks(tmp_path / "tasks")
    parser = _Parser(prog="memmamba")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_eval(sub)
    attach_to_eval(sub)
    args = parser.parse_args(
        [
            "eval", "harness", "--model", str(tiny_checkpoint), "--tasks", "mm_choice",
            "--tokenizer", "byte", "--include-path", str(tasks), "--no-default-tasks",
            "--limit", "2", "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    summary = args.func(args)
    assert summary["n_samples"]["mm_choice"]["effective"] == 2
    saved = json.loads((tmp_path / "out" / "harness.json").read_text())
    assert "acc,none" in saved["results"]["mm_choice"]
    assert "mm_choice" in capsys.readouterr().out


def test_cli_harness_missing_model_is_a_user_error(tmp_path):
    import argparse

    from memmamba.integrations.harness_cli import add_harness_parser

    parser = argparse.ArgumentParser()
    add_harness_parser(parser.add_subparsers())
    args = parser.parse_args(["harness", "--model", str(tmp_path / "nope"), "--tasks", "x"])
    with pytest.raises(FileNotFoundError, match="not found"):
        args.func(args)
