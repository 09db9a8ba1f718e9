"""The built-in corpus: real files, deterministic, described truthfully, varied enough to normalise."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from clap.audio import load_audio
from clap.corpus import (
    CLASSES_FILE,
    METADATA_FILE,
    SOUND_CLASSES,
    SUMMARY_FILE,
    CorpusConfig,
    encode_audio,
    generate_corpus,
    plan_corpus,
    portable,
    read_metadata,
    set_ogg_serial,
)
from clap.data.manifest import ManifestRow, sha256_file
from clap.params import ParamsError
from clap.stages import corpus as corpus_stage
from tests.repo_copy import committed_params

REPO = Path(__file__).resolve().parents[1]

#: Tiny, but with every set, long clips, mixtures and duplicates.
TINY = dict(
    seed=11,
    captioned={"train": 14, "val": 4, "test": 4},
    labelled={"train": 6},
    clips_per_class=4,
    folds=4,
    tagging={"train": 4, "test": 2},
    min_duration=1.0,
    max_duration=12.0,
    long_fraction=0.25,
    duplicates=3,
    esc_duration=2.0,
    mix_fraction=0.4,
)
LABEL_TO_CLASS = {c.label: c for c in SOUND_CLASSES}


@pytest.fixture(scope="module")
def tiny_config() -> CorpusConfig:
    return CorpusConfig(**TINY, workers=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_config: CorpusConfig):
    out = tmp_path_factory.mktemp("corpus") / "builtin"
    summary = generate_corpus(out, tiny_config, progress=False)
    return out, summary, read_metadata(out)


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_params_give_byte_identical_corpus_whatever_the_worker_count(corpus, tmp_path):
    out, _, _ = corpus
    again = generate_corpus(tmp_path / "again", CorpusConfig(**TINY, workers=1), progress=False)
    first, second = file_digests(out), file_digests(again.out_dir)
    assert first == second
    assert any(name.endswith(".ogg") for name in first) and any(name.endswith(".mp3") for name in first)

def simd_variants() -> dict[str, str]:
    """NPY_DISABLE_CPU_FEATURES values that make numpy run as on machines with fewer SIMD features:
    first numpy's baseline only, then each dispatch target below the best this CPU has (on x86 with
    AVX-512: baseline, AVX2, AVX-512 without the Ice Lake extras)."""
    from numpy._core import _multiarray_umath as umath

    found = [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]
    return {f"without {' '.join(found[i:])}": " ".join(found[i:]) for i in range(len(found))}


_DIGESTS = """
import hashlib, json, sys
from clap.corpus import CorpusConfig, generate_corpus, mix_clip, plan_corpus
config = CorpusConfig(**json.loads(sys.argv[1]))
plans, _ = plan_corpus(config)
mixes = {p.id: hashlib.sha256(mix_clip(p, config.seed).tobytes()).hexdigest() for p in plans[:: int(sys.argv[2])]}
if len(sys.argv) > 3:
    generate_corpus(sys.argv[3], config, progress=False)
print(json.dumps(mixes))
"""


def digests_in_subprocess(env_extra: dict[str, str], step: int, out: Path | None = None) -> dict[str, str]:
    env = {**os.environ, **env_extra}
    args = [sys.executable, "-c", _DIGESTS, json.dumps({**TINY, "workers": 1}), str(step)] + ([str(out)] if out else [])
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_float64_mix_has_the_same_bits_whatever_simd_numpy_uses():
    """numpy's AVX-512 exp/log/power differ in the last bit from its AVX2 ones; a sweep's phase sum
    carries such a bit into every later sample. The mix must not depend on them (every 3rd clip:
    all classes, backgrounds, mono and stereo)."""
    native = digests_in_subprocess({}, 3)
    assert len(native) >= 25
    for name, disabled in simd_variants().items():
        assert digests_in_subprocess({"NPY_DISABLE_CPU_FEATURES": disabled}, 3) == native, name


def test_a_machine_with_fewer_simd_features_writes_the_same_bytes(corpus, tmp_path):
    """The whole corpus written as a baseline-SIMD machine would write it (numpy limited to its
    baseline, one process) against the fixture's (all features, two workers)."""
    variants = simd_variants()
    if not variants:
        pytest.skip("this CPU has no SIMD features beyond numpy's baseline")
    out, _, _ = corpus
    disabled = list(variants.values())[0]  # everything above the baseline
    digests_in_subprocess({"NPY_DISABLE_CPU_FEATURES": disabled}, 1000, tmp_path / "baseline")
    assert file_digests(tmp_path / "baseline") == file_digests(out)


