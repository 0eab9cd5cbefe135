"""The model hub: published genotypes at the papers' sizes, and weights in our format and the original's."""

import json
import pickle

import pytest
import torch

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.spaces.rnn import genotype as rgt
from dist_darts.checkpoint import CheckpointError
from dist_darts import hub
from dist_darts.hub import (PUBLISHED, Published, Weights, build_searched_model, catalogue, file_sha256,
                            load_searched_model)
from helpers import TINY_RETRAIN, assert_same_state, cli


def test_catalogue_counts_parameters_at_the_papers_sizes():
    rows = {(r["name"], r["dataset"]): r for r in catalogue()}
    # the counts the original code's networks have (checked in test_reference_parity) and the papers report
    assert rows["DARTS_V2", "cifar10"]["params"] == 3_349_342
    assert rows["DARTS_V2", "imagenet"]["params"] == 4_718_752
    assert rows["DARTS_V2", "imagenet"]["input"] == "224x224"
    assert 3.55e6 < rows["PC_DARTS", "cifar10"]["params"] < 3.65e6  # PC-DARTS reports 3.6M
    # the anti-collapse methods' cells: counted by their authors' own networks (C=36, 20 cells, no auxiliary head)
    # as 3.434 M (P-DARTS reports 3.4 M), 4.099 M (DrNAS: 4.1 M), 3.606 M (SDARTS-RS), 3.454 M (DARTS-)
    for name, counted in (("PDARTS", 3.434e6), ("DRNAS", 4.099e6), ("SDARTS_RS", 3.606e6), ("DARTS_MINUS", 3.454e6)):
        assert abs(rows[name, "cifar10"]["params"] - counted) < 1e3, name
    assert {p.name for p in PUBLISHED} == set(gt.GENOTYPES) - {"DARTS"}  # DARTS is DARTS_V2's alias


def test_recurrent_rows_count_the_original_sizes():
    rows = {(r["name"], r["dataset"]): r for r in catalogue()}
    assert rows["RNN_DARTS_V1", "ptb"]["params"] == rows["RNN_DARTS_V2", "ptb"]["params"] == 22_960_000
    assert rows["RNN_ENAS", "ptb"]["params"] == 27_295_000
    assert rows["RNN_DARTS_V2", "wt2"]["params"] == 33_127_878 and rows["RNN_ENAS", "wt2"]["params"] == 36_067_878
    assert "55.68" in rows["RNN_DARTS_V2", "ptb"]["reported_error"]
    assert not set(r["name"] for r in rows.values()) & set(gt.GENOTYPES) & set(rgt.RNN_GENOTYPES)


def test_hub_list_cli():
    out = cli("hub", "list").stdout
    assert all(p.name in out for p in PUBLISHED) and "3,349,342" in out and "2.76 +/- 0.09 %" in out
    rows = json.loads(cli("hub", "list", "--json").stdout)
    released = [r for r in rows if r["weights"]]
    assert {r["weights_file"] for r in released} == {"cifar10_model.pt", "imagenet_model.pt", "ptb_model.pt"}
    # the authors' files are on Google Drive pages, which no program downloads: the catalogue says so
    assert all(r["weights_download"].startswith("manual: a web page") for r in released)


def test_a_web_page_url_is_refused_before_any_download():
    url = next(r["weights"] for r in catalogue() if r["weights_file"] == "cifar10_model.pt")
    with pytest.raises(CheckpointError, match="is a web page, not a download: fetch cifar10_model.pt from it"):
        load_searched_model("DARTS_V2", "cifar10", url)


def _weights_file(folder, seed):
    torch.manual_seed(seed)
    folder.mkdir()
    model = build_searched_model("DARTS_V2", "cifar10", init_channels=4, layers=2)
    torch.save(model.state_dict(), folder / "model.pt")
    return (folder / "model.pt").as_uri(), model.state_dict()


