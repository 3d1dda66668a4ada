"""A real kill: an evaluation in a subprocess is SIGKILLed mid-run; the re-run continues where it stopped,
without repeating or losing an item."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripted import ScriptedEngine, WordTokenizer, encode_id

from veripo.data.jsonl import read_jsonl
from veripo.data.records import Sample
from veripo.eval import evaluate, read_predictions

N = 40
CHILD = """
import sys
sys.path.insert(0, {here!r})
from scripted import ScriptedEngine, WordTokenizer, encode_id
from veripo.data.records import Sample
from veripo.eval import evaluate
samples = [Sample(id=f"s{{i}}", problem="q", problem_type="multiple choice", answer="A") for i in range({n})]
evaluate(None, WordTokenizer(), encode_id, samples, out_dir={out!r}, benchmark="toy", batch_size=2,
         engine=ScriptedEngine(delay_s=0.2), show_progress=False)
"""


def _rows(path: Path) -> int:
    try:
        return len(read_predictions(path))
    except Exception:  # noqa: BLE001 - the file may be mid-write; poll again
        return 0


def test_sigkill_mid_run_then_resume(tmp_path):
    out = tmp_path / "out"
    code = CHILD.format(here=str(Path(__file__).parent), n=N, out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    predictions = out / "predictions.jsonl"
    # generous: the loop ends at the 6th row (about 5 s alone), but under a loaded parallel suite the child's
    # imports alone took a minute once
    deadline = time.monotonic() + 300
    while _rows(predictions) < 6 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:] if child.stderr else ""
    before = set(read_predictions(predictions))
    assert 6 <= len(before) < N  # killed mid-run

    samples = [Sample(id=f"s{i}", problem="q", problem_type="multiple choice", answer="A") for i in range(N)]
    engine = ScriptedEngine()
    metrics = evaluate(None, WordTokenizer(), encode_id, samples, out_dir=out, benchmark="toy", batch_size=2,
                       engine=engine, show_progress=False)
    decoded_again = [i for call in engine.calls for i in call]
    assert set(decoded_again) == {s.id for s in samples} - before  # only what was not written before the kill
    ids = [r["id"] for r in read_jsonl(predictions)]
    assert sorted(ids) == sorted(s.id for s in samples)  # each exactly once
    assert metrics["n"] == N and metrics["accuracy"] == 1.0
