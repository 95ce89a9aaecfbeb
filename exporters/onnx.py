"""ONNX export of a fixed hybrid model: each linear-attention site is ONE ``lincompress::LinearAttention`` node.

The node (domain ``lincompress``, version 1; attributes ``feature_map`` (string),
``eps`` (float), ``layout`` (string)) is what ``torch.ops.lincompress.linear_attention``
becomes. The model also carries an ONNX *function* of that name made of standard ops
(opset 18 + ``Equal`` on strings, which needs opset 19, so the function imports 19 and
the model is exported at opset 19 by default; ``decompose=True`` works at 18), so:

* onnxruntime (or any runtime that inlines model-local functions) runs the file with no
  custom code;
* TensorRT claims the node by name with the ``LinearAttention`` plugin
  (``lincompress.exporters.tensorrt``): the engine builder strips the function body
  before parsing, so the parser's plugin fallback picks the node up in every TRT 10
  release (newer parsers prefer a local function over a plugin unless told otherwise);
* tools that know neither still see one readable node per site.

``decompose=True`` emits the same maths as plain ops in the graph (no custom domain),
for runtimes without function support.

Function body, per head (inputs ``[B, H, N, D]`` for ``bhnd``, ``[B, N, H, D]`` for ``bnhd``)::

    f = one branch per feature map of lincompress.ops.spec (identity, relu, elu(x)+1,
        hedgehog = Concat(Softmax(x), Softmax(-x)), ...), selected by the feature_map attribute
    S = f(K)^T V,  z = sum_n f(K)
    O = f(Q) S / (f(Q) z + eps)           (fp32 accumulation, cast back to V's type)

Each branch is the map's own ONNX recipe from the spec (``FeatureMapSpec.onnx``), which
``decompose=True`` emits too, so a new feature map needs no edit here.

Softmax sites keep what the original model does: ``scaled_dot_product_attention``
(lowered by the ONNX exporter to ``MatMul -> Softmax -> MatMul``) or the hand-written
``matmul/softmax``. ``count_attention_nodes`` counts both kinds in a file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lincompress.errors import LinCompressError
from lincompress.exporters._common import ExportFiles, ExportSource, dynamic_axes, export_program, write_sidecar
from lincompress.ops import spec

DOMAIN = "lincompress"
OP_TYPE = "LinearAttention"
DOMAIN_VERSION = 1
DEFAULT_OPSET = 19  # the function body compares string attributes with Equal (opset >= 19)
MIN_OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1 << 30  # initializer bytes above which weights go to a side file (protobuf caps at 2 GiB)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise LinCompressError(
            f"ONNX export needs onnx and onnxscript ({exc.name} is missing); pip install 'lincompress[onnx]'"
        ) from None


# --------------------------------------------------------------------------- the ONNX function


def linear_attention_function(opset: int = DEFAULT_OPSET):
    """The ``lincompress::LinearAttention`` FunctionProto: standard ops, attributes by reference."""
    from onnx import AttributeProto, TensorProto, helper

    if opset < 19:
        raise ValueError("the LinearAttention function needs opset >= 19 (Equal on strings); use decompose=True below it")
    nodes = []

    def node(op: str, inputs: list[str], outputs: list[str], **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]

    def string_const(name: str, value: str) -> str:
        return node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.STRING, [], [value.encode()]))

    def attr_const(name: str, attr: str, kind: str) -> str:
        # Constant whose value is the calling node's attribute ``attr`` (an attribute reference).
        ref = AttributeProto(name=f"value_{kind}", type=_ATTR_TYPES[kind], ref_attr_name=attr)
        c = helper.make_node("Constant", [], [name])
        c.attribute.append(ref)
        nodes.append(c)
        return name

    def branch(name: str, body: list, output: str):
        out = helper.make_empty_tensor_value_info(output)  # type inferred from the branch body
        return helper.make_graph(body, name, [], [out])

    def to_bhnd(x: str, tag: str) -> str:
        then_g = branch(f"{tag}_bnhd", [helper.make_node("Transpose", [x], [f"{tag}_t"], perm=[0, 2, 1, 3])], f"{tag}_t")
        else_g = branch(f"{tag}_bhnd", [helper.make_node("Identity", [x], [f"{tag}_i"])], f"{tag}_i")
        return node("If", ["is_bnhd"], [f"{tag}_h"], then_branch=then_g, else_branch=else_g)

    def feature(x: str, tag: str) -> str:
        # If(is <map 1>, <map 1>, If(is <map 2>, <map 2>, ... <last map>)), one branch per spec entry
        names = list(spec.FEATURE_MAPS)
        out, body = _branch_nodes(spec.FEATURE_MAPS[names[-1]], x, f"{tag}_{names[-1]}")
        if len(names) == 1:
            nodes.extend(body)
            return node("Identity", [out], [f"{tag}_f"])
        graph = branch(f"{tag}_{names[-1]}", body, out)
        for name in reversed(names[1:-1]):
            out, body = _branch_nodes(spec.FEATURE_MAPS[name], x, f"{tag}_{name}")
            selected = f"{tag}_from_{name}"
            graph = branch(f"{tag}_from_{name}", [
                helper.make_node("If", [f"is_{name}"], [selected], then_branch=branch(f"{tag}_{name}", body, out),
                                 else_branch=graph)
            ], selected)
        out, body = _branch_nodes(spec.FEATURE_MAPS[names[0]], x, f"{tag}_{names[0]}")
        return node("If", [f"is_{names[0]}"], [f"{tag}_f"], then_branch=branch(f"{tag}_{names[0]}", body, out),
                    else_branch=graph)

    attr_const("layout_value", "layout", "string")
    attr_const("feature_map_value", "feature_map", "string")
    attr_const("eps_value", "eps", "float")
    node("Equal", ["layout_value", string_const("bnhd_str", "bnhd")], ["is_bnhd"])
    for name in list(spec.FEATURE_MAPS)[:-1]:
        node("Equal", ["feature_map_value", string_const(f"{name}_str", name)], [f"is_{name}"])
    node("Constant", [], ["reduce_axes"], value=helper.make_tensor("reduce_axes", TensorProto.INT64, [1], [2]))
    qh, kh, vh = to_bhnd("q", "q"), to_bhnd("k", "k"), to_bhnd("v", "v")
    qa = node("Cast", [qh], ["q32"], to=TensorProto.FLOAT)
    ka = node("Cast", [kh], ["k32"], to=TensorProto.FLOAT)
    va = node("Cast", [vh], ["v32"], to=TensorProto.FLOAT)
    qf, kf = feature(qa, "q"), feature(ka, "k")
    kt = node("Transpose", [kf], ["k_t"], perm=[0, 1, 3, 2])
    state = node("MatMul", [kt, va], ["state"])  # [B,H,Dk,Dv]
    z = node("ReduceSum", [kf, "reduce_axes"], ["z"], keepdims=1)  # [B,H,1,Dk]
    zt = node("Transpose", [z], ["z_t"], perm=[0, 1, 3, 2])  # [B,H,Dk,1]
    num = node("MatMul", [qf, state], ["num"])
    den0 = node("MatMul", [qf, zt], ["den0"])
    den = node("Add", [den0, "eps_value"], ["den"])
    o32 = node("Div", [num, den], ["o32"])
    oh = node("CastLike", [o32, "v"], ["o_h"])
    then_g = branch("out_bnhd", [helper.make_node("Transpose", [oh], ["o_t"], perm=[0, 2, 1, 3])], "o_t")
    else_g = branch("out_bhnd", [helper.make_node("Identity", [oh], ["o_i"])], "o_i")
    node("If", ["is_bnhd"], ["out"], then_branch=then_g, else_branch=else_g)
    fn = helper.make_function(
        DOMAIN, OP_TYPE, ["q", "k", "v"], ["out"], nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[],
        doc_string="Bidirectional normalised linear attention (lincompress::linear_attention); see lincompress.exporters.onnx.",
    )
    fn.attribute_proto.extend([
        helper.make_attribute("feature_map", spec.DEFAULT_FEATURE_MAP),
        helper.make_attribute("eps", spec.DEFAULT_EPS),
        helper.make_attribute("layout", spec.DEFAULT_LAYOUT),
    ])
    return fn


_ATTR_TYPES = {"string": 3, "float": 1}  # AttributeProto.STRING, AttributeProto.FLOAT


class _NodeEmitter:
    """``spec.OnnxEmitter`` writing NodeProtos with names under one prefix (a function-body branch)."""

    def __init__(self, prefix: str) -> None:
        from onnx import helper

        self.helper, self.prefix, self.nodes = helper, prefix, []

    def _name(self) -> str:
        return f"{self.prefix}_{len(self.nodes)}"

    def __call__(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self._name()
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def constant(self, value: float) -> str:
        from onnx import TensorProto

        out = self._name()
        tensor = self.helper.make_tensor(out, TensorProto.FLOAT, [], [float(value)])
        self.nodes.append(self.helper.make_node("Constant", [], [out], value=tensor))
        return out


def _branch_nodes(fmap: "spec.FeatureMapSpec", x: str, prefix: str) -> tuple[str, list]:
    """(output name, nodes) of ``fmap``'s ONNX recipe applied to ``x``; a pass-through map gets an Identity."""
    emit = _NodeEmitter(prefix)
    out = fmap.onnx(emit, x)
    if out == x:
        out = emit("Identity", x)
    return out, emit.nodes


