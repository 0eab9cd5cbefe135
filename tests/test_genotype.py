import json

import pytest
import torch

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.spaces.cnn.genotype import PRIMITIVES, GenotypeError

# The architecture dicts NNI's DARTS tutorial prints (seed 000): inputs as one-element lists, and as ints.
NNI_FAST_DEV_RUN = {
    'normal/op_2_0': 'sep_conv_3x3', 'normal/input_2_0': [0], 'normal/op_2_1': 'dil_conv_5x5',
    'normal/input_2_1': [1], 'normal/op_3_0': 'sep_conv_3x3', 'normal/input_3_0': [2],
    'normal/op_3_1': 'sep_conv_5x5', 'normal/input_3_1': [1], 'normal/op_4_0': 'skip_connect',
    'normal/input_4_0': [1], 'normal/op_4_1': 'sep_conv_3x3', 'normal/input_4_1': [2],
    'normal/op_5_0': 'sep_conv_3x3', 'normal/input_5_0': [0], 'normal/op_5_1': 'sep_conv_3x3',
    'normal/input_5_1': [3], 'reduce/op_2_0': 'dil_conv_3x3', 'reduce/input_2_0': [0],
    'reduce/op_2_1': 'sep_conv_3x3', 'reduce/input_2_1': [1], 'reduce/op_3_0': 'sep_conv_5x5',
    'reduce/input_3_0': [2], 'reduce/op_3_1': 'sep_conv_5x5', 'reduce/input_3_1': [1],
    'reduce/op_4_0': 'dil_conv_5x5', 'reduce/input_4_0': [2], 'reduce/op_4_1': 'avg_pool_3x3',
    'reduce/input_4_1': [1], 'reduce/op_5_0': 'sep_conv_5x5', 'reduce/input_5_0': [3],
    'reduce/op_5_1': 'dil_conv_5x5', 'reduce/input_5_1': [4]}
NNI_FULL_SEARCH = {
    'normal/op_2_0': 'sep_conv_3x3', 'normal/input_2_0': 1, 'normal/op_2_1': 'sep_conv_3x3',
    'normal/input_2_1': 0, 'normal/op_3_0': 'sep_conv_3x3', 'normal/input_3_0': 1,
    'normal/op_3_1': 'sep_conv_3x3', 'normal/input_3_1': 2, 'normal/op_4_0': 'sep_conv_3x3',
    'normal/input_4_0': 1, 'normal/op_4_1': 'sep_conv_3x3', 'normal/input_4_1': 0,
    'normal/op_5_0': 'sep_conv_3x3', 'normal/input_5_0': 1, 'normal/op_5_1': 'max_pool_3x3',
    'normal/input_5_1': 0, 'reduce/op_2_0': 'sep_conv_3x3', 'reduce/input_2_0': 0,
    'reduce/op_2_1': 'sep_conv_3x3', 'reduce/input_2_1': 1, 'reduce/op_3_0': 'dil_conv_5x5',
    'reduce/input_3_0': 2, 'reduce/op_3_1': 'sep_conv_3x3', 'reduce/input_3_1': 0,
    'reduce/op_4_0': 'dil_conv_5x5', 'reduce/input_4_0': 2, 'reduce/op_4_1': 'sep_conv_5x5',
    'reduce/input_4_1': 1, 'reduce/op_5_0': 'sep_conv_5x5', 'reduce/input_5_0': 4,
    'reduce/op_5_1': 'dil_conv_5x5', 'reduce/input_5_1': 2}


