"""`dist-darts sweep`: the DARTS authors' protocol with Ray Tune; the only module that imports Ray.

Stage 1 runs one search per seed, stage 2 a short selection retrain of each distinct genotype found, stage 3 the
full retrain of the winner (the best validation accuracy of the selection retrains, on a hold-out of the training
images; for --space rnn the lowest validation perplexity: what differs between the spaces is in their Space
objects), R times with different seeds. Only stage 3 reads the test split, once per retrain, after its last epoch. Every
trial is a DDP job of k workers: a Tune function trial builds a Ray Train TorchTrainer (Ray Train V2) whose
workers call the same `run(cfg)` as torchrun does. Workers report every epoch, rank 0 attaching its checkpoint; a
failed trial is retried and resumes from that checkpoint. Trial names are stable, so `--resume` restores each
stage's Tuner and skips finished trials. Each report arriving in the driver is one progress line (TrialProgress) in sweep.log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from . import config as config_io
from .config import SWEEP_PASSED, ConfigError, SweepConfig
from .logs import duration, log as logger, setup_logging, summary_table
from .runfolder import atomic_write, checkpoint_path, claim
from .spaces import DEFAULT as DEFAULT_SPACE
from .spaces import SPACES
from .sweep_spaces import SweepFailed, best_trial, draw, final_summary

ray = None  # imported by _import_ray: Ray reads its single-machine switch once, when it is imported
# Ray's documented switch for its single-machine mode (the macOS and Windows default): every server of the runtime
# listens on 127.0.0.1. Read once per process when Ray is imported, by the driver and each process it starts.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# keys of a --search or --retrain YAML that the sweep sets for every trial, and what to use instead
SWEEP_OWNED = {"output": "the sweep's --output (each trial's folder is OUTPUT/STAGE/NAME)",
               "resume": "the sweep's --resume", "overwrite": "the sweep's --overwrite",
               "seed": "the sweep's --seeds (the final retrains' seeds follow from the winner's)",
               "val_portion": "the sweep's --select-val-portion (the final retrains train on every training image)",
               "evaluate_test": "nothing: only the final retrains read the test split, after their last epoch"}


def _import_ray(private: bool = False) -> None:
    """Import Ray (once); for the private local runtime first in its single-machine mode."""
    global ray
    if ray is not None:
        return
    if private and "ray" not in sys.modules:
        os.environ[SINGLE_MACHINE] = "0"
    try:
        import ray as ray_module
        import ray.train  # noqa: F401
        import ray.train.collective  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError:  # the rest of dist-darts works without Ray
        raise ConfigError("sweep needs Ray: pip install 'dist-darts[tune]'") from None
    ray = ray_module


# --- the per-worker function and the per-trial driver ---------------------------------------------------

def _worker(config: dict) -> None:
    """Runs on every Ray Train worker: the same run(cfg) as under torchrun, reporting each epoch to Ray (and, where
    the space's report needs numbers only the finished job has, once more after it)."""
    _import_ray()
    kind, space = config["kind"], SPACES[config["space"]]
    cfg = config_io.build(space.config(kind), {}, config["cfg"])
    _join_group(config["private"])
    rank = ray.train.get_context().get_world_rank()
    run_ckpt = checkpoint_path(Path(cfg.output))
    restored = ray.train.get_checkpoint()
    if restored is not None and rank == 0 and not run_ckpt.is_file():
        # the run folder is not on shared storage (a new node): continue from Ray's copy of the checkpoint
        with restored.as_directory() as d:
            run_ckpt.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(d) / run_ckpt.name, run_ckpt)

    def report(metrics: dict, checkpoint: Path) -> None:
        if rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint.parent)))
        else:
            ray.train.report(metrics)

    final = space.final_report(kind, space.job(kind)(cfg, on_epoch=report))
    if final is not None:  # every rank reports as often as the others
        ray.train.report(final)


