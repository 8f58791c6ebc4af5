"""The CPU fused ops swept against their numpy references (hmexport/kernels/reference.py), directly
and as onnxruntime custom-op nodes."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_close
from hmexport.kernels import reference as ref
from hmexport.kernels.cpu import binding as cpu
from tolerances import CPU_OPS_FP32

LENGTHS = (1, 3, 7, 64, 1000, 4096)  # 3 = W - 1 for W = 4
CHANNELS = (1, 37, 512, 1031)


def _scan_inputs(rng, Bt, L, Di, N, with_D=True, with_z=True, with_bias=True, with_state=True):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return dict(
        u=f(Bt, L, Di), delta=f(Bt, L, Di), A_log=np.log(rng.uniform(0.5, 16, (Di, N))).astype(np.float32),
        B=f(Bt, L, N), C=f(Bt, L, N), D=f(Di) if with_D else None, z=f(Bt, L, Di) if with_z else None,
        delta_bias=f(Di) if with_bias else None, state=f(Bt, Di, N) if with_state else None,
    )


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("Di", CHANNELS)
def test_scan_matches_reference(L, Di):
    if L * Di > 1_100_000:
        pytest.skip("covered by the 4096 x 37 and 1000 x 1031 cases; the numpy reference is slow here")
    rng = np.random.default_rng(L * 7919 + Di)
    N = 16 if Di % 2 else 4
    inputs = _scan_inputs(rng, 2 if L < 100 else 1, L, Di, N)
    y, s = cpu.selective_scan(**inputs)
    y_ref, s_ref = ref.selective_scan(**inputs)
    assert_close(f"scan y L={L} Di={Di} N={N}", y, y_ref, CPU_OPS_FP32)
    assert_close(f"scan state L={L} Di={Di} N={N}", s, s_ref, CPU_OPS_FP32)


@pytest.mark.parametrize("flags", [(False, False, False, False), (True, False, True, False), (False, True, False, True)])
def test_scan_optional_inputs(flags):
    rng = np.random.default_rng(3)
    inputs = _scan_inputs(rng, 1, 33, 70, 16, *flags)
    for got, want, name in zip(cpu.selective_scan(**inputs), ref.selective_scan(**inputs), ("y", "state")):
        assert_close(f"scan {name} flags={flags}", got, want, CPU_OPS_FP32)


def test_scan_chunks_equal_one_run():
    rng = np.random.default_rng(5)
    inputs = _scan_inputs(rng, 1, 4096, 64, 16)
    whole_y, whole_s = cpu.selective_scan(**inputs)
    state, parts = inputs["state"], []
    for start, end in ((0, 1000), (1000, 1001), (1001, 4096)):
        chunk = {k: (v[:, start:end].copy() if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
        y, state = cpu.selective_scan(**{**chunk, "state": state})
        parts.append(y)
    assert_close("scan chunked y", np.concatenate(parts, axis=1), whole_y, CPU_OPS_FP32)
    assert_close("scan chunked state", state, whole_s, CPU_OPS_FP32)


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("Di", CHANNELS)
@pytest.mark.parametrize("W", (2, 4))
def test_conv_matches_reference(L, Di, W):
    rng = np.random.default_rng(L + Di + W)
    x = rng.standard_normal((1, L, Di)).astype(np.float32)
    w = rng.standard_normal((Di, W)).astype(np.float32)
    bias = rng.standard_normal(Di).astype(np.float32) if L % 2 else None
    state = rng.standard_normal((1, W - 1, Di)).astype(np.float32)
    for got, want, name in zip(cpu.causal_conv1d(x, w, bias, state), ref.causal_conv1d(x, w, bias, state), ("y", "state")):
        assert_close(f"conv {name} L={L} Di={Di} W={W}", got, want, CPU_OPS_FP32)


def test_conv_chunks_equal_one_run():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 300, 45)).astype(np.float32)
    w = rng.standard_normal((45, 4)).astype(np.float32)
    whole_y, whole_s = cpu.causal_conv1d(x, w)
    state, parts = np.zeros((2, 3, 45), np.float32), []
    for start, end in ((0, 1), (1, 3), (3, 200), (200, 300)):
        y, state = cpu.causal_conv1d(np.ascontiguousarray(x[:, start:end]), w, None, state)
        parts.append(y)
    assert_close("conv chunked y", np.concatenate(parts, axis=1), whole_y, CPU_OPS_FP32)
    assert_close("conv chunked state", state, whole_s, 0.0)


def _custom_node_session(op: str, inputs: list[str], attrs: dict):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from hmexport.kernels.cpu.build import build

    names = [n for n in inputs if n]
    node = helper.make_node(op, inputs, ["y", "state_out"], domain="hmexport", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "state_out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hmexport", 1)])
    from hmexport.runtime.bundle import session_options

    options = session_options(threads=2)  # the runtime's threading: items run on onnxruntime's pool
    options.register_custom_ops_library(str(build()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("L, Di", [(50, 40), (1, 1031), (300, 300)])  # several work items on onnxruntime's pool; a decode step
def test_onnxruntime_nodes_match_reference(L, Di):
    rng = np.random.default_rng(11 + L)
    inputs = _scan_inputs(rng, 1, L, Di, 8, with_z=L == 1)
    order = ["u", "delta", "A_log", "B", "C", "D", "z", "delta_bias", "state"]
    session = _custom_node_session("SelectiveScan", [k if inputs[k] is not None else "" for k in order], {"delta_softplus": 1})
    got = session.run(None, {k: v for k, v in inputs.items() if v is not None})
    for g, w, name in zip(got, ref.selective_scan(**inputs), ("y", "state")):
        assert_close(f"ort SelectiveScan {name}", g, w, CPU_OPS_FP32)

    x, weight, state = (rng.standard_normal(s).astype(np.float32) for s in ((1, L, Di), (Di, 4), (1, 3, Di)))
    conv = _custom_node_session("CausalConv1d", ["x", "weight", "", "state"], {"activation": 1})
    got = conv.run(None, {"x": x, "weight": weight, "state": state})
    for g, w, name in zip(got, ref.causal_conv1d(x, weight, None, state), ("y", "state")):
        assert_close(f"ort CausalConv1d {name}", g, w, CPU_OPS_FP32)


def test_onnxruntime_node_rejects_bad_shapes():
    session = _custom_node_session("CausalConv1d", ["x", "weight", "", "state"], {})
    x = np.zeros((1, 5, 8), np.float32)
    with pytest.raises(Exception, match="CausalConv1d: weight must be \\(Di, W\\)"):
        session.run(None, {"x": x, "weight": np.zeros((7, 4), np.float32), "state": np.zeros((1, 3, 8), np.float32)})


def test_conv_width_limit_is_an_error():
    x = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="W=33"):
        cpu.causal_conv1d(x, np.zeros((8, 33), np.float32))
