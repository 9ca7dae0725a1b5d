"""SIGKILL fault injection (scripts/fault_inject.py, small): kills, resumes, zero failures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_inject.py"
TRIALS = 2  # trial 0 kills at a random moment, trial 1 inside a checkpoint write
STEPS = 6
SAVE_EVERY = 2


def _load_script():
    spec = importlib.util.spec_from_file_location("fault_inject", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 50 s: five training subprocesses
def test_sigkill_trials_resume_exactly(tmp_path):
    fault_inject = _load_script()
    report = fault_inject.run_fault_injection(
        trials=TRIALS,
        seed=0,
        out=tmp_path,
        steps=STEPS,
        save_every=SAVE_EVERY,
        max_kills=1,
        echo=lambda line: None,
    )
    details = [r for r in report["trial_reports"] if r["failures"]]
    assert report["failures"] == 0, details
    assert report["kills"] >= 1
    assert report["kills_mid_write"] >= 1, report["trial_reports"]
    assert (tmp_path / "fault_report.json").exists()
