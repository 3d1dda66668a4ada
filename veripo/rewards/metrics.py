"""Answer-quality metrics on plain strings and numbers: WER, ROUGE, relative error, MRA.

Each cites the peer it reproduces; the peers' exact float arithmetic is kept where it changes a result at a
threshold (Video-R1's float32 MRA with ``<``, VerIPO's float64 MRA with ``<=``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

# Word lists longer than this are cut before edit distance / ROUGE (quadratic in length); answers are short.
MAX_WORDS = 2000


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance / reference words, on whitespace-split words (Video-R1 ``wer``).

    Computed with jiwer; an empty reference counts as one word (Video-R1's ``max(1, m)``).
    """
    ref = reference.split()[:MAX_WORDS]
    hyp = hypothesis.split()[:MAX_WORDS]
    if not ref:
        return float(len(hyp))
    if not hyp:
        return 1.0
    import jiwer

    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return (out.substitutions + out.deletions + out.insertions) / len(ref)


def ocr_accuracy(reference: str, hypothesis: str) -> float:
    """``1 - WER`` clipped to [0, 1] (Video-R1's OCR reward)."""
    return max(0.0, min(1.0, 1.0 - word_error_rate(reference, hypothesis)))


@functools.lru_cache(maxsize=1)
def _rouge_scorer():  # type: ignore[no-untyped-def]
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    # Porter stemming dominates the cost and answers reuse a small vocabulary: memoise the stemmer.
    stemmer = getattr(getattr(scorer, "_tokenizer", None), "_stemmer", None)
    if stemmer is not None:
        stemmer.stem = functools.lru_cache(maxsize=200_000)(stemmer.stem)
    return scorer


def rouge_mean_f1(reference: str, hypothesis: str) -> float:
    """Mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 with the Porter stemmer, clipped to [0, 1] (Video-R1 free-form)."""
    reference = " ".join(reference.split()[:MAX_WORDS])
    hypothesis = " ".join(hypothesis.split()[:MAX_WORDS])
    scores = _rouge_scorer().score(reference, hypothesis)
    mean = (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3
    return max(0.0, min(1.0, mean))


def relative_error_accuracy(pred: float, gold: float) -> float:
    """Video-R1 regression reward ``1 - clip((|pred - gold| + 1e-9) / (|gold| + 1e-9), 0, 1)``.

    Note the epsilon in the numerator: an exact answer to gold 0 scores 0 (the peer's behaviour).
    """
    rel = (abs(pred - gold) + 1e-9) / (abs(gold) + 1e-9)
    if math.isnan(rel):
        return 0.0
    return 1.0 - min(1.0, max(0.0, rel))


def relative_accuracy(pred: float, gold: float) -> float:
    """``1 - |pred - gold| / |gold|`` clipped to [0, 1]; a zero gold uses the absolute error (no epsilon, so an
    exact answer scores exactly 1, unlike Video-R1's :func:`relative_error_accuracy`)."""
    rel = abs(pred - gold) / abs(gold) if gold else abs(pred)
    return 0.0 if math.isnan(rel) else 1.0 - min(1.0, rel)


def mean_relative_accuracy(pred: float, gold: float) -> float:
    """VSI-Bench MRA: share of thresholds t in 0.50..0.95 with ``|pred - gold| / |gold| <= 1 - t``.

    float64, as VerIPO's ``calculate_score.py`` computes it (``np.linspace(.5, .95, 10)``). A zero gold
    uses the absolute error instead of dividing by zero (the peer raises and skips the item).
    """
    return mra_from_relative_error(abs(pred - gold) / abs(gold) if gold else abs(pred))


def mra_from_relative_error(rel: float) -> float:
    """Share of thresholds t in ``np.linspace(.5, .95, 10)`` with ``rel <= 1 - t`` (NaN scores 0)."""
    if math.isnan(rel):
        return 0.0
    thresholds = np.linspace(0.5, 0.95, 10)
    return float(np.mean(rel <= 1 - thresholds))


def mean_relative_accuracy_videor1(pred: float, gold: float) -> float:
    """Video-R1 ``eval_bench.py`` MRA: float32 tensors, ``rel_error < 1 - t``, epsilon 1e-8 in the divisor.

    Reproduced with numpy float32 (torch is not needed); ``torch.arange(0.5, 0.975, 0.05)`` computes each
    threshold as ``float32(0.5 + i * 0.05)`` in double, which ``np.float32`` of the same sum matches.
    """
    with np.errstate(all="ignore"):
        p = np.float32(pred)
        g = np.float32(gold)
        rel = np.abs(p - g) / (np.abs(g) + np.float32(1e-8))
        thresholds = np.array([0.5 + i * 0.05 for i in range(10)], dtype=np.float32)
        hits = rel < (np.float32(1) - thresholds)
    return float(np.mean(hits.astype(np.float32)))
