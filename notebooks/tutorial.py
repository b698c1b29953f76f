# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A dense network in TensorFlow 2 without Keras: the tfnn tutorial
#
# This notebook retraces the one tfnn grew out of: a naive, fully-connected network built by
# hand with TensorFlow's core API, so that nothing happens behind your back. We go from
# activation functions and losses, through gradients with `tf.GradientTape`, a small
# regression and a network assembled layer by layer, to MNIST digits and a comparison of two
# activations. Everything runs on `tfnn`, whose modules are each short enough to read next to
# this notebook (`tfnn/activations.py`, `tfnn/losses.py`, `tfnn/layers.py`, ...).
#
# The original notebook made two mistakes, and this one shows them with numbers near the end.
# The last section runs the same training as a tracked pipeline (Prefect + MLflow).
#
# **Data.** MNIST comes from the directory named by the environment variable `TFNN_DATA_DIR`
# (the four IDX files, e.g. `train-images-idx3-ubyte.gz`) when it is set, otherwise from
# tensorflow-datasets (`tfds:mnist`), which needs a network on first use.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

import tfnn

# %% [markdown]
# ## 1. A layer
#
# A dense layer holds two weights: `w`, of shape `(inputs, units)`, and a bias `b` of shape
# `(units,)`. Its forward pass is `activation(x @ w + b)`. `tfnn.Dense` is exactly that, as a
# `tf.Module`, so TensorFlow tracks its variables for us. Like the original, we start the
# weights at small random values (`N(0, 1) * 0.01`, the `notebook_normal` initialiser) and the
# bias at zero; the seed makes the weights the same on every run.

# %%
l1 = tfnn.Dense(2, 2, activation="identity", initializer="notebook_normal", seed=(42, 0))
l2 = tfnn.Dense(2, 1, activation="identity", initializer="notebook_normal", seed=(42, 1))
print("l1:", l1, "| w", l1.w.shape, "| b", l1.b.shape)
a1 = l1(tf.constant([[10.0, 20.0]]))
print("a1 =", a1.numpy(), a1.shape)
a2 = l2(a1)
print("a2 =", a2.numpy(), a2.shape)

# %% [markdown]
# ## 2. Activation functions
#
# Hidden layers bend their output with a non-linear activation; the output layer uses the
# identity for regression and softmax for classification. The values printed below are the
# original notebook's examples, with the same results.

# %%
print("step_function([1, 0, 3, -3]) =", tfnn.step_function(tf.constant([1, 0, 3, -3])).numpy())
print("sigmoid([0, 1, -2]) =", tfnn.sigmoid(tf.constant([0.0, 1.0, -2.0])).numpy())
print("relu([-2, -1, 1, 2]) =", tfnn.relu(tf.constant([-2.0, -1.0, 1.0, 2.0])).numpy())
print("tanh([-3, -1, 0, 1, 3]) =", tfnn.tanh(tf.constant([-3.0, -1.0, 0.0, 1.0, 3.0])).numpy())
print("identity([1, 0, -1, -3]) =", tfnn.identity(tf.constant([1.0, 0.0, -1.0, -3.0])).numpy())

# %%
x = tf.linspace(-5.0, 5.0, 201)
activations = {
    "step_function": tfnn.step_function,
    "sigmoid": tfnn.sigmoid,
    "relu": tfnn.relu,
    "tanh": tfnn.tanh,
    "identity": tfnn.identity,
}
fig, axes = plt.subplots(1, len(activations), figsize=(16, 3), sharex=True)
for ax, (name, function) in zip(axes, activations.items()):
    ax.plot(x, function(x))
    ax.set_title(name)
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.axvline(0, color="gray", linewidth=0.5)
plt.show()

# %% [markdown]
# Softmax turns a vector of scores into probabilities that sum to 1. Subtracting the largest
# score first changes nothing mathematically and keeps `exp` from overflowing, so even scores
# around 1000 work.

# %%
print("softmax([0.3, 2.9, 4.0]) =", tfnn.softmax(tf.constant([0.3, 2.9, 4.0])).numpy())
print("softmax([1010, 1000, 990]) =", tfnn.softmax(tf.constant([1010.0, 1000.0, 990.0])).numpy())

