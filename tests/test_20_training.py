"""Lesson 20: minillm.training (batches, loss estimate, AdamW groups, schedule, device,
checkpoints, Trainer with exact resume, DDP) and the command line `python -m minillm train|sample`.

References: PyTorch's clip_grad_norm_ and nn.LayerNorm, a full-batch step for accumulation,
an uninterrupted run for resume (bit-for-bit), two gloo processes for DDP (identical weights).
"""
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from exercise_tools import assert_checks_work
from minillm.corpus import tiny_shakespeare
from minillm.layer_norm import LayerNorm
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_dict
from minillm.training import (CHECKPOINT_FORMAT, PRESETS, CheckpointError, LiveLossPlot, RunDirectoryLocked, RunLock,
                              TokenFileError, Trainer, TrainConfig, TrainingDiverged, autocast_dtype, estimate_loss,
                              fuse_layer_norms_, get_batch, load_checkpoint, load_model, lr_at, make_optimizer,
                              nonfinite_tensors, param_groups, pick_device, plot_losses, preset, read_token_file,
                              remove_stale_parts, safe_cut, save_checkpoint, scan_text, text_chunks, token_dtype,
                              token_file, token_file_path, train_bpe, write_loss_csv, write_token_file)

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(block_size=16, vocab_size=20, n_layer=1, n_head=2, n_embd=16)
FAST = TrainConfig(batch_size=4, max_steps=12, learning_rate=3e-3, min_lr=3e-4, warmup_steps=2,
                   eval_interval=4, eval_iters=2, sample_interval=0)


def ids(n=3000, V=20, seed=0):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def equal_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tiny_trainer(run_dir=None, config=FAST, model_config=TINY, seed=0, **kw):
    torch.manual_seed(seed)
    data = ids()
    return Trainer(GPT(model_config), data[:2500], data[2500:], config, run_dir=run_dir, device="cpu",
                   verbose=False, **kw)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("20_training", {
        0: "xy = data[starts[:, None] + torch.arange(block_size + 1)]\nreturn xy[:, :-1], xy[:, :-1] + 1",   # y = x + 1
        1: "if step < warmup_steps:\n    return max_lr * (step + 1) / warmup_steps\n"
           "if step >= decay_steps:\n    return min_lr\n"
           "return max_lr - (max_lr - min_lr) * (step - warmup_steps) / (decay_steps - warmup_steps)",
        2: "return {name for name, p in model.named_parameters() if p.dim() >= 1}",
        3: "for xm, ym in zip(x.chunk(n_micro), y.chunk(n_micro)):\n    model(xm, ym)[1].backward()\n"
           "optimizer.step()\noptimizer.zero_grad()\nreturn model(x, y)[1].item()",
    })


# ----------------------------------------------------------------------------- batches and estimates

def test_get_batch_windows_are_shifted_by_one_and_follow_the_seed():
    data = torch.arange(100, 200)
    x, y = get_batch(data, 7, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (7, 10)
    assert torch.equal(y, x + 1)                                   # consecutive ids: the next is one more
    assert torch.all(x[:, 0] >= 100) and torch.all(y[:, -1] <= 199)
    x2, _ = get_batch(data, 7, 10, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    x3, _ = get_batch(data, 7, 10, torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)


def test_get_batch_reaches_the_last_window_and_no_further():
    data = torch.arange(5)                                         # block 4: only one window, starting at 0
    x, y = get_batch(data, 3, 4)
    assert torch.equal(x, torch.tensor([[0, 1, 2, 3]] * 3)) and torch.equal(y, torch.tensor([[1, 2, 3, 4]] * 3))


@pytest.mark.parametrize("bad", [torch.arange(4), torch.arange(12).view(3, 4), [1, 2, 3, 4, 5, 6]])
def test_get_batch_rejects_short_or_wrong_data(bad):
    with pytest.raises(ValueError, match="block_size=4"):
        get_batch(bad, 2, 4)


def test_estimate_loss_uses_fixed_batches_and_restores_the_mode():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(TINY, dropout=0.5))
    splits = {"train": ids(seed=1), "val": ids(seed=2)}
    a = estimate_loss(model, splits, 4, 16, 3, seed=5)
    assert a == estimate_loss(model, splits, 4, 16, 3, seed=5)    # eval mode: no dropout, same batches
    assert set(a) == {"train", "val"} and all(abs(v - math.log(20)) < 0.3 for v in a.values())
    assert model.training
    model.eval()
    estimate_loss(model, splits, 4, 16, 1)
    assert not model.training
    g = torch.Generator().manual_seed(5)
    manual = sum(model(*get_batch(splits["val"], 4, 16, g))[1].item() for _ in range(3)) / 3
    assert a["val"] == pytest.approx(manual, abs=1e-6)


# ----------------------------------------------------------------------------- optimizer and schedule

def test_param_groups_decay_matrices_only_and_hold_every_parameter_once():
    model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=2, n_head=2, n_embd=8))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    listed = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters()) and len(set(listed)) == len(listed)
    assert len(decay["params"]) == 2 + 4 * 2                       # token (= head), position, 4 matrices per block


def test_make_optimizer_is_adamw_with_the_two_groups():
    model = GPT(TINY)
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[1]["weight_decay"] == 0.0


def test_lr_schedule_values_and_shape():
    assert lr_at(0, 1e-3, 1e-4, 100, 1000) == pytest.approx(1e-5)
    assert lr_at(99, 1e-3, 1e-4, 100, 1000) == pytest.approx(1e-3)
    assert lr_at(550, 1e-3, 1e-4, 100, 1000) == pytest.approx(5.5e-4)
    assert lr_at(1000, 1e-3, 1e-4, 100, 1000) == lr_at(10**6, 1e-3, 1e-4, 100, 1000) == 1e-4
    rates = [lr_at(s, 1e-3, 1e-4, 100, 1000) for s in range(1100)]
    assert all(a < b for a, b in zip(rates[:99], rates[1:100]))    # rises through the warm-up
    assert all(a >= b for a, b in zip(rates[99:], rates[100:]))    # never rises after it
    assert lr_at(0, 0.1, 0.0, 0, 10) == pytest.approx(0.1)          # no warm-up: the peak at once


# ----------------------------------------------------------------------------- device and kernels

def test_pick_device_prints_its_choice_and_refuses_what_is_not_there(capsys):
    assert pick_device("cpu") == torch.device("cpu")
    assert "Training on cpu" in capsys.readouterr().out
    assert pick_device(verbose=False).type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="'tpu'"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="not a device"):
        pick_device("gpu please")


def test_autocast_dtype_is_float32_on_cpu_and_checks_its_argument():
    assert autocast_dtype("cpu") is None and autocast_dtype("cpu", "fp32") is None
    with pytest.raises(ValueError, match="'fp16'"):
        autocast_dtype("cpu", "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16"):
            autocast_dtype("cpu", "bf16")


@pytest.mark.parametrize("bias", [True, False])
def test_fused_layer_norms_compute_the_same_and_keep_the_state_dict(bias):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, n_layer=3, bias=bias)
    ours = GPT(config)
    fused = GPT(config)
    fused.load_state_dict(ours.state_dict())
    assert fuse_layer_norms_(fused) == 2 * 3 + 1
    assert not any(isinstance(m, LayerNorm) for m in fused.modules())
    assert list(fused.state_dict()) == list(ours.state_dict())
    x = torch.randint(0, 20, (3, 16))
    (la, loss_a), (lb, loss_b) = ours(x, x), fused(x, x)
    loss_a.backward(), loss_b.backward()
    assert torch.allclose(la, lb, atol=1e-5)
    assert all(torch.allclose(p.grad, q.grad, atol=1e-5) for p, q in zip(ours.parameters(), fused.parameters()))
    ln = fused.stack.h[0].ln_1                                    # the same Parameter objects as before the swap
    assert ln.weight is dict(fused.named_parameters())["stack.h.0.ln_1.weight"]


# ----------------------------------------------------------------------------- config and presets

@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("max_steps", -1), ("grad_accum_steps", 1.5), ("eval_iters", True), ("learning_rate", 0),
    ("learning_rate", float("nan")), ("min_lr", -1e-4), ("beta2", 1.0), ("grad_clip", -1.0), ("warmup_steps", -2),
    ("precision", "fp16"), ("compile", "yes")])
