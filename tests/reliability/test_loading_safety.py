"""Loading is safe: pickles are read with ``weights_only`` (a hostile pickle never runs code),
safetensors are preferred, and bad config files fail with a clear error naming the field."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, MambaConfig, MambaForCausalLM

from memmamba.eval import load_model
from memmamba.models import MemMambaConfig, MemMambaForCausalLM

from ..models.tiny import tiny_config

MARKER_NAME = "payload-ran"


class MarkerPayload:
    """Unpickling this object creates ``path`` (what an attacker's ``__reduce__`` would do)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _write_hostile(path: Path, marker: Path, fmt: str) -> None:
    payload = {"backbone.embeddings.weight": MarkerPayload(marker)}
    if fmt == "torch.save":  # zip container, as torch.save writes it
        torch.save(payload, path)
    else:  # a bare pickle stream (legacy format)
        path.write_bytes(pickle.dumps(payload, protocol=2))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / MARKER_NAME


def test_the_payload_is_real(tmp_path: Path, marker: Path) -> None:
    """Control: plain ``pickle.loads`` of the payload does create the marker file."""
    _write_hostile(tmp_path / "x.bin", marker, "pickle")
    pickle.loads((tmp_path / "x.bin").read_bytes())
    assert marker.exists()


def _memmamba_folder(root: Path) -> Path:
    folder = root / "model"
    tiny_config().save_pretrained(folder)
    return folder


def _mamba_folder(root: Path) -> Path:
    folder = root / "mamba"
    MambaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, state_size=4).save_pretrained(
        folder
    )
    return folder


LOADERS = {
    "from_pretrained": lambda folder: MemMambaForCausalLM.from_pretrained(folder),
    "AutoModelForCausalLM": lambda folder: AutoModelForCausalLM.from_pretrained(folder),
    "eval.load_model": lambda folder: load_model(folder),
}


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_hostile_pickle_checkpoint_never_runs(tmp_path: Path, marker: Path, loader, fmt) -> None:
    folder = _memmamba_folder(tmp_path)
    _write_hostile(folder / "pytorch_model.bin", marker, fmt)
    with pytest.raises(Exception) as err:  # noqa: B017 - the type depends on the loader
        LOADERS[loader](folder)
    assert not marker.exists(), "unpickling ran the payload"
    assert "weights" in str(err.value).lower() or "unpickl" in str(err.value).lower()


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_hostile_pickle_never_runs_in_from_mamba(tmp_path: Path, marker: Path, fmt) -> None:
    folder = _mamba_folder(tmp_path)
    _write_hostile(folder / "pytorch_model.bin", marker, fmt)
    with pytest.raises(pickle.UnpicklingError):
        MemMambaForCausalLM.from_mamba(folder)
    assert not marker.exists()


def test_safetensors_win_over_a_hostile_pickle(tmp_path: Path, marker: Path) -> None:
    torch.manual_seed(0)
    model = MemMambaForCausalLM(tiny_config()).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    _write_hostile(folder / "pytorch_model.bin", marker, "torch.save")
    loaded = MemMambaForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 50, (1, 9))
    assert torch.equal(loaded(ids).logits, model(ids).logits)

    mamba = MambaForCausalLM(
        MambaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, state_size=4)
    ).eval()
    mamba_folder = tmp_path / "mamba"
    mamba.save_pretrained(mamba_folder)
    _write_hostile(mamba_folder / "pytorch_model.bin", marker, "pickle")
    converted = MemMambaForCausalLM.from_mamba(mamba_folder).eval()
    torch.testing.assert_close(converted(ids).logits, mamba(ids).logits, rtol=0, atol=1e-5)
    assert not marker.exists()


def test_plain_tensor_pickle_still_loads(tmp_path: Path) -> None:
    """weights_only refuses code, not plain state dicts."""
    torch.manual_seed(0)
    model = MemMambaForCausalLM(tiny_config()).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = MemMambaForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 50, (1, 9))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


