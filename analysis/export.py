"""Export a trial as a self-describing bundle, load it back, and sample (analysis/sampling.py) / classify with it.

A bundle is a folder:
  model.safetensors   the model weights only (GAN: G.* and D.*; DDPM and DANN: model.*), no optimizer state
  bundle.json         family, flat config, metrics, sweep, study, trial id, epoch, code version, data
                      fingerprints and the sha256 of model.safetensors

`generate` and `predict` work from the bundle alone (no sweep folder, no Ray, no MLflow). The same
`generate_images` runs on a bundle's and on a checkpoint's weights, so the two can be compared.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from trainables.errors import CheckpointError, DataError, GentuneError
from trainables.filecheck import Plain, Range, fail, parse, read_json, require_file
from analysis.sampling import generate_images, image_families, log
from analysis.sweepdata import check_out_file, check_parent, knee

BUNDLE_FORMAT = "gentune-bundle"
BUNDLE_VERSION = 1
WEIGHTS = "model.safetensors"
META = "bundle.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(name: str = "auto") -> torch.device:
    from trainables.device import resolve_device as resolve

    return resolve(name, "--device")


# --- models from a config and weights ---------------------------------------------------------------

def parse_config(family: str, flat: dict[str, Any], where: str):
    """The family's frozen config from a flat dict, refusing (CheckpointError) what does not parse."""
    from trainables.config import from_flat
    from trainables.families import config_class, known

    if family not in known():
        raise CheckpointError(f"{where}: unknown family {family!r}; expected one of {', '.join(known())}")
    try:
        return from_flat(config_class(family), dict(flat))
    except GentuneError as e:
        raise CheckpointError(f"{where}: its config does not parse: {e}") from None


def model_keys(family: str) -> tuple[str, ...]:
    """Which parts of the family trainer's state are model weights."""
    from trainables.families import trainer_class

    return tuple(trainer_class(family).MODEL_KEYS)


def build_models(family: str, cfg) -> dict[str, nn.Module]:
    """The family's modules for `cfg`, keyed as in the trainer's state (weights not loaded)."""
    from trainables.families import trainer_class

    return trainer_class(family).build_models(cfg)


def load_models(family: str, cfg, state: dict[str, dict[str, torch.Tensor]], where: str,
                device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """Build the modules from the config and load `state` ({"G": state_dict, ...}) strictly, in eval mode."""
    mods = build_models(family, cfg)
    for key, m in mods.items():
        if key not in state:
            raise CheckpointError(f"{where}: holds no weights for {key!r} of a {family} model")
        try:
            m.load_state_dict(state[key], strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = " ".join(s.strip() for s in first[:2])[:300]
            raise CheckpointError(f"{where}: the weights do not match the config's {family} model ({detail})") from None
        m.to(device).eval()
    return mods


def flatten_state(state: dict[str, Any], family: str) -> dict[str, torch.Tensor]:
    """Trainer state -> {"G.main.0.weight": tensor, ...}: the model state dicts only, contiguous CPU copies."""
    out: dict[str, torch.Tensor] = {}
    for key in model_keys(family):
        if key not in state:
            raise CheckpointError(f"the {family} checkpoint's state has no {key!r} weights")
        for k, v in state[key].items():
            out[f"{key}.{k}"] = v.detach().to("cpu").contiguous().clone()
    return out


def unflatten_state(flat: dict[str, torch.Tensor], family: str) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in model_keys(family)}
    for name, v in flat.items():
        head, _, rest = name.partition(".")
        if head not in out or not rest:
            raise CheckpointError(f"{WEIGHTS}: unexpected tensor {name!r} for a {family} model")
        out[head][rest] = v
    return out


def models_from_checkpoint(ckpt: dict[str, Any], where: str, device: torch.device | str = "cpu"):
    family = ckpt["family"]
    cfg = parse_config(family, ckpt["config"], where)
    return cfg, load_models(family, cfg, ckpt["state"], where, device)


# --- bundles ---------------------------------------------------------------------------------------

def _hex64(v: str) -> str | None:
    return None if len(v) == 64 and all(c in "0123456789abcdef" for c in v) else "a sha256 (64 hex digits)"


@dataclass(frozen=True)
class BundleFile:
    """What bundle.json holds (write_bundle writes it)."""

    format: Literal["gentune-bundle"]
    version: Literal[1]
    family: str
    config: dict[str, Any]
    sha256: Annotated[str, _hex64]
    weights: Plain = WEIGHTS
    metrics: dict[str, float] = field(default_factory=dict)
    sweep: str = ""
    study: str = ""
    trial_id: str = ""
    epoch: Annotated[int, Range(0)] = 0
    stop_reason: str | None = None
    code_version: str = "unknown"
    data_fingerprint: dict[str, str | None] = field(default_factory=dict)
    tensors: Annotated[int, Range(1)] | None = None
    parameters: Annotated[int, Range(1)] | None = None


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]
    family: str
    cfg: Any
    models: dict[str, nn.Module]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.meta.get("metrics") or {})


