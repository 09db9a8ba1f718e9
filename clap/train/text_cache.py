"""Text side of a training step without repeated work.

* A frozen text tower gives the same pooled output for the same caption all run long, so
  :class:`FrozenTextCache` computes it once per distinct caption (keyed by the caption's text; the
  tower's weights do not change within a run) and a step only runs the trainable projection on top.
* A trained text tower gets its captions tokenised to the longest caption of the batch
  (:func:`tokenize_to_longest`) instead of 77 tokens: with the attention mask, RoBERTa/BERT/CLIP
  pooled outputs do not depend on the padding (checked in tests/test_train_caches.py).

:class:`ContrastiveStepModule` is the module a training step calls (and DDP wraps): the CLAP model's
forward with either token ids or cached text-tower outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clap.model.model import ClapModel, ClapOutput

logger = logging.getLogger(__name__)


def tokenize_to_longest(text_encoder: nn.Module, texts: Sequence[str]) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` [len(texts), L] with L the longest caption's token count
    (truncated at the tower's ``max_length``, 77), instead of always ``max_length``."""
    if isinstance(texts, str):
        raise TypeError("tokenize_to_longest() takes a list of captions, not one string; wrap it: [text]")
    encoded = text_encoder.tokenizer(
        list(texts), padding="longest", truncation=True, max_length=text_encoder.max_length, return_tensors="pt"
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


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

    def __len__(self) -> int:
        return len(self._rows)

    @torch.no_grad()
    def add(self, captions: Sequence[str]) -> None:
        """Encode the captions not in the cache yet."""
        missing = sorted({c for c in captions if c not in self._rows}, key=len)
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
