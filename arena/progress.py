"""Progress reporting that plugins and the trainer call without caring where it is shown."""

from __future__ import annotations

from typing import Any, Protocol


class Task(Protocol):
    def advance(self, n: int = 1, **info: Any) -> None: ...
    def close(self) -> None: ...


class Progress:
    """Silent by default; the CLI swaps in :class:`RichProgress`, workers report to the driver."""

    def task(self, description: str, total: int | None = None) -> Task:
        return _NullTask()


class _NullTask:
    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RichProgress(Progress):
    """A rich progress bar per task, for interactive CLI commands."""

    def __init__(self, console: Any = None, transient: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RP

        self._rp = RP(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console, transient=transient)
        self._rp.start()

    def task(self, description: str, total: int | None = None) -> Task:
        rp = self._rp
        tid = rp.add_task(description, total=total, info="")

        class _T:
            def advance(self, n: int = 1, **info: Any) -> None:
                text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
                rp.update(tid, advance=n, info=text)

            def close(self) -> None:
                rp.stop_task(tid)

            def __enter__(self) -> _T:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.close()

        return _T()

    def stop(self) -> None:
        self._rp.stop()