def test_primitives_in_original_order():
    assert PRIMITIVES == ['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                          'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5']


def test_registry_and_aliases():
    assert gt.DARTS is gt.DARTS_V2
    for name in ("DARTS_V1", "DARTS_V2", "DARTS", "PC_DARTS", "PDARTS", "SDARTS_RS", "DRNAS", "DARTS_MINUS", "NASNet",
                 "AmoebaNet"):
        assert gt.validate(gt.GENOTYPES[name]) is gt.GENOTYPES[name]
        assert gt.load(name) == gt.GENOTYPES[name]
    assert gt.DARTS_V2.normal[7] == ('dil_conv_3x3', 2)
    assert gt.NASNet.reduce_concat == [4, 5, 6]


def test_derive_on_hand_set_alphas():
    a = torch.zeros(14, 8)
    # node 0 (edges 0, 1): edge 1 strongest via sep_conv_3x3; edge 0 via max_pool
    a[0, PRIMITIVES.index('max_pool_3x3')] = 2.0
    a[1, PRIMITIVES.index('sep_conv_3x3')] = 3.0
    # node 1 (edges 2, 3, 4): 'none' is huge on edge 2 but must be ignored for ranking and op choice
    a[2, PRIMITIVES.index('none')] = 10.0
    a[2, PRIMITIVES.index('skip_connect')] = 1.0
    a[3, PRIMITIVES.index('dil_conv_5x5')] = 4.0
    a[4, PRIMITIVES.index('avg_pool_3x3')] = 5.0
    # node 3 (edges 9..13): input 4 (= node 2) strongest
    a[13, PRIMITIVES.index('sep_conv_5x5')] = 6.0
    a[12, PRIMITIVES.index('dil_conv_3x3')] = 5.5
    g = gt.derive(a, a.clone())
    assert g.normal[:2] == [('sep_conv_3x3', 1), ('max_pool_3x3', 0)]
    assert g.normal[2:4] == [('avg_pool_3x3', 2), ('dil_conv_5x5', 1)]
    assert g.normal[6:8] == [('sep_conv_5x5', 4), ('dil_conv_3x3', 3)]
    assert g.normal_concat == [2, 3, 4, 5] and g.reduce == g.normal
    gt.validate(g)


def test_derive_edge_selection_ignores_none_in_softmax_ranking():
    # edge 0: a strong 'none' dilutes its real ops after softmax; edge 1 wins though its raw max is lower
    a = torch.zeros(14, 8)
    a[0, 0] = 8.0
    a[0, 4] = 3.0
    a[1, 5] = 2.0
    a[2:, 4] = 1.0
    g = gt.derive(a, a)
    assert g.normal[:2] == [('sep_conv_5x5', 1), ('sep_conv_3x3', 0)]


def test_derive_with_betas_reweights_edges():
    a = torch.zeros(14, 8)
    a[0, 4] = 2.0
    a[1, 5] = 1.9
    a[2:, 6] = 1.0
    betas = torch.zeros(14)
    assert gt.derive(a, a).normal[0] == ('sep_conv_3x3', 0)
    betas[1] = 3.0  # edge 1 gets most of node 0's normalised weight
    assert gt.derive(a, a, betas, betas).normal[0] == ('sep_conv_5x5', 1)


def test_max_skip_strikes_the_weakest_kept_skip_connects_and_derives_again():
    """P-DARTS's rule on hand-set alphas, expected cells worked out by hand."""
    a = torch.zeros(14, 8)
    a[:, PRIMITIVES.index("sep_conv_3x3")] = 1.0
    skip = PRIMITIVES.index("skip_connect")
    a[0, skip], a[1, skip], a[2, skip], a[3, skip] = 4.0, 3.0, 2.0, 2.5  # edges 0, 1: node 0; 2, 3: node 1
    sep = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]  # nodes 2 and 3: all edges alike, the lower inputs win
    original = [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 1), ("skip_connect", 0), *sep, *sep]
    assert gt.derive(a, a).normal == original
    assert gt.derive(a, a, max_skip=4).normal == original
    # edge 2's skip (2.0) goes: its sep_conv (softmax 0.17) falls below edge 4's (0.28), so node 1 takes edge 4;
    # then edge 3's skip (2.5) goes too: node 1 keeps edges 4 and 2, both sep_conv_3x3
    capped = gt.derive(a, a, max_skip=2)
    assert capped.normal == [("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 2), ("sep_conv_3x3", 0),
                             *sep, *sep]
    assert capped.reduce == original  # the rule caps the normal cell only
    # no skip left: node 0's sep_conv weights, e/(e^4+e+6) on edge 0 < e/(e^3+e+6) on edge 1, put input 1 first
    assert gt.derive(a, a, max_skip=0).normal[:2] == [("sep_conv_3x3", 1), ("sep_conv_3x3", 0)]
    with pytest.raises(GenotypeError, match="max_skip"):
        gt.derive(a, a, max_skip=-1)


def test_derive_rejects_bad_shape():
    with pytest.raises(GenotypeError, match=r"alphas_normal: expected shape \(14, 8\)"):
        gt.derive(torch.zeros(10, 8), torch.zeros(14, 8))


def test_json_round_trip(tmp_path):
    for name, g in gt.GENOTYPES.items():
        path = tmp_path / f"{name}.json"
        gt.save(g, path)
        assert gt.load(str(path)) == g
        assert json.loads(path.read_text())["normal"][0] == list(g.normal[0])


@pytest.mark.parametrize("arch", [NNI_FAST_DEV_RUN, NNI_FULL_SEARCH])
def test_nni_round_trip(arch, tmp_path):
    g = gt.from_nni_dict(arch)
    assert len(g.normal) == 8 and g.normal_concat == [2, 3, 4, 5]
    back = gt.to_nni_dict(g)
    assert back == {k: (v if k.split('/')[1].startswith('op') or isinstance(v, list) else [v])
                    for k, v in arch.items()}
    assert gt.from_nni_dict(back) == g
    path = tmp_path / "nni.json"
    path.write_text(json.dumps(arch))
    assert gt.load(str(path)) == g  # load() detects the NNI dict


def test_nni_dict_matches_genotype_semantics():
    g = gt.from_nni_dict(NNI_FULL_SEARCH)
    assert g.normal[:2] == [('sep_conv_3x3', 1), ('sep_conv_3x3', 0)]
    assert g.reduce[6] == ('sep_conv_5x5', 4)


def test_darts_v2_nni_conversion():
    d = gt.to_nni_dict(gt.DARTS_V2)
    assert d['normal/op_5_1'] == 'dil_conv_3x3' and d['normal/input_5_1'] == [2]
    assert gt.from_nni_dict(d) == gt.DARTS_V2


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update({'normal/op_2_0': 'conv_9x9'}), r"'normal/op_2_0' has unknown op 'conv_9x9'"),
    (lambda d: d.update({'reduce/input_3_1': [7]}), r"genotype field 'reduce\[3\]': input 7 out of range"),
    (lambda d: d.update({'normal/input_2_0': [0, 1]}), r"'normal/input_2_0' must be one input"),
    (lambda d: d.pop('reduce/op_5_1'), r"key 'reduce/op_5_1' is missing"),
    (lambda d: d.update({'normal/op_6_0': 'sep_conv_3x3'}), r"unexpected key 'normal/op_6_0'"),
    (lambda d: d.update({'normal/input_4_1': 'x'}), r"'normal/input_4_1' must be an int"),
])
def test_nni_dict_errors(mutate, message):
    d = dict(NNI_FAST_DEV_RUN)
    mutate(d)
    with pytest.raises(GenotypeError, match=message):
        gt.from_nni_dict(d)