def test_train_config_names_the_bad_field_and_value(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig: {field} ") as error:
        TrainConfig(**{field: value})
    assert repr(value) in str(error.value)


def test_train_config_relations():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(learning_rate=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=100, warmup_steps=100)


def test_presets(monkeypatch):
    gpu_model, gpu_train = preset("gpu", 65)
    assert (gpu_model.n_layer, gpu_model.n_head, gpu_model.n_embd, gpu_model.block_size) == (6, 6, 384, 256)
    assert gpu_train.batch_size == 64 and gpu_model.vocab_size == 65
    cpu_model, cpu_train = preset("cpu", 100)
    assert cpu_model.vocab_size == 100 and cpu_model.n_embd < gpu_model.n_embd
    monkeypatch.setenv("MINILLM_QUICK", "1")
    assert preset("auto", 65) == preset("quick", 65)
    monkeypatch.delenv("MINILLM_QUICK")
    assert preset("auto", 65) == preset("gpu" if torch.cuda.is_available() else "cpu", 65)
    with pytest.raises(ValueError, match="'huge'"):
        preset("huge", 65)
    assert set(PRESETS) == {"gpu", "cpu", "quick"}


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_keeps_everything(tmp_path):
    torch.manual_seed(0)
    model = GPT(TINY)
    opt = make_optimizer(model, 1e-3, 0.1)
    model(*get_batch(ids(), 2, 16))[1].backward()
    opt.step()
    tok = CharTokenizer("abcdefghijklmnopqrst")
    path = save_checkpoint(tmp_path / "sub" / "c.pt", model, opt, 7, FAST, tok, {"torch": torch.get_rng_state()},
                           [{"step": 0, "train_loss": 3.0, "val_loss": 3.1}])
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == 7 and ckpt["train_config"]["max_steps"] == 12
    assert ckpt["history"][0]["val_loss"] == 3.1 and torch.equal(ckpt["rng"]["torch"], torch.get_rng_state())
    assert ckpt["timing"] == {}
    loaded, loaded_tok = load_model(path)
    assert equal_weights(weights(loaded), weights(model)) and not loaded.training
    assert loaded_tok.encode("cab") == tok.encode("cab")
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]        # no temporary file left behind


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model = GPT(TINY)
    path = save_checkpoint(tmp_path / "c.pt", model, step=1)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = GPT(TINY)
    good = save_checkpoint(tmp_path / "good.pt", model)
    raw = good.read_bytes()
    cases = {
        "truncated.pt": (lambda p: p.write_bytes(raw[: len(raw) // 2]), "truncated or damaged"),
        "empty.pt": (lambda p: p.write_bytes(b""), "is empty"),
        "text.pt": (lambda p: p.write_text("hello"), r"not a minillm checkpoint \(damaged or foreign\)"),
        "random.pt": (lambda p: p.write_bytes(bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).tolist())),
                      r"not a minillm checkpoint \(damaged or foreign\)"),
        "bare.pt": (lambda p: torch.save(model.state_dict(), p), "not a minillm checkpoint"),
        "list.pt": (lambda p: torch.save([1, 2], p), "not a minillm checkpoint"),
        "code.pt": (lambda p: torch.save({"format": CHECKPOINT_FORMAT, "x": Path(".")}, p), "can run code"),
        "future.pt": (lambda p: torch.save({"format": CHECKPOINT_FORMAT, "version": 99}, p), "version 99"),
        "no_payload.pt": (lambda p: torch.save({"format": CHECKPOINT_FORMAT, "version": 2}, p), "payload"),
    }
    for name, (make, message) in cases.items():
        make(tmp_path / name)
        with pytest.raises(CheckpointError, match=message) as caught:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(caught.value)
        if name != "code.pt":
            assert "run code" not in str(caught.value), name     # random bytes are damaged, not dangerous
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    assert issubclass(CheckpointError, ValueError)


# ----------------------------------------------------------------------------- the trainer

def test_trainer_learns_and_writes_its_run_directory(tmp_path):
    config = dataclasses.replace(FAST, max_steps=100, eval_interval=50, eval_iters=4, sample_interval=50, sample_tokens=10,
                                 learning_rate=1e-2, min_lr=1e-3)
    tok = CharTokenizer("abcdefghijklmnopqrst")
    data = torch.tensor(tok.encode(("abcdefghijklmnopqrst" * 150)))          # a text it can learn: the alphabet
    torch.manual_seed(0)
    trainer = Trainer(GPT(TINY), data[:2500], data[2500:], config, tok, run_dir=tmp_path, device="cpu", verbose=True)
    history = trainer.fit()
    assert [row["step"] for row in history] == [0, 50, 100]
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 1.0
    assert history[-1]["tokens"] == 100 * 4 * 16 and trainer.tokens_per_second > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "best.pt", "checkpoint.pt", "loss.csv", "samples.txt"]
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 100 and load_checkpoint(tmp_path / "best.pt")["optimizer"] is None
    rows = list(csv.DictReader((tmp_path / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 50, 100] and float(rows[-1]["val_loss"]) == pytest.approx(history[-1]["val_loss"])
    assert "=== step 100 ===" in (tmp_path / "samples.txt").read_text()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 100 and ckpt["timing"]["train_seconds"] == trainer.train_seconds
    plot_losses(ckpt["history"], path=tmp_path / "loss.png")             # the saved history plots as it is
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_trainer_rejects_bad_input():
    data = ids()
    with pytest.raises(ValueError, match="train_data .*block_size=16"):
        Trainer(GPT(TINY), data[:10], data, FAST, device="cpu", verbose=False)
    with pytest.raises(ValueError, match="val_data must hold integer"):
        Trainer(GPT(TINY), data, data.float(), FAST, device="cpu", verbose=False)
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(GPT(TINY), data, data, {"max_steps": 3}, device="cpu", verbose=False)
    with pytest.raises(TypeError, match="minillm GPT"):
        Trainer(nn.Linear(2, 2), data, data, FAST, device="cpu", verbose=False)


def test_samples_and_evaluations_do_not_change_the_training():
    """A run that samples and evaluates often ends with the same weights as one that does neither."""
    tok = CharTokenizer("abcdefghijklmnopqrst")
    quiet = tiny_trainer(config=dataclasses.replace(FAST, eval_interval=100), model_config=dataclasses.replace(TINY, dropout=0.2))
    quiet.fit()
    chatty = tiny_trainer(config=dataclasses.replace(FAST, eval_interval=1, sample_interval=3),
                          model_config=dataclasses.replace(TINY, dropout=0.2))
    chatty.tokenizer, chatty.verbose = tok, True
    chatty.fit()
    assert len(chatty.samples) == 4
    assert equal_weights(weights(quiet.model), weights(chatty.model))


def test_gradient_accumulation_equals_the_full_batch():
    # in float64: the key projection's bias gets a gradient that is pure rounding noise (softmax ignores
    # a constant added to every score), and AdamW divides that noise by its own size, so in float32 the
    # two runs drift apart in that bias by ~1e-6, in a direction that depends on the CPU's BLAS
    full = tiny_trainer(config=dataclasses.replace(FAST, batch_size=8))
    full.model.double()
    full.fit()
    accumulated = tiny_trainer(config=dataclasses.replace(FAST, batch_size=4, grad_accum_steps=2))
    accumulated.model.double()
    accumulated.fit()                                # draws the same 8 windows per step, in two halves
    a, b = weights(full.model), weights(accumulated.model)
    assert all(a[k].dtype == torch.float64 and torch.allclose(a[k], b[k], rtol=0, atol=1e-10) for k in a)
    assert accumulated.tokens_per_step == full.tokens_per_step == 8 * 16


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "request"])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, stop):
    """Interrupt a CPU run (a real SIGINT or SIGTERM, or request_stop), resume it from its
    checkpoint in a fresh Trainer: the final weights equal those of an uninterrupted run, bit for bit."""
    config = dataclasses.replace(FAST, max_steps=30, eval_interval=10)
    model_config = dataclasses.replace(TINY, dropout=0.1)           # dropout: the global RNG must be restored too
    straight = tiny_trainer(tmp_path / "straight", config, model_config)
    straight.fit()

    def interrupt(trainer, loss):
        if trainer.step == 13:
            os.kill(os.getpid(), getattr(signal, stop)) if stop != "request" else trainer.request_stop()
    stopped = tiny_trainer(tmp_path / "stopped", config, model_config, callbacks=[interrupt])
    old_handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopped.fit()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == old_handlers   # put back
    assert stopped.step == 13 and load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["step"] == 13
    assert stopped.stop_signal == (getattr(signal, stop) if stop != "request" else None)

    torch.manual_seed(999)                                          # a different global RNG state before resuming
    data = ids()
    resumed = Trainer.resume(tmp_path / "stopped" / "checkpoint.pt", data[:2500], data[2500:], device="cpu",
                             verbose=False)
    assert resumed.step == 13 and resumed.config == config and resumed.run_dir == tmp_path / "stopped"
    resumed.fit()
    assert resumed.step == 30
    assert equal_weights(weights(straight.model), weights(resumed.model))
    straight_opt = straight.optimizer.state_dict()["state"]
    resumed_opt = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(straight_opt[i]["exp_avg_sq"], resumed_opt[i]["exp_avg_sq"]) for i in straight_opt)
    assert [r["step"] for r in resumed.history] == [0, 10, 13, 20, 30]
    straight_val = {r["step"]: r["val_loss"] for r in straight.history}
    assert all(straight_val[r["step"]] == r["val_loss"] for r in resumed.history if r["step"] in straight_val)


