"""Adversarial checks of estimators.sampling's helper thread: the noisy inputs, counts and first-order sums are
bit-identical with or without it, whatever work the helper ran before."""
import signal
import threading

import numpy as np
import pytest
import torch

from estimators.sampling import _Helper, _NoiseBatches, make_generator, sample_noise


def _linear(d, k, dtype):
    w = torch.randn(d, k, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return lambda b: b.reshape(b.shape[0], -1) @ w


def _helper_left_with_two_threads(helper):
    """The helper's state after it ran torch work while the process had 2 intra-op threads (its thread-local
    setting is made on its first torch work, then kept), and the process then went to 1."""
    def two():
        torch.get_num_threads()  # the helper's thread-local setting is initialised here at the latest
        torch.set_num_threads(2)
        a = torch.ones(2, 4000, dtype=torch.float64)
        a @ torch.ones(4000, 17, dtype=torch.float64)  # a product with 2 threads
        return torch.get_num_threads()

    assert helper.submit([(two, ())])[0].result() == 2
    torch.set_num_threads(1)
    assert helper.submit([(torch.get_num_threads, ())])[0].result() == 2  # still 2 in the helper


def test_helper_runs_first_order_work_with_one_intra_op_thread():
    """The intra-op thread count is per thread (OpenMP, MKL): a helper thread that last ran torch work when the
    process had 2 threads keeps 2 after torch.set_num_threads(1). With one caller thread the helper runs the
    tallies and first-order sums: it must run them with one thread too (a matrix product split between two
    threads may round differently), so the sums equal those of overlap=False bit for bit."""
    saved = torch.get_num_threads()
    helper = _Helper.get()
    try:
        _helper_left_with_two_threads(helper)
        x = torch.rand(17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        seen = []
        with _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 45)], input_dtype=x.dtype,
                           overlap=True) as src:
            assert src.helper_sums
            for _ in src.sizes:
                src.next()
                src.after(lambda: seen.append((threading.current_thread() is helper.thread,
                                               torch.get_num_threads())))
                for task in [t for t, _ in src._pending.values()] + ([src._tail[0]] if src._tail else []):
                    task.wait()  # the time a model's forward pass gives the helper
            src.finish()
        assert (True, 1) in seen and all(threads == 1 for _, threads in seen)
        # end to end (D = 17, float64, large batches: products MKL splits between 2 threads)
        net = _linear(17, 3, torch.float64)
        for bs in (1000, 4000):
            _helper_left_with_two_threads(helper)
            runs = [sample_noise(net, x, sigma=0.5, n=8000, num_classes=3, batch_size=bs, seed=3, target=1,
                                 overlap=overlap) for overlap in (False, True)]
            assert np.array_equal(runs[0].counts, runs[1].counts) and runs[0].half_hits == runs[1].half_hits
            assert np.array_equal(runs[0].half_sums, runs[1].half_sums), bs
    finally:
        torch.set_num_threads(saved)


def test_a_model_that_reuses_its_output_tensor_gets_the_same_counts():
    """With one intra-op thread the vote tallies are queued and run later (in the helper thread, before the
    next draws, or at the end): a model returning its scores in one reused tensor (a preallocated output, a
    static graph's output buffer) must still have every batch counted on its own scores."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
        net = _linear(3 * 8 * 8, 5, torch.float32)
        out = torch.empty(0)

        def reusing(b):
            nonlocal out
            scores = net(b)
            if out.shape != scores.shape:
                out = torch.empty_like(scores)
            return out.copy_(scores)

        for target in (None, 4):
            ref = sample_noise(net, x, sigma=0.5, n=3000, num_classes=5, batch_size=100, seed=3, target=target,
                               overlap=False)
            got = sample_noise(reusing, x, sigma=0.5, n=3000, num_classes=5, batch_size=100, seed=3,
                               target=target, overlap=True)
            assert np.array_equal(got.counts, ref.counts) and got.half_hits == ref.half_hits
            if target is not None:
                assert np.array_equal(got.half_sums, ref.half_sums)
    finally:
        torch.set_num_threads(saved)


def _queued_run(body, *, hold=None):
    """A 45-sample run (batches of 10) with one intra-op thread (the helper runs the queued work); ``body(src,
    events)`` drives it. ``hold``: an Event the helper waits on from before the run (it starts nothing)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    helper = _Helper.get()
    if hold is not None:
        helper.submit([(hold.wait, (30,))])
    x = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    events = []
    try:
        with _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 45)], input_dtype=x.dtype,
                           overlap=True) as src:
            body(src, events)
    finally:
        torch.set_num_threads(saved)
        if hold is not None:
            hold.set()
        helper.submit([(lambda: None, ())])[0].result()  # everything queued before has been run or skipped
    return events


