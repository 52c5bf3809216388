"""Where tuner writes files named after plans and stages, and what those files belong to.

Plan and stage names are identifiers (checked when a plan is loaded, see :mod:`tuner.plan`);
on top of that every path built from a name goes through :func:`inside`, which refuses one
that would lie outside its root (the workdir, or an explicit ``report --out``). The check is
lexical (``..`` and absolute parts are resolved away, symbolic links are not followed): a link
the user made inside the workdir, say ``models -> /mnt/big/models``, is theirs to make.

A plan is identified by its content (:meth:`tuner.config.Plan.content`), but ``models/<plan>/``
and ``reports/<plan>/`` are named after the plan: :func:`record_plan` keeps a small
``.plan.json`` beside the files saying which plan content wrote them, and warns before an
edited plan under the same name overwrites another's.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import PlanError

if TYPE_CHECKING:
    from tuner.config import Plan

logger = logging.getLogger(__name__)

MARKER = ".plan.json"


def inside(root: Path, *parts: str) -> Path:
    """``root / parts``, absolute and normalized, refused (:class:`PlanError`) unless it lies
    strictly inside ``root``."""
    base = Path(os.path.abspath(root))
    path = Path(os.path.abspath(base.joinpath(*parts)))
    if base not in path.parents:
        raise PlanError(
            f"refusing to write {path}: the name {'/'.join(parts)!r} leads outside {base}"
        )
    return path


def model_dir(workdir: Path, plan: str) -> Path:
    """``WORKDIR/models/<plan>/``: the final model, its metrics and history."""
    return inside(workdir, "models", plan)


def report_dir(workdir: Path, plan: str) -> Path:
    """``WORKDIR/reports/<plan>/``: the report and its plots."""
    return inside(workdir, "reports", plan)


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The ``.plan.json`` of ``directory``: which plan content wrote it (``None``: unknown)."""
    try:
        marker = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def record_plan(directory: Path, plan: Plan, what: str) -> None:
    """Before writing ``what`` into ``directory`` for ``plan``: warn when the directory holds
    the output of another content of a plan with this name, then record this plan's."""
    directory = Path(directory)
    marker = {
        "plan": plan.name,
        "plan_content": plan.content,
        "plan_file": str(plan.path) if plan.path else None,
    }
    old = read_marker(directory)
    if old is not None and old.get("plan_content") != marker["plan_content"]:
        logger.warning(
            "overwriting %s in %s: it was written by another plan named %r (plan content %s, "
            "from %s); this plan (content %s, from %s) was edited under the same name. Give an "
            "edited plan its own `name` to keep both",
            what,
            directory,
            old.get("plan", plan.name),
            old.get("plan_content"),
            old.get("plan_file") or "?",
            marker["plan_content"],
            marker["plan_file"] or "?",
        )
    if old == marker:
        return
    write_text(directory / MARKER, json.dumps(marker, indent=2) + "\n")


def atomic_write(path: Path, write: Callable[[str], None], *, mode: int = 0o644) -> None:
    """Write ``path`` whole with ``write(filename)``; an ``OSError`` (a full disk, a read-only
    directory) names ``path``.

    A regular file (or a new one) is written through a temp file in its directory, then
    renamed onto it: never a half file, and the file gets ``mode`` (the temp file's 0600 would
    otherwise carry over to a report or a predictions file). A symbolic link is followed: its
    target is written that way and the link stays a link. Anything else that exists and is not
    a regular file (a character device such as ``/dev/null``, a FIFO, a socket, what
    ``/proc/self/fd/1`` points at) is written directly: renaming onto it would replace the
    device node or the pipe with a plain file that no reader sees."""
    path = Path(path)
    try:
        kind = os.stat(path).st_mode  # follows links: what the path ends at
    except FileNotFoundError:
        kind = None
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    if kind is not None and stat.S_ISDIR(kind):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if kind is not None and not stat.S_ISREG(kind):
        try:
            write(str(path))
        except OSError as err:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        return
    target = Path(os.path.realpath(path))  # a link's target (or a dangling link's)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write ``text`` whole through :func:`atomic_write` (``mode``: a regular file's)."""

    def write(filename: str) -> None:
        with open(filename, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    atomic_write(Path(path), write, mode=mode)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` through memory, then one plain write: a full disk is an ``OSError``
    (ENOSPC) rather than torch's RuntimeError "file write failed"."""
    import torch  # only where a model is saved

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    Path(path).write_bytes(buffer.getvalue())