class _ScriptEmitter:
    """``spec.OnnxEmitter`` over onnxscript ops (``decompose=True``)."""

    def __init__(self, op) -> None:
        self.op = op

    def __call__(self, op_type: str, *inputs, **attrs):
        return getattr(self.op, op_type)(*inputs, **attrs)

    def constant(self, value: float):
        return self.op.Constant(value_float=float(value))


def _register_schema() -> None:
    """Declare ``lincompress::LinearAttention`` to onnx's schema registry (onnxscript needs a schema to emit it)."""
    import onnx
    from onnx import defs

    if defs.has(OP_TYPE, DOMAIN):
        return
    schema = defs.OpSchema(
        OP_TYPE, DOMAIN, DOMAIN_VERSION,
        doc="Bidirectional normalised linear attention; see lincompress.exporters.onnx.",
        inputs=[defs.OpSchema.FormalParameter("q", "T"), defs.OpSchema.FormalParameter("k", "T"),
                defs.OpSchema.FormalParameter("v", "T")],
        outputs=[defs.OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"], "float types")],
        attributes=[
            defs.OpSchema.Attribute("feature_map", onnx.helper.make_attribute("feature_map", spec.DEFAULT_FEATURE_MAP),
                                    "|".join(spec.FEATURE_MAP_NAMES)),
            defs.OpSchema.Attribute("eps", onnx.helper.make_attribute("eps", spec.DEFAULT_EPS), "denominator epsilon"),
            defs.OpSchema.Attribute("layout", onnx.helper.make_attribute("layout", spec.DEFAULT_LAYOUT),
                                    "|".join(spec.LAYOUTS)),
        ],
    )
    defs.register_schema(schema)


# --------------------------------------------------------------------------- translations


def _check_attrs(feature_map: str, eps: float, layout: str) -> None:
    try:
        spec.check_attributes(feature_map, eps, layout)
    except ValueError as exc:
        raise LinCompressError(f"cannot export linear attention: {exc}") from None


def _custom_node_translation():
    from onnxscript.values import Op, Opset

    _register_schema()
    custom = Opset(DOMAIN, DOMAIN_VERSION)
    linear_attention_op = Op(custom, OP_TYPE)

    def translate(q, k, v, feature_map: str = spec.DEFAULT_FEATURE_MAP, eps: float = spec.DEFAULT_EPS,
                  layout: str = spec.DEFAULT_LAYOUT):
        _check_attrs(feature_map, eps, layout)
        return linear_attention_op(q, k, v, feature_map=feature_map, eps=float(eps), layout=layout)

    return translate


def _decomposed_translation(opset: int):
    import onnxscript
    from onnx import TensorProto

    op = onnxscript.values.Opset("", opset)
    emit = _ScriptEmitter(op)

    def translate(q, k, v, feature_map: str = spec.DEFAULT_FEATURE_MAP, eps: float = spec.DEFAULT_EPS,
                  layout: str = spec.DEFAULT_LAYOUT):
        _check_attrs(feature_map, eps, layout)
        feature = spec.FEATURE_MAPS[feature_map].onnx
        if layout == "bnhd":
            q, k, v = (op.Transpose(t, perm=[0, 2, 1, 3]) for t in (q, k, v))
        qf = feature(emit, op.Cast(q, to=TensorProto.FLOAT))
        kf = feature(emit, op.Cast(k, to=TensorProto.FLOAT))
        state = op.MatMul(op.Transpose(kf, perm=[0, 1, 3, 2]), op.Cast(v, to=TensorProto.FLOAT))
        z = op.ReduceSum(kf, op.Constant(value_ints=[2]), keepdims=1)
        den = op.Add(op.MatMul(qf, op.Transpose(z, perm=[0, 1, 3, 2])), op.Constant(value_float=float(eps)))
        out = op.CastLike(op.Div(op.MatMul(qf, state), den), v)
        return op.Transpose(out, perm=[0, 2, 1, 3]) if layout == "bnhd" else out

    return translate


# --------------------------------------------------------------------------- export


def export_onnx_program(program: torch.export.ExportedProgram, decompose: bool = False, opset: int | None = None):
    """``torch.export`` program -> ``torch.onnx.ONNXProgram`` (in memory), with the LinearAttention function attached."""
    _require_onnx()
    import onnx_ir as ir

    opset = opset or (MIN_OPSET if decompose else DEFAULT_OPSET)
    if opset < MIN_OPSET:
        raise LinCompressError(f"opset {opset} is too old; lincompress exports at opset >= {MIN_OPSET}")
    if not decompose and opset < 19:
        raise LinCompressError("the LinearAttention node's function needs opset >= 19; pass a newer opset or --decompose")
    translate = _decomposed_translation(opset) if decompose else _custom_node_translation()
    table = {torch.ops.lincompress.linear_attention.default: translate}
    try:
        onnx_program = torch.onnx.export(
            program, (), dynamo=True, custom_translation_table=table, opset_version=opset, optimize=True, verbose=False,
        )
    except LinCompressError:
        raise
    except Exception as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise LinCompressError(f"ONNX export failed: {lines[-1] if lines else type(exc).__name__}") from exc
    model = onnx_program.model
    if not decompose:
        used = any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in _all_nodes(model))
        if used:
            model.opset_imports[DOMAIN] = DOMAIN_VERSION
            function = ir.serde.deserialize_function(linear_attention_function(opset))
            model.functions[function.identifier()] = function
    return onnx_program


