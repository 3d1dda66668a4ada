"""Consistency judges: does the thinking's conclusion support the final answer?

One ``Judge`` protocol, three judges:
- ``rule``: deterministic; the conclusion the chain states near its end (option letter, option text or
  number) against the final answer; ``unknown`` when the chain states none.
- ``openai``: any OpenAI-compatible chat server (vLLM, SGLang, TGI, llama.cpp, ``transformers serve``) with
  the judge prompt; concurrent requests, timeouts, retries with backoff; a server that is down or answers
  garbage gives ``unknown`` (counted), optionally replaced by the rule judge's label.
- ``hf``: a local transformers causal LM with the same prompt.
Every judge is wrapped in a content-hash cache (a JSONL file), so a re-run asks nothing twice.
The verdict parser is strict: the reply's last non-empty line must be ``VERDICT: CONSISTENT`` or
``VERDICT: INCONSISTENT``; anything else is a counted parse failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from veripo.config.plugins import check_callable, import_object, is_import_path
from veripo.data.records import Sample
from veripo.rewards import parse_completion
from veripo.verifier.checks import compare_conclusion, conclusion, final_answer_key

Label = Literal["consistent", "inconsistent", "unknown"]
DEFAULT_PROMPT = Path(__file__).with_name("prompts") / "consistency.txt"
_VERDICT = re.compile(r"^\s*VERDICT:\s*(CONSISTENT|INCONSISTENT)\s*$")


@dataclass(frozen=True)
class JudgeItem:
    sample: Sample
    thinking: str | None
    answer: str | None


@dataclass(frozen=True)
class JudgeResult:
    label: Label
    raw: str = ""
    error: str | None = None


class Judge(Protocol):
    name: str
    stats: Counter

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]: ...


def parse_verdict(reply: str) -> Label | None:
    """``consistent``/``inconsistent`` from a strict last line, else None (a parse failure)."""
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        return None
    m = _VERDICT.match(lines[-1])
    return m.group(1).lower() if m else None  # type: ignore[return-value]


def render_prompt(template: str, item: JudgeItem, max_chars: int = 6000) -> str:
    options = "Options:\n" + "\n".join(item.sample.options) + "\n" if item.sample.options else ""
    return template.format(question=item.sample.problem[:max_chars], options=options,
                           thinking=(item.thinking or "")[-max_chars:], answer=(item.answer or "")[:500])


class RuleJudge:
    name = "rule"

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        out = []
        for item in items:
            concluded = conclusion(item.thinking, item.sample)
            final = final_answer_key(item.answer, item.sample)
            label: Label = compare_conclusion(concluded, final, item.sample)  # type: ignore[assignment]
            self.stats[label] += 1
            out.append(JudgeResult(label, raw=f"conclusion={concluded!r} answer={final!r}"))
        return out


class OpenAIJudge:
    """Chat-completions judge. The API key is read from ``api_key_env`` and sent only as a header."""

    name = "openai"

    def __init__(self, url: str, model: str, *, api_key_env: str = "VERIPO_JUDGE_API_KEY", timeout_s: float = 30.0,
                 retries: int = 3, concurrency: int = 8, template: str | None = None, max_tokens: int = 32,
                 down_after: int = 3) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = self.model_name = model
        self.retries, self.concurrency, self.max_tokens = retries, max(1, concurrency), max_tokens
        self.template = template or DEFAULT_PROMPT.read_text(encoding="utf-8")
        key = os.environ.get(api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s
        self.closed = False
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self.down_after = down_after  # consecutive failed requests after which the server counts as down

    def _server_down(self) -> bool:
        return self._consecutive_failures >= self.down_after

    def _ask(self, item: JudgeItem) -> JudgeResult:
        import httpx

        if self._server_down():
            self._count("server_down")
            return JudgeResult("unknown", error="server down")
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0.0,
                "messages": [{"role": "user", "content": render_prompt(self.template, item)}]}
        error = ""
        for attempt in range(self.retries + 1):
            try:
                response = self._post(body)
                if response.status_code >= 500 or response.status_code == 429:
                    error = f"HTTP {response.status_code}"
                elif response.status_code >= 400:  # a wrong model name, URL or key: retrying will not help
                    error = f"HTTP {response.status_code}"
                    break
                else:
                    reply = _reply_text(response.json())
                    with self._lock:
                        self._consecutive_failures = 0
                    label = parse_verdict(reply)
                    if label is None:
                        self._count("parse_failure")
                        return JudgeResult("unknown", raw=reply[:500], error="unparseable verdict")
                    self._count(label)
                    return JudgeResult(label, raw=reply[:500])
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
                error = type(e).__name__
            if self._server_down():
                break
            if attempt < self.retries:
                time.sleep(min(8.0, 0.25 * 2**attempt))
        with self._lock:
            self._consecutive_failures += 1
        self._count("request_failure")
        return JudgeResult("unknown", error=error or "request failed")

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._ask, items))

    def _post(self, body: dict[str, Any]) -> Any:
        """POST ``body`` under a total deadline of ``timeout_s``: connecting, sending and reading the whole reply.
        httpx's timeouts bound each network operation, so a server dripping one byte a second never trips
        them; ``asyncio.wait_for`` cancels the request (and closes its connection) when the deadline passes.
        Each request has its own client and event loop (the judge's threads each run one at a time)."""
        import asyncio

        import httpx

        async def post() -> httpx.Response:
            async with httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers) as client:
                return await client.post(self.url, json=body)

        try:
            return asyncio.run(asyncio.wait_for(post(), self.timeout_s))
        except TimeoutError:
            raise httpx.TimeoutException(f"no complete reply within {self.timeout_s:g} s") from None

    def close(self) -> None:
        self.closed = True  # every request closed its own connection


