"""The training data path: shards split across ranks and loader processes without duplicates or gaps,
validation split across ranks with the single-process figures, mid-epoch checkpoints and resume."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from clap.data.shards import list_shards
from clap.train.data import consumer_share, eval_pairs, shard_urls, train_batches
from tests.faults import FailOnce
from tests.toy_shards import write_toy_shards


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 train clips in 9 shards of 2, 6 val clips in 3 shards of 2 (0.3 s each)."""
    return write_toy_shards(tmp_path_factory.mktemp("toy"), seconds=0.3, samples_per_shard=2)


@pytest.fixture(scope="module")
def big_shards_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same clips in 3 train shards of 8 (fewer shards than 2 ranks x 2 loader workers)."""
    return write_toy_shards(tmp_path_factory.mktemp("toy8"), seconds=0.3, samples_per_shard=8)


def train_ids(root: Path) -> list[str]:
    _, _, _, ids = eval_pairs([str(p) for p in list_shards(root, ["toy"], ["train"])])
    return ids


def one_pass(root: Path, rank: int, world_size: int, loader_workers: int, seed: int = 5) -> list[str]:
    urls = shard_urls(root, ["toy"], "train")
    batches = train_batches(urls, batch_size=3, target=lambda meta: meta["text"][0], shuffle_buffer=4, seed=seed,
                            rank=rank, world_size=world_size, loader_workers=loader_workers, passes=1)
    seen = []
    for batch in batches:
        assert len(batch.waveforms) == len(batch.targets) == len(batch.ids) <= 3
        assert all(w.dtype == torch.float32 and w.ndim == 1 and w.numel() == 14_400 for w in batch.waveforms)
        seen.extend(batch.ids)
    return seen


@pytest.mark.parametrize("root_fixture", ["toy_root", "big_shards_root"])
def test_two_ranks_by_two_loader_workers_see_every_clip_once(root_fixture: str, request) -> None:
    root = request.getfixturevalue(root_fixture)
    expected = train_ids(root)
    per_rank = [one_pass(root, rank, 2, loader_workers=2) for rank in range(2)]
    seen = per_rank[0] + per_rank[1]
    assert Counter(seen) == Counter(expected), "a clip was seen twice or not at all"
    assert len(expected) == 18 and all(per_rank), "a rank got nothing"


def test_the_partition_is_the_same_in_process_and_changes_with_the_seed(toy_root: Path) -> None:
    expected = sorted(train_ids(toy_root))
    first = [one_pass(toy_root, rank, 2, loader_workers=0) for rank in range(2)]
    assert sorted(first[0] + first[1]) == expected
    again = [one_pass(toy_root, rank, 2, loader_workers=0) for rank in range(2)]
    assert again == first  # deterministic for a seed
    other = [one_pass(toy_root, rank, 2, loader_workers=0, seed=6) for rank in range(2)]
    assert sorted(other[0] + other[1]) == expected and other != first


def test_consumer_share_covers_every_shard_or_sample_once() -> None:
    for shards in range(1, 12):
        for consumers in range(1, 9):
            taken = Counter()
            for consumer in range(consumers):
                mine, stride = consumer_share(shards, consumer, consumers)
                samples = [(s, i) for s in mine for i in range(5)]  # 5 samples per shard, in order
                taken.update(sample for n, sample in enumerate(samples) if n % stride == (consumer if stride > 1 else 0))
            assert taken == Counter((s, i) for s in range(shards) for i in range(5)), (shards, consumers)


def test_endless_stream_keeps_going_past_one_pass(toy_root: Path) -> None:
    urls = shard_urls(toy_root, ["toy"], "train")
    batches = train_batches(urls, batch_size=4, target=lambda meta: meta["text"][0], shuffle_buffer=4, seed=1,
                            rank=0, world_size=1, loader_workers=1)
    ids = [i for _, batch in zip(range(10), batches) for i in batch.ids]  # 40 clips: more than 2 passes
    assert len(ids) == 40 and set(ids) == set(train_ids(toy_root))


def test_an_unreadable_sample_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    import tarfile

    root = write_toy_shards(tmp_path, seconds=0.3, samples_per_shard=4)
    first = sorted((root / "toy" / "train").glob("*.tar"))[0]
    with tarfile.open(first) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken = members[0][0].name
    with tarfile.open(first, "w") as tar:
        for member, data in members:
            data = b"not a flac file" if member.name == broken else data
            member.size = len(data)
            tar.addfile(member, __import__("io").BytesIO(data))
    seen = []
    with caplog.at_level("WARNING", logger="clap.train.data"):
        for batch in train_batches(shard_urls(root, ["toy"], "train"), batch_size=5, target=lambda m: m["text"][0],
                                   shuffle_buffer=1, seed=0, rank=0, world_size=1, passes=1):
            seen.extend(batch.ids)
    assert len(seen) == 17 and len(set(seen)) == 17
    assert "unreadable flac" in caplog.text and broken.split(".")[0] in caplog.text


# --------------------------------------------------------------------------- validation across ranks


def _tiny_objective(objective: str, root: Path) -> tuple[object, torch.nn.Module]:
    from clap.train.objectives import OBJECTIVES
    from tests.tiny_clap import tiny_model
    from tests.toy_shards import TOY_CLASSES

    config = {
        "val_urls": shard_urls(root, ["toy"], "val"), "val_set": "toy/val", "fusion": False, "seed": 0,
        "caption_kinds": ["original"], "loader_workers": 1, "cpus_per_worker": 1, "classes": sorted(TOY_CLASSES),
        "multi_label": False, "linear_probe": True, "val_folds": None, "val_fraction": None,
    }
    instance = OBJECTIVES[objective](config)
    model = tiny_model(fusion=False, seed=3)
    if objective == "classification":
        from clap.train.objectives import AudioClassifier

        torch.manual_seed(4)
        model = AudioClassifier(model, len(TOY_CLASSES), linear_probe=True)
    return instance, model


def _evaluate_as_rank(rank: int, world_size: int, init_file: str, root: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results = {}
        for name in ("contrastive", "classification"):
            objective, model = _tiny_objective(name, Path(root))
            results[name] = objective.evaluate(model, torch.device("cpu"), batch_size=2)
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_validation_split_across_two_ranks_gives_the_single_process_figures(toy_root: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from clap.audio import SAMPLE_RATE
    from clap.eval.metrics import mean_average_precision, retrieval_metrics, topk_accuracy
    from clap.model.inference import ClapInference
    from tests.toy_shards import TOY_CLASSES

    mp.spawn(_evaluate_as_rank, args=(2, str(tmp_path / "init"), str(toy_root), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1], "ranks report different validation figures"

    # the same models, evaluated the way training validated before: everything in one process
    val_urls = shard_urls(toy_root, ["toy"], "val")
    waveforms, captions, owner, _ = eval_pairs(val_urls)
    _, model = _tiny_objective("contrastive", toy_root)
    engine = ClapInference(model, device="cpu", batch_size=32, progress=False)
    audio = engine.embed_audio([(w, SAMPLE_RATE) for w in waveforms])
    expected = {f"val_{k}": v for k, v in retrieval_metrics(audio, engine.embed_text(captions), owner).items()}
    assert ranks[0]["contrastive"] == pytest.approx(expected, abs=1e-6)

    from clap.model.frontend import prepare_audio_features

    _, classifier = _tiny_objective("classification", toy_root)
    classifier.eval()
    feats = prepare_audio_features(waveforms, fusion=False)
    with torch.no_grad():
        scores = classifier(feats.input_features, feats.is_longer).float().numpy()
    labels = sorted(TOY_CLASSES)
    _, _, _, ids = eval_pairs(val_urls)
    truth = np.stack([np.eye(len(labels), dtype=np.float32)[labels.index(next(c for c in labels if c.replace(" ", "_") in i))]
                      for i in ids])
    expected = {"val_map": mean_average_precision(scores, truth),
                **{f"val_{k}": v for k, v in topk_accuracy(scores, truth.argmax(axis=1), ks=(1, 5)).items()}}
    assert ranks[0]["classification"] == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- Ray: checkpoints and resume


@pytest.mark.slow
def test_mid_epoch_checkpoint_resume_with_loader_processes(toy_root: Path, tmp_path: Path) -> None:
    """2 Ray workers x 1 loader process, a checkpoint every 2 steps (3 steps per epoch): rank 1 dies
    at step 5, the run resumes from the mid-epoch checkpoint at step 4 and finishes; the validation
    figures all ranks reported are the single-process figures of the exported model."""
    import ray

    from clap.audio import SAMPLE_RATE
    from clap.eval.metrics import retrieval_metrics
    from clap.model.inference import ClapInference
    from clap.train.config import TrainConfig
    from clap.train.trainer import run_training

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    settings = dict(
        audio_encoder="htsat-cpu", text_encoder="tiny-bert", train_sets=["toy"], val_set="toy/val",
        shard_root=str(toy_root), storage_path=str(tmp_path / "ray"), batch_size=4, epochs=2, steps_per_epoch=3,
        warmup_steps=1, lr=5e-4, shuffle_buffer=8, num_workers=2, cpus_per_worker=1, max_failures=1,
        keep_checkpoints=1, log_every=1, caption_augmentation="none", checkpoint_every=2, loader_workers=1,
    )
    if "data_mode" in TrainConfig.__dataclass_fields__:
        settings["data_mode"] = "stream"
    config = TrainConfig(**settings)
    marker = tmp_path / "failed-once"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_training(config, tmp_path / "model", step_hooks=[FailOnce(step=5, rank=1, marker=str(marker))])
    finally:
        ray.shutdown()
    assert marker.read_text().startswith("failed once at step 5")
    assert result.history["resumed_at"] == [4]  # the mid-epoch checkpoint, not the epoch end (step 3)
    assert [s["step"] for s in result.history["steps"]] == list(range(1, 7))
    assert [v["step"] for v in result.history["val"]] == [3, 6]

    best = max(result.history["val"], key=lambda v: v["val_t2a_map10"])
    waveforms, captions, owner, _ = eval_pairs(shard_urls(toy_root, ["toy"], "val"))
    engine = ClapInference(tmp_path / "model", device="cpu", batch_size=32, progress=False)
    audio = engine.embed_audio([(w, SAMPLE_RATE) for w in waveforms])
    expected = retrieval_metrics(audio, engine.embed_text(captions), owner)
    assert {k: best[f"val_{k}"] for k in expected} == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- GPU smoke script


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_smoke_without_cuda_says_so_and_how_to_dry_run(capsys) -> None:
    from benchmarks.gpu_smoke import main

    assert main([]) == 2
    message = capsys.readouterr().err
    assert "no CUDA device" in message and "--cpu-dry-run" in message


@pytest.mark.slow
def test_gpu_smoke_cpu_dry_run_trains_through_the_stage(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "smoke.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--cpu-dry-run", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "samples/s (steady" in done.stdout and "GPU utilisation: n/a (CPU dry run)" in done.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "cpu-dry-run" and result["steps"] == 4 and result["samples_per_s_steady"] > 0
    assert 0.0 <= result["val_t2a_map10"] <= 1.0
