"""Deeply read-only JSON values: the specs that routing tables hand to every request.

One parsed spec is shared by every decision that serves it, possibly on many threads; a
request that edited it would silently change the behaviour of all the others. Objects become
:class:`FrozenDict` (a ``dict`` subclass, so ``json.dumps`` and ``isinstance(x, dict)`` still
work) and arrays become tuples. ``json.loads(json.dumps(spec))`` gives a private mutable
copy.
"""

from __future__ import annotations

from typing import Any, NoReturn


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses every mutation (shared policy specs must stay as stored)."""

    __slots__ = ()

    def _refuse(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError(
            "policy specs are shared by every request and read-only; copy with dict(spec) "
            "(or json.loads(json.dumps(spec)) for a deep copy) before changing one"
        )

    __setitem__ = _refuse
    __delitem__ = _refuse
    __ior__ = _refuse
    clear = _refuse
    pop = _refuse
    popitem = _refuse
    setdefault = _refuse
    update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (e.g. handing a spec to a worker process) through a plain dict: the default
        # protocol would rebuild the object with the refused __setitem__.
        return (FrozenDict, (dict(self),))


def freeze(value: Any) -> Any:
    """Return a deeply read-only copy of a JSON value (objects → FrozenDict, arrays → tuples)."""
    if isinstance(value, dict):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value
