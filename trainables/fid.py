"""FID inside a GAN trial: pytorch-fid's Inception on the training device, real statistics cached
per dataset fingerprint. Only computed with real FID weights; never with a random network."""
from __future__ import annotations

import torch

from trainables.errors import GentuneError
from trainables.data import ImageSet, cache_root


def fid_weights_for(cfg) -> str | None:
    """The weights file this config will use, None when FID is off (or auto and no file found)."""
    from trainables.metrics.fid import find_weights, require_weights

    if cfg.fid == "off":
        return None
    if cfg.fid == "on":
        return str(require_weights(cfg.fid_weights or None))
    found = find_weights(cfg.fid_weights or None)
    return str(found) if found is not None and found.is_file() else None


def fid_for(trainer, real: ImageSet, fake_u8: torch.Tensor) -> dict[str, float]:
    """{"fid": value} for generated uint8 images against the real set, or {} when FID is off."""
    from trainables.metrics import fid as F

    cfg = trainer.cfg
    if not hasattr(trainer, "_fid_state"):
        weights = trainer.fid_weights
        if weights is None:
            trainer._fid_state = None
        else:
            model = F.build_inception(cfg.fid_dims, weights, trainer.device)
            tag = F.weights_tag(weights)
            mu, sigma = F.cached_real_stats(
                lambda: real.images, real.fingerprint, cache_root(cfg.cache_dir) / "fid", model, cfg.fid_dims, tag,
                device=trainer.device, quiet=trainer.quiet,
            )
            trainer._fid_state = (model, mu, sigma)
    if trainer._fid_state is None:
        return {}
    model, mu, sigma = trainer._fid_state
    feats = F.inception_features(model, fake_u8, device=trainer.device, quiet=True)
    m2, s2 = F.stats(feats)
    try:
        return {"fid": float(F.frechet_distance(m2, s2, mu, sigma))}
    except GentuneError:
        raise
    except Exception as e:  # a degenerate sample set (e.g. NaN features) is no FID at all
        raise GentuneError(f"FID failed: {e}") from None
