"""Large host outputs of the cpu kernels are advised as huge pages, and stay the same bits.

Why it matters: a fresh block above glibc's mmap threshold is faulted in 4 KiB at a
time on every call (backends/cpu/host_pages.py has the figures). These tests check
that the advice reaches the kernel (the advised range's mapping carries the ``hg``
flag in /proc/self/smaps), that it is given only where it should be, and that a
layer large enough to be advised gives SpikingJelly's spikes bit for bit and its
input gradient within the cpu backend's stated tolerance, forward and backward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import snncc
from snncc.backends.cpu import host_pages

CPU = torch.device("cpu")


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping holding ``address`` (this process's /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def _interior(t: torch.Tensor) -> int:
    """The first huge-page boundary inside ``t``'s memory."""
    return (t.data_ptr() + host_pages.HUGE_PAGE - 1) & ~(host_pages.HUGE_PAGE - 1)


def _thp_supported() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return sys.platform.startswith("linux") and path.exists()


needs_thp = pytest.mark.skipif(
    not _thp_supported(), reason="transparent huge pages are a Linux feature this system lacks"
)


@needs_thp
def test_a_large_block_is_advised_and_keeps_its_place_and_size() -> None:
    t = host_pages.empty((8, 1 << 20), torch.float32, CPU)  # 32 MiB
    assert t.shape == (8, 1 << 20) and t.dtype == torch.float32 and t.is_contiguous()
    assert t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    assert "hg" in _vm_flags(_interior(t)), "the aligned interior is not advised"
    t.fill_(3.0)  # the memory behaves as any other
    assert t.sum().item() == 3.0 * t.numel()


@needs_thp
def test_small_blocks_and_other_devices_are_left_alone() -> None:
    small = torch.empty(host_pages.MIN_BYTES // 4 - 1)
    assert not host_pages.advise_huge_pages(small)
    assert host_pages.advise_huge_pages(torch.empty(host_pages.MIN_BYTES // 4))
    meta = host_pages.empty((1 << 24,), torch.float32, torch.device("meta"))
    assert meta.device.type == "meta"
    assert not host_pages.advise_huge_pages(meta)


def test_the_advice_is_a_no_op_where_the_system_has_none(monkeypatch) -> None:
    monkeypatch.setattr(host_pages, "_MADVISE", None)
    t = host_pages.empty((4, 1 << 20), torch.float32, CPU)
    assert not host_pages.advise_huge_pages(t)
    assert t.shape == (4, 1 << 20)


@needs_thp
def test_a_layer_large_enough_to_be_advised_matches_spikingjelly(cache_dir, monkeypatch) -> None:
    """T = 16, 2^16 neurons: the output, the saved sequence and gx are 4 MiB each."""
    from spikingjelly.activation_based import functional, neuron, surrogate

    torch.manual_seed(0)
    sj = torch.nn.Sequential(
        neuron.LIFNode(tau=2.0, v_reset=0.0, surrogate_function=surrogate.ATan(), step_mode="m")
    )
    x = torch.rand(16, 64, 1024) * 2
    cm = snncc.compile(sj, x, backend="cpu", cache_dir=cache_dir)
    seen: list[int] = []
    advise = host_pages.advise_huge_pages

    def watched(t: torch.Tensor) -> bool:
        accepted = advise(t)
        if accepted:
            seen.append(_interior(t))
        return accepted

    monkeypatch.setattr(host_pages, "advise_huge_pages", watched)
    xa = x.clone().requires_grad_()
    y = cm(xa)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    assert len(seen) >= 2, "the forward's output and the backward's gx were not advised"

    xs = x.clone().requires_grad_()
    functional.reset_net(sj)
    ys = sj(xs)
    ys.backward(torch.linspace(-1, 1, ys.numel()).reshape(ys.shape))
    assert torch.equal(y, ys), "spikes differ from SpikingJelly's"
    assert y.sum() > 0, "the layer must fire for the comparison to mean something"
    scale = xs.grad.abs().max().item()
    assert (xa.grad - xs.grad).abs().max().item() <= 1e-5 * scale
