"""Recurrent DARTS: the language models of the original code's ``rnn/`` half (Penn Treebank, WikiText-2).

``RNNModel`` runs a discrete recurrent cell (a ``RecurrentGenotype``), ``RNNModelSearch`` the continuous
relaxation over ``RNN_PRIMITIVES``. Constructor arguments, module and parameter names and the initialisation
(including the order of random draws) follow the original ``rnn/model.py`` and ``rnn/model_search.py``, so their
state dicts load with ``strict=True`` (the search network's alphas are one registered parameter, ``alphas``).
``forward(input, hidden)`` takes int64 token ids of shape (seq_len, batch) and a list of one (1, batch, nhid)
hidden state, and returns per-token log-probabilities (seq_len, batch, ntoken) and the new hidden list.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .genotype import (RNN_DARTS_V2, RNN_NUM_EDGES, RNN_PRIMITIVES, RNN_STEPS, RecurrentGenotype,
                       derive_recurrent, load_recurrent)

INITRANGE = 0.04  # every weight starts uniform in (-INITRANGE, INITRANGE), as in the original


def _identity(x):
    return x


ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": _identity}


def embedded_dropout(embed: nn.Embedding, words: torch.Tensor, dropout: float) -> torch.Tensor:
    """Embedding lookup that drops whole words: each vocabulary row is zeroed with probability `dropout` (the
    same rows at every position of the batch), the kept rows scaled by 1 / (1 - dropout)."""
    if not dropout:
        return F.embedding(words, embed.weight)
    keep = embed.weight.new_empty((embed.weight.size(0), 1)).bernoulli_(1 - dropout) / (1 - dropout)
    # the mask's rows picked per token scale the looked-up rows: the original's masked matrix, without building it
    return F.embedding(words, embed.weight) * F.embedding(words, keep)


def locked_dropout(x: torch.Tensor, dropout: float, training: bool) -> torch.Tensor:
    """Variational dropout of a (seq_len, batch, features) tensor: one mask per sequence, the same at every step."""
    if not training or not dropout:
        return x
    mask = x.new_empty((1, x.size(1), x.size(2))).bernoulli_(1 - dropout).div_(1 - dropout)
    return x * mask


def _step_mask(batch: int, features: int, keep_prob: float, like: torch.Tensor) -> torch.Tensor:
    """A (batch, features) Bernoulli(keep_prob) mask scaled by 1 / keep_prob, drawn as the original's mask2d."""
    return torch.floor(torch.rand(batch, features, dtype=like.dtype, device=like.device) + keep_prob).div_(keep_prob)


def detach_hidden(hidden: list) -> list:
    """The hidden state cut from the graph that produced it (truncated backpropagation through time)."""
    return [h.detach() for h in hidden]


