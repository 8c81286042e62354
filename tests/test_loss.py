"""The contrastive loss: in-batch negatives never include a query's own labelled positives;
GradCache gives the same gradients as the plain computation."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch

from hybrid.training.model import contrastive_loss, false_negative_mask


def _batch() -> tuple[torch.Tensor, torch.Tensor, list[str], list[int], list[int]]:
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1).requires_grad_(True)
    passages = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_(True)
    # query 1: positive d1, negative n1; query 2: positive d2 (also labelled relevant to query 1), negative n2
    columns = ["d1", "n1", "d2", "n2"]
    return queries, passages, columns, [0, 2], [0, 0, 1, 1]


def test_a_shared_positive_is_not_an_in_batch_negative() -> None:
    queries, passages, columns, targets, groups = _batch()
    labelled = [frozenset({"d1", "d2"}), frozenset({"d2"})]
    mask = false_negative_mask(labelled, ["d1", "d2"], columns)
    # every column holding a labelled document (targets too: contrastive_loss keeps each target)
    assert mask.tolist() == [[True, False, True, False], [False, False, True, False]]

    loss = contrastive_loss(
        queries, passages, torch.tensor(targets), torch.tensor(groups), 0.05, in_batch=True, false_negatives=mask
    )
    loss.backward()
    # query 1's row equals the same batch with column d2 deleted; query 2's row is unchanged
    kept = torch.tensor([0, 1, 3])
    scores = queries.detach() @ passages.detach().T / 0.05
    row1 = torch.nn.functional.cross_entropy(scores[0:1, kept], torch.tensor([0]))
    row2 = torch.nn.functional.cross_entropy(scores[1:2], torch.tensor([2]))
    torch.testing.assert_close(loss.detach(), (row1 + row2) / 2)
    # no gradient reaches d2 through query 1: only query 2 (its target) pulls on it
    p = passages.detach().clone().requires_grad_(True)
    alone = torch.nn.functional.cross_entropy((queries.detach()[1:2] @ p.T) / 0.05, torch.tensor([2])) / 2
    alone.backward()
    assert p.grad is not None and passages.grad is not None
    torch.testing.assert_close(passages.grad[2], p.grad[2])


def test_without_the_mask_the_shared_positive_is_pushed_away() -> None:
    queries, passages, columns, targets, groups = _batch()
    plain = contrastive_loss(queries, passages, torch.tensor(targets), torch.tensor(groups), 0.05, in_batch=True)
    masked = contrastive_loss(
        queries,
        passages,
        torch.tensor(targets),
        torch.tensor(groups),
        0.05,
        in_batch=True,
        false_negatives=false_negative_mask([frozenset({"d1", "d2"}), frozenset({"d2"})], ["d1", "d2"], columns),
    )
    assert masked < plain  # the unmasked loss counts d2 as query 1's negative


def test_a_duplicate_of_the_own_positive_is_masked_but_the_target_stays() -> None:
    columns = ["d1", "n1", "d1", "n2"]  # query 2 drew d1 as a negative: query 1's own positive again
    mask = false_negative_mask([frozenset({"d1"}), frozenset({"x"})], ["d1", "x"], columns)
    assert mask.tolist() == [[True, False, True, False], [False, False, False, False]]
    queries, passages = torch.randn(2, 4), torch.randn(4, 4)
    loss = contrastive_loss(queries, passages, torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1]), 0.1, True, mask)
    assert torch.isfinite(loss)  # the target column itself is never masked


def _grads(model: Any) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_gradcache_gradients_equal_the_uncached_ones(tiny_model: Path) -> None:
    from hybrid.encoder import load_settings
    from hybrid.training.gradcache import cached_backward
    from hybrid.training.model import DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(tiny_model, load_settings(tiny_model))
    model.eval()  # no dropout: the chunked forward is then exactly the unchunked one
    device = torch.device("cpu")
    queries = ["solar panels", "ocean tides", "honey bees"]
    passages = [f"passage number {i} about {w}" for i, w in enumerate(["sun", "moon", "bees", "sea", "wax", "light"])]
    positives, groups = torch.tensor([0, 2, 4]), torch.tensor([0, 0, 1, 1, 2, 2])

    def loss_fn(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(q, p, positives, groups, 0.05, True)

    plain = loss_fn(model.embed(queries, True, device), model.embed(passages, False, device))
    plain.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    def embed(texts: list[str], is_query: bool) -> torch.Tensor:
        return model.embed(texts, is_query, device)

    cached = cached_backward(embed, queries, passages, loss_fn, 2, device, contextlib.nullcontext)
    got = _grads(model)
    assert float(cached) == pytest.approx(float(plain.detach()), abs=1e-6)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_the_budget_picks_the_chunk_and_gradcache_replays_dropout(tiny_model: Path, tmp_path: Path) -> None:
    """With dropout on, each budget's chunk gives the gradients of the unchunked step that
    draws the same dropout masks: every chunk's graph held at once, one backward. That holds
    only if GradCache's second pass replays the first pass's random state (a replay with
    fresh masks moves the gradients far past the tolerance)."""
    from hybrid.encoder import load_settings
    from hybrid.training.config import TrainConfig
    from hybrid.training.distributed import Distributed
    from hybrid.training.memory import Batch, ModelShape, plan_memory
    from hybrid.training.model import DualEncoder
    from hybrid.training.trainer import _Inputs, micro_step

    torch.manual_seed(0)
    model = DualEncoder(tiny_model, load_settings(tiny_model))
    model.train()
    assert model.passage.config.hidden_dropout_prob > 0 and model.passage.config.attention_probs_dropout_prob > 0
    device = torch.device("cpu")
    queries = ["solar panels", "ocean tides", "honey bees"]
    passages = [
        f"passage number {i} about {w} " * (i + 1) for i, w in enumerate(["sun", "moon", "bees", "sea", "wax", "light"])
    ]
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    none = torch.zeros(3, 6, dtype=torch.bool)
    ids = [f"d{i}" for i in range(6)]
    positives, gains = torch.tensor([0, 2, 4]), torch.ones(3, 6)
    inputs = _Inputs(queries, passages, ids, positives, groups, none, none, gains, torch.zeros(6))
    config = TrainConfig(index="idx", queries=tmp_path / "q.jsonl", qrels=tmp_path / "qrels.tsv", out=tmp_path)

    shape = ModelShape.of(model.passage, sum(p.numel() for p in model.parameters()))
    batch = Batch(queries=3, passages=6, length=64)
    per_text = shape.per_text(64, checkpointing=False)
    budgets = [shape.fixed("cpu") + texts * per_text for texts in (2, 4, 9)]
    plans = [plan_memory(shape, batch, budget) for budget in budgets]
    assert [(p.chunk, p.checkpointing) for p in plans] == [(2, False), (4, False), (None, False)]
    assert all(p.estimate <= budget for p, budget in zip(plans, budgets, strict=True))

    def loss_fn(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return inputs.loss(q, p, config)

    for plan in plans:
        chunk = plan.chunk or len(passages)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the masks drawn chunk by chunk, queries first, as GradCache's first pass draws them
        q = torch.cat([model.embed(queries[i : i + chunk], True, device) for i in range(0, len(queries), chunk)])
        p = torch.cat([model.embed(passages[i : i + chunk], False, device) for i in range(0, len(passages), chunk)])
        want_loss = loss_fn(q, p)
        want_loss.backward()
        want = _grads(model)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = micro_step(model, inputs, config, device, None, None, Distributed(), plan.chunk)
        assert float(loss) == pytest.approx(float(want_loss.detach()), abs=1e-6)
        got = _grads(model)
        assert len(got) == len(want) > 0
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_length_grouped_embedding_equals_one_padded_batch(tiny_model: Path) -> None:
    """Training embeds passages in groups of similar length (less padding); the vectors and
    the gradients equal one forward over the whole padded batch, in the caller's order."""
    from hybrid.encoder import load_settings
    from hybrid.training.model import DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(tiny_model, load_settings(tiny_model))
    model.eval()
    model.length_group = 3
    device = torch.device("cpu")
    texts = [" ".join(["word"] * n) + f" {n}" for n in (30, 2, 17, 5, 40, 1, 9, 12)]

    def one_batch(texts: list[str]) -> torch.Tensor:
        batch = model.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        from hybrid.encoder import pool

        return pool(model.passage(**batch).last_hidden_state, batch["attention_mask"], model.settings)

    weights = torch.arange(len(texts), dtype=torch.float32).unsqueeze(1)
    grouped = model.embed(texts, False, device)
    (grouped * weights).sum().backward()
    want_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    plain = one_batch(texts)
    (plain * weights).sum().backward()
    torch.testing.assert_close(grouped, plain, atol=1e-5, rtol=1e-4)
    for g, w in zip(_grads(model), want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
