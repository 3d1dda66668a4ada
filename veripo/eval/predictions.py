"""Prediction rows (``predictions.jsonl``) and their exports in the formats the peers' scorers read.

``predictions.jsonl`` is append-only (:class:`veripo.data.jsonl.JsonlWriter`): one row per evaluated item,
written as soon as its batch is decoded, so a killed evaluation loses at most the batch in flight. Fields:

- ``id``: the sample id; ``benchmark``; ``status``: ``"ok"`` or ``"missing_media"`` (then ``reason``).
- ``sample``: the question as a :class:`~veripo.data.records.Sample` dict (gold answer, options, type), so a
  predictions file can be re-scored on its own.
- ``output``: the full decoded response; ``prediction``: the answer read from it (``parse_completion``);
  ``thinking``: the thinking text; ``format_ok``.
- ``prompt_tokens``, ``response_tokens``, ``thinking_tokens``, ``finish_reason`` (stop / eos / length).
- ``scores``: ``{profile: {"accuracy", "format", "total"}}`` for every scoring profile.

A later row for the same id replaces an earlier one (a re-run retries items whose media were missing).

Exports (written next to it by :func:`write_peer_exports`):

- ``videor1_results.json``: Video-R1 ``src/eval_bench.py`` output: ``{"results": [row...], "final_acc":
  [{"mean_acc", "mean_mra"}]}``; each row keeps the Video-R1 question fields (``problem_id``, ``problem``,
  ``data_type``, ``problem_type``, ``options``, ``solution``, ``path``, ``data_source``) plus ``output``,
  ``prediction``, ``reward``, ``correct`` and ``process``, as that script writes them.
- ``<key>.veripo_predictions.json``: the JSON list VerIPO's ``evaluation/calculate_score.py --pred_path``
  reads: ``{"question": {question_id, question, video_path, answer, processed_question, problem_type},
  "ground_truth", "model_output", "question_id"}``. Its scorer uses MRA for non-letter answers when the
  path contains ``vsi_bench``, so the file is named accordingly (see :func:`veripo_export_files`).
Only items that were evaluated (status ``ok``) are exported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from veripo.data.jsonl import scan_jsonl
from veripo.data.records import Sample
from veripo.rewards.peers import first_answer_block

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
SETTINGS_FILE = "settings.json"  # what the predictions were made with (model, prompt, media, decoding)
VIDEOR1_EXPORT = "videor1_results.json"
VERIPO_EXPORT_SUFFIX = ".veripo_predictions.json"
STATUS_OK = "ok"
STATUS_MISSING = "missing_media"


def read_predictions(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Rows of a ``predictions.jsonl`` by id, a later row replacing an earlier one; {} when the file is
    absent. A torn last line (a killed writer) is ignored: that item is simply evaluated again."""
    path = Path(path)
    if not path.exists():
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for row in scan_jsonl(path).records:
        if isinstance(row.get("id"), str):
            rows[row["id"]] = row
    return rows


def original_id(sample: Sample) -> str:
    """The id the question had in its benchmark file (``problem_id`` / ``question_id``)."""
    ident = str(sample.extra.get("original_id", sample.id))
    prefix = f"{sample.source}:"
    return ident[len(prefix):] if sample.source and ident.startswith(prefix) else ident


def _numeric_id(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def videor1_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row of Video-R1's ``eval_bench.py`` output for a prediction row."""
    sample = Sample.from_dict(row["sample"])
    output = row["output"]
    answer = first_answer_block(output)
    reward = row["scores"]["videor1-eval"]["accuracy"]
    out = {"problem_id": _numeric_id(original_id(sample)), "problem": sample.problem, "data_type": sample.data_type,
           "problem_type": sample.problem_type, "options": list(sample.options),
           "solution": f"<answer>{sample.answer}</answer>",
           "path": sample.video or (sample.images[0] if sample.images else ""),
           "data_source": sample.extra.get("data_source", sample.source),
           "output": output, "prediction": answer or output, "reward": reward, "correct": reward == 1.0}
    if row.get("thinking"):
        out["process"] = f"<think>{row['thinking']}</think>"
    return out


def videor1_final_acc(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Video-R1's ``final_acc``: mean reward over non-regression items (``mean_acc``) and over regression
    items (``mean_mra``, 0.0 when there are none), exactly as ``eval_bench.py`` splits them."""
    acc = [r["reward"] for r in rows if r["problem_type"] != "regression"]
    mra = [r["reward"] for r in rows if r["problem_type"] == "regression"]
    return {"mean_acc": sum(acc) / len(acc) if acc else 0.0, "mean_mra": sum(mra) / len(mra) if mra else 0.0}


def veripo_row(row: dict[str, Any]) -> dict[str, Any]:
    """One item of the JSON list VerIPO's ``calculate_score.py`` reads."""
    sample = Sample.from_dict(row["sample"])
    # problem_type is extra to VerIPO's fields: its scorer ignores it, ``veripo score`` reads it.
    question = {"question_id": original_id(sample), "question": sample.problem, "video_path": sample.video or "",
                "answer": sample.answer, "problem_type": sample.problem_type}
    if "processed_question" in sample.extra:
        question["processed_question"] = sample.extra["processed_question"]
    if sample.options:
        question["options"] = list(sample.options)
    return {"question_id": question["question_id"], "question": question, "ground_truth": sample.answer,
            "model_output": row["output"]}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _is_letter(gold: str) -> bool:
    return gold.isalpha() and gold.isupper()  # VerIPO's multiple-choice test


def veripo_export_files(rows: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """{file name: rows} of the VerIPO exports.

    VerIPO's scorer picks the rule for every non-letter answer of a file from its path: MRA when it contains
    ``vsi_bench``, math-verify otherwise; our ``veripo-eval`` profile picks it per item (MRA for
    ``regression``). So regression items go to a file whose name contains ``vsi_bench`` and other
    non-letter items to one whose name does not; letter answers may go with either. One file when that
    is possible (every published benchmark), two otherwise.
    """
    mra = [r for r in rows if r["sample"]["problem_type"] == "regression" and not _is_letter(r["sample"]["answer"])]
    rest = [r for r in rows if r not in mra]
    plain = key.replace("vsi_bench", "vsibench")
    if not mra:
        return {f"{plain}{VERIPO_EXPORT_SUFFIX}": rest}
    mra_name = f"{key if 'vsi_bench' in key else key + '.vsi_bench'}{VERIPO_EXPORT_SUFFIX}"
    if all(_is_letter(r["sample"]["answer"]) for r in rest):
        return {mra_name: rows}
    return {f"{plain}{VERIPO_EXPORT_SUFFIX}": rest, mra_name: mra}


def write_peer_exports(rows: list[dict[str, Any]], out_dir: Path, key: str) -> dict[str, list[str]]:
    """Write the Video-R1 and VerIPO exports of the ``ok`` rows; returns {"videor1": [name], "veripo": [names]}."""
    done = [r for r in rows if r.get("status") == STATUS_OK]
    videor1 = [videor1_row(r) for r in done]
    write_json_atomic(out_dir / VIDEOR1_EXPORT, {"results": videor1, "final_acc": [videor1_final_acc(videor1)]})
    veripo = veripo_export_files(done, key)
    for name, part in veripo.items():
        write_json_atomic(out_dir / name, [veripo_row(r) for r in part])
    return {"videor1": [VIDEOR1_EXPORT], "veripo": sorted(veripo)}
