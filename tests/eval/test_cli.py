"""``memmamba eval <task>`` and ``memmamba report`` on tiny saved models."""

from __future__ import annotations

import json

import pytest

import memmamba.cli as cli


@pytest.fixture
def run():
    return cli.main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from .conftest import tiny_llama, tiny_mamba

    root = tmp_path_factory.mktemp("models")
    tiny_mamba().save_pretrained(root / "mamba")
    tiny_llama().save_pretrained(root / "llama")
    (root / "book.txt").write_text("A long time ago, in a quiet village, there lived a man. " * 30)
    (root / "qa.jsonl").write_text(
        "\n".join(json.dumps({"question": f"q{i}?", "passage": f"text {i}."}) for i in range(12))
    )
    return root


def test_help_for_every_task(run, capsys):
    for task in ("ppl", "passkey", "docret", "mqar", "fidelity"):
        with pytest.raises(SystemExit) as exc:
            run(["eval", task, "--help"])
        assert exc.value.code == 0
        assert "--model" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["mamba", "llama"])
def test_every_task_writes_json_csv_png_and_report(run, saved, tmp_path, capsys, kind):
    model, out = str(saved / kind), tmp_path / "res"
    common = ["--model", model, "--name", f"tiny-{kind}", "--out", str(out), "--quiet"]
    common += ["--chunk-size", "256"]
    assert (
        run(
            [
                "eval",
                "ppl",
                *common,
                "--data",
                str(saved / "book.txt"),
                "--lengths",
                "500",
                "1000",
                "--max-windows",
                "2",
            ]
        )
        == 0
    )
    assert (
        run(
            [
                "eval",
                "passkey",
                *common,
                "--variant",
                "exact",
                "--lengths",
                "400",
                "--depths",
                "0",
                "1",
                "--samples",
                "1",
            ]
        )
        == 0
    )
    assert (
        run(
            [
                "eval",
                "docret",
                *common,
                "--data",
                str(saved / "qa.jsonl"),
                "--noise",
                "3",
                "--questions",
                "2",
            ]
        )
        == 0
    )
    assert run(["eval", "mqar", *common, "--seq-lens", "32", "--examples", "2"]) == 0
    assert (
        run(
            [
                "eval",
                "fidelity",
                *common,
                "--data",
                str(saved / "book.txt"),
                "--lengths",
                "300",
                "--gaps",
                "1",
                "2",
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "fidelity"
    family = {"mamba": "mamba", "llama": "transformer"}[kind]
    assert printed["model"]["name"] == f"tiny-{kind}" and printed["model"]["family"] == family
    for stem in ("ppl", "passkey-exact", "docret", "probe-mqar", "fidelity"):
        for ext in ("json", "csv", "png"):
            assert (out / f"{stem}.{ext}").is_file(), f"{stem}.{ext}"
    assert run(["report", str(out), "--out", str(tmp_path / "report.md"), "--quiet"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "17.35" in text and "(ours" in text and "Table 3" in text
    assert f"**tiny-{kind}** (ours" in text and "## Verdicts on the paper's claims" in text


def test_user_errors_exit_2(run, capsys):
    assert run(["eval", "ppl", "--model", "/nonexistent/model", "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
