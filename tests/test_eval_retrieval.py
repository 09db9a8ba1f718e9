"""Retrieval evaluation: metrics on known embeddings, exact chance levels, and the stage's reports."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clap.data.manifest import ManifestRow, write_manifest
from clap.eval.metrics import retrieval_metrics
from clap.eval.retrieval import CURVE_KS, evaluate_embeddings, recall_curves, retrieval_chance
from clap.model.inference import ClapInference
from clap.stages import eval_retrieval
from clap.train.data import eval_pairs
from tests.tiny_clap import save_tiny_model
from tests.toy_shards import write_toy_shards

HEADLINE = ("r1", "r5", "r10", "map10", "mean_rank", "median_rank")


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def circle(angles: list[float]) -> torch.Tensor:
    """Unit vectors in the plane; their dot product with [1, 0] is the cosine of the angle."""
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1).float()


def test_exact_embeddings_retrieve_every_item_first() -> None:
    g = torch.Generator().manual_seed(0)
    audio = unit(torch.randn(20, 32, generator=g))
    owner = [i for i in range(20) for _ in range(3)]
    text = unit(audio[owner] + 0.01 * torch.randn(60, 32, generator=g))
    result = evaluate_embeddings("exact", audio, text, owner, chunk_size=7)
    for direction in ("t2a", "a2t"):
        assert [result.metrics[f"{direction}_{m}"] for m in HEADLINE] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        assert result.curves[direction] == [1.0] * len(CURVE_KS)
    assert result.chance["t2a_r1"] == pytest.approx(1 / 20)
    assert result.chance["a2t_r1"] == pytest.approx(3 / 60)
    assert (result.n_audio, result.n_captions) == (20, 60)


def test_anti_aligned_embeddings_rank_the_true_item_last() -> None:
    audio = unit(torch.randn(12, 16, generator=torch.Generator().manual_seed(1)))
    owner = list(range(12))
    result = evaluate_embeddings("reversed", audio, -audio, owner)
    assert result.metrics["t2a_r1"] == 0.0 and result.metrics["t2a_r10"] == 0.0
    assert result.metrics["t2a_mean_rank"] == 12.0
    assert result.curves["t2a"] == [0.0] * len(CURVE_KS)


def test_chance_levels_equal_the_average_over_every_random_ranking() -> None:
    """Enumerate all orders of a tiny set: the mean of the real metrics is the chance level."""
    # audio->text: 2 audios with 3 and 2 captions; every audio sees the same caption order.
    owner = [0, 0, 0, 1, 1]
    audio = circle([0.0, 0.0])
    sums = {"a2t_r1": 0.0, "a2t_map10": 0.0}
    curve = np.zeros(len(CURVE_KS))
    perms = list(itertools.permutations(range(5)))
    for order in perms:
        text = circle([0.1 * (position + 1) for position in order])  # smaller angle = ranked higher
        metrics = retrieval_metrics(audio, text, owner)
        sums["a2t_r1"] += metrics["a2t_r1"]
        sums["a2t_map10"] += metrics["a2t_map10"]
        curve += recall_curves(audio, text, owner)["a2t"]
    chance, chance_curves = retrieval_chance(2, [3, 2])
    assert chance["a2t_r1"] == pytest.approx(sums["a2t_r1"] / len(perms))
    assert chance["a2t_map10"] == pytest.approx(sums["a2t_map10"] / len(perms))
    np.testing.assert_allclose(chance_curves["a2t"], curve / len(perms))

    # text->audio: 4 audios, one caption each; every caption sees the same audio order.
    text = circle([0.0] * 4)
    t2a = {"t2a_r1": 0.0, "t2a_map10": 0.0}
    for order in itertools.permutations(range(4)):
        metrics = retrieval_metrics(circle([0.1 * (p + 1) for p in order]), text, [0, 1, 2, 3])
        t2a = {k: t2a[k] + metrics[k] for k in t2a}
    chance, chance_curves = retrieval_chance(4, [1, 1, 1, 1])
    assert chance["t2a_r1"] == pytest.approx(t2a["t2a_r1"] / 24) == 0.25
    assert chance["t2a_map10"] == pytest.approx(t2a["t2a_map10"] / 24) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert chance_curves["t2a"][:4] == [0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Toy shards (3 classes x 2 test clips, 2 captions each), a tiny model folder and a params file."""
    root = tmp_path_factory.mktemp("retrieval")
    shards = write_toy_shards(root, per_class={"train": 1, "test": 2}, seconds=1.0)
    model = save_tiny_model(root / "model", fusion=False)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"eval_retrieval": {"sets": ["toy/test"], "batch_size": 4, "chunk_size": 2}}))
    return shards, model, params