def data_fingerprints(family: str, cfg, quiet: bool = True) -> dict[str, str | None]:
    """The content fingerprint of each dataset split the trial trained/validated on (None where unreadable)."""
    from trainables.data import load_split

    from trainables.families import family as family_of

    out: dict[str, str | None] = {}
    for attr, split, size, kind in family_of(family).data:
        try:
            out[f"{attr}.{split}"] = load_split(getattr(cfg, attr), split, size, kind, cfg.cache_dir, quiet=True).fingerprint
        except GentuneError as e:
            log(f"gentune export: warning: data fingerprint of {attr}.{split} unavailable ({e})", quiet)
            out[f"{attr}.{split}"] = None
    return out


def bundle_files(folder: Path) -> set[str]:
    """The names of the files gentune wrote in `folder` when it holds a bundle (bundle.json of our format and
    the weights it names), else none."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return set()
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        return set()
    return {META, str(meta.get("weights") or WEIGHTS)}


def check_out(out: Path, force: bool) -> Path:
    """`out` may be new or an empty folder; with --force also an earlier bundle, which is replaced. Any other
    file in it is the user's: refuse, naming it, rather than delete it."""
    if not out.exists():
        if out.is_symlink():
            raise GentuneError(f"--out {out} is a broken symbolic link; pick a new folder")
        check_parent(out, "--out")
        return out
    if not out.is_dir():
        raise GentuneError(f"--out {out} is a file, not a folder; pick a new folder")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return out
    if not force:
        raise GentuneError(f"--out {out} already exists and is not empty; pick a new folder, or add --force to "
                           "replace the bundle an earlier export wrote there")
    ours = bundle_files(out)
    foreign = [n for n in present if n not in ours or not (out / n).is_file() or (out / n).is_symlink()]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise GentuneError(f"--out {out} holds files gentune did not write ({shown}); --force replaces only an "
                           "earlier bundle, so move them away or pick a new folder")
    return out


