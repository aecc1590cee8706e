"""On-policy distillation (GKD): the student's own samples, scored by the teacher.

The steps run compiled (jit / tf.function) as in any fit; a recording teacher
keeps the tokens it was given in a variable.
"""

import time

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

import keras_kd as kd  # noqa: E402
from tests.helpers import to_numpy  # noqa: E402
from tests.test_keras_hub import LENGTH, SCE, gpt2, lm_batch  # noqa: E402
from tests.test_sequences import np_token_kd  # noqa: E402

PROMPT = 4


class RecordingTeacher(keras.Model):
    """A teacher that keeps, in a variable, the token ids of its last call on
    a batch of ``batch`` rows (so the record survives compiled steps)."""

    def __init__(self, inner, batch, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.seen = self.add_weight(shape=(batch, LENGTH), dtype="int32",
                                    initializer="zeros", trainable=False,
                                    name="seen")

    def call(self, x, training=False):
        ids = x["token_ids"]
        if tuple(ids.shape) == tuple(self.seen.shape):
            self.seen.assign(keras.ops.cast(ids, "int32"))
        return self.inner(x, training=training)


def greedy_numpy(student, tokens, prompt_ends):
    """Greedy continuation from full forward passes (no cache, no sampler)."""
    tokens = tokens.copy()
    mask = np.ones_like(tokens, dtype=bool)
    for position in range(int(prompt_ends.min()), LENGTH):
        logits = to_numpy(student({"token_ids": tokens,
                                   "padding_mask": mask}))
        best = logits[:, position - 1].argmax(-1)
        fill = position >= prompt_ends
        tokens[fill, position] = best[fill]
    return tokens


def prompt_ends(x):
    """Each row's prompt length: its first PROMPT tokens, or fewer."""
    return np.asarray(x["padding_mask"])[:, :PROMPT].sum(axis=1)


def test_on_policy_teacher_scores_the_students_own_greedy_continuations():
    x, labels, weights = lm_batch(8, seed=1)
    teacher = RecordingTeacher(gpt2("teacher", 32, 2), 8, name="teacher")
    teacher(x)
    student = gpt2("student", 16, seed=3)
    initial = gpt2("student", 16, seed=3)  # the same initial weights
    distiller = kd.Distiller(teacher, student)
    distiller.compile(
        keras.optimizers.SGD(0.5), SCE, alpha=0.0, temperature=1.0,
        distillation_loss="forward_kl",
        on_policy=kd.OnPolicy(lmbda=1.0, prompt_length=PROMPT, top_k=1))
    history = distiller.fit(x, labels, sample_weight=weights, batch_size=8,
                            epochs=1, shuffle=False, verbose=0)
    seen = to_numpy(teacher.seen)
    # Prompts are the data's first tokens (fewer in a row shorter than the
    # prompt); the rest is the student's greedy continuation with the
    # weights of that step (the initial ones).
    ends = prompt_ends(x)
    assert ends.min() < PROMPT  # a short row is part of the test
    for row, end in enumerate(ends):
        np.testing.assert_array_equal(seen[row, :end],
                                      x["token_ids"][row, :end])
    expected = greedy_numpy(initial, x["token_ids"], ends)
    np.testing.assert_array_equal(seen, expected)
    assert (seen[:, PROMPT:] != x["token_ids"][:, PROMPT:]).any()
    # The loss runs over the positions that predict a sampled token only.
    on_weights = np.zeros((8, LENGTH), "float32")
    for row, end in enumerate(ends):
        on_weights[row, end - 1:LENGTH - 1] = 1.0
    batch = {"token_ids": seen, "padding_mask": np.ones_like(seen, bool)}
    soft = np_token_kd(to_numpy(teacher.inner(batch)),
                       to_numpy(initial(batch)), 1.0)
    expected_loss = (soft * on_weights).sum() / on_weights.size
    np.testing.assert_allclose(history.history["distillation_loss"][0],
                               expected_loss, rtol=1e-4)
    assert history.history["on_policy_fraction"] == [1.0]
    assert history.history["generated_tokens"] == [(LENGTH - ends).sum()]


def test_lambda_zero_is_off_policy_distillation_exactly():
    x, labels, weights = lm_batch(8, seed=2)
    trained = []
    for on_policy in (None, kd.OnPolicy(lmbda=0.0, prompt_length=PROMPT)):
        student = gpt2("student", 16, seed=4)
        distiller = kd.Distiller(gpt2("teacher", 32, 2), student)
        distiller.compile(keras.optimizers.SGD(0.5), SCE, alpha=0.5,
                          temperature=1.0, distillation_loss="gkd",
                          on_policy=on_policy)
        distiller.fit(x, labels, sample_weight=weights, batch_size=4,
                      epochs=2, shuffle=False, verbose=0)
        trained.append([to_numpy(w) for w in student.weights])
    for off, zero in zip(*trained):
        np.testing.assert_array_equal(off, zero)


def test_sampling_follows_the_students_current_weights_and_the_mix():
    x, labels, weights = lm_batch(16, seed=5)
    teacher = RecordingTeacher(gpt2("teacher", 32, 2), 16, name="teacher")
    teacher(x)
    student = gpt2("student", 16, seed=6)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(
        keras.optimizers.SGD(2.0), SCE, alpha=0.0, temperature=1.0,
        distillation_loss="reverse_kl",
        on_policy=kd.OnPolicy(lmbda=0.5, prompt_length=PROMPT, top_k=1,
                              seed=7))
    data = x["token_ids"]
    initial = gpt2("student", 16, seed=6)
    for step in range(2):
        current = gpt2("student", 16, seed=6)
        current.set_weights(student.get_weights())  # what this step sees
        history = distiller.fit(x, labels, sample_weight=weights,
                                batch_size=16, epochs=1, shuffle=False,
                                verbose=0)
        seen = to_numpy(teacher.seen)
        chosen = round(history.history["on_policy_fraction"][0] * 16)
        sampled = (seen != data).any(axis=1)
        assert 0 < sampled.sum() <= chosen  # the other rows: the data's own
        np.testing.assert_array_equal(seen[~sampled], data[~sampled])
        greedy = greedy_numpy(current, data, prompt_ends(x))
        np.testing.assert_array_equal(seen[sampled], greedy[sampled])
    # After a step, the continuations are no longer the initial student's.
    stale = greedy_numpy(initial, data, prompt_ends(x))
    assert not np.array_equal(seen[sampled], stale[sampled])


def test_on_policy_options_and_models_are_checked():
    with pytest.raises(ValueError, match=r"lmbda must be in \[0, 1\]"):
        kd.OnPolicy(lmbda=1.5)
    with pytest.raises(ValueError, match="prompt_length must be an integer"):
        kd.OnPolicy(prompt_length=0)
    with pytest.raises(ValueError,
                       match=r"top_p must be a number in \(0, 1\]"):
        kd.OnPolicy(top_p=0.0)
    from tests.helpers import mlp
    distiller = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    with pytest.raises(ValueError, match="needs a keras-hub CausalLM student"):
        distiller.compile("adam", SCE, on_policy=kd.OnPolicy())
    x, labels, weights = lm_batch(4)
    distiller = kd.Distiller(gpt2("teacher", 32, 2), gpt2("student", 16))
    distiller.compile("adam", SCE, on_policy=kd.OnPolicy(
        prompt_length=LENGTH))
    with pytest.raises(ValueError, match="leaves nothing to sample"):
        distiller.fit(x, labels, verbose=0)
    # Cached teacher outputs score the data's tokens, not the student's.
    from keras_kd.soft_labels import compute_soft_labels
    teacher = gpt2("teacher", 32, 2)
    cache = compute_soft_labels(teacher, x, labels, sample_weight=weights,
                                batch_size=4)
    distiller = kd.Distiller(teacher, gpt2("student", 16))
    distiller.compile("adam", SCE, on_policy=kd.OnPolicy(prompt_length=4))
    with pytest.raises(ValueError, match="teacher must run live.*"
                       "on_policy=None"):
        distiller.fit(cache.as_dataset(4), verbose=0)


def test_a_distiller_with_on_policy_saves_and_loads(tmp_path):
    distiller = kd.Distiller(gpt2("teacher", 32, 2), gpt2("student", 16))
    distiller.compile("adam", SCE, distillation_loss="gkd",
                      on_policy=kd.OnPolicy(lmbda=0.25, prompt_length=3,
                                            top_p=0.9, seed=1))
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert loaded._kd.on_policy.get_config() == dict(
        lmbda=0.25, prompt_length=3, temperature=1.0, top_k=None, top_p=0.9,
        seed=1)


def test_compiled_on_policy_steps_train_the_student():
    # The compiled step (jit / tf.function) samples inside the graph.
    x, labels, weights = lm_batch(8, seed=8)
    student = gpt2("student", 16, seed=9)
    before = [to_numpy(w) for w in student.weights]
    distiller = kd.Distiller(gpt2("teacher", 32, 2), student)
    distiller.compile("adam", SCE, alpha=0.1, temperature=1.0,
                      distillation_loss="gkd",
                      on_policy=kd.OnPolicy(lmbda=1.0, prompt_length=PROMPT,
                                            temperature=0.7, top_p=0.95))
    started = time.perf_counter()
    history = distiller.fit(x, labels, sample_weight=weights, batch_size=4,
                            epochs=2, verbose=0)
    elapsed = time.perf_counter() - started
    logs = history.history
    assert logs["on_policy_fraction"] == [1.0, 1.0]
    assert logs["generated_tokens"] == [(LENGTH - prompt_ends(x)).sum() / 2] * 2
    # Seconds per step spent sampling: measured, and a part of the fit's time.
    assert all(0 < s < elapsed / 4 for s in logs["sampling_seconds"])
    assert np.isfinite(logs["loss"]).all() and logs["distillation_loss"][0] > 0
    assert any(not np.array_equal(b, to_numpy(a))
               for b, a in zip(before, student.weights))


def _sleeping(seconds):
    """A function of a tensor that waits ``seconds`` on the host inside a
    compiled program, then returns the tensor."""
    def wait(a):
        time.sleep(seconds)
        return a

    backend = keras.config.backend()
    if backend == "jax":
        import jax
        from jax.experimental import io_callback
        return lambda t: io_callback(
            wait, jax.ShapeDtypeStruct(t.shape, t.dtype), t)
    if backend == "tensorflow":
        import tensorflow as tf

        def sleep(t):
            out = tf.numpy_function(wait, [t], t.dtype)
            out.set_shape(t.shape)
            return out
        return sleep
    return wait


def _compiled(fn):
    backend = keras.config.backend()
    if backend == "jax":
        import jax
        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.function(fn)
    return fn  # PyTorch steps run eagerly


def test_timed_brackets_the_sampling_only_inside_a_compiled_step():
    # 0.1 s inside the timed function, 0.3 s before and after it: a bracket
    # that started early or stopped late would read 0.4 s or more.
    from keras_kd.on_policy import timed

    inside, outside = _sleeping(0.1), _sleeping(0.3)

    def step(x):
        x = outside(x)
        y, seconds = timed(lambda t: inside(t) + 1, x)
        return outside(y) * 2, seconds

    y, seconds = _compiled(step)(keras.ops.arange(6, dtype="int32"))
    assert to_numpy(y).tolist() == [2, 4, 6, 8, 10, 12]
    assert 0.1 <= float(to_numpy(seconds)) < 0.3


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="XLA's missing clock op is TensorFlow's case")
def test_xla_compiled_tensorflow_steps_log_no_sampling_time():
    x, labels, weights = lm_batch(4, seed=8)
    distiller = kd.Distiller(gpt2("teacher", 32, 2), gpt2("student", 16))
    distiller.compile("adam", SCE, distillation_loss="gkd", jit_compile=True,
                      on_policy=kd.OnPolicy(lmbda=1.0, prompt_length=PROMPT))
    logs = distiller.fit(x, labels, sample_weight=weights, batch_size=4,
                         verbose=0).history
    assert logs["on_policy_fraction"] == [1.0]
    assert "sampling_seconds" not in logs


