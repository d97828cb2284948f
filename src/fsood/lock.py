"""One orchestrator per workspace: Snakemake and ``dvc repro`` never run side by side.

Both tools run the same ``python -m fsood`` commands into the same files, and DVC deletes a
stage's outputs before it reruns it, so two orchestrators at once would overwrite (or delete)
each other's work. A per-call lock cannot help: Snakemake (and a user by hand) runs many
``fsood`` jobs in parallel on purpose. So the lock belongs to the orchestrator:

- Snakemake's ``onstart`` calls :func:`hold`: an exclusive ``flock`` on
  ``.snakemake/fsood.lock``, kept for the life of the snakemake process (the kernel drops it
  when that process dies, so a lock is never stale), with a JSON note of who holds it. Dry runs
  (``-n``) and runs with nothing to do never call ``onstart``. :func:`hold` also adds a write
  entry for the whole workspace to DVC's own path lock (``.dvc/tmp/rwlock``), so a ``dvc repro``
  started meanwhile refuses before it deletes anything ("... is busy, it is being blocked by
  (PID n): snakemake ..."); DVC drops entries of dead processes by itself.
- ``dvc repro`` holds DVC's repo lock (``.dvc/tmp/lock``) for its whole run; :func:`hold`
  refuses to start Snakemake while it is held.
- Each ``fsood`` stage call runs :func:`check_orchestrator`: it walks its parent processes to
  learn which tool started it and refuses if the *other* tool holds the workspace (a second
  line of defence for races; a call by hand is never refused).
"""
from __future__ import annotations

import atexit
import datetime as _dt
import fcntl
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = Path(".snakemake") / "fsood.lock"  # ignored by git, like the rest of .snakemake/
DVC_REPO_LOCK = Path(".dvc") / "tmp" / "lock"
DVC_RWLOCK = Path(".dvc") / "tmp" / "rwlock"
TOOLS = ("snakemake", "dvc")

_held: dict[Path, tuple[int, dict]] = {}  # workspace -> (open fd holding the flock, note)


class WorkspaceBusy(RuntimeError):
    """The other orchestrator is running in this workspace."""


def _flock_free(path: Path, mode: int = fcntl.LOCK_SH) -> bool:
    """True if nobody holds an exclusive flock on ``path`` (probed and released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a probe lock we may have taken
    return True


def _read_note(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return pid is not None
    return True


def _dvc_entries(rw: dict) -> list[dict]:
    """Live processes other than this one named in DVC's path lock (read or write entries)."""
    infos = [i for v in rw.get("read", {}).values() for i in v] + list(rw.get("write", {}).values())
    return [i for i in infos if i.get("pid") != os.getpid() and _alive(i.get("pid"))
            and "fsood workspace lock" not in i.get("cmd", "")]


def _dvc_holder(root: Path) -> dict | None:
    """DVC at work here: its repo lock (held between stages; DVC drops it while a stage's command
    runs) or a live entry in its path lock (held while a stage runs)."""
    if not _flock_free(root / DVC_REPO_LOCK):
        text = (root / DVC_REPO_LOCK).read_text().strip()  # zc.lockfile writes the holder's pid
        return {"tool": "dvc", "pid": int(text) if text.isdigit() else None, "since": None,
                "command": "dvc (repo lock .dvc/tmp/lock)", "clear": f"delete {DVC_REPO_LOCK}"}
    entries = _dvc_entries(_read_note(root / DVC_RWLOCK))
    if entries:
        return {"tool": "dvc", "pid": entries[0]["pid"], "since": None, "command": entries[0]["cmd"],
                "clear": f"delete {DVC_RWLOCK}"}
    return None


def _snakemake_holder(root: Path) -> dict | None:
    """The live holder of fsood's own lock (a Snakemake run), from its JSON note."""
    if _flock_free(root / LOCK_FILE):
        return None
    note = _read_note(root / LOCK_FILE)
    return {"tool": note.get("tool", "snakemake"), "pid": note.get("pid"), "since": note.get("since"),
            "command": note.get("command", "?"), "clear": f"delete {LOCK_FILE}"}


def holder(root: str | Path = ".", tool: str | None = None) -> dict | None:
    """Who holds the workspace (only ``tool``, if given): ``{"tool", "pid", "since", "command",
    "clear"}``, or None."""
    root = Path(root)
    for name, find in (("dvc", _dvc_holder), ("snakemake", _snakemake_holder)):
        who = find(root) if tool in (None, name) else None
        if who is not None:
            return who
    return None


def busy_message(root: str | Path, who: dict, wanted: str) -> str:
    """A refusal that says who holds the workspace, since when, and how to clear a stale lock."""
    since = f", since {who['since']}" if who.get("since") else ""
    return (f"workspace {Path(root).resolve()} is in use by {who['tool']} (pid {who['pid']}{since}: "
            f"{who['command']}); {wanted} refused so the two do not overwrite each other's outputs. "
            f"Wait for it to finish. If no such process runs any more (a crash on a network file "
            f"system), {who['clear']} and retry.")