@pytest.mark.parametrize("content,message", [
    ('{"normal": [["sep_conv_3x3", 0]', r"bad JSON"),
    ('{"normal": [], "normal_concat": [2], "reduce": [], "reduce_concat": [2]}', r"'normal': needs a non-empty"),
    ('{"normal": [["sep_conv_3x3", 0], ["warp", 1]], "normal_concat": [2], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}', r"'normal\[1\]': unknown op 'warp'"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 2]], "normal_concat": [2], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}', r"'normal\[1\]': input 2 out of range"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 1]], "normal_concat": [2], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}', r"'normal': needs a non-empty list .* two per node"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], "normal_concat": [5], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}', r"'normal_concat': needs node indices in 2..2"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], "normal_concat": [2], "reduce": [["skip_connect", 0], '
     '["skip_connect", 1]]}', r"'reduce_concat' is missing"),
    ('[1, 2]', r"expected a JSON object"),
])
def test_malformed_genotype_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GenotypeError, match=message) as info:
        gt.load(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_unknown_name():
    with pytest.raises(GenotypeError, match="neither a known name"):
        gt.load("DARTS_V9")


def test_nni_rejects_genotypes_outside_its_space():
    with pytest.raises(GenotypeError, match="NNI's DARTS space has 4 nodes"):
        gt.to_nni_dict(gt.NASNet)


def test_format_genotype_is_the_original_repr():
    text = gt.format_genotype(gt.DARTS_V1)
    assert text.startswith("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0)")
    assert text.endswith("reduce_concat=[2, 3, 4, 5])")
