"""Text-to-audio and audio-to-text retrieval on held-out sets, the way the CLAP paper reports it.

For each set (``"<source>/<split>"`` of the shard index: ``builtin_captions/test`` by default;
``clotho/test`` and ``audiocaps/test`` once those sources are ingested, see clap.eval.datasets),
every clip with at least one original caption is embedded, every caption is embedded, and
:func:`clap.eval.metrics.retrieval_metrics` computes R@1/5/10, mAP@10 and mean/median rank in both
directions with all of a clip's captions (REFERENCE.md, "Evaluation protocol"). Similarities are
taken ``chunk_size`` rows at a time, so 100,000 clips x 500,000 captions need a few GB, not the
200 GB of the full matrix (benchmarks/retrieval_memory.py measures it).

Next to each metric goes its chance level, the expected value under a uniformly random ranking of
the same set (:func:`retrieval_chance`), so a reader sees at once whether a model beats chance.
``a2t_map10_laion`` is the reference code's audio->text mAP@10, for comparison with published figures
(:mod:`clap.eval.metrics`). The metrics are also given per clip-duration bucket (``dur_le10s``,
``dur_gt10s``: the queries of those clips, ranked against the whole set), and every captioned clip of
the set's metadata that was not scored is listed with its reason (:mod:`clap.eval.accounting`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from clap.eval.datasets import EvalClip, EvalSetError, iter_shard_clips, read_shard_index, resolve_shard_set
from clap.eval.embeddings import DroppedClip, embed_clips, embed_texts
from clap.eval.accounting import (
    DROPPED_COLUMNS,
    ReportPaths,
    UpstreamRecords,
    bucket_masks,
    completeness,
    partial_message,
    stage_counts,
    upstream_drops,
)
from clap.eval.metrics import RetrievalRanks, retrieval_ranks
from clap.model.inference import ClapInference
from clap.params import config_from_mapping
from clap.report.writer import write_metrics, write_rows

log = logging.getLogger(__name__)

#: The k of the recall@k curve (plot data); the headline metrics are R@1, R@5, R@10.
CURVE_KS = tuple(range(1, 11))
DIRECTIONS = ("t2a", "a2t")


@dataclass(frozen=True)
class RetrievalConfig:
    """The ``eval_retrieval`` section of params.yaml."""

    sets: tuple[str, ...] = ("builtin_captions/test",)
    batch_size: int = 32   # clips per audio forward pass
    chunk_size: int = 1024  # query rows per similarity block

    def __post_init__(self) -> None:
        if not self.sets:
            raise ValueError("params.yaml eval_retrieval.sets: list at least one '<source>/<split>' set")
        for key in ("batch_size", "chunk_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"params.yaml eval_retrieval.{key}: must be at least 1, got {getattr(self, key)}")

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> "RetrievalConfig":
        return config_from_mapping(cls, section or {}, "params.yaml eval_retrieval")


@dataclass
class RetrievalSetResult:
    """One set's metrics (``t2a_r1`` ...), recall@k curves (k = 1..10), their chance levels and counts."""

    name: str
    n_audio: int
    n_captions: int
    metrics: dict[str, float]
    curves: dict[str, list[float]]
    chance: dict[str, float]
    chance_curves: dict[str, list[float]]
    no_caption: int = 0
    dropped: list[DroppedClip] = field(default_factory=list)
    buckets: dict[str, dict[str, float]] = field(default_factory=dict)  # duration bucket -> metrics (+ n_audio)
    clips_expected: int = 0  # captioned clips the set's metadata lists

    @property
    def key(self) -> str:
        return set_key(self.name)

    def completeness(self) -> dict[str, Any]:
        return completeness(max(self.clips_expected, self.n_audio), self.n_audio)

    def flat_metrics(self) -> dict[str, Any]:
        """``<set>.t2a_r1``, ..., ``<set>.chance_t2a_r1``, ``<set>.n_audio``, completeness and the metrics
        per duration bucket (``<set>.dur_gt10s.t2a_r1`` ...): the stage's metrics JSON."""
        out: dict[str, Any] = {f"{self.key}.{name}": value for name, value in self.metrics.items()}
        out.update({f"{self.key}.chance_{name}": value for name, value in self.chance.items()})
        out.update({f"{self.key}.n_audio": self.n_audio, f"{self.key}.n_captions": self.n_captions,
                    f"{self.key}.no_caption": self.no_caption,
                    f"{self.key}.unreadable": sum(d.stage == "eval" for d in self.dropped)})
        out.update({f"{self.key}.{k}": v for k, v in stage_counts(self.dropped).items()})
        out.update({f"{self.key}.{k}": v for k, v in self.completeness().items()})
        for bucket, values in self.buckets.items():
            out.update({f"{self.key}.{bucket}.{k}": v for k, v in values.items()})
        return out

    def curve_rows(self) -> list[dict[str, Any]]:
        return [
            {"set": self.name, "direction": direction, "k": k, "recall": self.curves[direction][i],
             "chance": self.chance_curves[direction][i]}
            for direction in DIRECTIONS for i, k in enumerate(CURVE_KS)
        ]


