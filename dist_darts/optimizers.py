"""The weights' optimizer of a search: the paper's SGD with momentum, or a layer-wise adaptive one for large
batches as timm keeps them, LARS (You et al. 2017) or LAMB (You et al. 2019). The one module that imports timm."""

from __future__ import annotations

import torch

from .config import ConfigError

LARS_TRUST = 0.001  # the LARS paper's trust coefficient eta


def weight_optimizer(name: str, params: list, lr: float, momentum: float, weight_decay: float):
    """sgd: torch's SGD. lars: LARS with LARC's clipping, each layer's rate min(lr, LARS_TRUST |w| / |g|), so
    the scaled SGD rate stays its ceiling. lamb: LAMB with its paper's betas and epsilon, without its own gradient
    clip (the search clips the global norm already)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    try:
        from timm.optim import Lamb, Lars
    except ImportError:
        raise ConfigError(f"optimizer: {name} is timm's: pip install 'dist-darts[lb]' (or timm)") from None
    if name == "lars":
        return Lars(params, lr, momentum=momentum, weight_decay=weight_decay, trust_coeff=LARS_TRUST,
                    trust_clip=True)
    return Lamb(params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay, max_grad_norm=None)