def _all_nodes(model) -> list:
    nodes = list(model.graph.all_nodes()) if hasattr(model.graph, "all_nodes") else list(model.graph)
    for fn in model.functions.values():
        nodes.extend(fn)
    return nodes


def save_onnx(onnx_program, path: Path) -> list[Path]:
    """Write the model (weights inline, or in ``<name>.data`` past 1 GiB); returns the files written."""
    import onnx_ir as ir

    from lincompress import atomic

    path = Path(path)
    model = onnx_program.model
    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if size > EXTERNAL_DATA_THRESHOLD:
        data_name = path.name + ".data"
        atomic.atomic_write(path, lambda tmp: ir.save(model, tmp, external_data=data_name))
        return [path, path.with_name(data_name)]
    atomic.atomic_write(path, lambda tmp: ir.save(model, tmp))
    return [path]


_PASS_THROUGH = {"Mul", "Div", "Add", "Sub", "Cast", "CastLike", "Where", "Identity", "Neg", "Reshape"}


def count_attention_nodes(model_or_path: Any) -> Counter:
    """``linear_attention`` (LinearAttention nodes) and ``softmax`` (softmax attention sites) in a model's main graph.

    A softmax attention site is a ``Softmax`` over attention scores: walking back from its
    input through elementwise ops (scale, mask, casts) reaches a ``MatMul``/``Einsum`` whose
    two operands are both activations (``q @ k^T``). This is how SDPA lowers at opset < 23
    and how hand-written attention looks, and it excludes softmaxes that are not attention,
    e.g. Hedgehog's feature map ``softmax(x W)`` whose product has a weight operand.
    """
    import onnx

    model = onnx.load(str(model_or_path), load_external_data=False) if isinstance(model_or_path, (str, Path)) else model_or_path
    counts: Counter = Counter()
    constant = {init.name for init in model.graph.initializer}
    producer = {}
    for n in model.graph.node:
        for out in n.output:
            producer[out] = n
        if n.op_type == "Constant" or (n.input and all(i in constant or i == "" for i in n.input)):
            constant.update(n.output)

    def scores_from_activations(name: str) -> bool:
        for _ in range(16):
            node = producer.get(name)
            if node is None:
                return False
            if node.op_type in ("MatMul", "Einsum"):
                return len(node.input) >= 2 and not any(i in constant for i in node.input[:2])
            if node.op_type not in _PASS_THROUGH:
                return False
            live = [i for i in node.input if i and i not in constant]
            if not live:
                return False
            name = live[0]
        return False

    for n in model.graph.node:
        if n.domain == DOMAIN and n.op_type == OP_TYPE:
            counts["linear_attention"] += 1
        elif n.op_type == "Softmax" and n.domain in ("", "ai.onnx") and scores_from_activations(n.input[0]):
            counts["softmax"] += 1
    return counts