def test_resume_can_extend_a_finished_run(tmp_path):
    first = tiny_trainer(tmp_path)
    first.fit()
    data = ids()
    more = Trainer.resume(tmp_path / "checkpoint.pt", data[:2500], data[2500:], device="cpu", verbose=False,
                          max_steps=20)
    assert more.step == 12 and more.config.max_steps == 20
    more.fit()
    assert more.step == 20 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 20


def test_live_loss_plot_draws_in_a_notebook_and_write_loss_csv(tmp_path, monkeypatch):
    shown = []

    class Handle:
        def update(self, fig):
            shown.append("update")
    import IPython.display
    monkeypatch.setattr(IPython.display, "display", lambda fig, display_id: shown.append("display") or Handle())
    trainer = tiny_trainer(callbacks=[LiveLossPlot()])
    trainer.fit()
    assert shown == ["display"] + ["update"] * (len(trainer.history) - 1)
    write_loss_csv(tmp_path / "l.csv", trainer.history)
    assert (tmp_path / "l.csv").read_text().splitlines()[0] == "step,train_loss,val_loss,lr,tokens,seconds"


# ----------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import sys
import torch
from minillm.model import GPT, GPTConfig
from minillm.training import Trainer, TrainConfig

out, mode = sys.argv[1], sys.argv[2]          # mode: straight (8 steps), first (stopped after 3), resume (the rest)
data = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(0))
if mode == "resume":
    trainer = Trainer.resume(out + "/first/checkpoint.pt", data[:2500], data[2500:], verbose=False)
else:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=20, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    config = TrainConfig(batch_size=4, max_steps=8, warmup_steps=1, eval_interval=4, eval_iters=1, sample_interval=0)
    stop = [lambda t, loss: t.step == 3 and t.request_stop()] if mode == "first" else []
    trainer = Trainer(model, data[:2500], data[2500:], config, run_dir=f"{out}/{mode}", verbose=False, callbacks=stop)
trainer.fit()
torch.save({"rank": trainer.rank, "world": trainer.world_size, "weights": dict(trainer.model.state_dict())},
           f"{out}/{mode}-rank{trainer.rank}.pt")
