"""Batched Gaussian sampling of a classifier: class counts and first-order sums in ONE pass.

For an input x (any shape S, one example), a noise level sigma and a callable ``classifier`` mapping a batch
(B, *S) to scores (B, num_classes), :func:`sample_noise` draws n i.i.d. z ~ N(0, I) and returns

* ``counts[c]`` = #{i : argmax classifier(x + sigma z_i) = c};
* when ``target`` is given, for the two halves h = 0, 1 (sample i belongs to half i mod 2, so
  n_0 = ceil(n/2), n_1 = floor(n/2)): ``half_sums[h] = sum_{i in half h} z_i (1{pred_i = target} - 1/2)``
  (flattened to D = prod(S) entries, float64) and ``half_hits[h]`` = #{i in half h : pred_i = target}.
  The half means m_h = half_sums[h] / n_h are independent unbiased estimates of sigma * grad pA(x)
  (see :mod:`estimators.gradient`).

Memory is O(batch_size * D) regardless of n: a few noise buffers (one, or with the helper thread up to ``GROUP``
+ 1 for small batches, within ``GROUP_BYTES``, and 2 for large ones; as many input buffers for first-order sums,
otherwise x + sigma z overwrites the noise) are reused. The first-order sums cost one (2, B) @ (B, D) matrix
product per batch. No per-sample Python work; counts stay on the device and are read back once.

Precision: noise is drawn and added in float32 or float64, never in a half dtype: for a float16/bfloat16 x the
sum x + sigma z is formed in float32 and rounded once to ``input_dtype`` (default x's dtype) for the
classifier, so the certified base classifier is y -> classifier(round(y)) with Gaussian y in float32.

Noise source hook: ``noise_source(b, generator)`` replaces x + sigma z by any batch of classifier inputs
(e.g. the lattice noise of :mod:`estimators.lattice`); first-order sums need the Gaussian z and are then
unavailable. The batch it returns must stay intact while the next call runs (the helper thread draws at most
one batch ahead with a noise source; :class:`estimators.lattice.LatticeSource` alternates two buffers).

Determinism: all noise comes from one ``torch.Generator`` on x's device, seeded with ``seed`` (or supplied by
the caller) and consumed in order, every ``normal_`` call covering a whole number of 16-value chunks (rows drawn
beyond a batch are carried over to the next). torch's CPU ``normal_`` transforms its uniforms 16 at a time, so
on CPU the stream does not depend on how it is cut into batches: the noisy inputs and ``counts`` are identical
for every ``batch_size`` (Gaussian noise; a ``noise_source`` defines its own stream). The first-order sums are
accumulated batch by batch in the noise dtype, so across batch sizes they agree to float rounding only.
Chunks (``chunk_size``, :func:`chunk_segments`): a seeded stream may be cut into chunks of ``chunk_size``
samples, chunk k drawn from its own generator (chunk 0 from the seed itself); a batch never spans two chunks, so
the samples of a chunk are the same whether it is drawn alone (``first_chunk``, e.g. by another process) or as
part of the whole stream. :func:`sample_streams` runs several independent streams through one pipeline. On CPU
the next batches' noise is drawn by one helper thread while the classifier evaluates the current batch
(``overlap``; the buffer slots rotate); with one intra-op thread the helper also forms x + sigma z, counts the
votes and accumulates the first-order sums, so the caller's thread only runs the classifier. The helper consumes
the generator in the same order and runs the same operations, so every result is identical either way. Results are
identical for the same (seed, n, input, device type, torch version). Scores are computed under
``torch.inference_mode``. The classifier's train/eval mode is NOT changed here (``certify.smoothing.Smooth``
handles that).
"""
from __future__ import annotations

import functools
import logging
import math
import numbers
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from estimators._checks import check_int

__all__ = ["SampleStats", "sample_noise", "sample_streams", "chunk_segments", "make_generator", "derive_seeds"]

logger = logging.getLogger(__name__)


#: at most GROUP draws are handed to the noise helper thread at once (each needs one more buffer slot), and only
#: as many as keep the group + 1 slots within GROUP_BYTES (large batches: one at a time)
GROUP = 6
GROUP_BYTES = 24 * 2 ** 20