def export_onnx(source: ExportSource, path: str | Path, decompose: bool = False, opset: int | None = None,
                batch: int = 2, dynamic: bool = True, dtype: torch.dtype | None = None,
                prepared: tuple[torch.export.ExportedProgram, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Export ``source`` to ``path`` (+ ``<path>.json`` with inputs, dynamic axes and node counts).

    ``prepared``: an ``export_program(...)`` result to reuse instead of tracing again.
    """
    path = Path(path)
    program, kwargs = prepared or export_program(source, batch=batch, dynamic=dynamic, dtype=dtype)
    onnx_program = export_onnx_program(program, decompose=decompose, opset=opset)
    files = save_onnx(onnx_program, path)
    model = onnx_program.model
    import onnx_ir as ir

    counts = count_attention_nodes(ir.serde.serialize_model(model)) if not files[1:] else count_attention_nodes(path)
    info = {
        "format": "onnx",
        "file": path.name,
        "opset": model.opset_imports.get("", None),
        "custom_domain": None if decompose else {"domain": DOMAIN, "op_type": OP_TYPE, "version": DOMAIN_VERSION},
        "decompose": decompose,
        "inputs": dynamic_axes(program, kwargs),
        "input_names": [v.name for v in model.graph.inputs],
        "output_names": [v.name for v in model.graph.outputs],
        "example_batch": batch,
        "attention_nodes": dict(counts),
        "files": [p.name for p in files],
    }
    write_sidecar(path.with_name(path.name + ".json"), info, source)
    return info


@dataclass
class ONNX:
    """Pipeline step: ``exporters.ONNX("out/model.onnx")`` after ``passes.Fix()``.

    Records ``state.outputs["onnx"]`` (and ``"onnx_info"``: the JSON sidecar).
    """

    path: str | Path
    decompose: bool = False
    opset: int | None = None
    dynamic: bool = True
    overwrite: bool = False  # replace an earlier export of ours at ``path`` (never a file lincompress did not write)
    name: str = field(default="onnx")
    requires: ClassVar[tuple[str, ...]] = ("fixed",)  # Pipeline checks the order before anything runs

    def _files(self) -> ExportFiles:
        return ExportFiles.for_file(self.path, ".data", ".json")

    def check(self, state) -> None:
        self._files().check(self.overwrite)  # before any pass runs

    def run(self, state):
        with self._files().writing(self.overwrite):
            info = export_onnx(ExportSource.from_state(state), self.path, self.decompose, self.opset, dynamic=self.dynamic)
        path = Path(self.path)
        state.outputs["onnx"] = path
        state.outputs["onnx_info"] = path.with_name(path.name + ".json")
        state.metrics.setdefault("export", {})["onnx"] = info["attention_nodes"]
        return state
