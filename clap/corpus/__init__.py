"""The embedded default corpus: real audio files synthesised with numpy, with captions and labels.

``write_corpus(out_dir, CorpusConfig.from_params(params))`` is the one entry point (the DVC stage
``corpus`` calls it). Nothing is downloaded. A seed and a few counts (params.yaml, section
``corpus``) decide every file, so the same params give byte-identical audio and metadata.

Sound classes
    ``SOUND_CLASSES`` (clap.corpus.sounds) holds 13 acoustically distinct classes: siren,
    engine, rain, bell, clock tick, whistle, dog bark, drum, water drip, wind, alarm, birds,
    crickets. Each clip draws its own pitch, rate, loudness, stereo position, background noise
    (kind and level) and event position, so no two clips are alike, and the captions
    (clap.corpus.captions) say what those draws made audible.

Sets (each one is a manifest ``source``)
    ``builtin_captions``  Clotho/AudioCaps style: 5 different captions per clip, some clips with a
                          second, quieter sound that the captions may mention; splits train/val/test;
                          task ``retrieval``.
    ``builtin_labels``    AudioSet style: 1-3 label keywords per clip (mixtures), no captions; split
                          train; task ``pretrain``.
    ``builtin_esc``       ESC-50 style: one label per 5 s clip, ``clips_per_class`` clips per class,
                          ``fold`` 1..folds, split test; task ``classification``.
    ``builtin_tags``      multi-label: 2-3 classes mixed, no captions; splits train/test; task
                          ``tagging``.

    Durations run from ``min_duration`` to ``max_duration`` (log-uniform below 10 s). A share
    ``long_fraction`` of the captions/labels/tags clips last longer than 10 s, and their described
    event fills at most 40 % of the clip (the rest is background). Sample rates (16-48 kHz), channel
    counts (mono/stereo) and file formats (WAV 16-bit, WAV float, FLAC, OGG Vorbis, MP3; shares in
    ``CorpusConfig.formats``) are spread evenly over each split. ``duplicates`` byte-identical
    copies of evaluation files (captions val/test, ESC) are planted in the train splits under new
    ids, for ingest's overlap exclusion.

Layout under the output folder
    ``<source>/<split>/<clip_id>.<ext>``  the audio files.
    ``metadata.jsonl``  one JSON object per clip, sorted by id, with exactly these keys::

        {"id": "<source>/<clip_id>", "source": str, "split": "train"|"val"|"test",
         "file": "<source>/<split>/<clip_id>.<ext>" (relative to the output folder),
         "captions": [str, ...] (empty for label-only sets), "labels": [str, ...],
         "fold": int | null, "task": "retrieval"|"pretrain"|"classification"|"tagging"}

    ``classes.json``  ``[{"name", "label", "keywords"}, ...]``: the class list; ``label`` is the human
                      label used in ``labels`` (and by zero-shot prompts).
    ``summary.json``  counts, total seconds and bytes, and the planted duplicates as
                      ``[[train_id, eval_id], ...]`` (ground truth for overlap checks).

Determinism
    Every clip is drawn from its own seed, derived from (seed, set, split, index), so a clip does not
    change when another set's size does and worker scheduling cannot change any file. The bytes do
    not depend on the machine either: numpy picks its float64 exp/log/power/tanh by CPU (AVX-512
    SIMD code differs in the last bit from AVX2 code, and a sweep's phase sum carries that bit into
    the samples), so the synthesisers use clap.corpus.portable, built from exactly rounded
    operations only; sin, cos, sqrt, sums, FFTs and the random generator give the same bits on every
    x86-64 SIMD level (tests/test_corpus.py runs numpy limited to each level). libsndfile gives
    each OGG stream a random serial number; we rewrite it with one derived from the clip's seed (and
    fix the page checksums). Float WAV files carry a PEAK chunk stamped with the time of writing; we
    zero the stamp. FLAC and MP3 (LAME) output is deterministic as it is. A format the installed
    libsndfile cannot write falls back to FLAC with a warning. The bytes are those of the pinned
    numpy, scipy and soundfile (libsndfile) versions; another version may round differently.
"""

from clap.corpus.config import CorpusConfig
from clap.corpus.encode import FORMATS, encode_audio, set_ogg_serial
from clap.corpus.generate import (
    CLASSES_FILE,
    METADATA_FILE,
    SUMMARY_FILE,
    CorpusSummary,
    generate_corpus,
    mix_clip,
    read_metadata,
    render_clip,
    write_corpus,
)
from clap.corpus.plan import ClipPlan, plan_corpus
from clap.corpus.sounds import SOUND_CLASSES, class_labels

__all__ = [
    "CLASSES_FILE", "FORMATS", "METADATA_FILE", "SOUND_CLASSES", "SUMMARY_FILE", "ClipPlan", "CorpusConfig",
    "CorpusSummary", "class_labels", "encode_audio", "generate_corpus", "mix_clip", "plan_corpus", "read_metadata",
    "render_clip", "set_ogg_serial", "write_corpus",
]
