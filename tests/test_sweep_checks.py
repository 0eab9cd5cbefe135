"""`dist-darts sweep` refuses before Ray starts and before it writes anything: bad data, YAML keys the sweep owns,
a used sweep folder. How the stages' settings resolve (YAML, flags, the paper's), without running them."""

import pytest

from dist_darts import config, tune
from dist_darts.config import ConfigError, SweepConfig
from dist_darts.data import DataError
from dist_darts.runfolder import RunFolderLock


@pytest.fixture
def stages(monkeypatch):
    """Runs the sweep up to its stages, which are recorded instead of run (no Ray)."""
    seen = {}

    def record(sweep, space, root, seeds, epochs, search_cfgs, retrain_cfg):
        seen.update(epochs=epochs, search=search_cfgs, select=retrain_cfg("DARTS_V2", 0, "select", root / "s"),
                    final=retrain_cfg("DARTS_V2", 0, "final", root / "f"))
        return {}

    monkeypatch.setattr(tune, "_run_stages", record)
    monkeypatch.setattr(tune, "_import_ray", lambda private=False: None)
    return seen


def sweep(tmp_path, search=None, retrain=None, **settings):
    files = {}
    for name, text in (("search", search), ("retrain", retrain)):
        if text is not None:
            files[name] = str(tmp_path / f"{name}.yaml")
            (tmp_path / f"{name}.yaml").write_text(text)
    return SweepConfig(**{"dataset": "digits", "seeds": "2", "output": str(tmp_path / "sweep"), **files, **settings})


def test_a_bad_data_folder_is_refused_before_ray_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "ray", None)
    with pytest.raises(DataError, match="/nonexistent/cifar"):
        tune.run(sweep(tmp_path, dataset="cifar10", data_dir="/nonexistent/cifar"))
    assert tune.ray is None and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("key,hint", [("output: here", "--output"), ("seed: 3", "--seeds"),
                                      ("resume: true", "--resume"), ("overwrite: true", "--overwrite")])
def test_keys_the_sweep_owns_are_refused(tmp_path, stages, key, hint):
    with pytest.raises(ConfigError, match=f"in {tmp_path / 'search.yaml'}: the sweep sets it for every trial; use "
                                          f"the sweep's {hint}"):
        tune.run(sweep(tmp_path, search=f"{key}\n"))
    assert not (tmp_path / "sweep").exists() and not stages


def test_the_selection_hold_out_is_the_sweeps(tmp_path, stages):
    with pytest.raises(ConfigError, match="--select-val-portion"):
        tune.run(sweep(tmp_path, retrain="val-portion: 0.3\n"))
    with pytest.raises(ConfigError, match="evaluate-test"):
        tune.run(sweep(tmp_path, retrain="evaluate-test: true\n"))


def test_yaml_epochs_are_honoured_and_the_selection_is_the_papers(tmp_path, stages):
    tune.run(sweep(tmp_path, search="epochs: 3\nlayers: 5\n", retrain="epochs: 25\n"))
    assert stages["epochs"] == {"search": 3, "select": 100, "final": 25}
    assert [c.epochs for c in stages["search"].values()] == [3, 3] and stages["search"][0].layers == 5
    assert (stages["select"].epochs, stages["select"].val_portion, stages["select"].evaluate_test) == (100, 0.1, False)
    assert (stages["final"].epochs, stages["final"].val_portion, stages["final"].evaluate_test) == (25, 0.0, True)
    resolved = config.yaml.safe_load((tmp_path / "sweep" / "config.yaml").read_text())["resolved"]
    assert resolved == {"search_epochs": 3, "select_epochs": 100, "final_epochs": 25}


def test_unset_everywhere_means_the_papers_lengths(tmp_path, stages):
    tune.run(sweep(tmp_path))
    assert stages["epochs"] == {"search": 50, "select": 100, "final": 600}
    tune.run(sweep(tmp_path, space="rnn", dataset="pydoc", overwrite=True))
    assert stages["epochs"] == {"search": 50, "select": 300, "final": 8000}


@pytest.mark.parametrize("flags,yaml,note", [
    (dict(search_epochs=2), ("epochs: 3\n", None), "epochs: --search-epochs 2 replaces 3 of "),
    (dict(final_epochs=8), (None, "epochs: 25\n"), "epochs: --final-epochs 8 replaces 25 of "),
    (dict(layers=5), ("layers: 8\n", None), "layers: the sweep's --layers 5 replaces 8 of "),
])
def test_a_flag_beside_a_yaml_value_wins_and_says_so(tmp_path, stages, flags, yaml, note):
    tune.run(sweep(tmp_path, *yaml, **flags))
    assert note in (tmp_path / "sweep" / "sweep.log").read_text()
    assert stages["epochs"]["search"] == flags.get("search_epochs", 3 if yaml[0] == "epochs: 3\n" else 50)


def test_a_used_sweep_folder_is_refused_unless_resumed_or_overwritten(tmp_path, stages):
    tune.run(sweep(tmp_path))
    with pytest.raises(ConfigError, match="is not empty .*--resume.*--overwrite"):
        tune.run(sweep(tmp_path))
    tune.run(sweep(tmp_path, resume=True))
    tune.run(sweep(tmp_path, overwrite=True))
    with RunFolderLock(tmp_path / "sweep"):  # a sweep running there
        with pytest.raises(ConfigError, match="is in use by"):
            tune.run(sweep(tmp_path, resume=True))


@pytest.mark.parametrize("search,retrain", [("cifar10_search", "cifar10_retrain"),
                                            ("imagenet_search", "imagenet_retrain")])
def test_the_example_configs_are_a_sweeps_stages(tmp_path, stages, search, retrain):
    """The README's and the ImageNet page's sweep commands: the launch YAMLs carry no key the sweep owns, and the
    ImageNet recipe's stem and subsets reach every search, the selection subset every selection retrain."""
    from pathlib import Path
    configs = Path(__file__).resolve().parents[1] / "launch" / "configs"
    tune.run(SweepConfig(dataset="digits", seeds="2", output=str(tmp_path / "sweep"),
                         search=str(configs / f"{search}.yaml"), retrain=str(configs / f"{retrain}.yaml"),
                         select_train_subset=0.1))
    first = stages["search"][0]
    assert stages["select"].train_subset == 0.1 and stages["final"].train_subset == 0.0
    if search == "imagenet_search":
        assert (first.stem, first.train_subset, first.arch_subset) == ("imagenet", 0.1, 0.025)