def test_portable_functions_match_numpy_to_a_few_ulp():
    x = np.random.default_rng(0).uniform(-700.0, 700.0, 200_000)
    positive = np.abs(x) + 1e-3

    def ulps(mine: np.ndarray, reference: np.ndarray) -> float:
        return float(np.max(np.abs(mine - reference) / np.spacing(np.abs(reference))))

    assert ulps(portable.exp(x), np.exp(x)) <= 2
    assert ulps(portable.log(positive), np.log(positive)) <= 2
    assert ulps(portable.power(positive[:1000], x[:1000] / 300), positive[:1000] ** (x[:1000] / 300)) <= 16
    assert np.max(np.abs(portable.tanh(x / 100) - np.tanh(x / 100))) <= 4e-16
    assert portable.int_power(np.array([1.5, -2.0]), 4).tolist() == [1.5**4, 16.0]
    assert portable.exp(-1e5) == 0.0 and portable.exp(0.0) == 1.0 and portable.log(1.0) == 0.0
    assert abs(portable.db_to_gain(-20.0) - 0.1) < 1e-16
    with pytest.raises(ValueError, match="values > 0"):
        portable.log(np.array([1.0, 0.0]))


def test_a_set_keeps_its_clips_when_another_set_changes_size():
    base, _ = plan_corpus(CorpusConfig(**TINY))
    bigger, _ = plan_corpus(CorpusConfig(**{**TINY, "labelled": {"train": 9}}))
    captioned = [p for p in base if p.source == "builtin_captions"]
    assert captioned == [p for p in bigger if p.source == "builtin_captions"]


def test_metadata_rows_have_the_documented_format_and_layout(corpus):
    out, summary, rows = corpus
    tasks = {"builtin_captions": "retrieval", "builtin_labels": "pretrain",
             "builtin_esc": "classification", "builtin_tags": "tagging"}
    for row in rows:
        assert list(row) == ["id", "source", "split", "file", "captions", "labels", "fold", "task"]
        clip_id = row["id"].split("/", 1)[1]
        assert row["id"] == f"{row['source']}/{clip_id}"
        assert Path(row["file"]).parent.as_posix() == f"{row['source']}/{row['split']}"
        assert Path(row["file"]).stem == clip_id
        assert (out / row["file"]).is_file()
        assert row["task"] == tasks[row["source"]]
        assert row["labels"] and all(label in LABEL_TO_CLASS for label in row["labels"])
        assert (row["fold"] is not None) == (row["source"] == "builtin_esc")
        assert bool(row["captions"]) == (row["source"] == "builtin_captions")
        # What ingest builds from it.
        ManifestRow(id=row["id"], source=row["source"], split=row["split"], path=str(out / row["file"]),
                    captions=row["captions"], labels=row["labels"], fold=row["fold"], task=row["task"])
    assert len({row["id"] for row in rows}) == len(rows) == summary.clips
    counts = Counter((row["source"], row["split"]) for row in rows)
    n_dup_captions = sum(copy.startswith("builtin_captions/") for copy, _ in summary.duplicates)
    assert counts == {
        ("builtin_captions", "train"): 14 + n_dup_captions, ("builtin_captions", "val"): 4,
        ("builtin_captions", "test"): 4, ("builtin_labels", "train"): 6 + 3 - n_dup_captions,
        ("builtin_esc", "test"): 4 * len(SOUND_CLASSES), ("builtin_tags", "train"): 4, ("builtin_tags", "test"): 2,
    }
    assert json.loads((out / SUMMARY_FILE).read_text())["clips"] == len(rows)
    tag_sizes = {len(row["labels"]) for row in rows if row["source"] == "builtin_tags"}
    assert tag_sizes <= {2, 3}
    assert {len(row["labels"]) for row in rows if row["source"] == "builtin_labels"} <= {1, 2, 3}


