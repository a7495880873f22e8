"""The report's sections of the three built-in families, named in their registry entries
(`Family.report`, "module:function"): each function takes the `Report` and returns its sections,
adding the `gentune arch` names it showed to `rep.arch`.

- GAN: the first 32 images of model A and of model B from the same noise, side by side, with face rate / FID;
- DDPM: a 10x10 grid (rows digits 0-9, columns noise) at the trial's best w, the reverse process of the
  grid's first "0" at t = 500, 300, 100, 60, 40, 0 (scaled to the trial's T), accuracy per w;
- DANN: the report's table (source-only / DANN / target-only x scenario) and t-SNE of validation features
  coloured by class and by domain, one pair per scenario.
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Any

import torch

from analysis.sampling import generate_images, image_grid
from analysis.report import Report, Section, num, pct, ranked_checkpoint, slug
from analysis.sweepdata import Trial, better

REVERSE_STEPS = (500, 300, 100, 60, 40, 0)  # the report's steps, for T = 500
DOMAIN_NAMES = {"mnistm": "MNIST-M", "usps": "USPS", "svhn": "SVHN", "mnist": "MNIST"}
DANN_ROWS = (("source-only", "Trained on source"), ("dann", "Adaptation (DANN)"), ("target-only", "Trained on target"))


def domain_name(dc_domain: Any, dc_source: Any) -> str:
    key = str(dc_domain or dc_source or "?")
    return DOMAIN_NAMES.get(key, key)


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _subset(images, idx: torch.Tensor):
    from trainables.data import ImageSet

    idx = idx.to(images.images.device)
    return ImageSet(images.images[idx], None if images.labels is None else images.labels[idx], images.fingerprint, images.name)


def gan(rep: Report) -> list[Section]:
    """The best model-A and model-B samples side by side (or the --trial ones), with their metrics."""
    if rep.named is not None:
        chosen = [t for t in rep.named if t.family == "gan"]
    else:
        chosen = [t for m in ("A", "B") if (t := rep.best_across("gan", {"model": m})) is not None]
    if not chosen and (not rep.studies_of("gan") or rep.named is not None):
        return []
    s = Section("GAN: generated faces")
    if not chosen:
        s.note("No GAN trial finished with its metric, so there is nothing to show.")
        return [s]
    panels, rows, shown, demo = [], [], set(), False
    for t in chosen:
        ckpt, cfg, mods = rep.models_for(t)
        rep.log(f"GAN model {cfg.model}: 32 images of {rep.trial_label(t)}")
        x, _, _ = generate_images("gan", cfg, mods, n=32, seed=rep.seed, device=rep.device)
        fr, fid = t.value("face_rate"), t.value("fid")
        # the demo's 100 faces are all training faces: its FID reference is the training set, not held-out faces
        demo = demo or (fid is not None and cfg.data.source == "demo")
        fid_name = "FID vs training faces" if cfg.data.source == "demo" else "FID"
        # a configuration repeated over seeds: its images are the exported seed's, its numbers the seeds' aggregate
        one = f" (images of seed {cfg.seed}; numbers: mean of its {len(rep.sweep.seeds(t))} seeds)" if rep.sweep.seeds(t) else ""
        cap = f"model {cfg.model}, trial {t.trial_id}{one}: face rate {pct(fr)}" + (f", {fid_name} {fid:.2f}" if fid is not None else "")
        panels.append((cap, image_grid(x, 8)))
        shown.add(cfg.model)
        s.studies.add(t.study)
        rows.append([f"model {cfg.model}", t.trial_id, t.study, str(ckpt.get("epoch")), pct(fr),
                     f"{fid:.2f}" if fid is not None else "-", num(t.value("diversity"))])
    rep.arch += [f"gan-{m.lower()}" for m in sorted(shown)]
    if not panels:
        return [s]
    from analysis import plots

    path = plots.image_panels(panels, rep.out / "gan_samples.png",
                              f"first 32 images from the same noise (seed {rep.seed})")
    s.figure(path, "The first 32 generated images of each model, from the same fixed noise "
                   f"(z ~ N(0,1), seed {rep.seed}); left to right: " + "; ".join(c for c, _ in panels))
    s.table(["model", "trial", "study", "epoch", "face rate", "FID", "diversity"], rows,
            "Metrics of the trials shown (face rate and FID on the trial's own evaluation samples)")
    seeds_compared(rep, s, chosen)
    models = {r[0] for r in rows}
    if rep.named is None:
        for m in ("A", "B"):
            if f"model {m}" not in models:
                s.note(f"The sweep has no finished trial of model {m}; only "
                       f"{' and '.join(sorted(models))} is shown.")
    if demo:
        s.note("FID on demo data is computed against the demo's 100 training faces (the demo has no held-out "
               "faces): it says how close the samples are to the images trained on, not a validation FID.")
    if not any(t.value("fid") is not None for t in chosen):
        s.note("FID is absent: the trials ran without Inception weights (fid: auto found none, or fid: off).")
    return [s]


def seeds_compared(rep: Report, s, chosen: list[Trial]) -> None:
    """Model A against model B over the seeds of their chosen configurations (budget.repeats): mean ± sd and n of
    the study's metric at the ranked epoch, and Welch's two-sample t-test (unequal variances) on the seeds' values."""
    from scipy.stats import ttest_ind

    from analysis.export import seed_values

    groups, single = {}, []
    for t in chosen:
        st = rep.sweep.studies[t.study]
        peak = rep.sweep.best_epoch(t, st.metric, st.mode) if st.rank_by == "best" else None
        vals = seed_values(rep.sweep, t, st.metric, peak[0] if peak else None)
        if len(vals) >= 2:
            groups[f"model {t.params.get('model', '?')}"] = (t, st, vals)
        else:
            single.append(f"model {t.params.get('model', '?')}")
    if not groups:
        s.note("Each model was trained with one seed, and on these models the seed moves the result as much as the "
               "settings do: one run each cannot say which model is better (budget.repeats: 3 trains each "
               "configuration with three seeds, as search/specs/gan-seeds.yaml does).")
        return
    rows = []
    for name, (t, st, vals) in groups.items():
        v = list(vals.values())
        sd = statistics.stdev(v)
        rows.append([name, t.trial_id, st.metric, f"{statistics.fmean(v):.3f} ± {sd:.3f}", str(len(v)),
                     ", ".join(f"{k}: {x:.3f}" for k, x in sorted(vals.items()))])
    s.table(["model", "configuration (trial)", "metric", "mean ± sd over seeds", "n", "per seed"], rows,
            "Each model's chosen configuration over its seeds (sample standard deviation)")
    if single:
        s.note(f"{' and '.join(single)}: one seed only, so no spread and no comparison.")
    if len(groups) == 2 and len({st.metric for _, st, _ in groups.values()}) == 1:
        (na, (_, st, a)), (nb, (_, _, b)) = groups.items()
        xa, xb = list(a.values()), list(b.values())
        p = float(ttest_ind(xa, xb, equal_var=False).pvalue)
        ma, mb = statistics.fmean(xa), statistics.fmean(xb)
        lead = na if better(ma, mb, st.mode) else nb
        if p < 0.05:  # NaN (no spread in either) is not below
            s.note(f"{lead} is better on {st.metric} ({ma:.3f} vs {mb:.3f}); Welch's t-test on the seeds' values: "
                   f"p = {p:.3g} < 0.05 (n = {len(xa)} and {len(xb)}).")
        else:
            s.note(f"{na} vs {nb} on {st.metric}: {ma:.3f} vs {mb:.3f}, not distinguishable at n = {len(xa)} and "
                   f"{len(xb)} (Welch's t-test on the seeds' values: p = {p:.3g} >= 0.05).")