def test_an_on_policy_error_leaves_the_models_usable():
    # prompt_length >= the sequence length: refused before Keras traces a
    # step (on JAX the error used to escape the first step with the
    # variables emptied: get_weights() raised TypeError; issue 28 #1).
    x, labels, weights = lm_batch(4)
    teacher, student = gpt2("teacher", 32, 2), gpt2("student", 16)
    distiller = kd.Distiller(teacher, student)
    distiller.compile("adam", SCE, on_policy=kd.OnPolicy(
        prompt_length=LENGTH))
    teacher_before, student_before = teacher.get_weights(), \
        student.get_weights()
    with pytest.raises(ValueError, match=f"prompt_length={LENGTH} leaves "
                       f"nothing to sample in sequences of {LENGTH}"):
        distiller.fit(x, labels, sample_weight=weights, verbose=0)
    for before, model in ((teacher_before, teacher),
                          (student_before, student)):
        for b, a in zip(before, model.get_weights()):
            np.testing.assert_array_equal(b, a)
    distiller.compile("adam", SCE, on_policy=kd.OnPolicy(
        lmbda=1.0, prompt_length=PROMPT))
    history = distiller.fit(x, labels, sample_weight=weights, verbose=0)
    assert history.history["on_policy_fraction"] == [1.0]
    assert any(not np.array_equal(b, a)
               for b, a in zip(student_before, student.get_weights()))


