"""`gentune arch` prints each architecture layer by layer as the report does.

The report's prints are broken by page breaks (fragments out of order, "\\_" escapes, a newer torch
printing `approximate='none'` and `bias=True` on BatchNorm), so both texts are reduced to the
sequence of leaf layers with their arguments, which must match exactly, in order.
"""
from __future__ import annotations

import re

import pytest

from search.commands.core import arch_modules, arch_text
from tests.conftest import REPO, gentune

SEED = REPO.parent / "shared" / "seed" / "000_57b9b7a071357884.txt"
LEAF = re.compile(
    r"\b(ConvTranspose2d|Conv2d|ParametrizedConv2d|BatchNorm2d|BatchNorm1d|LeakyReLU|ReLU|GELU|Tanh|Sigmoid|Linear|"
    r"MaxPool2d|AvgPool2d|GroupNorm|Upsample|Dropout|PixelShuffle|_SpectralNorm)\(([^()]*(?:\([^()]*\)[^()]*)*)\)?"
)


def normalise(text: str) -> str:
    text = text.replace("\\_", "_").replace("'", "")
    text = re.sub(r"approximate=(None|none)", "approximate=none", text)
    text = text.replace(", bias=True", "")  # newer torch prints BatchNorm/GroupNorm's bias flag
    text = re.sub(r"[ \t]+\n", "\n", text)
    # ParametrizedConv2d prints its arguments on the next line: join them
    return re.sub(r"ParametrizedConv2d\(\s*\n\s*", "ParametrizedConv2d(", text)


def leaves(text: str) -> list[str]:
    return [f"{m.group(1)}({' '.join(m.group(2).split())})" for m in LEAF.finditer(normalise(text))]


def report_section(start: str, end: str) -> str:
    text = SEED.read_text()
    a = text.index(start)
    return text[a : text.index(end, a)]


SECTIONS = {
    "gan-a": ("### Generator architecture of Model A", "## Implementation details of Model A"),
    "gan-b": ("## Generator architecture of Model B", "### Implementation details of Model B"),
    "ddpm": ("### Diffusion Model architecture", "### Implementation details:"),
    "dann": ("**DANN, Feature Extractor model architecture:**", "### Implementation details:\n\n#### For each model"),
}


@pytest.mark.parametrize("name", list(SECTIONS))
def test_arch_matches_report(name: str) -> None:
    ours = leaves(arch_text(name))
    theirs = leaves(report_section(*SECTIONS[name]))
    assert len(theirs) > 10, "the report section was not found"
    assert ours == theirs


def test_report_class_names_match() -> None:
    names = {n: [type(m).__name__ if n != "gan-b" else m._get_name() for m in arch_modules(n)] for n in SECTIONS}
    assert names["gan-a"] == ["Generator", "Discriminator"]
    assert names["gan-b"] == ["Generator", "Discriminator"]
    assert names["ddpm"] == ["DDPM"] and "(nn_model): ContextUnet(" in arch_text("ddpm")
    assert names["dann"] == ["FeatureExtractor", "LabelPredictor", "DomainClassifier"]


def test_arch_cli_prints_parameter_counts() -> None:
    out = gentune("arch", "dann").stdout
    assert out.count("parameters:") == 3
    import models.dann as d

    n = sum(p.numel() for p in d.FeatureExtractor().parameters())
    assert f"parameters: {n:,}" in out
    bad = gentune("arch", "vae", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
