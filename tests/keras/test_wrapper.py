"""prune_low_magnitude / strip_pruning: wrapping, zeros through fit/save/load/strip, patterns, errors."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from tests.keras.helpers import cnn, compile_, mlp, same, snapshot


def kernel_zeros(model) -> list:
    """Zeros of each prunable weight as stored (not through masks), in model order: what must stay zero."""
    return [int(np.sum(keras.ops.convert_to_numpy(v) == 0)) for layer in pk.wrappers(model) for v in layer.pruned]


def test_model_is_cloned_and_original_untouched(data):
    model = mlp()
    before = snapshot(model)
    pruned = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.7, 0, frequency=1))
    assert [type(layer).__name__ for layer in pruned.layers[1:]] == ["PruneLowMagnitude"] * 2
    compile_(pruned).fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    assert same(snapshot(model), before)
    assert pk.sparsity_report(pruned).sparsity == pytest.approx(0.7, abs=0.01)


def test_zeros_stay_zero_through_adamw_weight_decay_save_load_and_strip(data, tmp_path):
    x, y = data
    sched = pk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=16, frequency=4)
    pruned = compile_(pk.prune_low_magnitude(mlp(), sched))
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    report = pk.sparsity_report(pruned)
    assert report.sparsity == pytest.approx(0.8, abs=0.01)
    zeros = kernel_zeros(pruned)
    assert zeros == [r.numel - r.nonzeros for r in report.rows]  # stored weights, not only through masks
    assert min(zeros) > 0
    # more training at the final sparsity (no mask updates): the optimizer's constraint keeps them zero
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    assert kernel_zeros(pruned) == zeros
    pruned.save(tmp_path / "pruned.keras")
    back = keras.models.load_model(tmp_path / "pruned.keras")
    assert kernel_zeros(back) == zeros
    np.testing.assert_allclose(back.predict(x[:8], verbose=0), pruned.predict(x[:8], verbose=0), atol=1e-6)
    compile_(back).fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    assert kernel_zeros(back) == zeros  # resumed training keeps them zero too
    small = pk.strip_pruning(back)
    assert not pk.wrappers(small)
    assert [r.numel - r.nonzeros for r in pk.sparsity_report(small).rows] == zeros
    np.testing.assert_allclose(small.predict(x[:8], verbose=0), back.predict(x[:8], verbose=0), atol=1e-6)
    small.save(tmp_path / "small.keras")
    again = keras.models.load_model(tmp_path / "small.keras")
    assert pk.sparsity_report(again).nonzeros == pk.sparsity_report(small).nonzeros


def test_masks_follow_the_schedule_step_by_step(data):
    sched = pk.PolynomialDecay(0.1, 0.9, begin_step=2, end_step=20, frequency=3)
    pruned = compile_(pk.prune_low_magnitude(mlp(), sched))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):  # runs after UpdatePruningStep's
            w = pk.wrappers(self.model)[0]
            seen.append(1.0 - float(np.mean(keras.ops.convert_to_numpy(w.masks[0]))))

    compile_(pruned).fit(*data, epochs=3, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep(), Record()])
    size = 16 * 32
    expected, current = [], 0.0
    for step in range(1, len(seen) + 1):  # the first batch is step 1, as TF-MOT 0.8.1 counts
        if sched.should_update(step):
            current = 1.0 - pk._masks.kept(size, sched.sparsity_at(step)) / size
        expected.append(current)
    assert seen == pytest.approx(expected, abs=1e-9)


def test_resumed_fit_continues_the_schedule(data):
    sched = pk.ConstantSparsity(0.6, begin_step=10, frequency=100)
    pruned = compile_(pk.prune_low_magnitude(mlp(), sched))
    pruned.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])  # steps 1-8
    assert pk.sparsity_report(pruned).sparsity == 0.0
    compile_(pruned)  # a fresh optimizer: the step count lives in the model, so the schedule goes on
    pruned.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])  # steps 9-16
    assert pk.sparsity_report(pruned).sparsity == pytest.approx(0.6, abs=0.01)
    assert int(keras.ops.convert_to_numpy(pk.wrappers(pruned)[0].pruning_step)) == 16


def test_subclassed_model_wraps_its_layers(data):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            sched = pk.ConstantSparsity(0.5, 0, frequency=1)
            self.hidden = pk.prune_low_magnitude(keras.layers.Dense(32, activation="relu"), sched)
            self.out = pk.prune_low_magnitude(keras.layers.Dense(2), sched, pattern="2:4")
            self.norm = keras.layers.LayerNormalization()

        def call(self, x):
            return self.out(self.norm(self.hidden(x)))

    net = compile_(Net())
    net.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    assert len(pk.wrappers(net)) == 2
    out_kernel = keras.ops.convert_to_numpy(net.out.layer.kernel)
    assert (np.count_nonzero(out_kernel.T.reshape(2, -1, 4), axis=-1) <= 2).all()
    assert pk.sparsity_report(net).sparsity == pytest.approx(0.5, abs=0.01)


def test_conv_nm_groups_run_along_input_channels():
    model = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(4, 3, name="c")])
    pruned = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0), sparsity_m_by_n=(2, 4))
    assert pk.update_masks(pruned, 2) == []  # N:M masks are made once, at step 1, as TF-MOT makes them
    assert pk.update_masks(pruned, 1) == ["prune_low_magnitude_c"]
    k = keras.ops.convert_to_numpy(pruned.layers[0].layer.kernel)  # (3, 3, 8, 4)
    runs = np.moveaxis(k, 2, -1).reshape(3, 3, 4, 2, 4)
    assert (np.count_nonzero(runs, axis=-1) == 2).all()


def test_block_size_is_the_prunekit_block_pattern_transposed():
    model = mlp()
    a = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0), block_size=(1, 4))
    b = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0), pattern="block:4x1")
    a(np.zeros((1, 16), "float32")), b(np.zeros((1, 16), "float32"))
    pk.update_masks(a, 0), pk.update_masks(b, 0)
    ka = keras.ops.convert_to_numpy(a.layers[1].layer.kernel)
    assert np.array_equal(ka, keras.ops.convert_to_numpy(b.layers[1].layer.kernel))
    tiles = (ka != 0).reshape(16, 8, 4)  # (in, out) cut into 1 x 4 runs of outputs
    assert (tiles.all(axis=-1) | ~tiles.any(axis=-1)).all()


def test_global_scope_ranks_layers_together():
    model = mlp()
    # scale the output layer up so that global magnitude ranking keeps more of it than of the hidden one
    model.layers[2].kernel.assign(keras.ops.convert_to_numpy(model.layers[2].kernel) * 10)
    pruned = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.8, 0), scope="global")
    pk.update_masks(pruned, 0)
    report = pk.sparsity_report(pruned)
    assert report.sparsity == pytest.approx(0.8, abs=0.005)
    assert report.rows[1].sparsity < 0.5 < report.rows[0].sparsity


def test_include_exclude_and_known_layers():
    model = cnn()
    pruned = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0), exclude="head")
    assert [w.layer.name for w in pk.wrappers(pruned)] == ["conv"]
    only = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0), include=lambda layer: layer.name == "head")
    assert [w.layer.name for w in pk.wrappers(only)] == ["head"]
    seq = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 8), keras.layers.LSTM(4),
                            keras.layers.Dense(2)])
    p = pk.prune_low_magnitude(seq, pk.ConstantSparsity(0.5, 0))
    pk.update_masks(p, 0)
    assert [len(w.pruned) for w in pk.wrappers(p)] == [1, 2, 1]  # embeddings; kernel + recurrent; kernel
    assert pk.sparsity_report(p).sparsity == pytest.approx(0.5, abs=0.01)


def test_prunable_layer_marks_custom_weights():
    class Scale(keras.layers.Layer, pk.PrunableLayer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 4), initializer="glorot_uniform")

        def call(self, x):
            return x @ self.w

        def get_prunable_weights(self):
            return [self.w]

    layer = pk.prune_low_magnitude(Scale(), pk.ConstantSparsity(0.75, 0))
    inp = keras.Input((8,))
    model = keras.Model(inp, layer(inp))  # symbolic call: Scale has no compute_output_shape of its own
    pk.update_masks(model, 0)
    assert np.count_nonzero(keras.ops.convert_to_numpy(layer.layer.w)) == 8
    whole = pk.prune_low_magnitude(keras.Model(inp, Scale()(inp)), pk.ConstantSparsity(0.75, 0))
    assert len(pk.wrappers(whole)) == 1


class Opaque(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 2))

    def call(self, x):
        return x @ self.w


def bad_calls():
    sched = pk.ConstantSparsity(0.5, 0)
    return {
        "unknown layer": (lambda m: pk.prune_low_magnitude(m, sched), TypeError, "PrunableLayer"),
        "schedule": (lambda m: pk.prune_low_magnitude(m, "poly"), TypeError, "pruning_schedule"),
        "pattern": (lambda m: pk.prune_low_magnitude(m, sched, pattern="3:2"), ValueError, "pattern"),
        "channel": (lambda m: pk.prune_low_magnitude(m, sched, pattern="channel"), ValueError, "channel"),
        "m_by_n": (lambda m: pk.prune_low_magnitude(m, sched, sparsity_m_by_n=(4, 4)), ValueError, "sparsity_m_by_n"),
        "m_by_n length": (lambda m: pk.prune_low_magnitude(m, sched, sparsity_m_by_n=(2,)), TypeError, "sparsity_m_by_n"),
        "block_size length": (lambda m: pk.prune_low_magnitude(m, sched, block_size=(1,)), TypeError, "block_size"),
        "criterion": (lambda m: pk.prune_low_magnitude(m, sched, criterion="taylor"), ValueError, "criterion"),
        "scope": (lambda m: pk.prune_low_magnitude(m, sched, scope="model"), ValueError, "scope"),
        "strip unpruned": (lambda m: pk.strip_pruning(m), ValueError, "never pruned"),
        "callback unpruned": (lambda m: compile_(m).fit(np.zeros((4, 16), "float32"), np.zeros(4, "int64"),
                                                        verbose=0, callbacks=[pk.UpdatePruningStep()]),
                              ValueError, "prune_low_magnitude"),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
def test_bad_input_names_the_argument_and_changes_nothing(case):
    call, error, words = bad_calls()[case]
    inp = keras.Input((16,))
    h = keras.layers.Dense(8, name="d")(inp)
    model = keras.Model(inp, Opaque(name="opaque")(h) if case == "unknown layer" else keras.layers.Dense(2)(h))
    before = snapshot(model)
    with pytest.raises(error, match=words):
        call(model)
    assert same(snapshot(model), before)


def test_schedule_errors_name_the_argument():
    with pytest.raises(ValueError, match="end_step"):
        pk.ConstantSparsity(0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="begin_step"):
        pk.PolynomialDecay(0.0, 0.5, begin_step=10, end_step=10)
    with pytest.raises(ValueError, match="target_sparsity|sparsity"):
        pk.ConstantSparsity(1.0, 0)
    with pytest.raises(ValueError, match="final_sparsity"):
        pk.PolynomialDecay(0.0, -0.1, 0, 10)


def test_structural_errors():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 4), "float32"))
    with pytest.raises(TypeError, match="subclassed"):
        pk.prune_low_magnitude(sub)
    pruned = pk.prune_low_magnitude(mlp())
    with pytest.raises(ValueError, match="once"):
        pk.prune_low_magnitude(pruned)
    with pytest.raises(ValueError, match="never pruned"):
        pk.strip_pruning(pruned)  # wrapped, but no mask was ever computed
    fake = type("Sequential", (), {"__module__": "tf_keras.src.engine.sequential"})()
    with pytest.raises(TypeError, match="Keras 2"):
        pk.prune_low_magnitude(fake)


def test_other_backends_are_refused_before_anything_is_built(monkeypatch):
    model = mlp()
    before = snapshot(model)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0))
    monkeypatch.undo()
    assert same(snapshot(model), before)


def test_a_schedule_resumed_earlier_never_unprunes():
    sched = pk.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=10, frequency=1)
    pruned = pk.prune_low_magnitude(mlp(), sched)
    pruned(np.zeros((1, 16), "float32"))
    pk.update_masks(pruned, 10)
    zeros = pk.sparsity_report(pruned).numel - pk.sparsity_report(pruned).nonzeros
    pk.update_masks(pruned, 1)  # an earlier step asks for less sparsity: what was pruned stays pruned
    assert pk.sparsity_report(pruned).numel - pk.sparsity_report(pruned).nonzeros == zeros


def test_strip_before_the_schedule_ends_warns(data):
    model = keras.Sequential([keras.layers.Dense(8), keras.layers.Dense(2)])  # no Input: built inside fit
    pruned = compile_(pk.prune_low_magnitude(model, pk.PolynomialDecay(0.0, 0.8, 0, 1000, frequency=5)))
    x, y = data
    pruned.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, callbacks=[pk.UpdatePruningStep()])
    assert int(keras.ops.convert_to_numpy(pk.wrappers(pruned)[0].pruning_step)) == 1
    with pytest.warns(UserWarning, match="not reached its final sparsity at step 1"):
        small = pk.strip_pruning(pruned)
    assert pk.sparsity_report(small).sparsity == 0.0


def test_nm_on_a_too_short_input_axis_warns():
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="c")])
    with pytest.warns(UserWarning, match="leaves .* dense"):
        pk.prune_low_magnitude(model, pattern="2:4")


def test_nm_prunes_at_the_first_step_whatever_the_frequency(data):
    pruned = compile_(pk.prune_low_magnitude(mlp(), pk.ConstantSparsity(0.5, 0, frequency=100), pattern="2:4"))
    pruned.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    kernel = keras.ops.convert_to_numpy(pk.wrappers(pruned)[0].layer.kernel)  # (16, 32): runs along the 16 inputs
    assert (np.count_nonzero(kernel.T.reshape(32, 4, 4), axis=-1) == 2).all()


def test_random_criterion_holds_the_target_over_updates():
    pruned = pk.prune_low_magnitude(mlp(), pk.ConstantSparsity(0.5, 0, frequency=1), criterion="random")
    pruned(np.zeros((1, 16), "float32"))
    for step in range(1, 5):
        pk.update_masks(pruned, step)
        assert pk.sparsity_report(pruned).sparsity == pytest.approx(0.5, abs=0.01), step


def test_global_scope_strips_without_a_warning(recwarn):
    pruned = pk.prune_low_magnitude(mlp(), pk.ConstantSparsity(0.8, 0), scope="global")
    pruned(np.zeros((1, 16), "float32"))
    pk.update_masks(pruned, 0)
    pk.strip_pruning(pruned)
    assert not [w for w in recwarn if "final sparsity" in str(w.message)]


def test_ema_optimizer_keeps_the_zeros(data):
    pruned = pk.prune_low_magnitude(mlp(), pk.ConstantSparsity(0.7, 0, frequency=1))
    pruned.compile(keras.optimizers.AdamW(1e-2, use_ema=True, ema_overwrite_frequency=None),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    stored = [keras.ops.convert_to_numpy(v) for w in pk.wrappers(pruned) for v in w.pruned]
    assert [round(float(np.mean(a == 0)), 2) for a in stored] == [0.7, 0.7]


def test_nested_model_prunes_strips_and_keeps_its_weights(data):
    inner = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="inner_d")], name="inner")
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(2, name="top")(inner(inp)))
    x, y = data
    pruned = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.6, 0, frequency=1))
    assert sorted(w.layer.name for w in pk.wrappers(pruned)) == ["inner_d", "top"]
    np.testing.assert_allclose(pruned.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), atol=1e-6)
    compile_(pruned).fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    small = pk.strip_pruning(pruned)
    assert not pk.wrappers(small)
    assert [r.numel - r.nonzeros for r in pk.sparsity_report(small).rows] == [
        r.numel - r.nonzeros for r in pk.sparsity_report(pruned).rows]
    np.testing.assert_allclose(small.predict(x[:4], verbose=0), pruned.predict(x[:4], verbose=0), atol=1e-5)


def test_attention_and_depthwise_layers():
    inp = keras.Input((6, 8))
    att = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(inp, inp)
    model = keras.Model(inp, att)
    pruned = pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0))
    pk.update_masks(pruned, 0)
    (w,) = pk.wrappers(pruned)
    assert len(w.pruned) == 4 and pk.sparsity_report(pruned).sparsity == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="inputs, outputs"):
        pk.prune_low_magnitude(model, pk.ConstantSparsity(0.5, 0), pattern="2:4")
    conv = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.DepthwiseConv2D(3, name="dw"),
                             keras.layers.Conv2D(4, 1, name="pw")])
    assert [w.layer.name for w in pk.wrappers(pk.prune_low_magnitude(conv))] == ["pw"]  # TF-MOT prunes no depthwise


def test_steps_per_execution_is_refused(data):
    pruned = pk.prune_low_magnitude(mlp(), pk.ConstantSparsity(0.5, 0))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=2)
    with pytest.raises(ValueError, match="steps_per_execution"):
        pruned.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
