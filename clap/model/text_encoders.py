"""Text towers through transformers: captions -> tokens (77, padded/truncated) -> one vector each.

Families: ``roberta`` (RobertaModel), ``bert`` (BertModel; also MiniLM), ``clip`` (CLIPTextModel).
Pooling: ``pooler`` (the model's pooled output: RoBERTa/BERT's tanh-dense first token, CLIP's EOS
state) or ``mean`` (the attention-masked mean of the last hidden states, as sentence-transformers
pools MiniLM).

Offline first: pretrained weights and tokenizers load only from a local path, a Python package
(``package:<module>``) or the local Hugging Face cache, unless ``allow_download`` is set.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedConfig,
    RobertaConfig,
    RobertaModel,
)

from clap.model.presets import text_preset

logger = logging.getLogger(__name__)

#: family -> (config class, model class)
TEXT_FAMILIES: dict[str, tuple[type[PreTrainedConfig], type[nn.Module]]] = {
    "roberta": (RobertaConfig, RobertaModel),
    "bert": (BertConfig, BertModel),
    "clip": (CLIPTextConfig, CLIPTextModel),
}
POOLINGS = ("pooler", "mean")
#: How messages name each family's tokenizer.
FAMILY_NAMES = {"roberta": "RoBERTa", "bert": "BERT", "clip": "CLIP"}
#: Where a user passes a tokenizer folder (named by the missing-tokenizer error).
TOKENIZER_HELP = "pass tokenizer=<folder> (ClapInference/load_model) or --tokenizer <folder> (clap CLI, eval stages)"
_DOWNLOAD_HELP = ", or allow downloads (allow_download=True / --allow-download)"

#: Bookkeeping entries of a transformers config that say nothing about the architecture.
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "architectures", "id2label", "label2id")


class ModelNotFoundLocally(FileNotFoundError):
    """A pretrained model or tokenizer is neither a local path nor in the local cache."""


def resolve_source(ref: str) -> str:
    """A loadable location for ``ref``: ``package:<module>`` -> the package's model folder
    (``<module>.get_model_path()``); anything else (a path or a hub name) is returned as is."""
    if ref.startswith("package:"):
        module_name = ref.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelNotFoundLocally(
                f"{ref}: Python package '{module_name}' is not installed; pip install it (see pyproject.toml)"
            ) from exc
        return str(module.get_model_path())
    return ref


def from_local_or_hub(loader: Any, ref: str, what: str, *, allow_download: bool, **kwargs: Any) -> Any:
    """``loader(source, local_files_only=not allow_download, **kwargs)`` with errors that name the fix."""
    source = resolve_source(ref)
    is_local = Path(source).exists()
    try:
        return loader(source, local_files_only=not allow_download, **kwargs)
    except (OSError, ValueError) as exc:
        if is_local:
            raise ValueError(f"{source}: cannot load the {what} from this folder ({type(exc).__name__}: {exc})") from exc
        subject = what if f"'{ref}'" in what else f"{what} '{ref}'"
        raise ModelNotFoundLocally(
            f"{subject} not found locally; pass a local path or set allow_download: true / HF_HUB_OFFLINE=0 "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def architecture_dict(config: PreTrainedConfig) -> dict[str, Any]:
    """A transformers config as a JSON-safe dict that rebuilds the same architecture."""
    return {k: v for k, v in config.to_dict().items() if k not in _CONFIG_NOISE}


class TextEncoder(nn.Module):
    """One text tower: ``model`` (a transformers model), its tokenizer (loaded on first use) and pooling.

    ``forward(input_ids, attention_mask) -> [B, output_dim]``; ``tokenize(texts)`` pads and truncates
    to ``max_length`` tokens. ``spec`` is the resolved preset (JSON-safe; ``spec["config"]`` is the
    full architecture, so a saved model rebuilds without its original source).
    """

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        *,
        load_weights: bool = True,
        weights: str | None = None,
        tokenizer: str | None = None,
        allow_download: bool = False,
        max_length: int = 77,
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        family = spec.get("family")
        if family not in TEXT_FAMILIES:
            raise ValueError(f"text encoder '{name}': unknown family {family!r}; known: {sorted(TEXT_FAMILIES)}")
        if spec.get("pooling") not in POOLINGS:
            raise ValueError(f"text encoder '{name}': pooling {spec.get('pooling')!r} is not one of {POOLINGS}")
        config_cls, model_cls = TEXT_FAMILIES[family]
        self.name, self.pooling, self.max_length = name, spec["pooling"], int(max_length)
        self.allow_download = allow_download
        self.family = family
        self.tokenizer_ref = tokenizer or spec.get("tokenizer")
        #: What the missing-tokenizer error names as needing it (a checkpoint file, when imported).
        self.tokenizer_owner = f"text encoder '{name}'"
        self._tokenizer: Any = None

        source = weights or spec.get("source")
        if load_weights and source:
            hf_config = from_local_or_hub(
                config_cls.from_pretrained, source, f"text encoder config of '{name}'", allow_download=allow_download
            )
            hf_config.update(dict(config_overrides or {}))  # e.g. dropout; the source's architecture otherwise
            self.model = from_local_or_hub(
                model_cls.from_pretrained, source, f"text encoder '{name}'", allow_download=allow_download,
                config=hf_config,
            )
            logger.info("text encoder '%s': pretrained weights from %s", name, source)
        else:
            self.model = model_cls(config_cls(**spec.get("config", {})))
        self.spec = {**spec, "config": architecture_dict(self.model.config)}
        self.output_dim = int(self.model.config.hidden_size)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded from ``tokenizer_ref`` on first use)."""
        if self._tokenizer is None:
            kind = FAMILY_NAMES.get(self.family, self.family)
            if not self.tokenizer_ref:
                raise ModelNotFoundLocally(f"{self.tokenizer_owner} has no {kind} tokenizer of its own: {TOKENIZER_HELP}")
            help_text = TOKENIZER_HELP if self.allow_download else TOKENIZER_HELP + _DOWNLOAD_HELP
            try:
                self._tokenizer = from_local_or_hub(
                    AutoTokenizer.from_pretrained, self.tokenizer_ref, f"tokenizer of {self.tokenizer_owner}",
                    allow_download=self.allow_download,
                )
            except ModelNotFoundLocally as exc:
                logger.debug("tokenizer lookup failed: %s", exc)
                where = "locally or from the hub" if self.allow_download else "offline"
                raise ModelNotFoundLocally(
                    f"{self.tokenizer_owner} needs the {kind} tokenizer '{self.tokenizer_ref}', which is not available "
                    f"{where}: {help_text}"
                ) from exc
        return self._tokenizer

    def use_tokenizer(self, ref: str) -> None:
        """Replace the tokenizer by the one at ``ref`` (a folder or hub name), loaded on first use."""
        self.tokenizer_ref, self._tokenizer = str(ref), None

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._tokenizer = value

    def tokenize(self, texts: Sequence[str], padding: str = "max_length") -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` [len(texts), L], truncated at ``max_length``; L is
        ``max_length`` (the reference's padding) or, with ``padding="longest"``, the longest text's
        token count: the same pooled outputs under the attention mask (tests/test_train_caches.py),
        for less work."""
        if isinstance(texts, str):
            raise TypeError("tokenize() takes a list of captions, not one string; wrap it: [text]")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"tokenize(): padding must be 'max_length' or 'longest', got {padding!r}")
        encoded = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def build_text_encoder(
    name: str,
    overrides: dict[str, Any] | None = None,
    *,
    load_weights: bool = True,
    weights: str | None = None,
    tokenizer: str | None = None,
    allow_download: bool = False,
    max_length: int = 77,
) -> TextEncoder:
    """The text tower of preset ``name`` (see :mod:`clap.model.presets`).

    ``load_weights``: load the preset's pretrained weights (or ``weights``: a local folder / hub
    name), whose own config then defines the architecture (``overrides["config"]`` entries such as
    dropout still apply); False builds the architecture from the preset's ``config`` with random
    weights (random-init presets, and models whose weights come from a checkpoint).
    """
    return TextEncoder(
        name, text_preset(name, overrides), load_weights=load_weights, weights=weights, tokenizer=tokenizer,
        allow_download=allow_download, max_length=max_length, config_overrides=(overrides or {}).get("config"),
    )
