"""Audio front-end, side by side: ours vs ``transformers.ClapFeatureExtractor`` on the same clips.

For fusion off (Slaney recipe, ``rand_trunc``) and on (HTK recipe, ``fusion``), both with
``repeatpad``, it measures clips/s of each front-end and how far each one's features are from the
reference recipe (librosa for Slaney, torchaudio for HTK, computed in float64) on the very same 10 s
views: ours takes deterministic views; the random views transformers draws are replayed from the
same numpy seed. A third row, the reference recipe itself run in float32, shows float32 round-off.

    python -m benchmarks.frontend [--clips 32] [--repeats 3] [--device cpu] [--threads 1]

Speed is clips per CPU-second (process time, 1 torch thread by default), best of a few runs: on a
shared machine that stays comparable where wall time does not. Distances are in dB against the
float64 reference recipe.

Writes benchmarks/results/frontend.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from transformers import ClapFeatureExtractor

from clap.model.frontend import (
    MelConfig,
    crop_start,
    fill_waveform,
    fusion_crop_starts,
    int16_roundtrip,
    prepare_audio_features,
)

RESULTS = Path(__file__).parent / "results"
SR = 48_000
CFG = MelConfig()
CHUNK, FRAMES = CFG.chunk_samples, CFG.chunk_frames

logger = logging.getLogger("benchmarks.frontend")


def make_clips(count: int, seed: int, min_s: float = 3.0, max_s: float = 30.0) -> list[np.ndarray]:
    """Synthetic clips of mixed lengths: tones, noise bursts, a silent gap; float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        n = int(rng.uniform(min_s, max_s) * SR)
        t = np.arange(n) / SR
        x = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(60, 8000) * t) for _ in range(3))
        x = x + rng.uniform(0.01, 0.1) * rng.standard_normal(n) * (np.sin(2 * np.pi * rng.uniform(0.1, 1) * t) > 0)
        gap = rng.integers(0, n // 2)
        x[gap : gap + n // 10] = 0.0
        clips.append(np.clip(x, -1, 1).astype(np.float32))
    return clips


# --- the reference recipes (float64), on explicit views -------------------------------------------


def _slaney_db(x: np.ndarray) -> np.ndarray:
    power = librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=1024, hop_length=480, win_length=1024, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=64, fmin=50, fmax=14000, htk=False, norm="slaney",
    )
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None).T


def _htk_db(x: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(x)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SR, n_fft=1024, win_length=1024, hop_length=480, center=True, pad_mode="reflect",
        power=2.0, norm=None, mel_scale="htk", n_mels=64, f_min=50.0, f_max=14000.0, wkwargs={"dtype": xt.dtype},
    ).to(xt.dtype)
    return torchaudio.transforms.AmplitudeToDB(top_db=None)(mel(xt)).T.numpy()


def reference_features(clip: np.ndarray, fusion: bool, view: int | tuple[int, int, int] | None) -> np.ndarray:
    """The reference recipe on one clip; ``view`` is the crop start (samples, non-fusion) or the
    three local-view starts (frames, fusion) of a long clip, None for a clip filled to 10 s."""
    if len(clip) <= CHUNK or view is None:
        x = fill_waveform(torch.from_numpy(clip), CHUNK, "repeatpad").numpy() if len(clip) <= CHUNK else clip
        mel = (_htk_db if fusion else _slaney_db)(x)
        return np.stack([mel] * (4 if fusion else 1))
    if not fusion:
        assert isinstance(view, int)
        return _slaney_db(clip[view : view + CHUNK])[None]
    assert isinstance(view, tuple)
    mel = _htk_db(clip)
    resized = F.interpolate(torch.from_numpy(mel)[None, None], size=(FRAMES, 64), mode="bilinear", align_corners=False)
    return np.stack([resized[0, 0].numpy()] + [mel[s : s + FRAMES] for s in view])


def our_views(clips: list[np.ndarray], fusion: bool) -> list:
    """The deterministic inference views ``prepare_audio_features`` takes."""
    views: list = []
    for c in clips:
        if len(c) <= CHUNK or (fusion and CFG.num_frames(len(c)) == FRAMES):
            views.append(None)
        elif fusion:
            views.append(fusion_crop_starts(CFG.num_frames(len(c)), FRAMES, training=False))
        else:
            views.append(crop_start(len(c), CHUNK, training=False))
    return views


def replay_hf_views(clips: list[np.ndarray], fusion: bool, seed: int) -> list:
    """The random views ClapFeatureExtractor draws after ``np.random.seed(seed)``, drawn again in the
    same order (one ``randint`` per long clip for rand_trunc, three ``choice`` for fusion)."""
    np.random.seed(seed)
    views: list = []
    for c in clips:
        if len(c) <= CHUNK:
            views.append(None)
        elif not fusion:
            views.append(int(np.random.randint(0, len(c) - CHUNK + 1)))
        else:
            total = CFG.num_frames(len(c))
            if total == FRAMES:
                views.append(None)
                continue
            ranges = np.array_split(list(range(0, total - FRAMES + 1)), 3)
            ranges = [r if len(r) else [0] for r in ranges]
            views.append(tuple(int(np.random.choice(r)) for r in ranges))
    return views