def _join_group(private: bool) -> None:
    """The environment of init_distributed for this worker: its ranks, and the rendezvous store's address, which
    rank 0 picks: 127.0.0.1 on the private runtime, else its node's cluster address (never every interface)."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(context.get_local_rank()))
    if world_size == 1:
        return
    address = None
    if rank == 0:
        host = "127.0.0.1" if private else ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))  # a free port on that address; init_distributed listens on it
            address = (host, probe.getsockname()[1])
    host, port = ray.train.collective.broadcast_from_rank_zero(address)
    os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(port))


def _own_group_config():
    """A TorchConfig whose backend makes no process group: each worker's run(cfg) makes its own through
    init_distributed, whose store listens on the one address _join_group picks (Ray Train's store would listen
    on every interface)."""
    from ray.train.backend import Backend
    from ray.train.torch import TorchConfig

    class DevicesOnly(Backend):
        share_cuda_visible_devices = True  # LOCAL_RANK indexes the node's GPUs, as under torchrun

    class OwnGroup(TorchConfig):
        @property
        def backend_cls(self):
            return DevicesOnly

    return OwnGroup()


def _trial(config: dict) -> None:
    """One Tune trial: a TorchTrainer of `workers` ranks, retried from its checkpoint on failure."""
    _import_ray()
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    config = config["trial"]  # the stage's grid value
    resources = {"CPU": config["cpus_per_worker"]}
    if config["gpus_per_worker"]:
        resources["GPU"] = config["gpus_per_worker"]
    trainer = TorchTrainer(
        _worker,
        train_loop_config=config,
        torch_config=_own_group_config(),
        scaling_config=ray.train.ScalingConfig(num_workers=config["workers"], use_gpu=bool(config["gpus_per_worker"]),
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=config["run_name"], storage_path=config["storage"],
            failure_config=ray.train.FailureConfig(max_failures=config["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),  # a retry needs only the latest
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


# --- stages -----------------------------------------------------------------------------------------------

class TrialProgress:
    """One log line per trial report (every epoch): stage, trial, epoch of epochs, its metric, ETA; on the console
    and in sweep.log, in place of Tune's status tables. Runs in the driver, from the results Tune receives, as a
    Tune Callback (_tune_callback)."""

    def __init__(self, stage: str, log, space: str = DEFAULT_SPACE):
        self.stage, self.log, self.space = stage, log, SPACES[space]
        self.started = {}  # trial id -> (the epoch it (re)started from, when)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = (None, time.time())

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.log(f"{self.stage} {trial.config['trial']['name']}: failed, retried from its last checkpoint")
        self.started[trial.trial_id] = (None, time.time())  # the retry's rate is measured anew

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return
        spec, epoch = trial.config["trial"], result["epoch"]
        epochs = spec["cfg"]["epochs"]
        first, since = self.started.get(trial.trial_id, (None, time.time()))
        if first is None:  # every epoch is reported: the first report after a (re)start is one epoch in
            first = epoch - 1
            self.started[trial.trial_id] = (first, since)
        per_epoch = (time.time() - since) / max(epoch - first, 1)
        shown = self.space.progress(spec["kind"], result)
        self.log(f"{self.stage} {spec['name']}: epoch {epoch}/{epochs} | {shown} | "
                 f"ETA {duration(per_epoch * (epochs - epoch))}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"{self.stage} {trial.config['trial']['name']}: failed, no retries left")


def _tune_callback(progress: TrialProgress):
    """progress as the ray.tune.Callback Tune calls (Ray is imported only when a sweep starts)."""
    progress.__class__ = type("TrialProgressCallback", (TrialProgress, ray.tune.Callback), {})
    return progress


def _stage(name: str, trials: list[dict], sweep: SweepConfig, root: Path, log) -> dict:
    """Run one stage's trials; returns each trial's last metrics by trial name.

    A stage that finished before the driver died is restored (Tuner.restore) and not run again. An unfinished
    one starts a new Tuner whose trials resume from their checkpoints: their run folders and Ray Train run names
    are stable. (Restoring a Tuner killed while it was still creating its trials loses their configs.)
    """
    storage = str((root / "ray").resolve())
    path = os.path.join(storage, name)
    done = root / "ray" / f"{name}.done"
    trainable = ray.tune.with_resources(_trial, {"CPU": 0.01})  # the trial only waits on its TorchTrainer
    if sweep.resume and done.is_file() and ray.tune.Tuner.can_restore(path):
        log(f"stage {name}: finished earlier, restoring {path}")
        grid = ray.tune.Tuner.restore(path, trainable=trainable).get_results()
    else:
        shutil.rmtree(path, ignore_errors=True)
        tuner = ray.tune.Tuner(
            trainable,
            param_space={"trial": ray.tune.grid_search(trials)},
            tune_config=ray.tune.TuneConfig(
                max_concurrent_trials=sweep.max_concurrent_trials or None,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=ray.tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                          failure_config=ray.tune.FailureConfig(max_failures=sweep.max_failures),
                                          callbacks=[_tune_callback(TrialProgress(name, log, sweep.space))]),
        )
        grid = tuner.fit()
    results, failed = {}, []
    for result in grid:
        spec = result.config["trial"]
        if result.error is None:
            results[spec["name"]] = result.metrics
            continue
        log_file = Path(spec["cfg"]["output"]) / "log.txt"
        if not log_file.is_file():  # it failed before its job started: Ray's record of the error
            log_file = Path(result.path) / "error.txt"
        failed.append(f"{spec['name']} ({' '.join(str(result.error).split())[:160]}; its log: {log_file})")
    if failed:
        raise SweepFailed(f"stage {name}: trial {failed[0]} failed after {sweep.max_failures} retries"
                          + (f", and {len(failed) - 1} more" if len(failed) > 1 else ""))
    atomic_write(done, json.dumps(sorted(results)) + "\n")
    return results


def _trial_name(trial) -> str:
    """Stable names (no timestamps): a resumed stage's trials land in the same folders."""
    return trial.config["trial"]["name"]


