"""The bundled digits SNN: really trained, and compiled it keeps its accuracy.

Reference backend: the very same spikes as SpikingJelly, so the same accuracy
exactly. jax: spikes within the project's tolerance, accuracy within one test
sample.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import snncc
from snncc.cli import main
from snncc.examples import digits

JAX_SPIKE_TOL = 1e-4


@pytest.fixture(scope="module")
def data():
    images, labels = digits.test_split()
    return images, labels


@pytest.fixture(scope="module")
def eager_spikes(data):
    return digits.run_eager(digits.load_pretrained(), data[0]).numpy()


def test_packaged_files_are_small_and_sane(data):
    assert digits.WEIGHTS_FILE.stat().st_size < 300_000
    images, labels = data
    assert images.dtype == np.float32 and images.shape[1] == 64
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert len(images) == len(labels) > 300


def test_eager_model_is_really_trained(data, eager_spikes):
    assert digits.accuracy(eager_spikes, data[1]) >= 0.9


def test_reference_backend_keeps_every_spike(data, eager_spikes):
    model = digits.load_pretrained()
    x = digits.encode(data[0])
    cm = snncc.compile(model, x[:, :2], backend="reference")
    spikes = cm(x).detach().numpy()
    assert int((spikes != eager_spikes).sum()) == 0
    assert digits.accuracy(spikes, data[1]) == digits.accuracy(eager_spikes, data[1])


def test_jax_backend_accuracy_within_one_sample(data, eager_spikes):
    pytest.importorskip("jax")
    model = digits.load_pretrained()
    x = digits.encode(data[0]).numpy()
    cm = snncc.compile(model, x[:, :2], backend="jax")
    spikes = np.asarray(cm(x))
    assert np.mean(spikes != eager_spikes) <= JAX_SPIKE_TOL
    n = len(data[1])
    n_eager = round(digits.accuracy(eager_spikes, data[1]) * n)
    n_jax = round(digits.accuracy(spikes, data[1]) * n)
    assert abs(n_jax - n_eager) <= 1


def _accuracies(text: str) -> dict[str, float]:
    found = re.findall(
        r"^\s+(eager|compiled) \(([a-z ]+|SpikingJelly)\)\s+accuracy ([0-9.]+)", text, re.M
    )
    return {kind: float(acc) for kind, _, acc in found}


@pytest.mark.parametrize("backend", ["reference", "jax"])
def test_cli_example(capsys, backend, data, eager_spikes):
    if backend == "jax":
        pytest.importorskip("jax")
    assert main(["example", "--backend", backend]) == 0
    out = capsys.readouterr().out
    acc = _accuracies(out)
    assert set(acc) == {"eager", "compiled"}, out
    assert acc["eager"] == pytest.approx(digits.accuracy(eager_spikes, data[1]), abs=5e-5)
    if backend == "reference":
        assert acc["compiled"] == acc["eager"]
        assert "output spikes that differ: 0 of" in out
    else:
        assert abs(acc["compiled"] - acc["eager"]) * len(data[1]) <= 1.0 + 1e-6


def test_cli_example_with_backend_options(capsys):
    assert main(["example", "--backend", "cpu", "-O", "recompute=true"]) == 0
    assert "output spikes that differ: 0 of" in capsys.readouterr().out
    assert main(["example", "--backend", "cpu", "-O", "precision=tf32"]) == 2
    assert "unknown cpu backend option(s) ['precision']" in capsys.readouterr().err


def test_training_is_seeded_and_writes_loadable_files(tmp_path):
    """One short epoch twice: identical bytes, and files the loaders accept."""
    first, second = tmp_path / "a", tmp_path / "b"
    digits.train(epochs=1, out_dir=first, verbose=False)
    digits.train(epochs=1, out_dir=second, verbose=False)
    for name in (digits.WEIGHTS_FILE.name, digits.TEST_FILE.name):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    with np.load(first / digits.TEST_FILE.name, allow_pickle=False) as split:
        np.testing.assert_array_equal(split["y"], digits.test_split()[1])
