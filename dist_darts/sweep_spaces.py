"""What the sweep does alike for every search space: the winner, the final runs' summary, the drawings.

A space's `Space` object (its unit's sweep.py, one row of spaces.TABLE) says what the jobs need to know of it: its
job configs and jobs (the CLI's search, retrain and evaluate run them), and for `dist-darts sweep` how its trials'
metrics read, which selection score is better, and what its report shows; spaces/cnn/sweep.py's ConvSpace is the
protocol, which the other spaces' Space classes subclass. tune.py runs the three stages alike for every space.
Nothing here imports Ray.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .logs import log


class SweepFailed(RuntimeError):
    """A trial failed after its retries: the sweep ends with one line naming its log (exit code 1)."""


def best_trial(space, trials: list[dict]) -> dict:
    """The winner: the best selection score, the lower seed on a tie."""
    sign = 1 if space.higher_is_better else -1
    return max(trials, key=lambda t: (sign * t[space.select_key], -t["seed"]))


def final_summary(space, runs: list[dict]) -> dict:
    values = [r[space.final_key] for r in runs]
    return {"metric": space.final_key, "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "runs": runs}


def draw(space, root: Path, winner: dict, trials: list) -> list[str]:
    """The winner's cells and a plot of the selection score per seed; skipped with a note where impossible."""
    from .visualize import DrawingError, plot_selection
    paths = []
    try:
        paths += [str(p) for p in space.draw_winner(winner["genotype"], root)]
    except DrawingError as e:
        log.warning("no cell drawings: %s", e)
    try:
        paths.append(str(plot_selection([t["seed"] for t in trials], [t[space.select_key] for t in trials],
                                        winner["seed"], root / "selection.png",
                                        space.select_name + (f" ({space.unit.strip()})" if space.unit else ""))))
    except DrawingError as e:
        log.warning("no selection plot: %s", e)
    return paths