def test_a_data_set_too_short_for_the_prompt_is_refused_before_fit():
    tf = pytest.importorskip("tensorflow")
    x, labels, weights = lm_batch(4)
    data = tf.data.Dataset.from_tensor_slices((x, labels, weights)).batch(4)
    distiller = kd.Distiller(gpt2("teacher", 32, 2), gpt2("student", 16))
    distiller.compile("adam", SCE, on_policy=kd.OnPolicy(prompt_length=20))
    with pytest.raises(ValueError, match="prompt_length=20 leaves nothing"):
        distiller.fit(data, verbose=0)
    assert distiller.train_function is None  # no step was traced


def _recorded_fit(x, labels, weights, lmbda=1.0, optimizer="sgd"):
    n = len(x["token_ids"])
    teacher = RecordingTeacher(gpt2("teacher", 32, 2), n, name="teacher")
    teacher(x)
    student = gpt2("student", 16, seed=3)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer, SCE, alpha=0.0, temperature=1.0,
                      distillation_loss="forward_kl",
                      on_policy=kd.OnPolicy(lmbda=lmbda, prompt_length=PROMPT,
                                            top_k=1))
    before = [w.copy() for w in student.get_weights()]
    history = distiller.fit(x, labels, sample_weight=weights, batch_size=n,
                            shuffle=False, verbose=0)
    return to_numpy(teacher.seen), history.history, before, student


