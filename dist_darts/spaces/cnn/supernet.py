"""The DARTS search network: every edge a softmax-weighted mixture of all primitives.

Module names follow the original ``model_search.py`` so its state dicts load (the alphas, which the original
keeps outside the module, are registered parameters here). The architecture parameters are kept apart from the
network weights: ``arch_parameters()`` vs ``weights()``. ``partial_channels=K > 1`` turns on PC-DARTS: each edge
mixes ops on 1/K of the channels, shuffles channels, and per-edge betas normalise the edges into a node.

Two speed-ups are constructor flags (on by default, off for the plain reference of tests and benchmarks):
``fold_alphas`` (MixedOp.accumulate's shared ReLU, alphas folded into BN, in-place sums; dense gradients at
the cell's concat) and ``fast_depthwise`` (ops.DepthwiseConv2d's CPU backward). The memory format is the
caller's: the network computes in the format of its input and parameters.

``method`` (methods.METHODS) decides how the alphas weigh the ops; a search step says which of its passes a forward
belongs to with ``sampling(phase, generator)`` and the epoch with ``set_epoch``. Every forward inside one
``sampling`` block draws the same random numbers (one sample per phase of a step, however many passes and
micro-batches the phase runs).

``stem`` is "cifar" (one 3x3 convolution at the input's size, the original's) or "imagenet" (PC-DARTS' ImageNet
supernet: three stride-2 convolutions, 224 px to 28 px before the cells, the first cell reading the 56 px map
through a FactorizedReduce); the cells and their reductions are the same.
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...method_table import DEFAULT as DEFAULT_METHOD
from ...methods import METHODS, Darts
from .genotype import NONE_INDEX, PRIMITIVES, Genotype, derive, edge_weights
from .ops import FactorizedReduce, Identity, ReLUConvBN, build_op, imagenet_stem, scaled_forward
from .projection import Projection

STEMS = ("cifar", "imagenet")
IMAGENET_STEM_FROM = 112  # --stem auto: inputs of this side and more get the ImageNet stem


def choose_stem(stem: str, image_size: int) -> str:
    """The stem "auto" stands for at this input size (others as they are)."""
    if stem != "auto":
        return stem
    return "imagenet" if image_size >= IMAGENET_STEM_FROM else "cifar"


def cell_sides(image_size: int, stem: str) -> tuple[int, int]:
    """Sides of the two maps the first cell reads (s0, s1): the stride-2 convolutions round up."""
    if stem == "cifar":
        return image_size, image_size
    s0 = (image_size + 3) // 4  # ceil(ceil(side / 2) / 2)
    return s0, (s0 + 1) // 2


def fits(image_size: int, stem: str) -> bool:
    """Whether the supernet runs on inputs of this side: every map a FactorizedReduce (the reduction cells'
    skip_connect, the next cell's preprocess0) or PC-DARTS' 2x2 pooling halves must have an even side."""
    s0, s1 = cell_sides(image_size, stem)
    return s1 % 4 == 0 and (s0 == s1 or s0 == 2 * s1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel j * groups + i of the output is channel i * (c // groups) + j of x, in x's memory format."""
    n, c, h, w = x.shape
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4)
    return nhwc.reshape(n, h, w, c).permute(0, 3, 1, 2)


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on a dense gradient in the input's memory format.

    torch.cat's backward passes each input a channel slice of the output gradient, which is dense in no memory
    format; a node's ops all receive that slice through the in-place sum, and the CPU batch-norm backward runs
    4x slower on it than on a dense copy. One copy per concatenated node pays for itself many times over.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


