"""Checkpoints verified by content: digests written with them, a flipped byte in a tensor caught on load, the
previous checkpoint used instead, and one complete line for every kind of bad file."""

import pickle
import warnings
import zipfile

import pytest
import torch

from dist_darts import checkpoint as ckpt_io
from dist_darts.checkpoint import CheckpointCorrupted, CheckpointError


def search_state(step: int) -> dict:
    """A search checkpoint's layout (what the driver writes), with small real tensors."""
    torch.manual_seed(step)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    return {"kind": "search", "epoch": 0, "step": step, "model": model.state_dict(), "w_optimizer": opt.state_dict(),
            "a_optimizer": opt.state_dict(), "scheduler": {"last_epoch": step}, "format": ckpt_io.FORMAT,
            "world_size": 1, "rng": [ckpt_io.rng_state()], "config": {"seed": 0, "learning_rate": 0.025},
            "meters": [torch.zeros(4, dtype=torch.float64)], "metrics": {}, "history": [], "identity": {}}


def flip_a_byte_of(path, tensor_index=0):
    """Flip one byte inside the stored bytes of one tensor (a zip member data/N that torch reads unchecked)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(f"/data/{tensor_index}"))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:][:2], "little"), int.from_bytes(
        raw[info.header_offset + 28:][:2], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_tensor_is_caught_and_the_previous_checkpoint_used(tmp_path):
    last = tmp_path / "checkpoints" / "last.pt"
    ckpt_io.save_atomic(search_state(1), last, keep_previous=True)
    ckpt_io.save_atomic(search_state(2), last, keep_previous=True)
    assert ckpt_io.load(ckpt_io.previous_path(last), "search")["step"] == 1
    flip_a_byte_of(last)
    torch.load(last, weights_only=True)  # torch itself notices nothing
    with pytest.raises(CheckpointCorrupted) as info:
        ckpt_io.load(last, "search")
    message = str(info.value)
    assert message.startswith(f"checkpoint {last} is corrupted: ") and "no longer match" in message
    assert "\n" not in message
    state, used, note = ckpt_io.load_latest(last, "search")
    assert state["step"] == 1 and used == tmp_path / "checkpoints" / "last.prev.pt"
    assert note == f"{message}; resuming from the previous checkpoint {used} instead"
    assert ckpt_io.load_latest(used, "search")[2] is None


def test_a_lost_last_checkpoint_resumes_from_the_previous(tmp_path):
    last = tmp_path / "last.pt"
    ckpt_io.save_atomic(search_state(1), last, keep_previous=True)
    ckpt_io.save_atomic(search_state(2), last, keep_previous=True)
    last.unlink()  # lost by hand, or on a file system that lost it
    state, used, note = ckpt_io.load_latest(last, "search")
    assert state["step"] == 1 and "does not exist" in note


def test_without_a_previous_checkpoint_corruption_is_the_error(tmp_path):
    last = tmp_path / "last.pt"
    ckpt_io.save_atomic(search_state(1), last)
    flip_a_byte_of(last, 1)
    with pytest.raises(CheckpointCorrupted, match="is corrupted"):
        ckpt_io.load_latest(last, "search")


def test_every_value_is_covered(tmp_path):
    state = search_state(1)
    digests = ckpt_io.content_digests(state)
    assert "model.0.weight" in digests and "w_optimizer.state.0.momentum_buffer" in digests
    changed = dict(state, config=dict(state["config"], learning_rate=0.0251))
    assert ckpt_io.content_digests(changed)[ckpt_io.OTHER_VALUES] != digests[ckpt_io.OTHER_VALUES]


def test_a_checkpoint_with_the_marker_but_not_its_keys_is_one_line(tmp_path):
    path = tmp_path / "last.pt"
    state = search_state(1)
    del state["w_optimizer"], state["rng"]
    ckpt_io.save_atomic(state, path)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load(path)
    assert str(info.value) == (f"checkpoint {path} is a search checkpoint without rng, w_optimizer: it was not "
                               "written whole by dist-darts")


@pytest.mark.parametrize("case", ["raw pickle", "foreign global", "truncated"])
def test_bad_files_give_one_complete_line_and_no_warning(tmp_path, case):
    path = tmp_path / "last.pt"
    if case == "raw pickle":
        path.write_bytes(pickle.dumps({"epoch": 1}, protocol=4))
    elif case == "foreign global":
        path.write_bytes(pickle.dumps({"epoch": print}, protocol=2))
    else:
        ckpt_io.save_atomic(search_state(1), path)
        path.write_bytes(path.read_bytes()[:3000])
    expected = {"raw pickle": "(a weights-only load refuses it: Unsupported operand 149)",
                "foreign global": "(a weights-only load refuses it: Unsupported global: GLOBAL print was not an "
                                  "allowed global by default)",
                "truncated": "(PytorchStreamReader failed reading zip archive: failed finding central directory)"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's two-line protocol warning would fail here
        with pytest.raises(CheckpointCorrupted) as info:
            ckpt_io.load(path)
    assert str(info.value) == f"checkpoint {path} is corrupted or not a PyTorch checkpoint {expected[case]}"