def test_rows_of_padding_or_weighted_zero_are_never_sampled():
    # Issue #16: a padding-only row with weight 0 was regenerated from an
    # empty prompt and weighted 1 on every position.
    x, labels, weights = lm_batch(8, seed=1)
    x["token_ids"][0] = 0
    x["padding_mask"][0] = False
    weights[0] = 0.0  # a row of padding only
    weights[1] = 0.0  # real tokens the user weighted 0
    seen, logs, _, _ = _recorded_fit(x, labels, weights)
    np.testing.assert_array_equal(seen[:2], x["token_ids"][:2])  # kept
    assert (seen[2:] != x["token_ids"][2:]).any()  # the others sampled
    ends = prompt_ends(x)
    assert logs["on_policy_fraction"] == [6 / 8]
    assert logs["generated_tokens"] == [(LENGTH - ends[2:]).sum()]


def test_a_batch_of_padding_only_gives_a_zero_loss_and_no_update():
    x, labels, weights = lm_batch(4, seed=2)
    x["token_ids"][:] = 0
    x["padding_mask"][:] = False
    weights[:] = 0.0
    seen, logs, before, student = _recorded_fit(x, labels, weights)
    np.testing.assert_array_equal(seen, x["token_ids"])  # nothing sampled
    assert logs["loss"] == [0.0] and logs["generated_tokens"] == [0.0]
    for b, a in zip(before, student.get_weights()):  # SGD: no update
        np.testing.assert_array_equal(b, a)