def write_bundle(out: Path, ckpt: dict[str, Any], *, metrics: dict[str, float], sweep: str = "", study: str = "",
                 trial_id: str = "", force: bool = False, quiet: bool = True) -> Path:
    """Write the bundle of checkpoint `ckpt` into `out`: a new or empty folder, made atomically (a failure leaves
    nothing), or with `force` a folder holding an earlier bundle, whose own two files are replaced."""
    from safetensors.torch import save_file

    family = ckpt["family"]
    cfg = parse_config(family, ckpt["config"], "checkpoint")
    out = check_out(Path(out).expanduser(), force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tensors = flatten_state(ckpt["state"], family)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT, "family": family})
        meta = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "family": family, "config": ckpt["config"],
            "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
            "sweep": sweep, "study": study, "trial_id": trial_id, "epoch": int(ckpt.get("epoch", 0)),
            "stop_reason": ckpt.get("stop_reason"), "code_version": ckpt.get("code_version", "unknown"),
            "data_fingerprint": data_fingerprints(family, cfg, quiet),
            "weights": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS),
            "tensors": len(tensors), "parameters": int(sum(v.numel() for v in tensors.values())),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if out.exists():  # (--force) an earlier bundle: replace its own files, never anything else
            check_out(out, force)
            stale = (bundle_files(out) & set(os.listdir(out))) - {WEIGHTS, META}
            for name in (WEIGHTS, META):
                os.replace(tmp / name, out / name)
            for name in stale:
                (out / name).unlink()
            tmp.rmdir()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_bundle(path: str | Path, family: str | tuple[str, ...] | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Read and verify a bundle: bundle.json parses, sha256 of the weights matches, the family is the one
    expected, the config parses and the weights fit the model it builds. Any failure is one CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    folder = p.parent if p.is_file() and p.name == META else p
    meta_path = folder / META
    if not folder.is_dir():
        raise CheckpointError(f"bundle {p} does not exist (expected a folder made by `gentune export`)")
    if not (meta_path.exists() or meta_path.is_symlink()):
        raise CheckpointError(f"{folder} is not a gentune bundle: it has no {META}")
    meta = read_json(meta_path, "a gentune bundle description (JSON)", CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{meta_path} is not a gentune bundle description (format {BUNDLE_FORMAT!r})")
    if meta.get("version") != BUNDLE_VERSION:
        raise CheckpointError(f"{meta_path}: bundle version {meta.get('version')!r} is not supported (expected {BUNDLE_VERSION})")
    parse(meta, BundleFile, meta_path, error=CheckpointError)
    fam = meta.get("family")
    wanted = (family,) if isinstance(family, str) else family
    if wanted is not None and fam not in wanted:
        raise CheckpointError(f"{folder} is a {fam} bundle, but a {' or '.join(wanted)} bundle is needed here")
    weights = folder / str(meta.get("weights") or WEIGHTS)
    require_file(weights, f"the weights {META} names (safetensors)", CheckpointError)
    digest = sha256_file(weights)
    if digest != meta.get("sha256"):
        raise CheckpointError(f"bundle {folder}: {weights.name} does not match its sha256 in {META} "
                              f"(file changed or truncated: {digest[:12]}... != {str(meta.get('sha256'))[:12]}...)")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{meta_path}: 'config' must be a mapping of config keys")
    cfg = parse_config(fam, meta["config"], str(meta_path))
    try:
        flat = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"bundle {folder}: cannot read {weights.name} ({str(e).splitlines()[0][:200]})") from None
    for key, n in (("tensors", len(flat)), ("parameters", int(sum(v.numel() for v in flat.values())))):
        if meta.get(key) is not None and meta[key] != n:
            raise fail(meta_path, key, f"{n}, what {weights.name} holds", meta[key], CheckpointError)
    mods = load_models(fam, cfg, unflatten_state(flat, fam), f"bundle {folder}", device)
    return Bundle(folder, meta, fam, cfg, mods)


def generate_from_bundle(path: str | Path, *, n: int | None = None, seed: int = 0, digit: int | None = None,
                         guidance: float | None = None, device: str = "cpu", quiet: bool = True):
    dev = resolve_device(device)
    b = load_bundle(path, image_families(), dev)
    x, _, used = generate_images(b.family, b.cfg, b.models, n=n, seed=seed, metrics=b.metrics, device=dev, quiet=quiet,
                                 **_options(digit, guidance))
    return b, x, used


def _options(digit: int | None, guidance: float | None) -> dict[str, Any]:
    """`gentune generate`'s family options that were given (a family refuses those it does not take)."""
    return {k: v for k, v in (("digit", digit), ("guidance", guidance)) if v is not None}


# --- DANN prediction -------------------------------------------------------------------------------

def read_images(folder: str | Path, size: int = 32) -> tuple[list[str], torch.Tensor]:
    """(file names sorted, uint8 (N,3,size,size)) of the images in `folder` (non-recursive), resized as the
    data layer resizes (antialiased bilinear)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from trainables.files import IMAGE_SUFFIXES, image_files

    d = Path(folder).expanduser()
    if not d.is_dir():
        raise DataError(f"image folder {d} does not exist")
    files = image_files(d)
    if not files:
        raise DataError(f"{d} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for p in files:
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {p}: {e}") from None
        x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None]
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False).round().clamp(0, 255).to(torch.uint8)
        out.append(x)
    return [p.name for p in files], torch.cat(out)


def predict_folder(bundle: str | Path, images: str | Path, out_csv: str | Path | None, device: str = "cpu",
                   quiet: bool = True) -> tuple[list[str], list[int]]:
    """Classify every image of a folder with a DANN bundle; write `image_name,label` CSV when out_csv is given."""
    import csv

    if out_csv is not None:
        check_out_file(out_csv)
    dev = resolve_device(device)
    from trainables.families import known, trainer_class

    b = load_bundle(bundle, tuple(f for f in known() if hasattr(trainer_class(f), "classify_images")), dev)
    names, x = read_images(images, 32)
    log(f"gentune predict: classifying {len(names)} image(s) from {images} ...", quiet)
    labels = trainer_class(b.family).classify_images(b.cfg, b.models, x, dev).tolist()
    if out_csv is not None:
        out = Path(out_csv).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_name", "label"])
            w.writerows(zip(names, labels))
    return names, labels


# --- export from a sweep, and the MLflow model registry --------------------------------------------

SEED_PICKS = ("nearest", "best")


def export_best(sweep, out: str | Path, *, study: str | None = None, metric: str | None = None, mode: str | None = None,
                trial_id: str | None = None, force: bool = False, quiet: bool = True, rank_by: str | None = None,
                seed_pick: str = "nearest"):
    """Export the best finished trial of a study as a bundle in `out`; (Trial, Path).

    Trials are ranked as the study ranks them (`rank_by`: each trial's last epoch, or its best evaluated epoch,
    whose checkpoint the sweep kept) and the checkpoint of that epoch is exported. A configuration repeated
    over seeds exports one seed: the one whose value is nearest the configuration's aggregate (`seed_pick`
    nearest), or the best seed's (`best`)."""
    check_out(Path(out).expanduser(), force)
    if seed_pick not in SEED_PICKS:
        raise GentuneError(f"--seed-pick must be one of {', '.join(SEED_PICKS)}, got {seed_pick!r}")
    if trial_id is not None:
        best = sweep.trial(trial_id)
        if study is not None and best.study != study:
            raise GentuneError(f"trial {trial_id} belongs to study {best.study}, not --study {study}")
        st = sweep.studies[best.study]
    else:
        st = sweep.study(study)
    metric, mode, rank_by = metric or st.metric, mode or st.mode, rank_by or st.rank_by
    if mode not in ("min", "max"):
        raise GentuneError(f"--mode must be min or max, got {mode!r}")
    how = ""
    if trial_id is not None:
        if best.value(metric) is None:
            raise GentuneError(f"trial {trial_id} reported no {metric!r}")
    elif len(st.objectives) > 1 and (metric, mode) == (st.metric, st.mode):
        front = sweep.pareto(st.name)
        best = sweep.trial(knee(front, tuple(m for _, m in st.objectives))) if front else None
        rank_by = "last"  # the front is of last values
        how = (f" (of the {len(front)} Pareto-optimal trials on {', '.join(m for m, _ in st.objectives)}: the one nearest "
               f"the front's ideal point; --trial picks another: {', '.join(sorted(front))})")
    else:
        best = sweep.best_trial(st.name, metric, mode, rank_by=rank_by)
    if best is None:
        seen = sorted({k for t in sweep.trials(st.name) for k in t.metrics})
        raise GentuneError(f"no trial of study {st.name} finished with metric {metric!r}"
                           + (f"; metrics reported: {', '.join(seen)}" if seen else "; no trial reported any metric"))
    ckpt, value, epoch, seed, which = chosen_checkpoint(sweep, best, metric, mode, rank_by, seed_pick)
    at = f"its best epoch, {ckpt.get('epoch')} (rank_by best)" if epoch is not None else f"its last epoch, {ckpt.get('epoch')}"
    log(f"gentune export: trial {best.trial_id} of study {st.name}, {metric}={value:.6g} at {at}{how}{which} -> {out}", quiet)
    # the exported run's own metrics at the exported epoch (the epoch itself is the bundle's own field)
    own = {k: v for k, v in (ckpt.get("history") or [{}])[-1].items() if k != "epoch"}
    metrics = {**(best.metrics if epoch is None and seed is None else {}), **own}
    path = write_bundle(Path(out), ckpt, metrics=metrics, sweep=sweep.name, study=st.name,
                        trial_id=best.trial_id if seed is None else f"{best.trial_id}:s{seed}", force=force, quiet=quiet)
    return best, path


