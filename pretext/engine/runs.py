"""Run directories and run records (DESIGN §2).

A run directory holds ``config.yaml`` (resolved config + git revision + versions),
``metrics.json`` (flat records: suite, method, encoder, protocol, dataset, split, layer,
metric, value, plus run id and date), ``log.jsonl`` (one JSON object per event) and
``checkpoints/``. Only rank 0 writes (callers pass ``enabled=is_main()``).

``log`` is the one log helper: a JSON line in ``log.jsonl`` and, with ``echo``, the
same text on the console (tqdm-safe), rank 0 only.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any

from pretext.engine.checkpoint import atomic_write_text
from pretext.engine.config import environment, git_revision, to_yaml

RECORD_FIELDS = ("suite", "method", "encoder", "protocol", "dataset", "split", "layer", "metric", "value")
RECORD_SCHEMA = "colorbench-records-v1"


class RunDir:
    """A run directory; every write is a no-op when ``enabled`` is False (ranks > 0)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.run_id = self.path.name
        if enabled:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)

    def write_config(self, config: Any, argv: list[str] | None = None) -> None:
        if not self.enabled:
            return
        header = {"git_revision": git_revision(), "argv": argv or [], "versions": environment(),
                  "created": _dt.datetime.now().isoformat(timespec="seconds")}
        text = to_yaml(config) + "\n# run metadata\n" + "".join(f"# {line}\n" for line in json.dumps(header, indent=1).splitlines())
        atomic_write_text(self.path / "config.yaml", text)

    def log(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        with open(self.path / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields}) + "\n")

    def say(self, text: str) -> None:
        """The one log helper: print (tqdm-safe) and log a ``message`` event; rank 0 only."""
        if not self.enabled:
            return
        from tqdm import tqdm
        tqdm.write(text)
        self.log("message", text=text)

    def write_records(self, records: list[dict], extra: dict | None = None) -> None:
        """Write ``metrics.json``: flat records, each with every field of RECORD_FIELDS."""
        if not self.enabled:
            return
        date = _dt.date.today().isoformat()
        rows = []
        for rec in records:
            missing = [f for f in RECORD_FIELDS if f not in rec]
            if missing:
                raise ValueError(f"run record lacks fields {missing}: {rec}")
            rows.append({**rec, "run_id": self.run_id, "date": date})
        payload = {"schema": RECORD_SCHEMA, "run_id": self.run_id, "records": rows, **(extra or {})}
        atomic_write_text(self.path / "metrics.json", json.dumps(payload, indent=1))

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"


