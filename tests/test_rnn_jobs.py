"""The recurrent jobs end to end: search, retrain and evaluate from the CLI, on 2 gloo ranks, killed and resumed,
and every bad input as one line with exit code 2."""

import json
import math
import pickle
import subprocess
import sys

import pytest
import torch

from dist_darts.data.text import embedded_lines
from helpers import assert_same_state, checkpoint_step, cli, env_for_subprocess, kill_when, model_state, torchrun

TINY = ["--batch-size", "8", "--bptt", "20", "--emsize", "32", "--nhid", "32", "--log-interval", "5"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A small PTB-format folder of real text: the first lines of each split of the embedded corpus."""
    root = tmp_path_factory.mktemp("corpus")
    for split, lines in embedded_lines().items():
        keep = lines[:120] if split == "train" else lines[:25]
        (root / f"{split}.txt").write_text("".join(f" {line} \n" for line in keep))
    return root


def _data(corpus_dir):
    return ["--dataset", "text", "--data-dir", str(corpus_dir)]


def _one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_cli_search_then_retrain_then_evaluate(tmp_path, corpus_dir):
    search = tmp_path / "search"
    proc = cli("search", "--space", "rnn", *_data(corpus_dir), "--epochs", "1", *TINY, "--output", str(search))
    progress = [line for line in proc.stdout.splitlines() if " rnn_search 1/1 step " in line]
    assert progress and all("| loss " in line and " ppl " in line and "top1" not in line for line in progress)
    genotype = json.loads((search / "genotype.json").read_text())
    assert len(genotype["recurrent"]) == 8 and genotype["concat"] == list(range(1, 9))
    assert (search / "genotypes" / "epoch_000.json").is_file()

    retrain = tmp_path / "retrain"
    cli("retrain", "--space", "rnn", *_data(corpus_dir), "--genotype", str(search / "genotype.json"), "--epochs",
        "1", *TINY, "--learning-rate", "2", "--test-batch-size", "4", "--output", str(retrain))
    metrics = json.loads((retrain / "metrics.json").read_text())
    vocabulary = len({w for f in corpus_dir.iterdir() for w in f.read_text().split()}) + 1  # and <eos>
    for key in ("val_perplexity", "test_perplexity"):
        assert math.isfinite(metrics[key]) and metrics[key] < vocabulary, metrics
    assert metrics["params"] > 0

    evaluated = cli("evaluate", "--space", "rnn", "--checkpoint", str(retrain / "checkpoints" / "best.pt"),
                    "--batch-size", "4")
    out = json.loads((retrain / "evaluate" / "best" / "metrics.json").read_text())
    # float32 sums in another process (other buffer alignment): equal to float32 precision
    assert out["test_perplexity"] == pytest.approx(metrics["test_perplexity"], rel=1e-5)
    assert "test perplexity" in evaluated.stdout


@pytest.mark.slow
def test_two_gloo_ranks_keep_bit_identical_weights_and_alphas(tmp_path, corpus_dir):
    out = tmp_path / "run"
    # check_replicas compares every rank's weights and alphas bit for bit after each epoch and at the end; the
    # second-order step runs every part of the first-order one and the virtual step besides
    torchrun(2, "search", "--space", "rnn", *_data(corpus_dir), "--epochs", "2", "--steps-per-epoch", "4", *TINY,
             "--unrolled", "--output", str(out))
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and len(result["replica_digest"]) == 64
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]


# (arguments, epochs, killed once a checkpoint at or after (epoch, step) is written)
RESUMED = {  # second order only: its state is the first order's (the step differs, not what is checkpointed)
    "search-2nd": (["search", "--unrolled"], 2, (1, 2)),
    # the validation loss of epoch 5 is above epoch 3's: averaged SGD from epoch 6 on, killed inside it
    "retrain": (["retrain", "--test-batch-size", "4", "--nonmono", "1"], 6, (5, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("job", list(RESUMED))
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path, corpus_dir, job):
    job_args, epochs, kill_at = RESUMED[job]
    args = [*job_args, "--space", "rnn", *_data(corpus_dir), *TINY, "--epochs", str(epochs), "--steps-per-epoch",
            "5", "--checkpoint-steps", "1"]
    cli(*args, "--output", str(tmp_path / "straight"))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dist_darts", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for_subprocess())
    ckpt = out / "checkpoints" / "last.pt"
    kill_when(proc, lambda: (checkpoint_step(ckpt) or (0, 0)) >= kill_at)  # mid-epoch: hidden states carried
    epoch, step = checkpoint_step(ckpt)
    resumed = cli(*args, "--output", str(out), "--resume")
    assert f"resumed from {ckpt} at epoch {epoch} step {step}" in resumed.stdout
    assert_same_state(model_state(tmp_path / "straight"), model_state(out))
    straight, again = (json.loads((d / "history.json").read_text()) for d in (tmp_path / "straight", out))
    assert straight == again
    if job == "retrain":
        assert [row["optimizer"] for row in again] == ["sgd"] * 5 + ["asgd"]
        assert json.loads((out / "metrics.json").read_text())["test_perplexity"] == \
            json.loads((tmp_path / "straight" / "metrics.json").read_text())["test_perplexity"]


def test_bad_inputs_are_one_line(tmp_path, corpus_dir):
    run = ["--output", str(tmp_path / "run")]
    missing = tmp_path / "empty"
    missing.mkdir()
    _one_line_error(cli("search", "--space", "rnn", "--dataset", "ptb", "--data-dir", str(missing), *TINY,
                        *run, check=False), "train.txt")
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "valid", "test"):
        (bad / f"{split}.txt").write_bytes(b"\xff\xfe not utf-8 \x80\n")
    _one_line_error(cli("retrain", "--space", "rnn", "--dataset", "text", "--data-dir", str(bad), *TINY,
                        *run, check=False), "UTF-8")
    _one_line_error(cli("search", "--space", "rnn", "--dataset", "text", *TINY, *run, check=False), "data-dir")
    _one_line_error(cli("search", "--space", "rnn", "--emsize", "32", "--nhid", "16", *run, check=False), "emsize")
    _one_line_error(cli("search", "--space", "rnn", "--bptt", "0", *run, check=False), "bptt")
    _one_line_error(cli("retrain", "--space", "rnn", "--dropout", "1.5", *run, check=False), "dropout")
    _one_line_error(cli("retrain", "--space", "rnn", *_data(corpus_dir), "--genotype", "DARTS_V2", *TINY,
                        *run, check=False), "convolutional")
    proc = cli("search", "--space", "rnn", "--layers", "3", *run, check=False)  # argparse: usage, then the error
    assert proc.returncode == 2 and "unrecognized arguments: --layers" in proc.stderr, proc.stderr
    _one_line_error(cli("evaluate", "--space", "rnn", "--checkpoint", str(tmp_path / "none.pt"), *run, check=False),
                    "does not exist")


class Boom:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('x')",))


def test_a_crafted_pickled_model_is_refused_without_running_it(tmp_path):
    path = tmp_path / "ptb_model.pt"
    torch.save({"model": Boom(tmp_path / "PWNED")}, path, pickle_module=pickle)
    proc = cli("evaluate", "--space", "rnn", "--checkpoint", str(path), "--dataset", "pydoc",
               "--output", str(tmp_path / "eval"), check=False)
    _one_line_error(proc, "refused")
    assert not (tmp_path / "PWNED").exists()
