"""Training configuration: a frozen dataclass, loadable from YAML or TOML with overrides."""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from hybrid.errors import ConfigError
from hybrid.negatives import SamplerConfig
from hybrid.training.selection import GuardConfig

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PositivesMode = Literal["one", "all"]
GradesMode = Literal["ignore", "weight"]
UpdateMode = Literal["both", "query"]
PATH_FIELDS = ("queries", "qrels", "answers", "pools", "out", "dev_queries", "dev_qrels")


# The numbers checked on every config, and the least each may be.
_AT_LEAST = {"save_every": 0, "keep_checkpoints": 1, "log_every": 1, "refresh_every": 0, "bm25_depth": 1}
_AT_LEAST |= {"knn_depth": 1, "query_max_length": 1, "passage_max_length": 1, "seed": 0}
_AT_LEAST |= {"steps": 1, "batch_size": 1, "grad_accum": 1, "grad_cache_chunk": 1}
_MAY_BE_NONE = ("steps", "grad_cache_chunk", "query_max_length", "passage_max_length")
_POSITIVE = ("lr", "temperature", "max_grad_norm", "epochs")  # above 0; weight_decay and warmup may be 0
# Options the CLI has flags for: their errors name the flag too.
_FLAGGED = {"seed", "save_every", "refresh_every", "query_max_length", "passage_max_length", "steps"}
_FLAGGED |= {"batch_size", "grad_accum", "lr", "temperature", "epochs", "grad_cache_chunk"}
# Passes when neither --steps nor --epochs is given. On SciFact at the other defaults a second
# pass lifted dense nDCG@10 well past one pass's, on every seed measured (docs/benchmarks.md,
# "Training at the defaults"); the guard still decides whether the result is used.
DEFAULT_EPOCHS = 2.0


