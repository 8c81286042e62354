"""What a training run settles before its first step, and the state it carries between steps.

The index's recipe (:mod:`hybrid.manifest`) is the reference: the initial model must be
the one that made its vectors (or is re-embedded into it), pools must come from its
current version and model, and every model an index version names is kept under
``OUT/models`` so it can never be pruned away from under the index.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from hybrid.backends.base import Backend
from hybrid.encoder import Encoder, EncoderConfig, resolve_model
from hybrid.errors import ConfigError
from hybrid.manifest import VectorRecipe, check_model, check_query_model, model_hash
from hybrid.mining import MineJob, read_pool_meta, read_pools, run_mine
from hybrid.negatives import SamplerConfig
from hybrid.training.checkpoint import STATE_FILE, completed
from hybrid.training.config import PATH_FIELDS, TrainConfig
from hybrid.training.data import PoolData
from hybrid.training.memory import enable_checkpointing
from hybrid.training.model import DualEncoder
from hybrid.training.refresh import dev_ndcg, reembed
from hybrid.training.selection import DevSplit

logger = logging.getLogger(__name__)
LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.json"
MODELS = "models"  # OUT/models/<name>: the models index versions were embedded with (see prune_models)
# Options that may differ on resume without changing the run: where it lives, what runs it,
# and what only matters at its start (the checkpoint holds the model and pools by then).
_RUN_ONLY = {"out", "device", "model", "pools", "reembed", "remine", "max_memory"}  # memory: the machine's


@dataclass
class RunState:
    """The index recipe, the current pools and what refreshes and dev evaluations found."""

    recipe: VectorRecipe
    source: Path  # where the trained weights start from (initial model or checkpoint)
    sampler: SamplerConfig
    pools: Path = Path()
    split: DevSplit | None = None  # the guard's dev set; carved ones are held out of mining and training
    refreshes: list[dict[str, Any]] = field(default_factory=list)
    dev: list[dict[str, Any]] = field(default_factory=list)
    best: Path | None = None

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves of the run (beside model, optimizer and scheduler)."""
        return {
            "pools": str(self.pools),
            "best": str(self.best) if self.best else None,
            "refreshes": self.refreshes,
            "dev": self.dev,
            "recipe": self.recipe.to_dict(),
            "split": self.split.to_dict() if self.split else None,
        }

    def plan(self, config: TrainConfig, data: PoolData, steps: int) -> dict[str, Any]:
        """Steps derived from epochs, query counts and the sampler's effective candidates."""
        from hybrid.diagnostics import crowded_warning, effective_summary

        effective = effective_summary(data, self.sampler)
        warning = crowded_warning(effective, self.sampler)
        if warning:
            logger.warning(warning)
        per_step = config.batch_size * config.grad_accum
        return {
            "queries": len(data),
            "queries_without_positive": data.skipped,
            "queries_held_out": data.held_out,  # in the pools, kept out of training for the guard
            "steps": steps,
            "epochs": round(steps * per_step / len(data), 3),
            "examples_per_step": per_step,
            "sampler": {**self.sampler.__dict__},
            "effective_candidates": effective,
            "index_model": self.recipe.model,
            "index_model_hash": self.recipe.model_hash,
            "passage_max_length_index": self.recipe.passage_max_length,
            "passage_max_length_training": config.passage_max_length or self.recipe.passage_max_length,
            "dev_queries": len(self.split.exclude) if self.split and self.split.carved else None,
        }

    def evaluate_dev(self, config: TrainConfig, backend: Backend, step: int, encoder: Encoder | None) -> float | None:
        """Dense dev nDCG@10 of the index as it is now; logged and kept with the step."""
        if self.split is None:
            return None
        score = dev_ndcg(backend, config.index, (self.split.queries, self.split.qrels), encoder)
        self.dev.append({"step": step, "ndcg@10": score})
        log(config.out, {"dev": {"step": step, "ndcg@10": score}})
        return score

    def apply_query(self, config: TrainConfig, backend: Backend, model_dir: Path, step: int) -> None:
        """Make ``model_dir`` (kept under OUT/models) the index's query model: a new query
        version of the same vectors, nothing re-embedded."""
        from hybrid.training.query_side import apply_query_model

        kept = keep_model(model_dir, config.out / MODELS / model_dir.name)
        self.recipe = apply_query_model(backend, config.index, kept, str(kept))
        entry = {"step": step, "query_version": self.recipe.query_version, "model": str(kept), "documents": 0}
        self.refreshes.append(entry)
        log(config.out, {"query_model": entry})
        prune_models(config.out, self.recipe)

    def refresh_encoder(self, config: TrainConfig, checkpoint: Path, device: torch.device) -> Encoder:
        """The encoder of ``checkpoint`` as a refresh runs it, from its copy under OUT/models
        (see :func:`keep_model`)."""
        return recipe_encoder(config.out / MODELS / checkpoint.name, self.recipe, device)

    def refresh(
        self,
        config: TrainConfig,
        backend: Backend,
        checkpoint: Path,
        step: int,
        last: bool,
        device: torch.device,
        shares: Sequence[Path] = (),
    ) -> None:
        """Re-embed the index with ``checkpoint`` (kept under OUT/models), re-mine unless ``last``.

        ``shares``: the corpus already embedded by the job's processes (see
        :func:`hybrid.training.refresh.encode_share`); deleted once written."""
        model_dir = keep_model(checkpoint, config.out / MODELS / checkpoint.name)
        encoder = self.refresh_encoder(config, checkpoint, device)
        version, count, index_seconds = reembed(backend, config.index, encoder, shares=shares)
        for folder in {f.parent for f in shares}:
            shutil.rmtree(folder, ignore_errors=True)
        self.recipe = encoder.recipe()
        mine_seconds = 0.0
        if not last:  # the final refresh only re-embeds: no pools are needed after it
            pools = config.out / "pools" / f"pools-{step:07d}.jsonl.gz"
            stats = run_mine(mine_job(config, pools, self.split), backend, encoder)
            self.pools, mine_seconds = pools, stats.seconds
        score = self.evaluate_dev(config, backend, step, encoder)
        entry = {
            "step": step,
            "version": version,
            "model": str(model_dir),
            "documents": count,
            "index_s": round(index_seconds, 1),
            "encoded_by": max(1, len(shares)),
            "mine_s": round(mine_seconds, 1),
            "dev_ndcg@10": score,
        }
        self.refreshes.append(entry)
        log(config.out, {"refresh": entry})
        prune_models(config.out, self.recipe)
        scores = [d["ndcg@10"] for d in self.dev]
        if score is not None and score >= max(scores):
            best = config.out / "best"
            shutil.rmtree(best, ignore_errors=True)
            shutil.copytree(model_dir, best, ignore=shutil.ignore_patterns(".hybrid-onnx"))
            (best / "best.json").write_text(json.dumps(entry, indent=1) + "\n")
            self.best = best


