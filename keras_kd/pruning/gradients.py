"""Gradients of a loss with respect to some of a model's weights, outside
``fit()``, on each backend (TensorFlow's tape, ``jax.grad`` over
``stateless_call``, PyTorch's autograd). Used by the Taylor criterion."""

import keras


def weight_gradients(model, variables, x, y, loss_fn):
    """``[∂ loss_fn(y, model(x)) / ∂v for v in variables]`` as NumPy arrays.

    The model runs with ``training=False`` (BatchNorm uses its moving
    statistics, Dropout is off). ``variables`` must be trainable.

    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> m.layers[0].set_weights([np.array([[1.0], [2.0]], "float32")])
    >>> mse = lambda y, p: keras.ops.sum((p - y) ** 2)
    >>> x = np.array([[1.0, 1.0]], "float32"); y = np.zeros((1, 1), "float32")
    >>> g, = weight_gradients(m, [m.layers[0].kernel], x, y, mse)
    >>> g.ravel().tolist()   # 2 (x w - y) x = 2 * 3 * [1, 1]
    [6.0, 6.0]
    """
    trainable = list(model.trainable_variables)
    positions = []
    for v in variables:
        index = next((i for i, t in enumerate(trainable) if t is v), None)
        if index is None:
            raise ValueError(
                f"The weight {v.path!r} is not trainable, so the Taylor "
                "criterion has no gradient for it; make its layer trainable "
                "or use criterion='l1'.")
        positions.append(index)
    # backend tensors: a NumPy target minus a torch tensor would call numpy()
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
    y = keras.tree.map_structure(keras.ops.convert_to_tensor, y)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        grads = tape.gradient(loss, [trainable[i].value for i in positions])
    elif backend == "jax":
        import jax
        values = [t.value for t in trainable]
        frozen = [t.value for t in model.non_trainable_variables]

        def objective(trainable_values):
            y_pred, _ = model.stateless_call(trainable_values, frozen, x,
                                             training=False)
            return loss_fn(y, y_pred)

        all_grads = jax.grad(objective)(values)
        grads = [all_grads[i] for i in positions]
    elif backend == "torch":
        import torch
        loss = loss_fn(y, model(x, training=False))
        grads = torch.autograd.grad(loss, [trainable[i].value for i in positions])
    else:
        raise ValueError(f"The Taylor criterion has no gradient for the "
                         f"{backend!r} backend; use criterion='l1'.")
    return [keras.ops.convert_to_numpy(g) for g in grads]
