"""The original rnn/ code's whole pickled models (ptb_model.pt) read without running pickled code."""

import sys
import types
from collections import namedtuple

import pytest
import torch

from dist_darts.checkpoint import CheckpointError
from dist_darts.spaces.rnn.genotype import RNN_DARTS_V2
from dist_darts.spaces.rnn.networks import DARTSCell, RNNModel
from dist_darts.spaces.rnn.original import read_torch_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def original_modules(monkeypatch):
    """Modules named as the original's (model, genotypes): pickle records a class by module and name."""
    model = types.ModuleType("model")
    model.RNNModel = type("RNNModel", (RNNModel,), {"__module__": "model"})
    model.DARTSCell = type("DARTSCell", (DARTSCell,), {"__module__": "model"})
    genotypes = types.ModuleType("genotypes")
    genotypes.Genotype = namedtuple("Genotype", "recurrent concat")
    genotypes.Genotype.__module__ = "genotypes"
    monkeypatch.setitem(sys.modules, "model", model)
    monkeypatch.setitem(sys.modules, "genotypes", genotypes)
    return model, genotypes


def _pickled_model(original_modules, path, legacy):
    model, genotypes = original_modules
    torch.manual_seed(0)
    net = RNNModel(50, 8, 8, 8, 0.1, 0.2, 0.3, 0.4, 0.05, genotype=RNN_DARTS_V2).eval()
    net.__class__, net.rnns[0].__class__ = model.RNNModel, model.DARTSCell
    net.rnns[0].genotype = genotypes.Genotype(RNN_DARTS_V2.recurrent, range(1, 9))
    net.cell_cls = model.DARTSCell  # as the original keeps it
    torch.save(net, path, _use_new_zipfile_serialization=not legacy)
    return net


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # the stand-in classes have no source file
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-container", "zip-container"])
def test_pickled_model_reads_into_the_same_network(tmp_path, original_modules, legacy):
    path = tmp_path / "ptb_model.pt"
    net = _pickled_model(original_modules, path, legacy)
    args, weights = read_torch_model(path)
    assert args["ntoken"] == 50 and args["dropouth"] == 0.2 and args["dropoute"] == 0.05
    assert args["genotype"] == RNN_DARTS_V2
    ours = RNNModel(**args)
    ours.load_state_dict(weights, strict=True)
    x = torch.randint(0, 50, (6, 3))
    with torch.no_grad():
        want, _ = net(x, net.init_hidden(3))
        got, _ = ours.eval()(x, ours.init_hidden(3))
    assert torch.equal(want, got)


class Boom:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('x')",))


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-container", "zip-container"])
def test_a_crafted_pickle_is_refused_without_running_it(tmp_path, legacy):
    path = tmp_path / "ptb_model.pt"
    torch.save({"model": Boom(tmp_path / "PWNED")}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="exec, which a pickled recurrent model never needs: refused, nothing in the file was run"):
        read_torch_model(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_file_of_another_kind_is_one_line(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        read_torch_model(path)
