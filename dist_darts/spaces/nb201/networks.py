"""NAS-Bench-201's networks: the evaluation network of one cell and the DARTS search network over all of them.

Both have the benchmark's macro structure: a 3x3 conv + BN stem, three stages of N cells at C, 2C and 4C channels
joined by stride-2 residual basic blocks, BN-ReLU, global pooling and a linear classifier. Module names, parameter
shapes, construction order (so a seeded construction draws the same initial weights) and forward are those of the
authors' xautodl ``TinyNetwork`` and ``TinyNetworkDarts``: their state dicts load here with strict=True (the search
network's alphas aside: theirs are ``arch_parameters``, here ``alphas``). The forwards return the logits alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...methods import METHODS, Darts
from ..cnn.ops import Identity, Zero
from ..cnn.supernet import Network as DartsSupernet
from .genotype import EDGES, NODES, OPS, derive, load, parse_arch

NONE_INDEX = OPS.index("none")


class ReLUConvBN(nn.Module):
    """ReLU, conv, BN as the benchmark's: the conv has a bias exactly when its BN has no affine parameters."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=not affine),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x):
        return self.op(x)


class ResNetBasicBlock(nn.Module):
    """The stride-2 residual block between stages: two ReLU-conv-BN 3x3 convs beside a 2x2 average pool and 1x1
    conv on the shortcut."""

    def __init__(self, C_in, C_out):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(C_in, C_out, kernel_size=1, stride=1, padding=0, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def build_op(name: str, C: int, affine: bool = True, track_running_stats: bool = True) -> nn.Module:
    """One of OPS on C channels at stride 1 (a cell never changes the resolution or the width)."""
    if name == "none":
        return Zero(1)
    if name == "skip_connect":
        return Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}[name]
    return ReLUConvBN(C, C, kernel, 1, kernel // 2, affine, track_running_stats)


def _stages(C: int, N: int):
    """(channels, is the residual block) of each layer: N cells at C, a block, N cells at 2C, a block, N at 4C."""
    channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
    blocks = [False] * N + [True] + [False] * N + [True] + [False] * N
    return zip(channels, blocks)


class Cell(nn.Module):
    """An evaluation cell: node i sums its edges' ops on nodes 0..i-1; the output is node 3."""

    def __init__(self, arch_str: str, C: int):
        super().__init__()
        self.layers = nn.ModuleList(build_op(op, C) for op in parse_arch(arch_str))

    def forward(self, x):
        nodes, k = [x], 0
        for i in range(1, NODES):
            nodes.append(sum(self.layers[k + j](nodes[j]) for j in range(i)))
            k += i
        return nodes[-1]


class Network(nn.Module):
    """The benchmark's evaluation network of one cell (`genotype`: an arch string, {"arch_str"} dict or JSON
    file); the benchmark trained C=16, N=5."""

    def __init__(self, C: int, N: int, genotype, num_classes: int):
        super().__init__()
        self.arch_str = load(genotype)
        self.stem = nn.Sequential(nn.Conv2d(3, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, block in _stages(C, N):
            self.cells.append(ResNetBasicBlock(C_prev, C_curr) if block else Cell(self.arch_str, C_curr))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


class SearchCell(nn.Module):
    """Every op on every edge; BatchNorms without affine parameters or running statistics (batch statistics in
    train and eval mode alike), so the convs carry biases, as the authors' DARTS search cell."""

    def __init__(self, C: int):
        super().__init__()
        self.edges = nn.ModuleDict(
            (f"{i}<-{j}", nn.ModuleList(build_op(op, C, affine=False, track_running_stats=False) for op in OPS))
            for i, j in EDGES
        )

    def forward(self, x, weights, skip=None):
        """The cell on x with op weights (edges x ops); `skip` (DARTS- only) weighs an extra skip on each edge."""
        nodes, k = [x], 0
        for i in range(1, NODES):
            node = 0
            for j in range(i):  # edge k of EDGES is (i, j)
                # 'none' adds weight * 0: leaving it out changes neither the output nor any gradient
                edge = sum(op(nodes[j]) * w for n, (op, w) in enumerate(zip(self.edges[f"{i}<-{j}"], weights[k]))
                           if n != NONE_INDEX)
                node = node + (edge if skip is None else edge + skip * nodes[j])
                k += 1
            nodes.append(node)
        return nodes[-1]


class SearchNetwork(nn.Module):
    """The DARTS search network of the space: one (6, 5) alpha matrix shared by every cell.

    Speaks the DARTS supernet's protocol (``arch_parameters()``/``weights()``, ``set_epoch``, ``sampling``,
    ``method``), so the Architect and the search step drive it as they drive dist_darts.supernet.Network.
    """

    def __init__(self, C: int, N: int, num_classes: int, method: str = "darts"):
        super().__init__()
        # every method weighs all 5 ops, 'none' included, which derive reads (methods.Darts.with_none)
        self.method: Darts = METHODS[method].with_none()
        self._phase, self._generator, self._epoch, self._epochs = None, None, 0, 1
        self._draw_state = None  # the generator's state at the start of a sampling block (DartsSupernet.sampling)
        self.stem = nn.Sequential(nn.Conv2d(3, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, block in _stages(C, N):
            self.cells.append(ResNetBasicBlock(C_prev, C_curr) if block else SearchCell(C_curr))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(OPS)))  # drawn last, as the authors'
        self._arch_names = ["alphas"]
        # DARTS-'s skip coefficient (filled in place by set_epoch; not saved)
        self.register_buffer("skip_coefficient", torch.ones(()), persistent=False)

    # the supernet's protocol, shared rather than copied: these read only the attributes set above
    set_epoch = DartsSupernet.set_epoch
    sampling = DartsSupernet.sampling
    arch_parameters = DartsSupernet.arch_parameters
    arch_parameter_names = DartsSupernet.arch_parameter_names
    weights = DartsSupernet.weights
    named_weights = DartsSupernet.named_weights

    def mixing_weights(self) -> torch.Tensor:
        """The op weights of the current forward (the method's mixture of the alphas in this phase)."""
        return self.method.mix(self.alphas, self._phase, self._generator, self._epoch, self._epochs)

    def forward(self, x):
        if self._draw_state is not None:  # one sample per sampling block, as the DARTS supernet's forward
            self._generator.set_state(self._draw_state)
        weights = self.mixing_weights()
        skip = self.skip_coefficient if self.method.auxiliary_skip else None
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, weights, skip) if isinstance(cell, SearchCell) else cell(x)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))

    def genotype(self) -> str:
        """The derived cell's arch string (genotype.derive)."""
        return derive(self.alphas)