trainer.close()
"""


def torchrun_two(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_gloo_processes_end_with_identical_weights_and_resume_exactly(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    torchrun_two(script, tmp_path, "straight")
    ranks = [torch.load(tmp_path / f"straight-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    assert equal_weights(ranks[0]["weights"], ranks[1]["weights"])
    assert load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["step"] == 8   # written once, by rank 0

    # 3 steps and a stop, then a resume in two fresh processes: the weights of the straight 8-step run
    torchrun_two(script, tmp_path, "first")
    assert load_checkpoint(tmp_path / "first" / "checkpoint.pt")["step"] == 3
    rng = load_checkpoint(tmp_path / "first" / "checkpoint.pt")["rng"]
    assert len(rng["per_rank"]) == 2 and not torch.equal(rng["per_rank"][0]["batches"], rng["per_rank"][1]["batches"])
    torchrun_two(script, tmp_path, "resume")
    resumed = torch.load(tmp_path / "resume-rank1.pt", weights_only=True)
    assert equal_weights(resumed["weights"], ranks[1]["weights"])

    # the two processes drew different batches: one process alone (rank 0's batches only) ends elsewhere
    torch.manual_seed(0)
    data = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(0))
    alone = Trainer(GPT(dataclasses.replace(TINY, dropout=0.1)), data[:2500], data[2500:],
                    TrainConfig(batch_size=4, max_steps=8, warmup_steps=1, eval_interval=4, eval_iters=1,
                                sample_interval=0), device="cpu", verbose=False)
    alone.fit()
    assert not equal_weights(weights(alone.model), ranks[0]["weights"])


# ----------------------------------------------------------------------------- command line and example

def minillm_cli(*args, cwd=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minillm", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(tiny_shakespeare()[:30_000], encoding="utf-8")
    return path


def test_cli_help_explains_every_option():
    done = minillm_cli("train", "--help")
    assert done.returncode == 0
    for option in ["--data", "--tokenizer", "--vocab-size", "--out", "--preset", "--resume", "--device", "--compile",
                   "--n-layer", "--n-head", "--n-embd", "--block-size", "--dropout", "--batch-size", "--grad-accum",
                   "--max-steps", "--lr", "--min-lr", "--warmup-steps", "--weight-decay", "--grad-clip",
                   "--eval-interval", "--eval-iters", "--sample-interval", "--seed", "--precision", "--val-fraction"]:
        assert option in done.stdout, option
    sample_help = minillm_cli("sample", "--help").stdout
    for option in ["--out", "--checkpoint", "--prompt", "--tokens", "--temperature", "--top-k", "--top-p", "--seed"]:
        assert option in sample_help, option


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_cli_trains_resumes_and_samples(tmp_path, small_text, tokenizer):
    out = tmp_path / "run"
    done = minillm_cli("train", "--data", str(small_text), "--tokenizer", tokenizer, "--vocab-size", "300",
                       "--out", str(out), "--preset", "quick", "--max-steps", "6", "--eval-interval", "3",
                       "--device", "cpu")
    assert done.returncode == 0, done.stderr
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 6 and ckpt["tokenizer"]["format"] == f"minillm-{tokenizer}-tokenizer"
    run = json.loads((out / "run.json").read_text())
    assert run["data"] == str(small_text.resolve()) and run["tokenizer"] == tokenizer
    assert run["data_sha256"] == hashlib.sha256(small_text.read_bytes()).hexdigest()
    assert run["model"] == ckpt["model_config"] and run["train"] == ckpt["train_config"]
    tokens = token_file_path(out, run["data_sha256"], tokenizer_from_dict(ckpt["tokenizer"]))
    assert sorted(p.name for p in out.iterdir()) == sorted([".lock", "best.pt", "checkpoint.pt", "loss.csv", "loss.png",
                                                            "run.json", "samples.txt", tokens.name,
                                                            tokens.with_suffix(".json").name])
    assert f"tokens written to {tokens}" in done.stdout
    written = tokens.stat().st_mtime_ns

    again = minillm_cli("train", "--data", str(small_text), "--out", str(out), "--preset", "quick")
    assert again.returncode == 2 and "--resume" in again.stderr and load_checkpoint(out / "checkpoint.pt")["step"] == 6

    more = minillm_cli("train", "--out", str(out), "--resume", "--max-steps", "9", "--device", "cpu")
    assert more.returncode == 0, more.stderr
    assert "Resuming" in more.stdout and load_checkpoint(out / "checkpoint.pt")["step"] == 9
    assert f"tokens from {tokens}" in more.stdout and tokens.stat().st_mtime_ns == written   # the cache, reused

    sample = minillm_cli("sample", "--out", str(out), "--prompt", "First", "--tokens", "20", "--seed", "3")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("First")
    assert sample.stdout == minillm_cli("sample", "--out", str(out), "--prompt", "First", "--tokens", "20",
                                        "--seed", "3").stdout
    if tokenizer == "bpe":                                     # bytes: any prompt encodes, café too
        cafe = minillm_cli("sample", "--out", str(out), "--prompt", "caf\u00e9\\n\\u00e0", "--escapes", "--tokens", "5")
        assert cafe.returncode == 0 and cafe.stdout.startswith("caf\u00e9\n\u00e0"), (cafe.stdout, cafe.stderr)


def test_cli_errors_name_the_problem(tmp_path):
    missing = minillm_cli("train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    assert "not UTF-8" in minillm_cli("train", "--data", str(binary), "--out", str(tmp_path / "r")).stderr
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    done = minillm_cli("train", "--data", str(short), "--out", str(tmp_path / "r"), "--preset", "quick")
    assert done.returncode == 2 and "too few" in done.stderr
    bad = minillm_cli("train", "--data", str(short), "--out", str(tmp_path / "r"), "--preset", "quick", "--lr", "-1")
    assert bad.returncode == 2 and "--lr must be" in bad.stderr and "-1" in bad.stderr
    nothing = minillm_cli("sample", "--out", str(tmp_path / "empty"))
    assert nothing.returncode == 2 and "no checkpoint at" in nothing.stderr
    no_run = minillm_cli("train", "--out", str(tmp_path / "empty"), "--resume")
    assert no_run.returncode == 2 and "checkpoint.pt" in no_run.stderr


def test_example_script_trains_on_a_text_of_ones_own(tmp_path, small_text):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "train_on_my_text.py"), str(small_text),
                           "--steps", "8", "--out", str(tmp_path / "run"), "--prompt", "First"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "validation loss" in done.stdout and "First" in done.stdout
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 8


# ----------------------------------------------------------------------------- faults and bad input

def write_v1_checkpoint(path, model, **changes):
    """A checkpoint in the version-1 layout (no checksum), which load_checkpoint still reads: a
    way to write files that save_checkpoint refuses to write (nan weights, a config that does not fit)."""
    ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "model_config": dataclasses.asdict(model.config),
            "model": model.state_dict(), "optimizer": None, "step": 1, "train_config": dataclasses.asdict(FAST),
            "tokenizer": CharTokenizer("abcdefghijklmnopqrst").to_dict(), "rng": None, "history": [], "timing": {}}
    ckpt.update(changes)
    torch.save(ckpt, path)
    return path


def test_a_flipped_bit_is_caught_or_harmless(tmp_path):
    """Flip one bit at 300 places of a checkpoint: each copy either fails to load with a
    CheckpointError or loads exactly what was saved (a bit in zip padding). Flips inside the
    weights are caught by the SHA-256, which a version-1 file (no checksum) would miss."""
    torch.manual_seed(0)
    model = GPT(TINY)
    raw = save_checkpoint(tmp_path / "good.pt", model, step=5).read_bytes()
    expected = weights(model)
    rng = torch.Generator().manual_seed(0)
    caught = by_checksum = 0
    for position in torch.randint(0, len(raw), (300,), generator=rng).tolist():
        damaged = bytearray(raw)
        damaged[position] ^= 1 << (position % 8)
        (tmp_path / "bad.pt").write_bytes(bytes(damaged))
        try:
            ckpt = load_checkpoint(tmp_path / "bad.pt")
        except CheckpointError as e:
            caught += 1
            by_checksum += "SHA-256" in str(e)
        else:
            assert ckpt["step"] == 5 and equal_weights(ckpt["model"], expected), f"bit {position} loaded silently"
    assert caught >= 250 and by_checksum >= 150, (caught, by_checksum)   # 290 and 185 when written


def test_version_1_checkpoints_still_load(tmp_path):
    model = GPT(TINY)
    loaded, tok = load_model(write_v1_checkpoint(tmp_path / "v1.pt", model))
    assert equal_weights(weights(loaded), weights(model)) and tok.vocab_size == 20


def test_non_finite_weights_are_never_saved_nor_loaded(tmp_path):
    model = GPT(TINY)
    good = save_checkpoint(tmp_path / "c.pt", model, step=1)
    before = good.read_bytes()
    with torch.no_grad():
        model.stack.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    assert nonfinite_tensors(model.state_dict()) == ["stack.h.0.mlp.c_fc.weight"]
    with pytest.raises(ValueError, match="step 2: 1 weight tensor.*nan or inf.*stack.h.0.mlp.c_fc.weight"):
        save_checkpoint(good, model, step=2)
    assert good.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    nan_file = write_v1_checkpoint(tmp_path / "nan.pt", model)
    with pytest.raises(CheckpointError, match="nan or inf.*diverged"):
        load_model(nan_file)


def test_divergence_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path):
    """lr 100: the loss turns inf or nan within a few steps. fit raises TrainingDiverged naming the
    step and the learning rate; the weights in memory and the checkpoint on disk are finite."""
    config = dataclasses.replace(FAST, max_steps=200, learning_rate=100.0, min_lr=1.0, warmup_steps=10,
                                 eval_interval=2, grad_clip=0.0)
    trainer = tiny_trainer(tmp_path, config)
    with pytest.raises(TrainingDiverged, match=r"diverged (at|by) step \d+: .* learning rate \d") as caught:
        trainer.fit()
    assert "\n" not in str(caught.value)
    assert nonfinite_tensors(trainer.model.state_dict()) == []
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == trainer.saved_step and f"holds step {ckpt['step']}" in str(caught.value)
    assert nonfinite_tensors(ckpt["model"]) == [] and trainer.step < 200
    assert not (tmp_path / ".lock").exists() or RunLock(tmp_path).acquire().held   # the lock was let go


def test_the_run_directory_lock_names_its_holder_and_goes_stale_when_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from minillm.training import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryLocked, match=f"{tmp_path} is in use by another training run \\(PID {holder.pid}\\)"):
            RunLock(tmp_path).acquire()
        trainer = tiny_trainer(tmp_path)
        with pytest.raises(RunDirectoryLocked):
            trainer.fit()
        assert not (tmp_path / "checkpoint.pt").exists()
        done = minillm_main(["train", "--preset", "quick", "--out", str(tmp_path), "--data", str(TEXT_FILE)])
        assert done.code == 2 and f"PID {holder.pid}" in done.err and str(tmp_path) in done.err
    finally:
        holder.kill()                                        # SIGKILL: no clean-up, the lock file stays
        holder.wait()
    lock = RunLock(tmp_path).acquire()                       # the dead holder's lock is stale: taken over
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert RunLock(tmp_path).acquire().held                  # re-entrant within one process
    lock.release()


def test_stale_temporary_files_are_removed_and_only_those(tmp_path):
    for name in [".checkpoint.pt.k2_x9abc.part", ".loss.csv.zz01.part", ".notes.txt.abc.part", "mine.part",
                 "checkpoint.pt.part", ".tokens.0123456789ab.cdef01234567.uint16.bin.x_7.part"]:
        (tmp_path / name).write_bytes(b"x" * 100)
    trainer = tiny_trainer(tmp_path)
    trainer.fit()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert ".checkpoint.pt.k2_x9abc.part" not in left and ".loss.csv.zz01.part" not in left
    assert ".tokens.0123456789ab.cdef01234567.uint16.bin.x_7.part" not in left     # a token file's, too
    assert {".notes.txt.abc.part", "mine.part", "checkpoint.pt.part"} <= set(left)   # not ours: left alone
    assert remove_stale_parts(tmp_path / "missing") == []


def test_resume_adds_to_the_samples_of_the_earlier_part(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopqrst")
    config = dataclasses.replace(FAST, max_steps=12, eval_interval=4, sample_interval=4, sample_tokens=5)

    def stop_at_6(trainer, loss):
        if trainer.step == 6:
            trainer.request_stop()
    first = tiny_trainer(tmp_path, config, callbacks=[stop_at_6])
    first.tokenizer, first.verbose = tok, True
    first.fit()
    assert first.step == 6 and "=== step 4 ===" in (tmp_path / "samples.txt").read_text()
    data = ids()
    resumed = Trainer.resume(tmp_path / "checkpoint.pt", data[:2500], data[2500:], device="cpu")
    resumed.fit()
    log = (tmp_path / "samples.txt").read_text()
    assert [line for line in log.splitlines() if line.startswith("===")] == \
        ["=== step 4 ===", "=== step 8 ===", "=== step 12 ==="]


def test_resume_refuses_changes_that_would_not_continue_the_run():
    data = ids()
    with pytest.raises(ValueError, match="resume cannot change learning_rate"):
        Trainer.resume("unused.pt", data[:2500], data[2500:], changes={"learning_rate": 1.0})


# ---- the command line, in process: one line on stderr, the option and the value named, exit status 2

TEXT_FILE = ROOT / "README.md"          # a UTF-8 text of some 15,000 characters, always there


class Done:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


def minillm_main(argv, capsys=None):
    """Run `python -m minillm ARGV` in this process; (exit code, stdout, stderr)."""
    import contextlib
    import io as _io
    from minillm.__main__ import main
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:                              # argparse's own errors
            code = e.code
    return Done(code, out.getvalue(), err.getvalue())


def one_line_usage_error(done, *needles):
    # the error is one line; a progress bar that had started (tqdm writes to stderr) may come before it
    lines = [line for line in done.err.strip().splitlines() if not line.startswith("training:")]
    assert done.code == 2, (done.code, done.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), done.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, small_text):
    """A finished 6-step CLI run with a character tokenizer."""
    out = tmp_path_factory.mktemp("cli") / "run"
    done = minillm_main(["train", "--data", str(small_text), "--out", str(out), "--preset", "quick", "--max-steps", "6",
                         "--eval-interval", "3", "--sample-interval", "0", "--device", "cpu"])
    assert done.code == 0, done.err
    return out


def test_cli_one_line_errors_for_bad_training_input(tmp_path, small_text):
    train = ["train", "--preset", "quick", "--device", "cpu", "--max-steps", "10"]
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--tokenizer", "bpe", "--vocab-size", "255",
                                               "--out", str(tmp_path / "a")]), "--vocab-size 255", "256")
    one_line_usage_error(minillm_main(train + ["--data", str(tmp_path), "--out", str(tmp_path / "b")]),
                         f"--data {tmp_path}", "is a directory")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--out", str(a_file)]),
                         f"--out {a_file}", "is a file")
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--out", str(a_file / "sub")]),
                         f"--out {a_file / 'sub'}", "cannot write there")
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--out", str(tmp_path / "c"),
                                               "--seed", "18446744073709551615"]),
                         "--seed", "18446744073709551615", "4294967295")
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--out", str(tmp_path / "c"),
                                               "--lr", "nan"]), "--lr", "nan")
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--out", str(tmp_path / "c"),
                                               "--n-head", "3"]), "--n-head 3", "--n-embd 32")
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--out", str(tmp_path / "c"),
                                               "--val-fraction", "1.5"]), "--val-fraction 1.5")
    one_line_usage_error(minillm_main(train + ["--data", str(small_text), "--out", str(tmp_path / "c"),
                                               "--device", "tpu"]), "--device tpu")
    one_line_usage_error(minillm_main(train + ["--bogus"]), "--bogus")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()   # nothing made for a refused run


def test_cli_unwritable_out_is_one_line(tmp_path, small_text, monkeypatch):
    import tempfile as tempfile_module

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile_module, "TemporaryFile", denied)    # root may write anywhere: simulate it
    one_line_usage_error(minillm_main(["train", "--data", str(small_text), "--out", str(tmp_path / "ro"),
                                       "--preset", "quick"]), f"--out {tmp_path / 'ro'}", "Permission denied")


def test_cli_resume_checks_the_text_and_the_settings(tmp_path, small_text, quick_run):
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    resume = ["train", "--out", str(run), "--resume", "--device", "cpu"]
    other = tmp_path / "other.txt"
    other.write_text(small_text.read_text(encoding="utf-8")[:-1] + "!", encoding="utf-8")
    one_line_usage_error(minillm_main(resume + ["--data", str(other)]), f"--data {other}", "not the text")
    one_line_usage_error(minillm_main(resume + ["--lr", "0.1", "--n-layer", "3"]), "--lr 0.1 (the run has 0.003)",
                         "--n-layer 3 (the run has 2)")
    one_line_usage_error(minillm_main(resume + ["--tokenizer", "bpe"]), "--tokenizer bpe (the run has char)")
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6                      # refused: nothing ran
    same = minillm_main(resume + ["--lr", "0.003", "--max-steps", "8", "--eval-interval", "4"])   # equal, or safe
    assert same.code == 0, same.err
    assert "--max-steps 8 applied (the run had 6)" in same.out and "--eval-interval 4 applied" in same.out
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 8
    (run / "run.json").write_text((run / "run.json").read_text()[:40])               # cut off
    one_line_usage_error(minillm_main(resume + ["--max-steps", "10"]), "run.json is damaged")
    (run / "run.json").unlink()
    one_line_usage_error(minillm_main(resume + ["--max-steps", "10"]), "no run.json")


def test_cli_resume_refuses_a_checkpoint_whose_model_does_not_fit(tmp_path, quick_run):
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    model = GPT(GPTConfig(**ckpt["model_config"]))
    write_v1_checkpoint(run / "checkpoint.pt", model, model_config={**ckpt["model_config"], "n_layer": 3},
                        tokenizer=ckpt["tokenizer"], optimizer=ckpt["optimizer"])
    one_line_usage_error(minillm_main(["train", "--out", str(run), "--resume", "--max-steps", "10"]),
                         "does not load")


def test_cli_sample_errors_and_tiny_temperatures(tmp_path, quick_run):
    sample = ["sample", "--out", str(quick_run), "--tokens", "5"]
    greedy = minillm_main(sample + ["--temperature", "0"])
    tiny = minillm_main(sample + ["--temperature", "1e-39"])                     # greedy too, no crash
    assert tiny.code == 0 and tiny.out == greedy.out, tiny.err
    one_line_usage_error(minillm_main(sample + ["--temperature", "-1"]), "--temperature", "-1")
    one_line_usage_error(minillm_main(sample + ["--temperature", "nan"]), "--temperature", "nan")
    one_line_usage_error(minillm_main(sample + ["--top-p", "0"]), "--top-p", "0")
    one_line_usage_error(minillm_main(sample + ["--seed", "-1"]), "--seed", "-1")
    one_line_usage_error(minillm_main(sample + ["--prompt", "a\\x", "--escapes"]), "malformed escape", "\\x")
    one_line_usage_error(minillm_main(sample + ["--prompt", "\u00e9"]), "--prompt")      # not in the vocabulary
    ckpt = load_checkpoint(quick_run / "checkpoint.pt")
    model = GPT(GPTConfig(**ckpt["model_config"]))
    with torch.no_grad():
        model.ln_f.weight[3] = float("inf")
    nan_file = write_v1_checkpoint(tmp_path / "nan.pt", model, tokenizer=ckpt["tokenizer"])
    one_line_usage_error(minillm_main(["sample", "--checkpoint", str(nan_file)]), str(nan_file), "nan or inf")
    rand = tmp_path / "random.pt"
    rand.write_bytes(os.urandom(3000))
    one_line_usage_error(minillm_main(["sample", "--checkpoint", str(rand)]), "not a minillm checkpoint")


def test_decode_escapes_keeps_non_ascii_and_refuses_malformed_escapes():
    from minillm.__main__ import UsageError, decode_escapes
    assert decode_escapes("caf\u00e9\\n") == "caf\u00e9\n"
    assert decode_escapes("\\tA\\\\n\\x41\\u00e9\\U0001F600 \u65e5") == "\tA\\nA\u00e9\U0001F600 \u65e5"
    for bad in ["a\\x", "\\x4", "\\u12", "\\q", "end\\", "\\UFFFFFFFF", "\\ud800"]:
        with pytest.raises(UsageError, match="malformed escape"):
            decode_escapes(bad)


def test_cli_divergence_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, small_text):
    out = tmp_path / "run"
    done = minillm_main(["train", "--data", str(small_text), "--out", str(out), "--preset", "quick", "--device", "cpu",
                         "--lr", "100", "--min-lr", "1", "--warmup-steps", "10", "--max-steps", "300",
                         "--eval-interval", "2", "--grad-clip", "0"])
    assert done.code == 1 and done.err.strip().splitlines()[-1].startswith("error: training diverged"), done.err
    assert re.search(r"at step \d+: the loss is .* at learning rate \d", done.err)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert nonfinite_tensors(ckpt["model"]) == [] and f"holds step {ckpt['step']}" in done.err


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cli_stops_on_a_signal_saves_and_exits_with_its_code(tmp_path, small_text, signum, code):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "minillm", "train", "--data", str(small_text), "--out", str(out),
                                "--preset", "quick", "--device", "cpu", "--max-steps", "100000", "--eval-interval",
                                "5000", "--sample-interval", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    for line in process.stdout:                               # wait until it trains: the step-0 estimate
        if line.startswith("step      0"):
            break
    time.sleep(2)                                             # a few steps (a stop before the first one saves too)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr
    assert f"Stopped by {signal.Signals(signum).name}" in stdout
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert 0 <= step < 100000
    more = minillm_main(["train", "--out", str(out), "--resume", "--max-steps", str(step + 2), "--device", "cpu"])
    assert more.code == 0 and load_checkpoint(out / "checkpoint.pt")["step"] == step + 2, more.err


# ---- found by a hostile pass over the command line

def test_a_stop_signal_during_a_loss_estimate_ends_it_and_saves(tmp_path):
    """A loss estimate can take long (eval_iters large, a big model on a CPU); a SIGTERM arriving
    inside it must not wait for it: fit skips the estimate, saves and returns."""
    import threading
    config = dataclasses.replace(FAST, eval_iters=1_000_000)            # an estimate of many minutes
    trainer = tiny_trainer(tmp_path, config)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        trainer.fit()
    finally:
        timer.cancel()
    assert trainer.stop_signal == signal.SIGTERM and trainer.step == 0 and trainer.history == []
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 0 and trainer.model.training


def test_best_pt_is_the_lowest_validation_loss_among_the_saves(tmp_path):
    trainer = tiny_trainer(tmp_path, dataclasses.replace(FAST, eval_interval=3))
    trainer.fit()
    saved = [row for row in trainer.history if row["step"] > 0]          # step 0 is measured, not saved
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best_val_loss"] == min(row["val_loss"] for row in saved) == trainer.best_val_loss
    assert best["step"] == min(saved, key=lambda row: row["val_loss"])["step"]
    data = ids()
    with pytest.raises(CheckpointError, match="no optimizer state"):
        Trainer.resume(tmp_path / "best.pt", data[:2500], data[2500:], device="cpu", verbose=False)


def test_cli_more_one_line_errors_and_nothing_left_behind(tmp_path, small_text):
    train = ["train", "--preset", "quick", "--device", "cpu", "--max-steps", "10", "--data", str(small_text)]
    one_line_usage_error(minillm_main(train + ["--out", str(tmp_path / "a"), "--val-fraction", "1e-9"]),
                         "too few for a validation split of 1e-09")
    one_char = tmp_path / "one.txt"
    one_char.write_text("x")
    one_line_usage_error(minillm_main(["train", "--preset", "quick", "--data", str(one_char), "--out",
                                       str(tmp_path / "b")]), "gives 1 tokens")
    long_name = tmp_path / ("x" * 300)
    one_line_usage_error(minillm_main(train + ["--out", str(long_name)]), "--out", "File name too long")
    one_line_usage_error(minillm_main(["sample", "--out", str(long_name)]), "File name too long")
    one_line_usage_error(minillm_main(["sample", "--checkpoint", ""]), "--checkpoint ''")
    locked = tmp_path / "locked"
    (locked / ".lock").mkdir(parents=True)
    one_line_usage_error(minillm_main(train + ["--out", str(locked)]), f"--out {locked}: cannot lock it")
    one_line_usage_error(minillm_main(train + ["--out", str(tmp_path / "c"), "--batch-size", str(10**30)]),
                         "--batch-size: must be below 2**63", f"got {10**30}")
    one_line_usage_error(minillm_main(train + ["--out", str(tmp_path / "c"), "--batch-size", str(10**10)]),
                         "does not fit in memory", f"--batch-size {10**10}")
    one_line_usage_error(minillm_main(train + ["--out", str(tmp_path / "d"), "--block-size", "100000"]),
                         "--block-size 100000")
    one_line_usage_error(minillm_main(train + ["--out", str(tmp_path / "e"), "--precision", "bf16"]),
                         "--precision")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_usage_error(minillm_main(["train", "--data", str(fifo), "--out", str(tmp_path / "f")]),
                         f"--data {fifo} is not a regular file")
    for made in "abcdef":
        assert not (tmp_path / made).exists(), made          # a refused run leaves no folder behind


def test_cli_write_failures_after_training_are_one_line(tmp_path, small_text):
    out = tmp_path / "run"
    (out / "loss.png").mkdir(parents=True)                   # the final plot cannot be written
    done = minillm_main(["train", "--data", str(small_text), "--out", str(out), "--preset", "quick", "--device",
                         "cpu", "--max-steps", "8", "--eval-interval", "4"])
    assert done.code == 1 and done.err.strip().splitlines()[-1].startswith(f"error: writing to {out} failed")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 8


def test_cli_resume_messages_name_what_is_wrong(tmp_path, small_text, quick_run):
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    resume = ["train", "--out", str(run), "--resume", "--device", "cpu"]
    one_line_usage_error(minillm_main(resume + ["--max-steps", "4"]), "--max-steps 4", "already at step 6")
    one_line_usage_error(minillm_main(resume + ["--max-steps", "7", "--warmup-steps", "9"]), "--warmup-steps 9")
    record = json.loads((run / "run.json").read_text())
    for damage, needle in [({"val_fraction": "0.1"}, "'val_fraction' must be"), ({"data": 5}, "'data' must be"),
                           ({"tokenizer": None}, "'tokenizer' must be")]:
        (run / "run.json").write_text(json.dumps({**record, **damage}))
        one_line_usage_error(minillm_main(resume + ["--max-steps", "8"]), "run.json is damaged", needle)
    (run / "run.json").write_text("{}")
    one_line_usage_error(minillm_main(resume + ["--max-steps", "8"]), "run.json is damaged", "no 'data'")
    moved = tmp_path / "moved.txt"
    shutil.copy(small_text, moved)
    (run / "run.json").write_text(json.dumps({**record, "data": str(moved)}))
    moved.unlink()
    one_line_usage_error(minillm_main(resume + ["--max-steps", "8"]), f"the run's text {moved}", "give it with --data")
    done = minillm_main(resume + ["--max-steps", "8", "--data", str(small_text)])
    assert done.code == 0, done.err


def test_cli_bpe_vocabulary_capped_by_the_text_is_said_and_resumes(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcabd " * 2000)
    out = tmp_path / "run"
    done = minillm_main(["train", "--data", str(text), "--tokenizer", "bpe", "--vocab-size", "5000", "--out", str(out),
                         "--preset", "quick", "--device", "cpu", "--max-steps", "6", "--block-size", "8"])
    assert done.code == 0, done.err
    assert "note: --vocab-size 5000" in done.out
    again = minillm_main(["train", "--out", str(out), "--resume", "--tokenizer", "bpe", "--vocab-size", "5000",
                          "--max-steps", "8", "--device", "cpu"])
    assert again.code == 0, again.err


def test_cli_samples_are_not_repeated_and_sample_needs_no_newline(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 400)                # no newline in the vocabulary
    out = tmp_path / "run"
    train = ["train", "--data", str(text), "--out", str(out), "--preset", "quick", "--device", "cpu"]
    assert minillm_main(train + ["--max-steps", "20"]).code == 0          # the quick preset samples at 20
    again = minillm_main(["train", "--out", str(out), "--resume", "--device", "cpu"])   # finished: nothing to do
    assert again.code == 0, again.err
    headers = [line for line in (out / "samples.txt").read_text().splitlines() if line.startswith("===")]
    assert headers == ["=== step 20 ==="]
    done = minillm_main(["sample", "--out", str(out), "--tokens", "5"])
    assert done.code == 0 and done.out.startswith(" "), done.err         # token 0: a space


def test_cli_ctrl_c_outside_training_is_one_line(monkeypatch):
    import minillm.__main__ as cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_data", interrupted)
    done = minillm_main(["data"])
    assert done.code == 130 and done.err.strip().splitlines() == [done.err.strip()] and "interrupted" in done.err


# ----------------------------------------------------------------------------- the device path, on the CPU

class DeviceSpy(nn.Module):
    """A stand-in model whose parameters live on the `meta` device (a device with shapes but no
    data, always present): it records the device of every batch it is given, and returns a
    CPU loss, so that estimate_loss can run to the end."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, device="meta"))
        self.seen = []

    def forward(self, x, y):
        self.seen.append((x.device.type, y.device.type))
        return None, torch.tensor(1.0)


