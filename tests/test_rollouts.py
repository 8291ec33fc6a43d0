"""The teacher-forcing rule and the decoders' declared protocols."""

import numpy as np
import pytest

from nri_jax import decoders, model
from nri_jax.model import ModelConfig
from nri_jax.rollouts import MARKOVIAN, ONE_STEP, RECURRENT, Teaching


@pytest.mark.parametrize("burn_in, period", [(1, None), (1, 10), (39, None), (3, 4), (1, 1)])
def test_ground_truth_steps_follow_the_rule(burn_in, period):
    want = [s < burn_in or (period is not None and s % period == 0) for s in range(48)]
    np.testing.assert_array_equal(Teaching(burn_in, period).ground_truth(48), want)


def test_the_paper_rollouts():
    # Markovian, P = 10: ground truth at steps 0, 10, 20, 30, 40 of 48.
    assert np.flatnonzero(MARKOVIAN.training(49).ground_truth(48)).tolist() == [0, 10, 20, 30, 40]
    # Recurrent: a burn-in of T - P = 39 by default; the paper presets' 40 when given.
    assert RECURRENT.training(49) == Teaching(burn_in=39)
    assert RECURRENT.training(49, prediction_steps=10, burn_in_steps=40) == Teaching(burn_in=40)
    assert RECURRENT.training(5) == Teaching(burn_in=1)  # never below one
    assert ONE_STEP.ground_truth(48).all()
    # Test: encoder frames 0..48 of 99; the MLP decoder reads frame 49 alone and reports 20
    # steps, the RNN reads frames 0..49 and reports the other 49.
    assert (MARKOVIAN.horizon(99, 49), MARKOVIAN.open_loop(49)) == (20, (49, Teaching()))
    assert (RECURRENT.horizon(99, 49), RECURRENT.open_loop(49)) == (49, (0, Teaching(burn_in=50)))


@pytest.mark.parametrize("n_frames", [49, 60, 97])
@pytest.mark.parametrize("protocol", [MARKOVIAN, RECURRENT])
def test_too_few_test_frames_are_refused(protocol, n_frames):
    with pytest.raises(ValueError, match=f"have {n_frames} frames.*at least 2 x 49"):
        protocol.horizon(n_frames, 49)


@pytest.mark.parametrize("teaching, message", [
    (Teaching(burn_in=0), "burn_in must be an int >= 1, got 0"),
    (Teaching(period=0), "period must be an int >= 1 or None, got 0"),
    (Teaching(burn_in=2.5), "burn_in must be an int >= 1, got 2.5"),
])
def test_bad_teaching_is_refused(teaching, message):
    with pytest.raises(ValueError, match=message):
        teaching.ground_truth(10)


def test_every_decoder_declares_its_protocol():
    assert decoders.MLPDecoder.protocol is MARKOVIAN
    assert decoders.RNNDecoder.protocol is RECURRENT
    for name, cls in model.DECODERS.items():
        assert model.decoder_protocol(ModelConfig(decoder=name)) is cls.protocol
