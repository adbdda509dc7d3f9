"""When to train: a pure function of counts read from Label Studio (not of webhooks seen).

Defaults (TRAIN_MIN_LABELED=30, TRAIN_EVERY=50, TRAIN_GROWTH=0.5): the learning benchmark
(benchmarks/results/learning.json) reached held-out AP50 0.99 on generated scenes with 48
training images, so a first round at 30 labeled tasks (about 24 train, 6 validation) is already
useful; growth-based rounds come often while the set is small (30, 45, 68, ...) and every 50
labels once it is large, so a 2-minute CPU round is never far behind the labelers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Whether to train now, why, and at how many labeled tasks the next round is due."""

    due: bool
    reason: str
    next_at: int


def next_training_at(last_trained: int | None, min_labeled: int, every: int,
                     growth: float) -> int:
    """The labeled-task count at which the next round becomes due."""
    if last_trained is None:
        return min_labeled
    step = every
    if growth > 0:
        step = min(step, max(1, int(-(-last_trained * growth // 1))))  # ceil
    return max(min_labeled, last_trained + step)


def training_due(labeled: int, last_trained: int | None, *, forced: bool, min_labeled: int,
                 every: int, growth: float) -> Decision:
    """Decide from the labeled-task count now and at the last training."""
    next_at = next_training_at(last_trained, min_labeled, every, growth)
    if forced:
        return Decision(True, "training was requested (START_TRAINING)", next_at)
    if labeled >= next_at:
        if last_trained is None:
            return Decision(True, f"{labeled} labeled tasks reach TRAIN_MIN_LABELED "
                                  f"({min_labeled})", next_at)
        return Decision(True, f"{labeled - last_trained} new labeled tasks since the last "
                              f"training at {last_trained}", next_at)
    return Decision(False, f"{labeled} labeled tasks; next training at {next_at}", next_at)


def import_batch(import_s: float, forward_s_per_task: float, floor: int, ceiling: int,
                 share: float) -> int:
    """How many predictions to gather before the next bulk import into Label Studio.

    A bulk prediction import costs a part that does not depend on its size and grows with the
    project (Label Studio 1.23 recounts every task of the project on each call unless its
    memory-efficient import flag is on): the last import's seconds, spread over the next
    batch, should cost at most `share` of the forward time those predictions took."""
    if forward_s_per_task <= 0 or import_s <= 0:
        return floor
    wanted = int(-(-import_s // (share * forward_s_per_task)))  # ceil
    return max(floor, min(ceiling, wanted))