def _reply_text(payload: Any) -> str:
    """The reply's text. Servers that split reasoning out (``transformers serve`` and vLLM for qwen types put
    ``<think>...</think>`` in ``reasoning_content``) leave ``content`` empty when the reply is all reasoning:
    then the reasoning is parsed, so a verdict written there is still found by the strict parser."""
    message = payload["choices"][0]["message"]
    text = message.get("content") or message.get("reasoning_content") or ""
    if not isinstance(text, str):
        raise TypeError("message content is not text")
    return text


class HFJudge:
    """A local causal LM (``from_pretrained`` on a directory), greedy, with the judge prompt."""

    name = "hf"

    def __init__(self, model_dir: str, *, template: str | None = None, max_new_tokens: int = 16) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.template = template or DEFAULT_PROMPT.read_text(encoding="utf-8")
        self.max_new_tokens = max_new_tokens
        self.stats: Counter = Counter()

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        import torch

        out = []
        for item in items:
            prompt = render_prompt(self.template, item)
            if getattr(self.tokenizer, "chat_template", None):
                prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                            add_generation_prompt=True)
            ids = self.tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                gen = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
            reply = self.tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            label = parse_verdict(reply)
            self.stats[label or "parse_failure"] += 1
            out.append(JudgeResult(label or "unknown", raw=reply[:500], error=None if label else "unparseable verdict"))
        return out


