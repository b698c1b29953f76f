"""The network as a model server runs it: the same probabilities, but a request that is not
a batch of pixel rows the network was trained on is refused with a message that says why.

A served ``Sequential`` answers NaN, infinities or -1e30 with plausible-looking
probabilities, and a 100k-row request ran out the server's timeout (60 s, 3.7 GB). Saved
as the model, ``GuardedNetwork`` fails such a request instead; MLflow's scoring server turns
the failure into HTTP 400 with the message in its stack trace.
"""

import numpy as np
import tensorflow as tf

from tfnn.network import Sequential

# A tenth of the 100k rows that outlasted the server's 60 s; callers split larger sets.
MAX_ROWS_PER_REQUEST = 10_000


class GuardedNetwork(tf.Module):
    """``network``'s predictions for at most ``max_rows`` rows of finite values in [0, 1]
    (pixels divided by 255), else ``tf.errors.InvalidArgumentError`` naming the problem."""

    def __init__(self, network: Sequential, max_rows: int = MAX_ROWS_PER_REQUEST):
        super().__init__()
        self.network, self.max_rows = network, max_rows

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        tf.debugging.assert_less_equal(
            tf.shape(x)[0],
            self.max_rows,
            message=f"a request holds at most {self.max_rows} rows; split the batch",
        )
        tf.debugging.assert_all_finite(x, "input holds NaN or infinity; send pixel values")
        in_range = tf.reduce_all((x >= 0.0) & (x <= 1.0))
        tf.debugging.Assert(in_range, ["input values must lie in [0, 1] (pixels / 255)"])
        return self.network.predict(x)


def predict_in_batches(model, x: np.ndarray, rows: int = MAX_ROWS_PER_REQUEST) -> np.ndarray:
    """``model.predict`` (a loaded MLflow model, say) of ``x`` in slices of ``rows``."""
    if len(x) == 0:
        return np.asarray(model.predict(x))
    parts = [np.asarray(model.predict(x[i : i + rows])) for i in range(0, len(x), rows)]
    return np.concatenate(parts)
