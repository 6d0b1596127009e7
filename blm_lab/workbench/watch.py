"""What a person watching ``blm-lab run`` or ``blm-lab sweep`` sees while the notebooks train.

A background thread follows the run directories' files that the training loop and the sweep write
anyway: every new line of ``checkpoint/metrics.jsonl`` becomes one line (step, training and validation
bits/byte, tokens/s, time left), and for a sweep every change of the points' states (``point.json``)
one progress line: done, running, failed, waiting. Plain lines, no progress bars: they read the same
in a terminal, a log file and a notebook cell.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable, Mapping

METRICS = Path("checkpoint") / "metrics.jsonl"  # training.loop.METRICS_FILE in RunDir.CHECKPOINT_DIR
POINT_STATE = "point.json"  # a sweep point's state: running, done or failed, and where it ran
POLL_S = 1.0


def read_state(run_dir: Path) -> dict:
    """A sweep point's ``point.json`` ({} before it started)."""
    path = Path(run_dir) / POINT_STATE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or being replaced this instant
        return {}


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def describe_record(record: Mapping) -> str:
    """One metrics record as a line: step, train and validation bits/byte, tokens/s and the time left."""
    train = record.get("train_bpb")
    parts = [f"step {record['step']}",
             f"train {train:.3f}" if train is not None else "train -",
             f"validation {record['val_bpb']:.3f} bits/byte",
             f"{record.get('tokens_per_s', 0) / 1000:.1f}k tokens/s"]
    done, elapsed = record.get("fraction_done"), record.get("elapsed_s", 0.0)
    if done:
        parts.append(f"{_duration(elapsed * (1 - done) / done)} left")
    return ", ".join(parts)


class Watch:
    """Follow run directories in a thread while the notebooks run: ``with Watch({label: dir}, print): ...``.

    ``label`` prefixes each training line (empty for a single run). With ``states``, the points' progress
    line is printed whenever it changes.
    """

    def __init__(self, run_dirs: Mapping[str, Path], emit: Callable[[str], None] = print, states: bool = False):
        self.run_dirs = {label: Path(path) for label, path in run_dirs.items()}
        self.emit, self.states = emit, states
        self._seen = {label: 0 for label in self.run_dirs}
        self._progress = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="blm-lab-watch", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()  # the last records, written just before the run ended
        return False

    def _loop(self):
        while not self._stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        """Emit what changed since the last poll."""
        counts = {"done": 0, "running": 0, "failed": 0}
        for label, run_dir in self.run_dirs.items():
            if self.states:
                state = read_state(run_dir).get("state")
                if state in counts:
                    counts[state] += 1
            lines = self._new_lines(label, run_dir / METRICS)
            for record in lines:
                self.emit(f"{label}: {describe_record(record)}" if label else describe_record(record))
        if self.states:
            waiting = len(self.run_dirs) - sum(counts.values())
            progress = (f"points: {counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
                        f"{waiting} waiting (of {len(self.run_dirs)})")
            if progress != self._progress:
                self._progress = progress
                self.emit(progress)

    def _new_lines(self, label: str, path: Path) -> list[dict]:
        try:
            lines = [line for line in path.read_text().splitlines() if line.strip()]
        except OSError:
            return []
        if len(lines) < self._seen[label]:  # a rerun of the point started the file again
            self._seen[label] = 0
        records = []
        for line in lines[self._seen[label]:]:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line being written: read it next time
                break
        self._seen[label] += len(records)
        return records
