"""sample_noise(overlap=True) draws the next batch's noise in a helper thread: results must be identical."""
import numpy as np
import pytest
import torch

from estimators.sampling import sample_noise


def _net():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3 * 8 * 8, 5, generator=g)
    return lambda b: b.reshape(b.shape[0], -1) @ w


@pytest.mark.parametrize("target", [None, 2])
def test_overlap_gives_identical_results(target):
    x = torch.rand(3, 8, 8)
    runs = [sample_noise(_net(), x, sigma=0.5, n=1037, num_classes=5, batch_size=100, seed=7, target=target,
                         overlap=ov) for ov in (False, True)]
    assert np.array_equal(runs[0].counts, runs[1].counts) and runs[0].counts.sum() == 1037
    if target is not None:
        assert np.array_equal(runs[0].half_sums, runs[1].half_sums) and runs[0].half_hits == runs[1].half_hits


def test_overlap_inside_inference_mode():
    x = torch.rand(3, 8, 8)
    with torch.inference_mode():
        a = sample_noise(_net(), x, sigma=0.5, n=300, num_classes=5, batch_size=100, seed=1, overlap=True)
    b = sample_noise(_net(), x, sigma=0.5, n=300, num_classes=5, batch_size=100, seed=1, overlap=False)
    assert np.array_equal(a.counts, b.counts)


def test_overlap_propagates_model_errors_and_shuts_down():
    def broken(b):
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="boom"):
        sample_noise(broken, torch.zeros(4), sigma=1.0, n=500, num_classes=2, batch_size=100, seed=0, overlap=True)


def test_overlap_with_a_noise_source_is_identical():
    """The sound mode's lattice noise (a noise_source) is drawn ahead in the helper thread too: same counts."""
    from estimators.lattice import LatticeSource, grid_indices, lattice_noise

    x = (torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(0)) / 255.0).float()
    runs = [sample_noise(_net(), x, sigma=0.25, n=1037, num_classes=5, batch_size=100, seed=3, overlap=ov,
                         noise_source=LatticeSource(grid_indices(x), lattice_noise(0.25), torch.float32, 100))
            for ov in (False, True)]
    assert np.array_equal(runs[0].counts, runs[1].counts) and runs[0].counts.sum() == 1037


def test_a_noise_source_is_drawn_at_most_one_batch_ahead():
    """A noise source may keep only its last two batches intact (LatticeSource alternates two buffers), so the
    helper thread must never run more than one call ahead of the batch the classifier is evaluating."""
    import time

    calls = []
    seen = []

    def source(b, generator):
        calls.append(b)
        return torch.rand((b, 4), generator=generator)

    def classifier(batch):
        time.sleep(0.005)  # time for the helper to run ahead, as far as it may
        seen.append(len(calls))
        return batch[:, :2]

    sample_noise(classifier, torch.zeros(4), sigma=1.0, n=1000, num_classes=2, batch_size=100, seed=0,
                 noise_source=source, overlap=True)
    assert len(seen) == 10 and all(c <= i + 2 for i, c in enumerate(seen))  # batches 0..i+1 drawn at most


def test_smooth_noise_thread_option():
    """Smooth(noise_thread=...) only moves the noise drawing to a helper thread: identical certificates."""
    import certify

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    certs = [certify.Smooth(net, 5, 0.5, input_range=None, noise_thread=flag).certify(
        x, n_select=50, n_estimate=3000, alpha=0.01, batch_size=500, seed=4) for flag in (False, True, None)]
    assert certs[0].p_lower == certs[1].p_lower == certs[2].p_lower and certs[0].label == certs[1].label
    with pytest.raises(TypeError, match="noise_thread must be True, False or None"):
        certify.Smooth(net, 5, 0.5, noise_thread=1)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 7, 7), (5,)])
