"""What the Pyro model and the shared fit loop cost an RNN: our ``RecurrentModel``
trained by ``inference.fit.fit`` against a plain-PyTorch training loop of the
same network, from the same initial weights, on the same data, for the same
wall time, each on one CPU thread.

Data: Tiny Shakespeare (first 90% train, last 10% validation), the training
text cut into sequences of 128 characters, mini-batches of 64, Adam with
learning rate 2e-3, an embedding of 64 and one layer of 256 units (the issue's
reference setting). Both are scored exactly on the whole validation text (one
sequence) after training. The goal: ours within 2% of plain PyTorch in
validation nats per character.

The plain loop minimises the mean cross-entropy per character with
``torch.optim.Adam`` and ``clip_grad_norm_(10)``; ours minimises the ELBO
(``-log p`` of a mini-batch scaled to the full data) with Pyro's
``ClippedAdam``, clipping at norm 10, through the same loop every model in the
zoo uses. Runs one after the other; the machine's load average is printed with
each, because a busy machine makes wall-time comparisons noisy.

Run by hand::

    SEQZOO_SHARED_DATA=../shared/data python benchmarks/rnn_overhead.py              # 60 s each, LSTM
    python benchmarks/rnn_overhead.py --seconds 300 --cell gru --data PATH
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.fit import fit
from inference.scoring import score
from zoo.data import load_data, split_data
from zoo.rnn import RecurrentModel


def default_data_path() -> Path:
    shared = os.environ.get("SEQZOO_SHARED_DATA")
    root = Path(shared) if shared else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return root / "tinyshakespeare.txt"


class PlainNetwork(nn.Module):
    """The same next-character network in plain PyTorch: x_1 is predicted from
    a learned initial state, x_{t+1} from the state after reading x_t."""

    def __init__(self, source: RecurrentModel) -> None:
        super().__init__()
        self.embedding = copy.deepcopy(source.embedding)
        self.rnn = copy.deepcopy(source.rnn)
        self.output = copy.deepcopy(source.output)
        self.initial_hidden = nn.Parameter(source.initial_hidden.detach().clone())
        self.initial_cell = (
            nn.Parameter(source.initial_cell.detach().clone()) if source.initial_cell is not None else None
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, T, V)`` logits of each step given the steps before it."""
        n = codes.shape[0]
        hidden = self.initial_hidden.unsqueeze(1).expand(-1, n, -1).contiguous()
        state = (
            hidden
            if self.initial_cell is None
            else (hidden, self.initial_cell.unsqueeze(1).expand(-1, n, -1).contiguous())
        )
        outputs, _ = self.rnn(self.embedding(codes[:, :-1]), state)
        return self.output(torch.cat([hidden[-1].unsqueeze(1), outputs], 1))


def train_plain(network: PlainNetwork, chunks, args) -> tuple[int, float]:
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(0)
    values, mask = chunks.values, chunks.mask
    steps, start = 0, time.perf_counter()
    network.train()
    while time.perf_counter() - start < args.seconds:
        order = torch.randperm(len(values), generator=generator)
        for begin in range(0, len(order), args.batch_size):
            index = order[begin : begin + args.batch_size]
            codes, real = values[index], mask[index]
            logits = network(codes)
            loss = F.cross_entropy(logits[real], codes[real])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 10.0)
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= args.seconds:
                break
    return steps, time.perf_counter() - start


def plain_valid_nats(network: PlainNetwork, valid) -> float:
    network.eval()
    with torch.no_grad():
        codes = valid.values[:, : int(valid.lengths[0])]
        return float(F.cross_entropy(network(codes)[0], codes[0], reduction="mean"))