# %% [markdown]
# ## 3. Losses
#
# A loss says how far a prediction is from the target. Every tfnn loss takes
# `(y_pred, y_true)`, in that order, and averages over the batch. `x1` is a prediction over ten
# classes; `y1` is a one-hot target that agrees with it (class 2), `y2` one that does not
# (class 7).

# %%
y1 = [0.0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
y2 = [0.0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
x1 = [0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0]

examples = {
    "x1, y1": (x1, y1),
    "x1, y2": (x1, y2),
    "[x1, x1], [y1, y2]": ([x1, x1], [y1, y2]),  # a batch of two: the mean of the two above
}
for loss in (tfnn.sum_squared_error, tfnn.cross_entropy_error):
    for arguments, (y_pred, y_true) in examples.items():
        value = loss(tf.constant(y_pred), tf.constant(y_true))
        print(f"{loss.__name__}({arguments}) =", value.numpy())

# %% [markdown]
# For regression, the root mean squared error is in the targets' own unit: here the predictions
# are off by 20, 60 and 40.

# %%
y_true = [[100.0], [160], [60]]
y_pred = [[80.0], [100], [100]]
rmse = tfnn.root_mean_squared_error(tf.constant(y_pred), tf.constant(y_true))
print("root_mean_squared_error(y_pred, y_true) =", rmse.numpy())

# %% [markdown]
# ## 4. Gradients with `tf.GradientTape`
#
# Training needs the derivative of the loss with respect to every weight. TensorFlow records
# the operations run inside a `GradientTape` and differentiates them for us. The derivative of
# `x^3 + 2x^2 + x` is `3x^2 + 4x + 1`, which is 40 at `x = 3`:

# %%
x = tf.Variable(3.0)
with tf.GradientTape() as tape:
    z = x**3 + 2 * x**2 + x
print("d/dx (x^3 + 2x^2 + x) at 3 =", tape.gradient(z, x).numpy())


# %% [markdown]
# Partial derivatives work the same way. For `f2(w1, w2) = 3 w1^2 + 2 w1 w2` at `(5, 3)`:
# `df2/dw1 = 6 w1 + 2 w2 = 36` and `df2/dw2 = 2 w1 = 10`. A tape frees its resources after
# its first `gradient` call; a `persistent` tape can be asked several times.


# %%
def f2(w1, w2):
    return 3 * w1**2 + 2 * w1 * w2


w1, w2 = tf.Variable(5.0), tf.Variable(3.0)
with tf.GradientTape() as tape:
    z = f2(w1, w2)
print("[df2/dw1, df2/dw2] at (5, 3) =", [float(g) for g in tape.gradient(z, [w1, w2])])
try:
    tape.gradient(z, [w1, w2])
except RuntimeError as error:
    print("second call:", error)

with tf.GradientTape(persistent=True) as tape:
    z = f2(w1, w2)
print("persistent df2/dw1 =", tape.gradient(z, w1).numpy())
print("persistent df2/dw2 =", tape.gradient(z, w2).numpy())
del tape  # a persistent tape holds its resources until it is deleted

# %% [markdown]
# ## 5. Fitting `2x + 10`
#
# Before digits, a check that layers, a loss and gradients can learn something simple: points
# on the line `2x + 10` with uniform noise in `[-5, 5)`. The noise comes from NumPy's seed 42,
# as in the original, so the points are the same.

# %%
x = np.arange(-50, 50, 2)
noise = -10 * np.random.RandomState(42).rand(len(x)) + 5
y = 2 * x + 10 + noise

# %% [markdown]
# First without a network: the least-squares line, and its coefficient of determination
# R² (the original used scikit-learn's `LinearRegression`; NumPy gives the same line).

# %%
slope, intercept = np.polyfit(x, y, 1)
least_squares = slope * x + intercept
r2 = 1 - np.sum((y - least_squares) ** 2) / np.sum((y - y.mean()) ** 2)
query = np.array([-50.0, 0.0, 50.0, 100.0])
print(f"least-squares line: y = {slope:.4f} x + {intercept:.4f}")
print("least-squares R^2 =", r2)
print("least-squares at [-50, 0, 50, 100] =", slope * query + intercept)

# %% [markdown]
# Now a network: one hidden layer of 32 relu units and an identity output, trained to minimise
# the RMSE with plain gradient descent (`tfnn.SGD`: `w -= learning_rate * gradient`) for
# 10,000 steps over all 50 points. `build_mlp` makes the layers; section 6 builds a network
# layer by layer. The steps run inside a `tf.function`, so TensorFlow compiles the loop into a
# graph instead of running 10,000 Python iterations.

# %%
inputs = tf.constant(x[:, None], tf.float32)
targets = tf.constant(y[:, None], tf.float32)
line_network = tfnn.build_mlp(
    [1, 32, 1], "relu", "identity", "root_mean_squared_error", "notebook_normal", seed=1
)
optimizer = tfnn.SGD(0.003)


@tf.function
def train_steps(steps):
    for _ in tf.range(steps):
        grads = line_network.gradient(inputs, targets)
        optimizer.apply_gradients(zip(grads, line_network.all_weights))
    return line_network.loss(inputs, targets)


for step in range(1000, 10_001, 1000):
    print(f"train loss after {step} steps = {train_steps(tf.constant(1000)).numpy():.3}")
print("network train loss =", line_network.loss(inputs, targets).numpy())
line_predictions = line_network.predict(tf.constant(query[:, None], tf.float32))
print("network at [-50, 0, 50, 100] =", line_predictions.numpy()[:, 0])

# %%
grid = np.linspace(-55, 55, 221)
plt.figure(figsize=(7, 4.5))
plt.plot(x, y, "o", label="data: 2x + 10 + noise", alpha=0.6)
plt.plot(x, least_squares, label="least squares", linewidth=3)
plt.plot(
    grid,
    line_network.predict(tf.constant(grid[:, None], tf.float32))[:, 0],
    "--",
    label="network (relu, 32 units)",
)
plt.legend()
plt.show()

# %% [markdown]
# The network's line follows the least-squares one, except for a kink: relu networks are
# piecewise linear, and this one bends near an end of the data.
#
# ## 6. A network, layer by layer
#
# `tfnn.Sequential` applies its layers in order and holds the loss; it gives `predict`,
# `loss`, `accuracy` and `gradient` (the derivative of the loss with respect to
# `all_weights`). Here is the MNIST network of the next section, assembled by hand: 784 pixels
# in, two relu layers of 100 and 50 units, and a softmax over the 10 digits. It starts with He
# initialisation (`N(0, 2 / inputs)`), which keeps relu activations at a steady scale from
# layer to layer, where the original's `N(0, 1) * 0.01` makes the first epochs slow.

# %%
layers = [
    tfnn.Dense(784, 100, "relu", "he_normal", seed=(42, 0)),
    tfnn.Dense(100, 50, "relu", "he_normal", seed=(42, 1)),
    tfnn.Dense(50, 10, "softmax", "he_normal", seed=(42, 2)),
]
network = tfnn.Sequential(layers, loss="cross_entropy_error")
print(network)
for weight in network.all_weights:
    print(f"  {weight.name:<10} {weight.shape}")
print("parameters =", network.num_parameters)

batch = tf.random.stateless_uniform([3, 784], seed=(0, 0))
probabilities = network.predict(batch)
print("predict shape =", probabilities.shape)
print("row sums =", tf.reduce_sum(probabilities, axis=1).numpy())

# %% [markdown]
# `tfnn.build_mlp([784, 100, 50, 10], "relu", seed=42)` builds this same network (layer `i`
# gets the seed `(42, i)`), and that is what the rest of the notebook uses.
#
# ## 7. MNIST
#
# 28x28 grey images of handwritten digits. `load_dataset` reads an IDX directory, or
# `tfds:mnist` from tensorflow-datasets; offline, tensorflow-datasets would retry its download
# for minutes, so tfnn checks first and fails at once with a hint to set `TFNN_DATA_DIR`.

# %%
from tfnn.mnist import load_dataset  # noqa: E402
from tfnn.preprocessing import preprocess  # noqa: E402

source = os.environ.get("TFNN_DATA_DIR") or "tfds:mnist"
mnist = load_dataset(source)
print(mnist)

fig, axes = plt.subplots(2, 6, figsize=(9, 3.5))
for ax, image, label in zip(axes.flat, mnist.train_images, mnist.train_labels):
    ax.imshow(image, cmap="gray")
    ax.set_title(int(label))
    ax.axis("off")
plt.show()

# %% [markdown]
# The network takes each image as 784 numbers in [0, 1] and each label as a one-hot vector.

# %%
train = preprocess(mnist.train_images, mnist.train_labels)
test = preprocess(mnist.test_images, mnist.test_labels)
print("train:", train[0].shape, train[1].shape, "| test:", test[0].shape, test[1].shape)

# %% [markdown]
# `tfnn.fit` trains with minibatch SGD: every epoch visits the training images in a fresh
# order (fixed by the seed), 32 at a time, then measures the test set. The callback prints a
# line per epoch. Settings are the original's: learning rate 0.1, batch 32, 5 epochs.


# %%
def print_epoch(epoch, metrics, network):
    print(
        f"epoch {epoch}: train loss {metrics['train_loss']:.4f}, "
        f"train accuracy {metrics['train_accuracy']:.4f}, "
        f"test accuracy {metrics['test_accuracy']:.4f}"
    )


def train_mnist(activation):
    network = tfnn.build_mlp([784, 100, 50, 10], hidden_activation=activation, seed=42)
    history = tfnn.fit(
        network,
        tfnn.SGD(0.1),
        train,
        {"test": test},
        epochs=5,
        batch_size=32,
        seed=42,
        callbacks=[print_epoch],
    )
    return network, history


relu_network, relu_history = train_mnist("relu")
print("relu test accuracy =", relu_history.test_accuracy[-1])

# %%
epochs = np.arange(1, relu_history.epochs + 1)
fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(12, 4))
steps_per_epoch = len(relu_history.step_loss) / relu_history.epochs
loss_ax.plot(
    np.arange(len(relu_history.step_loss)) / steps_per_epoch,
    relu_history.step_loss,
    alpha=0.4,
    label="each step",
)
loss_ax.plot(epochs, relu_history.train_loss, "o-", label="train, epoch mean")
loss_ax.plot(epochs, relu_history.test_loss, "s-", label="test")
loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log", xticks=epochs)
loss_ax.legend()
accuracy_ax.plot(epochs, relu_history.train_accuracy, "o-", label="train")
accuracy_ax.plot(epochs, relu_history.test_accuracy, "s-", label="test")
accuracy_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", xticks=epochs)
accuracy_ax.legend()
plt.show()

# %% [markdown]
# ## 8. relu against tanh
#
# The same network and training with tanh in the hidden layers.

# %%
tanh_network, tanh_history = train_mnist("tanh")
print("tanh test accuracy =", tanh_history.test_accuracy[-1])

# %%
fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(12, 4))
for name, history, color in (("relu", relu_history, "C0"), ("tanh", tanh_history, "C1")):
    loss_ax.plot(epochs, history.train_loss, "o-", color=color, label=f"{name} train")
    loss_ax.plot(epochs, history.test_loss, "s--", color=color, label=f"{name} test")
    accuracy_ax.plot(epochs, history.train_accuracy, "o-", color=color, label=f"{name} train")
    accuracy_ax.plot(epochs, history.test_accuracy, "s--", color=color, label=f"{name} test")
loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss", xticks=epochs)
accuracy_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", xticks=epochs)
loss_ax.legend()
accuracy_ax.legend()
plt.show()

# %% [markdown]
# Both learn the digits within a few epochs. The original, on all 60,000 training digits, ended
# at a test accuracy of 0.971 with relu and 0.966 with tanh; with 10,000 digits and five epochs
# the curves still move from one epoch to the next.

# %% [markdown]
# ## 9. The original's two mistakes
#
# **Softmax over the whole batch.** The original's softmax summed `exp` over every element of
# its input. Given one vector that is right; given a batch of 32 rows it divides by the sum of
# all 32 rows, so each row sums to about 1/32 instead of 1. Its cross-entropy then can never
# fall below `ln 32`: even a network that is sure and right about every image scores about
# 3.47. That is why the original's training loss stayed near 3.5 while its accuracy rose
# to 99%. `tfnn.softmax` normalises each row.


# %%
def batch_wide_softmax(x):  # the original's softmax, verbatim
    e = tf.exp(x - tf.reduce_max(x))
    s = tf.reduce_sum(e)
    return e / s


labels = np.arange(32) % 10
confident = tf.constant(np.eye(10, dtype=np.float32)[labels] * 20.0)  # sure and right
targets_32 = tf.constant(np.eye(10, dtype=np.float32)[labels])
for name, softmax in (("batch-wide", batch_wide_softmax), ("per-row", tfnn.softmax)):
    p = softmax(confident)
    print(
        f"{name:>10} softmax: first row sums to {tf.reduce_sum(p[0]).numpy():.5f}, "
        f"cross-entropy {tfnn.cross_entropy_error(p, targets_32).numpy():.5f}"
    )