def test_every_class_is_present_with_its_label_and_esc_folds_are_balanced(corpus):
    out, _, rows = corpus
    classes = json.loads((out / CLASSES_FILE).read_text())
    assert len(classes) >= 12
    assert [c["label"] for c in classes] == [c.label for c in SOUND_CLASSES]
    esc = [row for row in rows if row["source"] == "builtin_esc"]
    per_class = Counter(row["labels"][0] for row in esc)
    assert per_class == {c["label"]: 4 for c in classes}
    folds = Counter((row["labels"][0], row["fold"]) for row in esc)
    assert set(folds.values()) == {1} and {fold for _, fold in folds} == {1, 2, 3, 4}
    captioned_train = {row["labels"][0] for row in rows if row["id"].startswith("builtin_captions/train")}
    assert captioned_train == {c["label"] for c in classes}


def mentions(caption: str, label: str) -> bool:
    return any(word in caption.lower() for word in LABEL_TO_CLASS[label].keywords)


def test_each_clip_has_five_different_captions_that_name_its_sounds(corpus):
    _, _, rows = corpus
    captioned = [row for row in rows if row["source"] == "builtin_captions"]
    two_sound = 0
    for row in captioned:
        captions = row["captions"]
        assert len(captions) == 5 and len(set(captions)) == 5, row["id"]
        assert all(mentions(c, row["labels"][0]) for c in captions), captions
        if len(row["labels"]) == 2:
            two_sound += 1
            assert sum(mentions(c, row["labels"][1]) for c in captions) >= 2, captions
    assert two_sound >= 3
    all_captions = [c for row in captioned for c in row["captions"]]
    assert len(set(all_captions)) >= 0.95 * len(all_captions)


def test_captions_follow_the_audible_attributes(tiny_config):
    plans, _ = plan_corpus(tiny_config)
    for plan in plans:
        if plan.source != "builtin_captions":
            continue
        text = " ".join(plan.captions).lower()
        event = plan.events[0]
        if event.gain_db > -8.0:
            assert "loud" in text, plan.captions
        if event.gain_db < -15.0:
            assert any(w in text for w in ("faint", "quiet", "soft", "distant")), plan.captions
        if plan.duration > 10.0 and event.length < 0.9 * plan.duration:
            assert not any(w in text for w in ("throughout", "the whole time", "all the way")), plan.captions


def test_durations_stay_in_bounds_and_long_clips_are_mostly_background(corpus, tiny_config):
    out, _, rows = corpus
    durations = {row["id"]: sf.info(str(out / row["file"])).duration for row in rows}
    assert min(durations.values()) >= 1.0 - 1e-3 and max(durations.values()) <= 12.0 + 0.06
    plans, _ = plan_corpus(tiny_config)
    for source, split, count in (("builtin_captions", "train", 14), ("builtin_labels", "train", 6)):
        long_ids = [p.id for p in plans if (p.source, p.split) == (source, split) and p.duration > 10.0]
        assert len(long_ids) == round(0.25 * count)
    checked = 0
    for plan in plans:
        if plan.duration <= 10.0 or plan.source == "builtin_labels" or plan.fmt in ("mp3", "ogg"):
            continue
        samples, sr = load_audio(out / plan.file)
        inside = np.zeros(samples.shape[1], dtype=bool)
        for event in plan.events:
            assert event.length <= 0.4 * plan.duration + 1e-6
            inside[int(event.start * sr): int((event.start + event.length) * sr)] = True
        rms_out = np.sqrt(np.mean(samples[:, ~inside] ** 2))
        rms_in = np.sqrt(np.mean(samples[:, inside] ** 2))
        assert inside.mean() < 0.8
        assert 20 * np.log10(rms_out) < plan.background_db + 4.0  # outside the event: background only
        assert rms_in > 2.0 * rms_out
        checked += 1
    assert checked >= 1


def test_rates_channels_and_formats_are_mixed(corpus):
    out, summary, rows = corpus
    kinds = set()
    for row in rows:
        info = sf.info(str(out / row["file"]))
        kinds.add((info.format, info.subtype, info.samplerate, info.channels))
    assert {(f, s) for f, s, _, _ in kinds} == {
        ("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")}
    assert {r for _, _, r, _ in kinds} == {16000, 22050, 32000, 44100, 48000}
    assert {c for _, _, _, c in kinds} == {1, 2}
    assert summary.channels[2] >= 1 and summary.long_clips >= 1


