"""Named scoring profiles: which accuracy and format rules, and how they add up to the total.

| profile        | accuracy                               | format (weight)            | total                  |
|----------------|----------------------------------------|----------------------------|------------------------|
| videor1-train  | Video-R1 ``accuracy_reward``           | Video-R1 strict (1.0)      | accuracy + format      |
| videor1-eval   | Video-R1 ``eval_bench.py`` ``reward_fn`` | strict, reported only (0)  | accuracy               |
| veripo-eval    | VerIPO ``calculate_score.py``          | VerIPO one-of-each (0)     | accuracy               |
| veripo         | ours (tolerant parsing, per type)      | lenient, 0.5 when ok (1.0) | accuracy + format      |

Extra registered rewards can be added with weights (``RewardConfig.extra`` / ``weights``); the config also
chooses format as a gate or an additive term, what counts as correct, and Video-R1's gated length bonus
(``profile_for``). GRPO and the verifier build their profile from the same ``RewardConfig``, so they judge a
response the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from veripo.data.records import Sample
from veripo.rewards.group import LengthBand, length_band_bonus
from veripo.rewards.registry import get_reward


@dataclass(frozen=True)
class ScoringProfile:
    """Scores one completion: ``{"accuracy", "format", <extras>..., "total"}``.

    ``total = accuracy_weight * accuracy + format_weight * format + sum(weight * extra)``; with
    ``gate_on_format`` the accuracy counts only when the format reward is positive. A response is correct when
    its accuracy is at least ``correct_threshold``; ``score_group`` adds the ``length_band`` bonus (when set) to
    the correct responses of a group. Rewards are named registry entries (or import paths), so a profile
    pickles by name into worker processes.
    """

    name: str
    accuracy: str
    format: str
    format_weight: float = 1.0
    accuracy_weight: float = 1.0
    gate_on_format: bool = False
    extras: tuple[tuple[str, float], ...] = ()
    description: str = ""
    correct_threshold: float = 1.0
    length_band: LengthBand | None = None
    rewards: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        names = (self.accuracy, self.format, *(n for n, _ in self.extras))
        for reward_name in names:
            get_reward(reward_name)  # fail at construction on a typo, naming the known rewards
        object.__setattr__(self, "rewards", names)

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        """Every component and the weighted total; components that produce a non-finite value score 0."""
        fmt = _finite(get_reward(self.format)(completion, sample))
        acc = _finite(get_reward(self.accuracy)(completion, sample))
        if self.gate_on_format and fmt <= 0:
            acc = 0.0
        out = {"accuracy": acc, "format": fmt}
        total = self.accuracy_weight * acc + self.format_weight * fmt
        for reward_name, weight in self.extras:
            value = _finite(get_reward(reward_name)(completion, sample))
            out[reward_name] = value
            total += weight * value
        out["total"] = total
        return out

    def is_correct(self, scores: dict[str, float]) -> bool:
        """Whether a response with these ``score`` components counts as correct (GRPO's gates, the verifier)."""
        return scores.get("accuracy", 0.0) >= self.correct_threshold

    def score_group(self, completions: Sequence[str], sample: Sample, *, response_tokens: Sequence[int],
                    thinking_tokens: Sequence[int]) -> list[dict[str, float]]:
        """``score`` of each response of one question's group, plus ``length_bonus`` (added to the total) when
        the profile has a ``length_band``; token counts in group order."""
        scores = [self.score(c, sample) for c in completions]
        if self.length_band is None:
            return scores
        lengths = thinking_tokens if self.length_band.count == "thinking" else response_tokens
        bonus = length_band_bonus([s["accuracy"] for s in scores], list(lengths), self.length_band,
                                  self.correct_threshold)
        for s, b in zip(scores, bonus):
            s["length_bonus"] = b
            s["total"] += b
        return scores

    def zero(self) -> dict[str, float]:
        """The scores given to an item that could not be scored (timeout, crash)."""
        return {"accuracy": 0.0, "format": 0.0, **{n: 0.0 for n, _ in self.extras}, "total": 0.0}

    def with_extras(self, extra: tuple[str, ...] = (), weights: dict[str, float] | None = None) -> ScoringProfile:
        """This profile plus ``extra`` rewards; ``weights`` may override "accuracy", "format" or any extra
        (default weight 1.0). Mirrors ``RewardConfig(profile, extra, weights)``."""
        weights = dict(weights or {})
        extras = tuple((n, float(weights.pop(n, 1.0))) for n in extra)
        acc_w = float(weights.pop("accuracy", self.accuracy_weight))
        fmt_w = float(weights.pop("format", self.format_weight))
        if weights:
            raise KeyError(
                f"reward weights for {sorted(weights)} do not name 'accuracy', 'format' or an extra reward "
                f"of profile {self.name!r} (extras: {list(extra)})"
            )
        return replace(self, extras=self.extras + extras, accuracy_weight=acc_w, format_weight=fmt_w)


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


PROFILES: dict[str, ScoringProfile] = {
    p.name: p
    for p in (
        ScoringProfile(
            "videor1-train", accuracy="videor1_accuracy", format="videor1_format",
            description="Video-R1 GRPO rewards: accuracy_reward + format_reward (grpo.py)",
        ),
        ScoringProfile(
            "videor1-eval", accuracy="videor1_eval", format="videor1_format", format_weight=0.0,
            description="Video-R1 evaluation reward (eval_bench.py reward_fn); format reported, not added",
        ),
        ScoringProfile(
            "veripo-eval", accuracy="veripo_eval", format="veripo_format", format_weight=0.0,
            description="VerIPO released scorer (evaluation/calculate_score.py); format reported, not added",
        ),
        ScoringProfile(
            "veripo", accuracy="accuracy", format="format_lenient",
            description="ours: tolerant answer parsing, per-type accuracy (MRA for regression) + 0.5 format",
        ),
    )
}  # fmt: skip


def get_profile(name: str) -> ScoringProfile:
    """The profile called ``name``; the error lists the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown scoring profile {name!r}; expected one of: {', '.join(PROFILES)}") from None


def build_profile(name: str, extra: tuple[str, ...] = (), weights: dict[str, float] | None = None) -> ScoringProfile:
    """The profile a ``RewardConfig(profile, extra, weights)`` describes."""
    profile = get_profile(name)
    return profile.with_extras(tuple(extra), weights) if extra or weights else profile


def profile_for(rewards: Any) -> ScoringProfile:
    """The profile a whole ``RewardConfig`` describes: ``build_profile`` plus ``format`` ("gate": accuracy counts
    only with a positive format reward; "additive": it always counts; "profile": the profile's own rule),
    ``correct_threshold`` and the ``length`` bonus (on when its ``bonus`` is not 0)."""
    profile = build_profile(rewards.profile, tuple(rewards.extra), rewards.weights)
    gate = {"gate": True, "additive": False}.get(rewards.format, profile.gate_on_format)
    band = rewards.length
    length_band = (LengthBand(band.bonus, band.min_tokens, band.max_tokens, band.count, band.min_correct)
                   if band.bonus else None)
    return replace(profile, gate_on_format=gate, correct_threshold=rewards.correct_threshold, length_band=length_band)
