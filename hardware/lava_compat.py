"""Importing lava-nc 0.10.0 on Python 3.11: the one compatibility shim, scoped to lava's own classes.

lava-nc 0.10.0 declares ``Requires-Python <3.11``. On 3.11 its import fails: ``dataclasses`` there
refuses any field default whose class is unhashable ("mutable default ... use default_factory"; 3.10
refused only list, dict and set), and lava declares defaults such as ``ByteEncoder()`` on
non-frozen dataclasses (``lava/magma/compiler/var_model.py``).

The shim wraps ``dataclasses._get_field`` so that, for classes defined in ``lava`` modules only, such
a default becomes ``field(default_factory=lambda d=default: d)``: every instance gets the same
object, as on 3.10. It stays installed once lava needed it, because lava's compiler imports process
models lazily, at compile time. Every other class is untouched.

Lava also calls ``multiprocessing.set_start_method('fork')`` when imported; if the host process has
already fixed a start method, that raises. The import here tolerates it: 'fork' is what lava needs
for its runtime, and this library's own code does not depend on the start method.

``shim_needed()`` says, from a fresh interpreter, whether the shim is still needed; a test fails once
it is not, so that the shim is removed when lava is fixed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import subprocess
import sys

from spiking_attn.errors import SpikingAttnError

_ORIGINAL_GET_FIELD = dataclasses._get_field
PATCHED: list = []  # "module.Class.field" defaults the shim rewrote
INSTALL_HINT = ("lava-nc is not installed; install it as the Makefile does: pip install '.[lava]' && "
                "pip install --no-deps --ignore-requires-python lava-nc==0.10.0")


def _is_lava_class(cls) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == "lava" or module.startswith("lava.")


def _get_field(cls, a_name, a_type, *args, **kwargs):
    if _is_lava_class(cls):
        default = cls.__dict__.get(a_name, dataclasses.MISSING)
        if default is not dataclasses.MISSING and not isinstance(default, dataclasses.Field) \
                and type(default).__hash__ is None:
            setattr(cls, a_name, dataclasses.field(default_factory=lambda d=default: d))
            PATCHED.append(f"{cls.__module__}.{cls.__qualname__}.{a_name}")
    return _ORIGINAL_GET_FIELD(cls, a_name, a_type, *args, **kwargs)


def install() -> None:
    dataclasses._get_field = _get_field


@contextlib.contextmanager
def _tolerate_start_method():
    import multiprocessing

    original = multiprocessing.set_start_method

    def set_start_method(method, force=False):
        current = multiprocessing.get_start_method(allow_none=True)
        if current is None or force or current != method:
            return original(method, force=True)

    multiprocessing.set_start_method = set_start_method
    try:
        yield
    finally:
        multiprocessing.set_start_method = original


_MODULES = ("lava.magma.compiler.var_model", "lava.magma.core.run_configs",
            "lava.magma.runtime.message_infrastructure.multiprocessing")


def import_lava() -> bool:
    """Import lava's core, with the shim only if the plain import fails with the 3.11 error.
    Returns True if the shim was needed. Raises ``SpikingAttnError`` with install instructions if lava
    is missing."""
    used = False
    with _tolerate_start_method():
        try:
            for name in _MODULES:
                importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "lava":
                raise SpikingAttnError(INSTALL_HINT) from None
            raise
        except ValueError as exc:
            if "mutable default" not in str(exc):
                raise
            install()
            used = True
            for name in _MODULES:
                importlib.import_module(name)
    return used


def shim_needed() -> bool:
    """True if importing lava in a fresh interpreter, without the shim, fails with the 3.11 error."""
    result = subprocess.run([sys.executable, "-c", f"import {_MODULES[0]}"], capture_output=True, text=True,
                            timeout=120)
    if result.returncode == 0:
        return False
    if "mutable default" in result.stderr:
        return True
    raise ImportError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "lava import failed")
