"""EarlyStopping: the stopping rule on a scripted history, and inside `fit` the epoch it
stops at and the weights it puts back."""

import pytest
import torch

import aetk

from helpers import digits


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _run(values, **kwargs) -> tuple[aetk.EarlyStopping, int]:
    """Feed validation losses one epoch at a time; the epoch it says stop (0: never)."""
    stopper = aetk.EarlyStopping(restore_best=False, **kwargs)
    for epoch, value in enumerate(values, start=1):
        stopper.on_epoch_end(None, epoch, {"val_loss": value})
        if stopper.stop:
            return stopper, epoch
    return stopper, 0


def test_stops_after_patience_epochs_without_improvement() -> None:
    stopper, stopped = _run([5.0, 4.0, 4.5, 4.2, 4.1, 3.0], patience=3)
    assert (stopped, stopper.best_epoch, stopper.best) == (5, 2, 4.0)
    stopper, stopped = _run([5.0, 4.0, 4.5, 3.9, 4.1, 4.2], patience=3)
    assert (stopped, stopper.best_epoch) == (0, 4)  # 3.9 reset the count


def test_improvements_smaller_than_min_delta_do_not_count() -> None:
    stopper, stopped = _run([5.0, 4.95, 4.9, 4.85], patience=2, min_delta=0.1)
    assert (stopped, stopper.best_epoch) == (3, 1)


class _Recorder:
    """The weights after every epoch."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, model, epoch, row) -> None:
        self.states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}


class _Score:
    """A history column whose best (smallest) epoch is the second."""

    def on_epoch_end(self, model, epoch, row) -> None:
        row["score"] = abs(epoch - 2)


@pytest.mark.parametrize("restore_best", [True, False])
def test_fit_stops_early_and_restores_the_best_epoch(restore_best: bool) -> None:
    x, _ = digits("bernoulli", 300)
    model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(32,))
    stopper = aetk.EarlyStopping(patience=2, restore_best=restore_best)
    recorder = _Recorder()
    # a learning rate this large overfits 240 images within a few epochs
    history = aetk.fit(model, x[:240], x[240:], epochs=200, batch_size=20, lr=0.02,
                       progress=False, callbacks=(recorder, stopper))
    stopped = len(history)
    assert stopped < 200 and stopper.stop
    best = int(history["val_loss"].idxmin()) + 1
    assert stopper.best_epoch == best and stopped == best + 2
    expected = recorder.states[best if restore_best else stopped]
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_monitoring_needs_the_column() -> None:
    x, _ = digits("bernoulli", 100)
    model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="give fit validation data"):
        aetk.fit(model, x, epochs=2, batch_size=50, progress=False,
                 callbacks=(aetk.EarlyStopping(),))
    with pytest.raises(ValueError, match="patience"):
        aetk.EarlyStopping(patience=0)


def test_a_stopped_checkpoint_is_final(tmp_path) -> None:
    """Resuming a run that EarlyStopping ended trains no further and returns its weights."""
    x, _ = digits("bernoulli", 300)
    model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(32,))
    kwargs = {"epochs": 200, "batch_size": 20, "lr": 0.02, "progress": False,
              "checkpoint": tmp_path / "run.pt"}
    first = aetk.fit(model, x[:240], x[240:], callbacks=(aetk.EarlyStopping(patience=2),),
                     **kwargs)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    again = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(32,))
    recorder = _Recorder()
    second = aetk.fit(again, x[:240], x[240:], callbacks=(recorder,), **kwargs)
    assert len(first) < 200 and second.equals(first) and not recorder.states
    for k, v in again.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_a_finished_checkpoint_resumes_with_the_best_weights_it_returned(tmp_path) -> None:
    """A run that EarlyStopping did not stop still returns its best epoch's weights; the
    same call again, resumed from its finished checkpoint, returned the last epoch's.
    Asked for more epochs, the run goes on from the last epoch, as it would have."""
    x, _ = digits("bernoulli", 300)
    kwargs = {"batch_size": 64, "lr": 0.05, "progress": False,
              "checkpoint": tmp_path / "run.pt"}

    def run(epochs: int, recorder: _Recorder | None = None):
        torch.manual_seed(0)
        model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2,
                                 hidden=(32,))
        stopper = aetk.EarlyStopping(patience=100, monitor="score")
        aetk.fit(model, x[:250], x[250:], epochs=epochs, **kwargs,
                 callbacks=(_Score(), stopper, *([recorder] if recorder else [])))
        return model, stopper

    recorder = _Recorder()
    first, stopper = run(6, recorder)
    assert stopper.best_epoch == 2
    for k, v in first.state_dict().items():
        assert torch.equal(v, recorder.states[stopper.best_epoch][k]), k
    again, _ = run(6)
    for k, v in again.state_dict().items():
        assert torch.equal(v, recorder.states[stopper.best_epoch][k]), k
    more = _Recorder()
    run(7, more)
    uninterrupted = _Recorder()
    kwargs["checkpoint"] = tmp_path / "other.pt"
    run(7, uninterrupted)
    for k, v in more.states[7].items():
        assert torch.equal(v, uninterrupted.states[7][k]), k


def test_a_finished_checkpoint_resumed_without_callbacks_returns_the_best_weights(
        tmp_path) -> None:
    """The finished checkpoint itself holds the weights the run returned (EarlyStopping's
    best epoch, 2 of 6): resumed with no callbacks (no stopper to put them back at its
    end) the call trains nothing and returns them, not the last epoch's kept to go on
    from."""
    x, _ = digits("bernoulli", 300)
    kwargs = {"epochs": 6, "batch_size": 64, "lr": 0.05, "progress": False,
              "checkpoint": tmp_path / "run.pt"}

    def model():
        torch.manual_seed(0)
        return aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2,
                                hidden=(16,))

    first, recorder = model(), _Recorder()
    stopper = aetk.EarlyStopping(patience=100, monitor="score")
    aetk.fit(first, x[:250], x[250:], callbacks=(_Score(), stopper, recorder), **kwargs)
    assert stopper.best_epoch == 2 and not stopper.stop
    last = recorder.states[6]
    assert any(not torch.equal(v, last[k]) for k, v in first.state_dict().items())
    again = model()
    history = aetk.fit(again, x[:250], x[250:], callbacks=(), **kwargs)
    assert len(history) == 6
    for k, v in again.state_dict().items():
        assert torch.equal(v, first.state_dict()[k]), k


def test_one_instance_serves_several_fits() -> None:
    """A stopper given to a second fit (a loop over models) compared its epochs with the
    first fit's best and, never beating it, put the first model's weights into the second."""
    x, _ = digits("bernoulli", 300)
    stopper = aetk.EarlyStopping(patience=3)
    first = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(16,))
    aetk.fit(first, x[:200], x[200:], epochs=10, batch_size=32, lr=1e-2, progress=False,
             callbacks=[stopper])
    second = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(16,))
    recorder = _Recorder()
    history = aetk.fit(second, x[:200], x[200:], epochs=3, batch_size=32, progress=False,
                       callbacks=[recorder, stopper])
    best = int(history["val_loss"].idxmin()) + 1
    assert stopper.best_epoch == best and stopper.best == history["val_loss"].min()
    for k, v in second.state_dict().items():
        assert torch.equal(v, recorder.states[best][k]), k


class _Interrupt:
    """Ctrl-C at the start of epoch `at`: the checkpoint keeps the epochs before it."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_start(self, model, epoch) -> None:
        if epoch == self.at:
            raise KeyboardInterrupt