def test_same_noise_whatever_the_batch_size_and_noise_thread(shape):
    """Same seed -> the same noisy inputs and counts for batch sizes 1, 7 and 1000, with and without the helper
    thread, also when D is not a multiple of 16 (rows drawn beyond a batch are carried over to the next)."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    runs = {}
    for bs in (1, 7, 1000):
        for overlap in (False, True):
            seen = []

            def net(b, seen=seen):
                seen.append(b.clone())
                return b.reshape(b.shape[0], -1)[:, :1] * torch.arange(4.0)

            st = sample_noise(net, x, sigma=0.3, n=1037, num_classes=4, batch_size=bs, seed=3, target=1,
                              overlap=overlap)
            runs[bs, overlap] = (torch.cat(seen), st)
    ref_inputs, ref = runs[1, False]
    assert ref.counts.sum() == 1037
    for (bs, overlap), (inputs, st) in runs.items():
        assert torch.equal(inputs, ref_inputs), (bs, overlap)
        assert np.array_equal(st.counts, ref.counts) and st.half_hits == ref.half_hits
        # first-order sums: identical with / without the thread; across batch sizes up to float32 rounding
        assert np.array_equal(st.half_sums, runs[bs, False][1].half_sums)
        np.testing.assert_allclose(st.half_sums, ref.half_sums, rtol=1e-4, atol=1e-3)


def test_smooth_certificates_identical_for_batch_sizes_and_noise_thread():
    import certify

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 7 * 7, 5))
    x = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(2))
    certs = [certify.Smooth(net, 5, 0.5, input_range=None, noise_thread=flag).certify(
        x, n_select=50, n_estimate=2000, alpha=0.01, batch_size=bs, seed=4)
        for bs in (1, 7, 1000) for flag in (False, True)]
    assert len({(c.label, c.counts, c.counts_select, c.p_lower) for c in certs}) == 1


def _traced_batches(overlap, *, hold=None, release_after=None, block_draw=None, unblock=None):
    """Every batch of a 45-sample stream (batches of 10), the order the queued work ran in, and the thread
    that drew each batch. ``hold``: an Event the helper waits on from before the run (it is busy, so every draw
    handed to it is taken back until ``release_after``); ``block_draw``: a batch whose draw, in the helper,
    waits for the Event ``unblock``."""
    import threading

    from estimators.sampling import _Helper, _NoiseBatches, make_generator

    x = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    out, ran, where = [], [], {}
    helper_drew = threading.Event()  # set when the helper starts a draw
    if hold is not None:
        _Helper.get().submit([(hold.wait, ())])  # the helper is busy from before the run
    try:
        with _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 45)], input_dtype=x.dtype,
                           overlap=overlap) as src:
            draw = src._draw

            def traced(i, before=()):
                where[i] = threading.current_thread().name
                if where[i] == "certify-noise":
                    helper_drew.set()
                    if i == block_draw:
                        unblock.wait(30)
                return draw(i, before)

            src._draw = traced
            for i in range(len(src.sizes)):
                if i == block_draw:
                    assert helper_drew.wait(30)  # the helper is inside this batch's draw
                z, batch = src.next()
                out.append((z.clone(), batch.clone()))
                src.after(lambda i=i: ran.append(i))
                if i == release_after:
                    hold.set()
                    assert helper_drew.wait(30)  # the draws handed over again reach the free helper
            src.finish()
    finally:
        if hold is not None:
            hold.set()
    return out, ran, where


@pytest.mark.parametrize("release_after", [None, 1])
def test_draws_taken_back_from_a_busy_helper_give_the_same_noise(release_after):
    """When the helper has not started the draws handed to it (here: it is held busy), the caller takes them
    back, the later ones first, and draws itself; the stream, and the work queued for the helper, are unchanged.
    Released after batch 1, the helper draws the later batches again."""
    import threading

    ref, ran_ref, _ = _traced_batches(False)
    got, ran_got, where = _traced_batches(True, hold=threading.Event(), release_after=release_after)
    assert ran_ref == ran_got == list(range(5))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    main = threading.main_thread().name
    assert [where[i] for i in (0, 1)] == [main, main]  # the first batch, then taken back from the busy helper
    if release_after is None:
        assert [where[i] for i in (2, 3, 4)] == [main] * 3
    else:
        assert "certify-noise" in {where[i] for i in (2, 3, 4)}


def test_later_draws_taken_back_while_the_helper_runs_an_earlier_one():
    """The helper is inside batch 1's draw when the caller needs it: the caller takes back batches 2 and 3
    (not started), waits for batch 1, then hands them over again; same noise, same queued work."""
    import threading

    unblock = threading.Event()
    timer = threading.Timer(0.5, unblock.set)
    timer.start()
    try:
        ref, ran_ref, _ = _traced_batches(False)
        got, ran_got, where = _traced_batches(True, block_draw=1, unblock=unblock)
    finally:
        timer.cancel()
        unblock.set()
    assert ran_ref == ran_got == list(range(5))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    assert where[1] == "certify-noise"


def test_helper_thread_is_kept_between_calls_and_survives_a_failed_run():
    """One helper thread per process, reused by later calls; a run that fails mid-way leaves nothing running
    (its pending draw is taken back or waited for) and the next run gives the same counts as without overlap."""
    import threading

    from estimators.sampling import _Helper

    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = sample_noise(_net(), x, sigma=0.5, n=900, num_classes=5, batch_size=100, seed=4, overlap=False)
    sample_noise(_net(), x, sigma=0.5, n=300, num_classes=5, batch_size=100, seed=4, overlap=True)
    helper = _Helper.get()
    calls = []

    def fails_on_third_batch(b):
        calls.append(b.shape[0])
        if len(calls) == 3:
            raise RuntimeError("boom")
        return _net()(b)

    with pytest.raises(RuntimeError, match="boom"):
        sample_noise(fails_on_third_batch, x, sigma=0.5, n=900, num_classes=5, batch_size=100, seed=4, overlap=True)
    got = sample_noise(_net(), x, sigma=0.5, n=900, num_classes=5, batch_size=100, seed=4, overlap=True)
    assert np.array_equal(got.counts, ref.counts)
    assert _Helper.get() is helper and helper.thread.is_alive()
    assert sum(t.name == "certify-noise" for t in threading.enumerate()) == 1


def test_helper_thread_in_a_forked_child():
    """Threads do not survive fork: a child process starts its own helper (instead of waiting forever on the
    parent's, or on a lock the parent held at the fork) and gets the same counts."""
    import multiprocessing

    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(5))
    parent = sample_noise(_net(), x, sigma=0.5, n=700, num_classes=5, batch_size=100, seed=2, overlap=True)
    from estimators.sampling import _Helper

    ctx = multiprocessing.get_context("fork")
    with _Helper._lock:  # held by another thread of the parent at the fork: the child must not wait for it
        pool = ctx.Pool(1)
    with pool:
        child = pool.apply_async(_child_counts, (x,)).get(timeout=120)
    assert np.array_equal(child, parent.counts)


