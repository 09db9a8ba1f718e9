"""User inference: deterministic embeddings, any rate/length/channels, zero-shot, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from clap.audio import AudioDecodeError
from clap.model.inference import ClapInference, ZeroShotResult, load_clip
from tests.tiny_clap import save_tiny_model, tiny_model

SR = 48_000


def _noise_burst(seconds: float, sample_rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """[channels, frames]: noise whose level changes over time, so different crops differ."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    envelope = 0.05 + 0.3 * np.abs(np.sin(np.linspace(0, 7, n)))
    return (rng.standard_normal((channels, n)) * envelope).clip(-1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ClapInference:
    """A fusion model saved with save_model and loaded back by path."""
    folder = save_tiny_model(tmp_path_factory.mktemp("model") / "tiny-fusion", fusion=True)
    return ClapInference(folder, device="cpu", batch_size=4, progress=False)


def test_long_clip_embedding_is_the_same_every_call_with_fusion(engine: ClapInference) -> None:
    assert engine.fusion
    long_clip = (_noise_burst(14.0, SR, seed=1), SR)
    first = engine.embed_audio([long_clip])
    assert first.shape == (1, 512)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(1))
    assert torch.equal(first, engine.embed_audio([long_clip]))
    # ... and it does not depend on the batch it comes in (a short clip alongside, another order).
    short_clip = (_noise_burst(3.0, SR, seed=2), SR)
    mixed = engine.embed_audio([short_clip, long_clip], batch_size=2)
    torch.testing.assert_close(mixed[1], first[0], rtol=0, atol=1e-5)


