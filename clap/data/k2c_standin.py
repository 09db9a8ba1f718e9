"""A keyword-to-caption stand-in: a small T5 trained here on (labels -> captions) pairs.

The paper turns AudioSet-style labels into captions with a keytotext T5 (``gagan3012/k2t-base``).
Where no such model is at hand (offline, no model hub), the pipeline trains a small one of the same
architecture (``T5ForConditionalGeneration``, random init) on the train clips that carry both labels
and captions (``builtin_captions/train`` on the embedded corpus: 1-2 labels and 5 human captions per
clip). Val and test clips are never read. The tokenizer is a byte-level BPE trained on the same
texts, saved as a ``PreTrainedTokenizerFast``, so the captions stage loads the folder with
``AutoTokenizer`` / ``AutoModelForSeq2SeqLM`` and generates exactly as with the real model.

The keyword input is ``format_keywords(labels, captions.k2c_input_format)``, the text the captions
stage feeds the model. The folder gets a ``standin.json`` (:data:`clap.data.captions.STANDIN_INFO`)
saying what it is, so reports label its captions plainly. With no training pairs the folder holds
only that file, marked untrained with the reason; the captions stage then refuses k2c mode with a
fix, while template and none modes never look at it.

Training is seeded (``captions.k2c_standin.seed``): the same pairs and params give the same
weights on the same machine (CPU float reductions may differ with the thread count).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from clap.data.captions import STANDIN_INFO, CaptionError, clean_labels, format_keywords
from clap.data.manifest import TRAIN_SPLITS, ManifestRow
from clap.params import config_from_mapping

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's pad / eos / unk


@dataclass(frozen=True)
class StandinConfig:
    """``captions.k2c_standin`` in params.yaml: the stand-in's size and training."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 2.0e-3
    warmup_steps: int = 40
    weight_decay: float = 0.01
    d_model: int = 128
    d_ff: int = 256
    num_layers: int = 2       # encoder and decoder each
    num_heads: int = 4
    dropout: float = 0.0       # CPU dropout costs a third of a step; 8 epochs do not overfit
    vocab_size: int = 1000    # byte-level BPE, trained on the pairs' texts
    max_source_tokens: int = 32
    max_target_tokens: int = 64
    seed: int = 3407
    threads: int = 1          # torch CPU threads while training (a model this small gains little from more)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "threads", "d_model", "d_ff", "num_layers", "num_heads",
                     "max_source_tokens", "max_target_tokens"):
            if getattr(self, name) < 1:
                raise CaptionError(f"params.yaml captions.k2c_standin.{name}: must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise CaptionError(
                f"params.yaml captions.k2c_standin: d_model {self.d_model} is not a multiple of num_heads {self.num_heads}"
            )
        if self.vocab_size < 300:
            raise CaptionError(
                f"params.yaml captions.k2c_standin.vocab_size: {self.vocab_size} is below 300 (256 bytes + specials + merges)"
            )
        if not 0.0 <= self.dropout < 1.0 or self.lr <= 0.0 or self.warmup_steps < 0:
            raise CaptionError("params.yaml captions.k2c_standin: need 0 <= dropout < 1, lr > 0, warmup_steps >= 0")

    @classmethod
    def from_mapping(cls, section: dict[str, Any] | None) -> "StandinConfig":
        return config_from_mapping(cls, section or {}, "params.yaml captions.k2c_standin", error=CaptionError)


@dataclass(frozen=True)
class TrainingPairs:
    """(keywords, caption) pairs and where they came from."""

    pairs: list[tuple[str, str]]
    clips: int
    sets: list[str]           # "<source>/<split>" of the clips used


def training_pairs(rows: Sequence[ManifestRow], input_format: str = "pipe") -> TrainingPairs:
    """One pair per human caption of every train-split clip that has labels and captions."""
    pairs: list[tuple[str, str]] = []
    clips = 0
    sets: dict[str, None] = {}
    for row in sorted(rows, key=lambda r: r.id):
        captions = [" ".join(c.split()) for c in row.captions if c.strip()]
        if row.split not in TRAIN_SPLITS or not clean_labels(row.labels) or not captions:
            continue
        keywords = format_keywords(row.labels, input_format)
        pairs += [(keywords, caption) for caption in captions]
        clips += 1
        sets.setdefault(f"{row.source}/{row.split}", None)
    return TrainingPairs(pairs=pairs, clips=clips, sets=sorted(sets))


