"""Where a lab's link traces come from: recorded mahimahi files in a
directory (``--traces DIR``, by default ``../shared/traces`` beside the
repository when it exists), or, for a trace that directory does not have,
a synthetic stand-in from `bench.lab.synthetic` with the recorded trace's
mean rate, written into the run's work directory.  Every trace used is
listed with its provenance (`TraceLibrary.sources`) for the report.

Recorded traces are named as in mahimahi's distribution:
``<Carrier>-LTE-short.up`` (the client, i.e. the mobile user, sends) and
``.down`` (the server sends).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import REPO_ROOT
from bench.lab import synthetic
from bench.lab.linkmodel import Trace

DEFAULT_TRACES_DIR = REPO_ROOT.parent / "shared" / "traces"
NO_TRACES = "none"  # --traces none: synthetic stand-ins only

# Mean Mbit/s of the recorded traces (their README), the synthetic stand-ins' means.
RECORDED_MEAN_MBIT = {
    "TMobile-LTE-short.up": 13.3,
    "TMobile-LTE-short.down": 16.7,
    "Verizon-LTE-short.up": 5.9,
    "Verizon-LTE-short.down": 5.0,
}


def default_traces_dir() -> Path | None:
    return DEFAULT_TRACES_DIR if DEFAULT_TRACES_DIR.is_dir() else None


def traces_dir_from(text: str | None) -> Path | None:
    """``--traces``: a directory (absolute, or relative to the current one),
    ``none`` for synthetic traces only, or not given (the default
    directory if it exists).  ValueError for a directory that is not there."""
    if text is None:
        return default_traces_dir()
    if text == NO_TRACES:
        return None
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"{text}: no such directory (use `{NO_TRACES}` for synthetic traces)")
    return path


@dataclass
class TraceLibrary:
    """Trace files for one lab: recorded ones from ``directory``, generated
    ones written under ``workdir``, all drawn from ``seed``.  A ``dry``
    library (`describing`) touches no file: its paths are the bare trace
    names, to describe a scenario's links without building them."""

    directory: Path | None
    workdir: Path
    seed: int = 1
    sources: dict[str, str] = field(default_factory=dict)  # file name -> provenance
    dry: bool = False

    @classmethod
    def describing(cls) -> TraceLibrary:
        return cls(None, Path(), dry=True)

    def cellular(self, name: str) -> tuple[str, str]:
        """(path, provenance) of the recorded cellular trace ``name``, or of
        its synthetic stand-in (same mean rate) when the directory lacks it."""
        if self.dry:
            return name, self._note(name, "recorded trace or its synthetic stand-in")
        if self.directory is not None and (self.directory / name).is_file():
            path = self.directory / name
            Trace.load(path)  # a malformed file fails here, naming its line
            return str(path), self._note(name, f"recorded, {path}")
        if name not in RECORDED_MEAN_MBIT:
            raise ValueError(f"no trace {name!r} in {self.directory} and no synthetic "
                             f"stand-in for it (known: {', '.join(RECORDED_MEAN_MBIT)})")
        return self.synthetic_cellular(name, RECORDED_MEAN_MBIT[name], f"stand-in for {name}")

    def synthetic_cellular(self, name: str, mean_mbit: float, what: str) -> tuple[str, str]:
        """(path, provenance) of a synthetic cellular trace ``name`` (see
        `synthetic.cellular`) at ``mean_mbit``, drawn from this library's
        seed and the name; ``what`` it stands for goes into the provenance."""
        seed = f"{self.seed}:{name}"
        source = f"synthetic cellular, mean {mean_mbit:g} Mbit/s, seed {self.seed} ({what})"
        return self.generated(f"synthetic-{name}",
                              lambda: synthetic.cellular(mean_mbit, seed=seed), source)

    def generated(
        self, name: str, make_times: Callable[[], Sequence[int]], source: str
    ) -> tuple[str, str]:
        """Write a generated trace (its times made by ``make_times``); (path, provenance)."""
        if self.dry:
            return name, self._note(name, source)
        path = synthetic.write_trace(self.workdir / "traces" / name, make_times())
        return str(path), self._note(name, source)

    def _note(self, name: str, source: str) -> str:
        self.sources[name] = source
        return source