@dataclass
class CachedJudge:
    """Content-hash cache in front of a judge (and the rule fallback for its ``unknown`` labels)."""

    inner: Any
    path: Path | None = None
    fallback: RuleJudge | None = None
    stats: Counter = field(default_factory=Counter)
    _memo: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.inner.name
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    self._memo[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a killed run

    def key(self, item: JudgeItem) -> str:
        # the judge, the model that answers (a served name or a local directory), the prompt and the content
        text = json.dumps([self.inner.name, getattr(self.inner, "model_name", ""), getattr(self.inner, "template", ""),
                           item.sample.problem, item.sample.options, item.thinking, item.answer])
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        keys = [self.key(i) for i in items]
        todo = dict(zip(keys, items))  # identical items (same content) are asked once
        for key in list(todo):
            if key in self._memo:
                del todo[key]
        self.stats["cache_hits"] += sum(k in self._memo for k in keys)
        failed: dict[str, dict[str, Any]] = {}
        if todo:
            fresh = self.inner.judge(list(todo.values()))
            rows = []
            for key, r in zip(todo, fresh):
                row = {"key": key, "label": r.label, "raw": r.raw, "error": r.error}
                if r.error is None or r.label != "unknown":
                    rows.append(row)
                    self._memo[key] = row
                else:
                    failed[key] = row  # failures are not cached: the next call or a re-run asks again
            if self.path is not None and rows:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in rows))
        found = [self._memo.get(k) or failed[k] for k in keys]
        results = [JudgeResult(row["label"], row.get("raw", ""), row.get("error")) for row in found]
        if self.fallback is not None:
            unknown = [n for n, r in enumerate(results) if r.label == "unknown" and r.error is not None]
            if unknown:
                self.stats["fallback_to_rule"] += len(unknown)
                for n, r in zip(unknown, self.fallback.judge([items[n] for n in unknown])):
                    results[n] = JudgeResult(r.label, r.raw, f"fallback to rule after: {results[n].error}")
        return results

    def counters(self) -> dict[str, int]:
        return {**dict(self.inner.stats), **dict(self.stats)}

    def close(self) -> None:
        """Release the judge's connections (an openai judge's HTTP pool); judging afterwards is an error."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _rule_judge(cfg: Any, template: str | None) -> RuleJudge:
    return RuleJudge()


def _openai_judge(cfg: Any, template: str | None) -> OpenAIJudge:
    if not cfg.judge_url or not cfg.judge_model:
        raise ValueError("verifier.judge=openai needs verifier.judge_url and verifier.judge_model")
    return OpenAIJudge(cfg.judge_url, cfg.judge_model, api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s,
                       retries=cfg.retries, concurrency=cfg.concurrency, template=template)


def _hf_judge(cfg: Any, template: str | None) -> HFJudge:
    if not cfg.judge_model:
        raise ValueError("verifier.judge=hf needs verifier.judge_model (a local model directory)")
    return HFJudge(cfg.judge_model, template=template)


# name -> factory(VerifierConfig, prompt template text or None): a new judge registers here
JUDGES: dict[str, Callable[[Any, str | None], Any]] = {"rule": _rule_judge, "hf": _hf_judge, "openai": _openai_judge}


def load_judge(path: str) -> Callable[[Any, str | None], Any]:
    """Register a user's judge named by import path (``mypkg.judges:MyJudge``): a class or factory called with
    ``(verifier config, prompt template text or None)`` that returns an object with a ``name``, a ``stats``
    Counter and ``judge(items) -> list[JudgeResult]`` (the ``Judge`` protocol). ``ValueError`` when it does not
    import or has the wrong signature; its instances are checked when made."""
    factory = check_callable(import_object(path, "judge"), path, "judge", ("cfg", "template"))

    def make(cfg: Any, template: str | None) -> Any:
        judge = factory(cfg, template)
        if not callable(getattr(judge, "judge", None)):
            raise ValueError(f"judge {path!r} made a {type(judge).__name__} without a judge(items) method")
        if not isinstance(getattr(judge, "stats", None), Counter):
            judge.stats = Counter()
        if not isinstance(getattr(judge, "name", None), str):
            judge.name = path
        return judge

    JUDGES.setdefault(path, make)
    return JUDGES[path]


TEMPLATE_FIELDS = ("question", "options", "thinking", "answer")


def load_template(path: str | Path) -> str:
    """A replacement judge prompt, checked once so that a bad file fails before any rollout is judged: it must
    name ``{thinking}`` and ``{answer}``, use no other field than ``{question}``, ``{options}``, ``{thinking}``
    and ``{answer}``, and double any literal brace (``{{``/``}}``), as ``str.format`` needs."""
    import string

    try:
        text = Path(path).read_text(encoding="utf-8")
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"verifier.prompt_template {path}: {e}") from None
    unknown = sorted(fields - set(TEMPLATE_FIELDS))
    if unknown or not {"thinking", "answer"} <= fields:
        raise ValueError(f"verifier.prompt_template {path}: fields {sorted(fields)}; expected {{thinking}} and "
                         f"{{answer}} (optionally {{question}}, {{options}}) and no others"
                         + (f" (unknown: {unknown}; write literal braces as {{{{ and }}}})" if unknown else ""))
    return text


def make_judge(cfg: Any, name: str | None = None, cache_path: Path | None = None) -> CachedJudge:
    """The judge a ``VerifierConfig`` describes (``name`` overrides ``cfg.judge``), cached and with the
    rule fallback when ``cfg.fallback_to_rule``."""
    name = name or cfg.judge
    if name not in JUDGES and is_import_path(name):
        load_judge(name)
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; expected one of {', '.join(JUDGES)} (or an import path "
                         "'package.module:JudgeClass')")
    template = load_template(cfg.prompt_template) if cfg.prompt_template else None
    fallback = RuleJudge() if cfg.fallback_to_rule and name != "rule" else None
    return CachedJudge(JUDGES[name](cfg, template), cache_path, fallback)


def make_eval_judge(name: str, cfg: Any, cache_dir: Path | None = None):
    """``judge(samples, responses) -> labels`` for ``veripo.eval.evaluate``."""
    judge = make_judge(cfg, name, None if cache_dir is None else Path(cache_dir) / "judge_cache.jsonl")

    def label(samples: Sequence[Sample], responses: Sequence[str]) -> list[str]:
        items = []
        for sample, text in zip(samples, responses):
            parsed = parse_completion(text)
            items.append(JudgeItem(sample, parsed.thinking, parsed.answer))
        return [r.label for r in judge.judge(items)]

    return label
