"""Torch files that dydis loads: code hidden in them is refused, never run; bad files are one line."""

from __future__ import annotations

import pytest
import torch

from conftest import truncate, write_code_payload
from dydis.errors import DataError
from dydis.models.lpips import LPIPS
from dydis.models.vqgan import VQGAN
from dydis.training.checkpoint import load_checkpoint
from dydis.training.ldm import load_model

LOADERS = {
    "ldm model file": load_model,
    "vqgan model file": VQGAN.from_file,
    "checkpoint": load_checkpoint,
    "torch state dict": lambda path: LPIPS.from_files(path, path),
}


@pytest.mark.parametrize("what", LOADERS)
def test_code_in_a_torch_file_is_refused_unrun(tmp_path, what):
    marker = tmp_path / "code-ran"
    path = write_code_payload(tmp_path / "model.pt", marker, model={}, config={}, configs={}, step=1, scale_factor=1.0)
    with pytest.raises(Exception) as caught:
        LOADERS[what](path)
    assert not marker.exists()
    assert str(caught.value) == (f"{path}: refused: expected only tensors and plain values in the {what}, found "
                                 "other Python objects (loading them could run code)")
    assert isinstance(caught.value, DataError)


@pytest.mark.parametrize("what", LOADERS)
def test_missing_truncated_and_foreign_files_are_one_line(tmp_path, what):
    load = LOADERS[what]
    with pytest.raises(DataError, match=f"nowhere.pt: {what} not found$"):
        load(tmp_path / "nowhere.pt")
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "cut.pt")
    with pytest.raises(DataError, match=f"cut.pt: not a readable {what} \\(RuntimeError\\): truncated or not a torch "
                                        "file$"):
        load(truncate(tmp_path / "cut.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(DataError, match=f"junk.pt: not a readable {what} \\(UnpicklingError\\)"):
        load(tmp_path / "junk.pt")


@pytest.mark.parametrize("what, keys", [("ldm model file", "model, configs, scale_factor"),
                                        ("vqgan model file", "model, config"), ("checkpoint", "step, config")])
def test_a_torch_file_of_another_kind_is_one_line(tmp_path, what, keys):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(DataError, match=f"list.pt: expected the {what} to be a dict of {keys}, found a list$"):
        LOADERS[what](tmp_path / "list.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(DataError, match=f"other.pt: expected the {what} to hold {keys}; .* missing$"):
        LOADERS[what](tmp_path / "other.pt")


def test_vqgan_weights_that_do_not_fit_their_config_are_one_line(tmp_path):
    from dydis.config import to_dict
    from dydis.models.config import VQGAN_PRESETS

    torch.save({"model": {"encoder.conv_in.weight": torch.zeros(1)}, "config": to_dict(VQGAN_PRESETS["tiny"])},
               tmp_path / "model.pt")
    with pytest.raises(DataError) as caught:
        VQGAN.from_file(tmp_path / "model.pt")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'model.pt'}: the weights do not fit the model of the config stored with "
                              "them (Error(s) in loading state_dict for VQGAN:") and "\n" not in message
