"""Text corpora for the recurrent space: tokenisation, batches, rank shards, the sequence-length schedule,
the embedded corpus, downloads from a real local HTTP server, and one-line errors."""

import functools
import http.server
import threading
import zipfile

import numpy as np
import pytest
import torch

from dist_darts.data import text
from dist_darts.data.datasets import DataError


def write_folder(root, train="a b c\nb c d\n", valid="d a\n", test="e\n\na"):
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{name}.txt").write_text(content, encoding="utf-8")
    return root


def test_tokenisation_follows_the_original(tmp_path):
    corpus = text.load_text("text", str(write_folder(tmp_path / "c")))
    d = corpus.dictionary
    # numbered over train, valid, test in order; every line (the last one without a newline, a blank one) ends <eos>
    assert d.idx2word == ["a", "b", "c", "<eos>", "d", "e"]
    assert corpus.train.tolist() == [0, 1, 2, 3, 1, 2, 4, 3]
    assert corpus.valid.tolist() == [4, 0, 3] and corpus.test.tolist() == [5, 3, 3, 0, 3]
    assert corpus.train.dtype == torch.int64 and d.total == 16 and d.counter[d.word2idx["<eos>"]] == 6
    assert corpus.name == "text"


def test_batchify_makes_one_contiguous_stream_per_column():
    data = torch.arange(23)
    b = text.batchify(data, 4)
    assert b.shape == (5, 4) and b.is_contiguous()
    for j in range(4):
        assert b[:, j].tolist() == list(range(5 * j, 5 * j + 5))
    with pytest.raises(DataError, match="cannot fill 4 columns"):
        text.batchify(torch.arange(7), 4)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_shards_are_disjoint_contiguous_column_slices_covering_the_batch(world_size):
    b = text.batchify(torch.arange(800), 8)
    shards = [text.shard_columns(b, r, world_size) for r in range(world_size)]
    assert all(s.shape == (100, 8 // world_size) for s in shards)
    assert torch.equal(torch.cat(shards, dim=1), b)
    seen = torch.cat([s.reshape(-1) for s in shards])
    assert len(set(seen.tolist())) == seen.numel() == 800


def test_shards_need_a_divisible_batch():
    with pytest.raises(DataError, match="6 streams does not split over 4 ranks"):
        text.shard_columns(text.batchify(torch.arange(60), 6), 0, 4)


def test_get_batch_targets_are_the_next_rows_cut_at_the_end():
    source = text.batchify(torch.arange(40), 2)  # 20 rows
    x, y = text.get_batch(source, 3, 5)
    assert torch.equal(x, source[3:8]) and torch.equal(y, source[4:9])
    x, y = text.get_batch(source, 16, 35)
    assert x.shape[0] == y.shape[0] == 3 and y[-1].tolist() == source[-1].tolist()


def test_sequence_lengths_follow_the_original_rules():
    rows = 200_000
    variable = [n for _, n in text.epoch_schedule(rows, 35, 0, 0, variable=True)]
    assert min(variable) >= 5 and max(variable) <= 35 + 20
    assert 30 < np.mean(variable) < 35
    fixed = [n for _, n in text.epoch_schedule(rows, 35, 0, 0, variable=False)]
    assert set(fixed) == {35, 17}
    assert 0.035 < fixed.count(17) / len(fixed) < 0.065  # halved with probability 0.05
    starts = [i for i, _ in text.epoch_schedule(rows, 35, 0, 0, variable=True)]
    assert starts[0] == 0 and all(b - a == n for (a, n), b in zip(
        text.epoch_schedule(rows, 35, 0, 0, True), starts[1:]))
    assert starts[-1] < rows - 2


def test_schedule_is_the_same_on_every_rank_and_a_function_of_seed_and_epoch():
    # two simulated ranks, each after consuming the global RNGs differently, draw the same lengths
    np.random.seed(1)
    torch.manual_seed(1)
    rank0 = text.epoch_schedule(5000, 35, seed=3, epoch=2, variable=True)
    np.random.random(17)
    torch.rand(5)
    rank1 = text.epoch_schedule(5000, 35, seed=3, epoch=2, variable=True)
    assert rank0 == rank1
    assert text.epoch_schedule(5000, 35, 3, 3, True) != rank0
    assert text.epoch_schedule(5000, 35, 4, 2, True) != rank0


def test_search_batches_resume_at_a_step_and_ranks_stay_in_step():
    corpus = torch.arange(20_000) % 997
    train, valid = text.batchify(corpus, 8), text.batchify(corpus[:3000], 8)
    full = list(text.search_batches(train, valid, 35, seed=0, epoch=1))
    tail = list(text.search_batches(train, valid, 35, seed=0, epoch=1, start_step=7))
    assert [b.step for b in tail] == list(range(7, len(full)))
    for a, b in zip(full[7:], tail):
        assert a.seq_len == b.seq_len
        assert all(torch.equal(u, v) for u, v in zip(a.train + a.valid, b.train + b.valid))
    # validation rows wrap around as i mod (rows - 1); a full bptt of them unless cut at the end
    i = sum(b.seq_len for b in full[:12])
    assert torch.equal(full[12].valid[0], text.get_batch(valid, i % (valid.size(0) - 1), 35)[0])
    # two ranks: same steps and lengths, each on its own columns
    shards = [[text.shard_columns(t, r, 2) for t in (train, valid)] for r in range(2)]
    per_rank = [list(text.search_batches(*s, 35, seed=0, epoch=1)) for s in shards]
    assert [b.seq_len for b in per_rank[0]] == [b.seq_len for b in per_rank[1]] == [b.seq_len for b in full]
    for step in (0, 5):
        assert torch.equal(torch.cat([per_rank[0][step].train[0], per_rank[1][step].train[0]], 1),
                           full[step].train[0])


def test_train_and_eval_batches():
    source = text.batchify(torch.arange(4000), 4)
    batches = list(text.train_batches(source, 35, seed=0, epoch=0))
    assert [s for s, _, _ in batches] == list(range(len(batches)))
    assert list(text.train_batches(source, 35, 0, 0, start_step=3))[0][1] == batches[3][1]
    evals = list(text.eval_batches(source, 35))
    assert sum(x.shape[0] for x, _ in evals) == source.size(0) - 1
    assert all(x.shape[0] == 35 for x, _ in evals[:-1])


def test_embedded_corpus_is_real_english_and_deterministic(tmp_path):
    a, b = text.embedded_corpus(), text.load_text("pydoc")
    assert a.dictionary.idx2word == b.dictionary.idx2word
    assert all(torch.equal(getattr(a, s), getattr(b, s)) for s in text.SPLITS)
    assert 40_000 < len(a.train) < 80_000 and 4_000 < len(a.valid) < 10_000 and 4_000 < len(a.test) < 10_000
    assert 1_500 < len(a.dictionary) < 4_000
    words = a.dictionary.word2idx
    for w in ("the", "<eos>", "<unk>", "N", "statement", "function"):
        assert w in words
    top = [a.dictionary.idx2word[i] for i, _ in a.dictionary.counter.most_common(3)]
    assert top[0] == "the"
    # written out as a text folder and read back, it is tokenised the same way
    c = text.load_text("text", text.write_embedded(str(tmp_path / "pydoc")))
    assert c.dictionary.idx2word == a.dictionary.idx2word and torch.equal(c.train, a.train)


@pytest.mark.parametrize("damage,message", [
    (lambda root: (root / "valid.txt").unlink(), r"has no valid.txt \(a text corpus folder holds"),
    (lambda root: (root / "test.txt").write_bytes(b"caf\xe9\n"), "test.txt is not UTF-8 text"),
    (lambda root: (root / "train.txt").write_text("\n  \n"), "train.txt has no words"),
])
def test_bad_folders_give_one_line(tmp_path, damage, message):
    root = write_folder(tmp_path / "c")
    damage(root)
    with pytest.raises(DataError, match=message) as info:
        text.load_text("ptb", str(root))
    assert "\n" not in str(info.value)


def test_bad_names_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="unknown text dataset 'penn'"):
        text.load_text("penn", str(tmp_path))
    with pytest.raises(DataError, match="no data directory given"):
        text.load_text("wt2", None)
    with pytest.raises(DataError, match="pass --download"):
        text.load_text("ptb", str(tmp_path / "none"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on localhost serving a folder; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_ptb_files_and_wt2_zip(tmp_path, http_dir):
    served, url = http_dir
    for s in text.SPLITS:
        (served / f"ptb.{s}.txt").write_text(f" {s} words here \n")
    with zipfile.ZipFile(served / "wikitext-2-v1.zip", "w") as z:
        for s in text.SPLITS:
            z.writestr(f"wikitext-2/wiki.{s}.tokens", f" = {s} = \n")
    ptb = [("files", {f"{s}.txt": f"{url}/ptb.{s}.txt" for s in text.SPLITS})]
    text.fetch("ptb", str(tmp_path / "ptb"), ptb, timeout=5)
    assert (tmp_path / "ptb" / "valid.txt").read_text() == " valid words here \n"
    # the first source fails (404), the second answers
    wt2 = [("zip", f"{url}/missing.zip", {}), ("zip", f"{url}/wikitext-2-v1.zip",
                                               {f"{s}.txt": f"wikitext-2/wiki.{s}.tokens" for s in text.SPLITS})]
    text.fetch("wt2", str(tmp_path / "wt2"), wt2, timeout=5)
    corpus = text.read_folder("wt2", str(tmp_path / "wt2"))
    assert corpus.dictionary.idx2word == ["=", "train", "<eos>", "valid", "test"]


def test_download_without_a_network_is_one_line(tmp_path, http_dir):
    _, url = http_dir
    sources = [("files", {"train.txt": f"{url}/nothing.txt"}), ("files", {"train.txt": "http://127.0.0.1:9/x"})]
    with pytest.raises(DataError, match="downloading to .* failed .*put train.txt, valid.txt and test.txt") as e:
        text.fetch("ptb", str(tmp_path / "ptb"), sources, timeout=5)
    assert "\n" not in str(e.value) and not (tmp_path / "ptb").exists()
    with pytest.raises(DataError, match="cannot be downloaded"):
        text.fetch("text", str(tmp_path / "t"))
    assert set(text.DOWNLOADS) == {"ptb", "wt2"}


def test_unigram_baseline_lies_between_a_perfect_and_a_uniform_guess():
    corpus = text.embedded_corpus()
    ntoken = len(corpus.dictionary)
    baseline = text.unigram_perplexity(corpus.train, corpus.test, ntoken)
    assert 100 < baseline < ntoken / 4
    assert text.unigram_perplexity(torch.zeros(50, dtype=torch.int64), torch.zeros(5, dtype=torch.int64), 2) == \
        pytest.approx(52 / 51)
    uniform = text.unigram_perplexity(torch.arange(10), torch.arange(10), 10)
    assert uniform == pytest.approx(10.0)
