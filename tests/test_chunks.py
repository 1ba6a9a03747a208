"""Sample chunks: every noise stream is cut into chunks of SAMPLE_CHUNK samples with their own seeds, so the
chunks of one certificate can be sampled separately (by different Ray workers) and give exactly certify's result.
"""
import numpy as np
import pytest
import torch

from certify import cli
from certify.runs import certify_dataset
from certify.smoothing import SAMPLE_CHUNK, Smooth
from estimators.sampling import chunk_segments, derive_seeds, sample_noise, sample_streams


def _net(d=12, k=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, k))


def test_chunk_segments_known_values():
    assert chunk_segments(7, 500, None) == [(7, 500)]
    assert chunk_segments(7, 25, 10) == [(7, 10), (derive_seeds(7, 1)[0], 10), (derive_seeds(7, 2)[1], 5)]
    # chunk k's seed does not depend on where the stream starts or how many chunks are drawn
    assert chunk_segments(7, 15, 10, first_chunk=1) == chunk_segments(7, 25, 10)[1:]
    with pytest.raises(ValueError, match="first_chunk needs a chunk_size"):
        chunk_segments(7, 10, None, first_chunk=1)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_segments(7, 10, 0)


@pytest.mark.parametrize("bs", [1, 7, 64, 1000])
def test_chunked_stream_equals_its_chunks_drawn_separately(bs):
    net = _net()
    x = torch.rand(12, generator=torch.Generator().manual_seed(1))
    kw = dict(sigma=0.7, num_classes=4, batch_size=bs)
    whole = sample_noise(net, x, n=250, seed=3, chunk_size=100, **kw)
    parts = [sample_noise(net, x, n=m, seed=3, chunk_size=100, first_chunk=k, **kw)
             for k, m in enumerate((100, 100, 50))]
    assert whole.counts.tolist() == np.sum([p.counts for p in parts], axis=0).tolist()


class _Recorder:
    """A classifier that records its noisy inputs (and votes for class 0)."""

    def __init__(self):
        self.rows = []

    def __call__(self, batch):
        self.rows.append(batch.clone())
        return torch.zeros(batch.shape[0], 3)


@pytest.mark.parametrize("bs", [16, 100, 128])
def test_chunked_noise_is_the_concatenation_of_the_chunks(bs):
    x = torch.zeros(5)
    whole, alone = _Recorder(), _Recorder()
    sample_noise(whole, x, sigma=1.0, n=250, num_classes=3, batch_size=bs, seed=4, chunk_size=100)
    for k, m in enumerate((100, 100, 50)):
        sample_noise(alone, x, sigma=1.0, n=m, num_classes=3, batch_size=bs, seed=4, chunk_size=100, first_chunk=k)
    a, b = torch.cat(whole.rows), torch.cat(alone.rows)
    assert a.shape == (250, 5) and torch.equal(a, b)
    # chunk 0 is the start of the unchunked stream; chunk 1 has its own seed (not the continuation)
    plain = _Recorder()
    sample_noise(plain, x, sigma=1.0, n=250, num_classes=3, batch_size=bs, seed=4)
    p = torch.cat(plain.rows)
    assert torch.equal(p[:100], a[:100]) and not torch.equal(p[100:200], a[100:200])
    single = _Recorder()
    sample_noise(single, x, sigma=1.0, n=100, num_classes=3, batch_size=bs, seed=derive_seeds(4, 1)[0])
    assert torch.equal(torch.cat(single.rows), a[100:200])


def test_sample_streams_equal_separate_calls():
    net = _net()
    x = torch.rand(12, generator=torch.Generator().manual_seed(2))
    kw = dict(sigma=0.5, num_classes=4, batch_size=33)
    a, b, c = sample_streams(net, x, streams=[(40, 1), (250, 2), (120, 2, 1)], chunk_size=100, **kw)
    assert a.counts.tolist() == sample_noise(net, x, n=40, seed=1, chunk_size=100, **kw).counts.tolist()
    assert b.counts.tolist() == sample_noise(net, x, n=250, seed=2, chunk_size=100, **kw).counts.tolist()
    assert c.counts.tolist() == sample_noise(net, x, n=120, seed=2, chunk_size=100, first_chunk=1,
                                             **kw).counts.tolist()
    for bad in ([], [(10,)], "ab", [(10, 1, 0, 0)]):
        with pytest.raises(TypeError, match="streams"):
            sample_streams(net, x, streams=bad, **kw)
    with pytest.raises(ValueError, match="chunk_size needs a seed"):
        sample_noise(net, x, n=10, generator=torch.Generator(), chunk_size=5, **kw)


@pytest.mark.parametrize("n_estimate", [SAMPLE_CHUNK - 1, 2 * SAMPLE_CHUNK + 123])
def test_certificate_from_chunk_counts_equals_certify(n_estimate):
    smooth = Smooth(_net(), 4, 0.5, input_range=None)
    x = torch.rand(12, generator=torch.Generator().manual_seed(3))
    kw = dict(n_select=50, n_estimate=n_estimate, seed=9)
    cert = smooth.certify(x, batch_size=700, alpha=0.001, **kw)
    parts = [smooth.sample_chunk(x, chunk=k, batch_size=256, **kw) for k in range(Smooth.n_chunks(n_estimate))]
    assert [p["counts_select"] is None for p in parts] == [False] + [True] * (len(parts) - 1)
    counts = np.sum([p["counts"] for p in parts], axis=0)
    other = smooth.certificate_from_counts(x, counts_select=parts[0]["counts_select"], counts=counts,
                                           batch_size=700, time_s=1.5, alpha=0.001, **kw)
    assert other.time_s == 1.5
    a, b = cert.to_dict(), other.to_dict()
    a.pop("time_s"), b.pop("time_s")
    assert a == b and not cert.abstained


