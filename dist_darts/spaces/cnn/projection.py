"""DARTS-PT's perturbation-based architecture selection (Wang et al., "Rethinking Architecture Selection in
Differentiable NAS", ICLR 2021), as `--derive darts-pt`.

After the search, the cell is decided one piece at a time on the trained supernet, with the supernet tuned for a
few epochs between two decisions:

- an operation decision takes one undecided edge of each cell (drawn at random), removes each candidate op from it
  in turn (its mixing weight set to 0, the others left as they are) and measures the supernet's validation
  accuracy; the op whose removal costs the most accuracy is kept, and the edge carries only that op (weight 1)
  from then on;
- once every edge has its op, a topology decision takes one undecided node of each cell with more than two inputs,
  removes each of its input edges in turn, and keeps the two whose removal costs the most; the others are cut.

As in the authors' code: the accuracy is measured with BatchNorm normalising by each batch's statistics (not the
running ones), ties in accuracy go to the lower op index, and a node's edges are all measured against the node
with every edge present (the authors' elimination loop re-measures the same masks, so on a fixed validation set
it keeps the same two edges). Two departures, both because of the genotype format: 'none' is never a candidate
(a genotype holds no 'none'), and ties in accuracy are broken by the validation loss (higher = the op matters
more) before the op index. With `max_skip` (P-DARTS's cap) a normal-cell edge stops offering skip_connect once
that many normal edges carry one, so the derived cell can never exceed the cap.

The decisions are plain lists (saved in the checkpoint). The caller measures: `score()` returns the supernet's
(top-1, loss) on the validation data, with this projection and its current trial applied by the network.
"""

from __future__ import annotations

import random
from typing import Callable

import torch

from .genotype import PRIMITIVES

CELLS = ("normal", "reduce")
Score = Callable[[], "tuple[float, float]"]


def node_edges(steps: int) -> list[list[int]]:
    """The edge indices into each intermediate node (node i has 2 + i inputs)."""
    out, start = [], 0
    for node in range(steps):
        out.append(list(range(start, start + node + 2)))
        start += node + 2
    return out


def decision_count(steps: int) -> int:
    """Operation decisions (one per edge) plus topology decisions (one per node with more than two inputs)."""
    return sum(node + 2 for node in range(steps)) + steps - 1


class Projection:
    def __init__(self, steps: int, seed: int, max_skip: int | None = None):
        self.steps, self.seed, self.max_skip = steps, seed, max_skip
        edges = sum(node + 2 for node in range(steps))
        self.op = {cell: [-1] * edges for cell in CELLS}  # the kept op per edge, -1 while undecided
        self.kept = {cell: [None] * steps for cell in CELLS}  # the kept input edges per node, None while undecided
        self.trial = None  # (cell, edge, op index, or None for the whole edge): the removal being measured

    def state_dict(self) -> dict:
        return {"op": {c: list(v) for c, v in self.op.items()}, "kept": {c: list(v) for c, v in self.kept.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.op = {c: list(state["op"][c]) for c in CELLS}
        self.kept = {c: [None if k is None else list(k) for k in state["kept"][c]] for c in CELLS}

    @property
    def decisions_made(self) -> int:
        return sum(op >= 0 for op in self.op["normal"]) + sum(k is not None for k in self.kept["normal"][1:])

    def apply(self, weights: torch.Tensor, cell: str) -> torch.Tensor:
        """The op weights (edges, ops) the network mixes with: decided edges one-hot on their op, cut edges 0,
        and the trial's removal on top."""
        fixed, mask = torch.zeros_like(weights), torch.ones_like(weights)
        decided = torch.zeros(weights.shape[0], 1, dtype=torch.bool, device=weights.device)
        for edge, op in enumerate(self.op[cell]):
            if op >= 0:
                fixed[edge, op], decided[edge] = 1.0, True
        for node, kept in zip(node_edges(self.steps), self.kept[cell]):
            if kept is not None:
                for edge in node:
                    if edge not in kept:
                        mask[edge] = 0.0
        if self.trial is not None and self.trial[0] == cell:
            _, edge, op = self.trial
            if op is None:
                mask[edge] = 0.0
            else:
                mask[edge, op] = 0.0
        return torch.where(decided, fixed, weights) * mask

    def decide(self, decision: int, score: Score) -> list[str]:
        """Make decision number `decision` (0-based) in both cells; returns one readable line per cell."""
        edges = len(self.op["normal"])
        rng = random.Random(self.seed * 1_000_003 + decision)  # the same draw on every rank and after a resume
        lines = []
        for cell in CELLS:
            if decision < edges:
                edge = rng.choice([e for e, op in enumerate(self.op[cell]) if op < 0])
                lines.append(self._decide_op(cell, edge, score))
            else:
                node = rng.choice([n for n, k in enumerate(self.kept[cell]) if k is None and n > 0])
                lines.append(self._decide_node(cell, node, score))
        return lines

    def _measure(self, trial, score: Score) -> tuple[float, float]:
        self.trial = trial
        try:
            return score()
        finally:
            self.trial = None

    def _decide_op(self, cell: str, edge: int, score: Score) -> str:
        skip = PRIMITIVES.index("skip_connect")
        capped = (cell == "normal" and self.max_skip is not None
                  and sum(op == skip for op in self.op[cell]) >= self.max_skip)
        candidates = [k for k, name in enumerate(PRIMITIVES) if name != "none" and not (capped and k == skip)]
        results = {k: self._measure((cell, edge, k), score) for k in candidates}
        best = min(candidates, key=lambda k: (results[k][0], -results[k][1], k))  # most accuracy lost
        self.op[cell][edge] = best
        return (f"{cell} edge {edge}: {PRIMITIVES[best]} (top-1 without it {results[best][0]:.2f} %, without the "
                f"others {min(r[0] for k, r in results.items() if k != best):.2f}-"
                f"{max(r[0] for k, r in results.items() if k != best):.2f} %)")

    def _decide_node(self, cell: str, node: int, score: Score) -> str:
        edges = node_edges(self.steps)[node]
        results = {e: self._measure((cell, e, None), score) for e in edges}
        kept = sorted(sorted(edges, key=lambda e: (results[e][0], -results[e][1], e))[:2])
        self.kept[cell][node] = kept
        return f"{cell} node {node}: inputs {kept} of {edges} (" + ", ".join(
            f"without {e}: {results[e][0]:.2f} %" for e in edges) + ")"
