"""Train a small GPT on a text of your own and let it write: minillm used as a library.

    python examples/train_on_my_text.py my_novel.txt                  # about 3 minutes on a laptop CPU
    python examples/train_on_my_text.py my_novel.txt --steps 3000 --prompt "Chapter 1"

Any UTF-8 text works; a few hundred kilobytes or more gives a model that has something to
learn. The script builds a character tokenizer from the text, a 4-layer GPT, and a Trainer
with the lesson-20 CPU settings, trains (Ctrl-C stops cleanly and saves), then samples.
The run directory (default runs/<name of the text>-example) keeps the checkpoint, the loss
log and plot, and the samples; `python -m minillm sample --out <that directory>` writes more.
"""
import argparse
import sys
from pathlib import Path

import torch

import minillm
from minillm.training import Trainer, TrainConfig, plot_losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a small GPT on your own text, then sample from it.")
    parser.add_argument("text", type=Path, help="a UTF-8 text file")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (2000: about 3 minutes on 2 cores)")
    parser.add_argument("--prompt", default="\n", help="what the model continues at the end")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<name of the text>-example)")
    args = parser.parse_args(argv)

    text = args.text.read_text(encoding="utf-8")
    tokenizer = minillm.CharTokenizer(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_ids, val_ids = minillm.train_val_split(ids, 0.1)
    print(f"{args.text.name}: {len(text):,} characters, {tokenizer.vocab_size} distinct")

    torch.manual_seed(0)
    block_size = min(64, len(val_ids) - 1)                  # a short text gets a shorter context
    model = minillm.GPT(minillm.GPTConfig(block_size=block_size, vocab_size=tokenizer.vocab_size,
                                          n_layer=4, n_head=4, n_embd=128))
    config = TrainConfig(batch_size=12, max_steps=args.steps, learning_rate=6e-3, min_lr=6e-4,
                         warmup_steps=min(50, args.steps // 10), eval_interval=max(1, min(250, args.steps // 4)),
                         eval_iters=20, sample_interval=0)
    out = args.out or Path("runs") / f"{args.text.stem}-example"
    trainer = Trainer(model, train_ids, val_ids, config, tokenizer, run_dir=out)
    history = trainer.fit()
    plot_losses(history, path=out / "loss.png", title=args.text.name)

    last = history[-1]
    print(f"step {last['step']}: validation loss {last['val_loss']:.3f} (an untrained model: "
          f"{history[0]['val_loss']:.3f}); run directory {out}")
    model.eval()
    sample = minillm.generate_text(model, tokenizer, args.prompt, 300, temperature=0.8,
                                   generator=torch.Generator().manual_seed(0))
    print(sample)
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