def test_stage_writes_flat_metrics_that_match_a_direct_computation(toy_setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    shards, model, params = toy_setup
    # The ingest manifest lists the 6 toy test clips and a 7th that normalize quarantined.
    listed = [ManifestRow(id=f"toy/{p.stem}", source="toy", split="test", path=str(p), captions=["a sound"])
              for p in sorted((shards.parent / "audio").glob("test-*.flac"))]
    listed.append(ManifestRow(id="toy/test-lost-0", source="toy", split="test", path="raw/lost.wav", captions=["a hum"]))
    write_manifest(listed, tmp_path / "ingest.jsonl")
    (tmp_path / "quarantine.csv").write_text("id,path,reason\ntoy/test-lost-0,raw/lost.wav,empty file (0 bytes)\n")
    out = tmp_path / "reports"
    rc = eval_retrieval.main(["--params", str(params), "--model", str(model), "--shards", str(shards),
                              "--ingest-manifest", str(tmp_path / "ingest.jsonl"),
                              "--quarantine", str(tmp_path / "quarantine.csv"), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((out / "retrieval.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values())  # flat: `dvc metrics diff` reads it
    assert metrics["toy_test.n_audio"] == 6 and metrics["toy_test.n_captions"] == 12
    assert metrics["toy_test.complete"] is False and metrics["toy_test.quarantined"] == 1
    assert (metrics["toy_test.clips_expected"], metrics["toy_test.clips_scored"]) == (7, 6)
    with (out / "retrieval/toy_test/dropped.csv").open() as fh:
        assert [(r["id"], r["stage"], r["reason"]) for r in csv.DictReader(fh)] == [
            ("toy/test-lost-0", "normalize", "quarantined by normalize: empty file (0 bytes)")]
    # 1 s clips: one duration bucket, equal to the whole set
    assert metrics["toy_test.dur_le10s.t2a_r1"] == metrics["toy_test.t2a_r1"] and "toy_test.dur_gt10s.n_audio" not in metrics
    for direction in ("t2a", "a2t"):
        for name in ("r1", "r5", "r10", "map10"):
            assert 0.0 <= metrics[f"toy_test.{direction}_{name}"] <= 1.0
        assert 1.0 <= metrics[f"toy_test.{direction}_mean_rank"] <= (6 if direction == "t2a" else 12)
    assert metrics["toy_test.chance_t2a_r1"] == pytest.approx(1 / 6, abs=1e-6)
    assert metrics["toy_test.chance_a2t_r1"] == pytest.approx(2 / 12, abs=1e-6)  # 2 of 12 captions are its own

    # The same numbers from the trainer's reader, the inference API and the metrics module directly.
    waveforms, captions, owner, _ = eval_pairs([str(p) for p in sorted((shards / "toy" / "test").glob("*.tar"))])
    engine = ClapInference(model, device="cpu", progress=False)
    direct = retrieval_metrics(engine.embed_audio([(w, 48_000) for w in waveforms]), engine.embed_text(captions), owner)
    for key, value in direct.items():
        assert metrics[f"toy_test.{key}"] == pytest.approx(value, abs=1e-5), key

    with (out / "retrieval_plots/toy_test/recall.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(CURVE_KS)
    t2a = [float(r["recall"]) for r in rows if r["direction"] == "t2a"]
    assert t2a == sorted(t2a) and t2a[-1] == 1.0  # 6 audios: all within the top 10
    assert float(rows[0]["recall"]) == pytest.approx(metrics["toy_test.t2a_r1"], abs=1e-6)
    assert (out / "retrieval_plots/toy_test/recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_duration_buckets_rank_their_queries_against_the_whole_set() -> None:
    # 4 audios, one caption each; audio 3 is long. Caption 3 finds audio 0 first and its own second.
    audio = torch.eye(4)
    text = torch.eye(4)
    text[3] = torch.tensor([0.9, 0.0, 0.0, 0.8])
    result = evaluate_embeddings("b", audio, unit(text), [0, 1, 2, 3], durations=[1.0, 10.0, 4.0, 25.0])
    short, long = result.buckets["dur_le10s"], result.buckets["dur_gt10s"]
    assert (short["n_audio"], long["n_audio"]) == (3, 1)        # 10.0 s exactly is "10 s or less"
    assert short["t2a_r1"] == 1.0 and long["t2a_r1"] == 0.0 and long["t2a_mean_rank"] == 2.0
    assert result.metrics["t2a_r1"] == pytest.approx(3 / 4)
    flat = result.flat_metrics()
    assert flat["b.dur_gt10s.t2a_r1"] == 0.0 and flat["b.dur_le10s.n_captions"] == 3


def test_unknown_set_fails_naming_the_known_sets(toy_setup: tuple[Path, Path, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    shards, model, params = toy_setup
    with caplog.at_level(logging.ERROR):
        rc = eval_retrieval.main(["--params", str(params), "--model", str(model), "--shards", str(shards),
                                  "--out", str(tmp_path), "--set", "clotho/test"])
    assert rc == 1
    assert "clotho/test" in caplog.text and "toy/test" in caplog.text
    assert not (tmp_path / "retrieval.json").exists()


def test_config_rejects_unknown_keys() -> None:
    from clap.eval.retrieval import RetrievalConfig

    assert RetrievalConfig.from_params({"sets": "a/test"}).sets == ("a/test",)
    with pytest.raises(ValueError, match="chunk"):
        RetrievalConfig.from_params({"chunks": 10})
    assert math.isclose(retrieval_chance(10, [5] * 10)[0]["t2a_map10"], sum(1 / j for j in range(1, 11)) / 10)
