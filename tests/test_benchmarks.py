"""The benchmark scripts' own logic, not their measurements: arguments, what they compute."""

import numpy as np
import pytest

from benchmarks import train_throughput


def test_original_figures_parse_per_model():
    assert train_throughput.parse_original("mlp+mlp=114.7,cnn+mlp=49.7") == {
        "mlp+mlp": 114.7, "cnn+mlp": 49.7}
    assert train_throughput.parse_original(None) == {}
    assert train_throughput.parse_original(" mlp+rnn = 62.9 , cnn+mlp=49.7") == {
        "mlp+rnn": 62.9, "cnn+mlp": 49.7}


@pytest.mark.parametrize("text, named", [("mlp+gru=3", "'mlp+gru'"), ("mlp+mlp=0", "'mlp+mlp=0'"),
                                         ("mlp+rnn=fast", "'mlp+rnn=fast'"),
                                         ("cnn+mlp", "'cnn+mlp'"), ("mlp+mlp=inf", "'mlp+mlp=inf'"),
                                         ("mlp+mlp=1,mlp+mlp=2", "'mlp+mlp' given twice")])
def test_bad_original_figures_are_named(text, named):
    with pytest.raises(ValueError, match=named.replace("+", r"\+")):
        train_throughput.parse_original(text)


def test_an_asynchronous_thunk_lasts_until_its_end_event():
    from benchmarks import profile_step
    events = [("dot.1", 10.0, 0.5), ("fusion", 11.0, 2.0), ("end: dot.1", 40.0, 0.25),
              ("end: fusion", 45.0, 0.0), ("dot.1", 50.0, 0.5), ("end: dot.1", 60.0, 0.0)]
    assert profile_step.until_their_end(events, {"dot.1"}) == [
        ("dot.1", 10.0, 30.25), ("fusion", 11.0, 2.0), ("end: fusion", 45.0, 0.0),
        ("dot.1", 50.0, 10.0)]


def test_product_rates_measure_the_products_they_name():
    from benchmarks import product_rates
    rng = np.random.default_rng(0)
    x, w, g = rng.normal(size=(256, 6)), rng.normal(size=(6, 5)), rng.normal(size=(256, 5))
    expected = {"forward": x @ w, "input gradient": g @ w.T, "weight gradient": x.T @ g,
                "weight gradient, transposed copy first": x.T @ g}
    forms = product_rates.xla_forms()
    assert forms.keys() == expected.keys()
    for form, fn in forms.items():
        got = fn(*(a.astype(np.float32) for a in (x, w, g)))
        np.testing.assert_allclose(got, expected[form], rtol=1e-5, atol=1e-5, err_msg=form)


def test_product_rates_name_a_missing_torch_interpreter(capsys):
    from benchmarks import product_rates
    with pytest.raises(SystemExit):
        product_rates.main(["--torch-python", "/no/such/python"])
    assert "'/no/such/python'" in capsys.readouterr().err