def _child_counts(x):
    from estimators.sampling import _Helper

    counts = sample_noise(_net(), x, sigma=0.5, n=700, num_classes=5, batch_size=100, seed=2, overlap=True).counts
    assert _Helper.get().thread.is_alive()
    return counts


def test_helper_errors_reach_the_caller():
    from estimators.sampling import _Helper

    def fail():
        raise KeyError("in the helper")

    with pytest.raises(KeyError, match="in the helper"):
        _Helper.get().submit([(fail, ())])[0].result()
    assert _Helper.get().submit([(lambda: 7, ())])[0].result() == 7


def _two_segment_run(overlap, *, main_waits_for_helper=False, threads=None, settle=False):
    """A 10-sample segment then a 35-sample one (certify's selection and estimation streams), batches of 10: the
    batches, and for every batch the thread that drew it and the thread that ran its queued work. With
    ``main_waits_for_helper`` the caller's draw of batch 0 waits until the helper is inside batch 1's draw; with
    ``settle`` the caller waits, after each batch, until the helper has run what it was handed (as a model's
    forward pass would give it time to)."""
    import threading

    from estimators.sampling import _NoiseBatches, make_generator

    x = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    out, ran, where = [], [], {}
    helper_drew = threading.Event()
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 10), (make_generator(6, "cpu"), 35)],
                           input_dtype=x.dtype, overlap=overlap) as src:
            draw = src._draw

            def traced(i, before=()):
                where[i] = threading.current_thread().name
                if where[i] == "certify-noise":
                    helper_drew.set()
                elif i == 0 and main_waits_for_helper:
                    assert helper_drew.wait(30)  # both threads draw at once, each from its own generator
                return draw(i, before)

            src._draw = traced
            for i in range(len(src.sizes)):
                z, batch = src.next()
                out.append((z.clone(), batch.clone()))
                src.after(lambda i=i: ran.append((i, threading.current_thread().name)))
                if settle:
                    for task in [t for t, _ in src._pending.values()] + ([src._tail[0]] if src._tail else []):
                        task.wait()
            src.finish()
    finally:
        torch.set_num_threads(saved)
    return out, ran, where


def test_helper_starts_the_next_segment_while_the_caller_draws_the_first_batch():
    """Batch 1 belongs to another segment (its own generator): the helper draws it while the caller draws batch
    0 (the caller waits inside its draw until the helper has started), and the noise is unchanged."""
    import threading

    ref, _, _ = _two_segment_run(False)
    got, _, where = _two_segment_run(True, main_waits_for_helper=True)
    assert [b[0].shape[0] for b in got] == [10, 10, 10, 10, 5]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    assert where[0] == threading.main_thread().name and where[1] == "certify-noise"


def test_a_noise_source_never_starts_early():
    """A noise source's calls share its buffers: with one, batch 1 is not handed over before batch 0 is drawn."""
    from estimators.sampling import _NoiseBatches, make_generator

    x = torch.rand(4)
    src = _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 10), (make_generator(6, "cpu"), 35)],
                        input_dtype=x.dtype, overlap=True, noise_source=lambda b, g: torch.zeros(b, 4))
    plain = _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 10), (make_generator(6, "cpu"), 35)],
                          input_dtype=x.dtype, overlap=True)
    assert not src._early and plain._early


def test_work_queued_on_the_last_batches_runs_in_the_helper_in_order():
    """With one intra-op thread the queued work (vote tallies) runs in the helper; the work still queued when the
    last batch is drawn is handed over with it (the caller only runs the last batch's), in batch order."""
    import threading

    ref, _, _ = _two_segment_run(False)
    got, ran, where = _two_segment_run(True, threads=1, settle=True)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    assert [i for i, _ in ran] == list(range(5))
    assert [name for _, name in ran] == ["certify-noise"] * 4 + [threading.main_thread().name]
    assert [where[i] for i in range(5)] == [threading.main_thread().name] + ["certify-noise"] * 4


def test_segment_state_is_dropped_after_its_last_batch():
    """Every segment's generator and carried rows are released at its last batch (a long chunked stream keeps
    O(1) segment state; D = 5 is not a multiple of 16, so rows are carried)."""
    from estimators.sampling import _NoiseBatches

    x = torch.rand(5)
    seen = []
    with _NoiseBatches(x, 0.5, 7, [(s, 20) for s in range(6)], input_dtype=x.dtype, overlap=False) as src:
        for _ in src.sizes:
            src.next()
            seen.append(len(src._state))
    assert max(seen) == 1 and seen[-1] == 0
