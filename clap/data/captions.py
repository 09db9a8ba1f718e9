"""Caption augmentation: template and keyword-to-caption (k2c) captions from labels, then de-biasing.

Every row keeps its human captions in ``captions`` and gets its made-up ones in
``augmented = {"template": [...], "k2c": [...]}``, so training can tell the kinds apart.

Which captions are made (top-level param ``caption_augmentation``):

* ``none``:     no augmentation; both lists stay empty.
* ``template``: rows with labels get ``"the sound of a, b, and c"`` (template from params).
* ``k2c``:      as ``template``, plus captions generated from the labels by a keyword-to-text T5
                (the keytotext "k2t" models; ``captions.k2c_model``). Both kinds are kept so training
                can draw from either (the reference's ``text_augment_all``). The model is loaded only
                in this mode; ``captions.k2c_model`` set in another mode is ignored with a log line.
                With ``captions.k2c_model: null`` the stand-in is used: a small T5 the ``k2c_model``
                stage trains on the train clips' (labels -> captions) pairs
                (:mod:`clap.data.k2c_standin`, folder ``data/models/k2c``), loaded and decoded by the
                same code as a real model; reports name it as a stand-in (``k2c_model_used``).

Keyword input format (``captions.k2c_input_format``), following keytotext:

* ``pipe`` (default): ``"dog| bark| rain"``; what keytotext's K2TPipeline feeds the k2t / k2t-base
  models (it turns a Python list's commas into ``|``).
* ``space``: ``"dog bark rain"``; keytotext's common_gen-style models and its dataset builder.

Labels are humanised first (``dog_bark`` -> ``dog bark``). keytotext appends a literal ``</s>``
to the text; the tokenizer already ends the sequence with EOS, so nothing is added here.

De-biasing (``captions.debias``, on by default) replaces gendered words for people with neutral ones:
woman/man/girl/boy/lady/gentleman -> person, their plurals -> people, he/she -> the person. Whole words
only (``man-made``, ``fireman``, ``human`` stay), case kept (``Man`` -> ``Person``, ``She`` -> ``The person``).
It applies to augmented captions always and to the human captions only with
``captions.debias_original: true`` (off by default: the paper de-biases generated captions and leaves
human ones as written).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from clap.data.manifest import ManifestRow, read_manifest, write_manifest
from clap.params import load_section

log = logging.getLogger(__name__)

MODES = ("none", "template", "k2c")
INPUT_FORMATS = ("pipe", "space")
AUGMENT_KINDS = ("template", "k2c")
#: The file in a stand-in model folder saying what it is (written by clap.data.k2c_standin).
STANDIN_INFO = "standin.json"


class CaptionError(RuntimeError):
    """Captions cannot be made as configured (bad params, model unavailable...)."""


@dataclass(frozen=True)
class CaptionConfig:
    """Top-level ``caption_augmentation`` plus the ``captions`` section of params.yaml."""

    mode: str = "template"
    template: str = "the sound of {labels}"
    k2c_model: str | None = None
    k2c_allow_download: bool = False
    k2c_num_captions: int = 1
    k2c_batch_size: int = 8
    k2c_num_beams: int = 4
    k2c_max_new_tokens: int = 48
    k2c_input_format: str = "pipe"
    k2c_standin: dict[str, Any] = field(default_factory=dict)  # checked by clap.data.k2c_standin.StandinConfig
    debias: bool = True
    debias_original: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CaptionError(f"params.yaml caption_augmentation: {self.mode!r} is not one of {MODES}")
        if self.k2c_input_format not in INPUT_FORMATS:
            raise CaptionError(
                f"params.yaml captions.k2c_input_format: {self.k2c_input_format!r} is not one of {INPUT_FORMATS}"
            )
        try:
            self.template.format(labels="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise CaptionError(
                f"params.yaml captions.template: {self.template!r} must contain only the field {{labels}} ({exc!r})"
            ) from exc
        if "{labels}" not in self.template:
            raise CaptionError(f"params.yaml captions.template: {self.template!r} has no {{labels}} field")
        for name in ("k2c_num_captions", "k2c_batch_size", "k2c_num_beams", "k2c_max_new_tokens"):
            if getattr(self, name) < 1:
                raise CaptionError(f"params.yaml captions.{name}: must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CaptionConfig":
        mode = {"mode": params.get("caption_augmentation", "template")}
        return load_section(params, "captions", cls, fixed=mode, fixed_at="caption_augmentation", error=CaptionError)


# --------------------------------------------------------------------------- text


def humanize_label(label: str) -> str:
    """``dog_bark`` -> ``dog bark``; surrounding and repeated whitespace removed."""
    return " ".join(label.replace("_", " ").split())


def clean_labels(labels: Iterable[str]) -> list[str]:
    """Humanised, non-empty labels in their original order, without repeats."""
    seen: dict[str, None] = {}
    for label in labels:
        text = humanize_label(label)
        if text:
            seen.setdefault(text, None)
    return list(seen)


def join_labels(labels: Sequence[str]) -> str:
    """``a`` / ``a and b`` / ``a, b, and c`` (Oxford comma for three or more)."""
    if not labels:
        return ""
    if len(labels) == 1:
        return labels[0]
    if len(labels) == 2:
        return f"{labels[0]} and {labels[1]}"
    return ", ".join(labels[:-1]) + f", and {labels[-1]}"


def template_caption(labels: Sequence[str], template: str = "the sound of {labels}") -> str:
    """The template caption of a label list (labels humanised); empty when there are no labels."""
    cleaned = clean_labels(labels)
    return template.format(labels=join_labels(cleaned)) if cleaned else ""


def format_keywords(labels: Sequence[str], style: str = "pipe") -> str:
    """The k2c model's input text for a label list (see the module docstring for the two styles)."""
    cleaned = clean_labels(labels)
    if style == "pipe":
        return "| ".join(cleaned)
    if style == "space":
        return " ".join(cleaned)
    raise CaptionError(f"keyword input format {style!r} is not one of {INPUT_FORMATS}")


