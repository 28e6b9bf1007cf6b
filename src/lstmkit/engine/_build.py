"""Build and load the engine's C++ extension (``csrc/``) on first use.

``torch.utils.cpp_extension.load`` compiles the single translation unit ``csrc/engine.cpp``
(which includes the other files of ``csrc/``) with ninja into a cache folder; later processes
find the built module there and only import it. The folder name hashes everything the binary
depends on (every source file of ``csrc/`` and its name, the flags, torch and Python versions,
the CPU), so an edit, an upgrade or a different machine sharing the cache gets its own build.

Cache folder: ``$LSTMKIT_CACHE_DIR``, else ``$TORCH_EXTENSIONS_DIR/lstmkit``, else
``$XDG_CACHE_HOME/lstmkit`` (``~/.cache/lstmkit``). A missing compiler or ninja, or a failed
build, is reported once as a warning and the engine stays unavailable; nothing raises but an
interrupt.

What keeps a shared cache safe:

* Completion. A build counts only once its stamp ``complete.json`` (size and SHA-256 of the
  module), written last and atomically, matches the module file. Anything else in a build
  folder is what an interrupted or damaged build left: it is removed and built again (a damaged
  module with one warning), never imported.
* Turns. Processes that build the same module take turns through an exclusive ``flock`` on
  ``<cache>/<name>.lock``, which the kernel releases when its holder dies, so a killed build
  never blocks later ones. A process that has to wait says once for whom, and after
  ``$LSTMKIT_BUILD_WAIT_S`` seconds (600 by default) gives up: the engine is then unavailable to
  it (one warning) and everything runs the reference path. Where ``flock`` is missing the turn
  is a pid file, taken over once it is older than 15 minutes.
* Interrupts. The compiler runs under a child process in a session of its own. Ctrl-C or
  SIGTERM here stops every process of that session before the interrupt carries on, and the
  child does the same when this process dies, so no compiler outlives its build.

This module imports nothing from lstmkit: the build child loads it by its file path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

try:
    import fcntl
except ImportError:  # not POSIX: the pid-file turn below
    fcntl = None  # type: ignore[assignment]

_CSRC = Path(__file__).parent / "csrc"
_ENTRY = "engine.cpp"  # the one translation unit; it includes the rest of csrc/
_SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".inc")
_LIB_EXT = ".pyd" if sys.platform == "win32" else ".so"  # as torch.utils.cpp_extension names it
_STAMP = "complete.json"
_WAIT_ENV = "LSTMKIT_BUILD_WAIT_S"
_DEFAULT_WAIT_S = 600.0
_PIDFILE_STALE_S = 900.0  # far beyond any real build
_LOG = logging.getLogger("lstmkit.engine")
_LOCK = threading.Lock()
_STATE: dict[str, object] = {"module": None, "error": None, "tried": False}

# The build child: load this file by path (no lstmkit import) and build.
_CHILD = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_lstmkit_engine_builder', sys.argv[1])\n"
    "builder = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(builder)\n"
    "sys.exit(builder._child_main(sys.argv[2]))\n"
)


class _GaveUp(RuntimeError):
    """Waited the full limit for another process's build."""


class _Terminated(BaseException):
    """SIGTERM arrived while the build child ran (a BaseException, like KeyboardInterrupt)."""


def cflags() -> list[str]:
    """Compiler flags: optimised, vectorised for the building machine, OpenMP for row threads.

    ``-march=native`` is safe here because the cache key includes the CPU (:func:`_cpu_key`):
    a machine with another CPU builds its own copy. ``-fopenmp`` uses the libgomp torch already
    loaded (same soname), so there is one OpenMP runtime in the process. ``-fno-trapping-math``
    lets the compiler turn the clamps and selects of the activation loops into vector blends
    (the engine never reads floating-point exception flags); without it those loops stay scalar.
    NaN and infinity semantics are unchanged (no ``-ffast-math``).
    """
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-DNDEBUG"]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        flags.append("-march=native" if "x86" in platform.machine().lower()
                     or "amd64" in platform.machine().lower() else "-mcpu=native")
    extra = os.environ.get("LSTMKIT_ENGINE_CFLAGS")
    if extra is not None:  # full override, e.g. "-O3" for a portable build
        flags = extra.split()
    return flags


