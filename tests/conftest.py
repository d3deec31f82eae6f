"""Settings every test process needs before torch is imported.

``MKL_CBWR=AUTO,STRICT``: MKL's GEMM may round differently depending on the
memory alignment of its operands (seen on an AMD EPYC with AVX-512: the same
``F.linear`` on equal [3, 10] inputs gave different bits on every other call),
so an eager framework run and a compiled run of the same layer could differ
for no reason of snncc's. MKL's strict conditional numerical reproducibility
mode makes each result independent of alignment; the bit-for-bit equivalence
tests need that. The ``snncc`` command line sets the same default.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest  # imports no torch: the setting below still comes first

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


#: seconds the heaviest test modules took in one whole run (README command, idle 2-core VM,
#: 2026-12-07); only their order matters. Why: pytest-xdist (``--dist loadfile``) hands whole
#: modules to the workers in the order it is given, so the longest go first and the many short
#: ones fill in at the end (longest processing time first). xdist's own order, by test count,
#: started test_hostile_cache.py (78 s in 28 tests) and test_zoo.py late, leaving one worker
#: busy alone at the end. Refresh from ``--durations=0`` when the suite changes much.
MODULE_SECONDS = {
    "test_cuda_backend.py": 120,
    "test_cpu_snntorch_norse.py": 102,
    "test_zoo.py": 78,
    "test_cpu_backend.py": 69,
    "test_kernels.py": 55,
    "test_distributed.py": 50,
    "test_snntorch_families.py": 46,
    "test_deploy.py": 45,
    "test_jax_backend.py": 38,
    "test_jax_snntorch_norse.py": 35,
    "test_recurrent_fused.py": 34,
    "test_jax_pallas.py": 31,
    "test_spikingjelly_families.py": 26,
    "test_norse_families.py": 25,
    "test_equivalence_snntorch.py": 18,
    "test_hostile_cache.py": 18,
    "test_torch_compile.py": 16,
    "test_equivalence_spikingjelly.py": 13,
    "test_benchmark_threads.py": 9,
    "test_cpu_threads.py": 8,
}


def pytest_configure(config: pytest.Config) -> None:
    """Keep the module order :func:`pytest_collection_modifyitems` sets (xdist would reorder
    modules by their number of tests)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The heaviest modules first (:data:`MODULE_SECONDS`); tests keep their order within a
    module (a stable sort on the module alone)."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One kernel cache root for the whole run, shared by every pytest-xdist worker.

    Why: kernels are cached under the hash of their source, and many modules compile
    the same ones (the LIF kernels of a dozen models); each module keeping its own
    folder built them again in every module. Concurrent builds of
    one entry by several workers are what the cache's lock protocol is for (tests in
    tests/test_hostile_cache.py check it with 8 processes). Tests that check the
    cache itself make their own folders.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is below the run's
        base = base.parent
    root = base / "snncc-kernel-cache"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


@pytest.fixture(scope="session", autouse=True)
def _default_kernel_cache(kernel_cache: Path) -> Iterator[None]:
    """Tests that compile with the default cache, and the processes they start, use the
    run's shared one instead of the developer's ``~/.cache/snncc``."""
    if "SNNCC_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["SNNCC_CACHE_DIR"] = str(kernel_cache)
    try:
        yield
    finally:
        os.environ.pop("SNNCC_CACHE_DIR", None)


@pytest.fixture(scope="session")
def cache_dir(kernel_cache: Path) -> str:
    """The ``cache_dir`` option the tests pass: the shared cache's cpu folder (the one the
    cpu backend uses by default). tests/test_cuda_backend.py keeps its own for cubins."""
    return str(kernel_cache / "cpu")