def test_a_resumed_run_stops_where_it_would_have(tmp_path) -> None:
    """The checkpoint keeps the stopper's best epoch, count and best weights: resumed after
    an interruption past its best epoch, or after it stopped, the run stops at the same
    epoch with the same `best_epoch` and weights (it counted afresh from the resumed epoch,
    and said best_epoch 0 for a stopped run)."""
    x, _ = digits("bernoulli", 300)

    def run(checkpoint, *extra):
        torch.manual_seed(0)
        model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2,
                                 hidden=(16,))
        stopper = aetk.EarlyStopping(patience=3, monitor="score")
        history = aetk.fit(model, x[:250], x[250:], epochs=10, batch_size=64, lr=0.05,
                           progress=False, checkpoint=checkpoint,
                           callbacks=(_Score(), stopper, *extra))
        return model, stopper, history

    whole, stopper, history = run(tmp_path / "whole.pt")
    assert (len(history), stopper.best_epoch) == (5, 2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut.pt", _Interrupt(4))
    for checkpoint in ("cut.pt", "whole.pt"):  # interrupted past the best epoch; stopped
        resumed, again, history = run(tmp_path / checkpoint)
        assert (len(history), again.best_epoch, again.best, again.stop) == (5, 2, 0, True)
        for k, v in resumed.state_dict().items():
            assert torch.equal(v, whole.state_dict()[k]), k
