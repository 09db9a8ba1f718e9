"""Model throughput, side by side: our ClapModel vs ``transformers.ClapModel`` with the same config.

Both are built with random weights from one architecture (HTS-AT tiny by default, RoBERTa-base text
tower, 512-d projections), fusion off and on, and fed the same inputs: features from our front-end
for a batch of clips of mixed lengths (some longer than 10 s) and random token ids of length 77.
Measured per model:

* audio embedding throughput: eval mode, no gradients, ``encode_audio`` / ``get_audio_features``;
* training-step throughput: train mode, both towers forward, the symmetric contrastive loss
  (``clap.model.loss.contrastive_loss`` for both), backward and an Adam step.

    python -m benchmarks.model_throughput [--batch 8] [--steps 3] [--audio-encoder htsat-tiny]

Throughput is samples per second of wall time and per CPU-second (process time; steadier on a
shared machine). Writes benchmarks/results/model_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import Tensor, nn

from clap.model.frontend import prepare_audio_features
from clap.model.loss import contrastive_loss
from clap.model.model import ClapConfig, ClapModel

RESULTS = Path(__file__).parent / "results"
SR = 48_000
TEXT_LENGTH = 77
#: RobertaConfig fields that define the text tower's architecture (shared with ClapTextConfig).
TEXT_ARCH_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
)

logger = logging.getLogger("benchmarks.model_throughput")


def build_pair(audio_encoder: str, text_encoder: str, fusion: bool) -> tuple[ClapModel, transformers.ClapModel]:
    """Our model and a transformers ClapModel of the same architecture, both randomly initialised."""
    ours = ClapModel(ClapConfig(audio_encoder=audio_encoder, text_encoder=text_encoder, text_random_init=True,
                                fusion=fusion))
    text_arch = ours.text_encoder.model.config.to_dict()
    hf_config = transformers.ClapConfig(
        audio_config=ours.audio_encoder.audio_config.to_dict(),
        text_config={k: text_arch[k] for k in TEXT_ARCH_KEYS if k in text_arch},
        projection_dim=ours.config.embed_dim,
    )
    return ours, transformers.ClapModel(hf_config)


def make_inputs(batch: int, fusion: bool, vocab_size: int, seed: int) -> dict[str, Tensor]:
    """Front-end features of ``batch`` clips of 3-25 s (every other one over 10 s) and random tokens."""
    rng = np.random.default_rng(seed)
    clips = [
        (rng.standard_normal(int((rng.uniform(12, 25) if i % 2 else rng.uniform(3, 9)) * SR)) * 0.1).astype(np.float32)
        for i in range(batch)
    ]
    feats = prepare_audio_features(clips, fusion=fusion)
    g = torch.Generator().manual_seed(seed)
    return {
        "input_features": feats.input_features,
        "is_longer": feats.is_longer,
        "input_ids": torch.randint(3, vocab_size, (batch, TEXT_LENGTH), generator=g),
        "attention_mask": torch.ones(batch, TEXT_LENGTH, dtype=torch.long),
    }


def audio_embed_fn(model: nn.Module, inputs: dict[str, Tensor]) -> Callable[[], Tensor]:
    """Unit-length audio embeddings: ``encode_audio`` (ours) / ``get_audio_features`` (transformers 5
    returns the projected, normalised embeddings as ``pooler_output``)."""
    if isinstance(model, ClapModel):
        return lambda: model.encode_audio(inputs["input_features"], inputs["is_longer"])
    return lambda: model.get_audio_features(
        input_features=inputs["input_features"], is_longer=inputs["is_longer"][:, None]
    ).pooler_output


def train_step_fn(model: nn.Module, inputs: dict[str, Tensor]) -> Callable[[], float]:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def embeddings() -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(model, ClapModel):
            out = model(inputs["input_features"], inputs["is_longer"], inputs["input_ids"], inputs["attention_mask"])
            return out.audio_embeds, out.text_embeds, out.logit_scale
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    input_features=inputs["input_features"], is_longer=inputs["is_longer"][:, None])
        return out.audio_embeds, out.text_embeds, model.logit_scale_a.exp()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        audio, text, scale = embeddings()
        loss = contrastive_loss(audio, text, scale)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def timed(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per call over ``steps`` calls after one warm-up call."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def run(batch: int, steps: int, audio_encoder: str, text_encoder: str, seed: int) -> dict:
    results: dict = {
        "batch": batch, "steps": steps, "audio_encoder": audio_encoder, "text_encoder": text_encoder,
        "torch_threads": torch.get_num_threads(), "device": "cpu", "rows": [],
    }
    for fusion in (False, True):
        torch.manual_seed(seed)
        ours, theirs = build_pair(audio_encoder, text_encoder, fusion)
        inputs = make_inputs(batch, fusion, ours.text_encoder.model.config.vocab_size, seed)
        results["params_ours"] = sum(p.numel() for p in ours.parameters())
        results["params_transformers"] = sum(p.numel() for p in theirs.parameters())
        for name, model in (("ours", ours), ("transformers ClapModel", theirs)):
            logger.info("fusion=%s %s: audio embedding", fusion, name)
            model.eval()
            with torch.no_grad():
                embed_wall, embed_cpu = timed(audio_embed_fn(model, inputs), steps)
            logger.info("fusion=%s %s: training step", fusion, name)
            model.train()
            train_wall, train_cpu = timed(train_step_fn(model, inputs), steps)
            results["rows"].append({
                "model": name, "fusion": fusion,
                "embed_samples_per_s": batch / embed_wall, "embed_samples_per_cpu_s": batch / embed_cpu,
                "train_samples_per_s": batch / train_wall, "train_samples_per_cpu_s": batch / train_cpu,
            })
        del ours, theirs
    return results


def markdown(results: dict) -> str:
    lines = [
        f"{results['audio_encoder']} + {results['text_encoder']} (random init), batch {results['batch']}, "
        f"{results['steps']} timed steps, {results['device']}, {results['torch_threads']} torch threads; "
        f"{results['params_ours'] / 1e6:.1f} M parameters (ours) vs {results['params_transformers'] / 1e6:.1f} M",
        "",
        "| model | fusion | audio embed samples/s | (per CPU-s) | train step samples/s | (per CPU-s) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['model']} | {'on' if r['fusion'] else 'off'} | {r['embed_samples_per_s']:.2f} | "
            f"{r['embed_samples_per_cpu_s']:.2f} | {r['train_samples_per_s']:.2f} | {r['train_samples_per_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--audio-encoder", default="htsat-tiny")
    parser.add_argument("--text-encoder", default="roberta-base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args.batch, args.steps, args.audio_encoder, args.text_encoder, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_throughput.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
