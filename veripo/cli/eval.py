"""``veripo eval --model DIR --bench FILE [--bench FILE ...]``: evaluate a policy on benchmarks and print a
table of the metrics. See docs/evaluation.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from veripo.config import ModelConfig


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        model: Path = typer.Option(..., "--model", help="A local Qwen2.5-VL / Qwen2-VL model directory."),
        bench: list[Path] = typer.Option(..., "--bench", help="A benchmark file (Video-R1 / VerIPO eval JSON, "
                                         "JSONL) or synthetic dataset folder; repeat for several."),
        media_root: Path | None = typer.Option(None, "--media-root", help="Media paths resolve under it "
                                                  "(default: each file's folder)."),
        profile: str | None = typer.Option(None, "--profile", help="Headline scoring profile (default: the "
                                              "prompt's scorer: veripo-eval or videor1-eval)."),
        prompt: str = typer.Option("veripo", "--prompt", help="Prompt style: veripo ($X$ answers) or videor1."),
        out: Path | None = typer.Option(None, "--out", help="Output folder (default: eval/<model name>); "
                                           "re-running into it resumes."),
        limit: int | None = typer.Option(None, "--limit", help="Evaluate the first N questions of each file."),
        max_new_tokens: int = typer.Option(4096, "--max-new-tokens", help="Response cap (VerIPO: 4096)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Questions decoded together."),
        repetition_penalty: float = typer.Option(1.05, "--repetition-penalty", help="VerIPO: 1.05."),
        fps: float | None = typer.Option(None, "--fps", help="Override every benchmark's frame rate."),
        max_frames: int | None = typer.Option(None, "--max-frames", help="Override the frame cap (VerIPO 128, "
                                                 "Video-R1 32)."),
        max_pixels: int | None = typer.Option(None, "--max-pixels", help="Override pixels per frame."),
        max_prompt_tokens: int = typer.Option(ModelConfig.max_prompt_tokens, "--max-prompt-tokens", min=1, help="Longer prompts are "
                                              "skipped and counted (as missing media)."),
        judge: str = typer.Option("rule", "--judge", help="Consistency judge for the inconsistency rate: rule, hf, "
                                  "openai or none."),
        judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL (--judge openai)."),
        judge_model: str | None = typer.Option(None, "--judge-model", help="Served model name (openai) or local "
                                                  "model directory (hf)."),
        dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Decoded-frame cache folder."),
        workers: int = typer.Option(1, "--workers", min=1, max=64, help="CPU processes decoding: this one and "
                                    "N-1 spawned, each with a copy of the model and one torch thread, taking "
                                    "whole batches (the same predictions as one process)."),
    ) -> None:
        """Greedy-decode every question, score it with every profile, write predictions (our JSONL plus the
        Video-R1 and VerIPO formats) and metrics.json per benchmark; a killed run resumes where it stopped.
        Under torchrun / accelerate launch every process decodes a share of the questions and the first one
        judges and writes."""
        from rich.console import Console

        from veripo.data.loaders import DataError
        from veripo.eval.suite import (
            DEFAULT_PROFILE_FOR_PROMPT,
            SuiteOptions,
            evaluate_files,
        )
        from veripo.models.loading import load_policy
        from veripo.parallel import init_distributed
        from veripo.rewards import get_profile

        console = Console()

        def fail(message: str) -> None:
            typer.secho(f"error: {message}", fg="red", err=True)
            raise typer.Exit(2)

        if prompt not in DEFAULT_PROFILE_FOR_PROMPT:
            fail(f"--prompt {prompt!r} is not one of {sorted(DEFAULT_PROFILE_FOR_PROMPT)}")
        if profile is not None:
            try:
                get_profile(profile)
            except KeyError as e:
                fail(str(e.args[0]))
        if limit is not None and limit < 1:
            fail(f"--limit must be >= 1, got {limit}")
        if batch_size < 1 or max_new_tokens < 1:
            fail("--batch-size and --max-new-tokens must be >= 1")
        if judge not in ("rule", "hf", "openai", "none"):  # on every rank, before any of them waits for another
            fail(f"--judge {judge!r} is not one of rule, hf, openai, none")
        options = SuiteOptions(prompt=prompt, profile=profile, media_root=str(media_root) if media_root else None,
                               limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               repetition_penalty=repetition_penalty, fps=fps, max_frames=max_frames,
                               max_pixels=max_pixels, cache_dir=str(cache_dir) if cache_dir else None,
                               max_prompt_tokens=max_prompt_tokens)
        dist = init_distributed()  # one process unless launched with several
        if workers > 1 and (dist.world > 1 or _device(device) != "cpu"):
            fail(f"--workers {workers} works in one CPU process; under torchrun every process already decodes a "
                 "share, and on a GPU launch several processes instead")
        if not dist.is_main:
            options = dataclasses.replace(options, show_progress=False)
        try:
            policy = load_policy(model, dtype=dtype, device=_device(device))
        except ValueError as e:
            fail(str(e))
        out_dir = out or Path("eval") / model.resolve().name
        judge_fn = _make_judge(judge, judge_url, judge_model, out_dir, fail) if dist.is_main else None
        decode_workers = None
        if workers > 1:
            import torch

            from veripo.eval.workers import DecodeWorkers

            torch.set_num_threads(1)  # one core per process
            decode_workers = DecodeWorkers(workers - 1, model, dtype=dtype, batch_size=batch_size)
        try:
            results = evaluate_files(policy, bench, out_dir, options, judge=judge_fn,
                                     judge_name=judge if judge != "none" else None, dist=dist,
                                     workers=decode_workers)
        except (DataError, ValueError) as e:
            fail(str(e))
        finally:
            if decode_workers is not None:
                decode_workers.close()
        if not dist.is_main:
            return
        print_results(console, results)
        console.print(f"predictions and metrics in [bold]{out_dir}[/bold]")


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _make_judge(name: str, url: str | None, model: str | None, out_dir: Path, fail: Any) -> Any:
    """The verifier's judge as ``judge(samples, responses) -> labels`` (cached under ``out_dir``), or None."""
    if name == "none":  # the command has checked the name
        return None
    from veripo.config import VerifierConfig
    from veripo.verifier.judges import make_eval_judge

    try:
        return make_eval_judge(name, VerifierConfig(judge=name, judge_url=url, judge_model=model), out_dir)
    except ValueError as e:
        fail(str(e).replace("verifier.judge_url", "--judge-url").replace("verifier.judge_model", "--judge-model"))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_results(console: Any, results: dict[str, dict[str, Any]]) -> None:
    """A table of the headline metrics per benchmark, one of accuracy per problem type, and the ids of
    items whose media were missing."""
    from rich.table import Table

    table = Table(title="evaluation (accuracy, MRA, peer scores and rates in percent; lengths in tokens)")
    for column in ("benchmark", "n", "missing media", "profile", "accuracy", "MRA", "Video-R1 mean_acc",
                   "VerIPO acc", "response len", "thinking len", "format", "inconsistency"):
        table.add_column(column, justify="left" if column in ("benchmark", "profile") else "right")
    for name, m in results.items():
        peers = m.get("peer_scores") or {}
        table.add_row(name, str(m["n"]), str(m["n_missing_media"]), m["profile"], _pct(m["accuracy"]), _pct(m["mra"]),
                      _pct(peers.get("videor1-eval", {}).get("mean_acc")), _pct(peers.get("veripo-eval", {}).get("acc")),
                      _num(m["response_len"]), _num(m["thinking_len"]), _pct(m["format_rate"]),
                      _pct(m["inconsistency_rate"]))
    console.print(table)
    types = Table(title="accuracy per problem type (percent, n)")
    types.add_column("benchmark")
    kinds = sorted({t for m in results.values() for t in m["by_type"]})
    for kind in kinds:
        types.add_column(kind, justify="right")
    for name, m in results.items():
        types.add_row(name, *(f"{_pct(m['by_type'][k])} ({m['n_by_type'][k]})" if k in m["by_type"] else "-"
                              for k in kinds))
    if kinds:
        console.print(types)
    for name, m in results.items():
        if m["n_missing_media"]:
            ids = [item["id"] for item in m["missing_media"]]
            shown = ", ".join(ids[:5]) + (f", ... ({len(ids) - 5} more)" if len(ids) > 5 else "")
            console.print(f"[yellow]{name}: {len(ids)} items with missing media[/yellow] ({shown}); first reason: "
                          f"{m['missing_media'][0]['reason']}")
        if m.get("skipped_records"):
            console.print(f"[yellow]{name}: {len(m['skipped_records'])} records skipped[/yellow]: "
                          f"{m['skipped_records'][0]}")
