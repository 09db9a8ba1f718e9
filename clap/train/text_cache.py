"""Text side of a training step without repeated work.

* A frozen text tower gives the same pooled output for the same caption all run long, so
  :class:`FrozenTextCache` computes it once per distinct caption (keyed by the caption's text; the
  tower's weights do not change within a run) and a step only runs the trainable projection on top.
* Across runs: the DVC stage ``text_features`` (clap.stages.text_features) encodes every distinct
  training caption once and saves the table (:meth:`FrozenTextCache.save`); a run preloads it
  (:meth:`FrozenTextCache.preload`) when it was computed by the very same tower: the same weights,
  tokenizer, pooling and length limit (:func:`text_tower_fingerprint`). Otherwise, and for captions
  it lacks, the run encodes captions itself as above, so a stale or foreign file costs time, never
  correctness. DVC re-runs the stage when the captions or the text settings change, and restores it
  from its cache for runs that differ only in other settings (seeds, audio tower, schedule).
* A trained text tower gets its captions tokenised to the longest caption of the batch
  (:func:`tokenize_to_longest`) instead of 77 tokens: with the attention mask, RoBERTa/BERT/CLIP
  pooled outputs do not depend on the padding (checked in tests/test_train_caches.py).

:class:`ContrastiveStepModule` is the module a training step calls (and DDP wraps): the CLAP model's
forward with either token ids or cached text-tower outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clap.model.model import ClapModel, ClapOutput

logger = logging.getLogger(__name__)

#: The files of a saved text-feature table (the ``text_features`` stage's output folder).
FEATURES_FILE = "features.safetensors"
CAPTIONS_FILE = "captions.json"


def text_tower_fingerprint(text_encoder: nn.Module) -> str:
    """A hash of everything that decides a text tower's pooled output for a caption: its weights
    (every tensor of its state dict: name, dtype, shape, values), its tokenizer (class, special
    tokens, and the whole fast-tokenizer definition: vocabulary, normaliser, pre-tokeniser,
    post-processor; the vocabulary alone for a slow one), its pooling and its length limit."""
    digest = hashlib.sha256()
    tokenizer = text_encoder.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # the last call's padding and truncation settings, not part of the tokenizer's definition
        definition.pop("padding", None), definition.pop("truncation", None)
    else:
        definition = sorted(tokenizer.get_vocab().items())
    digest.update(json.dumps({
        "tower": type(text_encoder).__name__, "pooling": getattr(text_encoder, "pooling", None),
        "max_length": getattr(text_encoder, "max_length", None), "tokenizer": type(tokenizer).__name__,
        "definition": definition,
        "special": tokenizer.special_tokens_map, "lowercase": getattr(tokenizer, "do_lower_case", None),
    }, sort_keys=True, default=str).encode())
    for name, tensor in sorted(text_encoder.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def tokenize_to_longest(text_encoder: nn.Module, texts: Sequence[str]) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` [len(texts), L] with L the longest caption's token count
    (truncated at the tower's ``max_length``, 77), instead of always ``max_length``."""
    if isinstance(texts, str):
        raise TypeError("tokenize_to_longest() takes a list of captions, not one string; wrap it: [text]")
    return text_encoder.tokenize(texts, padding="longest")


