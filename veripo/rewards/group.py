"""Group-level rewards: the ones that need the other rollouts of the same question.

``adaptive_length_rewards`` follows the VerIPO paper's discussion of reasoning length: reward longer
thinking where the group found the question hard, penalise over-thinking where it found it easy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from veripo.data.records import Sample
from veripo.rewards.parsing import parse_completion
from veripo.rewards.text_checks import word_count


def adaptive_length_rewards(
    completions: Sequence[str],
    samples: Sequence[Sample],
    accuracies: Sequence[float],
    *,
    scale: float = 0.2,
) -> list[float]:
    """Length shaping per rollout, grouped by ``sample.id``; each value lies in [-scale, scale].

    For a group of rollouts of one question with accuracies ``a_i`` in [0, 1] and thinking lengths ``L_i``
    (words):

        difficulty d = 1 - mean(a)                   (0 = every rollout right, 1 = every rollout wrong)
        z_i = clip((L_i - mean(L)) / (std(L) + 1), -1, 1)  (how much longer than the group it thought)
        r_i = scale * a_i * (2 d - 1) * z_i

    So on a hard question (d > 1/2) a *correct* rollout that thought longer than its group gains and a
    shorter one loses; on an easy question (d < 1/2) the sign flips and over-thinking is penalised. Wrong
    rollouts (a_i = 0) get 0: length is never rewarded for its own sake. A group of one, or one whose
    lengths are all equal, gets 0. The ``+ 1`` in the divisor keeps a few words of difference from
    counting as a full standard deviation.

    Args:
        completions: the G*B response texts.
        samples: the sample each response answers (same length); rollouts of one question share ``id``.
        accuracies: each response's accuracy reward in [0, 1] (same length).
    """
    if not len(completions) == len(samples) == len(accuracies):
        raise ValueError(
            f"adaptive_length_rewards: got {len(completions)} completions, {len(samples)} samples and "
            f"{len(accuracies)} accuracies; expected equal lengths"
        )
    lengths = [word_count(parse_completion(text).thinking or "") for text in completions]
    acc = [min(1.0, max(0.0, a)) if math.isfinite(a) else 0.0 for a in accuracies]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        groups[sample.id].append(index)
    rewards = [0.0] * len(completions)
    for members in groups.values():
        if len(members) < 2:
            continue
        difficulty = 1.0 - sum(acc[i] for i in members) / len(members)
        mean = sum(lengths[i] for i in members) / len(members)
        std = math.sqrt(sum((lengths[i] - mean) ** 2 for i in members) / len(members))
        for i in members:
            z = max(-1.0, min(1.0, (lengths[i] - mean) / (std + 1.0)))
            rewards[i] = scale * acc[i] * (2.0 * difficulty - 1.0) * z
    return rewards
