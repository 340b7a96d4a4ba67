"""Make cuBLAS 12 loadable for CTranslate2 on the CUDA 13 stack, with no LD_LIBRARY_PATH.

Why: torch 2.13 and vLLM 0.32 from PyPI are CUDA 13 builds (they bring cuBLAS 13,
`libcublas.so.13`), while `ctranslate2==4.8.5` is built against CUDA 12 and
`dlopen`s `libcublas.so.12` by name the first time it runs on a GPU. That name is
on no default search path, so CTranslate2 would fail at its first CUDA batch.
`requirements-gpu.lock` installs the `nvidia-cublas-cu12` wheel beside the CUDA 13
stack (the sonames differ, so both coexist), and `preload_cublas12()` loads its
libraries by absolute path with RTLD_GLOBAL. The dynamic loader then answers
CTranslate2's later `dlopen("libcublas.so.12")` with the already loaded library
(it matches loaded objects by soname), so no environment variable is needed.

    from serve.engines.cuda_libs import preload_cublas12
    preload_cublas12()          # before the first ctranslate2 model on "cuda"
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "nvidia-cublas-cu12"
# Lt first: libcublas.so.12 needs libcublasLt.so.12, and loading it first means that
# need is met by the copy we chose, whatever the loader's search path holds.
LIBRARIES = ("libcublasLt.so.12", "libcublas.so.12")
FIX = f"install {PACKAGE} (it is in requirements-gpu.lock; run `make setup` on the GPU machine)"


def find_cublas12() -> dict[str, Path]:
    """Paths of the cuBLAS 12 libraries inside the installed `nvidia-cublas-cu12`, if any."""
    found: dict[str, Path] = {}
    try:
        for file in importlib.metadata.files(PACKAGE) or ():
            if file.name in LIBRARIES:
                found[file.name] = Path(file.locate()).resolve()
    except importlib.metadata.PackageNotFoundError:
        pass
    if len(found) < len(LIBRARIES):
        # Installed without metadata (e.g. `pip install --target`): the `nvidia.cublas`
        # namespace package still holds lib/.
        try:
            spec = importlib.util.find_spec("nvidia.cublas")
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or ()) if spec else ():
            for name in LIBRARIES:
                candidate = Path(location) / "lib" / name
                if name not in found and candidate.is_file():
                    found[name] = candidate.resolve()
    return {name: path for name, path in found.items() if path.is_file()}


@functools.cache
def preload_cublas12() -> str | None:
    """Load cuBLAS(Lt) 12 from `nvidia-cublas-cu12` globally; the libcublas path, or None.

    None means the package is missing (or its libraries would not load; the reason is
    logged): CTranslate2 can then still run on CPU, but not on CUDA.
    """
    found = find_cublas12()
    if "libcublas.so.12" not in found:
        logger.debug("libcublas.so.12 not found in %s", PACKAGE)
        return None
    try:
        for name in LIBRARIES:
            if name in found:
                ctypes.CDLL(str(found[name]), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        logger.warning("could not load %s: %s", found["libcublas.so.12"], err)
        return None
    return str(found["libcublas.so.12"])
