"""The dual encoder being trained: one shared tower, or separate query/passage towers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hybrid.encoder import EncoderSettings, pool, save_settings

QUERY_TOWER = "query_encoder"  # subdirectory of a checkpoint holding a separate query tower
# Texts per forward pass when embedding by length groups: small groups pad least; on CUDA
# larger ones keep the device busy.
LENGTH_GROUP_CPU = 32
LENGTH_GROUP_CUDA = 128


class DualEncoder(torch.nn.Module):
    """Query and passage towers over Hugging Face models; pooling per ``settings``."""

    def __init__(self, model_dir: Path, settings: EncoderSettings, shared: bool = True) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.passage = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        query_dir = model_dir / QUERY_TOWER
        if shared:
            self.query = self.passage
        else:
            source = query_dir if query_dir.is_dir() else model_dir
            self.query = AutoModel.from_pretrained(str(source), local_files_only=True)
        self.shared = shared
        self.length_group = LENGTH_GROUP_CPU

    def towers(self) -> list[Any]:
        return [self.passage] if self.shared else [self.passage, self.query]

    def embed(self, texts: list[str], query: bool, device: torch.device) -> torch.Tensor:
        """``(len(texts), dims)`` embeddings with gradients, in the order of ``texts``.

        The texts run through the model in groups of ``length_group`` of similar length,
        each padded only to its own longest (the vectors are those of one padded batch;
        fewer padding tokens are computed).
        """
        max_length = self.settings.query_max_length if query else self.settings.passage_max_length
        prefix = self.settings.query_prefix if query else self.settings.passage_prefix
        batch = self.tokenizer(
            [prefix + t for t in texts], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        model = self.query if query else self.passage
        group = self.length_group if device.type == "cpu" else LENGTH_GROUP_CUDA
        lengths = batch["attention_mask"].sum(dim=1)
        if len(texts) <= group or self.tokenizer.padding_side != "right":
            batch = batch.to(device)
            hidden = model(**batch).last_hidden_state  # (batch, tokens, dims)
            return pool(hidden.float(), batch["attention_mask"], self.settings)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for rows in order.split(group):
            width = int(lengths[rows].max())  # right padding: the columns past it are all padding
            part = {key: value[rows, :width].to(device) for key, value in batch.items()}
            hidden = model(**part).last_hidden_state
            parts.append(pool(hidden.float(), part["attention_mask"], self.settings))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return torch.cat(parts)[inverse.to(device)]

    def save(self, path: Path, settings: EncoderSettings | None = None) -> None:
        """Hugging Face layout + tokenizer + pooling settings; a query tower in a subdir.

        ``settings`` are the ones saved (the index's, so the checkpoint embeds like the
        index); the training truncation in ``self.settings`` is for training batches only.
        """
        settings = settings or self.settings
        path.mkdir(parents=True, exist_ok=True)
        self.passage.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        save_settings(path, settings)
        if not self.shared:
            self.query.save_pretrained(str(path / QUERY_TOWER))
            self.tokenizer.save_pretrained(str(path / QUERY_TOWER))
            save_settings(path / QUERY_TOWER, settings)


def contrastive_loss(
    queries: torch.Tensor,
    passages: torch.Tensor,
    positives: torch.Tensor,
    groups: torch.Tensor,
    temperature: float,
    in_batch: bool,
    false_negatives: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    gains: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each query over passages, its positive the target.

    queries ``(B, d)``, passages ``(P, d)``; ``positives[i]`` is query i's positive column and
    ``groups[p]`` the query passage p belongs to. With ``in_batch`` every passage in the batch
    competes (other queries' positives and negatives too); otherwise only the query's own.
    ``false_negatives`` ``(B, P)`` bool marks columns that must not count as query i's
    negatives (its other labelled positives, copies of its positive elsewhere in the batch);
    they are removed from the softmax, so they get no gradient. ``targets`` ``(B, P)`` bool,
    when given, marks every column that is one of query i's labelled positives: all of them
    count in the numerator (``-log sum_pos exp(s) / sum_all exp(s)``) instead of one.
    ``gains`` ``(B, P)``, with ``targets``, weighs each target in that numerator
    (``sum_pos g exp(s)``; graded qrels: grade over the query's best grade).
    """
    scores = queries @ passages.T / temperature  # (B, P)
    rows = torch.arange(queries.shape[0], device=scores.device)
    drop = torch.zeros_like(scores, dtype=torch.bool)
    if not in_batch:
        drop |= groups.unsqueeze(0) != rows.unsqueeze(1)
    keep = torch.zeros_like(drop)
    keep[rows, positives] = True  # the target itself always stays
    if targets is not None:
        keep |= targets & ~drop
    if gains is not None:
        keep &= gains > 0  # a positive of grade 0 is no target: dropped like other labelled documents
    if false_negatives is not None:
        drop |= false_negatives
    scores = scores.masked_fill(drop & ~keep, float("-inf"))
    if targets is None:
        return torch.nn.functional.cross_entropy(scores, positives)
    kept = scores.masked_fill(~keep, float("-inf"))
    if gains is not None:
        kept = kept + torch.log(gains.clamp_min(torch.finfo(gains.dtype).tiny))
    numerator = torch.logsumexp(kept, dim=1)  # (B,)
    return (torch.logsumexp(scores, dim=1) - numerator).mean()


def distill_loss(
    queries: torch.Tensor, passages: torch.Tensor, groups: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || model) over each query's own passages: the mining model's scores
    ``teacher`` ``(P,)`` (the base model's, before any refresh) as a soft target that keeps
    training from drifting far from where it started."""
    scores = queries @ passages.T / temperature  # (B, P)
    rows = torch.arange(queries.shape[0], device=scores.device)
    own = groups.unsqueeze(0) == rows.unsqueeze(1)  # (B, P)
    student = torch.log_softmax(scores.masked_fill(~own, float("-inf")), dim=1)
    target = torch.softmax(
        (teacher / temperature).unsqueeze(0).expand_as(scores).masked_fill(~own, float("-inf")), dim=1
    )
    terms = torch.where(own, target * (torch.log(target.clamp_min(1e-12)) - student), torch.zeros_like(scores))
    return terms.sum(dim=1).mean()


def false_negative_mask(labelled: list[frozenset[str]], targets: list[str], columns: list[str]) -> torch.Tensor:
    """``(B, P)`` bool: column p holds a document labelled relevant to query i (not its target column).

    ``labelled[i]`` are query i's labelled positives (and likely false negatives),
    ``targets[i]`` its positive this step and ``columns[p]`` the document in column p.
    """
    mask = torch.zeros(len(labelled), len(columns), dtype=torch.bool)
    for i, (docs, target) in enumerate(zip(labelled, targets, strict=True)):
        docs = docs | {target}
        for p, doc in enumerate(columns):
            if doc in docs:
                mask[i, p] = True
    return mask