class DARTSCell(nn.Module):
    """The recurrent cell of a genotype: node i applies its activation to its input state through ``_Ws[i]``."""

    def __init__(self, ninp: int, nhid: int, dropouth: float, dropoutx: float, genotype: RecurrentGenotype | None):
        super().__init__()
        self.nhid = nhid
        self.dropouth = dropouth
        self.dropoutx = dropoutx
        self.genotype = genotype
        steps = RNN_STEPS if genotype is None else len(genotype.recurrent)
        self._W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INITRANGE, INITRANGE))
        self._Ws = nn.ParameterList(
            nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INITRANGE, INITRANGE)) for _ in range(steps))

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor, *cell_args):
        """inputs (T, B, ninp), hidden (1, B, nhid) -> all hidden states (T, B, nhid) and the last (1, B, nhid)."""
        T, B, ninp = inputs.shape
        h = hidden[0]
        if self.training:
            x_mask = _step_mask(B, ninp, 1.0 - self.dropoutx, inputs)
            h_mask = _step_mask(B, h.size(1), 1.0 - self.dropouth, inputs)
            inputs = inputs * x_mask
        else:
            h_mask = None
        # the input half of the first projection for all steps in one matrix product; the recurrent half per step
        x_proj = inputs.reshape(T * B, ninp).mm(self._W0[:ninp]).view(T, B, 2 * self.nhid)
        w_h = self._W0[ninp:]
        cell_args = self.prepare(*cell_args)
        outputs = []
        for x_t in x_proj.unbind(0):  # unbind: one gradient copy for all steps, where indexing makes one each
            h = self.cell(x_t, h, h_mask, w_h, *cell_args)
            outputs.append(h)
        outputs = torch.stack(outputs)
        return outputs, outputs[-1].unsqueeze(0)

    def prepare(self, *cell_args) -> tuple:
        """What the cell needs at every time step, computed once per sequence."""
        return cell_args

    def _init_state(self, x_proj, h_prev, h_mask, w_h):
        c0, h0 = torch.addmm(x_proj, h_prev if h_mask is None else h_prev * h_mask, w_h).split(self.nhid, dim=-1)
        return h_prev + c0.sigmoid() * (h0.tanh() - h_prev)

    def cell(self, x_proj, h_prev, h_mask, w_h):
        states = [self._init_state(x_proj, h_prev, h_mask, w_h)]
        masked = {}  # a state read by several nodes is masked once
        for i, (name, pred) in enumerate(self.genotype.recurrent):
            s_prev = states[pred]
            if h_mask is None:
                s_in = s_prev
            else:
                s_in = masked.get(pred)
                if s_in is None:
                    s_in = masked[pred] = s_prev * h_mask
            c, h = s_in.mm(self._Ws[i]).split(self.nhid, dim=-1)
            states.append(s_prev + c.sigmoid() * (ACTIVATIONS[name](h) - s_prev))
        return torch.stack([states[i] for i in self.genotype.concat]).mean(0)


class DARTSCellSearch(DARTSCell):
    """The search cell: node i mixes every earlier state under every activation, weighted by softmax(alphas);
    batch normalisation without affine parameters after the initial state and after every node."""

    def __init__(self, ninp: int, nhid: int, dropouth: float, dropoutx: float):
        super().__init__(ninp, nhid, dropouth, dropoutx, genotype=None)
        self.bn = nn.BatchNorm1d(nhid, affine=False)

    def prepare(self, probs):
        """Per node, its (inputs, 1, 1) weights of each activation and their total (the 'none' weight left out)."""
        op_probs = probs[:, 1:]  # columns: tanh, relu, sigmoid, identity (RNN_PRIMITIVES order)
        total = op_probs.sum(-1)
        per_node, offset = [], 0
        for i in range(RNN_STEPS):
            edges = slice(offset, offset + i + 1)
            per_node.append((op_probs[edges].t().reshape(-1, i + 1, 1, 1).unbind(0), total[edges].view(-1, 1, 1)))
            offset += i + 1
        return (per_node,)

    def cell(self, x_proj, h_prev, h_mask, w_h, per_node):
        s0 = self.bn(self._init_state(x_proj, h_prev, h_mask, w_h))
        states = s0.unsqueeze(0)
        masked = states if h_mask is None else states * h_mask
        B, nhid = s0.shape
        # sum over activations k of p_k * (s + c * (f_k(h) - s)) = P * s + c * (sum_k p_k f_k(h) - P * s),
        # P = sum_k p_k: the original's four blended terms folded into one (same value, far fewer tensor ops)
        for i, ((p_tanh, p_relu, p_sigmoid, p_identity), total) in enumerate(per_node):
            c, h = masked.reshape(-1, nhid).mm(self._Ws[i]).view(i + 1, B, 2 * nhid).split(nhid, dim=-1)
            mixed = p_tanh * h.tanh() + p_relu * h.relu() + p_sigmoid * h.sigmoid() + p_identity * h
            held = total * states
            s = self.bn((held + c.sigmoid() * (mixed - held)).sum(0))
            states = torch.cat([states, s.unsqueeze(0)])
            masked = states if h_mask is None else torch.cat([masked, (s * h_mask).unsqueeze(0)])
        return states[1:].mean(0)


