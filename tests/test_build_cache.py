"""The engine's build cache: completion stamps, damaged builds, turns between processes, interrupts.

Every test works in its own cache folder (``LSTMKIT_CACHE_DIR`` in a tmp dir), never in the
real one. One real build compiles a tiny stand-in module (an empty Python extension) through the
real pipeline; the other tests install copies of it or replace the compile step by a copy. The
interrupt test runs a fake compiler that records its pid and sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from lstmkit.engine import _build

POSIX = os.name == "posix"
TINY_SOURCE = textwrap.dedent(
    """
    // A stand-in for the engine: an empty Python module, quick to compile.
    #include <Python.h>

    #include "answer.h"

    #define TINY_CAT_(a, b) a##b
    #define TINY_CAT(a, b) TINY_CAT_(a, b)
    #define TINY_STR_(a) #a
    #define TINY_STR(a) TINY_STR_(a)

    static struct PyModuleDef tiny_module = {PyModuleDef_HEAD_INIT,
                                             TINY_STR(TORCH_EXTENSION_NAME), nullptr, -1,
                                             nullptr};

    PyMODINIT_FUNC TINY_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
      PyObject* module = PyModule_Create(&tiny_module);
      if (module != nullptr) PyModule_AddIntConstant(module, "answer", TINY_ANSWER);
      return module;
    }
    """
)
TINY_FLAGS = "-O0"


def _toolchain_or_skip() -> None:
    """Skip only where no compiler or ninja exists (the engine's own tests say the same)."""
    _build._ninja_on_path()
    cxx = os.environ.get("CXX", "c++").split()[0]
    if shutil.which(cxx) is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja to build with")


def _tiny_csrc(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "engine.cpp").write_text(TINY_SOURCE)
    (folder / "answer.h").write_text("#define TINY_ANSWER 42\n")
    return folder


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The one real build: the tiny module, built, stamped and imported through ``load``."""
    _toolchain_or_skip()
    root = tmp_path_factory.mktemp("golden")
    csrc = _tiny_csrc(root / "csrc")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_build, "_CSRC", csrc)
        mp.setenv("LSTMKIT_CACHE_DIR", str(root / "cache"))
        mp.setenv("LSTMKIT_ENGINE_CFLAGS", TINY_FLAGS)
        mp.delenv("LSTMKIT_BUILD_WAIT_S", raising=False)
        _build._reset_for_tests()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a clean build warns about nothing
                module = _build.load()
            assert module is not None, _build.error()
            assert module.answer == 42
            name = _build.module_name()
        finally:
            _build._reset_for_tests()
    return {"csrc": csrc, "name": name, "dir": root / "cache" / name}


@pytest.fixture
def tiny(golden, tmp_path, monkeypatch):
    """A fresh cache folder in which the tiny module's name is the engine's."""
    monkeypatch.setattr(_build, "_CSRC", golden["csrc"])
    monkeypatch.setenv("LSTMKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LSTMKIT_ENGINE_CFLAGS", TINY_FLAGS)
    monkeypatch.delenv("LSTMKIT_BUILD_WAIT_S", raising=False)
    _build._reset_for_tests()
    root = tmp_path / "cache"
    yield {**golden, "root": root, "build_dir": root / golden["name"]}
    _build._reset_for_tests()


def _install(golden: dict, build_dir: Path) -> None:
    shutil.copytree(golden["dir"], build_dir)


class _FakeCompile:
    """Stands in for the compile step: checks the folder was emptied, then copies the build."""

    def __init__(self, golden: dict) -> None:
        self.golden, self.calls = golden, 0

    def __call__(self, name: str, build_dir: Path, lock_fd: int | None) -> None:
        self.calls += 1
        assert name == self.golden["name"]
        assert list(build_dir.iterdir()) == [], "leftovers of the earlier build were kept"
        module = build_dir / f"{name}.so"
        shutil.copyfile(self.golden["dir"] / f"{name}.so", module)
        _build.write_stamp(module)


class _NoCompile:
    def __call__(self, *args, **kwargs):
        raise AssertionError("the build step ran")


def _runtime_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_module_name_covers_every_source_file(tmp_path, monkeypatch):
    csrc = tmp_path / "csrc"
    (csrc / "detail").mkdir(parents=True)
    (csrc / "engine.cpp").write_text('#include "kernels.h"\n')
    (csrc / "kernels.h").write_text("// kernels\n")
    (csrc / "detail" / "gemm.h").write_text("// gemm\n")
    monkeypatch.setattr(_build, "_CSRC", csrc)
    base = _build.module_name()
    assert [p.relative_to(csrc).as_posix() for p in _build.source_files()] == [
        "detail/gemm.h", "engine.cpp", "kernels.h"]
    assert _build.compiled_sources() == [csrc / "engine.cpp"]

    (csrc / "detail" / "gemm.h").write_text("// gemm, edited\n")
    assert _build.module_name() != base
    (csrc / "detail" / "gemm.h").write_text("// gemm\n")
    assert _build.module_name() == base
    (csrc / "kernels.h").rename(csrc / "kernels2.h")  # same bytes, another name
    assert _build.module_name() != base
    (csrc / "kernels2.h").rename(csrc / "kernels.h")
    (csrc / "NOTES.md").write_text("not a source file\n")
    assert _build.module_name() == base


def test_a_build_is_stamped_last_and_imported_as_it_is(tiny, monkeypatch):
    module_path = tiny["dir"] / f"{tiny['name']}.so"
    stamp = json.loads((tiny["dir"] / "complete.json").read_text())
    assert stamp == {"module": module_path.name, "size": module_path.stat().st_size,
                     "sha256": _build._digest(module_path)[1]}
    assert not list(tiny["dir"].glob(".complete.json*"))  # no temporary file left

    _install(tiny, tiny["build_dir"])
    monkeypatch.setattr(_build, "_compile", _NoCompile())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = _build.load()
    assert module is not None and module.answer == 42
    assert Path(module.__file__) == tiny["build_dir"] / module_path.name


_DAMAGE_SCRIPT = textwrap.dedent(
    """
    import json, os, shutil, sys, warnings
    from pathlib import Path
    from lstmkit.engine import _build

    cfg = json.loads(sys.argv[1])
    golden, name = Path(cfg["golden"]), cfg["name"]
    _build._CSRC = Path(cfg["csrc"])
    calls = []

    def fake_compile(name, build_dir, lock_fd):
        calls.append(sorted(p.name for p in build_dir.iterdir()))
        shutil.copyfile(golden / f"{name}.so", build_dir / f"{name}.so")
        _build.write_stamp(build_dir / f"{name}.so")

    _build._compile = fake_compile

    def replace(path, data):  # a new file: never truncate one that may be mapped
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    report = {}
    for kind in cfg["kinds"]:
        build_dir = Path(cfg["root"]) / kind / name
        shutil.copytree(golden, build_dir)
        os.environ["LSTMKIT_CACHE_DIR"] = str(build_dir.parent)
        module, stamp = build_dir / f"{name}.so", build_dir / "complete.json"
        data = module.read_bytes()
        if kind == "truncated_1000":
            replace(module, data[:1000])
        elif kind == "truncated_half":
            replace(module, data[: len(data) // 2])
        elif kind == "empty":
            replace(module, b"")
        elif kind == "altered":
            middle = len(data) // 2
            replace(module, data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
        elif kind == "no_stamp":
            stamp.unlink()
        elif kind == "bad_stamp":
            replace(stamp, b'{"module": "' + module.name.encode())
        elif kind == "stamp_only":
            module.unlink()
        calls.clear()
        _build._reset_for_tests()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = _build.load()
        report[kind] = {
            "warnings": [str(w.message) for w in caught
                         if issubclass(w.category, RuntimeWarning)],
            "calls": calls[:], "answer": getattr(loaded, "answer", None),
            "state": _build._inspect(build_dir, name)[0], "error": _build.error()}
    print(json.dumps(report))
    """
)
DAMAGE = ["truncated_1000", "truncated_half", "empty", "altered", "no_stamp", "bad_stamp",
          "stamp_only"]


def test_a_damaged_build_is_rebuilt_with_one_warning(tiny, tmp_path):
    """Truncated, empty or altered modules and missing or broken stamps: never imported (a
    truncated module would kill the process with SIGBUS), removed, rebuilt, one warning."""
    cfg = {"golden": str(tiny["dir"]), "name": tiny["name"], "csrc": str(tiny["csrc"]),
           "root": str(tmp_path / "damaged"), "kinds": DAMAGE}
    env = {k: v for k, v in os.environ.items() if k != "LSTMKIT_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", _DAMAGE_SCRIPT, json.dumps(cfg)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind in DAMAGE:
        case = report[kind]
        assert case["answer"] == 42, (kind, case)
        assert case["calls"] == [[]], (kind, case)  # rebuilt once, from an emptied folder
        assert case["state"] == "complete", (kind, case)
        assert len(case["warnings"]) == 1, (kind, case)
        assert "damaged" in case["warnings"][0] and "rebuilding" in case["warnings"][0], kind


def test_leftovers_of_a_killed_build_are_cleared_without_waiting(tiny, monkeypatch, caplog):
    """A build killed before it finished leaves torch's ``lock``, objects and our lock file
    with a dead pid; the next process neither waits nor warns, it builds afresh."""
    build_dir = tiny["build_dir"]
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # torch's build lock, which it would wait on forever
    (build_dir / "build.ninja").write_text("# partial\n")
    (build_dir / "engine.o").write_bytes(b"\x7fELF partial")
    (tiny["root"] / f"{tiny['name']}.lock").write_text("999999999\n")
    fake = _FakeCompile(tiny)
    monkeypatch.setattr(_build, "_compile", fake)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", "lstmkit"):
        warnings.simplefilter("always")
        module = _build.load()
    assert module is not None and module.answer == 42
    assert fake.calls == 1
    assert _runtime_warnings(caught) == []
    assert not any("waiting" in r.getMessage() for r in caplog.records)
    assert _build._inspect(build_dir, tiny["name"])[0] == "complete"


@contextlib.contextmanager
def _held_lock(path: Path, pid: str):
    fcntl = pytest.importorskip("fcntl")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{pid}\n".encode())
        yield fd
    finally:
        os.close(fd)


def test_a_live_builder_is_waited_for_then_given_up_on(tiny, monkeypatch, caplog):
    monkeypatch.setenv("LSTMKIT_BUILD_WAIT_S", "0.3")
    monkeypatch.setattr(_build, "_compile", _NoCompile())
    tiny["root"].mkdir(parents=True)
    with _held_lock(tiny["root"] / f"{tiny['name']}.lock", "4242"):
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", "lstmkit"):
            warnings.simplefilter("always")
            assert _build.load() is None
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 1 and "pid 4242" in waits[0] and str(tiny["build_dir"]) in waits[0]
    msgs = _runtime_warnings(caught)
    assert len(msgs) == 1 and "gave up after 0.3 s" in msgs[0] and "pid 4242" in msgs[0]
    assert "LSTMKIT_BUILD_WAIT_S" in _build.error()


def test_a_waiting_process_imports_what_the_other_built(tiny, monkeypatch, caplog):
    monkeypatch.setattr(_build, "_compile", _NoCompile())
    tiny["root"].mkdir(parents=True)
    held = threading.Event()

    def other_builder():
        with _held_lock(tiny["root"] / f"{tiny['name']}.lock", str(os.getpid())):
            held.set()
            time.sleep(0.3)
            _install(tiny, tiny["build_dir"])

    thread = threading.Thread(target=other_builder)
    thread.start()
    held.wait(10)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", "lstmkit"):
        warnings.simplefilter("always")
        module = _build.load()
    thread.join()
    assert module is not None and module.answer == 42
    assert _runtime_warnings(caught) == []
    assert len([r for r in caplog.records if "waiting" in r.getMessage()]) == 1


def test_without_flock_a_pid_file_takes_turns(tiny, monkeypatch):
    monkeypatch.setattr(_build, "fcntl", None)
    tiny["root"].mkdir(parents=True)
    pid_file = tiny["root"] / f"{tiny['name']}.pid"

    # A fresh pid file: its owner may be building, so wait, then give up.
    pid_file.write_text("4242\n")
    monkeypatch.setenv("LSTMKIT_BUILD_WAIT_S", "0.2")
    monkeypatch.setattr(_build, "_compile", _NoCompile())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _build.load() is None
    msgs = _runtime_warnings(caught)
    assert len(msgs) == 1 and "gave up" in msgs[0] and "pid 4242" in msgs[0]

    # An old one: abandoned, so taken over; the turn's own pid file goes when it ends.
    old = time.time() - 2 * _build._PIDFILE_STALE_S
    os.utime(pid_file, (old, old))
    fake = _FakeCompile(tiny)
    monkeypatch.setattr(_build, "_compile", fake)
    _build._reset_for_tests()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = _build.load()
    assert module is not None and module.answer == 42 and fake.calls == 1
    assert _runtime_warnings(caught) == []
    assert not pid_file.exists()


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_wait_limit_is_reported(tiny, monkeypatch, value):
    monkeypatch.setenv("LSTMKIT_BUILD_WAIT_S", value)
    monkeypatch.setattr(_build, "_compile", _NoCompile())
    with pytest.raises(ValueError, match="LSTMKIT_BUILD_WAIT_S: expected a number of seconds"):
        _build.wait_limit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _build.load() is None
    assert len(_runtime_warnings(caught)) == 1 and "LSTMKIT_BUILD_WAIT_S" in _build.error()


FAKE_CXX = textwrap.dedent(
    """\
    #!/bin/sh
    # A compiler that never finishes: answers version queries, then records its pid and sleeps.
    case "$*" in
      *-dumpfullversion*|*-dumpversion*|*--version*|-v) echo 12.2.0; exit 0 ;;
    esac
    echo $$ >> "$FAKE_CXX_PIDS"
    exec sleep 300
    """
)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return text[text.rindex(")") + 2] != "Z"


def _poll(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _interrupt(sig: signal.Signals, folder: Path, proc: subprocess.Popen, fcntl) -> None:
    pids = folder / "pids"
    started = _poll(lambda: (pids.exists() and pids.read_text().strip())
                    or proc.poll() is not None, 240)
    assert started and proc.poll() is None, proc.communicate(timeout=30)[0][-3000:]
    pid = int(pids.read_text().split()[0])
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0].decode(errors="replace")  # the process ends
    assert proc.returncode != 0, output[-2000:]
    if sig != signal.SIGINT:  # SIGINT ends it through KeyboardInterrupt
        assert proc.returncode == -sig, (proc.returncode, output[-2000:])
    assert _poll(lambda: not _alive(pid), 15), f"{sig.name}: the compiler {pid} outlived it"
    lock = next((folder / "cache").glob("*.lock"))
    fd = os.open(lock, os.O_RDWR)
    try:  # the turn is free once the whole build is gone, so a later process builds

        def free() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        assert _poll(free, 15), f"{sig.name}: the build lock is still held"
    finally:
        os.close(fd)
    assert not (folder / "cache" / lock.stem / "complete.json").exists()


@pytest.mark.skipif(not POSIX, reason="process groups and sessions are POSIX")
def test_an_interrupted_build_leaves_no_compiler_behind(tmp_path):
    """Ctrl-C, SIGTERM or SIGKILL to a process that is building: the compiler goes too, the
    process ends promptly, and the build's turn is free again."""
    _toolchain_or_skip()
    fcntl = pytest.importorskip("fcntl")
    fake = tmp_path / "fake-g++"
    fake.write_text(FAKE_CXX)
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items()
            if k not in ("LSTMKIT_BACKEND", "LSTMKIT_ENGINE_CFLAGS", "LSTMKIT_BUILD_WAIT_S")}
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):  # all three at once
        folder = tmp_path / sig.name
        folder.mkdir()
        env = dict(base, LSTMKIT_CACHE_DIR=str(folder / "cache"), CXX=str(fake),
                   FAKE_CXX_PIDS=str(folder / "pids"))
        # SIGINT at its default disposition even where the suite runs as a background job,
        # which inherits SIGINT ignored (Python then installs no KeyboardInterrupt handler).
        proc = subprocess.Popen(
            [sys.executable, "-c", "import lstmkit.engine as e; print(e.available())"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        runs[sig] = (folder, proc)
    try:
        for sig, (folder, proc) in runs.items():
            _interrupt(sig, folder, proc, fcntl)
    finally:
        for folder, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            pids = folder / "pids"  # only if the test failed: leave no sleeper behind
            for pid in map(int, pids.read_text().split() if pids.exists() else []):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
