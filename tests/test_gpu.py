"""The GPU path of lessons 12-20, checked where it runs: `make gpu-check` runs these on a CUDA GPU.

Without a GPU they are skipped, unless MINILLM_TEST_DEVICE=cpu (what `gpu_check.py --dry-run`
sets) runs them on the CPU as a rehearsal: the same code paths, with the CPU's own bfloat16
autocast and torch.compile. The CPU-side checks of the same code (the device move in
estimate_loss, bf16 autocast on the CPU) are in test_20_training.py and run in every CI run.
"""
import dataclasses
import math
import os

import pytest
import torch

from minillm.generation import generate
from minillm.model import GPT, GPTConfig
from minillm.training import TrainConfig, Trainer, autocast

pytestmark = pytest.mark.gpu

SHAPE = GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
CONFIG = TrainConfig(batch_size=8, max_steps=10, learning_rate=1e-3, min_lr=1e-4, warmup_steps=1, eval_interval=5,
                     eval_iters=2, sample_interval=0, precision="fp32")


@pytest.fixture
def device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("MINILLM_TEST_DEVICE") == "cpu":
        return torch.device("cpu")
    pytest.skip("no CUDA GPU: `make gpu-check` runs these on one (MINILLM_TEST_DEVICE=cpu rehearses them on the CPU)")


def ids(n=4000, seed=0):
    return torch.randint(0, SHAPE.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def gradients(device, dtype):
    """The loss and the flattened gradient of one batch, the forward under autocast to dtype."""
    torch.manual_seed(0)
    model = GPT(SHAPE).to(device)
    x = ids(8 * 32, 1).view(8, 32).to(device)
    y = ids(8 * 32, 2).view(8, 32).to(device)
    with autocast(device.type, dtype):
        _, loss = model(x, y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.double().flatten() for p in model.parameters()])


def test_a_bf16_autocast_step_matches_fp32(device):
    """bfloat16 keeps 8 bits of mantissa: the loss agrees to about 1% and the gradient points the
    same way (cosine above 0.99) and has the same length within 5%."""
    loss32, g32 = gradients(device, None)
    loss16, g16 = gradients(device, torch.bfloat16)
    assert math.isclose(loss16, loss32, rel_tol=1e-2), (loss16, loss32)
    cosine = (g16 @ g32 / (g16.norm() * g32.norm())).item()
    assert cosine > 0.99, cosine
    assert math.isclose(g16.norm().item(), g32.norm().item(), rel_tol=0.05)


def test_the_trainer_under_bf16_takes_steps_like_fp32(device):
    """The Trainer's own bf16 branch (precision='bf16' on CUDA; the CPU's autocast in the rehearsal)."""
    losses = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        trainer = Trainer(GPT(SHAPE), ids(), ids(1000, 1), CONFIG, device=device, verbose=False)
        trainer.dtype = dtype                        # what precision='bf16' sets on a CUDA GPU with bf16
        losses[dtype] = [trainer.train_step() for _ in range(5)]
    for a, b in zip(losses[None], losses[torch.bfloat16]):
        assert math.isclose(a, b, rel_tol=2e-2), (losses[None], losses[torch.bfloat16])


def test_fused_adamw_equals_the_unfused_one(device):
    """The optimizer alone: both get the same gradients at every step (from a forward pass,
    a gradient that is rounding noise, like the key bias's, would let AdamW's division by
    sqrt(v) amplify a difference of one rounding into a visible one)."""
    torch.manual_seed(0)
    a = GPT(SHAPE).to(device)
    b = GPT(SHAPE).to(device)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.1, fused=False, foreach=False)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        for p, q in zip(a.parameters(), b.parameters()):
            grad = (torch.randn(p.shape, generator=g) * 0.01).to(device)
            p.grad, q.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        # the same float32 arithmetic, fused into one kernel: within a few units in the last place
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), (name, (p - q).abs().max().item())


def test_the_compiled_model_equals_eager(device):
    torch.manual_seed(0)
    model = GPT(SHAPE).to(device).eval()
    compiled = torch.compile(model)
    x = ids(2 * 32, 3).view(2, 32).to(device)
    with torch.no_grad():
        eager_logits, _ = model(x)
        compiled_logits, _ = compiled(x)
    scale = eager_logits.abs().max().item()
    # fused kernels sum in another order: float32 rounding, relative to the logits' size
    assert (compiled_logits - eager_logits).abs().max().item() <= 1e-4 * max(scale, 1.0)


def test_kv_cache_generation_equals_no_cache_on_the_device(device):
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(SHAPE, block_size=16)).to(device)
    prompt = ids(5, 4).view(1, 5).to(device)
    with_cache = generate(model, prompt, 40, temperature=0, use_cache=True)      # 40 > block_size: the window slides
    without = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert with_cache.device.type == device.type
    assert torch.equal(with_cache, without)