def _trial_spec(sweep: SweepConfig, stage: str, kind: str, name: str, cfg, workers: int, storage: str) -> dict:
    # the Ray Train run name must be unique per stage: Ray Train resumes a run of the same name and storage
    return {"kind": kind, "space": sweep.space, "name": name, "run_name": f"{stage}_{name}", "cfg": config_io.to_dict(cfg),
            "workers": workers, "private": not sweep.address,
            "cpus_per_worker": sweep.cpus_per_worker, "gpus_per_worker": sweep.gpus_per_worker,
            "max_failures": sweep.max_failures, "storage": storage}


def run(sweep: SweepConfig) -> dict:
    """The whole sweep; returns the report (also written to report.json and report.md).

    Everything is checked before anything is written or Ray starts: the settings of every trial, the YAML files
    (a key the sweep owns is refused, not overridden), the data (on the private runtime, whose trials read it
    here), and the sweep folder (locked for the sweep's life; a used one needs --resume or --overwrite)."""
    space = SPACES[sweep.space]
    fields = {f.name for cls in (space.search_config, space.retrain_config) for f in dataclasses.fields(cls)}
    foreign = [k for k in SWEEP_PASSED if getattr(sweep, k) is not None and k not in fields]
    if foreign:  # refused, not dropped: a flag that would do nothing is a mistake worth one line
        raise ConfigError(f"{foreign[0]}: not a setting of the {space.name} space's searches or retrains")
    root = Path(sweep.output).resolve()
    overridden = []  # where a sweep flag replaces a YAML's value: said in sweep.log, never silently
    search_base = _trial_yaml(sweep.search, sweep, space.search_config, overridden)
    retrain_base = _trial_yaml(sweep.retrain, sweep, space.retrain_config, overridden)
    seeds = sweep.seed_list()
    epochs = {"search": _epochs(sweep.search, search_base, "--search-epochs", sweep.search_epochs,
                                space.search_config, overridden),
              "select": sweep.select_epochs or space.paper_select_epochs,
              "final": _epochs(sweep.retrain, retrain_base, "--final-epochs", sweep.final_epochs,
                               space.retrain_config, overridden)}

    def search_cfg(seed):
        values = {**search_base, **sweep.passed_on(space.search_config), "epochs": epochs["search"], "seed": seed,
                  "output": str(root / "search" / f"seed_{seed}"), "resume": True}
        return config_io.build(space.search_config, values, source="sweep search settings")

    def retrain_cfg(genotype_file, seed, stage, out):
        values = {**retrain_base, **sweep.passed_on(space.retrain_config), "genotype": str(genotype_file),
                  "epochs": epochs[stage], "seed": seed, "output": str(out), "resume": True,
                  **(space.selection_settings(sweep) if stage == "select" else {})}
        return config_io.build(space.retrain_config, values, source="sweep retrain settings")

    # every setting is checked before any trial starts (the retrain ones with a stand-in genotype)
    search_cfgs = {seed: search_cfg(seed) for seed in seeds}
    for stage in ("select", "final"):
        retrain_cfg(space.stand_in_genotype, seeds[0], stage, root / stage)
    if not sweep.address:  # the trials run here: their data must be here (downloaded once, now, if asked)
        space.check_data(search_cfgs[seeds[0]])
    _import_ray(private=not sweep.address)

    created = not root.exists()
    try:
        lock, notes = claim(root, sweep.resume, sweep.overwrite)
    except ConfigError:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # the lock's own folder: a refused sweep leaves nothing behind
        raise
    try:
        atomic_write(root / "config.yaml", config_io.dump(sweep, {f"{k}_epochs": v for k, v in epochs.items()}))
        setup_logging(root / "sweep.log", is_main=True)
        for note in notes + overridden:
            logger.warning(note)
        return _run_stages(sweep, space, root, seeds, epochs, search_cfgs, retrain_cfg)
    finally:
        lock.release()