def _cpu_key() -> str:
    """The CPU model and feature flags (Linux), else the platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() + platform.machine()
    keep = []
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features", "CPU part", "CPU implementer"):
            keep.append(line)
            if len(keep) >= 3:
                break
    return "\n".join(keep)


def cache_dir() -> Path:
    """The folder under which builds are cached."""
    if os.environ.get("LSTMKIT_CACHE_DIR"):
        return Path(os.environ["LSTMKIT_CACHE_DIR"]).expanduser()
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]).expanduser() / "lstmkit"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "lstmkit"


def source_files() -> list[Path]:
    """Every source and header file under ``csrc/``, sorted by relative name."""
    found = [p for p in _CSRC.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(_CSRC).as_posix())


def compiled_sources() -> list[Path]:
    """What the compiler is given: ``csrc/engine.cpp`` alone."""
    return [_CSRC / _ENTRY]


def module_name() -> str:
    """The extension's name, unique per source tree, flags, torch, Python and CPU."""
    digest = hashlib.sha256()
    for path in source_files():
        # The name too, so that moving code between files changes the key.
        for part in (path.relative_to(_CSRC).as_posix().encode(), path.read_bytes()):
            digest.update(part)
            digest.update(b"\0")
    for part in (" ".join(cflags()).encode(), torch.__version__.encode(), sys.version.encode(),
                 sysconfig.get_platform().encode(), _cpu_key().encode()):
        digest.update(part)
        digest.update(b"\0")
    return "lstmkit_engine_" + digest.hexdigest()[:16]


def wait_limit() -> float:
    """How long to wait for another process's build: ``$LSTMKIT_BUILD_WAIT_S``, else 600 s."""
    text = os.environ.get(_WAIT_ENV)
    if not text:
        return _DEFAULT_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{_WAIT_ENV}: expected a number of seconds >= 0, got {text!r}")
    return value


# -------------------------------------------------------------------------------------------
# Completion stamps


def _digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _fsync(path: Path) -> None:
    # Not lstmkit._atomic's: the build child loads this file on its own, outside the package.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some platforms and file systems refuse; the stamp still comes last
        pass
    finally:
        os.close(fd)


