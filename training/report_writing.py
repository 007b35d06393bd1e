"""The report's figures and Markdown: what `aegen-report` (training/report.py) writes from what it measured.

The pictures (latent scatters, labelled sample grids) are drawn while the experiments run; the Markdown is
rendered at the end from the result dict that is also written as metrics.json, so every sentence is computed
from the numbers beside it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from protos.atomic import atomic_write_bytes
from training.classifier import CLASS_NAMES, NOT_A_DIGIT, VALID_CONFIDENCE, DigitClassifier, predict
from training.grid import save_grid
from training.train import TrainOptions

if TYPE_CHECKING:
    from training.report import ReportOptions

GRID = 8  # 8×8 sample grids
SCATTER_PX = 500  # the latent scatter plots are SCATTER_PX × SCATTER_PX pixels
PAIR = (1, 8)  # the digits the 2-D models see, as in the chapter

# --- pictures ---------------------------------------------------------------------------------------

def _png(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def latent_scatter(z: np.ndarray, labels: np.ndarray, title: str, path: Path) -> Path:
    """Validation latents of a 2-D model, 1s blue and 8s red, with the N(0, I) 1σ and 2σ circles that
    show where standard normal seeds land."""
    fig = Figure(figsize=(SCATTER_PX / 100, SCATTER_PX / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for digit, colour in zip(PAIR, ("tab:blue", "tab:red")):
        keep = labels == digit
        ax.scatter(z[keep, 0], z[keep, 1], s=6, c=colour, alpha=0.6, label=f"{digit}s ({keep.sum()})")
    for r in (1, 2):
        ax.add_patch(Circle((0, 0), r, fill=False, ls="--", lw=1, color="grey"))
    ax.plot([], [], ls="--", color="grey", label="N(0, I): 1σ, 2σ")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")
    ax.legend(fontsize=7, loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    _png(fig, path)
    return path


def density_validity_figure(deciles: list[float], references: dict[str, float], path: Path) -> Path:
    """Validity of N(0, I) seeds per decile of their aggregate-posterior density, lowest density first, with
    the validity of other seeds as horizontal lines."""
    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(range(1, len(deciles) + 1), deciles, color="tab:blue", label="N(0, I) seeds in that decile")
    for (name, value), style in zip(references.items(), ("--", ":"), strict=False):
        ax.axhline(value, ls=style, color="black", lw=1, label=f"{name}: {value:.3f}")
    ax.set_xticks(range(1, len(deciles) + 1))
    ax.set_xlabel("decile of the seed's log density under the fitted mixture (1 = lowest)")
    ax.set_ylabel("validity")
    ax.set_ylim(0, 1.05)
    ax.set_title("N(0, I) seeds: validity by the density of training latents where they land", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _png(fig, path)
    return path


def verdicts(classifier: DigitClassifier, images: np.ndarray) -> list[str]:
    """One label per image: the digit when valid, "7?" when unsure, "no" for class 10; with confidence."""
    pred = predict(classifier, images)
    out = []
    for label, conf in zip(pred.labels, pred.probs.max(axis=1)):
        if label == NOT_A_DIGIT:
            out.append(f"no {conf:.2f}")
        else:
            out.append(f"{CLASS_NAMES[label]}{'' if conf >= VALID_CONFIDENCE else '?'} {conf:.2f}")
    return out


def labelled_grid(classifier: DigitClassifier, images: np.ndarray, title: str, path: Path) -> Path:
    first = images[: GRID * GRID]
    return save_grid(first, path, nrow=GRID, labels=verdicts(classifier, first), title=title)


# --- the Markdown -----------------------------------------------------------------------------------

def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| samples | validity ↑ | coverage ↑ | FCD ↓ | IS ↑ | grid |", "|---|---:|---:|---:|---:|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['validity']:.3f} | {m['coverage']:.3f} | {m['fcd']:.2f} | "
                     f"{m['inception_score']:.2f} | [{m['figure']}]({m['figure']}) |")
    return lines


def _reading(o: ReportOptions, r: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers, so that they stay true when the report is regenerated."""
    rows, pair = r["rows"], r["pair_rows"]
    ae_n, ae_f = rows["AE · N(0, I) seeds"], rows["AE · fitted Gaussian seeds"]
    vae_n, real = rows["VAE · N(0, I) seeds"], rows["real training images"]
    out = [
        (f"- N(0, I) seeds: the VAE's samples are valid digits {vae_n['validity']:.1%} of the time, the AE's "
        f"{ae_n['validity']:.1%}. Seeding the AE from a Gaussian fitted to its training latents gives "
        f"{ae_f['validity']:.1%}: {'better than' if ae_f['validity'] > ae_n['validity'] else 'no better than'} "
        "N(0, I). The AE's training latents sit at ‖mean‖ = "
        f"{r['models']['ae']['latent_mean_norm']:.2f} with a mean per-unit spread of "
        f"{r['models']['ae']['latent_std_mean']:.2f} (the VAE's: {r['models']['vae']['latent_mean_norm']:.2f} "
        f"and {r['models']['vae']['latent_std_mean']:.2f}; N(0, I) has 0 and 1)."),
        _pair_sentence(pair),
        (f"- FCD: VAE {vae_n['fcd']:.2f}, AE {ae_n['fcd']:.2f}, AE fitted {ae_f['fcd']:.2f}; real training images "
        f"score {real['fcd']:.2f} against the validation images, the floor for this sample size."),
    ]
    targets = [("validity", 0.9), ("coverage", 0.95), ("inception_score", 9.0)]
    met = [f"{k} {vae_n[k]:.3f} {'≥' if vae_n[k] >= v else '<'} {v} ({'met' if vae_n[k] >= v else 'missed'})"
           for k, v in targets]
    out.append(f"- Targets for the VAE (latent {o.latent_dim}) with N(0, I) seeds: " + "; ".join(met) + ".")
    if (o.out / "TUNING.md").exists():
        out.append("- How these settings were chosen, and what limits the VAE: [TUNING.md](TUNING.md).")
    return out


