"""The DARTS candidate operations, built and named exactly as in the original code so state dicts interchange.

Every conv op is ReLU -> Conv -> BN. ``affine=False`` is used in the search network (its BNs carry no weights,
so the alphas alone scale each op).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def _depthwise_grad_input(grad, weight, input_hw, stride, padding, dilation):
    """d(depthwise conv)/d(input) as a forward depthwise conv of the flipped kernel (oneDNN's CPU backward for
    dilated kernels is 10-40x slower than its forward). With stride s, the output gradient is first spread onto
    a zero grid with step s."""
    n, c, ho, wo = grad.shape
    k = weight.shape[-1]
    lead = (k - 1) * dilation - padding  # zeros before the first output position, after the flip
    if stride == 1 and lead == padding:  # 'same' padding: pad with the conv itself
        return F.conv2d(grad, weight.flip(-1, -2), None, 1, padding, dilation, c)
    h, w = input_hw
    rows, cols = h + (k - 1) * dilation, w + (k - 1) * dilation  # the padded grid that yields an h x w output
    spread = grad.new_zeros(n, c, rows, cols)
    spread[:, :, lead:lead + (ho - 1) * stride + 1:stride, lead:lead + (wo - 1) * stride + 1:stride] = grad
    return F.conv2d(spread, weight.flip(-1, -2), None, 1, 0, dilation, c)


def _depthwise_grad_weight(grad, x, k, stride, padding, dilation):
    """d(depthwise conv)/d(weight): every (sample, channel) plane of x correlated with its output-gradient plane
    (a grouped conv with the roles of stride and dilation swapped), summed over the batch. oneDNN runs this
    grouped conv 4x slower above about 2^19 input elements per call on the CPUs we measured, hence the chunks."""
    n, c, ho, wo = grad.shape
    grad, x = grad.contiguous(), x.contiguous()  # planes must be contiguous (channels_last is not)
    chunk = max(1, (1 << 19) // x[0].numel())
    total = None
    for g, xs in zip(grad.split(chunk), x.split(chunk)):
        m = g.shape[0]
        taps = F.conv2d(xs.reshape(1, m * c, *x.shape[2:]), g.reshape(m * c, 1, ho, wo), None, dilation, padding,
                        stride, m * c)
        part = taps[0, :, :k, :k].reshape(m, c, k, k).sum(0)
        total = part if total is None else total + part
    return total.unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    """A depthwise conv whose CPU backward is two forward convs; the forward is F.conv2d itself."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = stride, padding, dilation
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # the forward's autocast state, not the one around backward()
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _depthwise_grad_input(grad, weight, x.shape[2:], stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_grad_weight(grad, x, weight.shape[-1], stride, padding, dilation)
        return grad_x, grad_w, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d(C, C, k, groups=C, bias=False) (same parameters and state-dict entries) whose CPU backward avoids
    oneDNN's slow path for dilated and 5x5 depthwise kernels, and its wrong one: under bf16 autocast oneDNN's
    channels_last backward of a dilated stride-1 depthwise conv returns unwritten memory for the weight gradient
    from 32x32 inputs on (PyTorch 2.14.1; NaN or values ~1e17). Elsewhere (GPU, 3x3 undilated, or
    ``fast_backward=False``: the stock path) it is F.conv2d."""

    def __init__(self, C, kernel_size, stride, padding, dilation=1, fast_backward=True):
        super().__init__(C, C, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C, bias=False)
        self.fast_backward = fast_backward

    def forward(self, x):
        k, d = self.kernel_size[0], self.dilation[0]
        if not self.fast_backward or x.device.type != "cpu" or (k <= 3 and d == 1) or self.padding[0] > (k - 1) * d:
            return super().forward(x)
        weight = self.weight
        if torch.is_autocast_enabled("cpu"):  # cast both as autocast would for F.conv2d: the backward stays ours
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
        elif x.dtype != weight.dtype:
            return super().forward(x)
        return _DepthwiseConv2d.apply(x, weight, self.stride[0], self.padding[0], d)


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, dilated depthwise conv, pointwise conv, BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, kernel_size, stride, padding, dilation),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked depthwise-separable blocks; only the first one strides."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, kernel_size, stride, padding),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, kernel_size, 1, padding),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The 'none' op: zeros of the output's shape."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convs on offset grids, concatenated: a learned strided skip.

    The grids are sliced out first and the convs run with stride 1: the same values as the original's stride-2
    convs on x and x[:, :, 1:, 1:], but oneDNN's avx512 backward of a channels_last 1x1 stride-2 conv with
    fewer than 16 input channels corrupts the heap (PyTorch 2.14.1, CPU)."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def reduce(self, x_relu):
        """The two half-resolution convs, concatenated (before the BN)."""
        return torch.cat([self.conv_1(x_relu[:, :, ::2, ::2]), self.conv_2(x_relu[:, :, 1::2, 1::2])], dim=1)

    def forward(self, x):
        return self.bn(self.reduce(self.relu(x)))


def _conv_7x1_1x7(C, stride, affine):
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": _conv_7x1_1x7,
}


def imagenet_stem(C: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The ImageNet networks' stem: stem0 (two stride-2 3x3 convolutions to C channels, a quarter of the input's
    side) and stem1 (a third one, an eighth), as DARTS' NetworkImageNet and PC-DARTS' ImageNet supernet have it."""
    stem0 = nn.Sequential(
        nn.Conv2d(3, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C),
    )
    stem1 = nn.Sequential(
        nn.ReLU(inplace=True),
        nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C),
    )
    return stem0, stem1