def test_urls_are_cached_by_the_whole_url_and_pinned(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (url_a, state_a), (url_b, state_b) = _weights_file(tmp_path / "a", 0), _weights_file(tmp_path / "b", 1)
    a = load_searched_model("DARTS_V2", "cifar10", url_a, init_channels=4, layers=2)
    b = load_searched_model("DARTS_V2", "cifar10", url_b, init_channels=4, layers=2)
    assert_same_state(a.state_dict(), state_a)
    assert_same_state(b.state_dict(), state_b)
    cached = sorted((tmp_path / "torch" / "hub" / "checkpoints").iterdir())
    assert len(cached) == 2 and all(p.name.endswith("-model.pt") for p in cached)
    digest = file_sha256(tmp_path / "a" / "model.pt")
    load_searched_model("DARTS_V2", "cifar10", url_a, init_channels=4, layers=2, sha256=digest)
    with pytest.raises(CheckpointError) as info:
        load_searched_model("DARTS_V2", "cifar10", url_a, init_channels=4, layers=2, sha256="0" * 64)
    assert str(info.value) == (f"weights {url_a} have SHA-256 {digest}, not the expected {'0' * 64}: not the "
                               "published file (removed from the cache)")
    assert len(list((tmp_path / "torch" / "hub" / "checkpoints").iterdir())) == 1
    # a digest the catalogue knows is checked without being asked
    monkeypatch.setattr(hub, "PUBLISHED", [Published("DARTS_V2", "test", {"cifar10": "?"},
                                                     {"cifar10": Weights(url_b, "model.pt", True, "f" * 64)})])
    with pytest.raises(CheckpointError, match=f"not the expected {'f' * 64}"):
        load_searched_model("DARTS_V2", "cifar10", url_b, init_channels=4, layers=2)


def _original_weights(fixtures_dir):
    ref = torch.load(fixtures_dir / "original_cifar.pt", weights_only=True)
    assert ref["config"]["genotype"] == "DARTS_V2"
    return ref


def _check_logits(model, ref):
    model.drop_path_prob = 0.0
    with torch.no_grad():
        logits, _ = model(ref["input"])
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-5)


def test_weights_saved_by_the_original_code_load(fixtures_dir, tmp_path):
    ref = _original_weights(fixtures_dir)
    torch.save(ref["state_dict"], tmp_path / "cifar10_model.pt")  # test.py's format: a plain state dict
    model = load_searched_model("DARTS_V2", "cifar10", tmp_path / "cifar10_model.pt", init_channels=8, layers=5)
    assert not model.training and model.loaded_from.endswith("cifar10_model.pt")
    _check_logits(model, ref)
    # train_imagenet.py's format: {'state_dict': ...} of a DataParallel model, next to optimizer state
    wrapped = {"epoch": 250, "best_acc_top1": 73.3, "optimizer": {"state": {}, "param_groups": []},
               "state_dict": {f"module.{k}": v for k, v in ref["state_dict"].items()}}
    torch.save(wrapped, tmp_path / "model_best.pth.tar")
    _check_logits(load_searched_model("DARTS_V2", "cifar10", str(tmp_path / "model_best.pth.tar"), init_channels=8,
                                      layers=5), ref)


def test_paper_size_weights_round_trip(tmp_path):
    with pytest.warns(UserWarning, match="untrained"):
        untrained = load_searched_model("DARTS_V2", "cifar10")
    torch.save(untrained.state_dict(), tmp_path / "w.pt")
    loaded = load_searched_model("DARTS_V2", "cifar10", tmp_path / "w.pt")
    assert all(torch.equal(a, b) for a, b in zip(untrained.state_dict().values(), loaded.state_dict().values()))
    assert not hasattr(loaded, "auxiliary_head")


def test_our_retrain_checkpoint_loads(tmp_path):
    cli("retrain", *TINY_RETRAIN, "--genotype", "DARTS_V2", "--epochs", "1", "--steps-per-epoch", "1",
        "--output", str(tmp_path))
    ckpt = tmp_path / "checkpoints" / "last.pt"
    model = load_searched_model("DARTS_V2", "digits", ckpt)
    assert len(model.cells) == 3
    with pytest.raises(CheckpointError, match="another genotype than DARTS_V1"):
        load_searched_model("DARTS_V1", "digits", ckpt)


class _Payload:  # what a tampered file could smuggle in: weights_only refuses to build it
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("case", ["missing", "truncated", "tampered", "not weights", "other genotype"])
def test_bad_weights_give_one_clear_line(fixtures_dir, tmp_path, case):
    path = tmp_path / "w.pt"
    if case == "truncated":
        torch.save(_original_weights(fixtures_dir)["state_dict"], path)
        path.write_bytes(path.read_bytes()[:4000])
    elif case == "tampered":
        path.write_bytes(pickle.dumps({"cells.0.x": _Payload()}, protocol=2))
    elif case == "not weights":
        torch.save({"lr": 0.1}, path)
    elif case == "other genotype":
        torch.save(_original_weights(fixtures_dir)["state_dict"], path)
    expected = {"missing": "does not exist", "truncated": "corrupted", "tampered": "corrupted",
                "not weights": "no state dict of tensors", "other genotype": "do not fit DARTS_V1 for cifar10"}[case]
    with pytest.raises(CheckpointError, match=expected) as info:
        load_searched_model("DARTS_V1", "cifar10", path, init_channels=8, layers=5)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_url_without_network_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        load_searched_model("DARTS_V2", "cifar10", "http://127.0.0.1:9/cifar10_model.pt")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset 'mnist'"):
        load_searched_model("DARTS_V2", "mnist")
