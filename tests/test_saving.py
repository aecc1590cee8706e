"""Save and load: teacher, student, adapters, compile options, optimizer state."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import saving
from tests.helpers import mlp, to_numpy


def build(alpha=0.2, temperature=3.0):
    keras.utils.set_random_seed(7)
    distiller = kd.Distiller(mlp(32, "teacher"), mlp(8, "student"))
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=alpha, temperature=temperature,
        feature_losses=[kd.FitNet("teacher_hidden", "student_hidden",
                                  weight=5.0)])
    return distiller


def data():
    rng = np.random.default_rng(0)
    return (rng.random((32, 64)).astype("float32"),
            rng.integers(0, 10, 32).astype("int32"))


def test_save_load_restores_everything_and_fit_continues(tmp_path):
    x, y = data()
    distiller = build()
    distiller.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "d.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, kd.Distiller)
    assert loaded.alpha == distiller.alpha == pytest.approx(0.2)
    assert loaded.temperature == pytest.approx(3.0)
    hint = loaded.feature_objectives[0]
    assert isinstance(hint, kd.FitNet) and hint.weight == 5.0
    assert hint.adapter is not None
    for a, b in zip(distiller.feature_objectives[0].adapter.weights,
                    hint.adapter.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for a, b in zip(distiller.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # the teacher is still frozen after loading
    assert not {id(v) for v in loaded.teacher.weights} & {
        id(v) for v in loaded.trainable_weights}
    # optimizer state (moments, iteration count) came back
    assert int(to_numpy(loaded.optimizer.iterations)) == 4
    for a, b in zip(distiller.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))

    # fit continues exactly as the uninterrupted model does
    h1 = distiller.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    h2 = loaded.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for key in h1.history:
        np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=1e-5)
    np.testing.assert_allclose(distiller.predict(x, verbose=0),
                               loaded.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-6)


def _weight_groups(path):
    """The groups of a weights file (or of a .keras file's weights)."""
    import zipfile

    import h5py

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            path = archive.extract("model.weights.h5",
                                   os.path.dirname(path))
    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    return names


def test_models_own_optimizers_stay_out_of_the_distillers_files(tmp_path):
    """A teacher (and student) compiled and trained on their own keep their
    optimizers, but the Distiller's files hold only its own: no teacher's
    Adam slots, no warning about skipped optimizer variables on load."""
    x, y = data()
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher, student = mlp(32, "teacher"), mlp(8, "student")
    for model in (teacher, student):
        model.compile(optimizer="adam", loss=sce)
        model.fit(x, y, epochs=1, verbose=0)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer="adam", loss=sce)
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = os.path.join(tmp_path, "d.keras")
    distiller.save(path)
    weights_path = os.path.join(tmp_path, "d.weights.h5")
    distiller.save_weights(weights_path)
    for file in (path, weights_path):
        groups = {n for n in _weight_groups(file) if n.endswith("optimizer")}
        assert groups == {"optimizer"}, file
    # The models' own optimizers are untouched.
    assert len(teacher.optimizer.variables) > 2
    assert len(student.optimizer.variables) > 2
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Ss]kipping variable")
        loaded = keras.models.load_model(path)
        twin = kd.Distiller(teacher, mlp(8, "student"))
        twin.compile(optimizer="adam", loss=sce)
        twin.fit(x, y, epochs=1, batch_size=8, verbose=0)
        twin.load_weights(weights_path)
    for restored in (loaded, twin):
        for a, b in zip(distiller.weights, restored.weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
        for a, b in zip(distiller.optimizer.variables,
                        restored.optimizer.variables):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # The teacher comes back uncompiled: its compile options were left out.
    assert getattr(loaded.teacher, "optimizer", None) is None


def test_student_saves_and_loads_alone(tmp_path):
    x, y = data()
    distiller = build()
    distiller.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "student.keras")
    distiller.student.save(path)
    student = keras.models.load_model(path)
    assert not isinstance(student, kd.Distiller)
    assert {layer.name for layer in student.layers}.isdisjoint(
        {layer.name for layer in distiller.teacher.layers})
    np.testing.assert_allclose(student.predict(x, verbose=0),
                               distiller.predict(x, verbose=0), rtol=1e-6)
    # much smaller than the whole distiller file
    distiller.save(os.path.join(tmp_path, "d.keras"))
    assert os.path.getsize(path) < os.path.getsize(
        os.path.join(tmp_path, "d.keras"))