print(f"ln 32 = {np.log(32):.5f}")

# %% [markdown]
# The same on the relu network trained above, for a batch of 32 test digits: the batch-wide
# softmax adds at least `ln 32` to the loss, however good the network.

# %%
digits, digit_labels = test[0][:32], test[1][:32]
logits = relu_network.logits(digits)
for name, softmax in (("batch-wide", batch_wide_softmax), ("per-row", tfnn.softmax)):
    loss = tfnn.cross_entropy_error(softmax(logits), digit_labels)
    print(f"relu network, 32 test digits, {name} softmax: cross-entropy =", loss.numpy())

# %% [markdown]
# **tanh from `exp`.** The original computed `(e^x - e^-x) / (e^x + e^-x)`. In float32, `e^x`
# overflows to infinity once `x` passes about 88.7, and infinity over infinity is NaN: one
# large pre-activation and the whole network turns into NaN. `tfnn.tanh` uses TensorFlow's
# kernel, which saturates at ±1.


# %%
def exp_tanh(x):  # the original's tanh, verbatim
    return (tf.exp(x) - tf.exp(-x)) / (tf.exp(x) + tf.exp(-x))


big = tf.constant([1.0, 10.0, 88.0, 89.0, 100.0, -100.0])
print("x =", big.numpy())
print("exp-formula tanh(x) =", exp_tanh(big).numpy())
print("tfnn.tanh(x) =", tfnn.tanh(big).numpy())
print("numpy tanh(x) =", np.tanh(big.numpy()))