# -- config files -----------------------------------------------------------------------------
def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_unknown_config_keys_are_kept_not_fatal(tmp_path: Path) -> None:
    """Documented choice (Hugging Face convention): unknown keys are accepted and kept, so
    configs written by newer versions still load; they never change a known field."""
    folder = _memmamba_folder(tmp_path)
    _edit_config(folder, some_future_field=7, note_polcy="all")  # sic: a misspelt key
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, MemMambaConfig)
    assert config.some_future_field == 7
    assert config.note_policy == "score"  # the misspelt key did not touch the real field
    config.save_pretrained(tmp_path / "again")
    assert AutoConfig.from_pretrained(tmp_path / "again").some_future_field == 7


VALIDATED = [
    ("note_policy", "sometimes"),
    ("pool_replacement", "lru"),
    ("retrieval_gate", "never"),
    ("fusion", "concat"),
    ("fusion", None),
    ("memory_heads", 3),
    ("memory_heads", 2.0),
    ("pool_size", 0),
    ("pool_size", True),
    ("summary_size", None),
    ("note_window", -2),
    ("note_threshold", 1.5),
    ("note_threshold", float("nan")),
    ("retrieval_threshold", "high"),
    ("cross_layer_every", -1),
    ("cross_layer_span", 0),
    ("note_period_active", 500),
    ("scan_backend", "gpu"),
    ("hidden_size", 0),
    ("num_hidden_layers", -1),
    ("state_size", 1.5),
    ("expand", 0),
    ("conv_kernel", 0),
    ("vocab_size", "50"),
    ("time_step_rank", 0),
    ("time_step_init_scheme", "zeros"),
    ("fusion_init", float("inf")),
]


@pytest.mark.parametrize("field,value", VALIDATED)
def test_invalid_config_file_values_raise_naming_the_field(tmp_path: Path, field, value) -> None:
    folder = _memmamba_folder(tmp_path)
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))  # NaN / Infinity are written as JSON extensions
    for load in (AutoConfig.from_pretrained, MemMambaForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=f"MemMambaConfig.{field} ") as err:
            load(folder)
        assert "\n" not in str(err.value)


FORMERLY_UNVALIDATED = [
    ("layer_norm_epsilon", -1.0),  # accepted: RMSNorm then gives NaN logits
    ("layer_norm_epsilon", "x"),  # TypeError inside the first forward
    ("time_step_min", -1.0),  # 'math domain error' at model build
    ("time_step_min", 0.5),  # > time_step_max = 0.1: accepted silently
    ("time_step_max", 0.0),  # 'math domain error' at model build
    ("initializer_range", -1.0),  # RuntimeError from torch.normal at model build
    ("time_step_scale", float("inf")),  # RuntimeError from the initialiser
    ("hidden_size", "abc"),  # "invalid literal for int()": the field is not named
    ("use_memory", "yes"),  # any truthy value accepted
]


@pytest.mark.parametrize("field,value", FORMERLY_UNVALIDATED)
def test_more_config_values_raise_naming_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=f"MemMambaConfig.{field} "):
        MemMambaConfig(**{**tiny_config().to_dict(), field: value})


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", "null", '{"model_type": 3}'])
def test_unreadable_config_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    folder = _memmamba_folder(tmp_path)
    (folder / "config.json").write_text(content)
    with pytest.raises(ValueError, match="cannot load a model from") as err:
        load_model(folder)  # the evaluation CLI's loader: one line, exit code 2
    assert "\n" not in str(err.value)
    if content in ("{not json", ""):  # transformers' own message names the file
        with pytest.raises(OSError, match="config"):
            MemMambaForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["missing", "junk", "truncated", "wrong_shape"])
def test_damaged_weights_are_a_clear_error(tmp_path: Path, damage: str) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "model"
    MemMambaForCausalLM(tiny_config()).save_pretrained(folder)
    weights = folder / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    elif damage == "junk":
        weights.write_bytes(bytes(range(256)) * 4)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        _edit_config(folder, hidden_size=32)
    with pytest.raises(ValueError, match="cannot load a model from") as err:
        load_model(folder)
    assert "\n" not in str(err.value)
