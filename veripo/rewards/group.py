"""Group-level rewards: the ones that need the other rollouts of the same question.

``length_band_bonus`` is Video-R1's gated length reward (correct responses within a token band, when the
group has several correct ones). ``adaptive_length_rewards`` follows the VerIPO paper's discussion of reasoning length: reward longer
thinking where the group found the question hard, penalise over-thinking where it found it easy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LengthBand:
    """Video-R1's length reward (``len_control`` in ``src/r1-v/src/open_r1/trainer/grpo_trainer.py``): ``bonus``
    for a *correct* response whose length lies in [``min_tokens``, ``max_tokens``], paid only when at least
    ``min_correct`` responses of its group are correct. ``count``: which length, "thinking" tokens or the whole
    "response" (Video-R1 counts the whole completion)."""

    bonus: float = 0.2
    min_tokens: int = 320
    max_tokens: int = 512
    count: str = "thinking"
    min_correct: int = 2


def length_band_bonus(accuracies: Sequence[float], lengths: Sequence[int], band: LengthBand,
                      correct_threshold: float) -> list[float]:
    """The bonus of each response of one question's group (``accuracies`` and ``lengths`` in group order).

    ``b_i = band.bonus`` if ``a_i >= correct_threshold`` and ``min_tokens <= L_i <= max_tokens`` and
    ``#{j : a_j >= correct_threshold} >= band.min_correct``, else 0. Video-R1's rule is this with
    ``correct_threshold`` just above 0.1 (it tests ``a > 0.1``), bonus 0.2, band 320..512 response tokens,
    ``min_correct`` 2 (``len(selected_indices) > 1``). A wrong response never gains from its length.
    """
    if len(accuracies) != len(lengths):
        raise ValueError(f"length_band_bonus: {len(accuracies)} accuracies but {len(lengths)} lengths; expected equal")
    correct = [math.isfinite(a) and a >= correct_threshold for a in accuracies]
    if sum(correct) < band.min_correct:
        return [0.0] * len(accuracies)
    return [band.bonus if ok and band.min_tokens <= n <= band.max_tokens else 0.0 for ok, n in zip(correct, lengths)]


def overlong_penalty(length: int, max_tokens: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13; verl's ``DAPORewardManager``,
    ``verl/workers/reward_manager/dapo.py``): 0 up to ``max_tokens - buffer`` tokens, then falling linearly to
    ``-factor`` at ``max_tokens``: ``min(0, -(length - (max_tokens - buffer)) / buffer * factor)``. Added to the
    reward of a response of ``length`` tokens; ``buffer`` 0 disables it."""
    if buffer <= 0:
        return 0.0
    if buffer > max_tokens:
        raise ValueError(f"overlong_penalty: buffer {buffer} is longer than max_tokens {max_tokens}")
    return min(0.0, -(length - (max_tokens - buffer)) / buffer * factor)


def temporal_bonus(ordered_accuracies: Sequence[float], shuffled_accuracies: Sequence[float], *, bonus: float = 0.3,
                   ratio: float = 0.8, correct_threshold: float) -> list[float]:
    """Video-R1's T-GRPO temporal reward (Feng et al. 2025, eq. 2; ``grpo_trainer.py``'s ``self.temporal``
    branch): with ``p`` the mean accuracy of a question's responses on frames in order and ``p~`` on shuffled
    frames, every correct ordered response gains ``bonus`` when ``p >= ratio * p~``; otherwise none does.

    Video-R1's constants: bonus 0.3, ratio 0.8, correct meaning accuracy ``> 0.1``. Returns one value per
    ordered response (the shuffled ones only measure the question, they are not trained on).
    """
    if not shuffled_accuracies:
        return [0.0] * len(ordered_accuracies)
    ordered = sum(ordered_accuracies) / max(1, len(ordered_accuracies))
    shuffled = sum(shuffled_accuracies) / len(shuffled_accuracies)
    if ordered < ratio * shuffled:
        return [0.0] * len(ordered_accuracies)
    return [bonus if a >= correct_threshold else 0.0 for a in ordered_accuracies]
