"""Loopback judge servers for the openai judge tests: a scripted fake and a real ``transformers serve``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeJudgeServer:
    """An OpenAI-compatible chat server on 127.0.0.1 answering from ``reply(prompt) -> str``.

    ``mode``: ``ok`` (reply), ``garbage`` (200 with a non-JSON body), ``hang`` (sleeps ``hang_s`` first),
    ``die_after`` (closes for good after that many requests); the first ``fail_first`` requests get HTTP ``fail_status``.
    Every request's headers and body are kept.
    """

    def __init__(self, reply=lambda prompt: "VERDICT: CONSISTENT", mode: str = "ok", hang_s: float = 5.0,
                 die_after: int | None = None, fail_first: int = 0, fail_status: int = 503) -> None:
        self.reply, self.mode, self.hang_s, self.die_after = reply, mode, hang_s, die_after
        self.fail_first, self.fail_status = fail_first, fail_status
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.requests.append({"headers": dict(self.headers), "body": body})
                    n = len(server.requests)
                if server.die_after is not None and n > server.die_after:
                    threading.Thread(target=server.stop, daemon=True).start()
                    self.close_connection = True
                    return  # no response: the client sees the connection drop
                if n <= server.fail_first:
                    self.send_error(server.fail_status, "scripted failure")
                    return
                if server.mode == "hang":
                    time.sleep(server.hang_s)
                if server.mode == "garbage":
                    payload = b"<html>bad gateway</html>"
                else:
                    text = server.reply(body["messages"][-1]["content"])
                    payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                                "content": text}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._stopped = False

    def __enter__(self) -> FakeJudgeServer:  # noqa: PYI034
        self.thread.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_tiny_causal_lm(out_dir: Path) -> Path:
    """A random 1-layer Llama with the project's tiny BPE tokenizer (Qwen chat template), built offline."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from veripo.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


class TransformersServe:
    """A real ``transformers serve`` in a child process on 127.0.0.1, serving ``model_dir`` on CPU.

    transformers 5.25's ``Serve`` runs its server blocking from ``__init__`` (no ``non_blocking``, no
    ``kill_server``), so the server gets a process of its own: started with the CLI's own typer app (not its
    ``main``, which would ask PyPI for a newer release), ready once ``GET /health`` answers 200, and killed by
    process id. ``HF_HUB_CACHE`` points at an empty folder and the hub is offline: nothing is downloaded.
    """

    def __init__(self, model_dir: Path, hub_cache: Path, log_path: Path, ready_timeout_s: float = 120.0) -> None:
        self.model_dir, self.log_path, self.ready_timeout_s = model_dir, log_path, ready_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> TransformersServe:  # noqa: PYI034
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from transformers.cli.transformers import app; app()", "serve",
                 str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        try:
            self.wait_until_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-4000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"transformers serve on port {self.port} not ready within {self.ready_timeout_s} s:\n"
                           f"{self.log_path.read_text(errors='replace')[-4000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL: the judge sees the server vanish mid-run, as after a crash
            self.process.wait(timeout=30)

    def __exit__(self, *exc) -> None:
        self.kill()
