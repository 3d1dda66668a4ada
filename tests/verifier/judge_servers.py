"""Loopback judge servers for the openai judge tests: a scripted fake and a real ``transformers serve``."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


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


def wait_until_listening(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"judge server on port {port} did not start within {timeout_s} s")
