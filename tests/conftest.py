"""Strict JAX settings for the whole test suite, a shared compilation cache, and a header
naming the hardware."""

import os
import pathlib
import platform
import tempfile

import jax
import pytest

# Silent broadcasting of mismatched ranks hides shape bugs: make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Resume, determinism and device-count tests compare runs bit for bit. On a GPU the
# segment sums are scatter-adds in no fixed order unless XLA is told otherwise; set
# here, before any backend starts, and inherited by the tests' subprocesses.
if "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_gpu_deterministic_ops=true").strip()

# Many tests compile the same programs (the tiny preset's train, eval and test steps, the
# simulators), in this process and in the train.py subprocesses they start: a persistent
# compilation cache, fresh for each session, compiles each once (a tiny train.py run:
# 21.6 s -> 6.7 s). Set before anything compiles; inherited by the subprocesses.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.TemporaryDirectory(prefix="nri-jax-test-cache-")  # removed at exit
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE.name
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")))


def _cpu_description() -> str:
    """CPU model, family/model numbers and the instruction sets that pick XLA's kernels."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor() or platform.machine()
    fields = {}
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's entries
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family')}"
            f" model {fields.get('model')}; {' '.join(isa) or 'no avx2'})")


def pytest_sessionstart(session):
    """Prints one line that ties a failure to the hardware (shown under -q too):
    tolerances and exact-equality checks depend on the kernels XLA picks."""
    devices = jax.devices()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    line = (f"hardware: CPU {_cpu_description()}, {usable} of {os.cpu_count()} cores usable; "
            f"JAX {jax.__version__} on {jax.default_backend()} with {len(devices)} device(s) "
            f"({devices[0].device_kind})")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


@pytest.fixture
def x64():
    """Runs a test with float64 enabled, restoring the default afterwards."""
    with jax.enable_x64(True):
        yield
