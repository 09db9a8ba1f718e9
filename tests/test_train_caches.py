"""The training-step caches: cached mels give the reference front-end's features for the same crop,
the frozen-text cache gives the tower's own outputs, padding to the longest caption changes nothing
under the attention mask, and the cached data mode covers every clip once per pass on 2 ranks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from clap.model.frontend import (
    MelConfig,
    clip_training_mel,
    crop_start,
    prepare_audio_features,
    training_crop,
)
from clap.model.text_encoders import build_text_encoder
from clap.train.cached_data import batches_from_clips, load_clips, rank_shards
from clap.train.data import shard_urls
from clap.train.text_cache import FrozenTextCache, tokenize_to_longest
from tests.toy_shards import write_toy_shards

SR = 48_000
CAPTIONS = ["a dog barks", "rain falls on a tin roof while a car passes by in the distance", "a bell", "birds"]


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = np.sin(2 * np.pi * 440 * t * (1 + 0.1 * np.sin(t)))
    return (0.3 * tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("fusion", [False, True])
def test_short_clip_crop_is_the_reference_features(fusion: bool) -> None:
    wave = clip(3.3)
    reference = prepare_audio_features([wave], fusion=fusion, training=True).input_features[0]
    mel, longer = clip_training_mel(wave, fusion=fusion)
    assert not longer
    assert torch.equal(training_crop(mel, longer, fusion=fusion), reference)
    # float16 storage (the default) rounds to 11 significant bits
    half = training_crop(mel.half(), longer, fusion=fusion)
    assert torch.allclose(half, reference, rtol=2**-11, atol=1e-3)


def test_long_clip_crop_in_frames_is_the_reference_crop() -> None:
    """Non-fusion: a crop starting at frame j equals the reference's features of the waveform crop
    starting at sample 480 j, except two frames at each end, whose 1024-sample windows reach past
    the crop (reflect padding there, the clip's real neighbouring samples in the cache)."""
    wave = clip(13.7, seed=1)
    cfg = MelConfig.for_model(False)
    mel, longer = clip_training_mel(wave, fusion=False)
    assert longer and mel.shape[0] == cfg.num_frames(wave.size)
    for seed in range(3):
        crop = training_crop(mel, longer, fusion=False, generator=torch.Generator().manual_seed(seed))
        start = crop_start(mel.shape[0], cfg.chunk_frames, training=True, generator=torch.Generator().manual_seed(seed))
        view = wave[start * cfg.hop_length : start * cfg.hop_length + cfg.chunk_samples]
        reference = prepare_audio_features([view], fusion=False).input_features[0]
        assert crop.shape == reference.shape == (1, 1001, 64)
        assert torch.allclose(crop[:, 2:-2], reference[:, 2:-2], atol=1e-3)


def test_long_clip_fusion_crops_are_the_reference_views() -> None:
    wave = clip(21.0, seed=2)
    mel, longer = clip_training_mel(wave, fusion=True)
    assert longer
    for seed in range(2):
        crop = training_crop(mel, longer, fusion=True, generator=torch.Generator().manual_seed(seed))
        reference = prepare_audio_features(
            [wave], fusion=True, training=True, generator=torch.Generator().manual_seed(seed)
        ).input_features[0]
        assert crop.shape == reference.shape == (4, 1001, 64)
        assert torch.allclose(crop, reference, atol=1e-4)


def test_frozen_text_cache_equals_running_the_tower() -> None:
    torch.manual_seed(0)
    tower = build_text_encoder("tiny-bert", load_weights=False).eval()
    cache = FrozenTextCache(tower, "cpu", batch_size=3)
    captions = CAPTIONS + CAPTIONS[:2]  # repeats are looked up, not recomputed
    cached = cache.features(captions)
    assert len(cache) == len(CAPTIONS)
    with torch.no_grad():
        direct = tower(**tower.tokenize(captions))  # 77 tokens, the tower's own path
    assert torch.allclose(cached, direct, atol=1e-5)


def _pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta", "bert-base-uncased", "roberta-base", "clip"])
def test_padding_to_longest_equals_padding_to_77(name: str) -> None:
    """Pooled outputs (pooler or masked mean) do not depend on how far the batch is padded."""
    torch.manual_seed(0)
    tower = build_text_encoder(name, {"config": SMALL}, load_weights=False).eval()
    config = tower.model.config
    pad_id, eos = int(config.pad_token_id), getattr(config, "eos_token_id", None)
    rng = np.random.default_rng(0)
    rows = [[int(t) for t in rng.integers(3, 900, size=n)] for n in (5, 17, 9)]
    if name == "clip":
        rows = [row + [int(eos)] for row in rows]
    longest = max(len(row) for row in rows)
    with torch.no_grad():
        full = tower(*_pad(rows, 77, pad_id))
        short = tower(*_pad(rows, longest, pad_id))
    assert torch.allclose(full, short, atol=1e-5)


def test_tokenize_to_longest_gives_the_77_token_outputs() -> None:
    torch.manual_seed(0)
    tower = build_text_encoder("tiny-bert", load_weights=False).eval()
    tokens = tokenize_to_longest(tower, CAPTIONS)
    assert tokens["input_ids"].shape[1] == int(tokens["attention_mask"].sum(dim=1).max()) < 77
    with torch.no_grad():
        assert torch.allclose(tower(**tokens), tower(**tower.tokenize(CAPTIONS)), atol=1e-5)


def test_cached_mode_covers_every_clip_once_per_pass_on_two_ranks(tmp_path: Path) -> None:
    root = write_toy_shards(tmp_path, per_class={"train": 5}, samples_per_shard=3)  # 15 clips, 5 shards
    urls = shard_urls(root, ["toy"], "train")
    seen_by_rank = []
    for rank in range(2):
        clips = load_clips(rank_shards(urls, rank, 2), fusion=False)
        batches = batches_from_clips(clips, batch_size=4, target=lambda meta: meta["text"][0], fusion=False, seed=rank)
        passes = [[], []]
        for batch in batches:
            assert batch.features.input_features.shape == (4, 1, 1001, 64)
            for clip_id in batch.ids:
                drawn = sum(len(p) for p in passes)
                if drawn < 2 * len(clips):
                    passes[drawn // len(clips)].append(clip_id)
            if sum(len(p) for p in passes) >= 2 * len(clips):
                break
        for one_pass in passes:
            assert sorted(one_pass) == sorted(c.id for c in clips)  # every clip of the rank, once
        assert passes[0] != passes[1]  # a new order each pass
        seen_by_rank.append(Counter(passes[0]))
    assert not set(seen_by_rank[0]) & set(seen_by_rank[1])
    assert sum(len(s) for s in seen_by_rank) == 15


@pytest.mark.slow
def test_ray_training_in_cached_mode_with_a_frozen_text_tower(tmp_path: Path) -> None:
    """The train stage's path end to end: 2 Ray workers (DDP over the step module), cached features,
    cached frozen-text outputs; the text tower comes out unchanged, the projection trained."""
    import os

    import ray

    from clap.model.factory import load_model
    from clap.train.config import TrainConfig
    from clap.train.trainer import run_training

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = write_toy_shards(tmp_path / "toy")
    config = TrainConfig(
        audio_encoder="htsat-cpu", text_encoder="tiny-bert", train_sets=["toy"], val_set="toy/val",
        shard_root=str(root), storage_path=str(tmp_path / "ray"), batch_size=4, epochs=2, steps_per_epoch=2,
        warmup_steps=1, lr=1e-3, num_workers=2, cpus_per_worker=1, keep_checkpoints=1, log_every=1,
        caption_augmentation="none", freeze_text=True, data_mode="cached",
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_training(config, tmp_path / "model")
    finally:
        ray.shutdown()
    assert [s["step"] for s in result.history["steps"]] == [1, 2, 3, 4]
    assert all(np.isfinite(s["loss"]) for s in result.history["steps"])
    assert 0.0 <= result.metrics["val_t2a_map10"] <= 1.0
    from clap.model.model import ClapConfig, ClapModel

    torch.manual_seed(config.seed)  # rank 0's initial model (the loop seeds with seed + rank)
    initial = ClapModel(ClapConfig(audio_encoder="htsat-cpu", text_encoder="tiny-bert", freeze_text=True))
    trained = load_model(tmp_path / "model")
    for key, value in initial.text_encoder.state_dict().items():
        assert torch.equal(trained.text_encoder.state_dict()[key], value), key
    assert not torch.equal(trained.text_projection.linear1.weight, initial.text_projection.linear1.weight)


def _toy_tower(seed: int):
    torch.manual_seed(seed)
    return build_text_encoder("tiny-bert", load_weights=False).eval()


def test_a_saved_text_table_is_preloaded_only_by_the_same_tower(tmp_path: Path, caplog) -> None:
    tower = _toy_tower(0)
    built = FrozenTextCache(tower, "cpu", batch_size=3)
    expected = built.features(CAPTIONS)
    built.save(tmp_path / "text", text_encoder_name="tiny-bert")

    same = FrozenTextCache(tower, "cpu")
    assert same.preload(tmp_path / "text") and len(same) == len(CAPTIONS)
    assert torch.equal(same.features(CAPTIONS[::-1]), expected.flip(0))
    assert same.encoded == 0  # every caption came from the table
    new = same.features(["a cat purrs"])  # a caption the table lacks is encoded on first use
    assert same.encoded == 1
    with torch.no_grad():
        assert torch.allclose(new, tower(**tower.tokenize(["a cat purrs"])), atol=1e-5)

    other = _toy_tower(1)  # other weights: the table must not be used
    caplog.clear()
    foreign = FrozenTextCache(other, "cpu")
    assert not foreign.preload(tmp_path / "text")
    assert "another text tower" in caplog.text and str(tmp_path / "text") in caplog.text
    with torch.no_grad():
        assert torch.allclose(foreign.features(CAPTIONS), other(**other.tokenize(CAPTIONS)), atol=1e-5)
    assert foreign.encoded == len(CAPTIONS)

    (tmp_path / "text" / "features.safetensors").write_bytes(b"not a table")
    caplog.clear()
    assert not FrozenTextCache(tower, "cpu").preload(tmp_path / "text")
    assert "not used" in caplog.text


def test_tower_fingerprint_ignores_the_last_tokenizer_call_but_not_the_length_limit() -> None:
    from clap.train.text_cache import text_tower_fingerprint

    tower = _toy_tower(0)
    before = text_tower_fingerprint(tower)
    tower.tokenize(CAPTIONS)  # a fast tokenizer keeps the last call's padding/truncation settings
    tokenize_to_longest(tower, CAPTIONS[:1])
    assert text_tower_fingerprint(tower) == before
    assert text_tower_fingerprint(_toy_tower(0)) == before
    tower.max_length = 32
    assert text_tower_fingerprint(tower) != before


def _stage_params(tmp_path: Path, shard_root: Path, **train: object) -> Path:
    import yaml

    from clap.params import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params.update(text_encoder="tiny-bert", caption_augmentation="none", train_sets=["toy"])
    params["train"].update(shard_root=str(shard_root), val_set="toy/val", **train)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_text_features_stage_writes_the_table_a_training_run_preloads(tmp_path: Path) -> None:
    """The stage encodes every training caption with the tower the run builds (here a saved
    'pretrained' tiny BERT); a run's objective, seeded differently, takes it and encodes nothing."""
    from clap.params import load_params
    from clap.stages import text_features
    from clap.train.cached_data import cached_train_batches
    from clap.train.config import TrainConfig
    from clap.train.objectives import ContrastiveObjective
    from clap.train.trainer import loop_config

    root = write_toy_shards(tmp_path / "toy", per_class={"train": 2, "val": 1})
    _toy_tower(5).model.save_pretrained(tmp_path / "bert")
    params = _stage_params(tmp_path, root, text_pretrained=str(tmp_path / "bert"), freeze_text=True)
    assert text_features.main(["--params", str(params), "--out", str(tmp_path / "text")]) == 0
    table = json.loads((tmp_path / "text" / "captions.json").read_text())
    train_captions = {caption for meta in _train_metas(root) for caption in meta["text"]}
    assert set(table["captions"]) == train_captions and len(table["captions"]) == len(train_captions)

    losses = []
    for preload in (True, False):
        config = TrainConfig.from_params(load_params(params))
        loop = loop_config(config)
        loop["text_features"] = str(tmp_path / "text") if preload else None
        objective = ContrastiveObjective(loop)
        torch.manual_seed(123)
        core = objective.build().train()
        batch = next(cached_train_batches(loop["train_urls"], batch_size=4, target=objective.target, seed=0,
                                          rank=0, world_size=1, fusion=False))
        losses.append(objective.loss(core, core, batch.features, batch.targets, torch.device("cpu"),
                                     torch.Generator().manual_seed(0)))
        assert objective.text_cache.encoded == (0 if preload else len(set(batch.targets)))
    assert torch.allclose(losses[0], losses[1], atol=1e-5)

    frozen_off = _stage_params(tmp_path, root, text_pretrained=str(tmp_path / "bert"), freeze_text=False)
    assert text_features.main(["--params", str(frozen_off), "--out", str(tmp_path / "none")]) == 0
    assert json.loads((tmp_path / "none" / "captions.json").read_text())["captions"] == []


def _train_metas(root: Path) -> list[dict]:
    from clap.data.shards import iter_shard_samples

    return [meta for _, _, _, meta in iter_shard_samples(shard_urls(root, ["toy"], "train"))]


def test_a_saved_text_table_is_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """Captions of equal length must not be chunked in string-hash order: two processes with different
    PYTHONHASHSEED write byte-identical tables (DVC hashes the text_features stage's output)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from clap.model.text_encoders import build_text_encoder\n"
        "from clap.train.text_cache import FrozenTextCache\n"
        "torch.manual_seed(0)\n"
        "tower = build_text_encoder('tiny-bert', load_weights=False).eval()\n"
        "cache = FrozenTextCache(tower, 'cpu', batch_size=2)\n"
        "cache.add([f'sound {c}' for c in 'abcdefghij'] + ['a dog barks', 'a cat meows', 'rain'])\n"
        "cache.save(sys.argv[1])\n"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / seed)], check=True, env=env, timeout=300)
        outputs.append({name: (tmp_path / seed / name).read_bytes() for name in ("captions.json", "features.safetensors")})
    assert outputs[0] == outputs[1]