def _trial_yaml(path: str | None, sweep: SweepConfig, cls, overridden: list) -> dict:
    """A --search or --retrain YAML's settings, refusing the keys the sweep sets per trial (one line, naming what
    to use instead). A sweep flag given beside a YAML value wins, as flags win over --config, and is noted in
    `overridden`."""
    if not path:
        return {}
    values = config_io.load_yaml(path)
    for key in values:
        if key in SWEEP_OWNED:
            raise ConfigError(f"{key.replace('_', '-')} in {path}: the sweep sets it for every trial; use "
                              f"{SWEEP_OWNED[key]}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, flag_value in sweep.passed_on(cls).items():
        if key in values and key in fields:
            theirs = config_io._coerce(cls, fields[key], values[key], path)
            if theirs != flag_value:
                overridden.append(f"{key.replace('_', '-')}: the sweep's --{key.replace('_', '-')} {flag_value!r} "
                                  f"replaces {theirs!r} of {path}")
    return values


def _epochs(path: str | None, values: dict, flag: str, flag_value: int | None, cls, overridden: list) -> int:
    """A stage's epochs: the sweep flag's where given (a YAML value it replaces is noted in `overridden`), else
    the YAML's, else the job's default (the paper's)."""
    field = {f.name: f for f in dataclasses.fields(cls)}["epochs"]
    theirs = config_io._coerce(cls, field, values["epochs"], path) if "epochs" in values else None
    if flag_value is not None and theirs is not None and theirs != flag_value:
        overridden.append(f"epochs: {flag} {flag_value} replaces {theirs} of {path}")
    return flag_value or theirs or field.default


def _run_stages(sweep, space, root: Path, seeds, epochs, search_cfgs, retrain_cfg) -> dict:
    log = logger.info
    started = time.time()
    _init_ray(sweep)
    storage = str((root / "ray").resolve())
    try:
        log(f"stage 1/3: {len(seeds)} searches ({epochs['search']} epochs, "
            f"{sweep.workers_per_trial} worker(s) each)")
        found = _stage("search", [_trial_spec(sweep, "search", "search", f"seed_{s}", c, sweep.workers_per_trial, storage)
                                  for s, c in search_cfgs.items()], sweep, root, log)
        trials = [{"seed": seed, **space.trial(found[f"seed_{seed}"])} for seed in seeds]

        distinct = {}
        for t in trials:
            distinct.setdefault(json.dumps(t["genotype"], sort_keys=True), t)
        log(f"stage 2/3: selection retrains of {len(distinct)} distinct genotype(s) ({epochs['select']} epochs, "
            f"ranked on {space.selection_split(sweep)})")
        select_specs = []
        for t in distinct.values():
            genotype_file = root / "select" / f"seed_{t['seed']}.json"
            genotype_file.parent.mkdir(parents=True, exist_ok=True)
            space.save(space.from_dict(t["genotype"]), genotype_file)
            cfg = retrain_cfg(genotype_file, seeds[0], "select", root / "select" / f"seed_{t['seed']}")
            select_specs.append(_trial_spec(sweep, "select", "retrain", f"seed_{t['seed']}", cfg, sweep.workers_per_trial,
                                            storage))
        selected = _stage("select", select_specs, sweep, root, log)
        for t in trials:
            source = distinct[json.dumps(t["genotype"], sort_keys=True)]
            t.update(space.selection(selected[f"seed_{source['seed']}"]), same_genotype_as=source["seed"])
        winner = best_trial(space, trials)

        repeats = [winner["seed"] * 1000 + i for i in range(sweep.repeats)]
        log(f"stage 3/3: final retrain of seed {winner['seed']}'s genotype, {sweep.repeats} run(s) of "
            f"{epochs['final']} epochs")
        final_file = root / "final" / "genotype.json"
        final_file.parent.mkdir(parents=True, exist_ok=True)
        space.save(space.from_dict(winner["genotype"]), final_file)
        final_specs = [_trial_spec(sweep, "final", "retrain", f"repeat_{i}",
                                   retrain_cfg(final_file, s, "final", root / "final" / f"repeat_{i}"),
                                   sweep.final_workers or sweep.workers_per_trial, storage)
                       for i, s in enumerate(repeats)]
        finals = _stage("final", final_specs, sweep, root, log)
    finally:
        ray.shutdown()

    report = {
        "search": space.describe(search_cfgs[seeds[0]]),
        "splits": space.splits,  # where each number of the trials and final runs comes from
        "winner": {"seed": winner["seed"], "genotype": winner["genotype"], space.select_key: winner[space.select_key]},
        "trials": trials,
        "final": final_summary(space, [{"seed": s, **space.final_run(finals[f"repeat_{i}"])}
                                       for i, s in enumerate(repeats)]),
        "seconds": time.time() - started,
    }
    _write_report(root, report, space, log)
    return report


def _init_ray(sweep: SweepConfig) -> None:
    _import_ray(private=not sweep.address)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # quiet and private by default
    # Tune's default console output prints an experiment box and result paths whatever `verbose` says; its
    # classic one is silent at verbose=0, so the console holds only the sweep's own lines (TrialProgress)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C stops the sweep at once (the CLI says how to continue it); Tune's own handler would end the stage
    # "gracefully" with unfinished trials that the next stage would read as results
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # a failed trial's traceback is in its log and error.txt, which the sweep's one closing line names
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    if sweep.address:
        ray.init(address=sweep.address, log_to_driver=False)
    else:
        # a private runtime with the CPUs and GPUs this machine has; address="local": a new runtime even where
        # `ray start` left one to attach to. Its node address is loopback, and in the single-machine mode
        # (_import_ray) its servers listen there only; the processes it starts inherit the mode
        os.environ[SINGLE_MACHINE] = "0"
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _node_ip_address="127.0.0.1")