def build_op(primitive: str, C: int, stride: int, affine: bool, fast_depthwise: bool = True) -> nn.Module:
    """OPS[primitive](C, stride, affine), its depthwise convs with their custom CPU backward or the stock one."""
    op = OPS[primitive](C, stride, affine)
    for m in op.modules():
        if isinstance(m, DepthwiseConv2d):
            m.fast_backward = fast_depthwise
    return op


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * bn(x)`` as ONE batch norm whose weight is the scale (scale times gamma and beta when affine).

    The same values and gradients as the product, in one pass instead of two; and the BN output need not be
    kept for the scale's gradient (the BN backward yields sum(grad * x_hat) anyway). Mirrors
    nn.BatchNorm2d.forward: the running statistics and num_batches_tracked update exactly as there.
    """
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    weight = scale.expand(x.shape[1]).contiguous()
    bias = None
    if bn.affine:
        weight, bias = weight * bn.weight, scale * bn.bias
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None, weight, bias,
                        use_batch_stats, momentum, bn.eps)


def _plain_bn(module) -> bool:
    return type(module) is nn.BatchNorm2d  # SyncBatchNorm and friends keep their own forward


def scaled_forward(op: nn.Module, x: torch.Tensor, x_relu: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * op(x)`` for a search op, with ``x_relu = relu(x)`` computed once and shared by every op that
    starts with a ReLU, and the scale folded into the op's final BN (scaled_batch_norm). Ops of another shape
    (or with a BN that is not a plain BatchNorm2d) are computed as ``scale * op(x)``. Module forward hooks on
    the inner modules still run; hooks on ``op`` itself do not."""
    seq = op.op if isinstance(op, (ReLUConvBN, DilConv, SepConv)) else op
    if isinstance(seq, nn.Sequential) and len(seq) >= 2 and _plain_bn(seq[-1]):
        modules = list(seq)
        h = x
        if isinstance(modules[0], nn.ReLU) and not modules[0].inplace:
            h, modules = x_relu, modules[1:]
        for m in modules[:-1]:
            h = m(h)
        return scaled_batch_norm(modules[-1], h, scale)
    if isinstance(op, FactorizedReduce) and _plain_bn(op.bn):
        return scaled_batch_norm(op.bn, op.reduce(x_relu), scale)
    return scale * op(x)


def drop_path(x: torch.Tensor, drop_prob) -> torch.Tensor:
    """Zero whole samples of a branch with probability drop_prob (a float or a 0-dim tensor), scaling the kept
    ones by 1/keep.

    In place, as the original: the ops it follows (BatchNorm, pooling) do not keep their output for backward, and
    autograd's version check would refuse one that did. Two passes and no new tensor per op and step."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x.div_(keep).mul_(mask)
