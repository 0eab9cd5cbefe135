"""NAS-Bench-201 (Dong & Yang, ICLR 2020): the space, its networks, arch strings and the benchmark's numbers.

A cell is a complete DAG of 4 nodes: node i (1..3) sums one operation on every earlier node, 6 edges in all, each
one of OPS. Its genotype is the benchmark's arch string, e.g.
``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|``.

``Network`` and ``SearchNetwork`` equal the benchmark authors' xautodl ``TinyNetwork`` and ``TinyNetworkDarts``
(names, shapes, forward; tests/test_nb201.py against fixtures from their code); ``bench`` reads the benchmark file.
"""

from .genotype import EDGES, OPS, derive, draw, format_arch, from_dict, is_arch_dict, load, parse_arch, save, to_dict
from .networks import Network, SearchNetwork

__all__ = ["EDGES", "OPS", "Network", "SearchNetwork", "derive", "draw", "format_arch", "from_dict", "is_arch_dict",
           "load", "parse_arch", "save", "to_dict"]
