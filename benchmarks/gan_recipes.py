"""python -m benchmarks.gan_recipes: which small-data recipe makes GAN model A learn on every seed.

    python -m benchmarks.gan_recipes [--seeds 0,1,2,3] [--recipes base,augment,r1,noise,all]
                                     [--workers 2] [--results benchmarks/RESULTS.md] [--json FILE]
                                     [--merge FILE ...]

Model A at the quickstart's GAN budget (search/specs/quickstart.yaml, study gan: width 32, 600 steps of
batch 32, the first start_from point's learning rates) on the demo faces, once per recipe and seed:

  base     the quickstart's model A start point as it was before the regularisers (lr_g 4e-4, lr_d 1e-4, no
           augmentation, no R1, no instance noise): the recipe whose discriminator wins on some seeds
  augment  base + DiffAugment with the paper's policy (color,translation,cutout) on every batch D sees
  r1       base + lazy R1 on real images (gamma R1_GAMMA, every 16 steps)
  noise    base + instance noise (sigma NOISE at step 0, annealed to 0)
  all      base + the three together
  start    the quickstart's model A start point as shipped (search/specs/quickstart.yaml)

Each run evaluates every epoch (face rate and diversity on the spec's n_eval samples, plus the epoch's mean
D loss and D(G(z)), the stop rule's inputs) and never stops early, so one run serves both the recipe table
and the calibration of the "discriminator won" rule (--json keeps every epoch). Prints face rate and
diversity at the last step, mean +- sd over seeds, and each recipe's wall time. Runs train in `--workers`
processes, one CPU thread each (as the quickstart's trials run: one per core). `--merge` reads runs that
earlier invocations wrote with --json (split over sessions or machines) and trains only what is missing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search" / "specs" / "quickstart.yaml"
R1_GAMMA, NOISE = 1.0, 0.1
# every recipe names each key it varies, so that runs from earlier invocations are reused only where they trained
# exactly this; the first five start from the model A start point as it was before the regularisers (lr_d 1e-4)
OFF = {"augment": "none", "augment_policy": "color,translation,cutout", "r1_gamma": 0.0, "instance_noise": 0.0,
       "lr_d": 1e-4, "g_ema": 0.0}
RECIPES = {
    "base": OFF,
    "augment": {**OFF, "augment": "diffaugment"},
    "r1": {**OFF, "r1_gamma": R1_GAMMA},
    "noise": {**OFF, "instance_noise": NOISE},
    "all": {**OFF, "augment": "diffaugment", "r1_gamma": R1_GAMMA, "instance_noise": NOISE},
    "start": {},  # the quickstart spec's model A start point as shipped
}


def base_config() -> dict:
    """The quickstart GAN study's fixed config with its model A start point, evaluated every epoch, no early stop."""
    from search.spec import load_spec

    study = next(s for s in load_spec(SPEC).studies if s.name == "gan")
    start = next(p for p in study.start_from if p["model"] == "A")
    return {**study.config, **start, "eval_every": 1, "patience": 10**6, "fid": "off"}


def run_one(job: tuple[str, int, dict]) -> dict:
    """Train one (recipe, seed) in this process; every epoch's metrics and the wall time."""
    recipe, seed, cfg = job
    import torch

    torch.set_num_threads(1)
    from trainables.loop import fit

    epochs: list[dict] = []
    t0 = time.perf_counter()
    fit("gan", {**cfg, "seed": seed}, lambda e: epochs.append(dict(e.metrics)), quiet=True)
    return {"recipe": recipe, "seed": seed, "wall_s": time.perf_counter() - t0, "epochs": epochs}


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"