_NEUTRAL = {
    "man": "person", "woman": "person", "boy": "person", "girl": "person",
    "lady": "person", "gentleman": "person",
    "men": "people", "women": "people", "boys": "people", "girls": "people",
    "ladies": "people", "gentlemen": "people",
    "he": "the person", "she": "the person",
}
# whole words: not inside a longer word and not part of a hyphenated compound ("man-made")
_GENDERED = re.compile(
    r"(?<![\w-])(" + "|".join(sorted(_NEUTRAL, key=len, reverse=True)) + r")(?![\w-])", re.IGNORECASE
)


def _neutral_for(match: re.Match[str]) -> str:
    word = match.group(0)
    neutral = _NEUTRAL[word.lower()]
    if len(word) > 1 and word.isupper():
        return neutral.upper()
    if word[0].isupper():
        return neutral[0].upper() + neutral[1:]
    return neutral


def debias_count(text: str) -> tuple[str, int]:
    """``debias`` plus the number of words replaced."""
    return _GENDERED.subn(_neutral_for, text)


def debias(text: str) -> str:
    """Replace gendered words for people with neutral ones (``A man speaks`` -> ``A person speaks``)."""
    return debias_count(text)[0]


# --------------------------------------------------------------------------- keyword to caption


class KeywordToCaption:
    """A seq2seq keyword-to-text model behind ``AutoTokenizer`` + ``AutoModelForSeq2SeqLM.generate``.

    Decoding is beam search (greedy when ``num_beams`` is 1), never sampling, so the same labels give
    the same captions. Identical inputs are generated once.
    """

    def __init__(
        self,
        model_name: str,
        allow_download: bool = False,
        device: str | None = None,
        description: str | None = None,
        standin: bool = False,
        threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.model_name = model_name
        #: what reports call the model: its name or path, or the stand-in's plain label
        self.description = description or model_name
        self.standin = standin  # a stand-in trained here (clap.data.k2c_standin), not a keytotext model
        self.threads = threads  # torch CPU threads while generating; None: torch's default
        looks_local = Path(model_name).is_absolute() or model_name.startswith((".", "~"))
        if looks_local and not Path(model_name).expanduser().is_dir():
            raise CaptionError(
                f"captions.k2c_model {model_name!r}: no such directory. Fix: save a keyword-to-text model there "
                "(model.save_pretrained + tokenizer.save_pretrained) or set captions.k2c_model to a hub name such "
                "as gagan3012/k2t-base with captions.k2c_allow_download: true."
            )
        source = str(Path(model_name).expanduser()) if looks_local else model_name
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(source, local_files_only=not allow_download)
        except (OSError, ValueError, KeyError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            how = (
                "it could not be fetched: check the name and network access, and unset HF_HUB_OFFLINE"
                if allow_download
                else "downloads are off (captions.k2c_allow_download: false) and it is not in the local cache"
            )
            raise CaptionError(
                f"captions.k2c_model {model_name!r}: cannot load the keyword-to-caption model; {how} "
                f"({type(exc).__name__}: {first_line}). Fix: set captions.k2c_model to a local directory holding a "
                "saved seq2seq model and its tokenizer, or set captions.k2c_allow_download: true to fetch it once."
            ) from exc
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()

    def generate(
        self,
        texts: Sequence[str],
        num_captions: int = 1,
        num_beams: int = 4,
        max_new_tokens: int = 48,
        batch_size: int = 8,
        progress: bool = True,
    ) -> list[list[str]]:
        """Captions for each input text (up to ``num_captions`` distinct, non-empty ones each)."""
        import torch

        unique = sorted(set(texts), key=lambda t: (len(t), t))  # similar lengths batch with little padding
        beams = max(num_beams, num_captions)
        made: dict[str, list[str]] = {}
        batches = [unique[i:i + batch_size] for i in range(0, len(unique), batch_size)]
        threads_before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for batch in tqdm(batches, desc="k2c captions", unit="batch", disable=not progress):
                made.update(self._generate_batch(batch, num_captions, beams, max_new_tokens))
        finally:
            torch.set_num_threads(threads_before)
        return [made[t] for t in texts]

    def _generate_batch(self, batch: list[str], num_captions: int, beams: int, max_new_tokens: int) -> dict[str, list[str]]:
        import torch

        enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=128)
        with torch.inference_mode():
            out = self.model.generate(
                **{k: v.to(self.device) for k, v in enc.items()},
                do_sample=False,
                num_beams=beams,
                num_return_sequences=num_captions,
                max_new_tokens=max_new_tokens,
                no_repeat_ngram_size=3,
                length_penalty=1.5,
                early_stopping=True,
            )
        decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        made: dict[str, list[str]] = {}
        for i, text in enumerate(batch):
            group = [" ".join(c.split()) for c in decoded[i * num_captions:(i + 1) * num_captions]]
            made[text] = list(dict.fromkeys(c for c in group if c))
        return made


def load_k2c(cfg: CaptionConfig, standin_dir: Path | None = None) -> KeywordToCaption:
    """The model ``captions.k2c_model`` names, else the stand-in trained in ``standin_dir``."""
    if cfg.k2c_model:
        log.info("loading keyword-to-caption model %s", cfg.k2c_model)
        return KeywordToCaption(cfg.k2c_model, allow_download=cfg.k2c_allow_download)
    if standin_dir is None:
        raise CaptionError(
            "caption_augmentation is 'k2c' but captions.k2c_model is not set and no stand-in folder was given. Fix: "
            "set captions.k2c_model to a local model directory or a hub name such as gagan3012/k2t-base (with "
            "captions.k2c_allow_download: true to fetch it), or train the stand-in (python -m clap.stages.k2c_model) "
            "and pass its folder, or set caption_augmentation to 'template'."
        )
    info_path = standin_dir / STANDIN_INFO
    if not info_path.is_file():
        raise CaptionError(
            f"{standin_dir}: no keyword-to-caption stand-in there ({STANDIN_INFO} missing) and captions.k2c_model is "
            "not set. Fix: run `dvc repro k2c_model` (or python -m clap.stages.k2c_model), or set captions.k2c_model."
        )
    info = json.loads(info_path.read_text())
    if not info.get("trained"):
        raise CaptionError(
            f"{standin_dir}: the keyword-to-caption stand-in was not trained ({info.get('reason', 'no reason given')}). "
            "Fix: add a source whose train clips carry both labels and captions, or set captions.k2c_model."
        )
    if info.get("input_format", cfg.k2c_input_format) != cfg.k2c_input_format:
        raise CaptionError(
            f"{standin_dir}: the stand-in was trained on {info['input_format']!r} keywords but "
            f"captions.k2c_input_format is {cfg.k2c_input_format!r}. Fix: re-run the k2c_model stage."
        )
    log.info("loading keyword-to-caption %s from %s", info["description"], standin_dir)
    threads = (info.get("config") or {}).get("threads")  # as small a model generates as it trained
    return KeywordToCaption(str(standin_dir.resolve()), description=str(info["description"]), standin=True,
                            threads=int(threads) if threads else None)


# --------------------------------------------------------------------------- rows


@dataclass
class CaptionSummary:
    rows: int = 0
    with_labels: int = 0
    template_captions: int = 0
    k2c_captions: int = 0
    k2c_rows_without_caption: int = 0
    debiased_words: dict[str, int] = field(default_factory=lambda: {"original": 0, "template": 0, "k2c": 0})
    k2c_model_used: str | None = None   # the real model's name/path or the stand-in's plain label
    k2c_standin: bool = False

    def to_json(self, cfg: CaptionConfig) -> dict[str, Any]:
        return {
            "mode": cfg.mode,
            "k2c_model": cfg.k2c_model if cfg.mode == "k2c" else None,
            "k2c_model_used": self.k2c_model_used,
            "k2c_standin": self.k2c_standin,
            "rows": self.rows,
            "rows_with_labels": self.with_labels,
            "template_captions": self.template_captions,
            "k2c_captions": self.k2c_captions,
            "k2c_rows_without_caption": self.k2c_rows_without_caption,
            "debiased_words": self.debiased_words,
        }


def augment_rows(
    rows: Sequence[ManifestRow],
    cfg: CaptionConfig,
    k2c: KeywordToCaption | None = None,
    progress: bool = True,
    standin_dir: Path | None = None,
) -> tuple[list[ManifestRow], CaptionSummary]:
    """Fill ``augmented`` on every row (both kinds always present, possibly empty) and de-bias.

    In ``k2c`` mode the model is loaded here unless one is passed in: ``captions.k2c_model``, else
    the stand-in in ``standin_dir``.
    """
    summary = CaptionSummary(rows=len(rows), with_labels=sum(bool(clean_labels(r.labels)) for r in rows))
    k2c_out: list[list[str]] = [[] for _ in rows]
    if cfg.mode == "k2c":
        k2c = k2c or load_k2c(cfg, standin_dir)
        summary.k2c_model_used = k2c.description
        summary.k2c_standin = k2c.standin
        labelled = [i for i, r in enumerate(rows) if clean_labels(r.labels)]
        texts = [format_keywords(rows[i].labels, cfg.k2c_input_format) for i in labelled]
        generated = k2c.generate(
            texts,
            num_captions=cfg.k2c_num_captions,
            num_beams=cfg.k2c_num_beams,
            max_new_tokens=cfg.k2c_max_new_tokens,
            batch_size=cfg.k2c_batch_size,
            progress=progress,
        )
        for i, captions in zip(labelled, generated):
            k2c_out[i] = captions
        summary.k2c_rows_without_caption = sum(not c for c in generated)
        if summary.k2c_rows_without_caption:
            log.warning("k2c produced no caption for %d labelled rows", summary.k2c_rows_without_caption)
    elif cfg.k2c_model:
        log.info("captions.k2c_model is set but caption_augmentation is %r: not loading it", cfg.mode)

    def scrub(texts: list[str], kind: str, enabled: bool) -> list[str]:
        if not enabled:
            return texts
        out = []
        for text in texts:
            clean, n = debias_count(text)
            summary.debiased_words[kind] += n
            out.append(clean)
        return out

    augmented_rows = []
    for row, generated in zip(rows, k2c_out):
        template = [template_caption(row.labels, cfg.template)] if cfg.mode != "none" and row.labels else []
        template = [t for t in template if t]
        augmented = {
            "template": scrub(template, "template", cfg.debias),
            "k2c": scrub(generated, "k2c", cfg.debias),
        }
        summary.template_captions += len(augmented["template"])
        summary.k2c_captions += len(augmented["k2c"])
        captions = scrub(list(row.captions), "original", cfg.debias and cfg.debias_original)
        augmented_rows.append(replace(row, captions=captions, augmented=augmented))
    return augmented_rows, summary


def caption_manifest(
    input_manifest: Path,
    output_manifest: Path,
    cfg: CaptionConfig,
    report: Path | None = None,
    progress: bool = True,
    standin_dir: Path | None = None,
) -> CaptionSummary:
    """The captions stage: normalized.jsonl in, captions.jsonl (+ an optional JSON summary) out."""
    rows = read_manifest(input_manifest)
    out_rows, summary = augment_rows(rows, cfg, progress=progress, standin_dir=standin_dir)
    write_manifest(out_rows, output_manifest)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary.to_json(cfg), indent=2) + "\n")
    log.info(
        "captioned %d rows: %d template and %d k2c captions -> %s",
        len(out_rows), summary.template_captions, summary.k2c_captions, output_manifest,
    )
    return summary