class _Task:
    """One job for the helper thread: a result to wait for, or a job to take back before the helper starts it."""

    __slots__ = ("fn", "args", "claim", "done", "value", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn, self.args = fn, args
        self.claim = threading.Lock()  # held by whoever runs the job (the helper) or takes it back (the caller)
        self.done = threading.Lock()  # released when the helper has run the job
        self.done.acquire()
        self.value: Any = None
        self.error: Optional[BaseException] = None

    def started(self) -> bool:
        """Whether the helper has started the job (a peek: False may be out of date by the time it returns)."""
        return self.claim.locked()

    def cancel(self) -> bool:
        """Take the job back; True when the helper had not started it (it never will)."""
        return self.claim.acquire(blocking=False)

    def wait(self) -> None:
        """Wait until the helper has run the job (returns at once when it has)."""
        self.done.acquire()
        self.done.release()

    def result(self) -> Any:
        """Wait for the helper to finish the job; its value, or its exception raised here."""
        self.wait()
        if self.error is not None:
            raise self.error
        return self.value


class _Helper:
    """The process's noise helper thread: one daemon thread, started on first use and kept for later calls, so
    that a certificate does not pay for starting and joining a thread. Jobs run in submission order. A forked
    child process gets its own thread on first use (threads do not survive ``fork``)."""

    _lock = threading.Lock()
    _lock_pid = os.getpid()
    _instance: Optional["_Helper"] = None

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: "queue.SimpleQueue[list[_Task]]" = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="certify-noise", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> "_Helper":
        helper = cls._instance
        if helper is None or helper.pid != os.getpid():
            if cls._lock_pid != os.getpid():  # a forked child: the parent's lock may have been held at the fork
                cls._lock, cls._lock_pid = threading.Lock(), os.getpid()
            with cls._lock:
                helper = cls._instance
                if helper is None or helper.pid != os.getpid():
                    helper = cls._instance = cls()
        return helper

    def submit(self, jobs: Sequence[tuple[Callable[..., Any], tuple]]) -> list[_Task]:
        """Queue the jobs (fn, args), to run in this order; one queue item for all of them (waking an idle
        thread is paid once)."""
        tasks = [_Task(fn, args) for fn, args in jobs]
        self.jobs.put(tasks)
        return tasks

    def _serve(self) -> None:
        while True:
            for task in self.jobs.get():
                if not task.claim.acquire(blocking=False):  # taken back by the caller
                    continue
                try:
                    task.value = task.fn(*task.args)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised by result()
                    task.error = exc
                finally:
                    task.done.release()


class _NoiseBatches:
    """Consecutive (z, x + sigma z) batches of sizes ``sizes`` (``_ramped_batches`` of the segments), each segment
    drawn from its own generator in order; the sum is formed in x's dtype and rounded once to ``input_dtype``.

    Batch-size independent stream: every ``normal_`` call covers a whole number of 16-value chunks (``block``
    samples of D values each, block = 16 / gcd(D, 16)), so the generator's output is cut the same way whatever
    the batch size (torch's CPU ``normal_`` transforms its uniforms 16 at a time); rows drawn beyond a batch are
    carried over to the segment's next batch.

    ``group`` + 1 buffer slots rotate (a noise and an input buffer each; without ``keep_noise`` the sum
    overwrites the noise: one buffer per slot). With ``overlap`` the process's helper thread (:class:`_Helper`)
    draws the noise of batches i + 1 .. i + group into the other slots while the caller uses batch i; with one
    intra-op thread it also forms x + sigma z and runs the work queued with :meth:`after` (the vote tally and
    first-order sums), so the caller's thread only runs the model. A draw the helper has not started when it is
    needed (no free core) is taken back and done by the caller. When batch 1 starts another segment (certify's
    estimation stream after its selection batch), the helper starts on batches 1 .. group while the caller draws
    batch 0; with the last batch the helper is handed the work still queued on earlier batches. The caller must be
    done with a batch when it asks for the next one. Each segment's generator is used by one thread at a time, in
    batch order, and every operation is the same in either thread, so the results are the same with or without the
    helper. Use as a context manager (on exit a draw or work still pending is taken back or waited for).
    """

    def __init__(self, x: torch.Tensor, sigma: float, bs: int, segments: list[tuple[Any, int]], *,
                 input_dtype: torch.dtype, overlap: Optional[bool],
                 noise_source: Optional[Callable[[int, torch.Generator], torch.Tensor]] = None,
                 keep_noise: bool = True):
        # segments: (torch.Generator or int seed, n); a batch never spans two segments
        self.batches = _ramped_batches([m for _, m in segments], bs)
        self.sizes = [b for _, b in self.batches]
        n = sum(self.sizes)
        if overlap is None:  # worth a thread switch per batch: CPU, several batches, >= 2**16 values per batch
            overlap = x.device.type == "cpu" and n > bs and bs * x.numel() >= 2 ** 16
        self.x, self.sigma, self.input_dtype = x, sigma, input_dtype
        self.segments = segments
        self.noise_source = noise_source
        self.block = 16 // math.gcd(int(x.numel()), 16)
        rows = bs + self.block - 1  # carried rows (< block) + the whole blocks drawn for one batch
        # draws handed to the helper at once: waking an idle helper thread costs tens of microseconds on some
        # machines, so small batches are handed over up to GROUP at a time (one more buffer slot each: a noise
        # buffer, and an input buffer for first-order sums)
        slot_bytes = (rows + (bs if keep_noise else 0)) * x.numel() * x.element_size()
        # a noise_source owns its output buffers and may keep only the last two intact (LatticeSource): its draws
        # go to the helper one at a time
        group = max(1, min(GROUP, GROUP_BYTES // max(slot_bytes, 1) - 1)) if noise_source is None else 1
        self.group = group if overlap else 0
        slots = self.group + 1
        self.noise = [torch.empty((rows, *x.shape), device=x.device, dtype=x.dtype) for _ in range(slots)]
        # without first-order sums z is not needed after x + sigma z: the sum overwrites it (half the memory
        # traffic; the same operation, so the same values)
        self.keep_noise = keep_noise
        self.inputs = [torch.empty((bs, *x.shape), device=x.device, dtype=x.dtype) for _ in range(slots)] \
            if keep_noise else []
        self.pool = _Helper.get() if overlap else None
        # the helper's extra work uses serial kernels only with one intra-op thread (no second thread team)
        self.helper_sums = self.pool is not None and torch.get_num_threads() == 1
        # per segment: [its generator, the rows drawn beyond its last batch]; a segment's batches are drawn in
        # order (by one thread at a time), different segments' draws touch different entries
        self._state: dict[int, list[Any]] = {}
        self._last = {k: i for i, (k, _) in enumerate(self.batches)}  # the last batch of every segment
        self._next = 0
        # batch index -> (its draw handed to the helper, the queued work that draw runs first)
        self._pending: dict[int, tuple[_Task, tuple[Callable[[], None], ...]]] = {}
        # the first draws may start with batch 0's when they belong to another segment (their own generator); not
        # with a noise_source (its calls share its buffers)
        self._early = (self.pool is not None and noise_source is None and len(self.batches) > 1
                       and self.batches[1][0] != self.batches[0][0])
        self._queued: list[Callable[[], None]] = []  # work on earlier batches, run before the next draw
        self._tail: Optional[tuple[_Task, tuple[Callable[[], None], ...]]] = None  # queued work handed over last

    def _segment_state(self, i: int) -> list[Any]:
        """[generator, carried rows] of batch i's segment; a seed becomes a fresh generator at the segment's first
        batch. A segment starts with no carried rows (rows drawn beyond the previous segment belong to no sample);
        its state is dropped at its last batch (nothing of it is drawn again)."""
        k = self.batches[i][0]
        state = self._state.pop(k, None) if self._last[k] == i else self._state.get(k)
        if state is None:
            source = self.segments[k][0]
            gen = source if isinstance(source, torch.Generator) else make_generator(source, self.x.device)
            state = [gen, None]
            if self._last[k] != i:
                self._state[k] = state
        return state

    def _noise(self, i: int, state: list[Any]) -> torch.Tensor:
        """z of batch i: the rows carried from batch i - 1 of its segment, then whole blocks of fresh draws."""
        b = self.sizes[i]
        slot = self.noise[i % len(self.noise)]
        carry = state[1]
        c = 0 if carry is None else int(carry.shape[0])
        if carry is not None:
            slot[:c].copy_(carry)
        need = b - c
        m = -(-need // self.block) * self.block if need > 0 else 0
        if m:
            slot[c:c + m].normal_(generator=state[0])
        state[1] = slot[b:c + m].clone() if c + m > b else None  # dropped with the state after the last batch
        return slot[:b]

    def _sum(self, i: int, z: torch.Tensor) -> torch.Tensor:
        out = self.inputs[i % len(self.inputs)][:z.shape[0]] if self.keep_noise else z
        batch = torch.add(self.x, z, alpha=self.sigma, out=out)
        if self.input_dtype != self.x.dtype:  # round the float32 sum once to the classifier's dtype
            batch = batch.to(self.input_dtype)
        return batch

    def _draw(self, i: int, before: tuple[Callable[[], None], ...] = ()) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(z, x + sigma z or None) of batch i, after running ``before`` (``normal_`` is a serial kernel)."""
        with torch.inference_mode():  # thread-local: the helper thread needs it too (buffers may be inference tensors)
            if self.helper_sums:  # the helper may run the queued work: one thread, as the caller (a no-op there)
                _one_thread()
            for fn in before:
                fn()
            state = self._segment_state(i)
            if self.noise_source is not None:  # the classifier inputs themselves (a fresh tensor per batch)
                return self.noise[0][:self.sizes[i]], self.noise_source(self.sizes[i], state[0])
            z = self._noise(i, state)
            return z, (self._sum(i, z) if self.helper_sums else None)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (z, x + sigma z); with overlap, when the helper has no draw left in hand, also hands it the
        draws of the next ``group`` batches. A draw the helper has not started when it is needed is taken back
        (with every later one) and done in the caller's thread."""
        i = self._next
        self._next += 1
        if i == 0 and self._early:  # batch 1 starts another segment: the helper draws it while this thread draws 0
            self._hand_over(0)
        # a draw stays pending while it is waited for: a wait interrupted by an exception is waited for on exit
        entry = self._pending.get(i)
        if entry is None:
            z, batch = self._draw(i)
        elif entry[0].started():
            z, batch = entry[0].result()
        else:  # not started (e.g. no free core): take it back, the later draws first (the helper must not run
            # them before draw i), and draw here, in the same order
            taken = self._take_back(after=i)
            if entry[0].cancel():
                del self._pending[i]
                z, batch = self._draw(i, entry[1] + taken)
            else:  # the helper started draw i meanwhile; the later draws taken back are handed over again below
                self._queued[:0] = taken
                z, batch = entry[0].result()
        self._pending.pop(i, None)
        if self.pool is not None and i + 1 < len(self.sizes) and not self._pending:
            self._hand_over(i)
        elif self.pool is not None and i + 1 == len(self.sizes) and self._queued and not self._pending:
            # the last batch: the helper runs the work still queued on earlier batches while the classifier
            # evaluates this one (no draw reuses their buffers any more)
            work, self._queued = tuple(self._queued), []
            self._tail = (self.pool.submit([(_run_all, (work, True))])[0], work)
        if batch is None:
            with torch.inference_mode():
                batch = self._sum(i, z)
        return z, batch

    def _hand_over(self, i: int) -> None:
        """Hand the helper the draws of batches i + 1 .. i + group (one queue item). Slots: the caller holds batch
        i's, these draws fill the others; the queued work (on earlier batches, whose buffers these draws reuse)
        runs first."""
        assert self.pool is not None
        before, self._queued = tuple(self._queued), []
        todo = range(i + 1, min(i + 1 + self.group, len(self.sizes)))
        befores = [before] + [()] * (len(todo) - 1)
        tasks = self.pool.submit([(self._draw, (j, b)) for j, b in zip(todo, befores)])
        for j, b, task in zip(todo, befores, tasks):
            self._pending[j] = (task, b)

    def _take_back(self, *, after: int) -> tuple[Callable[[], None], ...]:
        """Cancel the pending draws of batches > ``after``, last first, up to the first one the helper has
        started (it then holds the earlier ones too); the queued work of those taken back is returned, in order
        (it must still run before their draws, which are handed over again later)."""
        taken: list[tuple[Callable[[], None], ...]] = []
        for j in sorted((j for j in self._pending if j > after), reverse=True):
            task, before = self._pending[j]
            if not task.cancel():
                break
            del self._pending[j]
            taken.append(before)
        return tuple(fn for before in reversed(taken) for fn in before)

    def after(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (work on the current batch's noise) now, or queue it for the helper thread, which runs it
        just before the next draw it is given (so before any draw reuses this batch's buffers)."""
        if self.helper_sums:
            self._queued.append(fn)
        else:
            fn()

    def finish(self) -> None:
        """Wait for the work handed to the helper with the last batch (or take it back and run it here, when the
        helper has not started it), then run the work still queued (the last batch's) in the caller's thread."""
        if self._tail is not None:
            task, work = self._tail
            if task.cancel():  # taken back: the helper never runs it (nothing left to wait for on exit)
                self._tail = None
                _run_all(work)
            else:  # stays in _tail while waited for: a wait interrupted by an exception is waited for on exit
                task.result()
                self._tail = None
        _run_all(tuple(self._queued))
        self._queued.clear()

    def __enter__(self) -> "_NoiseBatches":
        return self

    def __exit__(self, *exc) -> None:
        # draws still pending (the caller stopped early, e.g. on an error) are taken back, or waited for: no job
        # of this run may touch its buffers or generator after it ends
        tasks = [self._pending[j][0] for j in sorted(self._pending, reverse=True)]
        if self._tail is not None:
            tasks.insert(0, self._tail[0])
        for task in tasks:
            if not task.cancel():
                task.wait()
        self._pending.clear()
        self._tail = None


def _run_all(work: Sequence[Callable[[], None]], helper: bool = False) -> None:
    """Run the queued work in order (under ``torch.inference_mode``: thread-local, the helper needs it too);
    ``helper``: in the helper thread (with one intra-op thread, as the caller's)."""
    if helper:
        _one_thread()
    with torch.inference_mode():
        for fn in work:
            fn()


def _one_thread() -> None:
    """One intra-op thread for this thread's torch work. The setting is per thread (OpenMP, MKL) and made on a
    thread's first torch work: the helper thread may keep the process's earlier count after
    ``torch.set_num_threads(1)``, and a matrix product split between threads may round differently, so the
    helper sets it before the work it runs for a caller with one thread (the process's count is 1 already)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


#: the first batch of a run has at most max(batch_size / RAMP, RAMP_START) samples, and each next batch at most
#: RAMP_GROWTH times the batch before it
RAMP = 8
RAMP_START = 128
RAMP_GROWTH = 4


def _ramped_batches(lengths: list[int], bs: int) -> list[tuple[int, int]]:
    """(segment, size) of every batch: segments of ``lengths`` cut into batches of at most ``bs`` that never span
    two segments; when the run has more than ``bs`` samples the batch size ramps up from
    max(bs / RAMP, RAMP_START), each batch at most RAMP_GROWTH times the largest before it, so that the helper
    thread's draw of the next batch (which it makes while the classifier evaluates this one: noise costs far less
    per sample than a forward pass) is ready in time, instead of a whole batch being drawn while the classifier
    waits; a short first segment (Cohen's 100 selection samples) stays one batch. The cut changes nothing but
    speed: the noise stream does not depend on it (counts identical; first-order sums equal to float rounding)
    and it does not depend on ``overlap``.

    >>> _ramped_batches([100, 9_900], 500)[:4]
    [(0, 100), (1, 400), (1, 500), (1, 500)]
    >>> _ramped_batches([8_193, 8_193], 4_096)[:6]
    [(0, 512), (0, 2048), (0, 4096), (0, 1537), (1, 4096), (1, 4096)]
    """
    cap = min(bs, max(bs // RAMP, RAMP_START)) if sum(lengths) > bs else bs
    out = []
    for k, m in enumerate(lengths):
        s = 0
        while s < m:
            b = min(cap, m - s)
            out.append((k, b))
            s += b
            cap = min(bs, max(cap, RAMP_GROWTH * b))  # never shrinks: a segment's short last batch restarts nothing
    return out


def _tally(counts: torch.Tensor, nonfinite: torch.Tensor, scores: torch.Tensor, num_classes: int,
           first: Optional[tuple]) -> None:
    """Add one batch's votes to ``counts`` (in place), flag non-finite scores and, when ``first`` = (sums, hits,
    z, mask, target) is given, add its first-order half sums."""
    nonfinite.logical_or_(~torch.isfinite(scores).all())
    pred = scores.argmax(dim=1)
    counts += torch.bincount(pred, minlength=num_classes)
    if first is not None:
        sums, hits, z, mask, target = first
        _accumulate(sums, hits, z, pred, mask, target)


def _accumulate(sums: torch.Tensor, hits: torch.Tensor, z: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                target: int) -> None:
    """Add one batch's first-order half sums of z (1{pred = target} - 1/2) and half hit counts."""
    b = z.shape[0]
    hit = (pred == target).to(z.dtype)
    weights = mask * (hit - 0.5)  # (2, b)
    sums += (weights @ z.reshape(b, -1)).to(torch.float64)
    hits += (mask * hit).sum(dim=1).to(torch.int64)


@dataclass(frozen=True)
class SampleStats:
    """Result of :func:`sample_noise`. Arrays are numpy; ``half_sums`` is None unless a target was given."""

    counts: np.ndarray
    n: int
    sigma: float
    target: Optional[int]
    half_sums: Optional[np.ndarray]
    half_n: tuple[int, int]
    half_hits: tuple[int, int]
    input_shape: tuple[int, ...]
    batch_size: int
    time_s: float

    @property
    def half_means(self) -> tuple[np.ndarray, np.ndarray]:
        """(m1, m2): the two independent half-sample means of z (1{pred = target} - 1/2)."""
        if self.half_sums is None:
            raise ValueError("no first-order sums were collected (call sample_noise with target=...)")
        return self.half_sums[0] / self.half_n[0], self.half_sums[1] / self.half_n[1]


def derive_seeds(seed: int, k: int) -> list[int]:
    """k independent 63-bit seeds derived from ``seed`` with numpy's SeedSequence (stable across versions)."""
    states = np.random.SeedSequence(int(seed)).spawn(k)
    return [int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for s in states]


def make_generator(seed: int, device) -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def _check_hooks(x: torch.Tensor, target, input_dtype, noise_source) -> torch.dtype:
    """Validate ``noise_source`` / ``input_dtype`` of :func:`sample_noise`; returns the classifier input dtype."""
    if noise_source is not None:
        if not callable(noise_source):
            raise TypeError(f"noise_source must be callable, got {type(noise_source).__name__}")
        if target is not None:
            raise ValueError("first-order sums (target) need Gaussian noise, not a noise_source")
    if input_dtype is None:
        return x.dtype
    if not (isinstance(input_dtype, torch.dtype) and input_dtype.is_floating_point):
        raise TypeError(f"input_dtype must be a floating torch.dtype, got {input_dtype!r}")
    return input_dtype


def _check_sample_args(classifier, x, sigma, n, num_classes, batch_size, seed, generator, target):
    """Validated (n, num_classes, batch_size, generator, target) of :func:`sample_noise`."""
    if not callable(classifier):
        raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not (
            math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    n = check_int("n", n)
    num_classes = check_int("num_classes", num_classes, 2)
    batch_size = check_int("batch_size", batch_size)
    if (seed is None) == (generator is None):
        raise ValueError("give exactly one of seed or generator")
    if generator is None:
        generator = check_int("seed", seed, 0)  # the generator is made from the seed when the stream starts
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if target is not None:
        target = check_int("target", target, 0)
        if target >= num_classes:
            raise ValueError(f"target must be in [0, {num_classes}), got {target}")
        if n < 2:
            raise ValueError("first-order sums need n >= 2 (two halves)")
    return n, num_classes, batch_size, generator, target


def _first_scores(classifier, batch: torch.Tensor, b: int, shape: tuple, num_classes: int) -> torch.Tensor:
    """The classifier's scores on the first batch, with the mistakes a new user makes explained."""
    try:
        scores = classifier(batch)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(
            f"the model failed on a batch of shape {(b, *shape)} built from x of shape {shape}: {exc}; "
            "does x have the shape the model expects (one example, no batch axis)?") from exc
    return _check_scores(scores, b, shape, num_classes)


def _check_scores(scores: Any, b: int, shape: tuple, num_classes: int) -> torch.Tensor:
    """``scores`` when it is a (b, num_classes) tensor (checked on every batch: the votes of extra rows, e.g. a
    batch padded to a fixed size, would be counted as samples)."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or tuple(scores.shape) != (b, num_classes):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"the model must map a batch of shape {(b, *shape)} to scores of shape (batch, num_classes)"
            f" = {(b, num_classes)}, got {got}; check num_classes and the input shape")
    return scores


def chunk_segments(seed: int, n: int, chunk_size: Optional[int], first_chunk: int = 0) -> list[tuple[int, int]]:
    """The (seed, n) segments of the n samples starting at chunk ``first_chunk`` of the chunked stream ``seed``.

    A chunked stream cuts its samples into chunks of ``chunk_size``; chunk 0 is drawn from ``seed`` itself and
    chunk k >= 1 from ``derive_seeds(seed, k)[k - 1]`` (SeedSequence children do not depend on how many are
    spawned), so any chunk can be drawn on its own - by another process - and the samples of chunks
    a..b are the same whether drawn together or one by one. ``chunk_size=None``: one unchunked stream.

    >>> chunk_segments(7, 25_000, 10_000)[0]
    (7, 10000)
    """
    if chunk_size is None:
        if first_chunk:
            raise ValueError("first_chunk needs a chunk_size")
        return [(seed, n)]
    chunk_size = check_int("chunk_size", chunk_size, 1)
    first_chunk = check_int("first_chunk", first_chunk, 0)
    count = -(-n // chunk_size)
    children = derive_seeds(seed, first_chunk + count - 1) if first_chunk + count > 1 else []
    out = []
    for j in range(count):
        k = first_chunk + j
        out.append((seed if k == 0 else children[k - 1], min(chunk_size, n - j * chunk_size)))
    return out


def _stream_segments(generator: Any, n: int, chunk_size: Optional[int], first_chunk: int) -> list[tuple[Any, int]]:
    """(generator or seed, n) segments of one stream: a given generator is one segment, a seed may be chunked."""
    if isinstance(generator, torch.Generator):
        if chunk_size is not None:
            raise ValueError("chunk_size needs a seed (each chunk is seeded from it), not a generator")
        return [(generator, n)]
    return chunk_segments(int(generator), n, chunk_size, first_chunk)


def sample_noise(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    sigma: float,
    n: int,
    num_classes: int,
    batch_size: int,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    target: Optional[int] = None,
    progress: bool = False,
    input_dtype: Optional[torch.dtype] = None,
    noise_source: Optional[Callable[[int, torch.Generator], torch.Tensor]] = None,
    overlap: Optional[bool] = None,
    chunk_size: Optional[int] = None,
    first_chunk: int = 0,
) -> SampleStats:
    """Evaluate ``classifier`` on n noisy copies x + sigma z and return counts (and first-order sums).

    ``x`` is ONE example (a tensor of any shape, already on the classifier's device and dtype). Exactly one of
    ``seed`` / ``generator`` must be given. ``classifier(batch)`` must return a (B, num_classes) tensor of
    finite scores; anything else raises ValueError. ``input_dtype``: the dtype the classifier receives (default
    x's dtype); noise is drawn in float32 when x or input_dtype is a half dtype, else in x's dtype.
    ``noise_source(b, generator)``: returns the (b, *S) classifier inputs instead of x + sigma z (no ``target``).
    ``overlap`` (default: on for CPU tensors with at least 2 batches of >= 2**16 values; with a ``noise_source``
    too, which is then called at most one batch ahead) draws the next batches' noise in a helper thread; it never
    changes the results.
    ``chunk_size`` (with ``seed``): the stream is chunked (:func:`chunk_segments`; a batch never spans two
    chunks) and starts at chunk ``first_chunk``, so the counts of n samples are the sum of the counts of their
    chunks drawn separately. See the module docstring for the outputs and what is deterministic.
    """
    n, num_classes, batch_size, generator, target = _check_sample_args(
        classifier, x, sigma, n, num_classes, batch_size, seed, generator, target)
    input_dtype = _check_hooks(x, target, input_dtype, noise_source)
    segments = _stream_segments(generator, n, chunk_size, first_chunk)
    return _run(classifier, x, sigma=float(sigma), streams=[segments], num_classes=num_classes,
                batch_size=batch_size, target=target, progress=progress, input_dtype=input_dtype,
                noise_source=noise_source, overlap=overlap)[0]


def sample_streams(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    sigma: float,
    streams: Sequence[tuple[int, ...]],
    num_classes: int,
    batch_size: int,
    chunk_size: Optional[int] = None,
    input_dtype: Optional[torch.dtype] = None,
    noise_source: Optional[Callable[[int, torch.Generator], torch.Tensor]] = None,
    overlap: Optional[bool] = None,
) -> list[SampleStats]:
    """Class counts of several independent noise streams of ONE example, in one pass.

    ``streams``: ``(n, seed)`` or ``(n, seed, first_chunk)`` each; the result for stream i is exactly
    ``sample_noise(classifier, x, n=n, seed=seed, chunk_size=chunk_size, first_chunk=first_chunk, ...)``'s
    counts, but the helper thread (``overlap``) draws the noise of stream i + 1 while the classifier evaluates
    the end of stream i, and the buffers are allocated once. Zeroth order only (no first-order sums);
    ``time_s`` of every result is the time of the whole call.
    """
    if isinstance(streams, (str, bytes)) or not isinstance(streams, Sequence) or not streams:
        raise TypeError(f"streams must be a non-empty sequence of (n, seed[, first_chunk]), got {streams!r}")
    parsed = []
    for k, item in enumerate(streams):
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise TypeError(f"streams[{k}] must be (n, seed) or (n, seed, first_chunk), got {item!r}")
        n_k, num_classes, batch_size, seed_k, _ = _check_sample_args(
            classifier, x, sigma, item[0], num_classes, batch_size, item[1], None, None)
        parsed.append(_stream_segments(seed_k, n_k, chunk_size, item[2] if len(item) == 3 else 0))
    input_dtype = _check_hooks(x, None, input_dtype, noise_source)
    return _run(classifier, x, sigma=float(sigma), streams=parsed, num_classes=num_classes, batch_size=batch_size,
                target=None, progress=False, input_dtype=input_dtype, noise_source=noise_source, overlap=overlap)


def _run(classifier, x: torch.Tensor, *, sigma: float, streams: list[list[tuple[Any, int]]], num_classes: int,
         batch_size: int, target: Optional[int], progress: bool, input_dtype: torch.dtype,
         noise_source, overlap: Optional[bool]) -> list[SampleStats]:
    """The sampling loop of :func:`sample_noise` / :func:`sample_streams` (arguments already checked)."""
    shape = tuple(x.shape)
    dim = int(x.numel())
    device = x.device
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # the noise dtype
    x = x.to(dtype)
    totals = [sum(m for _, m in segs) for segs in streams]
    bs = min(batch_size, max(totals))
    start = time.perf_counter()

    segments = [seg for segs in streams for seg in segs]
    owner = [k for k, segs in enumerate(streams) for _ in segs]  # the stream of each segment
    source = _NoiseBatches(x, sigma, bs, segments, input_dtype=input_dtype, overlap=overlap,
                           noise_source=noise_source, keep_noise=target is not None)
    counts = torch.zeros((len(streams), num_classes), dtype=torch.int64, device=device)
    stream_counts = [counts[k] for k in range(len(streams))]  # views, made once
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    if target is not None:
        sums = torch.zeros((2, dim), dtype=torch.float64, device=device)
        hits = torch.zeros(2, dtype=torch.int64, device=device)
        parity = torch.arange(bs, device=device) % 2
        half_mask = torch.stack([parity == 0, parity == 1]).to(dtype)  # (2, bs) for an even start index

    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=sum(totals), desc="sampling", unit="sample", leave=False)
    done = 0
    checked = False
    with torch.inference_mode(), source:
        for segment, b in source.batches:
            z, batch = source.next()
            scores = _check_scores(classifier(batch), b, shape, num_classes) if checked else \
                _first_scores(classifier, batch, b, shape, num_classes)
            checked = True
            if source.helper_sums:  # tallied later, in the helper: the model may write its next scores in place
                scores = scores.clone()
            first = None
            if target is not None:
                mask = half_mask[:, :b] if done % 2 == 0 else half_mask.flip(0)[:, :b]
                first = (sums, hits, z, mask, target)
            # the tally (and the first-order sums) run in the helper thread when it has one intra-op thread
            source.after(functools.partial(_tally, stream_counts[owner[segment]], nonfinite, scores, num_classes,
                                           first))
            done += b
            if bar is not None:
                bar.update(b)
        source.finish()
    if bar is not None:
        bar.close()
    if bool(nonfinite):
        raise ValueError("the model returned non-finite scores (NaN or inf) on noisy inputs")
    counts_np = counts.cpu().numpy().astype(np.int64)
    half_sums = None
    half_hits = (0, 0)
    if target is not None:
        half_sums = sums.cpu().numpy()
        h = hits.cpu().numpy()
        half_hits = (int(h[0]), int(h[1]))
    elapsed = time.perf_counter() - start
    logger.debug("sampled n=%d batch_size=%d in %.3fs (%.0f samples/s)", sum(totals), bs, elapsed,
                 sum(totals) / max(elapsed, 1e-12))
    return [SampleStats(counts=counts_np[k], n=n, sigma=sigma, target=target, half_sums=half_sums,
                        half_n=((n + 1) // 2, n // 2), half_hits=half_hits, input_shape=shape, batch_size=bs,
                        time_s=elapsed) for k, n in enumerate(totals)]