def interleaved_step_seconds(
    model: RecurrentModel, plain: PlainNetwork, chunks, args, repeats: int = 5
) -> tuple[float, float]:
    """Median seconds of one training step (loss, backward, clipping, Adam) of each,
    alternating ours and plain so both see the same machine load."""
    import statistics

    from pyro.infer import Trace_ELBO
    from pyro.optim.clipped_adam import ClippedAdam

    model, plain = copy.deepcopy(model).train(), copy.deepcopy(plain).train()
    batch = chunks[: args.batch_size].with_population(len(chunks))
    codes = batch.values
    elbo = Trace_ELBO()
    ours_parameters = list(model.parameters())
    ours_optimizer = ClippedAdam(ours_parameters, lr=args.lr, clip_norm=10.0)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=args.lr)

    def ours_step():
        ours_optimizer.zero_grad(set_to_none=True)
        elbo.differentiable_loss(model.model, model.guide, batch).backward()
        torch.nn.utils.clip_grad_norm_(ours_parameters, 10.0)
        ours_optimizer.step()

    def plain_step():
        plain_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(plain(codes).flatten(0, 1), codes.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 10.0)
        plain_optimizer.step()

    ours_step(), plain_step()  # warm-up
    ours_times, plain_times = [], []
    for _ in range(repeats):
        for step, times in ((ours_step, ours_times), (plain_step, plain_times)):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return statistics.median(ours_times), statistics.median(plain_times)


def main(args) -> dict:
    torch.set_num_threads(1)
    data = load_data(args.data)
    if args.first:
        data = data.head(args.first)
    splits = split_data(data, (0.9, 0.1, 0.0))
    chunks = splits.train.batch.chunk(args.chunk_length)
    valid = splits.valid.batch
    model = RecurrentModel(
        "categorical",
        num_symbols=data.num_symbols,
        cell=args.cell,
        hidden_size=args.hidden,
        embedding_dim=args.embedding,
    )
    model.initialize_from_data(chunks)
    plain = PlainNetwork(model)
    print(
        f"{args.cell}: {model.num_parameters} parameters; {len(chunks)} training sequences of {args.chunk_length}, "
        f"{valid.num_steps} validation characters; {args.seconds:.0f} s each on 1 thread"
    )

    step_ours, step_plain = interleaved_step_seconds(model, plain, chunks, args)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    # Counts the loss evaluations (one per mini-batch, plus one before the optimizer is built).
    calls = []
    hook = model.output.register_forward_hook(lambda *_: calls.append(1) if model.training else None)
    result = fit(
        model,
        chunks,
        method="svi",
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_epochs=10**6,
        time_budget=args.seconds,
        progress=False,
        seed=0,
    )
    seconds_ours = time.perf_counter() - started
    hook.remove()
    steps_ours = len(calls) - 1
    ours = -score(model, valid).per_step
    epochs_ours = result.history[-1]["step"] if result.history else 0
    load_mid = os.getloadavg()[0]

    steps_plain, seconds_plain = train_plain(plain, chunks, args)
    theirs = plain_valid_nats(plain, valid)
    load_after = os.getloadavg()[0]

    per_epoch = math.ceil(len(chunks) / args.batch_size)
    report = {
        "cell": args.cell,
        "seconds_each": args.seconds,
        "ours_valid_nats_per_char": ours,
        "plain_valid_nats_per_char": theirs,
        "ratio": ours / theirs,
        "ours_fit_seconds": seconds_ours,
        "ours_epochs_started": epochs_ours,
        "ours_minibatches": steps_ours,
        "plain_minibatches": steps_plain,
        "plain_seconds": seconds_plain,
        "minibatches_per_epoch": per_epoch,
        "load_average": [load_before, load_mid, load_after],
        "step_seconds_ours": step_ours,
        "step_seconds_plain": step_plain,
    }
    print(
        f"ours  (Pyro model + inference.fit): {ours:.4f} nats/char  ({steps_ours} mini-batches = "
        f"{steps_ours / per_epoch:.2f} epochs in {seconds_ours:.1f} s incl. setup; load {load_before:.1f} -> {load_mid:.1f})"
    )
    print(
        f"plain PyTorch loop:                 {theirs:.4f} nats/char  ({steps_plain} mini-batches = "
        f"{steps_plain / per_epoch:.2f} epochs in {seconds_plain:.1f} s; load -> {load_after:.1f})"
    )
    print(f"ratio ours / plain: {ours / theirs:.4f}  (goal: at most 1.02)")
    print(
        f"one training step, interleaved, median of 5: ours {step_ours:.3f} s, plain {step_plain:.3f} s "
        f"(ratio {step_ours / step_plain:.3f})"
    )
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(default_data_path()), help="Tiny Shakespeare text file")
    parser.add_argument("--seconds", type=float, default=60.0, help="training wall time of each (default 60)")
    parser.add_argument("--cell", choices=["rnn", "gru", "lstm"], default="lstm")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--chunk-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--first", type=int, help="use only the first N characters (quick runs)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
