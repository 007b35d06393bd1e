"""The measurements behind TUNING.md: train each named setting, then judge its samples per latent sampler.

    nice -n 19 .venv/bin/python docs/report/tuning_study.py conv8-aug conv8 resconv8-aug ...
    .venv/bin/python docs/report/tuning_study.py --table          # the Markdown tables from the results

Checkpoints go to runs/study/<setting>/, results to runs/study/<setting>/study.json (kept across
invocations, so the study can be run in pieces). Every setting trains on the embedded digits
(9,000 training images, split seed 0) with one torch thread; "CPU s" is the training process's CPU time.
Samplers: N(0, I), the fitted Gaussian, Gaussian mixtures of k components fitted by EM to the training
latent means (export/latent_samplers.py, the exporter's fit), and the RealNVP flow (training/latent_sampler.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from export.latent_samplers import fit_mixture
from protos.atomic import atomic_write_text
from training import checkpoint as ckpt
from training.data import to_unit_float
from training.evaluate import (
    checkpoint_split,
    decode_seeds,
    encode_means,
    fit_latent_gaussian,
    load_classifier,
    normal_seeds,
    sample_metrics,
)
from training.train import TrainOptions, train

RUNS = ROOT / "runs" / "study"
RESULT_FILE = "study.json"
SAMPLES = 5000
MIXTURES = (5, 10, 20, 40, 80)

BASE = {"kind": "vae", "arch": "conv", "latent_dim": 8, "epochs": 20, "kl_weight": 1.0}
SETTINGS: dict[str, dict] = {
    # body × augmentation, latent 8, 20 epochs
    "conv8-aug": {},
    "conv8": {"augment": False},
    "resconv8-aug": {"arch": "resconv"},
    "resconv8": {"arch": "resconv", "augment": False},
    "mlp8-aug": {"arch": "mlp"},
    # latent size, conv + augmentation
    "conv2-aug": {"latent_dim": 2},
    "conv4-aug": {"latent_dim": 4},
    "conv16-aug": {"latent_dim": 16},
    "conv32-aug": {"latent_dim": 32},
    # λ and KL warm-up
    "conv8-aug-l0.5": {"kl_weight": 0.5},
    "conv8-aug-l2": {"kl_weight": 2.0},
    "conv8-aug-w5": {"kl_warmup_epochs": 5},
    "conv8-aug-l2-w5": {"kl_weight": 2.0, "kl_warmup_epochs": 5},
    # learning-rate schedule
    "conv8-aug-cos": {"lr_schedule": "cosine"},
    "conv8-aug-cos-lr2e-3": {"lr_schedule": "cosine", "lr": 2e-3},
    # epochs
    "conv8-aug-e40-cos": {"epochs": 40, "lr_schedule": "cosine"},
    "resconv8-aug-e40-cos": {"arch": "resconv", "epochs": 40, "lr_schedule": "cosine"},
    "resconv8-aug-e60-cos": {"arch": "resconv", "epochs": 60, "lr_schedule": "cosine"},
    "conv8-aug-e15-cos": {"epochs": 15, "lr_schedule": "cosine"},
    "conv8-e40-cos": {"epochs": 40, "lr_schedule": "cosine", "augment": False},
    "conv8-aug-e30-cos": {"epochs": 30, "lr_schedule": "cosine"},
    "resconv8-aug-e14-cos": {"arch": "resconv", "epochs": 14, "lr_schedule": "cosine"},
    "resconv8-e40": {"arch": "resconv", "epochs": 40, "augment": False},  # the report-model candidate
    "resconv8-e60": {"arch": "resconv", "epochs": 60, "augment": False},  # the report's recipe checkpoint
    "resconv8-e90": {"arch": "resconv", "epochs": 90, "augment": False},  # resumed from it
    "resconv8-e10": {"arch": "resconv", "epochs": 10, "augment": False},  # resconv in make demo's CPU budget
    "conv8-w5": {"augment": False, "kl_warmup_epochs": 5},
    # the seed's MLP, for reference
    "mlp16-l2": {"arch": "mlp", "latent_dim": 16, "kl_weight": 2.0, "augment": False},
}


def options_for(name: str) -> TrainOptions:
    values = {**BASE, **SETTINGS[name]}
    return TrainOptions(**values, out=str(RUNS / name), threads=1, progress=False, seed=0)


def load_results() -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(RUNS.glob(f"*/{RESULT_FILE}"))}


def save_result(name: str, entry: dict) -> None:
    # One file per setting, so that two invocations running side by side never overwrite each other.
    atomic_write_text(RUNS / name / RESULT_FILE, json.dumps(entry, indent=1, sort_keys=True) + "\n")


def mixture_seeds(latents: np.ndarray, k: int, n: int, seed: int) -> torch.Tensor:
    fit = fit_mixture(latents, components=k, seed=0)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, fit.weights)
    parts = [rng.multivariate_normal(fit.means[j], fit.covs[j], c) for j, c in enumerate(counts) if c]
    return torch.from_numpy(rng.permutation(np.concatenate(parts))).float()


def judge(name: str, entry: dict) -> dict:
    directory = RUNS / name
    model, config = ckpt.load_model(directory)
    split = checkpoint_split(config)
    train_x, val_x = to_unit_float(split.train_images), to_unit_float(split.val_images)
    classifier = load_classifier()
    latents = encode_means(model, train_x)
    d = config.model.latent_dim
    samplers = {"N(0,1)": lambda: normal_seeds(SAMPLES, d, 0),
                "gaussian": lambda: fit_latent_gaussian(model, train_x).sample(SAMPLES, 0)}
    for k in MIXTURES:
        samplers[f"mixture{k}"] = lambda k=k: mixture_seeds(latents, k, SAMPLES, 0)
    try:
        from training.latent_sampler import FlowOptions, train_flow
    except ImportError:
        train_flow = None
    if train_flow is not None:
        def flow_seeds() -> torch.Tensor:
            flow = train_flow(latents.astype(np.float32), FlowOptions(seed=0))
            with torch.no_grad():
                return flow.sample_from_noise(normal_seeds(SAMPLES, d, 0))
        samplers["flow"] = flow_seeds
    sampling = entry.setdefault("sampling", {})
    for sampler, draw in samplers.items():
        if sampler in sampling:
            continue
        start = time.process_time()
        seeds = draw()
        metrics = sample_metrics(decode_seeds(model, seeds), val_x, classifier)
        sampling[sampler] = {**metrics, "fit_cpu_s": time.process_time() - start}
        save_result(name, entry)
    return entry


def run(name: str) -> None:
    options = options_for(name)
    entry = load_results().get(name, {})
    done = (Path(options.out) / ckpt.CONFIG_FILE).exists() and ckpt.read_config(options.out).epochs == options.epochs
    if not done:
        start = time.process_time()
        wall = time.perf_counter()
        train(options)
        entry = {"train_cpu_s": time.process_time() - start, "train_wall_s": time.perf_counter() - wall}
        metrics = ckpt.read_config(options.out).metrics
        entry["val"] = {k: v for k, v in metrics.items() if k.startswith("val_")}
        save_result(name, entry)
        print(f"{name}: trained in {entry['train_cpu_s']:.0f} CPU s", flush=True)
    elif "val" not in entry:  # a checkpoint trained elsewhere (copied, or resumed by hand): no CPU time known
        entry["val"] = {k: v for k, v in ckpt.read_config(options.out).metrics.items() if k.startswith("val_")}
    judge(name, entry)
    print(f"{name}: " + "  ".join(f"{s} {m['validity']:.3f}" for s, m in entry["sampling"].items()), flush=True)


def describe(name: str) -> str:
    o = options_for(name)
    parts = [o.arch, f"latent {o.latent_dim}", "aug" if o.augmented() else "no aug", f"λ {o.kl_weight:g}"]
    parts += [f"warm-up {o.kl_warmup_epochs}"] if o.kl_warmup_epochs else []
    parts += [f"{o.lr_schedule} lr {o.lr:g}", f"{o.epochs} ep"]
    return ", ".join(parts)


def _cells(m: dict | None, keys: tuple[str, ...] = ("validity", "coverage", "fcd", "inception_score")) -> str:
    if m is None:
        return " | ".join("–" for _ in keys)
    formats = {"validity": ".3f", "coverage": ".3f", "fcd": ".1f", "inception_score": ".2f"}
    return " | ".join(f"{m[k]:{formats[k]}}" for k in keys)


def table(names: list[str], mixture: int = 40) -> str:
    """One row per setting: N(0, I), the k-component mixture and the flow, each validity/coverage/FCD/IS."""
    results = load_results()
    lines = [(f"| setting | N(0, I): validity | coverage | FCD | IS | mixture {mixture}: validity | coverage | FCD | IS "
              "| flow: validity | coverage | FCD | IS | val ELBO | train CPU s |"),
             "|---|" + "---:|" * 15]
    for name in names or list(results):
        entry = results.get(name)
        if not entry or "sampling" not in entry:
            continue
        sampling = entry["sampling"]
        cpu = f"{entry['train_cpu_s']:.0f}" if "train_cpu_s" in entry else "–"
        lines.append(f"| {describe(name)} | {_cells(sampling.get('N(0,1)'))} | {_cells(sampling.get(f'mixture{mixture}'))} "
                     f"| {_cells(sampling.get('flow'))} | {entry['val'].get('val_elbo', float('nan')):.1f} "
                     f"| {cpu} |")
    return "\n".join(lines)


def sampler_table(names: list[str]) -> str:
    """Validity (FCD) of every sampler per setting: how the samplers and the mixture's k compare."""
    results = load_results()
    samplers = ["N(0,1)", "gaussian", *(f"mixture{k}" for k in MIXTURES), "flow"]
    lines = ["| setting | " + " | ".join(samplers) + " |", "|---|" + "---:|" * len(samplers)]
    for name in names or list(results):
        sampling = results.get(name, {}).get("sampling", {})
        if not sampling:
            continue
        cells = [f"{sampling[x]['validity']:.3f} ({sampling[x]['fcd']:.0f})" if x in sampling else "–" for x in samplers]
        lines.append(f"| {describe(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ORDER = ["conv2-aug", "conv4-aug", "conv8-aug", "conv16-aug", "conv32-aug", "conv8", "resconv8-aug", "resconv8",
         "conv8-aug-l2", "conv8-aug-w5", "conv8-w5", "conv8-aug-cos", "conv8-aug-e40-cos", "conv8-e40-cos", "resconv8-e10",
         "resconv8-e40", "resconv8-e60", "resconv8-e90"]


def write_tuning(path: Path) -> None:
    """Replace the generated blocks of TUNING.md (between <!-- study:X --> and <!-- /study:X -->)."""
    text = path.read_text()
    names = [n for n in ORDER if n in load_results()] + [n for n in load_results() if n not in ORDER]
    for block, body in (("table", table(names)), ("samplers", sampler_table(names))):
        start, end = f"<!-- study:{block} -->", f"<!-- /study:{block} -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{body}\n{end}{tail}"
    atomic_write_text(path, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("settings", nargs="*", help=f"any of: {', '.join(SETTINGS)}")
    p.add_argument("--table", action="store_true", help="print the results as Markdown")
    p.add_argument("--samplers", action="store_true", help="print every sampler's validity (FCD) per setting")
    p.add_argument("--write", type=Path, metavar="TUNING.md", help="rewrite the generated tables in this file")
    args = p.parse_args()
    if args.write:
        write_tuning(args.write)
        return 0
    if args.table or args.samplers:
        print(sampler_table(args.settings) if args.samplers else table(args.settings))
        return 0
    torch.set_num_threads(1)
    for name in args.settings:
        if name not in SETTINGS:
            p.error(f"unknown setting {name!r}")
    for name in args.settings:
        run(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