def describe(sets: Sequence[str], steps: int) -> str:
    """The plain label reports carry for the stand-in's captions."""
    return f"stand-in T5 trained on {', '.join(sets)} labels->captions, {steps} steps"


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE (no unknown input) with T5's special ids, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer)
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    pad, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, eos_token=eos, unk_token=unk)


def build_model(cfg: StandinConfig, vocab_size: int) -> Any:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=vocab_size, d_model=cfg.d_model, d_ff=cfg.d_ff, d_kv=cfg.d_model // cfg.num_heads,
        num_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config)


def _padded(sequences: list[list[int]], fill: int) -> Any:
    import torch

    width = max(len(s) for s in sequences)
    return torch.tensor([s + [fill] * (width - len(s)) for s in sequences], dtype=torch.long)


def _lr_factor(step: int, cfg: StandinConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _train(data: TrainingPairs, cfg: StandinConfig) -> tuple[Any, Any, list[float]]:
    """Tokenizer, model and per-step losses, seeded by ``cfg.seed``."""
    import torch

    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer([text for pair in data.pairs for text in pair], cfg.vocab_size)
    model = build_model(cfg, len(tokenizer))
    sources = tokenizer([k for k, _ in data.pairs], truncation=True, max_length=cfg.max_source_tokens)["input_ids"]
    targets = tokenizer([c for _, c in data.pairs], truncation=True, max_length=cfg.max_target_tokens)["input_ids"]

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, cfg))
    order = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.batch_size, len(data.pairs))
    queue: list[int] = []
    losses: list[float] = []
    model.train()
    for _ in range(cfg.steps):
        if len(queue) < batch:
            queue += torch.randperm(len(data.pairs), generator=order).tolist()
        picked, queue = queue[:batch], queue[batch:]
        input_ids = _padded([sources[i] for i in picked], 0)
        labels = _padded([targets[i] for i in picked], -100)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != 0).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return model, tokenizer, losses


def train_standin(data: TrainingPairs, cfg: StandinConfig, out_dir: Path, input_format: str = "pipe") -> dict[str, Any]:
    """Train the stand-in on ``data`` and save it (model, tokenizer, ``standin.json``) in ``out_dir``.

    Returns the ``standin.json`` contents plus ``train_seconds`` (logged, not saved: the folder's bytes
    depend only on the inputs).
    """
    import torch

    if not data.pairs:
        raise CaptionError("no training pairs for the keyword-to-caption stand-in")
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        model, tokenizer, losses = _train(data, cfg)
    finally:
        torch.set_num_threads(threads_before)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-min(20, len(losses)):]
    info = {
        "kind": "k2c-standin",
        "trained": True,
        "description": describe(data.sets, cfg.steps),
        "sets": data.sets,
        "clips": data.clips,
        "pairs": len(data.pairs),
        "input_format": input_format,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(tail) / len(tail), 4),
        "config": asdict(cfg),
    }
    (out_dir / STANDIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    seconds = time.perf_counter() - started
    log.info("%s: %d pairs from %d clips, loss %.3f -> %.3f in %.1f s -> %s", info["description"], len(data.pairs),
             data.clips, info["first_loss"], info["final_loss"], seconds, out_dir)
    return {**info, "train_seconds": round(seconds, 2)}


def write_untrained(out_dir: Path, reason: str) -> dict[str, Any]:
    """A stand-in folder holding only ``standin.json`` that says why nothing was trained."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    info = {"kind": "k2c-standin", "trained": False, "reason": reason}
    (out_dir / STANDIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log.warning("keyword-to-caption stand-in not trained: %s (%s)", reason, out_dir)
    return info
