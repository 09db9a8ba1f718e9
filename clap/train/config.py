"""Training settings: params.yaml's `train` section plus the top-level experiment switches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clap.params import TOP_LEVEL_SWITCHES, load_section

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
    shuffle_buffer: int = 256            # encoded samples per loader process (data_mode: stream)
    loader_workers: int | None = None    # decoding processes per Ray worker; None: its CPUs (cpus_per_worker), 0: in-process
    data_mode: str = "stream"            # or "cached": decode + mel once per clip, crops in frames (clap.train.cached_data)
    feature_cache_dtype: str = "float16"  # storage of cached training mels (data_mode: cached)
    freeze_audio: bool = False
    freeze_text: bool = False
    text_features: str | None = None     # a frozen text tower's outputs per caption (the text_features stage's folder)
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
    checkpoint_every: int | None = None  # steps between checkpoints; None: at the end of every epoch (with validation)
    max_failures: int = 1                # restarts of a failed worker group within one execution
    resume: str | None = None            # a run name: continue that run instead of starting a new one
    keep_runs: int = 1                   # finished runs kept in storage_path per run family (0: none)
    log_every: int = 5
    # supervised fine-tune (objective "classification")
    classes: list[str] = field(default_factory=list)
    multi_label: bool = False
    linear_probe: bool = False
    val_folds: list[int] | None = None   # clips of these folds are held out for validation
    val_fraction: float | None = None    # share of clips (by a hash of the clip id) held out for validation
    test_set: str | None = None          # evaluated once with the selected checkpoint, never for selection
    test_folds: list[int] | None = None  # clips of these folds are the test split (never trained on)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        switches = {key: params[key] for key in TOP_LEVEL_SWITCHES if key in params}
        config = load_section(params, "train", cls, fixed=switches, fixed_at="the top level of params.yaml")
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
