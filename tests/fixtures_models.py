"""Fixtures that build tiny model families (owned by the merge engine's tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pearl_bot.recipe import Recipe, load_recipe
from pearl_bot.testing.models import TinyConfig, build_family

FAMILY = ["base", "ft_a", "ft_b", "ft_c"]


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float32 Mistral-shaped base and three fine-tunes (hidden 64, 4 layers)."""
    root = tmp_path_factory.mktemp("family-f32")
    return build_family(root, FAMILY, TinyConfig(num_hidden_layers=4), seed=3)


@pytest.fixture(scope="session")
def tiny_family_bf16(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same shape stored in bfloat16, like real checkpoints (many tied magnitudes)."""
    root = tmp_path_factory.mktemp("family-bf16")
    config = TinyConfig(num_hidden_layers=4, dtype="bfloat16")
    return build_family(root, FAMILY, config, seed=5, noise=0.002)


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[[str], Recipe]:
    """Write recipe text to a file in the test's folder and load it."""

    def write(text: str) -> Recipe:
        path = tmp_path / "recipe.yml"
        path.write_text(text, encoding="utf-8")
        return load_recipe(path)

    return write