def ddpm(rep: Report) -> list[Section]:
    """Per trial shown: the 10x10 digit grid, its reverse process and accuracy per w."""
    if rep.named is not None:
        chosen = [t for t in rep.named if t.family == "ddpm"]
    else:
        chosen = [t for t in [rep.best_across("ddpm")] if t is not None]
    if not chosen and rep.studies_of("ddpm") and rep.named is None:
        s = Section("Conditional DDPM")
        s.note("No DDPM trial finished with its metric, so there is nothing to show.")
        return [s]
    from analysis import plots

    out = []
    for t in chosen:
        s = Section(f"Conditional DDPM: trial {t.trial_id}", studies={t.study})
        out.append(s)
        ckpt, cfg, mods = rep.models_for(t)
        steps = [round(k * cfg.T / 500) for k in REVERSE_STEPS]
        rep.log(f"DDPM: 10x10 grid of {rep.trial_label(t)} (T={cfg.T}, the trial's best w) on {rep.device} ...")
        t0 = time.perf_counter()
        x, kept, used = generate_images("ddpm", cfg, mods, n=100, seed=rep.seed, metrics=t.metrics,
                                          device=rep.device, keep_at=tuple(sorted(set(steps))))
        w = used["w"]
        rep.log(f"DDPM: sampled at w={w:g} in {time.perf_counter() - t0:.1f}s")
        tag = slug(t.trial_id)
        g = plots.digit_grid(image_grid(x, 10), 10, rep.out / f"ddpm_{tag}_grid.png",
                             f"trial {t.trial_id}: w={w:g}, T={cfg.T}, seed {rep.seed}")
        s.figure(g, f"100 generated digits, rows digits 0-9, columns different noise; guidance w={w:g} "
                    f"(the trial's best), T={cfg.T}, epoch {ckpt.get('epoch')}")
        frames = [(f"t={k}" if cfg.T == 500 else f"t={st} ({k}/500·T)", kept[st][0]) for k, st in zip(REVERSE_STEPS, steps)]
        r = plots.reverse_process(frames, rep.out / f"ddpm_{tag}_reverse.png",
                                  f"reverse process of the first '0' (T={cfg.T})")
        s.figure(r, "The reverse process of the grid's first \"0\" at t = 500, 300, 100, 60, 40, 0"
                    + ("" if cfg.T == 500 else f", scaled to this trial's T={cfg.T}: t = {', '.join(map(str, steps))}"))
        accs = sorted(((float(k[5:]), v) for k, v in t.metrics.items()
                       if k.startswith("acc_w") and _is_float(k[5:]) and math.isfinite(v)), key=lambda p: p[0])
        if accs:
            best_i = max(range(len(accs)), key=lambda i: accs[i][1])
            b = plots.bars([f"w={w_:g}" for w_, _ in accs], [a for _, a in accs], rep.out / f"ddpm_{tag}_acc_per_w.png",
                           "digit classifier accuracy", f"trial {t.trial_id}: accuracy per guidance w", best_i)
            s.figure(b, "Accuracy of the digit evaluator on generated digits, per guidance w (last evaluation)")
            s.table(["w", "accuracy"], [[f"{w_:g}", pct(a)] for w_, a in accs],
                    "Accuracy per w (the trial's metrics acc_w*)")
        ev = t.value("evaluator_val_acc")
        if ev is not None:
            s.text(f"The digit evaluator's own validation accuracy: {pct(ev)}.")
    if out:
        rep.arch.append("ddpm")
    return out


