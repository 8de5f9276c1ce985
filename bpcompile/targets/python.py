"""What the Python files of every target share: literals and the lines of
``init_params`` (the NumPy module and the CUDA loader print the same ones)."""

from __future__ import annotations

import math

from ..escape import py_str
from .base import Code


def literal(value) -> Code:
    """A Python literal for ``value``: strings through ``py_str``; ints, finite floats,
    None and booleans by repr; tuples, lists and dicts of those."""
    if isinstance(value, str):
        return Code(py_str(value))
    if value is None or isinstance(value, (bool, int)):
        return Code(repr(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no finite Python literal for {value!r}")
        return Code(repr(value))
    if isinstance(value, tuple):
        items = [literal(v) for v in value]
        return Code("(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")")
    if isinstance(value, list):
        return Code("[" + ", ".join(literal(v) for v in value) + "]")
    if isinstance(value, dict):
        return Code("{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}")
    raise TypeError(f"no Python literal for a {type(value).__name__}")


def _shape_text(shape) -> str:
    return literal(tuple(shape))


def _fans(shape):
    if len(shape) >= 2:
        receptive = 1
        for d in shape[2:]:
            receptive *= d
        return shape[1] * receptive, shape[0] * receptive
    n = shape[0] if shape else 1
    return n, n


def init_line(p) -> str:
    """One line creating param ``p`` per its init rule."""
    shape = _shape_text(p.shape)
    kind = p.init[0]
    target = f"params[{py_str(p.name)}]"
    if kind == "zeros":
        return f"{target} = np.zeros({shape}, DTYPE)"
    if kind == "ones":
        return f"{target} = np.ones({shape}, DTYPE)"
    if kind == "constant":
        return f"{target} = np.full({shape}, {literal(float(p.init[1]))}, DTYPE)"
    if kind == "normal":
        return f"{target} = rng.normal(0.0, {literal(float(p.init[1]))}, {shape}).astype(DTYPE)"
    if kind == "uniform":
        limit = literal(float(p.init[1]))
        return f"{target} = rng.uniform(-{limit}, {limit}, {shape}).astype(DTYPE)"
    fan_in, fan_out = _fans(p.shape)
    if kind == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return f"{target} = rng.uniform(-{limit!r}, {limit!r}, {shape}).astype(DTYPE)  # glorot"
    std = math.sqrt(2.0 / fan_in)
    return f"{target} = rng.normal(0.0, {std!r}, {shape}).astype(DTYPE)  # he"




def loader_fields(spec, programs) -> dict:
    """The template fields every loader (CUDA's, C's) fills alike: the module's
    constants, its functions' signatures, the init lines, and what the shared
    checks.py.j2 and optimizers.py.j2 read.  Names are checked identifiers."""
    vag, pred = programs["value_and_grad"], programs["predict"]
    out = pred.output
    classes = {nm: d.classes for nm, d in spec.inputs.items() if d.is_label}

    def signature(p):
        """``*, x, label=None, check=True``: as the NumPy module's functions."""
        read = {v.name for v in p.inputs}
        return Code(", ".join(["*", *(nm if nm in read else f"{nm}=None" for nm in spec.inputs), "check=True"]))

    return dict(
        param_shapes=Code("{" + ", ".join(f"{p!r}: {d.shape!r}" for p, d in spec.params.items()) + "}"),
        input_shapes=Code("{" + ", ".join(f"{i!r}: {d.shape!r}" for i, d in spec.inputs.items()) + "}"),
        label_classes=Code("{" + ", ".join(f"{k!r}: {int(v)}" for k, v in classes.items()) + "}"),
        wrt=Code(repr(tuple(spec.wrt))),
        grad_shapes=Code("{" + ", ".join(f"{nm!r}: ({v.batched!r}, {tuple(v.shape)!r})"
                                         for nm, v in vag.grads.items()) + "}"),
        output_shape=Code(f"({out.batched!r}, {tuple(out.shape)!r})"),
        init_summary=", ".join(f"{p.name} {p.init[0]}" for p in spec.params.values()) or "none",
        init_lines=[Code(init_line(p)) for p in spec.params.values()],
        all_inputs=signature(vag),
        predict_signature=signature(pred),
        loss_signature=signature(programs["loss"]),
        pass_dict=Code("{" + ", ".join(f"{nm!r}: {nm}" for nm in spec.inputs) + "}"),
        pass_args=Code(", ".join(spec.inputs)),
        # the fields of optimizers.py.j2 (gradient and the update steps)
        step_signature=signature(vag),
        check_inputs=Code("{" + ", ".join(f"{nm!r}: {nm}" for nm in spec.inputs) + "}"),
        pass_inputs=Code(", ".join([*(f"{nm}={nm}" for nm in spec.inputs), "check=False"])),
        step_pass_inputs=Code(", ".join([*(f"{nm}={nm}" for nm in spec.inputs), "check=False"])),
        step_done=Code(""),   # the NumPy module's steps give their gradients back (_give_back_grads)
        trained=Code(repr(tuple(nm for nm in spec.wrt if nm in spec.params))),
    )
