"""The contrastive loss: in-batch negatives never include a query's own labelled positives."""

from __future__ import annotations

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
