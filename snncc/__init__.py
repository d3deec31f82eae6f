"""snncc: a compiler for spiking neural networks.

``cm = snncc.compile(model, example_input, backend="jax")`` traces ``model`` with a
time-major ``example_input`` [T, B, ...]; ``cm(x)`` runs the compiled program.
"""

from snncc.errors import (
    BackendError,
    CheckpointError,
    IRError,
    ShapeError,
    SnnccError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CheckpointError",
    "IRError",
    "ShapeError",
    "SnnccError",
    "UnsupportedError",
    "compile",
    "compile_graph",
    "deploy",
    "load",
    "load_ir",
    "register_torch_ops",
    "trace",
]


def __getattr__(name: str):
    # Lazy: `import snncc` stays cheap (no torch/jax import) for the CLI's --help.
    if name in (
        "compile",
        "compile_graph",
        "load",
        "load_ir",
        "register_torch_ops",
        "CompiledModel",
    ):
        from snncc import api

        return getattr(api, name)
    if name == "deploy":
        # the subpackage snncc.deploy is itself callable: snncc.deploy(model, "out/", ...)
        import snncc.deploy

        return snncc.deploy
    if name == "trace":
        from snncc.frontend import trace

        return trace
    raise AttributeError(f"module 'snncc' has no attribute {name!r}")
