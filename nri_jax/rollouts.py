"""How a decoder is fed as it rolls out, and each decoder's protocol.

Step s of a rollout predicts frame s+1 from one input frame: the ground-truth
frame s or the decoder's own prediction of it. `Teaching` is the one rule for
which (teacher forcing): step s reads ground truth when ``s < burn_in`` or
``s % period == 0``. The paper's Markovian decoder is trained with ground truth
every `prediction_steps` steps (``Teaching(period=10)``), its recurrent decoder
with a burn-in (``Teaching(burn_in=39)``), and both are validated on one-step
predictions (`ONE_STEP`).

Every decoder declares a `Protocol` (its class attribute ``protocol``): the
teaching it trains with and how it is tested. The test follows the paper: the
encoder sees the first T_enc frames; the open-loop rollout starts from the
ground-truth frame T_enc, which a Markovian decoder reads alone and a
recurrent one after warming its hidden state up on frames 0..T_enc-1.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

# The reference's ground-truth period of the Markovian decoder in training.
DEFAULT_PREDICTION_STEPS = 10


class Teaching(NamedTuple):
    """Which rollout steps read ground truth: ``s < burn_in`` or ``s % period == 0``.

    Attributes:
      burn_in: the first this many steps read ground truth (>= 1: step 0 has no
        prediction to read).
      period: after the burn-in, every this-many-th step reads ground truth as
        well; None: none does (a free-running rollout).
    """

    burn_in: int = 1
    period: int | None = None

    def check(self) -> None:
        """Raises ValueError for a burn-in below 1 or a period below 1."""
        if not isinstance(self.burn_in, (int, np.integer)) or self.burn_in < 1:
            raise ValueError(f"Teaching.burn_in must be an int >= 1, got {self.burn_in!r}")
        if self.period is not None and (not isinstance(self.period, (int, np.integer))
                                        or self.period < 1):
            raise ValueError(f"Teaching.period must be an int >= 1 or None, got {self.period!r}")

    def ground_truth(self, n_steps: int) -> np.ndarray:
        """[n_steps] bool: does step s read the ground-truth frame s?"""
        self.check()
        steps = np.arange(n_steps)
        periodic = steps % self.period == 0 if self.period else np.zeros(n_steps, bool)
        return (steps < self.burn_in) | periodic


# Validation and the test NLL: every step reads ground truth.
ONE_STEP = Teaching(burn_in=1, period=1)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A decoder's rollouts in training and test.

    Attributes:
      markovian: the prediction depends on the input frame alone (no hidden
        state): trained with ground truth every `prediction_steps` steps and
        tested from the single frame T_enc. Otherwise the decoder carries a
        hidden state: trained with a burn-in of `burn_in_steps` ground-truth
        inputs (default T - prediction_steps) and tested after reading frames
        0..T_enc.
      max_horizon: the longest open-loop horizon the test reports (the paper:
        20 for the Markovian decoder); None: to the end of the test trajectory.
    """

    markovian: bool
    max_horizon: int | None = None

    def training(self, n_frames: int, prediction_steps: int = DEFAULT_PREDICTION_STEPS,
                 burn_in_steps: int | None = None) -> Teaching:
        """The teaching of a training rollout over `n_frames` frames."""
        if self.markovian:
            return Teaching(period=prediction_steps)
        return Teaching(burn_in=burn_in_steps or max(n_frames - prediction_steps, 1))

    def check_test_frames(self, n_frames: int, n_encoder_frames: int) -> None:
        """Raises ValueError unless test trajectories of `n_frames` frames fit the test.

        The test's one-step NLL is taken over the last T_enc frames, which must not
        overlap the T_enc frames the encoder sees: T >= 2 T_enc (the paper: 99 >= 98).
        """
        if n_frames < 2 * n_encoder_frames:
            raise ValueError(
                f"test trajectories have {n_frames} frames; the test needs at least "
                f"2 x {n_encoder_frames} (the encoder's {n_encoder_frames} frames, then as many "
                "for the one-step NLL and the open-loop rollout, which must not overlap them)")

    def horizon(self, n_frames: int, n_encoder_frames: int) -> int:
        """Open-loop steps the test reports: frames T_enc+1 .. T_enc+H."""
        self.check_test_frames(n_frames, n_encoder_frames)
        rest = n_frames - n_encoder_frames - 1
        return rest if self.max_horizon is None else min(self.max_horizon, rest)

    def open_loop(self, n_encoder_frames: int) -> tuple[int, Teaching]:
        """(first frame the decoder reads, teaching) of the test's open-loop rollout
        from the ground-truth frame T_enc."""
        if self.markovian:
            return n_encoder_frames, Teaching()
        return 0, Teaching(burn_in=n_encoder_frames + 1)


MARKOVIAN = Protocol(markovian=True, max_horizon=20)
RECURRENT = Protocol(markovian=False)