def test_embed_audio_accepts_any_rate_length_and_channels(engine: ClapInference, tmp_path: Path) -> None:
    stereo_44k = _noise_burst(2.0, 44_100, seed=3, channels=2)
    path = tmp_path / "stereo_44k.flac"
    sf.write(path, stereo_44k.T, 44_100)
    mono_16k = _noise_burst(1.5, 16_000, seed=4)[0]
    long_48k = torch.from_numpy(_noise_burst(12.0, SR, seed=5, channels=2))
    items = [path, (mono_16k, 16_000), (long_48k, SR), str(path)]
    out = engine.embed_audio(items, batch_size=3)
    assert out.shape == (4, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(out[0], out[3], rtol=0, atol=1e-6)  # a Path and a str of the same file
    # Resampling and downmixing are what the user would do by hand with torchaudio.
    by_hand = torchaudio.functional.resample(torch.from_numpy(mono_16k), 16_000, SR)
    torch.testing.assert_close(engine.embed_audio([(by_hand, SR)])[0], out[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(engine.embed_audio([(long_48k.mean(0), SR)])[0], out[2], rtol=0, atol=1e-5)


def test_load_clip_output_is_mono_48k(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    sf.write(path, _noise_burst(0.5, 22_050, seed=6, channels=3).T, 22_050)
    clip = load_clip(path)
    assert clip.dim() == 1 and clip.dtype == torch.float32
    assert abs(clip.numel() - 24_000) <= 1


def test_embed_text_is_deterministic_and_unit_length(engine: ClapInference) -> None:
    texts = ["a dog barks", "rain on a tin roof", "a dog barks"]
    out = engine.embed_text(texts)
    assert out.shape == (3, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out[0], out[2])
    assert not torch.allclose(out[0], out[1])


def test_embed_text_in_input_order_equals_the_77_token_path(engine: ClapInference) -> None:
    """embed_text sorts texts by length and pads each batch to its longest: the embeddings are the
    model's own on texts padded to 77 tokens, in the order given."""
    texts = ["a much longer caption about rain falling on a tin roof while a car passes by", "bell",
             "a dog barks twice", "wind", "an engine hums and then a siren wails in the distance"]
    out = engine.embed_text(texts, batch_size=2)
    model = engine.model
    with torch.no_grad():
        tokens = model.tokenize(texts)
        assert tokens["input_ids"].shape[1] == 77
        direct = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-5)


def test_zero_shot_probabilities(engine: ClapInference) -> None:
    clips = [(_noise_burst(2.0, SR, seed=7), SR), (_noise_burst(11.0, SR, seed=8), SR)]
    labels = ["dog", "rain", "engine"]
    result = engine.zero_shot(clips, labels)
    assert isinstance(result, ZeroShotResult)
    assert result.probabilities.shape == (2, 3)
    torch.testing.assert_close(result.probabilities.sum(dim=1), torch.ones(2))
    # The documented rule: softmax over labels of logit_scale * <audio, "This is a sound of {label}.">.
    audio = engine.embed_audio(clips)
    text = engine.embed_text([f"This is a sound of {label}." for label in labels])
    scale = engine.model.logit_scale_a.exp().item()
    torch.testing.assert_close(result.probabilities, (scale * audio @ text.T).softmax(dim=1))
    top = result.top_k(2)
    assert [len(row) for row in top] == [2, 2]
    for row, probs in zip(top, result.probabilities):
        assert row[0][1] >= row[1][1]
        assert row[0][0] == labels[int(probs.argmax())]
    assert result.predictions() == [row[0][0] for row in top]


def test_non_fusion_model_long_clip_is_deterministic() -> None:
    engine = ClapInference(tiny_model(fusion=False), device="cpu", progress=False)
    clip = (_noise_burst(13.0, SR, seed=9), SR)
    first = engine.embed_audio([clip])
    assert torch.equal(first, engine.embed_audio([clip]))


def test_bad_inputs_are_named(engine: ClapInference, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.wav: no such audio file"):
        engine.embed_audio([tmp_path / "missing.wav"])
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioDecodeError, match="garbage.wav: not a readable audio file"):
        engine.embed_audio([garbage])
    nan = np.zeros(1000, np.float32)
    nan[10] = np.nan
    with pytest.raises(ValueError, match="audio item 1 .*NaN"):
        engine.embed_audio([(np.zeros(1000, np.float32), SR), (nan, SR)])
    with pytest.raises(ValueError, match=r"more channels than frames.*transpose"):
        engine.embed_audio([(np.zeros((1000, 2), np.float32), SR)])
    with pytest.raises(ValueError, match="duplicate labels"):
        engine.zero_shot([(np.zeros(1000, np.float32), SR)], ["dog", "dog"])
    with pytest.raises(ValueError, match="placeholder"):
        engine.zero_shot([(np.zeros(1000, np.float32), SR)], ["dog"], template="a sound")


def test_clap_inference_takes_a_tokenizer_for_laion_checkpoints(tmp_path: Path) -> None:
    """``ClapInference(<LAION .pt>, tokenizer=<folder>)``, as the README shows; without it the error
    names the checkpoint and where to pass the folder."""
    from clap.model.text_encoders import ModelNotFoundLocally
    from tests.test_checkpoint import laion_state_dict, make_roberta_tokenizer, save_laion, tiny_hf_clap

    checkpoint = save_laion(tmp_path / "630k-tiny.pt", laion_state_dict(tiny_hf_clap(False), False))
    tokenizer = make_roberta_tokenizer(tmp_path / "tok")
    engine = ClapInference(checkpoint, device="cpu", tokenizer=tokenizer, progress=False)
    assert engine.embed_text(["a dog barks"]).shape == (1, 512)

    bare = ClapInference(checkpoint, device="cpu", progress=False)
    with pytest.raises(ModelNotFoundLocally, match=r"^630k-tiny.pt needs the RoBERTa tokenizer 'roberta-base', which is "
                                                   r"not available offline: pass tokenizer=<folder> \(ClapInference"):
        bare.embed_text(["a dog barks"])
    again = ClapInference(bare.model, device="cpu", tokenizer=tokenizer, progress=False)  # a loaded model too
    torch.testing.assert_close(again.embed_text(["a dog barks"]), engine.embed_text(["a dog barks"]))