def dann(rep: Report) -> list[Section]:
    """The report's source-only / DANN / target-only table, and t-SNE per scenario."""
    studies = rep.studies_of("dann")
    named = [t for t in rep.named if t.family == "dann"] if rep.named is not None else None
    if not studies:
        return []
    rep.arch.append("dann")
    s = Section("DANN", studies={st.name for st in studies})
    # the report's table, from every finished DANN trial: best target accuracy per (mode, scenario)
    cells: dict[tuple[str, str], tuple[float, Trial]] = {}
    scenarios: list[str] = []
    by_scenario: dict[str, list[Trial]] = {}
    tagged = set(rep.sweep.best_tags.values())  # on a tie, the trial the sweep named best
    for st in studies:
        for t in rep.sweep.finished(st.name, "target_acc"):
            sc = (f"{domain_name(t.params.get('source.domain'), t.params.get('source.source'))} → "
                  f"{domain_name(t.params.get('target.domain'), t.params.get('target.source'))}")
            if sc not in scenarios:
                scenarios.append(sc)
            by_scenario.setdefault(sc, []).append(t)
            key = (str(t.params.get("mode")), sc)
            v = t.value("target_acc")  # chosen on the selection half ...
            if key not in cells or v > cells[key][0] or (v == cells[key][0] and t.trial_id in tagged):  # type: ignore[operator]
                cells[key] = (v, t)  # type: ignore[assignment]
    if not scenarios:
        s.note("No DANN trial finished with target_acc, so there is no table and no t-SNE.")
        return [s]
    def shown(mode: str, sc: str) -> str:  # ... reported on the test half (sweeps from before the split: the same number)
        if (mode, sc) not in cells:
            return "-"
        t = cells[(mode, sc)][1]
        test = t.value("target_test_acc")
        return pct(test) if test is not None else pct(cells[(mode, sc)][0])

    rows = [[label, *(shown(mode, sc) for sc in scenarios)] for mode, label in DANN_ROWS]
    s.table(["", *scenarios], rows, "Target-domain test accuracy: the held-out half of the target validation "
                                    "labels, of the trial ranked best on the other half (best finished trial per "
                                    "cell; '-': no such trial in the sweep)")
    who = [f"{label} / {sc}: trial {cells[(mode, sc)][1].trial_id}" for mode, label in DANN_ROWS for sc in scenarios
           if (mode, sc) in cells]
    s.text("Cells from: " + "; ".join(who) + ".")
    # t-SNE: one pair per scenario
    if named is not None:
        picks = [(next((sc for sc, ts in by_scenario.items() if t in ts), t.trial_id), t) for t in named]
    else:
        picks = []
        for sc in scenarios:
            ts = by_scenario[sc]
            dann_ts = [t for t in ts if t.params.get("mode") == "dann"] or ts
            picks.append((sc, max(dann_ts, key=lambda t: (t.value("target_acc"), t.trial_id in tagged))))
    for sc, t in picks:
        tsne(rep, s, sc, t)
    return [s]


