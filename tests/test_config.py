import argparse

import pytest

from dist_darts import config
from dist_darts.config import ConfigError, RetrainConfig, SearchConfig


def _parse(cls, argv):
    p = argparse.ArgumentParser()
    config.add_arguments(p, cls)
    return config.from_args(cls, p.parse_args(argv))


def test_search_defaults_are_the_papers():
    c = SearchConfig(data_dir="/d")
    assert (c.layers, c.init_channels, c.batch_size, c.epochs, c.train_portion) == (8, 16, 64, 50, 0.5)
    assert (c.learning_rate, c.learning_rate_min, c.momentum, c.weight_decay, c.grad_clip) == (0.025, 0.001, 0.9, 3e-4, 5)
    assert (c.arch_learning_rate, c.arch_beta1, c.arch_beta2, c.arch_weight_decay) == (3e-4, 0.5, 0.999, 1e-3)
    assert not c.unrolled and c.partial_channels == 1


def test_retrain_defaults_and_imagenet_preset():
    c = RetrainConfig(data_dir="/d")
    assert (c.layers, c.init_channels, c.batch_size, c.epochs, c.cutout, c.drop_path_prob) == (20, 36, 96, 600, 16, 0.2)
    assert c.auxiliary and c.auxiliary_weight == 0.4 and c.grad_clip == 5
    i = config.build(RetrainConfig, {}, {"dataset": "imagenet", "data_dir": "/d"})
    assert (i.layers, i.init_channels, i.batch_size, i.learning_rate, i.weight_decay) == (14, 48, 128, 0.1, 3e-5)
    assert (i.lr_schedule, i.lr_decay, i.label_smoothing, i.epochs) == ("step", 0.97, 0.1, 250)


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("dataset: digits\nepochs: 7\nlayers: 5\ninit-channels: 8\nunrolled: true\n")
    c = _parse(SearchConfig, ["--config", str(y), "--epochs", "3", "--arch_learning_rate", "0.01"])
    assert (c.dataset, c.epochs, c.layers, c.init_channels, c.unrolled, c.arch_learning_rate) == \
        ("digits", 3, 5, 8, True, 0.01)
    c = _parse(SearchConfig, ["--config", str(y), "--no-unrolled", "--train_portion", "0.6"])
    assert not c.unrolled and c.train_portion == 0.6


def test_original_flag_spellings():
    c = _parse(RetrainConfig, ["--dataset", "digits", "--cutout", "--auxiliary", "--drop_path_prob", "0.3"])
    assert c.cutout == 16 and c.auxiliary and c.drop_path_prob == 0.3
    assert _parse(RetrainConfig, ["--dataset", "digits", "--cutout", "0", "--no-auxiliary"]).cutout == 0


def test_save_round_trip(tmp_path):
    c = config.build(SearchConfig, {}, {"dataset": "digits", "epochs": 2})
    config.save(c, str(tmp_path / "config.yaml"))
    assert config.build(SearchConfig, config.load_yaml(str(tmp_path / "config.yaml"))) == c


@pytest.mark.parametrize("yaml_text,message", [
    ("dataset: digits\nepoch: 3\n", "unknown key 'epoch'"),
    ("dataset: digits\nepochs: three\n", "epochs .*needs a int, got 'three'"),
    ("dataset: digits\nunrolled: maybe\n", "unrolled .*needs true or false"),
    ("dataset: digits\nbatch-size: 0\n", "batch-size: must be >= 1"),
    ("dataset: digits\ntrain-portion: 1.5\n", "train-portion: must be between 0 and 1"),
    ("dataset: mnist\n", "dataset .*'mnist' is not one of"),
    ("dataset: cifar10\n", "data-dir: the cifar10 data set needs --data-dir"),
    ("- a\n- b\n", "expected a mapping"),
    ("dataset: [digits\n", "bad YAML"),
    ("dataset: digits\nlearning-rate: .nan\n", "learning-rate: needs a finite number, got nan"),
    ("dataset: digits\ngrad-clip: .inf\n", "grad-clip: needs a finite number, got inf"),
    ("dataset: digits\nweight-decay: nan\n", "weight-decay: needs a finite number, got nan"),
    ("dataset: digits\nepochs: true\n", "epochs .*needs a int, got True"),
    ("dataset: digits\nmomentum: -5\n", r"momentum: must be in \[0, 1\), got -5.0"),
    ("dataset: digits\narch-learning-rate: -1\n", "arch-learning-rate: must be > 0, got -1.0"),
    ("dataset: digits\narch-beta1: 1.5\n", r"arch-beta1: must be in \[0, 1\), got 1.5"),
    ("dataset: digits\nprecision: fp16\n", "precision .*'fp16' is not one of auto, fp32, bf16"),
])
def test_bad_config(tmp_path, yaml_text, message):
    y = tmp_path / "c.yaml"
    y.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as info:
        _parse(SearchConfig, ["--config", str(y)])
    assert "\n" not in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        _parse(SearchConfig, ["--config", "/nonexistent.yaml"])


