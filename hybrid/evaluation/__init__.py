"""Evaluation: run files in the formats pyserini's tools read, and metrics from pyserini's
evaluators (trec_eval from the Anserini jar pyserini ships), fully offline."""

from __future__ import annotations
