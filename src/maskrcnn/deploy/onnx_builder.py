"""A small builder for ONNX graphs: `g.op("Add", a, b)` appends a node and returns the name
of its output, numbers and arrays become constants. The export glue (pre- and
post-processing) is written with it; the networks come from torch's exporter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Value = Union[str, int, float, np.ndarray, Sequence[int], Sequence[float]]

FLOAT = TensorProto.FLOAT
DOUBLE = TensorProto.DOUBLE
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL


class GraphBuilder:
    """Nodes and constants of one graph; every name it makes starts with `prefix`."""

    def __init__(self, opset: int, prefix: str = "glue/") -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Value, dtype: np.dtype | type | None = None) -> str:
        """A constant. numpy values keep their dtype; Python ints become int64 and Python
        floats float32 unless dtype says otherwise."""
        array = np.asarray(value, dtype=dtype)
        if dtype is None and not isinstance(value, (np.ndarray, np.generic)):
            array = array.astype(np.float32 if array.dtype.kind == "f" else np.int64)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def _input(self, value: Value | None) -> str:
        if value is None:
            return ""  # an omitted optional input
        return value if isinstance(value, str) else self.const(value)

    def op(self, op_type: str, *inputs: Value | None, outputs: int = 1,
           **attrs) -> str | tuple[str, ...]:
        """Append a node; returns its output name (a tuple when outputs > 1)."""
        names = tuple(self.name(op_type) for _ in range(outputs))
        node = helper.make_node(op_type, [self._input(v) for v in inputs], list(names),
                                name=self.name(f"node_{op_type}"), **attrs)
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def op_named(self, op_type: str, inputs: Sequence[Value], output: str, **attrs) -> str:
        """Append a node whose single output has the given name."""
        node = helper.make_node(op_type, [self._input(v) for v in inputs], [output],
                                name=self.name(f"node_{op_type}"), **attrs)
        self.nodes.append(node)
        return output

    # Shorthands for the operations the glue uses most.
    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)

    def shape(self, x: str, start: int | None = None, end: int | None = None) -> str:
        attrs = {} if start is None else {"start": start}
        if end is not None:
            attrs["end"] = end
        return self.op("Shape", x, **attrs)

    def dim(self, x: str, axis: int) -> str:
        """The size of one axis as an int64 [1] tensor."""
        return self.shape(x, axis, axis + 1 if axis != -1 else None)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", x, list(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", x, list(axes))

    def reshape(self, x: str, shape: Value) -> str:
        return self.op("Reshape", x, shape)

    def concat(self, values: Sequence[Value], axis: int) -> str:
        return self.op("Concat", *values, axis=axis)

    def gather(self, x: str, index: Value, axis: int = 0) -> str:
        return self.op("Gather", x, index, axis=axis)

    def slice(self, x: str, start: Value, end: Value, axis: int, step: int = 1) -> str:
        start = [start] if isinstance(start, int) else start
        end = [end] if isinstance(end, int) else end
        return self.op("Slice", x, start, end, [axis], [step])

    def where(self, condition: str, x: Value, y: Value) -> str:
        return self.op("Where", condition, x, y)

    def arange(self, end: str, dtype: int = INT64) -> str:
        """0, 1, ..., end - 1 for an int64 `end` of shape [1]; cast to dtype."""
        values = self.op("Range", np.int64(0), self.scalar(end), np.int64(1))
        return values if dtype == INT64 else self.cast(values, dtype)

    def scalar(self, x: str) -> str:
        """A [1] tensor as a scalar []."""
        return self.op("Squeeze", x, [0])

    def divmod_int(self, a: Value, b: Value) -> tuple[str, str]:
        """(a // b, a % b) for int64 0 <= a < 2^23, b >= 1, exactly on every runtime.

        Integer division through float32 with a one-step correction: OpenVINO's CPU plugin
        divides integers in float32 (and may multiply by a reciprocal), which is off by one
        near exact quotients; the remainder check repairs that."""
        a, b = self._input(a), self._input(b)
        guess = self.cast(self.op("Floor", self.op("Div", self.cast(a, FLOAT),
                                                   self.cast(b, FLOAT))), INT64)
        rest = self.op("Sub", a, self.op("Mul", guess, b))
        fix = self.op("Sub", self.cast(self.op("GreaterOrEqual", rest, b), INT64),
                      self.cast(self.op("Less", rest, np.int64(0)), INT64))
        return self.op("Add", guess, fix), self.op("Sub", rest, self.op("Mul", fix, b))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = False) -> str:
        """ReduceMax/Min/Sum/... over axes (axes an input from opset 18, for Sum from 13)."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, x, list(axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def max(self, *values: Value) -> str:
        return self.op("Max", *values)

    def min(self, *values: Value) -> str:
        return self.op("Min", *values)

    def split_last(self, x: str, parts: int) -> tuple[str, ...]:
        """Split [..., parts] into `parts` tensors [...] along the last axis."""
        pieces = self.op("Split", x, [1] * parts, axis=-1, outputs=parts)
        return tuple(self.squeeze(p, [-1]) for p in pieces)

    def stack_last(self, values: Sequence[str]) -> str:
        """Stack tensors [...] into [..., len(values)]."""
        return self.concat([self.unsqueeze(v, [-1]) for v in values], axis=-1)


def toposort(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Order nodes so that every input is produced before it is read (Kahn's algorithm).

    available: names given from outside (graph inputs, initializers)."""
    produced_by: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for output in node.output:
            produced_by[output] = index
    waiting = []
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        needs = {produced_by[name] for name in _consumed(node)
                 if name and name not in available and name in produced_by}
        waiting.append(len(needs))
        for producer in needs:
            readers.setdefault(producer, []).append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order = []
    while ready:
        index = ready.pop(0)
        order.append(index)
        for reader in readers.get(index, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) != len(nodes):
        raise ValueError("the export graph has a cycle or an input nobody produces")
    return [nodes[i] for i in order]


def _consumed(node: onnx.NodeProto) -> list[str]:
    """Inputs of a node, including those its subgraphs read from the outer scope."""
    names = list(node.input)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names += [n for sub in attr.g.node for n in _consumed(sub)]
    return names


def value_info(name: str, elem_type: int, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))