def set_key(name: str) -> str:
    """A set name as a metrics key prefix: ``builtin_captions/test`` -> ``builtin_captions_test``."""
    return name.replace("/", "_")


def _hit_probability(n_items: int, n_relevant: int, k: int) -> float:
    """P(at least one of ``n_relevant`` items is in the top ``k`` of a random order of ``n_items``)."""
    k = min(k, n_items)
    miss = 1.0
    for i in range(k):
        miss *= max(0.0, (n_items - n_relevant - i) / (n_items - i))
    return 1.0 - miss


def _random_ap10(n_items: int, n_relevant: int) -> float:
    """Expected mAP@10 term of one query with ``n_relevant`` relevant items among ``n_items`` in random order.

    Position j (1-based) holds a relevant item with probability c/M; given that, the expected number
    of relevant items in the top j is 1 + (j-1)(c-1)/(M-1). Summing precision/c over positions <= 10
    gives the paper's AP@10 (precision at each relevant hit, divided by the relevant count).
    """
    m, c = n_items, n_relevant
    total = 0.0
    for j in range(1, min(10, m) + 1):
        expected_hits = 1.0 + ((j - 1) * (c - 1) / (m - 1) if m > 1 else 0.0)
        total += expected_hits / j
    return total / m


def retrieval_chance(n_audio: int, captions_per_audio: Sequence[int], ks: Sequence[int] = CURVE_KS) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Expected metrics of a uniformly random ranking: ({"t2a_r1", "t2a_map10", "a2t_r1", "a2t_map10"},
    {"t2a": R@k for ks, "a2t": R@k for ks}). Text->audio: one relevant audio among ``n_audio``;
    audio->text: each audio's captions among all captions (audios without captions are left out)."""
    counts = [int(c) for c in captions_per_audio if c > 0]
    if n_audio < 1 or not counts:
        raise ValueError("retrieval_chance: need at least one audio with a caption")
    n_captions = sum(counts)
    t2a_curve = [min(k, n_audio) / n_audio for k in ks]
    a2t_curve = [float(np.mean([_hit_probability(n_captions, c, k) for c in counts])) for k in ks]
    t2a_map = _random_ap10(n_audio, 1)
    a2t_map = float(np.mean([_random_ap10(n_captions, c) for c in counts]))
    chance = {
        "t2a_r1": 1.0 / n_audio,
        "t2a_map10": t2a_map,
        "a2t_r1": float(np.mean([_hit_probability(n_captions, c, 1) for c in counts])),
        "a2t_map10": a2t_map,
    }
    return chance, {"t2a": t2a_curve, "a2t": a2t_curve}


def curves_from_ranks(ranks: RetrievalRanks, ks: Sequence[int] = CURVE_KS) -> dict[str, list[float]]:
    """R@k for every k in ``ks`` in both directions (audio->text uses each audio's best-ranked caption)."""
    best = np.array([r.min() for r in ranks.a2t if len(r)], dtype=np.int64)
    return {"t2a": [float(np.mean(ranks.t2a < k)) for k in ks], "a2t": [float(np.mean(best < k)) for k in ks]}


def recall_curves(
    audio_embeds: Tensor, text_embeds: Tensor, text_to_audio: Sequence[int], chunk_size: int = 1024,
    ks: Sequence[int] = CURVE_KS,
) -> dict[str, list[float]]:
    """R@k for every k in ``ks`` in both directions, from the embeddings."""
    return curves_from_ranks(retrieval_ranks(audio_embeds, text_embeds, text_to_audio, chunk_size), ks)


def evaluate_embeddings(
    name: str, audio_embeds: Tensor, text_embeds: Tensor, text_to_audio: Sequence[int], chunk_size: int = 1024,
    durations: Sequence[float] | None = None,
) -> RetrievalSetResult:
    """Metrics, curves and chance levels of one set from its (L2-normalised) embeddings; with the clips'
    ``durations``, also the metrics per duration bucket (that bucket's queries, ranked against the whole set)."""
    owner = np.asarray(text_to_audio, dtype=np.int64)
    if audio_embeds.shape[0] == 0 or text_embeds.shape[0] == 0:
        raise EvalSetError(f"evaluation set '{name}': no captioned clips to evaluate")
    if owner.shape[0] != text_embeds.shape[0] or owner.min() < 0 or owner.max() >= audio_embeds.shape[0]:
        raise ValueError(f"evaluation set '{name}': text_to_audio must give an audio index for each of the "
                         f"{text_embeds.shape[0]} captions")
    ranks = retrieval_ranks(audio_embeds, text_embeds, owner, chunk_size)
    per_audio = np.bincount(owner, minlength=audio_embeds.shape[0])
    chance, chance_curves = retrieval_chance(audio_embeds.shape[0], per_audio.tolist())
    buckets = {}
    for bucket, mask in (bucket_masks(durations) if durations is not None else {}).items():
        buckets[bucket] = {**ranks.metrics(mask), "n_audio": int(mask.sum()), "n_captions": int(per_audio[mask].sum())}
    return RetrievalSetResult(name=name, n_audio=int(audio_embeds.shape[0]), n_captions=int(owner.shape[0]),
                              metrics=ranks.metrics(), curves=curves_from_ranks(ranks), chance=chance,
                              chance_curves=chance_curves, buckets=buckets)


