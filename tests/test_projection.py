"""DARTS-PT's selection (`--derive darts-pt`): the projected op weights, each decision rule on hand-set
measurements, the network and genotype under a projection, and the whole selection run, resumed and on 2 ranks."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from dist_darts.spaces.cnn import genotype as gt
from dist_darts import search
from dist_darts.config import ConfigError, SearchConfig, search_rates
from dist_darts.job import StoppedAsAsked
from dist_darts.spaces.cnn.genotype import PRIMITIVES
from dist_darts.spaces.cnn.projection import Projection, decision_count, node_edges
from dist_darts.spaces.cnn.supernet import Network
from helpers import assert_same_state, free_port, model_state

SKIP, SEP3 = PRIMITIVES.index("skip_connect"), PRIMITIVES.index("sep_conv_3x3")


def test_decision_count_and_node_edges():
    assert node_edges(4) == [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]
    assert decision_count(4) == 17  # 14 edges + the 3 nodes with more than two inputs


def test_apply_one_hot_decided_edges_cut_edges_and_the_trial():
    p = Projection(4, seed=0)
    weights = torch.rand(14, len(PRIMITIVES))
    assert torch.equal(p.apply(weights, "normal"), weights)  # nothing decided: the mixture as it is
    p.op["normal"][3] = SEP3
    p.kept["normal"][1] = [2, 4]  # node 1's inputs are edges 2, 3, 4: edge 3 is cut
    expected = weights.clone()
    expected[3] = 0.0  # decided (one-hot) but cut
    expected[2:5:2] = weights[2:5:2]
    assert torch.equal(p.apply(weights, "normal"), expected)
    p.kept["normal"][1] = None
    expected[3] = torch.nn.functional.one_hot(torch.tensor(SEP3), len(PRIMITIVES)).float()
    assert torch.equal(p.apply(weights, "normal"), expected)
    assert torch.equal(p.apply(weights, "reduce"), weights)  # the other cell is untouched
    p.trial = ("normal", 7, 2)  # one op of one edge removed
    trial = expected.clone()
    trial[7, 2] = 0.0
    assert torch.equal(p.apply(weights, "normal"), trial)
    p.trial = ("normal", 3, None)  # a whole edge removed
    trial = expected.clone()
    trial[3] = 0.0
    assert torch.equal(p.apply(weights, "normal"), trial)


def _scorer(projection, table, default=(50.0, 1.0)):
    """score() for hand-set measurements: table[(cell, edge, op)] = (top-1, loss) with that removal."""
    seen = []

    def score():
        seen.append(projection.trial)
        return table.get(projection.trial, default)
    return score, seen


def test_op_decision_keeps_the_op_whose_removal_costs_most():
    p = Projection(4, seed=0)
    score, seen = _scorer(p, {("normal", 5, SEP3): (10.0, 3.0), ("normal", 5, SKIP): (10.0, 2.0),
                              ("normal", 5, 6): (20.0, 9.0)})
    p._decide_op("normal", 5, score)
    assert p.op["normal"][5] == SEP3  # 10 % without it; skip_connect ties on accuracy, loses on loss
    assert {t[2] for t in seen} == set(range(1, len(PRIMITIVES)))  # every op but 'none' was removed once
    assert p.trial is None


def test_op_decision_respects_max_skip():
    p = Projection(4, seed=0, max_skip=1)
    p.op["normal"][0] = SKIP  # one normal edge carries a skip_connect already
    score, seen = _scorer(p, {("normal", 5, SKIP): (0.0, 9.0), ("normal", 5, SEP3): (10.0, 1.0)})
    p._decide_op("normal", 5, score)
    assert p.op["normal"][5] == SEP3 and SKIP not in {t[2] for t in seen}
    score, _ = _scorer(p, {("reduce", 5, SKIP): (0.0, 9.0)})
    p._decide_op("reduce", 5, score)  # the cap is the normal cell's
    assert p.op["reduce"][5] == SKIP


def test_node_decision_keeps_the_two_most_needed_inputs():
    p = Projection(4, seed=0)
    score, seen = _scorer(p, {("reduce", 9, None): (30.0, 1.0), ("reduce", 11, None): (5.0, 1.0),
                              ("reduce", 12, None): (30.0, 2.0), ("reduce", 13, None): (40.0, 1.0)})
    p._decide_node("reduce", 3, score)  # edge 10 keeps the default 50 %: removing it costs least
    assert p.kept["reduce"][3] == [11, 12] and len(seen) == 5


def test_decide_draws_the_same_edges_for_the_same_seed_and_ends_decided():
    def run(seed):
        p = Projection(4, seed=seed)
        score, _ = _scorer(p, {})
        for d in range(decision_count(4)):
            p.decide(d, score)
        return p
    a, b = run(3), run(3)
    assert a.state_dict() == b.state_dict()
    assert all(op > 0 for cell in ("normal", "reduce") for op in a.op[cell])  # every edge, never 'none'
    assert all(k is not None for cell in ("normal", "reduce") for k in a.kept[cell][1:])
    restored = Projection(4, seed=3)
    restored.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert restored.state_dict() == a.state_dict()


def test_network_mixes_and_derives_as_projected():
    torch.manual_seed(0)
    net = Network(4, 10, 3, fold_alphas=False)
    reference = Network(4, 10, 3, fold_alphas=False)
    reference.load_state_dict(net.state_dict())
    p = Projection(4, seed=0)
    for edge in range(14):
        p.op["normal"][edge] = 1 + edge % (len(PRIMITIVES) - 1)
        p.op["reduce"][edge] = 1 + (edge + 3) % (len(PRIMITIVES) - 1)
    p.kept["normal"][1:] = [[2, 4], [6, 8], [9, 13]]
    p.kept["reduce"][1:] = [[3, 4], [5, 6], [11, 12]]
    net.projection = p
    # the reference mixes with the projected weights put in by hand
    hand = {cell: p.apply(torch.softmax(a, -1), cell).detach()
            for cell, a in (("normal", net.alphas_normal), ("reduce", net.alphas_reduce))}
    reference.mixing_weights = lambda alphas, cell: hand[cell]
    x = torch.randn(2, 3, 8, 8)
    net.eval(), reference.eval()
    assert torch.allclose(net(x), reference(x), atol=1e-6)
    genotype = net.genotype()
    for cell, ops in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        for node, kept in zip(range(4), [[0, 1]] + p.kept[cell][1:]):
            start = node_edges(4)[node][0]
            assert ops[2 * node: 2 * node + 2] == [(PRIMITIVES[p.op[cell][e]], e - start) for e in kept]


def test_darts_pt_tunes_five_epochs_between_decisions_by_default():
    # ruocwang/darts-pt exp_scripts/darts-proj-sota.sh: --proj_intv 5
    assert SearchConfig(dataset="digits").pt_tune_epochs == 5


def test_darts_pt_refuses_early_stop():
    with pytest.raises(ConfigError, match="early-stop"):
        SearchConfig(dataset="digits", derive="darts-pt", early_stop="skips")


def _cfg(out, **kw):
    kw = {"steps_per_epoch": 1, **kw}
    return SearchConfig(dataset="digits", layers=3, init_channels=4, batch_size=4, workers=0, epochs=1,
                        derive="darts-pt", pt_tune_epochs=1, output=str(out), log_interval=10**6, **kw)


@pytest.mark.slow
def test_selection_runs_after_the_search_resumes_exactly_and_its_cell_is_the_decisions(tmp_path):
    result = search.run(_cfg(tmp_path / "straight", steps_per_epoch=2, checkpoint_steps=1))
    history = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert len(history) == 1 + 16 + 1 and result.epochs == 18
    # the selection tunes at a constant tenth of the search's rate, as the authors' never-stepped scheduler
    tenth = search_rates(_cfg(tmp_path), 1)["learning_rate"] / 10
    assert [row["lr"] for row in history[1:]] == [pytest.approx(tenth)] * 17
    state = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    decided = state["projection"]
    genotype = result.genotype
    assert gt.load(tmp_path / "straight" / "genotype.json") == genotype
    for cell, ops in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        for node in range(1, 4):
            start = node_edges(4)[node][0]
            assert [start + j for _, j in ops[2 * node: 2 * node + 2]] == decided["kept"][cell][node]
            assert [op for op, _ in ops[2 * node: 2 * node + 2]] == [
                PRIMITIVES[decided["op"][cell][e]] for e in decided["kept"][cell][node]]
    # stopped in the selection's 4th epoch after its 1st step, whose checkpoint holds the epoch's decision
    # already, and resumed: the same decisions, weights and alphas
    with pytest.raises(StoppedAsAsked):
        search.run(_cfg(tmp_path / "crashed", steps_per_epoch=2, checkpoint_steps=1, stop_after_step=2 * 4 + 1))
    search.run(_cfg(tmp_path / "crashed", steps_per_epoch=2, checkpoint_steps=1, resume=True))
    assert_same_state(model_state(tmp_path / "straight"), model_state(tmp_path / "crashed"))
    resumed = torch.load(tmp_path / "crashed" / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["projection"] == decided


def _two_rank_worker(rank, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    result = search.run(_cfg(os.path.join(out, "run")))  # check_replicas fails if the ranks' networks differ
    torch.save(gt.to_dict(result.genotype), os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_ranks_take_the_same_decisions(tmp_path):
    mp.spawn(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert torch.load(tmp_path / "rank0.pt") == torch.load(tmp_path / "rank1.pt")
