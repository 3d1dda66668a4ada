"""``veripo verify ROLLOUTS.jsonl``: the Rollout-Aware Verifier over a rollouts file; prints what failed
which check, the pairs of each type and the inconsistency rate, and writes verdicts, pairs and a summary.
See docs/verifier.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

JUDGES = ("rule", "hf", "openai")


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        rollouts: Path = typer.Argument(..., help="A rollouts.jsonl written by a GRPO stage (or by hand)."),
        samples: Path | None = typer.Option(
            None, "--samples", help="The questions the rollouts answer (any dataset file `veripo data` reads, or a "
            "samples JSONL); rollouts name them by sample_id. Default: the run's own data: for "
            "RUN/stages/NN-name/rollouts.jsonl, the data sources of RUN/config.yaml (two levels up), loaded as "
            "the run loaded them; else a samples.jsonl beside ROLLOUTS."),
        judge: str | None = typer.Option(None, "--judge", help="Consistency judge: rule, hf or openai "
                                            "(default: verifier.judge of the config, else rule)."),
        judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL, e.g. "
                                                "http://127.0.0.1:8000/v1 (--judge openai)."),
        judge_model: str | None = typer.Option(None, "--judge-model", help="Served model name (openai; "
                                                  "transformers serve wants the served path) or a local model "
                                                  "directory (hf)."),
        out: Path | None = typer.Option(None, "--out", help="Where to write the pairs (default: "
                                           "OUT_DIR/pairs.jsonl)."),
        out_dir: Path | None = typer.Option(None, "--out-dir", help="Folder for verdicts.jsonl, "
                                               "verify_summary.json and the judge cache (default: the folder of "
                                               "--out, else verify/ beside ROLLOUTS). Re-running asks the judge "
                                               "nothing twice."),
        config: Path | None = typer.Option(None, "--config", help="A run config; its verifier and "
                                              "rewards.profile sections are used (default: the run's "
                                              "config.yaml two levels up from ROLLOUTS, if any)."),
        profile: str | None = typer.Option(None, "--profile", help="Scoring profile of the accuracy check "
                                              "(default: rewards.profile of the config, as in GRPO)."),
        overrides: list[str] | None = typer.Option(None, "--set", help="A dotted override, e.g. "
                                                      "verifier.max_pairs_per_question=4; repeatable."),
        tokenizer: Path | None = typer.Option(None, "--tokenizer", help="A tokenizer directory to count "
                                                 "thinking tokens (default: the rollouts' own counts, else "
                                                 "whitespace words)."),
    ) -> None:
        """Check every rollout (format, accuracy, thinking length, repetition, truncation, reflection),
        judge the consistency of its thinking and answer, build consistency / reflective / penalty pairs.

        The API key of an OpenAI-compatible judge is read from the environment variable named by
        verifier.api_key_env (default VERIPO_JUDGE_API_KEY) and is never printed or written."""
        from rich.console import Console

        from veripo.config import ConfigError, RunConfig, load
        from veripo.data.jsonl import JsonlError
        from veripo.rewards.profiles import profile_for
        from veripo.verifier.run import load_rollouts, verify_rollouts

        def fail(message: str) -> None:
            typer.secho(f"error: {message}", fg="red", err=True)
            raise typer.Exit(2)

        if judge is not None and judge not in JUDGES and ":" not in judge:
            fail(f"--judge {judge!r} is not one of {', '.join(JUDGES)} or an import path 'package.module:JudgeClass'")
        if not rollouts.is_file():
            fail(f"{rollouts}: no such rollouts file")
        run_config = find_run_config(rollouts)
        try:
            run_cfg = load(RunConfig, config or run_config, overrides or [])
        except ConfigError as e:
            hint = ("" if config is not None or run_config is None else
                    " (the config of the run holding ROLLOUTS; pass --config FILE and --samples FILE to verify "
                    "without it)")
            fail(f"{e}{hint}")
        if profile is not None:
            from veripo.rewards.profiles import PROFILES

            if profile not in PROFILES:
                fail(f"--profile {profile!r} is not one of {', '.join(sorted(PROFILES))}")
        changes = {k: v for k, v in (("judge", judge), ("judge_url", judge_url), ("judge_model", judge_model))
                   if v is not None}
        base, stage_note = run_cfg.verifier, ""
        if config is None and run_config is not None:
            base, stage_note = _verify_stage_settings(run_cfg, rollouts, overrides or [])
        cfg = dataclasses.replace(base, **changes)
        try:
            records = load_rollouts(rollouts)
            by_id, samples_from = _load_samples(rollouts, samples, run_config)
        except (JsonlError, ValueError, OSError) as e:
            fail(str(e))
        out_dir = out_dir or (out.parent if out is not None else rollouts.parent / "verify")
        tok = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tokenizer))
        console = Console()
        console.print(f"{len(by_id)} questions from {samples_from}{stage_note}")
        try:
            rewards = dataclasses.replace(run_cfg.rewards, profile=profile) if profile else run_cfg.rewards
            summary = verify_rollouts(records, by_id, cfg, out_dir, profile=profile_for(rewards),
                                      judge_name=cfg.judge, tokenizer=tok, show_progress=True, pairs_path=out)
        except (ValueError, KeyError) as e:
            fail(str(e.args[0] if e.args else e).replace("verifier.judge_url", "--judge-url")
                 .replace("verifier.judge_model", "--judge-model"))
        print_summary(console, summary.to_dict(), rollouts.name)
        console.print(f"pairs in [bold]{out or out_dir / 'pairs.jsonl'}[/bold]; verdicts and verify_summary.json "
                      f"in [bold]{out_dir}[/bold]")


def find_run_config(rollouts: Path) -> Path | None:
    """The ``config.yaml`` of the run a stage's rollouts belong to (``RUN/stages/NN-name/rollouts.jsonl``:
    two levels above the rollouts' folder), or None for a rollouts file outside a run directory."""
    parents = rollouts.resolve().parents
    if len(parents) < 3:
        return None
    candidate = parents[2] / "config.yaml"
    return candidate if candidate.is_file() else None


