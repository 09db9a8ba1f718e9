"""Training settings: params.yaml's `train` section plus the top-level experiment switches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Caption kinds per `caption_augmentation` switch (the paper's Table 3): original captions always,
#: then the augmentation for label-only clips.
CAPTION_KINDS = {
    "none": ["original"],
    "template": ["original", "template"],
    "k2c": ["original", "k2c"],
}


@dataclass
class TrainConfig:
    objective: str = "contrastive"   # or "classification" (supervised fine-tune)
    audio_encoder: str = "htsat-cpu"
    text_encoder: str = "minilm"
    fusion: bool = False
    caption_augmentation: str = "template"
    train_sets: list[str] = field(default_factory=lambda: ["builtin_captions", "builtin_labels"])
    val_set: str = "builtin_captions/val"
    shard_root: str = "data/shards"
    seed: int = 3407
    # optimisation (defaults: the reference's code; the paper's text says betas (0.99, 0.9))
    batch_size: int = 16
    epochs: int = 4
    steps_per_epoch: int = 25
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float | None = None
    shuffle_buffer: int = 256
    freeze_audio: bool = False
    freeze_text: bool = False
    init_checkpoint: str | None = None   # a LAION .pt, a transformers CLAP dir, or one of our model dirs
    audio_pretrained: str | None = None  # initial audio tower (AudioSet HTS-AT/PANN checkpoint, LAION .pt...)
    text_pretrained: str | None = None   # initial text tower (transformers folder or cached hub name)
    allow_download: bool = False         # let transformers fetch pretrained names from the hub
    # distribution and fault tolerance
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    storage_path: str = "data/ray"
    keep_checkpoints: int = 2
    max_failures: int = 1
    log_every: int = 5
    # supervised fine-tune (objective "classification")
    classes: list[str] = field(default_factory=list)
    multi_label: bool = False
    linear_probe: bool = False
    val_folds: list[int] | None = None   # clips of these folds are held out for validation

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        train = dict(params.get("train", {}))
        for key in ("audio_encoder", "text_encoder", "fusion", "caption_augmentation", "train_sets", "seed"):
            if key in params:
                train[key] = params[key]
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(train) - known
        if unknown:
            raise ValueError(f"params.yaml train: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if "betas" in train:
            train["betas"] = tuple(float(b) for b in train["betas"])
        config = cls(**train)
        if config.caption_augmentation not in CAPTION_KINDS:
            raise ValueError(
                f"params.yaml caption_augmentation: '{config.caption_augmentation}' is not one of {sorted(CAPTION_KINDS)}"
            )
        return config

    @property
    def val_metric(self) -> str:
        """The validation metric that ranks checkpoints (higher is better)."""
        if self.objective == "contrastive":
            return "val_t2a_map10"
        return "val_map" if self.multi_label else "val_top1"

    @property
    def caption_kinds(self) -> list[str]:
        return CAPTION_KINDS[self.caption_augmentation]

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_name(self, *extra: str) -> str:
        """A name that changes whenever anything that shapes the run changes (settings, data, code),
        so that a changed experiment never resumes an unrelated run and the same one resumes."""
        settings = {k: v for k, v in self.to_dict().items()
                    if k not in ("ray_address", "ray_num_cpus", "storage_path", "log_every")}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for item in extra:
            digest.update(item.encode())
        return f"clap-{digest.hexdigest()[:12]}"


def source_fingerprint(*roots: Path) -> str:
    """Hash of the Python sources that define training, part of the run name."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
