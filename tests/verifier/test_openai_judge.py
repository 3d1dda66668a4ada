"""The openai judge against loopback servers: a scripted fake (happy path, retries, garbage, a hang, a kill)
and a real ``transformers serve`` on a tiny random model (garbage replies, then killed mid-run)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter

import pytest
from judge_servers import FakeJudgeServer, TransformersServe, free_port

from veripo.config import VerifierConfig
from veripo.data.records import Rollout, Sample
from veripo.verifier.judges import JudgeItem, make_judge
from veripo.verifier.run import verify_rollouts

SAMPLE = Sample(id="q", problem="Which way did the ball move?", problem_type="multiple choice", answer="B",
                options=["A. up", "B. left", "C. right"])
THINKING = "The ball ends at the left edge. So the answer is B."
SECRET = "sk-test-DO-NOT-LEAK-4242"


def items(n: int) -> list[JudgeItem]:
    """``n`` distinct items (distinct cache keys); even ones answer B (consistent), odd ones C."""
    return [JudgeItem(SAMPLE, f"Look {i}. {THINKING}", "B" if i % 2 == 0 else "C") for i in range(n)]


def scripted_verdict(prompt: str) -> str:
    """What a perfect judge says: the answer after 'Final answer:' against the chain's 'answer is B'."""
    answer = prompt.split("Final answer:")[1].split("If the reasoning")[0].strip()
    return "Reasoning ends at B.\nVERDICT: " + ("CONSISTENT" if answer == "B" else "INCONSISTENT")


def config(url: str, **kw) -> VerifierConfig:
    base = {"judge": "openai", "judge_url": url, "judge_model": "judge-model", "api_key_env": "VERIPO_TEST_JUDGE_KEY",
            "timeout_s": 2.0, "retries": 1, "concurrency": 4, "fallback_to_rule": False}
    return VerifierConfig(**(base | kw))


def test_happy_path_concurrent_with_key_header(monkeypatch):
    monkeypatch.setenv("VERIPO_TEST_JUDGE_KEY", SECRET)
    with FakeJudgeServer(scripted_verdict) as server:
        judge = make_judge(config(server.url))
        results = judge.judge(items(8))
    assert [r.label for r in results] == ["consistent", "inconsistent"] * 4
    assert all(r.error is None for r in results)
    assert len(server.requests) == 8
    for request in server.requests:
        assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
        assert request["body"]["model"] == "judge-model" and request["body"]["max_tokens"] > 0
        assert "Final answer:" in request["body"]["messages"][0]["content"]
    assert judge.counters()["consistent"] == 4 and judge.counters()["inconsistent"] == 4


def test_retries_with_backoff_after_server_errors():
    with FakeJudgeServer(scripted_verdict, fail_first=2) as server:
        judge = make_judge(config(server.url, retries=3, concurrency=1))
        start = time.monotonic()
        [result] = judge.judge(items(1))
        elapsed = time.monotonic() - start
    assert result.label == "consistent" and len(server.requests) == 3
    assert elapsed >= 0.25 + 0.5  # backoff 0.25 s then 0.5 s before the third try


def test_client_errors_are_not_retried():
    with FakeJudgeServer(scripted_verdict, fail_first=100, fail_status=404) as server:
        judge = make_judge(config(server.url, retries=3, concurrency=1))
        results = judge.judge(items(5))
    assert [r.error for r in results] == ["HTTP 404"] * 3 + ["server down"] * 2
    assert len(server.requests) == 3  # no retries; down after 3 failures in a row


