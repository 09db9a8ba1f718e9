"""What the one trainer optimises: CLAP's contrastive objective, or supervised classification.

An objective builds the model, says which target a clip gives (a caption, or a label vector), turns a
batch into a loss, evaluates on the held-out split, and saves/loads its model. The training loop
(clap.train.loop) is the same for both; this is the "second loss/head" of the supervised fine-tune.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from clap.train.data import (
    broadcast_from_rank0, caption_list, has_captions, loader_workers_for, pick_caption, validate_in_parts,
)


def _features(waveforms: Sequence[np.ndarray], fusion: bool, training: bool, device: torch.device,
              generator: torch.Generator | None = None):
    from clap.model.frontend import AudioFeatures, prepare_audio_features

    if isinstance(waveforms, AudioFeatures):  # a cached-mode batch (clap.train.cached_data): already features
        return waveforms.to(device)
    return prepare_audio_features(list(waveforms), fusion=fusion, training=training, generator=generator, device=device)


class ContrastiveObjective:
    """CLAP pre-training: symmetric contrastive loss over the global batch; validated by retrieval."""

    metric = "val_t2a_map10"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.rng = random.Random(config["seed"])
        self.text_cache = None  # a frozen text tower's outputs per caption, preloaded (text_features) and filled by loss()

    def build(self) -> nn.Module:
        from clap.model.factory import create_training_model

        model = create_training_model(self.config)
        # logit_scale_t exists for checkpoint compatibility; the loss (like the reference's default)
        # uses logit_scale_a only, and DDP rejects parameters that never receive a gradient.
        model.logit_scale_t.requires_grad_(False)
        return model

    def step_module(self, core: nn.Module) -> nn.Module:
        """The module a training step calls (and DDP wraps): ``core``'s forward that can take cached
        text-tower outputs (clap.train.text_cache)."""
        from clap.train.text_cache import ContrastiveStepModule

        return ContrastiveStepModule(core)

    def target(self, meta: dict[str, Any]) -> str | None:
        return pick_caption(meta, self.config["caption_kinds"], self.rng)

    def loss(self, model: nn.Module, core: nn.Module, waveforms, targets, device, generator) -> torch.Tensor:
        """A frozen text tower's outputs come from a cache (only the projection runs) that starts from
        ``config["text_features"]`` (the text_features stage's table, if it fits the tower); a
        trained one sees its captions padded to the batch's longest. ``model`` is
        :meth:`step_module`'s module (DDP-wrapped with several workers)."""
        from clap.model.loss import contrastive_loss
        from clap.train.text_cache import ContrastiveStepModule, FrozenTextCache, tokenize_to_longest

        if not isinstance(getattr(model, "module", model), ContrastiveStepModule):
            if getattr(model, "module", model) is not model:
                raise TypeError("ContrastiveObjective.loss: DDP must wrap objective.step_module(core), not the model")
            model = ContrastiveStepModule(model)  # a plain loop over the bare model (benchmarks, tests)
        feats = _features(waveforms, self.config["fusion"], True, device, generator)
        if core.config.freeze_text:
            if self.text_cache is None:
                self.text_cache = FrozenTextCache(core.text_encoder, device)
                if self.config.get("text_features"):
                    self.text_cache.preload(self.config["text_features"])
            text = {"text_features": self.text_cache.features(list(targets))}
        else:
            text = {k: v.to(device) for k, v in tokenize_to_longest(core.text_encoder, list(targets)).items()}
        out = model(feats.input_features, feats.is_longer, **text)
        return contrastive_loss(out.audio_embeds.float(), out.text_embeds.float(), out.logit_scale.float())

    def after_step(self, core: nn.Module) -> dict[str, float]:
        core.clamp_logit_scale()
        return {"logit_scale": float(core.logit_scale_a.exp().detach())}

    def load_eval(self) -> None:
        """Nothing to load: evaluate() streams the validation split."""

    @torch.no_grad()
    def evaluate(self, core: nn.Module, device: torch.device, batch_size: int = 32) -> dict[str, float]:
        """Retrieval on the captioned clips of ``val_urls`` with all their original captions. Every
        rank embeds its share a batch at a time; rank 0 computes the metrics once from every rank's
        embeddings put back in shard order, and all ranks return rank 0's figures."""
        from clap.audio import SAMPLE_RATE
        from clap.eval.metrics import retrieval_metrics
        from clap.model.inference import ClapInference

        was_training = core.training
        engine = ClapInference(core, device=device, batch_size=batch_size, progress=False)  # sets eval mode

        def embed(batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
            audio = engine.embed_audio([(waveform, SAMPLE_RATE) for waveform in batch.waveforms])
            captions = [caption_list(meta) for meta in batch.targets]
            text = engine.embed_text([c for clip in captions for c in clip])
            return list(zip(audio, torch.split(text, [len(clip) for clip in captions]), strict=True))

        clips = validate_in_parts(self.config["val_urls"], keep=has_captions, compute=embed,
                                  batch_size=batch_size, loader_workers=loader_workers_for(self.config), device=device)
        core.train(was_training)
        metrics = None
        if clips is not None:  # rank 0
            if not clips:
                raise ValueError(f"no captioned validation clips in {self.config['val_set']}: check val_set")
            owner = [i for i, (_, text) in enumerate(clips) for _ in range(len(text))]
            audio = torch.stack([a for a, _ in clips])
            text = torch.cat([t for _, t in clips])
            metrics = {f"val_{k}": v for k, v in retrieval_metrics(audio, text, owner).items()}
        return broadcast_from_rank0(metrics)

    def save(self, core: nn.Module, directory: Path) -> None:
        from clap.model.native import save_model

        save_model(core, directory)

    def load(self, core: nn.Module, directory: Path) -> None:
        from clap.model.factory import load_model

        core.load_state_dict(load_model(directory).state_dict())


class AudioClassifier(nn.Module):
    """A CLAP audio tower with a linear classification head on its 512-d embedding."""

    def __init__(self, clap: nn.Module, num_classes: int, linear_probe: bool) -> None:
        super().__init__()
        self.clap = clap
        self.head = nn.Linear(clap.config.embed_dim, num_classes)
        self.linear_probe = linear_probe
        # the text tower plays no part in classification
        for part in (clap.text_encoder, clap.text_projection):
            part.requires_grad_(False)
        clap.logit_scale_a.requires_grad_(False)
        clap.logit_scale_t.requires_grad_(False)
        if linear_probe:
            clap.requires_grad_(False)

    def forward(self, input_features: torch.Tensor, is_longer: torch.Tensor) -> torch.Tensor:
        return self.head(self.clap.encode_audio(input_features, is_longer))

    def train(self, mode: bool = True) -> "AudioClassifier":
        super().train(mode)
        if self.linear_probe:
            self.clap.eval()  # frozen encoder: fixed batch-norm statistics, no dropout
        return self


def in_set(meta: dict[str, Any], set_name: str, default_split: str) -> bool:
    """Whether a clip belongs to ``source`` or ``source/split`` (a bare source means its default split)."""
    source, _, split = set_name.partition("/")
    return meta.get("source") == source and meta.get("split") == (split or default_split)


def id_share(clip_id: str) -> float:
    """A clip's fixed place in [0, 1) from a hash of its id: the same clips fall below a share on every
    machine and every run, so a validation share carved from a training split is stable."""
    return int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "big") / 2.0 ** 64


class ClassificationObjective:
    """Supervised fine-tune: single-label (cross-entropy, accuracy) or multi-label (BCE, mAP)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.index = {label: i for i, label in enumerate(self.classes)}
        self.multi_label = bool(config["multi_label"])
        self.metric = "val_map" if self.multi_label else "val_top1"

    def build(self) -> nn.Module:
        from clap.model.factory import create_training_model

        return AudioClassifier(create_training_model(self.config), len(self.classes), self.config["linear_probe"])

    def _is_val(self, meta: dict[str, Any]) -> bool:
        """A clip of the validation split: of ``val_set``, in ``val_folds`` and in the hashed
        ``val_fraction`` share when those are set."""
        folds, fraction = self.config.get("val_folds"), self.config.get("val_fraction")
        return (in_set(meta, self.config["val_set"], "val")
                and (not folds or meta.get("fold") in folds)
                and (not fraction or id_share(str(meta.get("id", ""))) < fraction))

    def _is_test(self, meta: dict[str, Any]) -> bool:
        folds, test_set = self.config.get("test_folds"), self.config.get("test_set")
        return bool(test_set) and in_set(meta, test_set, "test") and (not folds or meta.get("fold") in folds)

    def target(self, meta: dict[str, Any]) -> np.ndarray | None:
        if self._is_val(meta) or self._is_test(meta):
            return None  # selection and test data are never trained on
        return self._label_vector(meta)

    def _label_vector(self, meta: dict[str, Any]) -> np.ndarray | None:
        labels = [label for label in meta.get("tag") or [] if label in self.index]
        if not labels:
            return None
        vector = np.zeros(len(self.classes), dtype=np.float32)
        vector[[self.index[label] for label in labels]] = 1.0
        return vector

    def loss(self, model, core, waveforms, targets, device, generator) -> torch.Tensor:
        feats = _features(waveforms, self.config["fusion"], True, device, generator)
        logits = model(feats.input_features, feats.is_longer).float()
        target = torch.as_tensor(np.stack(targets), device=device)
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, target)
        return nn.functional.cross_entropy(logits, target.argmax(dim=1))

    def after_step(self, core: nn.Module) -> dict[str, float]:
        return {}

    def _is_val_clip(self, meta: dict[str, Any]) -> bool:
        return self._is_val(meta) and self._label_vector(meta) is not None

    def load_eval(self) -> None:
        """Nothing to load: evaluate() streams the validation split."""

    @torch.no_grad()
    def evaluate(self, core: nn.Module, device: torch.device, batch_size: int = 32) -> dict[str, float]:
        """Logits of the labelled validation clips, each rank its share a batch at a time; rank 0
        computes the metrics once over all of them in shard order, and all ranks return its figures."""
        from clap.eval.metrics import mean_average_precision, topk_accuracy

        was_training = core.training
        core.eval()

        def classify(batch) -> list[tuple[np.ndarray, np.ndarray]]:
            feats = _features(batch.waveforms, self.config["fusion"], False, device)
            logits = core(feats.input_features, feats.is_longer).float().cpu().numpy()
            return [(row, self._label_vector(meta)) for row, meta in zip(logits, batch.targets, strict=True)]

        clips = validate_in_parts(self.config["val_urls"], keep=self._is_val_clip, compute=classify,
                                  batch_size=batch_size, loader_workers=loader_workers_for(self.config), device=device)
        core.train(was_training)
        if clips is None:  # not rank 0
            return broadcast_from_rank0(None)
        if not clips:
            raise ValueError(f"no labelled validation clips in {self.config['val_set']} (val_folds="
                             f"{self.config.get('val_folds')}, val_fraction={self.config.get('val_fraction')}); "
                             "check the set name, its folds, or raise val_fraction")
        scores = np.stack([logits for logits, _ in clips])
        targets = np.stack([target for _, target in clips])
        metrics = {"val_map": mean_average_precision(scores, targets)}
        if not self.multi_label:
            metrics.update({f"val_{k}": v for k, v in topk_accuracy(scores, targets.argmax(axis=1), ks=(1, 5)).items()})
        return broadcast_from_rank0(metrics)

    def save(self, core: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        from clap.model.native import save_model

        save_model(core.clap, directory / "clap")
        save_file({k: v.contiguous() for k, v in core.head.state_dict().items()}, str(directory / "head.safetensors"))
        (directory / "classes.json").write_text(json.dumps(
            {"classes": self.classes, "multi_label": self.multi_label, "linear_probe": core.linear_probe}, indent=2))

    def load(self, core: nn.Module, directory: Path) -> None:
        from safetensors.torch import load_file

        from clap.model.factory import load_model

        core.clap.load_state_dict(load_model(directory / "clap").state_dict())
        core.head.load_state_dict(load_file(str(directory / "head.safetensors")))


OBJECTIVES = {"contrastive": ContrastiveObjective, "classification": ClassificationObjective}