def evaluate_retrieval_set(
    engine: ClapInference, shard_root: str | Path, name: str, config: RetrievalConfig,
    index: dict[str, Any] | None = None, upstream: UpstreamRecords | None = None,
) -> RetrievalSetResult:
    """Embed one shard set (clips in batches, then captions) and evaluate it; every captioned clip of
    the set's metadata that was not scored is listed with the stage and reason."""
    shard_set = resolve_shard_set(shard_root, name, index)
    no_caption = 0
    seen: set[str] = set()

    def captioned() -> Iterator[EvalClip]:
        nonlocal no_caption
        for clip in iter_shard_clips(shard_set):
            seen.add(clip.id)
            if clip.captions:
                yield clip
            else:
                no_caption += 1

    audio, clips, dropped = embed_clips(engine, captioned(), set_name=name, batch_size=config.batch_size,
                                        total=shard_set.count)
    captions = [text for clip in clips for text in clip.captions]
    owner = [i for i, clip in enumerate(clips) for _ in clip.captions]
    if no_caption:
        log.info("%s: %d clip(s) without an original caption are not part of retrieval", name, no_caption)
    text = embed_texts(engine, captions, desc=f"captions {name}")
    # similarities on the model's device: on a GPU the chunked ranking is a small part of the run
    result = evaluate_embeddings(name, audio.to(engine.device), text.to(engine.device), owner, config.chunk_size,
                                 durations=[clip.duration for clip in clips])
    metadata = (upstream or UpstreamRecords()).metadata.rows(name)
    expected = [row for row in metadata if row.captions] if metadata is not None else None
    if expected is not None:
        dropped += upstream_drops(name, expected, seen, (upstream or UpstreamRecords()).quarantine)
    result.no_caption, result.dropped = no_caption, dropped
    result.clips_expected = len(expected) if expected is not None else result.n_audio + len(dropped)
    log.info("%s: %d clips, %d captions: t2a R@1 %.4f (chance %.4f), a2t R@1 %.4f (chance %.4f)", name,
             result.n_audio, result.n_captions, result.metrics["t2a_r1"], result.chance["t2a_r1"],
             result.metrics["a2t_r1"], result.chance["a2t_r1"])
    if not result.completeness()["complete"]:
        log.warning("%s; the dropped clips and reasons are in the set's dropped.csv",
                    partial_message(name, result.completeness()))
    return result


def check_retrieval_sets(shard_root: str | Path, sets: Sequence[str]) -> dict[str, Any]:
    """The shard index, once every set is known to be in it (so a typo fails before any model loads)."""
    index = read_shard_index(shard_root)
    for name in sets:
        resolve_shard_set(shard_root, name, index)
    return index


def evaluate_retrieval(engine: ClapInference, shard_root: str | Path, config: RetrievalConfig,
                       upstream: UpstreamRecords | None = None) -> list[RetrievalSetResult]:
    """Every configured set, in order; an unknown set fails before any embedding starts."""
    index = check_retrieval_sets(shard_root, config.sets)
    return [evaluate_retrieval_set(engine, shard_root, name, config, index, upstream) for name in config.sets]


def write_retrieval_reports(results: Sequence[RetrievalSetResult], out_dir: str | Path) -> ReportPaths:
    """Under ``out_dir``: ``retrieval.json`` (flat metrics of every set) and per set (``<source>_<split>``)
    ``retrieval/<set>/dropped.csv`` (every clip of the set not scored: stage and reason),
    ``retrieval_plots/<set>/recall.csv`` (direction, k, recall, chance) and ``recall_at_k.png``. Both
    folders are replaced as a whole, so their paths never depend on the set names in params."""
    from clap.report.figures import plot_recall_at_k  # noqa: PLC0415 - matplotlib only when writing

    paths = ReportPaths.fresh(out_dir, "retrieval")
    metrics: dict[str, Any] = {}
    for r in results:
        metrics.update(r.flat_metrics())
        write_rows(paths.tables / r.key / "dropped.csv", [asdict(d) for d in r.dropped], DROPPED_COLUMNS)
        write_rows(paths.plots / r.key / "recall.csv", r.curve_rows(), ["set", "direction", "k", "recall", "chance"])
        state = r.completeness()
        title = f"Retrieval recall@k, {r.name} (dashed: chance)"
        if not state["complete"]:
            title += f"\nPARTIAL: {state['clips_scored']} of {state['clips_expected']} clips"
        plot_recall_at_k(paths.plots / r.key / "recall_at_k.png",
                         {d: (list(CURVE_KS), r.curves[d]) for d in DIRECTIONS},
                         {d: (list(CURVE_KS), r.chance_curves[d]) for d in DIRECTIONS}, title=title)
    write_metrics(paths.metrics, metrics)
    return paths