def _verify_stage_settings(run_cfg: Any, rollouts: Path, overrides: list[str]) -> tuple[Any, str]:
    """The verifier section the run's own verify stage would use on these rollouts: the first ``verify``
    stage planned after the stage whose folder (``NN-name``, NN its 0-based place in the plan) holds them,
    with that stage's ``verifier`` overrides, then the command line's ``--set verifier.*`` on top; the run's
    base section (overrides already applied) when there is none."""
    import dataclasses
    import re

    from veripo.config import apply_overrides
    from veripo.recipes.veripo import plan

    stages = plan(run_cfg)
    found = re.match(r"(\d+)-", rollouts.resolve().parent.name)
    if found is None or int(found.group(1)) >= len(stages):
        return run_cfg.verifier, ""
    for stage in stages[int(found.group(1)) + 1:]:
        if stage.kind == "verify":
            mine = apply_overrides({}, [o for o in overrides if o.startswith("verifier.")]).get("verifier", {})
            stage = dataclasses.replace(stage, verifier={**stage.verifier, **mine})
            return run_cfg.section_for(stage, "verifier"), f"; verifier settings of stage {stage.name!r}"
    return run_cfg.verifier, ""


def _run_samples(run_config: Path) -> dict[str, Any]:
    """Every question of a run's data sources (top-level, stages and loop), loaded as the run loaded them
    (``SampleStore``: same paths, ids, and synthetic data regenerated under the run if it is gone)."""
    from rich.console import Console

    from veripo.config import RunConfig, load
    from veripo.recipes.run_dir import RunDir
    from veripo.recipes.sources import SampleStore

    cfg = load(RunConfig, run_config)
    store = SampleStore(cfg, RunDir(run_config.parent), Console(stderr=True))
    sources = list(cfg.data) + [d for stage in (*cfg.stages, *cfg.loop) for d in stage.data]
    for source in sources:  # the store loads each distinct source once
        store.load(source)
    return {s.id: s for s in store.all_samples()}


def _load_samples(rollouts: Path, samples: Path | None, run_config: Path | None) -> tuple[dict[str, Any], str]:
    """Sample id -> sample and where they came from: --samples, else the run's data (its config.yaml two
    levels up), else the samples.jsonl beside the rollouts."""
    from veripo.data.jsonl import read_jsonl
    from veripo.data.loaders import load_samples
    from veripo.data.records import Sample

    if samples is None:
        if run_config is not None:
            return _run_samples(run_config), f"the data of {run_config}"
        beside = rollouts.parent / "samples.jsonl"
        if not beside.is_file():
            raise ValueError(f"{rollouts}: not in a run directory (no config.yaml two levels up) and no "
                             "samples.jsonl beside it; pass the questions with --samples FILE")
        return {s.id: s for s in read_jsonl(beside, Sample)}, str(beside)
    if samples.suffix == ".jsonl":
        try:
            return {s.id: s for s in read_jsonl(samples, Sample)}, str(samples)
        except (TypeError, ValueError):
            pass  # not our samples JSONL: a dataset file in another format
    return {s.id: s for s in load_samples(samples, require_media=False).samples}, str(samples)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_summary(console: Any, data: dict[str, Any], title: str) -> None:
    """The checks table (rollouts failing each), pairs per type, skipped groups, the inconsistency rate and
    the judge's counters (parse failures, request failures, fallbacks, cache hits)."""
    from rich.table import Table

    n = data["checked"] if "checked" in data else data["rollouts"]
    table = Table(title=f"{title}: {data['rollouts']} rollouts, judge {data['judge']}")
    table.add_column("check")
    table.add_column("failing", justify="right")
    table.add_column("share", justify="right")
    for check in ("format", "accuracy", "repetition", "truncation", "consistency"):
        failing = data["failed"].get(check, 0)
        table.add_row(check, str(failing), _pct(failing / n if n else None))
    labels = data["consistency"]
    table.add_row("consistency unknown", str(labels.get("unknown", 0)),
                  _pct(labels.get("unknown", 0) / n if n else None), end_section=True)
    for kind, count in data["pairs"].items():
        table.add_row(f"pairs: {kind}", str(count), "")
    for reason, count in sorted(data["skipped_groups"].items()):
        table.add_row(f"groups skipped: {reason.replace('_', ' ')}", str(count), "")
    table.add_row("inconsistency rate (judged)", "", _pct(data["inconsistency_rate"]), style="bold")
    table.add_row("inconsistency rate (all, unknown = not)", "", _pct(data["inconsistency_rate_all"]))
    console.print(table)
    if data.get("missing_samples"):
        console.print(f"[yellow]{data['missing_samples']} rollouts name a sample_id not in the samples: "
                      "not checked[/yellow]")
    counters = {k: v for k, v in data.get("judge_counters", {}).items() if v}
    if counters:
        console.print("judge counters (distinct items asked): "
                      + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    if data.get("judge_skipped"):
        console.print(f"{data['judge_skipped']} rollout(s) without thinking or answer: unknown, judge not asked")
    console.print(f"thinking length counted by: {data.get('thinking_tokens_by', '?')}")