def test_left_padded_rows_are_refused_or_kept():
    x, labels, weights = lm_batch(4, seed=3)
    left = {key: np.flip(value, axis=1).copy() for key, value in x.items()}
    distiller = kd.Distiller(gpt2("teacher", 32, 2), gpt2("student", 16))
    distiller.compile("sgd", SCE, on_policy=kd.OnPolicy(prompt_length=PROMPT))
    with pytest.raises(ValueError, match=r"right-padded.*rows \[0, 1, 2, 3\]"
                       r".*left padding.*Pad on the right"):
        distiller.fit(left, np.flip(labels, 1), verbose=0)
    # Inside the step (data the pre-fit check cannot read), a left-padded
    # row keeps its own tokens.
    tf = pytest.importorskip("tensorflow")
    if keras.config.backend() != "tensorflow":
        return
    x, labels, weights = lm_batch(4, seed=3)
    for key in x:
        x[key][0] = np.flip(x[key][0])
    teacher = RecordingTeacher(gpt2("teacher", 32, 2), 4, name="teacher")
    teacher(x)
    distiller = kd.Distiller(teacher, gpt2("student", 16))
    distiller.compile("sgd", SCE, alpha=0.0, on_policy=kd.OnPolicy(
        lmbda=1.0, prompt_length=PROMPT))
    data = tf.data.Dataset.from_tensor_slices((x, labels, weights)).batch(4)
    logs = distiller.fit(data, shuffle=False, verbose=0).history
    seen = to_numpy(teacher.seen)
    np.testing.assert_array_equal(seen[0], x["token_ids"][0])
    assert logs["on_policy_fraction"] == [3 / 4]


def test_on_policy_metrics_are_logged_without_labels():
    x, _, weights = lm_batch(4, seed=4)
    distiller = kd.Distiller(gpt2("teacher", 32, 2), gpt2("student", 16))
    distiller.compile("sgd", None, on_policy=kd.OnPolicy(
        lmbda=1.0, prompt_length=PROMPT))
    logs = distiller.fit(x, sample_weight=weights, verbose=0).history
    assert logs["on_policy_fraction"] == [1.0]
    assert logs["generated_tokens"] == [(LENGTH - prompt_ends(x)).sum()]
    assert "sampling_seconds" in logs and "distillation_loss" in logs


@pytest.mark.parametrize("kwargs, message", [
    (dict(lmbda=1.5), r"lmbda must be in \[0, 1\], got 1.5: the probability "
     "that a sequence is continued by the student"),
    (dict(lmbda="half"), "lmbda must be in"),
    (dict(top_p="abc"), r"top_p must be a number in \(0, 1\] or None, got "
     "'abc'"),
    (dict(top_k=True), "top_k must be an integer >= 1 or None"),
    (dict(top_k=2.5), "top_k must be an integer >= 1 or None"),
    (dict(seed="x"), "seed must be an integer or None, got 'x'"),
    (dict(temperature=1e-30), "on-policy temperature must be > 0"),
])
def test_on_policy_arguments_get_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        kd.OnPolicy(**kwargs)
    assert "alpha" not in str(error.value)