# %% [markdown]
# A third, smaller one: softmax followed by `log` underflows once a probability is rounded to
# 0, and `cross_entropy_error` then clips at `log(1e-7)`. A `Sequential` whose last layer is
# softmax with the cross-entropy loss trains from the logits with
# `tfnn.softmax_cross_entropy_from_logits`, which never takes that log.
#
# ## 10. The same training as a pipeline
#
# `flows.train.train_flow` is the Prefect flow behind the `tfnn train` command. It runs the
# steps above as tasks (load, preprocess, build, train, evaluate, plot) with the default
# configuration, the relu network of section 7, and records everything in MLflow: parameters,
# per-epoch metrics, checkpoints, plots, the weights and the model, registered as a version of
# `tfnn-mnist`. With nothing configured, Prefect starts a temporary local server and MLflow
# writes `mlflow.db` and `mlruns/` in the working directory; set `MLFLOW_TRACKING_URI` (and
# `PREFECT_API_URL`) to use servers instead. The data source is `TFNN_DATA_DIR` again. On a
# busy machine the temporary server can take longer than Prefect's default 20 s to start:
# `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120` gives it more time.

# %%
import mlflow  # noqa: E402

from flows.train import train_flow  # noqa: E402

result = train_flow()
print("MLflow run:", result.run_id)
for name, value in result.metrics.items():
    if "_class_" not in name:  # the per-digit accuracies are in the run too
        print(name, "=", value)

# %% [markdown]
# To look at the run, start the MLflow UI on the same store from a terminal, in the directory
# this notebook runs in, and open the link:

# %%
run = mlflow.get_run(result.run_id)
print(f"mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
print(f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
