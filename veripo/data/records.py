"""The records that flow through a run: samples -> rollouts -> verdicts -> pairs.

Each record is a plain dataclass with ``to_dict``/``from_dict``; files of them are JSONL (see
``veripo.data.jsonl``). Field names are the on-disk names: change them only with a schema version bump.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin, get_type_hints

SCHEMA_VERSION = 1

ProblemType = Literal["multiple choice", "numerical", "regression", "OCR", "free-form", "math"]
PROBLEM_TYPES: tuple[str, ...] = ("multiple choice", "numerical", "regression", "OCR", "free-form", "math")

R = TypeVar("R", bound="Record")


class RecordFieldError(TypeError):
    """A record field whose value has the wrong type (``text: null``); ``field`` names it."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"field {field_name!r}: {reason}")
        self.field, self.reason = field_name, reason


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` (read from JSON) has the annotated type ``tp``; containers are checked as a whole."""
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in get_args(tp))
    if origin is Literal:
        return value in get_args(tp)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return "null" if tp is type(None) else getattr(origin or tp, "__name__", str(tp))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class Record:
    """Mixin: dict round trip that ignores unknown keys (forward compatible) and fills defaults."""

    kind: ClassVar[str] = "record"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """The record from a dict read from JSON; ``RecordFieldError`` (a TypeError) names a field whose value
        has the wrong type (a null ``text``, a number for ``chosen``), so no stage meets it later."""
        types_ = _field_types(cls)
        for name, value in data.items():
            if name in types_ and not _fits(value, types_[name]):
                shown = "null" if value is None else repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
                raise RecordFieldError(name, f"expected {_type_name(types_[name])}, got {shown}")
        return cls(**{k: v for k, v in data.items() if k in types_})


@dataclass
class Sample(Record):
    """One question. ``answer`` is the bare gold answer (a letter, number or text, no tags).

    ``options`` are the option strings as shown to the model (``"A. red"``); ``video`` and ``images`` are
    absolute paths after loading (resolved under the source's media root).
    """

    kind: ClassVar[str] = "sample"
    id: str
    problem: str
    problem_type: str
    answer: str
    options: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    video: str | None = None
    data_type: Literal["text", "image", "video"] = "text"
    source: str = ""
    difficulty: int | None = None
    reasoning: str | None = None  # a reference chain of thought (for SFT and consistency checks)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rollout(Record):
    """One sampled response to a sample, with its rewards and the advantage it was trained with."""

    kind: ClassVar[str] = "rollout"
    id: str  # "<sample_id>/<step>/<group_index>" unique in a run
    sample_id: str
    group_index: int
    text: str
    thinking: str | None = None
    answer: str | None = None
    prompt_tokens: int = 0
    response_tokens: int = 0
    thinking_tokens: int = 0
    truncated: bool = False  # stopped by max_new_tokens, not by </answer> or end of text
    rewards: dict[str, float] = field(default_factory=dict)
    reward: float = 0.0  # the weighted total the advantage was computed from
    advantage: float = 0.0
    policy_version: int = 0  # optimizer steps taken before this rollout was sampled
    stage: str = ""
    step: int = 0  # rollout batch index within the stage
    token_ids: list[int] | None = None  # response token ids (kept so DPO can reuse them exactly)


@dataclass
class Verdict(Record):
    """The verifier's judgement of one rollout."""

    kind: ClassVar[str] = "verdict"
    rollout_id: str
    sample_id: str
    format_ok: bool
    accuracy: float
    correct: bool
    thinking_tokens: int
    repetitive: bool
    truncated: bool
    consistency: Literal["consistent", "inconsistent", "unknown"] = "unknown"
    reflective: bool = False  # the thinking notices and corrects an earlier mistake
    judge: str = ""
    reasons: list[str] = field(default_factory=list)


@dataclass
class Pair(Record):
    """A preference pair for DPO. Both responses answer the same sample (the same prompt)."""

    kind: ClassVar[str] = "pair"
    id: str
    sample_id: str
    pair_type: Literal["consistency", "penalty", "reflective"]
    chosen: str
    rejected: str
    chosen_rollout: str | None = None  # rollout ids (provenance); None for a constructed response
    rejected_rollout: str | None = None
    reasons: list[str] = field(default_factory=list)
    chosen_token_ids: list[int] | None = None
    rejected_token_ids: list[int] | None = None


RECORD_TYPES: dict[str, type[Record]] = {c.kind: c for c in (Sample, Rollout, Verdict, Pair)}


def reference_completion(sample: Sample) -> str | None:
    """The full reference response for a sample with a reference chain of thought (SFT warm start):
    ``<think>{reasoning}</think><answer>{answer}</answer>``; None when the sample has no reasoning."""
    if sample.reasoning is None:
        return None
    return f"<think>{sample.reasoning}</think><answer>{sample.answer}</answer>"