def recipe_encoder(model_dir: Path, recipe: VectorRecipe, device: torch.device) -> Encoder:
    """An encoder that embeds the index as ``recipe`` says, on the threads this process has
    now: a rank's share, or every core while rank 0 works alone."""
    threads = torch.get_num_threads()
    return Encoder(EncoderConfig(model=str(model_dir), settings=recipe.settings(), device=str(device), threads=threads))


def start_run(config: TrainConfig, backend: Backend, previous: Path | None, device: torch.device) -> RunState:
    """The index's recipe and the weights to start from; re-embeds first when asked to."""
    sampler = config.sampler
    if previous is not None:
        state = torch.load(previous / STATE_FILE, map_location="cpu", weights_only=False)
        recipe = VectorRecipe.from_dict(state.get("recipe")) or _recipe(config, backend)
        sampler = sampler.resolved(recipe.normalize, config.temperature)
        return RunState(recipe=recipe, source=previous, sampler=sampler)
    recipe = _recipe(config, backend)
    if config.update == "query":  # the index's own query side, against its own vectors
        from hybrid.training.query_side import check_query_only

        source = resolve_model(config.model)[0] if config.model else recipe.query_model_dir()
        check_query_only(recipe, model_hash(source), str(source), config.index)
        return RunState(recipe=recipe, source=source, sampler=sampler.resolved(recipe.normalize, config.temperature))
    source = resolve_model(config.model)[0] if config.model else recipe.model_dir()
    hint = "Leave out --model to train the index's model, or pass --reembed to re-embed the index with it first"
    if model_hash(source) != recipe.model_hash:
        if not config.reembed:
            check_model(config.index, recipe, model_hash(source), str(source), "training", hint)
        kept = keep_model(source, config.out / MODELS / "initial")
        encoder = recipe_encoder(kept, recipe, device)
        version, count, _ = reembed(backend, config.index, encoder)
        logger.info("re-embedded %s (%d documents) with %s as %s", config.index, count, source, version)
        recipe = encoder.recipe()
    return RunState(recipe=recipe, source=source, sampler=sampler.resolved(recipe.normalize, config.temperature))