def test_estimate_loss_moves_the_batches_to_the_models_device():
    """Lesson 20's bug: the model trained on a GPU, the text on the CPU, then estimate_loss(model,
    {"val": val_data}, ...) fed CPU batches to a CUDA model. The batches must follow the model."""
    spy = DeviceSpy()
    data = torch.arange(100)                                   # on the CPU
    losses = estimate_loss(spy, {"val": data}, batch_size=2, block_size=4, eval_iters=3)
    assert losses == {"val": 1.0}
    assert spy.seen == [("meta", "meta")] * 3


def test_estimate_loss_under_bf16_autocast_on_the_cpu():
    """The mixed-precision branch runs in CI: torch.autocast('cpu', bfloat16) through estimate_loss."""
    torch.manual_seed(0)
    model = GPT(TINY)
    data = torch.randint(0, TINY.vocab_size, (500,), generator=torch.Generator().manual_seed(0))
    fp32 = estimate_loss(model, {"val": data}, 4, 16, 3)["val"]
    bf16 = estimate_loss(model, {"val": data}, 4, 16, 3, dtype=torch.bfloat16)["val"]
    assert bf16 != fp32                                        # the products really ran in bfloat16
    assert math.isclose(bf16, fp32, rel_tol=1e-2)              # bfloat16's 8 mantissa bits: about 2 digits


