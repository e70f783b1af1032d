"""Alerts to webhooks (Slack-compatible ``text`` plus the details), from a background thread: retried,
never blocking a migration, and sent once per event (the ledger remembers which were sent)."""

from __future__ import annotations

from .. import logs
import queue
import threading
import time
from typing import Any, Callable

import httpx


class Alerter:
    def __init__(self, webhooks: list[str], claim: Callable[[str, dict], bool], retries: int = 3,
                 timeout: float = 5.0, log: Callable[[str], None] = print, on_result: Callable[[bool], None] | None = None):
        self.webhooks = list(webhooks)
        self.claim = claim
        self.retries = int(retries)
        self.timeout = float(timeout)
        self.log = log
        self.on_result = on_result or (lambda ok: None)
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self.thread.start()

    def alert(self, key: str, text: str, **details: Any) -> bool:
        """Queue an alert unless ``key`` was alerted before. Returns True when queued."""
        payload = {"text": f"spot.migration: {text}", "key": key, **details}
        if not self.claim(key, payload):
            return False
        self.log(f"alert: {text}")
        if self.webhooks:
            self.queue.put(payload)
        return True

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False) as client:
            while True:
                payload = self.queue.get()
                if payload is None:
                    return
                for url in self.webhooks:
                    self.on_result(self._send(client, url, payload))
                self.queue.task_done()

    def _send(self, client: httpx.Client, url: str, payload: dict) -> bool:
        delay = 0.5
        for attempt in range(1, self.retries + 2):
            try:
                response = client.post(url, json=payload)
                if response.status_code < 300:
                    return True
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt <= self.retries:
                time.sleep(delay)
                delay *= 2
        self.log(logs.warning(f"alert {payload['key']} to {url} failed after {self.retries + 1} tries: {error}"))
        return False

    def close(self, timeout: float = 5.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout)