def _recipe(config: TrainConfig, backend: Backend) -> VectorRecipe:
    from hybrid.query_encoder import index_recipe

    recipe = index_recipe(backend, config.index)
    if recipe is None:
        raise ConfigError(
            f"index '{config.index}' does not record which model made its vectors (made by an older hybrid); "
            "rebuild it: hybrid index CORPUS --recreate"
        )
    return recipe


def prepare_model(config: TrainConfig, run: RunState, device: torch.device) -> DualEncoder:
    """The dual encoder from ``run.source``: index settings, training truncation on top."""
    index = run.recipe.settings()
    settings = replace(
        index,
        query_max_length=config.query_max_length or index.query_max_length,
        passage_max_length=config.passage_max_length or index.passage_max_length,
    )
    # Query-only: one tower, the query side; the passages are the index's stored vectors.
    model = DualEncoder(run.source, settings, shared=config.shared or config.update == "query").to(device)
    if config.grad_checkpointing:
        enable_checkpointing(model.towers())
    return model


def prepare_pools(
    config: TrainConfig, backend: Backend, run: RunState, state: dict[str, Any], device: torch.device
) -> None:
    """Pools to train on: the checkpoint's (a pending refresh redone), given ones, or fresh ones."""
    if state:
        run.pools, run.refreshes, run.dev = Path(state["pools"]), state.get("refreshes", []), state.get("dev", [])
        run.split = DevSplit.from_dict(state.get("split"))
        run.best = Path(state["best"]) if state.get("best") else None
        labelled = config.qrels is not None or config.answers is not None
        if state.get("refresh_pending"):
            logger.warning("the run stopped during a refresh at step %d; redoing it", state["step"])
            # Re-mine whenever labels allow: the run may go on past the step that was its last.
            run.refresh(config, backend, run.source, int(state["step"]), last=not labelled, device=device)
        if labelled and (config.remine or not pools_match(run.pools, backend, config.index, run.recipe)):
            # e.g. a finished run (its final refresh swapped the index) resumed for more steps
            run.pools = config.out / "pools" / f"pools-{int(state['step']):07d}.jsonl.gz"
            run_mine(mine_job(config, run.pools, run.split), backend, _run_encoder(backend, config.index, run.recipe))
        check_pools(run.pools, backend, config.index, run.recipe)
        return
    if config.pools is not None and not config.remine:
        check_pools(config.pools, backend, config.index, run.recipe)
        run.pools = config.pools
        return
    from hybrid.query_encoder import encoder_for_index

    pools = config.out / "pools" / "pools-0000000.jsonl.gz"
    pools.parent.mkdir(parents=True, exist_ok=True)
    run_mine(mine_job(config, pools, run.split), backend, encoder_for_index(backend, config.index, batch=True))
    run.pools = pools


def _run_encoder(backend: Backend, index: str, recipe: VectorRecipe) -> Any:
    from hybrid.query_encoder import encoder_for_index

    encoder = encoder_for_index(backend, index, batch=True)
    check_query_model(index, recipe, encoder.model_hash, encoder.name, "this run")
    return encoder