def table(runs: list[dict], recipes: list[str], seeds: list[int]) -> str:
    head = ["recipe", *[f"seed {s}: face / div" for s in seeds], "face rate", "diversity", "wall s / run"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in recipes:
        mine = {x["seed"]: x for x in runs if x["recipe"] == r}
        last = [mine[s]["epochs"][-1] for s in seeds]
        cells = [f"{m['face_rate']:.2f} / {m['diversity']:.2f}" for m in last]
        rows.append("| " + " | ".join([r, *cells, mean_sd([m["face_rate"] for m in last]),
                                       mean_sd([m["diversity"] for m in last]),
                                       f"{statistics.mean(mine[s]['wall_s'] for s in seeds):.0f}"]) + " |")
    return "\n".join(rows)


def rule_table(runs: list[dict]) -> str:
    """The "discriminator won" rule against every run: the lowest epoch-mean D(G(z)) and D loss it reached, where
    the rule (GANConfig's thresholds and patience, checked at every epoch) would have stopped it, and the face
    rate it reached without being stopped. A run that made faces must never be stopped."""
    from trainables.config import GANConfig

    c = GANConfig()
    rows = [f"| recipe | seed | min D(G(z)) | min D loss | rule fires at epoch | face rate at the end |", "|---|---|---|---|---|---|"]
    for x in sorted(runs, key=lambda x: (list(RECIPES).index(x["recipe"]), x["seed"])):
        strikes, fired = 0, "-"
        for m in x["epochs"]:
            strikes = strikes + 1 if m["d_fake"] < c.d_won_fake and m["loss_d"] < c.d_won_loss else 0
            if strikes >= c.patience and fired == "-":
                fired = str(m["epoch"])
        rows.append(f"| {x['recipe']} | {x['seed']} | {min(m['d_fake'] for m in x['epochs']):.3f} | "
                    f"{min(m['loss_d'] for m in x['epochs']):.3f} | {fired} | {x['epochs'][-1]['face_rate']:.2f} |")
    return (f"Stop rule \"discriminator won\" (D(G(z)) < {c.d_won_fake:g} and D loss < {c.d_won_loss:g}, "
            f"{c.patience} evaluations in a row):\n\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gan_recipes", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
    p.add_argument("--recipes", default="base,augment,r1,noise,all", help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--workers", type=int, default=2, help="runs at once, one CPU thread each")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config for every run")
    p.add_argument("--json", default="", help="write every run's per-epoch metrics here")
    p.add_argument("--results", default="", help="append the table to this Markdown file")
    p.add_argument("--merge", nargs="*", default=[], help="--json files of earlier runs to reuse (same config)")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    recipes = a.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r}; known: {', '.join(RECIPES)}")
    os.environ["OMP_NUM_THREADS"] = "1"
    cfg = base_config()
    for kv in a.set:
        k, _, v = kv.partition("=")
        cfg[k] = v
    runs = []
    from trainables.config import GANConfig, from_flat

    def trained(config: dict, recipe: dict) -> GANConfig:  # what a run trains, defaults and types resolved
        return from_flat(GANConfig, {**config, **recipe})

    for f in a.merge:  # a run is reused where it trained exactly what this invocation would
        old = json.loads(Path(f).read_text())
        runs += [x for x in old["runs"] if x["recipe"] in recipes and x["seed"] in seeds
                 and trained(old["config"], old["recipes"][x["recipe"]]) == trained(cfg, RECIPES[x["recipe"]])]
    have = {(x["recipe"], x["seed"]) for x in runs}
    jobs = [(r, s, {**cfg, **RECIPES[r]}) for r in recipes for s in seeds if (r, s) not in have]
    print(f"gan_recipes: {len(have)} runs reused, {len(jobs)} runs of model A ({cfg['epochs'] * cfg['steps_per_epoch']} steps of batch "
          f"{cfg['batch_size']}, width {cfg['width']}), {a.workers} at a time", file=sys.stderr)
    def save() -> None:
        if a.json:
            Path(a.json).write_text(json.dumps({"config": cfg, "recipes": {r: RECIPES[r] for r in recipes}, "runs": runs}, indent=1))

    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as pool:
        for res in pool.map(run_one, jobs):
            last = res["epochs"][-1]
            print(f"  {res['recipe']:8s} seed {res['seed']}: face rate {last['face_rate']:.2f}, diversity "
                  f"{last['diversity']:.2f}, D loss {last['loss_d']:.3f}, D(G(z)) {last['d_fake']:.3f} "
                  f"({res['wall_s']:.0f} s)", file=sys.stderr, flush=True)
            runs.append(res)
            save()  # after every run: an interrupted benchmark keeps what it trained (reuse it with --merge)
    save()
    text = table(runs, recipes, seeds) + "\n\n" + rule_table(runs)
    print(text)
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if a.results:
        with open(a.results, "a") as f:
            f.write(f"\n### GAN recipes ({datetime.date.today()}, {os.cpu_count()} CPUs)\n\n"
                    f"`python -m benchmarks.gan_recipes --seeds {a.seeds} --recipes {a.recipes}`"
                    f" (R1 gamma {R1_GAMMA}, instance noise {NOISE}; face rate / diversity after the last step)\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