def test_config_round_trip_of_objectives():
    hint = kd.FitNet("a", "b", weight=2.0, adapter="always", resize=True,
                     name="h")
    again = kd.FitNet.from_config(hint.get_config())
    assert again.get_config() == hint.get_config()
    objective = kd.KD(temperature=2.0, teacher_weights=[1, 2])
    assert kd.KD.from_config(objective.get_config()).get_config() == \
        objective.get_config()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask_like_distiller_save(tmp_path, umask):
    from keras_kd import saving

    previous = os.umask(umask)
    try:
        distiller = build()
        distiller.save(str(tmp_path / "d.keras"))
        saving.save_atomically(distiller.student, str(tmp_path / "s.keras"))
        callback = kd.callbacks.StudentCheckpoint(str(tmp_path / "c.keras"),
                                                  monitor="loss")
        callback.set_model(distiller)
        callback.on_epoch_end(0, {"loss": 1.0})
        with saving.replacing(str(tmp_path / "dir"), directory=True) as tmp:
            open(os.path.join(tmp, "f"), "w").close()
    finally:
        os.umask(previous)
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777  # noqa: E731
    assert mode("d.keras") == 0o666 & ~umask   # what Keras's save gives
    assert mode("s.keras") == mode("d.keras")
    assert mode("c.keras") == mode("d.keras")
    assert mode("dir") == 0o777 & ~umask


def test_leftovers_of_a_killed_write_are_cleaned_or_recovered(tmp_path):
    from keras_kd import saving

    # A file write killed before its rename left its temporary file.
    target = tmp_path / "student.keras"
    target.write_bytes(b"good")
    stale = tmp_path / ".student.keras.ab12cd34.tmp.keras"
    stale.write_bytes(b"half")
    other = tmp_path / ".student.keras.bak.ab12cd34.tmp.keras"  # not ours
    other.write_bytes(b"keep")
    with saving.replacing(str(target), suffix=".keras") as tmp:
        open(tmp, "wb").write(b"new")
    assert target.read_bytes() == b"new"
    assert not stale.exists() and other.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        other.name, target.name]

    # A directory write killed after moving the old directory aside and
    # before moving the new one in: the old one is the last good copy.
    export = tmp_path / "saved"
    backup = tmp_path / ".saved.old.zz99yy88"
    backup.mkdir()
    (backup / "model.pb").write_text("last good")
    half = tmp_path / ".saved.q1w2e3r4.tmp"
    half.mkdir()
    with pytest.raises(RuntimeError):
        with saving.replacing(str(export), directory=True):
            assert (export / "model.pb").read_text() == "last good"
            raise RuntimeError("this write fails too")
    assert (export / "model.pb").read_text() == "last good"
    assert not backup.exists() and not half.exists()


def test_a_truncated_keras_file_is_named_as_corrupt_not_missing(tmp_path):
    student = mlp(8, "student")
    good = tmp_path / "student.keras"
    student.save(good)
    loaded = saving.load_model(good)
    np.testing.assert_array_equal(to_numpy(loaded.weights[0]),
                                  to_numpy(student.weights[0]))
    data = good.read_bytes()
    bad = tmp_path / "copy.keras"
    bad.write_bytes(data[: len(data) // 2])  # a copy that did not finish
    with pytest.raises(ValueError, match=r"copy.keras.*is not a readable "
                       r"\.keras archive.*truncated or corrupt.*model.save"):
        saving.load_model(bad)
    with pytest.raises(FileNotFoundError, match="No such model file"):
        saving.load_model(tmp_path / "absent.keras")