def _where(name: str) -> str:
    """How an error names option ``name``: with its flag when it has one."""
    return f"{name} (--{name.replace('_', '-')})" if name in _FLAGGED else name


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as JSON beside every checkpoint."""

    index: str
    queries: Path
    out: Path
    qrels: Path | None = None  # positives; or answers (DPR qa) for NQ-style data
    answers: Path | None = None
    pools: Path | None = None  # mined pools to start from; mined at start when absent
    model: str | None = None  # initial model directory [default: all-MiniLM-L6-v2]
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    steps: int | None = None  # optimizer steps; or derived from epochs
    epochs: float | None = None  # passes over the training queries [default: DEFAULT_EPOCHS without steps]
    batch_size: int = 32  # queries per micro-batch (each with 1 positive + sampler.n negatives)
    grad_accum: int = 1
    grad_cache_chunk: int | None = None  # GradCache: embed in chunks of this size, batch no longer bounded by memory
    # bench/train.py --knobs on SciFact: the learning rate moved dense nDCG@10 most of any knob
    # (1e-4 best of 2e-5..1e-4); docs/benchmarks.md has the table.
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps
    max_grad_norm: float = 1.0
    temperature: float = 0.05
    in_batch: bool = True  # other queries' passages are negatives too
    shared: bool = True  # one tower for queries and passages
    # Training truncation; None: the index's own (training at a shorter passage length than
    # the index embeds at makes a model that embeds the index's passages worse).
    query_max_length: int | None = None
    passage_max_length: int | None = None
    # "one": the sampled positive is the only target; "all": every labelled positive in the
    # batch counts in the numerator (log-sum-exp), for data with many positives per query.
    positives: PositivesMode = "one"
    positives_per_query: int = 1  # labelled positives drawn per query each step (distinct, when it has them)
    # "weight": graded qrels count by grade: the target is drawn in proportion to its grade,
    # and a multi-positive numerator weighs each positive by its grade over the query's best.
    grades: GradesMode = "ignore"
    distill: float = 0.0  # weight of KL to the base model's pool scores: keeps the model near its start
    grad_checkpointing: bool | None = None  # recompute activations in backward: memory for time (off unless True)
    precision: Precision = "auto"  # bf16 (or fp16) autocast on CUDA, fp32 on CPU
    seed: int = 13
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    refresh_every: int = 0  # re-embed + re-mine every N steps (0: never during training)
    refresh_at_end: bool = True
    bm25_depth: int = 100
    knn_depth: int = 100
    dev_queries: Path | None = None  # the guard's dev set; also evaluated (dense nDCG@10) at each refresh
    dev_qrels: Path | None = None
    # "query": train the query side alone against the index's stored vectors; applying it
    # is a metadata update (a query version), no passage is re-embedded.
    update: UpdateMode = "both"
    guard: bool = True  # a trained model replaces the index's only when it wins on dev
    dev_share: float = 0.1  # held out of the training queries as dev when no dev set is given
    guard_depth: int = 30  # BM25 and dense top-k per dev query that candidates rank
    guard_p: float = 0.05  # paired-test p-value the chosen model must beat the base under
    device: str | None = None
    remine: bool = False  # mine fresh pools even when --pools is given
    reembed: bool = False  # re-embed the index with --model first when another model made it
    # Bytes a training step may take (RAM on CPU, device memory on CUDA); the GradCache chunk
    # and gradient checkpointing are chosen to fit it. None: no bound (the CLI passes a share
    # of the machine). A config file may write it as "6GiB".
    max_memory: int | None = None

    def __post_init__(self) -> None:
        # Every number is checked where it is read, flags and config files alike: keep_checkpoints
        # 0 would delete the checkpoint just saved, log_every 0 divides by zero.
        self._check_whole_numbers()
        self._check_real_numbers()
        self._check_data_and_schedule()
        self._check_modes()
        self._parse_max_memory()

    def _check_whole_numbers(self) -> None:
        for name, low in _AT_LEAST.items():
            value = getattr(self, name)
            if value is None and name in _MAY_BE_NONE:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{_where(name)} must be a whole number of at least {low}, got {value!r}")

    def _check_real_numbers(self) -> None:
        for name in (*_POSITIVE, "weight_decay", "warmup"):
            value = getattr(self, name)
            if value is None and name == "epochs":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{_where(name)} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name in _POSITIVE):
                raise ConfigError(
                    f"{_where(name)} must be {'above' if name in _POSITIVE else 'at least'} 0, got {value!r}"
                )

    def _check_data_and_schedule(self) -> None:
        """Labels, dev set and the length of the run: options that need or exclude others."""
        if self.qrels is None and self.answers is None and self.pools is None:
            raise ConfigError("train needs --qrels, --answers or --pools")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give --steps or --epochs, not both")
        if (self.epochs is not None and self.epochs <= 0) or min(self.steps or 1, self.batch_size, self.grad_accum) < 1:
            raise ConfigError("steps, epochs, batch size and gradient accumulation must be positive")
        if self.grad_cache_chunk is not None and self.grad_cache_chunk < 1:
            raise ConfigError("--grad-cache-chunk must be at least 1")
        if self.remine and self.qrels is None and self.answers is None:
            raise ConfigError("--remine needs --qrels or --answers")
        if self.lr <= 0 or self.temperature <= 0 or not 0 <= self.warmup < 1:
            raise ConfigError("train needs lr > 0, temperature > 0 and 0 <= warmup < 1")
        if self.sampler.name == "inbatch" and not self.in_batch:
            raise ConfigError("the inbatch sampler needs in-batch negatives (--in-batch)")
        if (self.dev_queries is None) != (self.dev_qrels is None):
            raise ConfigError("give both --dev-queries and --dev-qrels, or neither")

    def _check_modes(self) -> None:
        """The choices among named modes (update, guard, positives, precision) and what each allows."""
        if self.update not in ("both", "query"):
            raise ConfigError(f"unknown --update '{self.update}'; choose both or query")
        if self.update == "query" and self.refresh_every:
            raise ConfigError(
                "--update query keeps the index's vectors: there is nothing to refresh (drop --refresh-every)"
            )
        if self.update == "query" and (self.grad_cache_chunk or self.reembed):
            raise ConfigError("--update query embeds queries only: --grad-cache-chunk and --reembed do not apply")
        problem = self.guard_config().check()
        if problem:
            raise ConfigError(problem)
        if self.positives not in ("one", "all"):
            raise ConfigError(f"unknown --positives '{self.positives}'; choose one or all")
        if self.grades not in ("ignore", "weight"):
            raise ConfigError(f"unknown --grades '{self.grades}'; choose ignore or weight")
        if self.positives_per_query < 1 or self.distill < 0 or not math.isfinite(self.distill):
            raise ConfigError("--positives-per-query must be at least 1 and --distill a finite number >= 0")
        for name in ("query_max_length", "passage_max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"unknown precision '{self.precision}'; choose auto, fp32, bf16 or fp16")

    def _parse_max_memory(self) -> None:
        """``max_memory`` as a byte count (a config file may write "6GiB")."""
        if isinstance(self.max_memory, str):
            from hybrid.training.memory import parse_size

            object.__setattr__(self, "max_memory", parse_size(self.max_memory))
        memory = self.max_memory
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int) or memory < 1):
            raise ConfigError(f"max_memory (--max-memory) must be a size like 6GiB or a byte count, got {memory!r}")

    def guard_config(self) -> GuardConfig:
        """The guard's options (see :mod:`hybrid.training.selection`)."""
        return GuardConfig(enabled=self.guard, dev_share=self.dev_share, depth=self.guard_depth, p_value=self.guard_p)

    def total_steps(self, queries: int) -> int:
        """Optimizer steps: ``steps``, else ``epochs`` (default ``DEFAULT_EPOCHS``) passes over ``queries``."""
        if self.steps is not None:
            return self.steps
        per_step = self.batch_size * self.grad_accum
        return max(1, math.ceil((self.epochs or DEFAULT_EPOCHS) * queries / per_step))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in PATH_FIELDS:
            if data[key] is not None:
                data[key] = str(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in PATH_FIELDS:
            if values.get(key) is not None:
                values[key] = Path(values[key])
        sampler = values.get("sampler")
        if isinstance(sampler, dict):
            bad = set(sampler) - {f.name for f in fields(SamplerConfig)}
            if bad:
                raise ConfigError(f"unknown sampler option(s): {', '.join(sorted(bad))}")
            values["sampler"] = SamplerConfig(**sampler)
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if values.get(name) is None]
        if missing:  # named as the CLI and config files name them, not as Python's TypeError would
            names = ", ".join(f"--{name.replace('_', '-')}" for name in missing)
            raise ConfigError(f"missing training option(s): {names} (a flag, or a key of the config file)")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"incomplete training config: {exc}") from exc


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON config file into a dict."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options")
    return data


def merge(file_values: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """File values, then every override that is not None; nested ``sampler`` keys merge."""
    values = dict(file_values)
    sampler = dict(values.get("sampler") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("sampler_"):
            sampler[key.removeprefix("sampler_")] = value
        else:
            values[key] = value
    if sampler:
        values["sampler"] = sampler
    return TrainConfig.from_dict(values)