class MixedOp(nn.Module):
    def __init__(self, C, stride, partial_channels=1, fold_alphas=True, fast_depthwise=True, auxiliary_skip=False):
        super().__init__()
        if C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must divide the {C} channels of every edge")
        self.stride = stride
        self.partial_channels = partial_channels
        self.fold_alphas = fold_alphas
        C_op = C // partial_channels
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = build_op(primitive, C_op, stride, False, fast_depthwise)
            if "pool" in primitive:  # BN after pooling keeps its scale comparable to the conv ops
                op = nn.Sequential(op, nn.BatchNorm2d(C_op, affine=False))
            self._ops.append(op)
        # DARTS-: a skip connection outside the mixture, on the whole edge (the search's own skip_connect op)
        self.auxiliary_skip = build_op("skip_connect", C, stride, False) if auxiliary_skip else None

    def forward(self, x, weights, skip=None):
        """The edge's output; `skip` (a 0-dim tensor, DARTS- only) weighs the auxiliary skip connection."""
        k = self.partial_channels
        x_op = x if k == 1 else x[:, : x.shape[1] // k]
        out = self.accumulate(x_op, weights)
        if k > 1:
            bypass = x[:, x.shape[1] // k:]
            if self.stride == 2:
                bypass = F.max_pool2d(bypass, 2, 2)
            out = channel_shuffle(torch.cat([out, bypass], dim=1), k)
        return out if skip is None else out + skip * self.auxiliary_skip(x)

    def add_skip(self, out, x, skip):
        """out + skip * auxiliary_skip(x), in place."""
        return out.add_(self.auxiliary_skip(x) * skip)

    def accumulate(self, x, weights, out=None):
        """out + sum_i weights[i] * op_i(x), summed in place into out (a new tensor when out is None).

        The same sum as the original's ``sum(w * op(x) for w, op in zip(weights, self._ops))``, computed with
        less memory traffic: 'none' is skipped (it contributes weight * 0: neither the output nor any gradient
        changes), relu(x) is computed once for the four conv ops (and FactorizedReduce), each weight is folded
        into its op's final BN, and the terms are added in place, so no product or partial sum is stored.
        With fold_alphas=False it is the original's sum, 'none' included.
        """
        if not self.fold_alphas:
            total = sum(w * op(x) for w, op in zip(weights, self._ops))
            return total if out is None else out + total
        x_relu = F.relu(x)
        for i, op in enumerate(self._ops):
            if i == NONE_INDEX:
                continue
            if isinstance(op, Identity):
                out = x * weights[i] if out is None else out.addcmul_(x, weights[i])
                continue
            term = scaled_forward(op, x, x_relu, weights[i])
            out = term if out is None else out.add_(term)
        return out


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, partial_channels=1,
                 fold_alphas=True, fast_depthwise=True, auxiliary_skip=False):
        super().__init__()
        self.reduction = reduction
        self.fold_alphas = fold_alphas
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1, partial_channels, fold_alphas, fast_depthwise,
                    auxiliary_skip)
            for i in range(steps) for j in range(2 + i)
        )

    def forward(self, s0, s1, weights, edge_scale=None, skip=None):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            if edge_scale is None:  # all edges into the node accumulate into one tensor
                s = None
                for j, h in enumerate(states):
                    op = self._ops[offset + j]
                    s = op.accumulate(h, weights[offset + j], s)
                    if skip is not None:
                        s = op.add_skip(s, h, skip)
            else:
                s = sum(edge_scale[offset + j] * self._ops[offset + j](h, weights[offset + j], skip)
                        for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        outputs = states[-self._multiplier:]
        return torch.cat([_DenseGrad.apply(s) for s in outputs] if self.fold_alphas else outputs, dim=1)


class Network(nn.Module):
    """The search supernet (stem multiplier 3; reduction cells at layers//3 and 2*layers//3)."""

    def __init__(self, C, num_classes, layers, steps=4, multiplier=4, stem_multiplier=3, partial_channels=1,
                 fold_alphas=True, fast_depthwise=True, method: str = DEFAULT_METHOD, stem: str = "cifar"):
        super().__init__()
        self.method: Darts = METHODS[method]
        self._phase, self._generator, self._epoch, self._epochs = None, None, 0, 1
        self._draw_state = None  # the generator's state at the start of the sampling block, or None
        self._C = C
        self._num_classes = num_classes
        self._layers = layers
        self._steps = steps
        self._multiplier = multiplier
        self.partial_channels = partial_channels

        if stem not in STEMS:
            raise ValueError(f"stem {stem!r} is not one of {', '.join(STEMS)}")
        self.stem_kind = stem
        C_curr = stem_multiplier * C
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        else:
            self.stem0, self.stem1 = imagenet_stem(C_curr)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = stem == "imagenet"  # the first cell's s0 is stem0's map, twice s1's side
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                   partial_channels, fold_alphas, fast_depthwise, self.method.auxiliary_skip))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        edges = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))
        self._arch_names = ["alphas_normal", "alphas_reduce"]
        if partial_channels > 1:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(edges))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(edges))
            self._arch_names += ["betas_normal", "betas_reduce"]
        # DARTS-'s skip coefficient: a tensor filled in place (a float would recompile a compiled graph every
        # epoch); not saved, set_epoch derives it
        self.register_buffer("skip_coefficient", torch.ones(()), persistent=False)
        self.projection: Projection | None = None  # DARTS-PT's decisions, applied to the op weights when set

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Where the search is: the schedules of the methods (DARTS-'s skip, SDARTS's noise) follow it."""
        self._epoch, self._epochs = epoch, epochs
        self.skip_coefficient.fill_(self.method.skip_coefficient(epoch, epochs))

    @contextlib.contextmanager
    def sampling(self, phase: str, generator: torch.Generator | None):
        """Forwards inside belong to `phase` of a search step (methods.WEIGHT_STEP or ALPHA_STEP) and draw their
        random numbers from `generator`, each forward from the state it had at the block's start: the unrolled
        step's four passes and every micro-batch see one sample, as one pass over the whole batch would. Outside,
        the op weights are deterministic."""
        saved = self._phase, self._generator, self._draw_state
        self._phase, self._generator = phase, generator
        self._draw_state = None if generator is None else generator.get_state()
        try:
            yield
        finally:
            self._phase, self._generator, self._draw_state = saved

    def mixing_weights(self, alphas: torch.Tensor, cell: str) -> torch.Tensor:
        weights = self.method.mix(alphas, self._phase, self._generator, self._epoch, self._epochs)
        return weights if self.projection is None else self.projection.apply(weights, cell)

    def arch_parameters(self):
        return [getattr(self, name) for name in self._arch_names]

    def arch_parameter_names(self):
        return list(self._arch_names)

    def weights(self):
        return [p for name, p in self.named_parameters() if name not in self._arch_names]

    def named_weights(self):
        return [(name, p) for name, p in self.named_parameters() if name not in self._arch_names]

    def forward(self, input):
        if self._draw_state is not None:  # the block's one sample, drawn again
            self._generator.set_state(self._draw_state)
        w_normal = self.mixing_weights(self.alphas_normal, "normal")
        w_reduce = self.mixing_weights(self.alphas_reduce, "reduce")
        skip = self.skip_coefficient if self.method.auxiliary_skip else None
        e_normal = e_reduce = None
        if self.partial_channels > 1:
            e_normal = edge_weights(self.betas_normal, self._steps)
            e_reduce = edge_weights(self.betas_reduce, self._steps)
        if self.stem_kind == "cifar":
            s0 = s1 = self.stem(input)
        else:
            s0 = self.stem0(input)
            s1 = self.stem1(s0)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce, skip)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal, skip)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(self, max_skip: int | None = None) -> Genotype:
        """The derived cells (genotype.derive; `max_skip`: P-DARTS's cap on the normal cell's skip_connects);
        with a projection, from the projected op weights, so its decided edges and nodes are what the cell keeps."""
        betas = (self.betas_normal, self.betas_reduce) if self.partial_channels > 1 else (None, None)
        if self.projection is None:
            return derive(self.alphas_normal, self.alphas_reduce, *betas, steps=self._steps, max_skip=max_skip,
                          mixing=self.method.derivation)
        with torch.no_grad():
            weights = [self.mixing_weights(a, cell) for a, cell in ((self.alphas_normal, "normal"),
                                                                     (self.alphas_reduce, "reduce"))]
        return derive(*weights, *betas, steps=self._steps, max_skip=max_skip, mixing="weights")