class FrozenTextCache:
    """Pooled outputs of a frozen text tower, one per distinct caption, computed on first request.

    ``features(captions)`` returns [len(captions), tower width] on ``device``; captions not seen yet
    are encoded together, shortest to longest in chunks of ``batch_size``, each chunk padded to its
    own longest caption. Valid only while the tower's weights stay fixed (a frozen tower).
    """

    def __init__(self, text_encoder: nn.Module, device: torch.device | str, batch_size: int = 64) -> None:
        self.text_encoder = text_encoder
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._rows: dict[str, int] = {}
        self._table = torch.empty(0, int(text_encoder.output_dim), device=self.device)
        self._fingerprint: str | None = None
        #: Captions this cache encoded itself (not preloaded).
        self.encoded = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def fingerprint(self) -> str:
        """:func:`text_tower_fingerprint` of the tower (computed once: the tower is frozen)."""
        if self._fingerprint is None:
            self._fingerprint = text_tower_fingerprint(self.text_encoder)
        return self._fingerprint

    def save(self, directory: str | Path, *, text_encoder_name: str | None = None) -> Path:
        """Write the table to ``directory`` (:data:`FEATURES_FILE`: ``features`` [N, width] float32;
        :data:`CAPTIONS_FILE`: the captions in row order and the tower's fingerprint)."""
        from safetensors.torch import save_file  # noqa: PLC0415

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        captions = list(self._rows)  # rows are only ever appended: insertion order is row order
        save_file({"features": self._table.detach().to("cpu").contiguous()}, str(directory / FEATURES_FILE))
        (directory / CAPTIONS_FILE).write_text(json.dumps({
            "fingerprint": self.fingerprint, "text_encoder": text_encoder_name, "width": int(self._table.shape[1]),
            "captions": captions,
        }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return directory

    def preload(self, directory: str | Path) -> bool:
        """Take the captions of a table :meth:`save` wrote, if that table comes from this very tower
        (same :attr:`fingerprint`); True when it was taken. A missing, foreign or unreadable table is
        logged and skipped: the captions are then encoded as they come."""
        from safetensors import SafetensorError  # noqa: PLC0415
        from safetensors.torch import load_file  # noqa: PLC0415

        directory = Path(directory)
        try:
            info = json.loads((directory / CAPTIONS_FILE).read_text(encoding="utf-8"))
            table = load_file(str(directory / FEATURES_FILE))["features"]
            captions = list(info["captions"])
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            logger.warning("text features in %s not used (%s: %s); encoding captions during training instead "
                           "(dvc repro text_features rebuilds them)", directory, type(exc).__name__, exc)
            return False
        if info.get("fingerprint") != self.fingerprint:
            logger.warning("text features in %s were computed by another text tower or tokenizer (%s); encoding "
                           "captions during training instead (dvc repro text_features rebuilds them)",
                           directory, info.get("text_encoder") or "unnamed")
            return False
        if table.ndim != 2 or table.shape != (len(captions), self._table.shape[1]):
            logger.warning("text features in %s: table %s does not fit %d captions x width %d; not used",
                           directory, tuple(table.shape), len(captions), self._table.shape[1])
            return False
        new = [i for i, caption in enumerate(captions) if caption not in self._rows]
        if new:
            first = self._table.shape[0]
            self._table = torch.cat([self._table, table[new].to(self.device, torch.float32)])
            self._rows.update({captions[i]: first + k for k, i in enumerate(new)})
        logger.info("text features: %d captions preloaded from %s", len(new), directory)
        return True

    @torch.no_grad()
    def add(self, captions: Sequence[str]) -> None:
        """Encode the captions not in the cache yet."""
        # by length, then text: the same chunks in every process (a set's order follows string hash seeds)
        missing = sorted({c for c in captions if c not in self._rows}, key=lambda c: (len(c), c))
        if not missing:
            return
        was_training = self.text_encoder.training
        self.text_encoder.eval()
        try:
            parts = []
            for start in range(0, len(missing), self.batch_size):
                tokens = tokenize_to_longest(self.text_encoder, missing[start : start + self.batch_size])
                tokens = {k: v.to(self.device) for k, v in tokens.items()}
                parts.append(self.text_encoder(tokens["input_ids"], tokens["attention_mask"]).float())
        finally:
            self.text_encoder.train(was_training)
        first = self._table.shape[0]
        self._table = torch.cat([self._table, *parts])
        self._rows.update({caption: first + i for i, caption in enumerate(missing)})
        self.encoded += len(missing)

    def features(self, captions: Sequence[str]) -> Tensor:
        """The tower's pooled outputs [len(captions), width] (float32, on ``device``)."""
        self.add(captions)
        index = torch.tensor([self._rows[c] for c in captions], device=self.device)
        return self._table.index_select(0, index)


class ContrastiveStepModule(nn.Module):
    """What a contrastive training step runs: ``clap``'s forward, taking the text side either as
    token ids (a trained text tower) or as cached pooled text-tower outputs (a frozen one), in
    which case only the text projection runs. Holds ``clap`` itself: same parameters, no copy."""

    def __init__(self, clap: ClapModel) -> None:
        super().__init__()
        self.clap = clap

    def forward(
        self, input_features: Tensor, is_longer: Tensor | None, *, text_features: Tensor | None = None,
        input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
    ) -> ClapOutput:
        if text_features is None:
            if input_ids is None:
                raise ValueError("ContrastiveStepModule: pass text_features (frozen text tower) or input_ids")
            return self.clap(input_features, is_longer, input_ids, attention_mask)
        clap = self.clap
        return ClapOutput(
            audio_embeds=clap.encode_audio(input_features, is_longer),
            text_embeds=F.normalize(clap.text_projection(text_features), dim=-1),
            logit_scale=clap.logit_scale_a.exp(),
            logit_scale_t=clap.logit_scale_t.exp(),
        )
