"""The recipe model: real recipes parse verbatim, malformed ones fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pearl_bot.errors import RecipeError
from pearl_bot.recipe import (
    ModelRef,
    format_field,
    load_recipe,
    parse_model_ref,
    parse_recipe,
    strip_sections,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"

TIES = """\
models:
  - model: org/base
  - model: org/a
    parameters: {density: 0.5, weight: 0.5}
  - model: org/b
    parameters: {density: 0.5, weight: 0.5}
merge_method: ties
base_model: org/base
parameters: {normalize: true}
dtype: bfloat16
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_recipe_parses(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.upstreams(), "an example names its upstream models"
    assert recipe.path == path.resolve()


def test_at_least_three_real_world_shapes_are_bundled() -> None:
    methods = {load_recipe(p).merge_method for p in EXAMPLES}
    assert {"ties", "dare_ties", "slerp"} <= methods


@pytest.mark.skipif(
    not SEED.is_dir(), reason="needs ../shared/seed, the team's seed recipes beside the checkout"
)
@pytest.mark.parametrize("name", ["pearl-7b-0210-ties.yml", "pearl-7b-slerp.yml"])
def test_seed_recipes_are_taken_verbatim(name: str) -> None:
    recipe = load_recipe(SEED / name)
    assert recipe.text == (SEED / name).read_text()
    assert recipe.mergekit_config() == yaml.safe_load(recipe.text)


def test_pearl_recipe_reads_as_mergekit_reads_it() -> None:
    recipe = load_recipe(ROOT / "examples" / "pearl-7b-0210-ties.yml")
    assert recipe.merge_method == "ties"
    assert recipe.base_model == ModelRef(
        key="OpenPipe/mistral-ft-optimized-1227", repo_id="OpenPipe/mistral-ft-optimized-1227"
    )
    assert [m.ref.repo_id for m in recipe.non_base_models()] == [
        "louisbrulenaudet/Pearl-7B-slerp",
        "WizardLM/WizardMath-7B-V1.1",
        "cognitivecomputations/WestLake-7B-v2-laser",
        "CultriX/NeuralTrix-7B-dpo",
    ]
    assert recipe.non_base_models()[0].parameters == {"density": 0.5, "weight": 0.4}
    assert recipe.parameters == {"normalize": True, "int8_mask": True}
    assert recipe.dtype == "float16"
    assert recipe.publish is not None and recipe.publish.create_pr is True
    assert recipe.card.license == "apache-2.0"


def test_mergekit_part_drops_pearl_sections_and_keeps_comments() -> None:
    recipe = load_recipe(ROOT / "examples" / "pearl-7b-0210-ties.yml")
    text = recipe.mergekit_yaml()
    assert "publish:" not in text and "repo_id" not in text and "card:" not in text
    assert text.startswith("# Pearl-7B-0210-ties: a TIES merge")
    assert "sections start here" not in text
    assert yaml.safe_load(text) == recipe.mergekit_config()


def test_strip_sections_keeps_following_mergekit_keys() -> None:
    text = "models: []\npublish:\n  repo_id: a/b\n  tag: x\ndtype: float16\n"
    assert strip_sections(text, ["publish"]) == "models: []\ndtype: float16\n"


def test_slerp_slices_with_shared_range_and_filter_gradients() -> None:
    recipe = load_recipe(ROOT / "examples" / "slerp-lazymergekit.yml")
    assert recipe.merge_method == "slerp"
    assert [m.layer_range for m in recipe.models] == [(0, 32), (0, 32)]
    assert recipe.parameters["t"][0] == {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}


def test_model_refs_hub_revision_and_local(tmp_path: Path) -> None:
    (tmp_path / "local-model").mkdir()
    assert parse_model_ref("org/name@v1.2") == ModelRef("org/name@v1.2", "org/name", "v1.2")
    local = parse_model_ref("./local-model", base_dir=tmp_path)
    assert local.is_local and local.path == (tmp_path / "local-model").resolve()
    bare = parse_model_ref("local-model", base_dir=tmp_path)
    assert bare.path == local.path, "an existing folder beside the recipe is local, as in mergekit"
    mapped = parse_model_ref({"path": "org/x", "revision": "abc1234"})
    assert (mapped.repo_id, mapped.revision) == ("org/x", "abc1234")


def test_format_field() -> None:
    assert format_field(("models", 2, "parameters", "density")) == "models[2].parameters.density"


MALFORMED = {
    "wrong type": (
        TIES.replace("dtype: bfloat16", "dtype: [bfloat16]"),
        "dtype",
        "valid string",
    ),
    "density 1.5": (
        TIES.replace(
            "{density: 0.5, weight: 0.5}\n  - model: org/b",
            "{density: 1.5, weight: 0.5}\n  - model: org/b",
        ),
        "models[1].parameters.density",
        "between 0 and 1",
    ),
    "missing base for ties": (
        TIES.replace("base_model: org/base\n", ""),
        "base_model",
        "needs a base model",
    ),
    "unknown method": (
        TIES.replace("merge_method: ties", "merge_method: frankenmerge"),
        "merge_method",
        "unsupported merge method 'frankenmerge'",
    ),
    "empty models": (
        "models: []\nmerge_method: linear\n",
        "models",
        "at least one model",
    ),
    "bad repo id": (
        TIES.replace("org/a\n", "org//a b\n"),
        "models[1].model",
        "neither a Hub repo id",
    ),
    "duplicate models": (
        TIES.replace("org/b\n", "org/a\n"),
        "models[2].model",
        "listed twice (also models[1])",
    ),
    "unknown publish key": (
        TIES + "publish:\n  repo_id: org/out\n  create_pull_request: true\n",
        "publish.create_pull_request",
        "unknown key in the `publish` section",
    ),
    "slices with mismatched layer ranges": (
        "slices:\n  - sources:\n      - {model: org/a, layer_range: [0, 32]}\n"
        "      - {model: org/b, layer_range: [0, 16]}\n"
        "merge_method: slerp\nbase_model: org/a\nparameters: {t: 0.5}\n",
        "slices[0].sources[1].layer_range",
        "spans 16 layers but sources[0] spans 32",
    ),
    "non-mapping YAML": ("- just\n- a list\n", None, "must be a YAML mapping"),
    "missing local folder": (
        TIES.replace("model: org/a\n", "model: ./no-such-folder\n"),
        "models[1].model",
        "local folder './no-such-folder' does not exist",
    ),
    "empty revision": (
        TIES.replace("model: org/a\n", "model: org/a@\n"),
        "models[1].model",
        "names no revision after '@'",
    ),
    "unknown parameter (typo)": (
        TIES.replace("normalize: true", "lamda: 0.85"),
        "parameters.lamda",
        "did you mean 'lambda'?",
    ),
    "missing weight": (
        TIES.replace(
            "{density: 0.5, weight: 0.5}\n  - model: org/b", "{density: 0.5}\n  - model: org/b"
        ),
        "models[1].parameters.weight",
        "missing required parameter 'weight'",
    ),
    "one-value gradient": (
        TIES.replace(
            "{density: 0.5, weight: 0.5}\n  - model: org/b",
            "{density: [0.5], weight: 0.5}\n  - model: org/b",
        ),
        "models[1].parameters.density",
        "at least 2 values",
    ),
    "global parameter on a model": (
        TIES.replace(
            "{density: 0.5, weight: 0.5}\n  - model: org/b",
            "{weight: 0.5, normalize: false}\n  - model: org/b",
        ),
        "models[1].parameters.normalize",
        "move it to the top-level",
    ),
    "bool as number": (
        TIES.replace("normalize: true", "normalize: 1.0"),
        "parameters.normalize",
        "must be true or false",
    ),
    "gradient density out of range": (
        TIES.replace(
            "{density: 0.5, weight: 0.5}\n  - model: org/b",
            "{density: [0.2, 1.2], weight: 0.5}\n  - model: org/b",
        ),
        "models[1].parameters.density[1]",
        "between 0 and 1",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED), ids=str)
def test_malformed_recipe_fails_naming_file_and_field(tmp_path: Path, case: str) -> None:
    text, field, message = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    err = info.value
    assert err.path == path.resolve()
    assert err.field == field
    assert message in str(err)
    assert str(err).startswith(str(path.resolve()))
    assert isinstance(err, ValueError), "a recipe error is also a ValueError"


def test_missing_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "models:\n  - model: [unclosed\n"))
    assert info.value.field is not None and info.value.field.startswith("line ")


