"""Acceptance for the store: several processes build, add, remove, train and search one
bundle at once, some killed at random moments. Afterwards the bundle verifies, every command
that succeeded left its effect (or a later successful build replaced the bundle), and every
refusal was one line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, write_dataset

pytestmark = pytest.mark.slow
WRITERS = ("build-index", "add", "remove", "train")
WAVES = 5  # each wave: 3 commands at once, one of them killed (the suite's longest test)
# The first build converts the tiny backbone to LiteRT; every later command finds it cached
# and runs without TensorFlow (~1-3 s, not ~5-6 s of import each), so the kills come sooner.
KILL_AFTER = (0.3, 3.0)  # seconds after a wave starts


def command(op: str, bundle: Path, photos: Path, extra: Path, query: Path) -> list[str]:
    common = ["--backbone", TINY, "--weights", "none", "--runtime", "litert"]
    return {
        "build-index": ["build-index", "--source", str(photos), "--out", str(bundle),
                        "--overwrite", *common],
        "add": ["add", "--bundle", str(bundle), "--source", str(extra)],
        "remove": ["remove", "--bundle", str(bundle), "samoyed/003.jpg"],
        "train": ["train", "--bundle", str(bundle), "--head", "logreg"],
        "search": ["search", "--bundle", str(bundle), str(query)],
    }[op]


def worker_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "EMBED_DOGS_CACHE": str(cache)}


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """stderr to `log`, stdout (the command's summary) beside it, `log` + ".out"."""
    return subprocess.Popen([sys.executable, "-m", "tests.stress_worker", *args], cwd=REPO,
                            env=env, stdout=open(f"{log}.out", "w"), stderr=open(log, "w"),
                            stdin=subprocess.DEVNULL)


def test_many_processes_with_kills_leave_a_whole_bundle(tmp_path: Path) -> None:
    photos = write_dataset(tmp_path / "photos", per_class=5)
    extra = write_dataset(tmp_path / "extra", per_class=2, seed=7,
                          classes={"husky": (120, 120, 140)})
    query = next((photos / "Beagle").glob("*.jpg"))
    bundle = tmp_path / "bundle"
    env = worker_env(tmp_path / "cache")
    first = subprocess.run([sys.executable, "-m", "tests.stress_worker", *command(
        "build-index", bundle, photos, extra, query)], cwd=REPO, capture_output=True,
        text=True, env=env)
    assert first.returncode == 0, first.stderr

    rng = random.Random(0)
    runs: list[dict] = []
    kills = 0
    for wave in range(WAVES):
        procs = []
        for i in range(3):
            op = rng.choice(("build-index", "add", "remove", "train", "search", "search"))
            log = tmp_path / f"w{wave}-{i}-{op}.log"
            procs.append((op, log, start(command(op, bundle, photos, extra, query), log, env)))
        victim = rng.randrange(len(procs))
        time.sleep(rng.uniform(*KILL_AFTER))
        for j, (_op, _log, proc) in enumerate(procs):
            if j == victim and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        for op, log, proc in procs:
            code = proc.wait(300)
            runs.append({"op": op, "pid": proc.pid, "code": code, "end": time.time(),
                         "stderr": log.read_text(), "stdout": Path(f"{log}.out").read_text()})

    # a reader or writer after the storm: recovers whatever a kill left, then verifies
    verify = subprocess.run([sys.executable, "-m", "tests.stress_worker", "verify", "--bundle",
                             str(bundle)], cwd=REPO, capture_output=True, text=True,
                            env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    manifest = json.loads((bundle / "manifest.json").read_text())
    history = manifest["history"]
    built_at = history[0]["unix_time"] if history and history[0]["op"] == "build" else 0
    recorded = {(h["op"], h["pid"]) for h in history}
    lost = []
    for run in runs:
        if run["code"] != 0 or run["op"] == "search":
            continue
        if run["op"] == "add" and "nothing new: the bundle is unchanged" in " ".join(
                run["stdout"].split()):
            # every photo was there already: only an earlier add can have put them there
            assert any(r["op"] == "add" and r["code"] == 0 and r["end"] < run["end"]
                       and r is not run for r in runs), run
            continue
        op = {"build-index": "build"}.get(run["op"], run["op"])
        if op == "build" and history[0]["pid"] == run["pid"]:
            continue
        superseded = built_at > 0 and history[0]["pid"] != run["pid"] and run["end"] < built_at
        if (op, run["pid"]) not in recorded and not superseded:
            lost.append(run)
    assert not lost, lost

    refusals = [r for r in runs if r["code"] not in (0, -signal.SIGKILL)]
    for run in refusals:
        lines = [ln for ln in run["stderr"].splitlines() if ln.strip()]
        assert run["code"] == 2 and len(lines) == 1 and lines[0].startswith("error:"), run
    ok = sum(r["code"] == 0 for r in runs)
    print(f"stress: {len(runs)} commands in {WAVES} waves of 3 processes, {kills} killed, {ok}"
          f" succeeded, {len(refusals)} refused in one line, 0 lost")
    # something succeeded around the kills (seen: 4-6 of 15 at 2-5 kills; a warm command can
    # finish before its kill lands, and a writer meeting another is refused)
    assert ok >= 3 and kills >= 1