def _pool_identity(pools: Path) -> tuple[Any, Any]:
    """(index version, model hash) the pools were mined with; the first line's version without meta."""
    meta = read_pool_meta(pools)
    if meta:
        return meta.get("version"), meta.get("model_hash")
    first = next(iter(read_pools(pools)), None)
    return (first.version if first is not None else None), None


def pools_match(pools: Path, backend: Backend, index: str, recipe: VectorRecipe) -> bool:
    version, hash_ = _pool_identity(pools)
    return version == backend.info(index).version and hash_ in (None, recipe.model_hash, recipe.query_hash)


def check_pools(pools: Path, backend: Backend, index: str, recipe: VectorRecipe) -> None:
    """Refuse pools mined against another index version or model (their scores would lie)."""
    if not pools_match(pools, backend, index, recipe):
        version, hash_ = _pool_identity(pools)
        current = backend.info(index).version
        meta = {"version": version, "model_hash": hash_}
        raise ConfigError(
            f"{pools} was mined against {meta.get('version')} (model hash {meta.get('model_hash')}) but index "
            f"'{index}' is now {current} (model hash {recipe.model_hash}); pass --remine to mine fresh pools"
        )


def mine_job(config: TrainConfig, out: Path, split: DevSplit | None = None) -> MineJob:
    """Mining for this run: the training queries less any carved dev queries."""
    return MineJob(
        index=config.index,
        queries=split.train_queries if split and split.train_queries else config.queries,
        out=out,
        qrels=config.qrels,
        answers=config.answers,
        bm25_depth=config.bm25_depth,
        knn_depth=config.knn_depth,
        recreate=True,
    )


def prune_models(out: Path, recipe: VectorRecipe) -> None:
    """Keep in OUT/models only the models the index's current version names (passage and
    query model) and those of checkpoints still kept: each refresh used to add a full model
    copy that nothing ever removed."""
    folder = out / MODELS
    if not folder.is_dir():
        return
    named = {Path(p).resolve() for p in (recipe.model_path, recipe.query_model_path) if p}
    kept = {p.name for p in completed(out)}
    for model in folder.iterdir():
        if model.resolve() not in named and model.name not in kept:
            shutil.rmtree(model, ignore_errors=True)


def keep_model(source: Path, target: Path) -> Path:
    """Copy a model's files (no trainer state) to ``target``, atomically; reuse a finished copy of it."""
    if (target / "config.json").is_file():
        if model_hash(target) == model_hash(source):
            return target
        shutil.rmtree(target)  # left by an earlier run in this --out with other weights
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(STATE_FILE, CONFIG_FILE, "best.json", ".hybrid-onnx"))
    tmp.rename(target)
    return target


def check_config(out: Path, config: TrainConfig, resume: bool, allow_change: bool) -> None:
    """Save the resolved config; on resume refuse changed options unless ``allow_change``."""
    path = out / CONFIG_FILE
    new = config.to_dict()
    if resume and path.is_file():
        old = json.loads(path.read_text())
        old, new_cmp = _comparable(old), _comparable(new)
        # An option newer than the run's saved config had its default there.
        old = {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **old}
        changed = sorted(k for k in set(old) | set(new_cmp) if k not in _RUN_ONLY and old.get(k) != new_cmp.get(k))
        if changed and not allow_change:
            raise ConfigError(
                f"--resume with changed options ({', '.join(changed)}) would not continue the run in {out}; "
                "pass the same options, or --allow-config-change to go on with the new ones"
            )
        if changed:
            log(out, {"config_change": {k: [old.get(k), new_cmp.get(k)] for k in changed}})
    path.write_text(json.dumps(new, indent=1) + "\n")


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """Config values with paths resolved: ``q.jsonl`` and its absolute path are one option."""
    out = dict(values)
    for key in PATH_FIELDS:
        if out.get(key) is not None:
            out[key] = str(Path(out[key]).resolve())
    return out


def log(out: Path, record: dict[str, Any]) -> None:
    with (out / LOG_FILE).open("a") as fh:
        fh.write(json.dumps(record) + "\n")
