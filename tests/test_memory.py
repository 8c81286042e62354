"""The memory budget: sizes as people write them, the machine's share, and the way a step
is fitted into a budget (or the one-line error naming the smallest budget that works)."""

from __future__ import annotations

import pytest

from hybrid.errors import ConfigError
from hybrid.training.memory import (
    CPU_CHUNK,
    Batch,
    GiB,
    MiB,
    ModelShape,
    default_budget,
    format_size,
    machine_budget,
    parse_size,
    plan_memory,
)

MINILM = ModelShape(params=22_713_216, hidden=384, layers=6, intermediate=1536, heads=12)
DEFAULT_BATCH = Batch(queries=32, passages=32 * 8, length=256)


@pytest.mark.parametrize(
    ("text", "size"),
    [("6GiB", 6 * GiB), ("800MiB", 800 * MiB), ("1.5G", 3 * GiB // 2), ("2GB", 2 * 10**9), ("512 mib", 512 * MiB)],
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["six gigs", "6XB", "", "-1GiB", "0"])
def test_a_size_that_is_not_one_says_how_to_write_it(text: str) -> None:
    with pytest.raises(ConfigError, match="6GiB"):
        parse_size(text)


def test_the_default_is_a_share_of_the_machine_and_more_than_it_is_the_machine() -> None:
    assert default_budget(16 * GiB) == int(6.4 * GiB)
    assert default_budget(128 * GiB) == 8 * GiB
    assert machine_budget(None, 16 * GiB) == (int(6.4 * GiB), None)
    assert machine_budget(4 * GiB, 16 * GiB) == (4 * GiB, None)
    budget, warning = machine_budget(64 * GiB, 16 * GiB)
    assert budget == 16 * GiB
    assert warning == "--max-memory 64.0GiB is more than this machine has (16.0GiB); training under 16.0GiB"


def test_smaller_budgets_take_smaller_chunks_then_checkpointing() -> None:
    plans = [plan_memory(MINILM, DEFAULT_BATCH, int(g * GiB)) for g in (64, 3, 2.5, 2, 1.7)]
    chunks = [(p.chunk, p.checkpointing) for p in plans]
    assert chunks[0] == (None, False)  # everything fits: the plain step
    assert chunks[1][0] > chunks[2][0] > chunks[3][0] >= 4 and not chunks[3][1]
    assert chunks[4][1] and chunks[4][0] is not None  # too few texts without checkpointing
    assert all(p.estimate <= p.budget for p in plans if p.budget)
    # the user's choices stand: an explicit chunk whatever the budget, no checkpointing when refused
    assert plan_memory(MINILM, DEFAULT_BATCH, 2 * GiB, chunk=64).chunk == 64
    assert not plan_memory(MINILM, DEFAULT_BATCH, int(1.7 * GiB), checkpointing=False).checkpointing


def test_on_a_cpu_a_budget_past_the_useful_chunk_is_left_unspent() -> None:
    cpu = plan_memory(MINILM, DEFAULT_BATCH, 16 * GiB)
    cuda = plan_memory(MINILM, DEFAULT_BATCH, 16 * GiB, device_type="cuda")
    assert (cpu.chunk, cpu.checkpointing) == (CPU_CHUNK, False)
    assert cpu.estimate == cpu.fixed + CPU_CHUNK * cpu.per_text < cpu.budget  # the plan says what it holds
    assert f"GradCache chunks of {CPU_CHUNK} texts (288 texts per micro-batch, by budget, at most " in cpu.line()
    assert cuda.chunk is not None and cuda.chunk > CPU_CHUNK  # a GPU's chunk is as large as fits
    # a smaller budget still takes as many as fit, and an explicit chunk stands on a CPU too
    assert plan_memory(MINILM, DEFAULT_BATCH, 2 * GiB).chunk < CPU_CHUNK
    assert plan_memory(MINILM, DEFAULT_BATCH, 16 * GiB, chunk=64).chunk == 64


def test_a_budget_below_one_text_names_the_smallest_that_works() -> None:
    with pytest.raises(ConfigError) as caught:
        plan_memory(MINILM, DEFAULT_BATCH, 1 * GiB)
    message = str(caught.value)
    assert message.startswith("--max-memory 1.0GiB is too small for one text per GradCache chunk at 256 tokens")
    smallest = parse_size(message.rsplit("--max-memory ", 1)[1])
    assert plan_memory(MINILM, DEFAULT_BATCH, smallest).chunk  # it does work, and a tenth of a GiB less does not
    with pytest.raises(ConfigError):
        plan_memory(MINILM, DEFAULT_BATCH, smallest - 103 * MiB)
    assert "\n" not in message


def test_with_several_processes_there_is_no_chunk_only_checkpointing() -> None:
    share = Batch(queries=4, passages=32, length=256)
    plan = plan_memory(MINILM, share, 4 * GiB, chunking=False)
    assert (plan.chunk, plan.checkpointing) == (None, True)
    with pytest.raises(ConfigError, match="or use more processes"):
        plan_memory(MINILM, share, 2 * GiB, chunking=False)


def test_format_size_rounds_up_only_when_asked() -> None:
    assert format_size(1.51 * GiB) == "1.5GiB" and format_size(1.51 * GiB, up=True) == "1.6GiB"
    assert format_size(700.2 * MiB, up=True) == "701MiB"
