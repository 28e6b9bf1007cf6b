"""Build and load the engine's C++ extension (``csrc/engine.cpp``) on first use.

``torch.utils.cpp_extension.load`` compiles the single translation unit with ninja into a cache
folder and imports it; later processes find the built module there and only import it. The
folder name hashes everything the binary depends on (source, flags, torch and Python versions,
the CPU), so an edit, an upgrade or a different machine sharing the cache gets its own build.

Cache folder: ``$LSTMKIT_CACHE_DIR``, else ``$TORCH_EXTENSIONS_DIR/lstmkit``, else
``$XDG_CACHE_HOME/lstmkit`` (``~/.cache/lstmkit``). A missing compiler or ninja, or a failed
build, is reported once as a warning and the engine stays unavailable; nothing raises.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import sysconfig
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

_SOURCE = Path(__file__).parent / "csrc" / "engine.cpp"
_LOG = logging.getLogger("lstmkit.engine")
_LOCK = threading.Lock()
_STATE: dict[str, object] = {"module": None, "error": None, "tried": False, "build_s": None}


def cflags() -> list[str]:
    """Compiler flags: optimised, vectorised for the building machine, OpenMP for row threads.

    ``-march=native`` is safe here because the cache key includes the CPU (:func:`_cpu_key`):
    a machine with another CPU builds its own copy. ``-fopenmp`` uses the libgomp torch already
    loaded (same soname), so there is one OpenMP runtime in the process.
    """
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-DNDEBUG"]
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


def module_name() -> str:
    """The extension's name, unique per source, flags, torch, Python and CPU."""
    digest = hashlib.sha256()
    sources = b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in sorted(_SOURCE.parent.iterdir()) if f.suffix in (".cpp", ".h"))
    for part in (sources, " ".join(cflags()).encode(), torch.__version__.encode(),
                 sys.version.encode(), sysconfig.get_platform().encode(), _cpu_key().encode()):
        digest.update(part)
        digest.update(b"\0")
    return "lstmkit_engine_" + digest.hexdigest()[:16]


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


def _try_import_built(name: str, build_dir: Path) -> ModuleType | None:
    """Import an already built module without asking torch (no ninja or compiler needed)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for candidate in (build_dir / f"{name}{suffix}", build_dir / f"{name}.so"):
        if candidate.exists() and not (build_dir / "lock").exists():
            spec = importlib.util.spec_from_file_location(name, candidate)
            if spec is None or spec.loader is None:
                return None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    name = module_name()
    build_dir = cache_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = _try_import_built(name, build_dir)
    except ImportError:
        module = None
    if module is not None:
        return module
    _ninja_on_path()
    if shutil.which("ninja") is None:
        raise RuntimeError("ninja was not found (pip install ninja)")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0]) is None:
        raise RuntimeError(f"no C++ compiler found ({cxx!r}; set CXX or install g++/clang++)")
    _LOG.info("building the lstmkit fused engine in %s (first use only)", build_dir)
    start = time.perf_counter()
    module = cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=cflags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=bool(os.environ.get("LSTMKIT_ENGINE_VERBOSE")),
    )
    _STATE["build_s"] = time.perf_counter() - start
    _LOG.info("built the lstmkit fused engine in %.1f s", _STATE["build_s"])
    return module


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


def build_seconds() -> float | None:
    """How long this process spent compiling (None when it found a cached build)."""
    return _STATE["build_s"]  # type: ignore[return-value]


def _reset_for_tests() -> None:
    _STATE.update(module=None, error=None, tried=False, build_s=None)