def hold(tool: str, root: str | Path = ".") -> dict:
    """Take the workspace for ``tool`` for the life of this process; raise WorkspaceBusy if taken."""
    if tool != "snakemake":  # DVC has its own locks, which fsood only reads
        raise ValueError(f"cannot hold the workspace for {tool!r}; valid: snakemake")
    root = Path(root).resolve()
    if root in _held:
        return _held[root][1]
    who = holder(root, tool="dvc")  # a second snakemake fails on the flock below
    if who is not None:
        raise WorkspaceBusy(busy_message(root, who, f"starting {tool}"))
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = _read_note(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by jobs (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkspaceBusy(busy_message(root, holder(root) or {"tool": "?", "pid": "?", "command": "?",
                                                               "clear": f"delete {LOCK_FILE}"},
                                         f"starting {tool}")) from None
    if stale.get("pid") and stale.get("pid") != os.getpid():
        log.warning("taking over the stale workspace lock of %s (pid %s, since %s): that process is gone",
                    stale.get("tool"), stale.get("pid"), stale.get("since"))
    note = {"tool": tool, "pid": os.getpid(), "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(note).encode(), 0)
    _held[root] = (fd, note)
    atexit.register(release, root)
    try:
        _dvc_block(root, note, add=True)
    except WorkspaceBusy:
        release(root)
        raise
    return note


def release(root: str | Path = ".") -> None:
    """Give the workspace back (Snakemake's onsuccess/onerror; also at exit). Idempotent."""
    root = Path(root).resolve()
    fd, note = _held.pop(root, (None, None))
    if fd is None:
        return
    _dvc_block(root, note, add=False)
    os.ftruncate(fd, 0)
    os.close(fd)


def _dvc_block(root: Path, note: dict, add: bool) -> None:
    """Add (remove) a write entry for the whole workspace in DVC's path lock, so ``dvc repro``
    refuses before it deletes a stage's outputs. Best effort: without DVC (or a .dvc folder) the
    per-call check of :func:`check_orchestrator` remains."""
    if not (root / ".dvc").is_dir():
        return
    try:
        from dvc.fs import LocalFileSystem
        from dvc.rwlock import _edit_rwlock
    except ImportError:
        return
    info = {"pid": note["pid"], "cmd": f"{note['tool']} (fsood workspace lock {LOCK_FILE}, since {note['since']})"}
    tmp = root / ".dvc" / "tmp"
    tmp.mkdir(exist_ok=True)
    try:
        with _edit_rwlock(str(tmp), LocalFileSystem(), False) as rw:
            busy = _dvc_entries(rw) if add else []  # checked and set under DVC's own guard: no race
            if busy:
                who = {"tool": "dvc", "pid": busy[0]["pid"], "command": busy[0]["cmd"], "clear": f"delete {DVC_RWLOCK}"}
                raise WorkspaceBusy(busy_message(root, who, f"starting {note['tool']}"))
            if add:
                rw["write"][str(root)] = info
            elif rw["write"].get(str(root)) == info:
                del rw["write"][str(root)]
            if not rw["write"]:
                del rw["write"]
            if not rw["read"]:
                del rw["read"]
    except WorkspaceBusy:
        raise
    except Exception as err:  # noqa: BLE001 - DVC internals may change; the per-call check remains
        log.warning("could not %s DVC's path lock (%s); relying on fsood's own check", "set" if add else "clear", err)


def _ancestry(pid: int | None = None) -> list[tuple[int, list[str]]]:
    """(pid, argv) of this process's parents, nearest first (Linux /proc; empty elsewhere)."""
    out = []
    pid = os.getppid() if pid is None else pid
    while pid > 1:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        out.append((pid, [a for a in argv if a]))
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: ppid
    return out


def _tool_of(argv: list[str]) -> str | None:
    """'snakemake' / 'dvc' if argv runs that tool (`snakemake ...`, `python /bin/dvc`, `python -m dvc`)."""
    heads = [os.path.basename(a) for a in argv[:2]]
    if len(argv) > 2 and argv[1] == "-m":
        heads.append(argv[2])
    for tool in TOOLS:
        if tool in heads:
            return tool
    return None


def orchestrator() -> str | None:
    """Which tool started this process ('snakemake', 'dvc'), or None (by hand)."""
    for _, argv in _ancestry():
        tool = _tool_of(argv)
        if tool:
            return tool
    return None


def check_orchestrator(root: str | Path = ".") -> None:
    """Raise WorkspaceBusy if this fsood call was started by one orchestrator while the other
    holds the workspace. Calls by hand, and calls from the holder itself, pass."""
    tool = orchestrator()
    if tool is None:
        return
    who = holder(root, tool=next(t for t in TOOLS if t != tool))
    if who is not None:
        raise WorkspaceBusy(busy_message(root, who, f"this fsood job (started by {tool})"))