def test_every_file_decodes_with_the_pipeline_loader(corpus, tiny_config):
    out, _, _ = corpus
    plans, duplicates = plan_corpus(tiny_config)
    for plan in plans + [copy for copy, _ in duplicates]:
        samples, sr = load_audio(out / plan.file)
        assert sr == plan.sample_rate and samples.shape[0] == plan.channels
        assert abs(samples.shape[1] / sr - plan.duration) < 0.06, plan.id
        assert np.isfinite(samples).all()
        assert 1e-3 < np.abs(samples).max() <= 1.0


def test_planted_duplicates_are_byte_identical_copies_of_eval_files(corpus):
    out, summary, rows = corpus
    assert len(summary.duplicates) == 3
    by_id = {row["id"]: row for row in rows}
    by_hash: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_hash[sha256_file(out / row["file"])].append(row["id"])
    identical = sorted(sorted(ids) for ids in by_hash.values() if len(ids) > 1)
    assert identical == sorted(sorted(pair) for pair in summary.duplicates)  # no accidental others
    for copy, original in summary.duplicates:
        assert by_id[copy]["split"] == "train" and by_id[copy]["source"] in ("builtin_captions", "builtin_labels")
        assert by_id[original]["split"] in ("val", "test")
        assert by_id[copy]["labels"] and set(by_id[copy]["labels"]) == set(by_id[original]["labels"])
        assert (out / by_id[copy]["file"]).read_bytes() == (out / by_id[original]["file"]).read_bytes()
    assert {copy.split("/")[0] for copy, _ in summary.duplicates} == {"builtin_captions", "builtin_labels"}