def test_trainer_steps_under_bf16_autocast_on_the_cpu():
    """The Trainer's autocast branch (what precision='bf16' turns on on a GPU), on the CPU: the same
    losses as float32 to about 2%, all finite, and the weights stay float32."""
    losses = {}
    for dtype in (None, torch.bfloat16):
        trainer = tiny_trainer()
        trainer.dtype = dtype
        losses[dtype] = [trainer.train_step() for _ in range(4)]
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(math.isfinite(v) for v in losses[torch.bfloat16])
    assert losses[torch.bfloat16] != losses[None]
    for a, b in zip(losses[None], losses[torch.bfloat16]):
        assert math.isclose(a, b, rel_tol=2e-2), (losses[None], losses[torch.bfloat16])


# ----------------------------------------------------------------------------- a corpus bigger than memory

import numpy as np                                                          # noqa: E402
from hypothesis import given, settings, strategies as st                    # noqa: E402

# spaces, runs of whitespace, newlines, tabs, multi-byte characters (2, 3 and 4 bytes), contractions, digits
TRICKY = "héllo  wörld\n\n  the   cat's 日本語 on 12 34!!  \t\nit'll 🙂🙂 be  \n" * 40
TRICKY_BPE = BPETokenizer().train(TRICKY, 320)


def test_safe_cut_is_before_a_lone_whitespace_between_two_others():
    assert safe_cut("to be or", TRICKY_BPE) == 5                          # "to be" + " or"
    assert safe_cut("a\nb", TRICKY_BPE) == 1 and safe_cut("a  b", TRICKY_BPE) == 0 and safe_cut("ab ", TRICKY_BPE) == 0
    assert safe_cut("a  b", CharTokenizer("ab ")) == 4 == safe_cut("a  b", None)   # characters: anywhere
    with pytest.raises(ValueError, match="GPT-2's"):
        list(text_chunks(ROOT / "README.md", BPETokenizer(pattern=None)))


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 16, 33, 100, 4096])
def test_chunked_encoding_equals_whole_encoding(tmp_path, chunk_bytes):
    """Reads cut inside whitespace runs and inside multi-byte characters: the pieces still encode to the whole's ids."""
    path = tmp_path / "t.txt"
    path.write_text(TRICKY, encoding="utf-8")
    for tokenizer in (TRICKY_BPE, CharTokenizer(TRICKY)):
        pieces = list(text_chunks(path, tokenizer, chunk_bytes))
        assert "".join(pieces) == TRICKY and all(pieces)
        assert [i for piece in pieces for i in tokenizer.encode(piece)] == tokenizer.encode(TRICKY)
    if chunk_bytes == 33:
        assert len(list(text_chunks(path, TRICKY_BPE, chunk_bytes))) > 50  # many pieces, not one


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=" \n\t\u00a0ab'1.é日🙂", max_size=60), st.integers(1, 9))
def test_chunked_bpe_encoding_equals_whole_encoding_on_any_text(text, chunk_bytes):
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.txt"
        path.write_bytes(text.encode("utf-8"))
        pieces = list(text_chunks(path, TRICKY_BPE, chunk_bytes))
        assert "".join(pieces) == text
        assert [i for piece in pieces for i in TRICKY_BPE.encode(piece)] == TRICKY_BPE.encode(text)


