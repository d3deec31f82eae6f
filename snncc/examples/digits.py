"""A small, really trained SNN on scikit-learn's 8x8 digits: the bundled example.

Why this data set: ``sklearn.datasets.load_digits`` ships inside scikit-learn,
so training and testing need no download, and an MLP-sized SNN reaches well
over 90% test accuracy on it in seconds on a CPU. That makes it a real
end-to-end check of snncc (trained weights, real spikes, an accuracy that
would drop if a backend changed a single spike pattern), not a toy graph with
random weights.

The model is SpikingJelly multi-step: ``Linear(64, 128) -> LIF -> Linear(128,
10) -> LIF``. Inputs are pixel intensities scaled to [0, 1] and fed unchanged
at each of ``T = 8`` steps (direct coding); the prediction is the class whose
output neuron fires most often (ties go to the lower class, as ``argmax``).

``python -m snncc.examples.digits --train`` recreates both data files
(``data/digits_snn.safetensors`` and ``data/digits_test.npz``) from a fixed
seed on the CPU in a few seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: `snncc --help` should not pay for it
    import torch
    from torch import nn

#: time steps of the direct input coding
T = 8
N_IN, N_HIDDEN, N_OUT = 64, 128, 10
DATA_DIR = Path(__file__).resolve().parent / "data"
WEIGHTS_FILE = DATA_DIR / "digits_snn.safetensors"
TEST_FILE = DATA_DIR / "digits_test.npz"
#: share of the 1797 digits held out for testing (stratified, seeded)
TEST_FRACTION = 0.2
SEED = 0


def digits_snn() -> nn.Sequential:
    """The untrained model: SpikingJelly multi-step Linear-LIF-Linear-LIF, input [T, B, 64]."""
    from spikingjelly.activation_based import layer, neuron, surrogate
    from torch import nn

    def lif() -> nn.Module:
        return neuron.LIFNode(
            tau=2.0, decay_input=True, surrogate_function=surrogate.ATan(), step_mode="m"
        )

    return nn.Sequential(
        layer.Linear(N_IN, N_HIDDEN, step_mode="m"),
        lif(),
        layer.Linear(N_HIDDEN, N_OUT, step_mode="m"),
        lif(),
    )


def load_pretrained() -> nn.Sequential:
    """The trained model, in eval mode, with the packaged weights (strict key match)."""
    from safetensors.torch import load_file

    from snncc.errors import CheckpointError

    if not WEIGHTS_FILE.is_file():
        raise CheckpointError(
            f"packaged weights {WEIGHTS_FILE} are missing; recreate them with "
            "`python -m snncc.examples.digits --train`"
        )
    model = digits_snn()
    model.load_state_dict(load_file(str(WEIGHTS_FILE)), strict=True)
    return model.eval()


def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The packaged test split: images float32 [N, 64] in [0, 1], labels int64 [N]."""
    from snncc.errors import CheckpointError

    if not TEST_FILE.is_file():
        raise CheckpointError(
            f"packaged test split {TEST_FILE} is missing; recreate it with "
            "`python -m snncc.examples.digits --train`"
        )
    with np.load(TEST_FILE, allow_pickle=False) as data:
        return data["x"], data["y"]


def encode(images: np.ndarray | torch.Tensor, steps: int = T) -> torch.Tensor:
    """Direct coding: the same float32 frame at every step, [N, 64] -> [T, N, 64]."""
    import torch

    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return x.unsqueeze(0).repeat(steps, 1, 1)


def predict(spikes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class predictions from output spikes [T, N, 10]: the highest firing rate wins."""
    rate = np.asarray(spikes.detach() if hasattr(spikes, "detach") else spikes).mean(axis=0)
    return rate.argmax(axis=1)


def accuracy(spikes: torch.Tensor | np.ndarray, labels: np.ndarray) -> float:
    return float((predict(spikes) == labels).mean())


def run_eager(model: nn.Module, images: np.ndarray) -> torch.Tensor:
    """Run the SpikingJelly model itself from a fresh state; returns output spikes [T, N, 10]."""
    import torch
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    with torch.no_grad():
        out = model(encode(images))
    functional.reset_net(model)
    return out


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded, stratified train/test split of load_digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    test_idx = []
    for cls in range(N_OUT):
        idx = np.flatnonzero(y == cls)
        n_test = round(len(idx) * TEST_FRACTION)
        test_idx.extend(rng.permutation(idx)[:n_test].tolist())
    test_mask = np.zeros(len(y), dtype=bool)
    test_mask[test_idx] = True
    return x[~test_mask], y[~test_mask], x[test_mask], y[test_mask]


def train(
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 2e-3,
    out_dir: Path | str = DATA_DIR,
    verbose: bool = True,
) -> float:
    """Train with surrogate-gradient BPTT (Adam, MSE of firing rate vs one-hot), write both files.

    Deterministic for a given torch build and thread count: every random
    choice (split, init, batch order) comes from a fixed seed. Returns the
    test accuracy of the saved weights.
    """
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from spikingjelly.activation_based import functional

    start = time.perf_counter()
    torch.manual_seed(SEED)
    x_train, y_train, x_test, y_test = _split()
    model = digits_snn()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            functional.reset_net(model)
            rate = model(encode(xt[idx])).mean(0)
            loss = F.mse_loss(rate, F.one_hot(yt[idx], N_OUT).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if verbose and (epoch + 1) % 10 == 0:
            acc = accuracy(run_eager(model.eval(), x_test), y_test)
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}  test accuracy {acc:.4f}")
    model.eval()
    acc = accuracy(run_eager(model, x_test), y_test)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / WEIGHTS_FILE.name))
    np.savez(out / TEST_FILE.name, x=x_test, y=y_test)
    if verbose:
        print(
            f"test accuracy {acc:.4f} on {len(y_test)} digits; wrote {out / WEIGHTS_FILE.name} "
            f"and {out / TEST_FILE.name} in {time.perf_counter() - start:.1f} s"
        )
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m snncc.examples.digits",
        description="Train the bundled digits SNN, or report the packaged model's test accuracy.",
    )
    parser.add_argument("--train", action="store_true", help="retrain and rewrite the data files")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    if args.train:
        train(epochs=args.epochs)
        return 0
    x, y = test_split()
    print(f"packaged model: test accuracy {accuracy(run_eager(load_pretrained(), x), y):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
