"""params.yaml through clap.params: every section of the committed params loads with the loader its
stage uses, and an unknown key anywhere is one line naming where, the key, a close match and the
known keys."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from clap.corpus import CorpusConfig
from clap.data.captions import CaptionConfig
from clap.data.ingest import IngestConfig
from clap.data.k2c_standin import StandinConfig
from clap.data.manifest import ManifestRow, write_manifest
from clap.data.normalize import NormalizeConfig
from clap.data.shards import ShardConfig
from clap.eval.retrieval import RetrievalConfig
from clap.eval.zeroshot import ZeroShotConfig
from clap.params import ParamsError, section
from clap.stages.finetune import task_config
from clap.train.config import TOP_LEVEL_SWITCHES, TrainConfig
from tests.repo_copy import committed_params


def finetune_configs(params: dict[str, Any]) -> list[TrainConfig]:
    return [task_config(params, task) for task in section(params, "finetune")["tasks"]]


def caption_configs(params: dict[str, Any]) -> tuple[CaptionConfig, StandinConfig]:
    """The captions stage's config and the k2c_model stage's (``captions.k2c_standin``)."""
    captions = CaptionConfig.from_params(params)
    return captions, StandinConfig.from_mapping(captions.k2c_standin)


#: Section -> the call its stage makes (``sources`` and ``ingest`` are read together by ingest).
LOADERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "corpus": CorpusConfig.from_params,
    "sources": IngestConfig.from_params,
    "ingest": IngestConfig.from_params,
    "normalize": lambda params: NormalizeConfig.from_params(section(params, "normalize")),
    "captions": caption_configs,
    "shards": ShardConfig.from_params,
    "train": TrainConfig.from_params,
    "eval_retrieval": lambda params: RetrievalConfig.from_params(params.get("eval_retrieval")),
    "eval_zeroshot": lambda params: ZeroShotConfig.from_params(params.get("eval_zeroshot")),
    "finetune": finetune_configs,
}

#: Where an unknown key is put -> how the message names that place.
UNKNOWN_KEY_PLACES = {
    ("corpus",): "params.yaml corpus",
    ("corpus", "classification"): "params.yaml corpus.classification",
    ("sources", 0): "params.yaml source 'builtin' (kind builtin)",
    ("ingest",): "params.yaml ingest",
    ("normalize",): "params.yaml normalize",
    ("captions",): "params.yaml captions",
    ("captions", "k2c_standin"): "params.yaml captions.k2c_standin",
    ("shards",): "params.yaml shards",
    ("train",): "params.yaml train",
    ("eval_retrieval",): "params.yaml eval_retrieval",
    ("eval_zeroshot",): "params.yaml eval_zeroshot",
    ("eval_zeroshot", "sets", 0): "params.yaml eval_zeroshot.sets 'builtin_esc'",
    ("finetune",): "params.yaml finetune",
    ("finetune", "tasks", 0): "params.yaml finetune.tasks 'esc'",
}


@pytest.fixture
def params(tmp_path: Path) -> dict[str, Any]:
    """The committed params, with fine-tune's class lists read from a small manifest."""
    params = committed_params()
    rows = [ManifestRow(id=f"{source}/{i}", source=source, split=split, path=f"{i}.flac", labels=[label], fold=fold)
            for i, (source, split, label, fold) in enumerate([
                ("builtin_esc", "test", "dog", 1), ("builtin_esc", "test", "rain", 2),
                ("builtin_tags", "train", "bell", None), ("builtin_tags", "test", "wind", None)])]
    write_manifest(rows, tmp_path / "captions.jsonl")
    params["finetune"]["manifest"] = str(tmp_path / "captions.jsonl")
    return params


def test_every_section_of_the_committed_params_loads(params: dict[str, Any]) -> None:
    sections = {key for key, value in params.items() if isinstance(value, (dict, list)) and key != "train_sets"}
    assert sections == set(LOADERS), "a params.yaml section without a loader in this test (or a loader too many)"
    assert set(params) - sections <= set(TOP_LEVEL_SWITCHES), "a top-level switch no loader reads"
    loaded = {name: load(copy.deepcopy(params)) for name, load in LOADERS.items()}
    train = loaded["train"]
    assert train.fusion == params["fusion"] and train.train_sets == params["train_sets"]
    assert train.betas == tuple(params["train"]["betas"]) and isinstance(train.lr, float)
    assert loaded["captions"][0].mode == params["caption_augmentation"]
    assert loaded["corpus"].clips_per_class == params["corpus"]["classification"]["clips_per_class"]
    assert [c.objective for c in loaded["finetune"]] == ["classification"] * len(params["finetune"]["tasks"])


def _put(params: dict[str, Any], place: tuple[Any, ...], key: str, value: Any) -> None:
    target: Any = params
    for step in place:
        target = target[step]
    target[key] = value


@pytest.mark.parametrize("place", list(UNKNOWN_KEY_PLACES), ids=lambda place: ".".join(map(str, place)))
def test_an_unknown_key_anywhere_is_one_line_naming_place_key_and_known_keys(
    params: dict[str, Any], place: tuple[Any, ...]
) -> None:
    _put(params, place, "bogus_key", 1)
    loader = LOADERS[str(place[0])]
    with pytest.raises((ValueError, RuntimeError)) as err:
        loader(params)
    message = str(err.value)
    assert "\n" not in message
    assert re.match(rf"{re.escape(UNKNOWN_KEY_PLACES[place])}: unknown keys \['bogus_key'\]; known: \[.+\]$", message)


def test_a_misspelt_key_gets_its_close_match(params: dict[str, Any]) -> None:
    params["train"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"params.yaml train: unknown keys \['epoch'\] \(did you mean 'epochs' for 'epoch'\?\); known: \[.*'epochs'"):
        TrainConfig.from_params(params)


def test_values_are_converted_to_the_fields_types_or_refused_naming_the_key(params: dict[str, Any]) -> None:
    params["train"].update(lr="1e-4", warmup_steps=2.0, betas=[0.9, 1])  # YAML 1.1 reads 1e-4 as a string
    config = TrainConfig.from_params(params)
    assert config.lr == 1e-4 and config.warmup_steps == 2 and isinstance(config.warmup_steps, int)
    assert config.betas == (0.9, 1.0)
    params["train"]["epochs"] = "four"
    with pytest.raises(ParamsError, match=r"^params.yaml train.epochs: expected an integer, got 'four'$"):
        TrainConfig.from_params(params)
    params["train"]["epochs"] = 4
    params["train"]["betas"] = [0.9]
    with pytest.raises(ParamsError, match=r"params.yaml train.betas: expected a list of 2 values"):
        TrainConfig.from_params(params)


def test_a_top_level_switch_repeated_in_its_section_is_refused(params: dict[str, Any]) -> None:
    params["train"]["fusion"] = not params["fusion"]  # would silently lose to the top-level value
    with pytest.raises(ParamsError, match=r"params.yaml train: \['fusion'\] belong to the top level of params.yaml"):
        TrainConfig.from_params(params)


def test_a_misspelt_top_level_key_in_params_yaml_is_an_error(params: dict[str, Any], tmp_path: Path) -> None:
    """A typo at the top (`fusoin: true`) would otherwise be ignored and the run use the default."""
    import yaml

    from clap.params import SECTIONS, load_params

    assert set(params) == {*TOP_LEVEL_SWITCHES, *SECTIONS}  # the committed params hold exactly the known keys
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**params, "fusoin": True}))
    with pytest.raises(ParamsError, match=r"unknown keys \['fusoin'\] \(did you mean 'fusion'"):
        load_params(path)