def distance(features: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """Mean and max |dB| difference; ``max_abs_db_within_60db`` counts only bins at most 60 dB under
    their frame's loudest bin. Float32 FFT round-off is ~1e-7 of a frame's amplitude, so its error
    grows in bins far under the frame's peak (0.1-1 dB at 100-130 dB under), in any float32 STFT."""
    diffs, kept = [], []
    for f, r in zip(features, reference):
        d = np.abs(np.asarray(f, np.float64) - r)
        diffs.append(d.ravel())
        kept.append(d[r >= r.max(axis=-1, keepdims=True) - 60.0])
    all_diffs, kept_diffs = np.concatenate(diffs), np.concatenate(kept)
    return {
        "mean_abs_db": float(all_diffs.mean()),
        "max_abs_db": float(all_diffs.max()),
        "max_abs_db_within_60db": float(kept_diffs.max()),
    }


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best-of-``repeats`` process CPU seconds after one warm-up call. CPU time, not wall time: on a
    shared machine it is what stays comparable between the two front-ends in one run."""
    fn()  # warm-up (filterbank caches, allocator)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def run(clips_count: int, repeats: int, device: str, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    raw = make_clips(clips_count, seed)
    quantised = [int16_roundtrip(c) for c in raw]  # what every front-end sees for the distances
    lengths = [len(c) / SR for c in raw]
    results: dict = {
        "clips": clips_count,
        "seconds_min": min(lengths),
        "seconds_max": max(lengths),
        "seconds_total": sum(lengths),
        "long_clips": sum(len(c) > CHUNK for c in raw),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "rows": [],
    }
    for fusion in (False, True):
        mode = "fusion" if fusion else "rand_trunc"
        logger.info("fusion=%s: reference recipe (float64)", fusion)
        ref_ours = [reference_features(c.astype(np.float64), fusion, v) for c, v in zip(quantised, our_views(quantised, fusion))]

        # ours, production path: int16 round-trip included, float32 maths
        t_ours = best_time(lambda: prepare_audio_features(raw, fusion=fusion, device=device), repeats)
        ours32 = prepare_audio_features(quantised, fusion=fusion, device=device, int16_roundtrip=False).input_features
        ours64 = prepare_audio_features(
            quantised, fusion=fusion, device=device, int16_roundtrip=False, compute_dtype=torch.float64
        ).input_features
        t_ours64 = best_time(
            lambda: prepare_audio_features(raw, fusion=fusion, device=device, compute_dtype=torch.float64), repeats
        )

        fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14_000, truncation=mode, padding="repeatpad")
        hf_call = lambda: fe(quantised, sampling_rate=SR, truncation=mode, padding="repeatpad", return_tensors="np")  # noqa: E731
        t_hf = best_time(hf_call, max(1, repeats - 1))
        np.random.seed(seed)
        hf = hf_call()["input_features"]
        ref_hf = [
            reference_features(c.astype(np.float64), fusion, v)
            for c, v in zip(quantised, replay_hf_views(quantised, fusion, seed))
        ]
        ref32 = [reference_features(c, fusion, v) for c, v in zip(quantised, our_views(quantised, fusion))]

        rows = [
            ("ours (float32)", t_ours, distance(list(ours32.cpu().numpy()), ref_ours)),
            ("ours (float64 maths)", t_ours64, distance(list(ours64.cpu().numpy()), ref_ours)),
            ("transformers ClapFeatureExtractor", t_hf, distance(list(hf), ref_hf)),
            ("reference recipe in float32", float("nan"), distance(ref32, ref_ours)),
        ]
        for name, seconds, dist in rows:
            results["rows"].append(
                {
                    "frontend": name,
                    "fusion": fusion,
                    "recipe": "htk" if fusion else "slaney",
                    "cpu_seconds": seconds,
                    "clips_per_cpu_s": clips_count / seconds if seconds == seconds else None,
                    "speedup_vs_transformers": t_hf / seconds if seconds == seconds else None,
                    **dist,
                }
            )
    return results


def markdown(results: dict) -> str:
    lines = [
        f"{results['clips']} clips, {results['seconds_min']:.1f}-{results['seconds_max']:.1f} s "
        f"({results['long_clips']} over 10 s), device {results['device']}, {results['torch_threads']} torch threads",
        "",
        "| front-end | fusion (recipe) | clips per CPU-s | x transformers | mean abs dB | max abs dB "
        "| max abs dB, bins within 60 dB of frame peak |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        cps = f"{r['clips_per_cpu_s']:.1f}" if r['clips_per_cpu_s'] else "-"
        speed = f"{r['speedup_vs_transformers']:.1f}" if r["speedup_vs_transformers"] else "-"
        lines.append(
            f"| {r['frontend']} | {'on' if r['fusion'] else 'off'} ({r['recipe']}) | {cps} | {speed} | "
            f"{r['mean_abs_db']:.2e} | {r['max_abs_db']:.2e} | {r['max_abs_db_within_60db']:.2e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (transformers' numpy path uses one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(args.clips, args.repeats, args.device, args.seed, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "frontend.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
