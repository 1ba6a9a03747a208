"""RadiusReport: certified-accuracy math on hand-made rows, file formats, published logs, plots."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from certify.reports import RadiusReport, format_tsv_row, parse_time, row_from_certificate

# copies of published per-example logs (sources named in tests/data/published-logs/README.md)
LOGS = Path(__file__).resolve().parent / "data" / "published-logs"


def _row(idx, label, predict, abstained, p_lower, radius, time=1.0, **extra):
    return dict(idx=idx, label=label, predict=predict, abstained=abstained, p_lower=p_lower, radius=radius,
                correct=(not abstained) and predict == label, time=time, **extra)


@pytest.fixture
def hand_rows():
    # 6 rows: 3 correct (radii 0.1, 0.5, 0.9), 1 wrong with a radius, 1 abstained, 1 correct with radius 0.
    return [
        _row(0, 1, 1, False, 0.66, 0.1),
        _row(1, 2, 2, False, 0.98, 0.5),
        _row(2, 3, 3, False, 0.9999, 0.9),
        _row(3, 4, 5, False, 0.95, 0.7),   # certified but wrong: never counts
        _row(4, 5, 5, True, 0.45, 0.0),    # abstained (its selected class happens to be the label)
        _row(5, 6, 6, False, 0.5, 0.0),
    ]


def test_known_values(hand_rows):
    rep = RadiusReport(hand_rows, sigma=0.25)
    assert len(rep) == 6
    np.testing.assert_allclose(rep.certified_accuracy([0.0, 0.1, 0.10001, 0.5, 0.9, 0.95]),
                               [4 / 6, 3 / 6, 2 / 6, 2 / 6, 1 / 6, 0.0])
    assert rep.certified_accuracy(0.5) == pytest.approx(2 / 6)
    assert isinstance(rep.certified_accuracy(0.5), float)
    assert rep.acr == pytest.approx((0.1 + 0.5 + 0.9 + 0.0) / 6)
    assert rep.clean_accuracy == pytest.approx(4 / 6)
    assert rep.abstain_rate == pytest.approx(1 / 6)
    assert not rep.first_order and rep.norms == []
    d = rep.to_dict()
    json.dumps(d)
    assert d["sigma"] == 0.25 and len(d["rows"]) == 6 and d["rows"][4]["abstained"] is True
    assert "n=6" in repr(rep) and "n=0" in repr(RadiusReport([]))
    frame = rep.to_frame()
    frame.loc[0, "radius"] = 99.0  # a copy: the report is unchanged
    assert rep.rows.loc[0, "radius"] == 0.1


def test_zeroth_order_norm_implications(hand_rows):
    rep = RadiusReport(hand_rows, input_shape=(1, 4, 4))
    r = rep.radii_for("l2")
    np.testing.assert_allclose(rep.radii_for("l1"), r)           # ||d||_2 <= ||d||_1
    np.testing.assert_allclose(rep.radii_for("channel_0"), r)    # a channel subspace ball is inside the l2 ball
    np.testing.assert_allclose(rep.radii_for("linf"), r / 4.0)   # ||d||_2 <= sqrt(16) ||d||_inf
    assert rep.certified_accuracy(0.5 / 4, norm="linf") == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="input_shape"):
        RadiusReport(hand_rows).radii_for("linf")
    with pytest.raises(ValueError, match="first-order"):
        rep.certified_accuracy(0.1, order="first")
    with pytest.raises(ValueError, match="norm"):
        rep.certified_accuracy(0.1, norm="l3")
    with pytest.raises(ValueError, match="order"):
        rep.certified_accuracy(0.1, order="second")
    with pytest.raises(ValueError, match="radii"):
        rep.certified_accuracy([-0.1])
    with pytest.raises(ValueError, match="radii"):
        rep.certified_accuracy(float("nan"))


def test_first_order_columns_and_orders(hand_rows):
    rows = []
    for r in hand_rows:
        f = 0.0 if r["abstained"] else 1.0
        rows.append(dict(r, radius_l2=r["radius"] * 1.1 * f + 0.0, radius_l1=r["radius"] * 2.0,
                         radius_linf=r["radius"] / 3.0, radius_channel_0=r["radius"] * 1.1 * f))
    rep = RadiusReport(rows, input_shape=(1, 3, 3), sigma=0.5)
    assert rep.first_order and rep.norms == ["l2", "l1", "linf", "channel_0"]
    assert rep.shown_norms() == ["l2", "l1", "linf"]
    # default order "best" uses the first-order column; "zeroth" the Cohen column
    assert rep.certified_accuracy(0.95) == pytest.approx(1 / 6)        # 0.9 * 1.1 = 0.99
    assert rep.certified_accuracy(0.95, order="zeroth") == 0.0
    assert rep.certified_accuracy(1.5, norm="l1") == pytest.approx(1 / 6)   # 1.8
    assert rep.certified_accuracy(1.5, norm="l1", order="zeroth") == 0.0
    assert rep.acr == pytest.approx(1.1 * 1.5 / 6)
    assert rep.average_certified_radius("l2", "zeroth") == pytest.approx(1.5 / 6)
    s = rep.summary()
    json.dumps(s)  # JSON-ready
    assert set(s["norms"]) == {"l2", "l1", "linf"}
    assert s["norms"]["l2"]["first"]["acr"] == pytest.approx(rep.acr)
    assert s["norms"]["l2"]["zeroth"]["certified_accuracy"][0] == pytest.approx(4 / 6)
    md = rep.to_markdown()
    assert "## l1" in md and "| first |" in md and "| zeroth |" in md
    with pytest.raises(ValueError, match="first-order norms"):
        rep.certified_accuracy(0.1, norm="channel_2")


@pytest.mark.parametrize("bad, match", [
    (dict(radius=0.3, abstained=True, correct=False), "abstained rows"),
    (dict(radius=-0.1), "radii >= 0"),
    (dict(radius=float("inf")), "finite"),
    (dict(correct=True, abstained=True, radius=0.0), "correct and abstained"),
    (dict(correct=False), "disagrees"),
    (dict(idx=1.5), "idx"),
])
def test_bad_rows_raise(bad, match):
    rows = [_row(0, 1, 1, False, 0.9, 0.3), _row(1, 1, 1, False, 0.9, 0.3)]
    rows[0].update(bad)
    with pytest.raises(ValueError, match=match):
        RadiusReport(rows)


def test_bad_construction():
    with pytest.raises(ValueError, match="missing columns"):
        RadiusReport([{"idx": 0, "label": 1}])
    with pytest.raises(TypeError, match="rows"):
        RadiusReport("rows.tsv")
    with pytest.raises(ValueError, match="duplicate idx"):
        RadiusReport([_row(0, 1, 1, False, 0.9, 0.3), _row(0, 1, 1, False, 0.9, 0.3)])
    with pytest.raises(ValueError, match="sigma"):
        RadiusReport([_row(0, 1, 1, False, 0.9, 0.3)], sigma=-1.0)
    with pytest.raises(ValueError, match="first_order"):
        RadiusReport([_row(0, 1, 1, False, 0.9, 0.3)], first_order=True)
    with pytest.raises(ValueError, match="empty"):
        RadiusReport([]).certified_accuracy(0.0)


def test_tsv_round_trip_exact(tmp_path, hand_rows):
    rows = [dict(r, radius_l2=r["radius"] * 1.0000001, radius_l1=r["radius"] + 1 / 3 * (not r["abstained"]),
                 radius_linf=r["radius"] / 7, radius_channel_0=r["radius"] * 1.0000001) for r in hand_rows]
    rep = RadiusReport(rows, sigma=0.25, n_select=100, n_estimate=1000, alpha=0.001, seed=3, model="m",
                       dataset="digits:test", input_shape=(1, 8, 8), extra={"batch_size": 500})
    path = rep.to_tsv(tmp_path / "r.tsv")
    back = RadiusReport.from_tsv(path)
    pd.testing.assert_frame_equal(rep.rows, back.rows)   # floats written with repr: exact
    assert back.metadata() == rep.metadata()
    assert RadiusReport.from_tsv(path, sigma=0.5).sigma == 0.5   # keyword overrides the file
    # Cohen's format: abstained -> -1, reads back as abstained with unknown prediction
    cpath = rep.to_tsv(tmp_path / "c.tsv", format="cohen")
    lines = cpath.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert lines[5].split("\t")[2] == "-1"
    cback = RadiusReport.from_tsv(cpath)
    assert cback.source == "cohen" and cback.rows["abstained"].tolist() == rep.rows["abstained"].tolist()
    assert cback.rows["predict"].isna().tolist() == rep.rows["abstained"].tolist()
    np.testing.assert_array_equal(cback.certified_accuracy([0, 0.2, 0.6], order="zeroth"),
                                  rep.certified_accuracy([0, 0.2, 0.6], order="zeroth"))
    with pytest.raises(ValueError, match="format"):
        rep.to_tsv(tmp_path / "x.tsv", format="csv")


def test_truncated_last_line_is_ignored(tmp_path, hand_rows, caplog):
    path = RadiusReport(hand_rows).to_tsv(tmp_path / "r.tsv")
    text = path.read_text()
    path.write_text(text + "6\t7\t7\t0\t0.9")   # a row cut off mid-write
    back = RadiusReport.from_tsv(path)
    assert len(back) == 6
    assert "truncated" in caplog.text


def test_unknown_header(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="unrecognised"):
        RadiusReport.from_tsv(p)
    with pytest.raises(FileNotFoundError):
        RadiusReport.from_tsv(tmp_path / "missing.tsv")


def test_row_from_certificate():
    cert = SimpleNamespace(label=3, abstained=False, p_lower=0.9, radius=0.32, radii={"l2": 0.4, "l1": 0.5,
                           "linf": 0.01, "channel_0": 0.4}, first_order=True, time_s=2.5, input_shape=(1, 8, 8))
    row = row_from_certificate(7, 3, cert)
    assert row["correct"] and row["radius_l1"] == 0.5 and row["time"] == 2.5
    assert format_tsv_row(row, ["idx", "correct", "radius"]) == "7\t1\t0.32\n"
    abst = SimpleNamespace(label=2, abstained=True, p_lower=0.3, radius=0.0, radii={}, first_order=True,
                           time_s=1.0, input_shape=(3, 4, 4))
    row = row_from_certificate(8, 2, abst)
    assert not row["correct"] and row["radius_channel_2"] == 0.0 and row["radius_l2"] == 0.0
    with pytest.raises(ValueError, match="radius 0"):
        row_from_certificate(9, 2, SimpleNamespace(**{**vars(abst), "radius": 0.1}))


def test_parse_time():
    assert parse_time("0:00:28.269269") == pytest.approx(28.269269)
    assert parse_time("1:02:03") == 3723.0
    assert parse_time("15.4") == 15.4
    with pytest.raises(ValueError):
        parse_time("1:2")


def test_cohen_published_logs_reproduce_the_paper():
    rep = RadiusReport.from_tsv(LOGS / "cohen_cifar10_resnet110_noise0.25_sigma0.25.tsv", sigma=0.25)
    assert rep.source == "cohen" and len(rep) == 500
    # Cohen et al. 2019, CIFAR-10 table, sigma = 0.25: r=0.25 -> 0.60, r=0.5 -> 0.43, r=0.75 -> 0.27
    acc = rep.certified_accuracy([0.25, 0.5, 0.75])
    np.testing.assert_allclose(acc, [0.60, 0.43, 0.27], atol=0.005)
    assert rep.abstain_rate == pytest.approx(43 / 500)
    assert rep.certified_accuracy(1.0) == 0.0      # sigma * Phi^-1(0.001^(1/1e5)) ~ 0.99 caps every radius
    rep50 = RadiusReport.from_tsv(LOGS / "cohen_cifar10_resnet110_noise0.50_sigma0.50.tsv", sigma=0.5)
    assert rep50.certified_accuracy(1.0) > 0.2 > rep.certified_accuracy(1.0)


def test_cohen_log_written_back_is_byte_identical(tmp_path):
    src = LOGS / "cohen_cifar10_resnet110_noise0.25_sigma0.25.tsv"
    out = RadiusReport.from_tsv(src).to_tsv(tmp_path / "c.tsv", format="cohen")
    assert out.read_text() == src.read_text()


def test_hoc_published_log_mapping():
    path = LOGS / "hoc_cifar10_resnet110_noise0.50_l1.tsv"
    raw = pd.read_csv(path, sep="\t")
    rep = RadiusReport.from_tsv(path, sigma=0.5, input_shape=(3, 32, 32))
    assert rep.source == "hoc" and rep.first_order and rep.norms == ["l2", "l1"]
    np.testing.assert_array_equal(rep.rows["radius"], raw["radius_cohen"])
    np.testing.assert_array_equal(rep.rows["radius_l2"], raw["radius_L2"])
    np.testing.assert_array_equal(rep.rows["radius_l1"], raw["radius_L1"])
    np.testing.assert_array_equal(rep.rows["count"], raw["count"])
    np.testing.assert_array_equal(rep.rows["hoc_radiusR"], raw["radiusR"])   # kept, not a channel norm
    assert rep.rows["abstained"].sum() == (raw["predict"] == -1).sum()
    assert rep.clean_accuracy == pytest.approx(raw["correct"].mean())
    assert rep.rows["time"].iloc[0] == pytest.approx(28.269269)
    # first-order l1 certificates beat the zeroth-order ones on this log (the paper's point)
    assert rep.average_certified_radius("l1") > rep.average_certified_radius("l1", "zeroth") * 1.1


def test_plots(tmp_path, hand_rows):
    zeroth = RadiusReport(hand_rows, sigma=0.25, name="a")
    other = RadiusReport([dict(r, radius=r["radius"] * 2) for r in hand_rows], sigma=0.5, name="b")
    p = zeroth.plot(tmp_path / "cmp.png", others=[other])
    first = RadiusReport([dict(r, radius_l2=r["radius"], radius_l1=r["radius"] * 2, radius_linf=r["radius"] / 4)
                          for r in hand_rows], input_shape=(1, 4, 4))
    q = first.plot(tmp_path / "fo.png", others=[zeroth], labels=["first", "zeroth"])
    for path in (p, q):
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="labels"):
        zeroth.plot(tmp_path / "x.png", others=[other], labels=["only one"])
    with pytest.raises(TypeError, match="others"):
        zeroth.plot(tmp_path / "x.png", others=[hand_rows])
