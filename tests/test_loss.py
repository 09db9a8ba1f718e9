"""The contrastive loss: its values on known cases, and the global-batch gather across 2 gloo processes."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clap.model.loss import ClipLoss, contrastive_loss, gather_with_grad

DIM = 8
COUNTS = (3, 2)  # items per rank: unequal, as a last partial batch would be


def test_identical_embeddings_give_log_n() -> None:
    """All logits equal -> each cross-entropy is ln(N), whatever the scale."""
    e = F.normalize(torch.ones(5, DIM), dim=-1)
    assert math.isclose(float(contrastive_loss(e, e, torch.tensor(30.0))), math.log(5), rel_tol=1e-6)


def test_matched_pairs_give_low_loss_and_mismatched_high() -> None:
    e = torch.eye(4, DIM)
    matched = contrastive_loss(e, e, torch.tensor(100.0))
    shuffled = contrastive_loss(e, e[[1, 2, 3, 0]], torch.tensor(100.0))
    assert float(matched) < 1e-6
    assert float(shuffled) > 50.0


def test_loss_is_symmetric_in_audio_and_text() -> None:
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, DIM, generator=g), dim=-1)
    t = F.normalize(torch.randn(6, DIM, generator=g), dim=-1)
    assert torch.allclose(contrastive_loss(a, t, 10.0), contrastive_loss(t, a, 10.0))
    assert torch.allclose(ClipLoss()(a, t, 10.0), contrastive_loss(a, t, 10.0))


def test_without_distributed_nothing_is_gathered() -> None:
    x = torch.randn(3, DIM)
    assert not dist.is_initialized()
    assert gather_with_grad(x) is x


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    n = sum(COUNTS)
    return torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g), torch.randn(DIM, DIM, generator=g)


def _loss_and_grads(audio: torch.Tensor, text: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A shared audio projection (like a model parameter) + learnable temperature -> loss and grads."""
    proj = torch.nn.Linear(DIM, DIM, bias=False)
    with torch.no_grad():
        proj.weight.copy_(weight)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    loss = contrastive_loss(F.normalize(proj(audio), dim=-1), F.normalize(text, dim=-1), scale.exp())
    loss.backward()
    return {"loss": loss.detach(), "weight_grad": proj.weight.grad, "scale_grad": scale.grad}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        audio, text, weight = _inputs()
        start, stop = sum(COUNTS[:rank]), sum(COUNTS[: rank + 1])
        result = _loss_and_grads(audio[start:stop], text[start:stop], weight)
        for name in ("weight_grad", "scale_grad"):  # what DDP does with parameter gradients
            dist.all_reduce(result[name])
            result[name] /= world
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_the_single_process_loss_and_gradients(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(len(COUNTS), _free_port(), str(tmp_path)), nprocs=len(COUNTS), join=True)
    single = _loss_and_grads(*_inputs())
    for rank in range(len(COUNTS)):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], single["loss"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got["weight_grad"], single["weight_grad"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got["scale_grad"], single["scale_grad"], atol=1e-6, rtol=1e-5)