def test_unknown_mergekit_keys_pass_through() -> None:
    recipe = parse_recipe(TIES + "some_future_mergekit_option: 3\n")
    assert recipe.mergekit_config()["some_future_mergekit_option"] == 3


def test_global_weight_is_a_fallback_for_models_without_one() -> None:
    text = TIES.replace("{density: 0.5, weight: 0.5}", "{density: 0.5}")
    recipe = parse_recipe(text.replace("normalize: true", "normalize: true, weight: 0.3"))
    assert recipe.parameters["weight"] == 0.3


def test_linear_needs_a_weight_on_every_model_including_the_base() -> None:
    text = "models:\n  - model: org/a\n    parameters: {weight: 1}\n  - model: org/b\n"
    with pytest.raises(RecipeError) as info:
        parse_recipe(text + "merge_method: linear\n")
    assert info.value.field == "models[1].parameters.weight"


def test_slerp_needs_two_models_one_of_them_the_base() -> None:
    text = (
        "slices:\n  - sources:\n      - {model: org/a, layer_range: [0, 4]}\n"
        "      - {model: org/b, layer_range: [0, 4]}\n"
        "merge_method: slerp\nbase_model: org/c\nparameters: {t: 0.5}\n"
    )
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    assert info.value.field == "models"
    assert "exactly 2 models" in str(info.value)


def test_recipe_hash_follows_the_text() -> None:
    assert parse_recipe(TIES).sha256 != parse_recipe(TIES + "# comment\n").sha256