@pytest.mark.parametrize("name,cls", [("cifar10_search.yaml", SearchConfig), ("demo_cpu_search.yaml", SearchConfig),
                                      ("cifar10_retrain.yaml", RetrainConfig), ("imagenet_retrain.yaml", RetrainConfig),
                                      ("demo_cpu_retrain.yaml", RetrainConfig)])
def test_example_configs_are_valid(name, cls):
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "launch" / "configs" / name
    c = config.build(cls, config.load_yaml(str(path)), source=str(path))
    if name.startswith("cifar10_search"):
        assert c == config.build(SearchConfig, {}, {"data_dir": "data/cifar10"})


def test_the_sweep_hands_the_search_method_on_without_a_yaml():
    sweep = _parse(config.SweepConfig, ["--dataset", "digits", "--unrolled", "--partial-channels", "4", "--layers", "5"])
    search = config.build(SearchConfig, sweep.passed_on(SearchConfig), source="sweep search settings")
    assert (search.unrolled, search.partial_channels, search.layers) == (True, 4, 5)
    assert "unrolled" not in sweep.passed_on(RetrainConfig)  # only fields a retrain has reach it
    unset = config.build(SearchConfig, _parse(config.SweepConfig, ["--dataset", "digits"]).passed_on(SearchConfig))
    assert not unset.unrolled and unset.partial_channels == 1  # unset flags keep the search's defaults


def test_the_sweep_hands_the_stopping_rule_and_the_large_image_settings_on():
    sweep = _parse(config.SweepConfig, ["--dataset", "digits", "--hessian-every", "2", "--early-stop", "eigenvalue",
                                        "--eigenvalue-window", "3", "--eigenvalue-delta", "2", "--eigenvalue-factor",
                                        "1.5", "--eigenvalue-start-epoch", "4", "--stem", "imagenet",
                                        "--train-subset", "0.5", "--arch-subset", "0.2"])
    search = config.build(SearchConfig, sweep.passed_on(SearchConfig), source="sweep search settings")
    assert (search.eigenvalue_window, search.eigenvalue_delta, search.eigenvalue_factor,
            search.eigenvalue_start_epoch) == (3, 2, 1.5, 4)
    assert (search.stem, search.train_subset, search.arch_subset) == ("imagenet", 0.5, 0.2)
    assert not {"stem", "train_subset", "eigenvalue_window"} & set(sweep.passed_on(RetrainConfig))


def test_resume_needs_a_run_folder():
    """Without --output every start makes a new dated folder: a torchrun restart would silently start over."""
    with pytest.raises(config.ConfigError, match="resume: needs --output"):
        SearchConfig(dataset="digits", resume=True)
    assert SearchConfig(dataset="digits", resume=True, output="runs/s").resume


def test_recurrent_jobs_take_a_fresh_dated_folder_and_overwrite_like_the_others():
    from dist_darts.spaces.rnn.config import RecurrentRetrainConfig, RecurrentSearchConfig
    for cls, kind in ((RecurrentSearchConfig, "rnn_search"), (RecurrentRetrainConfig, "rnn_retrain")):
        c = cls(dataset="pydoc")
        assert c.output is None and c.run_kind == kind and cls(dataset="pydoc", overwrite=True).overwrite
        with pytest.raises(config.ConfigError, match="resume: needs --output"):
            cls(dataset="pydoc", resume=True)


def test_a_sweep_with_a_method_leaves_its_settings_to_the_searches():
    """`sweep --method fair-darts`: the searches get FairDARTS's settings where not given; the retrains never see
    its batch (the sweep itself once took them and crashed)."""
    sweep = _parse(config.SweepConfig, ["--dataset", "digits", "--method", "fair-darts"])
    search = config.build(SearchConfig, sweep.passed_on(SearchConfig), source="sweep search settings")
    assert (search.batch_size, search.learning_rate, search.arch_beta1) == (128, 0.005, 0.9)
    assert "batch_size" not in sweep.passed_on(RetrainConfig)
    yaml_sweep = config.build(config.SweepConfig, {"method": "drnas", "dataset": "digits"}, source="sweep.yaml")
    assert yaml_sweep.method == "drnas" and yaml_sweep.batch_size is None