def tsne(rep: Report, s: Section, scenario: str, t: Trial) -> None:
    import numpy as np
    from sklearn.manifold import TSNE

    from analysis import plots
    from trainables.config import from_flat
    from trainables.families import build_trainer, config_class

    ckpt = ranked_checkpoint(rep.sweep, t)
    flat = {**ckpt["config"], "device": rep.device.type}
    cfg = from_flat(config_class("dann"), flat)
    trainer = build_trainer("dann", cfg, quiet=True)
    trainer.load_state(ckpt["state"])
    src, tgt = trainer.src_val, trainer.tgt_val
    gen = torch.Generator().manual_seed(rep.seed)

    def pick(n: int) -> torch.Tensor:
        return torch.randperm(n, generator=gen)[: rep.tsne_max].sort().values if n > rep.tsne_max else torch.arange(n)

    i_s, i_t = pick(len(src)), pick(len(tgt))
    hs = trainer.features(_subset(src, i_s)).cpu().numpy()
    ht = trainer.features(_subset(tgt, i_t)).cpu().numpy()
    feats = np.concatenate([hs, ht])
    cls = np.concatenate([src.labels.cpu()[i_s].numpy(), tgt.labels.cpu()[i_t].numpy()])
    dom = np.concatenate([np.zeros(len(hs), int), np.ones(len(ht), int)])
    rep.log(f"t-SNE of {len(feats)} validation features of {rep.trial_label(t)} ({scenario}) ...")
    t0 = time.perf_counter()
    perplexity = float(min(30.0, max(2.0, (len(feats) - 1) / 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        emb = TSNE(n_components=2, init="pca", random_state=rep.seed, perplexity=perplexity).fit_transform(feats)
    rep.log(f"t-SNE done in {time.perf_counter() - t0:.1f}s")
    src_name, _, tgt_name = scenario.partition(" → ")
    tag = slug(f"{t.trial_id}")
    mode = t.params.get("mode")
    a = plots.tsne_scatter(emb, cls, [str(i) for i in range(10)], rep.out / f"dann_{tag}_tsne_class.png",
                           f"{scenario} ({mode}, trial {t.trial_id}): by digit class")
    b = plots.tsne_scatter(emb, dom, [f"source: {src_name}", f"target: {tgt_name or '?'}"],
                           rep.out / f"dann_{tag}_tsne_domain.png",
                           f"{scenario} ({mode}, trial {t.trial_id}): by domain")
    acc, test = t.value("target_acc"), t.value("target_test_acc")
    accs = f"target accuracy {pct(acc)}" + (f" (selection half; test half {pct(test)})" if test is not None else "")
    s.text(f"t-SNE of {scenario}: trial {t.trial_id} ({mode}), {accs}, "
           f"{len(hs)} source + {len(ht)} target validation images (512-d extractor features).")
    s.figure(a, f"{scenario}: t-SNE of validation features coloured by digit class (0-9)")
    s.figure(b, f"{scenario}: t-SNE of validation features coloured by domain (source vs target)")
