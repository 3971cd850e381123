"""The logits processors we borrow from transformers' generation utilities.

Depends on ``transformers.generation.logits_process`` exporting these classes, each called as
``processor(input_ids, scores) -> scores`` (their constructor arguments are stable through 5.x).
"""

from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = [
    "LogitsProcessorList",
    "RepetitionPenaltyLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
]
