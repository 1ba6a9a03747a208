"""Adversarial checks of estimators.sampling's helper thread: the noisy inputs, counts and first-order sums are
bit-identical with or without it, whatever work the helper ran before."""
import threading

import numpy as np
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
