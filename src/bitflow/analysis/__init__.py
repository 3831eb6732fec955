"""Analysis: per-layer size / memory / operation accounting (the paper's Table 3) and plots."""

from .summary import PAPER_TABLE3, summarize

__all__ = ["PAPER_TABLE3", "summarize"]