def chosen_checkpoint(sweep, trial, metric: str, mode: str, rank_by: str, seed_pick: str = "nearest"):
    """The checkpoint a trial is ranked by: of its best evaluated epoch (rank_by best) or its last, and of the seed
    `pick_seed` takes for a configuration repeated over seeds; (checkpoint, value, epoch or None for the last,
    seed or None, a clause naming the seed)."""
    peak = sweep.best_epoch(trial, metric, mode) if rank_by == "best" else None
    epoch, value = peak if peak is not None else (None, trial.value(metric))
    seed, which = pick_seed(sweep, trial, metric, mode, epoch, value, seed_pick)
    return sweep.load_checkpoint(trial, epoch=epoch, seed=seed), value, epoch, seed, which


def seed_values(sweep, trial, metric: str, epoch: int | None) -> dict[int, float]:
    """{seed: its value of `metric` at `epoch` (None: its last)} of a configuration repeated over seeds."""
    values = {}
    for s in sweep.seeds(trial):
        v = dict(sweep.history(s, metric)).get(epoch) if epoch is not None else s.value(metric)
        if v is not None and math.isfinite(v):
            values[int(s.params["seed"])] = float(v)
    return values


def pick_seed(sweep, trial, metric: str, mode: str, epoch: int | None, aggregate: float, how: str) -> tuple[int | None, str]:
    """The seed of a repeated configuration to export, and a clause saying which and why; (None, "") otherwise."""
    if not sweep.seeds(trial):
        return None, ""
    values = seed_values(sweep, trial, metric, epoch)
    if not values:
        raise GentuneError(f"trial {trial.trial_id}: none of its seed runs has {metric!r}"
                           + (f" at epoch {epoch}" if epoch is not None else ""))
    if how == "best":
        seed = min(values, key=lambda k: (-values[k] if mode == "max" else values[k], k))
        why = "the best seed"
    else:
        seed = min(values, key=lambda k: (abs(values[k] - aggregate), k))
        why = "the seed nearest the aggregate; --seed-pick best takes the best seed"
    listed = ", ".join(f"{k}: {v:.4g}" for k, v in sorted(values.items()))
    return seed, f"; seed {seed} ({metric} {values[seed]:.6g}, {why}; seeds {listed})"


def register_bundle(tracking_uri: str, bundle_dir: Path, run_id: str, name: str, artifact_path: str = "bundle"):
    """Log the bundle folder as artifacts of the trial run and add it as a new version of registered model `name`."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        c.log_artifacts(run_id, str(bundle_dir), artifact_path=artifact_path)
        try:
            c.get_registered_model(name)
        except MlflowException:
            c.create_registered_model(name, description="gentune bundles (model.safetensors + bundle.json)")
        source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        meta = json.loads((bundle_dir / META).read_text())
        tags = {k: str(meta.get(k, "")) for k in ("family", "sweep", "study", "trial_id", "sha256")}
        mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags)
    except MlflowException as e:
        raise GentuneError(f"MLflow model registry ({tracking_uri}): {e.message if hasattr(e, 'message') else e}") from None
    return mv
