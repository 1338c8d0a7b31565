"""Optional dependencies of :mod:`med_core.optimization`, imported at the point of use.

The pattern is optuna's ``optuna/_imports.py``: the import runs inside a ``with
try_import(...)`` block that swallows :class:`ImportError`; :meth:`check` raises it again
later, with a message naming the package and the ``pip install`` line of the extra that
provides it.

Example:
    >>> with try_import("onnx") as imports:
    ...     import json  # stands in for an optional package that is installed
    >>> imports.is_successful()
    True
    >>> with try_import("onnx") as imports:
    ...     import a_package_that_does_not_exist
    >>> imports.is_successful()
    False
"""

from __future__ import annotations

from types import TracebackType

__all__ = ["EXTRAS", "try_import"]

#: extra name -> the packages it installs (kept in sync with pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "quant": ("torchao",),
}


class _DeferredImportExceptionContextManager:
    """Context manager that records an :class:`ImportError` instead of raising it."""

    def __init__(self, extra: str) -> None:
        if extra not in EXTRAS:
            raise ValueError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
        self._extra = extra
        self._error: ImportError | None = None

    def __enter__(self) -> _DeferredImportExceptionContextManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if isinstance(exc_value, ImportError):
            self._error = exc_value
            return True  # swallowed until check()
        return None

    def is_successful(self) -> bool:
        """Whether every import inside the block succeeded."""
        return self._error is None

    def check(self) -> None:
        """Raise the recorded import failure, naming the extra to install.

        Raises:
            ImportError: If an import inside the block failed; chained to the original.
        """
        if self._error is not None:
            name = self._error.name or str(self._error)
            raise ImportError(
                f"Tried to import {name!r} but failed ({self._error}). "
                f"It is an optional dependency of med_core.optimization: install it with "
                f"pip install 'medauto[{self._extra}]' "
                f"(provides {', '.join(EXTRAS[self._extra])})."
            ) from self._error


def try_import(extra: str) -> _DeferredImportExceptionContextManager:
    """Import optional packages inside a ``with`` block, deferring any failure to ``check()``.

    Args:
        extra: The ``medauto`` extra that installs the packages imported in the block
            (a key of :data:`EXTRAS`), named in the error message.

    Returns:
        The context manager; call ``.check()`` where the packages are needed.

    Raises:
        ValueError: If ``extra`` is not a known extra.
    """
    return _DeferredImportExceptionContextManager(extra)