def test_text_chunks_name_the_offset_of_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("héllo ".encode("utf-8") + b"\xe6\x97x rest")           # a 3-byte character cut short at byte 7
    for chunk_bytes in (1, 2, 8, 100):
        with pytest.raises(ValueError, match=r"not UTF-8 text \(invalid continuation byte at byte 7\)"):
            list(text_chunks(path, None, chunk_bytes))
    path.write_bytes(b"abc" + b"\xff" * 3)
    with pytest.raises(ValueError, match="at byte 3"):
        scan_text(path, chunk_bytes=2)
    path.write_bytes("ab\u00e9".encode("utf-8")[:-1])                          # the file ends inside a character
    with pytest.raises(ValueError, match="at byte 2"):
        scan_text(path)


def test_scan_text_and_train_bpe_read_the_file_in_pieces(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TRICKY, encoding="utf-8")
    scan = scan_text(path, chunk_bytes=7)
    assert scan.sha256 == hashlib.sha256(TRICKY.encode("utf-8")).hexdigest() and scan.n_chars == len(TRICKY)
    assert scan.chars == "".join(CharTokenizer(TRICKY).chars) and scan.n_bytes == len(TRICKY.encode("utf-8"))
    assert train_bpe(path, 320, chunk_bytes=50).merges == TRICKY_BPE.merges      # the whole text: the same merges
    sample = safe_cut(TRICKY.encode("utf-8")[:1000].decode("utf-8", errors="ignore"), TRICKY_BPE)
    assert train_bpe(path, 300, sample_bytes=1000, chunk_bytes=64).merges == \
        BPETokenizer().train(TRICKY[:sample], 300).merges                     # the first 1000 bytes, cut safely
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        scan_text(tmp_path / "empty.txt")


