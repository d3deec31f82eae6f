"""The jax multi-device checks, run in a fresh process with 8 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax starts, and the
test process's jax is already running): each schedule of snncc.distributed.jax_parallel
against the one-device jax program, forward bit for bit and gradients of a loss. Prints
one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import distributed_worker as W  # noqa: E402

import snncc  # noqa: E402
from snncc.distributed import jax_parallel as JP  # noqa: E402


def loss(y):
    return jnp.mean(jnp.mean(y, 0) ** 2) + 0.1 * jnp.mean(y)


def main() -> None:
    cache = sys.argv[1]
    out = {"devices": len(jax.devices())}
    cases = [
        ("data_parallel", {"devices": 4}),
        ("neuron_split", {"devices": 2}),
        ("temporal", {"devices": 2, "micro_batches": 2}),
        ("pipeline", {"devices": 2, "chunks": 2}),
    ]
    net, x = W.build("mlp")
    cm = snncc.compile(net, x, backend="jax", cache_dir=cache)
    xj = jnp.asarray(x.numpy())
    params = cm.program.params
    y1 = np.asarray(cm.program.jax_fn(params, xj))
    g1 = jax.jit(jax.grad(lambda p: loss(cm.program.jax_fn(p, xj))))(params)
    for schedule, opts in cases:
        f = getattr(JP, schedule)(cm, **opts)
        y = np.asarray(f(params, xj))
        grad = jax.grad(lambda p, f=f: loss(f(p, xj)))
        # the pipeline runs a program per device, driven from Python: not one jit
        g = (grad if schedule == "pipeline" else jax.jit(grad))(params)
        rel = max(
            float(jnp.max(jnp.abs(g[k] - g1[k])) / max(float(jnp.max(jnp.abs(g1[k]))), 1e-30))
            for k in g1
        )
        out[f"mlp/{schedule}"] = {
            "mismatch": int((y != y1).sum()),
            "spikes": int(y1.sum()),
            "grad_rel": rel,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
