"""A ComfyUI server over its HTTP API and websocket (docs/PREVIEW.md): Qt-free, torch-free.

One ``ComfyClient`` per server address. Every call has a timeout; a server that cannot be reached,
answers as something else than ComfyUI, or goes away mid-render raises a ``ComfyError`` whose text
is one plain sentence. ``render`` queues a batch of graphs under client-chosen prompt ids, follows
the websocket, and hands each result over as it arrives.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from ..core.errors import CancelledError, ZLoraError, one_line

DEFAULT_URL = "http://127.0.0.1:8188"
# Which model folder a loader node's file input lists (for ComfyUI's "value not in list").
LOADER_FOLDERS = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("LoraLoader", "lora_name"): "loras",
}
SHOWN_NAMES = 12  # files named in a "ComfyUI has no file" message
INTERRUPT_WAIT_SECONDS = 10.0  # a cancelled render waits this long at most for the server to stop


class ComfyError(ZLoraError):
    """Anything ComfyUI said no to, or could not be asked: one plain sentence."""


class ComfyUnreachable(ComfyError):
    """No answer (refused, timed out, connection lost) or not a ComfyUI server."""


class ComfyRefused(ComfyError):
    """ComfyUI refused a graph (validation): nothing ran."""


class ComfyRenderFailed(ComfyError):
    """A node failed while the graph ran."""


@dataclass
class ServerInfo:
    url: str
    version: str
    python: str
    pytorch: str
    devices: list[dict]

    @property
    def device(self) -> str:
        """The first device as ComfyUI names it, with its memory: ``cuda:0 NVIDIA … (24.0 GB)``."""
        if not self.devices:
            return "unknown device"
        first = self.devices[0]
        memory = first.get("vram_total") or 0
        return f"{first.get('name', '?')}" + (f" ({memory / 2**30:.1f} GB)" if memory else "")

    def summary(self) -> str:
        return f"ComfyUI {self.version} at {self.url} on {self.device}"


@dataclass
class RenderJob:
    """One graph to run; ``output_node`` is the node whose images come back."""
    graph: dict
    output_node: str
    label: str = ""
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class RenderEvent:
    """What the websocket said about one job: ``kind`` is queued, started, progress (``value`` of
    ``maximum`` steps in ``node``), executing (``node``) or done."""
    job: int
    kind: str
    node: str | None = None
    value: int = 0
    maximum: int = 0


@dataclass
class RenderResult:
    job: int
    prompt_id: str
    images: list[bytes]  # PNG files as ComfyUI wrote them
    refs: list[dict]  # {filename, subfolder, type} per image
    seconds: float  # from queueing to the images fetched


def normalize_url(text: str) -> str:
    """``localhost:8188``, ``http://host:8188/`` → ``http://host:8188``; only http(s)."""
    text = (text or "").strip()
    if not text:
        raise ComfyError("no ComfyUI address given (e.g. http://127.0.0.1:8188)")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ComfyError(f"not a ComfyUI address: {text!r} (expected http://HOST:PORT)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ComfyError(f"not a ComfyUI address: {text!r} (the port must be a number)") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class ComfyClient:
    """Talks to one ComfyUI server. One ``render`` at a time per client; the HTTP calls (``interrupt``
    among them) may come from any thread."""

    def __init__(self, url: str = DEFAULT_URL, *, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 retries: int = 2, client_id: str | None = None):
        import httpx

        self.url = normalize_url(url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.client_id = client_id or str(uuid.uuid4())
        self._http = httpx.Client(base_url=self.url, follow_redirects=False,
                                  timeout=httpx.Timeout(read_timeout, connect=connect_timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ComfyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- HTTP ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, idempotent: bool = True, timeout: float | None = None,
                 **kwargs):
        """The response, after retrying what is safe to retry: any failed GET, and a POST whose
        connection was refused (it never reached the server). Raises ComfyUnreachable."""
        import httpx

        attempts = 1 + max(0, self.retries)
        for attempt in range(attempts):
            try:
                if timeout is not None:
                    kwargs["timeout"] = httpx.Timeout(timeout, connect=self.connect_timeout)
                return self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                problem = self._connect_problem(exc)
            except httpx.TimeoutException:
                problem = (f"ComfyUI at {self.url} did not answer {method} {path} in time "
                           f"(busy, or not a ComfyUI server?)")
                if not idempotent:
                    break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                problem = f"ComfyUI at {self.url} closed the connection during {method} {path} ({one_line(exc)})"
                if not idempotent:
                    break
            except httpx.HTTPError as exc:
                raise ComfyUnreachable(f"cannot talk to ComfyUI at {self.url}: {one_line(exc)}") from None
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
        raise ComfyUnreachable(problem)

    def _connect_problem(self, exc) -> str:
        text = one_line(exc).lower()
        if "refused" in text:
            return (f"cannot reach ComfyUI at {self.url}: connection refused (is ComfyUI running, "
                    f"and on this address and port?)")
        if "name" in text and ("resolve" in text or "known" in text or "service" in text):
            return f"cannot reach ComfyUI at {self.url}: unknown host name"
        return f"cannot reach ComfyUI at {self.url}: {one_line(exc)}"

    def _json(self, method: str, path: str, **kwargs):
        response = self._request(method, path, **kwargs)
        if response.status_code == 404:
            raise ComfyUnreachable(f"{self.url} answers, but not as a ComfyUI server ({method} {path}: not found)")
        if response.status_code >= 400:
            raise ComfyError(f"ComfyUI at {self.url} answered {method} {path} with HTTP {response.status_code}: "
                             f"{_short(response.text)}")
        try:
            return response.json()
        except ValueError:
            raise ComfyUnreachable(f"{self.url} answers, but not as a ComfyUI server "
                                   f"({method} {path} did not return JSON)") from None

    # ---- what the server has -------------------------------------------------------------

    def connect(self) -> ServerInfo:
        """``GET /system_stats``: the version and devices; proves the address is a ComfyUI."""
        stats = self._json("GET", "/system_stats")
        system = stats.get("system") if isinstance(stats, dict) else None
        if not isinstance(system, dict):
            raise ComfyUnreachable(f"{self.url} answers, but not as a ComfyUI server (/system_stats has no 'system')")
        return ServerInfo(self.url, str(system.get("comfyui_version", "unknown")),
                          str(system.get("python_version", "")).split(" ")[0],
                          str(system.get("pytorch_version", "")), list(stats.get("devices") or []))

    def folders(self) -> list[str]:
        """The model folder names (``GET /models``)."""
        return list(self._json("GET", "/models"))

    def models(self, folder: str) -> list[str]:
        """File names ComfyUI lists in a model folder (subfolders as ``sub/name``, with the
        server's own separator)."""
        response = self._request("GET", f"/models/{folder}")
        if response.status_code == 404:
            return []
        if response.status_code >= 400:
            raise ComfyError(f"ComfyUI at {self.url} could not list {folder} (HTTP {response.status_code})")
        return list(response.json())

    def object_info(self, node_class: str) -> dict | None:
        """The node's input spec (``GET /object_info/<class>``); None when the server lacks it."""
        info = self._json("GET", f"/object_info/{node_class}")
        return info.get(node_class) if isinstance(info, dict) else None

    def folder_paths(self) -> dict[str, list[str]]:
        """Where the server keeps each model folder on its own disk (``/internal/folder_paths``);
        empty when it does not say."""
        response = self._request("GET", "/internal/folder_paths")
        if response.status_code != 200:
            return {}
        try:
            return {key: list(value) for key, value in response.json().items()}
        except (ValueError, AttributeError, TypeError):
            return {}

    def assets_enabled(self) -> bool:
        """Whether the server takes uploads at ``POST /api/assets`` (started with --enable-assets)."""
        response = self._request("GET", "/api/assets", params={"limit": 1})
        return response.status_code == 200

    def upload_lora(self, path: str, name: str) -> dict:
        """Upload a LoRA through the assets API; the server stores it under its content hash and
        answers with the name its loaders list (``loader_path``)."""
        with open(path, "rb") as handle:
            response = self._request(
                "POST", "/api/assets", idempotent=False, timeout=max(self.read_timeout, 600.0),
                files={"file": (name, handle, "application/octet-stream")},
                data={"tags": ["models", "model_type:loras"], "name": name})
        if response.status_code not in (200, 201):
            raise ComfyError(f"ComfyUI at {self.url} refused the upload of {name} "
                             f"(HTTP {response.status_code}: {_short(response.text)})")
        return response.json()

    # ---- queueing ------------------------------------------------------------------------

    def queue(self, job: RenderJob) -> str:
        """``POST /prompt`` under the job's prompt id. A refused graph raises ComfyRefused with
        ComfyUI's reasons in plain words."""
        body = {"prompt": job.graph, "client_id": self.client_id, "prompt_id": job.prompt_id}
        response = self._request("POST", "/prompt", json=body, idempotent=False)
        if response.status_code == 200:
            return job.prompt_id
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 404 or not isinstance(answer, dict):
            raise ComfyUnreachable(f"{self.url} answers, but not as a ComfyUI server "
                                   f"(POST /prompt: HTTP {response.status_code})")
        raise ComfyRefused(self.explain_refusal(job.graph, answer))

    def explain_refusal(self, graph: dict, answer: dict) -> str:
        """ComfyUI's validation answer as sentences: a missing model file names the folder and
        what it has; other errors say which node and why."""
        sentences = []
        for node_id, entry in (answer.get("node_errors") or {}).items():
            class_type = entry.get("class_type") or graph.get(node_id, {}).get("class_type", "?")
            for error in entry.get("errors") or []:
                sentences.append(self._node_error_sentence(class_type, node_id, error))
        if not sentences:
            error = answer.get("error") or {}
            kind = error.get("type") if isinstance(error, dict) else None
            if kind == "missing_node_type":
                extra = error.get("extra_info") or {}
                sentences.append(f"ComfyUI at {self.url} has no node {extra.get('class_type') or '?'} "
                                 f"(update ComfyUI, or install the custom node that provides it)")
            elif isinstance(error, dict) and error:
                sentences.append(f"ComfyUI refused the graph: {error.get('message', '')}"
                                 + (f" ({_short(error.get('details'))})" if error.get("details") else ""))
            else:
                sentences.append(f"ComfyUI refused the graph: {_short(json.dumps(answer))}")
        return "; ".join(dict.fromkeys(sentences))

    def _node_error_sentence(self, class_type: str, node_id: str, error: dict) -> str:
        extra = error.get("extra_info") or {}
        input_name = extra.get("input_name")
        folder = LOADER_FOLDERS.get((class_type, input_name))
        if error.get("type") == "value_not_in_list" and folder:
            wanted = extra.get("received_value")
            try:
                available = self.models(folder)
            except ComfyError:
                available = []
            return f"ComfyUI has no file `{wanted}` in {folder}; " + _has_files(available)
        details = f": {error['details']}" if error.get("details") else ""
        return f"ComfyUI refused {class_type} (node {node_id}): {error.get('message', error.get('type', '?'))}{details}"

    def interrupt(self, prompt_id: str | None = None) -> None:
        """``POST /interrupt`` (only that prompt when given and running)."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._request("POST", "/interrupt", json=body, idempotent=False)

    def delete_queued(self, prompt_ids: list[str]) -> None:
        if prompt_ids:
            self._request("POST", "/queue", json={"delete": list(prompt_ids)}, idempotent=False)

    def queue_ids(self) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids."""
        state = self._json("GET", "/queue")
        return ({item[1] for item in state.get("queue_running", [])},
                {item[1] for item in state.get("queue_pending", [])})

    def history(self, prompt_id: str) -> dict | None:
        """The finished prompt's record, or None while it is not finished."""
        entry = self._json("GET", f"/history/{prompt_id}")
        return entry.get(prompt_id) if isinstance(entry, dict) else None

    def view(self, ref: dict) -> bytes:
        params = {key: ref.get(key, "") for key in ("filename", "subfolder", "type")}
        response = self._request("GET", "/view", params=params)
        if response.status_code != 200:
            raise ComfyError(f"ComfyUI at {self.url} did not return image {ref.get('filename')} "
                             f"(HTTP {response.status_code})")
        return response.content

    # ---- rendering -----------------------------------------------------------------------

    def render(self, jobs: list[RenderJob], *, on_event: Callable[[RenderEvent], None] | None = None,
               on_result: Callable[[RenderResult], None] | None = None,
               cancel: Callable[[], bool] | threading.Event | None = None,
               timeout: float | None = None, poll_seconds: float = 0.2,
               silence_check_seconds: float = 5.0) -> list[RenderResult]:
        """Queue ``jobs`` as one batch and follow them to the end; results in job order.

        ``on_event`` gets progress, ``on_result`` each job's images as soon as they are fetched
        (a compare grid or block analysis fills in as renders finish). ``cancel`` is polled every
        ``poll_seconds``: pending jobs are taken off the queue, the running one interrupted,
        and CancelledError raised. Whenever the websocket stays silent ``silence_check_seconds``,
        the queue and history are asked directly, so a missed message or a server that dropped
        the jobs never leaves this waiting. ``timeout`` (seconds) bounds the whole batch.
        """
        return _Batch(self, jobs, on_event, on_result, cancel, timeout, poll_seconds,
                      silence_check_seconds).run()

    def _open_websocket(self):
        from websockets.sync.client import connect

        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        uri = urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={self.client_id}", ""))
        try:
            connection = connect(uri, open_timeout=self.connect_timeout, close_timeout=2, max_size=None)
            # websockets >= 17.1 wants the context-manager form (it warns otherwise); entering
            # returns the same connection, and close() ends it either way.
            return connection.__enter__()
        except (OSError, TimeoutError) as exc:
            raise ComfyUnreachable(f"cannot open ComfyUI's websocket at {self.url}: {one_line(exc)}") from None
        except Exception as exc:  # the library's handshake errors (InvalidStatus, InvalidURI, …)
            raise ComfyUnreachable(f"{self.url} did not accept a websocket as ComfyUI does ({one_line(exc)})") from None


class _Batch:
    """One ``render`` call's state."""

    def __init__(self, client: ComfyClient, jobs, on_event, on_result, cancel, timeout, poll, silence):
        self.client = client
        self.jobs = list(jobs)
        self.on_event = on_event or (lambda event: None)
        self.on_result = on_result or (lambda result: None)
        self.cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.poll = poll
        self.silence = silence
        self.index = {job.prompt_id: i for i, job in enumerate(self.jobs)}
        self.results: dict[int, RenderResult] = {}
        self.queued_at: dict[int, float] = {}
        self.websocket = None

    def run(self) -> list[RenderResult]:
        if not self.jobs:
            return []
        self.websocket = self.client._open_websocket()
        try:
            queued = []
            try:
                for i, job in enumerate(self.jobs):
                    self.client.queue(job)
                    queued.append(job.prompt_id)
                    self.queued_at[i] = time.monotonic()
                    self.on_event(RenderEvent(i, "queued"))
            except ComfyError:
                self._abandon(queued)
                raise
            try:
                self._follow()
            except KeyboardInterrupt:  # Ctrl+C in the CLI: the server stops too
                self._abandon(self._pending())
                raise
        finally:
            self._close_websocket()
        return [self.results[i] for i in range(len(self.jobs))]

    def _pending(self) -> list[str]:
        return [job.prompt_id for i, job in enumerate(self.jobs) if i not in self.results]

    def _follow(self) -> None:
        from websockets.exceptions import ConnectionClosed

        last_heard = time.monotonic()
        while len(self.results) < len(self.jobs):
            if self.cancelled():
                self._abandon(self._pending())
                raise CancelledError()
            if self.deadline is not None and time.monotonic() > self.deadline:
                self._abandon(self._pending())
                raise ComfyError(f"ComfyUI at {self.client.url} did not finish the render within "
                                 f"{self.timeout:.0f} s; it was cancelled")
            try:
                message = self.websocket.recv(timeout=self.poll)
            except TimeoutError:
                message = None
            except ConnectionClosed:
                self._reconnect()
                self._check_directly()
                last_heard = time.monotonic()
                continue
            if message is None or isinstance(message, bytes):  # bytes: live previews, not asked for
                if time.monotonic() - last_heard > self.silence:
                    self._check_directly()
                    last_heard = time.monotonic()
                continue
            try:
                event = json.loads(message)
            except ValueError:
                continue
            if self._handle(event):
                last_heard = time.monotonic()

    def _handle(self, event: dict) -> bool:
        """Act on one websocket message; True when it was about one of our jobs."""
        kind, data = event.get("type"), event.get("data") or {}
        job = self.index.get(data.get("prompt_id"))
        if job is None or job in self.results:
            return False
        if kind == "execution_start":
            self.on_event(RenderEvent(job, "started"))
        elif kind == "executing":
            if data.get("node") is None:
                self._finish(job)
            else:
                self.on_event(RenderEvent(job, "executing", node=str(data.get("node"))))
        # "execution_success" comes before the history is written; "executing" with no node after.
        elif kind == "progress":
            self.on_event(RenderEvent(job, "progress", node=str(data.get("node")),
                                      value=int(data.get("value", 0)), maximum=int(data.get("max", 0))))
        elif kind == "execution_error":  # the failed job has ended; the others are dropped
            self._abandon([p for p in self._pending() if p != self.jobs[job].prompt_id])
            raise ComfyRenderFailed(_execution_error_sentence(data))
        elif kind == "execution_interrupted":
            self._abandon(self._pending())
            if self.cancelled():
                raise CancelledError()
            raise ComfyError(f"the render was interrupted in ComfyUI at {self.client.url} (node "
                             f"{data.get('node_type', '?')})")
        return True

    def _finish(self, job: int) -> None:
        prompt_id = self.jobs[job].prompt_id
        record = self.client.history(prompt_id)
        if record is None:  # "done" arrived before the history was written: ask again shortly
            for _ in range(20):
                time.sleep(0.05)
                record = self.client.history(prompt_id)
                if record is not None:
                    break
            else:
                raise ComfyError(f"ComfyUI at {self.client.url} finished a render but has no record of it")
        self._take(job, record)

    def _take(self, job: int, record: dict) -> None:
        status = record.get("status") or {}
        if status.get("status_str") == "error":
            self._abandon(self._pending())
            for name, data in status.get("messages") or []:
                if name == "execution_error":
                    raise ComfyRenderFailed(_execution_error_sentence(data))
                if name == "execution_interrupted":
                    if self.cancelled():
                        raise CancelledError()
                    raise ComfyError(f"the render was interrupted in ComfyUI at {self.client.url}")
            raise ComfyRenderFailed(f"ComfyUI at {self.client.url} reports that the render failed")
        refs = list(((record.get("outputs") or {}).get(self.jobs[job].output_node) or {}).get("images") or [])
        if not refs:
            raise ComfyRenderFailed(f"ComfyUI at {self.client.url} finished the render without an image")
        images = [self.client.view(ref) for ref in refs]
        result = RenderResult(job, self.jobs[job].prompt_id, images, refs,
                              time.monotonic() - self.queued_at.get(job, time.monotonic()))
        self.results[job] = result
        self.on_event(RenderEvent(job, "done"))
        self.on_result(result)

    def _check_directly(self) -> None:
        """Ask the server instead of the websocket: finished jobs are taken, and a job it neither
        runs, holds nor remembers is lost (the server restarted)."""
        running, pending = self.client.queue_ids()
        for job, item in enumerate(self.jobs):
            if job in self.results:
                continue
            record = self.client.history(item.prompt_id)
            if record is not None:  # ComfyUI writes the history once a prompt has ended
                self._take(job, record)
            elif item.prompt_id not in running and item.prompt_id not in pending:
                raise ComfyError(f"ComfyUI at {self.client.url} dropped the render (it neither runs, "
                                 f"queues nor remembers it: was the server restarted?)")

    def _reconnect(self) -> None:
        self._close_websocket()
        for attempt in range(3):
            time.sleep(0.5 * (attempt + 1))
            try:
                self.websocket = self.client._open_websocket()
                return
            except ComfyUnreachable:
                continue
        raise ComfyUnreachable(f"ComfyUI at {self.client.url} went away during the render "
                               f"(its connection closed and it does not answer)")

    def _abandon(self, prompt_ids: list[str]) -> None:
        """Take our unfinished jobs off the queue and interrupt the one running, if the server is
        still there; a failure here never hides the error that brought us here."""
        if not prompt_ids:
            return
        try:
            self.client.delete_queued(prompt_ids)
            running, _ = self.client.queue_ids()
            interrupted = [prompt_id for prompt_id in prompt_ids if prompt_id in running]
            for prompt_id in interrupted:
                self.client.interrupt(prompt_id)
            if interrupted:
                self._await_stop(set(interrupted))
        except ComfyError:
            pass

    def _await_stop(self, prompt_ids: set[str], limit: float = INTERRUPT_WAIT_SECONDS) -> None:
        """Wait until the interrupted prompts have stopped (the sampler sees the interrupt at
        its next step), so the server is free when ``render`` returns; at most ``limit`` s.

        A prompt the server has taken off its queue but not yet started is "running" already, and
        starting clears the interrupt flag (ComfyUI resets it at the start of every prompt): the
        interrupt is sent again while such a prompt still runs."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            running, _ = self.client.queue_ids()
            if not prompt_ids & running:
                return
            for prompt_id in prompt_ids & running:
                self.client.interrupt(prompt_id)
            if self.websocket is None:
                time.sleep(self.poll)
                continue
            try:
                self.websocket.recv(timeout=self.poll)  # wakes on the server's next message
            except TimeoutError:
                pass
            except Exception:  # noqa: BLE001 - a closed socket: the queue is asked again
                time.sleep(self.poll)

    def _close_websocket(self) -> None:
        if self.websocket is not None:
            try:
                self.websocket.close()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail in any way
                pass
            self.websocket = None


def _execution_error_sentence(data: dict) -> str:
    node = data.get("node_type") or "?"
    kind = data.get("exception_type") or "error"
    message = one_line(Exception(data.get("exception_message") or ""))
    hint = ""
    if "out of memory" in message.lower() or kind.endswith("OutOfMemoryError"):
        hint = " (the GPU ran out of memory: try a smaller size)"
    return f"ComfyUI failed in {node} (node {data.get('node_id', '?')}): {kind.rsplit('.', 1)[-1]}: {message}{hint}"


def _has_files(names: list[str]) -> str:
    if not names:
        return "it has none"
    shown = ", ".join(f"`{n}`" for n in names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return "it has: " + shown + (f" … (+{more} more)" if more > 0 else "")


def _short(text, limit: int = 200) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
