"""Evaluation networks built from a genotype: NetworkCIFAR and NetworkImageNet.

Argument order, module names and forward outputs follow the original DARTS code, so its checkpoints load with
``load_state_dict(strict=True)`` and ported code keeps working: ``forward`` returns ``(logits, logits_aux)``.
"""

import re

import torch
import torch.nn as nn

from .genotype import Genotype, load, validate
from .ops import OPS, FactorizedReduce, Identity, ReLUConvBN, drop_path, imagenet_stem


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)

        edges = genotype.reduce if reduction else genotype.normal
        self._concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.multiplier = len(self._concat)
        self._steps = len(edges) // 2
        self._indices = [index for _, index in edges]
        # only the edges leaving the cell inputs stride in a reduction cell
        self._ops = nn.ModuleList(OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in edges)

    def forward(self, s0, s1, drop_prob: torch.Tensor):
        """drop_prob: a 0-dim tensor; drop path runs in training whatever its value (at 0 it keeps every sample
        unchanged), so a compiled graph does not depend on the value."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            h = []
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                out = op(states[self._indices[k]])
                if self.training and not isinstance(op, Identity):
                    out = drop_path(out, drop_prob)
                h.append(out)
            states.append(h[0] + h[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 feature map after the second reduction."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier on the 14x14 map; like the original it has no BN after the 768-channel conv."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _build_cells(net, genotype, layers, C, C_prev_prev, C_prev, reduction_prev):
    """Stack the cells (reductions at layers//3 and 2*layers//3); return the output channels and aux channels."""
    net.cells = nn.ModuleList()
    C_curr, C_aux = C, None
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
        reduction_prev = reduction
        net.cells.append(cell)
        C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        if i == 2 * layers // 3:
            C_aux = C_prev
    return C_prev, C_aux


class _Network(nn.Module):
    """Shared parts: cells with drop path, auxiliary head after cell 2*layers//3, classifier."""

    def __init__(self, layers, auxiliary, genotype):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        # forward reads a tensor filled in place, not a float: torch.compile would bake a float into the graph
        # and recompile at every change (every epoch); non-persistent, so the state dict keeps the original's
        # keys. The float is kept beside it for reading, without a device sync.
        self.register_buffer("_drop_path_prob", torch.zeros(()), persistent=False)
        self._drop_path_value = 0.0
        self.genotype = validate(load(genotype))

    @property
    def drop_path_prob(self) -> float:
        return self._drop_path_value

    @drop_path_prob.setter
    def drop_path_prob(self, p: float) -> None:
        self._drop_path_value = float(p)
        self._drop_path_prob.fill_(p)

    def _run_cells(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self._drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


class NetworkCIFAR(_Network):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__(layers, auxiliary, genotype)
        genotype = self.genotype
        C_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        C_prev, C_aux = _build_cells(self, genotype, layers, C, C_stem, C_stem, reduction_prev=False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, input):
        s = self.stem(input)
        return self._run_cells(s, s)


class NetworkImageNet(_Network):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__(layers, auxiliary, genotype)
        genotype = self.genotype
        self.stem0, self.stem1 = imagenet_stem(C)
        C_prev, C_aux = _build_cells(self, genotype, layers, C, C, C, reduction_prev=True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
        self.global_pooling = nn.AvgPool2d(7)  # 224 input -> 7x7 final map, as in the original
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, input):
        s0 = self.stem0(input)
        return self._run_cells(s0, self.stem1(s0))


# (C, cells) of the papers' evaluation networks: CIFAR-size inputs, and 224x224 ImageNet (mobile setting)
PAPER_SIZE = {"cifar": (36, 20), "imagenet": (48, 14)}


def build_network(genotype, num_classes: int, image_size: int, layers: int, C: int, auxiliary: bool):
    """NetworkImageNet for 224-pixel inputs, NetworkCIFAR for small ones."""
    cls = NetworkImageNet if image_size >= 224 else NetworkCIFAR
    return cls(C, num_classes, layers, auxiliary, genotype)


def paper_size(image_size: int) -> tuple[int, int]:
    """(C, cells) the DARTS paper evaluates at for this input size."""
    return PAPER_SIZE["imagenet" if image_size >= 224 else "cifar"]


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Parameters as the DARTS papers count them: without the auxiliary head."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_auxiliary and name.startswith("auxiliary_head.")))


_NNI_CELL = re.compile(r"^stages\.(\d+)\.(\d+)\.(.*)$")
_NNI_PRE = re.compile(r"^preprocessor\.pre([01])\.(.*)$")
# NNI wraps an op in Sequential(op, DropPath) when built with drop path: an extra "0." (module 0 of an op is
# always a parameter-free ReLU otherwise, so the prefix is unambiguous)
_NNI_OP = re.compile(r"^ops\.(\d+)\.([01])\.(?:0\.(?=.+\.))?(.*)$")


def from_nni_state_dict(state_dict: dict, layers: int) -> dict:
    """Rename the keys of a state dict saved by NNI's DARTS space (``stages.S.J...``) to the original's.

    NNI's cell j of stage s is cell ``s*layers//3 + j``; its ``ops.N.K`` is edge ``2N+K`` of the genotype. The
    computations are the same, so after renaming the logits match (checked against NNI 3.0's own output).
    """
    stage_start = [0, layers // 3, 2 * layers // 3]
    out = {}
    for key, value in state_dict.items():
        m = _NNI_CELL.match(key)
        if not m:  # stem, auxiliary head and classifier keep their names
            out[key] = value
            continue
        stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        cell = f"cells.{stage_start[stage] + index}."
        if pre := _NNI_PRE.match(rest):
            tail = pre.group(2)
            out[cell + f"preprocess{pre.group(1)}." + (f"op.{tail}" if tail[0].isdigit() else tail)] = value
        elif op := _NNI_OP.match(rest):
            tail = op.group(3)
            edge = 2 * int(op.group(1)) + int(op.group(2))
            out[cell + f"_ops.{edge}." + (f"op.{tail}" if tail[0].isdigit() else tail)] = value
        else:
            raise KeyError(f"NNI state dict: key '{key}' matches no DARTS module")
    return out
