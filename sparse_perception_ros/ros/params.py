"""Declare the node's parameters from the JSON schema (with descriptors) and read them, validated.

Each parameter's default is its value in the package's ``config/perception.param.yaml`` (the one
place defaults live), so a user's params file (``--params-file``) names only what it changes; a
schema parameter that file lacks is declared typed without a default, and leaving it unset is an
error that names it. Unknown names in the params files (typos) are refused too. The values then go
through the same validation as :func:`sparse_perception_ros.params.params_from_flat`.
"""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.parameter import Parameter

from sparse_perception_ros.params import ParameterError, PerceptionParams, default_flat, params_from_flat, schema

__all__ = ["declare_and_read_params", "schema_leaves"]

_TYPES = {"string": Parameter.Type.STRING, "number": Parameter.Type.DOUBLE, "integer": Parameter.Type.INTEGER,
          "boolean": Parameter.Type.BOOL, "array": Parameter.Type.STRING_ARRAY}


def schema_leaves(node: dict | None = None, prefix: str = "") -> dict[str, dict]:
    """Dotted parameter name -> its schema entry, for every leaf of the schema."""
    node = schema() if node is None else node
    out = {}
    for key, spec in node["properties"].items():
        if spec.get("type") == "object":
            out.update(schema_leaves(spec, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = spec
    return out


def _descriptor(name: str, spec: dict) -> ParameterDescriptor:
    dynamic = isinstance(spec["type"], list)  # e.g. a number or "auto": any ROS type, the schema checks the value
    d = ParameterDescriptor(name=name, type=0 if dynamic else int(_TYPES[spec["type"]]), read_only=True,
                            dynamic_typing=dynamic)
    text = spec.get("description", "")
    if "enum" in spec:
        text += f" One of: {', '.join(map(str, spec['enum']))}."
    d.description = text
    lo, hi = spec.get("minimum"), spec.get("maximum")
    if spec["type"] == "integer" and (lo is not None or hi is not None):
        d.integer_range = [IntegerRange(from_value=int(lo if lo is not None else -(2**62)),
                                        to_value=int(hi if hi is not None else 2**62), step=0)]
    elif spec["type"] == "number" and lo is not None and hi is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_and_read_params(node) -> PerceptionParams:
    """Declare every schema parameter on ``node`` and return the validated, frozen params.

    Raises :class:`ParameterError` naming the first bad parameter.
    """
    leaves = schema_leaves()
    overrides = set(getattr(node, "_parameter_overrides", {}))
    unknown = sorted(n for n in overrides - set(leaves) if n != "use_sim_time")
    if unknown:
        raise ParameterError(unknown[0], "is not a known parameter (typo?)")
    defaults = default_flat()
    flat = {}
    for name, spec in leaves.items():
        default = defaults.get(name)
        if default is None:  # not in the package file: typed, no default
            default = _TYPES[spec["type"]]
        elif spec["type"] == "number":  # 2 in YAML is still a double parameter
            default = float(default)
        try:
            node.declare_parameter(name, default, _descriptor(name, spec))
            value = node.get_parameter(name).value
        except ParameterUninitializedException:
            raise ParameterError(name, "is required and has no default (pass it in a params file)") from None
        except ParameterException as exc:
            raise ParameterError(name, str(exc).splitlines()[0]) from None
        flat[name] = list(value) if spec["type"] == "array" else value
    return params_from_flat(flat)
