"""The audio front-end: mel recipes against librosa/torchaudio, fill/crop/fusion input, determinism."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
import torchaudio

from clap.model.frontend import (
    LogMel,
    MelConfig,
    fill_waveform,
    fusion_crop_starts,
    int16_roundtrip,
    prepare_audio_features,
)

SR = 48_000
CHUNK = 480_000


def _test_signal(seconds: float, seed: int) -> np.ndarray:
    """A chirp, a decaying noise burst and a stretch of digital silence: loud, quiet and empty bins."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.4 * np.sin(2 * np.pi * (100 + 2000 * t) * t) + 0.1 * rng.standard_normal(t.size) * np.exp(-3 * t)
    x[int(0.6 * t.size) : int(0.7 * t.size)] = 0.0
    return x.astype(np.float32)


def _librosa_slaney_db(x: np.ndarray) -> np.ndarray:
    power = librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=1024, hop_length=480, win_length=1024, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=64, fmin=50, fmax=14000, htk=False, norm="slaney",
    )
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None).T


def _torchaudio_htk_db(x: torch.Tensor) -> torch.Tensor:
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SR, n_fft=1024, win_length=1024, hop_length=480, center=True, pad_mode="reflect",
        power=2.0, norm=None, mel_scale="htk", n_mels=64, f_min=50.0, f_max=14000.0,
        wkwargs={"dtype": x.dtype},
    ).to(x.dtype)
    return torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)(mel(x)).T


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    return _test_signal(2.5, seed=1)


def test_slaney_recipe_matches_librosa(signal: np.ndarray) -> None:
    ours64 = LogMel(MelConfig(recipe="slaney"))(torch.from_numpy(signal.astype(np.float64))).numpy()
    ref64 = _librosa_slaney_db(signal.astype(np.float64))
    assert ours64.shape == ref64.shape == (signal.size // 480 + 1, 64)
    assert np.abs(ours64 - ref64).max() < 1e-3
    # Production precision (float32 maths): only float32 round-off in near-silent bins remains.
    err32 = np.abs(LogMel(MelConfig(recipe="slaney"))(torch.from_numpy(signal)).numpy() - _librosa_slaney_db(signal))
    assert err32.max() < 0.1 and err32.mean() < 1e-3
    assert ours64.min() == pytest.approx(-100.0)  # the silent stretch is floored at amin=1e-10, no top_db


def test_htk_recipe_matches_torchaudio(signal: np.ndarray) -> None:
    x64 = torch.from_numpy(signal.astype(np.float64))
    ours = LogMel(MelConfig(recipe="htk"))(x64)
    assert torch.abs(ours - _torchaudio_htk_db(x64)).max().item() < 1e-3
    x32 = torch.from_numpy(signal)
    err32 = torch.abs(LogMel(MelConfig(recipe="htk"))(x32) - _torchaudio_htk_db(x32))
    assert err32.max().item() < 0.1 and err32.mean().item() < 1e-3


def test_the_two_recipes_differ(signal: np.ndarray) -> None:
    """Released checkpoints depend on the recipe: mixing them up must not go unnoticed."""
    x = torch.from_numpy(signal)
    assert torch.abs(LogMel(MelConfig(recipe="htk"))(x) - LogMel(MelConfig(recipe="slaney"))(x)).mean() > 1.0
    with pytest.raises(ValueError, match="recipe"):
        MelConfig(recipe="kaldi")  # type: ignore[arg-type]


def test_logmel_is_batched() -> None:
    a, b = _test_signal(1.0, 2), _test_signal(1.0, 3)
    lm = LogMel(MelConfig())
    batch = lm(torch.from_numpy(np.stack([a, b])))
    assert batch.shape == (2, 101, 64)
    torch.testing.assert_close(batch[1], lm(torch.from_numpy(b)), rtol=0, atol=1e-4)


def test_int16_roundtrip_is_the_references_quantisation() -> None:
    x = np.random.default_rng(0).uniform(-1.3, 1.3, 10_000).astype(np.float32)
    # the reference: np.clip(x, -1, 1) * 32767 cast to int16, / 32767 (float32)
    reference = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
    np.testing.assert_array_equal(int16_roundtrip(torch.from_numpy(x)).numpy(), reference)
    np.testing.assert_array_equal(int16_roundtrip(x), reference)  # numpy in, numpy out


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("repeatpad", [1, 2, 3, 1, 2, 3, 0, 0]),
        ("repeat", [1, 2, 3, 1, 2, 3, 1, 2]),
        ("pad", [1, 2, 3, 0, 0, 0, 0, 0]),
    ],
)
def test_fill_modes(mode: str, expected: list[int]) -> None:
    out = fill_waveform(torch.tensor([1.0, 2.0, 3.0]), 8, mode)  # type: ignore[arg-type]
    assert out.tolist() == expected


def test_fill_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not one of"):
        fill_waveform(torch.ones(3), 8, "loop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop it"):
        fill_waveform(torch.ones(9), 8)


def test_fusion_crop_starts_follow_the_thirds() -> None:
    # 10 possible starts split as [0-3] [4-6] [7-9]; inference takes the middle of each third.
    assert fusion_crop_starts(1010, 1001, training=False) == (2, 5, 8)
    # 2 possible starts: the back third is empty and falls back to the first chunk.
    assert fusion_crop_starts(1002, 1001, training=False) == (0, 1, 0)
    g = torch.Generator().manual_seed(0)
    draws = {fusion_crop_starts(1100, 1001, training=True, generator=g) for _ in range(50)}
    assert len(draws) > 1
    for front, middle, back in draws:
        assert 0 <= front <= 33 < middle <= 66 < back <= 99