def _failing_at_last_batch(hold=None, inside=None, go=None):
    """A 45-sample stream (batches of 10, one intra-op thread) whose model fails on the last batch, after the
    work still queued was handed to the helper (the tail). ``hold``: an Event the helper waits on from before
    the run (it never starts the tail); ``inside`` / ``go``: the helper signals ``inside`` from the tail's work
    and waits for ``go``. Returns the order of events: ('tally', i) per tally run, 'exit' when the run ended."""
    events = []

    def body(src, _):
        helper = _Helper.get()
        last = len(src.sizes) - 1
        for i in range(last + 1):
            src.next()
            if i == last:
                assert src._tail is not None  # the queued work was handed over with the last batch
                if inside is not None:
                    assert inside.wait(30)  # the helper is inside the tail's work
                raise RuntimeError("model failed")

            def tally(i=i):
                if inside is not None and threading.current_thread() is helper.thread:
                    inside.set()
                    assert go.wait(30)
                events.append(("tally", i))

            src.after(tally)
            for task in [t for t, _ in src._pending.values()] if hold is None else []:
                task.wait()  # the time a model's forward pass gives the helper

    with pytest.raises(RuntimeError, match="model failed"):
        _queued_run(body, hold=hold)
    events.append("exit")
    return events


def test_a_failed_run_takes_back_its_tail_from_a_busy_helper():
    """The helper is busy, the model fails on the last batch: the tail (work on earlier batches) is taken back
    and never runs after the run ended."""
    events = _failing_at_last_batch(hold=threading.Event())
    assert events[-1] == "exit" and ("tally", 3) not in events


def test_a_failed_run_waits_for_the_tail_the_helper_is_running():
    """The helper is inside the tail's work when the model fails on the last batch: the run ends only after
    that work is done (no job of a finished run touches its counts or buffers)."""
    inside, go = threading.Event(), threading.Event()
    timer = threading.Timer(0.05, go.set)  # released while the caller is (or should be) waiting in __exit__
    timer.start()
    try:
        events = _failing_at_last_batch(inside=inside, go=go)
    finally:
        timer.cancel()
        go.set()
    assert events[-2:] == [("tally", 3), "exit"]


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_an_interrupted_wait_for_a_draw_still_waits_for_it_on_exit():
    """The caller is waiting for a draw the helper is running when an exception interrupts the wait (Ctrl-C, a
    signal-based time limit): the run must not end before that draw does (it draws from the run's generator,
    which may be the caller's own torch.Generator, reused by its next run)."""
    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    x = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    inside, go = threading.Event(), threading.Event()
    events = []
    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.main_thread().ident
    # the signal, then the draw's end, come while the caller waits for that draw (if it does)
    timers = [threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGUSR1)), threading.Timer(0.1, go.set)]
    try:
        with pytest.raises(Interrupted):
            with _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 45)], input_dtype=x.dtype,
                               overlap=True) as src:
                draw = src._draw

                def traced(i, before=()):
                    if i == 1 and threading.current_thread() is _Helper.get().thread:
                        inside.set()
                        assert go.wait(30)
                        events.append("draw 1 done")
                    return draw(i, before)

                src._draw = traced
                src.next()
                assert inside.wait(30)  # the helper is inside batch 1's draw
                for timer in timers:
                    timer.start()
                src.next()
        events.append("run ended")
    finally:
        for timer in timers:
            timer.cancel()
        go.set()
        signal.signal(signal.SIGUSR1, previous)
    assert events == ["draw 1 done", "run ended"]


