"""Speed-up of data-parallel fitting (inference/distributed.py): 1 vs N CPU processes over gloo.

Times ``DataParallel.fit`` (the fit only: process start-up and the rendezvous
are excluded) for an RNN trained by SVI and a categorical HMM fitted by EM on a
synthetic collection, each process with one torch thread.

    PYTHONPATH=$PWD python benchmarks/distributed_speedup.py --processes 1 2 --repeats 3

EM is the family's own Baum-Welch split into ``e_step`` (additive counts,
summed over processes by one all-reduce per iteration) and ``m_step``.
The machine's load average is printed before and after: on a shared machine
the wall times measure the contention as much as the method.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import torch

from inference import SequenceBatch
from inference.distributed import DataParallel
from zoo.hmm import CategoricalHMM
from zoo.rnn import RecurrentModel


def collection(num_sequences: int, length: int, num_symbols: int) -> SequenceBatch:
    truth = CategoricalHMM(4, num_symbols)
    truth.reset_parameters(torch.Generator().manual_seed(0))
    return truth.sample(num_sequences, length, generator=torch.Generator().manual_seed(1))


def worker(rank: int, world_size: int, init_file: str, out: str, config: dict) -> None:
    torch.set_num_threads(1)
    # Building the first torch optimizer imports torch._dynamo (seconds): pay it before the clock starts.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    with DataParallel.initialize(
        backend="gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size, timeout=600
    ) as parallel:
        data = collection(config["num_sequences"], config["length"], config["num_symbols"])
        if config["task"] == "rnn":
            model = RecurrentModel(
                "categorical",
                num_symbols=config["num_symbols"],
                cell="gru",
                hidden_size=config["hidden_size"],
                embedding_dim=16,
            )
            kwargs = dict(method="svi", batch_size=config["batch_size"], max_epochs=config["steps"], learning_rate=1e-2)
        else:
            model = CategoricalHMM(config["num_states"], config["num_symbols"])
            kwargs = dict(method="em", max_iterations=config["steps"], tolerance=-1.0)
        parallel.barrier()
        started, cpu_started = time.perf_counter(), time.process_time()
        result = parallel.fit(model, data, progress=False, seed=0, **kwargs)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        # Wall time, and the CPU time of the busiest rank (on a loaded machine, the work each rank did).
        cpu = parallel.all_reduce_sum(torch.zeros(world_size).index_fill_(0, torch.tensor([rank]), cpu_seconds))
        if rank == 0:
            Path(out).write_text(
                json.dumps(
                    {
                        "seconds": seconds,
                        "cpu_seconds": float(cpu.max()),
                        "last_objective": result.history[-1]["objective"],
                    }
                )
            )


def measure(world_size: int, config: dict) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        out = str(Path(directory) / "result.json")
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=worker, args=(rank, world_size, str(Path(directory) / "rendezvous"), out, config))
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        if any(process.exitcode for process in processes):
            raise RuntimeError(f"a worker failed: exit codes {[p.exitcode for p in processes]}")
        return json.loads(Path(out).read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-sequences", type=int, default=2048)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--tasks", nargs="+", default=["rnn", "em"], choices=["rnn", "em"])
    parser.add_argument("--rnn-epochs", type=int, default=2)
    parser.add_argument("--em-iterations", type=int, default=10)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per setting, alternating the process counts; the fastest is reported",
    )
    args = parser.parse_args(argv)
    base = dict(num_sequences=args.num_sequences, length=args.length, num_symbols=16)
    configs = {
        "rnn": dict(base, task="rnn", hidden_size=64, batch_size=256, steps=args.rnn_epochs),
        "em": dict(base, task="em", num_states=8, steps=args.em_iterations),
    }
    import os

    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs", flush=True)
    rows = []
    for task in args.tasks:
        times: dict[int, float] = {}
        cpu: dict[int, float] = {}
        for _ in range(args.repeats):
            for world_size in args.processes:
                measured = measure(world_size, configs[task])
                times[world_size] = min(measured["seconds"], times.get(world_size, float("inf")))
                cpu[world_size] = min(measured["cpu_seconds"], cpu.get(world_size, float("inf")))
                print(
                    f"{task}: {world_size} process(es): {measured['seconds']:.2f} s wall, "
                    f"{measured['cpu_seconds']:.2f} s CPU of the busiest rank",
                    flush=True,
                )
        rows.append((task, times, cpu))
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    print(
        "\n| task | "
        + " | ".join(f"{w} proc. wall s (busiest rank CPU s)" for w in args.processes)
        + " | wall speed-up | CPU-per-rank ratio |"
    )
    print("|---|" + "---|" * (len(args.processes) + 2))
    for task, times, cpu in rows:
        others = [w for w in args.processes if w != 1 and 1 in times]
        wall = ", ".join(f"{times[1] / times[w]:.2f}x" for w in others)
        ratio = ", ".join(f"{cpu[1] / cpu[w]:.2f}x" for w in others)
        print(
            f"| {task} | "
            + " | ".join(f"{times[w]:.2f} ({cpu[w]:.2f})" for w in args.processes)
            + f" | {wall} | {ratio} |"
        )


if __name__ == "__main__":
    main()