def test_cache_prevents_second_requests(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    with FakeJudgeServer(scripted_verdict) as server:
        first = make_judge(config(server.url), cache_path=cache).judge(items(6))
        assert len(server.requests) == 6
        again = make_judge(config(server.url), cache_path=cache)  # a re-run reads the cache file
        second = again.judge(items(6))
        assert len(server.requests) == 6
        assert again.counters()["cache_hits"] == 6
        more = again.judge(items(8))  # only the two new items are asked
        assert len(server.requests) == 8
    assert [r.label for r in first] == [r.label for r in second] == [r.label for r in more[:6]]


def test_garbage_replies_are_unknown_and_counted_with_optional_rule_fallback():
    with FakeJudgeServer(lambda prompt: "I think it is fine, probably consistent?") as server:
        results = make_judge(config(server.url)).judge(items(4))
        assert [r.label for r in results] == ["unknown"] * 4
        judge = make_judge(config(server.url, fallback_to_rule=True))
        fallback = judge.judge(items(4))
    assert all(r.error == "unparseable verdict" for r in results)
    assert [r.label for r in fallback] == ["consistent", "inconsistent"] * 2  # the rule judge's labels
    assert judge.counters()["parse_failure"] == 4 and judge.counters()["fallback_to_rule"] == 4
    with FakeJudgeServer(mode="garbage") as server:  # 200 with an HTML body
        judge = make_judge(config(server.url, retries=0))
        results = judge.judge(items(2))
    assert [r.label for r in results] == ["unknown"] * 2 and judge.counters()["request_failure"] == 2


def test_hanging_server_times_out_bounded():
    with FakeJudgeServer(mode="hang", hang_s=3.0) as server:
        judge = make_judge(config(server.url, timeout_s=0.3, retries=1, concurrency=2))
        start = time.monotonic()
        results = judge.judge(items(10))
        elapsed = time.monotonic() - start
        requests = len(server.requests)
    assert [r.label for r in results] == ["unknown"] * 10
    counters = Counter(judge.counters())
    assert counters["request_failure"] >= 3 and counters["server_down"] >= 1  # gave up after 3 failures in a row
    assert counters["request_failure"] + counters["server_down"] == 10
    assert requests <= 2 * (3 + 2) and elapsed < 6.0


def test_server_down_from_the_start():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    judge = make_judge(config(url, retries=2, concurrency=2))
    start = time.monotonic()
    results = judge.judge(items(20))
    assert [r.label for r in results] == ["unknown"] * 20 and time.monotonic() - start < 10
    counters = Counter(judge.counters())
    assert counters["request_failure"] + counters["server_down"] == 20 and counters["server_down"] >= 10


def test_server_killed_mid_run_falls_back_and_nothing_is_lost(tmp_path):
    with FakeJudgeServer(scripted_verdict, die_after=3) as server:
        judge = make_judge(config(server.url, concurrency=1, retries=1, fallback_to_rule=True),
                           cache_path=tmp_path / "judge_cache.jsonl")
        results = judge.judge(items(10))
    assert len(results) == 10
    assert [r.label for r in results] == ["consistent", "inconsistent"] * 5  # 3 judged, 7 by the rule fallback
    assert [r.error for r in results[:3]] == [None] * 3
    assert all(r.error.startswith("fallback to rule after") for r in results[3:])
    assert judge.counters()["fallback_to_rule"] == 7
    cached = (tmp_path / "judge_cache.jsonl").read_text().splitlines()
    assert len(cached) == 3  # failures are not cached: a re-run asks for them again


def test_api_key_never_logged_or_written(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("VERIPO_TEST_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    rollouts = tmp_path / "rollouts.jsonl"
    texts = [f"<think>{THINKING}</think><answer>{a}</answer>" for a in "BCB"]
    rollouts.write_text("".join(json.dumps(Rollout(id=f"q/0/{i}", sample_id="q", group_index=i, text=t).to_dict())
                                + "\n" for i, t in enumerate(texts)))
    with FakeJudgeServer(scripted_verdict, die_after=2) as server:
        summary = verify_rollouts(rollouts, {"q": SAMPLE}, config(server.url, fallback_to_rule=True),
                                  tmp_path / "out")
    assert summary.consistency["inconsistent"] == 1
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # the key was used ...
    out = capfd.readouterr()
    assert SECRET not in out.out + out.err + caplog.text  # ... and never shown
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


@pytest.fixture(scope="module")
def served_tiny_model(tmp_path_factory, tiny_causal_lm):
    """``transformers serve`` (a child process, CPU) on a random tiny Llama built offline; yields (url, model, kill)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("transformers.cli.serve")
    folder = tmp_path_factory.mktemp("serve")
    hub_cache = folder / "hub-cache"  # an empty, existing cache: nothing from a model hub
    hub_cache.mkdir()
    with TransformersServe(tiny_causal_lm, hub_cache, log_path=folder / "serve.log") as server:
        yield server.url, str(tiny_causal_lm), server.kill


def test_real_transformers_serve_garbage_then_killed_mid_run(served_tiny_model, tmp_path):
    url, model, kill = served_tiny_model
    cfg = config(url, judge_model=model, timeout_s=20.0, retries=1, concurrency=1, fallback_to_rule=True)
    judge = make_judge(cfg, cache_path=tmp_path / "judge_cache.jsonl")
    # A random model answers noise: every reply is a counted parse failure, replaced by the rule's label.
    results = judge.judge(items(2))
    assert [r.label for r in results] == ["consistent", "inconsistent"]
    assert judge.counters()["parse_failure"] == 2 and judge.counters()["fallback_to_rule"] == 2
    assert all("unparseable verdict" in r.error for r in results)

    def kill_after_first_reply() -> None:
        deadline = time.monotonic() + 30
        while judge.inner.stats["parse_failure"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        kill()

    killer = threading.Thread(target=kill_after_first_reply)
    killer.start()
    results = judge.judge(items(8)[2:])  # 6 new items; the server dies after the first answer
    killer.join()
    assert len(results) == 6 and [r.label for r in results] == ["consistent", "inconsistent"] * 3
    counters = Counter(judge.counters())
    assert counters["request_failure"] + counters["server_down"] >= 1
    assert counters["parse_failure"] + counters["request_failure"] + counters["server_down"] == 8


def test_server_killed_mid_run_without_fallback_leaves_unknowns_that_a_rerun_asks_again(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    with FakeJudgeServer(scripted_verdict, die_after=4) as server:
        judge = make_judge(config(server.url, concurrency=1, retries=1), cache_path=cache)
        results = judge.judge(items(9))
    assert [r.label for r in results[:4]] == ["consistent", "inconsistent"] * 2
    assert [r.label for r in results[4:]] == ["unknown"] * 5 and all(r.error for r in results[4:])
    counters = Counter(judge.counters())
    assert counters["request_failure"] + counters["server_down"] == 5 and counters["fallback_to_rule"] == 0
    with FakeJudgeServer(scripted_verdict) as again:  # the server is back: only the 5 lost items are asked
        rerun = make_judge(config(again.url, concurrency=1), cache_path=cache)
        labels = [r.label for r in rerun.judge(items(9))]
    assert labels == ["consistent", "inconsistent"] * 4 + ["consistent"] and len(again.requests) == 5
    assert rerun.counters()["cache_hits"] == 4


def test_verify_rollouts_closes_the_judges_connections(tmp_path, monkeypatch):
    from veripo.verifier.judges import OpenAIJudge

    closed = []
    original = OpenAIJudge.close
    monkeypatch.setattr(OpenAIJudge, "close", lambda self: (closed.append(self), original(self)))
    rollouts = [Rollout(id="q/0/0", sample_id="q", group_index=0, text=f"<think>{THINKING}</think><answer>B</answer>")]
    with FakeJudgeServer(scripted_verdict) as server:
        summary = verify_rollouts(rollouts, {"q": SAMPLE}, config(server.url), tmp_path / "out")
    assert summary.consistency["consistent"] == 1 and len(closed) == 1 and closed[0].closed