def _pair_sentence(pair: dict[str, dict[str, Any]]) -> str:
    ae, vae = pair["AE 2-D · N(0, I) seeds"], pair["VAE 2-D · N(0, I) seeds"]
    text = (f"- In two dimensions (digits 1 and 8), N(0, I) seeds give valid digits {ae['validity']:.1%} of the "
            f"time for the AE and {vae['validity']:.1%} for the VAE, with coverage {ae['coverage']:.3f} and "
            f"{vae['coverage']:.3f} (0.301 = both digits equally often).")
    if ae["coverage"] < 0.8 * vae["coverage"]:
        text += (" The AE's seeds mostly decode to one of the two digits: N(0, I) covers only part of its "
                 "latent space, as the scatter plot shows.")
    return text


# Issue 12's targets for the report model: (what, which row, metric, at least (True) or at most, value).
TARGETS = (("N(0, I) validity", "N(0, I)", "validity", True, 0.85),
           ("best sampler's validity", "best", "validity", True, 0.96),
           ("best sampler's IS", "best", "inception_score", True, 9.3),
           ("best sampler's FCD", "best", "fcd", False, 40.0),
           ("best sampler's coverage", "best", "coverage", True, 0.97))


def all_rows(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The seed's rows, then the recipe's beside them, then the real images."""
    seed = {k: v for k, v in r["rows"].items() if k != "real training images"}
    return {**seed, **r["recipe"]["rows"], "real training images": r["rows"]["real training images"]}


def _bought(o: ReportOptions, r: dict[str, Any]) -> list[str]:
    seed, recipe = r["rows"], r["recipe"]["rows"]
    name = f"VAE {o.recipe_arch} {o.recipe_latent_dim}"
    steps = [("AE (seed: MLP, latent 16), N(0, I) seeds", seed["AE · N(0, I) seeds"], None),
             ("AE, fitted Gaussian seeds", seed["AE · fitted Gaussian seeds"], "AE · N(0, I) seeds"),
             (f"VAE instead of AE (MLP, latent {o.latent_dim}, λ {o.kl_weight}, {o.epochs} epochs), N(0, I)",
              seed["VAE · N(0, I) seeds"], "AE · N(0, I) seeds"),
             ((f"the recipe's VAE ({o.recipe_arch}, latent {o.recipe_latent_dim}, λ {o.recipe_kl_weight}, "
               f"{o.recipe_epochs} epochs), N(0, I)"), recipe[f"{name} · N(0, I) seeds"], "VAE · N(0, I) seeds")]
    steps += [(f"the recipe's VAE, {k.split(' · ')[1]}", v, f"{name} · N(0, I) seeds")
              for k, v in recipe.items() if "N(0, I)" not in k]
    every = all_rows(r)
    lines = ["### What each change bought", "",
             "| change | validity | against | Δ validity | FCD | IS |", "|---|---:|---|---:|---:|---:|"]
    for label, m, base in steps:
        delta = f"{m['validity'] - every[base]['validity']:+.3f}" if base else "–"
        lines.append(f"| {label} | {m['validity']:.3f} | {base or '–'} | {delta} | {m['fcd']:.1f} | "
                     f"{m['inception_score']:.2f} |")
    if (o.out / "TUNING.md").exists():
        lines += ["", ("The seed-to-recipe step changes body, latent size, λ and epochs at once; TUNING.md "
                       "measures them one at a time.")]
    lines.append("")
    return lines


def _limits(o: ReportOptions, r: dict[str, Any]) -> list[str]:
    rows, hole, m = r["recipe"]["rows"], r["recipe"]["prior_hole"], r["recipe"]["model"]
    best_name, best = max(rows.items(), key=lambda item: item[1]["validity"])
    chosen = {"N(0, I)": next(v for k, v in rows.items() if "N(0, I)" in k), "best": best}
    lines = [f"### Against issue 12's targets (best sampler: {best_name.split(' · ')[1]})", "",
             "| target | measured | holds |", "|---|---:|---|"]
    missed = []
    for what, row, key, at_least, value in TARGETS:
        got = chosen[row][key]
        holds = got >= value if at_least else got <= value
        missed += [] if holds else [what]
        shown = f"{got:.3f}" if key in ("validity", "coverage") else f"{got:.2f}"
        lines.append(f"| {what} {'≥' if at_least else '≤'} {value} | {shown} | {'yes' if holds else '**no**'} |")
    real = r["rows"]["real training images"]["validity"]
    judge = r["classifier"].get("val_validity_real", float("nan"))
    deciles, elbo = hole["validity_by_decile"], m.get("val_elbo_by_epoch", {})
    mixture = next(v["validity"] for k, v in rows.items() if "mixture" in k)
    lines += ["", "### What limits it" + (f" (missed: {', '.join(missed)})" if missed else ""), "",
              (f"- **The prior hole.** {hole['outside_share']:.1%} of the N(0, I) seeds land where the "
               f"{o.mixture_components}-component mixture fitted to the training latents (the aggregate posterior, "
               f"as served) has less density than at {1 - hole['quantile']:.0%} of the training latents (a prior that matched "
               f"the aggregate posterior would put {hole['quantile']:.0%} there). Those "
               f"decode to valid digits {hole['validity_outside']:.1%} of the time, the other seeds "
               f"{hole['validity_inside']:.1%}; by decile of that density validity goes from {deciles[0]:.1%} "
               f"(lowest) to {deciles[-1]:.1%} (highest), while the mixture's own seeds reach {mixture:.1%}. "
               "The decoder draws digits where the encoder put data; N(0, I) puts a share of its seeds between "
               "the clusters, and those decode to blends."),
              "", "![validity of N(0, I) seeds by aggregate-posterior density](prior_hole.png)", "",
              (f"- **The judge.** Real training images are valid {real:.1%} of the time (the classifier's own "
               f"held-out real digits: {judge:.1%}). The best sampler's {best['validity']:.1%} is "
               f"{best['validity'] / real:.1%} of what real digits score; 0.96 asks for {0.96 / real:.1%}."),
              ("- **Training length.** Validation ELBO of the recipe by epoch: "
               + ", ".join(f"{e}: {v:.2f}" for e, v in elbo.items())
               + ("; TUNING.md has the same body at 20 and 40 epochs." if (o.out / "TUNING.md").exists() else ".")),
              ""]
    return lines


def _recipe_section(o: ReportOptions, r: dict[str, Any]) -> list[str]:
    rows, m = r["recipe"]["rows"], r["recipe"]["model"]
    best_name, best = max(rows.items(), key=lambda item: item[1]["validity"])
    normal = next(v for k, v in rows.items() if "N(0, I)" in k)
    seed_vae = r["rows"]["VAE · N(0, I) seeds"]
    return [
        f"## The measured recipe: {o.recipe_arch} VAE, latent {o.recipe_latent_dim}"
        + (", augmented digits" if o.recipe_augment else ""),
        "",
        (f"Trained as docs/report/TUNING.md found best: `--arch {o.recipe_arch} --latent-dim {o.recipe_latent_dim} "
         f"--kl-weight {o.recipe_kl_weight} --lr-schedule {o.recipe_lr_schedule} --epochs {o.recipe_epochs}"
         + ("`, every training image randomly shifted (±2 px), rotated (±10°) and scaled (±10 %). "
            if o.recipe_augment else " --no-augment`. ")
         + "Its latent samplers are "
         f"those the server offers: N(0, I), the fitted Gaussian, the {o.mixture_components}-component mixture "
         f"and the learned RealNVP flow ({o.flow_epochs} epochs over the training latent means); its rows are "
         "in the table above, beside the seed's."),
        "",
        (f"- N(0, I) seeds: {normal['validity']:.1%} valid (the seed's MLP VAE above: {seed_vae['validity']:.1%}); "
         f"the best sampler is {best_name.split(' · ')[1]} at {best['validity']:.1%}, IS {best['inception_score']:.2f}, "
         f"FCD {best['fcd']:.1f}, coverage {best['coverage']:.3f}."),
        (f"- Training took {m['train_seconds']:.0f} s ({m['epochs']} epochs, one thread), the flow "
         f"{m['flow_seconds']:.0f} s; validation ELBO {m.get('val_elbo', float('nan')):.2f}."),
        "",
        "| N(0, I) | fitted Gaussian | mixture | flow |",
        "|---|---|---|---|",
        "| " + " | ".join(f"![]({v['figure']})" for v in rows.values()) + " |",
        "",
        *_bought(o, r),
        *_limits(o, r),
    ]


def _denoising_section(o: ReportOptions, r: dict[str, Any]) -> list[str]:
    rows = r["denoising"]
    lines = [
        "## Denoising",
        "",
        (f"AEs (MLP, latent {o.latent_dim}, {o.denoise_epochs} epochs) trained with `aegen-train --corrupt`: the "
         "encoder sees the corrupted image, the loss compares with the clean one. PSNR (dB, higher is better) "
         "against the clean validation images; the last column is the plain AE above reconstructing the same "
         "corrupted inputs. The server's `Reconstruct` on such a model returns the denoised images."),
        "",
        "| corruption | corrupted | denoising AE | plain AE | grid (clean, corrupted, denoised) |",
        "|---|---:|---:|---:|---|",
    ]
    for spec, m in rows.items():
        lines.append(f"| {spec} | {m['psnr_corrupted']:.2f} | **{m['psnr_reconstructed']:.2f}** | "
                     f"{m['psnr_plain_ae']:.2f} | [{m['figure']}]({m['figure']}) |")
    lines += ["", "| " + " | ".join(f"![]({m['figure']})" for m in rows.values()) + " |",
              "|" + "---|" * len(rows), ""]
    return lines


def _curves_section(o: ReportOptions, r: dict[str, Any]) -> list[str]:
    curves = {f"AE latent {o.latent_dim}": r["models"]["ae"]["curves"],
              f"VAE latent {o.latent_dim}": r["models"]["vae"]["curves"],
              f"VAE {o.recipe_arch} {o.recipe_latent_dim} (recipe)": r["recipe"]["model"]["curves"],
              **{f"denoising AE {spec}": m["curves"] for spec, m in r["denoising"].items()}}
    lines = ["## Training curves (loss terms per epoch, training and validation)", ""]
    for name, figure in curves.items():
        lines += [f"**{name}**", "", f"![{name} training curves]({figure})", ""]
    return lines


def render_markdown(o: ReportOptions, r: dict[str, Any]) -> str:
    c = r["classifier"]
    epochs_2d = o.epochs_2d or o.epochs
    lines = [
        "# Representation and generation: AE vs VAE, measured",
        "",
        "Generated by `aegen-report` (training/report.py); regenerate with",
        "",
        "```",
        f"aegen-report --out {o.out} --epochs {o.epochs}" + (f" --epochs-2d {o.epochs_2d}" if o.epochs_2d else "")
        + (f" --limit {o.limit}" if o.limit else "") + f" --samples {o.samples} --arch {o.arch}"
        + f" --kl-weight {o.kl_weight}" + (f" --kl-warmup-epochs {o.kl_warmup_epochs}" if o.kl_warmup_epochs else "")
        + f" --loss {o.loss} --recipe-arch {o.recipe_arch} --recipe-latent-dim {o.recipe_latent_dim}"
        + f" --recipe-epochs {o.recipe_epochs} --recipe-kl-weight {o.recipe_kl_weight}"
        + f" --recipe-lr-schedule {o.recipe_lr_schedule}" + ("" if o.recipe_augment else " --no-recipe-augment")
        + f" --mixture-components {o.mixture_components}"
        + f" --flow-epochs {o.flow_epochs} --denoise-epochs {o.denoise_epochs}",
        "```",
        "",
        f"- **Data:** the 10,000 embedded MNIST digits (training/assets), split 90/10 with seed {o.seed}; "
        f"{r['validation_images']} validation images, never trained on"
        + (f"; at most {o.limit} training images per model." if o.limit else "."),
        f"- **Models:** latent {o.latent_dim}, {o.arch} encoder/decoder (hidden {o.hidden_dim}), all ten digits, "
        f"{o.epochs} epochs, Adam lr {o.lr}, batch {TrainOptions.batch_size}, loss {o.loss}; VAE λ = {o.kl_weight}"
        + (f" with {o.kl_warmup_epochs} warm-up epochs" if o.kl_warmup_epochs else "")
        + f". The 2-D models: MLP, digits 1 and 8 only, {epochs_2d} epochs.",
        (f"- **Samples:** {o.samples} per row, seeds from N(0, I) (seed {o.seed}), or from N(μ, Σ) fitted to the "
        "model's training latents (\"the region we guess is the latent space\")."),
        "",
        "## Sample quality",
        "",
        *table(all_rows(r)),
        "",
        ("- **validity**: share of samples the digit classifier labels a digit (not \"not a digit\") with "
        f"softmax ≥ {VALID_CONFIDENCE}. **coverage**: normalised entropy of the predicted-digit histogram "
        "(1 = all ten digits equally often)."),
        ("- **FCD** is the Fréchet distance between the classifier's 128-d penultimate features of the samples "
        "and of the validation images. It is **not** the Inception FID: other network, other features, "
        "other scale; compare it only within this report."),
        ("- **IS** is the Inception Score computed with the digit classifier over the ten digit classes "
        "(1 to 10; a real MNIST test set scores about 9.9 with a good MNIST classifier)."),
        "",
        "## What the numbers say",
        "",
        *_reading(o, r),
        "",
        *_recipe_section(o, r),
        "## The latent space in two dimensions (digits 1 and 8)",
        "",
        "| AE | VAE |",
        "|---|---|",
        "| ![AE latents](latent_ae2.png) | ![VAE latents](latent_vae2.png) |",
        "",
        *table(r["pair_rows"]),
        "",
        "Coverage here is over ten digits, so two classes give at most log 2 / log 10 ≈ 0.30.",
        "",
        "## Sample grids (labels: the classifier's verdict and confidence; \"no\" = not a digit, \"?\" = unsure)",
        "",
        "| AE · N(0, I) | AE · fitted Gaussian | VAE · N(0, I) | real |",
        "|---|---|---|---|",
        ("| ![](samples_ae_normal.png) | ![](samples_ae_fitted.png) | ![](samples_vae_normal.png) "
        "| ![](samples_real.png) |"),
        "",
        "## Reconstruction and ELBO on the validation split",
        "",
        "| model | epochs | reconstruction (nats/image) | KL | ELBO | MSE/pixel | training s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    models = {f"{kind.upper()} latent {o.latent_dim}": m for kind, m in r["models"].items()}
    models[f"VAE {o.recipe_arch} latent {o.recipe_latent_dim} (recipe)"] = r["recipe"]["model"]
    for name, m in models.items():
        kl = f"{m['val_kl']:.2f}" if "val_kl" in m else "–"
        elbo = f"{m['val_elbo']:.2f}" if "val_elbo" in m else "–"
        lines.append(f"| {name} | {m['epochs']} | {m['val_reconstruction']:.2f} | {kl} | "
                     f"{elbo} | {m['val_mse_per_pixel']:.4f} | {m['train_seconds']:.0f} |")
    lines += [
        "",
        ("Reconstruction is the training loss on the validation images with z = M; the ELBO uses one "
        "sampled z per image and λ = 1. Pixels are grey levels, so the BCE-based ELBO is a score for "
        "comparing models, not a log-likelihood. Training seconds are the wall time of each epoch as the "
        "checkpoint logged it, so they grow when other jobs share the CPU."),
        "",
        *_denoising_section(o, r),
        *_curves_section(o, r),
        "## The judge",
        "",
        (f"A small CNN with an 11th class \"not a digit\" (training/classifier.py, weights in training/assets): "
        f"validation accuracy {c.get('val_accuracy', float('nan')):.4f}, validity on held-out real images "
        f"{c.get('val_validity_real', float('nan')):.3f} (blurred σ = 1: "
        f"{c.get('val_validity_real_blurred', float('nan')):.3f}), on fresh synthetic negatives "
        f"{c.get('negative_validity', float('nan')):.4f}."),
        "",
        (f"Report generated in {r['seconds']:.0f} s on the CPU, reusing the checkpoints that already matched "
        "(the training seconds in the table above are from the checkpoints' epoch logs)."),
        "",
    ]
    return "\n".join(lines)