def _write_report(root: Path, report: dict, space, log) -> None:
    atomic_write(root / "report.json", json.dumps(report, indent=2) + "\n")
    winner, final = report["winner"], report["final"]
    rows = [{**t, "label": f"{t['seed']}" + (" **winner**" if t["seed"] == winner["seed"] else ""),
             "same": "" if t["same_genotype_as"] == t["seed"] else f" (same as seed {t['same_genotype_as']})"}
            for t in report["trials"]]
    lines = ["# dist-darts sweep report", "", space.headline(report["search"]), "", *space.table(rows)]
    lines += ["", f"Winner: seed {winner['seed']} ({space.select_name} {winner[space.select_key]:.2f}{space.unit}).",
              f"Final {space.final_name} over {len(final['runs'])} run(s): {final['mean']:.2f} +/- "
              f"{final['std']:.2f}{space.unit}.", ""]
    drawings = draw(space, root, winner, report["trials"])
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in drawings]
    atomic_write(root / "report.md", "\n".join(lines) + "\n")
    log("sweep finished\n" + summary_table(
        [(f"seed {t['seed']}", space.summary(t)) for t in report["trials"]]
        + [("winner", f"seed {winner['seed']}"),
           (f"final {space.final_name}", f"{final['mean']:.2f} +/- {final['std']:.2f}{space.unit} "
                                         f"({len(final['runs'])} run(s))"),
           ("report", str(root / "report.md"))]))
