"""save_pretrained of several adapters is staged beside the target and moved in only when every
adapter is written: a failure at any point (an error while writing, a full disk, a file size limit,
a read-only folder, a file in the way, Ctrl-C) leaves the target exactly as it was, with no
temporary folder behind. Checkpoints likewise leave no half-written folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from faults import file_size_limit, folder_state, read_only, small_disk

import peftkit as pk
import peftkit.checkpoint as ckpt
from peftkit.train import state


def wide_model(adapters: int = 3) -> pk.PeftModel:
    """Each adapter file is ~33 KB (r=16 on a 256x256 layer), so a small disk fills mid-save."""
    torch.manual_seed(0)
    model = pk.get_peft_model(nn.Sequential(nn.Linear(256, 256)), pk.LoraConfig(r=16, target_modules=["0"]))
    for i in range(1, adapters):
        model.add_adapter(f"a{i}", pk.LoraConfig(r=16, target_modules=["0"]))
    return model


def previous_save(folder: Path) -> dict[str, str]:
    """A target that already holds an older save and a file of the user's."""
    small = pk.get_peft_model(nn.Sequential(nn.Linear(256, 256)), pk.LoraConfig(r=2, target_modules=["0"]))
    small.add_adapter("a1", pk.LoraConfig(r=2, target_modules=["0"]))
    small.save_pretrained(folder)
    (folder / "README.md").write_text("mine\n")
    return folder_state(folder)


def assert_nothing_half_new(folder: Path, before: dict[str, str]) -> None:
    assert folder_state(folder) == before
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.endswith(".saving")]
    assert not leftovers, leftovers


def fail_on_call(monkeypatch, n: int, error: BaseException) -> None:
    real, calls = ckpt.save_adapter_weights, []

    def failing(tensors, directory):
        calls.append(directory)
        if len(calls) == n:
            raise error
        return real(tensors, directory)

    monkeypatch.setattr(ckpt, "save_adapter_weights", failing)


@pytest.mark.parametrize("fails_at", [1, 2, 3])
@pytest.mark.parametrize("existing", [True, False], ids=["over an older save", "into a new folder"])
def test_a_failure_while_writing_any_adapter_changes_nothing(fails_at, existing, tmp_path, monkeypatch):
    target = tmp_path / "out"
    before = previous_save(target) if existing else {}
    fail_on_call(monkeypatch, fails_at, OSError(errno.ENAMETOOLONG, "File name too long", "x"))
    with pytest.raises(OSError, match="too long"):
        wide_model().save_pretrained(target)
    assert_nothing_half_new(target, before)


def test_ctrl_c_in_the_middle_of_a_save_changes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out"
    before = previous_save(target)
    fail_on_call(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        wide_model().save_pretrained(target)
    assert_nothing_half_new(target, before)


def test_a_successful_save_keeps_files_it_does_not_write(tmp_path):
    target = tmp_path / "out"
    before = previous_save(target)
    wide_model(adapters=1).save_pretrained(target)
    after = folder_state(target)
    assert after["a1/adapter_model.safetensors"] == before["a1/adapter_model.safetensors"]  # another adapter's save
    assert after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
    # the model card is a file save_pretrained writes: as peft, it adds its metadata and keeps the user's text
    card = (target / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "\n---\nmine\n" in card
    assert (os.stat(target).st_mode & 0o777) == (0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_full_disk_changes_nothing(tmp_path):
    with small_disk(tmp_path / "disk", size_kb=96) as disk:
        target = disk / "out"
        before = previous_save(target)
        with pytest.raises(OSError) as err:
            wide_model().save_pretrained(target)
        assert err.value.errno == errno.ENOSPC and err.value.filename
        assert_nothing_half_new(target, before)


def test_a_file_size_limit_changes_nothing(tmp_path):
    target = tmp_path / "out"
    before = previous_save(target)
    model = wide_model()
    with pytest.raises(OSError) as err, file_size_limit(20_000):
        model.save_pretrained(target)
    assert err.value.errno == errno.EFBIG and err.value.filename
    assert_nothing_half_new(target, before)


def test_a_read_only_folder_changes_nothing(tmp_path):
    target = tmp_path / "out"
    before = previous_save(target)
    with read_only(tmp_path), pytest.raises(OSError) as err:
        wide_model().save_pretrained(target)
    assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and err.value.filename
    assert folder_state(target) == before


def test_a_file_in_the_way_of_an_adapter_folder_is_found_before_anything_moves(tmp_path):
    target = tmp_path / "out"
    before = previous_save(target)
    (target / "a2").write_text("a file where adapter a2's folder goes")
    before = folder_state(target)
    with pytest.raises(pk.PathError, match="a2.*a file of that name is in the way"):
        wide_model().save_pretrained(target)
    assert_nothing_half_new(target, before)


def test_save_directory_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(pk.CheckpointError, match="is a file"):
        wide_model().save_pretrained(tmp_path / "out")
    assert (tmp_path / "out").read_text() == "x"


def test_a_checkpoint_that_fails_half_way_leaves_no_folder_and_the_previous_one_intact(tmp_path, monkeypatch):
    model = wide_model(adapters=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpts = tmp_path / "checkpoints"
    state.save_checkpoint(str(ckpts / "step-00001"), model, opt, sched, state.Progress(1, 0, 1))
    before = folder_state(ckpts)
    monkeypatch.setattr(state, "write_tensors", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left", "x")))
    with pytest.raises(OSError, match="No space"):
        state.save_checkpoint(str(ckpts / "step-00002"), model, opt, sched, state.Progress(2, 0, 2))
    assert folder_state(ckpts) == before
    assert state.intact_checkpoint(str(ckpts)) == str(ckpts / "step-00001")
