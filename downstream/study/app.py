"""``colorbench study serve``: the rater-facing web app (Flask; served by waitress).

Routes (the browser never learns which side is fake, nor which pairs are sanity checks,
until it has answered; image URLs name only the pair and the side):

    GET  /                          the page (instructions, consent, trials: static/study.js)
    POST /api/raters                consent given -> a new rater id and the first trial
    GET  /api/raters/<id>           where that rater is (resume after leaving)
    POST /api/raters/<id>/answers   one judgement {pair, choice, response_ms, shown_ms}
    GET  /img/<pair>/<left|right>   the two images of a pair
"""
from __future__ import annotations

import math
import re
import threading
from pathlib import Path

from flask import Flask, abort, jsonify, render_template, request, send_from_directory

from downstream.study.design import load_manifest, rater_plan
from downstream.study.store import Store

RATER_RE = re.compile(r"^[0-9a-f]{32}$")
DAY_MS = 24 * 3600 * 1000


class Plans:
    """Each rater's trial order, computed once per rater index (it is deterministic)."""

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self._cache: dict[int, tuple[list[str], dict[str, int]]] = {}
        self._lock = threading.Lock()

    def __call__(self, index: int) -> tuple[list[str], dict[str, int]]:
        with self._lock:
            if index not in self._cache:
                order = rater_plan(self.manifest, index)
                self._cache[index] = (order, {pid: i for i, pid in enumerate(order)})
            return self._cache[index]


def _bad(message: str, status: int = 400):
    response = jsonify(error=message)
    response.status_code = status
    return response


def _number(value, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) if low <= value <= high else None


def create_app(study: str | Path) -> Flask:
    study = Path(study).resolve()
    manifest = load_manifest(study)
    store = Store(study / "answers.sqlite")
    store.init()
    pairs = {p["id"]: p for p in manifest["pairs"]}
    plans = Plans(manifest)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024  # an answer is ~100 bytes
    app.config["STUDY_DIR"] = study
    app.config["STORE"] = store

    def state(rater: str, index: int) -> dict:
        order, _ = plans(index)
        answered = store.answered(rater)
        remaining = [pid for pid in order if pid not in answered]

        def trial(pid: str) -> dict:
            # "practice" is shown as such (it gets feedback); test and sanity pairs look alike
            return {"pair": pid, "practice": pairs[pid]["kind"] == "practice",
                    "left": f"/img/{pid}/left", "right": f"/img/{pid}/right"}

        return {"rater": rater, "done": len(order) - len(remaining), "total": len(order),
                "exposure_ms": manifest["exposure_ms"],
                "trial": trial(remaining[0]) if remaining else None,
                "upcoming": trial(remaining[1]) if len(remaining) > 1 else None}

    def rater_or_404(rater: str) -> int:
        index = store.rater_index(rater) if RATER_RE.match(rater) else None
        if index is None:
            abort(_bad("unknown rater id", 404))
        return index

    @app.after_request
    def no_cache_api(response):
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def page():
        n = len(plans(0)[0])
        minutes = max(1, round(n * (manifest["exposure_ms"] / 1000 + 3) / 60))
        n_practice = sum(p["kind"] == "practice" for p in manifest["pairs"])
        return render_template("index.html", n_trials=n, minutes=minutes, n_practice=n_practice,
                               exposure_s=f"{manifest['exposure_ms'] / 1000:g}",
                               consent_text=manifest.get("consent_text"))

    @app.post("/api/raters")
    def new_rater():
        body = request.get_json(silent=True) or {}
        if body.get("consent") is not True:
            return _bad("consent is required before the study starts")
        viewport = str(body.get("viewport", ""))
        rater, index = store.add_rater(request.headers.get("User-Agent", ""), viewport)
        return jsonify(state(rater, index)), 201

    @app.get("/api/raters/<rater>")
    def get_state(rater: str):
        return jsonify(state(rater, rater_or_404(rater)))

    @app.post("/api/raters/<rater>/answers")
    def answer(rater: str):
        index = rater_or_404(rater)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _bad("expected a JSON object {pair, choice, response_ms, shown_ms}")
        _, positions = plans(index)
        pid, choice = body.get("pair"), body.get("choice")
        if pid not in positions:
            return _bad(f"pair {pid!r} is not in this rater's study")
        if choice not in ("left", "right"):
            return _bad("choice must be 'left' or 'right' (the side the rater thinks is fake)")
        response_ms = _number(body.get("response_ms"), 0, DAY_MS)
        if response_ms is None:
            return _bad("response_ms must be a number of milliseconds between 0 and one day")
        shown_ms = _number(body.get("shown_ms"), 0, DAY_MS) if body.get("shown_ms") is not None else None
        pair = pairs[pid]
        recorded = store.add_judgement(rater, pair, positions[pid], choice, response_ms, shown_ms)
        reply = state(rater, index)
        reply["recorded"] = recorded  # False: a repeat of an answer already stored (the first stands)
        if pair["kind"] == "practice":
            reply["feedback"] = {"correct": choice == pair["fake"], "fake": pair["fake"]}
        return jsonify(reply)

    @app.get("/img/<pid>/<side>")
    def image(pid: str, side: str):
        if pid not in pairs or side not in ("left", "right"):
            abort(404)
        folder, name = pairs[pid][side].split("/", 1)
        return send_from_directory(study / folder, name, max_age=3600)

    return app
