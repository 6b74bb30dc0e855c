"""The commands that reopen a fitted run: ``seqzoo decode`` (state paths or per-step values
into a CSV), ``seqzoo sample`` (new sequences, optionally primed or tempered) and ``seqzoo
diagnose`` (posterior checks, optionally after NUTS)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from inference.fit import fit
from inference.rundir import RunDirectory
from zoo.data import SequenceData, Vocabulary, split_data
from zoo.registry import REGISTRY, Decoding, UsageError, family_of

from .data_args import DEFAULT_SPLIT, _load, _own_splits, _reuse_run_data_options
from .specs import load_model


def cmd_decode(args) -> int:
    run = RunDirectory.open(args.run)
    config = run.read_json("config.json")
    model = load_model(run)
    family = family_of(model)
    if family is None or family.decode is None:
        decoders = ", ".join(name for name, entry in REGISTRY.items() if entry.decode is not None)
        raise UsageError(
            f"decode: {type(model).__name__} has no discrete states to decode (families that decode: {decoders})"
        )
    vocabulary, _ = _reuse_run_data_options(run, config, args)
    data = _load(args, vocabulary=vocabulary)
    device = next(model.parameters()).device
    batch = data.batch.to(device)
    with torch.no_grad():
        decoding = family.decode(model, batch)
    out = Path(args.output) if args.output else run.file("decoded.csv")
    if not isinstance(decoding, Decoding) or (decoding.paths is None and not decoding.values):
        raise TypeError(
            f"{family.name}: its decode returned {type(decoding).__name__}, expected a "
            f"zoo.registry.Decoding with a path or values"
        )
    paths = decoding.paths.cpu() if decoding.paths is not None else None
    # name -> (N, T, K) per-step values, one column per entry.
    arrays = {
        name: value.detach().reshape(value.shape[0], value.shape[1], -1).cpu()
        for name, value in decoding.values.items()
    }
    state_column = ["state"] if paths is not None else []
    columns = state_column + [f"{name}_{k}" for name, value in arrays.items() for k in range(value.shape[-1])]
    column_ranges = state_column + [f"{name}_0..{value.shape[-1] - 1}" for name, value in arrays.items()]
    lines = ["sequence,time," + ",".join(columns)]
    for n, length in enumerate(batch.lengths.tolist()):
        for t in range(length):
            cells = [str(int(paths[n, t]))] if paths is not None else []
            cells += [f"{v:.6g}" for value in arrays.values() for v in value[n, t].tolist()]
            lines.append(f"{n},{t}," + ",".join(cells))
    _write_text_atomic(out, "\n".join(lines) + "\n", force=args.force)
    print(
        f"decoded {batch.num_steps} steps of {batch.num_sequences} sequence(s) into {out} "
        f"(columns: {', '.join(column_ranges)})"
    )
    if paths is not None:
        counts = torch.bincount(paths[paths >= 0], minlength=decoding.num_states)
        print("state occupancy: " + ", ".join(f"{k}: {int(c)}" for k, c in enumerate(counts)))
    return 0


def cmd_sample(args) -> int:
    run = RunDirectory.open(args.run)
    model = load_model(run)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    vocabulary = (
        Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
    )
    options: dict[str, Any] = {}
    for option in ("temperature", "prime"):
        if getattr(args, option) is not None and not model.supports(f"sample_{option}"):
            takers = [
                f"{name} ({entry.help})"
                for name, entry in REGISTRY.items()
                if any(cls.supports(f"sample_{option}") for cls in entry.model_classes)
            ]
            raise UsageError(
                f"--{option}: needs a model whose sampler takes it ({', '.join(takers) or 'none registered'}); "
                f"{run.path} holds a {type(model).__name__}"
            )
    if args.temperature is not None or args.prime is not None:
        if args.temperature is not None:
            options["temperature"] = args.temperature
        if args.prime is not None:
            if vocabulary is None:
                raise UsageError("--prime: the run directory has no vocabulary.json; priming takes text")
            options["prime"] = vocabulary.encode(args.prime).to(device)
    with torch.no_grad():
        batch = model.sample(args.num_sequences, args.length, generator=generator, **options)
    for n in range(batch.num_sequences):
        values = batch.values[n].cpu()
        if vocabulary is not None:
            print((args.prime or "") + vocabulary.decode(values.tolist()))
        else:
            for row in values.reshape(len(values), -1).tolist():
                print(",".join(f"{v:.6g}" for v in row))
            if n + 1 < batch.num_sequences:
                print()
    return 0


def _write_text_atomic(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cmd_diagnose(args) -> int:
    """Posterior diagnostics of a fitted run into RUN/diagnostics (see zoo.diagnostics.write_diagnostics)."""
    run = RunDirectory.open(args.run)
    config = run.read_json("config.json")
    model = load_model(run)
    vocabulary, same_data = _reuse_run_data_options(run, config, args)
    if same_data:
        # The posterior is of the data the model was fitted to: the same training split.
        if config.get("split") == "own":
            part = _own_splits(args).train
        else:
            part = split_data(
                _load(args, vocabulary=vocabulary),
                tuple(config.get("split", DEFAULT_SPLIT)),
                seed=config.get("seed", 0),
                by=config.get("split_by") or "shuffle",
            ).train
        where = f"the training split of {args.data}"
    else:
        part, where = _load(args, vocabulary=vocabulary), f"all of {args.data}"
    # The new diagnostics are written beside the old ones and swapped in only when complete:
    # a failed or interrupted diagnosis leaves RUN/diagnostics as it was.
    with RunDirectory.stage(run.path / "diagnostics", force=args.force) as out:
        args.interrupted_diagnosis = out.target
        return _diagnose_into(out, run, model, config, part, where, args)


def _chain_line(num_chains: int, draws: int):
    """Without a progress bar, one line per NUTS chain as it ends (in chain order)."""

    def report(record: dict) -> None:
        print(
            f"chain {record['chain'] + 1}/{num_chains}: {draws} draws in {record['seconds']:.1f} s, "
            f"{record['divergences']} divergences, acceptance {record['mean_acceptance_rate']:.2f}, "
            f"mean tree depth {record['mean_tree_depth']:.1f}",
            file=sys.stderr,
            flush=True,
        )

    return report


def _diagnose_into(
    out: RunDirectory, run: RunDirectory, model, config: dict, part: SequenceData, where: str, args
) -> int:
    from inference.arviz import guide_is_point_mass, to_inference_data
    from zoo import diagnostics

    batch = part.batch.to(next(model.parameters()).device)
    label = config.get("model", type(model).__name__)
    if args.nuts:
        if args.no_progress:
            from inference.mcmc import default_num_workers

            workers = min(args.workers or default_num_workers(args.chains, batch.device), args.chains)
            print(
                f"NUTS: {args.chains} chain(s) of {args.warmup} warm-up + {args.draws} draws, "
                + ("one after another" if workers == 1 else f"{workers} at a time in worker processes"),
                file=sys.stderr,
                flush=True,
            )
        result = fit(
            model,
            batch,
            method="nuts",
            num_samples=args.draws,
            warmup_steps=args.warmup,
            num_chains=args.chains,
            seed=args.seed,
            progress=not args.no_progress,
            initialize=False,
            max_tree_depth=args.max_tree_depth,
            description=f"{label} nuts",
            num_workers=args.workers,
            callbacks=[_chain_line(args.chains, args.draws)] if args.no_progress else [],
        )
        posterior = result
    elif not guide_is_point_mass(model, batch):
        posterior = "guide"
    else:
        posterior = "point"
    idata = to_inference_data(
        model, batch, posterior, num_draws=args.guide_draws, num_predictive_draws=args.predictive_draws, seed=args.seed
    )
    report = diagnostics.write_diagnostics(out, model, idata, title=label, num_symbols=model.num_symbols)
    if args.nuts:
        out.save_model(model, "posterior_mean_model")
        report["files"].append("posterior_mean_model.safetensors")
    out.write_json(
        "diagnose.json",
        {
            "run": str(run.path),
            "data": where,
            "posterior": report["posterior_kind"],
            **{k: v for k, v in report.items() if k not in ("files",)},
        },
    )
    print(
        f"posterior: {report['posterior_kind']} ({report['num_chains']} chain(s) x {report['num_draws']} draw(s)) on {where}"
    )
    if report["max_r_hat"] is not None:
        print(
            f"max r_hat {report['max_r_hat']:.4f}, min bulk ESS {report['min_ess_bulk']:.0f}"
            + (f", divergences {report['divergences']}" if report["divergences"] is not None else "")
        )
    loo = report["loo"]
    print(
        "LOO: "
        + (
            f"elpd_loo {loo['elpd_loo']:.2f} ± {loo['se']:.2f} over {loo['n_sequences']} sequences"
            if "elpd_loo" in loo
            else f"skipped ({loo['skipped']})"
        )
    )
    print(f"diagnostics: {out.target}")
    return 0
