"""Recurrent genotypes: the published cells, derivation from alphas against the original's parse, JSON I/O."""

import json

import pytest
import torch

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.spaces.rnn import genotype as rgt
from dist_darts.spaces.cnn.genotype import GenotypeError
from dist_darts.spaces.rnn.genotype import RNN_PRIMITIVES


def test_published_recurrent_cells():
    assert RNN_PRIMITIVES == ["none", "tanh", "relu", "sigmoid", "identity"]
    assert rgt.RNN_DARTS is rgt.RNN_DARTS_V2
    assert rgt.RNN_DARTS_V2.recurrent[5] == ("sigmoid", 5) and rgt.RNN_DARTS_V2.concat == list(range(1, 9))
    assert len(rgt.RNN_ENAS.recurrent) == 11 and rgt.RNN_ENAS.concat == [2, 5, 6, 9, 10, 11]
    for name, g in rgt.RNN_GENOTYPES.items():
        assert name.startswith("RNN_") and name not in gt.GENOTYPES
        assert rgt.load_recurrent(name) is g and rgt.validate_recurrent(g) is g
    assert rgt.format_recurrent(rgt.RNN_DARTS_V1) == (
        "Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1), "
        "('relu', 5), ('relu', 1)], concat=range(1, 9))")
    assert rgt.format_recurrent(rgt.RNN_ENAS).endswith("concat=[2, 5, 6, 9, 10, 11])")


def test_derive_matches_the_originals_parse_on_many_draws(fixtures_dir):
    ref = torch.load(fixtures_dir / "original_rnn_search.pt", weights_only=True)
    draws, expected = ref["parse_alphas"], ref["parse_genotypes"]
    assert len(draws) == len(expected) == 300
    for alphas, want in zip(draws, expected):
        assert rgt.recurrent_to_dict(rgt.derive_recurrent(alphas)) == want


def test_derive_rules_on_hand_set_alphas():
    alphas = torch.zeros(36, 5)
    alphas[:, 0] = 10.0  # 'none' is strongest everywhere, and never chosen
    alphas[0, 3] = 2.0  # node 1: its only input (state 0), sigmoid
    alphas[2, 1] = 3.0  # node 2: input 1 (edge offset 1 + j), tanh
    g = rgt.derive_recurrent(alphas)
    assert g.recurrent[0] == ("sigmoid", 0) and g.recurrent[1] == ("tanh", 1)
    assert g.recurrent[2] == ("tanh", 0)  # all tied: the lower input, the first activation
    assert g.concat == list(range(1, 9))


def test_derive_rejects_wrong_shapes():
    with pytest.raises(GenotypeError, match=r"expected shape \(36, 5\), got \(14, 8\)"):
        rgt.derive_recurrent(torch.zeros(14, 8))


def test_json_round_trip(tmp_path):
    path = tmp_path / "genotype.json"
    rgt.save_recurrent(rgt.RNN_ENAS, path)
    d = json.loads(path.read_text())
    assert d["recurrent"][0] == ["tanh", 0] and rgt.is_recurrent_dict(d) and not rgt.is_recurrent_dict(
        gt.to_dict(gt.DARTS_V2))
    assert rgt.load_recurrent(str(path)) == rgt.RNN_ENAS
    assert rgt.load_recurrent(d) == rgt.RNN_ENAS
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content,message", [
    ("{", "bad JSON"),
    ('{"concat": [1]}', "field 'recurrent' is missing"),
    ('{"recurrent": [["tanh", 0]]}', "field 'concat' is missing"),
    ('{"recurrent": [["tanh", 0], ["gelu", 0]], "concat": [1]}', r"'recurrent\[1\]': unknown activation 'gelu'"),
    ('{"recurrent": [["tanh", 0], ["relu", 2]], "concat": [1]}', r"input 2 out of range for node 2 \(must be 0..1\)"),
    ('{"recurrent": [["none", 0]], "concat": [1]}', "unknown activation 'none'"),
    ('{"recurrent": [["tanh", 0]], "concat": [2]}', r"'concat': needs state indices in 0..1"),
    ('{"recurrent": [], "concat": [1]}', "needs a non-empty list"),
    ('[1, 2]', "expected a JSON object"),
    ('{"normal": [], "normal_concat": [], "reduce": [], "reduce_concat": []}', "convolutional genotype"),
])
def test_bad_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "g.json"
    path.write_text(content)
    with pytest.raises(GenotypeError, match=message) as info:
        rgt.load_recurrent(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_unknown_and_convolutional_names():
    with pytest.raises(GenotypeError, match="neither a known name"):
        rgt.load_recurrent("RNN_NOPE")
    with pytest.raises(GenotypeError, match="'DARTS_V2' is a convolutional cell"):
        rgt.load_recurrent("DARTS_V2")
    with pytest.raises(GenotypeError, match="recurrent cell.*--space rnn"):  # the CNN loader points to the space
        gt.load(rgt.recurrent_to_dict(rgt.RNN_DARTS_V2))
