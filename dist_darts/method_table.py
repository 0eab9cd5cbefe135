"""The search methods' one table: each --method's name, the class in methods.py that runs it, what the option's
help says of it, the settings its authors' code searches the DARTS space with, and what it refuses.

Torch-free, so the configs read it without loading torch; methods.py builds its METHODS from it. A new method is
one class in methods.py plus one row here.
"""

from __future__ import annotations

from typing import NamedTuple


class MethodInfo(NamedTuple):
    cls: str  # its class in methods.py
    summary: str  # what --method's help says of it
    # the settings its authors' released code searches the DARTS space with, wherever they differ from DARTS's
    # (the SearchConfig defaults); a key given in the YAML file or on the command line still wins. The base batch
    # is the authors' batch, so the scaling rules give their rates at it. Sources (file:line) and the settings not
    # taken over: docs/methods.md.
    authors_settings: dict = {}
    # why it refuses --partial-channels above 1 ("": it runs with PC-DARTS' partial channels)
    partial_channels_refusal: str = ""


TABLE = {
    "darts": MethodInfo("Darts", "softmax"),
    "darts-minus": MethodInfo("DartsMinus", "an auxiliary skip on every edge, weight 1 -> 0"),
    "beta-darts": MethodInfo("BetaDarts", "beta-decay penalty on the alphas"),
    "sdarts-rs": MethodInfo("SdartsRS", "uniform noise on softmax(alphas) in the weight step"),
    "fair-darts": MethodInfo("FairDarts", "sigmoids + zero-one loss",
                             {"batch_size": 128, "base_batch_size": 128, "learning_rate": 0.005,
                              "arch_learning_rate": 3e-3, "arch_beta1": 0.9}),
    "drnas": MethodInfo("DrNAS", "Dirichlet samples",
                        {"learning_rate": 0.1, "learning_rate_min": 0.0, "arch_learning_rate": 6e-4},
                        # docs/methods.md: what DrNAS's authors run
                        "DrNAS's progressive learning (partial channels K=6 -> 4 with the ops pruned 7 -> 4 at "
                        "epoch 25) is not built, and PC-DARTS's edge normalisation is no part of DrNAS; use "
                        "--partial-channels 1 with --method drnas"),
}
DEFAULT = "darts"  # plain DARTS, the paper's


def described() -> str:
    """Every method with its summary, for --method's help."""
    return ", ".join(f"{name} ({info.summary})" for name, info in TABLE.items())
