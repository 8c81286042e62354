"""Model identity: every index version names the weights that made its vectors, and nothing mixes models."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any, get_args

import pytest
from hybrid.cli.train import _TRAINING

from hybrid.encoder import Encoder, EncoderConfig
from hybrid.errors import ConfigError, CorpusError, ModelError, ModelMismatchError
from hybrid.indexing import IndexJob, run_index
from hybrid.manifest import model_hash
from hybrid.mining import MineJob, read_pools, run_mine
from hybrid.search import SearchConfig, Searcher
from hybrid.training.config import DEFAULT_EPOCHS, TrainConfig
from hybrid.training.trainer import train

DENSE = SearchConfig(mode="dense", k=3)


def _mine(backend: Any, name: str, beir_small: Path, out: Path, encoder: Any) -> Path:
    job = MineJob(
        index=name, queries=beir_small / "queries.jsonl", qrels=beir_small / "qrels/test.tsv", out=out, recreate=True
    )
    run_mine(job, backend, encoder)
    return out


def _train_config(name: str, beir_small: Path, out: Path, **kw: Any) -> TrainConfig:
    from hybrid.negatives import SamplerConfig

    values: dict[str, Any] = {
        "index": name,
        "queries": beir_small / "queries.jsonl",
        "qrels": beir_small / "qrels/test.tsv",
        "out": out,
        "sampler": SamplerConfig(n=2, depth=10),
        "steps": 1,
        "batch_size": 2,
        "bm25_depth": 5,
        "knn_depth": 5,
        "save_every": 0,
        "refresh_at_end": False,
    }
    values.update(kw)
    return TrainConfig(**values)


def test_hash_is_content_not_place(tiny_model: Path, other_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert model_hash(copy) == model_hash(tiny_model) != model_hash(other_model)


def test_index_records_its_recipe_and_refuses_another_model(
    backend_and_name: tuple[Any, str],
    tiny_encoder: Any,
    tiny_model: Path,
    other_model: Path,
    beir_small: Path,
    tmp_path: Path,
) -> None:
    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    recipe = backend.info(name).recipe
    assert recipe["model_hash"] == model_hash(tiny_model) and recipe["passage_max_length"] == 64
    assert recipe["model_path"] == str(tiny_model.resolve()) and recipe["normalize"] is True
    other = Encoder(EncoderConfig(model=str(other_model)))
    with pytest.raises(ModelMismatchError, match=f"index '{name}' was embedded by .* vectors of two models do not mix"):
        run_index(IndexJob(corpus=beir_small, index=name), backend, other)  # append / resume
    with pytest.raises(ModelMismatchError, match="vectors of two models do not mix"):
        Searcher(backend, name, other).search(["honey bees"], DENSE)
    with pytest.raises(ModelMismatchError, match="but mining it would use"):
        _mine(backend, name, beir_small, tmp_path / "pools" / "p.jsonl.gz", other)
    assert not (tmp_path / "pools").exists()  # refused before anything was written
    # the same weights in another directory are the same model
    assert len(Searcher(backend, name, tiny_encoder).search(["honey bees"], DENSE)[0]) == 3
    # --recreate re-embeds with the other model; search then follows the index's new model
    run_index(IndexJob(corpus=beir_small, index=name, recreate=True), backend, other)
    assert backend.info(name).recipe["model_hash"] == model_hash(other_model)
    assert len(Searcher(backend, name).search(["honey bees"], DENSE)[0]) == 3


def test_a_vanished_or_changed_model_is_a_clear_error(
    embedded_backend: Any, tiny_model: Path, other_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    moving = shutil.copytree(tiny_model, tmp_path / "moving")
    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, Encoder(EncoderConfig(model=str(moving))))
    shutil.copy(other_model / "model.safetensors", moving / "model.safetensors")  # weights replaced in place
    with pytest.raises(ModelError, match="now holds other weights"):
        Searcher(embedded_backend, "idx").search(["honey"], DENSE)
    shutil.rmtree(moving)
    with pytest.raises(ModelError, match=r"is gone from .*moving; restore it, or re-embed the index"):
        Searcher(embedded_backend, "idx").search(["honey"], DENSE)


def test_train_starts_from_the_index_model_or_reembeds(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, other_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    with pytest.raises(ModelMismatchError, match="pass --reembed to re-embed the index with it first"):
        train(_train_config(name, beir_small, tmp_path / "a", model=str(other_model)), backend)
    result = train(_train_config(name, beir_small, tmp_path / "b", model=str(other_model), reembed=True), backend)
    info = backend.info(name)
    assert info.version.endswith("v000002") and info.model == str(tmp_path / "b" / "models" / "initial")
    assert info.recipe["model_hash"] == model_hash(other_model) and info.recipe["passage_max_length"] == 64
    assert len(result.losses) == 1
    # without --model training starts from the index's own model (now the re-embedded one)
    assert len(train(_train_config(name, beir_small, tmp_path / "c"), backend).losses) == 1


def test_pools_of_another_index_version_are_refused(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.training.refresh import reembed

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    pools = _mine(embedded_backend, "idx", beir_small, tmp_path / "p.jsonl.gz", tiny_encoder)
    reembed(embedded_backend, "idx", tiny_encoder)  # a new version: the pools' scores are stale
    with pytest.raises(ConfigError, match=r"was mined against idx-v000001 .* is now idx-v000002 .* pass --remine"):
        train(_train_config("idx", beir_small, tmp_path / "a", pools=pools), embedded_backend)
    result = train(_train_config("idx", beir_small, tmp_path / "b", pools=pools, remine=True), embedded_backend)
    assert len(result.losses) == 1 and (tmp_path / "b" / "pools" / "pools-0000000.jsonl.gz").is_file()


def test_empty_and_truncated_pool_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl.gz"
    with gzip.open(empty, "wt") as fh:
        fh.write("")
    with pytest.raises(CorpusError, match=f"{empty}: the pool file is empty; mine it again with --recreate"):
        list(read_pools(empty))
    whole = tmp_path / "whole.jsonl.gz"
    row = '{"qid": "q", "query": "x", "positives": [["d", 0.5]], "candidates": [["e", 0.4, "bm25", false]]}\n'
    with gzip.open(whole, "wt") as fh:
        fh.write(row * 2000)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[:-40])
    with pytest.raises(CorpusError, match=rf"{cut}:\d+: the pool file is truncated or not gzip"):
        list(read_pools(cut))
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write(row + '{"qid": "q2"}\n')
    with pytest.raises(CorpusError, match=rf"{bad}:2: malformed pool line"):
        list(read_pools(bad))


def test_resume_redoes_a_refresh_cut_short(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    config = _train_config("idx", beir_small, tmp_path / "run", steps=4, refresh_every=2, refresh_at_end=True)

    class Crash(Exception):
        pass

    def crash_in_first_refresh(p: Any) -> None:
        if p.phase == "refresh" and p.step == 2:
            raise Crash

    with pytest.raises(Crash):
        train(config, embedded_backend, progress=crash_in_first_refresh)
    assert embedded_backend.info("idx").version.endswith("v000001")  # the refresh never ran
    result = train(config, embedded_backend, resume=True)
    assert [r["step"] for r in result.refreshes] == [2, 4]
    assert embedded_backend.info("idx").version.endswith("v000003")
    assert (tmp_path / "run" / "pools" / "pools-0000002.jsonl.gz").is_file() and len(result.losses) == 2


def test_epochs_derive_steps(beir_small: Path, tmp_path: Path) -> None:
    config = _train_config("idx", beir_small, tmp_path, steps=None, epochs=2.0, batch_size=3)
    assert config.total_steps(4) == 3  # ceil(2 * 4 / 3)
    assert _train_config("idx", beir_small, tmp_path, steps=None).total_steps(10) == 10  # two epochs of batch 2
    help_text = next(get_args(option)[1].help for name, option, _ in _TRAINING if name == "epochs")
    assert help_text.endswith(f"({DEFAULT_EPOCHS:g}).")  # the help says the default in force
    with pytest.raises(ConfigError, match="give --steps or --epochs, not both"):
        _train_config("idx", beir_small, tmp_path, steps=3, epochs=1.0)


def test_a_finished_run_resumes_for_more_steps_on_fresh_pools(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    first = _train_config("idx", beir_small, tmp_path / "run", steps=2, refresh_at_end=True)
    train(first, embedded_backend)  # the final refresh swaps the index: the run's pools are stale now
    assert embedded_backend.info("idx").version.endswith("v000002")
    saved = tmp_path / "run" / "train_config.json"  # as a run from before the --grades option saved it
    saved.write_text(json.dumps({k: v for k, v in json.loads(saved.read_text()).items() if k != "grades"}))
    relative = _train_config("idx", beir_small, tmp_path / "run", steps=3, refresh_at_end=True)
    with pytest.raises(ConfigError, match=r"changed options \(steps\)"):  # paths resolved: no false change
        train(relative, embedded_backend, resume=True)
    result = train(relative, embedded_backend, resume=True, allow_config_change=True)
    assert len(result.losses) == 1 and result.final == tmp_path / "run" / "checkpoint-0000003"
    assert (tmp_path / "run" / "pools" / "pools-0000002.jsonl.gz").is_file()  # re-mined against v000002
    assert embedded_backend.info("idx").version.endswith("v000003")


def test_pools_without_meta_are_checked_by_their_lines(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.mining import meta_path
    from hybrid.training.refresh import reembed

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    pools = _mine(embedded_backend, "idx", beir_small, tmp_path / "p.jsonl.gz", tiny_encoder)
    meta_path(pools).unlink()
    reembed(embedded_backend, "idx", tiny_encoder)
    with pytest.raises(ConfigError, match="pass --remine"):
        train(_train_config("idx", beir_small, tmp_path / "a", pools=pools), embedded_backend)


def test_a_kept_model_copy_with_other_weights_is_replaced(tiny_model: Path, other_model: Path, tmp_path: Path) -> None:
    from hybrid.training.setup import keep_model

    target = tmp_path / "models" / "initial"
    keep_model(other_model, target)  # left over from an earlier run in the same --out
    assert model_hash(keep_model(tiny_model, target)) == model_hash(tiny_model)