@pytest.mark.parametrize("workers", [1, 2])
def test_token_file_is_written_once_reused_and_rebuilt_when_damaged(tmp_path, monkeypatch, capsys, workers):
    import minillm.training as training
    text_path = tmp_path / "t.txt"
    text_path.write_text(TRICKY, encoding="utf-8")
    digest = scan_text(text_path).sha256
    writes = []
    real_write = training.write_token_file
    monkeypatch.setattr(training, "write_token_file", lambda *a, **k: writes.append(1) or real_write(*a, **k))

    def tokens():
        return token_file(text_path, TRICKY_BPE, tmp_path / "cache", digest, workers=workers, chunk_bytes=64)

    first = tokens()
    assert first.dtype == np.uint16 and first.tolist() == TRICKY_BPE.encode(TRICKY) and len(writes) == 1
    path = token_file_path(tmp_path / "cache", digest, TRICKY_BPE)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["tokens"] == len(first) and record["text_sha256"] == digest and record["dtype"] == "uint16"
    assert tokens().tolist() == first.tolist() and len(writes) == 1           # found and checked: not written again
    damages = {"cut short": lambda: path.write_bytes(path.read_bytes()[:-2]),
               "a changed token": lambda: path.write_bytes(b"\x07\x00" + path.read_bytes()[2:]),
               "no record": lambda: path.with_suffix(".json").unlink(),
               "a damaged record": lambda: path.with_suffix(".json").write_text("{"),
               "no file": lambda: path.unlink()}
    for what, damage in damages.items():
        del first                                                             # the memmap lets go of the file
        damage()
        capsys.readouterr()
        first = tokens()
        assert first.tolist() == TRICKY_BPE.encode(TRICKY), what
        assert len(writes) == 2 + list(damages).index(what), what                # rebuilt, never used
        if what != "no file":
            assert "encoding the text again" in capsys.readouterr().out, what
    other = token_file(text_path, CharTokenizer(TRICKY), tmp_path / "cache", digest, verbose=False)
    assert other.tolist() == CharTokenizer(TRICKY).encode(TRICKY)           # another tokenizer: another file
    assert len(list((tmp_path / "cache").glob("tokens.*.bin"))) == 2
    assert not list((tmp_path / "cache").glob(".*.part"))


def test_token_file_refuses_a_changed_text_and_records_the_dtype(tmp_path):
    text_path = tmp_path / "t.txt"
    text_path.write_text(TRICKY, encoding="utf-8")
    with pytest.raises(ValueError, match="changed while it was encoded"):
        write_token_file(tmp_path / "x.bin", text_path, TRICKY_BPE, text_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == [text_path]                            # nothing left: no .part, no file
    with pytest.raises(TokenFileError, match="does not exist"):
        read_token_file(tmp_path / "x.bin", "0" * 64, TRICKY_BPE)
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32
    wide = CharTokenizer("".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000)))   # 70,000 characters
    assert token_file_path(tmp_path, "ab" * 32, wide).name.endswith(".uint32.bin")


def test_training_from_a_token_file_equals_training_from_memory(tmp_path):
    text = tiny_shakespeare()[:20_000]
    text_path = tmp_path / "t.txt"
    text_path.write_text(text, encoding="utf-8")
    tok = CharTokenizer(text)
    memory = torch.tensor(tok.encode(text), dtype=torch.long)
    disk = token_file(text_path, tok, tmp_path, scan_text(text_path).sha256, verbose=False)
    for data in (disk, np.asarray(disk, dtype=np.uint32), np.asarray(disk, dtype=np.int64)):
        for seed in range(3):
            xm, ym = get_batch(memory, 5, 16, torch.Generator().manual_seed(seed))
            xd, yd = get_batch(data, 5, 16, torch.Generator().manual_seed(seed))
            assert xd.dtype == torch.long and torch.equal(xm, xd) and torch.equal(ym, yd)
    from minillm.corpus import train_val_split
    config = dataclasses.replace(FAST, max_steps=6, eval_interval=3)
    model_config = dataclasses.replace(TINY, vocab_size=tok.vocab_size, dropout=0.1)
    runs = []
    for train_data, val_data in (train_val_split(memory, 0.1), train_val_split(disk, 0.1)):
        torch.manual_seed(0)
        trainer = Trainer(GPT(model_config), train_data, val_data, config, device="cpu", verbose=False)
        runs.append((trainer.fit(), weights(trainer.model)))
    assert isinstance(trainer.train_data, np.memmap)                        # the token file stayed on the disk
    losses = [[(row["train_loss"], row["val_loss"]) for row in history] for history, _ in runs]
    assert losses[0] == losses[1]
    assert equal_weights(runs[0][1], runs[1][1])                              # bit for bit
    with pytest.raises(ValueError, match="integer token ids"):
        get_batch(np.zeros(100, dtype=np.float32), 2, 4)
    copy_on_write = np.memmap(token_file_path(tmp_path, scan_text(text_path).sha256, tok), dtype=np.uint16, mode="c")
    copy_on_write[:100] = 7                                                  # changed in memory only
    get_batch(copy_on_write, 4, 16, torch.Generator().manual_seed(0))       # gives back a read-only map's pages only
    assert (copy_on_write[:100] == 7).all() and disk[0] != 7


def test_cli_rebuilds_a_damaged_token_file_on_resume_and_checks_the_bpe_sample(tmp_path, small_text, quick_run):
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    (token,) = run.glob("tokens.*.bin")
    token.write_bytes(token.read_bytes()[:-10])                                # cut short
    done = minillm_main(["train", "--out", str(run), "--resume", "--max-steps", "8", "--device", "cpu"])
    assert done.code == 0, done.err
    assert "encoding the text again" in done.out and load_checkpoint(run / "checkpoint.pt")["step"] == 8
    assert len(token.read_bytes()) == 2 * json.loads(token.with_suffix(".json").read_text())["tokens"]
    one_line_usage_error(minillm_main(["train", "--data", str(small_text), "--out", str(tmp_path / "a"),
                                       "--tokenizer", "bpe", "--bpe-sample-mb", "-1"]), "--bpe-sample-mb -1")
    out = tmp_path / "bpe"
    done = minillm_main(["train", "--data", str(small_text), "--out", str(out), "--tokenizer", "bpe", "--vocab-size",
                         "280", "--bpe-sample-mb", "0", "--preset", "quick", "--max-steps", "6", "--device", "cpu"])
    assert done.code == 0, done.err
    assert json.loads((out / "run.json").read_text())["bpe_sample_mb"] == 0
    one_line_usage_error(minillm_main(["train", "--out", str(out), "--resume", "--bpe-sample-mb", "5"]),
                         "--bpe-sample-mb 5 (the run has 0)")


def test_cli_model_family_options_train_are_saved_and_fixed_on_resume(tmp_path, small_text):
    """--norm, --position, --mlp, --n-kv-head (lesson 21's options): the model trains with them, the
    checkpoint and run.json record them, --resume rebuilds that model and refuses another choice."""
    from minillm.block import MLPS, NORMS
    from minillm.model import POSITIONS
    from minillm.__main__ import MODEL_OPTIONS
    assert (MODEL_OPTIONS["--norm"][1], MODEL_OPTIONS["--mlp"][1], MODEL_OPTIONS["--position"][1]) == \
        (NORMS, MLPS, POSITIONS)                                   # the CLI's choices are the model's
    out = tmp_path / "llama"
    family = ["--norm", "rmsnorm", "--position", "rope", "--mlp", "swiglu", "--n-kv-head", "1", "--rope-theta", "500"]
    done = minillm_main(["train", "--data", str(small_text), "--out", str(out), "--preset", "quick", "--max-steps", "6",
                         "--eval-interval", "3", "--sample-interval", "0", "--device", "cpu", *family])
    assert done.code == 0, done.err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    expected = {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "n_kv_head": 1, "rope_theta": 500.0}
    assert {k: ckpt["model_config"][k] for k in expected} == expected
    assert json.loads((out / "run.json").read_text())["model"] == ckpt["model_config"]
    model, _ = load_model(out / "checkpoint.pt")
    assert model.stack.h[0].attn.n_kv_head == 1 and model.stack.h[0].attn.rotary is not None
    assert not any("position" in name for name, _ in model.named_parameters())     # rope: no position table
    one_line_usage_error(minillm_main(["train", "--out", str(out), "--resume", "--norm", "layernorm"]),
                         "--norm layernorm (the run has rmsnorm)")
    more = minillm_main(["train", "--out", str(out), "--resume", "--max-steps", "8", "--device", "cpu", *family])
    assert more.code == 0, more.err                                 # the run's own values: not a change
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 8
    train = ["train", "--data", str(small_text), "--out", str(tmp_path / "bad"), "--preset", "quick"]
    one_line_usage_error(minillm_main(train + ["--n-kv-head", "3"]), "--n-head 2 is not a multiple of --n-kv-head 3")
    one_line_usage_error(minillm_main(train + ["--position", "rope", "--rope-theta", "-1"]), "--rope-theta", "-1")
    bad = minillm_main(train + ["--norm", "batchnorm"])
    assert bad.code == 2 and "--norm" in bad.err and "batchnorm" in bad.err
    assert not (tmp_path / "bad").exists()
