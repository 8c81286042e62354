"""Dense encoder training with SimANS (or comparison) negatives and periodic refresh.

:func:`hybrid.training.trainer.train` runs the loop; a run directory holds checkpoints in
Hugging Face format (loadable as ``--model`` everywhere), the resolved config, a JSONL log
and the pools it trained from. Resuming continues exactly: data order and sampling are a
function of (seed, step), and optimizer, scheduler and step are restored.
"""

from __future__ import annotations