def test_a_model_failing_on_the_selection_batch_waits_for_the_early_draws():
    """Batch 1 starts another segment, so the helper draws batches 1.. while the caller draws batch 0; the
    model fails on batch 0 while the helper is inside batch 1's draw: the run ends after that draw, and the
    draws not started never run."""
    x = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    inside, go = threading.Event(), threading.Event()
    events = []
    timer = threading.Timer(0.05, go.set)  # the draw ends while the caller is (or should be) waiting on exit
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            with _NoiseBatches(x, 0.5, 10, [(make_generator(5, "cpu"), 10), (make_generator(6, "cpu"), 45)],
                               input_dtype=x.dtype, overlap=True) as src:
                assert src._early and src.group > 1
                draw = src._draw

                def traced(i, before=()):
                    if threading.current_thread() is _Helper.get().thread:
                        if i == 1:
                            inside.set()
                            assert go.wait(30)
                        events.append(("drawn", i))
                    return draw(i, before)

                src._draw = traced
                src.next()
                assert inside.wait(30)  # the helper is inside batch 1's draw
                timer.start()
                raise RuntimeError("model failed")
        events.append("run ended")
    finally:
        timer.cancel()
        go.set()
    _Helper.get().submit([(lambda: None, ())])[0].result()  # everything queued before has been run or skipped
    assert events == [("drawn", 1), "run ended"]


@pytest.mark.parametrize("overlap", [False, True])
def test_scores_of_a_later_batch_with_extra_or_missing_rows_are_refused(overlap):
    """Every batch's scores must be (b, num_classes): a model padding every batch to a fixed size (a
    static-shape export) passes the first batch of 128 but would have the votes of its padding rows counted on
    the last batch of 44 (384 votes for n = 300, the extra ones all for class 0); a model dropping rows would
    have fewer votes counted."""
    def padded(b):
        m = -(-b.shape[0] // 128) * 128
        out = torch.zeros((m, 4))
        out[:, 0] = 1.0
        out[:b.shape[0]] = b[:, :4]
        return out

    def truncated(b):  # drops an incomplete sub-batch of 32
        return b[:b.shape[0] // 32 * 32, :4]

    for net, got in ((padded, 128), (truncated, 32)):
        with pytest.raises(ValueError, match=rf"scores of shape \(batch, num_classes\) = \(44, 4\), got \({got}, 4\)"):
            sample_noise(net, torch.zeros(4), sigma=1.0, n=300, num_classes=4, batch_size=128, seed=0,
                         overlap=overlap)


def test_work_taken_back_in_finish_that_fails_does_not_hang_the_exit():
    """The helper is busy, so finish() takes the tail back and runs it; a tally in it fails: the run ends with
    that error (its exit must not wait for a job it took back itself)."""
    reached = []

    def body(src, events):
        last = len(src.sizes) - 1
        for i in range(last + 1):
            src.next()

            def tally(i=i):
                if i == last - 1:  # in the tail (earlier tallies ran in the caller, before draws taken back)
                    raise ArithmeticError("tally failed")

            src.after(tally)
        assert src._tail is not None and not src._tail[0].started()
        reached.append("finish")
        src.finish()

    result = {}

    def run():
        try:
            _queued_run(body, hold=threading.Event())
        except ArithmeticError as exc:
            result["error"] = str(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and result == {"error": "tally failed"} and reached == ["finish"]


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_an_interrupted_wait_for_the_tail_still_waits_for_it_on_exit():
    """finish() waits for the tail the helper is running when an exception interrupts the wait: the run ends
    only after the tail (it adds to the run's counts)."""
    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    inside, go = threading.Event(), threading.Event()
    main = threading.main_thread().ident
    timers = [threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGUSR1)), threading.Timer(0.1, go.set)]

    def body(src, events):
        helper = _Helper.get()
        for i in range(len(src.sizes)):
            src.next()

            def tally(i=i):
                if i == 0 and threading.current_thread() is helper.thread:  # tally 0 runs only in the tail
                    inside.set()
                    assert go.wait(30)
                    events.append("tail done")

            src.after(tally)
            for task in [t for t, _ in src._pending.values()]:
                task.wait()  # the time a model's forward pass gives the helper
        assert src._tail is not None and inside.wait(30)  # the helper is inside the tail's work
        for timer in timers:
            timer.start()
        src.finish()

    previous = signal.signal(signal.SIGUSR1, handler)
    events = []
    try:
        with pytest.raises(Interrupted):
            events = _queued_run(lambda src, ev: body(src, events))
    finally:
        for timer in timers:
            timer.cancel()
        go.set()
        signal.signal(signal.SIGUSR1, previous)
    events.append("run ended")
    assert events == ["tail done", "run ended"]