def test_short_clip_features_are_the_filled_waveforms_mel() -> None:
    clip = _test_signal(3.0, 4)
    for fusion in (False, True):
        feats = prepare_audio_features([clip], fusion=fusion)
        filled = fill_waveform(int16_roundtrip(torch.from_numpy(clip)), CHUNK, "repeatpad")
        expected = LogMel(MelConfig.for_model(fusion))(filled)
        channels = 4 if fusion else 1
        assert feats.input_features.shape == (1, channels, 1001, 64)
        assert feats.input_features.dtype == torch.float32
        assert feats.is_longer.tolist() == [False]
        for c in range(channels):
            torch.testing.assert_close(feats.input_features[0, c], expected, rtol=0, atol=1e-4)


def test_int16_roundtrip_can_be_turned_off() -> None:
    clip = _test_signal(1.0, 5) * 1e-4  # quiet enough that int16 steps show in the mel
    on = prepare_audio_features([clip], fusion=False).input_features
    off = prepare_audio_features([clip], fusion=False, int16_roundtrip=False).input_features
    assert torch.abs(on - off).max() > 1e-2


def _bilinear_time_resize(mel: np.ndarray, frames: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize along time (torchvision Resize on tensors, no anti-aliasing)."""
    scale = mel.shape[0] / frames
    src = np.maximum((np.arange(frames) + 0.5) * scale - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, mel.shape[0] - 1)
    w = (src - lo)[:, None]
    return (1 - w) * mel[lo] + w * mel[hi]


def test_fusion_long_clip_views() -> None:
    clip = _test_signal(25.0, 6)
    feats = prepare_audio_features([clip], fusion=True)
    assert feats.is_longer.tolist() == [True]
    whole = LogMel(MelConfig(recipe="htk"))(int16_roundtrip(torch.from_numpy(clip))).numpy()
    total = whole.shape[0]
    assert total == 2501
    x = feats.input_features[0].numpy()
    np.testing.assert_allclose(x[0], _bilinear_time_resize(whole, 1001), atol=1e-3)
    # 1501 possible starts -> thirds of 501, 500, 500 -> middles 250, 751, 1251.
    for channel, start in zip((1, 2, 3), (250, 751, 1251)):
        np.testing.assert_allclose(x[channel], whole[start : start + 1001], atol=1e-4)
    # Anti-aliasing (torchvision >= 0.17's default) changes only the global view.
    aa = prepare_audio_features([clip], fusion=True, mel=MelConfig(recipe="htk", resize_antialias=True))
    assert torch.abs(aa.input_features[0, 0] - feats.input_features[0, 0]).max() > 0.1
    torch.testing.assert_close(aa.input_features[0, 1:], feats.input_features[0, 1:])


def test_fusion_clip_just_over_ten_seconds_is_not_longer() -> None:
    clip = _test_signal(10.0, 7)
    clip = np.concatenate([clip, clip[:200]])  # 480,200 samples: still 1001 frames
    feats = prepare_audio_features([clip], fusion=True)
    assert feats.is_longer.tolist() == [False]
    x = feats.input_features[0]
    assert all(torch.equal(x[0], x[c]) for c in (1, 2, 3))


def test_non_fusion_long_clip_takes_the_centre_crop_at_inference() -> None:
    clip = _test_signal(14.0, 8)
    feats = prepare_audio_features([clip], fusion=False)
    assert feats.is_longer.tolist() == [True]
    start = (clip.size - CHUNK) // 2
    expected = prepare_audio_features([clip[start : start + CHUNK]], fusion=False).input_features
    torch.testing.assert_close(feats.input_features, expected, rtol=0, atol=1e-4)


def test_inference_is_deterministic_and_training_is_random_but_seeded() -> None:
    clips = [_test_signal(18.0, 9), _test_signal(13.0, 10)]
    for fusion in (False, True):
        first = prepare_audio_features(clips, fusion=fusion).input_features
        assert torch.equal(first, prepare_audio_features(clips, fusion=fusion).input_features)

        def train(seed: int) -> torch.Tensor:
            g = torch.Generator().manual_seed(seed)
            return prepare_audio_features(clips, fusion=fusion, training=True, generator=g).input_features

        assert torch.equal(train(1), train(1))
        assert not torch.equal(train(1), train(2))


def test_mixed_batch_equals_one_by_one() -> None:
    clips = [_test_signal(s, i) for i, s in enumerate((2.0, 10.0, 12.5, 10.002, 21.0))]
    for fusion in (False, True):
        batch = prepare_audio_features(clips, fusion=fusion)
        assert batch.input_features.shape == (5, 4 if fusion else 1, 1001, 64)
        for i, clip in enumerate(clips):
            one = prepare_audio_features([clip], fusion=fusion)
            torch.testing.assert_close(batch.input_features[i], one.input_features[0], rtol=0, atol=1e-3)
            assert batch.is_longer[i] == one.is_longer[0]
        assert batch.is_longer.tolist() == [False, False, True, not fusion, True]


def test_bad_waveforms_are_named() -> None:
    with pytest.raises(ValueError, match="waveform 1: expected mono"):
        prepare_audio_features([np.zeros(100, np.float32), np.zeros((2, 100), np.float32)], fusion=False)
    with pytest.raises(ValueError, match="waveform 0: empty"):
        prepare_audio_features([np.zeros(0, np.float32)], fusion=False)
    with pytest.raises(ValueError, match="fill="):
        prepare_audio_features([np.zeros(10, np.float32)], fusion=False, fill="loop")  # type: ignore[arg-type]
