"""A small client of a ComfyUI server's HTTP and websocket API (standard library only), for `comfy-e2e`.

POST /prompt, GET /history/<id>, /object_info and our /lumina2t/history; the websocket /ws?clientId=... is read
with a minimal RFC 6455 client (text frames are JSON events; binary frames are preview images and are counted,
not decoded). No ComfyUI import: it talks to a server in another process.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Lumina2TrainError


class ServerError(Lumina2TrainError):
    """The ComfyUI server refused a request or went away."""


class WebSocket:
    """Just enough of a websocket client for a local ComfyUI: connect, receive frames, answer pings, close."""

    def __init__(self, host: str, port: int, path: str, timeout_s: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ServerError(f"ws://{host}:{port}{path}: the server closed the connection during the handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ServerError(f"ws://{host}:{port}{path}: no websocket upgrade ({head.splitlines()[0]!r})")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ServerError("the websocket closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                                           else bytes([0x80 | 126]) + struct.pack(">H", len(payload)))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next whole message: 1 text, 2 binary, 8 close. Pings are answered here."""
        message, first_opcode = b"", None
        while True:
            b0, b1 = self._read(2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 9:
                self._send(10, payload)
                continue
            if opcode == 10:
                continue
            first_opcode = opcode if first_opcode is None else first_opcode
            message += payload
            if b0 & 0x80:
                return first_opcode, message

    def close(self) -> None:
        try:
            self._send(8)
        except OSError:
            pass
        self.sock.close()


@dataclass
class Run:
    """What the websocket said about one queued prompt."""

    prompt_id: str
    status: str = "queued"  # success | error | interrupted | timeout
    events: list[dict] = field(default_factory=list)  # {"type": ..., "data": ...}
    previews: int = 0  # binary preview frames
    error: dict | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e.get("type") == kind]


class ComfyClient:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.base = f"http://{host}:{port}"
        self.client_id = uuid.uuid4().hex

    def get(self, path: str, timeout_s: float = 30.0):
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout_s) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            raise ServerError(f"GET {path}: HTTP {e.code} {e.read()[:300]!r}") from None

    def post(self, path: str, body: dict, timeout_s: float = 30.0):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return json.loads(r.read().decode() or "null")
        except urllib.error.HTTPError as e:
            raise ServerError(f"POST {path}: HTTP {e.code} {e.read()[:2000].decode(errors='replace')}") from None

    def is_up(self) -> bool:
        try:
            self.get("/system_stats", timeout_s=5.0)
            return True
        except (OSError, ServerError, ValueError):
            return False

    def connect(self) -> WebSocket:
        return WebSocket(self.host, self.port, f"/ws?clientId={self.client_id}")

    def queue(self, prompt: dict, extra_pnginfo: dict | None = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_pnginfo is not None:
            body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
        reply = self.post("/prompt", body)
        if reply.get("node_errors"):
            raise ServerError(f"the server rejected the prompt: {json.dumps(reply['node_errors'])[:2000]}")
        return reply["prompt_id"]

    def follow(self, ws: WebSocket, prompt_id: str, *, timeout_s: float,
               alive: Callable[[], bool] = lambda: True) -> Run:
        """Read events until the prompt succeeds, fails or is interrupted (or `timeout_s` passes)."""
        run, deadline = Run(prompt_id), time.monotonic() + timeout_s
        ends = {"execution_success": "success", "execution_error": "error", "execution_interrupted": "interrupted"}
        while time.monotonic() < deadline:
            try:
                opcode, payload = ws.receive()
            except TimeoutError:
                if not alive():
                    raise ServerError("the ComfyUI server stopped while the prompt ran") from None
                continue
            if opcode == 2:
                run.previews += 1
                continue
            if opcode == 8:
                raise ServerError("the server closed the websocket")
            event = json.loads(payload.decode())
            data = event.get("data") or {}
            if isinstance(data, dict) and data.get("prompt_id") not in (None, prompt_id):
                continue
            run.events.append(event)
            if event.get("type") in ends:
                run.status = ends[event["type"]]
                run.error = data if run.status == "error" else None
                return run
        run.status = "timeout"
        return run


__all__ = ["ComfyClient", "Run", "ServerError", "WebSocket"]
