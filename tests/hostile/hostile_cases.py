"""The hostile-input corpus: each case is a small input and the outcome veripo promises for it
(docs/reliability.md): the exit code, fragments of the message, and (checked by hashes for every case) that
no file it was handed changes, and that a failing command creates nothing but what ``may_change`` allows.

A case's ``setup(env)`` writes its inputs under ``env.root`` and returns the ``veripo`` arguments; ``patch``
replaces a piece of veripo for the case (a failing writer); ``run`` replaces the in-process command for cases
that need a real process (signals); ``check`` asserts what else must hold afterwards.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from hostile_env import DONE, TEXT_SAMPLE, Env


@dataclass(frozen=True)
class Case:
    id: str
    klass: str  # the row of docs/reliability.md's corpus table
    setup: Callable[[Env], list[str]]
    code: int = 2
    says: tuple[str, ...] = ()  # fragments of stdout + stderr
    may_change: tuple[str, ...] = ()  # globs (relative to the case folder) of files the command may write
    check: Callable[[Env, Any], None] | None = None
    patch: Callable[[Any, Env], None] | None = None  # (pytest monkeypatch, env)
    run: Callable[[Env, list[str]], tuple[int, str]] | None = None  # instead of the in-process command
    slow: bool = False


CASES: list[Case] = []


def case(*args: Any, **kwargs: Any) -> None:
    CASES.append(Case(*args, **kwargs))


def config_show(body: str, *overrides: str) -> Callable[[Env], list[str]]:
    return lambda env: ["config", "show", str(env.write("show.yaml", body)), *overrides]


def run_config(body: str, *extra: str, model: bool = False) -> Callable[[Env], list[str]]:
    return lambda env: ["run", str(env.config(body, model=model)), *extra]


NO_RUN = ("runs",)  # nothing may appear under runs/ (a failing run writes nothing)

# ----------------------------------------------------------------------------------------------- config values
for key, value, says in [
    ("grpo.lr", ".inf", "expected a finite number"),
    ("grpo.lr", ".nan", "expected a finite number"),
    ("sft.lr", "-1e-4", "expected a number above 0"),
    ("dpo.beta", "0", "expected a number above 0"),
    ("sft.batch_size", "0", "expected a count of at least 1"),
    ("sft.batch_size", "-8", "expected a count of at least 1"),
    ("sft.max_steps", "0", "expected a count of at least 1"),
    ("sft.epochs", "0", "expected a number above 0"),
    ("grpo.max_steps", "0", "expected a count of at least 1"),
    ("grpo.global_batch_size", "0", "expected a count of at least 1"),
    ("grpo.rollout_batch_size", "-1", "expected a count of at least 1"),
    ("dpo.global_batch_size", "0", "expected a count of at least 1"),
    ("rollout.temperature", "0", "expected a number above 0"),
    ("rollout.num_generations", "0", "expected a count of at least 1"),
    ("rollout.max_new_tokens", "0", "expected a count of at least 1"),
    ("rollout.top_p", "1.5", "expected a share between 0 and 1"),
    ("media.fps", "0", "expected a number above 0"),
    ("media.max_pixels", "-5", "expected a count of at least 1"),
    ("verifier.timeout_s", "-1", "expected a number above 0"),
    ("verifier.retries", "-2", "expected a number of at least 0"),
    ("discard_easy_prob", "1.5", "expected a share between 0 and 1"),
    ("max_bad_share", "-0.1", "expected a share between 0 and 1"),
    ("model.max_prompt_tokens", "0", "expected a count of at least 1"),
    ("grpo.save_every_s", "0", "expected a number above 0"),
    ("grpo.warmup_steps", "-1", "expected a number of at least 0"),
    ("seed", "-5", "expected a number of at least 0"),
    ("grpo.dual_clip", "0.5", "dual-clip bound"),
    ("grpo.kl_coef", ".inf", "expected a finite number"),
]:
    name = f"config-{key}={value}"
    section, _, leaf = key.rpartition(".")
    if section == "model":  # the case folder's config already has a model section
        setup = (lambda keys: lambda env: ["run", str(env.config(model_keys=keys))])(f"{leaf}: {value}")
    elif not section:  # top-level keys as overrides (the case folder's config sets seed)
        setup = (lambda override: lambda env: ["run", str(env.config()), override])(f"{key}={value}")
    else:
        setup = run_config(f"{section}: {{{leaf}: {value}}}\n")
    case(name, "config values", setup, says=(f"config key '{key}'", says))

case("config-stage-override-lr-inf", "config values",
     run_config("stages:\n  - {name: g, kind: grpo, grpo: {lr: .inf}}\n"), says=("stages[0].grpo.lr", "finite"))
case("config-reward-weight-nan", "config values", config_show("rewards: {weights: {accuracy: .nan}}\n"),
     says=("rewards.weights.accuracy", "finite"))
case("config-accuracy-band-reversed", "config values", config_show("grpo: {accuracy_band: [0.9, 0.1]}\n"),
     says=("grpo.accuracy_band",))
case("config-global-batch-not-dividing", "config values",
     config_show("grpo: {rollout_batch_size: 3, global_batch_size: 4}\nrollout: {num_generations: 3}\n"),
     says=("grpo.global_batch_size", "must divide"))
case("config-num-generations-1-warns", "config values", config_show("rollout: {num_generations: 1}\ngrpo: {global_batch_size: 8}\n"),
     code=0, says=("warning", "num_generations' is 1", "advantage is 0"))

# ----------------------------------------------------------------------------------------------- config files
case("config-typo-key", "config files", config_show("grpo: {lrr: 1e-6}\n"), says=("unknown config key 'grpo.lrr'", "Did you mean 'lr'"))
case("config-wrong-type", "config files", config_show("sft: {batch_size: eight}\n"), says=("sft.batch_size", "expected int"))
case("config-not-utf8", "config files",
     lambda env: ["config", "show", str(env.write("latin1.yaml", "name: caf\xe9\n".encode("latin-1")))],
     says=("latin1.yaml", "not valid UTF-8"))
case("config-utf8-bom-accepted", "config files",
     lambda env: ["config", "show", str(env.write("bom.yaml", "\ufeffname: bom-run\n".encode("utf-8")))],
     code=0, says=("name: bom-run",))
case("config-invalid-yaml", "config files", config_show("grpo: {lr: [1e-6\n"), says=("invalid YAML", "line"))
case("config-top-level-list", "config files", config_show("- a\n- b\n"), says=("top level must be a mapping",))
case("config-python-tag-refused", "config files",
     config_show("name: !!python/object/apply:os.system ['touch pwned']\n"), says=("invalid YAML",),
     check=lambda env, r: _assert(not env.path("pwned").exists(), "the YAML tag ran a command"))
case("config-deep-nesting", "config files", lambda env: ["config", "show", str(env.write("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"))],
     says=("deep.yaml",))
case("config-is-a-folder", "config files", lambda env: ["config", "show", str(env.root)], says=("cannot read config file", "Is a directory"))
case("config-missing-file", "config files", lambda env: ["config", "show", str(env.path("nope.yaml"))], says=("nope.yaml",))
case("config-empty-file-is-defaults", "config files", lambda env: ["config", "show", str(env.write("empty.yaml", ""))],
     code=0, says=("name: veripo",))
case("config-set-malformed-yaml", "config files", lambda env: ["config", "show", "grpo.lr=[1e-6,"], says=("override", "not valid YAML"))
case("config-set-empty-key", "config files", lambda env: ["config", "show", "=5"], says=("empty key",))
case("config-set-into-a-value", "config files", lambda env: ["config", "show", "name=x", "name.y=1"], says=("is a value, not a section",))
case("config-unregistered-policy-loss", "config files", run_config("grpo: {policy_loss: clipped_typo}\n"),
     says=("grpo.policy_loss", "not a registered"))
case("config-unknown-stage-kind", "config files", config_show("stages:\n  - {name: e, kind: eval}\n"), says=("stages[0].kind",))

# ------------------------------------------------------------------------------------------ run directories


def _plan_config(env: Env, stages: str, model: bool = False) -> str:
    return env.config(stages, model=model).read_text(encoding="utf-8")


def _resume(env: Env, *extra: str) -> list[str]:
    return ["run", "--resume", str(env.path("run")), *extra]


def _drifted(env: Env) -> list[str]:
    text = _plan_config(env, "stages:\n  - {name: sft, kind: sft}\nsft: {lr: 1.0e-4}\n")
    root = env.run_dir(text)
    (root / "config.yaml").write_text(text.replace("lr: 1.0e-4", "lr: 1.0e-2"), encoding="utf-8")
    return _resume(env)


case("resume-config-edited-refused", "run directories", _drifted, says=("was edited since the run started", "sft.lr", "--allow-config-change"))


def _drift_allowed(env: Env) -> list[str]:
    env.write_jsonl("run/stages/00-verify/pairs.jsonl", [], kind="pair")
    text = _plan_config(env, "stages:\n  - {name: verify, kind: verify}\n", model=True)
    root = env.run_dir(text, completed=[{"index": 0, "name": "verify", "kind": "verify", "steps": 0, "global_step": 0,
                                         "outputs": {}}])
    (root / "config.yaml").write_text(text.replace("seed: 0", "seed: 7"), encoding="utf-8")
    return _resume(env, "--allow-config-change")


def _drift_recorded(env: Env, result: Any) -> None:
    state = json.loads(env.path("run/state.json").read_text())
    change = state["config_changes"][-1]
    assert "-seed: 0" in change["diff"] and "+seed: 7" in change["diff"], change
    assert state["config"]["sha256"] == change["to_sha256"]


case("resume-config-edited-allowed-and-recorded", "run directories", _drift_allowed, code=0,
     says=("config changed since the run started", "+seed: 7"), may_change=("run/**",), check=_drift_recorded)
case("resume-not-a-run", "run directories", lambda env: ["run", "--resume", str(env.write("x/readme.txt", "hi").parent)],
     says=("not a veripo run directory",))
case("resume-missing-folder", "run directories", lambda env: ["run", "--resume", str(env.path("gone"))], says=("no such run directory",))


def _state(text: str | bytes) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        env.run_dir(_plan_config(env, "stages:\n  - {name: sft, kind: sft}\n"))
        env.write("run/state.json", text)
        return _resume(env)
    return setup


case("resume-state-not-json", "run directories", _state('{"completed": [ '), says=("state.json", "not valid JSON"))
case("resume-state-a-list", "run directories", _state("[1, 2]"), says=("state.json", "corrupt run state", "expected a JSON object"))
case("resume-state-entry-without-index", "run directories", _state('{"completed": [{"name": "sft"}]}'),
     says=("state.json", "integer 'index'"))
case("resume-state-not-utf8", "run directories", _state(b'{"completed": "\xff"}'), says=("state.json", "not valid UTF-8"))


def _checkpoint_deleted(env: Env) -> list[str]:
    text = _plan_config(env, "stages:\n  - {name: sft, kind: sft}\n  - {name: sft2, kind: sft}\n")
    env.run_dir(text, completed=[{"index": 0, "name": "sft", "kind": "sft", "steps": 3, "global_step": 3, "outputs": {}}])
    env.write("run/stages/00-sft/metrics.jsonl", "")
    return _resume(env)


case("resume-finished-checkpoint-deleted", "run directories", _checkpoint_deleted, says=("has no checkpoint left", "00-sft"))


def _latest_corrupt(env: Env) -> list[str]:
    args = _checkpoint_deleted(env)
    env.write("run/stages/00-sft/latest.json", '["ckpt-000003"]')
    return args


case("resume-latest-json-corrupt", "run directories", _latest_corrupt, says=("latest.json", "corrupt"))


def _locked(env: Env) -> list[str]:
    env.run_dir(_plan_config(env, "stages:\n  - {name: sft, kind: sft}\n"))
    fd = os.open(env.path("run/.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242")
    env.notes["fd"] = fd  # another process's lock (a second open file description), released after the case
    return _resume(env)


case("resume-while-another-process-runs-there", "run directories", _locked, says=("another veripo process", "4242"))
case("resume-with-overrides-refused", "run directories", lambda env: _resume(env, "seed=3"), says=("drop the config",))
case("allow-config-change-without-resume", "run directories", lambda env: ["run", "--allow-config-change"], says=("goes with --resume",))


def _output_dir_is_a_file(env: Env) -> list[str]:
    env.write("out.txt", "precious")
    return ["run", str(env.write("c.yaml", f"output_dir: {env.path('out.txt')}\nmodel: {{build_tiny: tiny}}\n"))]


case("output-dir-is-a-file", "run directories", _output_dir_is_a_file, says=("out.txt", "not a folder"))


def _output_dir_under_a_file(env: Env) -> list[str]:
    env.write("out.txt", "precious")
    return ["run", str(env.write("c.yaml", f"output_dir: {env.path('out.txt')}/runs\nmodel: {{build_tiny: tiny}}\n"))]


case("output-dir-under-a-file", "run directories", _output_dir_under_a_file, says=("out.txt",))


def _output_dir_unwritable(env: Env) -> list[str]:
    if os.geteuid() == 0:  # root writes through permission bits: a folder of a pseudo file system refuses it
        target = "/sys/veripo-hostile-runs"
    else:
        folder = env.root / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        target = str(folder / "runs")
    return ["run", str(env.write("c.yaml", f"output_dir: {target}\nmodel: {{build_tiny: tiny}}\n"))]


case("output-dir-unwritable", "run directories", _output_dir_unwritable, says=("runs",))

# --------------------------------------------------------------------------------------------------- data files


def inspect(name: str, content: str | bytes | Callable[[Env], Path], *extra: str) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        path = content(env) if callable(content) else env.write(name, content)
        return ["data", "inspect", str(path), *extra]
    return setup


case("data-not-utf8", "data files", inspect("d.json", '[{"problem": "caf\xe9"}]'.encode("latin-1")), says=("d.json", "not valid UTF-8"))
case("data-utf16", "data files", inspect("d.json", json.dumps([TEXT_SAMPLE]).encode("utf-16")), says=("d.json", "not valid UTF-8"))
case("data-invalid-json", "data files", inspect("d.json", '[{"problem": '), says=("d.json", "invalid JSON"))
case("data-empty-file", "data files", inspect("d.json", ""), says=("d.json", "invalid JSON"))
case("data-deep-json", "data files", inspect("d.json", "[" * 100000 + "]" * 100000), says=("d.json", "nested too deeply"))
case("data-top-level-number", "data files", inspect("d.json", "42"), says=("expected a JSON list",))
case("data-binary-garbage", "data files", inspect("d.json", bytes(range(256)) * 4), says=("d.json",))
case("data-missing-file", "data files", inspect("d.json", lambda env: env.path("nope.json")), says=("nope.json", "not found"))
case("data-folder-without-dataset", "data files", inspect("", lambda env: env.write("f/readme.txt", "x").parent), says=("must hold dataset.json",))
case("data-bad-format-option", "data files", inspect("d.json", json.dumps([TEXT_SAMPLE]), "--format", "csv"), says=("format 'csv'",))
case("data-record-not-an-object", "data files", inspect("d.json", json.dumps([TEXT_SAMPLE, 7, "x"])), code=0,
     says=("1 samples, 2 skipped", "expected a JSON object"))
case("data-null-problem-skipped", "data files", inspect("d.json", json.dumps([TEXT_SAMPLE, {**TEXT_SAMPLE, "problem": None}])),
     code=0, says=("1 samples, 1 skipped", "field 'problem'"))
case("data-unknown-problem-type", "data files", inspect("d.json", json.dumps([{**TEXT_SAMPLE, "problem_type": "essay"}])),
     code=0, says=("0 samples, 1 skipped", "unknown problem type"))
case("data-unreachable-mc-gold", "data files",
     inspect("d.json", json.dumps([{**TEXT_SAMPLE, "problem_type": "multiple choice", "options": ["A. 4", "B. 5"],
                                    "solution": "<answer>E</answer>"}])),
     code=0, says=("0 samples, 1 skipped", "not one of the option letters"))
case("data-empty-gold", "data files", inspect("d.json", json.dumps([{**TEXT_SAMPLE, "solution": "<answer> </answer>"}])),
     code=0, says=("0 samples, 1 skipped", "gold answer is empty"))
case("data-repeated-id-numbered", "data files",
     inspect("d.json", json.dumps([{**TEXT_SAMPLE, "problem_id": "x"}, {**TEXT_SAMPLE, "problem_id": "x"}])),
     code=0, says=("2 samples, 0 skipped",))
case("data-numbered-id-collides-with-real-id", "data files",
     inspect("d.json", json.dumps([{**TEXT_SAMPLE, "problem_id": "x"}, {**TEXT_SAMPLE, "problem_id": "x"},
                                   {**TEXT_SAMPLE, "problem_id": "x#2"}])),
     says=("record 1", "field 'id'", "'d:x#2' is the id of record 2"))
case("data-jsonl-sample-wrong-type", "data files",
     inspect("d.jsonl", json.dumps({"id": "a", "problem": "q", "problem_type": "numerical", "answer": "1", "options": "A. x"}) + "\n"),
     code=0, says=("0 samples, 1 skipped", "field 'options'"))
case("data-jsonl-torn-last-line", "data files",
     inspect("d.jsonl", json.dumps({"id": "a", "problem": "q", "problem_type": "numerical", "answer": "1"}) + '\n{"id": "b", "prob'),
     code=0, says=("1 samples, 1 skipped", "torn last line"))
case("data-multi-megabyte-field-truncated", "data files",
     inspect("d.json", json.dumps([{**TEXT_SAMPLE, "problem": "why " * 750_000}])), code=0,
     says=("more characters",), check=lambda env, r: _assert(len(r.output) < 20_000, f"printed {len(r.output)} characters"))
case("data-ten-thousand-options", "data files",
     inspect("d.json", json.dumps([{**TEXT_SAMPLE, "problem_type": "multiple choice", "options": [f"A. {i}" for i in range(10_000)],
                                    "solution": "<answer>A</answer>"}])), code=0,
     says=("more options",), check=lambda env, r: _assert(len(r.output) < 20_000, f"printed {len(r.output)} characters"))
case("data-media-path-escapes-root", "data files",
     inspect("d.json", json.dumps([{**TEXT_SAMPLE, "data_type": "image", "path": "../../../../etc/passwd.png"}])), code=0,
     says=("escapes the media root",))


def _symlink_escape(env: Env) -> Path:
    outside = env.write("outside/secret.png", b"\x89PNG not really")
    (env.root / "data").mkdir()
    (env.root / "data" / "img.png").symlink_to(outside)
    return env.write_json("data/d.json", [{**TEXT_SAMPLE, "data_type": "image", "path": "img.png"}])


case("data-symlinked-media-escapes-root", "data files", inspect("", _symlink_escape), code=0, says=("escapes the media root",))


def _symlinked_file(env: Env) -> Path:
    real = env.samples("real.json", n=2)
    (env.root / "link.json").symlink_to(real)
    return env.root / "link.json"


case("data-symlinked-file-reads", "data files", inspect("", _symlinked_file), code=0, says=("2 samples, 0 skipped",))
case("data-unicode-file-name", "data files", inspect("", lambda env: env.samples("données ✓.json", n=1)), code=0, says=("1 samples",))
case("data-make-synthetic-into-a-file", "data files",
     lambda env: ["data", "make-synthetic", str(env.write("taken", "x")), "--n", "2", "--kinds", "text"], says=("taken",))
case("data-make-synthetic-negative-n", "data files",
     lambda env: ["data", "make-synthetic", str(env.path("out")), "--n", "-1", "--kinds", "text"], says=("--n",))

# ---------------------------------------------------------------------------------------------------- scoring
case("score-a-folder", "scoring", lambda env: ["score", str(env.root)], says=("is a folder",))
case("score-missing-file", "scoring", lambda env: ["score", str(env.path("nope.json"))], says=("nope.json", "not found"))
case("score-negative-workers", "scoring", lambda env: ["score", str(env.write("p.json", "[]")), "--workers", "-3"], says=("--workers",))
case("score-zero-timeout", "scoring", lambda env: ["score", str(env.write("p.json", "[]")), "--timeout", "0"], says=("--timeout",))
case("score-unknown-profile", "scoring", lambda env: ["score", str(env.write("p.json", "[]")), "--profile", "best"], says=("best",))
case("score-not-utf8", "scoring", lambda env: ["score", str(env.write("p.json", b'[{"output": "\xff"}]'))], says=("p.json", "not valid UTF-8"))
case("score-deep-json", "scoring", lambda env: ["score", str(env.write("p.json", "[" * 100000 + "]" * 100000))], says=("nested too deeply",))
case("score-record-unknown-shape", "scoring", lambda env: ["score", str(env.write_json("p.json", [{"foo": 1}]))], says=("record 0", "unknown record shape"))
case("score-rollout-without-samples", "scoring", lambda env: ["score", str(env.rollouts(with_samples=False))], says=("--samples",))
case("score-rollout-text-wrong-type", "scoring",
     lambda env: ["score", str(env.write("r.jsonl", json.dumps({"id": "q/0/0", "sample_id": "q", "group_index": 0, "text": 5}) + "\n")),
                  "--samples", str(env.write("s.jsonl", json.dumps({"id": "q", "problem": "?", "problem_type": "numerical", "answer": "5"}) + "\n")),
                  "--workers", "0"],
     says=("record 0", "field 'text'"))
case("score-null-output-scores-zero", "scoring",
     lambda env: ["score", str(env.write_json("p.json", [{"problem_id": 1, "problem_type": "numerical", "solution": "<answer>5</answer>",
                                                         "output": None}])), "--workers", "0"],
     code=0, says=("0.00",))

# ------------------------------------------------------------------------------------------------ verify / DPO
case("verify-rollout-text-null", "verify and DPO", lambda env: ["verify", str(env.rollouts(texts=("5", None)))],
     says=("rollouts.jsonl", "field 'text'", "null"))
case("verify-duplicate-rollout-ids", "verify and DPO", lambda env: ["verify", str(env.rollouts(ids=("q/0/0", "q/0/0")))],
     says=("record 2", "'q/0/0' is also the id of record 1"))
case("verify-group-index-text", "verify and DPO",
     lambda env: ["verify", str(env.write("r.jsonl", json.dumps({"id": "a", "sample_id": "q", "group_index": "0", "text": "x"}) + "\n")),
                  "--samples", str(env.rollouts(name="s/rollouts.jsonl").parent / "samples.jsonl")],
     says=("r.jsonl:1", "field 'group_index'"))
case("verify-missing-rollouts", "verify and DPO", lambda env: ["verify", str(env.path("nope.jsonl"))], says=("no such rollouts file",))
case("verify-rollouts-not-json", "verify and DPO",
     lambda env: ["verify", str(env.write("r/rollouts.jsonl", "not json\nnot json either\n")), "--samples", str(env.samples())],
     says=("rollouts.jsonl:1", "invalid JSON"))
case("verify-unknown-sample-ids-counted", "verify and DPO",
     lambda env: ["verify", str(env.rollouts()), "--samples", str(env.write_jsonl("other.jsonl", [
         {"id": "z", "problem": "?", "problem_type": "numerical", "answer": "1"}], kind="sample"))],
     code=0, says=("2 rollouts name a sample_id not in the samples",), may_change=("verify/**",))


def _pairs(rows: list[dict[str, Any]]) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        env.samples()
        return ["dpo", str(env.config("data: [{path: " + str(env.path("samples.json")) + "}]\n")),
                "--pairs", str(env.write_jsonl("pairs.jsonl", rows, kind="pair"))]
    return setup


PAIR = {"id": "p0", "sample_id": "samples:0", "pair_type": "consistency", "chosen": DONE.format(5), "rejected": DONE.format(6)}
case("dpo-pair-chosen-null", "verify and DPO", _pairs([{**PAIR, "chosen": None}]), says=("pairs.jsonl:2", "field 'chosen'"), may_change=())
case("dpo-pair-type-unknown", "verify and DPO", _pairs([{**PAIR, "pair_type": "vibes"}]), says=("field 'pair_type'",))
case("dpo-duplicate-pair-ids", "verify and DPO", _pairs([PAIR, PAIR]), says=("'p0' is also the id of record 1",))
case("dpo-pairs-missing", "verify and DPO", lambda env: ["dpo", str(env.config()), "--pairs", str(env.path("none.jsonl"))],
     says=("none.jsonl", "no such pairs file"))
case("dpo-without-pairs", "verify and DPO", lambda env: ["dpo", str(env.config())], says=("needs --pairs",))


def _disk_full(monkeypatch: Any, env: Env) -> None:
    def full(fd: int, payload: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("veripo.data.jsonl._write_all", full)


case("verify-disk-full", "faults", lambda env: ["verify", str(env.rollouts()), "--out-dir", str(env.path("v"))],
     says=("no space left on the device",), patch=_disk_full, may_change=("v/**",))

# ----------------------------------------------------------------------------------------------- judge servers


class _Server:
    """A loopback HTTP server whose handler is ``behave(handler)``; stopped when the case ends."""

    def __init__(self, behave: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    behave(self)
                except OSError:
                    pass  # the client gave up

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _drip_body(handler: BaseHTTPRequestHandler) -> None:
    reply = json.dumps({"choices": [{"message": {"content": "VERDICT: CONSISTENT"}}]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(reply)))
    handler.end_headers()
    for byte in reply:  # one byte every 0.3 s: each read is quick, the whole reply takes 20 s
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.3)


def _drip_headers(handler: BaseHTTPRequestHandler) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.3)


def _status(code: int) -> Callable[[BaseHTTPRequestHandler], None]:
    return lambda handler: handler.send_error(code, "scripted")


def _garbage(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "8")
    handler.end_headers()
    handler.wfile.write(b"<html>!!")


def judged(behave: Callable[[BaseHTTPRequestHandler], None] | None) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        if behave is None:  # nothing listens on the port
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        else:
            server = _Server(behave)
            env.notes["close"] = server.close
            url = server.url
        env.notes["started"] = time.monotonic()
        return ["verify", str(env.rollouts()), "--judge", "openai", "--judge-url", url, "--judge-model", "m",
                "--set", "verifier.timeout_s=1", "--set", "verifier.retries=1", "--out-dir", str(env.path("v"))]
    return setup


def _within(seconds: float) -> Callable[[Env, Any], None]:
    def check(env: Env, result: Any) -> None:
        took = time.monotonic() - env.notes["started"]
        _assert(took < seconds, f"verify took {took:.1f} s against a total deadline of 1 s per request")
    return check


for name, behave in [("drips-body", _drip_body), ("drips-headers", _drip_headers), ("http-500", _status(500)),
                     ("http-401", _status(401)), ("garbage", _garbage), ("unreachable", None)]:
    case(f"judge-{name}", "judge servers", judged(behave), code=0, says=("judge counters",), may_change=("v/**",),
         check=_within(12.0))

# ------------------------------------------------------------------------------------------ training and eval
BAD_VIDEO = {**TEXT_SAMPLE, "problem_id": "bad-video", "data_type": "video", "path": "broken.mp4"}
HUGE = {**TEXT_SAMPLE, "problem_id": "huge", "problem": "count the words " * 20_000}


def _training_data(env: Env, extra: list[dict[str, Any]]) -> Path:
    env.write("data/broken.mp4", b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    return env.write_json("data/train.json", [{**TEXT_SAMPLE, "problem_id": i} for i in range(6)] + extra)


def _sft(max_bad_share: float) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        data = _training_data(env, [BAD_VIDEO, HUGE])
        body = (f"data: [{{path: {data}}}]\nmax_bad_share: {max_bad_share}\n"
                "sft: {batch_size: 3, epochs: 1, lr: 1.0e-4}\nstages:\n  - {name: sft, kind: sft}\n")
        return ["run", str(env.config(body, model=True, model_keys="max_prompt_tokens: 2048"))]
    return setup


def _skipped_two(env: Env, result: Any) -> None:
    (run,) = env.path("runs").iterdir()
    rows = [json.loads(line) for line in (run / "stages" / "00-sft" / "skipped.jsonl").read_text().splitlines()[1:]]
    _assert({r["sample_id"] for r in rows} == {"train:bad-video", "train:huge"}, rows)
    _assert(any("above the limit 2048" in r["reason"] for r in rows), rows)
    state = json.loads((run / "state.json").read_text())
    _assert(state["completed"][0]["steps"] == 2, state)  # 6 usable questions in batches of 3


case("train-bad-video-and-huge-prompt-skipped", "training and eval", _sft(0.5), code=0,
     says=("skipped question train:bad-video", "2 of 8 questions skipped"), may_change=("runs/**",), check=_skipped_two)
case("train-too-many-bad-questions-stops", "training and eval", _sft(0.1),
     says=("2 of 8 questions cannot be used", "max_bad_share 0.1"), may_change=("runs/**",))


def _eval_huge(env: Env) -> list[str]:
    bench = env.write_json("bench/tiny.json", [{**TEXT_SAMPLE, "problem_id": "huge", "problem": "why " * 250_000}])
    return ["eval", "--model", str(env.model_dir()), "--bench", str(bench), "--out", str(env.path("eval")),
            "--device", "cpu", "--max-prompt-tokens", "4096", "--judge", "none", "--max-new-tokens", "4"]


def _eval_skipped(env: Env, result: Any) -> None:
    rows = [json.loads(line) for line in env.path("eval/tiny/predictions.jsonl").read_text().splitlines()[1:]]
    _assert(len(rows) == 1 and rows[0]["status"] != "ok" and "above the limit 4096" in rows[0]["reason"], rows)


case("eval-megabyte-question-skipped", "training and eval", _eval_huge, code=0, may_change=("eval/**",),
     check=_eval_skipped)


def _assert(condition: bool, message: Any) -> None:
    if not condition:
        raise AssertionError(message)

case("config-duplicate-key", "config files", config_show("grpo: {lr: 1.0e-6}\nsft: {lr: 1.0e-4}\ngrpo: {kl_coef: 0.1}\n"),
     says=("key 'grpo' is given twice", "line"))


# ------------------------------------------------------------------------------------------------- signals
ROOT = Path(__file__).resolve().parents[2]


def _long_sft(env: Env) -> list[str]:
    data = env.write_json("data/train.json", [{**TEXT_SAMPLE, "problem_id": i} for i in range(12)])
    body = (f"data: [{{path: {data}}}]\nsft: {{batch_size: 1, epochs: 1, lr: 1.0e-4, save_every: 1000}}\n"
            "stages:\n  - {name: sft, kind: sft}\n")
    return ["run", str(env.config(body, model=True))]


def _sigterm_then_resume(env: Env, args: list[str]) -> tuple[int, str]:
    """``veripo run`` as a real process, SIGTERM once its first optimizer step is logged (what a scheduler
    sends before it kills a job); it must save a checkpoint and exit 143; then ``--resume`` finishes it."""
    from typer.testing import CliRunner

    from veripo.cli.main import app

    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "VERIPO_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-c", "from veripo.cli.main import main; main()", *args], cwd=env.root,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    metrics: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = list(env.root.glob("runs/*/stages/00-sft/metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= 2:  # the header and a first step
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    first, _ = proc.communicate(timeout=180)
    _assert(proc.returncode == 143, f"exit code {proc.returncode} after SIGTERM:\n{first}")
    run = metrics[0].parents[2]
    env.notes["stopped_after"] = json.loads((run / "stages/00-sft/checkpoints" /
                                             json.loads((run / "stages/00-sft/latest.json").read_text())["checkpoint"] /
                                             "progress.json").read_text())
    result = CliRunner().invoke(app, ["run", "--resume", str(run)], env={"COLUMNS": "200"})
    return result.exit_code, first + result.output


def _resumed_exactly_once(env: Env, result: Any) -> None:
    stopped = env.notes["stopped_after"]
    _assert(not stopped["done"] and 1 <= stopped["unit"] < 12, stopped)
    (run,) = env.path("runs").iterdir()
    rows = [json.loads(line) for line in (run / "stages/00-sft/metrics.jsonl").read_text().splitlines()[1:]]
    _assert([r["step"] for r in rows] == list(range(1, 13)), [r["step"] for r in rows])  # each step once


case("sigterm-mid-training-saves-and-resumes", "signals", _long_sft, code=0, run=_sigterm_then_resume,
     says=("stopped:", "saved a checkpoint", "resumed from"), may_change=("runs/**",), check=_resumed_exactly_once,
     slow=True)


def _fsync_full(monkeypatch: Any, env: Env) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("veripo.recipes.run_dir.os.fsync", full)


def _no_temporary_left(env: Env, result: Any) -> None:
    left = [str(p) for p in env.root.rglob("*.tmp")]
    _assert(not left and not list(env.root.glob("runs/*/config.yaml")), left)


case("run-start-disk-full", "faults", lambda env: ["run", str(env.config())], says=("no space left on the device",),
     patch=_fsync_full, may_change=("runs/**",), check=_no_temporary_left)

case("verify-set-malformed-yaml", "config files",
     lambda env: ["verify", str(env.rollouts()), "--set", "verifier.timeout_s=[1,"], says=("override", "not valid YAML"))
case("verify-set-out-of-range", "config values",
     lambda env: ["verify", str(env.rollouts()), "--set", "verifier.concurrency=0"], says=("verifier.concurrency", "at least 1"))


def _grpo(env: Env) -> list[str]:
    data = _training_data(env, [BAD_VIDEO])
    body = (f"data: [{{path: {data}}}]\nmax_bad_share: 0.5\nrollout: {{num_generations: 2, max_new_tokens: 6}}\n"
            "grpo: {rollout_batch_size: 7, global_batch_size: 7, max_steps: 1, lr: 1.0e-4}\n"
            "stages:\n  - {name: grpo, kind: grpo}\n")
    return ["run", str(env.config(body, model=True))]


def _grpo_skipped(env: Env, result: Any) -> None:
    (run,) = env.path("runs").iterdir()
    stage = run / "stages" / "00-grpo"
    skipped = [json.loads(line) for line in (stage / "skipped.jsonl").read_text().splitlines()[1:]]
    _assert([r["sample_id"] for r in skipped] == ["train:bad-video"] and "video" in skipped[0]["reason"], skipped)
    rollouts = [json.loads(line) for line in (stage / "rollouts.jsonl").read_text().splitlines()[1:]]
    _assert(len(rollouts) == 12 and "train:bad-video" not in {r["sample_id"] for r in rollouts}, len(rollouts))


case("train-grpo-bad-video-skipped-as-drawn", "training and eval", _grpo, code=0,
     says=("skipped question train:bad-video",), may_change=("runs/**",), check=_grpo_skipped)


def _grpo_strict(env: Env) -> list[str]:
    args = _grpo(env)
    config = Path(args[1])
    config.write_text(config.read_text().replace("max_bad_share: 0.5", "max_bad_share: 0.1"))
    return args


case("train-grpo-too-many-bad-questions-stops", "training and eval", _grpo_strict,
     says=("1 of 7 questions cannot be used", "max_bad_share 0.1"), may_change=("runs/**",))


def _run_config_not_utf8(env: Env) -> list[str]:
    env.run_dir(_plan_config(env, "stages:\n  - {name: sft, kind: sft}\n"))
    env.write("run/config.yaml", "name: caf\xe9\n".encode("latin-1"))
    return _resume(env)


case("resume-config-not-utf8", "run directories", _run_config_not_utf8, says=("config.yaml", "not valid UTF-8"))
