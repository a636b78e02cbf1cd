"""Triton's CPU interpreter under NumPy ≥ 2.4, for triton releases up to 3.6.

In the interpreter every scalar inside a kernel is a one-element NumPy array, and a loop over
run-time bounds (``for rb in range(rb_start, rb_end)``, as in every kernel here) turns them into
Python ints through ``tl.tensor.__index__``, which triton ≤ 3.6 implements as ``int(array)``.
NumPy 2.4 made ``int()`` of an array with ``ndim > 0`` a ``TypeError`` (deprecated since 1.25),
so with triton 3.6 (torch 2.11's) and NumPy 2.4 no kernel here runs in the interpreter (reported
upstream: https://github.com/triton-lang/triton/issues/9171; later triton releases convert the
squeezed array). Compiled kernels are unaffected.

:func:`patch_interpreter_index` makes the interpreter convert ``array.squeeze()`` instead, the
conversion later triton releases use, which is the same value wherever the old one worked. It
changes only the ``__index__`` that the interpreter itself puts on ``tl.tensor`` for its launches
(recent releases take it off again after each launch, 3.4 and 3.5 leave it), and nothing when
triton's internals differ from what it expects. It is installed only in interpreter mode.
"""

from __future__ import annotations

__all__ = ["patch_interpreter_index"]

_PATCHED = False


def _index(self) -> int:
    return int(self.handle.data.squeeze())


def patch_interpreter_index() -> bool:
    """Installs the conversion once; True when the interpreter is (now) patched."""
    global _PATCHED
    if _PATCHED:
        return True
    try:
        from triton.runtime import interpreter
    except Exception:  # no triton, or one without the interpreter module
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return False

    def patch_lang_tensor(tensor, *rest):
        original(tensor, *rest)
        scope = rest[0] if rest else None
        if hasattr(scope, "set_attr"):  # releases that record their patches and undo them after the launch
            scope.set_attr(tensor, "__index__", _index)
        else:  # earlier releases set the attributes for good
            tensor.__index__ = _index

    interpreter._patch_lang_tensor = patch_lang_tensor
    _PATCHED = True
    return True
