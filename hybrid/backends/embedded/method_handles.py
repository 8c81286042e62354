"""Loops that run inside the JVM, composed from ``java.lang.invoke`` method handles.

Every call from Python into Java (through pyjnius) costs far more than the Java work of
one search hit, and pyjnius wraps each object of a returned object array on the way back.
A loop over queries and hits must therefore run on the Java side and hand back primitive
arrays. Anserini offers no such call and hybrid ships no Java code to compile, so the
loops are built here from the JDK's method-handle combinators (``countedLoop``,
``filterReturnValue`` ...): plain JDK API, called once to compose, then invoked through
``MethodHandle.invokeWithArguments``.

Two pyjnius limits shape the code: it converts a returned ``Integer`` or ``Boolean`` to a
Python number and cannot pass a Python number where Java takes ``Object`` (so numbers are
bound as strings and parsed in the handle), and it cannot wrap an object of a hidden class
(so no ``MethodHandleProxies`` lambdas ever cross to Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Handles:
    """Method-handle building blocks of one JVM (``autoclass`` from :func:`hybrid.java.start_jvm`)."""

    def __init__(self, autoclass: Any) -> None:
        self.autoclass = autoclass
        self.mh = autoclass("java.lang.invoke.MethodHandles")
        self._method_type = autoclass("java.lang.invoke.MethodType")
        self._class = autoclass("java.lang.Class")
        self._arrays = autoclass("java.util.Arrays")
        self.lookup = self.mh.publicLookup()
        self.int = autoclass("java.lang.Integer").TYPE
        self.double = autoclass("java.lang.Double").TYPE
        self.float = autoclass("java.lang.Float").TYPE
        self.boolean = autoclass("java.lang.Boolean").TYPE
        self.void = autoclass("java.lang.Void").TYPE
        self.string = self.cls("java.lang.String")

    def cls(self, name: str) -> Any:
        """The ``java.lang.Class`` named ``name`` (arrays as ``[D``, ``[Lpkg.Name;``)."""
        return self._class.forName(name)

    def type(self, ret: Any, *params: Any) -> Any:
        return self._method_type.methodType(ret, list(params))

    def virtual(self, owner: Any, name: str, ret: Any, *params: Any) -> Any:
        return self.lookup.findVirtual(owner, name, self.type(ret, *params))

    def static(self, owner: Any, name: str, ret: Any, *params: Any) -> Any:
        return self.lookup.findStatic(owner, name, self.type(ret, *params))

    def params(self, handle: Any) -> list[Any]:
        """The parameter types of ``handle``."""
        from jnius import cast

        kind = handle.type()  # parameterType(i) resolves to a bridge method typed TypeDescriptor
        return [cast("java.lang.Class", kind.parameterType(i)) for i in range(kind.parameterCount())]

    def bind_int(self, handle: Any, pos: int, value: int) -> Any:
        """``handle`` with its int parameter at ``pos`` fixed to ``value`` (sent as a string)."""
        parse = self.static(self.cls("java.lang.Integer"), "parseInt", self.int, self.string)
        return self.mh.insertArguments(self.mh.filterArguments(handle, pos, parse), pos, str(value))

    def bind_bool(self, handle: Any, pos: int, value: bool) -> Any:
        """``handle`` with its boolean parameter at ``pos`` fixed to ``value``."""
        parse = self.static(self.cls("java.lang.Boolean"), "parseBoolean", self.boolean, self.string)
        return self.mh.insertArguments(self.mh.filterArguments(handle, pos, parse), pos, str(value).lower())

    def put(self, array: Any, index: Any, value: Any) -> Any:
        """``(T[] out, int i, A...) -> void`` doing ``out[index(i)] = value(A..., i)``.

        ``index`` is ``(int)int`` (``None``: ``i`` itself); ``value`` is ``(A..., int)E``.
        """
        setter = self.mh.arrayElementSetter(array)  # (T[], int, E) void
        if index is not None:
            setter = self.mh.filterArguments(setter, 1, index)
        given = self.params(value)[:-1]  # A...
        collected = self.mh.collectArguments(setter, 2, value)  # (T[], i, A..., i) void
        reorder = [0, 1, *range(2, len(given) + 2), 1]
        return self.mh.permuteArguments(collected, self.type(self.void, array, self.int, *given), *reorder)

    def fill(self, array: Any, iterations: Any, length: Any, *writes: Any) -> Any:
        """``(A...) -> T[]``: a new array of ``length(A...)`` elements, then each of
        ``writes`` (as from :meth:`put`) for ``i`` in ``range(iterations(A...))``, in order."""
        params = self.params(iterations)
        init = self.mh.filterReturnValue(length, self.mh.arrayConstructor(array))
        body = self.mh.dropArguments(self.mh.identity(array), 1, self.int, *params)  # returns the array
        for write in reversed(writes):
            body = self.mh.foldArguments(body, write)  # write runs first, then the rest
        return self.mh.countedLoop(iterations, init, body)

    def strings(self, values: Sequence[str]) -> Any:
        """A ``java.util.List<String>`` of ``values`` (one JNI call)."""
        return self._arrays.asList(*values)

    def call(self, handle: Any, *args: Any) -> Any:
        """``handle`` invoked with Java objects or strings (one JNI call)."""
        return handle.invokeWithArguments(self._arrays.asList(*args))
