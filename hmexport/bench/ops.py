"""Per-op benchmark of the selective scan and the causal conv on the CPU, on one layer's shapes:
hmexport's fused C op (as an onnxruntime node), the standard-ONNX form the default bundles use
(an ONNX Scan), and transformers' PyTorch reference (its time loop).

    python -m hmexport.bench.ops [--L 256] [--Di 1024] [--N 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _session(model):
    import onnxruntime as ort

    from ..kernels.cpu.build import build
    from ..runtime.bundle import session_options

    options = session_options()  # the runtime's threading
    options.register_custom_ops_library(str(build()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _standard_scan_model(Di: int, N: int):
    """The standard decoder's chunk path: discretize, then an ONNX Scan with a 3-op body."""
    from onnx import TensorProto, helper

    from ..export.graph import OPSET, Graph
    from ..export.layers import _selective_scan

    g = Graph("scan")
    F = TensorProto.FLOAT
    state = g.input("state", F, [1, Di, N])
    dA, dBu = g.input("dA", F, [1, "L", Di, N]), g.input("dBu", F, [1, "L", Di, N])
    C = g.input("C", F, [1, "L", N, 1])
    one_step = g.op("Equal", [g.op("Gather", [g.op("Shape", [dA]), g.const(1)], axis=0), g.const(1)])
    y, s = _selective_scan(g, state, dA, dBu, C, one_step, (Di, N))
    g.output(y, "y", F, [1, "L", Di])
    g.output(s, "state_out", F, [1, Di, N])
    return helper.make_model(g.to_graph_proto(), opset_imports=[helper.make_opsetid("", OPSET)])


def _fused_model(op: str, inputs: list[str]):
    from onnx import TensorProto, helper

    node = helper.make_node(op, inputs, ["y", "state_out"], domain="hmexport")
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs if n],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "state_out")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hmexport", 1)])


def run(L: int = 256, Di: int = 1024, N: int = 16, W: int = 4, repeats: int = 5) -> dict:
    import torch
    from transformers.models.jamba import modeling_jamba

    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    u, delta, z = f(1, L, Di), f(1, L, Di), f(1, L, Di)
    A_log = np.log(np.tile(np.arange(1, N + 1, dtype=np.float32), (Di, 1)))
    B, C, D, bias, state = f(1, L, N), f(1, L, N), f(Di), f(Di), np.zeros((1, Di, N), np.float32)
    results: dict = {"shape": {"L": L, "Di": Di, "N": N, "W": W}, "scan": {}, "conv": {}}

    fused = _session(_fused_model("SelectiveScan", ["u", "delta", "A_log", "B", "C", "D", "z", "delta_bias", "state"]))
    feeds = dict(u=u, delta=delta, A_log=A_log, B=B, C=C, D=D, z=z, delta_bias=bias, state=state)
    results["scan"]["hmexport fused (C)"] = _median_time(lambda: fused.run(None, feeds), repeats)

    dt = np.log1p(np.exp(delta + bias))
    dA = np.exp(dt[..., None] * -np.exp(A_log))
    dBu = dt[..., None] * B[:, :, None, :] * u[..., None]
    standard = _session(_standard_scan_model(Di, N))
    sfeeds = {"state": state, "dA": dA, "dBu": dBu, "C": C[..., None]}
    results["scan"]["standard ONNX Scan"] = _median_time(lambda: standard.run(None, sfeeds), repeats)

    tu, tdelta, tz = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1))) for a in (u, delta, z))
    tB, tC = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1))) for a in (B, C))
    tA = -torch.exp(torch.from_numpy(A_log))
    scan_ref = modeling_jamba.mamba_selective_scan  # transformers' CPU path: a Python loop over time

    def reference():
        with torch.no_grad():
            scan_ref(tu, tdelta, tA, tB, tC, D=torch.from_numpy(D), z=tz, delta_bias=torch.from_numpy(bias), delta_softplus=True,
                     return_last_state=True, use_associative_scan=False)

    results["scan"]["transformers loop"] = _median_time(reference, max(1, repeats // 2))

    conv = _session(_fused_model("CausalConv1d", ["x", "weight", "bias", "state"]))
    cfeeds = {"x": u, "weight": f(Di, W), "bias": bias, "state": np.zeros((1, W - 1, Di), np.float32)}
    results["conv"]["hmexport fused (C)"] = _median_time(lambda: conv.run(None, cfeeds), repeats)
    xw = torch.from_numpy(np.ascontiguousarray(u.transpose(0, 2, 1)))
    wt = torch.from_numpy(cfeeds["weight"])

    def conv_reference():
        with torch.no_grad():
            modeling_jamba.causal_conv1d_fn(xw, wt, torch.from_numpy(bias), activation="silu")

    results["conv"]["transformers conv1d"] = _median_time(conv_reference, repeats)
    # Bytes a scan must move at least: read u, delta, z (3 x L x Di) and B, C (2 x L x N), write y
    # (L x Di), read and write the state (2 x Di x N), all float32.
    scan_bytes = 4 * (4 * L * Di + 2 * L * N + 2 * Di * N)
    results["scan_bytes"] = scan_bytes
    from .memory import measure_bandwidth

    bw = measure_bandwidth(threads=2)["gb_s"]
    results["bandwidth_GBps"] = bw
    results["scan_bound_s"] = scan_bytes / (bw * 1e9)
    return results


def format_table(r: dict) -> str:
    L = r["shape"]["L"]
    lines = [f"one layer, L={L}, Di={r['shape']['Di']}, N={r['shape']['N']}, W={r['shape']['W']} (median)", "",
             "| op | implementation | total ms | us per step | vs transformers |", "|---|---|---:|---:|---:|"]
    for op, ref_key in (("scan", "transformers loop"), ("conv", "transformers conv1d")):
        ref_t = r[op][ref_key]
        for impl, t in r[op].items():
            lines.append(f"| {op} | {impl} | {t * 1e3:.2f} | {t / L * 1e6:.2f} | {ref_t / t:.1f}x |")
    fused = r["scan"]["hmexport fused (C)"]
    lines += ["", f"- scan bytes {r['scan_bytes'] / 1e6:.1f} MB at {r['bandwidth_GBps']:.1f} GB/s: bound {r['scan_bound_s'] * 1e3:.2f} ms; "
              f"fused scan at {fused / r['scan_bound_s']:.1f}x the bound"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", type=int, default=256)
    parser.add_argument("--Di", type=int, default=1024)
    parser.add_argument("--N", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.L, args.Di, args.N, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