def clip_features(path: Path) -> np.ndarray:
    """Spectral shape (16 log-spaced bands) of the loudest frames, plus the modulation spectrum of
    the energy envelope: a bag of simple features any model could pick up."""
    samples, sr = load_audio(path)
    x = samples.mean(axis=0)
    frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::256] * np.hanning(1024)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(axis=1)
    loud = power[energy >= np.quantile(energy, 0.75)].mean(axis=0)
    freqs = np.fft.rfftfreq(1024, 1.0 / sr)
    edges = np.geomspace(60.0, 7500.0, 17)
    bands = np.array([loud[(freqs >= a) & (freqs < b)].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    envelope = np.log(energy + 1e-10)
    envelope -= envelope.mean()
    modulation = np.abs(np.fft.rfft(envelope * np.hanning(len(envelope)))) ** 2
    mod_freqs = np.fft.rfftfreq(len(envelope), 256.0 / sr)
    mod_edges = [0.3, 1.0, 3.0, 8.0, 20.0, 50.0]
    mods = np.array([modulation[(mod_freqs >= a) & (mod_freqs < b)].sum()
                     for a, b in zip(mod_edges[:-1], mod_edges[1:], strict=True)])
    return np.concatenate([np.sqrt(bands / bands.sum()), np.sqrt(mods / mods.sum()), [envelope.std() / 10.0]])


def test_classes_are_acoustically_distinct(corpus):
    out, _, rows = corpus
    esc = [row for row in rows if row["source"] == "builtin_esc"]
    features = np.array([clip_features(out / row["file"]) for row in esc])
    features = (features - features.mean(0)) / (features.std(0) + 1e-9)
    labels = np.array([row["labels"][0] for row in esc])
    classes = sorted(set(labels))
    centroids = {c: features[labels == c].mean(0) for c in classes}
    separated, pairs = 0, 0
    for i, a in enumerate(classes):
        for b in classes[i + 1:]:
            members = (labels == a) | (labels == b)
            to_a = ((features[members] - centroids[a]) ** 2).sum(1)
            nearer_a = to_a < ((features[members] - centroids[b]) ** 2).sum(1)
            separated += bool(np.all(nearer_a == (labels[members] == a)))
            pairs += 1
    assert separated >= 0.9 * pairs
    # 13-way nearest centroid, leaving each clip out of its class centroid (chance is 1/13).
    hits = 0
    for k in range(len(labels)):
        rest = np.arange(len(labels)) != k
        dists = [((features[k] - features[rest & (labels == c)].mean(0)) ** 2).sum() for c in classes]
        hits += classes[int(np.argmin(dists))] == labels[k]
    assert hits / len(labels) >= 0.6


def test_ogg_serial_rewrite_makes_vorbis_output_reproducible():
    samples = (0.3 * np.sin(np.linspace(0, 2000, 22050))).astype(np.float32)[:, None]
    raw = []
    for _ in range(2):
        buf = io.BytesIO()
        sf.write(buf, samples, 22050, format="OGG", subtype="VORBIS")
        raw.append(buf.getvalue())
    assert raw[0] != raw[1]  # libsndfile draws a random stream serial: the reason for the rewrite
    fixed = [set_ogg_serial(data, 1234) for data in raw]
    assert fixed[0] == fixed[1] == encode_audio(samples, 22050, "ogg", serial=1234)
    decoded, sr = sf.read(io.BytesIO(fixed[0]), dtype="float32")
    assert sr == 22050 and len(decoded) == len(samples)
    assert np.allclose(decoded, sf.read(io.BytesIO(raw[0]), dtype="float32")[0])


def test_config_reads_params_and_names_bad_keys():
    params = committed_params()  # the defaults as committed, whatever the workspace's params.yaml holds
    config = CorpusConfig.from_params(params)
    corpus = params["corpus"]
    assert config.seed == corpus["seed"] and config.captioned == corpus["captioned"]
    assert config.clips_per_class == corpus["classification"]["clips_per_class"]
    assert config.duplicates == corpus["duplicates"] and config.long_fraction == corpus["long_fraction"]
    # the top-level seed is the training seed: a seed sweep must not regenerate the corpus
    training_seed = CorpusConfig.from_params({"seed": 5, "corpus": {"formats": ["flac", "mp3"]}})
    assert training_seed.seed == CorpusConfig().seed and training_seed.formats == {"flac": 1.0, "mp3": 1.0}
    with pytest.raises(ParamsError, match="captoined"):
        CorpusConfig.from_params({"corpus": {"captoined": {"train": 1}}})
    with pytest.raises(ParamsError, match="corpus.min_duration"):
        CorpusConfig.from_params({"corpus": {"min_duration": 20.0, "max_duration": 10.0}})
    with pytest.raises(ParamsError, match="corpus.formats"):
        CorpusConfig.from_params({"corpus": {"formats": ["wav_pcm16", "aiff"]}})
    with pytest.raises(ParamsError, match="clip_per_class"):
        CorpusConfig.from_params({"corpus": {"classification": {"clip_per_class": 3}}})
    with pytest.raises(ParamsError, match="captioned.dev"):
        CorpusConfig.from_params({"corpus": {"captioned": {"dev": 3}}})


def write_params(path: Path) -> Path:
    params = {"seed": 1, "corpus": {
        "captioned": {"train": 3, "test": 1}, "labelled": {"train": 1},
        "classification": {"clips_per_class": 1, "folds": 1}, "tagging": {"train": 1},
        "min_duration": 1.0, "max_duration": 3.0, "long_fraction": 0.0, "duplicates": 1, "workers": 1,
    }}
    path.write_text(yaml.safe_dump(params))
    return path


def test_stage_writes_the_corpus_and_replaces_a_stale_one(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "raw" / "builtin"
    cmd = [sys.executable, "-m", "clap.stages.corpus", "--params", str(params), "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "corpus: 20 clips" in done.stderr  # 4 + 1 + 13 + 1 + 1 duplicate
    assert len((out / METADATA_FILE).read_text().splitlines()) == 20
    (out / "stale.wav").write_bytes(b"left over")
    assert corpus_stage.main(["--params", str(params), "--out", str(out), "--no-progress"]) == 0
    assert not (out / "stale.wav").exists() and (out / METADATA_FILE).is_file()
    assert not out.with_name("builtin.partial").exists()


def test_stage_refuses_to_delete_a_folder_that_is_not_a_corpus(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="precious"):
        corpus_stage.main(["--params", str(params), "--out", str(precious), "--no-progress"])
    assert (precious / "notes.txt").read_text() == "keep me"
