"""Learning curves of CPU training settings: validation mAP@10 against training samples seen.

Each setting trains from scratch in this process the way one Ray worker of the train stage does
(clap.train.objectives + the cached data path + the frozen-text cache, warm-up then cosine decay
over the setting's whole run, Adam), and is validated on ``builtin_captions/val`` (text->audio
mAP@10 and R@10, the metric that selects checkpoints, and zero-shot top-1 of each clip's main sound
with the eval prompt "This is a sound of {label}.") every ``--every`` samples. Test splits are
never touched: settings are chosen on validation.

    python -m benchmarks.learning_curve --shards data/shards [--settings default,htsat-lr1e-4] [--threads 2]

Writes benchmarks/results/learning_curve.json and learning_curve.png. Settings are named rows of
SETTINGS (overrides of params.yaml's train section and switches); ``default`` is params.yaml itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

#: name -> overrides of params.yaml (train keys and the top-level switches).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "htsat-lr1e-4": {"audio_encoder": "htsat-cpu", "lr": 1e-4, "batch_size": 32},
    "htsat-lr5e-4": {"audio_encoder": "htsat-cpu", "lr": 5e-4, "batch_size": 32},
    "htsat-lr1e-3": {"audio_encoder": "htsat-cpu", "lr": 1e-3, "batch_size": 32},
    "htsat-lr2e-3": {"audio_encoder": "htsat-cpu", "lr": 2e-3, "batch_size": 32},
    "pann-lr1e-3": {"audio_encoder": "pann-cpu", "lr": 1e-3, "batch_size": 32},
    "pann-lr2e-3": {"audio_encoder": "pann-cpu", "lr": 2e-3, "batch_size": 32},
    "pann-pool2-lr1e-3": {"audio_encoder": "pann-cpu-pool2", "lr": 1e-3, "batch_size": 32},
    "pann-old-lr1e-3": {"audio_encoder": "pann-cpu-old", "lr": 1e-3, "batch_size": 32},
}
#: Candidate preset shapes compared here before one becomes a named preset (clap.model.presets).
CANDIDATE_PRESETS: dict[str, dict[str, Any]] = {
    # pann-cpu with the mel pooled 2x2 instead of 4x2 first (about 1.7x the cost per sample)
    "pann-cpu-pool2": {"family": "pann", "num_mel_bins": 64, "block_dropout": 0.1, "embed_dropout": 0.1,
                       "spec_augment": True, "channels": [16, 32, 64, 128], "pool": [[2, 2]] * 4, "embed_dim": 256,
                       "input_pool": [2, 2]},
    # the pann-cpu of the previous release: full-resolution first block, 8..64 channels, PANN's dropout
    "pann-cpu-old": {"family": "pann", "num_mel_bins": 64, "block_dropout": 0.2, "embed_dropout": 0.5,
                     "spec_augment": True, "channels": [8, 16, 32, 64], "pool": [[2, 2]] * 4, "embed_dim": 128},
}
SWITCHES = ("audio_encoder", "text_encoder", "fusion", "caption_augmentation", "train_sets", "seed")

logger = logging.getLogger("benchmarks.learning_curve")


def setting_config(name: str, shards: Path, samples: int):
    """The train stage's config for a named setting, sized to ``samples`` training samples."""
    import yaml

    from clap.model.presets import AUDIO_PRESETS
    from clap.train.config import TrainConfig

    for preset, spec in CANDIDATE_PRESETS.items():
        AUDIO_PRESETS.setdefault(preset, spec)
    params = yaml.safe_load(PARAMS.read_text())
    overrides = dict(SETTINGS[name])
    for key in SWITCHES:
        if key in overrides:
            params[key] = overrides.pop(key)
    params["train"].update(overrides, shard_root=str(shards.resolve()), num_workers=1)
    config = TrainConfig.from_params(params)
    steps = max(1, samples // config.batch_size)
    config.epochs, config.steps_per_epoch = 1, steps
    return config


def val_zero_shot(core, clips, device) -> float:
    """Zero-shot top-1 on validation clips: each clip's first label (its main sound) among the 13
    built-in classes, prompted as the eval stage does."""
    from clap.audio import SAMPLE_RATE
    from clap.corpus.sounds import SOUND_CLASSES
    from clap.model.inference import ClapInference

    labels = [c.label for c in SOUND_CLASSES]
    was_training = core.training
    engine = ClapInference(core, device=device, progress=False)
    result = engine.zero_shot([(w, SAMPLE_RATE) for w, _ in clips], labels, "This is a sound of {label}.")
    core.train(was_training)
    return sum(p == meta["tag"][0] for p, (_, meta) in zip(result.predictions(), clips)) / max(1, len(clips))


def run_setting(name: str, shards: Path, samples: int, every: int) -> dict[str, Any]:
    """Train one setting and validate every ``every`` samples; returns its curve."""
    from clap.train.cached_data import cached_train_batches
    from clap.train.data import eval_samples
    from clap.train.loop import warmup_cosine
    from clap.train.objectives import ContrastiveObjective
    from clap.train.trainer import loop_config

    config = setting_config(name, shards, samples)
    loop = loop_config(config)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    objective = ContrastiveObjective(loop)
    core = objective.build().train()
    optimizer = torch.optim.Adam([p for p in core.parameters() if p.requires_grad], lr=config.lr,
                                 betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    total = config.total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, total))
    batches = cached_train_batches(loop["train_urls"], batch_size=config.batch_size, target=objective.target,
                                   seed=config.seed, rank=0, world_size=1, fusion=config.fusion)
    objective.load_eval()
    val_clips = list(eval_samples(loop["val_urls"]))
    generator = torch.Generator().manual_seed(config.seed)
    device = torch.device("cpu")
    curve, train_s = [], 0.0
    eval_steps = {max(1, round(k * every / config.batch_size)) for k in range(1, samples // every + 1)} | {total}
    for step in range(1, total + 1):
        t0 = time.perf_counter()
        batch = next(batches)
        loss = objective.loss(core, core, batch.features, batch.targets, device, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        objective.after_step(core)
        train_s += time.perf_counter() - t0
        if step in eval_steps:
            metrics = objective.evaluate(core, device)
            metrics["val_zeroshot_top1"] = val_zero_shot(core, val_clips, device)
            point = {"step": step, "samples": step * config.batch_size, "loss": round(float(loss.detach()), 4),
                     "train_s": round(train_s, 1), "val_t2a_map10": round(metrics["val_t2a_map10"], 4),
                     "val_t2a_r10": round(metrics["val_t2a_r10"], 4), "val_a2t_r10": round(metrics["val_a2t_r10"], 4),
                     "val_zeroshot_top1": round(metrics["val_zeroshot_top1"], 4)}
            curve.append(point)
            logger.info("%s: %s", name, point)
    return {"setting": name, "overrides": SETTINGS[name], "audio_encoder": config.audio_encoder, "lr": config.lr,
            "batch_size": config.batch_size, "warmup_steps": config.warmup_steps, "steps": total,
            "wall_s": round(time.perf_counter() - started, 1), "curve": curve}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot([p["samples"] for p in r["curve"]], [100 * p["val_t2a_map10"] for p in r["curve"]],
                marker="o", label=r["setting"])
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("val text->audio mAP@10 (%)")
    ax.set_title("Learning curves on builtin_captions/val (CPU, from scratch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--settings", default="htsat-lr1e-3,pann-lr1e-3,pann-old-lr1e-3",
                        help=f"comma-separated; known: {', '.join(SETTINGS)}")
    parser.add_argument("--samples", type=int, default=4800, help="training samples per setting")
    parser.add_argument("--every", type=int, default=960, help="validate every this many samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="learning_curve", help="result name under benchmarks/results/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
    shards = Path(args.shards)
    if not (shards / "index.json").is_file():
        raise SystemExit(f"{shards}/index.json not found: build the shards first (dvc repro shards) or pass --shards")

    load_before = os.getloadavg()
    results = [run_setting(name, shards, args.samples, args.every) for name in names]
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"what": "val text->audio mAP@10 vs training samples seen, one process",
               "samples": args.samples, "every": args.every, "threads": args.threads,
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()], "settings": results}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, RESULTS / f"{args.out}.png")
    print("| setting | samples | val t2a mAP@10 | val t2a R@10 | val zero-shot top-1 | train s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        last = r["curve"][-1]
        print(f"| {r['setting']} | {last['samples']} | {last['val_t2a_map10']:.3f} | {last['val_t2a_r10']:.3f} | "
              f"{last['val_zeroshot_top1']:.3f} | {last['train_s']} |")


if __name__ == "__main__":
    main()