class RNNModel(nn.Module):
    """Embedding, one recurrent cell, a decoder tied to the embedding; log-probabilities out."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nhidlast: int, dropout: float = 0.5,
                 dropouth: float = 0.5, dropoutx: float = 0.5, dropouti: float = 0.5, dropoute: float = 0.1,
                 genotype=RNN_DARTS_V2):
        super().__init__()
        if not ninp == nhid == nhidlast:
            raise ValueError(f"the recurrent cell needs ninp == nhid == nhidlast (tied weights), got "
                             f"{ninp}, {nhid}, {nhidlast}")
        # construction order fixes the order of random draws: the original's, so a seed gives its weights
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnns = nn.ModuleList([self._make_cell(ninp, nhid, dropouth, dropoutx, genotype)])
        self.decoder = nn.Linear(ninp, ntoken)
        self.decoder.weight = self.encoder.weight
        self.encoder.weight.data.uniform_(-INITRANGE, INITRANGE)
        self.decoder.bias.data.zero_()
        self.decoder.weight.data.uniform_(-INITRANGE, INITRANGE)
        self.ntoken, self.ninp, self.nhid, self.nhidlast = ntoken, ninp, nhid, nhidlast
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute

    def _make_cell(self, ninp, nhid, dropouth, dropoutx, genotype):
        return DARTSCell(ninp, nhid, dropouth, dropoutx, load_recurrent(genotype))

    def _cell_args(self) -> tuple:
        return ()

    def forward(self, input: torch.Tensor, hidden: list, return_h: bool = False):
        """(seq_len, batch) token ids -> (log_prob (seq_len, batch, ntoken), [hidden (1, batch, nhid)]).

        With ``return_h`` also the cell's outputs before and after the output dropout, each as a list of one
        (seq_len, batch, nhid) tensor: what activation regularisation (alpha, beta) needs, as the original.
        """
        batch = input.size(1)
        emb = embedded_dropout(self.encoder, input, self.dropoute if self.training else 0)
        emb = locked_dropout(emb, self.dropouti, self.training)
        raw_output, new_hidden = self.rnns[0](emb, hidden[0], *self._cell_args())
        output = locked_dropout(raw_output, self.dropout, self.training)
        logits = self.decoder(output.reshape(-1, self.ninp))
        log_prob = F.log_softmax(logits, dim=-1).view(-1, batch, self.ntoken)
        if return_h:
            return log_prob, [new_hidden], [raw_output], [output]
        return log_prob, [new_hidden]

    def init_hidden(self, bsz: int) -> list:
        weight = self.encoder.weight
        return [weight.new_zeros(1, bsz, self.nhid)]


class RNNModelSearch(RNNModel):
    """The recurrent supernet; ``arch_parameters()[0]`` is the (36, 5) alpha tensor in RNN_PRIMITIVES order."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nhidlast: int, dropout: float = 0.5,
                 dropouth: float = 0.5, dropoutx: float = 0.5, dropouti: float = 0.5, dropoute: float = 0.1):
        super().__init__(ntoken, ninp, nhid, nhidlast, dropout, dropouth, dropoutx, dropouti, dropoute,
                         genotype=None)
        self.alphas = nn.Parameter(torch.randn(RNN_NUM_EDGES, len(RNN_PRIMITIVES)).mul_(1e-3))

    def _make_cell(self, ninp, nhid, dropouth, dropoutx, genotype):
        return DARTSCellSearch(ninp, nhid, dropouth, dropoutx)

    def _cell_args(self) -> tuple:
        return (F.softmax(self.alphas, dim=-1),)

    def arch_parameters(self) -> list:
        return [self.alphas]

    def arch_parameter_names(self) -> list:
        return ["alphas"]

    def weights(self) -> list:
        return [p for name, p in self.named_parameters() if name != "alphas"]

    def named_weights(self) -> list:
        return [(name, p) for name, p in self.named_parameters() if name != "alphas"]

    def genotype(self) -> RecurrentGenotype:
        return derive_recurrent(self.alphas)