def write_stamp(module_path: Path) -> None:
    """Mark the build of ``module_path`` complete: its size and hash, written atomically."""
    _fsync(module_path)  # the module reaches the disk before the stamp that vouches for it
    size, sha = _digest(module_path)
    stamp = module_path.parent / _STAMP
    tmp = stamp.with_name(f".{_STAMP}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"module": module_path.name, "size": size, "sha256": sha}))
    _fsync(tmp)
    os.replace(tmp, stamp)


def _inspect(build_dir: Path, name: str) -> tuple[str, Path]:
    """``("complete" | "absent" | "damaged", module path)`` for the build in ``build_dir``.

    "absent": no module file (never built, or interrupted before linking); "damaged": a module
    file or a stamp that do not match (truncated, altered, or interrupted after linking).
    """
    module = build_dir / f"{name}{_LIB_EXT}"
    try:
        stamp = json.loads((build_dir / _STAMP).read_text())
    except FileNotFoundError:
        return ("damaged" if module.exists() else "absent"), module
    except (OSError, ValueError):
        return "damaged", module
    try:
        ok = (isinstance(stamp, dict) and stamp.get("module") == module.name
              and module.stat().st_size == stamp.get("size")
              and _digest(module) == (stamp.get("size"), stamp.get("sha256")))
    except OSError:
        ok = False
    return ("complete" if ok else "damaged"), module


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the engine from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------------
# Taking turns


class _Waiter:
    """Polls until a deadline; says once what it waits for."""

    def __init__(self, build_dir: Path, limit_s: float) -> None:
        self.build_dir, self.limit_s = build_dir, limit_s
        self.deadline = time.monotonic() + limit_s
        self.told = False
        self.pause = 0.05

    def wait(self, owner: str) -> None:
        if not self.told:
            _LOG.warning("lstmkit: waiting up to %g s for another process (pid %s) building the "
                         "fused engine in %s", self.limit_s, owner, self.build_dir)
            self.told = True
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _GaveUp(f"gave up after {self.limit_s:g} s waiting for another process (pid "
                          f"{owner}) building it in {self.build_dir} ({_WAIT_ENV} sets the wait)")
        time.sleep(min(self.pause, left))
        self.pause = min(self.pause * 2, 0.5)


def _owner(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _flock_take(path: Path, waiter: _Waiter) -> int | None:
    """Lock ``path`` with ``flock`` (waiting for the holder); None where flock is unsupported."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waiter.wait(_owner(path))
            except OSError:  # e.g. ENOLCK on a network file system: the pid file works anywhere
                os.close(fd)
                return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pidfile_take(path: Path, waiter: _Waiter) -> None:
    """Create ``path`` exclusively (waiting while a live one exists; a stale one is removed)."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > _PIDFILE_STALE_S:
                _LOG.warning("lstmkit: removing the abandoned build lock %s", path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            waiter.wait(_owner(path))
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return


@contextlib.contextmanager
def _turn(root: Path, name: str, build_dir: Path) -> Iterator[int | None]:
    """This process's exclusive turn to inspect and build ``name``; yields the lock's fd."""
    waiter = _Waiter(build_dir, wait_limit())
    fd = None if fcntl is None else _flock_take(root / f"{name}.lock", waiter)
    if fd is not None:
        try:
            yield fd
        finally:
            # Closing releases the lock. The file stays: removing it could let two processes
            # lock two different files of the same name.
            os.close(fd)
        return
    pid_file = root / f"{name}.pid"
    _pidfile_take(pid_file, waiter)
    try:
        yield None
    finally:
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()


# -------------------------------------------------------------------------------------------
# Building


def _ninja_on_path() -> None:
    """Make a ninja installed into this environment (``pip install ninja``) visible to torch."""
    dirs = [str(Path(sys.executable).parent)]
    try:
        import ninja  # type: ignore[import-not-found]

        dirs.insert(0, str(ninja.BIN_DIR))
    except Exception:  # noqa: BLE001 - the pip package is optional
        pass
    path = os.environ.get("PATH", "")
    missing = [d for d in dirs if d not in path.split(os.pathsep)]
    if missing:
        os.environ["PATH"] = os.pathsep.join(missing + [path]) if path else os.pathsep.join(missing)


def _build_and_stamp(name: str, sources: list[str], cflags: list[str], ldflags: list[str],
                     build_dir: str, verbose: bool) -> ModuleType:
    """Compile, import (proving the module loads), then stamp the build complete."""
    from torch.utils import cpp_extension

    module = cpp_extension.load(name=name, sources=sources, extra_cflags=cflags,
                                extra_ldflags=ldflags, build_directory=build_dir,
                                verbose=verbose)
    write_stamp(Path(module.__file__))
    return module


def _session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (Linux ``/proc``; elsewhere none are found)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            text = Path("/proc", entry, "stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()  # state ppid pgrp session ...
            if int(fields[3]) == sid:
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _stop_build(sid: int, wait: Callable[[float], object]) -> None:
    """End every process of the build session ``sid`` (the child's pid; it leads its group).

    SIGTERM first: ninja passes it on to the compilers, which it runs in process groups of
    their own, and then exits. ``wait(seconds)`` waits for the child (or just sleeps). Then
    SIGKILL to whatever is left: the child's group, and on Linux every process of the session.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGTERM)
    wait(3.0)
    for pid in _session_members(sid):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)


def _child_main(payload: str) -> int:
    """Entry point of the build child (see ``_CHILD``); returns the exit status.

    The child outlives neither its parent nor a stop request: SIGTERM (from the parent's
    :func:`_stop_build`) only marks it stopping, so that it does not kill ninja before ninja
    has passed the signal on; a parent that dies without stopping it (SIGKILL) is noticed by
    a watch thread, which stops the session itself.
    """
    stopping = threading.Event()
    watch_done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        stopping.set()
        _stop_build(os.getpid(), time.sleep)  # ends with SIGKILL to this process too
        watch_done.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        args = json.loads(payload)
        from torch.utils import cpp_extension  # noqa: F401 - the slow part; then check for a stop

        if not stopping.is_set():
            _build_and_stamp(**args)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which warns once
        print(str(err).strip() or type(err).__name__, file=sys.stderr, flush=True)
        status = 1
    else:
        status = 1 if stopping.is_set() else 0
    if os.getppid() != parent:
        watch_done.wait()
    return status


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` for the block, then die of it as usual.

    Only where SIGTERM has its default action (terminate at once) and only in the main thread
    (the only one that can set handlers); elsewhere the child's parent watch still cleans up.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the default action: the exit status says SIGTERM
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _compile(name: str, build_dir: Path, lock_fd: int | None) -> ModuleType | None:
    """Build ``name`` into ``build_dir`` and stamp it; returns the module if imported here.

    On POSIX the build runs in a child process in a session of its own (the module is then
    imported by the caller); the child also holds the lock, so a build whose parent died
    keeps its turn until the child is gone too.
    """
    args = {"name": name, "sources": [str(s) for s in compiled_sources()], "cflags": cflags(),
            "ldflags": ["-fopenmp"], "build_dir": str(build_dir),
            "verbose": bool(os.environ.get("LSTMKIT_ENGINE_VERBOSE"))}
    if os.name != "posix":
        return _build_and_stamp(**args)
    command = [sys.executable, "-c", _CHILD, str(Path(__file__).resolve()), json.dumps(args)]
    output = b""
    with _sigterm_raises():
        proc = subprocess.Popen(
            command, cwd=build_dir, stdin=subprocess.DEVNULL,
            stdout=None if args["verbose"] else subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=() if lock_fd is None else (lock_fd,))
        try:
            output, _ = proc.communicate()
        except BaseException:  # Ctrl-C, SIGTERM (see _sigterm_raises), anything
            def wait(seconds: float) -> None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(seconds)

            _stop_build(proc.pid, wait)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            raise
    if proc.returncode != 0:
        text = (output or b"").decode(errors="replace").strip()
        raise RuntimeError(text or f"the build process exited with status {proc.returncode}")
    return None


def _build() -> ModuleType:
    name = module_name()
    root = cache_dir()
    build_dir = root / name
    state, path = _inspect(build_dir, name)
    if state == "complete":
        return _import(name, path)
    root.mkdir(parents=True, exist_ok=True)
    with _turn(root, name, build_dir) as lock_fd:
        state, path = _inspect(build_dir, name)  # another process may have built it meanwhile
        if state == "complete":
            return _import(name, path)
        _ninja_on_path()
        if shutil.which("ninja") is None:
            raise RuntimeError("ninja was not found (pip install ninja)")
        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx.split()[0]) is None:
            raise RuntimeError(f"no C++ compiler found ({cxx!r}; set CXX or install g++/clang++)")
        if state == "damaged":
            warnings.warn(f"lstmkit: the cached fused engine in {build_dir} is damaged (an "
                          "incomplete or altered module); rebuilding it.", RuntimeWarning,
                          stacklevel=3)
        # Whatever is there is the rest of an interrupted or damaged build, torch's own build
        # lock included (no other builder can be alive while this process has the turn).
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True, exist_ok=True)
        _LOG.info("building the lstmkit fused engine in %s (first use only)", build_dir)
        start = time.perf_counter()
        module = _compile(name, build_dir, lock_fd)
        state, path = _inspect(build_dir, name)
        if state != "complete":
            raise RuntimeError(f"the build in {build_dir} finished without a complete module")
        _LOG.info("built the lstmkit fused engine in %.1f s", time.perf_counter() - start)
        return module if module is not None else _import(name, path)


def _summarise(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    picked = (errors or lines)[:3]
    return " | ".join(ln.strip()[:200] for ln in picked)


def load() -> ModuleType | None:
    """The compiled extension, building it on first call; None (after one warning) on failure."""
    if _STATE["tried"]:
        return _STATE["module"]  # type: ignore[return-value]
    with _LOCK:
        if not _STATE["tried"]:
            try:
                _STATE["module"] = _build()
            except _GaveUp as err:
                _STATE["error"] = str(err)
                warnings.warn(
                    "lstmkit: the fused CPU engine is not available to this process, so cells "
                    f"without a torch kernel run the (slower) reference path: {err}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            except Exception as err:  # noqa: BLE001 - any build failure means "unavailable"
                _STATE["error"] = _summarise(err)
                warnings.warn(
                    "lstmkit: the fused CPU engine could not be built, so cells without a torch "
                    f"kernel run the (slower) reference path. Reason: {_STATE['error']}. "
                    "It needs a C++ compiler and ninja (`pip install ninja`); "
                    "LSTMKIT_BACKEND=reference skips the engine and this warning.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _STATE["tried"] = True
    return _STATE["module"]  # type: ignore[return-value]


def error() -> str | None:
    """Why the last build failed (None if it did not fail or was not tried)."""
    return _STATE["error"]  # type: ignore[return-value]


def _reset_for_tests() -> None:
    _STATE.update(module=None, error=None, tried=False)