def test_chunk_api_bad_input():
    smooth = Smooth(_net(), 4, 0.5, input_range=None)
    x = torch.zeros(12)
    kw = dict(n_select=10, n_estimate=2 * SAMPLE_CHUNK, alpha=0.01, seed=0)
    with pytest.raises(ValueError, match=r"chunk must be in \[0, 2\)"):
        smooth.sample_chunk(x, chunk=2, n_select=10, n_estimate=2 * SAMPLE_CHUNK)
    with pytest.raises(ValueError, match="chunk must be an integer >= 0"):
        smooth.sample_chunk(x, chunk=-1, n_select=10, n_estimate=2 * SAMPLE_CHUNK)
    with pytest.raises(ValueError, match="counts must be 4 non-negative counts summing to 20000"):
        smooth.certificate_from_counts(x, counts_select=[10, 0, 0, 0], counts=[1, 2, 3, 4], **kw)
    with pytest.raises(ValueError, match="counts_select must be 4 non-negative counts summing to 10"):
        smooth.certificate_from_counts(x, counts_select=[1, 0, 0], counts=[SAMPLE_CHUNK * 2, 0, 0, 0], **kw)


def test_sample_chunks_needs_workers_and_zeroth_order_fixed_n():
    from certify.data import load_dataset

    data = load_dataset("digits")
    smooth = Smooth(torch.nn.Linear(64, 10), 10, 0.25)
    kw = dict(n_select=10, n_estimate=100, alpha=0.01, max_examples=1, verbose=False, render=False)
    with pytest.raises(ValueError, match="sample_chunks: only used with workers"):
        certify_dataset(smooth, data, sample_chunks=True, **kw)
    with pytest.raises(TypeError, match="sample_chunks must be a bool"):
        certify_dataset(smooth, data, sample_chunks=1, **kw)


@pytest.mark.parametrize("extra, message", [
    (["--sample-chunks"], "--sample-chunks: only with --workers N"),
    (["--sample-chunks", "--workers", "2", "--first-order"], "--sample-chunks: only for zeroth-order fixed-n "
                                                               "certificates, not with --first-order"),
    (["--sample-chunks", "--workers", "2", "--sequential"], "not with --sequential"),
])
def test_cli_bad_sample_chunks(tmp_path, capsys, extra, message):
    argv = ["-q", "smooth", "--pretrained", "digits_mlp", "--data", "digits", "--n-estimate", "100", "--max", "1",
            "--out", str(tmp_path / "x"), *extra]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_linear_oracle_certificates_rebuilt_from_chunks(monkeypatch):
    """On the half-space oracle (whose chunked certificates are checked for soundness in test_smoothing.py), a
    certificate from many chunks equals the one rebuilt from its chunks' counts."""
    from test_smoothing import _linear_cases  # the closed-form half-space oracle

    import certify.smoothing

    monkeypatch.setattr(certify.smoothing, "SAMPLE_CHUNK", 500)
    for i, (model, x, _) in enumerate(_linear_cases((2, 1, 3), 5, np.random.default_rng(5))):
        smooth = Smooth(model, num_classes=2, sigma=0.5, input_range=None)
        kw = dict(n_select=30, n_estimate=3000, seed=i)
        cert = smooth.certify(x, alpha=0.05, batch_size=400, **kw)
        parts = [smooth.sample_chunk(x, chunk=k, batch_size=128, **kw) for k in range(smooth.n_chunks(3000))]
        rebuilt = smooth.certificate_from_counts(x, counts_select=parts[0]["counts_select"], alpha=0.05,
                                                 counts=np.sum([p["counts"] for p in parts], axis=0), **kw)
        assert len(parts) == 6
        assert (rebuilt.label, rebuilt.p_lower, rebuilt.radius, rebuilt.counts) == (
            cert.label, cert.p_lower, cert.radius, cert.counts)


def test_sound_lattice_certificate_from_chunks_equals_certify(monkeypatch):
    import certify.smoothing

    monkeypatch.setattr(certify.smoothing, "SAMPLE_CHUNK", 300)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.randint(0, 256, (1, 4, 4)).float() / 255  # on the 1/255 grid
    smooth = Smooth(net, 3, 0.25, sound=True)
    kw = dict(n_select=40, n_estimate=1000, seed=3)
    cert = smooth.certify(x, alpha=0.01, batch_size=128, **kw)
    parts = [smooth.sample_chunk(x, chunk=k, batch_size=64, **kw) for k in range(smooth.n_chunks(1000))]
    rebuilt = smooth.certificate_from_counts(x, counts_select=parts[0]["counts_select"], alpha=0.01,
                                             counts=np.sum([p["counts"] for p in parts], axis=0), **kw)
    a, b = cert.to_dict(), rebuilt.to_dict()
    a.pop("time_s"), b.pop("time_s")
    assert len(parts) == 4 and a == b and a["sound"]
