"""The int8 runtime: a full-integer LiteRT model, calibrated on the build's own images and
trusted only after it passes the task check against float32 (see `embed.quantise`).

Calibration and the check are the build's one-time work (`embed.build.prepare_runtime`, on
the driver for every engine); afterwards `model_file` is the `.tflite` that produces the
vectors, the one a bundle serves and Ray workers run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embed import int8_choice, quantise
from embed.atomic import atomic_write_text
from embed.litert_model import LITERT_MAX_ROWS, TFLiteModel, run_pixels
from embed.litert_runtime import LiteRTRuntime
from embed.quantise import export_int8, task_check

log = logging.getLogger(__name__)


class LiteRTInt8Runtime:
    """A full-integer (int8) LiteRT model, calibrated on the build's own images and trusted
    only after it passes the task check against float32 (see `embed.quantise`).

    Until `calibrate` has run, and whenever the check fails, the float32 LiteRT runtime
    (``float_``, itself checked against Keras) produces the vectors. ``max_top1_drop`` and
    ``min_overlap`` are the task bounds (default: `embed.quantise`'s). State learned at run
    time: ``int8_`` (the figures of the task check, None before `calibrate`),
    ``use_int8_``, ``seconds_`` (one-time costs).
    """

    def __init__(
        self,
        model: Any,
        *,
        cache_key: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
        replicas: int | None = None,
        requested: str = "litert-int8",
        max_rows: int = LITERT_MAX_ROWS,
        max_top1_drop: float | None = None,
        min_overlap: float | None = None,
        reuse_parity: bool = False,
    ) -> None:
        self.model = model
        self.requested = requested
        # None: the bounds of embed.quantise, read now (tests loosen or tighten them there)
        self.max_top1_drop = quantise.MAX_TOP1_DROP if max_top1_drop is None else max_top1_drop
        self.min_overlap = quantise.MIN_OVERLAP if min_overlap is None else min_overlap
        self.float_ = LiteRTRuntime(model, cache_key=cache_key, cache_dir=cache_dir,
                                    num_threads=num_threads, requested=requested,
                                    max_rows=max_rows, replicas=replicas,
                                    reuse_parity=reuse_parity)
        self.int8_: dict[str, Any] | None = None
        self.decision_: str | None = None  # auto: the one line that says what and why
        self.use_int8_ = False
        self.seconds_: dict[str, float] = {}
        self._int8_model: TFLiteModel | None = None
        self._parity_before = 0.0
        self.int8_file: Path | None = None

    @property
    def name(self) -> str:
        return "litert-int8" if self.use_int8_ else self.float_.name

    @property
    def concurrency(self) -> int:
        return self.float_.replicas if self.use_int8_ else self.float_.concurrency

    @property
    def parity(self) -> dict[str, Any] | None:
        """The float32 model's first-batch agreement with Keras (int8 is judged on the task)."""
        return self.float_.parity

    @property
    def parity_pending(self) -> bool:
        return self.float_.parity_pending

    @property
    def fallback_reason(self) -> str | None:
        """Why the vectors are not int8: the float model's fall-back to Keras, or the task
        check's (or conversion's) verdict; None before `calibrate` and when int8 is used."""
        if self.float_.fallback_reason:
            return self.float_.fallback_reason
        if self.int8_ is not None and not self.use_int8_:
            return f"int8 model not used: {self.int8_.get('reason')}"
        return None

    @property
    def seconds(self) -> dict[str, float]:
        """One-time costs: the float model's (conversion, parity), then int8's."""
        return {**self.float_.seconds, **self.seconds_}

    @property
    def float_runtime(self) -> LiteRTRuntime:
        return self.float_

    calibrates = True  # `calibrate` needs a sample of the build's images

    @property
    def model_file(self) -> Path | None:
        """The int8 `.tflite` once it passed its task check, else the float model's."""
        if self.use_int8_ and self.int8_file is not None:
            return self.int8_file
        return self.float_.model_file

    def check_parity(self, batch: np.ndarray) -> None:
        self.float_.check_parity(batch)

    @property
    def cache_file(self) -> Path:
        """The `.tflite` that produces the vectors (the bundle's serving model)."""
        return self.int8_file if self.use_int8_ and self.int8_file else self.float_.cache_file

    def int8_path(self, calibration_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.float_.cache_key)
        return self.float_.cache_dir / f"{safe}-int8-{calibration_id[:16]}.tflite"

    def calibrate(
        self,
        calibration: Callable[[], Iterator[np.ndarray]],
        calibration_id: str,
        check: Iterable[tuple[np.ndarray, Sequence[str | None]]],
        calibration_rows: int | None = None,
        check_id: str | None = None,
        images: int | None = None,
        choice: str | None = None,
    ) -> dict[str, Any]:
        """Quantise (or reuse the cached int8 model for this calibration sample), embed the
        check batches with both models, judge int8 on the task and choose.

        `calibration()` yields preprocessed input batches; `calibration_id` names them
        (`embed.quantise.sample_identity`); `check` yields (inputs, labels) batches, and
        `check_id`, when given, names them so that the verdict is cached beside the int8
        model (the same model judged on the same sample needs no second look).
        Under ``auto`` (`requested`), int8 must also finish `images` sooner than float32
        (`embed.int8_choice`): the choice is made before converting, again once int8 was
        timed, and `decision_` says it in one line.
        Returns the figures that go into the manifest under ``int8``.
        """
        start = time.perf_counter()
        self._parity_before = self.float_.seconds_.get("parity", 0.0)
        figures: dict[str, Any] = {"calibration": {"sha256": calibration_id,
                                                   "rows": calibration_rows}}
        path = self.int8_path(calibration_id)
        bounds = f"{self.max_top1_drop}-{self.min_overlap}"
        verdict = (path.with_name(f"{path.stem}.check-{check_id[:16]}-{bounds}.json")
                   if check_id else None)
        auto = self.requested == "auto" and not self.float_.fell_back_
        rows = min(images or quantise.CHECK_ITEMS, quantise.CHECK_ITEMS)
        kept = " (kept from the interrupted build this resumes)"
        if auto and choice == "litert-int8":
            self.decision_ = f"int8{kept}"
        elif auto and choice is not None:
            return self._skip(figures, f"float32{kept}", start)
        elif auto:
            chosen = self._choose(path, verdict, images or 0, rows)
            if not chosen.use_int8:
                return self._skip(figures, chosen.line, start)
        try:
            figures["cache_file"] = str(path)
            if not path.is_file():
                log.info("quantising the backbone to int8 (once per backbone, weights and"
                         " calibration sample, cached in %s)", path.parent)
                converting = time.perf_counter()
                export_int8(self.model, path, calibration)
                self.seconds_["int8 conversion"] = time.perf_counter() - converting
                figures["converted"] = True
                int8_choice.keep_speed(self.float_.cache_key, **{  # what auto will weigh
                    "int8 conversion": self.seconds_["int8 conversion"]})
            self._int8_model = TFLiteModel(path, self.float_.num_threads, self.float_.max_rows,
                                           self.float_.replicas)
            self.int8_file = path
        except Exception as exc:  # conversion failed: float32 still works
            figures.update(passed=False, reason=f"int8 conversion failed: {exc}")
            return self._decide(figures, start)
        if auto and choice is None and "int8 conversion" in self.seconds_:  # timed now
            chosen = self._choose(path, verdict, images or 0, rows)
            if not chosen.use_int8:
                return self._skip(figures, chosen.line, start)
        if verdict is not None and verdict.is_file() and not self.float_.fell_back_:
            try:
                figures.update(json.loads(verdict.read_text())["figures"], check_cached=True)
                return self._decide(figures, start)
            except (OSError, ValueError, KeyError):
                pass  # judge again
        reference, candidate, labels = [], [], []
        for inputs, batch_labels in check:
            if not len(inputs):
                continue
            reference.append(l2_rows(self.float_.embed(inputs)))
            candidate.append(l2_rows(self._int8_model.run(inputs)))
            labels.extend(batch_labels)
        if self.float_.fell_back_:
            figures.update(passed=False, reason="the float32 LiteRT model failed its parity"
                           " check against Keras, so int8 was not judged")
        elif not reference:
            figures.update(passed=False, reason="no readable image to judge int8 on")
        else:
            judged = task_check(np.concatenate(reference), np.concatenate(candidate), labels,
                                self.max_top1_drop, self.min_overlap)
            figures.update(judged)
            if verdict is not None:
                atomic_write_text(verdict, json.dumps({"figures": judged}))
        return self._decide(figures, start)

    def _choose(self, path: Path, verdict: Path | None, images: int, check_rows: int
                ) -> int8_choice.Choice:
        """auto: time the models here unless cached, weigh int8's gain against its costs
        not cached yet (`embed.int8_choice.decide_int8`)."""
        key = self.float_.cache_key
        record = int8_choice.read_speed(key)
        converted = path.is_file()
        try:
            if converted and "int8" not in record:
                int8 = self._int8_model or TFLiteModel(path, 1, self.float_.max_rows, 1)
                record = int8_choice.keep_speed(key, **int8_choice.time_models(
                    {"float32": self.float_.bare_model, "int8": int8}))
            elif "float32" not in record:
                record = int8_choice.keep_speed(key, **int8_choice.time_models(
                    {"float32": self.float_.bare_model}))
        except Exception as exc:  # timing failed: stay with float32, say why
            return int8_choice.Choice(False, f"float32: int8 could not be timed ({exc})", None)
        measured = "int8" in record
        gain = record["float32"] / record["int8"] if measured else int8_choice.prior_gain()
        checked = verdict is not None and verdict.is_file()
        costs = int8_choice.remaining_costs(record, converted, checked, check_rows,
                                            self.float_.replicas)
        choice = int8_choice.decide_int8(int8_choice.Outlook(
            images, record["float32"], gain, self.float_.replicas, costs, measured))
        self.decision_ = choice.line
        return choice

    def _skip(self, figures: dict[str, Any], line: str, start: float) -> dict[str, Any]:
        """auto chose float32: not a failure, so no warning."""
        figures.update(passed=None, reason=line, skipped=True)
        self.decision_ = line
        self.use_int8_ = False
        self.int8_ = figures
        self.seconds_["runtime choice"] = round(time.perf_counter() - start, 3)
        return figures

    def _decide(self, figures: dict[str, Any], start: float) -> dict[str, Any]:
        self.use_int8_ = bool(figures.get("passed"))
        self.int8_ = figures
        # what the check itself took: not the conversion, not the float model's parity check
        self.seconds_["int8 check"] = (time.perf_counter() - start
                                       - self.seconds_.get("int8 conversion", 0.0)
                                       - self.float_.seconds_.get("parity", 0.0)
                                       + self._parity_before)
        if "top1_float32" in figures and not figures.get("check_cached"):  # judged now
            int8_choice.keep_speed(self.float_.cache_key, **{
                "int8 check": self.seconds_["int8 check"], "int8 check rows": figures["rows"]})
        if self.requested == "auto":
            if self.use_int8_:
                self.decision_ = f"{self.decision_ or 'int8'}; check passed"
            else:
                self.decision_ = f"float32: int8 not used ({figures.get('reason')})"
        if not self.use_int8_:
            # one line wherever it shows (no source line under it, no second copy in the log)
            warnings.warn_explicit(
                f"int8 model not used ({figures.get('reason')}); embedding with float32",
                RuntimeWarning, "embed-dogs", 0)
        return figures

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self.use_int8_ and self._int8_model is not None:
            return self._int8_model.run(batch)
        return self.float_.embed(batch)

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        if self.use_int8_ and self._int8_model is not None:
            return run_pixels(self._int8_model, pixels, preprocessing)
        return self.float_.embed_pixels(pixels, preprocessing)

    def describe(self) -> dict[str, Any]:
        d = self.float_.describe()
        d.update(name=self.name, requested=self.requested,
                 precision="int8" if self.use_int8_ else "float32",
                 cache_file=str(self.cache_file),
                 int8=self.int8_ or {"passed": None, "reason": "not calibrated"})
        if self.decision_:
            d["decision"] = self.decision_
        return d


def l2_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
